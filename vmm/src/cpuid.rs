//! The guest's CPUID policy, one table for both views a PV guest has: raw `cpuid`
//! (answered by KVM from `KVM_SET_CPUID2`) and the forced-emulation `ud2; "xen"; cpuid`
//! (answered by the engine through [`CpuidTable::lookup`]).
//!
//! Based on what this host's KVM supports, with Xen's hypervisor leaves at 0x40000000
//! instead of KVM's, and the features a PV guest must not use hidden, as Xen's PV policy
//! hides them: VMX, SMX, MONITOR/MWAIT, x2APIC and the TSC-deadline timer (a PV guest has
//! no local APIC), the paging features PV guests cannot use (PSE, PSE36, PGE, 1 GiB pages;
//! VME, MTRR), and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX bits hidden from a PV guest.
const LEAF1_ECX_HIDDEN: u32 = (1 << 3) | (1 << 5) | (1 << 6) | (1 << 21) | (1 << 24);
/// Leaf 1 EDX bits Xen's PV featureset does not offer (`cpufeatureset.h` marks them
/// HVM-only): VME, PSE, MTRR, PGE, PSE36. Linux relies on this: with PSE visible it
/// would build its direct map from 2 MiB pages, which a PV guest may not use.
const LEAF1_EDX_HIDDEN: u32 = (1 << 1) | (1 << 3) | (1 << 12) | (1 << 13) | (1 << 17);
/// Leaf 0x80000001 EDX: 1 GiB pages (HAP-only in Xen's featureset).
const EXT1_EDX_HIDDEN: u32 = 1 << 26;
/// Leaf 7 ECX: UMIP (not offered to PV guests).
const LEAF7_ECX_UMIP: u32 = 1 << 2;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Machine address width Linux must see in leaf 0x40000005 (above 44 bits it asks for
/// grant tables v2).
pub const PV_MACHINE_ADDRESS_BITS: u32 = 44;

/// A CPUID table.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    entries: Vec<kvm_cpuid_entry2>,
}

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

