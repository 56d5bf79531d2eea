#!/usr/bin/env bash
# The README's test command: installs what is missing, fetches the Debian guest kernels,
# then builds and runs every test of the workspace (unit, property, and the integration
# tests that build pvkvm's own PV test kernels and boot each under pvkvm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! [[ -r /dev/kvm && -w /dev/kvm ]]; then
    echo "test-all: /dev/kvm is missing or not accessible: pvkvm's tests boot guests and need KVM" >&2
    exit 1
fi

guest-images/scripts/install-deps.sh >/dev/null

# Formatting and lints over all four cargo workspaces (the host crates, the ring-0 shim,
# the PV test kernels and the Linux workload program), warnings as errors.
for ws in . pv-shim/shim guest-images benches/workload; do
    echo "test-all: cargo fmt --check and cargo clippy -D warnings in $ws" >&2
    (cd "$ws" && cargo fmt --all -- --check && cargo clippy --release --quiet -- -D warnings)
done
cargo clippy --release --quiet --workspace --all-targets -- -D warnings

export PVKVM_REQUIRE_DEBIAN_KERNEL=1
cargo test --workspace --release
