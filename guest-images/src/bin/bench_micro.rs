//! `bench_micro`: the guest side of pvkvm's microbenchmarks (issue 5). One PV operation
//! per run, chosen on the command line (`bench=<name> iters=<N>`; `bench=list` prints
//! the names), timed with the TSC around every iteration, reported in nanoseconds per
//! operation (median, p10, p90, min, max over the per-iteration samples) converted with
//! the pvclock scale (`tsc_to_system_mul`/`tsc_shift` of `vcpu_info[0].time` in
//! `shared_info`).
//!
//! A host-side runner (`benches/micro.py`) boots one VM per run, once with `iters=0` and
//! once with `iters=N`, and attributes the difference in VM exits to the operation: the
//! kernel therefore makes exactly the same hypercalls in both runs apart from the timed
//! iterations (setup, two warm-up iterations that are not recorded, and the same number
//! of console lines). Every iteration first undoes what the previous one did (pages are
//! remapped between two frames, tables pinned then unpinned), so all are alike.
//!
//! Output, one line per result row:
//! `bench row=<row> run=<bench> unit=<unit> iters=<N> samples=<n> ops_per_iter=<k>
//! run_ops_per_iter=<all rows' k> expect_exits_per_iter=<e> median_ns=.. p10_ns=..
//! p90_ns=.. min_ns=.. max_ns=.. median_cycles=.. tsc_khz=..`, where `e` is the number of
//! hypercalls plus trapped instructions one iteration makes (the VM exits it should
//! cost), or `bench row=<row> run=<bench> status=unsupported reason=<why>`.
//!
//! Runs (rows):
//!
//! * `null_hypercall`: `xen_version(XENVER_version, NULL)`; `null_hypercall_enosys`:
//!   hypercall 63, which Xen does not define (-ENOSYS without any dispatch).
//! * `mmu_update_{1,8,64,512}`: one `mmu_update` of that many L1 entries (32 slack VAs,
//!   each remapped between two own frames; larger batches repeat VAs); ns per entry.
//! * `uvm_none`, `uvm_invlpg`, `uvm_tlb_flush`: `update_va_mapping` of one slack VA
//!   (just touched, so the TLB holds the old translation) with no flush, `UVMF_INVLPG`,
//!   `UVMF_TLB_FLUSH` (all `UVMF_LOCAL`).
//! * `trapped_pte_write`: a `mov` to the read-only L1 entry of a slack VA, emulated by
//!   the hypervisor (`VMASST_TYPE_writable_pagetables`).
//! * `pin_unpin_l1` (rows `pin_l1`, `unpin_l1`): `MMUEXT_PIN_L1_TABLE` and
//!   `MMUEXT_UNPIN_TABLE` of a read-only L1 with 512 present entries.
//! * `pin_unpin_l4` (rows `pin_l4`, `unpin_l4`): the same for an L4 holding a copy of the
//!   boot L4 plus a private tree in slot 1 (one L3, one L2, [`L4_L1S`] full L1s), all
//!   built in slack frames: each pin validates the whole tree, each unpin tears it down.
//! * `new_baseptr`: `MMUEXT_NEW_BASEPTR` to a pinned copy of the boot L4 and back (two
//!   switches an iteration, each a sample).
//! * `exception_int3`, `exception_pf`: `int3` / a read of the unmapped 0x10000 in guest
//!   kernel mode, bounced to a handler that returns with `HYPERVISOR_iret`.
//! * `evtchn_send_self`: `EVTCHNOP_send` on an IPI port bound to vCPU 0 (`bind_ipi`) with
//!   events unmasked: the upcall to the event callback, which clears the event and
//!   returns with `HYPERVISOR_iret`, is part of the operation.
//! * `syscall_user`: `syscall` from guest user mode to the syscall callback and back
//!   (`HYPERVISOR_iret` with `VGCF_in_syscall`), timed in user mode.
//! * `multicall_uvm32`: one `multicall` of 32 `update_va_mapping` (no flush).
//! * `port_read`: `in al, 0x80` (a port without a device) from the guest kernel under a
//!   virtual IOPL of 1: a plain I/O exit through the TSS I/O bitmap pvkvm opens for it.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt;
use pv_test_kernels::console;
use pv_test_kernels::mm::{self, MmuUpdate, MulticallEntry, MMU_NORMAL_PT_UPDATE};
use pv_test_kernels::traps::{
    handler_address, iret_to_user, set_syscall_hook, setup_user_mode, syscall_entry_address,
    user_stack_top, SyscallFrame, HANDLED_VECTORS, USER_RFLAGS,
};
use pv_test_kernels::xen_abi::xen::{hypercall as nr, mmuext, selector, vcpu_info, TrapInfo};
use pv_test_kernels::xen_abi::{callback, version::XENVER_VERSION};
use pv_test_kernels::{cmdline_arg, fail, hypercall, println, test_kernel, StartInfo};

