//! The hypercalls of the foundation, with Xen 4.17's semantics and error codes.
//!
//! A 64-bit PV hypercall is a `syscall` from guest kernel mode: number in rax, arguments
//! in rdi, rsi, rdx, r10, r8, result in rax. Only rax changes, except for `iret`, which
//! loads a whole context, and for a continuation, which rewinds rip onto the `syscall`
//! and rewrites the argument registers so the rest of a long operation runs on the next
//! entry (Xen's `hypercall_create_continuation`).
//!
//! Every loop over a guest-chosen count asks [`Platform::hypercall_preempt_check`]
//! between items (never before the first, so each entry makes progress) and, when the
//! host says so, stops and returns [`Action::Continue`] with the arguments of the rest,
//! encoded exactly as Xen encodes them: `multicall` (list advanced, count reduced),
//! `mmu_update`/`mmuext_op` (`MMU_UPDATE_PREEMPTED` and `*pdone`), `memory_op`'s
//! reservation calls (progress in the command's upper bits), `console_io` writes (count
//! reduced, buffer advanced) and `set_trap_table`. A handler that answers `-ERESTART`
//! (an operation stopped part-way, such as a pagetable validation) is continued with its
//! own arguments; `-ERESTART` never reaches the guest. [`do_hypercall`] turns a
//! continuation into registers; a `multicall` turns a sub-call's continuation into its
//! entry, as Xen's `multicall.c` does.
//!
//! Xen's handlers take C `int`/`unsigned int` parameters for many arguments, so the upper
//! half of those registers is ignored; the handlers here truncate the same arguments.
//! Guest memory is reached through [`crate::guest`]; every failure there is `-EFAULT`,
//! mapped in one place ([`efault`]).

use xen_abi::callback::{
    CallbackRegister, CallbackUnregister, CALLBACKOP_REGISTER, CALLBACKOP_UNREGISTER,
    CALLBACKTYPE_EVENT, CALLBACKTYPE_FAILSAFE, CALLBACKTYPE_NMI, CALLBACKTYPE_SYSCALL,
    CALLBACKTYPE_SYSCALL32, CALLBACKTYPE_SYSENTER,
};
use xen_abi::console::{CONSOLEIO_READ, CONSOLEIO_WRITE};
use xen_abi::errno::{
    E2BIG, EBUSY, EFAULT, EINVAL, ENODEV, ENOSYS, EOPNOTSUPP, EPERM, ERESTART, ESRCH,
};
use xen_abi::sched::*;
use xen_abi::sched::{SchedPoll, SchedRemoteShutdown};
use xen_abi::version::FeatureInfo;
use xen_abi::version::*;
use xen_abi::xen::hypercall as hc;
use xen_abi::xen::selector::FLAT_KERNEL_CS;
use xen_abi::xen::{
    segbase, vmassist, IretContext, MulticallEntry, TrapInfo, HYPERVISOR_VIRT_END,
    HYPERVISOR_VIRT_START, VGCF_IN_SYSCALL,
};

use crate::bounce::{
    write_upcall_mask, SYSCALL_LEN, X86_EFLAGS_IF, X86_EFLAGS_IOPL, X86_EFLAGS_VM,
};
use crate::guest::{self, is_canonical, GuestFault};
use crate::{
    Callback, CrashReason, Domain, GuestRegs, HypercallRecord, Mode, Outcome, Platform, Stats, Vcpu,
};

/// `%dr6` after reset (reserved bits read as one).
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
/// `%dr7` after reset (bit 10 reads as one).
pub const DR7_DEFAULT: u64 = 0x400;

/// `EVTCHN_2L_NR_CHANNELS` for a 64-bit guest.
const EVTCHN_2L_NR_CHANNELS: u32 = 4096;
/// `SCHEDOP_poll`'s limit on ports.
const POLL_MAX_PORTS: u32 = 128;
/// The version we claim: Xen 4.17.
const XEN_MAJOR: i64 = 4;
const XEN_MINOR: i64 = 17;
const EXTRAVERSION: &str = ".0-pvkvm";
const CAPABILITIES: &str = "xen-3.0-x86_64 ";
const CHANGESET: &str = concat!("pvkvm ", env!("CARGO_PKG_VERSION"));
/// What Xen writes for sub-ops XSM denies an unprivileged domain.
const XEN_DENY: &str = "<denied>";
/// Bytes of console output per chunk, as Xen's `guest_console_write` buffer.
const CONSOLE_CHUNK: usize = 127;

/// What a handler did, before the dispatcher turns it into registers and an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Return this value in rax and resume.
    Ret(i64),
    /// Return this value in rax, then this outcome.
    RetThen(i64, Outcome),
    /// The handler set the registers itself (iret) or crashed the domain.
    Done(Outcome),
    /// Xen's `hypercall_create_continuation`: the hypercall stopped part-way; the guest
    /// re-executes hypercall `nr` with `args` (rdi, rsi, rdx, r10, r8; a handler passes
    /// the arguments it does not rewrite through unchanged), after `then`.
    Continue {
        /// The hypercall to re-execute (always the one that stopped).
        nr: u64,
        /// Its arguments for the rest of the work.
        args: [u64; 5],
        /// What the host does first (`Resume`, or a yield or block that came up while
        /// a multicall ran).
        then: Outcome,
    },
}

impl Action {
    /// A continuation with nothing to do first.
    pub(crate) fn cont(nr: u64, args: [u64; 5]) -> Self {
        Action::Continue {
            nr,
            args,
            then: Outcome::Resume,
        }
    }
}

/// The one place where a guest-memory fault becomes an errno.
fn efault(_: GuestFault) -> i64 {
    -EFAULT
}

/// Xen's `__addr_ok` (what `guest_handle_okay` checks of a 64-bit PV guest's array):
/// the lower half, or above the hypervisor hole.
pub(crate) fn addr_ok(va: u64) -> bool {
    !((1 << 47)..HYPERVISOR_VIRT_END).contains(&va)
}

/// Makes the guest re-execute hypercall `nr` with `args` (Xen's continuation): rip back
/// onto the 2-byte `syscall`, the number in rax, the arguments in their registers.
fn create_continuation(regs: &mut GuestRegs, nr: u64, args: [u64; 5]) {
    regs.rip = regs.rip.wrapping_sub(SYSCALL_LEN);
    regs.rax = nr;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
}

/// Handles a hypercall from guest kernel mode (see [`crate::syscall_entry`]).
pub fn do_hypercall(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
) -> Outcome {
    let nr = regs.rax;
    let a = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8];
    stats.count_hypercall(nr);
    let action = dispatch(vcpu, dom, regs, p, stats, nr, a);
    let (ret, outcome) = match action {
        Action::Ret(v) => (Some(v), Outcome::Resume),
        Action::RetThen(v, o) => (Some(v), o),
        Action::Done(o) => (None, o),
        Action::Continue { nr, args, then } => {
            create_continuation(regs, nr, args);
            stats.count_continuation(nr);
            (None, then)
        }
    };
    if let Some(v) = ret {
        if v == -ENOSYS {
            stats.count_enosys(nr);
        }
        regs.rax = v as u64;
    }
    stats.record(HypercallRecord {
        nr,
        args: a,
        result: regs.rax,
    });
    outcome
}

/// Runs hypercall `nr` with arguments `a` (what `do_hypercall` and each multicall entry
/// share). A handler's `-ERESTART` becomes a continuation with the same arguments.
fn dispatch(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
    nr: u64,
    a: [u64; 5],
) -> Action {
    match dispatch_one(vcpu, dom, regs, p, stats, nr, a) {
        Action::Ret(v) if v == -ERESTART => Action::cont(nr, a),
        action => action,
    }
}

