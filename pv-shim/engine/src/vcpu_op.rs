//! `vcpu_op` for a domain of one vCPU: whether vCPUs are up, taking the only one down
//! (which is how a PV kernel halts after a panic), the memory areas Linux registers
//! early (`register_runstate_memory_area`, `register_vcpu_info`), the runstate accounting
//! behind them, the second pvclock copy (`register_vcpu_time_memory_area`), and the timer
//! sub-ops (served by [`crate::time`]).
//!
//! Runstate: the vCPU is `running` while the guest runs or the host serves its traps and
//! `blocked` while the host waits for an event for it (`SCHEDOP_block`/`poll`); the host
//! reports each change with [`runstate_change`], which updates the registered area as
//! Xen does on a context switch. Time the host thread is descheduled is not visible to
//! the VMM and counts as running (a later refinement could report it as `runnable`).

use xen_abi::errno::{EFAULT, EINVAL, ENOENT, ENOSYS};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{guest, Domain, Outcome, Platform, Vcpu};

/// `VCPUOP_*` numbers.
pub mod cmd {
    #![allow(missing_docs)]
    pub const INITIALISE: u64 = 0;
    pub const UP: u64 = 1;
    pub const DOWN: u64 = 2;
    pub const IS_UP: u64 = 3;
    pub const GET_RUNSTATE_INFO: u64 = 4;
    pub const REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
    pub const SET_PERIODIC_TIMER: u64 = 6;
    pub const STOP_PERIODIC_TIMER: u64 = 7;
    pub const SET_SINGLESHOT_TIMER: u64 = 8;
    pub const STOP_SINGLESHOT_TIMER: u64 = 9;
    pub const REGISTER_VCPU_INFO: u64 = 10;
    pub const REGISTER_VCPU_TIME_MEMORY_AREA: u64 = 13;
}

/// `struct vcpu_runstate_info`: state, when it was entered, time spent in each state.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RunstateInfo {
    /// `RUNSTATE_*` (0 running).
    pub state: i32,
    /// Padding.
    pub _pad: u32,
    /// System time at which `state` was entered.
    pub state_entry_time: u64,
    /// Nanoseconds spent running, runnable, blocked, offline.
    pub time: [u64; 4],
}

/// `RUNSTATE_*`.
pub mod runstate {
    #![allow(missing_docs)]
    pub const RUNNING: i32 = 0;
    pub const RUNNABLE: i32 = 1;
    pub const BLOCKED: i32 = 2;
    pub const OFFLINE: i32 = 3;
}

/// The vCPU's runstate as of system time `now`: the current state's time counted up to
/// `now` (Xen's `vcpu_runstate_get`).
pub fn runstate_snapshot(vcpu: &Vcpu, now: u64) -> RunstateInfo {
    snapshot_of(vcpu.runstate, now)
}

fn snapshot_of(mut info: RunstateInfo, now: u64) -> RunstateInfo {
    if let Some(t) = info.time.get_mut(info.state as usize) {
        *t += now.saturating_sub(info.state_entry_time);
    }
    info.state_entry_time = info.state_entry_time.max(now);
    info
}

/// The vCPU enters runstate `state` at system time `now`: accounts the time of the state
/// it leaves, keeps the domain's copy (for other vCPUs' `get_runstate_info`) and writes
/// the registered runstate area (errors ignored, as Xen does).
pub fn runstate_change(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    state: i32,
    now: u64,
) {
    let mut info = runstate_snapshot(vcpu, now);
    info.state = state;
    info.state_entry_time = now;
    vcpu.runstate = info;
    let Some(slot) = dom.vcpu_mut(vcpu.id) else {
        return;
    };
    slot.runstate = info;
    if slot.runstate_area != 0 {
        let area = slot.runstate_area;
        let _ = guest::write_obj(vcpu, p, area, &info);
    }
}

/// `struct vcpu_register_vcpu_info`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegisterVcpuInfo {
    /// Frame of the new vcpu_info.
    pub mfn: u64,
    /// Offset in that frame.
    pub offset: u32,
    /// Reserved.
    pub rsvd: u32,
}

/// What a `vcpu_op` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuOpResult {
    /// A value for rax.
    Ret(i64),
    /// The calling vCPU took itself down (`VCPUOP_down`): it runs no guest code until
    /// another vCPU brings it up, and then the call returns 0.
    SelfDown,
    /// The last vCPU that was up went down: Xen powers the domain off.
    AllDown,
}

