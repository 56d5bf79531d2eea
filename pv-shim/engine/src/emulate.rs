//! Privileged instructions a PV kernel still executes and Xen emulates for it
//! (`xen/arch/x86/pv/emul-priv-op.c`): the guest kernel runs at CPL3, so they fault with
//! #GP(0) and land here before any bounce.
//!
//! Covered: `rdmsr`/`wrmsr` through the MSR table in [`crate::msr`] (an MSR it refuses
//! is not emulated and the caller bounces the #GP, as Xen does), `mov` to and from
//! control registers, port I/O and `cli`/`sti` under the virtual IOPL. And the forced-emulation
//! prefix `ud2; .ascii "xen"; cpuid` (`emul-inv-op.c`), a #UD, which is how a PV kernel
//! asks for the hypervisor's CPUID policy.

use crate::guest;
use crate::msr;
use crate::stats::emulated;
use crate::{Domain, GuestRegs, Mode, Platform, Vcpu};

pub use crate::msr::{
    MSR_ARCH_CAPABILITIES, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_MISC_ENABLE, MSR_PAT,
    MSR_SHADOW_GS_BASE, MSR_UCODE_REV,
};

/// Tries to emulate the instruction at `regs.rip` that raised #GP(0). Returns the kind
/// of instruction (a [`crate::stats::emulated`] index) when it did (rip is then past it),
/// None when the #GP must go to the guest.
pub fn emulate_privileged_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
) -> Option<usize> {
    if vcpu.mode != Mode::Kernel {
        return None;
    }
    let mut bytes = [0u8; 4];
    if guest::copy_from_guest(vcpu, p, regs.rip, &mut bytes).is_err()
        && guest::copy_from_guest(vcpu, p, regs.rip, &mut bytes[..2]).is_err()
    {
        return None;
    }
    if let Some(len) = emulate_mov_cr(vcpu, regs, bytes) {
        regs.rip = regs.rip.wrapping_add(len);
        return Some(emulated::MOV_CR);
    }
    if let Some(len) = emulate_port_io(vcpu, dom, regs, bytes, p.system_time_ns()) {
        regs.rip = regs.rip.wrapping_add(len);
        return Some(emulated::PORT_IO);
    }
    // cli / sti with the guest's IOPL: Xen skips them without touching the event mask
    // (pv/emul-priv-op.c, "fast & loose"; mapping them onto the mask is commented out
    // there): a `pushf; cli; ...; popf` sequence cannot restore the mask, because popf
    // cannot be trapped, so masking would leave events off for good. Linux runs such a
    // sequence in this_cpu_cmpxchg16b_emu before its alternatives are patched.
    if matches!(bytes[0], 0xfa | 0xfb) && iopl_ok(vcpu, dom) {
        regs.rip = regs.rip.wrapping_add(1);
        return Some(emulated::CLI_STI);
    }
    if bytes[..3] == crate::xstate::XSETBV {
        return crate::xstate::emulate_xsetbv(vcpu, regs, p).then_some(emulated::XSETBV);
    }
    // wrmsr (0f 30) / rdmsr (0f 32): ECX names the MSR, EDX:EAX hold the value. A
    // refused access leaves everything as it was and the caller bounces the #GP.
    let msr = regs.rcx as u32;
    match [bytes[0], bytes[1]] {
        [0x0f, 0x30] => {
            let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            msr::guest_wrmsr(vcpu, p, msr, value).ok()?;
        }
        [0x0f, 0x32] => {
            let value = msr::guest_rdmsr(vcpu, p, msr).ok()?;
            regs.rax = value & 0xffff_ffff;
            regs.rdx = value >> 32;
        }
        _ => return None,
    }
    regs.rip = regs.rip.wrapping_add(2);
    Some(emulated::MSR)
}

