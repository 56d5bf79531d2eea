"""The before/after part of benches/report.py (issue 14): the same Linux figures with two
pvkvm binaries, the one built from a previous revision ("before", default HEAD~1) and the
one of this tree ("after"), in one run, interleaved, with VM exits per operation and each
figure's floor.

Only pvkvm differs between the two sides: the guest kernel, the benchmark initramfs
(benches/workload built from this tree) and the host are the same, so a difference is the
VMM's. The before binary comes from a temporary `git worktree` of REV built with its own
CARGO_TARGET_DIR (target/report-before/<sha>, kept so that a rerun does not rebuild).

Floor model, per operation of a figure:

    floor = sum over exit kinds (exits of that kind / op x the probe's round trip of it)
          + applies / op x the probe's in-VM exception round trip
          + further ring-0 instructions / op x the probe's emulated instruction
          + native work (the same figure run natively on this host)

with the round trips of `pvkvm probe --json`: hypercall doorbells (and exits pvkvm does not
attribute: interrupted, other) cost "syscall -> VMM -> guest", trap doorbells "int3 ->
shim stub -> VMM -> iretq", apply refills "out from ring 0 -> VMM -> guest"; an apply (the
shim's ring-0 routine that repeats the VMM's pagetable stores inside the VM, entered on the
way back to the guest: `--stats`' "N in M applies") costs "int3 -> ring-0 iretq (no VMM)".
Where the host KVM emulates ring 0 (kvm_pvm), the instructions it emulated are counted with
the host's `kvm:kvm_emulate_insn` tracepoint (`perf stat`, root; see
benches/emulated_insns.sh), and those not already in a round trip above (one per hypercall
doorbell, four per trap doorbell, one per apply) cost "ring-0 instruction (emulated?)"
each; without perf the term is left out and the notes say so. ratio = value / floor; a
figure above FLAG_RATIO is flagged.

Python 3 standard library only; uses benches/linux.py for the builds and the boots.
"""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linux  # noqa: E402  (benches/linux.py: the benchmark initramfs, boots, --stats parsing)

ROOT = Path(__file__).resolve().parent.parent
FLAG_RATIO = 1.3
# Time limit of a benchmark boot running one figure (or none): they take ~35 s here; a
# boot that hangs (a bug of the build under test) should not cost linux.py's 180 s.
FIGURE_BOOT_LIMIT_S = 120
NO_BEFORE = "no before binary"

# The figures of the comparison: (key, workload figure or None, label, unit). Workload
# figures are ns per operation in the guest; "MiB/s" figures are shown as a rate (1 MiB /
# median) but compared and floored as time per MiB.
FIGURES = [
    ("getppid", "getppid", "getppid syscall", "ns"),
    ("fault", "fault", "page fault (first write to an anonymous page)", "ns"),
    ("mmap_cycle", "mmap_cycle", "mmap-touch (mmap + touch + munmap, per page)", "ns"),
    ("fork_exit", "fork_exit", "fork + exit + wait", "ns"),
    ("fork_exec", "fork_exec", "fork + exec (129-byte static ELF) + wait", "ns"),
    ("pipe", "pipe", "pipe round trip (2 processes)", "ns"),
    ("memfill", "memfill", "memory fill rate (fresh anonymous memory, per MiB)", "MiB/s"),
    ("boot", None, "boot to prompt (default guest)", "s"),
    ("mixed", None, "mixed workload total (`linux.py --mixed`)", "s"),
]
WORKLOAD_FIGURES = [wf for _, wf, _, _ in FIGURES if wf]

