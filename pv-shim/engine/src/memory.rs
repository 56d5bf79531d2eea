//! `memory_op`: the sub-operations a PV guest needs before the pagetable engine exists.
//! `XENMEM_machphys_mapping` tells the guest where the read-only M2P table is (the VMM
//! maps it there in every L4); the reservation and physmap calls come with the MMU
//! engine.

use xen_abi::errno::{EFAULT, ENOSYS};
use xen_abi::memory::{MachphysMapping, XENMEM_MACHPHYS_MAPPING};
use xen_abi::xen::{MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};

use crate::{guest, Platform, Vcpu};

/// Highest machine frame number the M2P area can describe (`MACH2PHYS_NR_ENTRIES - 1`).
pub const M2P_MAX_MFN: u64 = ((MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3) - 1;

/// `HYPERVISOR_memory_op(cmd, arg)`.
pub fn do_memory_op(vcpu: &Vcpu, p: &mut dyn Platform, cmd: u64, arg: u64) -> i64 {
    match cmd {
        XENMEM_MACHPHYS_MAPPING => {
            let map = MachphysMapping {
                v_start: MACH2PHYS_VIRT_START,
                v_end: MACH2PHYS_VIRT_END,
                max_mfn: M2P_MAX_MFN,
            };
            match guest::write_obj(vcpu, p, arg, &map) {
                Ok(()) => 0,
                Err(_) => -EFAULT,
            }
        }
        _ => -ENOSYS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{setup, DATA_VA, UNMAPPED_VA};

    #[test]
    fn machphys_mapping_reports_the_m2p_area() {
        let (vcpu, mut p) = setup();
        assert_eq!(
            do_memory_op(&vcpu, &mut p, XENMEM_MACHPHYS_MAPPING, DATA_VA),
            0
        );
        let got: MachphysMapping = guest::read_obj(&vcpu, &p, DATA_VA).unwrap();
        assert_eq!(got.v_start, 0xffff_8000_0000_0000);
        assert_eq!(got.v_end, 0xffff_8040_0000_0000);
        assert_eq!(got.max_mfn, (1 << 35) - 1);
        assert_eq!(
            do_memory_op(&vcpu, &mut p, XENMEM_MACHPHYS_MAPPING, UNMAPPED_VA),
            -EFAULT
        );
        assert_eq!(do_memory_op(&vcpu, &mut p, 99, DATA_VA), -ENOSYS);
    }
}