/// CR0 bits the hardware has while a PV guest runs (PG, AM, WP, NE, ET, MP, PE): what a
/// `mov %cr0` reads, with the guest's virtual TS.
const GUEST_CR0: u64 = 0x8005_0033;
/// CR0.TS.
const CR0_TS: u64 = 1 << 3;
/// Xen's `pv_fixup_guest_cr4`: the CR4 a guest gets for `value` (bits it does not
/// control are dropped silently, never a fault).
pub fn fixup_guest_cr4(value: u64) -> u64 {
    (value & CR4_GUEST_MASK) | CR4_GUEST_VISIBLE
}

/// CR4 bits a PV guest controls (Xen's `PV_CR4_GUEST_MASK`: TSD, DE, FSGSBASE, OSXSAVE);
/// the hardware CR4 stays the shim's.
const CR4_GUEST_MASK: u64 = (1 << 2) | (1 << 3) | (1 << 16) | (1 << 18);
/// CR4 bits a PV guest sees as the hypervisor set them (`PV_CR4_GUEST_VISIBLE_MASK`
/// with what pvkvm runs: PAE, PGE, OSFXSR, OSXMMEXCPT).
const CR4_GUEST_VISIBLE: u64 = (1 << 5) | (1 << 7) | (1 << 9) | (1 << 10);

/// The general register a ModRM `rm`/`reg` number (with its REX bit) names.
fn gpr(regs: &mut GuestRegs, n: u8) -> &mut u64 {
    regs.gpr_mut(n)
}