# `pvkvm probe --json` timing names: what one exit of each kind (as `--stats` splits them)
# and one in-VM transition cost at least.
PROBE_HYPERCALL = "syscall -> VMM -> guest (sync regs)"
PROBE_TRAP = "int3 -> shim stub -> VMM -> iretq"
PROBE_REFILL = "out from ring 0 -> VMM -> guest"
PROBE_IN_VM = "int3 -> ring-0 iretq (no VMM)"
PROBE_RING0_INSN = "ring-0 instruction (emulated?)"
# Emulated instructions a probe round trip above already includes, per exit kind and per
# apply: a hypercall's doorbell `out`; a trap stub's pushes, `out` and `iretq`; an
# apply's `iretq`.
PROBE_TIMINGS = (PROBE_HYPERCALL, PROBE_TRAP, PROBE_REFILL, PROBE_IN_VM, PROBE_RING0_INSN)
EMULATED_IN_FLOORS = [("hypercall_doorbells", 1), ("trap_doorbells", 4), ("applies", 1)]
EXIT_KINDS = [  # (--stats counter, probe timing charged per exit)
    ("hypercall_doorbells", PROBE_HYPERCALL),
    ("trap_doorbells", PROBE_TRAP),
    ("refill_exits", PROBE_REFILL),
    ("interrupted_exits", PROBE_HYPERCALL),
    ("other_exits", PROBE_HYPERCALL),
]
IN_VM_NOTE = ("the shim's applies (ring-0 entries on the way back to the guest that repeat "
              "the VMM's pagetable stores inside the VM) per operation, from --stats; in-VM "
              "exceptions that never reach the VMM (the in-VM page flush) are not counted")
EMULATED_NOTE = ("ring-0 instructions the host KVM emulated per operation (`perf stat -a -e "
                 "kvm:kvm_emulate_insn` around each figure boot, switched on and off by the "
                 "guest's `wl-begin` and figure lines through perf's control FIFO, so over the "
                 "timed samples only), doorbells and applies included")
EMULATED_EVENT = "kvm:kvm_emulate_insn"


