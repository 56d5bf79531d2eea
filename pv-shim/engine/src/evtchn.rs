//! Event channels, 2-level ABI (`public/event_channel.h`), and the upcall that delivers
//! them: Xen's `common/event_channel.c` and `event_2l.c` semantics for a domain of one
//! vCPU whose peers are the VMM's backends (xenstore, console) or itself.
//!
//! Pending and mask bits live in `shared_info` (guest memory); the selector and
//! `evtchn_upcall_pending` in the vCPU's `vcpu_info`. Raising a port sets its pending
//! bit and, unless it is masked, its selector bit and the upcall flag; the upcall itself
//! is a bounce to the registered event callback with events masked, made whenever the
//! vCPU is about to run guest code with `upcall_pending` set and `upcall_mask` clear
//! (Xen checks the same on every return to the guest).
//!
//! The table is domain state; with one vCPU it lives beside that vCPU (`Vcpu::evtchn`)
//! and moves to a domain object when there are several. FIFO event channels are not
//! offered (`EVTCHNOP_init_control` gives -ENOSYS, as Xen's pv-shim and QEMU do, and
//! Linux falls back to 2-level).

use xen_abi::errno::{EFAULT, EINVAL, ENOENT, ENOSPC, ENOSYS, EPERM, ESRCH};
use xen_abi::xen::{shared_info, vcpu_info, DOMID_SELF};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::bounce::{create_bounce_frame, TrapBounce};

use crate::{guest, Domain, GuestRegs, Outcome, Platform, Stats, Vcpu};

/// Ports of the 2-level ABI (64 words of 64 bits).
pub const NR_PORTS: usize = 4096;
/// VIRQ numbers a PV guest binds.
pub const NR_VIRQS: u32 = 24;
/// `VIRQ_TIMER`.
pub const VIRQ_TIMER: u32 = 0;

/// `EVTCHNOP_*`.
pub mod op {
    #![allow(missing_docs)]
    pub const BIND_INTERDOMAIN: u64 = 0;
    pub const BIND_VIRQ: u64 = 1;
    pub const BIND_PIRQ: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const SEND: u64 = 4;
    pub const STATUS: u64 = 5;
    pub const ALLOC_UNBOUND: u64 = 6;
    pub const BIND_IPI: u64 = 7;
    pub const BIND_VCPU: u64 = 8;
    pub const UNMASK: u64 = 9;
    pub const RESET: u64 = 10;
    pub const INIT_CONTROL: u64 = 11;
    pub const EXPAND_ARRAY: u64 = 12;
    pub const SET_PRIORITY: u64 = 13;
}

/// What a port is bound to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortState {
    /// Free.
    #[default]
    Free,
    /// Allocated, waiting for `remote_dom` to bind.
    Unbound {
        /// Domain allowed to bind.
        remote_dom: u16,
    },
    /// Connected to a VMM backend (domain 0) port.
    Backend {
        /// The backend's port.
        remote_port: u32,
    },
    /// Connected to another port of this domain (loopback).
    Loopback {
        /// The other local port.
        peer: u32,
    },
    /// A virtual IRQ.
    Virq {
        /// VIRQ number.
        virq: u32,
    },
    /// An inter-processor interrupt.
    Ipi,
}

/// The domain's event channels.
#[derive(Clone, Debug)]
pub struct EvtchnTable {
    ports: [PortState; NR_PORTS],
    /// The vCPU each port notifies (`notify_vcpu_id`).
    notify_vcpu: [u16; NR_PORTS],
    /// Per vCPU, the port bound to each VIRQ (0: none; Xen's `v->virq_to_evtchn`): a
    /// fixed array for the most vCPUs a domain may have, of which the first `nr_vcpus`
    /// are the domain's (no allocator on any event-channel path).
    virq_port: [[u32; NR_VIRQS as usize]; crate::domain::MAX_VCPUS],
    nr_vcpus: usize,
}

impl Default for EvtchnTable {
    fn default() -> Self {
        Self::new(1)
    }
}

impl EvtchnTable {
    /// The channels of a domain of `nr_vcpus` vCPUs (1 to [`crate::domain::MAX_VCPUS`]),
    /// all free.
    pub fn new(nr_vcpus: u32) -> Self {
        let mut t = Self::EMPTY;
        t.reset(nr_vcpus);
        t
    }

