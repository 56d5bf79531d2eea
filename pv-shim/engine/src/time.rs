//! Time as Xen gives it to a PV guest: one clock, defined by the TSC. System time is
//! nanoseconds since the domain started, computed from the TSC with the pvclock scale in
//! every `vcpu_time_info`; the host uses the very same [`PvClock`] for timer deadlines,
//! so guest and host never disagree and nothing is ever "yanked". The wall clock in
//! `shared_info` is the real time at system time 0.
//!
//! Timers: `set_timer_op` and `VCPUOP_set_singleshot_timer` arm one deadline,
//! `VCPUOP_set_periodic_timer` a period; when they pass, `VIRQ_TIMER` is raised.

use xen_abi::errno::{EFAULT, EINVAL, ETIME};
use xen_abi::xen::{shared_info, vcpu_info};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{evtchn, guest, Domain, Platform, Vcpu};

/// `XEN_PVCLOCK_TSC_STABLE_BIT`.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;

/// The pvclock scale: system time = ((tsc - tsc_base) shifted by `shift`) * mul >> 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvClock {
    /// TSC value at system time 0.
    pub tsc_base: u64,
    /// Multiplier (32.32 fixed point, nanoseconds per shifted tick).
    pub mul: u32,
    /// Shift applied to the TSC delta first.
    pub shift: i8,
}

impl PvClock {
    /// The scale for a TSC of `tsc_hz`, starting at `tsc_base` (as Xen's
    /// `set_time_scale`: the largest precision with a 32-bit multiplier).
    pub fn new(tsc_base: u64, tsc_hz: u64) -> Self {
        let tsc_hz = tsc_hz.max(1);
        let mut shift: i8 = 0;
        let mut hz = tsc_hz as u128;
        // Want mul = 1e9 * 2^32 / hz in [2^31, 2^32).
        loop {
            let mul = (1_000_000_000u128 << 32) / hz;
            if mul >= 1 << 32 {
                hz <<= 1;
                shift += 1;
            } else if mul < 1 << 31 && shift > -31 {
                hz >>= 1;
                shift -= 1;
                if hz == 0 {
                    break;
                }
            } else {
                return Self {
                    tsc_base,
                    mul: mul as u32,
                    shift,
                };
            }
        }
        Self {
            tsc_base,
            mul: u32::MAX,
            shift,
        }
    }

    /// System time (ns) at TSC value `tsc`, as the guest computes it.
    pub fn ns(&self, tsc: u64) -> u64 {
        let mut delta = tsc.wrapping_sub(self.tsc_base);
        if tsc < self.tsc_base {
            delta = 0;
        }
        if self.shift >= 0 {
            delta <<= self.shift;
        } else {
            delta >>= -self.shift;
        }
        ((u128::from(delta) * u128::from(self.mul)) >> 32) as u64
    }

    /// `struct vcpu_time_info` for this clock (version even: stable).
    pub fn time_info(&self, version: u32) -> VcpuTimeInfo {
        VcpuTimeInfo {
            version,
            pad0: 0,
            tsc_timestamp: self.tsc_base,
            system_time: 0,
            tsc_to_system_mul: self.mul,
            tsc_shift: self.shift,
            flags: PVCLOCK_TSC_STABLE,
            pad1: [0; 2],
        }
    }
}

/// `struct vcpu_time_info` (same layout as KVM's pvclock).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    /// Odd while an update is in progress.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at `system_time`.
    pub tsc_timestamp: u64,
    /// System time (ns) at `tsc_timestamp`.
    pub system_time: u64,
    /// Scale.
    pub tsc_to_system_mul: u32,
    /// Shift.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*`.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

/// Writes the vCPU's `vcpu_time_info` and the wall clock (real time at system time 0,
/// `wall_ns` nanoseconds since the epoch) with the version protocol a reader relies on.
pub fn publish(
    vcpu: &Vcpu,
    dom: &Domain,
    p: &mut dyn Platform,
    clock: &PvClock,
    wall_ns_at_zero: u64,
) {
    let at = vcpu.vcpu_info_gpa + vcpu_info::TIME;
    let mut cur = [0u8; 4];
    let v = if p.read_phys(at, &mut cur).is_ok() {
        u32::from_le_bytes(cur)
    } else {
        0
    };
    let odd = (v | 1).wrapping_add(if v & 1 == 0 { 0 } else { 2 });
    let _ = p.write_phys(at, &odd.to_le_bytes());
    let _ = p.write_phys(at, clock.time_info(odd.wrapping_add(1)).as_bytes());
    if vcpu.time_area != 0 {
        let _ = copy_time_info(vcpu, p, vcpu.time_area);
    }
    let si = dom.shared_info_gpa;
    let mut wv = [0u8; 4];
    let wver = if p.read_phys(si + shared_info::WC_VERSION, &mut wv).is_ok() {
        u32::from_le_bytes(wv)
    } else {
        0
    };
    let wodd = wver | 1;
    let _ = p.write_phys(si + shared_info::WC_VERSION, &wodd.to_le_bytes());
    let secs = wall_ns_at_zero / 1_000_000_000;
    let _ = p.write_phys(si + shared_info::WC_SEC, &(secs as u32).to_le_bytes());
    let _ = p.write_phys(
        si + shared_info::WC_NSEC,
        &((wall_ns_at_zero % 1_000_000_000) as u32).to_le_bytes(),
    );
    let _ = p.write_phys(
        si + shared_info::WC_SEC_HI,
        &((secs >> 32) as u32).to_le_bytes(),
    );
    let _ = p.write_phys(
        si + shared_info::WC_VERSION,
        &wodd.wrapping_add(1).to_le_bytes(),
    );
}

