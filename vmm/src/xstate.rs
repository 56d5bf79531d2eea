//! Extended state on this host, decided from measured facts ([`crate::probe::XstateHost`]):
//! whether the guest is offered XSAVE (and for which XCR0), how a guest `xsetbv` takes
//! effect, and whether PKRU must be reset when the guest enters its kernel.
//!
//! Three kinds of host:
//! - **XCR0 follows the vCPU** (`KVM_SET_XCRS` governs what guest ring 3 runs with): the
//!   guest kernel owns XCR0 as on Xen; its emulated `xsetbv` becomes `KVM_SET_XCRS`.
//! - **XCR0 fixed** (ring 3 always runs with the host's own XCR0 `H`, whatever the vCPU's
//!   says; kvm_pvm here): guest processes can use every user component of `H` anyway, so
//!   the only correct guest XCR0 is `H`: XSAVE is offered with leaf 0xD's mask exactly
//!   `H` (its user components pvkvm can offer), and `xsetbv` of any other value is
//!   refused with #GP. Linux sets the full mask once at boot, so its task switches then
//!   save what ring 3 really uses. Hiding XSAVE would not help on such a host: ring-3
//!   CPUID leaves 1 and 7 are the host's (AVX visible) and AVX executes regardless.
//! - **No XSAVE** (the host has none): hidden.

use crate::probe::{Ring3, XstateHost};
use crate::vstate;

/// XCR0 components pvkvm may offer a PV guest: x87, SSE, AVX and the AVX-512 trio (Xen's
/// PV featureset; not MPX, PKRU or AMX).
pub const OFFERABLE_XCR0: u64 = 0x7 | 0xe0;

/// How a guest XCR0 reaches the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xcr0Control {
    /// `KVM_SET_XCRS` sets what guest ring 3 runs with.
    Vcpu,
    /// Guest ring 3 always runs with this XCR0 (the host's).
    Fixed(u64),
    /// No XSAVE for the guest.
    Hidden,
}

/// What the runner does about extended state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XstatePlan {
    /// How XCR0 is controlled.
    pub control: Xcr0Control,
    /// Leaf 0xD.0 EDX:EAX the guest is offered (0 with XSAVE hidden).
    pub xcr0_mask: u64,
    /// A guest process can write PKRU at ring 3 on this host: it must be 0 again
    /// before the guest kernel (or another process) runs. A protection-key #PF then
    /// runs the shim's PKRU trampoline (`exit::PkruReset`), which works on every such
    /// host.
    pub reset_pkru: bool,
    /// And KVM's XSAVE image carries PKRU both ways (a ring-3 `wrpkru` shows in
    /// `KVM_GET_XSAVE`, a `KVM_SET_XSAVE` of it reaches ring 3): then the VMM also
    /// clears it at every entry of the guest kernel from user mode, with no fault
    /// first. Where the image does not carry it that read could never find it set,
    /// so it is skipped (a `KVM_GET_XSAVE`, several us, on every such exit).
    pub reset_pkru_by_xsave: bool,
}

impl XstatePlan {
    /// XSAVE hidden, nothing to reset.
    pub const HIDDEN: Self = Self {
        control: Xcr0Control::Hidden,
        xcr0_mask: 0,
        reset_pkru: false,
        reset_pkru_by_xsave: false,
    };

    /// The plan for a host with these facts.
    pub fn for_host(x: &XstateHost) -> Self {
        let reset_pkru = x.wrpkru_reachable();
        let reset_pkru_by_xsave = reset_pkru && x.pkru_in_xsave_image();
        let (control, xcr0_mask) = if x.kvm_xcr0_mask & 0x3 != 0x3 {
            (Xcr0Control::Hidden, 0)
        } else if x.xcr0_follows_vcpu() {
            (Xcr0Control::Vcpu, x.kvm_xcr0_mask & OFFERABLE_XCR0)
        } else {
            match x.xgetbv_after_sse {
                // Ring 3 runs with a fixed XCR0 that includes only components pvkvm can
                // offer (and x87|SSE): offer exactly that.
                Ring3::Value(h) if h & 0x3 == 0x3 && h & OFFERABLE_XCR0 & !x.kvm_xcr0_mask == 0 => {
                    (Xcr0Control::Fixed(h), h & OFFERABLE_XCR0)
                }
                _ => (Xcr0Control::Hidden, 0),
            }
        };
        Self {
            control,
            xcr0_mask,
            reset_pkru,
            reset_pkru_by_xsave,
        }
    }