    /// A table for one vCPU, all free, as a constant: a host that keeps the domain in
    /// static storage starts from it and calls [`EvtchnTable::reset`] in place.
    pub const EMPTY: Self = Self {
        ports: [PortState::Free; NR_PORTS],
        notify_vcpu: [0; NR_PORTS],
        virq_port: [[0; NR_VIRQS as usize]; crate::domain::MAX_VCPUS],
        nr_vcpus: 1,
    };

    /// Frees every channel, in place, for a domain of `nr_vcpus` vCPUs (clamped to 1 to
    /// [`crate::domain::MAX_VCPUS`]).
    pub fn reset(&mut self, nr_vcpus: u32) {
        self.ports.fill(PortState::Free);
        self.notify_vcpu.fill(0);
        for v in self.virq_port.iter_mut() {
            v.fill(0);
        }
        self.nr_vcpus = (nr_vcpus as usize).clamp(1, crate::domain::MAX_VCPUS);
    }

    /// The domain's vCPUs' VIRQ bindings.
    fn virq_ports(&self) -> &[[u32; NR_VIRQS as usize]] {
        &self.virq_port[..self.nr_vcpus]
    }

    fn virq_ports_mut(&mut self) -> &mut [[u32; NR_VIRQS as usize]] {
        &mut self.virq_port[..self.nr_vcpus]
    }

    /// State of `port`.
    pub fn state(&self, port: u32) -> PortState {
        self.ports.get(port as usize).copied().unwrap_or_default()
    }

    /// The vCPU `port` notifies (0 for a port out of range).
    pub fn notify_vcpu(&self, port: u32) -> u32 {
        self.notify_vcpu
            .get(port as usize)
            .map_or(0, |&v| u32::from(v))
    }

    /// Binds `port` to a backend port before the guest runs (the domain builder's
    /// xenstore and console channels, which start_info names).
    pub fn bind_backend(&mut self, port: u32, remote_port: u32) {
        if let Some(s) = self.ports.get_mut(port as usize) {
            *s = PortState::Backend { remote_port };
        }
    }

    /// A backend binds to the port the guest allocated for domain 0 and named in
    /// xenstore (the backend's `EVTCHNOP_bind_interdomain`). As in Xen, the port must
    /// be unbound and reserved for domain 0, else `-EINVAL`.
    pub fn bind_backend_to_unbound(&mut self, port: u32, remote_port: u32) -> Result<(), i64> {
        match self.ports.get_mut(port as usize) {
            Some(s @ PortState::Unbound { remote_dom: 0 }) => {
                *s = PortState::Backend { remote_port };
                Ok(())
            }
            _ => Err(-EINVAL),
        }
    }

    /// The backend closed its end of `remote_port`: the guest's end becomes unbound
    /// for domain 0 again (Xen leaves the surviving end of a closed interdomain channel
    /// `ECS_UNBOUND`), so a reconnecting frontend may reuse it.
    pub fn unbind_backend(&mut self, remote_port: u32) {
        if let Some(p) = self.port_of_backend(remote_port) {
            self.ports[p as usize] = PortState::Unbound { remote_dom: 0 };
        }
    }

    /// The local port connected to backend port `remote_port`, if any.
    pub fn port_of_backend(&self, remote_port: u32) -> Option<u32> {
        self.ports
            .iter()
            .position(|s| *s == PortState::Backend { remote_port })
            .map(|p| p as u32)
    }

    /// The port vCPU `vcpu` bound to `virq`, if any.
    pub fn virq_port(&self, vcpu: u32, virq: u32) -> Option<u32> {
        self.virq_ports()
            .get(vcpu as usize)?
            .get(virq as usize)
            .copied()
            .filter(|&p| p != 0)
    }

    fn get_free_port(&self) -> Option<u32> {
        (1..NR_PORTS)
            .find(|&p| self.ports[p] == PortState::Free)
            .map(|p| p as u32)
    }

