#!/usr/bin/env bash
# The README's first command: builds pvkvm and the default guest, then boots it.
# Until the Debian guest boots, the default guest is the `hello` PV test kernel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --quiet -p pvkvm
(cd guest-images && cargo build --release --quiet)
exec target/release/pvkvm run --kernel guest-images/target/x86_64-unknown-linux-gnu/release/hello "$@"
