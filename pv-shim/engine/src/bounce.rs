//! Delivering exceptions, software interrupts and guest-user `syscall`s to the guest
//! kernel, as Xen's `create_bounce_frame` does for a 64-bit PV vCPU.
//!
//! A PV kernel has no IDT of its own: it hands Xen a trap table and callbacks, and Xen
//! "bounces" each event by writing an iret-style frame on the guest kernel stack and
//! resuming the guest at the registered handler. The frame layout (top of stack first:
//! RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS) and its quirks (the saved event mask
//! in CS bits 32-39, RFLAGS.IF standing for "events were unmasked") are ABI: Linux's
//! `xen_*` entry stubs pop RCX and R11 and then run the native handler on what remains.

use xen_abi::contract::vector_has_error_code;
use xen_abi::xen::selector::{
    FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_RING3_CS32, FLAT_USER_CS, FLAT_USER_SS,
};
use xen_abi::xen::vmassist::TYPE_ARCHITECTURAL_IOPL;
use xen_abi::xen::{vcpu_info, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

use crate::guest::copy_to_guest;
use crate::{hypercall, CrashReason, Domain, GuestRegs, Mode, Outcome, Platform, Stats, Vcpu};

pub(crate) const X86_EFLAGS_TF: u64 = 1 << 8;
pub(crate) const X86_EFLAGS_IF: u64 = 1 << 9;
pub(crate) const X86_EFLAGS_DF: u64 = 1 << 10;
pub(crate) const X86_EFLAGS_IOPL: u64 = 3 << 12;
pub(crate) const X86_EFLAGS_NT: u64 = 1 << 14;
pub(crate) const X86_EFLAGS_RF: u64 = 1 << 16;
pub(crate) const X86_EFLAGS_VM: u64 = 1 << 17;
pub(crate) const X86_EFLAGS_AC: u64 = 1 << 18;

const TRAP_NMI: u8 = 2;
const TRAP_INVALID_OP: u8 = 6;
const TRAP_NO_DEVICE: u8 = 7;
const TRAP_GP_FAULT: u8 = 13;
const TRAP_PAGE_FAULT: u8 = 14;
/// #GP error code bit: the fault happened while delivering an external event.
const X86_XEC_EXT: u64 = 1 << 0;
/// #GP error code bit: the selector index names an IDT gate (`int n` on a DPL0 gate).
const X86_XEC_IDT: u64 = 1 << 1;
/// #PF error code bit: the access came from user mode.
const PFEC_USER_MODE: u64 = 1 << 2;
/// `int n` is `cd ib`: the #GP frame points at it, the guest expects to resume after it.
const INT_N_LEN: u64 = 2;
/// `syscall` is `0f 05`.
pub(crate) const SYSCALL_LEN: u64 = 2;

/// An exception as the host caught it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// Vector.
    pub vector: u8,
    /// Error code the CPU pushed. Whether the guest frame carries an error code is decided
    /// by the vector (as the CPU does), so a host that always passes `Some` is fine; a
    /// missing code for a vector that has one is delivered as 0.
    pub error_code: Option<u64>,
    /// CR2 at the fault (used for #PF only).
    pub cr2: u64,
}

/// What to deliver: Xen's `struct trap_bounce`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrapBounce {
    /// Handler; 0 means none is registered.
    pub eip: u64,
    /// Error code to push (`TBF_EXCEPTION_ERRCODE`); Xen pushes it as 32 bits.
    pub error_code: Option<u32>,
    /// `TBF_INTERRUPT`: entering the handler masks events.
    pub interrupt: bool,
}

fn read_upcall_mask(vcpu: &Vcpu, p: &dyn Platform) -> Result<u8, CrashReason> {
    let mut b = [0u8; 1];
    p.read_phys(vcpu.vcpu_info_gpa + vcpu_info::UPCALL_MASK, &mut b)
        .map_err(|_| CrashReason::BadVcpuInfo)?;
    Ok(b[0])
}

pub(crate) fn write_upcall_mask(
    vcpu: &Vcpu,
    p: &mut dyn Platform,
    mask: u8,
) -> Result<(), CrashReason> {
    p.write_phys(vcpu.vcpu_info_gpa + vcpu_info::UPCALL_MASK, &[mask])
        .map_err(|_| CrashReason::BadVcpuInfo)
}