fn sig(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

impl CpuidTable {
    /// The PV policy with leaf 0x16 reporting the processor's base frequency (the TSC
    /// rate), so a kernel takes it from CPUID instead of timing the PIT: on this kind of
    /// host every PIT read is a trap, and the PIT loop cost ~10 s of boot.
    pub fn pv_policy_with_tsc(supported: &CpuId, tsc_khz: u32) -> Self {
        let mut t = Self::pv_policy(supported);
        let mhz = tsc_khz / 1000;
        if mhz != 0 {
            t.entries.retain(|e| e.function != 0x16);
            t.entries.push(leaf(0x16, mhz, mhz, 100, 0));
            for e in t.entries.iter_mut().filter(|e| e.function == 0) {
                e.eax = e.eax.max(0x16);
            }
        }
        t
    }

    /// The PV policy built from what KVM supports.
    pub fn pv_policy(supported: &CpuId) -> Self {
        let mut entries: Vec<kvm_cpuid_entry2> = supported
            .as_slice()
            .iter()
            .copied()
            .filter(|e| e.function & 0xffff_0000 != 0x4000_0000)
            .collect();
        for e in entries.iter_mut() {
            match e.function {
                1 => {
                    e.ecx = (e.ecx & !LEAF1_ECX_HIDDEN) | LEAF1_ECX_HYPERVISOR;
                    e.edx &= !LEAF1_EDX_HIDDEN;
                }
                0x8000_0001 => e.edx &= !EXT1_EDX_HIDDEN,
                // UMIP would make a kernel set CR4.UMIP; PV guests do not own CR4.
                7 if e.index == 0 => e.ecx &= !LEAF7_ECX_UMIP,
                _ => {}
            }
        }
        entries.push(leaf(
            0x4000_0000,
            0x4000_0005,
            sig(b"XenV"),
            sig(b"MMXe"),
            sig(b"nVMM"),
        ));
        entries.push(leaf(0x4000_0001, (4 << 16) | 17, 0, 0, 0));
        // One hypercall page; MSR base for it; no Xen-specific features (bit 0 would
        // claim MMU_PT_UPDATE_PRESERVE_AD through CPUID, which Linux reads from XENVER).
        entries.push(leaf(0x4000_0002, 1, 0x4000_0000, 0, 0));
        entries.push(leaf(0x4000_0003, 0, 0, 0, 0));
        entries.push(leaf(0x4000_0004, 0, 0, 0, 0));
        entries.push(leaf(0x4000_0005, 0, PV_MACHINE_ADDRESS_BITS, 0, 0));
        Self { entries }
    }

    /// Extended state as [`crate::xstate::XstatePlan`] decided (issue 9): with `xcr0_mask`
    /// 0, XSAVE and what needs it (AVX, FMA, F16C, AVX2, AVX-512) hidden; otherwise XSAVE,
    /// AVX when the mask has YMM (FMA, F16C, AVX2 as the table had them), AVX-512F when
    /// it has the AVX-512 trio (the AVX-512 family hidden otherwise), XSAVEOPT
    /// and XGETBV1 as the host has them, and leaf 0xD for exactly that mask. OSXSAVE is
    /// never in the table: the engine adds it per vCPU, as Xen does.
    pub fn apply_xstate(&mut self, xcr0_mask: u64) {
        let has = |m: u64| xcr0_mask & m == m && xcr0_mask != 0;
        let host_d1 = core::arch::x86_64::__cpuid_count(0xd, 1).eax;
        for e in self.entries.iter_mut() {
            match (e.function, e.index) {
                (1, _) => {
                    e.ecx &= !((1 << 26) | (1 << 27) | (1 << 28));
                    if has(0x3) {
                        e.ecx |= 1 << 26;
                    }
                    if has(0x7) {
                        e.ecx |= 1 << 28;
                    } else {
                        // FMA and F16C need AVX state.
                        e.ecx &= !((1 << 12) | (1 << 29));
                    }
                }
                (7, 0) if !has(0x7) => e.ebx &= !((1 << 5) | 0xdc23_0000),
                (7, 0) if has(0xe7) => e.ebx |= 1 << 16,
                (7, 0) => e.ebx &= !0xdc23_0000,
                _ => {}
            }
        }
        self.entries.retain(|e| e.function != 0xd);
        if xcr0_mask == 0 {
            return;
        }
        let mut max = 576;
        for i in 2..63u32 {
            if xcr0_mask & (1 << i) != 0 {
                let r = core::arch::x86_64::__cpuid_count(0xd, i);
                max = max.max(r.eax + r.ebx);
                let mut e = leaf(0xd, r.eax, r.ebx, r.ecx & 1, 0);
                e.index = i;
                e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                self.entries.push(e);
            }
        }
        let mut d0 = leaf(0xd, xcr0_mask as u32, 576, max, (xcr0_mask >> 32) as u32);
        d0.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        // XSAVEOPT (bit 0) and XGETBV1 (bit 2); not XSAVEC nor XSAVES.
        let mut d1 = leaf(0xd, host_d1 & 0b101, 0, 0, 0);
        d1.index = 1;
        d1.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        self.entries.push(d0);
        self.entries.push(d1);
        for e in self.entries.iter_mut().filter(|e| e.function == 0) {
            e.eax = e.eax.max(0xd);
        }
    }

    /// The table for `KVM_SET_CPUID2`.
    pub fn to_kvm(&self) -> Option<CpuId> {
        CpuId::from_entries(&self.entries).ok()
    }

    /// What `cpuid` with this leaf and subleaf returns; zeros for a leaf not in the table.
    pub fn lookup(&self, function: u32, index: u32) -> [u32; 4] {
        self.entries
            .iter()
            .find(|e| {
                e.function == function
                    && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
            })
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
            .unwrap_or([0; 4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CpuidTable {
        let mut ext = leaf(7, 0, 0xaa, 0, 0);
        ext.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let mut ext1 = leaf(7, 1, 0xbb, 0, 0);
        ext1.index = 1;
        ext1.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let supported = CpuId::from_entries(&[
            leaf(0, 0xd, 0, 0, 0),
            leaf(1, 0, 0, 0xffff_ffff, 0),
            ext,
            ext1,
            leaf(
                0x4000_0000,
                0x4000_0001,
                sig(b"KVMK"),
                sig(b"VMKV"),
                sig(b"M\0\0\0"),
            ),
        ])
        .unwrap();
        CpuidTable::pv_policy(&supported)
    }

    #[test]
    fn xen_leaves_replace_kvms() {
        let t = table();
        let [max, b, c, d] = t.lookup(0x4000_0000, 0);
        assert_eq!(max, 0x4000_0005);
        let name: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&name, b"XenVMMXenVMM");
        assert_eq!(t.lookup(0x4000_0005, 0)[1], 44);
        assert_eq!(t.lookup(0x4000_0001, 0)[0] >> 16, 4);
    }

    #[test]
    fn pv_policy_hides_what_a_pv_guest_must_not_use() {
        let ecx = table().lookup(1, 0)[2];
        for bit in [3, 5, 6, 21, 24] {
            assert_eq!(ecx & (1 << bit), 0, "leaf 1 ecx bit {bit} must be hidden");
        }
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(ecx & 1, 0, "other features stay");
    }

    #[test]
    fn pv_guests_see_no_superpage_features() {
        let mut l1 = leaf(1, 0, 0, 0, 0xffff_ffff);
        l1.ecx = 0;
        let ext = leaf(0x8000_0001, 0, 0, 0, 0xffff_ffff);
        let t = CpuidTable::pv_policy(&CpuId::from_entries(&[l1, ext]).unwrap());
        let edx = t.lookup(1, 0)[3];
        for bit in [1, 3, 12, 13, 17] {
            assert_eq!(edx & (1 << bit), 0, "leaf 1 edx bit {bit}");
        }
        assert_ne!(edx & 1, 0, "FPU stays");
        assert_eq!(t.lookup(0x8000_0001, 0)[3] & (1 << 26), 0, "1 GiB pages");
    }

    #[test]
    fn leaf_0x16_reports_the_tsc_rate() {
        let supported = CpuId::from_entries(&[leaf(0, 0xd, 0, 0, 0)]).unwrap();
        let t = CpuidTable::pv_policy_with_tsc(&supported, 2_300_000);
        assert_eq!(t.lookup(0x16, 0)[0], 2300);
        assert!(t.lookup(0, 0)[0] >= 0x16, "the max basic leaf covers 0x16");
    }

    #[test]
    fn subleaves_are_honoured() {
        let t = table();
        assert_eq!(t.lookup(7, 0)[1], 0xaa);
        assert_eq!(t.lookup(7, 1)[1], 0xbb);
        assert_eq!(t.lookup(0x8000_0000, 0), [0; 4]);
    }
}
