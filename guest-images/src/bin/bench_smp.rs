//! `bench_smp`: what an IPI and a remote TLB flush cost between two vCPUs (`--vcpus 2`;
//! `benches/smp.py` runs it at scale). vCPU 0 brings up vCPU 1 (`VCPUOP_initialise`/`up`,
//! as `smp_bringup` does), puts it in one mode after another by a command word in memory,
//! and times each operation with the TSC, converted to ns with the pvclock scale of
//! `vcpu_info[0].time`.
//!
//! Command line: `iters=<N>` (recorded iterations per figure, default 300, at most
//! [`MAX_ITERS`]); [`WARMUP`] unrecorded iterations come first.
//!
//! Output, one line per figure, in `bench_micro`'s style:
//! `bench row=<row> run=bench_smp unit=<unit> iters=<N> samples=<n> median_ns=.. p10_ns=..
//! p90_ns=.. min_ns=.. max_ns=.. mean_ns=.. tsc_khz=.. what=<description>`.
//!
//! Rows:
//! * `null_hypercall`: `xen_version(XENVER_version, NULL)` on vCPU 0 (vCPU 1 blocked):
//!   the exit floor.
//! * `local_flush`: `MMUEXT_TLB_FLUSH_LOCAL` (vCPU 1 blocked): the baseline of a flush.
//! * `ipi_rtt_spin`: vCPU 0 sends on an IPI port bound to vCPU 1, which spins with events
//!   masked on the port's pending bit, clears it and sends back on a port bound to vCPU 0,
//!   whose pending bit vCPU 0 spins on: two sends plus what delivering each costs.
//! * `ipi_rtt_blocked`: the same with vCPU 1 blocked in `SCHEDOP_poll` on its port (with
//!   a timeout, events masked): the wake-up of a blocked vCPU is in the round trip.
//! * `flush_multi_guest`, `flush_all_guest`: `MMUEXT_TLB_FLUSH_MULTI` with a vcpumask
//!   naming vCPU 1, and `MMUEXT_TLB_FLUSH_ALL`, while vCPU 1 spins in guest code without
//!   hypercalls (it must be kicked out of the guest and waited for).
//! * `flush_multi_blocked`, `flush_all_blocked`: the same with vCPU 1 blocked in
//!   `SCHEDOP_poll`.
//! * `flush_multi_down`, `flush_all_down`: the same with vCPU 1 down (`VCPUOP_down`).
//!
//! Every wait is bounded (pvclock deadline and a round cap) and fails with what it waited
//! for; vCPU 1 never prints: it records a failure and parks, and vCPU 0 reports it.
#![no_std]
#![no_main]

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};

use pv_test_kernels::evtchn::{self, Events};
use pv_test_kernels::hypercall::{self, hypercall2};
use pv_test_kernels::smp::{self, Shared};
use pv_test_kernels::start::Stack;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::sched::{SchedPoll, SCHEDOP_POLL};
use pv_test_kernels::xen_abi::version::XENVER_VERSION;
use pv_test_kernels::xen_abi::xen::{hypercall as nr, mmuext, vcpu_info};
use pv_test_kernels::{check_rc, cmdline_arg, fail, mm, println, test_kernel, StartInfo};

test_kernel!(main);

const SHINFO_SLOT: u64 = 30;
/// Unrecorded iterations before each figure's recorded ones.
const WARMUP: usize = 5;
/// Most recorded iterations a figure accepts.
const MAX_ITERS: usize = 4096;
/// How long any one wait (one round trip, one mode change) may take. Generous: traps
/// cost ~100 us on the software-KVM hosts here and the host may be loaded.
const WAIT_MS: u64 = 5_000;
/// How long vCPU 1 stays in one mode before it gives up on vCPU 0.
const V1_MODE_MS: u64 = 120_000;
/// `SCHEDOP_poll` timeout of vCPU 1's blocked modes: short enough that it notices a new
/// command soon, long enough that it is almost always blocked.
const V1_POLL_MS: u64 = 50;