/// Writes the bounce frame for `tb` and points the registers at its handler.
///
/// From guest user mode the frame goes to the top of the registered kernel stack and the
/// vCPU switches to kernel mode first (so the frame is written through the kernel
/// pagetable, as on Xen); from kernel mode it goes below the interrupted rsp, and the
/// saved CS has its RPL cleared, which is how the guest tells the two apart.
pub(crate) fn create_bounce_frame(
    vcpu: &mut Vcpu,
    dom: &Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    tb: &TrapBounce,
) -> Result<(), CrashReason> {
    let mut saved_cs = regs.cs & 0xffff;
    let stack = match vcpu.mode {
        Mode::User => {
            vcpu.toggle_guest_mode();
            vcpu.kernel_sp
        }
        Mode::Kernel => {
            saved_cs &= !3;
            regs.rsp
        }
    } & !0xf;
    // Xen refuses a frame that would reach into its own area: the top must be at or
    // below the hole's start, or the whole frame above its end.
    if stack > HYPERVISOR_VIRT_START && stack < HYPERVISOR_VIRT_END + 8 * 8 {
        return Err(CrashReason::BadKernelStack { rsp: stack });
    }
    if tb.eip == 0 {
        // Callers report the specific reason; this is the last line of defence.
        return Err(CrashReason::DoubleFault);
    }

    let saved_mask = read_upcall_mask(vcpu, p)?;
    if tb.interrupt {
        write_upcall_mask(vcpu, p, saved_mask | 1)?;
    }
    let mut rflags = regs.rflags & !(X86_EFLAGS_IF | X86_EFLAGS_IOPL);
    if saved_mask == 0 {
        rflags |= X86_EFLAGS_IF;
    }
    if dom.vm_assist & (1 << TYPE_ARCHITECTURAL_IOPL) != 0 {
        rflags |= vcpu.iopl & X86_EFLAGS_IOPL;
    }

    let mut frame = [0u64; 8];
    let mut n = 0;
    let mut push = |w: u64| {
        frame[n] = w;
        n += 1;
    };
    push(regs.rcx);
    push(regs.r11);
    if let Some(ec) = tb.error_code {
        push(u64::from(ec));
    }
    push(regs.rip);
    push(saved_cs | (u64::from(saved_mask) << 32));
    push(rflags);
    push(regs.rsp);
    push(regs.ss);
    let bytes = n as u64 * 8;
    let new_rsp = stack.wrapping_sub(bytes);
    let mut buf = [0u8; 64];
    for (chunk, w) in buf.chunks_exact_mut(8).zip(frame.iter()) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    copy_to_guest(vcpu, p, new_rsp, &buf[..n * 8])
        .map_err(|_| CrashReason::BadKernelStack { rsp: new_rsp })?;

    regs.rflags &= !(X86_EFLAGS_AC | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT | X86_EFLAGS_TF);
    regs.ss = u64::from(FLAT_KERNEL_SS);
    regs.rsp = new_rsp;
    regs.cs = u64::from(FLAT_KERNEL_CS);
    regs.rip = tb.eip;
    Ok(())
}

/// Xen's `pv_inject_event`: the bounce for `vector` from the guest's trap table.
fn trap_bounce_for(vcpu: &Vcpu, vector: u8, error_code: Option<u32>) -> TrapBounce {
    let ti = &vcpu.trap_table[usize::from(vector)];
    TrapBounce {
        eip: ti.address,
        error_code,
        interrupt: ti.masks_events(),
    }
}

fn deliver(
    vcpu: &mut Vcpu,
    dom: &Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
    vector: u8,
    error_code: Option<u32>,
) -> Outcome {
    let tb = trap_bounce_for(vcpu, vector, error_code);
    if tb.eip == 0 {
        return Outcome::Crash(CrashReason::UnhandledTrap {
            vector,
            error_code: error_code.map_or(0, u64::from),
        });
    }
    match create_bounce_frame(vcpu, dom, regs, p, &tb) {
        Ok(()) => {
            stats.bounces[usize::from(vector)] += 1;
            Outcome::Resume
        }
        Err(r) => Outcome::Crash(r),
    }
}

