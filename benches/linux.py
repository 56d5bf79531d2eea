#!/usr/bin/env python3
"""Linux workloads on pvkvm and its alternatives (issue 5, part 2).

Builds pvkvm, the guest benchmark (benches/workload, static) and a benchmark initramfs
(the default guest's busybox initramfs with the benchmark and benches/workload/init as
/init appended), then boots the default guest kernel (Debian's linux-image-6.1.0-*-cloud-
amd64) with it on each platform, one after the other:

  pvkvm      target/release/pvkvm run ... --stats (Xen PV on this host's KVM)
  qemu-tcg   qemu-system-x86_64 -accel tcg (full emulation), console ttyS0
  xen-tcg    Debian's Xen 4.17 hypervisor, the same kernel as its PV dom0, all inside
             qemu-system-x86_64 -accel tcg (the kernel's output comes through the
             kernel log: see benches/workload/init, pvkvm.bench_out=kmsg)
  qemu-kvm   qemu-system-x86_64 -enable-kvm (a normal HVM guest on this host's KVM)

For each it records the time from launch to the benchmark's first line (boot_s) and the
benchmark's figures (median, p10, p90 in ns), and writes JSON (--json) and a markdown
table with the ratios pvkvm/other (--markdown). Every boot has a time limit; a platform
that fails is reported with the reason and the script goes on. Installs what is missing
(qemu-system-x86 with apt-get, as root; the Xen hypervisor .deb is only downloaded and
unpacked, never installed). Python 3 standard library only.

  benches/linux.py [--json PATH] [--markdown PATH] [--platforms pvkvm,qemu-tcg,xen-tcg,qemu-kvm]
                   [--pvkvm-exits] [--no-disk] [--no-net] [--xen-tcg-disk]
                   [--mixed | --mixed-only] [--mixed-sizes mib=32,dirs=40,files=50,procs=60,cc=8]

Disk and TCP figures (issue 11; --no-disk, --no-net leave them out): each guest gets a
scratch raw image (256 MiB, sparse, in the work directory, deleted after the boot) as its
disk (pvkvm --disk IMG,format=raw: /dev/xvda through pvkvm's blkback; QEMU -drive
if=virtio,cache=writeback: /dev/vda; Xen in TCG: the same virtio disk seen by dom0, which
is not Xen's blkback, and gets no interrupt there: not run unless --xen-tcg-disk) and,
except under Xen, a user-mode NIC (pvkvm --net user through
passt; QEMU -netdev user, slirp) to reach a peer thread of this script on 127.0.0.1:
disk_seq_write/read (O_DIRECT 1 MiB requests, 64 MiB), disk_rand_write/read (4 KiB,
QD1, up to 500), tcp_rtt (1 byte, up to 200), tcp_tx/rx (per MiB, up to 16 MiB). The
benchmark initramfs adds virtio_blk and virtio_net (modules.py, from the kernel's .deb).

--pvkvm-exits adds, for pvkvm, the VM exits and hypercalls per operation of each figure
(one boot per figure, from `pvkvm run --stats`).

--mixed adds the mixed user workload (issue 14): one more boot per platform that runs only
`pvkvm-workload --mixed SIZES` (benches/workload/src/mixed.rs: generate N MiB of text,
gzip it, sha256sum it, gunzip and compare, build a tree of small files in tmpfs and
traverse it with find/stat/grep/du, a few hundred short-lived processes through xargs
and a shell loop, then compile a small C program with Debian's tcc and run it), the same
SIZES (--mixed-sizes) everywhere, wall time per phase. --mixed-only runs just those
boots. Their initramfs is the benchmark's plus a third archive: tcc, the glibc it runs
with (libc6, the headers the program needs from libc6-dev and linux-libc-dev; apt-get
download into guest-images/cache/, only unpacked) and the program's source.
"""

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "guest-images" / "cache"
WORKLOAD = REPO / "benches" / "workload"
TARGET = "x86_64-unknown-linux-gnu"
ALL_PLATFORMS = ["pvkvm", "qemu-tcg", "xen-tcg", "qemu-kvm"]
# Time limits per boot (launch to the end of the benchmark and power-off) are set in
# platform_boot(): pvkvm 180 s (needs ~35 s here), QEMU TCG 120 s (~5 s), Xen in TCG
# 180 s (~11 s), QEMU KVM 150 s (fails at ~80 s here). Even if every boot hangs the
# script ends within ~11 minutes plus the builds.

BEGIN = "pvkvm-workload begin v1"
END_RE = re.compile(r"pvkvm-workload end status=(\w+) total_ms=(\d+)")
WL_RE = re.compile(r"(?:^|\s)wl (\S+) (\d+) (\d+) (\d+) (\d+) (\d+)\s*$")
WLFAIL_RE = re.compile(r"(?:^|\s)wl-fail (\S+) (.*)$")
WLBEGIN_RE = re.compile(r"(?:^|\s)wl-begin (\S+)\s*$")
INFO_RE = re.compile(r"(?:^|\s)info (\S+) (\S+)\s*$")

# Figures in the order of the table, with what one operation is.
FIGURES = [
    ("clock", "clock_gettime(CLOCK_MONOTONIC)"),
    ("getppid", "getppid syscall"),
    ("cpu", "1M rounds of xorshift (no syscalls)"),
    ("fault", "first write to an anonymous page"),
    ("mmap_cycle", "mmap + touch + munmap, per page (64 pages)"),
    ("memfill", "fill 1 MiB of fresh anonymous memory (mmap 4 MiB, memset, munmap)"),
    ("mprotect", "mprotect of 16 present pages"),
    ("pipe", "pipe ping-pong round trip (2 processes)"),
    ("fork_exit", "fork + _exit + waitpid"),
    ("fork_exec", "fork + exec of a 129-byte static ELF + waitpid"),
    ("fork_exec_busybox", "fork + exec busybox true + waitpid"),
]

# Disk and TCP figures (issue 11): name, what one operation is, and the derived rate
# ("MiB/s": 1 MiB / median; "IOPS": 1 s / median, queue depth 1; None: latency only).
IO_FIGURES = [
    ("disk_seq_write", "O_DIRECT sequential write, one 1 MiB request", "MiB/s"),
    ("disk_seq_read", "O_DIRECT sequential read, one 1 MiB request", "MiB/s"),
    ("disk_rand_write", "O_DIRECT random 4 KiB write (QD1)", "IOPS"),
    ("disk_rand_read", "O_DIRECT random 4 KiB read (QD1)", "IOPS"),
    ("tcp_rtt", "TCP round trip of 1 byte, guest<->host", None),
    ("tcp_tx", "TCP guest->host, per MiB (samples of 4 MiB)", "MiB/s"),
    ("tcp_rx", "TCP host->guest, per MiB (samples of 4 MiB)", "MiB/s"),
]
DISK_NAMES = [f for f, _, _ in IO_FIGURES if f.startswith("disk_")]
NET_NAMES = [f for f, _, _ in IO_FIGURES if f.startswith("tcp_")]
# Modules the benchmark initramfs adds to the default guest's (xen-blkfront, xen-netfront):
# QEMU's virtio disk and NIC; modules.py adds their dependencies (virtio, virtio_ring,
# virtio_pci_modern_dev, virtio_pci_legacy_dev, failover, net_failover).
BENCH_MODULES = ["xen-blkfront", "xen-netfront", "virtio_pci", "virtio_blk", "virtio_net"]
SCRATCH_BYTES = 256 << 20
# What each platform's disk and NIC are (reported with the figures).
IO_PATHS = {
    "pvkvm": {"disk": "xen-blkfront -> pvkvm's blkback (raw image, host page cache, synchronous I/O "
                      "in one thread)",
              "net": "xen-netfront -> pvkvm's netback -> passt (--net user; gateway = host loopback)"},
    "qemu-tcg": {"disk": "virtio-blk (PCI) -> QEMU, raw image, cache=writeback (host page cache)",
                 "net": "virtio-net (PCI) -> QEMU user network (slirp; 10.0.2.2 = host loopback)"},
    "qemu-kvm": {"disk": "virtio-blk (PCI) -> QEMU, raw image, cache=writeback (host page cache)",
                 "net": "virtio-net (PCI) -> QEMU user network (slirp; 10.0.2.2 = host loopback)"},
    "xen-tcg": {"disk": None, "net": None},
}
XEN_DISK_REASON = ("not run: QEMU's virtio disk in dom0 gets no interrupt (the cloud kernel lacks "
                   "CONFIG_XEN_DOM0: `xen:events: Failed to obtain physical IRQ`, no MSI through the Xen "
                   "PCI frontend), so its first read (the partition scan in insmod virtio_blk) hangs and the "
                   "whole boot with it; --xen-tcg-disk tries anyway")
