#!/usr/bin/env python3
"""A parallel Linux workload on 1, 2 and 4 vCPUs (issue 13): the speed-up SMP gives.

Boots the default guest (Debian's 6.1 cloud kernel and pvkvm's default busybox
initramfs, guest-images/cache) with `pvkvm run --vcpus N` for each N, waits for the
shell, then runs the same fixed amount of work several times: JOBS checksum jobs (each
`dd` of MIB MiB of zeros into `sha256sum`) started at once, so that N vCPUs can run N
of them at a time. The time of one round is measured on the host, from sending the
command to reading the line it prints when every job is done; a round with a wrong sum
fails the run. Prints a table (median and min per N, and the speed-up against 1 vCPU)
and writes JSON with --json.

  benches/smp_linux.py [--vcpus 1,2,4] [--rounds 5] [--jobs 4] [--mib 64] [--json PATH]

Python 3 standard library only; needs target/release/pvkvm (built if missing) and the
default guest (guest-images/scripts/build-default-guest.sh).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "guest-images" / "cache"
PVKVM = REPO / "target" / "release" / "pvkvm"
ZERO_SHA256 = {
    # sha256 of n MiB of zeros, for the sizes the script accepts.
    64: "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351",
}


def kernel():
    boots = sorted((CACHE / "boot").glob("vmlinuz-6.1.0-*-cloud-amd64"))
    if not boots:
        sys.exit("no Debian cloud kernel in guest-images/cache/boot: run guest-images/scripts/install-deps.sh")
    return boots[-1]


class Guest:
    """A pvkvm run whose console is this script's to read and write."""

    def __init__(self, vcpus, memory):
        initrd = CACHE / "initramfs-default.cpio.gz"
        self.p = subprocess.Popen(
            [str(PVKVM), "run", "--kernel", str(kernel()), "--initrd", str(initrd),
             "--cmdline", "console=hvc0", "--vcpus", str(vcpus), "--memory", memory,
             "--timeout", "900"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            chunk = self.p.stdout.read1(65536)
            if not chunk:
                return
            with self.cv:
                self.buf += chunk
                self.cv.notify_all()

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def wait_for(self, text, start, timeout):
        """Offset just past `text` found at or after `start`, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                i = self.buf.find(text.encode(), start)
                if i >= 0:
                    return i + len(text)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def end(self):
        try:
            self.send("poweroff -f")
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()


def measure(vcpus, rounds, jobs, mib):
    g = Guest(vcpus, "1G")
    try:
        at = g.wait_for("~ # ", 0, 300)
        if at is None:
            raise RuntimeError(f"no shell with {vcpus} vCPUs")
        g.send("stty cols 4000; set +m; dmesg -n 1")
        times = []
        for r in range(rounds):
            mark = f"ROUND-{vcpus}-{r}-DONE"
            # The command's echo must not hold the mark: quotes split it there.
            job = (f"rm -f /tmp/s.*; for i in $(seq {jobs}); do (dd if=/dev/zero bs=1M"
                   f" count={mib} 2>/dev/null | sha256sum > /tmp/s.$i) & done; wait;"
                   f" echo ROUND-{vcpus}-{r}-\"\"DONE $(cat /tmp/s.* | grep -c {ZERO_SHA256[mib]})")
            start = len(g.buf)
            t0 = time.monotonic()
            g.send(job)
            end = g.wait_for(f"{mark} ", start, 600)
            t1 = time.monotonic()
            if end is None:
                raise RuntimeError(f"round {r} with {vcpus} vCPUs did not finish")
            got = g.buf[end:end + 8].split()[0].decode()
            if got != str(jobs):
                raise RuntimeError(f"round {r} with {vcpus} vCPUs: {got} of {jobs} sums right")
            times.append(t1 - t0)
        return times
    finally:
        g.end()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--mib", type=int, default=64, choices=sorted(ZERO_SHA256))
    ap.add_argument("--json")
    a = ap.parse_args()
    if not PVKVM.exists():
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    results = {}
    for n in [int(x) for x in a.vcpus.split(",")]:
        print(f"{n} vCPU(s): {a.rounds} rounds of {a.jobs} x {a.mib} MiB sha256 ...", flush=True)
        results[n] = measure(n, a.rounds, a.jobs, a.mib)
    base = statistics.median(results[min(results)])
    host_cpus = os.cpu_count()
    print(f"\nhost: {host_cpus} CPUs; work per round: {a.jobs} jobs x {a.mib} MiB")
    print("| vCPUs | median s | min s | speed-up vs 1 |")
    print("|---:|---:|---:|---:|")
    for n, t in sorted(results.items()):
        print(f"| {n} | {statistics.median(t):.2f} | {min(t):.2f} | {base / statistics.median(t):.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "host_cpus": host_cpus, "jobs": a.jobs, "mib": a.mib,
            "seconds": {str(n): t for n, t in results.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
