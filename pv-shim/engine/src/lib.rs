//! The PV ABI engine: what a Xen hypervisor does for a 64-bit PV vCPU, as plain `no_std`
//! code over small traits, so the same code runs in the VMM (the placement built now,
//! reached by one VM exit per guest trap) and later inside the ring-0 shim.
//!
//! The host (VMM or shim) owns the hardware state. It calls the engine with the guest's
//! registers as they were at the trap ([`GuestRegs`]), the engine's per-vCPU PV state
//! ([`Vcpu`]) and a [`Platform`] that reaches guest-physical memory and the console. The
//! engine updates the registers and the PV state and says what happens next
//! ([`Outcome`]); the host then makes the hardware match: general registers, and from
//! [`Vcpu::hw_state`] the active CR3, FS/GS bases and CR0.TS.
//!
//! Guest virtual addresses in hypercall arguments are translated by walking the guest's
//! active pagetables through [`Platform::read_phys`] (see [`guest`]).

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod bounce;
pub mod domain;
pub mod emulate;
pub mod evtchn;
pub mod gnttab;
pub mod guest;
#[cfg(test)]
mod hostile;
pub mod hypercall;
mod insn;
pub mod m2p;
pub mod memory;
pub mod mmu;
pub mod msr;
pub mod pit;
#[cfg(test)]
mod preemption;
pub mod ptwr;
pub mod stats;
pub mod time;
pub mod vcpu;
pub mod vcpu_context;
pub mod vcpu_op;
pub mod xstate;

#[cfg(test)]
mod testutil;

pub use bounce::{exception, syscall_entry, Trap};
pub use domain::Domain;
pub use stats::{HypercallRecord, Stats};
pub use vcpu::{Callback, GuestRegs, HwState, Mode, Vcpu};

/// Why a guest-physical access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysError {
    /// The address is outside guest memory.
    OutOfRange,
}

/// What the engine needs from its host.
pub trait Platform {
    /// Reads guest-physical memory.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysError>;
    /// Writes guest-physical memory. Never used for live pagetable entries (the host's
    /// KVM may not see such writes); data only.
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), PhysError>;
    /// Atomically ORs `bits` into the 8-byte word at `gpa` and returns the word as it
    /// was, as a locked instruction of the guest would (other vCPUs change the same
    /// event-channel words while they run). A host that runs one vCPU may read and
    /// write ([`plain_or_u64`]); no default, so that a host with several cannot get the
    /// racy one by leaving it out.
    fn atomic_or_u64(&mut self, gpa: u64, bits: u64) -> Result<u64, PhysError>;
    /// Atomically ANDs the 8-byte word at `gpa` with `mask` and returns the word as it
    /// was (see [`Platform::atomic_or_u64`]; [`plain_and_u64`] for one vCPU).
    fn atomic_and_u64(&mut self, gpa: u64, mask: u64) -> Result<u64, PhysError>;
    /// An event became pending for vCPU `id` (or a vCPU polls): the host makes it look,
    /// waking it when it is blocked and interrupting it when it runs guest code (Xen's
    /// `vcpu_kick`). The calling vCPU looks anyway before it resumes.
    fn kick_vcpu(&mut self, id: u32);
    /// `VCPUOP_initialise` built vCPU `id`'s state (its pagetables and GDT frames
    /// already hold their references): the host keeps a copy where that vCPU takes it
    /// up when it is first brought up (the VMM: beside the vCPU's thread; in the shim:
    /// the vCPU's own storage). Called once per vCPU, under the domain lock, before
    /// the vCPU is kicked.
    fn vcpu_initialised(&mut self, id: u32, new: &vcpu_context::NewVcpu);
    /// Writes bytes the guest sent with `CONSOLEIO_write`.
    fn console_write(&mut self, bytes: &[u8]);
    /// Reads pending console input for `CONSOLEIO_read`; returns how many bytes it gave.
    fn console_read(&mut self, buf: &mut [u8]) -> usize;
    /// Xen's `hypercall_preempt_check`: whether a hypercall that loops over a
    /// guest-chosen count should stop at the next item boundary and continue through a
    /// continuation (the guest re-executes the `syscall` with the remaining work, after
    /// any event delivery). Asked between items, never before the first, so every entry
    /// makes progress. The host answers from its own budget (time spent in this exit,
    /// memory queued for the guest); true costs one more guest entry, false lets the
    /// loop run on, so a host that must stay responsive cannot leave this out.
    fn hypercall_preempt_check(&mut self) -> bool;
    /// The guest's CPUID leaf `leaf`/`subleaf` as eax, ebx, ecx, edx: the same policy the
    /// host gives raw CPUID, so the forced-emulation view and the raw view agree.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The guest kernel set XCR0 with `xsetbv` (already checked against the policy and
    /// Xen's rules): the host makes guest ring 3 run with it from the next entry, or
    /// returns false when it cannot give ring 3 exactly that state (the guest then gets
    /// #GP).
    fn set_xcr0(&mut self, xcr0: u64) -> bool;
    /// `MSR_ARCH_CAPABILITIES` as the CPU policy gives it (the bits of the host's value
    /// Xen's PV default offers; read only where CPUID leaf 7 EDX ARCH_CAPS is offered).
    fn arch_capabilities(&self) -> u64;
    /// The domain's pagetable engine with the host's frame access and the flush set the
    /// host carries out before the guest runs again; None where the host has none.
    fn mm(&mut self) -> Option<MmCtx<'_>>;
    /// The guest sent on a channel whose other end is backend port `remote_port` of the
    /// host (xenstore, console, ...). The host returns at once; the backend does its work.
    fn notify_backend(&mut self, remote_port: u32);
    /// Current system time (ns since the domain started), from the same pvclock the guest
    /// reads.
    fn system_time_ns(&self) -> u64;
    /// A guest MSR write that must happen in hardware too (a barrier or flush now, or a
    /// speculation control / TSC_AUX the vCPU runs with); see [`msr::MsrEffect`]. Where
    /// the host cannot, the guest goes on without it.
    fn msr_effect(&mut self, effect: msr::MsrEffect);
    /// Reads the read-only M2P table at byte `offset` (the table's own contents, with
    /// every `MMU_MACHPHYS_UPDATE` applied), for guest reads of Xen's ABI address that
    /// the host cannot map (see [`m2p`]). The table is whole pages: an offset past its
    /// last page is `OutOfRange`, as is any read where the host has no table.
    fn read_m2p(&self, offset: u64, buf: &mut [u8]) -> Result<(), PhysError>;
}