/// `vcpu_op(cmd, vcpuid, arg)`, as Xen's `common_vcpu_op` for a PV domain: `vcpuid`
/// names any vCPU of the domain (-ENOENT past the last). Another vCPU's state that the
/// call changes is the domain's copy ([`crate::domain::VcpuSlot`]); the owner takes it
/// up at its next exit ([`sync_from_domain`]).
pub fn do_vcpu_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    op: u64,
    id: u32,
    arg: u64,
) -> VcpuOpResult {
    use VcpuOpResult::Ret;
    if id >= dom.nr_vcpus() {
        // Linux probes with is_up and stops at the first -ENOENT.
        return Ret(-ENOENT);
    }
    let me = id == vcpu.id;
    match op {
        cmd::IS_UP => Ret(i64::from(dom.vcpu(id).is_some_and(|s| s.up))),
        cmd::INITIALISE => Ret(crate::vcpu_context::initialise(vcpu, dom, p, id, arg)),
        cmd::UP => {
            let Some(slot) = dom.vcpu_mut(id) else {
                return Ret(-ENOENT);
            };
            if !slot.initialised {
                return Ret(-EINVAL);
            }
            if !slot.up {
                slot.up = true;
                p.kick_vcpu(id);
            }
            Ret(0)
        }
        cmd::DOWN => {
            if dom.vcpus_up().all(|up| up == id) {
                // The last vCPU going down: Xen shuts the domain down (poweroff).
                return VcpuOpResult::AllDown;
            }
            let Some(slot) = dom.vcpu_mut(id) else {
                return Ret(-ENOENT);
            };
            let was_up = core::mem::replace(&mut slot.up, false);
            if me {
                VcpuOpResult::SelfDown
            } else {
                if was_up {
                    // It stops at its next exit; the kick makes that soon.
                    p.kick_vcpu(id);
                }
                Ret(0)
            }
        }
        cmd::GET_RUNSTATE_INFO => {
            let now = p.system_time_ns();
            let info = if me {
                runstate_snapshot(vcpu, now)
            } else {
                snapshot_of(dom.vcpu(id).map(|s| s.runstate).unwrap_or_default(), now)
            };
            match guest::write_obj(vcpu, p, arg, &info) {
                Ok(()) => Ret(0),
                Err(_) => Ret(-EFAULT),
            }
        }
        cmd::REGISTER_RUNSTATE_MEMORY_AREA => {
            // The area's address (a guest virtual address for PV); written now (through
            // the caller's pagetables, as Xen does) and on every runstate change.
            let Ok(area) = guest::read_obj::<u64>(vcpu, p, arg) else {
                return Ret(-EFAULT);
            };
            if !crate::hypercall::addr_ok(area) {
                return Ret(-EFAULT);
            }
            let now = p.system_time_ns();
            let info = if me {
                runstate_snapshot(vcpu, now)
            } else {
                snapshot_of(dom.vcpu(id).map(|s| s.runstate).unwrap_or_default(), now)
            };
            if let Some(slot) = dom.vcpu_mut(id) {
                slot.runstate_area = area;
            }
            // Xen ignores a failed first copy.
            if area != 0 {
                let _ = guest::write_obj(vcpu, p, area, &info);
            }
            Ret(0)
        }
        cmd::REGISTER_VCPU_INFO => Ret(register_vcpu_info(vcpu, dom, p, id, arg)),
        cmd::REGISTER_VCPU_TIME_MEMORY_AREA if me => {
            // A second copy of vcpu_time_info at a guest virtual address, kept equal to
            // the one in vcpu_info; Linux maps it into user space so the vDSO reads the
            // pvclock without a system call. 0 unregisters.
            let Ok(area) = guest::read_obj::<u64>(vcpu, p, arg) else {
                return Ret(-EFAULT);
            };
            if area != 0 && crate::time::copy_time_info(vcpu, p, area).is_err() {
                return Ret(-EFAULT);
            }
            vcpu.time_area = area;
            Ret(0)
        }
        cmd::REGISTER_VCPU_TIME_MEMORY_AREA => {
            let Ok(area) = guest::read_obj::<u64>(vcpu, p, arg) else {
                return Ret(-EFAULT);
            };
            if let Some(slot) = dom.vcpu_mut(id) {
                slot.requests.time_area = Some(area);
            }
            Ret(0)
        }
        // Xen: the single-shot timer is only the caller's own.
        cmd::SET_SINGLESHOT_TIMER | cmd::STOP_SINGLESHOT_TIMER if !me => Ret(-EINVAL),
        cmd::SET_SINGLESHOT_TIMER => Ret(crate::time::set_singleshot(vcpu, p, arg)),
        cmd::STOP_SINGLESHOT_TIMER => {
            vcpu.timer_deadline = None;
            Ret(0)
        }
        cmd::SET_PERIODIC_TIMER if me => Ret(crate::time::set_periodic(vcpu, p, arg)),
        cmd::SET_PERIODIC_TIMER => match crate::time::periodic_period(vcpu, p, arg) {
            Ok(period) => {
                if let Some(slot) = dom.vcpu_mut(id) {
                    slot.requests.periodic_ns = Some(period);
                }
                Ret(0)
            }
            Err(e) => Ret(e),
        },
        cmd::STOP_PERIODIC_TIMER if me => {
            vcpu.periodic_ns = 0;
            Ret(0)
        }
        cmd::STOP_PERIODIC_TIMER => {
            if let Some(slot) = dom.vcpu_mut(id) {
                slot.requests.periodic_ns = Some(0);
            }
            Ret(0)
        }
        _ => Ret(-ENOSYS),
    }
}