    /// Takes a free port for a new channel notifying `vcpu`.
    fn alloc(&mut self, state: PortState, vcpu: u32) -> Option<u32> {
        let port = self.get_free_port()?;
        self.ports[port as usize] = state;
        self.notify_vcpu[port as usize] = vcpu as u16;
        Some(port)
    }
}

/// The 64-bit word of a bitmap at `base` that holds `bit`, and the bit's mask in it.
fn word_of(base: u64, bit: u32) -> (u64, u64) {
    (base + u64::from(bit / 64) * 8, 1 << (bit % 64))
}

/// A bit of a guest bitmap; None when it cannot be read.
fn read_bit(p: &dyn Platform, base: u64, bit: u32) -> Option<bool> {
    let (gpa, mask) = word_of(base, bit);
    let mut b = [0u8; 8];
    p.read_phys(gpa, &mut b)
        .ok()
        .map(|()| u64::from_le_bytes(b) & mask != 0)
}

fn test_bit(p: &dyn Platform, base: u64, bit: u32) -> bool {
    read_bit(p, base, bit).unwrap_or(false)
}

/// Whether `port` is pending in `shared_info`; None when that page cannot be read.
pub(crate) fn port_pending(dom: &Domain, p: &dyn Platform, port: u32) -> Option<bool> {
    read_bit(p, dom.shared_info_gpa + shared_info::EVTCHN_PENDING, port)
}

/// Sets a bit atomically (other vCPUs of the guest change the same words); returns
/// whether it was clear before. An unreadable word counts as set: nothing follows.
fn test_and_set_bit(p: &mut dyn Platform, base: u64, bit: u32) -> bool {
    let (gpa, mask) = word_of(base, bit);
    p.atomic_or_u64(gpa, mask).is_ok_and(|old| old & mask == 0)
}

/// Clears a bit atomically; returns whether it was set before.
fn test_and_clear_bit(p: &mut dyn Platform, base: u64, bit: u32) -> bool {
    let (gpa, mask) = word_of(base, bit);
    p.atomic_and_u64(gpa, !mask)
        .is_ok_and(|old| old & mask != 0)
}

/// Xen's `evtchn_2l_set_pending`: marks `port` pending and, unless masked, tells the
/// vCPU it notifies (selector bit, then `upcall_pending` and a kick); vCPUs blocked in
/// `SCHEDOP_poll` are kicked to look at their ports.
pub fn set_pending(dom: &Domain, p: &mut dyn Platform, port: u32) {
    if port as usize >= NR_PORTS {
        return;
    }
    let si = dom.shared_info_gpa;
    if !test_and_set_bit(p, si + shared_info::EVTCHN_PENDING, port) {
        return;
    }
    if !test_bit(p, si + shared_info::EVTCHN_MASK, port) {
        mark_selector(dom, p, dom.evtchn.notify_vcpu(port), port);
    }
    for id in dom.vcpus_polling() {
        p.kick_vcpu(id);
    }
}

/// Sets `port`'s selector bit in vCPU `vcpu`'s `vcpu_info` and, when it was clear,
/// marks its upcall pending.
fn mark_selector(dom: &Domain, p: &mut dyn Platform, vcpu: u32, port: u32) {
    let Some(vi) = dom.vcpu_info_gpa(vcpu) else {
        return;
    };
    if test_and_set_bit(p, vi + vcpu_info::PENDING_SEL, port / 64) {
        mark_events_pending(p, vi, vcpu);
    }
}

/// Xen's `vcpu_mark_events_pending`: `upcall_pending` set, and the vCPU kicked so that a
/// blocked one wakes and a running one takes the upcall now.
fn mark_events_pending(p: &mut dyn Platform, vcpu_info_gpa: u64, vcpu: u32) {
    let _ = p.write_phys(vcpu_info_gpa + vcpu_info::UPCALL_PENDING, &[1]);
    p.kick_vcpu(vcpu);
}

/// Raises `virq` of vCPU `vcpu` if the guest bound it.
pub fn send_virq(dom: &Domain, p: &mut dyn Platform, vcpu: u32, virq: u32) {
    if let Some(port) = dom.evtchn.virq_port(vcpu, virq) {
        set_pending(dom, p, port);
    }
}