test_kernel!(main);

/// Iterations run before the recorded ones (in every run, `iters=0` included).
const WARMUP: usize = 2;
/// Most recorded samples a run can hold.
const MAX_SAMPLES: usize = 8192;
/// Most iterations a run accepts.
const MAX_ITERS: usize = 4096;

/// Slack VAs remapped by the PTE benchmarks; frame `i` or `i + REMAP`.
const REMAP: u64 = 32;
/// Slack page whose VA maps `shared_info`.
const SHINFO: u64 = 64;
/// The L1 of `pin_unpin_l1`.
const PIN_L1: u64 = 65;
/// The L4 of `pin_unpin_l4`, then its L3, L2 and L1s.
const TREE_L4: u64 = 66;
const TREE_L3: u64 = 67;
const TREE_L2: u64 = 68;
const TREE_L1: u64 = 69;
/// Full L1s under the `pin_unpin_l4` tree.
const L4_L1S: u64 = 4;
/// The second L4 of `new_baseptr`.
const ALT_L4: u64 = TREE_L1 + L4_L1S;
/// An address no table maps (as in the `exceptions` kernel).
const UNMAPPED: u64 = 0x10000;

/// Syscall number the user loop of `syscall_user` uses for the timed calls, and the one
/// it ends with.
const USER_NOP: u64 = 0x4e;
const USER_DONE: u64 = 0xd0e;

/// EVTCHNOP numbers (`public/event_channel.h`).
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_BIND_IPI: u64 = 7;

/// Per-iteration cycle counts (the user loop of `syscall_user` writes them directly).
#[no_mangle]
static mut BENCH_SAMPLES: [u64; MAX_SAMPLES] = [0; MAX_SAMPLES];
/// Iterations the user loop runs (warm-up included).
#[no_mangle]
static mut BENCH_USER_ITERS: u64 = 0;
/// Where the #PF stub resumes (0: not expecting a #PF, report it).
#[no_mangle]
static mut BENCH_PF_RESUME: u64 = 0;
/// VA of the shared_info mapping (for the event callback).
#[no_mangle]
static mut BENCH_SHINFO: u64 = 0;
/// The port `evtchn_send_self` sends on.
#[no_mangle]
static mut BENCH_PORT: u64 = 0;
/// Upcalls the event callback took.
#[no_mangle]
static mut BENCH_UPCALLS: u64 = 0;

// Exception and event entry points: no SIMD, every register preserved, back with
// HYPERVISOR_iret through the runtime's `pvt_iret_frame` (rsp -> rip slot of the frame).
global_asm!(
    r#"
    .section .text.bench, "ax", @progbits
    .p2align 4
    .global bench_int3_entry
bench_int3_entry:
    pop rcx
    pop r11
    jmp pvt_iret_frame

    .p2align 4
    .global bench_pf_entry
bench_pf_entry:
    cmp qword ptr [rip + BENCH_PF_RESUME], 0
    je pvt_trap_14
    pop rcx
    pop r11
    add rsp, 8
    push rax
    mov rax, [rip + BENCH_PF_RESUME]
    mov [rsp + 8], rax
    pop rax
    jmp pvt_iret_frame

    /* Event upcall: frame rcx, r11, rip, cs, rflags, rsp, ss. Clear the event, count. */
    .p2align 4
    .global bench_event_entry
bench_event_entry:
    pop rcx
    pop r11
    push rax
    push rdx
    mov rax, [rip + BENCH_SHINFO]
    mov byte ptr [rax + {upcall_pending}], 0
    mov qword ptr [rax + {pending_sel}], 0
    mov rdx, [rip + BENCH_PORT]
    lock btr qword ptr [rax + {evtchn_pending}], rdx
    add qword ptr [rip + BENCH_UPCALLS], 1
    pop rdx
    pop rax
    jmp pvt_iret_frame

    /* Guest user mode: BENCH_USER_ITERS timed syscalls, cycles into BENCH_SAMPLES. */
    .section .text.bench_user, "ax", @progbits
    .p2align 4
    .global bench_user_loop
bench_user_loop:
    mov r12, [rip + BENCH_USER_ITERS]
    lea r13, [rip + BENCH_SAMPLES]
1:
    test r12, r12
    jz 2f
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r14, rax
    mov eax, {user_nop}
    syscall
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r14
    mov [r13], rax
    add r13, 8
    dec r12
    jmp 1b
2:
    mov eax, {user_done}
    syscall
    ud2
    .text
"#,
    upcall_pending = const vcpu_info::UPCALL_PENDING,
    pending_sel = const vcpu_info::PENDING_SEL,
    evtchn_pending = const pv_test_kernels::xen_abi::xen::shared_info::EVTCHN_PENDING,
    user_nop = const USER_NOP,
    user_done = const USER_DONE,
);

