//! `memory_op`. `XENMEM_machphys_mapping` tells the guest where the read-only M2P table
//! is: pvkvm maps it at `contract::M2P_VA` (in the hypervisor hole, one slot above Xen's
//! address; see the contract for why).

use xen_abi::contract::{M2P_VA, M2P_VA_END};
use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, ESRCH};
use xen_abi::memory::*;
use xen_abi::xen::hypercall as hc;

use crate::hypercall::{addr_ok, Action};
use crate::{guest, Platform, Vcpu};

/// Highest machine frame number the M2P area can describe (`MACH2PHYS_NR_ENTRIES - 1`).
pub const M2P_MAX_MFN: u64 = ((M2P_VA_END - M2P_VA) >> 3) - 1;

/// An M2P entry that names no pfn.
const INVALID_M2P_ENTRY: u64 = !0;

/// `MEMOP_EXTENT_SHIFT`: a preempted reservation call continues with the extents done so
/// far in the command's bits from here up.
pub const MEMOP_EXTENT_SHIFT: u32 = 6;
/// `MEMOP_CMD_MASK`: the sub-operation in the command's low bits.
pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;

/// The reservation calls (`op`): give frames back, take them again, from extent `start`
/// on (a continuation's progress). Returns the extents done in all, counting the
/// `start` a continuation carried; every refusal of the request as a whole answers
/// `start`, as Xen's does. Preempted between extents (never before the first of this
/// entry), it continues with `op | done << MEMOP_EXTENT_SHIFT`.
fn reservation(vcpu: &Vcpu, p: &mut dyn Platform, op: u64, start: u64, a: [u64; 5]) -> Action {
    let arg = a[1];
    let Ok(r) = guest::read_obj::<MemoryReservation>(vcpu, p, arg) else {
        return Action::Ret(start as i64);
    };
    // Too large to encode a continuation, or a continuation past the end.
    if r.nr_extents > u64::from(u32::MAX >> MEMOP_EXTENT_SHIFT) || start >= r.nr_extents {
        return Action::Ret(start as i64);
    }
    if !crate::is_own_domain(r.domid) {
        return Action::Ret(start as i64);
    }
    // increase_reservation may pass no list (the frames are not named back).
    let list = r.extent_start;
    let named = !(op == XENMEM_INCREASE_RESERVATION && list == 0);
    // Xen's guest_handle_subrange_okay from the first extent still to do (start is
    // below 2^26, so the offset cannot overflow; the sum can, and then faults).
    if named && !list.checked_add(start * 8).is_some_and(addr_ok) {
        return Action::Ret(start as i64);
    }
    if r.extent_order != 0 {
        // Larger extents would need contiguous machine frames; Linux's balloon and
        // setup code use order 0.
        return Action::Ret(start as i64);
    }
    let mut done = start;
    while done < r.nr_extents {
        if done != start && p.hypercall_preempt_check() {
            let cmd = op | (done << MEMOP_EXTENT_SHIFT);
            return Action::cont(hc::MEMORY_OP, [cmd, arg, a[2], a[3], a[4]]);
        }
        // A list that runs off the end of the address space stops there, as a copy
        // that faults.
        let Some(slot) = list.checked_add(done * 8) else {
            break;
        };
        if !extent(vcpu, p, op, slot, named) {
            break;
        }
        done += 1;
    }
    Action::Ret(done as i64)
}

/// One extent of a reservation call, its list entry at `slot`; false stops the call.
fn extent(vcpu: &Vcpu, p: &mut dyn Platform, op: u64, slot: u64, named: bool) -> bool {
    // decrease_reservation and populate_physmap read the entry (an MFN to give back, a
    // pfn to populate); increase_reservation only writes it.
    let frame = if op == XENMEM_INCREASE_RESERVATION {
        0
    } else {
        match guest::read_obj::<u64>(vcpu, p, slot) {
            Ok(f) => f,
            Err(_) => return false,
        }
    };
    let Some(ctx) = p.mm() else { return false };
    let mfn = match op {
        XENMEM_DECREASE_RESERVATION => {
            if ctx.mm.release_frame(frame).is_err() {
                return false;
            }
            ctx.mem.write_m2p(frame, INVALID_M2P_ENTRY);
            return true;
        }
        _ => match ctx.mm.reclaim_frame() {
            Some(mfn) => mfn,
            None => return false,
        },
    };
    // populate_physmap passes the pfn the frame is for; increase does not.
    if op == XENMEM_POPULATE_PHYSMAP {
        ctx.mem.write_m2p(mfn, frame);
    }
    !named || guest::write_obj(vcpu, p, slot, &mfn).is_ok()
}

/// `HYPERVISOR_memory_op(cmd, arg)`. The sub-operation is in `cmd`'s low bits
/// ([`MEMOP_CMD_MASK`]), a reservation call's progress above them; the other common
/// sub-operations take no progress (-EINVAL with one), and the architecture's own match
/// the whole command, as in Xen's `do_memory_op` / `arch_memory_op`.
pub(crate) fn do_memory_op(vcpu: &Vcpu, p: &mut dyn Platform, a: [u64; 5]) -> Action {
    let (cmd, arg) = (a[0], a[1]);
    let op = cmd & MEMOP_CMD_MASK;
    let start = cmd >> MEMOP_EXTENT_SHIFT;
    match op {
        XENMEM_INCREASE_RESERVATION | XENMEM_DECREASE_RESERVATION | XENMEM_POPULATE_PHYSMAP => {
            return reservation(vcpu, p, op, start, a)
        }
        XENMEM_MAXIMUM_RAM_PAGE | XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION
            if start != 0 =>
        {
            return Action::Ret(-EINVAL)
        }
        _ => {}
    }
    Action::Ret(match cmd {
        XENMEM_MAXIMUM_RAM_PAGE => match p.mm() {
            Some(ctx) => ctx.mm.config().nr_frames as i64,
            None => -ENOSYS,
        },
        XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => {
            let Ok(domid) = guest::read_obj::<u16>(vcpu, p, arg) else {
                return Action::Ret(-EFAULT);
            };
            if !crate::is_own_domain(domid) {
                return Action::Ret(-ESRCH);
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{setup, FakePlatform, DATA_VA, UNMAPPED_VA};

    fn memop(vcpu: &Vcpu, p: &mut FakePlatform, cmd: u64, arg: u64) -> i64 {
        match do_memory_op(vcpu, p, [cmd, arg, 0, 0, 0]) {
            Action::Ret(v) => v,
            other => panic!("memory_op {cmd:#x}: {other:?}"),
        }
    }

    #[test]
    fn machphys_mapping_reports_the_m2p_area() {
        let (vcpu, _, mut p) = setup();
        assert_eq!(memop(&vcpu, &mut p, XENMEM_MACHPHYS_MAPPING, DATA_VA), 0);
        let got: MachphysMapping = guest::read_obj(&vcpu, &p, DATA_VA).unwrap();
        assert_eq!(got.v_start, M2P_VA);
        assert_eq!(got.v_end, M2P_VA_END);
        assert_eq!(got.max_mfn, (1 << 35) - 1);
        assert_eq!(
            memop(&vcpu, &mut p, XENMEM_MACHPHYS_MAPPING, UNMAPPED_VA),
            -EFAULT
        );
        assert_eq!(memop(&vcpu, &mut p, 99, DATA_VA), -ENOSYS);
    }
}