/// A backend notified its port `remote_port`: raise the guest's end.
pub fn backend_notify(dom: &Domain, p: &mut dyn Platform, remote_port: u32) {
    if let Some(port) = dom.evtchn.port_of_backend(remote_port) {
        set_pending(dom, p, port);
    }
}

/// Whether an upcall is due: `upcall_pending` set and events not masked.
pub fn upcall_due(vcpu: &Vcpu, p: &dyn Platform) -> bool {
    let mut b = [0u8; 2];
    p.read_phys(vcpu.vcpu_info_gpa, &mut b).is_ok() && b[0] != 0 && b[1] == 0
}

/// Whether any event is pending for the vCPU (what `SCHEDOP_block` waits for).
pub fn event_pending(vcpu: &Vcpu, p: &dyn Platform) -> bool {
    let mut b = [0u8; 1];
    p.read_phys(vcpu.vcpu_info_gpa, &mut b).is_ok() && b[0] != 0
}

/// Delivers the event upcall if one is due: a bounce to the event callback with events
/// masked (Xen's `TBF_INTERRUPT`). Returns false when none was due.
pub fn deliver_upcall(
    vcpu: &mut Vcpu,
    dom: &Domain,
    regs: &mut GuestRegs,
    p: &mut dyn Platform,
    stats: &mut Stats,
) -> Result<bool, Outcome> {
    if !upcall_due(vcpu, p) || vcpu.event_callback.address == 0 {
        return Ok(false);
    }
    let tb = TrapBounce {
        eip: vcpu.event_callback.address,
        error_code: None,
        interrupt: true,
    };
    create_bounce_frame(vcpu, dom, regs, p, &tb).map_err(Outcome::Crash)?;
    stats.upcalls += 1;
    Ok(true)
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct AllocUnbound {
    dom: u16,
    remote_dom: u16,
    port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct BindInterdomain {
    remote_dom: u16,
    _pad: u16,
    remote_port: u32,
    local_port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct BindVirq {
    virq: u32,
    vcpu: u32,
    port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct BindIpi {
    vcpu: u32,
    port: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Status {
    dom: u16,
    _pad: u16,
    port: u32,
    status: u32,
    vcpu: u32,
    u: [u32; 2],
}

/// `EVTCHNSTAT_*`.
mod stat {
    pub const CLOSED: u32 = 0;
    pub const UNBOUND: u32 = 1;
    pub const INTERDOMAIN: u32 = 2;
    pub const VIRQ: u32 = 4;
    pub const IPI: u32 = 5;
}

/// `event_channel_op(cmd, arg)`. Sends to a backend port reach the host through
/// `Platform::notify_backend`.
pub fn do_event_channel_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    cmd: u64,
    arg: u64,
) -> i64 {
    macro_rules! read {
        ($t:ty) => {
            match guest::read_obj::<$t>(vcpu, p, arg) {
                Ok(v) => v,
                Err(_) => return -EFAULT,
            }
        };
    }
    macro_rules! write_back {
        ($v:expr) => {
            if guest::write_obj(vcpu, p, arg, &$v).is_err() {
                return -EFAULT;
            }
        };
    }
    match cmd {
        op::ALLOC_UNBOUND => {
            let mut a = read!(AllocUnbound);
            if !crate::is_own_domain(a.dom) {
                return -EPERM;
            }
            // The peer is a backend domain (0) or this domain itself.
            let remote = if a.remote_dom == DOMID_SELF {
                DOMID_SELF
            } else {
                a.remote_dom
            };
            let Some(port) = dom
                .evtchn
                .alloc(PortState::Unbound { remote_dom: remote }, 0)
            else {
                return -ENOSPC;
            };
            a.port = port;
            write_back!(a);
            0
        }
        op::BIND_INTERDOMAIN => {
            let mut b = read!(BindInterdomain);
            if b.remote_dom == 0 {
                // Domain 0 (the VMM's backends) exists, but it offers the guest no
                // unbound port: its backends bind to the guest's ports from their side
                // (console, xenstore) instead. Xen: the remote port is not ECS_UNBOUND
                // for this domain, -EINVAL.
                return -EINVAL;
            }
            if !crate::is_own_domain(b.remote_dom) {
                return -ESRCH;
            }
            let rp = b.remote_port;
            match dom.evtchn.state(rp) {
                PortState::Unbound { remote_dom } if remote_dom == DOMID_SELF => {}
                _ => return -EINVAL,
            }
            // The new end notifies the vCPU that binds it (Xen's `current`).
            let Some(lp) = dom.evtchn.alloc(PortState::Loopback { peer: rp }, vcpu.id) else {
                return -ENOSPC;
            };
            dom.evtchn.ports[rp as usize] = PortState::Loopback { peer: lp };
            b.local_port = lp;
            write_back!(b);
            // Xen raises the new local port so nothing sent meanwhile is lost.
            set_pending(dom, p, lp);
            0
        }
        op::BIND_VIRQ => {
            let mut b = read!(BindVirq);
            if b.virq >= NR_VIRQS {
                return -EINVAL;
            }
            // A global VIRQ binds to vCPU 0 only; a per-vCPU one to any vCPU there is.
            if !virq_is_per_vcpu(b.virq) && b.vcpu != 0 {
                return -EINVAL;
            }
            if b.vcpu >= dom.nr_vcpus() {
                return -ENOENT;
            }
            if dom.evtchn.virq_port(b.vcpu, b.virq).is_some() {
                return -xen_abi::errno::EEXIST;
            }
            let Some(port) = dom.evtchn.alloc(PortState::Virq { virq: b.virq }, b.vcpu) else {
                return -ENOSPC;
            };
            dom.evtchn.virq_ports_mut()[b.vcpu as usize][b.virq as usize] = port;
            b.port = port;
            write_back!(b);
            0
        }
        op::BIND_IPI => {
            let mut b = read!(BindIpi);
            if b.vcpu >= dom.nr_vcpus() {
                return -ENOENT;
            }
            let Some(port) = dom.evtchn.alloc(PortState::Ipi, b.vcpu) else {
                return -ENOSPC;
            };
            b.port = port;
            write_back!(b);
            0
        }
        op::CLOSE => {
            let port = read!(u32);
            close(dom, p, port)
        }
        op::SEND => {
            let port = read!(u32);
            match dom.evtchn.state(port) {
                PortState::Backend { remote_port } => {
                    p.notify_backend(remote_port);
                    0
                }
                PortState::Loopback { peer } => {
                    set_pending(dom, p, peer);
                    0
                }
                PortState::Ipi => {
                    set_pending(dom, p, port);
                    0
                }
                // Xen: sending on an unbound port is a silent no-op; VIRQs cannot be sent.
                PortState::Unbound { .. } => 0,
                PortState::Virq { .. } | PortState::Free => -EINVAL,
            }
        }
        op::STATUS => {
            let mut s = read!(Status);
            if !crate::is_own_domain(s.dom) {
                return -ESRCH;
            }
            let st = dom.evtchn.state(s.port);
            if s.port as usize >= NR_PORTS {
                return -EINVAL;
            }
            s.vcpu = dom.evtchn.notify_vcpu(s.port);
            (s.status, s.u) = match st {
                PortState::Free => (stat::CLOSED, [0, 0]),
                // Xen keeps domain ids, never DOMID_SELF.
                PortState::Unbound { remote_dom } => {
                    let dom = if remote_dom == DOMID_SELF {
                        crate::GUEST_DOMID
                    } else {
                        remote_dom
                    };
                    (stat::UNBOUND, [u32::from(dom), 0])
                }
                PortState::Backend { remote_port } => (stat::INTERDOMAIN, [0, remote_port]),
                PortState::Loopback { peer } => {
                    (stat::INTERDOMAIN, [u32::from(crate::GUEST_DOMID), peer])
                }
                PortState::Virq { virq } => (stat::VIRQ, [virq, 0]),
                PortState::Ipi => (stat::IPI, [0, 0]),
            };
            write_back!(s);
            0
        }
        op::BIND_VCPU => {
            #[repr(C)]
            #[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
            struct BindVcpu {
                port: u32,
                vcpu: u32,
            }
            let b = read!(BindVcpu);
            if b.vcpu >= dom.nr_vcpus() {
                return -ENOENT;
            }
            // Xen moves unbound and interdomain channels and global VIRQs; a per-vCPU
            // VIRQ, an IPI or a free port stays where it is (-EINVAL).
            let movable = match dom.evtchn.state(b.port) {
                PortState::Unbound { .. }
                | PortState::Backend { .. }
                | PortState::Loopback { .. } => true,
                PortState::Virq { virq } => !virq_is_per_vcpu(virq),
                PortState::Ipi | PortState::Free => false,
            };
            if b.port as usize >= NR_PORTS || !movable {
                return -EINVAL;
            }
            dom.evtchn.notify_vcpu[b.port as usize] = b.vcpu as u16;
            0
        }
        op::UNMASK => {
            let port = read!(u32);
            if port as usize >= NR_PORTS {
                return -EINVAL;
            }
            // Xen's evtchn_2l_unmask.
            let si = dom.shared_info_gpa;
            if test_and_clear_bit(p, si + shared_info::EVTCHN_MASK, port)
                && test_bit(p, si + shared_info::EVTCHN_PENDING, port)
            {
                mark_selector(dom, p, dom.evtchn.notify_vcpu(port), port);
            }
            0
        }
        op::RESET => {
            #[repr(C)]
            #[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
            struct Reset {
                dom: u16,
            }
            let r = read!(Reset);
            if !crate::is_own_domain(r.dom) {
                return -ESRCH;
            }
            for port in 1..NR_PORTS as u32 {
                if !matches!(dom.evtchn.state(port), PortState::Backend { .. }) {
                    let _ = close(dom, p, port);
                }
            }
            0
        }
        // FIFO channels are not offered: Linux falls back to 2-level.
        op::INIT_CONTROL | op::EXPAND_ARRAY | op::SET_PRIORITY => -ENOSYS,
        // No physical IRQs in an unprivileged domain.
        op::BIND_PIRQ => -EPERM,
        _ => -ENOSYS,
    }
}

fn close(dom: &mut Domain, p: &mut dyn Platform, port: u32) -> i64 {
    let Some(state) = dom.evtchn.ports.get(port as usize).copied() else {
        return -EINVAL;
    };
    match state {
        PortState::Free => return -EINVAL,
        PortState::Virq { virq } => {
            let vcpu = dom.evtchn.notify_vcpu(port) as usize;
            if let Some(v) = dom
                .evtchn
                .virq_ports_mut()
                .get_mut(vcpu)
                .and_then(|ports| ports.get_mut(virq as usize))
            {
                *v = 0;
            }
        }
        PortState::Loopback { peer } => {
            if let Some(s) = dom.evtchn.ports.get_mut(peer as usize) {
                *s = PortState::Unbound {
                    remote_dom: DOMID_SELF,
                };
            }
        }
        // The backend side stays; the guest may rebind it through xenstore later.
        _ => {}
    }
    dom.evtchn.ports[port as usize] = PortState::Free;
    dom.evtchn.notify_vcpu[port as usize] = 0;
    test_and_clear_bit(p, dom.shared_info_gpa + shared_info::EVTCHN_PENDING, port);
    0
}

/// VIRQs each vCPU binds for itself (Xen's `VIRQ_VCPU` type: timer, debug, xenoprof,
/// xenpmu); the others are global and bind to vCPU 0.
fn virq_is_per_vcpu(virq: u32) -> bool {
    matches!(virq, 0 | 1 | 3 | 13)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use xen_abi::errno::EINVAL;

    fn op<T: IntoBytes + FromBytes + Immutable>(
        v: &mut Vcpu,
        d: &mut Domain,
        p: &mut FakePlatform,
        cmd: u64,
        arg: &mut T,
    ) -> i64 {
        guest::write_obj(v, p, DATA_VA, arg).unwrap();
        let rc = do_event_channel_op(v, d, p, cmd, DATA_VA);
        *arg = guest::read_obj(v, p, DATA_VA).unwrap();
        rc
    }

    fn pending(p: &FakePlatform, port: u32) -> bool {
        test_bit(p, SHARED_INFO + shared_info::EVTCHN_PENDING, port)
    }

    #[test]
    fn a_backend_binds_only_to_a_port_left_unbound_for_domain_0() {
        let mut t = EvtchnTable::default();
        t.ports[5] = PortState::Unbound { remote_dom: 0 };
        t.ports[6] = PortState::Unbound {
            remote_dom: DOMID_SELF,
        };
        assert_eq!(t.bind_backend_to_unbound(6, 16), Err(-EINVAL));
        assert_eq!(t.bind_backend_to_unbound(7, 16), Err(-EINVAL));
        assert_eq!(t.bind_backend_to_unbound(NR_PORTS as u32, 16), Err(-EINVAL));
        assert_eq!(t.bind_backend_to_unbound(5, 16), Ok(()));
        assert_eq!(t.port_of_backend(16), Some(5));
        // Bound already: a second bind is refused.
        assert_eq!(t.bind_backend_to_unbound(5, 17), Err(-EINVAL));
        // The backend closes: the guest's end is unbound for domain 0 again.
        t.unbind_backend(16);
        assert_eq!(t.state(5), PortState::Unbound { remote_dom: 0 });
        assert_eq!(t.port_of_backend(16), None);
    }

    #[test]
    fn loopback_interdomain_binds_sends_and_closes() {
        let (mut v, mut d, mut p) = setup();
        let mut a = AllocUnbound {
            dom: DOMID_SELF,
            remote_dom: DOMID_SELF,
            port: 0,
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::ALLOC_UNBOUND, &mut a), 0);
        let mut s = Status {
            dom: DOMID_SELF,
            port: a.port,
            ..Default::default()
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::STATUS, &mut s), 0);
        assert_eq!(
            (s.status, s.u[0]),
            (stat::UNBOUND, u32::from(crate::GUEST_DOMID))
        );

        let mut b = BindInterdomain {
            remote_dom: DOMID_SELF,
            remote_port: a.port,
            ..Default::default()
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_INTERDOMAIN, &mut b), 0);
        assert_ne!(b.local_port, a.port);
        assert!(pending(&p, b.local_port), "Xen raises the new local port");
        test_and_clear_bit(
            &mut p,
            SHARED_INFO + shared_info::EVTCHN_PENDING,
            b.local_port,
        );

        let mut port = b.local_port;
        assert_eq!(op(&mut v, &mut d, &mut p, op::SEND, &mut port), 0);
        assert!(pending(&p, a.port), "a send reaches the peer");

        // Binding the same remote port twice: it is no longer unbound.
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::BIND_INTERDOMAIN, &mut b),
            -EINVAL
        );
        let mut port = a.port;
        assert_eq!(op(&mut v, &mut d, &mut p, op::CLOSE, &mut port), 0);
        assert_eq!(
            d.evtchn.state(b.local_port),
            PortState::Unbound {
                remote_dom: DOMID_SELF
            }
        );
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::CLOSE, &mut port),
            -EINVAL,
            "closing twice"
        );
    }

    #[test]
    fn binding_to_domain_zero_or_a_missing_domain_is_refused() {
        let (mut v, mut d, mut p) = setup();
        let mut b = BindInterdomain {
            remote_dom: 0,
            remote_port: 1,
            ..Default::default()
        };
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::BIND_INTERDOMAIN, &mut b),
            -EINVAL
        );
        b.remote_dom = 7;
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::BIND_INTERDOMAIN, &mut b),
            -ESRCH
        );
        let mut a = AllocUnbound {
            dom: 7,
            remote_dom: 0,
            port: 0,
        };
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::ALLOC_UNBOUND, &mut a),
            -EPERM
        );
    }

    #[test]
    fn virq_ipi_and_bad_ports() {
        let (mut v, mut d, mut p) = setup();
        let mut b = BindVirq {
            virq: 0,
            vcpu: 0,
            port: 0,
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_VIRQ, &mut b), 0);
        assert_eq!(d.evtchn.virq_port(0, 0), Some(b.port));
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::BIND_VIRQ, &mut b),
            -xen_abi::errno::EEXIST
        );
        let mut virq_port = b.port;
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::SEND, &mut virq_port),
            -EINVAL,
            "VIRQs cannot be sent"
        );
        b.virq = NR_VIRQS;
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_VIRQ, &mut b), -EINVAL);

        let mut ipi = BindIpi { vcpu: 0, port: 0 };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_IPI, &mut ipi), 0);
        let mut port = ipi.port;
        assert_eq!(op(&mut v, &mut d, &mut p, op::SEND, &mut port), 0);
        assert!(pending(&p, ipi.port));
        ipi.vcpu = 1;
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_IPI, &mut ipi), -ENOENT);

        for bad in [0u32, NR_PORTS as u32, u32::MAX] {
            let mut port = bad;
            assert_eq!(
                op(&mut v, &mut d, &mut p, op::SEND, &mut port),
                -EINVAL,
                "send on {bad}"
            );
            let mut port = bad;
            assert_eq!(
                op(&mut v, &mut d, &mut p, op::CLOSE, &mut port),
                -EINVAL,
                "close {bad}"
            );
        }
        let mut port = NR_PORTS as u32;
        assert_eq!(op(&mut v, &mut d, &mut p, op::UNMASK, &mut port), -EINVAL);
        assert_eq!(
            do_event_channel_op(&mut v, &mut d, &mut p, op::SEND, 0xdead_0000_0000),
            -EFAULT
        );
    }

    #[test]
    fn an_ipi_reaches_the_vcpu_it_is_bound_to() {
        let (mut v, _, mut p) = setup();
        let mut d = Domain::new(SHARED_INFO, 3);
        let vi1 = d.vcpu_info_gpa(1).unwrap();
        // vCPU 0 binds an IPI port for vCPU 1 and a timer VIRQ for vCPU 2.
        let mut ipi = BindIpi { vcpu: 1, port: 0 };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_IPI, &mut ipi), 0);
        let mut virq = BindVirq {
            virq: VIRQ_TIMER,
            vcpu: 2,
            port: 0,
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_VIRQ, &mut virq), 0);
        assert_eq!(d.evtchn.virq_port(2, VIRQ_TIMER), Some(virq.port));
        assert_eq!(d.evtchn.virq_port(0, VIRQ_TIMER), None, "per vCPU");
        // A global VIRQ binds to vCPU 0 only; a vCPU past the last is -ENOENT.
        let mut global = BindVirq {
            virq: 2,
            vcpu: 1,
            port: 0,
        };
        assert_eq!(
            op(&mut v, &mut d, &mut p, op::BIND_VIRQ, &mut global),
            -EINVAL
        );
        let mut past = BindIpi { vcpu: 3, port: 0 };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_IPI, &mut past), -ENOENT);

        let mut port = ipi.port;
        assert_eq!(op(&mut v, &mut d, &mut p, op::SEND, &mut port), 0);
        assert!(pending(&p, ipi.port));
        let sel = read_bit(&p, vi1 + vcpu_info::PENDING_SEL, ipi.port / 64);
        assert_eq!(sel, Some(true), "vCPU 1's selector");
        let mut flag = [0u8];
        p.read_phys(vi1 + vcpu_info::UPCALL_PENDING, &mut flag)
            .unwrap();
        assert_eq!(flag[0], 1, "vCPU 1's upcall is pending");
        assert_eq!(p.kicked, [1], "and vCPU 1 is kicked");
        assert_eq!(
            read_bit(&p, SHARED_INFO + vcpu_info::PENDING_SEL, ipi.port / 64),
            Some(false),
            "vCPU 0 is not told"
        );
        let mut s = Status {
            dom: DOMID_SELF,
            port: ipi.port,
            ..Default::default()
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::STATUS, &mut s), 0);
        assert_eq!((s.status, s.vcpu), (stat::IPI, 1));

        // An IPI port stays with its vCPU; an unbound one moves.
        #[repr(C)]
        #[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
        struct BindVcpu {
            port: u32,
            vcpu: u32,
        }
        let mut mv = BindVcpu {
            port: ipi.port,
            vcpu: 2,
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_VCPU, &mut mv), -EINVAL);
        let mut a = AllocUnbound {
            dom: DOMID_SELF,
            remote_dom: 0,
            port: 0,
        };
        assert_eq!(op(&mut v, &mut d, &mut p, op::ALLOC_UNBOUND, &mut a), 0);
        mv.port = a.port;
        assert_eq!(op(&mut v, &mut d, &mut p, op::BIND_VCPU, &mut mv), 0);
        assert_eq!(d.evtchn.notify_vcpu(a.port), 2);
    }
}