def emulated_counter():
    """Whether this host can count the instructions its KVM emulates (perf and the
    tracepoint, as root), and why not."""
    if shutil.which("perf") is None:
        return False, "no perf on this host"
    try:
        r = subprocess.run(["perf", "stat", "-a", "-x,", "-e", EMULATED_EVENT, "--", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"perf stat failed: {e}"
    if r.returncode != 0 or EMULATED_EVENT not in r.stderr or "<not" in r.stderr:
        return False, "perf stat cannot count %s here: %s" % (EMULATED_EVENT, r.stderr.strip()[-200:])
    return True, None


def say(msg):
    print(f"report: {msg}", file=sys.stderr, flush=True)


# --- the before binary ------------------------------------------------------------------

class BeforeBuild:
    """Builds pvkvm at REV in a temporary git worktree; the worktree is removed on exit
    (also on an exception or Ctrl-C: `with` runs __exit__, and SIGTERM is turned into an
    exception for as long as the worktree exists)."""

    def __init__(self, rev):
        self.rev = rev
        self.sha = None
        self.worktree = None
        self.pvkvm = None
        self.error = None

    def __enter__(self):
        self._old_term = signal.signal(signal.SIGTERM, _raise_on_term)
        try:
            return self._build()
        except BaseException:
            # __exit__ does not run when __enter__ raises (Ctrl-C during the build).
            self.__exit__(None, None, None)
            raise

    def _build(self):
        r = git("rev-parse", "--verify", "--quiet", self.rev + "^{commit}")
        if r.returncode != 0:
            self.error = f"--before {self.rev}: no such revision"
            return self
        self.sha = r.stdout.strip()
        short = self.sha[:12]
        # A path that is the same for the same revision, so that cargo finds its previous
        # build of it fresh (its fingerprints name the source path).
        self.worktree = Path(tempfile.gettempdir()) / f"pvkvm-report-before-{short}"
        self._remove_worktree()
        r = git("worktree", "add", "--detach", str(self.worktree), self.sha)
        if r.returncode != 0:
            self.error = f"git worktree add of {self.rev} failed: {r.stderr.strip()}"
            self.worktree = None
            return self
        self._age_sources()
        target = ROOT / "target" / "report-before" / short
        target.mkdir(parents=True, exist_ok=True)
        # Nothing of this tree's build leaks in: its own target dir, no outer flags.
        env = {k: v for k, v in os.environ.items()
               if k not in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET")}
        env["CARGO_TARGET_DIR"] = str(target)
        say(f"building pvkvm at {self.rev} ({short}) in {self.worktree}, target {target}")
        t0 = time.monotonic()
        r = subprocess.run(["cargo", "build", "--release", "-p", "pvkvm"], cwd=self.worktree, env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.error = (f"pvkvm at {self.rev} ({short}) does not build "
                          f"(cargo build --release -p pvkvm): {r.stderr.strip()[-1500:]}")
            return self
        say(f"before build: {time.monotonic() - t0:.0f} s")
        self.pvkvm = target / "release" / "pvkvm"
        return self

    def __exit__(self, *exc):
        self._remove_worktree()
        signal.signal(signal.SIGTERM, self._old_term)
        return False

    def _age_sources(self):
        """Sets every checked-out file's and directory's mtime to the commit's date: a
        fresh checkout is newer than the kept build, which cargo would then redo."""
        when = int(git("log", "-1", "--format=%ct", self.sha).stdout.strip() or time.time())
        for dirpath, dirnames, filenames in os.walk(self.worktree):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames + [""]:
                try:
                    os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
                except OSError:
                    pass

    def _remove_worktree(self):
        if self.worktree is None:
            return
        if self.worktree.exists():
            git("worktree", "remove", "--force", str(self.worktree))
            shutil.rmtree(self.worktree, ignore_errors=True)
        git("worktree", "prune")


def _raise_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def git(*args):
    return subprocess.run(["git"] + list(args), cwd=ROOT, capture_output=True, text=True)


# --- measuring ----------------------------------------------------------------------------

def probe_floors(probe_report):
    """The probe's round trips in ns by timing name, or {} when the probe failed."""
    scale = {"ns": 1.0, "us": 1e3, "ms": 1e6}
    return {t["name"]: t["value"] * scale[t["unit"]] for t in probe_report.get("timings", [])
            if t.get("unit") in scale}


def median_floors(probes):
    """Per timing, the median over several probes' round trips."""
    names = set().union(*probes) if probes else set()
    return {n: statistics.median(p[n] for p in probes if n in p) for n in names}


def native_figures(wl_binary):
    """The workload figures run natively on this host (the same static binary as in the
    guest): ns per operation by figure, or {} with the reason."""
    if not wl_binary.exists():
        return {}, f"{wl_binary} missing"
    r = subprocess.run([str(wl_binary), "--only", ",".join(WORKLOAD_FIGURES)], capture_output=True,
                       text=True, timeout=300)
    figs = {}
    for line in r.stdout.splitlines():
        m = linux.WL_RE.search(line)
        if m:
            figs[m.group(1)] = int(m.group(2))
    return figs, None if figs else f"no figures (status {r.returncode}): {r.stderr.strip()[-300:]}"


class Side:
    """One pvkvm binary's samples: per figure, one value and one counter delta per round."""

    def __init__(self, name, pvkvm, work, count_emulated=False):
        self.name, self.pvkvm, self.work = name, pvkvm, work
        self.count_emulated = count_emulated
        work.mkdir(parents=True, exist_ok=True)
        self.values = {}    # figure -> [ns per op, one per round]
        self.per_op = {}    # figure -> [counters per op, one per round]
        self.errors = {}    # figure -> last error
        self.baseline = None  # this round's counters of a boot that runs no figure
        self.windowed = {}    # figure -> rounds whose exits were counted over the timed window

    def boot_workload(self, only=None, mixed=None, kernel=None, initrd=None, sizes=None, limit=None):
        """A benchmark boot; its result with the parsed --stats counters."""
        if mixed:  # mixed_boot parses the counters itself
            return linux.mixed_boot("pvkvm", self.work, self.pvkvm, kernel, initrd, None, None, mixed, sizes)
        # A short path: a Unix socket's must fit 108 bytes.
        sock = Path("/tmp") / f"pvkvm-ab-{os.getpid()}-{self.name}.sock"
        b = linux.platform_boot("pvkvm", self.work, self.pvkvm, kernel, initrd, None, None, only=only,
                                limit=limit, api_socket=sock)
        counts = None
        perf_window = None
        if self.count_emulated:
            counts = self.work / "emulated.csv"
            counts.unlink(missing_ok=True)
            perf = ["perf", "stat", "-a", "-x,", "-e", EMULATED_EVENT, "-o", str(counts)]
            if only and only != "none":
                # Counted over the figure's timed samples only: perf starts with the event
                # off and the guest's marker lines switch it on and off.
                perf_window = PerfWindow(self.work, only)
                perf += perf_window.perf_args()
                b.on_window_begin, b.on_window_end = perf_window.enable, perf_window.disable
            b.argv = perf + ["--"] + b.argv
        try:
            b.run()
        finally:
            if perf_window:
                perf_window.close()
        res = b.result()
        res["counters"] = linux.parse_stats(t for _, t in b.lines)
        if only and only != "none":
            res["window"] = b.window(only)
        if counts is not None:
            n = read_perf_count(counts)
            if n is not None:
                if perf_window and perf_window.done:
                    if res["window"] is not None:
                        res["window"]["emulated_insns"] = n
                    else:
                        res["emulated_window"] = n
                elif not perf_window:
                    res["counters"]["emulated_insns"] = n
        return res

    def record(self, fig, value_ns, counters, ops, baseline=None, subtract=True):
        """Keeps a round's value and its counters per operation, minus `baseline`'s when
        `subtract`; without a baseline to subtract the counters say nothing per operation
        (the boot's exits would swamp them) and only the value is kept."""
        self.values.setdefault(fig, []).append(value_ns)
        if subtract and baseline is None:
            return
        base = baseline if subtract else {}
        self.per_op.setdefault(fig, []).append(
            {k: (v - base.get(k, 0)) / ops for k, v in counters.items()})

    def record_per_op(self, fig, value_ns, per_op):
        """Keeps a round's value and its counters already per operation."""
        self.values.setdefault(fig, []).append(value_ns)
        self.per_op.setdefault(fig, []).append(per_op)

    def fail(self, fig, reason):
        self.errors[fig] = reason
        say(f"{self.name} {fig}: failed: {reason}")


class PerfWindow:
    """perf stat's control FIFOs: the count runs from the figure's `wl-begin` line to its
    `wl` line only (`perf stat -D -1 --control fifo:CTL,ACK`). `done` is true once both
    switches were acknowledged: the count is then the window's."""

    def __init__(self, work, fig):
        self.fig = fig
        self.ctl, self.ack = work / "perf-ctl.fifo", work / "perf-ack.fifo"
        for f in (self.ctl, self.ack):
            f.unlink(missing_ok=True)
            os.mkfifo(f)
        self.ctl_fd = self.ack_fd = None
        self.enabled = self.done = False

    def perf_args(self):
        return ["-D", "-1", "--control", f"fifo:{self.ctl},{self.ack}"]

    def _send(self, command):
        """Sends `command` and waits (at most 2 s) for perf's ack."""
        try:
            if self.ctl_fd is None:
                # perf holds both FIFOs open (read-write) from its start.
                self.ctl_fd = os.open(self.ctl, os.O_WRONLY | os.O_NONBLOCK)
                self.ack_fd = os.open(self.ack, os.O_RDONLY | os.O_NONBLOCK)
            os.write(self.ctl_fd, (command + "\n").encode())
            deadline = time.monotonic() + 2
            got = b""
            while b"ack" not in got and time.monotonic() < deadline:
                try:
                    got += os.read(self.ack_fd, 64)
                except BlockingIOError:
                    time.sleep(0.0005)
            return b"ack" in got
        except OSError:
            return False

    def enable(self, fig):
        if fig == self.fig and not self.enabled:
            self.enabled = self._send("enable")

    def disable(self, fig):
        if fig == self.fig and self.enabled and not self.done:
            self.done = self._send("disable")

    def close(self):
        for fd in (self.ctl_fd, self.ack_fd):
            if fd is not None:
                os.close(fd)
        for f in (self.ctl, self.ack):
            f.unlink(missing_ok=True)


def read_perf_count(path):
    """The count `perf stat -x,` wrote for EMULATED_EVENT, or None."""
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] == EMULATED_EVENT and parts[0].strip().isdigit():
                return int(parts[0])
    except OSError:
        pass
    return None


def measure_workload_figure(side, fig, kernel, initrd):
    res = side.boot_workload(only=fig, kernel=kernel, initrd=initrd, limit=FIGURE_BOOT_LIMIT_S)
    f = res["figures"].get(fig) or {}
    if res["status"] != "ok" or "median_ns" not in f:
        side.fail(fig, res.get("reason") or f.get("error") or "no figure")
        return
    # The boot's counters cover the timed operations, the untimed warm-up sample (one
    # batch) and the boot; the window's (read through the control API at `wl-begin` and
    # at the figure's line) only the timed operations.
    ops = f["ops"] + f["ops"] // f["samples"]
    window = res.get("window")
    if window and f["ops"] > 0:
        side.record_per_op(fig, f["median_ns"], {k: v / f["ops"] for k, v in window.items()})
        side.windowed[fig] = side.windowed.get(fig, 0) + 1
    else:
        side.record(fig, f["median_ns"], res["counters"], ops, side.baseline)
        if "emulated_window" in res and f["ops"] > 0 and fig in side.per_op:
            # A build without vm.info's counters: its exits are boot minus baseline, its
            # emulated instructions still the window's.
            side.per_op[fig][-1]["emulated_insns"] = res["emulated_window"] / f["ops"]
    say(f"{side.name} {fig}: {linux.fmt_ns(f['median_ns'])}")


def measure_baseline(side, kernel, initrd):
    """A boot that runs no figure: the counters every figure boot has besides its own.
    Tried twice (a boot can hang: a build's bug); without it the side's figures are still
    measured, but not their exits."""
    side.baseline = None
    for attempt in (1, 2):
        res = side.boot_workload(only="none", kernel=kernel, initrd=initrd, limit=FIGURE_BOOT_LIMIT_S)
        if res["status"] == "ok" and res["counters"]:
            side.baseline = res["counters"]
            return
        side.fail("baseline", f"attempt {attempt}: {res.get('reason', 'no --stats counters')}")


def measure_boot(side, boot_profile, kernel, initrd):
    """Launch to the default guest's shell prompt (benches/report.py's boot profile); one
    operation, its exits counted to power-off."""
    res = boot_profile(kernel, initrd, pvkvm=side.pvkvm)
    if res.get("status") != "ok":
        side.fail("boot", res.get("reason"))
        return
    counters = linux.parse_stats(res["stats"].splitlines())
    # The whole boot is the operation: nothing to subtract.
    side.record("boot", res["boot_to_prompt_s"] * 1e9, counters, 1, subtract=False)
    say(f"{side.name} boot: {res['boot_to_prompt_s']} s")


def measure_mixed(side, kernel, initrd, spec, sizes):
    res = side.boot_workload(mixed=spec, kernel=kernel, initrd=initrd, sizes=sizes)
    total = (res.get("phases") or {}).get("mixed_total")
    if res["status"] != "ok" or total is None:
        side.fail("mixed", res.get("reason") or "no mixed_total")
        return
    side.record("mixed", total * 1e9, res.get("counters") or {}, 1, side.baseline)
    say(f"{side.name} mixed: {total:.1f} s")


def run_rounds(sides, rounds, kernel, initrd, default_kernel, default_initrd, boot_profile,
               mixed_initrd=None, mixed_spec=None, mixed_sizes=None, probe=None, probes=None):
    """Every figure on every side, interleaved: per figure, one boot of each side in turn,
    the order reversed every round, so that host noise (other jobs, thermal) hits both.
    With `probe` (a function returning `pvkvm probe --json`'s report), the floors are
    measured again at the start of every round and appended to `probes`: one probe taken
    when the host was calm would not match figures measured when it was not."""
    for rnd in range(rounds):
        order = sides if rnd % 2 == 0 else list(reversed(sides))
        say(f"round {rnd + 1}/{rounds}: {' then '.join(s.name for s in order)}")
        if probe is not None:
            rt = probe_floors(probe())
            if rt:
                probes.append(rt)
        for s in order:
            measure_baseline(s, kernel, initrd)
        for fig in WORKLOAD_FIGURES:
            for s in order:
                measure_workload_figure(s, fig, kernel, initrd)
        for s in order:
            measure_boot(s, boot_profile, default_kernel, default_initrd)
        if mixed_spec:
            for s in order:
                measure_mixed(s, kernel, mixed_initrd, mixed_spec, mixed_sizes)


# --- the floor and the summary -------------------------------------------------------------

def floor_ns(per_op, native_ns, rt):
    """The figure's floor per operation (see the module's doc) and its parts, or None
    without the probe's round trips."""
    if not rt or PROBE_HYPERCALL not in rt:
        return None
    exits_ns = 0.0
    for counter, timing in EXIT_KINDS:
        exits_ns += max(per_op.get(counter, 0.0), 0.0) * rt.get(timing, rt[PROBE_HYPERCALL])
    if not any(counter in per_op for counter, _ in EXIT_KINDS):
        # A build that does not split exits by kind: all of them at the hypercall price.
        exits_ns = max(per_op.get("vm_exits", 0.0), 0.0) * rt[PROBE_HYPERCALL]
    applies = max(per_op.get("applies", 0.0), 0.0)
    in_vm_ns = applies * rt.get(PROBE_IN_VM, 0.0)
    emulated_ns = 0.0
    if "emulated_insns" in per_op:
        further = per_op["emulated_insns"] - sum(per_op.get(k, 0.0) * n for k, n in EMULATED_IN_FLOORS)
        emulated_ns = max(further, 0.0) * rt.get(PROBE_RING0_INSN, 0.0)
    return {"exits_ns": exits_ns, "in_vm_ns": in_vm_ns, "emulated_ns": emulated_ns,
            "native_ns": native_ns or 0.0,
            "total_ns": exits_ns + in_vm_ns + emulated_ns + (native_ns or 0.0)}


def summarize(side, fig, native_ns, rt):
    vals = side.values.get(fig)
    if not vals:
        return {"error": side.errors.get(fig) or side.errors.get("baseline") or "not measured"}
    per_op_rounds = side.per_op.get(fig) or [{}]
    keys = set().union(*per_op_rounds)
    per_op = {k: statistics.median(r.get(k, 0.0) for r in per_op_rounds) for k in keys}
    value = statistics.median(vals)
    out = {"value_ns": value, "rounds_ns": vals, "windowed_rounds": side.windowed.get(fig, 0),
           "exits_per_op": per_op.get("vm_exits"),
           "in_vm_per_op": per_op.get("applies"), "emulated_per_op": per_op.get("emulated_insns"),
           "per_op": per_op}
    if "vm_exits" not in per_op:
        out["exits_note"] = "no exits: " + (side.errors.get("baseline") or "no --stats counters")
        return out
    fl = floor_ns(per_op, native_ns, rt)
    if fl:
        out["floor"] = fl
        out["ratio"] = value / fl["total_ns"] if fl["total_ns"] > 0 else None
    return out


def compare(before, after, native, native_reason, probes, rounds, rev_info, not_run=(),
            emulated_reason=None):
    """The JSON of the comparison; `probes`: the round trips of each probe run (their
    median is charged); `not_run`: figures left out on purpose (the mixed workload with
    --no-mixed)."""
    rt = median_floors(probes)
    rows = []
    for key, wf, label, unit in FIGURES:
        nat = native.get(wf) if wf else None
        if key in not_run:
            b = a = {"not_run": True}
        else:
            b = summarize(before, key, nat, rt) if before else {"error": NO_BEFORE}
            a = summarize(after, key, nat, rt)
        row = {"figure": key, "label": label, "unit": unit, "native_ns": nat, "before": b, "after": a}
        if "value_ns" in b and "value_ns" in a:
            row["speedup"] = b["value_ns"] / a["value_ns"]
        rows.append(row)
    return {"before": rev_info, "rounds": rounds, "flag_ratio": FLAG_RATIO,
            "probe_round_trips_ns": {k: rt.get(k) for k in PROBE_TIMINGS},
            "probe_runs": [{k: p.get(k) for k in PROBE_TIMINGS} for p in probes],
            "in_vm_note": IN_VM_NOTE,
            "emulated_note": EMULATED_NOTE + (
                f"; not counted in this run ({emulated_reason}): that term of the floor is 0"
                if emulated_reason else "; boot and the mixed workload: not counted (their "
                "boots are not wrapped), so that term of their floor is 0"),
            "native_note": ("native: the same workload binary run on this host (figures); "
                            "omitted for boot and the mixed workload" +
                            (f"; native run failed: {native_reason}" if native_reason else "")),
            "rows": rows}


def fmt_value(ns, unit):
    if ns is None:
        return "-"
    if unit == "MiB/s":
        return f"{1e9 / ns:.1f} MiB/s" if ns > 0 else "-"
    if unit == "s":
        return f"{ns / 1e9:.2f} s"
    return linux.fmt_ns(round(ns))


def fmt_num(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(cmp):
    info = cmp["before"]
    rt = cmp["probe_round_trips_ns"]
    us = lambda name: fmt_num(rt[name] / 1e3 if rt.get(name) else None)  # noqa: E731
    out = ["## Before and after (`benches/report.py --before`)", "",
           f"Before: `{info.get('rev')}` ({info.get('sha', '?')[:12]}); after: this tree "
           f"({info.get('after')}). Same guest kernel, benchmark initramfs and host; boots "
           f"interleaved per figure, {cmp['rounds']} round(s), median over rounds. Floor per "
           f"operation = exits/op x the probe's round trip of their kind (median of "
           f"{len(cmp.get('probe_runs', []))} probe runs, one before the report and one per round: "
           f"hypercall {us(PROBE_HYPERCALL)} us, "
           f"trap {us(PROBE_TRAP)} us, refill {us(PROBE_REFILL)} us) + applies/op x "
           f"{us(PROBE_IN_VM)} us (in-VM exception) + ring-0 instructions/op not in those "
           f"round trips x {fmt_num(rt[PROBE_RING0_INSN] / 1e3 if rt.get(PROBE_RING0_INSN) else None, 2)} us "
           f"(the probe's emulated instruction) + native work; ratio = value / floor, "
           f"**bold** above {cmp['flag_ratio']}x. Speed-up = before / after time (> 1: after "
           "is faster).", "",
           "| figure | before | after | speed-up | exits/op before / after | applies/op | "
           "ring-0 insns/op before / after | native | floor before / after | ratio before / after |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in cmp["rows"]:
        b, a, unit = row["before"], row["after"], row["unit"]
        ratio = " / ".join(fmt_ratio(s.get("ratio"), cmp["flag_ratio"]) for s in (b, a))
        floors = " / ".join(fmt_value((s.get("floor") or {}).get("total_ns"), unit) for s in (b, a))
        out.append("| " + " | ".join([
            f"`{row['figure']}`: {row['label']}",
            cell_value(b, unit), cell_value(a, unit),
            fmt_num(row.get("speedup"), 2) + "x" if row.get("speedup") else "-",
            f"{fmt_num(b.get('exits_per_op'))} / {fmt_num(a.get('exits_per_op'))}",
            fmt_num(a.get("in_vm_per_op")),
            f"{fmt_num(b.get('emulated_per_op'), 0)} / {fmt_num(a.get('emulated_per_op'), 0)}",
            fmt_value(row["native_ns"], unit) if row["native_ns"] else "omitted",
            floors, ratio]) + " |")
    out.append("")
    for row in cmp["rows"]:
        for side in ("before", "after"):
            # A before side that was never built is said once, below.
            if "error" in row[side] and not (side == "before" and info.get("error")):
                out.append(f"- `{row['figure']}` {side} failed: {shorten(row[side]['error'])}")
            elif "exits_note" in row[side]:
                out.append(f"- `{row['figure']}` {side}: {shorten(row[side]['exits_note'])}")
    not_run = [row["figure"] for row in cmp["rows"] if row["after"].get("not_run")]
    if not_run:
        out.append(f"- not run: {', '.join(not_run)} (`--no-mixed` or `--quick`).")
    out.append("- MiB/s rows: the floor is the highest rate the model allows; the ratio is "
               "still time over floor time (floor rate / rate).")
    if info.get("error"):
        out.append(f"- before: **{shorten(info['error'], 600)}** (whole in the JSON)")
    out += [f"- applies/op: {cmp['in_vm_note']}.",
            f"- ring-0 insns/op: {cmp.get('emulated_note', 'not counted')}.",
            f"- {cmp['native_note']}.",
            "- exits/op and applies/op: counted over each figure's timed samples alone, from "
            "pvkvm's control API (`vm.info`'s counters read when the guest prints `wl-begin` "
            "and when it prints the figure's line), where the build serves them (rounds "
            f"counted so: {windowed_summary(cmp)}); otherwise `pvkvm run --stats` of a boot "
            "running only that figure minus a boot running none, over the operations (warm-up "
            "sample included); boot: all exits to power-off; mixed: the mixed boot minus the "
            "boot running none.", ""]
    return "\n".join(out) + "\n"


def windowed_summary(cmp):
    """Which side's figure rounds had their exits counted over the timed window."""
    parts = []
    for side in ("before", "after"):
        n = sum(r[side].get("windowed_rounds", 0) for r in cmp["rows"])
        total = sum(len(r[side].get("rounds_ns", [])) for r in cmp["rows"]
                    if r["figure"] not in ("boot", "mixed"))
        parts.append(f"{side} {n} of {total}")
    return ", ".join(parts)


def shorten(text, n=300):
    """A failure reason cut for the table's notes (the JSON keeps it whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + " ..."


def cell_value(side, unit):
    if side.get("not_run"):
        return "not run"
    if side.get("error") == NO_BEFORE:
        return "not built"
    return fmt_value(side["value_ns"], unit) if "value_ns" in side else "failed"


def fmt_ratio(r, flag):
    if r is None:
        return "-"
    return f"**{r:.2f}x**" if r > flag else f"{r:.2f}x"
