#!/usr/bin/env python3
"""Boot time and VMM memory against guest memory (issue 14): should be near-flat.

Boots the default guest (Debian's 6.1 cloud kernel and pvkvm's default busybox
initramfs, guest-images/cache, cmdline `console=hvc0`) with `pvkvm run --memory SIZE
--stats` for each size, RUNS times each, one run at a time. A run's boot time is the
host's wall time from launching pvkvm to the shell prompt on the console; its peak RSS
is the pvkvm process's VmHWM (read from /proc while it runs, the last value before
`poweroff -f` ends it), and at the prompt its resident memory is split (smaps) into the
guest RAM mapping (what the guest touched: the guest's, not the VMM's) and the rest
(the VMM's own: heap, frame table, the shim region with the M2P). Also keeps, per run,
the guest's own clock (the last printk timestamp before the prompt: the boot without
pvkvm's own start-up), `last_pfn` -> `RAMDISK:` (Linux's direct map, the part
that grew with memory before) and the run's VM exits and posted pagetable stores from
`--stats`. Prints a table of medians and writes JSON with --json.

  benches/boot_memory.py [--sizes 512M,2G,8G,16G] [--runs 3] [--json PATH] [--keep DIR]
                         [--pvkvm BINARY]

Python 3 standard library only; needs target/release/pvkvm (built if missing) and the
default guest (guest-images/scripts/build-default-guest.sh).
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "guest-images" / "cache"
PVKVM = REPO / "target" / "release" / "pvkvm"
PROMPT = b"~ # "


def kernel():
    boots = sorted((CACHE / "boot").glob("vmlinuz-6.1.0-*-cloud-amd64"))
    if not boots:
        sys.exit("no Debian cloud kernel in guest-images/cache/boot: run guest-images/scripts/install-deps.sh")
    return boots[-1]


def vm_hwm_kib(pid):
    """The process's peak resident set (KiB), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def size_bytes(size):
    """'512M', '2G', ... in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size)


def rss_split_kib(pid, ram_bytes):
    """(resident KiB of the guest RAM mapping, resident KiB of everything else) now.

    Guest RAM is the VMM's anonymous mapping of exactly the guest's size: what the
    guest touched of it is the guest's memory, not the VMM's. Everything else (heap,
    frame table, the shim region with its M2P and direct-map tables) is the VMM's."""
    ram = other = 0
    size = 0
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()[0] if line else ""
            if "-" in head and not head.endswith(":"):
                lo, hi = head.split("-")
                size = int(hi, 16) - int(lo, 16)
            elif head == "Rss:":
                kib = int(line.split()[1])
                if size == ram_bytes:
                    ram += kib
                else:
                    other += kib
    except OSError:
        return None, None
    return ram, other


def printk_time(out, text):
    """Linux's printk timestamp (s) of the first console line holding `text`."""
    m = re.search(rb"\[\s*(\d+\.\d+)\][^\n]*" + re.escape(text.encode()), out)
    return float(m.group(1)) if m else None


def last_printk(out):
    """Linux's printk time (s) of the last timestamped console line before the prompt."""
    head = out.split(PROMPT, 1)[0]
    stamps = re.findall(rb"\[\s*(\d+\.\d+)\]", head)
    return float(stamps[-1]) if stamps else None