extern "C" {
    fn bench_int3_entry();
    fn bench_pf_entry();
    fn bench_event_entry();
    fn bench_user_loop();
}

/// The TSC, after earlier instructions have completed.
#[inline(always)]
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: lfence + rdtsc read the time-stamp counter; no memory effects.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn set_sample(idx: usize, v: u64) {
    if idx >= MAX_SAMPLES {
        fail!("sample {} out of range", idx);
    }
    // SAFETY: in bounds (checked); one vCPU, nothing else touches the array meanwhile.
    unsafe {
        (&raw mut BENCH_SAMPLES)
            .cast::<u64>()
            .add(idx)
            .write_volatile(v)
    };
}

fn samples_mut(start: usize, n: usize) -> &'static mut [u64] {
    if start + n > MAX_SAMPLES {
        fail!("samples {}..{} out of range", start, start + n);
    }
    // SAFETY: in bounds (checked); one vCPU; the array is only read back once a run's
    // iterations are over, and one slice at a time.
    unsafe { core::slice::from_raw_parts_mut((&raw mut BENCH_SAMPLES).cast::<u64>().add(start), n) }
}

fn read_static(p: *const u64) -> u64 {
    // SAFETY: `p` is one of this file's statics; one vCPU.
    unsafe { core::ptr::read_volatile(p) }
}

fn write_static(p: *mut u64, v: u64) {
    // SAFETY: `p` is one of this file's statics; one vCPU.
    unsafe { core::ptr::write_volatile(p, v) }
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
        loop {
            let v0 = mm::rd(t) as u32;
            let w = mm::rd(t + 24);
            let v1 = mm::rd(t) as u32;
            if v0 == v1 && v0 & 1 == 0 {
                let clock = Clock {
                    mul: w as u32,
                    shift: (w >> 32) as u8 as i8,
                };
                if clock.mul == 0 {
                    fail!("vcpu_time_info.tsc_to_system_mul is 0");
                }
                return clock;
            }
        }
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

/// One result row of a run.
#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    unit: &'static str,
    /// Units one sample covers (entries of a batch).
    per_sample: u64,
    /// Units one iteration covers for this row.
    ops_per_iter: u64,
}

/// What the whole run does per iteration.
struct Run {
    bench: &'static str,
    iters: usize,
    /// Units all rows of the run cover per iteration.
    run_ops_per_iter: u64,
    /// Hypercalls plus trapped instructions per iteration.
    exits_per_iter: u64,
}

/// Prints one row from `n` samples starting at `start`.
fn report(run: &Run, row: Row, start: usize, n: usize, clock: Clock) {
    let s = samples_mut(start, n);
    s.sort_unstable();
    let pick = |q: usize| -> u64 {
        if s.is_empty() {
            0
        } else {
            s[(s.len() - 1) * q / 100]
        }
    };
    let per = |c: u64| Ns(clock.ps(c) / u128::from(row.per_sample));
    println!(
        "bench row={} run={} unit={} iters={} samples={} ops_per_iter={} run_ops_per_iter={} expect_exits_per_iter={} median_ns={} p10_ns={} p90_ns={} min_ns={} max_ns={} median_cycles={} tsc_khz={}",
        row.name,
        run.bench,
        row.unit,
        run.iters,
        n,
        row.ops_per_iter,
        run.run_ops_per_iter,
        run.exits_per_iter,
        per(pick(50)),
        per(pick(10)),
        per(pick(90)),
        per(pick(0)),
        per(pick(100)),
        pick(50) / row.per_sample,
        clock.tsc_khz()
    );
}

/// Reports every row of the run as unsupported and ends the run (SUCCESS: the runner
/// records the reason and goes on).
fn unsupported(bench: &str, rows: &[&str], why: fmt::Arguments<'_>) -> ! {
    for r in rows {
        println!(
            "bench row={} run={} status=unsupported reason={}",
            r, bench, why
        );
    }
    console::succeed()
}

/// Everything the runs share.
struct Ctx {
    si: &'static StartInfo,
    clock: Clock,
    walks: [mm::Walk; REMAP as usize],
    flip: [bool; REMAP as usize],
    iters: usize,
}

impl Ctx {
    /// The next PTE of remap VA `i`: the other of its two frames.
    fn next_pte(&mut self, i: usize) -> u64 {
        self.flip[i] = !self.flip[i];
        mm::pte_rw(mm::slack_mfn(
            self.si,
            i as u64 + if self.flip[i] { REMAP } else { 0 },
        ))
    }

    fn va(&self, i: usize) -> u64 {
        mm::slack_va(self.si, i as u64)
    }

