#!/usr/bin/env python3
"""Microbenchmarks of pvkvm's PV operations (issue 5, part 1).

Runs the `bench_micro` PV kernel (guest-images/src/bin/bench_micro.rs) once per
benchmark with `iters=0` and once with `iters=N`, in a fresh pvkvm VM each time, and
combines what the guest measured (ns per operation from the TSC: median, p10, p90) with
what pvkvm counted (`pvkvm run --stats`): the VM exits an operation costs are

    traps_per_op = (exits(iters=N) - exits(iters=0)) / (N * units per iteration)

taken from the `pvkvm stats: <secs> s, <exits> VM exits` line, so everything the kernel
does besides the timed iterations (boot, setup, warm-up, console lines) cancels out. The
host's trap floor comes from one `pvkvm probe --json`: each exit kind is charged the
probe's round trip of that kind (hypercall doorbell: "syscall -> VMM -> guest (sync
regs)"; trap doorbell: "int3 -> shim stub -> VMM -> iretq"; apply refill: "out from ring 0
-> VMM -> guest"), so floor_ns is what the exits alone cost.

Usage (from anywhere; builds pvkvm and the test kernels with cargo only if missing):

    python3 benches/micro.py --json micro.json --markdown micro.md [--scale 0.5] [--only ROW,..]

Python 3 standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PVKVM = os.path.join(ROOT, "target", "release", "pvkvm")
KERNEL = os.path.join(
    ROOT, "guest-images", "target", "x86_64-unknown-linux-gnu", "release", "bench_micro"
)

# Benchmark runs of the kernel and their iteration counts (traps cost ~100-150 us on the
# software-KVM hosts here; the whole list takes well under a minute there).
RUNS = [
    ("null_hypercall", 2000),
    ("null_hypercall_enosys", 2000),
    ("mmu_update_1", 2000),
    ("mmu_update_8", 1000),
    ("mmu_update_64", 600),
    ("mmu_update_512", 200),
    ("uvm_none", 1000),
    ("uvm_invlpg", 1000),
    ("uvm_tlb_flush", 1000),
    ("trapped_pte_write", 1000),
    ("pin_unpin_l1", 600),
    ("pin_unpin_l4", 400),
    ("new_baseptr", 600),
    ("exception_int3", 600),
    ("exception_pf", 600),
    ("evtchn_send_self", 600),
    ("syscall_user", 600),
    ("multicall_uvm32", 600),
]
MAX_ITERS = 4096

# `pvkvm probe --json` timings charged per exit kind.
PROBE_RT = {
    "hypercall": "syscall -> VMM -> guest (sync regs)",
    "trap": "int3 -> shim stub -> VMM -> iretq",
    "refill": "out from ring 0 -> VMM -> guest",
}

STATS_RE = re.compile(r"pvkvm stats: ([0-9.]+) s, (\d+) VM exits")
KINDS_RE = re.compile(
    r"exits: hypercall doorbell (\d+), trap doorbell (\d+), apply refill (\d+), "
    r"interrupted (\d+), other (\d+)"
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_if_missing(pvkvm, kernel):
    """Builds pvkvm and the PV test kernels with cargo if their binaries are missing."""
    if not os.path.exists(pvkvm):
        log("building pvkvm (cargo build --release -p pvkvm)")
        subprocess.run(["cargo", "build", "--release", "-p", "pvkvm"], cwd=ROOT, check=True)
    if not os.path.exists(kernel):
        log("building the PV test kernels (cd guest-images && cargo build --release)")
        subprocess.run(
            ["cargo", "build", "--release"], cwd=os.path.join(ROOT, "guest-images"), check=True
        )


def probe(pvkvm):
    """One `pvkvm probe --json`: round trip per exit kind in ns, and the raw report."""
    out = subprocess.run([pvkvm, "probe", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    by_name = {t["name"]: t for t in report.get("timings", [])}
    rt = {}
    for kind, name in PROBE_RT.items():
        t = by_name.get(name)
        if t is None:
            raise SystemExit(f"pvkvm probe --json has no timing {name!r}")
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6}.get(t["unit"])
        if scale is None:
            raise SystemExit(f"probe timing {name!r} in unexpected unit {t['unit']!r}")
        rt[kind] = t["value"] * scale
    return rt, report


def parse_kv(line):
    """`bench row=a run=b unit=round trip iters=3 ...` -> dict (values may hold spaces)."""
    body = line[len("bench ") :]
    out = {}
    keys = list(re.finditer(r"(?:^| )([a-z_0-9]+)=", body))
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(body)
        out[m.group(1)] = body[m.end() : end]
    return out


def run_kernel(pvkvm, kernel, bench, iters, timeout):
    """Boots bench_micro once; returns (rows, stats) or raises with the output."""
    cmd = [
        pvkvm,
        "run",
        "--kernel",
        kernel,
        "--stats",
        "--timeout",
        str(timeout),
        "--cmdline",
        f"bench={bench} iters={iters}",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    rows = [parse_kv(l) for l in p.stdout.splitlines() if l.startswith("bench ")]
    m = STATS_RE.search(p.stderr)
    k = KINDS_RE.search(p.stderr)
    ok = p.returncode == 0 and "Test result: SUCCESS" in p.stdout and m and k and rows
    if not ok:
        raise RuntimeError(
            f"{' '.join(cmd)}: exit status {p.returncode}\n--- console ---\n{p.stdout}"
            f"--- pvkvm ---\n{p.stderr}"
        )
    stats = {
        "seconds": float(m.group(1)),
        "exits": int(m.group(2)),
        "hypercall": int(k.group(1)),
        "trap": int(k.group(2)),
        "refill": int(k.group(3)),
        "interrupted": int(k.group(4)),
        "other": int(k.group(5)),
    }
    return rows, stats


def measure(pvkvm, kernel, bench, iters, rt, timeout):
    """Both runs of one benchmark -> result rows."""
    rows0, s0 = run_kernel(pvkvm, kernel, bench, 0, timeout)
    rows, s1 = run_kernel(pvkvm, kernel, bench, iters, timeout)
    unsupported = [r for r in rows if "reason" in r] or [r for r in rows0 if "reason" in r]
    if unsupported:
        return [
            {
                "name": r["row"],
                "run": bench,
                "unit": None,
                "iters": iters,
                "median_ns": None,
                "p10_ns": None,
                "p90_ns": None,
                "traps_per_op": None,
                "floor_ns": None,
                "unsupported": r["reason"],
            }
            for r in unsupported
        ]
    out = []
    for r in rows:
        run_ops = int(r["run_ops_per_iter"])
        units = iters * run_ops
        delta = {kind: s1[kind] - s0[kind] for kind in s0}
        per_op = {kind: delta[kind] / units for kind in ("hypercall", "trap", "refill")}
        floor = sum(per_op[kind] * rt[kind] for kind in per_op)
        out.append(
            {
                "name": r["row"],
                "run": bench,
                "unit": r["unit"],
                "iters": iters,
                "samples": int(r["samples"]),
                "median_ns": float(r["median_ns"]),
                "p10_ns": float(r["p10_ns"]),
                "p90_ns": float(r["p90_ns"]),
                "min_ns": float(r["min_ns"]),
                "max_ns": float(r["max_ns"]),
                "median_cycles": int(r["median_cycles"]),
                "tsc_khz": int(r["tsc_khz"]),
                "traps_per_op": delta["exits"] / units,
                "traps_per_iter": delta["exits"] / iters,
                "expect_traps_per_iter": int(r["expect_exits_per_iter"]),
                "hypercall_exits_per_op": per_op["hypercall"],
                "trap_exits_per_op": per_op["trap"],
                "refill_exits_per_op": per_op["refill"],
                "other_exits_per_iter": (delta["interrupted"] + delta["other"]) / iters,
                "floor_ns": floor,
                "wall_s": s1["seconds"],
            }
        )
    return out


def fmt_ns(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def markdown(rows, rt, probe_report):
    lines = [
        f"Host: {probe_report.get('kind')} ({probe_report.get('module')}), "
        f"TSC {probe_report.get('tsc_mhz')} MHz. Round trips from `pvkvm probe`: hypercall "
        f"doorbell {rt['hypercall'] / 1e3:.1f} us, trap doorbell {rt['trap'] / 1e3:.1f} us, "
        f"apply refill {rt['refill'] / 1e3:.1f} us.",
        "",
        "| row | unit | iters | median ns | p10 ns | p90 ns | traps/op | floor ns | median - floor ns "
        "| exits/iter (kernel's count) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("unsupported"):
            lines.append(f"| `{r['name']}` | unsupported: {r['unsupported']} | | | | | | | | |")
            continue
        lines.append(
            f"| `{r['name']}` | {r['unit']} | {r['iters']} | {fmt_ns(r['median_ns'])} | "
            f"{fmt_ns(r['p10_ns'])} | {fmt_ns(r['p90_ns'])} | {r['traps_per_op']:.3f} | "
            f"{fmt_ns(r['floor_ns'])} | {fmt_ns(r['median_ns'] - r['floor_ns'])} | "
            f"{r['traps_per_iter']:g} ({r['expect_traps_per_iter']}) |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the result rows as JSON here")
    ap.add_argument("--markdown", help="write a markdown table here")
    ap.add_argument("--pvkvm", default=PVKVM, help="pvkvm binary (default: target/release/pvkvm)")
    ap.add_argument("--kernel", default=KERNEL, help="bench_micro kernel")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count")
    ap.add_argument("--only", help="comma-separated benchmark runs to do (default: all)")
    ap.add_argument("--timeout", type=int, default=120, help="per-VM timeout in seconds")
    args = ap.parse_args()

    build_if_missing(args.pvkvm, args.kernel)
    started = time.monotonic()
    rt, probe_report = probe(args.pvkvm)
    log(
        "probe: hypercall %.1f us, trap %.1f us, refill %.1f us"
        % (rt["hypercall"] / 1e3, rt["trap"] / 1e3, rt["refill"] / 1e3)
    )
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for bench, iters in RUNS:
        if only and bench not in only:
            continue
        n = max(1, min(MAX_ITERS, int(iters * args.scale)))
        try:
            got = measure(args.pvkvm, args.kernel, bench, n, rt, args.timeout)
        except RuntimeError as e:
            log(str(e))
            raise SystemExit(f"benchmark {bench} failed")
        for r in got:
            if not r.get("unsupported") and r["traps_per_iter"] != r["expect_traps_per_iter"]:
                log(
                    f"warning: {r['name']}: {r['traps_per_iter']:g} exits per iteration, the "
                    f"kernel makes {r['expect_traps_per_iter']} hypercalls and traps"
                )
            if r.get("unsupported"):
                log(f"{r['name']:>18}: unsupported: {r['unsupported']}")
            else:
                log(
                    f"{r['name']:>18}: median {fmt_ns(r['median_ns'])} ns/{r['unit']} "
                    f"(p10 {fmt_ns(r['p10_ns'])}, p90 {fmt_ns(r['p90_ns'])}), "
                    f"{r['traps_per_op']:.3f} traps/op, floor {fmt_ns(r['floor_ns'])} ns"
                )
        rows.extend(got)
    log(f"total {time.monotonic() - started:.1f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
    md = markdown(rows, rt, probe_report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if not args.json and not args.markdown:
        sys.stdout.write(md)


if __name__ == "__main__":
    main()