XEN_NET_REASON = ("not run: QEMU's NIC in dom0 would take the same PCI path as its disk, which gets "
                  "no interrupt there (see the disk figures); Xen's own netback needs a domU toolstack")

# The mixed workload (--mixed): its phases in order, what each does, and the default sizes.
MIXED_SIZES = "mib=32,dirs=40,files=50,procs=60,cc=8"
MIXED_PHASES = [
    ("mixed_gen", "generate the MIB MiB of text in the benchmark (discarded): the generator's share below"),
    ("mixed_gzip", "generated text | gzip -c (level 6) > tmpfs"),
    ("mixed_sha256", "generated text | sha256sum"),
    ("mixed_gunzip", "gunzip -c | sha256sum, digest compared"),
    ("mixed_mktree", "create DIRS directories x FILES files (256 B-2.3 KiB) in tmpfs"),
    ("mixed_find", "find | wc (files, dirs), find -exec stat + awk, grep -rl, du -sk; checked"),
    ("mixed_procs", "seq PROCS | xargs -n 1 expr (fork+exec each) + PROCS/2 x $(echo | tr)"),
    ("mixed_cc", "CC x tcc -O2 -c wordstat.c (130 lines), link, run on 1 MiB; checked"),
    ("mixed_total", "all phases, first start to last end"),
]
# Time limit of a mixed boot at the default sizes (scaled up with larger sizes); the
# boots here take about pvkvm 95 s (30 s of it to boot), QEMU TCG 45 s, Xen in TCG 75 s.
MIXED_LIMITS = {"pvkvm": 300, "qemu-tcg": 300, "xen-tcg": 400, "qemu-kvm": 150}

T0 = time.monotonic()

ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_])")


def clean(text):
    """A console line without terminal control sequences and other control characters."""
    text = ANSI_RE.sub("", text)
    return "".join(c for c in text if c >= " " or c == "\t").rstrip()


# Instructions seen in KVM "emulation failure" dumps (QEMU's Code= line, the failing
# instruction's bytes start at <..>).
KNOWN_INSNS = [("f0 48 0f c7", "lock cmpxchg16b"), ("48 0f c7", "cmpxchg16b"), ("f0 0f c7", "lock cmpxchg8b")]


def say(msg):
    sys.stderr.write("linux.py [%6.1f s]: %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


def die(msg):
    say("error: " + msg)
    sys.exit(1)


def run(cmd, cwd=None, capture=False):
    """Runs a build step; dies with its output when it fails."""
    say("$ " + " ".join(str(c) for c in cmd))
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE if capture else sys.stderr,
                       stderr=sys.stderr, text=True)
    if r.returncode != 0:
        die("%s failed with status %d" % (cmd[0], r.returncode))
    return r.stdout if capture else None


# --- packages -------------------------------------------------------------------------

_apt_updated = False


def apt_candidate(pkg):
    r = subprocess.run(["apt-cache", "policy", pkg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r"Candidate:\s*(\S+)", r.stdout)
    return m.group(1) if m and m.group(1) != "(none)" else None


def apt_ensure_known(pkg):
    """Runs apt-get update once when apt knows no candidate for pkg."""
    global _apt_updated
    if apt_candidate(pkg) or _apt_updated:
        return apt_candidate(pkg)
    if os.geteuid() != 0:
        return None
    say("apt knows no %s: apt-get update" % pkg)
    subprocess.run(["apt-get", "update", "-qq"], stdout=sys.stderr, stderr=sys.stderr)
    _apt_updated = True
    return apt_candidate(pkg)


def ensure_qemu():
    """Returns the path of qemu-system-x86_64 (installing qemu-system-x86) or a reason."""
    exe = shutil.which("qemu-system-x86_64")
    if exe:
        return exe, None
    if os.geteuid() != 0:
        return None, "qemu-system-x86_64 is missing and this is not root (apt-get install qemu-system-x86)"
    if not apt_ensure_known("qemu-system-x86"):
        return None, "apt offers no qemu-system-x86"
    say("installing qemu-system-x86")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"],
                       stdout=sys.stderr, stderr=sys.stderr, env=env)
    exe = shutil.which("qemu-system-x86_64")
    if r.returncode != 0 or not exe:
        return None, "apt-get install qemu-system-x86 failed (status %d)" % r.returncode
    return exe, None


