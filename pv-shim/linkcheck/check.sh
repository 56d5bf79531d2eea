#!/usr/bin/env bash
# The engine-in-the-VM link check (issue 14, item 3; see src/main.rs and
# docs/architecture.md "The engine in the VM"): links pv-engine and pv-mm into a
# freestanding image with the ring-0 shim's flags (vmm/build.rs) and SSE disabled, then
#  1. allocation: the image's global allocator references a symbol nothing defines, so
#     the link succeeds only when no allocation is reachable from the engine's entry
#     points. When it fails, the image is linked again with undefined symbols allowed
#     and reach.py names the paths from pv-engine/pv-mm into the allocator: those
#     listed in known-allocations.txt (work still to do; none today) are reported, any
#     other path fails, one-time lazy initialisation included;
#  2. the engine's dispatch and pv-mm are really in the image (the check is not vacuous);
#  3. the image holds no SSE/AVX/MMX instruction.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
target_dir=${PVKVM_LINKCHECK_TARGET_DIR:-$here/target}

# The shim's flags (vmm/build.rs, without its linker script: the check needs no layout),
# plus what the engine in ring 0 needs: no SSE anywhere in the image (guest vector
# registers are live while the shim runs). rustc warns that x86_64-unknown-linux-gnu's
# ABI wants SSE2: nothing in the engine passes floats, and step 3 checks the result.
flags=(
    -C panic=abort
    -C relocation-model=pie
    -C no-redzone=yes
    -C target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2
    -C link-arg=-nostartfiles
    -C link-arg=-nostdlib
    -C link-arg=-static
    -C link-arg=-Wl,--gc-sections
    -C link-arg=-Wl,--build-id=none
)
# CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
encode() {
    local e
    e=$(printf '%s\x1f' "$@")
    printf '%s' "${e%$'\x1f'}"
}
build() { # build TARGET_DIR FLAGS...
    local dir=$1
    shift
    (cd "$here" && env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_TARGET_DIR \
        CARGO_ENCODED_RUSTFLAGS="$(encode "$@")" \
        cargo build --release --quiet --target "$target" --target-dir "$dir")
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
image="$target_dir/$target/release/pv-linkcheck"
if build "$target_dir" "${flags[@]}" >"$log" 2>&1; then
    echo "linkcheck: the image links with no allocator at all" >&2
else
    if ! grep -q pvkvm_linkcheck_allocation_reached "$log"; then
        cat "$log" >&2
        echo "linkcheck: FAILED: the freestanding image with pv-engine and pv-mm did not build" >&2
        exit 1
    fi
    if ! build "$target_dir/diag" "${flags[@]}" -C link-arg=-Wl,--unresolved-symbols=ignore-all \
        >"$log" 2>&1; then
        cat "$log" >&2
        echo "linkcheck: FAILED: the image did not link even with undefined symbols allowed" >&2
        exit 1
    fi
    image="$target_dir/diag/$target/release/pv-linkcheck"
    dis=$(mktemp)
    objdump -d --no-show-raw-insn "$image" >"$dis"
    if ! python3 "$here/reach.py" "$dis" "$here/known-allocations.txt" | c++filt >"$log"; then
        sed 's/^/  /' "$log" >&2
        rm -f "$dis"
        echo "linkcheck: FAILED: a new path from the engine's entry points allocates (NEW" \
            "above); pv-engine and pv-mm use fixed or caller-provided storage on every" \
            "hypercall/trap path" >&2
        exit 1
    fi
    rm -f "$dis"
    echo "linkcheck: the allocator is reached only by known paths (still to remove):" >&2
    sed 's/^/  /' "$log" >&2
fi

symbols=$(nm -C "$image")
for sym in 'pv_engine::hypercall::dispatch' 'pv_engine::ptwr::decode' 'pv_mm::mm::Mm::'; do
    if ! grep -qF "$sym" <<<"$symbols"; then
        echo "linkcheck: FAILED: $sym is not in the image: the entry points no longer reach it" >&2
        exit 1
    fi
done
sse=$(objdump -d --no-show-raw-insn "$image" | grep -E '%([xyz]mm[0-9]|mm[0-7]\b)' || true)
if [[ -n "$sse" ]]; then
    echo "$sse" | head -20 >&2
    echo "linkcheck: FAILED: the image uses SSE/AVX/MMX registers ($(echo "$sse" | wc -l) instructions above)" >&2
    exit 1
fi
echo "linkcheck: ok: pv-engine + pv-mm link freestanding, no SSE" \
    "($(stat -c %s "$image") bytes, $(objdump -d "$image" | grep -c '^ ') instructions)" >&2