    /// Indices of the iterations: warm-up first; `Some(k)` for recorded iteration k.
    fn iterations(&self) -> impl Iterator<Item = Option<usize>> {
        (0..WARMUP + self.iters).map(|i| i.checked_sub(WARMUP))
    }

    /// The run `bench` over this context's iteration count.
    fn run(&self, bench: &'static str, run_ops_per_iter: u64, exits_per_iter: u64) -> Run {
        Run {
            bench,
            iters: self.iters,
            run_ops_per_iter,
            exits_per_iter,
        }
    }

    /// Runs every iteration (warm-up first): `op(ctx, n)` performs and checks the
    /// operation of iteration `n` (warm-up included) and returns the cycles it took,
    /// recorded as sample k for recorded iteration k.
    fn record(&mut self, mut op: impl FnMut(&mut Ctx, usize) -> u64) {
        for (n, it) in self.iterations().enumerate() {
            let c = op(self, n);
            if let Some(k) = it {
                set_sample(k, c);
            }
        }
    }

    /// Prints the one row of run `name`: `per_sample` units a sample (and an iteration),
    /// `exits_per_iter` exits an iteration, from samples 0..iters.
    fn report_single(
        &self,
        name: &'static str,
        unit: &'static str,
        per_sample: u64,
        exits_per_iter: u64,
    ) {
        let run = self.run(name, per_sample, exits_per_iter);
        report(
            &run,
            single(name, unit, per_sample),
            0,
            self.iters,
            self.clock,
        );
    }

    /// A run of one row named like the run, one sample an iteration: `op` as for
    /// [`Ctx::record`], then the row as for [`Ctx::report_single`].
    fn bench_single(
        &mut self,
        name: &'static str,
        unit: &'static str,
        per_sample: u64,
        exits_per_iter: u64,
        op: impl FnMut(&mut Ctx, usize) -> u64,
    ) {
        self.record(op);
        self.report_single(name, unit, per_sample, exits_per_iter);
    }
}

/// `timed(f)`: the cycles `f` took and its result.
#[inline(always)]
fn timed<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let t0 = tsc();
    let r = f();
    let t1 = tsc();
    (t1.wrapping_sub(t0), r)
}

const BENCHES: &[&str] = &[
    "null_hypercall",
    "null_hypercall_enosys",
    "mmu_update_1",
    "mmu_update_8",
    "mmu_update_64",
    "mmu_update_512",
    "uvm_none",
    "uvm_invlpg",
    "uvm_tlb_flush",
    "trapped_pte_write",
    "pin_unpin_l1",
    "pin_unpin_l4",
    "new_baseptr",
    "exception_int3",
    "exception_pf",
    "evtchn_send_self",
    "syscall_user",
    "multicall_uvm32",
    "port_read",
];

fn single(name: &'static str, unit: &'static str, per_sample: u64) -> Row {
    Row {
        name,
        unit,
        per_sample,
        ops_per_iter: per_sample,
    }
}

fn main(si: &'static StartInfo) {
    let bench = cmdline_arg(si, "bench").unwrap_or("");
    if bench == "list" {
        for b in BENCHES {
            println!("bench_micro: bench {}", b);
        }
        return;
    }
    let Some(&bench) = BENCHES.iter().find(|&&b| b == bench) else {
        fail!(
            "command line {:?}: want bench=<name> iters=<n> (bench=list names them)",
            pv_test_kernels::cmdline(si)
        );
    };
    let iters: usize = match cmdline_arg(si, "iters").unwrap_or("0").parse() {
        Ok(n) if n <= MAX_ITERS => n,
        _ => fail!("iters must be a number <= {}", MAX_ITERS),
    };
    println!(
        "bench_micro: bench={} iters={} warmup={} (null hypercall = xen_version(XENVER_version))",
        bench, iters, WARMUP
    );

    // Setup shared by all runs (identical for every iteration count).
    mm::check_slack(si);
    install_bench_trap_table();
    let sh = mm::slack_va(si, SHINFO);
    mm::map_shared_info(si, sh);
    write_static(&raw mut BENCH_SHINFO, sh);
    let clock = Clock::read(sh);
    let rc = hypercall::vm_assist(mm::VMASST_CMD_ENABLE, mm::VMASST_TYPE_WRITABLE_PAGETABLES);
    if rc != 0 {
        fail!("vm_assist(enable, writable_pagetables) returned {}", rc);
    }
    let mut ctx = Ctx {
        si,
        clock,
        walks: core::array::from_fn(|i| mm::walk(si, mm::slack_va(si, i as u64))),
        flip: [false; REMAP as usize],
        iters,
    };

    match bench {
        "null_hypercall" => null_hypercall(&mut ctx),
        "null_hypercall_enosys" => null_hypercall_enosys(&mut ctx),
        "mmu_update_1" => mmu_update(&mut ctx, "mmu_update_1", 1),
        "mmu_update_8" => mmu_update(&mut ctx, "mmu_update_8", 8),
        "mmu_update_64" => mmu_update(&mut ctx, "mmu_update_64", 64),
        "mmu_update_512" => mmu_update(&mut ctx, "mmu_update_512", 512),
        "uvm_none" => uvm(&mut ctx, "uvm_none", mm::UVMF_NONE),
        "uvm_invlpg" => uvm(&mut ctx, "uvm_invlpg", mm::UVMF_INVLPG),
        "uvm_tlb_flush" => uvm(&mut ctx, "uvm_tlb_flush", mm::UVMF_TLB_FLUSH),
        "trapped_pte_write" => trapped_pte_write(&mut ctx),
        "pin_unpin_l1" => pin_unpin_l1(&mut ctx),
        "pin_unpin_l4" => pin_unpin_l4(&mut ctx),
        "new_baseptr" => new_baseptr(&mut ctx),
        "exception_int3" => exception_int3(&mut ctx),
        "exception_pf" => exception_pf(&mut ctx),
        "evtchn_send_self" => evtchn_send_self(&mut ctx),
        "syscall_user" => syscall_user(&mut ctx),
        "multicall_uvm32" => multicall_uvm32(&mut ctx),
        "port_read" => port_read(&mut ctx),
        _ => unreachable!(),
    }
}