fn dispatch_one(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
    nr: u64,
    a: [u64; 5],
) -> Action {
    match nr {
        hc::SET_TRAP_TABLE => do_set_trap_table(vcpu, p, a),
        hc::STACK_SWITCH => Action::Ret(do_stack_switch(vcpu, a[0], a[1])),
        hc::SET_CALLBACKS => Action::Ret(do_set_callbacks(vcpu, a[0], a[1], a[2])),
        hc::FPU_TASKSWITCH => Action::Ret(do_fpu_taskswitch(vcpu, a[0] as i32)),
        hc::SCHED_OP_COMPAT => do_sched_op_compat(vcpu, dom, p, a[0] as i32, a[1]),
        hc::SET_DEBUGREG => Action::Ret(do_set_debugreg(vcpu, a[0] as i32, a[1])),
        hc::GET_DEBUGREG => Action::Ret(do_get_debugreg(vcpu, a[0] as i32)),
        hc::XEN_VERSION => Action::Ret(do_xen_version(vcpu, dom, p, a[0] as i32, a[1])),
        hc::CONSOLE_IO => do_console_io(vcpu, p, a),
        hc::VM_ASSIST => Action::Ret(do_vm_assist(dom, a[0] as u32, a[1] as u32)),
        hc::IRET => do_iret(vcpu, dom, regs, p),
        hc::SET_SEGMENT_BASE => Action::Ret(do_set_segment_base(vcpu, a[0] as u32, a[1])),
        hc::MMUEXT_OP => crate::mmu::do_mmuext_op(vcpu, dom, p, a, stats),
        hc::MMU_UPDATE => {
            // Counted once per call, not again for each continuation (Xen's perfc).
            if a[1] as u32 & xen_abi::xen::mmuext::MMU_UPDATE_PREEMPTED == 0 {
                stats.count_mmu_batch(u64::from(a[1] as u32));
            }
            crate::mmu::do_mmu_update(vcpu, p, a)
        }
        hc::UPDATE_VA_MAPPING => {
            // Xen's do_update_va_mapping finishes a deferred teardown first.
            if crate::mmu::put_old_guest_table(p) {
                Action::cont(hc::UPDATE_VA_MAPPING, a)
            } else {
                Action::Ret(crate::mmu::do_update_va_mapping(
                    vcpu, dom, p, a[0], a[1], a[2],
                ))
            }
        }
        hc::SET_GDT => Action::Ret(crate::mmu::do_set_gdt(vcpu, p, a[0], a[1] as u32 as u64)),
        hc::UPDATE_DESCRIPTOR => Action::Ret(crate::mmu::do_update_descriptor(p, a[0], a[1])),
        hc::VCPU_OP => match crate::vcpu_op::do_vcpu_op(vcpu, dom, p, a[0], a[1] as u32, a[2]) {
            crate::vcpu_op::VcpuOpResult::Ret(v) => Action::Ret(v),
            crate::vcpu_op::VcpuOpResult::SelfDown => Action::RetThen(0, Outcome::Down),
            crate::vcpu_op::VcpuOpResult::AllDown => {
                Action::RetThen(0, crate::vcpu_op::all_down(dom))
            }
        },
        hc::PHYSDEV_OP => Action::Ret(do_physdev_op(vcpu, dom, p, a[0], a[1])),
        hc::EVENT_CHANNEL_OP => {
            Action::Ret(crate::evtchn::do_event_channel_op(vcpu, dom, p, a[0], a[1]))
        }
        // The op's body follows its command word; a struct that runs off the end of the
        // address space cannot be copied (-EFAULT), as on Xen.
        hc::EVENT_CHANNEL_OP_COMPAT => {
            match (guest::read_obj::<u32>(vcpu, p, a[0]), a[0].checked_add(8)) {
                (Ok(cmd), Some(body)) => Action::Ret(crate::evtchn::do_event_channel_op(
                    vcpu,
                    dom,
                    p,
                    u64::from(cmd),
                    body,
                )),
                (Ok(_), None) => Action::Ret(-EFAULT),
                (Err(e), _) => Action::Ret(efault(e)),
            }
        }
        hc::GRANT_TABLE_OP => Action::Ret(crate::gnttab::do_grant_table_op(
            vcpu,
            dom,
            p,
            a[0],
            a[1],
            a[2] as u32,
        )),
        hc::SET_TIMER_OP => Action::Ret(crate::time::do_set_timer_op(vcpu, a[0])),
        hc::MULTICALL => do_multicall(vcpu, dom, regs, p, stats, a),
        hc::SCHED_OP => do_sched_op(vcpu, dom, p, a[0] as i32, a[1]),
        hc::CALLBACK_OP => Action::Ret(do_callback_op(vcpu, p, a[0] as i32, a[1])),
        hc::MEMORY_OP => crate::memory::do_memory_op(vcpu, p, a),
        // Xen's default: no virtual PMU (`vpmu=0`), for every sub-op.
        hc::XENPMU_OP => Action::Ret(-EOPNOTSUPP),
        _ => Action::Ret(-ENOSYS),
    }
}

/// `physdev_op` as Xen answers an unprivileged PV guest: `PHYSDEVOP_set_iopl` sets the
/// virtual IOPL that guards port I/O emulation (the domain has no ports: reads give all
/// ones, writes vanish); the interrupt-routing sub-ops come with event channels.
fn do_physdev_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    cmd: u64,
    arg: u64,
) -> i64 {
    const PHYSDEVOP_SET_IOPL: u64 = 6;
    const PHYSDEVOP_PIRQ_EOI_GMFN_V1: u64 = 17;
    const PHYSDEVOP_PIRQ_EOI_GMFN_V2: u64 = 28;
    match cmd {
        // The page where Xen would flag PIRQs needing an EOI. A domain without PIRQs
        // never sees a bit set, but Xen still takes the page (a writable type
        // reference, once per domain) and says 0; pvkvm does the same.
        PHYSDEVOP_PIRQ_EOI_GMFN_V1 | PHYSDEVOP_PIRQ_EOI_GMFN_V2 => {
            let Ok(gmfn) = guest::read_obj::<u64>(vcpu, p, arg) else {
                return -EFAULT;
            };
            let Some(ctx) = p.mm() else { return -ENOSYS };
            if !crate::mmu::get_writable_page(ctx, gmfn) {
                return -EINVAL;
            }
            if dom.pirq_eoi_mfn.is_some() {
                // Xen takes the reference first and drops it again when the domain
                // already has its page.
                if let Some(ctx) = p.mm() {
                    let f = ctx.mm.put_page_and_type(ctx.mem, gmfn);
                    crate::mmu::merge_flush(ctx.flush, f);
                }
                return -EBUSY;
            }
            dom.pirq_eoi_mfn = Some(gmfn);
            0
        }
        PHYSDEVOP_SET_IOPL => {
            let Ok(iopl) = guest::read_obj::<u32>(vcpu, p, arg) else {
                return -EFAULT;
            };
            if iopl > 3 {
                return -EINVAL;
            }
            vcpu.iopl = u64::from(iopl) << 12;
            0
        }
        _ => -ENOSYS,
    }
}

/// `multicall(list, count)`, as Xen's `common/multicall.c`: each entry runs as its own
/// hypercall and its result goes back into the entry. A nested multicall or an `iret`
/// inside one gets -EINVAL; a shutdown or crash inside one ends the list with that
/// outcome; a yield or block inside one comes into force with the rest of the list as a
/// continuation (Xen finds its softirq pending at the next entry).
///
/// Preempted before an entry (never the first), the multicall continues with the list
/// advanced to that entry and the count reduced. A sub-call that continues itself has
/// its continuation written over its entry (its number as the result, its arguments for
/// the rest) and the multicall continues at that entry, so the guest re-enters it with
/// the sub-call's own progress.
fn do_multicall(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
    a: [u64; 5],
) -> Action {
    let (list, count) = (a[0], a[1] as u32);
    // Xen's guest_handle_okay: the list must start outside the hypervisor hole.
    if !addr_ok(list) {
        return Action::Ret(-EFAULT);
    }
    let rest = |va: u64, left: u32| [va, u64::from(left), a[2], a[3], a[4]];
    let mut va = list;
    for i in 0..count {
        if i > 0 && p.hypercall_preempt_check() {
            return Action::cont(hc::MULTICALL, rest(va, count - i));
        }
        let mut entry: MulticallEntry = match guest::read_obj(vcpu, p, va) {
            Ok(e) => e,
            Err(e) => return Action::Ret(efault(e)),
        };
        let sub = [
            entry.args[0],
            entry.args[1],
            entry.args[2],
            entry.args[3],
            entry.args[4],
        ];
        stats.count_hypercall(entry.op);
        let mut scratch = *regs;
        let action = match entry.op {
            hc::MULTICALL | hc::IRET => Action::Ret(-EINVAL),
            nr => dispatch(vcpu, dom, &mut scratch, p, stats, nr, sub),
        };
        let (result, outcome) = match action {
            Action::Ret(v) => (v, Outcome::Resume),
            Action::RetThen(v, o) => (v, o),
            Action::Done(o) => (-EINVAL, o),
            Action::Continue { nr, args, then } => {
                // The whole entry goes back: op, the continuation's return value (its
                // number) as the result, and the arguments for the rest.
                entry.result = nr;
                entry.args[..5].copy_from_slice(&args);
                stats.record(HypercallRecord {
                    nr: entry.op,
                    args: sub,
                    result: nr,
                });
                if guest::write_obj(vcpu, p, va, &entry).is_err() {
                    return Action::Ret(-EFAULT);
                }
                return Action::Continue {
                    nr: hc::MULTICALL,
                    args: rest(va, count - i),
                    then,
                };
            }
        };
        if result == -ENOSYS {
            stats.count_enosys(entry.op);
        }
        stats.record(HypercallRecord {
            nr: entry.op,
            args: sub,
            result: result as u64,
        });
        let written = va
            .checked_add(8)
            .is_some_and(|at| guest::write_obj(vcpu, p, at, &(result as u64)).is_ok());
        if !written {
            return Action::Ret(-EFAULT);
        }
        let left = count - i - 1;
        // The next entry's address; a list that runs off the end of the address space
        // faults there.
        let next = va.checked_add(64);
        match outcome {
            Outcome::Resume => {}
            Outcome::Yield | Outcome::Block if left > 0 => {
                return match next {
                    Some(next) => Action::Continue {
                        nr: hc::MULTICALL,
                        args: rest(next, left),
                        then: outcome,
                    },
                    None => Action::RetThen(-EFAULT, outcome),
                };
            }
            _ => return Action::RetThen(0, outcome),
        }
        match next {
            Some(next) => va = next,
            None if left > 0 => return Action::Ret(-EFAULT),
            None => {}
        }
    }
    Action::Ret(0)
}