const V1_STACK_SIZE: usize = 16 * 1024;
static mut V1_STACK: Stack<V1_STACK_SIZE> = Stack([0; V1_STACK_SIZE]);

/// VA of the shared_info mapping, vCPU 0's and vCPU 1's IPI ports (set before vCPU 1 runs).
static SHINFO_VA: AtomicU64 = AtomicU64::new(0);
static PORT_V0: AtomicU64 = AtomicU64::new(0);
static PORT_V1: AtomicU64 = AtomicU64::new(0);
/// The mode vCPU 0 wants vCPU 1 in, and the mode vCPU 1 last entered.
static CMD: AtomicU64 = AtomicU64::new(MODE_NONE);
static ACK: AtomicU64 = AtomicU64::new(MODE_NONE);
/// IPIs vCPU 1 answered (a check that the round trips were real).
static V1_ANSWERS: AtomicU64 = AtomicU64::new(0);
/// The first thing vCPU 1 found wrong (0: none) and the value it got.
static V1_FAIL: AtomicU64 = AtomicU64::new(0);
static V1_FAIL_VALUE: AtomicI64 = AtomicI64::new(0);

const MODE_NONE: u64 = 0;
/// Spin in guest code, no hypercalls.
const MODE_SPIN: u64 = 1;
/// Spin on the IPI port's pending bit and answer.
const MODE_IPI_SPIN: u64 = 2;
/// Block in `SCHEDOP_poll` on the IPI port and answer.
const MODE_IPI_POLL: u64 = 3;
/// Block in `SCHEDOP_poll` on the IPI port without answering.
const MODE_BLOCKED: u64 = 4;
/// `VCPUOP_down` (vCPU 0 brings it up again for the next mode).
const MODE_DOWN: u64 = 5;
/// Down for good.
const MODE_PARK: u64 = 6;

const FAIL_SEND: u64 = 1;
const FAIL_MODE_TIMEOUT: u64 = 2;
const FAIL_POLL: u64 = 3;

fn v1_fail_name(what: u64) -> &'static str {
    match what {
        FAIL_SEND => "EVTCHNOP_send on vCPU 0's IPI port returned",
        FAIL_MODE_TIMEOUT => "no new command from vCPU 0 in time; stuck in mode",
        FAIL_POLL => "SCHEDOP_poll returned",
        _ => "unknown failure",
    }
}