/// The runtime's trap table with this kernel's own #BP and #PF entries.
fn install_bench_trap_table() {
    let mut table = [TrapInfo::default(); 17];
    for (slot, &v) in table.iter_mut().zip(HANDLED_VECTORS) {
        let address = match v {
            3 => bench_int3_entry as *const () as usize as u64,
            14 => bench_pf_entry as *const () as usize as u64,
            _ => handler_address(v).unwrap_or(0),
        };
        *slot = TrapInfo {
            vector: v,
            flags: if v == 3 || v == 4 { 3 } else { 0 },
            cs: selector::FLAT_KERNEL_CS,
            _pad: 0,
            address,
        };
    }
    // SAFETY: every address is a PV exception entry point that returns with iret.
    let rc = unsafe { hypercall::set_trap_table(&table) };
    if rc != 0 {
        fail!("set_trap_table returned {}", rc);
    }
}

fn null_hypercall(ctx: &mut Ctx) {
    ctx.bench_single("null_hypercall", "call", 1, 1, |_, _| {
        // SAFETY: XENVER_version takes no buffer.
        let (c, rc) =
            timed(|| unsafe { hypercall::xen_version(XENVER_VERSION, core::ptr::null_mut()) });
        if rc <= 0 {
            fail!("xen_version(XENVER_version) returned {}", rc);
        }
        c
    });
}

fn port_read(ctx: &mut Ctx) {
    let rc = hypercall::set_iopl(1);
    if rc != 0 {
        fail!("PHYSDEVOP_set_iopl(1) returned {}", rc);
    }
    ctx.bench_single("port_read", "read", 1, 1, |_, _| {
        let (c, al) = timed(|| {
            let al: u8;
            // SAFETY: under IOPL 1 the read only loads all ones into al (no device).
            unsafe { asm!("in al, 0x80", out("al") al, options(nostack)) };
            al
        });
        if al != 0xff {
            fail!("in al, 0x80 read {:#x}, expected all ones", al);
        }
        c
    });
}

/// A hypercall number Xen leaves undefined.
const UNDEFINED_HYPERCALL: u64 = 63;

fn null_hypercall_enosys(ctx: &mut Ctx) {
    let enosys = -pv_test_kernels::xen_abi::errno::ENOSYS;
    ctx.bench_single("null_hypercall_enosys", "call", 1, 1, |_, _| {
        // SAFETY: an undefined hypercall has no effect but -ENOSYS.
        let (c, rc) = timed(|| unsafe { hypercall::hypercall0(UNDEFINED_HYPERCALL) });
        if rc != enosys {
            fail!(
                "hypercall {} returned {}, expected -ENOSYS",
                UNDEFINED_HYPERCALL,
                rc
            );
        }
        c
    });
}

fn mmu_update(ctx: &mut Ctx, name: &'static str, batch: usize) {
    let mut reqs = [MmuUpdate::default(); 512];
    ctx.bench_single(name, "entry", batch as u64, 1, |ctx, _| {
        for (j, r) in reqs.iter_mut().enumerate().take(batch) {
            let i = j % REMAP as usize;
            *r = MmuUpdate {
                ptr: ctx.walks[i].pte_ma() | MMU_NORMAL_PT_UPDATE,
                val: ctx.next_pte(i),
            };
        }
        // SAFETY: remaps slack VAs between two own frames.
        let (c, (rc, done)) = timed(|| unsafe { hypercall::mmu_update(&reqs[..batch]) });
        if rc != 0 || done as usize != batch {
            fail!("mmu_update of {} entries: rc {} done {}", batch, rc, done);
        }
        c
    });
}

