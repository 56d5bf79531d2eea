#!/usr/bin/env python3
"""SMP costs of pvkvm: IPI round trips and remote TLB flushes between two vCPUs.

Boots the `bench_smp` PV kernel (guest-images/src/bin/bench_smp.rs) with `--vcpus 2`
`--runs` times, each in a fresh VM, and reports per figure the median over the runs of
the kernel's per-run median and mean (ns per operation, from the TSC), plus the spread of
the per-run medians. The figures, all timed on vCPU 0:

    null_hypercall        xen_version(XENVER_version): the exit floor
    local_flush           MMUEXT_TLB_FLUSH_LOCAL: the baseline of a flush
    ipi_rtt_spin          IPI to vCPU 1 spinning (events masked) on its pending bit, answer back
    ipi_rtt_blocked       the same with vCPU 1 blocked in SCHEDOP_poll (the wake-up included)
    flush_{multi,all}_guest    MMUEXT_TLB_FLUSH_MULTI (vCPU 1) / _ALL, vCPU 1 in guest code
    flush_{multi,all}_blocked  the same, vCPU 1 blocked in SCHEDOP_poll
    flush_{multi,all}_down     the same, vCPU 1 down (VCPUOP_down)

Usage (from anywhere; builds pvkvm and the test kernels with cargo only if missing):

    python3 benches/smp.py [--runs 5] [--iters 300] [--json smp.json] [--markdown smp.md]

Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PVKVM = os.path.join(ROOT, "target", "release", "pvkvm")
KERNEL = os.path.join(
    ROOT, "guest-images", "target", "x86_64-unknown-linux-gnu", "release", "bench_smp"
)

# The figures the kernel prints, in its order (a run missing one is a failed run).
FIGURES = [
    "null_hypercall",
    "local_flush",
    "ipi_rtt_spin",
    "ipi_rtt_blocked",
    "flush_multi_guest",
    "flush_all_guest",
    "flush_multi_blocked",
    "flush_all_blocked",
    "flush_multi_down",
    "flush_all_down",
]
MAX_ITERS = 4096

KINDS_RE = re.compile(r"exits: hypercall doorbell (\d+), .*?interrupted (\d+)")


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


def parse_kv(line):
    """`bench row=a run=b unit=round trip iters=3 ...` -> dict (values may hold spaces)."""
    body = line[len("bench ") :]
    out = {}
    keys = list(re.finditer(r"(?:^| )([a-z_0-9]+)=", body))
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(body)
        out[m.group(1)] = body[m.end() : end]
    return out


def run_kernel(pvkvm, kernel, iters, timeout):
    """Boots bench_smp once with 2 vCPUs; returns ({row: fields}, kicks) or raises."""
    cmd = [
        pvkvm,
        "run",
        "--kernel",
        kernel,
        "--vcpus",
        "2",
        "--stats",
        "--timeout",
        str(timeout),
        "--cmdline",
        f"iters={iters}",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    rows = {}
    for line in p.stdout.splitlines():
        if line.startswith("bench "):
            r = parse_kv(line)
            rows[r["row"]] = r
    missing = [f for f in FIGURES if f not in rows]
    if p.returncode != 0 or "Test result: SUCCESS" not in p.stdout or missing:
        raise RuntimeError(
            f"{' '.join(cmd)}: exit status {p.returncode}, missing figures {missing}\n"
            f"--- console ---\n{p.stdout}--- pvkvm ---\n{p.stderr}"
        )
    # Exits of vCPU threads kicked out of the guest (remote flushes, wake-ups) over the
    # whole run: a sanity check that the "guest" flushes really kicked.
    k = KINDS_RE.search(p.stderr)
    interrupted = int(k.group(2)) if k else None
    return rows, interrupted


def fmt_ns(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def summarize(runs, iters):
    """Per figure: median over the runs of the per-run median and mean."""
    out = []
    for name in FIGURES:
        medians = [float(r[name]["median_ns"]) for r in runs]
        means = [float(r[name]["mean_ns"]) for r in runs]
        first = runs[0][name]
        out.append(
            {
                "name": name,
                "unit": first["unit"],
                "what": first.get("what", ""),
                "iters": iters,
                "runs": len(runs),
                "median_ns": statistics.median(medians),
                "mean_ns": statistics.median(means),
                "run_medians_min_ns": min(medians),
                "run_medians_max_ns": max(medians),
                "p10_ns": statistics.median(float(r[name]["p10_ns"]) for r in runs),
                "p90_ns": statistics.median(float(r[name]["p90_ns"]) for r in runs),
                "tsc_khz": int(first["tsc_khz"]),
            }
        )
    return out


def markdown(rows, host):
    lines = [
        f"Host: {host}. Median over {rows[0]['runs']} runs of {rows[0]['iters']} iterations "
        "each (ns per operation; vCPU 0's TSC).",
        "",
        "| figure | unit | median ns | mean ns | per-run medians ns | p10 ns | p90 ns |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {r['unit']} | {fmt_ns(r['median_ns'])} | {fmt_ns(r['mean_ns'])} | "
            f"{fmt_ns(r['run_medians_min_ns'])} - {fmt_ns(r['run_medians_max_ns'])} | "
            f"{fmt_ns(r['p10_ns'])} | {fmt_ns(r['p90_ns'])} |"
        )
    return "\n".join(lines) + "\n"


def host_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="VMs to boot (default 5)")
    ap.add_argument("--iters", type=int, default=300, help="iterations per figure and run")
    ap.add_argument("--json", help="write the summary (and every run's rows) as JSON here")
    ap.add_argument("--markdown", help="write the markdown table here too")
    ap.add_argument("--pvkvm", default=PVKVM, help="pvkvm binary (default: target/release/pvkvm)")
    ap.add_argument("--kernel", default=KERNEL, help="bench_smp kernel")
    ap.add_argument("--timeout", type=int, default=300, help="per-VM timeout in seconds")
    args = ap.parse_args()
    if args.runs < 1 or not 1 <= args.iters <= MAX_ITERS:
        raise SystemExit(f"--runs must be >= 1 and --iters in 1..{MAX_ITERS}")

    build_if_missing(args.pvkvm, args.kernel)
    started = time.monotonic()
    runs = []
    kicks = []
    for i in range(args.runs):
        try:
            rows, interrupted = run_kernel(args.pvkvm, args.kernel, args.iters, args.timeout)
        except RuntimeError as e:
            log(str(e))
            raise SystemExit(f"run {i + 1} failed")
        runs.append(rows)
        kicks.append(interrupted)
        log(
            f"run {i + 1}/{args.runs}: "
            + ", ".join(f"{f} {fmt_ns(float(rows[f]['median_ns']))}" for f in FIGURES)
        )
    log(f"total {time.monotonic() - started:.1f} s")

    host = host_cpu()
    summary = summarize(runs, args.iters)
    md = markdown(summary, host)
    sys.stdout.write(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "host": host,
                    "runs": args.runs,
                    "iters": args.iters,
                    "figures": summary,
                    "interrupted_exits_per_run": kicks,
                    "per_run": [
                        {f: {k: r[f][k] for k in ("median_ns", "mean_ns")} for f in FIGURES}
                        for r in runs
                    ],
                },
                f,
                indent=2,
            )
            f.write("\n")


if __name__ == "__main__":
    main()
