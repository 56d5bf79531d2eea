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

use alloc::vec::Vec;

use crate::evtchn::EvtchnTable;
use crate::gnttab::GrantTable;
use crate::vcpu_op::RunstateInfo;

/// vCPUs whose `vcpu_info` lives in `shared_info` until the guest registers its own
/// (`XEN_LEGACY_MAX_VCPUS`); a vCPU above them has none and cannot be initialised
/// before `VCPUOP_register_vcpu_info`.
pub const LEGACY_MAX_VCPUS: u32 = 32;

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
    /// The state `VCPUOP_initialise` built, until the vCPU's host thread takes it.
    pub new_vcpu: Option<alloc::boxed::Box<crate::vcpu_context::NewVcpu>>,
    /// Changes another vCPU asked for, taken up by this vCPU at its next exit.
    pub requests: VcpuRequests,
    /// Blocked in `SCHEDOP_poll`: any newly pending port kicks it to look at its set.
    pub polling: bool,
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
    vcpus: Vec<VcpuSlot>,
}

impl Domain {
    /// A domain of `nr_vcpus` vCPUs as the builder leaves it: vCPU 0 initialised and
    /// up, the others down and uninitialised, vCPUs below [`LEGACY_MAX_VCPUS`] with
    /// their `vcpu_info` in `shared_info`.
    pub fn new(shared_info_gpa: u64, nr_vcpus: u32) -> Self {
        let vcpus = (0..nr_vcpus.max(1))
            .map(|id| VcpuSlot {
                vcpu_info_gpa: (id < LEGACY_MAX_VCPUS)
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
                ..VcpuSlot::default()
            })
            .collect();
        Self {
            evtchn: EvtchnTable::new(nr_vcpus),
            gnttab: GrantTable::default(),
            vm_assist: 0,
            pirq_eoi_mfn: None,
            shutdown_code: None,
            shared_info_gpa,
            vcpus,
        }
    }

    /// vCPUs of the domain (`d->max_vcpus`).
    pub fn nr_vcpus(&self) -> u32 {
        self.vcpus.len() as u32
    }

    /// vCPU `id`'s slot; None when the domain has no such vCPU.
    pub fn vcpu(&self, id: u32) -> Option<&VcpuSlot> {
        self.vcpus.get(id as usize)
    }

    /// vCPU `id`'s slot, to change; None when the domain has no such vCPU.
    pub fn vcpu_mut(&mut self, id: u32) -> Option<&mut VcpuSlot> {
        self.vcpus.get_mut(id as usize)
    }

    /// Where vCPU `id`'s `vcpu_info` is, if it has one.
    pub fn vcpu_info_gpa(&self, id: u32) -> Option<u64> {
        self.vcpu(id).and_then(|s| s.vcpu_info_gpa)
    }

    /// vCPUs blocked in `SCHEDOP_poll`.
    pub fn vcpus_polling(&self) -> impl Iterator<Item = u32> + '_ {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, s)| s.polling)
            .map(|(id, _)| id as u32)
    }

    /// vCPUs that are up.
    pub fn vcpus_up(&self) -> impl Iterator<Item = u32> + '_ {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, s)| s.up)
            .map(|(id, _)| id as u32)
    }
}