/// Xen's `permit_softint`: which `int n` may reach a guest gate. Guest kernel code may
/// use gates of DPL 1 or more (a 64-bit PV kernel runs in ring 3 but counts as ring 1
/// here, as on Xen); guest user code only DPL 3 ones.
fn permit_softint(dpl: u8, mode: Mode) -> bool {
    dpl >= if mode == Mode::Kernel { 1 } else { 3 }
}

/// The guest took an exception (or executed `int n` on a gate the shim keeps at DPL 0).
///
/// `regs` holds the interrupted context (rip, rsp, rflags, cs, ss as the CPU saved them).
/// The host handles its own business first (privileged-instruction emulation for #GP
/// with error code 0, the forced-emulation `cpuid` #UD, pagetable-write #PF); whatever
/// reaches here goes to the guest, as Xen's `do_trap` and friends send it.
pub fn exception(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    trap: Trap,
    p: &mut dyn Platform,
    stats: &mut Stats,
) -> Outcome {
    let ec = if trap.vector < 32 && vector_has_error_code(trap.vector) {
        Some(trap.error_code.unwrap_or(0))
    } else {
        None
    };
    // Xen pushes error codes as 32 bits.
    let ec32 = ec.map(|e| e as u32);
    match trap.vector {
        TRAP_GP_FAULT => {
            let code = ec.unwrap_or(0);
            if code == 0 {
                if let Some(kind) = crate::emulate::emulate_privileged_op(vcpu, dom, regs, p) {
                    stats.count_emulated(kind);
                    return Outcome::Resume;
                }
            }
            if code & (X86_XEC_IDT | X86_XEC_EXT) == X86_XEC_IDT {
                let vector = (code >> 3) as u8;
                if permit_softint(vcpu.trap_table[usize::from(vector)].dpl(), vcpu.mode) {
                    regs.rip = regs.rip.wrapping_add(INT_N_LEN);
                    return deliver(vcpu, dom, regs, p, stats, vector, None);
                }
            }
            deliver(vcpu, dom, regs, p, stats, TRAP_GP_FAULT, ec32)
        }
        TRAP_INVALID_OP if crate::emulate::emulate_forced_cpuid(vcpu, regs, p) => {
            stats.count_emulated(crate::stats::emulated::FORCED_CPUID);
            Outcome::Resume
        }
        TRAP_NO_DEVICE => {
            // Xen bounces #NM only while the guest's virtual CR0.TS is set (and clears
            // it, as the hardware would after the guest's handler ran `clts`). Without
            // virtual TS the fault was the host's lazy FPU business: just resume.
            if !vcpu.cr0_ts {
                return Outcome::Resume;
            }
            vcpu.cr0_ts = false;
            deliver(vcpu, dom, regs, p, stats, TRAP_NO_DEVICE, None)
        }
        // Xen's M2P address, where the host would not let the table be mapped: serve the
        // guest's load, or fault as Xen's read-only mapping does.
        TRAP_PAGE_FAULT if crate::m2p::in_abi_range(trap.cr2) => {
            match crate::m2p::page_fault(vcpu, regs, trap.cr2, ec.unwrap_or(0), p) {
                crate::m2p::M2pFault::Emulated => {
                    stats.count_emulated(crate::stats::emulated::M2P_READ);
                    Outcome::Resume
                }
                crate::m2p::M2pFault::Fault { cr2, code } => {
                    bounce_page_fault(vcpu, dom, regs, p, stats, cr2, code)
                }
            }
        }
        TRAP_PAGE_FAULT
            if crate::mmu::ptwr_emulate(vcpu, dom, regs, trap.cr2, ec.unwrap_or(0), p) =>
        {
            Outcome::Resume
        }
        TRAP_PAGE_FAULT => bounce_page_fault(vcpu, dom, regs, p, stats, trap.cr2, ec.unwrap_or(0)),
        TRAP_NMI => deliver(vcpu, dom, regs, p, stats, TRAP_NMI, None),
        v => deliver(vcpu, dom, regs, p, stats, v, ec32),
    }
}

