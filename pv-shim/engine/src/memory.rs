//! `memory_op`. `XENMEM_machphys_mapping` tells the guest where the read-only M2P table
//! is: pvkvm maps it at `contract::M2P_VA` (in the hypervisor hole, one slot above Xen's
//! address; see the contract for why).

use xen_abi::contract::{M2P_VA, M2P_VA_END};
use xen_abi::errno::{EFAULT, ENOSYS, ESRCH};
use xen_abi::memory::*;

use crate::{guest, Platform, Vcpu};

/// Highest machine frame number the M2P area can describe (`MACH2PHYS_NR_ENTRIES - 1`).
pub const M2P_MAX_MFN: u64 = ((M2P_VA_END - M2P_VA) >> 3) - 1;

/// An M2P entry that names no pfn.
const INVALID_M2P_ENTRY: u64 = !0;

/// The reservation calls: give frames back, take them again. Returns the extents done.
fn reservation(vcpu: &Vcpu, p: &mut dyn Platform, cmd: u64, arg: u64) -> i64 {
    let Ok(r) = guest::read_obj::<MemoryReservation>(vcpu, p, arg) else {
        return -EFAULT;
    };
    if !crate::is_own_domain(r.domid) {
        return -ESRCH;
    }
    if r.extent_order != 0 {
        // Larger extents would need contiguous machine frames; Linux's balloon and
        // setup code use order 0.
        return 0;
    }
    let mut done: u64 = 0;
    while done < r.nr_extents {
        let slot = r.extent_start.wrapping_add(done * 8);
        let Ok(frame) = guest::read_obj::<u64>(vcpu, p, slot) else {
            break;
        };
        let Some(ctx) = p.mm() else { return -ENOSYS };
        let result = match cmd {
            XENMEM_DECREASE_RESERVATION => ctx.mm.release_frame(frame).map(|()| {
                ctx.mem.write_m2p(frame, INVALID_M2P_ENTRY);
                None
            }),
            _ => match ctx.mm.reclaim_frame() {
                Some(mfn) => {
                    // populate_physmap passes the pfn the frame is for; increase does not.
                    if cmd == XENMEM_POPULATE_PHYSMAP {
                        ctx.mem.write_m2p(mfn, frame);
                    }
                    Ok(Some(mfn))
                }
                None => break,
            },
        };
        match result {
            Ok(Some(mfn)) => {
                if guest::write_obj(vcpu, p, slot, &mfn).is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(_) => break,
        }
        done += 1;
    }
    done as i64
}

/// `HYPERVISOR_memory_op(cmd, arg)`.
pub fn do_memory_op(vcpu: &Vcpu, p: &mut dyn Platform, cmd: u64, arg: u64) -> i64 {
    match cmd {
        XENMEM_INCREASE_RESERVATION | XENMEM_DECREASE_RESERVATION | XENMEM_POPULATE_PHYSMAP => {
            reservation(vcpu, p, cmd, arg)
        }
        XENMEM_MAXIMUM_RAM_PAGE => match p.mm() {
            Some(ctx) => ctx.mm.config().nr_frames as i64,
            None => -ENOSYS,
        },
        XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => {
            let Ok(domid) = guest::read_obj::<u16>(vcpu, p, arg) else {
                return -EFAULT;
            };
            if !crate::is_own_domain(domid) {
                return -ESRCH;
            }
            match p.mm() {
                Some(ctx) if cmd == XENMEM_CURRENT_RESERVATION => ctx.mm.owned_frames() as i64,
                Some(ctx) => ctx.mm.config().nr_frames as i64,
                None => -ENOSYS,
            }
        }
        // A PV domU without a toolstack-set memory map: Xen answers -ENOSYS and Linux
        // then uses one RAM range of nr_pages.
        XENMEM_MEMORY_MAP => -ENOSYS,
        XENMEM_MACHPHYS_MAPPING => {
            let map = MachphysMapping {
                v_start: M2P_VA,
                v_end: M2P_VA_END,
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
        assert_eq!(got.v_start, M2P_VA);
        assert_eq!(got.v_end, M2P_VA_END);
        assert_eq!(got.max_mfn, (1 << 35) - 1);
        assert_eq!(
            do_memory_op(&vcpu, &mut p, XENMEM_MACHPHYS_MAPPING, UNMAPPED_VA),
            -EFAULT
        );
        assert_eq!(do_memory_op(&vcpu, &mut p, 99, DATA_VA), -ENOSYS);
    }
}