/// [`Platform::atomic_or_u64`] for a host that runs one vCPU: a plain read and write
/// through [`Platform::read_phys`] and [`Platform::write_phys`].
pub fn plain_or_u64(p: &mut dyn Platform, gpa: u64, bits: u64) -> Result<u64, PhysError> {
    let mut b = [0u8; 8];
    p.read_phys(gpa, &mut b)?;
    let old = u64::from_le_bytes(b);
    p.write_phys(gpa, &(old | bits).to_le_bytes())?;
    Ok(old)
}

/// [`Platform::atomic_and_u64`] for a host that runs one vCPU (see [`plain_or_u64`]).
pub fn plain_and_u64(p: &mut dyn Platform, gpa: u64, mask: u64) -> Result<u64, PhysError> {
    let mut b = [0u8; 8];
    p.read_phys(gpa, &mut b)?;
    let old = u64::from_le_bytes(b);
    p.write_phys(gpa, &(old & mask).to_le_bytes())?;
    Ok(old)
}

/// The domain id the guest has (the VMM's backends are domain 0).
pub const GUEST_DOMID: u16 = 1;

/// Whether a domain id names the calling domain: `DOMID_SELF` or its own id (what Xen's
/// `rcu_lock_domain_by_any_id` resolves to the current domain).
pub(crate) fn is_own_domain(dom: u16) -> bool {
    dom == xen_abi::xen::DOMID_SELF || dom == GUEST_DOMID
}

/// Access to the domain's PV MMU engine for one operation.
pub struct MmCtx<'a> {
    /// The frame table.
    pub mm: &'a mut pv_mm::Mm,
    /// Guest frames, as the host reads and writes them.
    pub mem: &'a mut dyn pv_mm::FrameAccess,
    /// TLB work accumulated until the guest runs again.
    pub flush: &'a mut mmu::BatchFlush,
}

/// What the host does after the engine handled a trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume the guest with the updated registers and hardware state.
    Resume,
    /// `SCHEDOP_yield`: resume, the host may let other work run first.
    Yield,
    /// `SCHEDOP_block`: resume when an event is pending (no events yet: resume at once).
    Block,
    /// The vCPU took itself down (`VCPUOP_down`): the host runs it again, from the
    /// updated registers, once the domain's slot for it says it is up.
    Down,
    /// `SCHEDOP_shutdown` with this reason (`SHUTDOWN_*`).
    Shutdown(u32),
    /// The guest did something Xen answers with `domain_crash`.
    Crash(CrashReason),
}

/// Why the engine crashed the domain, for the diagnostic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashReason {
    /// An exception with no handler in the guest's trap table.
    UnhandledTrap {
        /// Vector.
        vector: u8,
        /// Error code.
        error_code: u64,
    },
    /// Writing a bounce frame to the guest kernel stack failed.
    BadKernelStack {
        /// The guest stack pointer that could not be written.
        rsp: u64,
    },
    /// `HYPERVISOR_iret` with an unreadable frame or an invalid target.
    BadIret,
    /// A guest-user `syscall` with no syscall callback registered.
    NoSyscallCallback,
    /// A fault while delivering a bounce to the guest (nested failure).
    DoubleFault,
    /// The vCPU's `vcpu_info` (at [`Vcpu::vcpu_info_gpa`]) is outside guest memory.
    BadVcpuInfo,
}