def boot_once(size, timeout, keep=None):
    initrd = CACHE / "initramfs-default.cpio.gz"
    t0 = time.monotonic()
    p = subprocess.Popen(
        [str(PVKVM), "run", "--kernel", str(kernel()), "--initrd", str(initrd),
         "--cmdline", "console=hvc0", "--memory", size, "--stats",
         "--timeout", str(timeout)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = bytearray()
    err = bytearray()
    cv = threading.Condition()

    def read(stream, into):
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                return
            with cv:
                into.extend(chunk)
                cv.notify_all()

    threads = [threading.Thread(target=read, args=(p.stdout, buf), daemon=True),
               threading.Thread(target=read, args=(p.stderr, err), daemon=True)]
    for t in threads:
        t.start()
    boot = None
    hwm = None
    deadline = t0 + timeout
    with cv:
        while time.monotonic() < deadline and p.poll() is None:
            if PROMPT in buf:
                boot = time.monotonic() - t0
                break
            cv.wait(0.05)
    # VmHWM only grows; the last reading before the poweroff is the boot's peak.
    hwm = vm_hwm_kib(p.pid)
    ram_kib, other_kib = rss_split_kib(p.pid, size_bytes(size))
    try:
        p.stdin.write(b"poweroff -f\n")
        p.stdin.flush()
        p.wait(timeout=60)
    except Exception:
        p.kill()
        p.wait()
    for t in threads:
        t.join(timeout=5)
    out = bytes(buf) + bytes(err)
    if keep:
        Path(keep).write_bytes(out)
    if boot is None:
        tail = bytes(buf[-2000:]).decode(errors="replace")
        raise RuntimeError(f"{size}: no shell prompt within {timeout} s\n{tail}")
    exits = re.search(rb"pvkvm stats: [\d.]+ s, (\d+) VM exits", out)
    stores = re.search(rb"posted pagetable stores: (\d+)", out)
    lp, rd = printk_time(out, "last_pfn"), printk_time(out, "RAMDISK:")
    return {
        "boot_s": boot,
        "peak_rss_mib": hwm / 1024 if hwm else None,
        "guest_ram_rss_mib": ram_kib / 1024 if ram_kib is not None else None,
        "vmm_rss_mib": other_kib / 1024 if other_kib is not None else None,
        "prompt_printk_s": last_printk(out),
        "last_pfn_to_ramdisk_s": (rd - lp) if lp is not None and rd is not None else None,
        "exits": int(exits.group(1)) if exits else None,
        "posted_stores": int(stores.group(1)) if stores else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512M,2G,8G,16G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=200)
    ap.add_argument("--json")
    ap.add_argument("--keep", help="directory for each run's console and --stats output")
    ap.add_argument("--pvkvm", help="the pvkvm binary (default: target/release/pvkvm)")
    a = ap.parse_args()
    global PVKVM
    if a.pvkvm:
        PVKVM = Path(a.pvkvm).resolve()
    elif not PVKVM.exists():
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    results = {}
    for size in a.sizes.split(","):
        runs = []
        for r in range(a.runs):
            keep = None
            if a.keep:
                Path(a.keep).mkdir(parents=True, exist_ok=True)
                keep = Path(a.keep) / f"{size}-{r + 1}.log"
            res = boot_once(size, a.timeout, keep)
            lp = res["last_pfn_to_ramdisk_s"]
            print(f"{size} run {r + 1}: boot {res['boot_s']:.2f} s (last printk "
                  f"{res['prompt_printk_s'] or 0:.2f} s), peak RSS "
                  f"{res['peak_rss_mib'] or 0:.1f} MiB (at the prompt: guest RAM "
                  f"{res['guest_ram_rss_mib'] or 0:.1f} MiB, VMM {res['vmm_rss_mib'] or 0:.1f} MiB), "
                  f"last_pfn->RAMDISK {f'{lp:.2f}' if lp is not None else '?'} s, exits {res['exits']}, "
                  f"posted stores {res['posted_stores']}",
                  flush=True)
            runs.append(res)
        results[size] = runs

    def med(runs, key):
        vals = [r[key] for r in runs if r[key] is not None]
        return statistics.median(vals) if vals else None

    def fmt(v, spec=".2f"):
        return "?" if v is None else format(v, spec)

    print("\n| guest memory | boot to prompt s | last printk s | peak RSS MiB "
          "| guest RAM resident MiB | VMM's own MiB | last_pfn -> RAMDISK s | exits | posted stores |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, runs in results.items():
        print(f"| {size} | {fmt(med(runs, 'boot_s'))} | {fmt(med(runs, 'prompt_printk_s'))} "
              f"| {fmt(med(runs, 'peak_rss_mib'), '.1f')} | {fmt(med(runs, 'guest_ram_rss_mib'), '.1f')} "
              f"| {fmt(med(runs, 'vmm_rss_mib'), '.1f')} | {fmt(med(runs, 'last_pfn_to_ramdisk_s'))} "
              f"| {fmt(med(runs, 'exits'), '.0f')} | {fmt(med(runs, 'posted_stores'), '.0f')} |")
    print("(medians; boot is host wall time from launch to the shell prompt)")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "runs": a.runs, "pvkvm": str(PVKVM),
            "sizes": {s: {"median_boot_s": med(r, "boot_s"),
                          "median_peak_rss_mib": med(r, "peak_rss_mib"),
                          "runs": r} for s, r in results.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
