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

use crate::{guest, Outcome, Platform, Vcpu};

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
    let mut info = vcpu.runstate;
    if let Some(t) = info.time.get_mut(info.state as usize) {
        *t += now.saturating_sub(info.state_entry_time);
    }
    info.state_entry_time = info.state_entry_time.max(now);
    info
}

/// The vCPU enters runstate `state` at system time `now`: accounts the time of the state
/// it leaves and writes the registered runstate area (errors ignored, as Xen does).
pub fn runstate_change(vcpu: &mut Vcpu, p: &mut dyn Platform, state: i32, now: u64) {
    let mut info = runstate_snapshot(vcpu, now);
    info.state = state;
    info.state_entry_time = now;
    vcpu.runstate = info;
    if vcpu.runstate_area != 0 {
        let _ = guest::write_obj(vcpu, p, vcpu.runstate_area, &info);
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
pub enum VcpuOpResult {
    /// A value for rax.
    Ret(i64),
    /// The only vCPU went down: the domain cannot run any more.
    AllDown,
}

/// `vcpu_op(cmd, vcpuid, arg)`.
pub fn do_vcpu_op(
    vcpu: &mut Vcpu,
    p: &mut dyn Platform,
    op: u64,
    id: u32,
    arg: u64,
) -> VcpuOpResult {
    use VcpuOpResult::Ret;
    if id != vcpu.id {
        // One vCPU: the others do not exist (Linux probes with is_up and stops at the
        // first -ENOENT).
        return Ret(-ENOENT);
    }
    match op {
        cmd::IS_UP => Ret(1),
        cmd::UP => Ret(0),
        cmd::DOWN => VcpuOpResult::AllDown,
        cmd::GET_RUNSTATE_INFO => {
            let info = runstate_snapshot(vcpu, p.system_time_ns());
            match guest::write_obj(vcpu, p, arg, &info) {
                Ok(()) => Ret(0),
                Err(_) => Ret(-EFAULT),
            }
        }
        cmd::REGISTER_RUNSTATE_MEMORY_AREA => {
            // The area's address (a guest virtual address for PV); written now and on
            // every runstate change.
            let Ok(area) = guest::read_obj::<u64>(vcpu, p, arg) else {
                return Ret(-EFAULT);
            };
            let info = runstate_snapshot(vcpu, p.system_time_ns());
            if area != 0 && guest::write_obj(vcpu, p, area, &info).is_err() {
                return Ret(-EFAULT);
            }
            vcpu.runstate_area = area;
            Ret(0)
        }
        cmd::REGISTER_VCPU_INFO => {
            let Ok(info) = guest::read_obj::<RegisterVcpuInfo>(vcpu, p, arg) else {
                return Ret(-EFAULT);
            };
            let size = xen_abi::xen::vcpu_info::SIZE;
            // Once per vCPU; the area must lie in one page of the guest's own that it may
            // write (Xen takes a writable type reference and keeps it): never a pagetable,
            // a descriptor page or a frame of the hypervisor's.
            if vcpu.vcpu_info_registered
                || u64::from(info.offset) + size > 0x1000
                || info.mfn >= (1 << 40)
            {
                return Ret(-EINVAL);
            }
            if let Some(ctx) = p.mm() {
                if !crate::mmu::get_writable_page(ctx, info.mfn) {
                    return Ret(-EINVAL);
                }
            }
            let new = (info.mfn << 12) + u64::from(info.offset);
            // Move the current contents (pending and mask state) to the new place.
            let mut cur = [0u8; 64];
            if p.read_phys(vcpu.vcpu_info_gpa, &mut cur).is_err()
                || p.write_phys(new, &cur).is_err()
            {
                return Ret(-EINVAL);
            }
            vcpu.vcpu_info_gpa = new;
            vcpu.vcpu_info_registered = true;
            Ret(0)
        }
        cmd::REGISTER_VCPU_TIME_MEMORY_AREA => {
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
        cmd::SET_SINGLESHOT_TIMER => Ret(crate::time::set_singleshot(vcpu, p, arg)),
        cmd::STOP_SINGLESHOT_TIMER => {
            vcpu.timer_deadline = None;
            Ret(0)
        }
        cmd::SET_PERIODIC_TIMER => Ret(crate::time::set_periodic(vcpu, p, arg)),
        cmd::STOP_PERIODIC_TIMER => {
            vcpu.periodic_ns = 0;
            Ret(0)
        }
        _ => Ret(-ENOSYS),
    }
}

/// What the engine does with [`VcpuOpResult::AllDown`].
pub fn all_down() -> Outcome {
    Outcome::Crash(crate::CrashReason::AllVcpusDown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::time::VcpuTimeInfo;

    fn op(v: &mut Vcpu, p: &mut FakePlatform, cmd: u64, arg: u64) -> i64 {
        match do_vcpu_op(v, p, cmd, 0, arg) {
            VcpuOpResult::Ret(r) => r,
            VcpuOpResult::AllDown => panic!("vCPU went down"),
        }
    }

    #[test]
    fn time_memory_area_gets_a_copy_of_the_pvclock() {
        let (mut v, mut p) = setup();
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
            op(&mut v, &mut p, cmd::REGISTER_VCPU_TIME_MEMORY_AREA, DATA_VA),
            0
        );
        let copy: VcpuTimeInfo = guest::read_obj(&v, &p, area).unwrap();
        assert_eq!(copy.as_bytes(), info.as_bytes());
        assert_eq!(v.time_area, area);

        guest::write_obj(&v, &mut p, DATA_VA, &UNMAPPED_VA).unwrap();
        assert_eq!(
            op(&mut v, &mut p, cmd::REGISTER_VCPU_TIME_MEMORY_AREA, DATA_VA),
            -EFAULT
        );
        assert_eq!(v.time_area, area, "a refused area leaves the old one");
        guest::write_obj(&v, &mut p, DATA_VA, &0u64).unwrap();
        assert_eq!(
            op(&mut v, &mut p, cmd::REGISTER_VCPU_TIME_MEMORY_AREA, DATA_VA),
            0
        );
        assert_eq!(v.time_area, 0);
    }

    #[test]
    fn runstate_accounts_running_and_blocked_time() {
        let (mut v, mut p) = setup();
        let area = DATA_VA + 0x100;
        guest::write_obj(&v, &mut p, DATA_VA, &area).unwrap();
        assert_eq!(
            op(&mut v, &mut p, cmd::REGISTER_RUNSTATE_MEMORY_AREA, DATA_VA),
            0
        );
        runstate_change(&mut v, &mut p, runstate::BLOCKED, 1_000);
        runstate_change(&mut v, &mut p, runstate::RUNNING, 4_000);
        let rs: RunstateInfo = guest::read_obj(&v, &p, area).unwrap();
        assert_eq!(rs.state, runstate::RUNNING);
        assert_eq!(rs.state_entry_time, 4_000);
        assert_eq!(rs.time, [1_000, 0, 3_000, 0]);
        let now = runstate_snapshot(&v, 10_000);
        assert_eq!(now.time, [7_000, 0, 3_000, 0]);
    }

    #[test]
    fn other_vcpus_do_not_exist() {
        let (mut v, mut p) = setup();
        for id in [1, 2, u32::MAX] {
            assert!(matches!(
                do_vcpu_op(&mut v, &mut p, cmd::IS_UP, id, 0),
                VcpuOpResult::Ret(r) if r == -ENOENT
            ));
        }
        assert_eq!(op(&mut v, &mut p, cmd::IS_UP, 0), 1);
    }
}
