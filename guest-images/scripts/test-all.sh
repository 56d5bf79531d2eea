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

# Formatting and lints over all five cargo workspaces (the host crates, the ring-0 shim,
# the engine link check, the PV test kernels and the Linux workload program), warnings
# as errors.
for ws in . pv-shim/shim pv-shim/linkcheck guest-images benches/workload; do
    echo "test-all: cargo fmt --check and cargo clippy -D warnings in $ws" >&2
    (cd "$ws" && cargo fmt --all -- --check && cargo clippy --release --quiet -- -D warnings)
done
cargo clippy --release --quiet --workspace --all-targets -- -D warnings

# The engine as the shim will link it (docs/architecture.md "The engine in the VM"):
# pv-engine and pv-mm in a freestanding image with the shim's flags, no allocation on
# their paths but the known ones, no SSE.
echo "test-all: engine link check (pv-shim/linkcheck/check.sh)" >&2
if ! pv-shim/linkcheck/check.sh; then
    echo "test-all: the engine link check failed: pv-engine/pv-mm no longer link into a" \
        "freestanding image without an allocator or without SSE (see above)" >&2
    exit 1
fi

export PVKVM_REQUIRE_DEBIAN_KERNEL=1
cargo test --workspace --release