/// `set_trap_table`: entries until one with address 0; NULL clears the table. Preempted
/// after an entry, it continues with the pointer advanced (Xen's `"h"` continuation).
fn do_set_trap_table(vcpu: &mut Vcpu, p: &mut dyn Platform, a: [u64; 5]) -> Action {
    let traps = a[0];
    if traps == 0 {
        vcpu.trap_table = [TrapInfo::default(); 256];
        return Action::Ret(0);
    }
    let mut va = traps;
    loop {
        let mut ti: TrapInfo = match guest::read_obj(vcpu, p, va) {
            Ok(t) => t,
            Err(e) => return Action::Ret(efault(e)),
        };
        if ti.address == 0 {
            return Action::Ret(0);
        }
        if !is_canonical(ti.address) {
            return Action::Ret(-EINVAL);
        }
        ti.cs = fixup_guest_selector(u64::from(ti.cs)) as u16;
        vcpu.trap_table[usize::from(ti.vector)] = ti;
        // A table that ends exactly at the top of the address space: the next read
        // would fault.
        let Some(next) = va.checked_add(16) else {
            return Action::Ret(-EFAULT);
        };
        va = next;
        if p.hypercall_preempt_check() {
            return Action::cont(hc::SET_TRAP_TABLE, [va, a[1], a[2], a[3], a[4]]);
        }
    }
}

/// Xen's `__fixup_guest_selector` for a 64-bit guest: kernel RPL is 3.
fn fixup_guest_selector(sel: u64) -> u64 {
    if sel & 3 >= 3 {
        sel
    } else {
        (sel & !3) | 3
    }
}

/// `stack_switch`: where bounces from user mode will land. Xen validates nothing beyond
/// the selector's RPL; a bad stack is found when a bounce fails.
fn do_stack_switch(vcpu: &mut Vcpu, ss: u64, sp: u64) -> i64 {
    vcpu.kernel_ss = fixup_guest_selector(ss);
    vcpu.kernel_sp = sp;
    0
}

/// Xen's `register_guest_callback`.
fn register_guest_callback(vcpu: &mut Vcpu, kind: u16, flags: u16, address: u64) -> i64 {
    if !is_canonical(address) {
        return -EINVAL;
    }
    let cb = Callback { address, flags };
    match kind {
        CALLBACKTYPE_EVENT => vcpu.event_callback = cb,
        CALLBACKTYPE_FAILSAFE => vcpu.failsafe_callback = cb,
        CALLBACKTYPE_SYSCALL => vcpu.syscall_callback = cb,
        CALLBACKTYPE_SYSCALL32 => vcpu.syscall32_callback = cb,
        CALLBACKTYPE_SYSENTER => vcpu.sysenter_callback = cb,
        CALLBACKTYPE_NMI => {
            // Xen delivers NMIs through trap table slot 2, with events masked.
            vcpu.nmi_callback = cb;
            vcpu.trap_table[2] = TrapInfo {
                vector: 2,
                flags: 4,
                cs: FLAT_KERNEL_CS,
                _pad: 0,
                address,
            };
        }
        _ => return -ENOSYS,
    }
    0
}

/// `set_callbacks`: the old interface; Xen ignores each registration's result and clears
/// the mask-events flags.
fn do_set_callbacks(vcpu: &mut Vcpu, event: u64, failsafe: u64, syscall: u64) -> i64 {
    let _ = register_guest_callback(vcpu, CALLBACKTYPE_EVENT, 0, event);
    let _ = register_guest_callback(vcpu, CALLBACKTYPE_FAILSAFE, 0, failsafe);
    let _ = register_guest_callback(vcpu, CALLBACKTYPE_SYSCALL, 0, syscall);
    0
}

/// `callback_op`: register any callback; only the NMI one can be unregistered.
fn do_callback_op(vcpu: &mut Vcpu, p: &dyn Platform, cmd: i32, arg: u64) -> i64 {
    match i64::from(cmd) as u64 {
        CALLBACKOP_REGISTER => match guest::read_obj::<CallbackRegister>(vcpu, p, arg) {
            Ok(r) => register_guest_callback(vcpu, r.kind, r.flags, r.address),
            Err(e) => efault(e),
        },
        CALLBACKOP_UNREGISTER => match guest::read_obj::<CallbackUnregister>(vcpu, p, arg) {
            Ok(u) => match u.kind {
                CALLBACKTYPE_EVENT
                | CALLBACKTYPE_FAILSAFE
                | CALLBACKTYPE_SYSCALL
                | CALLBACKTYPE_SYSCALL32
                | CALLBACKTYPE_SYSENTER => -EINVAL,
                CALLBACKTYPE_NMI => {
                    vcpu.nmi_callback = Callback::default();
                    vcpu.trap_table[2] = TrapInfo::default();
                    0
                }
                _ => -ENOSYS,
            },
            Err(e) => efault(e),
        },
        _ => -ENOSYS,
    }
}

/// `fpu_taskswitch`: the virtual CR0.TS (the host loads it from [`Vcpu::hw_state`]).
fn do_fpu_taskswitch(vcpu: &mut Vcpu, set: i32) -> i64 {
    vcpu.cr0_ts = set != 0;
    0
}

/// `set_debugreg`, with Xen's `set_debugreg` checks. The engine has no virtual CR4 yet, so
/// CR4.DE reads as clear: DR4/DR5 alias DR6/DR7 and I/O breakpoints are refused.
fn do_set_debugreg(vcpu: &mut Vcpu, reg: i32, value: u64) -> i64 {
    const DR_STATUS_RESERVED_ZERO: u64 = !0xffff_efff;
    const DR_CONTROL_RESERVED_ZERO: u64 = !0xffff_27ff;
    const DR_GENERAL_DETECT: u64 = 1 << 13;
    const DR7_ACTIVE_MASK: u64 = 0xff;
    const DR_IO: u64 = 2;
    match reg {
        0..=3 => {
            if !addr_ok(value) {
                return -EPERM;
            }
            vcpu.debugreg[reg as usize] = value;
        }
        4 | 6 => {
            if value >> 32 != 0 {
                return -EINVAL;
            }
            vcpu.debugreg[6] = (value & !DR_STATUS_RESERVED_ZERO) | DR6_DEFAULT;
        }
        5 | 7 => {
            if value >> 32 != 0 {
                return -EINVAL;
            }
            let value = (value & !DR_CONTROL_RESERVED_ZERO) | DR7_DEFAULT;
            if value & DR_GENERAL_DETECT != 0 {
                return -EPERM;
            }
            if value & DR7_ACTIVE_MASK != 0
                && (16..32).step_by(4).any(|i| (value >> i) & 3 == DR_IO)
            {
                return -EPERM;
            }
            vcpu.debugreg[7] = value;
        }
        _ => return -ENODEV,
    }
    0
}

/// `get_debugreg`. The value comes back in rax as is (a kernel address looks negative,
/// as on Xen).
fn do_get_debugreg(vcpu: &Vcpu, reg: i32) -> i64 {
    match reg {
        0..=3 => vcpu.debugreg[reg as usize] as i64,
        4 | 6 => vcpu.debugreg[6] as i64,
        5 | 7 => vcpu.debugreg[7] as i64,
        _ => -ENODEV,
    }
}

/// `vm_assist`: the type is checked before the command, as on Xen.
fn do_vm_assist(dom: &mut Domain, cmd: u32, kind: u32) -> i64 {
    if kind >= 64 || vmassist::VALID_PV64 & (1u64 << kind) == 0 {
        return -EINVAL;
    }
    match u64::from(cmd) {
        vmassist::CMD_ENABLE => dom.vm_assist |= 1 << kind,
        vmassist::CMD_DISABLE => dom.vm_assist &= !(1u64 << kind),
        _ => return -ENOSYS,
    }
    0
}

/// `set_segment_base`.
///
/// `SEGBASE_GS_USER_SEL` loads a selector into the user GS and takes the base from its
/// descriptor. The engine has no GDT/LDT yet: NUL selectors and Xen's flat selectors have
/// base 0, and so, for now, does every other selector (a guest TLS descriptor's base is
/// not honoured yet).
fn do_set_segment_base(vcpu: &mut Vcpu, which: u32, base: u64) -> i64 {
    let which = u64::from(which);
    match which {
        segbase::FS | segbase::GS_USER | segbase::GS_KERNEL => {
            if !is_canonical(base) {
                return -EINVAL;
            }
            match which {
                segbase::FS => vcpu.fs_base = base,
                segbase::GS_USER => vcpu.gs_base_user = base,
                _ => vcpu.gs_base_kernel = base,
            }
        }
        segbase::GS_USER_SEL => {
            let mut sel = base as u16;
            if sel > 3 {
                sel |= 3;
            }
            vcpu.gs_sel_user = sel;
            vcpu.gs_base_user = 0;
        }
        _ => return -EINVAL,
    }
    0
}

