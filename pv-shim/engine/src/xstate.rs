//! Extended state for a PV vCPU: its XCR0, `xsetbv` emulation and the per-vCPU CPUID
//! answers that depend on them, as Xen gives them (`xen/arch/x86/xstate.c`
//! `handle_xsetbv`/`valid_xcr0`, `pv/emul-priv-op.c` for the instruction,
//! `cpuid.c` `guest_cpuid` for leaf 1's OSXSAVE and leaf 0xD's sizes).
//!
//! The guest kernel runs at CPL3, so its `xsave`/`xrstor`/`xsaveopt` execute natively
//! with whatever XCR0 the hardware has; `xsetbv` (CPL0 only) faults with #GP(0) and is
//! emulated here. The new value is checked against the policy (leaf 0xD.0 EDX:EAX, only
//! when leaf 1 offers XSAVE) and Xen's architectural rules, then handed to the host
//! ([`Platform::set_xcr0`]), which makes guest ring 3 run with it or refuses it (a host
//! whose ring-3 XCR0 it cannot change accepts only the one value that matches what ring
//! 3 really runs with). Anything refused is a #GP for the guest.

use crate::{GuestRegs, Mode, Platform, Vcpu};

/// x87 state.
pub const XCR0_X87: u64 = 1 << 0;
/// SSE state.
pub const XCR0_SSE: u64 = 1 << 1;
/// AVX (upper halves of YMM).
pub const XCR0_YMM: u64 = 1 << 2;
/// MPX bound registers.
pub const XCR0_BNDREGS: u64 = 1 << 3;
/// MPX bound configuration.
pub const XCR0_BNDCSR: u64 = 1 << 4;
/// AVX-512 opmask registers.
pub const XCR0_OPMASK: u64 = 1 << 5;
/// AVX-512 upper halves of ZMM0-15.
pub const XCR0_ZMM: u64 = 1 << 6;
/// AVX-512 ZMM16-31.
pub const XCR0_HI_ZMM: u64 = 1 << 7;
/// Protection-key rights register.
pub const XCR0_PKRU: u64 = 1 << 9;
/// AMX tile configuration.
pub const XCR0_TILE_CFG: u64 = 1 << 17;
/// AMX tile data.
pub const XCR0_TILE_DATA: u64 = 1 << 18;
/// Supervisor components (IA32_XSS only, never XCR0): PT, PASID, CET user/supervisor,
/// HDC, UINTR, LBR, HWP.
pub const XSS_SUPERVISOR: u64 = (1 << 8) | (0x7f << 10);
/// What a vCPU starts with (Xen's `XSTATE_FP_SSE`).
pub const XCR0_INITIAL: u64 = XCR0_X87 | XCR0_SSE;

/// `xsetbv` (`0f 01 d1`).
pub const XSETBV: [u8; 3] = [0x0f, 0x01, 0xd1];
/// Leaf 1 ECX: XSAVE, OSXSAVE.
pub const LEAF1_ECX_XSAVE: u32 = 1 << 26;
/// Leaf 1 ECX OSXSAVE.
pub const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// Leaf 0xD.1 EAX: XSAVEC.
const LEAFD1_EAX_XSAVEC: u32 = 1 << 1;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// Size of the legacy area plus the XSAVE header.
const XSAVE_HDR_END: u32 = 512 + 64;

/// Whether the policy offers XSAVE (leaf 1 ECX bit 26).
pub fn policy_has_xsave(p: &dyn Platform) -> bool {
    p.cpuid(1, 0)[2] & LEAF1_ECX_XSAVE != 0
}

/// The largest XCR0 the policy allows (Xen's `cpu_policy_xcr0_max`): leaf 0xD.0
/// EDX:EAX when XSAVE is offered, never a supervisor component; 0 without XSAVE.
pub fn xcr0_max(p: &dyn Platform) -> u64 {
    if !policy_has_xsave(p) {
        return 0;
    }
    let [eax, _, _, edx] = p.cpuid(0xd, 0);
    (u64::from(eax) | (u64::from(edx) << 32)) & !XSS_SUPERVISOR
}