    /// Whether the host can give guest ring 3 exactly `xcr0` (already valid and within
    /// the policy): anything with [`Xcr0Control::Vcpu`]; only the full mask where XCR0
    /// is fixed (a smaller one would leave state ring 3 uses out of the kernel's saves).
    pub fn accepts(&self, xcr0: u64) -> bool {
        match self.control {
            Xcr0Control::Vcpu => true,
            Xcr0Control::Fixed(_) => xcr0 == self.xcr0_mask,
            Xcr0Control::Hidden => false,
        }
    }

    /// The XCR0 the vCPU starts with (Xen's x87|SSE), where KVM governs it.
    pub fn initial_xcr0(&self) -> u64 {
        match self.control {
            Xcr0Control::Fixed(h) => h,
            _ => pv_engine::xstate::XCR0_INITIAL,
        }
    }
}

/// Sets PKRU to 0 (all keys allow all) in the vCPU's extended state when it is not 0
/// already: a guest process's PKRU must not reach the guest kernel (which runs at CPL3
/// on user pages, so PKRU applies to it) nor the next process. Costs one
/// `KVM_GET_XSAVE`, and a `KVM_SET_XSAVE` only when PKRU was set.
pub fn reset_pkru(vcpu: &mut vstate::Vcpu) -> vstate::Result<bool> {
    let mut area = vcpu.xsave_area()?;
    let at = vstate::XSAVE_PKRU_OFFSET;
    let bv = u64::from_le_bytes([
        area[512], area[513], area[514], area[515], area[516], area[517], area[518], area[519],
    ]);
    if bv & (1 << 9) == 0 || area[at..at + 4] == [0; 4] {
        return Ok(false);
    }
    area[at..at + 4].fill(0);
    vcpu.set_xsave_area(&area)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(after_sse: Ring3, after_avx: Ring3, avx_sse_only: Ring3) -> XstateHost {
        XstateHost {
            kvm_xcr0_mask: 0x7,
            xgetbv_after_sse: after_sse,
            xgetbv_after_avx: after_avx,
            avx_with_sse_only: avx_sse_only,
            avx_with_avx: Ring3::Value(0),
            xgetbv_without_osxsave: Ring3::Fault(6),
            rdpkru_without_pke: Ring3::Fault(6),
            wrpkru_without_pke: Ring3::Fault(6),
            pkru_in_kvm_xsave: None,
            rdpkru_after_set_xsave: Ring3::Unknown,
            xsave_ioctls_us: 0.0,
            leaf1_from_table: Some(false),
            leaf7_from_table: Some(false),
            ring3_osxsave: (None, None),
            ring3_leaf1_ecx: None,
            ring3_leaf7_ecx: None,
        }
    }

    #[test]
    fn this_hosts_facts_give_a_fixed_xcr0() {
        // kvm_pvm on the project's machine: ring 3 runs with the host's 0x7 always.
        let p = XstatePlan::for_host(&host(Ring3::Value(7), Ring3::Value(7), Ring3::Value(0)));
        assert_eq!(p.control, Xcr0Control::Fixed(7));
        assert_eq!(p.xcr0_mask, 7);
        assert!(p.accepts(7) && !p.accepts(3) && !p.reset_pkru);
    }

    #[test]
    fn a_host_that_follows_kvm_set_xcrs_lets_the_guest_choose() {
        let p = XstatePlan::for_host(&host(Ring3::Value(3), Ring3::Value(7), Ring3::Fault(6)));
        assert_eq!((p.control, p.xcr0_mask), (Xcr0Control::Vcpu, 7));
        assert!(p.accepts(3) && p.accepts(7));
        assert_eq!(p.initial_xcr0(), 3);
    }

    /// The policy over a host whose KVM table lacks XSAVE and AVX in leaf 1 but reports
    /// x87|SSE|AVX (and more) in leaf 0xD, as kvm_pvm's does, with the plan's mask.
    fn policy(xcr0: u64) -> crate::cpuid::CpuidTable {
        let dump = "0x0 0x0 0xd 0x68747541 0x444d4163 0x69746e65\n\
                    0x1 0x0 0x00a00f11 0x0 0x00000000 0x078bfbff\n\
                    0x7 0x0 0x0 0x00000020 0x0 0x0\n\
                    0xd 0x0 0x2e7 0x340 0x988 0x0\n\
                    0xd 0x2 0x100 0x240 0x0 0x0\n";
        let raw = crate::cpuid::RawCpuid::parse_dump(dump).unwrap();
        crate::cpuid::CpuidTable::build(
            &raw,
            &crate::cpuid::PolicyOptions {
                xcr0,
                ..Default::default()
            },
        )
    }

    #[test]
    fn the_policy_offers_exactly_the_plans_mask() {
        let t = policy(0x7);
        let ecx = t.lookup(1, 0)[2];
        assert_eq!(
            ecx & (0b111 << 26),
            (1 << 26) | (1 << 28),
            "XSAVE, AVX, never OSXSAVE"
        );
        assert_eq!(t.lookup(0xd, 0)[0], 0x7);
        assert_eq!(t.lookup(0xd, 0)[3], 0);
        assert_eq!(t.lookup(0xd, 2)[..2], [0x100, 0x240]);
        assert_eq!(
            t.lookup(7, 0)[1] & (1 << 16),
            0,
            "no AVX-512F without its state"
        );
        assert_ne!(t.lookup(7, 0)[1] & (1 << 5), 0, "AVX2 stays with AVX");
        let t = policy(0);
        assert_eq!(t.lookup(1, 0)[2] & (0b111 << 26), 0);
        assert_eq!(t.lookup(7, 0)[1] & ((1 << 5) | (1 << 16)), 0);
        assert_eq!(t.lookup(0xd, 0), [0; 4]);
    }

    #[test]
    fn unknown_or_unofferable_fixed_xcr0_hides_xsave() {
        for h in [Ring3::Fault(6), Ring3::Unknown, Ring3::Value(0x1)] {
            let p = XstatePlan::for_host(&host(h, h, Ring3::Value(0)));
            assert_eq!((p.control, p.xcr0_mask), (Xcr0Control::Hidden, 0), "{h:?}");
        }
        let mut x = host(Ring3::Value(7), Ring3::Value(7), Ring3::Value(0));
        x.wrpkru_without_pke = Ring3::Value(8);
        assert!(XstatePlan::for_host(&x).reset_pkru);
    }

    #[test]
    fn pkru_is_reset_through_kvms_image_only_where_the_image_carries_it() {
        let mut x = host(Ring3::Value(3), Ring3::Value(7), Ring3::Fault(6));
        // No ring-3 wrpkru: nothing to reset.
        let p = XstatePlan::for_host(&x);
        assert!(!p.reset_pkru && !p.reset_pkru_by_xsave);
        // wrpkru works and KVM's image carries PKRU both ways: reset at kernel entry.
        x.wrpkru_without_pke = Ring3::Value(8);
        x.pkru_in_kvm_xsave = Some(8);
        x.rdpkru_after_set_xsave = Ring3::Value(0x5555_5554);
        let p = XstatePlan::for_host(&x);
        assert!(p.reset_pkru && p.reset_pkru_by_xsave);
        // An AMD EPYC kvm_pvm host of this project: the image shows 0 after the guest's
        // wrpkru and its PKRU never reaches ring 3: only the fault-driven trampoline.
        x.pkru_in_kvm_xsave = Some(0);
        x.rdpkru_after_set_xsave = Ring3::Value(8);
        let p = XstatePlan::for_host(&x);
        assert!(p.reset_pkru && !p.reset_pkru_by_xsave);
        // Unknown either way: the trampoline alone (the image path could not help).
        x.pkru_in_kvm_xsave = None;
        x.rdpkru_after_set_xsave = Ring3::Value(0x5555_5554);
        assert!(!XstatePlan::for_host(&x).reset_pkru_by_xsave);
    }
}