/// `mov %crN, reg` and `mov reg, %crN` (`0f 20 /r`, `0f 22 /r`, optional REX), as Xen's
/// `read_cr`/`write_cr` answer a PV guest: CR0 with the virtual TS, CR2 from the last
/// page fault, CR3 as the current base pointer, CR4 the guest's virtual CR4. Writes:
/// CR0 may change only TS (as `fpu_taskswitch`), CR4 keeps only the guest's bits; a
/// CR3 write is not emulated (a PV kernel uses `NEW_BASEPTR`). Returns the length.
fn emulate_mov_cr(vcpu: &mut Vcpu, regs: &mut GuestRegs, bytes: [u8; 4]) -> Option<u64> {
    let (rex, at) = if bytes[0] & 0xf0 == 0x40 {
        (bytes[0], 1)
    } else {
        (0, 0)
    };
    let (op, modrm) = match bytes.get(at..at + 3)? {
        [0x0f, op @ (0x20 | 0x22), modrm] => (*op, *modrm),
        _ => return None,
    };
    if modrm >> 6 != 3 {
        return None;
    }
    let cr = ((modrm >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 };
    let reg = (modrm & 7) | if rex & 1 != 0 { 8 } else { 0 };
    let len = at as u64 + 3;
    if op == 0x20 {
        let value = match cr {
            0 => GUEST_CR0 | if vcpu.cr0_ts { CR0_TS } else { 0 },
            2 => vcpu.cr2,
            3 => vcpu.hw_state().cr3,
            4 => vcpu.cr4,
            _ => return None,
        };
        *gpr(regs, reg) = value;
        return Some(len);
    }
    let value = *gpr(regs, reg);
    match cr {
        0 if value & !CR0_TS == GUEST_CR0 & !CR0_TS => vcpu.cr0_ts = value & CR0_TS != 0,
        // Xen's pv_fixup_guest_cr4: other bits are dropped silently, never a fault.
        4 => vcpu.cr4 = fixup_guest_cr4(value),
        _ => return None,
    }
    Some(len)
}

/// Whether this vCPU, now, has `cli`/`sti` skipped and port I/O answered rather than
/// bounced as #GP: guest kernel mode under a virtual IOPL that allows them (the shim's
/// #GP stub may then finish the one-byte forms without an exit; the VMM tells it this
/// on every change).
pub fn kernel_io_ok(vcpu: &Vcpu, dom: &Domain) -> bool {
    vcpu.mode == Mode::Kernel && iopl_ok(vcpu, dom)
}

/// Xen's `iopl_ok`: whether the guest's virtual IOPL allows port I/O from where it runs
/// (guest kernel mode counts as ring 1, or ring 0 with the `architectural_iopl` assist).
fn iopl_ok(vcpu: &Vcpu, dom: &Domain) -> bool {
    let cpl = match vcpu.mode {
        Mode::Kernel
            if dom.vm_assist & (1 << xen_abi::xen::vmassist::TYPE_ARCHITECTURAL_IOPL) != 0 =>
        {
            0
        }
        Mode::Kernel => 1,
        Mode::User => 3,
    };
    cpl <= (vcpu.iopl >> 12) & 3
}

/// `in`/`out` (immediate or dx port, 8/16/32-bit) from a guest whose virtual IOPL allows
/// them, answered from the domain's port space as Xen answers a domain with no I/O
/// ports ([`crate::pit`]: the emulated PIT at 0x42, 0x43 and 0x61, all ones and dropped
/// writes elsewhere). Without IOPL they are not emulated (the caller bounces the #GP).
/// String forms are not emulated. Returns the length.
fn emulate_port_io(
    vcpu: &Vcpu,
    dom: &mut Domain,
    regs: &mut GuestRegs,
    bytes: [u8; 4],
    now: u64,
) -> Option<u64> {
    if !iopl_ok(vcpu, dom) {
        return None;
    }
    let (opsize16, at) = if bytes[0] == 0x66 {
        (true, 1)
    } else {
        (false, 0)
    };
    let op = *bytes.get(at)?;
    let imm8 = matches!(op, 0xe4..=0xe7);
    let len = at as u64 + if imm8 { 2 } else { 1 };
    let width = match op {
        0xe4 | 0xe6 | 0xec | 0xee => 1,
        0xe5 | 0xe7 | 0xed | 0xef if opsize16 => 2,
        0xe5 | 0xe7 | 0xed | 0xef => 4,
        _ => return None,
    };
    let port = if imm8 {
        u16::from(*bytes.get(at + 1)?)
    } else {
        regs.rdx as u16
    };
    if matches!(op, 0xe4 | 0xe5 | 0xec | 0xed) {
        let value = u64::from(crate::pit::port_in(&mut dom.pit, port, width, now));
        regs.rax = match width {
            1 => (regs.rax & !0xff) | value,
            2 => (regs.rax & !0xffff) | value,
            // A 32-bit result zero-extends into rax.
            _ => value,
        };
    } else {
        crate::pit::port_out(&mut dom.pit, port, width, regs.rax as u32, now);
    }
    Some(len)
}

/// The forced-emulation prefix followed by `cpuid`.
pub const FORCED_CPUID: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];