/// Xen's `valid_xcr0`: x87 always; YMM needs SSE; the AVX-512 trio needs YMM and comes
/// all or nothing; MPX's pair and AMX's pair come together.
pub fn valid_xcr0(xcr0: u64) -> bool {
    let avx512 = XCR0_OPMASK | XCR0_ZMM | XCR0_HI_ZMM;
    let pair = |a: u64, b: u64| (xcr0 & a == 0) == (xcr0 & b == 0);
    xcr0 & XCR0_X87 != 0
        && (xcr0 & XCR0_YMM == 0 || xcr0 & XCR0_SSE != 0)
        && (xcr0 & avx512 == 0 || (xcr0 & XCR0_YMM != 0 && xcr0 & avx512 == avx512))
        && pair(XCR0_BNDREGS, XCR0_BNDCSR)
        && pair(XCR0_TILE_CFG, XCR0_TILE_DATA)
        && xcr0 & XSS_SUPERVISOR == 0
}

/// Xen's `handle_xsetbv` for the vCPU: XCR `index` (only 0 exists) to `value`. On
/// success (true) the vCPU's XCR0 is `value` and the host has been told; false means
/// #GP.
pub fn handle_xsetbv(vcpu: &mut Vcpu, p: &mut dyn Platform, index: u32, value: u64) -> bool {
    if index != 0 {
        return false;
    }
    let max = xcr0_max(p);
    if value & !max != 0 || !valid_xcr0(value) || !p.set_xcr0(value) {
        return false;
    }
    vcpu.xcr0 = value;
    true
}

/// Emulates `xsetbv` at `regs.rip` (the caller matched [`XSETBV`]) for the guest kernel
/// with its virtual CR4.OSXSAVE set: XCR number in ECX, value in EDX:EAX. True when it
/// was done (rip past it); false means #GP for the guest (user mode, CR4.OSXSAVE clear,
/// a refused value or index).
pub fn emulate_xsetbv(vcpu: &mut Vcpu, regs: &mut GuestRegs, p: &mut dyn Platform) -> bool {
    if vcpu.mode != Mode::Kernel || vcpu.cr4 & CR4_OSXSAVE == 0 {
        return false;
    }
    let value = ((regs.rdx & 0xffff_ffff) << 32) | (regs.rax & 0xffff_ffff);
    if !handle_xsetbv(vcpu, p, regs.rcx as u32, value) {
        return false;
    }
    regs.rip = regs.rip.wrapping_add(XSETBV.len() as u64);
    true
}

/// The standard-format XSAVE size for `xcr0` (Xen's `xstate_uncompressed_size`), from
/// the policy's leaf 0xD.i offsets and sizes.
pub fn uncompressed_size(p: &dyn Platform, xcr0: u64) -> u32 {
    (2..63u32)
        .filter(|i| xcr0 & (1 << i) != 0)
        .map(|i| {
            let [size, offset, _, _] = p.cpuid(0xd, i);
            offset.saturating_add(size)
        })
        .fold(XSAVE_HDR_END, u32::max)
}

/// The compacted-format XSAVE size for `xcr0` (Xen's `xstate_compressed_size`):
/// components in order after the header, 64-byte aligned where leaf 0xD.i ECX bit 1
/// says so.
pub fn compressed_size(p: &dyn Platform, xcr0: u64) -> u32 {
    (2..63u32)
        .filter(|i| xcr0 & (1 << i) != 0)
        .fold(XSAVE_HDR_END, |at, i| {
            let [size, _, ecx, _] = p.cpuid(0xd, i);
            let at = if ecx & 2 != 0 {
                at.saturating_add(63) & !63
            } else {
                at
            };
            at.saturating_add(size)
        })
}