/// Bounces a #PF at `cr2` with error code `code` (Xen's `pv_inject_page_fault`).
fn bounce_page_fault(
    vcpu: &mut Vcpu,
    dom: &Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
    cr2: u64,
    code: u64,
) -> Outcome {
    vcpu.cr2 = cr2;
    if p.write_phys(vcpu.vcpu_info_gpa + vcpu_info::ARCH_CR2, &cr2.to_le_bytes())
        .is_err()
    {
        return Outcome::Crash(CrashReason::BadVcpuInfo);
    }
    // The CPU always saw a user-mode access (the guest kernel runs in ring 3); the guest
    // must see the access mode it believes it was in.
    let mut code = code & !PFEC_USER_MODE;
    if vcpu.mode == Mode::User {
        code |= PFEC_USER_MODE;
    }
    deliver(
        vcpu,
        dom,
        regs,
        p,
        stats,
        TRAP_PAGE_FAULT,
        Some(code as u32),
    )
}

/// The guest executed `syscall`.
///
/// The host has set `regs.rip` to the return address (rcx) and `regs.rflags` to the
/// flags before the instruction (r11). In guest kernel mode this is a hypercall; in guest
/// user mode it is a system call for the guest kernel, bounced to its syscall callback
/// (the 32-bit one when `regs.cs` is the compat code selector), as Xen's `lstar_enter` /
/// `cstar_enter` do.
pub fn syscall_entry(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
) -> Outcome {
    if vcpu.mode == Mode::Kernel {
        return hypercall::do_hypercall(vcpu, dom, regs, p, stats);
    }
    // Xen builds the frame with the flat user selectors, whatever the CPU loaded.
    let compat = regs.cs & 0xffff == u64::from(FLAT_RING3_CS32);
    regs.cs = u64::from(if compat {
        FLAT_RING3_CS32
    } else {
        FLAT_USER_CS
    });
    regs.ss = u64::from(FLAT_USER_SS);
    let cb = if compat {
        vcpu.syscall32_callback
    } else {
        vcpu.syscall_callback
    };
    let mask = xen_abi::callback::CALLBACKF_MASK_EVENTS;
    let tb = if cb.address != 0 {
        TrapBounce {
            eip: cb.address,
            error_code: None,
            interrupt: cb.flags & mask != 0,
        }
    } else {
        // Xen >= 4.15: no callback means #UD at the syscall instruction.
        let tb = trap_bounce_for(vcpu, TRAP_INVALID_OP, None);
        if tb.eip == 0 {
            return Outcome::Crash(CrashReason::NoSyscallCallback);
        }
        regs.rip = regs.rip.wrapping_sub(SYSCALL_LEN);
        tb
    };
    match create_bounce_frame(vcpu, dom, regs, p, &tb) {
        Ok(()) => {
            regs.rflags &= !X86_EFLAGS_DF;
            if cb.address != 0 {
                stats.syscall_bounces += 1;
            } else {
                stats.bounces[usize::from(TRAP_INVALID_OP)] += 1;
            }
            Outcome::Resume
        }
        Err(r) => Outcome::Crash(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::Callback;
    use xen_abi::xen::TrapInfo;

    fn handler(v: &mut Vcpu, vector: u8, flags: u8, address: u64) {
        v.trap_table[usize::from(vector)] = TrapInfo {
            vector,
            flags,
            cs: 0xe033,
            _pad: 0,
            address,
        };
    }

    fn frame(p: &FakePlatform, v: &Vcpu, rsp: u64, words: usize) -> std::vec::Vec<u64> {
        let mut buf = std::vec![0u8; words * 8];
        crate::guest::copy_from_guest(v, p, rsp, &mut buf).unwrap();
        buf.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn mask(p: &FakePlatform) -> u8 {
        p.mem[(SHARED_INFO + 1) as usize]
    }

    /// Registers other than the bounce's own must not change.
    fn assert_only_context_changed(before: &GuestRegs, after: &GuestRegs) {
        let mut a = *after;
        a.rip = before.rip;
        a.rsp = before.rsp;
        a.rflags = before.rflags;
        a.cs = before.cs;
        a.ss = before.ss;
        assert_eq!(&a, before);
    }

    #[test]
    fn page_fault_from_kernel() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 14, 4, 0xffff_ffff_8100_1000);
        let mut r = distinct_regs();
        r.rsp = KSTACK_TOP - 0x108; // misaligned on purpose
        r.rflags = 0x202 | X86_EFLAGS_TF | X86_EFLAGS_AC | X86_EFLAGS_IOPL;
        let before = r;
        let mut s = Stats::new();
        let out = exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 14,
                error_code: Some(0x7),
                cr2: 0xdead_b000,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(p.r64(SHARED_INFO + 16), 0xdead_b000);
        let top = (KSTACK_TOP - 0x108) & !0xf;
        assert_eq!(r.rsp, top - 8 * 8);
        let f = frame(&p, &v, r.rsp, 8);
        assert_eq!(f[0], before.rcx);
        assert_eq!(f[1], before.r11);
        assert_eq!(f[2], 0x3, "user bit cleared for a kernel-mode fault");
        assert_eq!(f[3], before.rip);
        assert_eq!(f[4], 0xe030, "RPL cleared, mask 0 in bits 32-39");
        assert_eq!(f[5], (before.rflags & !X86_EFLAGS_IOPL) | X86_EFLAGS_IF);
        assert_eq!(f[6], before.rsp);
        assert_eq!(f[7], 0xe02b);
        assert_eq!(r.rip, 0xffff_ffff_8100_1000);
        assert_eq!(r.cs, 0xe033);
        assert_eq!(r.ss, 0xe02b);
        assert_eq!(r.rflags & (X86_EFLAGS_TF | X86_EFLAGS_AC), 0);
        assert_eq!(mask(&p), 1, "trap gate with flag bit 2 masks events");
        assert_eq!(s.bounces[14], 1);
        assert_only_context_changed(&before, &r);
        assert_eq!(v.mode, Mode::Kernel);
    }

    #[test]
    fn masked_events_show_as_if_clear_and_in_cs() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 0, 0, 0x1000);
        p.mem[(SHARED_INFO + 1) as usize] = 1;
        let mut r = distinct_regs();
        let out = exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 0,
                error_code: None,
                cr2: 0,
            },
            &mut p,
            &mut Stats::new(),
        );
        assert_eq!(out, Outcome::Resume);
        let f = frame(&p, &v, r.rsp, 7);
        assert_eq!(f[3], 0xe030 | (1 << 32));
        assert_eq!(f[4] & X86_EFLAGS_IF, 0);
        assert_eq!(r.rsp, ((KSTACK_TOP - 0x100) & !0xf) - 7 * 8);
    }

    #[test]
    fn architectural_iopl_in_frame() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 0, 0, 0x1000);
        d.vm_assist |= 1 << TYPE_ARCHITECTURAL_IOPL;
        v.iopl = 1 << 12;
        let mut r = distinct_regs();
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 0,
                error_code: None,
                cr2: 0,
            },
            &mut p,
            &mut Stats::new(),
        );
        let f = frame(&p, &v, r.rsp, 7);
        assert_eq!(f[4] & X86_EFLAGS_IOPL, 1 << 12);
    }

    #[test]
    fn fault_from_user_switches_to_kernel_stack() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 14, 0, 0x2000);
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP - 8;
        v.gs_base_kernel = 0x55;
        let mut r = distinct_regs();
        r.rsp = USER_VA + 0x800;
        let before = r;
        let out = exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 14,
                error_code: Some(0x6),
                cr2: 0x10,
            },
            &mut p,
            &mut Stats::new(),
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(v.mode, Mode::Kernel);
        assert_eq!(v.hw_state().cr3, KERNEL_L4);
        assert_eq!(v.hw_state().gs_base, 0x55);
        assert_eq!(r.rsp, KSTACK_TOP - 16 - 64);
        let f = frame(&p, &v, r.rsp, 8);
        assert_eq!(f[2], 0x6 | PFEC_USER_MODE);
        assert_eq!(f[4], 0xe033, "user CS keeps RPL 3");
        assert_eq!(f[6], before.rsp);
        assert_eq!(mask(&p), 0, "gate without flag bit 2 leaves events alone");
        assert_only_context_changed(&before, &r);
    }

    #[test]
    fn unhandled_and_bad_stack() {
        let (mut v, mut d, mut p) = setup();
        let mut r = distinct_regs();
        assert_eq!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 13,
                    error_code: Some(0x18),
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Crash(CrashReason::UnhandledTrap {
                vector: 13,
                error_code: 0x18
            })
        );
        handler(&mut v, 13, 0, 0x1000);
        r.rsp = UNMAPPED_VA + 0x40;
        assert_eq!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 13,
                    error_code: Some(0),
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Crash(CrashReason::BadKernelStack {
                rsp: UNMAPPED_VA + 0x40 - 64
            })
        );
        let mut r = distinct_regs();
        r.rsp = HYPERVISOR_VIRT_START + 0x100;
        assert!(matches!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 13,
                    error_code: Some(0),
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Crash(CrashReason::BadKernelStack { .. })
        ));
        let mut r = distinct_regs();
        r.rsp = RO_VA + 0x100;
        assert!(matches!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 13,
                    error_code: Some(0),
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Crash(CrashReason::BadKernelStack { .. })
        ));
    }

    #[test]
    fn bad_vcpu_info() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 14, 0, 0x1000);
        v.vcpu_info_gpa = MEM_SIZE as u64;
        let mut r = distinct_regs();
        assert_eq!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 14,
                    error_code: Some(0),
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Crash(CrashReason::BadVcpuInfo)
        );
    }

    #[test]
    fn int_n_through_gp() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 0x80, 3, 0x8080);
        handler(&mut v, 13, 0, 0x1313);
        handler(&mut v, 0x81, 1, 0x8181);
        // User-mode int $0x80 on a DPL3 gate: delivered as vector 0x80, rip after `int`.
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP;
        let mut r = distinct_regs();
        r.rip = USER_VA + 0x10;
        let mut s = Stats::new();
        let out = exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 13,
                error_code: Some((0x80 << 3) | 2),
                cr2: 0,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(r.rip, 0x8080);
        assert_eq!(
            r.rsp,
            KSTACK_TOP - 7 * 8,
            "no error code for a software interrupt"
        );
        assert_eq!(frame(&p, &v, r.rsp, 7)[2], USER_VA + 0x12);
        assert_eq!(s.bounces[0x80], 1);
        // User-mode int $0x81 on a DPL1 gate: #GP with the original error code.
        v.mode = Mode::User;
        let mut r = distinct_regs();
        r.rip = USER_VA + 0x10;
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 13,
                error_code: Some((0x81 << 3) | 2),
                cr2: 0,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(r.rip, 0x1313);
        let f = frame(&p, &v, r.rsp, 8);
        assert_eq!(f[2], (0x81 << 3) | 2);
        assert_eq!(f[3], USER_VA + 0x10);
        // Kernel-mode int $0x81 on the DPL1 gate is allowed (Xen's permit_softint).
        let mut r = distinct_regs();
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 13,
                error_code: Some((0x81 << 3) | 2),
                cr2: 0,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(r.rip, 0x8181);
        // EXT set: a plain #GP.
        let mut r = distinct_regs();
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 13,
                error_code: Some((0x80 << 3) | 3),
                cr2: 0,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(r.rip, 0x1313);
        // DPL0 gate: #GP.
        let mut r = distinct_regs();
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 13,
                error_code: Some((0x20 << 3) | 2),
                cr2: 0,
            },
            &mut p,
            &mut s,
        );
        assert_eq!(r.rip, 0x1313);
    }

    #[test]
    fn device_not_available() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 7, 0, 0x707);
        let mut r = distinct_regs();
        let before = r;
        assert_eq!(
            exception(
                &mut v,
                &mut d,
                &mut r,
                Trap {
                    vector: 7,
                    error_code: None,
                    cr2: 0
                },
                &mut p,
                &mut Stats::new()
            ),
            Outcome::Resume
        );
        assert_eq!(r, before, "no virtual TS: nothing to deliver");
        v.cr0_ts = true;
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 7,
                error_code: None,
                cr2: 0,
            },
            &mut p,
            &mut Stats::new(),
        );
        assert!(!v.cr0_ts);
        assert!(!v.hw_state().cr0_ts);
        assert_eq!(r.rip, 0x707);
    }

    #[test]
    fn error_code_presence_follows_vector() {
        let (mut v, mut d, mut p) = setup();
        handler(&mut v, 3, 3, 0x303);
        handler(&mut v, 17, 0, 0x1717);
        let mut r = distinct_regs();
        let top = (r.rsp) & !0xf;
        // A host that passes Some(0) for #BP still gets a frame without error code.
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 3,
                error_code: Some(0),
                cr2: 0,
            },
            &mut p,
            &mut Stats::new(),
        );
        assert_eq!(r.rsp, top - 56);
        let mut r = distinct_regs();
        exception(
            &mut v,
            &mut d,
            &mut r,
            Trap {
                vector: 17,
                error_code: None,
                cr2: 0,
            },
            &mut p,
            &mut Stats::new(),
        );
        assert_eq!(r.rsp, top - 64);
        assert_eq!(frame(&p, &v, r.rsp, 3)[2], 0);
    }

    #[test]
    fn user_syscall_bounce() {
        let (mut v, mut d, mut p) = setup();
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP;
        v.syscall_callback = Callback {
            address: 0x5c5c,
            flags: xen_abi::callback::CALLBACKF_MASK_EVENTS,
        };
        let mut r = distinct_regs();
        r.rip = USER_VA + 0x22;
        r.rcx = r.rip;
        r.r11 = 0x246 | X86_EFLAGS_DF;
        r.rflags = r.r11;
        r.rsp = USER_VA + 0x900;
        r.cs = 0x33; // whatever the host's STAR gave
        let before = r;
        let mut s = Stats::new();
        assert_eq!(
            syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
            Outcome::Resume
        );
        assert_eq!(v.mode, Mode::Kernel);
        assert_eq!(r.rip, 0x5c5c);
        assert_eq!(r.rsp, KSTACK_TOP - 56);
        let f = frame(&p, &v, r.rsp, 7);
        assert_eq!(
            f,
            std::vec![
                before.rcx,
                before.r11,
                before.rip,
                0xe033,
                0x246 | X86_EFLAGS_DF,
                before.rsp,
                0xe02b
            ]
        );
        assert_eq!(r.rflags & X86_EFLAGS_DF, 0);
        assert_eq!(mask(&p), 1);
        assert_eq!(s.syscall_bounces, 1);
        assert_only_context_changed(&before, &r);
    }

    #[test]
    fn user_syscall_compat_uses_syscall32() {
        let (mut v, mut d, mut p) = setup();
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP;
        v.syscall_callback = Callback {
            address: 0x64,
            flags: 0,
        };
        v.syscall32_callback = Callback {
            address: 0x32,
            flags: 0,
        };
        let mut r = distinct_regs();
        r.cs = u64::from(FLAT_RING3_CS32);
        syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new());
        assert_eq!(r.rip, 0x32);
        assert_eq!(frame(&p, &v, r.rsp, 7)[3], u64::from(FLAT_RING3_CS32));
        assert_eq!(mask(&p), 0);
    }

    #[test]
    fn user_syscall_without_callback() {
        let (mut v, mut d, mut p) = setup();
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP;
        let mut r = distinct_regs();
        r.rip = USER_VA + 0x22;
        assert_eq!(
            syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Crash(CrashReason::NoSyscallCallback)
        );
        // With a #UD handler, Xen delivers #UD at the syscall instruction.
        let (mut v, mut d, mut p) = setup();
        v.mode = Mode::User;
        v.user_cr3 = USER_L4;
        v.kernel_sp = KSTACK_TOP;
        handler(&mut v, 6, 0, 0x606);
        let mut r = distinct_regs();
        r.rip = USER_VA + 0x22;
        assert_eq!(
            syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Resume
        );
        assert_eq!(r.rip, 0x606);
        assert_eq!(frame(&p, &v, r.rsp, 7)[2], USER_VA + 0x20);
    }

    #[test]
    fn kernel_syscall_is_a_hypercall() {
        let (mut v, mut d, mut p) = setup();
        let mut r = distinct_regs();
        r.rax = xen_abi::xen::hypercall::XEN_VERSION;
        r.rdi = 0;
        assert_eq!(
            syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut Stats::new()),
            Outcome::Resume
        );
        assert_eq!(r.rax, (4 << 16) | 17);
    }
}