/// `VCPUOP_register_vcpu_info` for vCPU `id`: once per vCPU, the area in one page of the
/// guest's own that it may write (Xen takes a writable type reference and keeps it:
/// never a pagetable, a descriptor page or a frame of the hypervisor's), 8-byte aligned
/// (the selector word is updated atomically). The current contents (pending and mask
/// state) move to the new place.
fn register_vcpu_info(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    id: u32,
    arg: u64,
) -> i64 {
    let Ok(info) = guest::read_obj::<RegisterVcpuInfo>(vcpu, p, arg) else {
        return -EFAULT;
    };
    let size = xen_abi::xen::vcpu_info::SIZE;
    let Some(slot) = dom.vcpu(id) else {
        return -ENOENT;
    };
    // Xen 4.17 (the version the engine answers as) says -EINVAL to a second one;
    // later versions say -EBUSY.
    if slot.vcpu_info_registered {
        return -EINVAL;
    }
    if u64::from(info.offset) + size > 0x1000 || info.offset % 8 != 0 || info.mfn >= (1 << 40) {
        return -EINVAL;
    }
    if let Some(ctx) = p.mm() {
        if !crate::mmu::get_writable_page(ctx, info.mfn) {
            return -EINVAL;
        }
    }
    let new = (info.mfn << 12) + u64::from(info.offset);
    let mut cur = [0u8; 64];
    if let Some(old) = slot.vcpu_info_gpa {
        if p.read_phys(old, &mut cur).is_err() {
            return -EINVAL;
        }
    }
    if p.write_phys(new, &cur).is_err() {
        return -EINVAL;
    }
    if let Some(slot) = dom.vcpu_mut(id) {
        slot.vcpu_info_gpa = Some(new);
        slot.vcpu_info_registered = true;
    }
    if id == vcpu.id {
        vcpu.vcpu_info_gpa = new;
    }
    0
}

/// Takes up what other vCPUs changed in this vCPU's slot since its last exit: its
/// `vcpu_info` place and timer requests. The host calls it at the start of every exit,
/// under the domain's lock.
pub fn sync_from_domain(vcpu: &mut Vcpu, dom: &mut Domain, p: &mut dyn Platform) {
    let Some(slot) = dom.vcpu_mut(vcpu.id) else {
        return;
    };
    if let Some(gpa) = slot.vcpu_info_gpa {
        vcpu.vcpu_info_gpa = gpa;
    }
    let requests = core::mem::take(&mut slot.requests);
    if let Some(period) = requests.periodic_ns {
        vcpu.periodic_ns = period;
        vcpu.periodic_next = p.system_time_ns().saturating_add(period);
    }
    if let Some(area) = requests.time_area {
        if area == 0 || crate::time::copy_time_info(vcpu, p, area).is_ok() {
            vcpu.time_area = area;
        }
    }
}