/// `iret`: pop an `iret_context` from the guest stack and load it. rax comes from the
/// frame, not from a return value. A frame that cannot be read, or a return to user mode
/// without a user pagetable, crashes the domain, as on Xen.
fn do_iret(vcpu: &mut Vcpu, dom: &Domain, regs: &mut GuestRegs, p: &mut dyn Platform) -> Action {
    let ctx: IretContext = match guest::read_obj(vcpu, p, regs.rsp) {
        Ok(c) => c,
        Err(_) => return Action::Done(Outcome::Crash(CrashReason::BadIret)),
    };
    if ctx.cs & 3 == 3 {
        if vcpu.user_cr3 == 0 {
            return Action::Done(Outcome::Crash(CrashReason::BadIret));
        }
        if vcpu.mode == Mode::Kernel {
            vcpu.toggle_guest_mode();
        }
    }
    if dom.vm_assist & (1 << vmassist::TYPE_ARCHITECTURAL_IOPL) != 0 {
        vcpu.iopl = ctx.rflags & X86_EFLAGS_IOPL;
    }
    regs.rip = ctx.rip;
    regs.cs = ctx.cs | 3;
    // The real IF stays set (the guest's virtual IF is its event mask).
    regs.rflags = (ctx.rflags & !(X86_EFLAGS_IOPL | X86_EFLAGS_VM)) | X86_EFLAGS_IF;
    regs.rsp = ctx.rsp;
    regs.ss = ctx.ss | 3;
    if ctx.flags & VGCF_IN_SYSCALL == 0 {
        regs.r11 = ctx.r11;
        regs.rcx = ctx.rcx;
    }
    if let Err(r) = write_upcall_mask(vcpu, p, u8::from(ctx.rflags & X86_EFLAGS_IF == 0)) {
        return Action::Done(Outcome::Crash(r));
    }
    regs.rax = ctx.rax;
    Action::Done(Outcome::Resume)
}

/// `console_io`. Xen lets an unprivileged domain use it only in debug builds
/// (`-EPERM` otherwise); pvkvm allows it, because its console is the user's terminal and
/// `earlyprintk=xen` is the first sign of life of a guest.
///
/// A write goes out in chunks as Xen's `guest_console_write` takes them from an
/// unprivileged domain (up to 127 bytes, ending early after a newline), and is
/// preemptible between chunks: the continuation carries the count left and the buffer
/// advanced (`"iih"`).
fn do_console_io(vcpu: &Vcpu, p: &mut dyn Platform, a: [u64; 5]) -> Action {
    let (cmd, count, buffer) = (a[0] as u32, a[1] as u32, a[2]);
    match u64::from(cmd) {
        CONSOLEIO_WRITE => {
            let mut left = count;
            let mut va = buffer;
            let mut kbuf = [0u8; CONSOLE_CHUNK];
            let mut first = true;
            while left > 0 {
                if !first && p.hypercall_preempt_check() {
                    return Action::cont(
                        hc::CONSOLE_IO,
                        [CONSOLEIO_WRITE, u64::from(left), va, a[3], a[4]],
                    );
                }
                first = false;
                let n = (left as usize).min(CONSOLE_CHUNK);
                if let Err(e) = guest::copy_from_guest(vcpu, p, va, &mut kbuf[..n]) {
                    return Action::Ret(efault(e));
                }
                let used = kbuf[..n]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(n, |k| k + 1);
                p.console_write(&kbuf[..used]);
                left -= used as u32;
                // A buffer that runs off the end of the address space faults there.
                va = match va.checked_add(used as u64) {
                    Some(next) => next,
                    None if left > 0 => return Action::Ret(-EFAULT),
                    None => va,
                };
            }
            Action::Ret(0)
        }
        CONSOLEIO_READ => Action::Ret(console_read(vcpu, p, count, buffer)),
        _ => Action::Ret(-ENOSYS),
    }
}

/// `CONSOLEIO_read`: what input there is, up to `count` bytes (never more than the
/// host's small input queue, so no continuation).
fn console_read(vcpu: &Vcpu, p: &mut dyn Platform, count: u32, buffer: u64) -> i64 {
    if count > i32::MAX as u32 {
        return -E2BIG;
    }
    let mut done = 0u32;
    let mut kbuf = [0u8; 128];
    while done < count {
        let want = ((count - done) as usize).min(kbuf.len());
        let va = buffer.wrapping_add(u64::from(done));
        // Check first, so input is never consumed into a buffer that faults.
        if let Err(e) = guest::check_writable(vcpu, p, va, want) {
            return efault(e);
        }
        let n = p.console_read(&mut kbuf[..want]).min(want);
        if n == 0 {
            break;
        }
        if let Err(e) = guest::copy_to_guest(vcpu, p, va, &kbuf[..n]) {
            return efault(e);
        }
        done += n as u32;
    }
    i64::from(done)
}

/// Copies `s` NUL-padded into a `len`-byte ABI string at `va`.
fn put_string(vcpu: &Vcpu, p: &mut dyn Platform, va: u64, s: &str, len: usize) -> i64 {
    let mut buf = [0u8; CAPABILITIES_LEN];
    let n = s.len().min(len.saturating_sub(1));
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
    match guest::copy_to_guest(vcpu, p, va, &buf[..len]) {
        Ok(()) => 0,
        Err(e) => efault(e),
    }
}

/// `xen_version`, answering as Xen 4.17 answers an unprivileged PV domain.
fn do_xen_version(vcpu: &Vcpu, dom: &Domain, p: &mut dyn Platform, cmd: i32, arg: u64) -> i64 {
    match i64::from(cmd) as u64 {
        XENVER_VERSION => (XEN_MAJOR << 16) | XEN_MINOR,
        XENVER_EXTRAVERSION => put_string(vcpu, p, arg, EXTRAVERSION, EXTRAVERSION_LEN),
        XENVER_COMPILE_INFO => {
            // compiler[64], compile_by[16], compile_domain[32], compile_date[32].
            let mut info = [0u8; COMPILE_INFO_LEN];
            info[..5].copy_from_slice(b"rustc");
            info[64..69].copy_from_slice(b"pvkvm");
            match guest::copy_to_guest(vcpu, p, arg, &info) {
                Ok(()) => 0,
                Err(e) => efault(e),
            }
        }
        XENVER_CAPABILITIES => put_string(vcpu, p, arg, CAPABILITIES, CAPABILITIES_LEN),
        XENVER_CHANGESET => put_string(vcpu, p, arg, CHANGESET, CHANGESET_LEN),
        XENVER_PLATFORM_PARAMETERS => {
            match guest::write_obj(vcpu, p, arg, &HYPERVISOR_VIRT_START) {
                Ok(()) => 0,
                Err(e) => efault(e),
            }
        }
        XENVER_GET_FEATURES => {
            let mut fi: FeatureInfo = match guest::read_obj(vcpu, p, arg) {
                Ok(f) => f,
                Err(e) => return efault(e),
            };
            if fi.submap_idx != 0 {
                return -EINVAL;
            }
            fi.submap = xen_abi::features::PV_DOMU_SUBMAP0;
            // Xen reports this one only once the guest enabled the assist.
            if dom.vm_assist & (1 << vmassist::TYPE_PAE_EXTENDED_CR3) == 0 {
                fi.submap &= !(1 << xen_abi::features::PAE_PGDIR_ABOVE_4GB);
            }
            match guest::write_obj(vcpu, p, arg, &fi) {
                Ok(()) => 0,
                Err(e) => efault(e),
            }
        }
        XENVER_PAGESIZE => {
            if arg != 0 {
                -EINVAL
            } else {
                4096
            }
        }
        XENVER_GUEST_HANDLE => match guest::copy_to_guest(vcpu, p, arg, &[0u8; GUEST_HANDLE_LEN]) {
            Ok(()) => 0,
            Err(e) => efault(e),
        },
        XENVER_COMMANDLINE => {
            // Denied to a domU: Xen copies "<denied>" and its NUL, and succeeds.
            let mut buf = [0u8; XEN_DENY.len() + 1];
            buf[..XEN_DENY.len()].copy_from_slice(XEN_DENY.as_bytes());
            match guest::copy_to_guest(vcpu, p, arg, &buf) {
                Ok(()) => 0,
                Err(e) => efault(e),
            }
        }
        XENVER_BUILD_ID => -EPERM,
        _ => -ENOSYS,
    }
}

/// `SCHEDOP_shutdown` and friends: a reason set earlier with `SCHEDOP_shutdown_code`
/// wins over the one given now, as in Xen's `domain_shutdown`.
fn domain_shutdown(dom: &mut Domain, reason: u8) -> Outcome {
    let reason = *dom.shutdown_code.get_or_insert(reason);
    Outcome::Shutdown(u32::from(reason))
}