fn uvm(ctx: &mut Ctx, name: &'static str, flags: u64) {
    ctx.bench_single(name, "call", 1, 1, |ctx, n| {
        let i = n % REMAP as usize;
        let va = ctx.va(i);
        let pte = ctx.next_pte(i);
        let _ = mm::rd(va);
        let (c, rc) = timed(|| mm::uvm(va, pte, flags | mm::UVMF_LOCAL));
        if rc != 0 {
            fail!(
                "update_va_mapping({:#x}, {:#x}, {:#x}) returned {}",
                va,
                pte,
                flags,
                rc
            );
        }
        c
    });
}

fn trapped_pte_write(ctx: &mut Ctx) {
    ctx.bench_single("trapped_pte_write", "write", 1, 1, |ctx, n| {
        let i = n % REMAP as usize;
        let target = ctx.walks[i].pte_va();
        let pte = ctx.next_pte(i);
        let (c, ()) = timed(|| {
            // SAFETY: a store to the read-only mapping of our own L1: it faults and the
            // hypervisor emulates it, remapping a slack VA between two own frames.
            unsafe {
                asm!("mov qword ptr [{t}], {v}", t = in(reg) target, v = in(reg) pte, options(nostack))
            }
        });
        let now = ctx.walks[i].pte_now() & mm::PTE_ADDR_MASK;
        if now != pte & mm::PTE_ADDR_MASK {
            fail!(
                "trapped write of {:#x} to {:#x}: PTE now {:#x}",
                pte,
                target,
                now
            );
        }
        c
    });
}

fn mmuext_timed(what: &str, cmd: u32, mfn: u64) -> u64 {
    let (c, (rc, done)) = timed(|| mm::mmuext1(cmd, mfn, 0));
    if rc != 0 || done != 1 {
        fail!(
            "mmuext_op({}, mfn {:#x}): returned {}, done {}",
            what,
            mfn,
            rc,
            done
        );
    }
    c
}

/// Writes an L1 of 512 present entries (RW mappings of the remap frames) into slack
/// frame `f` and makes it read-only.
fn build_full_l1(si: &StartInfo, f: u64) {
    let va = mm::slack_va(si, f);
    for k in 0..512u64 {
        mm::wr(va + k * 8, mm::pte_rw(mm::slack_mfn(si, k % (2 * REMAP))));
    }
    mm::slack_make_ro(si, f);
}

fn pin_unpin(ctx: &mut Ctx, bench: &'static str, rows: [&'static str; 2], cmd: u32, mfn: u64) {
    let run = ctx.run(bench, 2, 2);
    for it in ctx.iterations() {
        let p = mmuext_timed("PIN", cmd, mfn);
        let u = mmuext_timed("UNPIN_TABLE", mmuext::UNPIN_TABLE, mfn);
        if let Some(k) = it {
            set_sample(k, p);
            set_sample(MAX_ITERS + k, u);
        }
    }
    report(&run, single(rows[0], "call", 1), 0, ctx.iters, ctx.clock);
    report(
        &run,
        single(rows[1], "call", 1),
        MAX_ITERS,
        ctx.iters,
        ctx.clock,
    );
}

fn pin_unpin_l1(ctx: &mut Ctx) {
    build_full_l1(ctx.si, PIN_L1);
    let mfn = mm::slack_mfn(ctx.si, PIN_L1);
    pin_unpin(
        ctx,
        "pin_unpin_l1",
        ["pin_l1", "unpin_l1"],
        mmuext::PIN_L1_TABLE,
        mfn,
    );
}

/// Copies the boot L4 into slack frame `f` (not yet read-only).
fn copy_boot_l4(si: &StartInfo, f: u64) {
    let va = mm::slack_va(si, f);
    for k in 0..512u64 {
        mm::wr(va + k * 8, mm::rd(si.pt_base + k * 8));
    }
}

