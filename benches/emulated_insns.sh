#!/usr/bin/env bash
# Counts the instructions the host's KVM emulated while a command ran, per guest rip:
# on a software-KVM host (kvm_pvm) every ring-0 instruction of the shim is emulated, and
# `pvkvm run --stats` counts exits, not these (docs/performance.md, "Where a boot's time
# went"). Uses the host's `kvm:kvm_emulate_insn` tracepoint (tracefs; root), so run it
# with nothing else using KVM on the host.
#
#   benches/emulated_insns.sh [-n TOP] -- target/release/pvkvm run --kernel K ...
#
# Prints the total and the TOP (default 25) rips with their count and instruction bytes.
set -euo pipefail

top=25
while [[ $# -gt 0 && $1 != -- ]]; do
    case $1 in
        -n) top=$2; shift 2 ;;
        *) echo "usage: $0 [-n TOP] -- COMMAND..." >&2; exit 2 ;;
    esac
done
[[ ${1:-} == -- ]] && shift
[[ $# -gt 0 ]] || { echo "usage: $0 [-n TOP] -- COMMAND..." >&2; exit 2; }

t=/sys/kernel/tracing
if [[ ! -d $t/events ]]; then
    mount -t tracefs none "$t" 2>/dev/null || true
fi
ev=$t/events/kvm/kvm_emulate_insn
[[ -e $ev/enable ]] || { echo "$0: no kvm:kvm_emulate_insn tracepoint under $t (root, tracefs, kvm loaded?)" >&2; exit 1; }

out=$(mktemp)
cleanup() {
    echo 0 > "$t/tracing_on" 2>/dev/null || true
    echo 0 > "$ev/enable" 2>/dev/null || true
    [[ -n ${reader:-} ]] && kill "$reader" 2>/dev/null || true
    rm -f "$out"
}
trap cleanup EXIT

echo 0 > "$t/tracing_on"
echo > "$t/trace"
echo 65536 > "$t/buffer_size_kb"
echo 1 > "$ev/enable"
cat "$t/trace_pipe" > "$out" &
reader=$!
echo 1 > "$t/tracing_on"
set +e
"$@"
status=$?
set -e
echo 0 > "$t/tracing_on"
sleep 1
kill "$reader" 2>/dev/null || true
wait "$reader" 2>/dev/null || true

lost=$(grep -h overrun "$t"/per_cpu/cpu*/stats | awk '{s += $2} END {print s + 0}')
# Lines look like: "... kvm_emulate_insn: 0:ffff81000004145c:e6 e1 (prot64)"; a retried
# instruction appears twice, once marked "failed".
awk -v top="$top" -v lost="$lost" -v status="$status" '
    / kvm_emulate_insn: / && !/ failed/ {
        s = $0; sub(/.* kvm_emulate_insn: [0-9]+:/, "", s)
        split(s, a, ":"); rip = a[1]; bytes = a[2]; sub(/ \(.*/, "", bytes)
        n[rip]++; b[rip] = bytes; total++
    }
    END {
        printf "emulated instructions: %d (command exit status %d, tracepoint events lost: %d)\n", total, status, lost
        k = 0
        for (r in n) { k++; keys[k] = r }
        # Selection of the top entries (k is small: distinct rips).
        for (i = 1; i <= k && i <= top; i++) {
            m = i
            for (j = i + 1; j <= k; j++) if (n[keys[j]] > n[keys[m]]) m = j
            tmp = keys[i]; keys[i] = keys[m]; keys[m] = tmp
            printf "%10d  %s  %s\n", n[keys[i]], keys[i], b[keys[i]]
        }
    }' "$out"
exit "$status"
