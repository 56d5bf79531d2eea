#!/usr/bin/env python3
"""pvkvm's benchmark report (issue 5, part 4): one command runs everything and writes
JSON plus a markdown table.

    python3 benches/report.py [--out benches/results] [--skip-linux] [--no-mixed] [--scale 0.5]
                              [--before REV | --no-before] [--rounds N] [--quick [--mixed]]

Parts, in order (each part's failure is recorded in the report, the rest still runs):
  1. `pvkvm probe --json`: the host KVM kind and the trap floors;
  2. benches/micro.py: the PV microbenchmarks (bench_micro kernel), ns per operation
     and VM exits per operation beside the floor those exits cost;
  3. a boot profile of the default guest (Debian cloud kernel + busybox initramfs):
     launch to shell prompt, then `pvkvm run --stats` (exits by hypercall, sub-op, trap
     vector and reason, with the VMM's time);
  4. benches/linux.py --pvkvm-exits --mixed: the Linux workload program on pvkvm and on
     the alternatives (QEMU TCG, Xen under QEMU TCG, QEMU with KVM where that boots), with
     the VM exits each pvkvm figure costs, and the mixed user workload (gzip, sha256sum,
     find, short-lived processes, tcc; one more boot per platform, ~4 min more), unless
     --skip-linux (--no-mixed leaves out only the mixed workload);
  5. before and after (benches/before_after.py): pvkvm built from REV (--before, default
     HEAD~1, in a temporary git worktree) and this tree's, the same figures (getppid, page
     fault, mmap-touch, fork+exit, fork+exec, pipe round trip, memory fill rate, boot to
     prompt, the mixed workload unless --no-mixed) with both binaries, interleaved, with
     exits per operation, each figure's floor and its ratio to it; unless --no-before.
     --quick runs only this part (and the probe its floors come from), one round, no mixed
     workload (--quick --mixed keeps it): a smoke run of 6-7 minutes (10 with --mixed) on
     this host once REV is built.

Writes <out>/report.json and <out>/report.md (machine, host KVM kind, host kernel,
guest kernel, commit, date, then every part's table). Python 3 standard library only;
builds pvkvm, the test kernels and the default guest with the project's own scripts.
"""

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
import before_after  # noqa: E402
import linux  # noqa: E402
PVKVM = os.path.join(ROOT, "target", "release", "pvkvm")


def log(msg):
    print(f"report: {msg}", file=sys.stderr, flush=True)