def ensure_xen():
    """Downloads (apt-get download, cached) Debian's newest xen-hypervisor-4.*-amd64 and
    returns its hypervisor as an uncompressed multiboot ELF, or a reason."""
    r = subprocess.run(["apt-cache", "search", "--names-only", r"^xen-hypervisor-4\.[0-9]+-amd64$"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    names = sorted((l.split()[0] for l in r.stdout.splitlines() if l.strip()),
                   key=lambda n: [int(x) for x in re.findall(r"\d+", n)])
    if not names:
        apt_ensure_known("xen-hypervisor-4.17-amd64")
        r = subprocess.run(["apt-cache", "search", "--names-only", r"^xen-hypervisor-4\.[0-9]+-amd64$"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        names = sorted((l.split()[0] for l in r.stdout.splitlines() if l.strip()),
                       key=lambda n: [int(x) for x in re.findall(r"\d+", n)])
    if not names:
        return None, "apt offers no xen-hypervisor-4.*-amd64"
    pkg = names[-1]
    version = apt_candidate(pkg)
    if not version:
        return None, "apt has no candidate for %s" % pkg
    ver = pkg[len("xen-hypervisor-"):-len("-amd64")]
    elf = CACHE / ("xen-%s-amd64.%s.elf" % (ver, version.replace(":", "%3a")))
    if elf.exists() and elf.stat().st_size > 0:
        return elf, None
    CACHE.mkdir(parents=True, exist_ok=True)
    debname = "%s_%s_amd64.deb" % (pkg, version.replace(":", "%3a"))
    deb = CACHE / debname
    if not deb.exists():
        say("downloading %s %s" % (pkg, version))
        r = subprocess.run(["apt-get", "download", "-qq", "%s=%s" % (pkg, version)], cwd=CACHE,
                           stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if not deb.exists():
            return None, "apt-get download %s failed: %s" % (pkg, r.stderr.strip()[-300:])
    tmp = CACHE / ("xen-extract.%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        gz = tmp / "boot" / ("xen-%s-amd64.gz" % ver)
        if not gz.exists():
            return None, "%s has no boot/%s" % (debname, gz.name)
        with gzip.open(gz, "rb") as f:
            data = f.read()
        if data[:4] != b"\x7fELF":
            return None, "%s is not an ELF image" % gz.name
        elf.write_bytes(data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return elf, None


# --- builds ---------------------------------------------------------------------------

def elf_is_static(path):
    """True when the ELF has no PT_INTERP (needs no dynamic loader)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off:off + 4], "little") == 3:
            return False
    return True


def build_all(work, pvkvm=None):
    if not shutil.which("cargo"):
        die("cargo (stable Rust) is missing; install it with rustup")
    if pvkvm is None:
        run(["cargo", "build", "--release", "--quiet", "-p", "pvkvm"], cwd=REPO)
        pvkvm = REPO / "target" / "release" / "pvkvm"
    elif not os.access(pvkvm, os.X_OK):
        die("--pvkvm %s is not an executable" % pvkvm)
    # benches/workload/.cargo/config.toml (static linking) applies from that directory;
    # flags meant for an outer build (a `cargo test` running this script) do not.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET")}
    say("$ cargo build --release --quiet --target %s (in %s)" % (TARGET, WORKLOAD))
    if subprocess.run(["cargo", "build", "--release", "--quiet", "--target", TARGET], cwd=WORKLOAD, env=env,
                      stdout=sys.stderr, stderr=sys.stderr).returncode != 0:
        die("building benches/workload failed")
    wl = WORKLOAD / "target" / TARGET / "release" / "pvkvm-workload"
    if not elf_is_static(wl):
        die("%s is not statically linked (benches/workload/.cargo/config.toml not applied?)" % wl)
    out = run([REPO / "guest-images" / "scripts" / "build-default-guest.sh"], capture=True).strip().splitlines()
    if len(out) < 2:
        die("build-default-guest.sh printed no kernel and initramfs paths")
    kernel, default_initrd = Path(out[-2]), Path(out[-1])
    # The benchmark initramfs: the default archive followed by a second one that adds
    # the benchmark and replaces /init (the kernel unpacks concatenated archives in
    # order, later entries win). The default /init stays available as /init-default.
    stage = work / "overlay"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy(wl, stage / "pvkvm-workload")
    shutil.copy(WORKLOAD / "init", stage / "init")
    shutil.copy(REPO / "guest-images" / "initramfs" / "init", stage / "init-default")
    manifest = ("dir /bin 0755\n"
                "file /bin/pvkvm-workload pvkvm-workload 0755\n"
                "file /init init 0755\n"
                "file /init-default init-default 0755\n")
    # The modules: the default guest's list plus virtio_blk/virtio_net (for QEMU), from the
    # kernel's own .deb; the overlay's modules.dep and pvkvm-load.list replace the default's.
    abi = kernel.name[len("vmlinuz-"):]
    debs = sorted(CACHE.glob("linux-image-%s_*_amd64.deb" % abi))
    if debs:
        (stage / "modules").mkdir()
        out = run([sys.executable, REPO / "guest-images" / "initramfs" / "modules.py", debs[-1], abi,
                   stage / "modules"] + BENCH_MODULES, capture=True).split()
        manifest += "dir /lib 0755\ndir /lib/modules 0755\ndir /lib/modules/%s 0755\n" % abi
        for m in out + ["modules.dep", "pvkvm-load.list"]:
            manifest += "file /lib/modules/%s/%s modules/%s 0644\n" % (abi, m, m)
        say("benchmark initramfs modules: %s" % " ".join(out))
    else:
        say("no linux-image-%s_*.deb in %s: no virtio modules, QEMU's disk and NIC figures will fail"
            % (abi, CACHE))
    r = subprocess.run([sys.executable, str(REPO / "guest-images" / "initramfs" / "newc.py"), "create",
                        "overlay.cpio.gz"], cwd=stage, input=manifest, text=True)
    if r.returncode != 0:
        die("newc.py failed to write the overlay archive")
    initrd = work / "initramfs-bench.cpio.gz"
    initrd.write_bytes(default_initrd.read_bytes() + (stage / "overlay.cpio.gz").read_bytes())
    say("kernel %s, benchmark initramfs %s (%d bytes)" % (kernel, initrd, initrd.stat().st_size))
    return pvkvm, kernel, initrd


# --- the C toolchain of the mixed workload -----------------------------------------------

# Debian packages whose files the mixed workload's initramfs takes (apt-get download into
# guest-images/cache/, only unpacked): the Tiny C Compiler, the C library it and the
# programs it builds run with, and (only the headers wordstat.c needs) the C headers.
CC_PACKAGES = ["tcc", "libc6", "libc6-dev", "linux-libc-dev"]
CC_RUNTIME = ["lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6",
              "lib/x86_64-linux-gnu/libm.so.6", "lib/x86_64-linux-gnu/libpthread.so.0",
              "lib/x86_64-linux-gnu/libdl.so.2", "usr/bin/tcc", "usr/lib/x86_64-linux-gnu/tcc/libtcc1.a",
              "usr/lib/x86_64-linux-gnu/crt1.o", "usr/lib/x86_64-linux-gnu/crti.o",
              "usr/lib/x86_64-linux-gnu/crtn.o", "usr/lib/x86_64-linux-gnu/libc.so",
              "usr/lib/x86_64-linux-gnu/libc_nonshared.a"]
WORDSTAT = WORKLOAD / "wordstat.c"


def fetch_deb(pkg):
    """The cached .deb of pkg's candidate version (apt-get download), or raises OSError."""
    version = apt_ensure_known(pkg)
    if not version:
        raise OSError("apt has no candidate for %s" % pkg)
    CACHE.mkdir(parents=True, exist_ok=True)
    deb = CACHE / ("%s_%s_amd64.deb" % (pkg, version.replace(":", "%3a")))
    if not deb.exists():
        say("downloading %s %s" % (pkg, version))
        r = subprocess.run(["apt-get", "download", "-qq", "%s=%s" % (pkg, version)], cwd=CACHE,
                           stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if not deb.exists():
            raise OSError("apt-get download %s failed: %s" % (pkg, r.stderr.strip()[-300:]))
    return deb


def cc_archive(work):
    """A cpio archive (to append to the benchmark initramfs) with tcc, the C library
    (runtime, crt files, libc.so), the headers wordstat.c includes (found by running the
    unpacked tcc on the host with -MD) and /usr/share/pvkvm/wordstat.c; (path, None) or
    (None, reason)."""
    root = (work / "cc-root").resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        for pkg in CC_PACKAGES:
            subprocess.run(["dpkg-deb", "-x", str(fetch_deb(pkg)), str(root)], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return None, "no C toolchain: %s" % e
    inc = [root / "usr/lib/x86_64-linux-gnu/tcc/include", root / "usr/include/x86_64-linux-gnu",
           root / "usr/include"]
    deps = work / "wordstat.d"
    cmd = [str(root / "usr/bin/tcc"), "-nostdinc"] + ["-I%s" % d for d in inc] + [
        "-c", str(WORDSTAT), "-o", str(work / "wordstat.o"), "-MD", "-MF", str(deps)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 or not deps.exists():
        return None, "tcc on the host (to list wordstat.c's headers) failed: %s" % r.stdout.strip()[-300:]
    headers = set()
    for tok in deps.read_text().replace("\\\n", " ").split():
        p = Path(tok).resolve()
        if tok.endswith(".h") and p.is_relative_to(root):
            headers.add(str(p.relative_to(root)))
    # All of tcc's own headers (small), then what wordstat.c needs from the C library's.
    headers |= {str(p.relative_to(root)) for p in (root / "usr/lib/x86_64-linux-gnu/tcc/include").rglob("*.h")}
    files = []  # (path in the guest, host file)
    for rel in CC_RUNTIME + sorted(headers):
        src = root / rel
        if not src.exists():
            return None, "the C toolchain packages have no /%s" % rel
        files.append(("/" + rel, src.resolve()))
    files.append(("/usr/share/pvkvm/wordstat.c", WORDSTAT))
    stage = work / "cc-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    dirs, manifest = set(), ""
    for guest, _ in files:
        parts = guest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                manifest += "dir %s 0755\n" % d
    manifest += "dir /lib64 0755\nslink /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 0777\n"
    for i, (guest, src) in enumerate(files):
        name = "f%03d" % i
        shutil.copy(src, stage / name)
        mode = "0755" if guest.startswith("/usr/bin/") or ".so" in guest else "0644"
        manifest += "file %s %s %s\n" % (guest, name, mode)
    r = subprocess.run([sys.executable, str(REPO / "guest-images" / "initramfs" / "newc.py"), "create",
                        "cc.cpio.gz"], cwd=stage, input=manifest, text=True)
    shutil.rmtree(root, ignore_errors=True)
    for f in ("wordstat.d", "wordstat.o"):
        (work / f).unlink(missing_ok=True)
    if r.returncode != 0:
        return None, "newc.py failed to write the C toolchain archive"
    say("C toolchain for the mixed workload: %d files, %d headers, %d bytes compressed" % (
        len(files), len(headers), (stage / "cc.cpio.gz").stat().st_size))
    return stage / "cc.cpio.gz", None


# --- the host's TCP peer ---------------------------------------------------------------

class Peer:
    """The guest's TCP peer on 127.0.0.1 (a thread per connection). The first byte of a
    connection picks the mode: E echoes every byte back (round trip); S is a sink (a byte
    n, then n MiB, answered with one byte); R is a source (each byte n asks for n MiB)."""

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.served = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_exact(self, conn, n):
        buf = bytearray()
        while len(buf) < n:
            b = conn.recv(min(n - len(buf), 1 << 20))
            if not b:
                raise EOFError
            buf += b
        return bytes(buf)

    def _serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(60)
        try:
            mode = self._read_exact(conn, 1)
            self.served.append(mode.decode("latin-1"))
            if mode == b"E":
                while True:
                    b = conn.recv(4096)
                    if not b:
                        return
                    conn.sendall(b)
            elif mode == b"S":
                while True:
                    n = self._read_exact(conn, 1)[0]
                    left = n << 20
                    while left:
                        b = conn.recv(min(left, 1 << 20))
                        if not b:
                            return
                        left -= len(b)
                    conn.sendall(b"k")
            elif mode == b"R":
                chunk = b"\xa5" * (1 << 20)
                while True:
                    n = self._read_exact(conn, 1)[0]
                    for _ in range(n):
                        conn.sendall(chunk)
        except (EOFError, OSError):
            return
        finally:
            conn.close()

    def close(self):
        self.srv.close()


# --- running a guest ------------------------------------------------------------------

class Boot:
    """One guest run: launches argv in its own process group, timestamps every console
    line, stops when the benchmark ended (plus a grace period for the power-off), when a
    fatal pattern appears, or at the time limit."""

    def __init__(self, name, argv, limit_s, log_path, fatal=(), stopped=(), api_socket=None):
        self.name, self.argv, self.limit_s, self.log_path = name, [str(a) for a in argv], limit_s, log_path
        self.fatal, self.stopped = fatal, stopped
        self.lines = []  # (seconds since launch, text)
        self.lock = threading.Lock()
        # With pvkvm's control socket: its exit counters when each figure's timed samples
        # began (`wl-begin`) and ended (the figure's `wl` line), read as the line arrives.
        self.api_socket = api_socket
        self.window_counters = {}  # figure -> {"begin": counters, "end": counters}
        # Called with the figure's name as its `wl-begin` / `wl` line arrives (e.g. to
        # switch a perf count on and off around the timed samples).
        self.on_window_begin = None
        self.on_window_end = None

    def _reader(self, stream, t_launch, log):
        for raw in iter(stream.readline, b""):
            t = time.monotonic() - t_launch
            text = clean(raw.decode("utf-8", "replace"))
            if self.api_socket or self.on_window_begin or self.on_window_end:
                self._window_mark(text)
            with self.lock:
                self.lines.append((t, text))
            log.write("[%8.3f] %s\n" % (t, text))
            log.flush()

    def _window_mark(self, text):
        m = WLBEGIN_RE.search(text)
        if m:
            if self.on_window_begin:
                self.on_window_begin(m.group(1))
            counters = vm_counters(self.api_socket) if self.api_socket else None
            if counters is not None:
                self.window_counters[m.group(1)] = {"begin": counters}
            return
        m = WL_RE.search(text)
        if m:
            if self.on_window_end:
                self.on_window_end(m.group(1))
            if m.group(1) in self.window_counters:
                counters = vm_counters(self.api_socket)
                if counters is not None:
                    self.window_counters[m.group(1)]["end"] = counters

    def window(self, fig):
        """The exit counters of `fig`'s timed samples alone (end minus begin), or None
        (no control socket, or a build whose `vm.info` has no counters)."""
        w = self.window_counters.get(fig) or {}
        if "begin" not in w or "end" not in w:
            return None
        return {k: v - w["begin"].get(k, 0) for k, v in w["end"].items()}

    def _stop(self, proc):
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass

    def run(self):
        say("%s: %s" % (self.name, " ".join(self.argv)))
        with open(self.log_path, "w") as log:
            t_launch = time.monotonic()
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            reader = threading.Thread(target=self._reader, args=(proc.stdout, t_launch, log), daemon=True)
            reader.start()
            self.end_reason = None
            try:
                deadline = t_launch + self.limit_s
                grace_until = None
                seen = 0
                while True:
                    if proc.poll() is not None:
                        self.end_reason = "exited with status %d" % proc.returncode
                        break
                    now = time.monotonic()
                    with self.lock:
                        new = self.lines[seen:]
                        seen = len(self.lines)
                    for _, text in new:
                        if grace_until is None and END_RE.search(text):
                            grace_until = now + 20  # time to power off by itself
                        for pat in self.fatal:
                            if pat in text and not self.end_reason:
                                self.end_reason = "fatal: " + text.strip()
                        for pat in self.stopped:
                            if pat in text:
                                grace_until = min(grace_until or now + 2, now + 2)
                    if self.end_reason:
                        time.sleep(1)  # the rest of the diagnostic
                        break
                    if grace_until is not None and now > grace_until:
                        self.end_reason = "stopped after the benchmark ended"
                        break
                    if now > deadline:
                        self.end_reason = "time limit of %d s reached" % self.limit_s
                        break
                    time.sleep(0.1)
            finally:
                # Also on Ctrl-C: the guest runs in its own session, so it would not get
                # the terminal's SIGINT and would run on until its own time limit.
                self._stop(proc)
            reader.join(5)
            self.returncode = proc.returncode
            self.wall_s = time.monotonic() - t_launch
        return self

    def result(self):
        """The platform's JSON entry."""
        res = {"status": "failed", "command": self.argv, "log": str(self.log_path),
               "wall_s": round(self.wall_s, 2), "end": self.end_reason, "exit_status": self.returncode,
               "boot_s": None, "figures": {}, "info": {}}
        begin_t = end = None
        for t, text in self.lines:
            if begin_t is None and BEGIN in text:
                begin_t = t
                continue
            if begin_t is None:
                continue
            m = WL_RE.search(text)
            if m and end is None:
                name, med, p10, p90, ops, samples = m.groups()
                res["figures"][name] = {"median_ns": int(med), "p10_ns": int(p10), "p90_ns": int(p90),
                                        "ops": int(ops), "samples": int(samples)}
                continue
            m = WLFAIL_RE.search(text)
            if m:
                res["figures"][m.group(1)] = {"error": m.group(2).strip()}
                continue
            m = INFO_RE.search(text)
            if m and end is None:
                res["info"][m.group(1)] = m.group(2)
                continue
            m = END_RE.search(text)
            if m and end is None:
                end = (t, m.group(1), int(m.group(2)))
        if begin_t is not None:
            res["boot_s"] = round(begin_t, 2)
        if end:
            res["bench_s"] = round(end[2] / 1000.0, 2)
        if begin_t is not None and end and end[1] == "ok":
            res["status"] = "ok"
        else:
            res["reason"] = self.failure_reason(begin_t, end)
        return res

    def failure_reason(self, begin_t, end):
        if end:
            bad = [t for _, t in self.lines if "wl-fail" in t]
            return "benchmark reported failures: " + "; ".join(b.strip() for b in bad)[:400]
        where = "benchmark started but did not finish" if begin_t is not None else "benchmark never started"
        texts = [t for _, t in self.lines]
        if any("KVM internal error" in t for t in texts):
            fail_t = next(t for t, x in self.lines if "KVM internal error" in x)
            kind = next((x.strip() for x in texts if "emulation failure" in x), "")
            code = next((x for x in texts if x.startswith("Code=")), "")
            rip = next((x.split()[0] for x in texts if x.startswith("RIP=")), "")
            insn = ""
            m = re.search(r"<([0-9a-f]{2})>((?: [0-9a-f]{2}){0,8})", code)
            if m:
                nxt = (m.group(1) + m.group(2)).strip()
                name = next((n for pfx, n in KNOWN_INSNS if nxt.startswith(pfx)), None)
                insn = "; failing instruction bytes %s%s" % (nxt, " (%s)" % name if name else "")
            return ("%s: KVM internal error (%s) after %.0f s, guest %s%s" % (
                where, kind or "see log", fail_t, rip, insn))
        last = [t.strip() for t in texts if t.strip() and "terminating on signal" not in t][-3:]
        return "%s: %s; last console lines: %s" % (where, self.end_reason, " | ".join(last)[-500:])


# vm.info's counter names -> parse_stats' names (what the floors charge).
API_COUNTERS = {"vm_exits": "vm_exits", "hypercall_doorbells": "hypercall_doorbells",
                "trap_doorbells": "trap_doorbells", "apply_refills": "refill_exits",
                "interrupted": "interrupted_exits", "other": "other_exits", "applies": "applies"}


def vm_counters(path, timeout=2.0):
    """pvkvm's exit counters now, from `GET /api/v1/vm.info` on its control socket (as
    parse_stats names them), or None (no socket, no answer, or no counters: an older
    build)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(timeout)
            c.connect(str(path))
            c.sendall(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        counters = json.loads(body.decode()).get("counters")
    except ValueError:
        return None
    if not isinstance(counters, dict):
        return None
    return {API_COUNTERS[k]: int(v) for k, v in counters.items() if k in API_COUNTERS}


def qemu_escape(s):
    return s.replace(",", ",,")


def platform_boot(name, work, pvkvm, kernel, initrd, qemu, xen, only=None, disk=None, net_port=None,
                  mixed=None, limit=None, api_socket=None):
    """The platform's Boot. disk: a scratch raw image for the disk figures (destroyed);
    net_port: the host peer's port on 127.0.0.1 for the TCP figures; mixed: the mixed
    workload's sizes (then only that runs, with the time limit `limit`); api_socket
    (pvkvm): serve the control API there and read the exit counters around each
    figure's timed samples (`Boot.window`)."""
    log = work / ("%s.log" % name)
    args = "quiet pvkvm.bench=1"
    if mixed:
        only = None
        log = work / ("%s-mixed.log" % name)
        args += " pvkvm.bench_only=none pvkvm.bench_mixed=" + mixed
    if only:
        log = work / ("%s-only-%s.log" % (name, only))
        args += " pvkvm.bench_only=" + only
    if net_port:
        args += " pvkvm.bench_net=%d" % net_port
    if name == "pvkvm":
        extra = []
        if disk:
            args += " pvkvm.bench_disk=/dev/xvda"
            extra += ["--disk", "%s,format=raw,vdev=xvda" % disk]
        if net_port:
            extra += ["--net", "user"]
        lim = limit or 180
        if api_socket:
            Path(api_socket).unlink(missing_ok=True)
            extra += ["--api-socket", str(api_socket)]
        argv = [pvkvm, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", "console=hvc0 " + args,
                "--stats", "--timeout", str(lim - 10)] + extra
        return Boot(name, argv, lim, log, fatal=["Kernel panic"], api_socket=api_socket)
    if name in ("qemu-tcg", "qemu-kvm"):
        accel = ["-accel", "tcg"] if name == "qemu-tcg" else ["-enable-kvm"]
        extra = []
        if disk:
            args += " pvkvm.bench_disk=/dev/vda"
            extra += ["-drive", "file=%s,if=virtio,format=raw,cache=writeback" % qemu_escape(str(disk))]
        if net_port:
            extra += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
        else:
            extra += ["-nic", "none"]
        argv = [qemu] + accel + ["-m", "512", "-smp", "1", "-kernel", kernel, "-initrd", initrd,
                                 "-append", "console=ttyS0 " + args, "-nographic", "-no-reboot", "-monitor",
                                 "none"] + extra
        # Under kvm_pvm an HVM guest runs (slowly) until KVM cannot emulate an
        # instruction; 150 s is well past where that happens on this host.
        limit = limit or (150 if name == "qemu-kvm" else 120)
        return Boot(name, argv, limit, log,
                    fatal=["KVM internal error", "failed to initialize kvm", "Could not access KVM",
                           "Kernel panic"])
    if name == "xen-tcg":
        # -cpu max without SMAP: QEMU's TCG pops IRET frames with supervisor accesses even
        # at CPL 3, which SMAP (Xen enables it) turns into a #PF on the PV kernel's own
        # (user-mapped) stack: dom0 then dies in its first iret_to_self.
        xen_cmdline = "console=com1 com1=115200,8n1 dom0_mem=512M dom0_max_vcpus=1 noreboot"
        dom0 = "console=hvc0 earlyprintk=xen %s pvkvm.bench_out=kmsg" % args
        modules = "%s %s,%s" % (qemu_escape(str(kernel)), qemu_escape(dom0), qemu_escape(str(initrd)))
        argv = [qemu, "-accel", "tcg", "-cpu", "max,-smap", "-m", "1024", "-smp", "1", "-kernel", xen,
                "-append", xen_cmdline, "-initrd", modules, "-nographic", "-no-reboot", "-monitor", "none"]
        if disk:
            # QEMU's virtio disk as dom0 sees it: not Xen's blkback (no domU toolstack here).
            modules = "%s %s,%s" % (qemu_escape(str(kernel)), qemu_escape(dom0 + " pvkvm.bench_disk=/dev/vda"),
                                    qemu_escape(str(initrd)))
            argv[argv.index("-initrd") + 1] = modules
            argv += ["-drive", "file=%s,if=virtio,format=raw,cache=writeback" % qemu_escape(str(disk))]
        argv += ["-nic", "none"]
        return Boot(name, argv, limit or 180, log, fatal=["Dom0 crashed", "Panic on CPU", "Kernel panic"],
                    stopped=["Hardware Dom0 halted", "Hardware Dom0 shutdown"])
    raise ValueError(name)


# --- reports --------------------------------------------------------------------------

def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns < 10_000:
        return "%d ns" % ns
    if ns < 10_000_000:
        return "%.1f us" % (ns / 1e3)
    return "%.1f ms" % (ns / 1e6)


def fmt_ratio(a, b):
    if not a or not b:
        return "-"
    r = a / b
    return "%.0fx" % r if r >= 100 else ("%.1fx" % r if r >= 1 else "%.2fx" % r)


def markdown(report):
    plats = report["platforms"]
    base = plats.get("pvkvm", {})
    others = [n for n in plats if n != "pvkvm" and plats[n]["status"] == "ok"]
    head = ["figure (per operation)", "pvkvm median [p10-p90]"]
    for o in others:
        head += [o, "pvkvm/" + o]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(p, fig):
        f = plats[p].get("figures", {}).get(fig) or {}
        return f.get("median_ns")

    boot = ["launch to benchmark start", "%.1f s" % base["boot_s"] if base.get("boot_s") else "-"]
    for o in others:
        b = plats[o].get("boot_s")
        boot += ["%.1f s" % b if b else "-", fmt_ratio(base.get("boot_s"), b)]
    lines.append("| " + " | ".join(boot) + " |")
    for fig, what in FIGURES:
        f = base.get("figures", {}).get(fig) or {}
        if "median_ns" in f:
            pv = "%s [%s-%s]" % (fmt_ns(f["median_ns"]), fmt_ns(f["p10_ns"]), fmt_ns(f["p90_ns"]))
        else:
            pv = "-"
        row = ["`%s`: %s" % (fig, what), pv]
        for o in others:
            row += [fmt_ns(cell(o, fig)), fmt_ratio(f.get("median_ns"), cell(o, fig))]
        lines.append("| " + " | ".join(row) + " |")
    out = ["## Linux workloads: pvkvm vs. alternatives", "",
           "Kernel `%s`, benchmark initramfs from benches/linux.py; host: %s, %s CPUs, /dev/kvm %s. "
           "Medians of per-operation times (CLOCK_MONOTONIC inside each guest); ratio > 1 means pvkvm is slower."
           % (report.get("kernel"), report["host"].get("kernel"), report["host"].get("cpus"),
              report["host"].get("kvm")), ""]
    out += lines + [""]
    for n, p in plats.items():
        if p["status"] == "ok":
            out.append("- %s: ok, launch to benchmark %.1f s, benchmark %.1f s, run %.1f s%s" % (
                n, p["boot_s"], p.get("bench_s") or 0, p["wall_s"],
                ("; clocksource %s" % p["info"]["clocksource"]) if p["info"].get("clocksource") else ""))
        else:
            out.append("- %s: **failed**: %s" % (n, p.get("reason")))
    out.append("")
    out += io_markdown(report)
    out.append("Script run time: %.0f s." % report["script_s"])
    return "\n".join(out) + "\n"


def io_markdown(report):
    """The disk and TCP table: per operation medians, the derived rate, ratio pvkvm/other;
    then each platform's disk and NIC path and the figures that failed or did not run."""
    plats = report["platforms"]
    names = [n for n in plats if any("median_ns" in (plats[n].get("figures", {}).get(f) or {})
                                     for f, _, _ in IO_FIGURES)]
    if not names:
        return []
    base = plats.get("pvkvm", {}).get("figures", {})
    others = [n for n in names if n != "pvkvm"]
    head = ["figure (per operation)", "pvkvm median [p10-p90]", "pvkvm rate"]
    for o in others:
        head += [o, o + " rate", "pvkvm/" + o]
    lines = ["### Disk and TCP", "",
             "O_DIRECT on a raw block device backed by a 256 MiB sparse raw image; TCP with a peer "
             "thread of linux.py on the host's loopback through the platform's user-mode network. "
             "Rates: MiB/s = 1 MiB / median, IOPS = 1 s / median (queue depth 1).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fig, what, _ in IO_FIGURES:
        f = base.get(fig) or {}
        pv = "%s [%s-%s]" % (fmt_ns(f["median_ns"]), fmt_ns(f["p10_ns"]), fmt_ns(f["p90_ns"])) \
            if "median_ns" in f else "-"
        row = ["`%s`: %s" % (fig, what), pv, fmt_rate(f).strip() or "-"]
        for o in others:
            g = plats[o].get("figures", {}).get(fig) or {}
            row += [fmt_ns(g.get("median_ns")), fmt_rate(g).strip() or "-",
                    fmt_ratio(f.get("median_ns"), g.get("median_ns"))]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for n, p in plats.items():
        paths = p.get("io_paths") or {}
        if paths:
            lines.append("- %s: disk: %s; NIC: %s" % (n, paths.get("disk"), paths.get("net")))
        bad = {}  # reason -> figures
        for f, _, _ in IO_FIGURES:
            err = (p.get("figures", {}).get(f) or {}).get("error")
            if err:
                bad.setdefault(err, []).append("`%s`" % f)
        if p.get("status") == "ok":
            for err, figs in bad.items():
                if err in paths.values():
                    continue
                lines.append("  - %s: %s" % (", ".join(figs), err))
    lines.append("")
    return lines


def host_facts():
    facts = {"cpus": os.cpu_count(), "kernel": os.uname().release,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            facts["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    kvm = "absent"
    if os.path.exists("/dev/kvm"):
        kvm = "present"
        for m in ("kvm_pvm", "kvm_intel", "kvm_amd"):
            if os.path.isdir("/sys/module/%s" % m):
                kvm = m
    facts["kvm"] = kvm
    return facts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--markdown", help="write the table as markdown here")
    ap.add_argument("--platforms", default=",".join(ALL_PLATFORMS),
                    help="comma-separated subset of %s (default: all)" % ",".join(ALL_PLATFORMS))
    ap.add_argument("--work", default=str(REPO / "target" / "bench-linux"),
                    help="directory for the initramfs and the console logs")
    ap.add_argument("--pvkvm", help="use this pvkvm binary instead of building target/release/pvkvm")
    ap.add_argument("--pvkvm-exits", action="store_true",
                    help="also profile VM exits per operation on pvkvm (one extra boot per figure, ~4 min)")
    ap.add_argument("--no-disk", action="store_true",
                    help="skip the disk figures (no scratch image, no disk given to the guests)")
    ap.add_argument("--xen-tcg-disk", action="store_true",
                    help="give xen-tcg's dom0 QEMU's virtio disk anyway (its I/O hangs with this kernel: "
                         "no interrupt; the boot then ends at its time limit)")
    ap.add_argument("--no-net", action="store_true",
                    help="skip the TCP figures (no host peer, no NIC given to the guests)")
    ap.add_argument("--mixed", action="store_true",
                    help="also run the mixed user workload (one more boot per platform)")
    ap.add_argument("--mixed-only", action="store_true",
                    help="run only the mixed user workload (no figure boots)")
    ap.add_argument("--mixed-sizes", default=MIXED_SIZES,
                    help="the mixed workload's sizes, the same on every platform (default %s)" % MIXED_SIZES)
    a = ap.parse_args()
    try:
        mixed_sizes = parse_sizes(a.mixed_sizes)
    except ValueError as e:
        die("--mixed-sizes: %s" % e)
    plats = [p.strip() for p in a.platforms.split(",") if p.strip()]
    for p in plats:
        if p not in ALL_PLATFORMS:
            die("unknown platform %r (known: %s)" % (p, ", ".join(ALL_PLATFORMS)))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    pvkvm, kernel, initrd = build_all(work, Path(a.pvkvm) if a.pvkvm else None)
    qemu = qemu_reason = xen = xen_reason = None
    if any(p != "pvkvm" for p in plats):
        qemu, qemu_reason = ensure_qemu()
    if "xen-tcg" in plats:
        xen, xen_reason = ensure_xen()

    report = {"kernel": kernel.name, "initramfs": str(initrd), "host": host_facts(), "platforms": {}}

    def unavailable(name):
        if name != "pvkvm" and not qemu:
            return qemu_reason
        if name == "xen-tcg" and not xen:
            return xen_reason
        if name in ("pvkvm", "qemu-kvm") and not os.path.exists("/dev/kvm"):
            return "no /dev/kvm on this host"
        return None

    for name in ([] if a.mixed_only else plats):
        reason = unavailable(name)
        if reason:
            say("%s: not run: %s" % (name, reason))
            report["platforms"][name] = {"status": "failed", "reason": reason, "boot_s": None, "figures": {},
                                         "info": {}, "wall_s": 0}
            continue
        res = io_boot(name, work, pvkvm, kernel, initrd, qemu, xen, not a.no_disk, not a.no_net, a.xen_tcg_disk)
        if name == "pvkvm":
            stats = [t for _, t in platform_stats_lines(work / "pvkvm.log")]
            res["pvkvm_stats"] = stats
            res["counters"] = parse_stats(stats)
        report["platforms"][name] = res
        say("%s: %s%s" % (name, res["status"], "" if res["status"] == "ok" else " (%s)" % res.get("reason")))
        for fig, f in res["figures"].items():
            if "median_ns" in f:
                say("  %-18s %12s  [%s .. %s]%s" % (fig, fmt_ns(f["median_ns"]), fmt_ns(f["p10_ns"]),
                                                   fmt_ns(f["p90_ns"]), fmt_rate(f)))
            elif fig in dict((n, 1) for n, _, _ in IO_FIGURES):
                say("  %-18s %s" % (fig, f.get("error")))
    if a.mixed or a.mixed_only:
        spec = ",".join("%s=%d" % kv for kv in mixed_sizes.items())
        report["mixed"] = {"sizes": mixed_sizes, "phases": dict(MIXED_PHASES), "platforms": {}}
        cc, cc_reason = cc_archive(work)
        mixed_initrd = initrd
        if cc:
            mixed_initrd = work / "initramfs-bench-mixed.cpio.gz"
            mixed_initrd.write_bytes(initrd.read_bytes() + cc.read_bytes())
            report["mixed"]["initramfs"] = str(mixed_initrd)
        else:
            say("mixed workload without its compile phase: %s" % cc_reason)
            report["mixed"]["cc_missing"] = cc_reason
        for name in plats:
            reason = unavailable(name)
            if reason:
                say("%s mixed: not run: %s" % (name, reason))
                report["mixed"]["platforms"][name] = {"status": "failed", "reason": reason}
                continue
            res = mixed_boot(name, work, pvkvm, kernel, mixed_initrd, qemu, xen, spec, mixed_sizes)
            report["mixed"]["platforms"][name] = res
            say("%s mixed: %s%s" % (name, res["status"], "" if res["status"] == "ok" else " (%s)" % res.get("reason")))
            for ph, sec in res.get("phases", {}).items():
                say("  %-14s %8.2f s" % (ph, sec))
    exits_md = ""
    if a.pvkvm_exits and os.path.exists("/dev/kvm") and not a.mixed_only:
        prof = exit_profile(work, pvkvm, kernel, initrd)
        report["pvkvm_exit_profile"] = prof
        exits_md = "\n" + exit_markdown(prof)
    report["script_s"] = round(time.monotonic() - T0, 1)
    md = (markdown(report) if report["platforms"] else "") + exits_md
    if "mixed" in report:
        md += ("\n" if md else "") + mixed_markdown(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(md)
    sys.stdout.write(md)
    say("done in %.0f s" % report["script_s"])
    runs = report["mixed"]["platforms"] if a.mixed_only else report["platforms"]
    return 0 if runs.get("pvkvm", {}).get("status") == "ok" or "pvkvm" not in plats else 1


def parse_sizes(spec):
    """The mixed workload's sizes (as benches/workload/src/mixed.rs parses them)."""
    sizes = dict((k, int(v)) for k, v in (kv.split("=") for kv in MIXED_SIZES.split(",")))
    for kv in spec.split(","):
        if not kv.strip() or kv == "default":
            continue
        k, sep, v = kv.partition("=")
        if not sep or k not in sizes or not v.isdigit() or int(v) <= 0:
            raise ValueError("%r: expected key=positive number, keys %s" % (kv, ", ".join(sizes)))
        sizes[k] = int(v)
    return sizes


def mixed_boot(name, work, pvkvm, kernel, initrd, qemu, xen, spec, sizes):
    """One boot running only the mixed workload; its result with the phases in seconds."""
    base = parse_sizes(MIXED_SIZES)
    scale = max([1.0] + [sizes[k] / base[k] for k in ("mib", "procs", "cc")] +
                [sizes["dirs"] * sizes["files"] / (base["dirs"] * base["files"])])
    limit = int(MIXED_LIMITS[name] * scale)
    b = platform_boot(name, work, pvkvm, kernel, initrd, qemu, xen, mixed=spec, limit=limit).run()
    res = b.result()
    res["limit_s"] = limit
    res["phases"] = {ph: round(f["median_ns"] / 1e9, 3) for ph, f in res["figures"].items()
                     if ph.startswith("mixed_") and "median_ns" in f}
    fails = {ph: f["error"] for ph, f in res["figures"].items() if "error" in f}
    if fails:
        res["phase_errors"] = fails
    if name == "pvkvm":
        res["counters"] = parse_stats(t for _, t in platform_stats_lines(b.log_path))
    return res


def mixed_markdown(report):
    """The mixed workload's table: seconds per phase on each platform, ratio pvkvm/other."""
    mx = report["mixed"]
    plats = mx["platforms"]
    sz = mx["sizes"]
    ok = [n for n, p in plats.items() if p.get("phases")]
    others = [n for n in ok if n != "pvkvm"]
    base = plats.get("pvkvm", {}).get("phases", {})
    head = ["phase", "pvkvm"]
    for o in others:
        head += [o, "pvkvm/" + o]
    host = report.get("host", {})
    out = ["### Mixed user workload", "",
           "One boot per platform running only `pvkvm-workload --mixed %s` (busybox userland of the "
           "benchmark initramfs plus tcc and glibc, files in a tmpfs); wall time per phase in seconds "
           "(CLOCK_MONOTONIC in the guest); ratio > 1 means pvkvm is slower. Kernel `%s`; host: %s, %s CPUs, "
           "kernel %s, /dev/kvm %s, load average %s at the start; %s." % (
               ",".join("%s=%d" % kv for kv in sz.items()), report.get("kernel"), host.get("cpu"),
               host.get("cpus"), host.get("kernel"), host.get("kvm"),
               " ".join(host.get("loadavg_at_start") or ["?"]), host.get("date")), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ph, what in MIXED_PHASES:
        what = (what.replace("MIB", str(sz["mib"])).replace("DIRS", str(sz["dirs"]))
                .replace("FILES", str(sz["files"])).replace("PROCS/2", str(sz["procs"] // 2))
                .replace("CC", str(sz["cc"]))
                .replace("PROCS", str(sz["procs"])))
        row = ["`%s`: %s" % (ph, what.replace("|", "\\|")), fmt_s(base.get(ph))]
        for o in others:
            v = plats[o]["phases"].get(ph)
            row += [fmt_s(v), fmt_ratio(base.get(ph), v)]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    for n, p in plats.items():
        if p.get("status") == "ok":
            exits = (p.get("counters") or {}).get("vm_exits")
            out.append("- %s: ok, launch to workload %.1f s, boot wall time %.1f s (limit %d s)%s" % (
                n, p.get("boot_s") or 0, p.get("wall_s") or 0, p.get("limit_s") or 0,
                "; %d VM exits in the whole boot (boot included)" % exits if exits else ""))
        else:
            out.append("- %s: **failed**: %s" % (n, p.get("reason")))
        for ph, err in (p.get("phase_errors") or {}).items():
            if ph != "mixed_total":
                out.append("  - `%s` failed: %s" % (ph, err))
    if mx.get("cc_missing"):
        out.append("- no compile phase: %s" % mx["cc_missing"])
    out.append("")
    return "\n".join(out) + "\n"


def fmt_s(v):
    return "-" if v is None else ("%.2f s" % v if v < 100 else "%.0f s" % v)


def io_boot(name, work, pvkvm, kernel, initrd, qemu, xen, want_disk, want_net, xen_disk=False):
    """Boots the platform with a scratch disk (a sparse raw image in the work directory,
    deleted afterwards) and the host's TCP peer, as wanted and offered; returns its
    result, with every disk and TCP figure present (measured, or the reason it is not)."""
    disk = peer = None
    not_run = {}
    if want_disk and name == "xen-tcg" and not xen_disk:
        not_run.update((f, XEN_DISK_REASON) for f in DISK_NAMES)
    elif want_disk:
        disk = work / ("%s-scratch.img" % name)
        with open(disk, "wb") as f:
            f.truncate(SCRATCH_BYTES)
    else:
        not_run.update((f, "not run (--no-disk)") for f in DISK_NAMES)
    if not want_net:
        not_run.update((f, "not run (--no-net)") for f in NET_NAMES)
    elif name == "xen-tcg":
        not_run.update((f, XEN_NET_REASON) for f in NET_NAMES)
    elif name == "pvkvm" and not shutil.which("passt"):
        not_run.update((f, "not run: pvkvm --net user needs passt (guest-images/scripts/install-deps.sh)")
                       for f in NET_NAMES)
    else:
        peer = Peer()
    try:
        res = platform_boot(name, work, pvkvm, kernel, initrd, qemu, xen, disk=disk,
                            net_port=peer.port if peer else None).run().result()
    finally:
        if peer:
            peer.close()
        if disk:
            try:
                disk.unlink()
            except OSError:
                pass
    paths = dict(IO_PATHS.get(name, {}))
    if name == "xen-tcg":
        paths["disk"] = (XEN_DISK_REASON if not disk else
                         "QEMU's virtio-blk seen by dom0 (NOT Xen's blkback: no domU toolstack), raw image, "
                         "cache=writeback")
        paths["net"] = XEN_NET_REASON
    res["io_paths"] = paths
    if peer:
        res["peer_connections"] = peer.served
    for fig, _, unit in IO_FIGURES:
        f = res["figures"].get(fig)
        if f is None:
            res["figures"][fig] = {"error": not_run.get(fig) or (
                "no result (benchmark did not get this far)" if res["status"] != "ok" else "no result")}
        elif "median_ns" in f and unit == "MiB/s":
            f["mib_per_s"] = round(1e9 / f["median_ns"], 2)
        elif "median_ns" in f and unit == "IOPS":
            f["iops"] = round(1e9 / f["median_ns"])
    return res


def fmt_rate(f):
    if "mib_per_s" in f:
        return " %.1f MiB/s" % f["mib_per_s"]
    if "iops" in f:
        return " %d IOPS" % f["iops"]
    return ""


STAT_EXITS_RE = re.compile(r"pvkvm stats: [\d.]+ s, (\d+) VM exits")
STAT_KINDS_RE = re.compile(r"exits: hypercall doorbell (\d+), trap doorbell (\d+)")
# The other exit kinds (a separate pattern: older builds print only the first two).
STAT_MORE_KINDS_RE = re.compile(r"exits: hypercall doorbell \d+, trap doorbell \d+, apply refill (\d+), "
                                r"interrupted (\d+), other (\d+)")
STAT_HC_RE = re.compile(r"^\s*(\w+) \((\d+)\)\s+(\d+)\s+enosys (\d+)")
STAT_SYSCALLS_RE = re.compile(r"guest-user syscalls bounced: (\d+)")
STAT_EXC_RE = re.compile(r"exception\s+(\d+) bounced (\d+)")
STAT_STORES_RE = re.compile(r"posted pagetable stores: (\d+)")
STAT_APPLIES_RE = re.compile(r"posted pagetable stores: \d+ in (\d+) applies")


def parse_stats(lines):
    """Counters from pvkvm's --stats block, as a flat dict."""
    c = {}
    for text in lines:
        for rx, keys in ((STAT_EXITS_RE, ["vm_exits"]), (STAT_KINDS_RE, ["hypercall_doorbells", "trap_doorbells"]),
                         (STAT_MORE_KINDS_RE, ["refill_exits", "interrupted_exits", "other_exits"]),
                         (STAT_SYSCALLS_RE, ["syscalls_bounced"]), (STAT_STORES_RE, ["pagetable_stores"]),
                         (STAT_APPLIES_RE, ["applies"])):
            m = rx.search(text)
            if m:
                for k, v in zip(keys, m.groups()):
                    c[k] = int(v)
        m = STAT_HC_RE.match(text)
        if m:
            c["hc_" + m.group(1)] = int(m.group(3))
        m = STAT_EXC_RE.search(text)
        if m:
            c["exc%s_bounced" % m.group(1)] = int(m.group(2))
    return c


def exit_profile(work, pvkvm, kernel, initrd):
    """VM exits (and hypercalls, bounces) per operation of each figure on pvkvm: one boot
    running no figure (the baseline: boot and power-off), then one boot per figure; the
    difference of pvkvm's --stats counters over the figure's operations (warm-up sample
    included, so slightly high)."""
    runs = {}
    for only in ["none"] + [f for f, _ in FIGURES]:
        b = platform_boot("pvkvm", work, pvkvm, kernel, initrd, None, None, only=only).run()
        res = b.result()
        res["counters"] = parse_stats(t for _, t in b.lines)
        runs[only] = res
        say("exit profile %s: %s, %s VM exits" % (only, res["status"], res["counters"].get("vm_exits")))
    base = runs["none"]["counters"]
    prof = {}
    for fig, _ in FIGURES:
        r = runs[fig]
        f = r["figures"].get(fig) or {}
        if r["status"] != "ok" or "ops" not in f or not base:
            prof[fig] = {"error": r.get("reason", "no figure")}
            continue
        # ops timed plus the untimed warm-up sample (one batch).
        ops = f["ops"] + f["ops"] // f["samples"]
        per = {k: round((v - base.get(k, 0)) / ops, 2) for k, v in r["counters"].items()}
        prof[fig] = {"ops": ops, "median_ns": f["median_ns"], "per_op": per}
    return prof


def exit_markdown(prof):
    cols = [("vm_exits", "VM exits"), ("syscalls_bounced", "syscalls bounced"), ("exc14_bounced", "#PF bounced"),
            ("hc_iret", "iret"), ("hc_mmu_update", "mmu_update"), ("hc_mmuext_op", "mmuext_op"),
            ("hc_update_va_mapping", "update_va_mapping"), ("hc_multicall", "multicall"),
            ("hc_xen_version", "xen_version"), ("hc_stack_switch", "stack_switch"),
            ("hc_set_segment_base", "set_segment_base"), ("hc_vcpu_op", "vcpu_op"),
            ("pagetable_stores", "PT stores in VM")]
    out = ["### pvkvm: VM exits and hypercalls per operation", "",
           "From `pvkvm run --stats` of one boot per figure minus a boot that runs none "
           "(`pvkvm.bench_only=`); per operation, warm-up included. Figures with few operations "
           "(`cpu`) are within boot-to-boot noise. \"us per VM exit\" = median / VM exits.", "",
           "| figure | median | us per VM exit | " + " | ".join(c[1] for c in cols) + " |",
           "|---|---|---|" + "---|" * len(cols)]
    for fig, _ in FIGURES:
        p = prof.get(fig, {})
        if "per_op" not in p:
            out.append("| `%s` | %s |" % (fig, p.get("error", "-")))
            continue
        cells = ["%.1f" % p["per_op"].get(k, 0) for k, _ in cols]
        exits = p["per_op"].get("vm_exits", 0)
        per_exit = "%.0f" % (p["median_ns"] / exits / 1000) if exits >= 1 else "-"
        out.append("| `%s` | %s | %s | %s |" % (fig, fmt_ns(p["median_ns"]), per_exit, " | ".join(cells)))
    return "\n".join(out) + "\n"


def platform_stats_lines(log):
    """pvkvm's --stats block from its console log: (time, text) pairs."""
    out, on = [], False
    try:
        for line in Path(log).read_text(errors="replace").splitlines():
            text = line[11:] if line.startswith("[") else line
            if text.startswith("pvkvm stats:"):
                on = True
            if on:
                out.append((None, text))
    except OSError:
        pass
    return out


if __name__ == "__main__":
    sys.exit(main())