/// `sched_op`.
///
/// `SCHEDOP_poll` is checked as Xen checks it and returns at once when a polled port (or
/// any event) is pending; otherwise, with no event channels or timers in the engine yet,
/// it yields and returns 0, which the ABI allows (a poll may wake spuriously; Linux
/// re-checks its condition). `SCHEDOP_watchdog` is not implemented (-ENOSYS).
fn do_sched_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    cmd: i32,
    arg: u64,
) -> Action {
    match i64::from(cmd) as u64 {
        SCHEDOP_YIELD => Action::RetThen(0, Outcome::Yield),
        SCHEDOP_BLOCK => {
            // vcpu_block_enable_events: blocking unmasks events.
            if let Err(r) = write_upcall_mask(vcpu, p, 0) {
                return Action::Done(Outcome::Crash(r));
            }
            Action::RetThen(0, Outcome::Block)
        }
        SCHEDOP_SHUTDOWN => match guest::read_obj::<u32>(vcpu, p, arg) {
            Ok(reason) => Action::RetThen(0, domain_shutdown(dom, reason as u8)),
            Err(e) => Action::Ret(efault(e)),
        },
        SCHEDOP_SHUTDOWN_CODE => match guest::read_obj::<u32>(vcpu, p, arg) {
            Ok(reason) => {
                dom.shutdown_code.get_or_insert(reason as u8);
                Action::Ret(0)
            }
            Err(e) => Action::Ret(efault(e)),
        },
        SCHEDOP_POLL => do_poll(vcpu, dom, p, arg),
        SCHEDOP_REMOTE_SHUTDOWN => match guest::read_obj::<SchedRemoteShutdown>(vcpu, p, arg) {
            // No other domain exists for the engine, and Xen's lookup by id does not
            // resolve DOMID_SELF.
            Ok(_) => Action::Ret(-ESRCH),
            Err(e) => Action::Ret(efault(e)),
        },
        SCHEDOP_PIN_OVERRIDE => Action::Ret(-EPERM),
        _ => Action::Ret(-ENOSYS),
    }
}

/// A `SCHEDOP_poll` that found none of its ports pending: the vCPU blocks until one of
/// them is, until any event marks an upcall pending (Xen's `vcpu_kick` unblocks a
/// polling vCPU too), or until the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWait {
    /// Absolute system time at which the poll ends anyway (`sched_poll.timeout`).
    pub deadline: Option<u64>,
    ports: [u32; POLL_MAX_PORTS as usize],
    nr: usize,
}

impl PollWait {
    /// The polled ports.
    pub fn ports(&self) -> &[u32] {
        &self.ports[..self.nr]
    }
}

fn do_poll(vcpu: &mut Vcpu, dom: &mut Domain, p: &mut dyn Platform, arg: u64) -> Action {
    let sp: SchedPoll = match guest::read_obj(vcpu, p, arg) {
        Ok(s) => s,
        Err(e) => return Action::Ret(efault(e)),
    };
    if sp.nr_ports > POLL_MAX_PORTS {
        return Action::Ret(-EINVAL);
    }
    if !addr_ok(sp.ports) {
        return Action::Ret(-EFAULT);
    }
    let mut vi = [0u8; 2];
    if p.read_phys(vcpu.vcpu_info_gpa, &mut vi).is_err() {
        return Action::Done(Outcome::Crash(CrashReason::BadVcpuInfo));
    }
    // local_events_need_delivery: pending and not masked.
    if vi[0] != 0 && vi[1] == 0 {
        return Action::Ret(0);
    }
    let mut wait = PollWait {
        deadline: (sp.timeout != 0).then_some(sp.timeout),
        ports: [0; POLL_MAX_PORTS as usize],
        nr: sp.nr_ports as usize,
    };
    for i in 0..wait.nr {
        let port: u32 = match guest::read_obj(vcpu, p, sp.ports.wrapping_add(i as u64 * 4)) {
            Ok(v) => v,
            Err(e) => return Action::Ret(efault(e)),
        };
        if port >= EVTCHN_2L_NR_CHANNELS {
            return Action::Ret(-EINVAL);
        }
        match crate::evtchn::port_pending(dom, p, port).ok_or(CrashReason::BadVcpuInfo) {
            Ok(true) => return Action::Ret(0),
            Ok(false) => wait.ports[i] = port,
            Err(r) => return Action::Done(Outcome::Crash(r)),
        }
    }
    if wait.deadline.is_some_and(|d| d <= p.system_time_ns()) {
        return Action::Ret(0);
    }
    vcpu.poll = Some(wait);
    if let Some(slot) = dom.vcpu_mut(vcpu.id) {
        slot.polling = true;
    }
    Action::RetThen(0, Outcome::Block)
}

/// Whether a blocked vCPU wakes at system time `now`: an event marked its upcall pending,
/// or it polls and one of its ports is pending or the poll timed out. Ends the poll when
/// it wakes.
pub fn unblock_due(vcpu: &mut Vcpu, dom: &mut Domain, p: &dyn Platform, now: u64) -> bool {
    let wake = crate::evtchn::event_pending(vcpu, p)
        || vcpu.poll.is_some_and(|w| {
            w.deadline.is_some_and(|d| d <= now)
                || w.ports()
                    .iter()
                    .any(|&port| crate::evtchn::port_pending(dom, p, port).unwrap_or(true))
        });
    if wake {
        vcpu.poll = None;
        if let Some(slot) = dom.vcpu_mut(vcpu.id) {
            slot.polling = false;
        }
    }
    wake
}