/// What the engine does with [`VcpuOpResult::AllDown`]: Xen's `domain_shutdown` with
/// `SHUTDOWN_poweroff` (a reason set earlier with `SCHEDOP_shutdown_code` wins).
pub fn all_down(dom: &mut Domain) -> Outcome {
    let reason = *dom
        .shutdown_code
        .get_or_insert(xen_abi::sched::SHUTDOWN_POWEROFF as u8);
    Outcome::Shutdown(u32::from(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::time::VcpuTimeInfo;

    fn op(v: &mut Vcpu, d: &mut crate::Domain, p: &mut FakePlatform, cmd: u64, arg: u64) -> i64 {
        match do_vcpu_op(v, d, p, cmd, 0, arg) {
            VcpuOpResult::Ret(r) => r,
            other => panic!("vCPU went down: {other:?}"),
        }
    }

    #[test]
    fn time_memory_area_gets_a_copy_of_the_pvclock() {
        let (mut v, mut d, mut p) = setup();
        let info = VcpuTimeInfo {
            version: 4,
            tsc_timestamp: 1234,
            system_time: 5678,
            tsc_to_system_mul: 0x8000_0000,
            tsc_shift: -1,
            flags: crate::time::PVCLOCK_TSC_STABLE,
            ..Default::default()
        };
        p.write_phys(
            v.vcpu_info_gpa + xen_abi::xen::vcpu_info::TIME,
            info.as_bytes(),
        )
        .unwrap();
        let area = DATA_VA + 0x200;
        guest::write_obj(&v, &mut p, DATA_VA, &area).unwrap();
        assert_eq!(
            op(
                &mut v,
                &mut d,
                &mut p,
                cmd::REGISTER_VCPU_TIME_MEMORY_AREA,
                DATA_VA
            ),
            0
        );
        let copy: VcpuTimeInfo = guest::read_obj(&v, &p, area).unwrap();
        assert_eq!(copy.as_bytes(), info.as_bytes());
        assert_eq!(v.time_area, area);

        guest::write_obj(&v, &mut p, DATA_VA, &UNMAPPED_VA).unwrap();
        assert_eq!(
            op(
                &mut v,
                &mut d,
                &mut p,
                cmd::REGISTER_VCPU_TIME_MEMORY_AREA,
                DATA_VA
            ),
            -EFAULT
        );
        assert_eq!(v.time_area, area, "a refused area leaves the old one");
        guest::write_obj(&v, &mut p, DATA_VA, &0u64).unwrap();
        assert_eq!(
            op(
                &mut v,
                &mut d,
                &mut p,
                cmd::REGISTER_VCPU_TIME_MEMORY_AREA,
                DATA_VA
            ),
            0
        );
        assert_eq!(v.time_area, 0);
    }

    #[test]
    fn runstate_accounts_running_and_blocked_time() {
        let (mut v, mut d, mut p) = setup();
        let area = DATA_VA + 0x100;
        guest::write_obj(&v, &mut p, DATA_VA, &area).unwrap();
        assert_eq!(
            op(
                &mut v,
                &mut d,
                &mut p,
                cmd::REGISTER_RUNSTATE_MEMORY_AREA,
                DATA_VA
            ),
            0
        );
        runstate_change(&mut v, &mut d, &mut p, runstate::BLOCKED, 1_000);
        runstate_change(&mut v, &mut d, &mut p, runstate::RUNNING, 4_000);
        let rs: RunstateInfo = guest::read_obj(&v, &p, area).unwrap();
        assert_eq!(rs.state, runstate::RUNNING);
        assert_eq!(rs.state_entry_time, 4_000);
        assert_eq!(rs.time, [1_000, 0, 3_000, 0]);
        let now = runstate_snapshot(&v, 10_000);
        assert_eq!(now.time, [7_000, 0, 3_000, 0]);
    }

    #[test]
    fn other_vcpus_do_not_exist() {
        let (mut v, mut d, mut p) = setup();
        for id in [1, 2, u32::MAX] {
            assert!(matches!(
                do_vcpu_op(&mut v, &mut d, &mut p, cmd::IS_UP, id, 0),
                VcpuOpResult::Ret(r) if r == -ENOENT
            ));
        }
        assert_eq!(op(&mut v, &mut d, &mut p, cmd::IS_UP, 0), 1);
    }
}