/// The TSC, after earlier instructions have completed.
#[inline(always)]
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: lfence + rdtsc read the time-stamp counter; no memory effects.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Clears what an event on `port` for `vcpu` leaves behind (pending bit, selector bit,
/// upcall_pending), so the next event is seen afresh and a masked upcall_pending left set
/// cannot make the next `SCHEDOP_poll` return early.
fn consume(sh: &Shared, vcpu: u32, port: u32) {
    sh.clear_pending(port);
    sh.clear_sel(vcpu, port);
    // SAFETY: the byte is inside the writable shared_info mapping; only `vcpu` writes it
    // besides the hypervisor, which only sets it (it is set again if events remain).
    unsafe {
        core::ptr::write_volatile(
            (sh.va + u64::from(vcpu) * vcpu_info::SIZE + vcpu_info::UPCALL_PENDING) as *mut u8,
            0,
        )
    };
}

/// `SCHEDOP_poll` on `port` until `timeout` (system time).
fn poll(port: u32, timeout: u64) -> i64 {
    let mut p = port;
    let mut req = SchedPoll {
        ports: &mut p as *mut u32 as u64,
        nr_ports: 1,
        _pad: 0,
        timeout,
    };
    // SAFETY: `req` and the port it names are live.
    unsafe {
        hypercall2(
            nr::SCHED_OP,
            SCHEDOP_POLL,
            &mut req as *mut SchedPoll as u64,
        )
    }
}

// ---- vCPU 1 ------------------------------------------------------------------------------

/// vCPU 1 stops at a failure: records it and parks (vCPU 0 reports it).
fn v1_fail(what: u64, value: i64) -> ! {
    V1_FAIL_VALUE.store(value, SeqCst);
    V1_FAIL.store(what, SeqCst);
    park()
}

fn park() -> ! {
    loop {
        smp::down(1);
    }
}

/// vCPU 1's entry (rip of its context). Follows [`CMD`]; events stay masked throughout
/// (the blocked modes use `SCHEDOP_poll`, which wakes on the polled port regardless).
extern "C" fn secondary(_id: u64) -> ! {
    let sh = Shared {
        va: SHINFO_VA.load(SeqCst),
    };
    let ev = Events::mapped_at(sh.va);
    let port0 = PORT_V0.load(SeqCst) as u32;
    let port1 = PORT_V1.load(SeqCst) as u32;
    loop {
        let mode = CMD.load(SeqCst);
        ACK.store(mode, SeqCst);
        let deadline = ev.deadline_ms(V1_MODE_MS);
        // The clock is read every 1024 rounds; the round cap holds even if it stands still.
        let max_rounds = V1_MODE_MS * 100_000;
        let still = |round: u64| -> bool {
            if CMD.load(SeqCst) != mode {
                return false;
            }
            if round >= max_rounds || (round % 1024 == 1023 && ev.now_ns() > deadline) {
                v1_fail(FAIL_MODE_TIMEOUT, mode as i64);
            }
            true
        };
        let answer = || {
            consume(&sh, 1, port1);
            let rc = evtchn::send(port0);
            if rc != 0 {
                v1_fail(FAIL_SEND, rc);
            }
            V1_ANSWERS.fetch_add(1, SeqCst);
        };
        match mode {
            MODE_PARK => park(),
            MODE_DOWN => {
                smp::down(1);
                // Up again: wait for the next command (vCPU 0 changes it before `up`).
                let mut round = 0;
                while still(round) {
                    core::hint::spin_loop();
                    round += 1;
                }
            }
            MODE_IPI_SPIN => {
                let mut round = 0;
                while still(round) {
                    if sh.pending(port1) {
                        answer();
                    }
                    core::hint::spin_loop();
                    round += 1;
                }
            }
            MODE_IPI_POLL | MODE_BLOCKED => {
                // Each poll lasts at most V1_POLL_MS, so the rounds are few; the round
                // cap of `still` is far above what the deadline allows.
                let mut round = 0;
                while still(round) {
                    let rc = poll(port1, ev.now_ns() + V1_POLL_MS * 1_000_000);
                    if rc != 0 {
                        v1_fail(FAIL_POLL, rc);
                    }
                    if sh.pending(port1) {
                        // vCPU 0 changes the command before it sends a wake-up event: that
                        // event is not an IPI to answer.
                        if mode == MODE_IPI_POLL && CMD.load(SeqCst) == mode {
                            answer();
                        } else {
                            // A wake-up for a mode change: nothing to answer.
                            consume(&sh, 1, port1);
                        }
                    }
                    // One deadline check per poll (every round counts as 1024 rounds).
                    round += 1024;
                }
            }
            _ => {
                // MODE_SPIN and MODE_NONE: guest code only, no hypercalls.
                let mut round = 0;
                while still(round) {
                    core::hint::spin_loop();
                    round += 1;
                }
            }
        }
    }
}

// ---- vCPU 0 ------------------------------------------------------------------------------

/// Fails with vCPU 1's recorded failure, if any.
fn check_v1() {
    let what = V1_FAIL.load(SeqCst);
    if what != 0 {
        fail!(
            "vCPU 1: {} {}",
            v1_fail_name(what),
            V1_FAIL_VALUE.load(SeqCst)
        );
    }
}

/// Spins until `cond` holds, at most `WAIT_MS` of system time and a round cap, without
/// hypercalls (a yield would be in the timed interval); fails with `what` on timeout or as
/// soon as vCPU 1 reports a failure.
fn spin_until(ev: &Events, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = ev.deadline_ms(WAIT_MS);
    let max_rounds = WAIT_MS * 100_000 + 1_000_000;
    for round in 0..max_rounds {
        if cond() {
            return;
        }
        core::hint::spin_loop();
        if round % 1024 == 1023 {
            check_v1();
            if ev.now_ns() > deadline {
                break;
            }
        }
    }
    if cond() {
        return;
    }
    check_v1();
    fail!("timed out after {} ms waiting for {}", WAIT_MS, what);
}

/// Puts vCPU 1 in `mode` (it is up and following commands) and waits until it took it.
/// A vCPU blocked in `SCHEDOP_poll` is woken with an event on its port (only then: a
/// vCPU spinning on the port would take the event for an IPI to answer).
fn enter_mode(ev: &Events, mode: u64) {
    let prev = CMD.swap(mode, SeqCst);
    if prev == MODE_IPI_POLL || prev == MODE_BLOCKED {
        let rc = evtchn::send(PORT_V1.load(SeqCst) as u32);
        if rc != 0 {
            fail!("EVTCHNOP_send on vCPU 1's port returned {}", rc);
        }
    }
    spin_until(ev, "vCPU 1 to take the new mode", || {
        ACK.load(SeqCst) == mode
    });
    if mode == MODE_DOWN {
        spin_until(ev, "is_up(1) to turn 0", || smp::is_up(1) == 0);
    }
}

/// Leaves `MODE_DOWN`: the next command is set before vCPU 1 runs again.
fn leave_down(ev: &Events, next: u64) {
    CMD.store(next, SeqCst);
    check_rc!("up(1)", smp::up(1), 0);
    spin_until(ev, "vCPU 1 to take the mode after up", || {
        ACK.load(SeqCst) == next
    });
}

/// The pvclock scale of `vcpu_info[0].time`.
#[derive(Clone, Copy)]
struct Clock {
    mul: u32,
    shift: i8,
}

impl Clock {
    fn read(shinfo: u64) -> Clock {
        let t = shinfo + vcpu_info::TIME;
        for _ in 0..1000 {
            let v0 = mm::rd(t) as u32;
            let w = mm::rd(t + 24);
            let v1 = mm::rd(t) as u32;
            if v0 == v1 && v0 & 1 == 0 {
                if w as u32 == 0 {
                    fail!("vcpu_time_info.tsc_to_system_mul is 0");
                }
                return Clock {
                    mul: w as u32,
                    shift: (w >> 32) as u8 as i8,
                };
            }
        }
        fail!("pvclock version stayed odd for 1000 reads")
    }

    /// Picoseconds of `cycles`.
    fn ps(&self, cycles: u64) -> u128 {
        let c = u128::from(cycles);
        let c = if self.shift >= 0 {
            c << self.shift
        } else {
            c >> (-self.shift)
        };
        (c * u128::from(self.mul) * 1000) >> 32
    }

    /// TSC frequency in kHz: 10^6 * 2^32 / (mul * 2^shift).
    fn tsc_khz(&self) -> u64 {
        let num = 1_000_000u128 << 32;
        let den = u128::from(self.mul);
        let v = if self.shift >= 0 {
            num / (den << self.shift)
        } else {
            (num << (-self.shift)) / den
        };
        v as u64
    }
}

/// Nanoseconds with one decimal, from picoseconds.
struct Ns(u128);

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0 + 50) / 100;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