/// Copies the vCPU's `vcpu_time_info` (from its `vcpu_info`) to guest virtual address
/// `area` (the `register_vcpu_time_memory_area` copy). The copy is written while the vCPU
/// is stopped, so a reader sees the even version of a finished update.
pub fn copy_time_info(
    vcpu: &Vcpu,
    p: &mut dyn Platform,
    area: u64,
) -> Result<(), guest::GuestFault> {
    let mut info = VcpuTimeInfo::default();
    p.read_phys(vcpu.vcpu_info_gpa + vcpu_info::TIME, info.as_mut_bytes())
        .map_err(|_| guest::GuestFault::BadPhys { va: area })?;
    guest::write_obj(vcpu, p, area, &info)
}

/// `set_timer_op(timeout)`: arm (absolute system time) or cancel (0) the vCPU's timer.
pub fn do_set_timer_op(vcpu: &mut Vcpu, timeout: u64) -> i64 {
    vcpu.timer_deadline = (timeout != 0).then_some(timeout);
    0
}

/// `struct vcpu_set_singleshot_timer`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SingleshotTimer {
    /// Absolute system time.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_future`: refuse a deadline in the past.
    pub flags: u32,
    /// Padding.
    pub _pad: u32,
}

/// `VCPUOP_set_singleshot_timer`.
pub fn set_singleshot(vcpu: &mut Vcpu, p: &dyn Platform, arg: u64) -> i64 {
    let Ok(t) = guest::read_obj::<SingleshotTimer>(vcpu, p, arg) else {
        return -EFAULT;
    };
    if t.flags & 1 != 0 && t.timeout_abs_ns < p.system_time_ns() {
        return -ETIME;
    }
    vcpu.timer_deadline = Some(t.timeout_abs_ns);
    0
}

/// `VCPUOP_set_periodic_timer` (period in ns; Xen refuses periods under 1 ms? it
/// refuses under `MILLISECS(1)` only for HVM: PV takes any non-zero period).
pub fn set_periodic(vcpu: &mut Vcpu, p: &dyn Platform, arg: u64) -> i64 {
    let period = match periodic_period(vcpu, p, arg) {
        Ok(period) => period,
        Err(e) => return e,
    };
    vcpu.periodic_ns = period;
    vcpu.periodic_next = p.system_time_ns().saturating_add(period);
    0
}

/// The period `VCPUOP_set_periodic_timer` asks for at `arg`, checked as Xen checks it:
/// at least 1 ms and at most `STIME_DELTA_MAX`, else -EINVAL.
pub fn periodic_period(vcpu: &Vcpu, p: &dyn Platform, arg: u64) -> Result<u64, i64> {
    let Ok(period) = guest::read_obj::<u64>(vcpu, p, arg) else {
        return Err(-EFAULT);
    };
    if !(1_000_000..=i64::MAX as u64).contains(&period) {
        return Err(-EINVAL);
    }
    Ok(period)
}

/// The earliest time a timer of this vCPU fires or its poll times out, if any.
pub fn next_deadline(vcpu: &Vcpu) -> Option<u64> {
    let periodic = (vcpu.periodic_ns != 0).then_some(vcpu.periodic_next);
    let poll = vcpu.poll.and_then(|w| w.deadline);
    [vcpu.timer_deadline, periodic, poll]
        .into_iter()
        .flatten()
        .min()
}

/// Fires the timers that have passed at system time `now`: raises `VIRQ_TIMER`.
/// Returns whether one fired.
pub fn fire_timers(vcpu: &mut Vcpu, dom: &Domain, p: &mut dyn Platform, now: u64) -> bool {
    let mut fired = false;
    if vcpu.timer_deadline.is_some_and(|d| d <= now) {
        vcpu.timer_deadline = None;
        fired = true;
    }
    if vcpu.periodic_ns != 0 && vcpu.periodic_next <= now {
        // Skip missed periods instead of replaying them.
        let behind = (now - vcpu.periodic_next) / vcpu.periodic_ns + 1;
        vcpu.periodic_next = vcpu.periodic_next.saturating_add(behind * vcpu.periodic_ns);
        fired = true;
    }
    if fired {
        evtchn::send_virq(dom, p, vcpu.id, evtchn::VIRQ_TIMER);
    }
    fired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvclock_scale_is_exact_enough() {
        for hz in [
            1_000_000_000u64,
            2_300_000_000,
            3_000_000_000,
            250_000_000,
            5_000_000_000,
        ] {
            let c = PvClock::new(1000, hz);
            // One second of ticks is one second, within 1 ns.
            let ns = c.ns(1000 + hz);
            assert!(
                ns.abs_diff(1_000_000_000) <= 1,
                "{hz} Hz gives {ns} ns for 1 s"
            );
            // One minute: well inside the 1 ms/minute budget.
            let ns = c.ns(1000 + 60 * hz);
            assert!(
                ns.abs_diff(60_000_000_000) <= 60,
                "{hz} Hz gives {ns} ns for 60 s"
            );
            assert!(c.mul >= 1 << 31);
        }
        assert_eq!(
            PvClock::new(1000, 2_300_000_000).ns(10),
            0,
            "before the base: 0"
        );
    }
}