fn pin_unpin_l4(ctx: &mut Ctx) {
    let si = ctx.si;
    if mm::rd(si.pt_base + 8) != 0 {
        unsupported(
            "pin_unpin_l4",
            &["pin_l4", "unpin_l4"],
            format_args!("boot L4 slot 1 is in use, the private tree needs it"),
        );
    }
    for l1 in 0..L4_L1S {
        build_full_l1(si, TREE_L1 + l1);
    }
    let l2 = mm::slack_va(si, TREE_L2);
    for k in 0..512u64 {
        let e = if k < L4_L1S {
            (mm::slack_mfn(si, TREE_L1 + k) << 12) | mm::PDE_FLAGS
        } else {
            0
        };
        mm::wr(l2 + k * 8, e);
    }
    mm::slack_make_ro(si, TREE_L2);
    let l3 = mm::slack_va(si, TREE_L3);
    for k in 0..512u64 {
        mm::wr(l3 + k * 8, 0);
    }
    mm::wr(l3, (mm::slack_mfn(si, TREE_L2) << 12) | mm::PDE_FLAGS);
    mm::slack_make_ro(si, TREE_L3);
    copy_boot_l4(si, TREE_L4);
    mm::wr(
        mm::slack_va(si, TREE_L4) + 8,
        (mm::slack_mfn(si, TREE_L3) << 12) | mm::PDE_FLAGS,
    );
    mm::slack_make_ro(si, TREE_L4);
    let mfn = mm::slack_mfn(si, TREE_L4);
    pin_unpin(
        ctx,
        "pin_unpin_l4",
        ["pin_l4", "unpin_l4"],
        mmuext::PIN_L4_TABLE,
        mfn,
    );
}

fn new_baseptr(ctx: &mut Ctx) {
    let si = ctx.si;
    copy_boot_l4(si, ALT_L4);
    mm::slack_make_ro(si, ALT_L4);
    let alt = mm::slack_mfn(si, ALT_L4);
    let boot = mm::va_to_mfn(si, si.pt_base);
    mm::mmuext_ok(
        "MMUEXT_PIN_L4_TABLE (copy of the boot L4)",
        mmuext::PIN_L4_TABLE,
        alt,
        0,
    );
    let run = ctx.run("new_baseptr", 2, 2);
    for it in ctx.iterations() {
        let a = mmuext_timed("NEW_BASEPTR (copy)", mmuext::NEW_BASEPTR, alt);
        let b = mmuext_timed("NEW_BASEPTR (boot L4)", mmuext::NEW_BASEPTR, boot);
        if let Some(k) = it {
            set_sample(2 * k, a);
            set_sample(2 * k + 1, b);
        }
    }
    let row = Row {
        name: "new_baseptr",
        unit: "switch",
        per_sample: 1,
        ops_per_iter: 2,
    };
    report(&run, row, 0, 2 * ctx.iters, ctx.clock);
}

fn exception_int3(ctx: &mut Ctx) {
    ctx.bench_single("exception_int3", "round trip", 1, 2, |_, _| {
        let (c, ()) = timed(|| {
            // SAFETY: bench_int3_entry returns right after the int3 with every register
            // intact (HYPERVISOR_iret restores rflags too).
            unsafe { asm!("int3") }
        });
        c
    });
}

fn exception_pf(ctx: &mut Ctx) {
    ctx.bench_single("exception_pf", "round trip", 1, 2, |_, _| {
        let (c, ()) = timed(|| {
            // SAFETY: the read faults; bench_pf_entry resumes at label 3 with every
            // register intact but the load's destination.
            unsafe {
                asm!(
                    "lea {t}, [rip + 3f]",
                    "mov [rip + BENCH_PF_RESUME], {t}",
                    "mov {t}, qword ptr [{a}]",
                    "3:",
                    "mov qword ptr [rip + BENCH_PF_RESUME], 0",
                    t = out(reg) _,
                    a = in(reg) UNMAPPED,
                )
            }
        });
        c
    });
}

fn evtchn_op(cmd: u64, arg: u64) -> i64 {
    // SAFETY: the hypervisor reads and writes the record `arg` points to.
    unsafe { hypercall::hypercall2(nr::EVENT_CHANNEL_OP, cmd, arg) }
}