/// Per-iteration cycle counts of the current figure (vCPU 0 only).
struct Samples(core::cell::UnsafeCell<[u64; MAX_ITERS]>);

// SAFETY: only vCPU 0 touches the samples.
unsafe impl Sync for Samples {}

static SAMPLES: Samples = Samples(core::cell::UnsafeCell::new([0; MAX_ITERS]));

struct Bench {
    clock: Clock,
    iters: usize,
}

impl Bench {
    /// Runs `op` WARMUP + iters times (it returns the cycles of one operation, checked)
    /// and prints the figure's line.
    fn figure(&self, row: &str, unit: &str, what: &str, mut op: impl FnMut() -> u64) {
        // SAFETY: only vCPU 0 runs this, one figure at a time.
        let samples = unsafe { &mut *SAMPLES.0.get() };
        for i in 0..WARMUP + self.iters {
            let c = op();
            if let Some(k) = i.checked_sub(WARMUP) {
                samples[k] = c;
            }
        }
        check_v1();
        let s = &mut samples[..self.iters];
        s.sort_unstable();
        let pick = |q: usize| s[(s.len() - 1) * q / 100];
        let sum: u128 = s.iter().map(|&c| u128::from(c)).sum();
        let ns = |c: u64| Ns(self.clock.ps(c));
        let mean_ps = self.clock.ps((sum / s.len() as u128) as u64);
        println!(
            "bench row={} run=bench_smp unit={} iters={} samples={} median_ns={} p10_ns={} p90_ns={} min_ns={} max_ns={} mean_ns={} tsc_khz={} what={}",
            row,
            unit,
            self.iters,
            s.len(),
            ns(pick(50)),
            ns(pick(10)),
            ns(pick(90)),
            ns(pick(0)),
            ns(pick(100)),
            Ns(mean_ps),
            self.clock.tsc_khz(),
            what
        );
    }
}