/// `sched_op_compat`: the pre-3.0.2 form, shutdown reason in the argument itself.
fn do_sched_op_compat(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    cmd: i32,
    arg: u64,
) -> Action {
    match i64::from(cmd) as u64 {
        SCHEDOP_YIELD | SCHEDOP_BLOCK => do_sched_op(vcpu, dom, p, cmd, 0),
        SCHEDOP_SHUTDOWN => Action::RetThen(0, domain_shutdown(dom, arg as u8)),
        _ => Action::Ret(-ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use zerocopy::IntoBytes;

    fn call(
        v: &mut Vcpu,
        d: &mut crate::Domain,
        p: &mut FakePlatform,
        s: &mut Stats,
        nr: u64,
        args: [u64; 5],
    ) -> (Outcome, GuestRegs, GuestRegs) {
        let mut r = distinct_regs();
        r.rax = nr;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        let before = r;
        let out = crate::syscall_entry(v, d, &mut r, p, s);
        (out, before, r)
    }

    /// Calls and checks that only rax changed; returns (outcome, rax as i64).
    fn hcall(
        v: &mut Vcpu,
        d: &mut crate::Domain,
        p: &mut FakePlatform,
        nr: u64,
        args: [u64; 5],
    ) -> (Outcome, i64) {
        let mut s = Stats::new();
        let (out, before, after) = call(v, d, p, &mut s, nr, args);
        let mut a = after;
        a.rax = before.rax;
        assert_eq!(a, before, "hypercall {nr} changed registers other than rax");
        assert_eq!(s.hypercalls[nr as usize], 1);
        let rec = s.recent_iter().last().copied().unwrap();
        assert_eq!(rec.nr, nr);
        assert_eq!(rec.args, args);
        assert_eq!(rec.result, after.rax);
        (out, after.rax as i64)
    }

    fn ret(
        v: &mut Vcpu,
        d: &mut crate::Domain,
        p: &mut FakePlatform,
        nr: u64,
        args: [u64; 5],
    ) -> i64 {
        let (out, rv) = hcall(v, d, p, nr, args);
        assert_eq!(out, Outcome::Resume);
        rv
    }

    fn put(p: &mut FakePlatform, v: &Vcpu, va: u64, bytes: &[u8]) {
        guest::copy_to_guest(v, p, va, bytes).unwrap();
    }

    fn get(p: &FakePlatform, v: &Vcpu, va: u64, n: usize) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; n];
        guest::copy_from_guest(v, p, va, &mut b).unwrap();
        b
    }

    fn ti(vector: u8, flags: u8, cs: u16, address: u64) -> TrapInfo {
        TrapInfo {
            vector,
            flags,
            cs,
            _pad: 0,
            address,
        }
    }

    #[test]
    fn unknown_and_unimplemented_are_enosys_and_counted() {
        let (mut v, mut d, mut p) = setup();
        let mut s = Stats::new();
        for nr in [hc::GRANT_TABLE_OP, 63, 64, 1000, u64::MAX] {
            let (out, before, after) = call(&mut v, &mut d, &mut p, &mut s, nr, [1, 2, 3, 4, 5]);
            assert_eq!(out, Outcome::Resume);
            assert_eq!(after.rax as i64, -ENOSYS);
            let mut a = after;
            a.rax = before.rax;
            assert_eq!(a, before);
        }
        assert_eq!(s.enosys_total, 5);
        assert_eq!(s.enosys[hc::GRANT_TABLE_OP as usize], 1);
        assert_eq!(s.hypercalls_out_of_range, 3);
    }

    #[test]
    fn set_trap_table() {
        let (mut v, mut d, mut p) = setup();
        let table = [
            ti(14, 4, 0xe030, 0xffff_ffff_8100_0e00),
            ti(0x80, 3, 0xe033, 0x8000),
            ti(0, 0, 0, 0),
        ];
        for (i, t) in table.iter().enumerate() {
            put(&mut p, &v, DATA_VA + i as u64 * 16, t.as_bytes());
        }
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_TRAP_TABLE,
                [DATA_VA, 0, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            v.trap_table[14],
            ti(14, 4, 0xe033, 0xffff_ffff_8100_0e00),
            "RPL fixed up to 3"
        );
        assert_eq!(v.trap_table[0x80].address, 0x8000);
        assert_eq!(v.trap_table[0].address, 0);
        // NULL clears.
        assert_eq!(ret(&mut v, &mut d, &mut p, hc::SET_TRAP_TABLE, [0; 5]), 0);
        assert!(v.trap_table.iter().all(|t| t.address == 0));
        // Bad pointer; non-canonical handler (entries before it stay).
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_TRAP_TABLE,
                [UNMAPPED_VA, 0, 0, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_TRAP_TABLE,
                [HYPERVISOR_VIRT_START, 0, 0, 0, 0]
            ),
            -EFAULT
        );
        put(
            &mut p,
            &v,
            DATA_VA + 16,
            ti(0x80, 3, 0xe033, 0x8000_0000_0000).as_bytes(),
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_TRAP_TABLE,
                [DATA_VA, 0, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(v.trap_table[14].address, 0xffff_ffff_8100_0e00);
    }

    #[test]
    fn set_trap_table_continuation() {
        let (mut v, mut d, mut p) = setup();
        // Preempted after 256 entries (the check follows each entry, as Xen's).
        p.preempt_after = Some(256);
        // 300 entries (vector = i % 256) and a terminator, across two pages.
        for i in 0..300u64 {
            put(
                &mut p,
                &v,
                DATA_VA + i * 16,
                ti(i as u8, 0, 0xe033, 0x1000 + i).as_bytes(),
            );
        }
        put(&mut p, &v, DATA_VA + 300 * 16, ti(0, 0, 0, 0).as_bytes());
        let mut s = Stats::new();
        let (out, before, after) = call(
            &mut v,
            &mut d,
            &mut p,
            &mut s,
            hc::SET_TRAP_TABLE,
            [DATA_VA, 0, 0, 0, 0],
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(after.rip, before.rip - 2, "rewound onto the syscall");
        assert_eq!(after.rax, hc::SET_TRAP_TABLE);
        assert_eq!(after.rdi, DATA_VA + 256 * 16);
        assert_eq!(
            (after.rsi, after.rdx, after.r10, after.r8),
            (before.rsi, before.rdx, before.r10, before.r8),
            "only the pointer is rewritten"
        );
        assert_eq!(s.continuations, 1);
        let mut r = after;
        r.rip += 2; // the guest re-executes the syscall
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
            Outcome::Resume
        );
        assert_eq!(r.rax, 0);
        assert_eq!(r.rip, before.rip);
        assert_eq!(v.trap_table[43].address, 0x1000 + 256 + 43);
        assert_eq!(v.trap_table[200].address, 0x1000 + 200);
    }

    #[test]
    fn stack_switch() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::STACK_SWITCH,
                [0xe028, 0x1234_5678, 0, 0, 0]
            ),
            0
        );
        assert_eq!(v.kernel_ss, 0xe02b);
        assert_eq!(v.kernel_sp, 0x1234_5678);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::STACK_SWITCH,
                [0xe02b, 0x10, 0, 0, 0]
            ),
            0
        );
        assert_eq!(v.kernel_ss, 0xe02b);
    }

    #[test]
    fn set_callbacks() {
        let (mut v, mut d, mut p) = setup();
        v.syscall_callback.flags = 1;
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_CALLBACKS,
                [0x100, 0x8000_0000_0000, 0x300, 0, 0]
            ),
            0
        );
        assert_eq!(
            v.event_callback,
            Callback {
                address: 0x100,
                flags: 0
            }
        );
        assert_eq!(
            v.failsafe_callback.address, 0,
            "non-canonical silently ignored"
        );
        assert_eq!(
            v.syscall_callback,
            Callback {
                address: 0x300,
                flags: 0
            }
        );
    }

    #[test]
    fn callback_op() {
        let (mut v, mut d, mut p) = setup();
        let reg = |p: &mut FakePlatform, v: &Vcpu, kind: u16, flags: u16, address: u64| {
            put(
                p,
                v,
                DATA_VA,
                CallbackRegister {
                    kind,
                    flags,
                    _pad: 0,
                    address,
                }
                .as_bytes(),
            );
        };
        for (kind, addr) in [
            (0u16, 0x10u64),
            (1, 0x11),
            (2, 0x12),
            (7, 0x17),
            (5, 0x15),
            (4, 0x14),
        ] {
            reg(&mut p, &v, kind, 1, addr);
            assert_eq!(
                ret(
                    &mut v,
                    &mut d,
                    &mut p,
                    hc::CALLBACK_OP,
                    [CALLBACKOP_REGISTER, DATA_VA, 0, 0, 0]
                ),
                0
            );
        }
        assert_eq!(
            v.event_callback,
            Callback {
                address: 0x10,
                flags: 1
            }
        );
        assert_eq!(v.failsafe_callback.address, 0x11);
        assert_eq!(
            v.syscall_callback,
            Callback {
                address: 0x12,
                flags: 1
            }
        );
        assert_eq!(v.syscall32_callback.address, 0x17);
        assert_eq!(v.sysenter_callback.address, 0x15);
        assert_eq!(v.nmi_callback.address, 0x14);
        assert_eq!(v.trap_table[2], ti(2, 4, 0xe033, 0x14));
        reg(&mut p, &v, 3, 0, 0x10);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_REGISTER, DATA_VA, 0, 0, 0]
            ),
            -ENOSYS
        );
        reg(&mut p, &v, 0, 0, 0xffff_0000_0000_0000);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_REGISTER, DATA_VA, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(v.event_callback.address, 0x10);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_REGISTER, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        // Unregister.
        for kind in [0u16, 1, 2, 5, 7] {
            put(
                &mut p,
                &v,
                DATA_VA,
                CallbackUnregister { kind, _unused: 0 }.as_bytes(),
            );
            assert_eq!(
                ret(
                    &mut v,
                    &mut d,
                    &mut p,
                    hc::CALLBACK_OP,
                    [CALLBACKOP_UNREGISTER, DATA_VA, 0, 0, 0]
                ),
                -EINVAL
            );
        }
        put(
            &mut p,
            &v,
            DATA_VA,
            CallbackUnregister {
                kind: 4,
                _unused: 0,
            }
            .as_bytes(),
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_UNREGISTER, DATA_VA, 0, 0, 0]
            ),
            0
        );
        assert_eq!(v.trap_table[2].address, 0);
        assert_eq!(v.nmi_callback.address, 0);
        put(
            &mut p,
            &v,
            DATA_VA,
            CallbackUnregister {
                kind: 9,
                _unused: 0,
            }
            .as_bytes(),
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_UNREGISTER, DATA_VA, 0, 0, 0]
            ),
            -ENOSYS
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [CALLBACKOP_UNREGISTER, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CALLBACK_OP,
                [2, DATA_VA, 0, 0, 0]
            ),
            -ENOSYS
        );
    }

    #[test]
    fn fpu_taskswitch() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::FPU_TASKSWITCH, [1, 0, 0, 0, 0]),
            0
        );
        assert!(v.cr0_ts && v.hw_state().cr0_ts);
        // Only the low 32 bits count (int argument).
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::FPU_TASKSWITCH,
                [1 << 32, 0, 0, 0, 0]
            ),
            0
        );
        assert!(!v.cr0_ts);
    }

    #[test]
    fn debugregs() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(v.debugreg[6], DR6_DEFAULT);
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [7, 0, 0, 0, 0]),
            DR7_DEFAULT as i64
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [0, 0xffff_ffff_8100_0000, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [0, 0, 0, 0, 0]) as u64,
            0xffff_ffff_8100_0000
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [3, HYPERVISOR_VIRT_START, 0, 0, 0]
            ),
            -EPERM
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [3, 0x8000_0000_0000, 0, 0, 0]
            ),
            -EPERM
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [6, 1 << 32, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [6, 0x1001, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [6, 0, 0, 0, 0]),
            0xffff_0ff1
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [4, 0, 0, 0, 0]),
            0xffff_0ff1,
            "DR4 aliases DR6"
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [7, 1 << 13, 0, 0, 0]
            ),
            -EPERM
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [7, 0x2_0001, 0, 0, 0]
            ),
            -EPERM,
            "I/O breakpoint"
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [7, 1 << 40, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_DEBUGREG,
                [5, 0x1_d801, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [7, 0, 0, 0, 0]),
            0x1_0401 | 0x400,
            "reserved bits fixed"
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [5, 0, 0, 0, 0]),
            0x1_0401
        );
        for reg in [8u64, u64::MAX, 0xffff_ffff] {
            assert_eq!(
                ret(&mut v, &mut d, &mut p, hc::SET_DEBUGREG, [reg, 0, 0, 0, 0]),
                -ENODEV
            );
            assert_eq!(
                ret(&mut v, &mut d, &mut p, hc::GET_DEBUGREG, [reg, 0, 0, 0, 0]),
                -ENODEV
            );
        }
    }

    #[test]
    fn vm_assist() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [0, 2, 0, 0, 0]),
            0
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [0, 32, 0, 0, 0]),
            0
        );
        assert_eq!(d.vm_assist, (1 << 2) | (1 << 32));
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [1, 2, 0, 0, 0]),
            0
        );
        assert_eq!(d.vm_assist, 1 << 32);
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [0, 6, 0, 0, 0]),
            -EINVAL
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [0, 64, 0, 0, 0]),
            -EINVAL
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [7, 64, 0, 0, 0]),
            -EINVAL,
            "type checked first"
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::VM_ASSIST, [7, 2, 0, 0, 0]),
            -ENOSYS
        );
    }

    #[test]
    fn set_segment_base() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [0, 0x7000, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [1, 0x7100, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [2, 0xffff_8880_0000_0000, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            (v.fs_base, v.gs_base_user, v.gs_base_kernel),
            (0x7000, 0x7100, 0xffff_8880_0000_0000)
        );
        assert_eq!(v.hw_state().gs_base, 0xffff_8880_0000_0000);
        for which in 0..3 {
            assert_eq!(
                ret(
                    &mut v,
                    &mut d,
                    &mut p,
                    hc::SET_SEGMENT_BASE,
                    [which, 0x8000_0000_0000, 0, 0, 0]
                ),
                -EINVAL
            );
        }
        assert_eq!(v.fs_base, 0x7000);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [3, 0x63, 0, 0, 0]
            ),
            0
        );
        assert_eq!((v.gs_sel_user, v.gs_base_user), (0x63, 0));
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [3, 0x60, 0, 0, 0]
            ),
            0
        );
        assert_eq!(v.gs_sel_user, 0x63, "RPL fixed up");
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [3, 0x1_0000, 0, 0, 0]
            ),
            0
        );
        assert_eq!(v.gs_sel_user, 0, "selector is 16 bits");
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [4, 0, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SET_SEGMENT_BASE,
                [(1 << 32) | segbase::FS, 0x10, 0, 0, 0]
            ),
            0,
            "which is 32 bits"
        );
    }

    fn iret_frame(p: &mut FakePlatform, v: &Vcpu, rsp: u64, ctx: &IretContext) {
        put(p, v, rsp, ctx.as_bytes());
    }

    #[test]
    fn iret_to_user() {
        let (mut v, mut d, mut p) = setup();
        v.user_cr3 = USER_L4;
        v.gs_base_user = 0x99;
        p.mem[(SHARED_INFO + 1) as usize] = 1;
        let rsp = KSTACK_TOP - 0x100;
        let ctx = IretContext {
            rax: 0xaaa,
            r11: 0xbbb,
            rcx: 0xccc,
            flags: 0,
            rip: USER_VA + 4,
            cs: 0xe033,
            rflags: 0x3202 | X86_EFLAGS_VM, // IF set, IOPL 3, VM
            rsp: USER_VA + 0x800,
            ss: 0xe028,
        };
        iret_frame(&mut p, &v, rsp, &ctx);
        let mut s = Stats::new();
        let mut r = distinct_regs();
        r.rax = hc::IRET;
        r.rsp = rsp;
        let before = r;
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
            Outcome::Resume
        );
        assert_eq!(v.mode, Mode::User);
        assert_eq!(v.hw_state().cr3, USER_L4);
        assert_eq!(v.hw_state().gs_base, 0x99);
        assert_eq!(
            (r.rax, r.r11, r.rcx, r.rip, r.cs, r.rsp, r.ss),
            (
                0xaaa,
                0xbbb,
                0xccc,
                USER_VA + 4,
                0xe033,
                USER_VA + 0x800,
                0xe02b
            )
        );
        assert_eq!(r.rflags, 0x202);
        assert_eq!(
            p.mem[(SHARED_INFO + 1) as usize],
            0,
            "IF set unmasks events"
        );
        let mut a = r;
        (a.rax, a.r11, a.rcx, a.rip, a.cs, a.rsp, a.ss, a.rflags) = (
            before.rax,
            before.r11,
            before.rcx,
            before.rip,
            before.cs,
            before.rsp,
            before.ss,
            before.rflags,
        );
        assert_eq!(a, before);
        assert_eq!(s.recent_iter().last().unwrap().result, 0xaaa);
    }

    #[test]
    fn iret_in_syscall_and_to_kernel() {
        let (mut v, mut d, mut p) = setup();
        let rsp = KSTACK_TOP - 0x100;
        let ctx = IretContext {
            rax: 1,
            r11: 2,
            rcx: 3,
            flags: VGCF_IN_SYSCALL,
            rip: 0xffff_ffff_8100_0000,
            cs: 0xe030,
            rflags: 0x2, // events masked
            rsp: KSTACK_TOP - 0x40,
            ss: 0xe02b,
        };
        iret_frame(&mut p, &v, rsp, &ctx);
        let mut r = distinct_regs();
        r.rax = hc::IRET;
        r.rsp = rsp;
        let before = r;
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Resume
        );
        assert_eq!(v.mode, Mode::Kernel);
        assert_eq!(
            (r.rcx, r.r11),
            (before.rcx, before.r11),
            "VGCF_in_syscall keeps rcx/r11"
        );
        assert_eq!(r.cs, 0xe033);
        assert_eq!(r.rflags, 0x202);
        assert_eq!(p.mem[(SHARED_INFO + 1) as usize], 1);
    }

    #[test]
    fn iret_failures_crash() {
        let (mut v, mut d, mut p) = setup();
        let mut r = distinct_regs();
        r.rax = hc::IRET;
        r.rsp = UNMAPPED_VA;
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Crash(CrashReason::BadIret)
        );
        let rsp = KSTACK_TOP - 0x100;
        iret_frame(
            &mut p,
            &v,
            rsp,
            &IretContext {
                cs: 0xe033,
                rip: 1,
                ..Default::default()
            },
        );
        let mut r = distinct_regs();
        r.rax = hc::IRET;
        r.rsp = rsp;
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Crash(CrashReason::BadIret),
            "user mode without a user pagetable"
        );
        assert_eq!(v.mode, Mode::Kernel);
    }

    #[test]
    fn console_write() {
        let (mut v, mut d, mut p) = setup();
        let msg: std::vec::Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        put(&mut p, &v, DATA_VA + 0xf00, &msg);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 300, DATA_VA + 0xf00, 0, 0]
            ),
            0
        );
        assert_eq!(p.console_out, msg);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 0, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 10, UNMAPPED_VA, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [7, 10, DATA_VA, 0, 0]
            ),
            -ENOSYS
        );
        // count is 32 bits: the upper half is ignored.
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 1 << 32, UNMAPPED_VA, 0, 0]
            ),
            0
        );
        // Up to the last byte of the address space, and past it.
        put(&mut p, &v, TOP_VA + 0xff0, b"0123456789abcdef");
        p.console_out.clear();
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 16, TOP_VA + 0xff0, 0, 0]
            ),
            0
        );
        assert_eq!(p.console_out, b"0123456789abcdef");
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_WRITE, 17, TOP_VA + 0xff0, 0, 0]
            ),
            -EFAULT
        );
    }

    #[test]
    fn console_read() {
        let (mut v, mut d, mut p) = setup();
        p.console_in = b"hello, world".to_vec();
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_READ, 5, DATA_VA, 0, 0]
            ),
            5
        );
        assert_eq!(get(&p, &v, DATA_VA, 5), b"hello");
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_READ, 1 << 31, DATA_VA, 0, 0]
            ),
            -E2BIG
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_READ, 5, RO_VA, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(p.console_in, b", world", "a faulting read consumes nothing");
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_READ, 100, DATA_VA, 0, 0]
            ),
            7
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::CONSOLE_IO,
                [CONSOLEIO_READ, 100, DATA_VA, 0, 0]
            ),
            0
        );
    }

    #[test]
    fn xen_version() {
        let (mut v, mut d, mut p) = setup();
        let x = |v: &mut Vcpu, d: &mut crate::Domain, p: &mut FakePlatform, cmd: u64, arg: u64| {
            ret(v, d, p, hc::XEN_VERSION, [cmd, arg, 0, 0, 0])
        };
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_VERSION, 0), 0x4_0011);
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_EXTRAVERSION, DATA_VA), 0);
        assert_eq!(get(&p, &v, DATA_VA, 16), b".0-pvkvm\0\0\0\0\0\0\0\0");
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_CAPABILITIES, DATA_VA), 0);
        let caps = get(&p, &v, DATA_VA, 1024);
        assert_eq!(&caps[..16], b"xen-3.0-x86_64 \0");
        assert!(caps[16..].iter().all(|&b| b == 0));
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_CHANGESET, DATA_VA), 0);
        assert_eq!(get(&p, &v, DATA_VA, 6), b"pvkvm ");
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_COMPILE_INFO, DATA_VA), 0);
        assert_eq!(get(&p, &v, DATA_VA + 64, 6), b"pvkvm\0");
        assert_eq!(
            x(&mut v, &mut d, &mut p, XENVER_PLATFORM_PARAMETERS, DATA_VA),
            0
        );
        assert_eq!(get(&p, &v, DATA_VA, 8), HYPERVISOR_VIRT_START.to_le_bytes());
        put(&mut p, &v, DATA_VA, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_GET_FEATURES, DATA_VA), 0);
        let sub = u32::from_le_bytes(get(&p, &v, DATA_VA + 4, 4).try_into().unwrap());
        assert_eq!(sub, xen_abi::features::PV_DOMU_SUBMAP0 & !(1 << 4));
        d.vm_assist |= 1 << vmassist::TYPE_PAE_EXTENDED_CR3;
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_GET_FEATURES, DATA_VA), 0);
        let sub = u32::from_le_bytes(get(&p, &v, DATA_VA + 4, 4).try_into().unwrap());
        assert_eq!(sub, xen_abi::features::PV_DOMU_SUBMAP0);
        put(&mut p, &v, DATA_VA, &1u32.to_le_bytes());
        assert_eq!(
            x(&mut v, &mut d, &mut p, XENVER_GET_FEATURES, DATA_VA),
            -EINVAL
        );
        assert_eq!(
            x(&mut v, &mut d, &mut p, XENVER_GET_FEATURES, RO_VA),
            -EFAULT,
            "read ok, write-back faults"
        );
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_PAGESIZE, 0), 4096);
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_PAGESIZE, DATA_VA), -EINVAL);
        put(&mut p, &v, DATA_VA, &[0xff; 16]);
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_GUEST_HANDLE, DATA_VA), 0);
        assert_eq!(get(&p, &v, DATA_VA, 16), [0u8; 16]);
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_COMMANDLINE, DATA_VA), 0);
        assert_eq!(get(&p, &v, DATA_VA, 9), b"<denied>\0");
        assert_eq!(x(&mut v, &mut d, &mut p, XENVER_BUILD_ID, DATA_VA), -EPERM);
        assert_eq!(x(&mut v, &mut d, &mut p, 11, DATA_VA), -ENOSYS);
        assert_eq!(x(&mut v, &mut d, &mut p, u64::MAX, DATA_VA), -ENOSYS);
        // cmd is an int: the upper half is ignored.
        assert_eq!(x(&mut v, &mut d, &mut p, 1 << 32, 0), 0x4_0011);
        for cmd in [1, 2, 3, 4, 5, 6, 8, 9] {
            assert_eq!(
                x(&mut v, &mut d, &mut p, cmd, UNMAPPED_VA),
                -EFAULT,
                "sub-op {cmd}"
            );
        }
    }

    #[test]
    fn sched_op() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_YIELD, 0, 0, 0, 0]
            ),
            (Outcome::Yield, 0)
        );
        p.mem[(SHARED_INFO + 1) as usize] = 1;
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_BLOCK, 0, 0, 0, 0]
            ),
            (Outcome::Block, 0)
        );
        assert_eq!(p.mem[(SHARED_INFO + 1) as usize], 0, "block enables events");
        put(&mut p, &v, DATA_VA, &0x103u32.to_le_bytes());
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_SHUTDOWN, DATA_VA, 0, 0, 0]
            ),
            (Outcome::Shutdown(3), 0)
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_SHUTDOWN, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_SHUTDOWN_CODE, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_REMOTE_SHUTDOWN, DATA_VA, 0, 0, 0]
            ),
            -ESRCH
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_REMOTE_SHUTDOWN, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_PIN_OVERRIDE, DATA_VA, 0, 0, 0]
            ),
            -EPERM
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_WATCHDOG, DATA_VA, 0, 0, 0]
            ),
            -ENOSYS
        );
        assert_eq!(
            ret(&mut v, &mut d, &mut p, hc::SCHED_OP, [99, DATA_VA, 0, 0, 0]),
            -ENOSYS
        );
    }

    #[test]
    fn shutdown_code_overrides_reason() {
        let (mut v, mut d, mut p) = setup();
        put(&mut p, &v, DATA_VA, &SHUTDOWN_SUSPEND.to_le_bytes());
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_SHUTDOWN_CODE, DATA_VA, 0, 0, 0]
            ),
            0
        );
        put(&mut p, &v, DATA_VA, &SHUTDOWN_REBOOT.to_le_bytes());
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_SHUTDOWN_CODE, DATA_VA, 0, 0, 0]
            ),
            0
        );
        assert_eq!(
            d.shutdown_code,
            Some(SHUTDOWN_SUSPEND as u8),
            "first code wins"
        );
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP_COMPAT,
                [SCHEDOP_SHUTDOWN, 0, 0, 0, 0]
            ),
            (Outcome::Shutdown(SHUTDOWN_SUSPEND), 0)
        );
    }

    #[test]
    fn sched_op_compat() {
        let (mut v, mut d, mut p) = setup();
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP_COMPAT,
                [SCHEDOP_YIELD, 0, 0, 0, 0]
            ),
            (Outcome::Yield, 0)
        );
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP_COMPAT,
                [SCHEDOP_BLOCK, 0, 0, 0, 0]
            ),
            (Outcome::Block, 0)
        );
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP_COMPAT,
                [SCHEDOP_SHUTDOWN, 0x101, 0, 0, 0]
            ),
            (Outcome::Shutdown(1), 0)
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP_COMPAT,
                [SCHEDOP_POLL, 0, 0, 0, 0]
            ),
            -ENOSYS
        );
    }

    #[test]
    fn sched_poll() {
        let (mut v, mut d, mut p) = setup();
        let poll_until = |p: &mut FakePlatform, v: &Vcpu, ports: u64, nr: u32, timeout: u64| {
            put(
                p,
                v,
                DATA_VA,
                SchedPoll {
                    ports,
                    nr_ports: nr,
                    _pad: 0,
                    timeout,
                }
                .as_bytes(),
            );
        };
        let poll =
            |p: &mut FakePlatform, v: &Vcpu, ports: u64, nr: u32| poll_until(p, v, ports, nr, 0);
        put(
            &mut p,
            &v,
            DATA_VA + 0x100,
            &[5u32.to_le_bytes(), 77u32.to_le_bytes()].concat(),
        );
        poll(&mut p, &v, DATA_VA + 0x100, 2);
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            (Outcome::Block, 0)
        );
        // Nothing pending: the vCPU blocks on ports 5 and 77 with no timeout, and wakes
        // when one of them becomes pending, even while masked.
        assert_eq!(
            v.poll.map(|w| (w.ports().to_vec(), w.deadline)),
            Some((std::vec![5, 77], None))
        );
        assert!(!unblock_due(&mut v, &mut d, &p, u64::MAX - 1));
        p.mem[(SHARED_INFO + 2048 + 77 / 8) as usize] = 1 << (77 % 8);
        assert!(unblock_due(&mut v, &mut d, &p, 0));
        assert_eq!(v.poll, None, "waking ends the poll");
        // With a timeout: the poll ends at that system time.
        p.mem[(SHARED_INFO + 2048 + 77 / 8) as usize] = 0;
        poll_until(&mut p, &v, DATA_VA + 0x100, 2, 5_000);
        assert_eq!(
            hcall(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            (Outcome::Block, 0)
        );
        assert_eq!(crate::time::next_deadline(&v), Some(5_000));
        assert!(!unblock_due(&mut v, &mut d, &p, 4_999));
        assert!(unblock_due(&mut v, &mut d, &p, 5_000));
        poll(&mut p, &v, DATA_VA + 0x100, 2);
        // Port 77 pending: returns at once.
        p.mem[(SHARED_INFO + 2048 + 77 / 8) as usize] = 1 << (77 % 8);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            0
        );
        // An unmasked pending upcall also ends the poll.
        p.mem[(SHARED_INFO + 2048 + 77 / 8) as usize] = 0;
        p.mem[SHARED_INFO as usize] = 1;
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            0
        );
        p.mem[SHARED_INFO as usize] = 0;
        poll(&mut p, &v, DATA_VA + 0x100, 129);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            -EINVAL
        );
        poll(&mut p, &v, HYPERVISOR_VIRT_START, 1);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        poll(&mut p, &v, UNMAPPED_VA, 1);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            -EFAULT
        );
        put(&mut p, &v, DATA_VA + 0x100, &4096u32.to_le_bytes());
        poll(&mut p, &v, DATA_VA + 0x100, 1);
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, DATA_VA, 0, 0, 0]
            ),
            -EINVAL
        );
        assert_eq!(
            ret(
                &mut v,
                &mut d,
                &mut p,
                hc::SCHED_OP,
                [SCHEDOP_POLL, UNMAPPED_VA, 0, 0, 0]
            ),
            -EFAULT
        );
    }
}
