//! Privileged instructions a PV kernel still executes and Xen emulates for it
//! (`xen/arch/x86/pv/emul-priv-op.c`): the guest kernel runs at CPL3, so they fault with
//! #GP(0) and land here before any bounce.
//!
//! Covered now: `rdmsr`/`wrmsr` of the segment-base MSRs (Linux's `startup_xen` writes
//! MSR_GS_BASE before its pvops are live). Anything else is not emulated and the caller
//! bounces the #GP, as Xen does for an MSR it does not know. And the forced-emulation
//! prefix `ud2; .ascii "xen"; cpuid` (`emul-inv-op.c`), a #UD, which is how a PV kernel
//! asks for the hypervisor's CPUID policy.

use crate::guest::{self, is_canonical};
use crate::{GuestRegs, Mode, Platform, Vcpu};

/// MSR_FS_BASE.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// MSR_GS_BASE.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// MSR_SHADOW_GS_BASE (KERNEL_GS_BASE).
pub const MSR_SHADOW_GS_BASE: u32 = 0xc000_0102;

/// Tries to emulate the instruction at `regs.rip` that raised #GP(0). Returns true when
/// it did (rip is then past it), false when the #GP must go to the guest.
pub fn emulate_privileged_op(vcpu: &mut Vcpu, regs: &mut GuestRegs, p: &dyn Platform) -> bool {
    if vcpu.mode != Mode::Kernel {
        return false;
    }
    let mut insn = [0u8; 2];
    if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn).is_err() {
        return false;
    }
    let msr = regs.rcx as u32;
    let done = match insn {
        [0x0f, 0x30] => write_msr(vcpu, msr, (regs.rdx << 32) | (regs.rax & 0xffff_ffff)),
        [0x0f, 0x32] => match read_msr(vcpu, msr) {
            Some(v) => {
                regs.rax = v & 0xffff_ffff;
                regs.rdx = v >> 32;
                true
            }
            None => false,
        },
        _ => false,
    };
    if done {
        regs.rip = regs.rip.wrapping_add(2);
    }
    done
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
    let [a, b, c, d] = p.cpuid(regs.rax as u32, regs.rcx as u32);
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    regs.rip = regs.rip.wrapping_add(FORCED_CPUID.len() as u64);
    true
}

fn write_msr(vcpu: &mut Vcpu, msr: u32, value: u64) -> bool {
    if !is_canonical(value) {
        return false;
    }
    match msr {
        MSR_FS_BASE => vcpu.fs_base = value,
        MSR_GS_BASE => vcpu.gs_base_kernel = value,
        MSR_SHADOW_GS_BASE => vcpu.gs_base_user = value,
        _ => return false,
    }
    true
}

fn read_msr(vcpu: &Vcpu, msr: u32) -> Option<u64> {
    match msr {
        MSR_FS_BASE => Some(vcpu.fs_base),
        MSR_GS_BASE => Some(vcpu.gs_base_kernel),
        MSR_SHADOW_GS_BASE => Some(vcpu.gs_base_user),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{setup, FakePlatform};

    fn place(p: &mut FakePlatform, vcpu: &Vcpu, rip: u64, bytes: &[u8]) {
        let gpa = guest::translate(vcpu.hw_state().cr3, p, rip, false).expect("mapped");
        for (i, b) in bytes.iter().enumerate() {
            p.mem[gpa as usize + i] = *b;
        }
    }

    #[test]
    fn wrmsr_gs_base_sets_the_kernel_gs_base() {
        let (mut vcpu, mut p) = setup();
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0101,
            rax: 0x8000_1000,
            rdx: 0xffff_ffff,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x30]);
        assert!(emulate_privileged_op(&mut vcpu, &mut regs, &p));
        assert_eq!(vcpu.gs_base_kernel, 0xffff_ffff_8000_1000);
        assert_eq!(regs.rip, crate::testutil::DATA_VA + 2);
        assert_eq!(vcpu.hw_state().gs_base, 0xffff_ffff_8000_1000);
    }

    #[test]
    fn rdmsr_reads_back_and_unknown_msrs_are_not_emulated() {
        let (mut vcpu, mut p) = setup();
        vcpu.fs_base = 0x1234_5678_9abc;
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0100,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x32]);
        assert!(emulate_privileged_op(&mut vcpu, &mut regs, &p));
        assert_eq!((regs.rdx, regs.rax), (0x1234, 0x5678_9abc));
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0x10,
            ..Default::default()
        };
        assert!(!emulate_privileged_op(&mut vcpu, &mut regs, &p));
        assert_eq!(regs.rip, crate::testutil::DATA_VA);
    }

    #[test]
    fn forced_cpuid_uses_the_platform_policy_and_plain_ud2_does_not() {
        let (vcpu, mut p) = setup();
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
        let (mut vcpu, mut p) = setup();
        let mut regs = GuestRegs {
            rip: crate::testutil::DATA_VA,
            rcx: 0xc000_0101,
            rdx: 0x8000,
            ..Default::default()
        };
        place(&mut p, &vcpu, regs.rip, &[0x0f, 0x30]);
        assert!(!emulate_privileged_op(&mut vcpu, &mut regs, &p));
        vcpu.mode = Mode::User;
        vcpu.user_cr3 = vcpu.kernel_cr3;
        regs.rdx = 0;
        assert!(!emulate_privileged_op(&mut vcpu, &mut regs, &p));
    }
}