/// One mmuext_op of `cmd` (a flush) with `arg2`, timed; fails unless it succeeded.
fn flush(what: &str, cmd: u32, arg2: u64) -> u64 {
    let t0 = tsc();
    let (rc, done) = mm::mmuext1(cmd, 0, arg2);
    let t1 = tsc();
    if rc != 0 || done != 1 {
        fail!("mmuext_op({}): returned {}, done {}", what, rc, done);
    }
    t1.wrapping_sub(t0)
}

fn main(si: &'static StartInfo) {
    let iters: usize = match cmdline_arg(si, "iters").unwrap_or("300").parse() {
        Ok(n) if (1..=MAX_ITERS).contains(&n) => n,
        _ => fail!("iters must be a number in 1..={}", MAX_ITERS),
    };
    mm::check_slack(si);
    install_trap_table();
    let ev = Events::new(si, SHINFO_SLOT);
    let sh = Shared {
        va: mm::slack_va(si, SHINFO_SLOT),
    };
    let bench = Bench {
        clock: Clock::read(sh.va),
        iters,
    };
    println!(
        "bench_smp: iters={} warmup={} (null hypercall = xen_version(XENVER_version))",
        iters, WARMUP
    );
    check_rc!(
        "is_up(1) (a domain of 2 vCPUs: --vcpus 2)",
        smp::is_up(1),
        0
    );

    // Events stay masked on both vCPUs (vCPU 0's mask is set at boot; vCPU 1's before it
    // runs, as Linux does): every event is seen by polling its pending bit.
    sh.set_upcall_mask(0, true);
    sh.set_upcall_mask(1, true);
    let bind = |vcpu: u32| -> u32 {
        let port = match smp::bind_ipi(vcpu) {
            Ok(p) => p,
            Err(rc) => fail!("EVTCHNOP_bind_ipi({}) returned {}", vcpu, rc),
        };
        consume(&sh, vcpu, port);
        sh.unmask(port);
        port
    };
    let port0 = bind(0);
    let port1 = bind(1);
    SHINFO_VA.store(sh.va, SeqCst);
    PORT_V0.store(u64::from(port0), SeqCst);
    PORT_V1.store(u64::from(port1), SeqCst);

    // vCPU 1 starts blocked: the single-vCPU baselines run with it out of the way.
    CMD.store(MODE_BLOCKED, SeqCst);
    let stack_top = (&raw const V1_STACK) as u64 + V1_STACK_SIZE as u64;
    let ctx = smp::secondary_context(si, secondary as *const () as usize as u64, 1, stack_top);
    check_rc!("initialise(1)", smp::initialise(1, &ctx), 0);
    check_rc!("up(1)", smp::up(1), 0);
    spin_until(&ev, "vCPU 1 to start", || ACK.load(SeqCst) == MODE_BLOCKED);

    bench.figure(
        "null_hypercall",
        "call",
        "xen_version(XENVER_version) on vCPU 0, vCPU 1 blocked",
        || {
            let t0 = tsc();
            // SAFETY: XENVER_version takes no buffer.
            let rc = unsafe { hypercall::xen_version(XENVER_VERSION, core::ptr::null_mut()) };
            let t1 = tsc();
            if rc <= 0 {
                fail!("xen_version(XENVER_version) returned {}", rc);
            }
            t1.wrapping_sub(t0)
        },
    );
    bench.figure(
        "local_flush",
        "flush",
        "MMUEXT_TLB_FLUSH_LOCAL, vCPU 1 blocked",
        || flush("TLB_FLUSH_LOCAL", mmuext::TLB_FLUSH_LOCAL, 0),
    );

    // One round trip: send to vCPU 1, spin until its answer is pending here, consume it.
    let round_trip = || {
        let t0 = tsc();
        let rc = evtchn::send(port1);
        if rc != 0 {
            fail!("EVTCHNOP_send on vCPU 1's port returned {}", rc);
        }
        spin_until(&ev, "vCPU 1's answer", || sh.pending(port0));
        let t1 = tsc();
        consume(&sh, 0, port0);
        t1.wrapping_sub(t0)
    };
    enter_mode(&ev, MODE_IPI_SPIN);
    let answers = V1_ANSWERS.load(SeqCst);
    bench.figure(
        "ipi_rtt_spin",
        "round trip",
        "send to vCPU 1 spinning with events masked on its pending bit, answer back",
        round_trip,
    );
    enter_mode(&ev, MODE_IPI_POLL);
    bench.figure(
        "ipi_rtt_blocked",
        "round trip",
        "send to vCPU 1 blocked in SCHEDOP_poll on its port, answer back",
        round_trip,
    );
    let answered = V1_ANSWERS.load(SeqCst) - answers;
    let want = 2 * (WARMUP + iters) as u64;
    if answered != want {
        fail!("vCPU 1 answered {} IPIs, expected {}", answered, want);
    }

    // The vcpumask of MMUEXT_TLB_FLUSH_MULTI: a bitmap of xen_ulong_t naming vCPU 1.
    let mask: u64 = 1 << 1;
    let mask_va = &mask as *const u64 as u64;
    let flushes = |rows: [&str; 2], whats: [&str; 2]| {
        bench.figure(rows[0], "flush", whats[0], || {
            flush("TLB_FLUSH_MULTI", mmuext::TLB_FLUSH_MULTI, mask_va)
        });
        bench.figure(rows[1], "flush", whats[1], || {
            flush("TLB_FLUSH_ALL", mmuext::TLB_FLUSH_ALL, 0)
        });
    };
    enter_mode(&ev, MODE_SPIN);
    flushes(
        ["flush_multi_guest", "flush_all_guest"],
        [
            "MMUEXT_TLB_FLUSH_MULTI naming vCPU 1, vCPU 1 spinning in guest code",
            "MMUEXT_TLB_FLUSH_ALL, vCPU 1 spinning in guest code",
        ],
    );
    enter_mode(&ev, MODE_BLOCKED);
    flushes(
        ["flush_multi_blocked", "flush_all_blocked"],
        [
            "MMUEXT_TLB_FLUSH_MULTI naming vCPU 1, vCPU 1 blocked in SCHEDOP_poll",
            "MMUEXT_TLB_FLUSH_ALL, vCPU 1 blocked in SCHEDOP_poll",
        ],
    );
    enter_mode(&ev, MODE_DOWN);
    flushes(
        ["flush_multi_down", "flush_all_down"],
        [
            "MMUEXT_TLB_FLUSH_MULTI naming vCPU 1, vCPU 1 down (VCPUOP_down)",
            "MMUEXT_TLB_FLUSH_ALL, vCPU 1 down (VCPUOP_down)",
        ],
    );
    check_rc!("is_up(1) after the flushes while down", smp::is_up(1), 0);

    // Up once more and park, so vCPU 1's whole command loop ran (and it is down at the end).
    leave_down(&ev, MODE_PARK);
    spin_until(&ev, "is_up(1) to be 0 after it parked", || {
        smp::is_up(1) == 0
    });
    check_v1();
    println!("bench_smp: all figures done");
}
