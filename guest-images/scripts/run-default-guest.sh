#!/usr/bin/env bash
# The README's first command: builds pvkvm and the default guest (Debian's newest
# linux-image-6.1.0-*-cloud-amd64 with a busybox initramfs, fetched and cached by
# build-default-guest.sh), then boots it to a shell on the terminal. Type `poweroff -f`
# (or press Ctrl-] then q, or send SIGTERM) to stop it. Extra arguments go to `pvkvm run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --quiet -p pvkvm
paths=$(guest-images/scripts/build-default-guest.sh)
kernel=$(printf '%s\n' "$paths" | tail -n 2 | head -n 1)
initrd=$(printf '%s\n' "$paths" | tail -n 1)
exec target/release/pvkvm run --kernel "$kernel" --initrd "$initrd" --cmdline "console=hvc0 quiet" "$@"