/// Tries to emulate a #UD at `regs.rip` as the forced-emulation `cpuid`. Returns true
/// when it did (registers loaded, rip past the sequence).
pub fn emulate_forced_cpuid(vcpu: &Vcpu, regs: &mut GuestRegs, p: &dyn Platform) -> bool {
    let mut insn = [0u8; 7];
    if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn).is_err() || insn != FORCED_CPUID {
        return false;
    }
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let mut res = p.cpuid(leaf, subleaf);
    crate::xstate::adjust_forced_cpuid(vcpu, p, leaf, subleaf, &mut res);
    let [a, b, c, d] = res;
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    regs.rip = regs.rip.wrapping_add(FORCED_CPUID.len() as u64);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{place, setup};

    #[test]
    fn cli_and_sti_under_iopl_are_skipped_and_leave_the_event_mask_alone() {
        let (mut vcpu, mut d, mut p) = setup();
        let mask_gpa = vcpu.vcpu_info_gpa + xen_abi::xen::vcpu_info::UPCALL_MASK;
        let rip = crate::testutil::DATA_VA;
        // Without IOPL: #GP for the guest.
        place(&mut p, &vcpu, rip, &[0xfa, 0x90, 0x90, 0x90]);
        let mut regs = GuestRegs {
            rip,
            ..Default::default()
        };
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_none());
        // With the IOPL Linux sets (1): skipped, as Xen does; the mask stays 0 even for
        // `pushf; cli; ...; popf`, whose popf could not restore it.
        vcpu.iopl = 1 << 12;
        p.mem[mask_gpa as usize] = 0;
        for insn in [0xfa, 0xfb] {
            place(&mut p, &vcpu, rip, &[insn, 0x90, 0x90, 0x90]);
            let mut regs = GuestRegs {
                rip,
                ..Default::default()
            };
            assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_some());
            assert_eq!(regs.rip, rip + 1);
            assert_eq!(p.mem[mask_gpa as usize], 0, "insn {insn:#x}");
        }
    }

    #[test]
    fn port_io_under_iopl_reaches_the_pit_and_reads_all_ones_elsewhere() {
        let (mut vcpu, mut d, mut p) = setup();
        vcpu.iopl = 1 << 12;
        let rip = crate::testutil::DATA_VA;
        let mut run = |d: &mut crate::Domain, insn: &[u8], rax: u64, rdx: u64| {
            let mut code = [0x90u8; 4];
            code[..insn.len()].copy_from_slice(insn);
            place(&mut p, &vcpu, rip, &code);
            let mut regs = GuestRegs {
                rip,
                rax,
                rdx,
                ..Default::default()
            };
            assert!(emulate_privileged_op(&mut vcpu, d, &mut regs, &mut p).is_some());
            assert_eq!(regs.rip, rip + insn.len() as u64);
            regs.rax
        };
        // Other ports: all ones in the width read, the rest of rax kept (32-bit: zeroed).
        assert_eq!(run(&mut d, &[0xe4, 0x80], 0x1234_5600, 0), 0x1234_56ff);
        assert_eq!(run(&mut d, &[0x66, 0xed], 0xaaaa_0000, 0x3f8), 0xaaaa_ffff);
        assert_eq!(run(&mut d, &[0xe5, 0x80], u64::MAX << 40, 0), 0xffff_ffff);
        // Channel 2 as Linux programs it (`out` to 0x61, 0x43, 0x42 twice), then read
        // back: LSB, MSB of a count that started at 0xffff.
        assert_eq!(
            run(&mut d, &[0xe6, 0x61], 1, 0),
            1,
            "an out changes no register"
        );
        run(&mut d, &[0xe6, 0x43], 0xb0, 0);
        run(&mut d, &[0xe6, 0x42], 0xff, 0);
        run(&mut d, &[0xee], 0xff, 0x42);
        let lo = run(&mut d, &[0xe4, 0x42], 0, 0) as u16;
        let hi = run(&mut d, &[0xec], 0, 0x42) as u16;
        let count = lo | hi << 8;
        assert!(count > 0xf000, "counting down from 0xffff: {count:#x}");
        assert_eq!(
            run(&mut d, &[0xe4, 0x61], 0, 0) & 3,
            1,
            "gate high, speaker off"
        );
    }

    #[test]
    fn wrmsr_gs_base_sets_the_kernel_gs_base() {
        let (mut vcpu, mut d, mut p) = setup();
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0101,
            rax: 0x8000_1000,
            rdx: 0xffff_ffff,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x30]);
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_some());
        assert_eq!(vcpu.gs_base_kernel, 0xffff_ffff_8000_1000);
        assert_eq!(regs.rip, crate::testutil::DATA_VA + 2);
        assert_eq!(vcpu.hw_state().gs_base, 0xffff_ffff_8000_1000);
    }

    #[test]
    fn rdmsr_reads_back_and_unknown_msrs_are_not_emulated() {
        let (mut vcpu, mut d, mut p) = setup();
        vcpu.fs_base = 0x1234_5678_9abc;
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0100,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x32]);
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_some());
        assert_eq!((regs.rdx, regs.rax), (0x1234, 0x5678_9abc));
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0x10,
            ..Default::default()
        };
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_none());
        assert_eq!(regs.rip, crate::testutil::DATA_VA);
    }

    #[test]
    fn msr_table_through_the_instruction_decoder() {
        use crate::msr::{feature as f, MsrEffect};
        let (mut vcpu, mut d, mut p) = setup();
        p.set_policy(b"AuthenticAMD", &[f::MCE, f::MCA, f::IBPB, f::SBPB]);
        let rip = crate::testutil::DATA_VA;
        place(&mut p, &vcpu, rip, &[0x0f, 0x32]);
        // rdmsr MCG_CAP: Linux's MCE init, which panics on a fault.
        let mut regs = GuestRegs {
            rip,
            rcx: 0x179,
            rax: 0xdead,
            rdx: 0xbeef,
            ..Default::default()
        };
        assert_eq!(
            emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p),
            Some(emulated::MSR)
        );
        assert_eq!((regs.rdx, regs.rax, regs.rip), (0, 2, rip + 2));
        // wrmsr PRED_CMD with SBPB (Linux's switch_mm with spec_rstack_overflow=off).
        place(&mut p, &vcpu, rip, &[0x0f, 0x30]);
        let mut regs = GuestRegs {
            rip,
            rcx: 0x49,
            rax: 0x80,
            rdx: 0,
            ..Default::default()
        };
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_some());
        assert_eq!(p.effects, [MsrEffect::PredCmd(0x80)]);
        // A reserved bit: not emulated, rip unchanged, no effect.
        let mut regs = GuestRegs {
            rip,
            rcx: 0x49,
            rax: 0x2,
            ..Default::default()
        };
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_none());
        assert_eq!((regs.rip, p.effects.len()), (rip, 1));
        // wrmsr takes EAX only: the upper half of rax is not part of the value.
        let mut regs = GuestRegs {
            rip,
            rcx: 0x49,
            rax: 0xffff_ffff_0000_0001,
            rdx: 0,
            ..Default::default()
        };
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_some());
        assert_eq!(p.effects, [MsrEffect::PredCmd(0x80), MsrEffect::PredCmd(1)]);
    }

    #[test]
    fn forced_cpuid_uses_the_platform_policy_and_plain_ud2_does_not() {
        let (vcpu, _, mut p) = setup();
        let rip = crate::testutil::DATA_VA;
        place(&mut p, &vcpu, rip, &FORCED_CPUID);
        let mut regs = GuestRegs {
            rip,
            rax: 0x4000_0000,
            rcx: 3,
            r12: 7,
            ..Default::default()
        };
        assert!(emulate_forced_cpuid(&vcpu, &mut regs, &p));
        assert_eq!(
            (regs.rax, regs.rbx, regs.rcx, regs.rdx),
            (0x4000_0000, 3, 0x1234, 0x5678)
        );
        assert_eq!((regs.rip, regs.r12), (rip + 7, 7));
        place(&mut p, &vcpu, rip, &[0x0f, 0x0b, 0, 0, 0, 0, 0]);
        let mut regs = GuestRegs {
            rip,
            ..Default::default()
        };
        assert!(!emulate_forced_cpuid(&vcpu, &mut regs, &p));
        assert_eq!(regs.rip, rip);
    }

    #[test]
    fn non_canonical_base_and_user_mode_are_refused() {
        let (mut vcpu, mut d, mut p) = setup();
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0101,
            rdx: 0x8000,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x30]);
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_none());
        vcpu.mode = Mode::User;
        vcpu.user_cr3 = vcpu.kernel_cr3;
        regs.rdx = 0;
        assert!(emulate_privileged_op(&mut vcpu, &mut d, &mut regs, &mut p).is_none());
    }
}