def run(cmd, cwd=ROOT, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, **kw)


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "host_kernel": platform.release(),
        "commit": commit + ("-dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def build(test_kernels=True):
    # The test kernels build from their own directory (its .cargo/config.toml); only the
    # microbenchmarks need them.
    steps = [(["cargo", "build", "--release", "--quiet", "-p", "pvkvm"], ROOT)]
    if test_kernels:
        steps.append((["cargo", "build", "--release", "--quiet"], os.path.join(ROOT, "guest-images")))
    for cmd, cwd in steps:
        r = run(cmd, cwd=cwd)
        if r.returncode != 0:
            sys.exit(f"report: {' '.join(cmd)} failed:\n{r.stderr}")
    r = run(["guest-images/scripts/build-default-guest.sh"])
    if r.returncode != 0:
        sys.exit(f"report: building the default guest failed:\n{r.stderr}")
    lines = r.stdout.strip().splitlines()
    return lines[-2], lines[-1]


def probe():
    r = run([PVKVM, "probe", "--json"])
    if r.returncode != 0:
        return {"status": "failed", "reason": r.stderr.strip()}
    return json.loads(r.stdout)


def boot_profile(kernel, initrd, timeout=240, pvkvm=PVKVM):
    """Boots the default guest to its prompt, powers it off, returns the figures."""
    cmd = [str(pvkvm), "run", "--kernel", kernel, "--initrd", initrd,
           "--cmdline", "console=hvc0 quiet", "--stats", "--timeout", str(timeout)]
    log("$ " + " ".join(map(str, cmd)))
    start = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    seen = b""
    prompt_s = None
    while time.monotonic() - start < timeout:
        ready, _, _ = select.select([p.stdout], [], [], 1.0)
        if not ready:
            if p.poll() is not None:
                break
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
        if b"~ # " in seen:
            prompt_s = time.monotonic() - start
            break
    if prompt_s is not None:
        p.stdin.write(b"poweroff -f\n")
        p.stdin.flush()
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    err = err.decode(errors="replace")
    if prompt_s is None:
        return {"status": "failed", "reason": "no shell prompt", "stderr": err[-4000:]}
    exits = None
    for line in err.splitlines():
        if line.startswith("pvkvm stats:"):
            exits = int(line.split(",")[1].split()[0])
    return {"status": "ok", "boot_to_prompt_s": round(prompt_s, 2), "vm_exits": exits,
            "stats": err[err.find("pvkvm stats:"):]}


def before_after_part(rev, rounds, mixed, report, default_kernel, default_initrd):
    """Builds pvkvm at `rev` and runs the comparison (benches/before_after.py) against
    this tree's build; a `rev` that does not build still gives the after side."""
    work = linux.Path(ROOT) / "target" / "report-ab"
    work.mkdir(parents=True, exist_ok=True)
    try:
        # The benchmark initramfs (benches/workload of this tree) for both sides.
        _, kernel, initrd = linux.build_all(work, linux.Path(PVKVM))
    except SystemExit as e:  # linux.py dies on a failed build
        return {"status": "failed", "reason": f"building the benchmark initramfs failed ({e})"}
    spec = sizes = mixed_initrd = None
    if mixed:
        spec, sizes = linux.MIXED_SIZES, linux.parse_sizes(linux.MIXED_SIZES)
        cc, why = linux.cc_archive(work)
        mixed_initrd = initrd
        if cc:
            mixed_initrd = work / "initramfs-bench-mixed.cpio.gz"
            mixed_initrd.write_bytes(initrd.read_bytes() + cc.read_bytes())
        else:
            log(f"mixed workload without its compile phase: {why}")
    wl = linux.WORKLOAD / "target" / linux.TARGET / "release" / "pvkvm-workload"
    native, native_reason = before_after.native_figures(wl)
    # The report's own probe (part 1), then one per round (run_rounds).
    probes = [p for p in [before_after.probe_floors(report.get("probe", {}))] if p]
    with before_after.BeforeBuild(rev) as bb:
        info = {"rev": rev, "sha": bb.sha or "?", "after": report["machine"]["commit"]}
        if bb.error:
            info["error"] = bb.error
            log(bb.error)
        counting, emulated_reason = before_after.emulated_counter()
        if not counting:
            log(f"ring-0 instructions not counted: {emulated_reason}")
        after = before_after.Side("after", linux.Path(PVKVM), work / "after", counting)
        before = before_after.Side("before", bb.pvkvm, work / "before", counting) if bb.pvkvm else None
        sides = [s for s in (before, after) if s]
        before_after.run_rounds(sides, rounds, kernel, initrd, default_kernel, default_initrd,
                                boot_profile, mixed_initrd, spec, sizes, probe=probe, probes=probes)
    return {"status": "ok",
            "result": before_after.compare(before, after, native, native_reason, probes, rounds, info,
                                           not_run=() if mixed else ("mixed",),
                                           emulated_reason=emulated_reason)}


def part(name, fn):
    log(f"--- {name}")
    t0 = time.monotonic()
    try:
        out = fn()
    except Exception as e:  # a part's failure must not lose the others
        out = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    log(f"--- {name}: {time.monotonic() - t0:.0f} s")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    ap.add_argument("--skip-linux", action="store_true",
                    help="leave out the Linux workloads and the alternatives")
    ap.add_argument("--no-mixed", action="store_true",
                    help="leave out the mixed user workload of benches/linux.py")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the microbenchmarks' iteration counts")
    ap.add_argument("--before", default="HEAD~1", metavar="REV",
                    help="compare with pvkvm built from this revision (default HEAD~1)")
    ap.add_argument("--no-before", action="store_true", help="leave out the before/after part")
    ap.add_argument("--rounds", type=int, default=None,
                    help="before/after rounds (boots per figure and side; default 3, 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="only the probe and the before/after part, one round, no mixed workload")
    ap.add_argument("--mixed", action="store_true",
                    help="with --quick: keep the mixed workload (one more boot per side, ~2 x 95 s)")
    args = ap.parse_args()
    if args.quick and not args.mixed:
        args.no_mixed = True
    rounds = args.rounds or (1 if args.quick else 3)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    kernel, initrd = build(test_kernels=not args.quick)
    report = {"machine": machine(), "guest_kernel": os.path.basename(kernel)}
    report["probe"] = part("probe", probe)
    report["host_kvm"] = report["probe"].get("kind", "unknown") + " (" + \
        report["probe"].get("module", "?") + ")"

    micro_json = os.path.join(args.out, "micro.json")
    micro_md = os.path.join(args.out, "micro.md")

    def micro():
        r = run([sys.executable, "benches/micro.py", "--json", micro_json,
                 "--markdown", micro_md, "--scale", str(args.scale)])
        if r.returncode != 0:
            return {"status": "failed", "reason": r.stderr[-4000:]}
        with open(micro_json) as f:
            return {"status": "ok", "rows": json.load(f)}

    skipped = {"status": "skipped (--quick)"}
    report["micro"] = skipped if args.quick else part("microbenchmarks", micro)
    report["boot"] = skipped if args.quick else part("boot profile", lambda: boot_profile(kernel, initrd))

    linux_json = os.path.join(args.out, "linux.json")
    linux_md = os.path.join(args.out, "linux.md")

    def linux_part():
        r = run([sys.executable, "benches/linux.py", "--pvkvm-exits", "--json", linux_json,
                 "--markdown", linux_md] + ([] if args.no_mixed else ["--mixed"]))
        if r.returncode != 0:
            return {"status": "failed", "reason": r.stderr[-4000:]}
        with open(linux_json) as f:
            return {"status": "ok", "result": json.load(f)}

    if args.skip_linux or args.quick:
        report["linux"] = {"status": "skipped"}
    else:
        report["linux"] = part("Linux workloads", linux_part)
    if args.no_before:
        report["before_after"] = {"status": "skipped"}
    else:
        report["before_after"] = part("before and after", lambda: before_after_part(
            args.before, rounds, not args.no_mixed, report, kernel, initrd))
    report["total_s"] = round(time.monotonic() - t0, 1)

    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report, micro_md, linux_md)
    if report["before_after"].get("status") == "ok":
        md += "\n" + before_after.markdown(report["before_after"]["result"])
    elif report["before_after"].get("status") != "skipped":
        md += "\n## Before and after\n\n" + not_ok("before/after", report["before_after"]) + "\n"
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {args.out}/report.json and report.md in {report['total_s']} s")


def markdown(report, micro_md, linux_md):
    m = report["machine"]
    out = [
        "# pvkvm benchmark report",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; host kernel "
        f"{m['host_kernel']}",
        f"- host KVM: {report['host_kvm']}",
        f"- guest kernel: {report['guest_kernel']}",
        f"- commit {m['commit']}, {m['date']}; the whole run took {report['total_s']} s",
    ] + mixed_summary(report) + [
        "",
        "## Trap floors (`pvkvm probe`)",
        "",
    ]
    probe = report["probe"]
    if "timings" in probe:
        out += ["| round trip | value |", "|---|---:|"]
        for t in probe["timings"]:
            out.append(f"| {t['name']} | {t['value']:.2f} {t['unit']} |")
    else:
        out.append(not_ok("probe", probe))
    out += ["", "## Microbenchmarks (`benches/micro.py`)", ""]
    if report["micro"].get("status") == "ok" and os.path.exists(micro_md):
        with open(micro_md) as f:
            out.append(f.read().strip())
    else:
        out.append(not_ok("microbenchmarks", report["micro"]))
    out += ["", "## Default guest boot (`pvkvm run --stats`)", ""]
    boot = report["boot"]
    if boot.get("status") == "ok":
        out += [f"Launch to shell prompt {boot['boot_to_prompt_s']} s, "
                f"{boot['vm_exits']} VM exits to poweroff.", "", "```", boot["stats"].rstrip(),
                "```"]
    else:
        out.append(not_ok("boot", boot))
    out += ["", "## Linux workloads and the alternatives (`benches/linux.py`)", ""]
    if report["linux"].get("status") == "ok" and os.path.exists(linux_md):
        with open(linux_md) as f:
            out.append(f.read().strip())
    else:
        out.append(not_ok("Linux workloads", report["linux"]))
    return "\n".join(out) + "\n"


def not_ok(name, result):
    """The line for a part that failed or was skipped, with its reason if it has one."""
    reason = result.get("reason")
    return f"{name} {result.get('status')}" + (f": {reason}" if reason else ".")


def mixed_summary(report):
    """One line with the mixed user workload's total per platform (the table itself is in
    the Linux workloads section, from linux.md)."""
    mixed = (report.get("linux", {}).get("result") or {}).get("mixed")
    if not mixed:
        return []
    cells = []
    for name, p in mixed["platforms"].items():
        total = (p.get("phases") or {}).get("mixed_total")
        cells.append(f"{name} {total:.1f} s" if total is not None else f"{name} failed")
    return ["- mixed user workload (`benches/linux.py --mixed`, "
            + ",".join(f"{k}={v}" for k, v in mixed["sizes"].items()) + "), total: "
            + ", ".join(cells)]


if __name__ == "__main__":
    main()
