//! The domain: what every vCPU of a guest shares, as Xen's `struct domain` holds it
//! apart from each `struct vcpu`.
//!
//! A host runs each vCPU on its own thread with that vCPU's [`crate::Vcpu`] private to
//! it, and hands the engine the one [`Domain`] under a lock for the length of one exit
//! (the engine is plain code over `&mut`; the lock is the host's). What another vCPU may
//! read or change lives here too, in the vCPU's [`VcpuSlot`]: where its `vcpu_info` is
//! (an event for it is flagged there by whichever vCPU raises it), whether it is up or
//! initialised, the context `VCPUOP_initialise` gave it, its registered runstate area
//! and a copy of its runstate. Xen guards the same fields of `struct vcpu` with the
//! domain lock or atomics.
//!
//! The domain's storage is fixed: one slot for each of the most vCPUs a domain may have
//! ([`MAX_VCPUS`]), so no path allocates, and a host that keeps the domain in static
//! storage builds it in place ([`Domain::EMPTY`], then [`Domain::reset`]).

use crate::evtchn::EvtchnTable;
use crate::gnttab::GrantTable;
use crate::vcpu_op::RunstateInfo;

/// vCPUs whose `vcpu_info` lives in `shared_info` until the guest registers its own
/// (`XEN_LEGACY_MAX_VCPUS`); a vCPU above them has none and cannot be initialised
/// before `VCPUOP_register_vcpu_info`.
pub const LEGACY_MAX_VCPUS: u32 = 32;

/// The most vCPUs a domain has: the VMM<->shim contract's limit, which sizes the
/// domain's per-vCPU arrays.
pub const MAX_VCPUS: usize = xen_abi::contract::MAX_VCPUS as usize;

/// What the domain knows of one of its vCPUs.
#[derive(Clone, Debug, Default)]
pub struct VcpuSlot {
    /// Guest-physical address of the vCPU's `vcpu_info`; None for a vCPU above
    /// [`LEGACY_MAX_VCPUS`] that has not registered one (Xen's `dummy_vcpu_info`).
    pub vcpu_info_gpa: Option<u64>,
    /// `VCPUOP_register_vcpu_info` succeeded (once per vCPU; the frame then holds a
    /// writable type reference for the domain's life).
    pub vcpu_info_registered: bool,
    /// Guest virtual address of the registered runstate area (0: none).
    pub runstate_area: u64,
    /// The vCPU's runstate as of its last change (what `VCPUOP_get_runstate_info`
    /// reports for a vCPU other than the caller).
    pub runstate: RunstateInfo,
    /// Not `_VPF_down`: the vCPU runs guest code.
    pub up: bool,
    /// `is_initialised`: it has a context (the builder's for vCPU 0, else
    /// `VCPUOP_initialise`'s).
    pub initialised: bool,
    /// Changes another vCPU asked for, taken up by this vCPU at its next exit.
    pub requests: VcpuRequests,
    /// Blocked in `SCHEDOP_poll`: any newly pending port kicks it to look at its set.
    pub polling: bool,
}

impl VcpuSlot {
    /// A slot of a vCPU that is down, uninitialised and has no `vcpu_info`.
    pub const EMPTY: Self = Self {
        vcpu_info_gpa: None,
        vcpu_info_registered: false,
        runstate_area: 0,
        runstate: RunstateInfo {
            state: 0,
            _pad: 0,
            state_entry_time: 0,
            time: [0; 4],
        },
        up: false,
        initialised: false,
        requests: VcpuRequests {
            periodic_ns: None,
            time_area: None,
        },
        polling: false,
    };
}

/// What another vCPU changed of a vCPU's own state with `vcpu_op` (the owner applies it
/// at its next exit, see [`crate::vcpu_op::sync_from_domain`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRequests {
    /// A new periodic timer period (0: stop it).
    pub periodic_ns: Option<u64>,
    /// A new `vcpu_time_info` copy address (0: none).
    pub time_area: Option<u64>,
}

/// A guest domain's shared PV state.
#[derive(Clone, Debug)]
pub struct Domain {
    /// The event channels.
    pub evtchn: EvtchnTable,
    /// The grant table.
    pub gnttab: GrantTable,
    /// Enabled VM assists (`1 << VMASST_TYPE_*`; Xen's `d->vm_assist`).
    pub vm_assist: u64,
    /// The frame the guest gave with `PHYSDEVOP_pirq_eoi_gmfn` (held with a writable
    /// type reference).
    pub pirq_eoi_mfn: Option<u64>,
    /// `SCHEDOP_shutdown_code`: a reason that overrides the next shutdown's.
    pub shutdown_code: Option<u8>,
    /// Guest-physical address of `shared_info`.
    pub shared_info_gpa: u64,
    /// The emulated PIT behind ports 0x42, 0x43 and 0x61 (Xen's `d->arch.vpit`).
    pub pit: crate::pit::Pit,
    vcpus: [VcpuSlot; MAX_VCPUS],
    /// How many of `vcpus` the domain has (`d->max_vcpus`).
    nr_vcpus: u32,
    /// Where `VCPUOP_initialise` reads the guest's 5 KiB `vcpu_guest_context` (a fixed
    /// buffer of the domain's, so that neither a stack nor an allocator holds it).
    vcpu_context: [u64; VCPU_CONTEXT_WORDS],
}

