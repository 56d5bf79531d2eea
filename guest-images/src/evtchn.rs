//! Event channels and time for the test kernels that talk to backends (xenstore, blkfront):
//! `EVTCHNOP_alloc_unbound` / `EVTCHNOP_send`, the pending bits in `shared_info`, the
//! pvclock in `vcpu_info[0]`, and a bounded wait ([`Events::wait`]) built on
//! `SCHEDOP_poll` with a timeout, so a missing or silent peer can never hang a kernel.
//!
//! Facts used (Xen `public/event_channel.h`, `public/sched.h`, `public/xen.h`):
//! * `EVTCHNOP_send` = 4 with `struct evtchn_send { evtchn_port_t port; }`;
//!   `EVTCHNOP_alloc_unbound` = 6 with `struct evtchn_alloc_unbound { domid_t dom,
//!   remote_dom; evtchn_port_t port; }` (port is OUT); `dom` = `DOMID_SELF`.
//! * `SCHEDOP_poll` returns when one of the ports is pending or at the absolute system
//!   time `timeout` (0 = no timeout, which is never used here). It does not clear the
//!   pending bit: [`Events::clear`] does, before the condition is checked again.
//! * `shared_info.evtchn_pending` is a bitmap at offset 2048; `vcpu_info[0].time`
//!   (`struct vcpu_time_info`) at offset 32: version u32, pad, tsc_timestamp u64,
//!   system_time u64, tsc_to_system_mul u32, tsc_shift i8.

use xen_abi::sched::{SchedPoll, SCHEDOP_POLL};
use xen_abi::xen::hypercall as hc;
use xen_abi::xen::StartInfo;

use crate::hypercall::hypercall2;
use crate::mm;

/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u64 = 4;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct AllocUnbound {
    /// The domain the port is allocated in (`DOMID_SELF`).
    pub dom: u16,
    /// The domain allowed to bind to it.
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: u32,
}

/// `EVTCHNOP_alloc_unbound` for a port `remote_dom` may bind to; the port or the error.
pub fn alloc_unbound(remote_dom: u16) -> Result<u32, i64> {
    let mut a = AllocUnbound {
        dom: xen_abi::xen::DOMID_SELF,
        remote_dom,
        port: 0,
    };
    // SAFETY: `a` is a live `struct evtchn_alloc_unbound` the hypervisor reads and writes.
    let rc = unsafe {
        hypercall2(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_ALLOC_UNBOUND,
            &mut a as *mut AllocUnbound as u64,
        )
    };
    if rc == 0 {
        Ok(a.port)
    } else {
        Err(rc)
    }
}

/// `EVTCHNOP_send` on `port`.
pub fn send(port: u32) -> i64 {
    let mut p = port;
    // SAFETY: `p` is a live `struct evtchn_send`.
    unsafe {
        hypercall2(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_SEND,
            &mut p as *mut u32 as u64,
        )
    }
}

/// The shared_info page mapped at a slack VA: pending bits and the pvclock.
pub struct Events {
    shinfo_va: u64,
}

impl Events {
    /// Maps `shared_info` at slack frame `slot` (which this kernel must not use for
    /// anything else).
    pub fn new(si: &StartInfo, slot: u64) -> Self {
        let va = mm::slack_va(si, slot);
        mm::map_shared_info(si, va);
        Events { shinfo_va: va }
    }

    /// The `shared_info` this kernel already mapped at `va` (for a second vCPU, which
    /// must not map it again).
    pub fn mapped_at(va: u64) -> Self {
        Events { shinfo_va: va }
    }

    /// Xen system time in ns (the pvclock of `vcpu_info[0]`).
    pub fn now_ns(&self) -> u64 {
        let t = self.shinfo_va + xen_abi::xen::vcpu_info::TIME;
        for _ in 0..1000 {
            let version = mm::rd(t) as u32;
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            let tsc_stamp = mm::rd(t + 8);
            let system = mm::rd(t + 16);
            let mul_shift = mm::rd(t + 24);
            let tsc = rdtsc();
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            if version & 1 == 0 && mm::rd(t) as u32 == version {
                let mul = mul_shift as u32;
                let shift = (mul_shift >> 32) as u8 as i8;
                let mut delta = tsc.wrapping_sub(tsc_stamp);
                if shift >= 0 {
                    delta <<= shift;
                } else {
                    delta >>= -shift;
                }
                return system + ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
            }
        }
        crate::fail!("pvclock version stayed odd for 1000 reads")
    }

    /// Whether `port` is pending.
    pub fn pending(&self, port: u32) -> bool {
        let word =
            self.shinfo_va + xen_abi::xen::shared_info::EVTCHN_PENDING + u64::from(port / 64) * 8;
        mm::rd(word) & (1 << (port % 64)) != 0
    }

    /// Clears `port`'s pending bit (atomically: the hypervisor sets bits concurrently).
    pub fn clear(&self, port: u32) {
        let word =
            self.shinfo_va + xen_abi::xen::shared_info::EVTCHN_PENDING + u64::from(port / 64) * 8;
        // SAFETY: `word` is inside the writable shared_info mapping; `lock btr` only
        // clears one bit.
        unsafe {
            core::arch::asm!(
                "lock btr qword ptr [{w}], {b}",
                w = in(reg) word,
                b = in(reg) u64::from(port % 64),
                options(nostack)
            );
        }
    }

    /// Blocks in `SCHEDOP_poll` on `port` until it is pending, at most until `deadline`
    /// (system time, ns) and at most 20 ms, then clears its pending bit. Callers loop on
    /// their own condition and give up at `deadline`.
    pub fn wait(&self, port: u32, deadline: u64) {
        let now = self.now_ns();
        let until = deadline.min(now + 20_000_000).max(now + 1);
        let mut p = port;
        let mut poll = SchedPoll {
            ports: &mut p as *mut u32 as u64,
            nr_ports: 1,
            _pad: 0,
            timeout: until,
        };
        // SAFETY: `poll` and the port it names are live.
        unsafe {
            hypercall2(
                hc::SCHED_OP,
                SCHEDOP_POLL,
                &mut poll as *mut SchedPoll as u64,
            )
        };
        self.clear(port);
    }

    /// The system time `ms` milliseconds from now.
    pub fn deadline_ms(&self, ms: u64) -> u64 {
        self.now_ns() + ms * 1_000_000
    }
}

/// A bound on loop iterations that does not depend on the clock: each [`Events::wait`]
/// lasts at most 20 ms, so `ms` of waiting is at most this many rounds even if the poll
/// returned at once every time (a clock that does not move cannot hang a kernel).
pub fn max_rounds(ms: u64) -> u64 {
    ms * 64 + 1000
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads the time-stamp counter; no memory effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