/// The per-vCPU parts of a forced-emulation CPUID answer (the request came by #UD):
/// leaf 1 ECX OSXSAVE set when the vCPU's virtual CR4.OSXSAVE is, or, as Xen's
/// non-architectural PV rule has it, when the policy offers XSAVE and the guest kernel
/// asks (Linux checks XSAVE and OSXSAVE together before it sets CR4.OSXSAVE itself);
/// leaf 0xD.0 EBX the XSAVE size of the current XCR0, leaf 0xD.1 EBX the compacted size
/// when XSAVEC is offered.
pub fn adjust_forced_cpuid(
    vcpu: &Vcpu,
    p: &dyn Platform,
    leaf: u32,
    subleaf: u32,
    res: &mut [u32; 4],
) {
    match (leaf, subleaf) {
        (1, _) => {
            res[2] &= !LEAF1_ECX_OSXSAVE;
            if vcpu.cr4 & CR4_OSXSAVE != 0
                || (res[2] & LEAF1_ECX_XSAVE != 0 && vcpu.mode == Mode::Kernel)
            {
                res[2] |= LEAF1_ECX_OSXSAVE;
            }
        }
        (0xd, 0) if policy_has_xsave(p) => res[1] = uncompressed_size(p, vcpu.xcr0),
        (0xd, 1) if policy_has_xsave(p) && res[0] & LEAFD1_EAX_XSAVEC != 0 => {
            res[1] = compressed_size(p, vcpu.xcr0);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::{emulate_forced_cpuid, emulate_privileged_op, FORCED_CPUID};
    use crate::testutil::{place, setup, FakePlatform, DATA_VA};

    /// A policy with XSAVE, XSAVEC and x87|SSE|AVX|AVX-512 (the AVX-512 trio at the
    /// offsets a Skylake server reports) and the OSXSAVE bit leaked in leaf 1.
    fn xsave_platform(p: &mut FakePlatform) {
        p.cpuid_leaves = std::vec![
            ((1, 0), [0, 0, LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | 1, 0]),
            ((0xd, 0), [0xe7, 0, 0x980, 0]),
            ((0xd, 1), [0x3, 0, 0, 0]),
            ((0xd, 2), [256, 576, 0, 0]),
            ((0xd, 5), [64, 1088, 0, 0]),
            ((0xd, 6), [512, 1152, 0, 0]),
            ((0xd, 7), [1024, 1664, 0, 0]),
        ];
    }

    fn xsetbv(vcpu: &mut Vcpu, p: &mut FakePlatform, ecx: u64, value: u64) -> bool {
        let mut regs = GuestRegs {
            rip: DATA_VA,
            rcx: ecx,
            rax: value & 0xffff_ffff,
            rdx: value >> 32,
            ..Default::default()
        };
        place(p, vcpu, DATA_VA, &XSETBV);
        let done = emulate_privileged_op(
            vcpu,
            &mut crate::Domain::new(crate::testutil::SHARED_INFO, 1),
            &mut regs,
            p,
        )
        .is_some();
        assert_eq!(regs.rip, if done { DATA_VA + 3 } else { DATA_VA });
        done
    }

    #[test]
    fn xsetbv_accepts_what_the_policy_offers_and_tells_the_host() {
        let (mut vcpu, _, mut p) = setup();
        xsave_platform(&mut p);
        vcpu.cr4 |= CR4_OSXSAVE;
        assert_eq!(vcpu.xcr0, XCR0_INITIAL);
        assert!(xsetbv(&mut vcpu, &mut p, 0, 0x7));
        assert_eq!((vcpu.xcr0, p.xcr0), (0x7, Some(0x7)));
        assert!(xsetbv(&mut vcpu, &mut p, 0, 0xe7));
        assert!(xsetbv(&mut vcpu, &mut p, 0, 0x3));
        assert!(xsetbv(&mut vcpu, &mut p, 0, 0x1));
        assert_eq!((vcpu.xcr0, p.xcr0), (0x1, Some(0x1)));
    }

    #[test]
    fn xsetbv_refuses_invalid_combinations() {
        let (mut vcpu, _, mut p) = setup();
        xsave_platform(&mut p);
        vcpu.cr4 |= CR4_OSXSAVE;
        for bad in [
            0x0,           // x87 is mandatory
            0x2,           // SSE without x87
            0x5,           // AVX without SSE
            0x27,          // AVX-512 partly
            0x67,          // AVX-512 partly
            0xe3,          // AVX-512 without AVX
            0x207,         // PKRU: not offered
            0x107,         // a supervisor component
            0x1f,          // MPX: not offered
            1 << 62 | 0x7, // beyond anything
        ] {
            assert!(!xsetbv(&mut vcpu, &mut p, 0, bad), "{bad:#x} accepted");
        }
        assert_eq!((vcpu.xcr0, p.xcr0), (XCR0_INITIAL, None));
    }

    #[test]
    fn xsetbv_with_ecx_not_0_in_user_mode_without_osxsave_or_xsave_is_gp() {
        let (mut vcpu, _, mut p) = setup();
        xsave_platform(&mut p);
        // Virtual CR4.OSXSAVE clear.
        assert!(!xsetbv(&mut vcpu, &mut p, 0, 0x7));
        vcpu.cr4 |= CR4_OSXSAVE;
        assert!(!xsetbv(&mut vcpu, &mut p, 1, 0x7));
        assert!(
            xsetbv(&mut vcpu, &mut p, 1 << 32, 0x7),
            "only ECX names the XCR"
        );
        p.xcr0 = None;
        // The host refuses (a host whose ring-3 XCR0 is fixed).
        p.xcr0_refused = true;
        assert!(!xsetbv(&mut vcpu, &mut p, 0, 0x7));
        p.xcr0_refused = false;
        // Guest user mode.
        vcpu.mode = Mode::User;
        vcpu.user_cr3 = vcpu.kernel_cr3;
        assert!(!xsetbv(&mut vcpu, &mut p, 0, 0x7));
        // No XSAVE in the policy.
        vcpu.mode = Mode::Kernel;
        p.cpuid_leaves.retain(|(k, _)| *k != (1, 0));
        assert!(!xsetbv(&mut vcpu, &mut p, 0, 0x3));
        assert_eq!(p.xcr0, None);
    }

    fn forced(vcpu: &Vcpu, p: &mut FakePlatform, leaf: u32, subleaf: u32) -> [u32; 4] {
        place(p, vcpu, DATA_VA, &FORCED_CPUID);
        let mut regs = GuestRegs {
            rip: DATA_VA,
            rax: u64::from(leaf),
            rcx: u64::from(subleaf),
            ..Default::default()
        };
        assert!(emulate_forced_cpuid(vcpu, &mut regs, p));
        [regs.rax, regs.rbx, regs.rcx, regs.rdx].map(|r| r as u32)
    }

    #[test]
    fn forced_cpuid_osxsave_follows_xens_pv_rule() {
        let (mut vcpu, _, mut p) = setup();
        xsave_platform(&mut p);
        // Kernel mode, XSAVE offered: OSXSAVE leaks in before CR4.OSXSAVE is set.
        assert_ne!(forced(&vcpu, &mut p, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
        // User mode: architectural (CR4.OSXSAVE clear -> clear).
        vcpu.mode = Mode::User;
        vcpu.user_cr3 = vcpu.kernel_cr3;
        assert_eq!(forced(&vcpu, &mut p, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
        vcpu.cr4 |= CR4_OSXSAVE;
        assert_ne!(forced(&vcpu, &mut p, 1, 0)[2] & LEAF1_ECX_OSXSAVE, 0);
        // No XSAVE in the policy, CR4.OSXSAVE clear: never, whatever the table says.
        vcpu.mode = Mode::Kernel;
        vcpu.cr4 &= !CR4_OSXSAVE;
        p.cpuid_leaves[0].1[2] = LEAF1_ECX_OSXSAVE | 1;
        assert_eq!(forced(&vcpu, &mut p, 1, 0)[2], 1);
    }

    #[test]
    fn forced_cpuid_leaf_d_sizes_follow_the_vcpus_xcr0() {
        let (mut vcpu, _, mut p) = setup();
        xsave_platform(&mut p);
        assert_eq!(forced(&vcpu, &mut p, 0xd, 0)[1], 576);
        assert_eq!(forced(&vcpu, &mut p, 0xd, 0)[2], 0x980, "ECX: the maximum");
        assert_eq!(forced(&vcpu, &mut p, 0xd, 1)[1], 576);
        vcpu.xcr0 = 0x7;
        assert_eq!(forced(&vcpu, &mut p, 0xd, 0)[1], 832);
        assert_eq!(forced(&vcpu, &mut p, 0xd, 1)[1], 832);
        vcpu.xcr0 = 0xe7;
        assert_eq!(forced(&vcpu, &mut p, 0xd, 0)[1], 2688);
        assert_eq!(forced(&vcpu, &mut p, 0xd, 1)[1], 832 + 64 + 512 + 1024);
        // Without XSAVEC, leaf 0xD.1 EBX is the table's.
        p.cpuid_leaves[2].1 = [0x1, 0, 0, 0];
        assert_eq!(forced(&vcpu, &mut p, 0xd, 1)[1], 0);
    }

    #[test]
    fn valid_xcr0_is_xens() {
        assert!(valid_xcr0(0x1) && valid_xcr0(0x3) && valid_xcr0(0x7) && valid_xcr0(0xe7));
        assert!(valid_xcr0(0x1b) && valid_xcr0(0x60003) && valid_xcr0(0x207));
        assert!(!valid_xcr0(0xb) && !valid_xcr0(0x20003) && !valid_xcr0(0xc7));
    }
}