/// Words of a `vcpu_guest_context`.
const VCPU_CONTEXT_WORDS: usize = core::mem::size_of::<xen_abi::vcpu::VcpuGuestContext>() / 8;
const _: () = assert!(core::mem::size_of::<xen_abi::vcpu::VcpuGuestContext>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<xen_abi::vcpu::VcpuGuestContext>() <= 8);

impl Domain {
    /// A domain of one vCPU with nothing set up, as a constant: a host that keeps the
    /// domain in static storage starts from it and calls [`Domain::reset`] in place
    /// (the domain is tens of KiB: it is never built on a stack there).
    pub const EMPTY: Self = Self {
        evtchn: EvtchnTable::EMPTY,
        gnttab: GrantTable {
            first_mfn: 0,
            max_frames: 0,
            nr_frames: 0,
        },
        vm_assist: 0,
        pirq_eoi_mfn: None,
        shutdown_code: None,
        shared_info_gpa: 0,
        pit: crate::pit::Pit::RESET,
        vcpus: [VcpuSlot::EMPTY; MAX_VCPUS],
        nr_vcpus: 1,
        vcpu_context: [0; VCPU_CONTEXT_WORDS],
    };

    /// The domain's buffer for a `vcpu_guest_context`, as one (its previous contents
    /// are whatever the last `VCPUOP_initialise` read). None cannot happen (the buffer
    /// is sized and aligned for it at compile time) but is not unwrapped.
    pub(crate) fn vcpu_context_scratch(&mut self) -> Option<&mut xen_abi::vcpu::VcpuGuestContext> {
        use zerocopy::{FromBytes, IntoBytes};
        xen_abi::vcpu::VcpuGuestContext::mut_from_bytes(self.vcpu_context.as_mut_bytes()).ok()
    }

    /// A domain of `nr_vcpus` vCPUs as the builder leaves it (see [`Domain::reset`]).
    pub fn new(shared_info_gpa: u64, nr_vcpus: u32) -> Self {
        let mut d = Self::EMPTY;
        d.reset(shared_info_gpa, nr_vcpus);
        d
    }

    /// Makes this domain, in place, one of `nr_vcpus` vCPUs (clamped to 1 to
    /// [`MAX_VCPUS`]) as the builder leaves it: vCPU 0 initialised and up, the others
    /// down and uninitialised, vCPUs below [`LEGACY_MAX_VCPUS`] with their `vcpu_info`
    /// in `shared_info`.
    pub fn reset(&mut self, shared_info_gpa: u64, nr_vcpus: u32) {
        let nr_vcpus = nr_vcpus.clamp(1, MAX_VCPUS as u32);
        for (id, slot) in (0u32..).zip(self.vcpus.iter_mut()) {
            *slot = VcpuSlot {
                vcpu_info_gpa: (id < LEGACY_MAX_VCPUS && id < nr_vcpus)
                    .then(|| shared_info_gpa + u64::from(id) * xen_abi::xen::vcpu_info::SIZE),
                up: id == 0,
                initialised: id == 0,
                // Down from the start: offline in the runstate others read.
                runstate: RunstateInfo {
                    state: if id == 0 {
                        crate::vcpu_op::runstate::RUNNING
                    } else {
                        crate::vcpu_op::runstate::OFFLINE
                    },
                    ..RunstateInfo::default()
                },
                ..VcpuSlot::EMPTY
            };
        }
        self.evtchn.reset(nr_vcpus);
        self.gnttab = GrantTable::default();
        self.vm_assist = 0;
        self.pirq_eoi_mfn = None;
        self.shutdown_code = None;
        self.shared_info_gpa = shared_info_gpa;
        self.pit = crate::pit::Pit::RESET;
        self.nr_vcpus = nr_vcpus;
    }

    /// vCPUs of the domain (`d->max_vcpus`).
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    /// The domain's vCPUs' slots.
    fn slots(&self) -> &[VcpuSlot] {
        self.vcpus.get(..self.nr_vcpus as usize).unwrap_or(&[])
    }

    /// vCPU `id`'s slot; None when the domain has no such vCPU.
    pub fn vcpu(&self, id: u32) -> Option<&VcpuSlot> {
        self.slots().get(id as usize)
    }

    /// vCPU `id`'s slot, to change; None when the domain has no such vCPU.
    pub fn vcpu_mut(&mut self, id: u32) -> Option<&mut VcpuSlot> {
        self.vcpus
            .get_mut(..self.nr_vcpus as usize)?
            .get_mut(id as usize)
    }

    /// Where vCPU `id`'s `vcpu_info` is, if it has one.
    pub fn vcpu_info_gpa(&self, id: u32) -> Option<u64> {
        self.vcpu(id).and_then(|s| s.vcpu_info_gpa)
    }

    /// vCPUs blocked in `SCHEDOP_poll`.
    pub fn vcpus_polling(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.polling)
            .map(|(id, _)| id as u32)
    }

    /// vCPUs that are up.
    pub fn vcpus_up(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.up)
            .map(|(id, _)| id as u32)
    }
}