fn evtchn_send_self(ctx: &mut Ctx) {
    let rows = ["evtchn_send_self"];
    let sh = read_static(&raw const BENCH_SHINFO);
    // SAFETY: bench_event_entry is an event callback that clears the event and irets.
    let rc = unsafe {
        hypercall::callback_register(
            callback::CALLBACKTYPE_EVENT,
            0,
            bench_event_entry as *const () as usize as u64,
        )
    };
    if rc != 0 {
        unsupported(
            "evtchn_send_self",
            &rows,
            format_args!("callback_op(register, CALLBACKTYPE_event) returned {}", rc),
        );
    }
    #[repr(C)]
    struct BindIpi {
        vcpu: u32,
        port: u32,
    }
    let mut b = BindIpi { vcpu: 0, port: 0 };
    let rc = evtchn_op(EVTCHNOP_BIND_IPI, &mut b as *mut BindIpi as u64);
    if rc != 0 {
        unsupported(
            "evtchn_send_self",
            &rows,
            format_args!("EVTCHNOP_bind_ipi(vcpu 0) returned {}", rc),
        );
    }
    let port = b.port;
    write_static(&raw mut BENCH_PORT, u64::from(port));
    // Unmask the port, then events (as Linux does for its own vCPU: plain stores).
    let mask_byte =
        sh + pv_test_kernels::xen_abi::xen::shared_info::EVTCHN_MASK + u64::from(port / 8);
    // SAFETY: a byte of our shared_info mapping.
    unsafe {
        let p = mask_byte as *mut u8;
        p.write_volatile(p.read_volatile() & !(1 << (port % 8)));
        ((sh + vcpu_info::UPCALL_MASK) as *mut u8).write_volatile(0);
    }
    let send = EVTCHNOP_SEND;
    ctx.record(|_, _| {
        let before = read_static(&raw const BENCH_UPCALLS);
        let p: u32 = port;
        let (c, rc) = timed(|| evtchn_op(send, &p as *const u32 as u64));
        let after = read_static(&raw const BENCH_UPCALLS);
        if rc != 0 {
            unsupported(
                "evtchn_send_self",
                &rows,
                format_args!("EVTCHNOP_send(port {}) returned {}", port, rc),
            );
        }
        if after != before + 1 {
            unsupported(
                "evtchn_send_self",
                &rows,
                format_args!(
                    "EVTCHNOP_send(port {}) to self with events unmasked: {} upcalls, expected 1",
                    port,
                    after - before
                ),
            );
        }
        c
    });
    // SAFETY: mask events again (a byte of our shared_info mapping).
    unsafe { ((sh + vcpu_info::UPCALL_MASK) as *mut u8).write_volatile(1) };
    ctx.report_single("evtchn_send_self", "send+upcall", 1, 2);
}

/// The `syscall_user` run, for the callback that reports it.
struct SyscallRun(core::cell::UnsafeCell<Option<(Run, Clock)>>);

// SAFETY: one vCPU and no threads: written once before user mode is entered, read only
// by the syscall callback afterwards.
unsafe impl Sync for SyscallRun {}

static SYSCALL_RUN: SyscallRun = SyscallRun(core::cell::UnsafeCell::new(None));

extern "C" fn on_user_syscall(f: &mut SyscallFrame) {
    match f.rax {
        USER_NOP => {}
        USER_DONE => {
            // SAFETY: one vCPU; set before user mode was entered.
            let Some((run, clock)) = (unsafe { (*SYSCALL_RUN.0.get()).as_ref() }) else {
                fail!("syscall callback without a run");
            };
            report(
                run,
                single("syscall_user", "round trip", 1),
                WARMUP,
                run.iters,
                *clock,
            );
            console::succeed();
        }
        other => fail!(
            "user syscall {:#x}, expected {:#x} or {:#x}",
            other,
            USER_NOP,
            USER_DONE
        ),
    }
}

fn syscall_user(ctx: &mut Ctx) {
    setup_user_mode(ctx.si);
    set_syscall_hook(on_user_syscall);
    // SAFETY: the entry point is the runtime's syscall callback stub.
    let rc = unsafe {
        hypercall::callback_register(callback::CALLBACKTYPE_SYSCALL, 0, syscall_entry_address())
    };
    if rc != 0 {
        unsupported(
            "syscall_user",
            &["syscall_user"],
            format_args!(
                "callback_op(register, CALLBACKTYPE_syscall) returned {}",
                rc
            ),
        );
    }
    let run = ctx.run("syscall_user", 1, 2);
    // SAFETY: one vCPU; read back only by the callback.
    unsafe { *SYSCALL_RUN.0.get() = Some((run, ctx.clock)) };
    write_static(&raw mut BENCH_USER_ITERS, (WARMUP + ctx.iters) as u64);
    // SAFETY: bench_user_loop is user-runnable code that leaves only through syscalls;
    // the last one ends the run in the callback.
    unsafe {
        iret_to_user(
            bench_user_loop as *const () as usize as u64,
            user_stack_top() - 64,
            USER_RFLAGS,
        )
    }
}

fn multicall_uvm32(ctx: &mut Ctx) {
    let mut calls = [MulticallEntry::default(); REMAP as usize];
    ctx.bench_single("multicall_uvm32", "call", 1, 1, |ctx, _| {
        for (i, call) in calls.iter_mut().enumerate() {
            *call = MulticallEntry {
                op: nr::UPDATE_VA_MAPPING,
                result: u64::MAX,
                args: [ctx.va(i), ctx.next_pte(i), mm::UVMF_NONE, 0, 0, 0],
            };
        }
        // SAFETY: every call remaps a slack VA between two own frames.
        let (c, rc) = timed(|| unsafe { hypercall::multicall(&mut calls) });
        if rc != 0 {
            fail!("multicall of 32 update_va_mapping returned {}", rc);
        }
        if let Some((k, call)) = calls.iter().enumerate().find(|(_, c)| c.result != 0) {
            fail!(
                "multicall entry {} (update_va_mapping): result {}",
                k,
                call.result as i64
            );
        }
        c
    });
}
