//! VM-exit handling as a plain function: an exit, the vCPU's registers (behind the
//! [`CpuState`] trait, so unit tests feed synthetic exits) and the domain's state in;
//! an [`Action`] out.
//!
//! Two doorbells reach here (see `xen_abi::contract`): the hypercall doorbell, rung at
//! CPL3 by the `syscall` stub, and the trap doorbell, rung at CPL0 by an IDT stub with
//! the CPU's interrupt frame on the shim stack. Everything else is a fault of the VM
//! and ends the domain with a diagnostic.

use std::fmt::Write as _;

use pv_engine::{GuestRegs, Outcome, Platform, Stats, Trap, Vcpu as PvVcpu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::contract::{port, vector_has_error_code, TrapFrame};
use xen_abi::xen::selector;
use zerocopy::{FromBytes, IntoBytes};

use crate::posted::ShortApply;
use crate::shim::VcpuShim;
use crate::vstate::{Exit, Regs, Sregs};

/// Access to the vCPU's registers at an exit.
pub trait CpuState {
    /// General registers.
    fn regs(&mut self) -> Result<Regs, String>;
    /// Replaces the general registers at the next entry.
    fn set_regs(&mut self, regs: &Regs);
    /// System registers.
    fn sregs(&mut self) -> Result<Sregs, String>;
    /// Replaces the system registers at the next entry.
    fn set_sregs(&mut self, sregs: &Sregs);
    /// Whether the CPU will deliver an exception (or interrupt) at the next entry, taken
    /// at the registers' current rip (see [`crate::vstate::Vcpu::event_in_flight`]).
    fn event_in_flight(&mut self) -> Result<bool, String>;
    /// Makes the next entry only finish the instruction an I/O exit left half done
    /// (KVM completes it, then returns as if kicked, running nothing further).
    fn finish_io_then_stop(&mut self);
    /// The data of the port I/O the last exit stopped at: element width and elements
    /// (see [`crate::vstate::Vcpu::io_data`]).
    fn io_data(&mut self) -> Option<(u8, &mut [u8])>;
}

impl CpuState for crate::vstate::Vcpu {
    fn regs(&mut self) -> Result<Regs, String> {
        crate::vstate::Vcpu::regs(self).map_err(|e| e.to_string())
    }
    fn set_regs(&mut self, regs: &Regs) {
        crate::vstate::Vcpu::set_regs(self, regs)
    }
    fn sregs(&mut self) -> Result<Sregs, String> {
        crate::vstate::Vcpu::sregs(self).map_err(|e| e.to_string())
    }
    fn set_sregs(&mut self, sregs: &Sregs) {
        crate::vstate::Vcpu::set_sregs(self, sregs)
    }
    fn event_in_flight(&mut self) -> Result<bool, String> {
        crate::vstate::Vcpu::event_in_flight(self).map_err(|e| e.to_string())
    }
    fn finish_io_then_stop(&mut self) {
        // KVM's API: a KVM_RUN with immediate_exit set completes a pending I/O or MMIO
        // operation and returns -EINTR without running further instructions.
        self.set_immediate_exit(true);
    }
    fn io_data(&mut self) -> Option<(u8, &mut [u8])> {
        crate::vstate::Vcpu::io_data(self)
    }
}

/// What the run loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Resume,
    /// The guest asked to shut down with this `SHUTDOWN_*` reason.
    Shutdown(u32),
    /// The domain cannot continue; the text says why, for a person.
    Fatal(String),
    /// `KVM_RUN` was interrupted: the loop checks its deadline and goes on.
    Interrupted,
    /// `SCHEDOP_block`: do not enter the guest until an event is pending for it.
    Block,
    /// `SCHEDOP_yield`: enter the guest again after letting other threads (the other
    /// vCPUs on an overcommitted host) run.
    Yield,
    /// The vCPU is down (`VCPUOP_down`): do not enter the guest until the domain says
    /// it is up again.
    Down,
}

/// Counters of exits by kind.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    /// What the last exit was, for the `--stats` profile.
    pub last: ExitKind,
    /// Exits by kind with the VMM's time for each (`RunConfig::profile`).
    pub profile: Option<crate::metrics::Profile>,
    /// Hypercall doorbells (hypercalls and guest-user syscalls).
    pub hypercall_doorbells: u64,
    /// Trap doorbells (exceptions).
    pub trap_doorbells: u64,
    /// Exits whose flushes reached the other vCPUs' TLBs.
    pub remote_flushes: u64,
    /// Other vCPUs kicked out of the guest for those flushes.
    pub remote_flush_kicks: u64,
    /// Interrupted runs.
    pub interrupted: u64,
    /// Interrupted runs that found a guest fault in flight and left event delivery to
    /// the fault's trap exit.
    pub kicks_with_fault_in_flight: u64,
    /// Interrupted runs left alone because the guest had just executed what may be a
    /// software trap (see [`SoftTrapCheck`]).
    pub kicks_after_soft_trap: u64,
    /// Protection-key faults answered by resetting PKRU (see [`PkruReset`]).
    pub pkru_resets: u64,
    /// Refills of the posting area during one apply.
    pub apply_more: u64,
    /// The guest kernel's own port I/O, through the I/O bitmap opened for it.
    pub port_io: u64,
    /// Of those, the ones with an event due: the next entry only finished the
    /// instruction, and the delivery followed as after a kick.
    pub port_io_then_event: u64,
    /// Applies of posted stores and flushes (entries into the shim's apply routine).
    pub applies: u64,
    /// Full local flushes left to KVM's load of a new CR3 (no apply; see `pending`).
    pub flushes_by_cr3_load: u64,
    /// Pagetable stores the shim repeated inside the VM.
    pub posted_stores: u64,
    /// The most stores one apply carried (the posted queue's high-water mark).
    pub posted_peak: u64,
    /// Stores over not-present entries written without posting
    /// (`crate::host::Paths::absent_stores_unposted`).
    pub absent_unposted: u64,
    /// The longest hypercall doorbell, in nanoseconds of VMM time (a preempted
    /// hypercall ends its exit after about [`EXIT_BUDGET`]).
    pub hypercall_max_ns: u64,
    /// Nanoseconds the VMM spent handling hypercall doorbells (decode, engine, posting).
    pub hypercall_ns: u64,
    /// Nanoseconds the VMM spent handling trap doorbells.
    pub trap_ns: u64,
    /// Other exits.
    pub other: u64,
}

impl ExitStats {
    /// VM exits of every kind: the doorbells, apply refills, guest port I/O, kicks and
    /// the rest.
    pub fn vm_exits(&self) -> u64 {
        self.hypercall_doorbells
            + self.trap_doorbells
            + self.apply_more
            + self.port_io
            + self.interrupted
            + self.other
    }

    /// Adds another vCPU's counters to these (maxima stay maxima).
    pub fn absorb(&mut self, o: &ExitStats) {
        self.hypercall_doorbells += o.hypercall_doorbells;
        self.trap_doorbells += o.trap_doorbells;
        self.remote_flushes += o.remote_flushes;
        self.remote_flush_kicks += o.remote_flush_kicks;
        self.interrupted += o.interrupted;
        self.kicks_with_fault_in_flight += o.kicks_with_fault_in_flight;
        self.kicks_after_soft_trap += o.kicks_after_soft_trap;
        self.pkru_resets += o.pkru_resets;
        self.apply_more += o.apply_more;
        self.port_io += o.port_io;
        self.port_io_then_event += o.port_io_then_event;
        self.applies += o.applies;
        self.flushes_by_cr3_load += o.flushes_by_cr3_load;
        self.posted_stores += o.posted_stores;
        self.posted_peak = self.posted_peak.max(o.posted_peak);
        self.absent_unposted += o.absent_unposted;
        self.hypercall_max_ns = self.hypercall_max_ns.max(o.hypercall_max_ns);
        self.hypercall_ns += o.hypercall_ns;
        self.trap_ns += o.trap_ns;
        self.other += o.other;
        if let (Some(mine), Some(theirs)) = (&mut self.profile, &o.profile) {
            for (kind, t) in &theirs.by_kind {
                let e = mine.by_kind.entry(*kind).or_default();
                e.count += t.count;
                e.ns += t.ns;
            }
        }
    }
}

/// What an exit was, as finely as the profile tells exits apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitKind {
    /// A hypercall from the guest kernel: its number and, for the hypercalls that
    /// multiplex commands, the command (see [`hypercall_subop`]).
    Hypercall {
        /// Hypercall number.
        nr: u64,
        /// The command, for multiplexing hypercalls.
        sub: Option<u64>,
    },
    /// A `syscall` from guest user mode, bounced to the guest kernel.
    UserSyscall,
    /// An exception or interrupt the shim forwarded: its vector.
    Trap(u8),
    /// The shim asked for more posted stores.
    ApplyRefill,
    /// The guest kernel's own port I/O (see [`ExitStats::port_io`]).
    PortIo,
    /// `KVM_RUN` returned for a kick (timer, backend event, watchdog).
    Interrupted,
    /// Anything else (guest port I/O, unexpected exits).
    #[default]
    Other,
}

/// The command argument of hypercalls that multiplex several operations (the first
/// argument of most; `update_va_mapping`'s flush flags), None for the rest.
pub fn hypercall_subop(nr: u64, args: [u64; 3]) -> Option<u64> {
    use xen_abi::xen::hypercall as hc;
    match nr {
        hc::SCHED_OP_COMPAT
        | hc::MEMORY_OP
        | hc::XEN_VERSION
        | hc::CONSOLE_IO
        | hc::GRANT_TABLE_OP
        | hc::VM_ASSIST
        | hc::VCPU_OP
        | hc::SCHED_OP
        | hc::CALLBACK_OP
        | hc::EVENT_CHANNEL_OP
        | hc::PHYSDEV_OP
        | hc::SET_SEGMENT_BASE => Some(args[0] & 0xffff_ffff),
        hc::UPDATE_VA_MAPPING => Some(args[2] & 3),
        _ => None,
    }
}

/// Guest memory and console as the engine's [`Platform`]: guest RAM plus the
/// shared_info frame, nothing else of the shim region.
pub struct GuestPlatform<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// Bytes of guest RAM (it starts at guest-physical 0).
    pub ram_bytes: u64,
    /// The shared_info frame.
    pub shared_info_gpa: u64,
    /// The guest's CPUID policy.
    pub cpuid: &'a crate::cpuid::CpuidTable,
    /// Where console output goes.
    pub console: &'a mut dyn std::io::Write,
    /// The domain's pagetable engine (None: the guest gets -ENOSYS for MMU calls).
    pub mm: Option<&'a mut pv_mm::Mm>,
    /// Guest frames for the engine; its stores are queued for the shim.
    pub frames: crate::posted::VmmFrames<'a>,
    /// TLB work queued with the stores.
    pub flush: &'a mut pv_engine::mmu::BatchFlush,
    /// The domain's clock.
    pub clock: pv_engine::time::PvClock,
    /// Guest TSC minus host TSC ([`crate::host::Paths::tsc_offset`]).
    pub tsc_offset: i64,
    /// Backend ports the guest notified during this exit.
    pub notified: &'a mut Vec<u32>,
    /// MSR writes (index, value) the engine asked to be performed on the vCPU
    /// (`pv_engine::msr::MsrEffect`); the run loop applies them before the guest runs
    /// again.
    pub msr_writes: &'a mut Vec<(u32, u64)>,
    /// What the host does about extended state.
    pub xstate: crate::xstate::XstatePlan,
    /// An XCR0 the guest set during this exit, for the runner to load before the next
    /// entry.
    pub xcr0_pending: Option<u64>,
    /// Guest-physical address of the read-only M2P table.
    pub m2p_gpa: u64,
    /// Its size in bytes ([`crate::shim::ShimRegion::m2p_bytes`]).
    pub m2p_bytes: u64,
    /// When this exit's work budget ends ([`EXIT_BUDGET`] after its handling started; set
    /// by the run loop): past it, long hypercalls continue on the next entry. None: no
    /// time limit (tests).
    pub preempt_deadline: Option<std::time::Instant>,
    /// The vCPU this exit is on.
    pub vcpu_id: u32,
    /// Every vCPU of the domain, to kick one an event is for.
    pub peers: &'a [crate::smp::VcpuHandle],
    /// This exit's flushes include the other vCPUs' TLBs: the run loop has them
    /// flushed ([`crate::smp::flush_others`]) before this vCPU runs guest code again.
    pub remote_flush: bool,
}

/// VMM work one exit may do before a long hypercall is preempted (Xen's
/// `hypercall_preempt_check`): short enough that a stop request, a timer or a backend
/// event waits at most about this long, long enough that a continuation (one guest entry,
/// ~0.1 ms on a software-KVM host) costs a few percent of a long batch.
pub const EXIT_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

/// Pagetable stores one exit may queue for the shim before a long hypercall is
/// preempted: 64 Ki stores of 16 bytes, 1 MiB. The queue never holds more than this plus
/// the stores of the one operation that crossed it (docs/architecture.md, "Bounded work
/// per exit").
pub const MAX_QUEUED_STORES: usize = 64 * 1024;

/// Reads the host TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and exists on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC the guest reads now: the host's plus the offset the host facts measured (0
/// where guest code reads the host TSC unchanged, as on software KVM).
pub fn guest_tsc(offset: i64) -> u64 {
    rdtsc().wrapping_add_signed(offset)
}

impl GuestPlatform<'_> {
    fn allowed(&self, gpa: u64, len: usize) -> bool {
        let Some(end) = gpa.checked_add(len as u64) else {
            return false;
        };
        end <= self.ram_bytes
            || (gpa >= self.shared_info_gpa && end <= self.shared_info_gpa + 0x1000)
    }
}

impl GuestPlatform<'_> {
    /// Runs `op` on the aligned guest word at `gpa` as an atomic: the guest's vCPUs
    /// change such words (event-channel bitmaps) with locked instructions while this
    /// thread does too.
    fn with_atomic_u64(
        &self,
        gpa: u64,
        op: impl FnOnce(&std::sync::atomic::AtomicU64) -> u64,
    ) -> Result<u64, pv_engine::PhysError> {
        use vm_memory::{GuestMemoryBackend, VolatileMemory};
        if !self.allowed(gpa, 8) || !gpa.is_multiple_of(8) {
            return Err(pv_engine::PhysError::OutOfRange);
        }
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa), 8)
            .map_err(|_| pv_engine::PhysError::OutOfRange)?;
        let word = slice
            .get_atomic_ref::<std::sync::atomic::AtomicU64>(0)
            .map_err(|_| pv_engine::PhysError::OutOfRange)?;
        Ok(op(word))
    }
}

impl Platform for GuestPlatform<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), pv_engine::PhysError> {
        if !self.allowed(gpa, buf.len()) {
            return Err(pv_engine::PhysError::OutOfRange);
        }
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| pv_engine::PhysError::OutOfRange)
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), pv_engine::PhysError> {
        if !self.allowed(gpa, buf.len()) {
            return Err(pv_engine::PhysError::OutOfRange);
        }
        self.mem
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| pv_engine::PhysError::OutOfRange)
    }
    fn atomic_or_u64(&mut self, gpa: u64, bits: u64) -> Result<u64, pv_engine::PhysError> {
        self.with_atomic_u64(gpa, |w| {
            w.fetch_or(bits, std::sync::atomic::Ordering::SeqCst)
        })
    }
    fn atomic_and_u64(&mut self, gpa: u64, mask: u64) -> Result<u64, pv_engine::PhysError> {
        self.with_atomic_u64(gpa, |w| {
            w.fetch_and(mask, std::sync::atomic::Ordering::SeqCst)
        })
    }
    fn kick_vcpu(&mut self, id: u32) {
        // This vCPU looks for events before it resumes anyway.
        if id != self.vcpu_id {
            if let Some(v) = self.peers.get(id as usize) {
                v.send(crate::runner::Wake::Look);
            }
        }
    }
    fn vcpu_initialised(&mut self, id: u32, new: &pv_engine::vcpu_context::NewVcpu) {
        if let Some(v) = self.peers.get(id as usize) {
            *v.new_vcpu.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(new.clone()));
        }
    }
    fn read_m2p(&self, offset: u64, buf: &mut [u8]) -> Result<(), pv_engine::PhysError> {
        // The table's own frames (in the shim region, so not reachable by read_phys): the
        // engine serves guest reads of Xen's M2P address from them.
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.m2p_bytes => self
                .mem
                .read_slice(buf, GuestAddress(self.m2p_gpa + offset))
                .map_err(|_| pv_engine::PhysError::OutOfRange),
            _ => Err(pv_engine::PhysError::OutOfRange),
        }
    }
    fn console_write(&mut self, bytes: &[u8]) {
        // Console output is best effort: a closed stdout must not stop the guest.
        let _ = self.console.write_all(bytes);
        let _ = self.console.flush();
    }
    fn console_read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
    fn hypercall_preempt_check(&mut self) -> bool {
        self.frames.posted.queued() > MAX_QUEUED_STORES
            || self
                .preempt_deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.cpuid.lookup(leaf, subleaf)
    }
    fn arch_capabilities(&self) -> u64 {
        self.cpuid.arch_capabilities()
    }
    fn set_xcr0(&mut self, xcr0: u64) -> bool {
        if !self.xstate.accepts(xcr0) {
            return false;
        }
        self.xcr0_pending = Some(xcr0);
        true
    }
    fn notify_backend(&mut self, remote_port: u32) {
        if !self.notified.contains(&remote_port) {
            self.notified.push(remote_port);
        }
    }
    fn system_time_ns(&self) -> u64 {
        self.clock.ns(guest_tsc(self.tsc_offset))
    }
    fn msr_effect(&mut self, effect: pv_engine::msr::MsrEffect) {
        self.msr_writes.push(effect.msr_write());
    }
    fn mm(&mut self) -> Option<pv_engine::MmCtx<'_>> {
        let mm = self.mm.as_deref_mut()?;
        Some(pv_engine::MmCtx {
            mm,
            mem: &mut self.frames,
            flush: &mut *self.flush,
        })
    }
}

/// The domain's state an exit may touch.
pub struct Domain<'a> {
    /// The engine's per-vCPU PV state.
    pub vcpu: &'a mut PvVcpu,
    /// The engine's domain state (shared with the other vCPUs, locked for this exit).
    pub pv_domain: crate::smp::DomainLock<'a>,
    /// Engine counters.
    pub stats: &'a mut Stats,
    /// Exit counters.
    pub exits: &'a mut ExitStats,
    /// Where this vCPU's part of the shim is.
    pub shim: &'a VcpuShim,
    /// Memory and console.
    pub platform: GuestPlatform<'a>,
    /// The guest GDT frames the shim maps now (to notice `set_gdt` changes).
    pub mapped_gdt: &'a mut [u64; xen_abi::xen::selector::FIRST_RESERVED_GDT_PAGE],
    /// The paths this host's facts chose.
    pub paths: crate::host::Paths,
    /// VA of the guest's hypercall page (its `HYPERCALL_PAGE` note), whose stubs ring
    /// the hypercall doorbell themselves (`loader::hypercall_page_bytes`).
    pub hypercall_page: Option<u64>,
    /// A kick left alone because a software trap may be in flight (see [`SoftTrapCheck`]).
    pub soft_trap: &'a mut SoftTrapCheck,
    /// The guest state saved while the shim's PKRU-reset trampoline runs.
    pub pkru_reset: &'a mut Option<PkruReset>,
    /// A guest `in` from the doorbell port, being denied (see [`DeniedIn`]).
    pub denied_in: &'a mut Option<DeniedIn>,
}

/// What the PKRU-reset trampoline clobbers, restored at its doorbell: the guest's rax,
/// rcx, rdx, flags, and the instruction to run again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PkruReset {
    rax: u64,
    rcx: u64,
    rdx: u64,
    rflags: u64,
    rip: u64,
}

/// A guest `in` from the hypercall doorbell's port, on its way to the #GP(0) Xen gives
/// for denied port I/O. The I/O bitmap opens that port to ring 3 for the shim's
/// doorbell, so any guest code (a guest user process too) can read it. KVM reports an
/// `in` with rip still at the instruction and finishes it at the next `KVM_RUN` (its
/// emulator, or fast PIO with hardware virtualization), writing the data and moving rip
/// past it whatever the VMM set meanwhile (kvm_pvm's emulator does). So the denial is two
/// steps: the entry after the exit only finishes the instruction (with data that leaves
/// memory as it was, for the string form), then [`interrupted`] puts back every register
/// saved here and bounces the #GP at the instruction.
#[derive(Clone, Copy, Debug)]
pub struct DeniedIn {
    /// The guest's registers at the exit: rip at the `in`.
    regs: Regs,
}

/// The protection-key bit of a #PF error code.
const PF_PK: u64 = 1 << 5;

/// A kick can cut `KVM_RUN` short after the CPU executed a software trap (`int3`,
/// `into`, `int n`) and before KVM delivered it to the shim. KVM keeps such an event
/// queued with rip already past the instruction, `KVM_GET_VCPU_EVENTS` does not report
/// it (it has no field for the instruction's length), and `KVM_SET_REGS` drops it: an
/// upcall delivered then would make the guest lose the trap (seen: Linux's int3
/// self-test failing at boot, `kernel BUG at arch/x86/kernel/alternative.c`). So when
/// the bytes before rip encode such an instruction, the kick leaves the vCPU alone:
/// if a trap was queued, its trap exit follows at once and delivers events; if not (the
/// bytes only looked like one), a second kick at [`SoftTrapCheck::recheck_at`] finds
/// the same rip and delivers. Timers due at the first kick fire then (their events wait,
/// pending): a timer left armed in the past would keep the watchdog from kicking again
/// (one kick per deadline), and the guest would get neither its tick nor the second look
/// until it happened to exit (seen: a guest spinning in its scheduler after a 60 s stall).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftTrapCheck {
    /// The rip at which a kick was left alone; cleared by every other exit.
    pub deferred_at: Option<u64>,
    /// Guest system time (ns) of the kick that looks again.
    pub recheck_at: Option<u64>,
    /// The guest was entered since the kick was left alone: only then would a queued
    /// trap have been delivered, so only then does finding the same rip prove there was
    /// none (the run loop sets it; a second kick that lands before the next entry makes
    /// `KVM_RUN` return without entering, and the trap is still queued).
    pub entered_since: bool,
}

/// How long a kick left alone for a possible software trap waits for its second look.
pub const SOFT_TRAP_RECHECK_NS: u64 = 1_000_000;

/// Whether the instruction that ends at `rip` may be a software trap KVM holds
/// queued: `int3` (CC), `into` (CE), or `int n` (CD n).
///
/// With more than one vCPU the `int3` may be gone from memory by the time the kick
/// looks: Linux's `text_poke_bp` puts an `int3` on an instruction's first byte, another
/// CPU may execute it, and the patching CPU writes the new first byte once every CPU
/// answered its sync IPI, which is the kick in question (seen: a Debian SMP boot's
/// `invalid opcode` at a jump label's `0f <1f> 44 00 00`, rip one byte into the new NOP,
/// the #BP lost). So there the byte before rip also counts when it is one such a patch
/// leaves first (`e8` call, `e9`/`eb` jmp, `0f` and `66` NOPs, `c3` ret): a kick after
/// ordinary code ending in one of them only waits for its second look.
fn may_follow_soft_trap(dom: &Domain<'_>, rip: u64) -> bool {
    let Some(start) = rip.checked_sub(2) else {
        return false;
    };
    let patched_first_byte = |b: u8| {
        dom.platform.peers.len() > 1 && matches!(b, 0xe8 | 0xe9 | 0xeb | 0x0f | 0x66 | 0xc3)
    };
    let mut before = [0u8; 2];
    if pv_engine::guest::copy_from_guest(dom.vcpu, &dom.platform, start, &mut before).is_err() {
        // Only the last byte may be readable (rip at the start of a page).
        let mut last = [0u8; 1];
        return pv_engine::guest::copy_from_guest(dom.vcpu, &dom.platform, rip - 1, &mut last)
            .is_ok()
            && (matches!(last[0], 0xcc | 0xce) || patched_first_byte(last[0]));
    }
    matches!(before[1], 0xcc | 0xce) || before[0] == 0xcd || patched_first_byte(before[1])
}

/// The 4 code bytes at `va` as the guest sees them, each byte that cannot be read (a
/// neighbouring page not mapped: an instruction may end or start at a page boundary) as
/// 0, which no decoder here takes for a prefix or an I/O opcode.
fn code_bytes(dom: &Domain<'_>, va: u64) -> [u8; 4] {
    let mut bytes = [0u8; 4];
    if pv_engine::guest::copy_from_guest(dom.vcpu, &dom.platform, va, &mut bytes).is_ok() {
        return bytes;
    }
    for (i, b) in bytes.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        if pv_engine::guest::copy_from_guest(
            dom.vcpu,
            &dom.platform,
            va.wrapping_add(i as u64),
            &mut one,
        )
        .is_ok()
        {
            *b = one[0];
        }
    }
    bytes
}

/// Flags a guest may hold in the real rflags; IF is always set (the guest's virtual IF
/// is its event mask) and IOPL always 0 (its virtual IOPL lives in the engine).
const RFLAGS_GUEST_MASK: u64 = 0x0cd5 | (1 << 18) | (1 << 21);
const RFLAGS_FIXED: u64 = 0x202;

fn sanitize_rflags(rflags: u64) -> u64 {
    (rflags & RFLAGS_GUEST_MASK) | RFLAGS_FIXED
}

fn to_guest_regs(r: &Regs) -> GuestRegs {
    GuestRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
        cs: 0,
        ss: 0,
    }
}

/// Copies the general-purpose registers (not rsp, rip, rflags) back.
pub(crate) fn copy_gprs(g: &GuestRegs, r: &mut Regs) {
    r.rax = g.rax;
    r.rbx = g.rbx;
    r.rcx = g.rcx;
    r.rdx = g.rdx;
    r.rsi = g.rsi;
    r.rdi = g.rdi;
    r.rbp = g.rbp;
    r.r8 = g.r8;
    r.r9 = g.r9;
    r.r10 = g.r10;
    r.r11 = g.r11;
    r.r12 = g.r12;
    r.r13 = g.r13;
    r.r14 = g.r14;
    r.r15 = g.r15;
}

/// Makes CR3, FS/GS base and CR0.TS match the engine's PV state; writes sregs only when
/// something changed (a system-register write costs more than the exit itself).
fn apply_hw_state(
    cpu: &mut dyn CpuState,
    vcpu: &PvVcpu,
    cs: u64,
    ss: u64,
    set_segments: bool,
) -> Result<(), String> {
    let hw = vcpu.hw_state();
    let mut s = cpu.sregs()?;
    log::trace!(
        "exit sregs: cr0 {:#x} cr4 {:#x} cr3 {:#x}",
        s.cr0,
        s.cr4,
        s.cr3
    );
    let before = s;
    s.cr3 = hw.cr3;
    s.fs.base = hw.fs_base;
    s.gs.base = hw.gs_base;
    s.cr0 = if hw.cr0_ts { s.cr0 | 8 } else { s.cr0 & !8 };
    if set_segments {
        let cs = cs as u16 | 3;
        let ss = ss as u16 | 3;
        if s.cs.selector != cs {
            s.cs.selector = cs;
            let long = cs != selector::FLAT_RING3_CS32;
            s.cs.l = u8::from(long);
            s.cs.db = u8::from(!long);
        }
        s.ss.selector = ss;
        // A resume into the guest is a resume at CPL3, also from a stub that ran at
        // CPL0 (hardware virtualization).
        s.cs.dpl = 3;
        s.ss.dpl = 3;
    }
    let changed = s.cr3 != before.cr3
        || s.cs.dpl != before.cs.dpl
        || s.ss.dpl != before.ss.dpl
        || s.fs.base != before.fs.base
        || s.gs.base != before.gs.base
        || s.cr0 != before.cr0
        || s.cs.selector != before.cs.selector
        || s.ss.selector != before.ss.selector;
    if changed {
        cpu.set_sregs(&s);
    }
    Ok(())
}

fn outcome_to_action(outcome: Outcome, dom: &Domain<'_>, regs: &GuestRegs) -> Action {
    match outcome {
        Outcome::Resume => Action::Resume,
        Outcome::Yield => Action::Yield,
        Outcome::Block => Action::Block,
        Outcome::Down => Action::Down,
        Outcome::Shutdown(reason) => Action::Shutdown(reason),
        Outcome::Crash(why) => Action::Fatal(diagnostic(
            &format!("the guest crashed: {why:?}"),
            dom,
            Some(regs),
            None,
        )),
    }
}

/// Handles one exit.
pub fn handle_exit(exit: &Exit, cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Action {
    // The doorbell handlers name what the exit was once they know (hypercall, trap).
    dom.exits.last = ExitKind::Other;
    if !matches!(exit, Exit::Interrupted) {
        *dom.soft_trap = SoftTrapCheck::default();
    }
    if dom.denied_in.is_some() {
        // The entry only finished the denied `in` (or, for a `rep ins`, asked for the
        // next chunk's data): nothing else ran. `interrupted` completes the denial.
        return match exit {
            Exit::IoIn {
                port: port::HYPERCALL,
            } => deny_in(cpu, dom)
                .unwrap_or_else(|e| Action::Fatal(format!("cannot access vCPU state: {e}"))),
            _ => Action::Interrupted,
        };
    }
    if dom.paths.io_exit_rip_at_insn
        && matches!(
            exit,
            Exit::IoOut {
                port: port::HYPERCALL | port::TRAP | port::APPLY_MORE,
                ..
            }
        )
    {
        if let Err(e) = step_past_out(cpu, dom) {
            return Action::Fatal(format!("pvkvm: cannot access vCPU state: {e}"));
        }
    }
    let result = match exit {
        Exit::IoOut {
            port: port::HYPERCALL,
            ..
        } => {
            dom.exits.hypercall_doorbells += 1;
            hypercall_doorbell(cpu, dom)
        }
        // The I/O bitmap opens the doorbell port to ring 3 for both directions; only the
        // shim's `out` is a doorbell, any `in` is the guest's own and denied.
        Exit::IoIn {
            port: port::HYPERCALL,
        } => {
            if pv_engine::emulate::kernel_io_ok(dom.vcpu, dom.pv_domain.get()) {
                // Under its virtual IOPL the guest kernel's port I/O is answered, not
                // denied (all ones: the domain has no device there).
                Ok(guest_port_io(cpu, dom, port::HYPERCALL, true))
            } else {
                dom.exits.other += 1;
                deny_in(cpu, dom)
            }
        }
        Exit::IoOut {
            port: port::TRAP, ..
        } => {
            dom.exits.trap_doorbells += 1;
            trap_doorbell(cpu, dom)
        }
        Exit::IoOut {
            port: port::APPLY_MORE,
            ..
        } => {
            dom.exits.apply_more += 1;
            dom.exits.last = ExitKind::ApplyRefill;
            apply_more(cpu, dom)
        }
        // Any other port reaches the VMM only through the bitmap opened for the guest
        // kernel's port I/O (the shim's ring-0 doorbells stay closed to ring 3).
        Exit::IoIn { port } if !matches!(*port, port::TRAP | port::APPLY_MORE) => {
            Ok(guest_port_io(cpu, dom, *port, true))
        }
        Exit::IoOut { port, .. } if !matches!(*port, port::TRAP | port::APPLY_MORE) => {
            Ok(guest_port_io(cpu, dom, *port, false))
        }
        Exit::Interrupted => {
            dom.exits.interrupted += 1;
            dom.exits.last = ExitKind::Interrupted;
            Ok(Action::Interrupted)
        }
        other => {
            dom.exits.other += 1;
            let what = match other {
                Exit::Shutdown => "triple fault (the shim could not take an exception)".to_string(),
                Exit::InternalError { suberror } => {
                    format!("KVM internal error {suberror} (1 = the host could not emulate an instruction)")
                }
                Exit::FailEntry { reason } => {
                    format!("VM entry failed (hardware reason {reason:#x})")
                }
                Exit::Hlt => "hlt executed in ring 0".to_string(),
                other => format!("unexpected VM exit {other:?}"),
            };
            Ok(Action::Fatal(diagnostic(&what, dom, None, Some(cpu))))
        }
    };
    result.unwrap_or_else(|e| Action::Fatal(format!("cannot access vCPU state: {e}")))
}

fn hypercall_doorbell(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    let mut regs = cpu.regs()?;
    if regs.rip == dom.shim.pkru_reset_doorbell_end {
        if let Some(saved) = dom.pkru_reset.take() {
            // The trampoline wrote PKRU 0: the guest's registers back, and the faulting
            // instruction again.
            regs.rax = saved.rax;
            regs.rcx = saved.rcx;
            regs.rdx = saved.rdx;
            regs.rflags = saved.rflags;
            regs.rip = saved.rip;
            cpu.set_regs(&regs);
            return Ok(Action::Resume);
        }
    }
    let sregs = cpu.sregs()?;
    let mut g = to_guest_regs(&regs);
    // The hypercall page's own doorbell: only the guest kernel runs that page.
    let from_page = regs.rip != dom.shim.syscall_doorbell_end
        && dom.vcpu.mode == pv_engine::Mode::Kernel
        && dom
            .hypercall_page
            .is_some_and(|page| regs.rip.wrapping_sub(page & !0xfff) < 0x1000);
    if regs.rip != dom.shim.syscall_doorbell_end && !from_page {
        if pv_engine::emulate::kernel_io_ok(dom.vcpu, dom.pv_domain.get()) {
            // The guest kernel's own `out` under its virtual IOPL: a write to a port the
            // domain has no device at, dropped (the host finished the instruction).
            return Ok(guest_port_io(cpu, dom, port::HYPERCALL, false));
        }
        return denied_io(cpu, dom);
    }
    if from_page {
        // An `out` in the guest's own code: its selectors are the current ones, it
        // returns to the next instruction, and it left rcx and r11 alone (the stub
        // saved them, as Xen's stubs do around their `syscall`); `syscall`'s return
        // address and flags are what the engine returns through.
        (g.cs, g.ss) = (u64::from(sregs.cs.selector), u64::from(sregs.ss.selector));
        g.rcx = regs.rip;
        g.r11 = regs.rflags;
    } else {
        (g.cs, g.ss) = syscall_origin_selectors(&sregs, dom.paths);
    }
    dom.exits.last = match dom.vcpu.mode {
        pv_engine::Mode::Kernel => ExitKind::Hypercall {
            nr: regs.rax,
            sub: hypercall_subop(regs.rax, [regs.rdi, regs.rsi, regs.rdx]),
        },
        _ => ExitKind::UserSyscall,
    };
    // A `syscall`: it saved the return rip in rcx and the flags in r11.
    g.rip = g.rcx;
    g.rflags = g.r11;
    let outcome = pv_engine::syscall_entry(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut g,
        &mut dom.platform,
        dom.stats,
    );
    resume_at(cpu, dom, regs, &g, outcome)
}

/// The selectors of the guest context a `syscall` left. Where the LSTAR stub runs at
/// CPL3 (software KVM) the CPU did not change them; where it runs at CPL0 (hardware
/// virtualization) the CPU loaded STAR's ring-0 selectors, and the guest's were Xen's
/// flat 64-bit ring-3 ones (a 64-bit PV guest executes `syscall` only in 64-bit code,
/// and Xen returns with `sysret`, which loads exactly those).
fn syscall_origin_selectors(sregs: &Sregs, paths: crate::host::Paths) -> (u64, u64) {
    match paths.syscall_entry {
        crate::host::SyscallEntry::StubAtCpl3 => {
            (u64::from(sregs.cs.selector), u64::from(sregs.ss.selector))
        }
        crate::host::SyscallEntry::StubAtCpl0 => (
            u64::from(selector::FLAT_RING3_CS64),
            u64::from(selector::FLAT_RING3_SS64),
        ),
    }
}

/// Loads the engine's answer into the vCPU for a resume at CPL3 (no ring-0 frame):
/// general registers, rip, rsp, sanitized rflags, and the hardware state.
fn resume_at(
    cpu: &mut dyn CpuState,
    dom: &mut Domain<'_>,
    mut regs: Regs,
    g: &GuestRegs,
    outcome: Outcome,
) -> Result<Action, String> {
    let mut g = *g;
    let outcome = match outcome {
        Outcome::Resume | Outcome::Yield => events_before_resume(dom, &mut g).unwrap_or(outcome),
        other => other,
    };
    let g = &g;
    copy_gprs(g, &mut regs);
    sync_gdt(dom);
    // Nothing has written the system registers yet in this exit: they are what the vCPU
    // ran with, and apply_hw_state below loads the PV state's CR3.
    let cr3_reload = cpu.sregs()?.cr3 != dom.vcpu.hw_state().cr3;
    if pending(dom, cr3_reload) {
        // Stores or flushes wait: enter the shim's apply routine at ring 0 on a
        // TrapFrame-shaped frame that returns to the guest where the engine said.
        let mut frame = TrapFrame {
            vector: 0,
            error_code: 0,
            rip: g.rip,
            cs: g.cs | 3,
            rflags: sanitize_rflags(g.rflags),
            rsp: g.rsp,
            ss: g.ss | 3,
        };
        let rsp0 = dom.shim.stack_top - core::mem::size_of::<TrapFrame>() as u64;
        let gpa = dom
            .shim
            .va_to_gpa(rsp0)
            .ok_or("the shim stack is outside the shim region")?;
        let (entry, skip) = start_apply(dom, &mut frame, &mut regs, rsp0)?;
        dom.platform
            .mem
            .write_slice(frame.as_bytes(), GuestAddress(gpa))
            .map_err(|e| e.to_string())?;
        regs.rip = entry;
        regs.rsp = rsp0.wrapping_add_signed(skip);
        regs.rflags = 0x2;
        cpu.set_regs(&regs);
        apply_hw_state(cpu, dom.vcpu, 0, 0, false)?;
        let mut s = cpu.sregs()?;
        s.cs.selector = xen_abi::contract::selector::HYPERVISOR_CS;
        s.cs.dpl = 0;
        s.cs.l = 1;
        s.cs.db = 0;
        s.ss.selector = xen_abi::contract::selector::HYPERVISOR_DS;
        s.ss.dpl = 0;
        cpu.set_sregs(&s);
    } else {
        regs.rip = g.rip;
        regs.rsp = g.rsp;
        regs.rflags = sanitize_rflags(g.rflags);
        cpu.set_regs(&regs);
        apply_hw_state(cpu, dom.vcpu, g.cs, g.ss, true)?;
    }
    Ok(outcome_to_action(outcome, dom, g))
}

/// Fires the timers that passed and delivers a due event upcall (a bounce to the guest's
/// event callback), as Xen does on every return to the guest. Returns an outcome only
/// when delivering failed.
fn events_before_resume(dom: &mut Domain<'_>, g: &mut GuestRegs) -> Option<Outcome> {
    let now = pv_engine::Platform::system_time_ns(&dom.platform);
    pv_engine::time::fire_timers(dom.vcpu, dom.pv_domain.get(), &mut dom.platform, now);
    pv_engine::evtchn::deliver_upcall(
        dom.vcpu,
        dom.pv_domain.get(),
        g,
        &mut dom.platform,
        dom.stats,
    )
    .err()
}

/// The vCPU was kicked out of `KVM_RUN` (a timer, a backend, console input): if it was
/// running guest code, fire timers and deliver a due upcall now; if it was inside the
/// shim, let it finish (its next exit delivers).
pub fn interrupted(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    // The kick cut `KVM_RUN` short after the CPU took a guest fault but before it
    // delivered it to the shim: the fault belongs to the instruction at the current rip.
    // Moving rip now (to an event callback) would deliver that fault at the callback's
    // first instruction. Let the fault reach the shim; its trap exit delivers events.
    if cpu.event_in_flight()? {
        // (A denied `ins` whose store faulted: that fault is the instruction's answer.)
        *dom.denied_in = None;
        dom.exits.kicks_with_fault_in_flight += 1;
        return Ok(Action::Interrupted);
    }
    if let Some(denied) = dom.denied_in.take() {
        return finish_denied_in(cpu, dom, denied);
    }
    // The PKRU-reset trampoline runs with the guest's registers saved: events wait for
    // its doorbell (four instructions later).
    if dom.pkru_reset.is_some() {
        return Ok(Action::Interrupted);
    }
    let regs = cpu.regs()?;
    let sregs = cpu.sregs()?;
    // Kicked between a `syscall` and its doorbell: this host does not always resume
    // such a vCPU into the doorbell (seen: the `out` never exits), so serve the doorbell
    // here, exactly as if it had rung.
    let stub_cpl = match dom.paths.syscall_entry {
        crate::host::SyscallEntry::StubAtCpl3 => 3,
        crate::host::SyscallEntry::StubAtCpl0 => 0,
    };
    if sregs.cs.dpl == stub_cpl && regs.rip == dom.shim.syscall_entry {
        let mut at_doorbell = regs;
        at_doorbell.rip = dom.shim.syscall_doorbell_end;
        cpu.set_regs(&at_doorbell);
        dom.exits.hypercall_doorbells += 1;
        return hypercall_doorbell(cpu, dom);
    }
    // Inside the shim (ring 0, or the syscall stub, which runs at CPL3 between the
    // `syscall` and its doorbell): let it reach its exit, which delivers.
    if sregs.cs.dpl != 3 || dom.shim.in_text(regs.rip) {
        return Ok(Action::Interrupted);
    }
    let looked_before = dom.soft_trap.deferred_at == Some(regs.rip) && dom.soft_trap.entered_since;
    if !looked_before && may_follow_soft_trap(dom, regs.rip) {
        dom.exits.kicks_after_soft_trap += 1;
        let now = pv_engine::Platform::system_time_ns(&dom.platform);
        // Timers still fire (their events wait, pending, for the delivery), so the
        // timer deadline moves on and the second look below is a deadline of its own.
        pv_engine::time::fire_timers(dom.vcpu, dom.pv_domain.get(), &mut dom.platform, now);
        *dom.soft_trap = SoftTrapCheck {
            deferred_at: Some(regs.rip),
            recheck_at: Some(now.saturating_add(SOFT_TRAP_RECHECK_NS)),
            entered_since: false,
        };
        return Ok(Action::Interrupted);
    }
    *dom.soft_trap = SoftTrapCheck::default();
    let mut g = to_guest_regs(&regs);
    g.cs = u64::from(sregs.cs.selector);
    g.ss = u64::from(sregs.ss.selector);
    let before = g;
    let outcome = events_before_resume(dom, &mut g).unwrap_or(Outcome::Resume);
    // (No CR3 shortcut here: this path may resume without loading system registers.)
    if g == before && !pending(dom, false) {
        return Ok(match outcome {
            Outcome::Resume => Action::Interrupted,
            other => outcome_to_action(other, dom, &g),
        });
    }
    resume_at(cpu, dom, regs, &g, outcome)?;
    Ok(Action::Interrupted)
}

/// Whether pagetable stores or flushes wait for the shim. Collects the flushes the MMU
/// engine deferred (type changes in copy/clear page, descriptor pages) first.
///
/// `cr3_reload`: the caller resumes the vCPU with another CR3 than it ran with (a base
/// pointer switch), which KVM loads as the CPU would a `mov %cr3`, flushing the TLB's
/// non-global entries: then a full local flush with no store and no single address
/// (what a `NEW_BASEPTR` asks for, Xen's `write_ptbase`) needs no apply of its own
/// (~18,000 such switches in a Linux boot).
fn pending(dom: &mut Domain<'_>, cr3_reload: bool) -> bool {
    let p = &mut dom.platform;
    if let Some(mm) = p.mm.as_deref_mut() {
        let deferred = mm.take_pending_flush();
        pv_engine::mmu::merge_flush(p.flush, deferred);
        if p.flush.local_all || p.flush.all_vcpus {
            mm.tlb_flushed();
        }
        p.remote_flush |= p.flush.all_vcpus;
    }
    if cr3_reload && p.flush.local_all && p.flush.invlpg.is_empty() && p.frames.posted.is_empty() {
        // The other vCPUs' part (all_vcpus) is theirs: `remote_flush` above.
        p.flush.clear();
        dom.exits.flushes_by_cr3_load += 1;
    }
    !p.frames.posted.nothing_waits(p.flush)
}

/// Starts the apply of what waits, for a return through `frame` (the `TrapFrame`-shaped
/// words the shim's stack holds at its rsp, which the caller writes afterwards), with
/// `regs` the guest's registers as they are to be resumed. A short shape gets its
/// operands in registers and the guest's values of those registers in the frame's
/// first two words (vector and error code), which the routine pops; anything else
/// fills the posting area for the general routine. Returns the entry and how many
/// bytes above the frame's start rsp must point at it.
fn start_apply(
    dom: &mut Domain<'_>,
    frame: &mut TrapFrame,
    regs: &mut Regs,
    frame_va: u64,
) -> Result<(u64, i64), String> {
    dom.exits.applies += 1;
    let queued = dom.platform.frames.posted.queued() as u64;
    dom.exits.posted_stores += queued;
    dom.exits.posted_peak = dom.exits.posted_peak.max(queued);
    let area = dom.shim.posted_gpa;
    let p = &mut dom.platform;
    match p.frames.posted.take_short(p.flush, p.mem) {
        Some(ShortApply::One { va, value }) => {
            frame.vector = regs.rdi;
            frame.error_code = regs.rax;
            regs.rdi = va;
            regs.rax = value;
            Ok((dom.shim.apply_one, 0))
        }
        Some(ShortApply::FlushAll) => {
            frame.error_code = regs.rax;
            Ok((dom.shim.apply_flush_all, 8))
        }
        Some(ShortApply::List { stores, flush_all }) => {
            // Below the frame: the stores, then the guest's rcx; its rdi and rax go
            // where the frame's vector and error code are.
            let mut words = Vec::with_capacity(stores.len() * 2 + 1);
            for s in &stores {
                words.extend([s.va, s.value]);
            }
            words.push(regs.rcx);
            let below = (words.len() * 8) as u64;
            let list_va = frame_va - below;
            let gpa = dom
                .shim
                .va_to_gpa(list_va)
                .filter(|_| {
                    list_va >= dom.shim.stack_top - xen_abi::contract::layout::vcpu::STACK_SIZE
                })
                .ok_or("the listed stores do not fit the shim stack")?;
            p.mem
                .write_slice(words.as_bytes(), GuestAddress(gpa))
                .map_err(|e| e.to_string())?;
            frame.vector = regs.rdi;
            frame.error_code = regs.rax;
            regs.rcx = stores.len() as u64;
            let entry = if flush_all {
                dom.shim.apply_list_flush_all
            } else {
                dom.shim.apply_list
            };
            Ok((entry, -(below as i64)))
        }
        None => {
            p.frames.posted.fill(p.flush, p.mem, area)?;
            Ok((dom.shim.apply_entry, 0))
        }
    }
}

/// The apply routine asks for the next chunk.
fn apply_more(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    let regs = cpu.regs()?;
    if regs.rip != dom.shim.apply_more_doorbell_end {
        return Ok(Action::Fatal(diagnostic(
            "APPLY_MORE rung outside the apply routine",
            dom,
            None,
            Some(cpu),
        )));
    }
    let area = dom.shim.posted_gpa;
    let p = &mut dom.platform;
    p.frames.posted.fill(p.flush, p.mem, area)?;
    Ok(Action::Resume)
}

/// Maps the guest's GDT frames (from `set_gdt`) into the shim's GDT when they changed:
/// stores into the shim's own L1, queued like any other, plus their invalidations.
fn sync_gdt(dom: &mut Domain<'_>) {
    let wanted = dom.vcpu.gdt_frames;
    let nr = (dom.vcpu.gdt_ents as usize).div_ceil(512);
    for (page, &want) in wanted.iter().enumerate() {
        let frame = (page < nr).then_some(want);
        let current = (dom.mapped_gdt[page] != 0).then_some(dom.mapped_gdt[page]);
        if frame == current {
            continue;
        }
        let (l1, slot, value) = dom.shim.gdt_page_entry(page, frame);
        pv_mm::FrameAccess::write_entry(&mut dom.platform.frames, l1, slot, value);
        pv_engine::mmu::merge_flush(
            dom.platform.flush,
            pv_mm::FlushSet {
                invlpg: pv_mm::InvlpgList::one(dom.shim.gdt_page_va(page)),
                ..Default::default()
            },
        );
        dom.mapped_gdt[page] = frame.unwrap_or(0);
    }
}

/// Where the host reports a port-I/O exit with rip still at the `out` (KVM's fast PIO
/// with hardware virtualization, which skips it at the next entry unless rip moved;
/// `Paths::io_exit_rip_at_insn`), moves rip past it, so that the doorbell handlers see
/// what kvm_pvm reports: rip after the instruction. An `out` needs nothing else to
/// complete. The instruction is read from the guest (the doorbells' are `out %al,$imm`;
/// a guest's own write to the doorbell port may be any form). Fast PIO takes only the
/// non-string forms: a string `outs` went through KVM's emulator, which leaves rip past
/// it once done (and at it while a `rep` has elements left, which [`denied_io`] sees),
/// so where no non-string `out` is at rip, rip stays.
fn step_past_out(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<(), String> {
    let mut regs = cpu.regs()?;
    if let Some(len) = out_insn_len_at(&code_bytes(dom, regs.rip)) {
        regs.rip = regs.rip.wrapping_add(len);
        cpu.set_regs(&regs);
    }
    Ok(())
}

/// Length of the non-string `out` instruction that starts with `at` (an operand-size
/// prefix allowed), None if it is none.
fn out_insn_len_at(at: &[u8; 4]) -> Option<u64> {
    let (prefix, op) = match at[0] {
        0x66 => (1, at[1]),
        op => (0, op),
    };
    let core = match op {
        0xe6 | 0xe7 => 2,
        0xee | 0xef => 1,
        _ => return None,
    };
    Some(prefix + core)
}

/// Whether `at` starts a `rep outs` (operand-size, segment or rep prefixes, in any
/// order): with elements left (rcx not 0) KVM's emulator reports its exit with rip still
/// at it, on every host.
fn is_rep_outs(at: &[u8; 4]) -> bool {
    let mut rep = false;
    for &b in at {
        match b {
            0xf3 | 0xf2 => rep = true,
            0x66 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0x6e | 0x6f => return rep,
            _ => return false,
        }
    }
    false
}

/// Length of the port-I/O instruction that ends at `rip`, from the bytes before it: `in`
/// or `out` with an immediate port (2 bytes) or through dx (1 byte), string forms, each
/// with an operand-size or rep prefix. None if the bytes are no such instruction.
fn io_insn_len(before: &[u8; 4], port_byte: u8) -> Option<u64> {
    let [_, b3, b2, b1] = *before;
    let core = if matches!(b2, 0xe4..=0xe7) && b1 == port_byte {
        2
    } else if matches!(b1, 0xec..=0xef | 0x6c..=0x6f) {
        1
    } else {
        return None;
    };
    let prefix = if core == 2 { b3 } else { b2 };
    Some(core + u64::from(matches!(prefix, 0x66 | 0xf3 | 0xf2)))
}

/// Port I/O the guest kernel executed itself, reaching the VMM through the I/O bitmap
/// the VMM opens only while the engine would answer such I/O (guest kernel mode under
/// its virtual IOPL: `shim::io_bitmap`), so it is answered as the engine answers it,
/// from the domain's port space (`pv_engine::pit`: Xen's emulated PIT at 0x42, 0x43 and
/// 0x61, all ones and dropped writes elsewhere), element by element for string forms. KVM has the instruction half done and finishes it at the next entry
/// (string forms included, as Xen emulates them), so nothing here may move the vCPU's
/// registers first; when an event is due the entry only finishes the instruction, and
/// the delivery follows as after a kick.
fn guest_port_io(cpu: &mut dyn CpuState, dom: &mut Domain<'_>, port: u16, read: bool) -> Action {
    dom.exits.port_io += 1;
    dom.exits.last = ExitKind::PortIo;
    let now = pv_engine::Platform::system_time_ns(&dom.platform);
    if let Some((width, data)) = cpu.io_data() {
        let pit = &mut dom.pv_domain.get().pit;
        let width = usize::from(width.clamp(1, 4));
        for element in data.chunks_mut(width) {
            let n = element.len() as u8;
            if read {
                let value = pv_engine::pit::port_in(pit, port, n, now);
                element.copy_from_slice(&value.to_le_bytes()[..element.len()]);
            } else {
                let mut bytes = [0u8; 4];
                bytes[..element.len()].copy_from_slice(element);
                pv_engine::pit::port_out(pit, port, n, u32::from_le_bytes(bytes), now);
            }
        }
    }
    let timer_due = pv_engine::time::next_deadline(dom.vcpu).is_some_and(|at| at <= now);
    if timer_due || pv_engine::evtchn::upcall_due(dom.vcpu, &dom.platform) {
        dom.exits.port_io_then_event += 1;
        cpu.finish_io_then_stop();
    }
    Action::Resume
}

/// First step of denying a guest `in` from the doorbell port ([`DeniedIn`]): saves the
/// registers (once: a `rep ins` may ask for several chunks), gives KVM data that leaves
/// the destination as it is, and makes the next entry only finish the instruction.
fn deny_in(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    let regs = cpu.regs()?;
    dom.exits.last = ExitKind::PortIo;
    dom.denied_in.get_or_insert(DeniedIn { regs });
    let string = in_insn_is_string(&code_bytes(dom, regs.rip));
    let vcpu = &*dom.vcpu;
    let platform = &dom.platform;
    if let Some((width, data)) = cpu.io_data() {
        if string {
            // A string `in` stores each element at rdi, moving by the width (down with
            // DF): hand back what is there, so finishing it stores nothing new.
            let width = u64::from(width.max(1));
            let down = regs.rflags & (1 << 10) != 0;
            for (i, element) in data.chunks_mut(width as usize).enumerate() {
                let step = (i as u64).wrapping_mul(width);
                let va = if down {
                    regs.rdi.wrapping_sub(step)
                } else {
                    regs.rdi.wrapping_add(step)
                };
                if pv_engine::guest::copy_from_guest(vcpu, platform, va, element).is_err() {
                    element.fill(0xff);
                }
            }
        } else {
            // The destination is rax, which the second step puts back.
            data.fill(0xff);
        }
    }
    cpu.finish_io_then_stop();
    Ok(Action::Resume)
}

/// Whether the port-input instruction at `at` is the string form (`ins`), after an
/// operand-size, rep or segment prefix.
fn in_insn_is_string(at: &[u8; 4]) -> bool {
    at.iter()
        .find(|b| {
            !matches!(
                b,
                0x66 | 0xf3 | 0xf2 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65
            )
        })
        .is_some_and(|op| matches!(op, 0x6c | 0x6d))
}

/// Second step of a denied `in` ([`DeniedIn`]): the instruction is finished (KVM owes
/// it nothing more); every register goes back to what it was at the `in`, and the guest
/// gets #GP(0) there, as Xen gives it.
fn finish_denied_in(
    cpu: &mut dyn CpuState,
    dom: &mut Domain<'_>,
    denied: DeniedIn,
) -> Result<Action, String> {
    let sregs = cpu.sregs()?;
    let mut g = to_guest_regs(&denied.regs);
    g.cs = u64::from(sregs.cs.selector);
    g.ss = u64::from(sregs.ss.selector);
    denied_port_gp(cpu, dom, denied.regs, g)
}

/// Xen's answer to denied port I/O: #GP(0) to the guest at `g.rip`, the vCPU resumed
/// from `regs` with what the engine made of it.
fn denied_port_gp(
    cpu: &mut dyn CpuState,
    dom: &mut Domain<'_>,
    regs: Regs,
    mut g: GuestRegs,
) -> Result<Action, String> {
    let trap = Trap {
        vector: 13,
        error_code: Some(0),
        cr2: 0,
    };
    let outcome = pv_engine::exception(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut g,
        trap,
        &mut dom.platform,
        dom.stats,
    );
    resume_at(cpu, dom, regs, &g, outcome)
}

/// The guest itself wrote to the doorbell port (the I/O bitmap cannot tell the shim's
/// stub from guest code; a guest `in` is [`DeniedIn`]'s): the port is not the guest's,
/// so it gets the #GP(0) Xen gives for denied port I/O, at the instruction. The host
/// has finished the `out` (its data goes nowhere), except a `rep outs` with elements
/// left, which stays at the instruction.
fn denied_io(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    let regs = cpu.regs()?;
    let sregs = cpu.sregs()?;
    let mut g = to_guest_regs(&regs);
    g.cs = u64::from(sregs.cs.selector);
    g.ss = u64::from(sregs.ss.selector);
    let unfinished_rep = regs.rcx != 0 && is_rep_outs(&code_bytes(dom, regs.rip));
    if !unfinished_rep {
        // Done, so rip is past it (kvm_pvm's emulator; hardware virtualization's fast
        // PIO after `step_past_out`).
        let before = code_bytes(dom, regs.rip.wrapping_sub(4));
        match io_insn_len(&before, port::HYPERCALL as u8) {
            Some(len) => g.rip = regs.rip.wrapping_sub(len),
            None => {
                // The bytes changed under us (another vCPU rewrote the code): the #GP
                // still comes, at rip, rather than the domain's end.
                log::warn!(
                    "vCPU {}: port I/O to the doorbell port from an instruction no longer at {:#x}; #GP at {:#x}",
                    dom.platform.vcpu_id,
                    regs.rip,
                    regs.rip
                );
            }
        }
    }
    // (A `rep outs` with elements left faults where it stands, rcx and rsi as the
    // elements done left them, as a fault in the middle of one does.)
    denied_port_gp(cpu, dom, regs, g)
}

fn trap_doorbell(cpu: &mut dyn CpuState, dom: &mut Domain<'_>) -> Result<Action, String> {
    let mut regs = cpu.regs()?;
    let sregs = cpu.sregs()?;
    let Some(frame_gpa) = dom.shim.va_to_gpa(regs.rsp) else {
        return Ok(Action::Fatal(diagnostic(
            "the trap doorbell rang with rsp outside the shim stack",
            dom,
            None,
            Some(cpu),
        )));
    };
    let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
    dom.platform
        .mem
        .read_slice(&mut raw, GuestAddress(frame_gpa))
        .map_err(|e| e.to_string())?;
    let Ok(mut frame) = TrapFrame::read_from_bytes(&raw) else {
        unreachable!("sized buffer")
    };
    let vector = frame.vector as u8;
    dom.exits.last = ExitKind::Trap(vector);
    if matches!(vector, 13 | 14) && frame.cs & 3 == 3 && dom.shim.syscall_fixup.contains(&frame.rip)
    {
        // The syscall stub's fast path read a bad hypercall argument (#PF, or #GP for a
        // non-canonical pointer): no guest fault;
        // the stub takes its doorbell instead, registers untouched, and the engine
        // answers the hypercall (-EFAULT).
        frame.rip = dom.shim.syscall_slow_path;
        dom.platform
            .mem
            .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
            .map_err(|e| e.to_string())?;
        return Ok(Action::Resume);
    }
    if matches!(vector, 13 | 14) && frame.cs & 3 == 0 && dom.shim.gp_fixup.contains(&frame.rip) {
        // The #GP stub's look at the guest's instruction byte faulted (the page went away
        // since the #GP, e.g. another vCPU unmapped it): the stub goes on on its ordinary
        // path, so the engine looks at the #GP itself.
        frame.rip = dom.shim.gp_fixup_resume;
        dom.platform
            .mem
            .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
            .map_err(|e| e.to_string())?;
        return Ok(Action::Resume);
    }
    if vector == 14
        && frame.error_code & PF_PK != 0
        && frame.cs & 3 == 3
        && dom.platform.xstate.reset_pkru
        && dom.pkru_reset.is_none()
    {
        // A protection-key fault: the policy offers no PKU, so every guest PTE carries
        // key 0 and the fault is a guest process's PKRU that this host let reach the
        // kernel or another process (KVM's XSAVE image does not carry it). Only ring 3
        // can change PKRU here: run the shim's trampoline, then this instruction again.
        *dom.pkru_reset = Some(PkruReset {
            rax: regs.rax,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rflags: frame.rflags,
            rip: frame.rip,
        });
        regs.rax = 0;
        regs.rcx = 0;
        regs.rdx = 0;
        cpu.set_regs(&regs);
        frame.rip = dom.shim.pkru_reset;
        dom.platform
            .mem
            .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
            .map_err(|e| e.to_string())?;
        dom.exits.pkru_resets += 1;
        return Ok(Action::Resume);
    }
    if frame.cs & 3 != 3 || matches!(vector, 2 | 8 | 18) {
        let what = format!(
            "exception {vector} (error code {:#x}) in the shim itself at rip {:#x}, cr2 {:#x}",
            frame.error_code, frame.rip, sregs.cr2
        );
        return Ok(Action::Fatal(diagnostic(&what, dom, None, Some(cpu))));
    }
    let mut g = to_guest_regs(&regs);
    g.rip = frame.rip;
    g.rsp = frame.rsp;
    g.rflags = frame.rflags;
    g.cs = frame.cs;
    g.ss = frame.ss;
    let trap = Trap {
        vector,
        error_code: vector_has_error_code(vector).then_some(frame.error_code),
        cr2: sregs.cr2,
    };

    if log::log_enabled!(log::Level::Debug) {
        let mut insn = [0u8; 8];
        let _ = pv_engine::guest::copy_from_guest(dom.vcpu, &dom.platform, frame.rip, &mut insn);
        log::debug!(
            "trap {vector} error {:#x} at rip {:#x} ({insn:02x?}) rsp {:#x} cr2 {:#x} rcx {:#x} mode {:?}",
            frame.error_code,
            frame.rip,
            frame.rsp,
            sregs.cr2,
            regs.rcx,
            dom.vcpu.mode
        );
    }
    let mut outcome = pv_engine::exception(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut g,
        trap,
        &mut dom.platform,
        dom.stats,
    );
    if outcome == Outcome::Resume {
        outcome = events_before_resume(dom, &mut g).unwrap_or(outcome);
    }
    frame.rip = g.rip;
    frame.rsp = g.rsp;
    frame.rflags = sanitize_rflags(g.rflags);
    frame.cs = g.cs | 3;
    frame.ss = g.ss | 3;
    copy_gprs(&g, &mut regs);
    sync_gdt(dom);
    let cr3_reload = sregs.cr3 != dom.vcpu.hw_state().cr3;
    // rsp is the stub's, at the two words it pushed below the CPU's frame: the apply
    // routine takes them as it is (the general one drops them at the end, the short
    // ones hold the guest's values of their registers there); with nothing to apply,
    // the vCPU resumes at an `iretq` with rsp at the CPU's frame.
    if pending(dom, cr3_reload) {
        let frame_va = regs.rsp;
        let (entry, skip) = start_apply(dom, &mut frame, &mut regs, frame_va)?;
        regs.rip = entry;
        regs.rsp = frame_va.wrapping_add_signed(skip);
    } else {
        regs.rip = dom.shim.trap_return;
        regs.rsp += 16;
    }
    dom.platform
        .mem
        .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
        .map_err(|e| e.to_string())?;
    cpu.set_regs(&regs);
    apply_hw_state(cpu, dom.vcpu, 0, 0, false)?;
    Ok(outcome_to_action(outcome, dom, &g))
}

/// A diagnostic for a person: what happened, the guest's registers and its last
/// hypercalls.
pub fn diagnostic(
    what: &str,
    dom: &Domain<'_>,
    guest: Option<&GuestRegs>,
    cpu: Option<&mut dyn CpuState>,
) -> String {
    let mut s = format!("pvkvm: {what}\n");
    if let Some(g) = guest {
        let _ = writeln!(
            s,
            "  guest rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} ss {:#x} mode {:?}",
            g.rip, g.rsp, g.rflags, g.cs, g.ss, dom.vcpu.mode
        );
        let _ = writeln!(
            s,
            "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} r8 {:#x} r10 {:#x} r11 {:#x}",
            g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.r8, g.r10, g.r11
        );
    }
    if let Some(cpu) = cpu {
        if let (Ok(r), Ok(sr)) = (cpu.regs(), cpu.sregs()) {
            let _ = writeln!(
                s,
                "  vcpu rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} (cpl {}) cr2 {:#x} cr3 {:#x}",
                r.rip, r.rsp, r.rflags, sr.cs.selector, sr.cs.dpl, sr.cr2, sr.cr3
            );
            if let Some(gpa) = dom.shim.va_to_gpa(r.rsp) {
                let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
                if dom
                    .platform
                    .mem
                    .read_slice(&mut raw, GuestAddress(gpa))
                    .is_ok()
                {
                    if let Ok(f) = TrapFrame::read_from_bytes(&raw) {
                        let _ = writeln!(s, "  shim stack frame: {f:x?}");
                    }
                }
            }
        }
    }
    let mut vi = [0u8; 2];
    let _ = pv_engine::Platform::read_phys(&dom.platform, dom.vcpu.vcpu_info_gpa, &mut vi);
    let _ = writeln!(
        s,
        "  events: upcall pending {} mask {}; timer {:?} ns, periodic {} ns, system time now {} ns",
        vi[0],
        vi[1],
        dom.vcpu.timer_deadline,
        dom.vcpu.periodic_ns,
        pv_engine::Platform::system_time_ns(&dom.platform)
    );
    let recent: Vec<_> = dom.stats.recent_iter().collect();
    if !recent.is_empty() {
        let _ = writeln!(s, "  last hypercalls (oldest first):");
        for h in recent {
            let _ = writeln!(
                s,
                "    {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {}",
                xen_abi::xen::hypercall::name(h.nr),
                h.args[0],
                h.args[1],
                h.args[2],
                h.args[3],
                h.args[4],
                h.result as i64
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::{pte, ShimImage, ShimRegion};
    use vm_memory::GuestMemoryMmap;
    use xen_abi::xen::hypercall as hc;

    const RAM: u64 = 4 << 20;
    const L4: u64 = 0x1000;
    const CODE: u64 = 0x10_0000;
    /// Where the test kernel's hypercall page would be (mapped like CODE).
    const HYPERCALL_PAGE_VA: u64 = CODE + 0x4000;

    struct FakeCpu {
        regs: Regs,
        sregs: Sregs,
        sregs_written: bool,
        fault_in_flight: bool,
        io_finish_requested: bool,
        /// The pending port I/O's element width and data.
        io: Option<(u8, Vec<u8>)>,
    }

    impl CpuState for FakeCpu {
        fn regs(&mut self) -> Result<Regs, String> {
            Ok(self.regs)
        }
        fn set_regs(&mut self, regs: &Regs) {
            self.regs = *regs;
        }
        fn sregs(&mut self) -> Result<Sregs, String> {
            Ok(self.sregs)
        }
        fn set_sregs(&mut self, sregs: &Sregs) {
            self.sregs = *sregs;
            self.sregs_written = true;
        }
        fn event_in_flight(&mut self) -> Result<bool, String> {
            Ok(self.fault_in_flight)
        }
        fn finish_io_then_stop(&mut self) {
            self.io_finish_requested = true;
        }
        fn io_data(&mut self) -> Option<(u8, &mut [u8])> {
            self.io.as_mut().map(|(w, d)| (*w, d.as_mut_slice()))
        }
    }

    struct World {
        mem: GuestMemoryMmap,
        region: ShimRegion,
        vcpu: PvVcpu,
        pv_domain: std::sync::Mutex<pv_engine::Domain>,
        stats: Stats,
        exits: ExitStats,
        cpuid: crate::cpuid::CpuidTable,
        console: Vec<u8>,
        posted: crate::posted::Posted,
        flush: pv_engine::mmu::BatchFlush,
        mapped_gdt: [u64; 14],
        notified: Vec<u32>,
        paths: crate::host::Paths,
        msr_writes: Vec<(u32, u64)>,
        soft_trap: SoftTrapCheck,
        pkru_reset: Option<PkruReset>,
        denied_in: Option<DeniedIn>,
    }

    /// Guest RAM with the low 4 MiB identity-mapped (user, writable) and the shim region.
    fn world() -> World {
        let shim_gpa = RAM;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), RAM as usize),
            (
                GuestAddress(shim_gpa),
                crate::shim::region_size(RAM >> 12, 1).unwrap() as usize,
            ),
        ])
        .unwrap();
        let region = crate::shim::build_region(
            &mem,
            shim_gpa,
            &ShimImage::embedded().unwrap(),
            RAM >> 12,
            1,
        )
        .unwrap();
        let w = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa)).unwrap();
        let upper = pte::P | pte::RW | pte::U | pte::A;
        w(L4, 0x2000 | upper);
        w(0x2000, 0x3000 | upper);
        w(0x3000, 0x4000 | upper);
        w(0x3008, 0x5000 | upper);
        for page in 0..1024u64 {
            w(0x4000 + page * 8, (page << 12) | upper);
        }
        let vcpu = PvVcpu::new(0, L4, region.shared_info_gpa);
        let pv_domain = std::sync::Mutex::new(pv_engine::Domain::new(region.shared_info_gpa, 1));
        let supported = kvm_bindings::CpuId::new(0).unwrap();
        World {
            mem,
            region,
            vcpu,
            pv_domain,
            stats: Stats::new(),
            exits: ExitStats::default(),
            cpuid: crate::cpuid::CpuidTable::pv_policy(&supported),
            console: Vec::new(),
            posted: crate::posted::Posted::default(),
            flush: pv_engine::mmu::BatchFlush::default(),
            mapped_gdt: [0; 14],
            soft_trap: SoftTrapCheck::default(),
            pkru_reset: None,
            denied_in: None,
            notified: Vec::new(),
            paths: crate::host::Paths::default(),
            msr_writes: Vec::new(),
        }
    }

    fn cpu_at(rip: u64) -> FakeCpu {
        let mut sregs = Sregs::default();
        sregs.cs.selector = selector::FLAT_KERNEL_CS;
        sregs.ss.selector = selector::FLAT_KERNEL_SS;
        sregs.cs.dpl = 3;
        sregs.ss.dpl = 3;
        sregs.cr3 = L4;
        FakeCpu {
            regs: Regs {
                rip,
                rsp: 0x8_0000,
                rflags: 0x2,
                ..Default::default()
            },
            sregs,
            sregs_written: false,
            fault_in_flight: false,
            io_finish_requested: false,
            io: None,
        }
    }

    /// The exit handler's view of a test world.
    fn domain(w: &mut World) -> Domain<'_> {
        Domain {
            vcpu: &mut w.vcpu,
            pv_domain: crate::smp::DomainLock::locked(&w.pv_domain),
            stats: &mut w.stats,
            exits: &mut w.exits,
            shim: w.region.vcpu0(),
            platform: GuestPlatform {
                mem: &w.mem,
                ram_bytes: RAM,
                shared_info_gpa: w.region.shared_info_gpa,
                cpuid: &w.cpuid,
                console: &mut w.console,
                mm: None,
                frames: crate::posted::VmmFrames::new(
                    &w.mem,
                    &mut w.posted,
                    w.region.m2p_gpa,
                    RAM >> 12,
                ),
                flush: &mut w.flush,
                clock: pv_engine::time::PvClock::new(0, 1_000_000_000),
                tsc_offset: 0,
                notified: &mut w.notified,
                msr_writes: &mut w.msr_writes,
                xstate: crate::xstate::XstatePlan {
                    control: crate::xstate::Xcr0Control::Vcpu,
                    xcr0_mask: 0x7,
                    reset_pkru: false,
                    reset_pkru_by_xsave: false,
                },
                xcr0_pending: None,
                m2p_gpa: w.region.m2p_gpa,
                m2p_bytes: w.region.m2p_bytes,
                preempt_deadline: None,
                vcpu_id: 0,
                peers: &[],
                remote_flush: false,
            },
            mapped_gdt: &mut w.mapped_gdt,
            soft_trap: &mut w.soft_trap,
            pkru_reset: &mut w.pkru_reset,
            denied_in: &mut w.denied_in,
            paths: w.paths,
            hypercall_page: Some(HYPERCALL_PAGE_VA),
        }
    }

    /// The VMM's platform over a test world (for tests that need no `Domain`).
    fn platform(w: &mut World) -> GuestPlatform<'_> {
        domain(w).platform
    }

    fn handle(w: &mut World, exit: Exit, cpu: &mut FakeCpu) -> Action {
        handle_exit(&exit, cpu, &mut domain(w))
    }

    /// The PV policy over a host offering every feature that implies an MSR the engine
    /// serves (`pv_engine::msr::FEATURE_MSRS`), AMD vendor.
    fn policy_with_msr_features() -> crate::cpuid::CpuidTable {
        let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
        let mut leaves: Vec<(u32, u32, [u32; 4])> = vec![
            (0, 0, [0xd, word(b"Auth"), word(b"cAMD"), word(b"enti")]),
            (7, 0, [2, 0, 0, 0]),
            (0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
        ];
        for fm in pv_engine::msr::FEATURE_MSRS {
            let Some((leaf, sub, reg)) = fm.feature.cpuid_location() else {
                continue;
            };
            let i = match leaves.iter().position(|(l, s, _)| (*l, *s) == (leaf, sub)) {
                Some(i) => i,
                None => {
                    leaves.push((leaf, sub, [0; 4]));
                    leaves.len() - 1
                }
            };
            leaves[i].2[reg.index()] |= fm.feature.mask();
        }
        let dump: String = leaves
            .iter()
            .map(|(l, s, [a, b, c, d])| format!("{l:#x} {s:#x} {a:#x} {b:#x} {c:#x} {d:#x}\n"))
            .collect();
        crate::cpuid::CpuidTable::build(
            &crate::cpuid::RawCpuid::parse_dump(&dump).unwrap(),
            &crate::cpuid::PolicyOptions::default(),
        )
    }

    /// Every feature the PV policy offers that implies an MSR has its row in the
    /// engine's table, read through the VMM's platform; and a write that must reach
    /// hardware (IBPB) is queued for the run loop to give to KVM.
    #[test]
    fn offered_msr_features_have_rows_and_effects_are_queued() {
        use pv_engine::msr::{self, Probe};
        let mut w = world();
        w.cpuid = policy_with_msr_features();
        let mut vcpu = PvVcpu::new(0, L4, w.region.shared_info_gpa);
        let mut platform = platform(&mut w);
        let policy = msr::Policy::read(&platform);
        let mut offered = 0;
        for fm in msr::FEATURE_MSRS {
            if !policy.has(fm.feature) {
                continue;
            }
            offered += 1;
            let got = match fm.probe {
                Probe::Read => msr::guest_rdmsr(&vcpu, &platform, fm.msr).map(|_| ()),
                Probe::Write(v) => msr::guest_wrmsr(&mut vcpu, &mut platform, fm.msr, v),
            };
            assert_eq!(got, Ok(()), "{} -> MSR {:#x}", fm.feature.name, fm.msr);
        }
        // The allow-list keeps the PV-default ones (machine checks, IBPB/SBPB, ...).
        assert!(
            offered >= 10,
            "the policy hid most MSR features ({offered})"
        );
        platform.msr_writes.clear();
        assert_eq!(
            msr::guest_wrmsr(&mut vcpu, &mut platform, msr::MSR_PRED_CMD, 1),
            Ok(())
        );
        assert_eq!(*platform.msr_writes, [(msr::MSR_PRED_CMD, 1)]);
    }

    /// The same proof over the policy pvkvm derives for every recorded real CPU (with
    /// the host options a hardware-virtualization host gives), and no offered feature is
    /// one whose MSRs the engine deliberately lacks.
    #[test]
    fn recorded_cpus_msr_features_have_rows() {
        use pv_engine::msr::{self, Probe};
        for (name, text) in crate::cpuid::tests::RECORDED {
            let raw = crate::cpuid::RawCpuid::parse_dump(text).unwrap();
            for opts in [
                crate::cpuid::PolicyOptions::default(),
                crate::cpuid::PolicyOptions {
                    xcr0: 0xe7,
                    tsc_aux: true,
                    tsc_khz: 0,
                },
            ] {
                let mut w = world();
                w.cpuid = crate::cpuid::CpuidTable::build(&raw, &opts);
                let mut vcpu = PvVcpu::new(0, L4, w.region.shared_info_gpa);
                let mut platform = platform(&mut w);
                let policy = msr::Policy::read(&platform);
                for f in msr::FEATURES_WITHOUT_ROWS {
                    assert!(
                        !policy.has(*f),
                        "{name}: {} offered without MSR rows",
                        f.name
                    );
                }
                for fm in msr::FEATURE_MSRS.iter().filter(|fm| policy.has(fm.feature)) {
                    let got = match fm.probe {
                        Probe::Read => msr::guest_rdmsr(&vcpu, &platform, fm.msr).map(|_| ()),
                        Probe::Write(v) => msr::guest_wrmsr(&mut vcpu, &mut platform, fm.msr, v),
                    };
                    assert_eq!(
                        got,
                        Ok(()),
                        "{name}: {} -> MSR {:#x}",
                        fm.feature.name,
                        fm.msr
                    );
                }
            }
        }
    }

    /// Puts `frame` on the shim stack as an IDT stub leaves it; returns the stub's rsp
    /// and the frame's guest-physical address.
    fn push_trap_frame(w: &World, frame: &TrapFrame) -> (u64, u64) {
        let rsp0 = w.region.vcpu0().stack_top - core::mem::size_of::<TrapFrame>() as u64;
        let frame_gpa = w.region.vcpu0().va_to_gpa(rsp0).unwrap();
        w.mem
            .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
            .unwrap();
        (rsp0, frame_gpa)
    }

    fn doorbell() -> Exit {
        Exit::IoOut {
            port: port::HYPERCALL,
            value: 0,
        }
    }

    #[test]
    fn a_hypercall_is_answered_and_resumes_after_the_syscall() {
        let mut w = world();
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rdi = 0;
        cpu.regs.rcx = CODE + 2;
        cpu.regs.r11 = 0x246;
        cpu.regs.r12 = 0x1212;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert_eq!(cpu.regs.rax, (4 << 16) | 17);
        assert_eq!(cpu.regs.rip, CODE + 2);
        assert_eq!(cpu.regs.rflags, 0x246, "rflags from r11, IF kept");
        assert_eq!(cpu.regs.r12, 0x1212);
        assert!(
            !cpu.sregs_written,
            "nothing in the system registers changed"
        );
        assert_eq!(w.exits.hypercall_doorbells, 1);
    }

    #[test]
    fn on_hardware_virtualization_a_hypercall_from_the_cpl0_stub_resumes_at_cpl3() {
        let mut w = world();
        w.paths.syscall_entry = crate::host::SyscallEntry::StubAtCpl0;
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        // What the CPU loaded from STAR: the shim's ring-0 selectors.
        cpu.sregs.cs.selector = xen_abi::contract::selector::HYPERVISOR_CS;
        cpu.sregs.cs.dpl = 0;
        cpu.sregs.ss.selector = xen_abi::contract::selector::HYPERVISOR_DS;
        cpu.sregs.ss.dpl = 0;
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rcx = CODE + 2;
        cpu.regs.r11 = 0x246;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert_eq!(cpu.regs.rax, (4 << 16) | 17);
        assert_eq!(cpu.regs.rip, CODE + 2);
        assert_eq!(cpu.sregs.cs.selector, selector::FLAT_RING3_CS64);
        assert_eq!(cpu.sregs.ss.selector, selector::FLAT_RING3_SS64);
        assert_eq!((cpu.sregs.cs.dpl, cpu.sregs.ss.dpl), (3, 3));
        assert_eq!(cpu.sregs.cs.l, 1);
    }

    #[test]
    fn on_software_kvm_a_cpl0_doorbell_is_not_taken_for_the_guest_context() {
        // With the CPL3 path, the selectors the vCPU has after the doorbell are the
        // guest's own and are kept as they are.
        let mut w = world();
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rcx = CODE + 2;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert!(!cpu.sregs_written);
        assert_eq!(cpu.sregs.cs.selector, selector::FLAT_KERNEL_CS);
    }

    #[test]
    fn console_write_reaches_the_console_and_shutdown_ends_the_domain() {
        let mut w = world();
        w.mem.write_slice(b"hi\n", GuestAddress(0x9000)).unwrap();
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        cpu.regs.rax = hc::CONSOLE_IO;
        cpu.regs.rdi = 0;
        cpu.regs.rsi = 3;
        cpu.regs.rdx = 0x9000;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert_eq!(w.console, b"hi\n");
        w.mem.write_obj(3u32, GuestAddress(0x9100)).unwrap();
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        cpu.regs.rax = hc::SCHED_OP;
        cpu.regs.rdi = xen_abi::sched::SCHEDOP_SHUTDOWN;
        cpu.regs.rsi = 0x9100;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Shutdown(3));
    }

    #[test]
    fn guest_io_to_the_doorbell_port_is_a_gp_at_the_instruction() {
        let mut w = world();
        // out %al, $0xe1 at CODE: the exit reports rip after it.
        w.mem
            .write_slice(&[0x90, 0x90, 0xe6, 0xe1], GuestAddress(CODE - 2))
            .unwrap();
        let mut cpu = cpu_at(CODE + 2);
        let action = handle(&mut w, doorbell(), &mut cpu);
        // No trap table: Xen crashes the domain on the unhandled #GP.
        match action {
            Action::Fatal(diag) => {
                assert!(diag.contains("vector: 13"), "{diag}");
                assert!(diag.contains(&format!("guest rip {:#x}", CODE)), "{diag}");
            }
            other => panic!("expected a crash, got {other:?}"),
        }
    }

    /// A guest `out dx, al` that starts a page whose predecessor is not mapped (the
    /// bytes before rip cannot all be read): still the #GP at the instruction, never the
    /// domain's end for want of those bytes.
    #[test]
    fn a_guest_out_at_a_page_start_after_an_unmapped_page_faults_at_it() {
        let mut w = world();
        let page = CODE + 0x2000;
        // Unmap the page before it (the identity map's L1 entries start at 0x4000).
        w.mem
            .write_obj(0u64, GuestAddress(0x4000 + ((page >> 12) - 1) * 8))
            .unwrap();
        w.mem.write_slice(&[0xee], GuestAddress(page)).unwrap();
        let mut cpu = cpu_at(page + 1);
        cpu.regs.rdx = u64::from(port::HYPERCALL);
        match handle(&mut w, doorbell(), &mut cpu) {
            Action::Fatal(diag) => {
                assert!(diag.contains("vector: 13"), "{diag}");
                assert!(diag.contains(&format!("guest rip {page:#x}")), "{diag}");
            }
            other => panic!("expected a crash, got {other:?}"),
        }
    }

    /// The hypercall page's stubs ring the doorbell themselves (`out` where Xen's have
    /// `syscall`): from the guest kernel that is a hypercall returning to the stub's
    /// next instruction with the flags as they were.
    #[test]
    fn the_hypercall_pages_own_doorbell_is_a_hypercall_returning_after_it() {
        let mut w = world();
        let after_out = HYPERCALL_PAGE_VA + hc::XEN_VERSION * 32 + 10;
        let mut cpu = cpu_at(after_out);
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rdi = 0;
        cpu.regs.rflags = 0x246;
        cpu.regs.r12 = 0x1212;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert_eq!(cpu.regs.rax, (4 << 16) | 17);
        assert_eq!((cpu.regs.rip, cpu.regs.rflags), (after_out, 0x246));
        assert_eq!(cpu.regs.r12, 0x1212);
        assert_eq!(w.exits.hypercall_doorbells, 1);
        assert!(matches!(w.exits.last, ExitKind::Hypercall { nr: 17, .. }));
    }

    /// The same `out` from guest user mode is the guest's own port I/O, never a
    /// hypercall: a #GP (here, with no trap table, Xen's crash of the domain;
    /// `guest_io_to_the_doorbell_port_is_a_gp_at_the_instruction` has the #GP).
    #[test]
    fn the_hypercall_pages_doorbell_from_user_mode_is_no_hypercall() {
        let mut w = world();
        w.vcpu.mode = pv_engine::Mode::User;
        let mut cpu = cpu_at(HYPERCALL_PAGE_VA + 0x200 + 10);
        cpu.regs.rax = hc::XEN_VERSION;
        assert!(matches!(
            handle(&mut w, doorbell(), &mut cpu),
            Action::Fatal(_)
        ));
        assert_eq!(cpu.regs.rax, hc::XEN_VERSION, "no hypercall ran");
        assert!(!matches!(w.exits.last, ExitKind::Hypercall { .. }));
    }

    /// A guest `in` from the doorbell port: KVM reports it with rip at the instruction
    /// and finishes it at the next entry whatever the VMM set, so the first exit only
    /// lets it finish; the kick that follows puts every register back and raises the #GP
    /// at the `in` (here, with no trap table, Xen's crash of the domain).
    #[test]
    fn guest_in_from_the_doorbell_port_is_denied_after_kvm_finishes_it() {
        let mut w = world();
        w.mem
            .write_slice(&[0xec, 0x90], GuestAddress(CODE))
            .unwrap();
        let mut cpu = cpu_at(CODE);
        cpu.regs.rax = 0x1234_5678;
        cpu.regs.rdx = u64::from(port::HYPERCALL);
        cpu.io = Some((1, vec![0]));
        let exit = Exit::IoIn {
            port: port::HYPERCALL,
        };
        assert_eq!(handle(&mut w, exit, &mut cpu), Action::Resume);
        assert!(cpu.io_finish_requested);
        assert_eq!(cpu.regs.rip, CODE, "KVM finishes the instruction first");
        assert!(w.denied_in.is_some());
        // KVM finished it: al written, rip past it; the kick comes back.
        cpu.regs.rax = 0x1234_56ff;
        cpu.regs.rip = CODE + 1;
        assert_eq!(
            handle(&mut w, Exit::Interrupted, &mut cpu),
            Action::Interrupted
        );
        match interrupted(&mut cpu, &mut domain(&mut w)).unwrap() {
            Action::Fatal(diag) => {
                assert!(diag.contains("vector: 13"), "{diag}");
                assert!(diag.contains(&format!("guest rip {:#x}", CODE)), "{diag}");
                assert!(diag.contains("rax 0x12345678 "), "{diag}");
            }
            other => panic!("expected a crash, got {other:?}"),
        }
        assert!(w.denied_in.is_none());
    }

    /// Under the guest kernel's virtual IOPL the doorbell port is a port without a
    /// device, as any other: an `in` reads all ones and is left to KVM to finish.
    #[test]
    fn under_iopl_the_kernels_in_from_the_doorbell_port_reads_all_ones() {
        let mut w = world();
        w.vcpu.iopl = 1 << 12;
        let mut cpu = cpu_at(CODE);
        cpu.io = Some((1, vec![0]));
        let exit = Exit::IoIn {
            port: port::HYPERCALL,
        };
        assert_eq!(handle(&mut w, exit, &mut cpu), Action::Resume);
        assert_eq!(cpu.io.as_ref().unwrap().1, [0xff]);
        assert!(w.denied_in.is_none());
        assert_eq!(cpu.regs.rip, CODE);
    }

    /// A denied `rep insb` gets back the bytes its buffer holds, chunk after chunk, so
    /// finishing it stores nothing new; the registers of the first exit are the ones put
    /// back.
    #[test]
    fn a_denied_string_in_gets_the_buffers_own_bytes() {
        let mut w = world();
        w.mem
            .write_slice(&[0xf3, 0x6c], GuestAddress(CODE))
            .unwrap();
        w.mem.write_slice(b"keep", GuestAddress(0x9000)).unwrap();
        let mut cpu = cpu_at(CODE);
        cpu.regs.rdi = 0x9000;
        cpu.regs.rcx = 6;
        cpu.io = Some((1, vec![0; 4]));
        let exit = Exit::IoIn {
            port: port::HYPERCALL,
        };
        assert_eq!(handle(&mut w, exit.clone(), &mut cpu), Action::Resume);
        assert_eq!(cpu.io.as_ref().unwrap().1, b"keep");
        // KVM asks for the next chunk of the same instruction.
        cpu.regs.rdi = 0x9002;
        cpu.regs.rcx = 2;
        cpu.io = Some((1, vec![0; 2]));
        cpu.io_finish_requested = false;
        assert_eq!(handle(&mut w, exit, &mut cpu), Action::Resume);
        assert!(cpu.io_finish_requested);
        assert_eq!(cpu.io.as_ref().unwrap().1, b"ep");
        assert_eq!(
            w.denied_in.map(|d| (d.regs.rdi, d.regs.rcx)),
            Some((0x9000, 6))
        );
    }

    #[test]
    fn out_lengths_from_the_instruction_start() {
        assert_eq!(out_insn_len_at(&[0xe6, 0xe1, 0, 0]), Some(2));
        assert_eq!(out_insn_len_at(&[0x66, 0xe7, 0xe1, 0]), Some(3));
        assert_eq!(out_insn_len_at(&[0xee, 0, 0, 0]), Some(1));
        assert_eq!(
            out_insn_len_at(&[0xf3, 0x6e, 0, 0]),
            None,
            "string: no fast PIO"
        );
        assert_eq!(out_insn_len_at(&[0x0f, 0x05, 0, 0]), None);
        assert!(is_rep_outs(&[0xf3, 0x6e, 0, 0]));
        assert!(is_rep_outs(&[0x66, 0xf3, 0x6f, 0]));
        assert!(!is_rep_outs(&[0x6e, 0, 0, 0]), "no rep");
        assert!(!is_rep_outs(&[0xf3, 0x6c, 0, 0]), "ins");
        assert!(!is_rep_outs(&[0xf3, 0x90, 0x6e, 0]));
    }

    /// A guest `rep outs` to the doorbell port with elements left is reported with rip
    /// still at it (KVM's emulator, every host): the #GP is raised there, not before it.
    /// A finished `outs` leaves rip past it on every host, hardware virtualization
    /// included (no fast PIO for string forms): nothing is stepped, the #GP is at it.
    #[test]
    fn a_guest_outs_to_the_doorbell_port_faults_at_the_instruction() {
        for (rep_left, at_insn_host) in [(true, false), (true, true), (false, false), (false, true)]
        {
            let mut w = world();
            w.paths.io_exit_rip_at_insn = at_insn_host;
            w.mem
                .write_slice(
                    &[0x90, 0xf3, 0x6e, 0x90, 0x90, 0x90],
                    GuestAddress(CODE - 1),
                )
                .unwrap();
            let (rip, rcx) = if rep_left { (CODE, 7) } else { (CODE + 2, 0) };
            let mut cpu = cpu_at(rip);
            cpu.regs.rcx = rcx;
            match handle(&mut w, doorbell(), &mut cpu) {
                Action::Fatal(diag) => {
                    assert!(diag.contains("vector: 13"), "{diag}");
                    assert!(diag.contains(&format!("guest rip {:#x}", CODE)), "{diag}");
                }
                other => panic!("expected a crash, got {other:?}"),
            }
        }
    }

    /// With hardware virtualization KVM reports the doorbell's exit with rip at the
    /// `out`: the handler steps past it first and then answers as on kvm_pvm.
    #[test]
    fn a_doorbell_reported_at_its_out_is_stepped_past_where_the_host_does_that() {
        let mut w = world();
        w.paths.io_exit_rip_at_insn = true;
        let out_at = HYPERCALL_PAGE_VA + hc::XEN_VERSION * 32 + 8;
        w.mem
            .write_slice(&[0xe6, 0xe1, 0x41, 0x5b], GuestAddress(out_at))
            .unwrap();
        let mut cpu = cpu_at(out_at);
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rdi = 0;
        cpu.regs.rflags = 0x246;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        assert_eq!(cpu.regs.rax, (4 << 16) | 17);
        assert_eq!(cpu.regs.rip, out_at + 2, "resumes after the out");
    }

    #[test]
    fn io_instruction_lengths() {
        assert_eq!(io_insn_len(&[0, 0, 0xe6, 0xe1], 0xe1), Some(2));
        assert_eq!(io_insn_len(&[0, 0x66, 0xe7, 0xe1], 0xe1), Some(3));
        assert_eq!(io_insn_len(&[0, 0, 0, 0xee], 0xe1), Some(1));
        assert_eq!(io_insn_len(&[0, 0, 0x66, 0xef], 0xe1), Some(2));
        assert_eq!(io_insn_len(&[0, 0, 0xf3, 0x6e], 0xe1), Some(2));
        assert_eq!(io_insn_len(&[0, 0, 0x90, 0x90], 0xe1), None);
        assert_eq!(io_insn_len(&[0, 0, 0xe6, 0x80], 0xe1), None);
    }

    #[test]
    fn other_exits_end_the_domain_with_a_diagnostic() {
        let mut w = world();
        for exit in [
            Exit::Shutdown,
            Exit::InternalError { suberror: 1 },
            Exit::Hlt,
            Exit::Mmio { addr: 0xfee0_0000 },
        ] {
            let mut cpu = cpu_at(CODE);
            match handle(&mut w, exit.clone(), &mut cpu) {
                Action::Fatal(diag) => assert!(
                    diag.starts_with("pvkvm: ") && diag.contains("vcpu rip"),
                    "{exit:?}: {diag}"
                ),
                other => panic!("{exit:?} gave {other:?}"),
            }
        }
        let mut cpu = cpu_at(CODE);
        assert_eq!(
            handle(&mut w, Exit::Interrupted, &mut cpu),
            Action::Interrupted
        );
    }

    /// The guest kernel's own port I/O through the opened bitmap: answered by leaving
    /// the half-done instruction to KVM (no register touched); with an upcall due, the
    /// next entry only finishes it, so the delivery follows at once.
    #[test]
    fn guest_port_io_leaves_the_instruction_to_kvm_and_events_to_the_kick_path() {
        for due in [false, true] {
            let mut w = world();
            w.vcpu.event_callback.address = CODE + 0x200;
            w.mem
                .write_obj(u8::from(due), GuestAddress(w.vcpu.vcpu_info_gpa))
                .unwrap();
            for exit in [
                Exit::IoIn { port: 0x42 },
                Exit::IoOut {
                    port: 0x80,
                    value: 0,
                },
            ] {
                let mut cpu = cpu_at(CODE + 2);
                cpu.regs.rax = 0x1234;
                let before = cpu.regs;
                assert_eq!(handle(&mut w, exit, &mut cpu), Action::Resume);
                assert_eq!(cpu.regs, before, "KVM finishes the instruction");
                assert_eq!(cpu.io_finish_requested, due);
            }
            assert_eq!(w.exits.port_io, 2);
            assert_eq!(w.exits.port_io_then_event, if due { 2 } else { 0 });
            assert_eq!(
                w.stats.upcalls, 0,
                "delivered after the instruction, not here"
            );
        }
    }

    /// The data of a direct port-I/O exit comes from the domain's port space: the PIT at
    /// 0x42/0x43/0x61 (programmed by the guest's `out`s), all ones elsewhere, element by
    /// element for a string instruction.
    #[test]
    fn guest_port_io_answers_from_the_domains_pit() {
        let mut w = world();
        let io = |w: &mut World, exit: Exit, width: u8, data: Vec<u8>| -> Vec<u8> {
            let mut cpu = cpu_at(CODE + 2);
            cpu.io = Some((width, data));
            assert_eq!(handle(w, exit, &mut cpu), Action::Resume);
            cpu.io.unwrap().1
        };
        let out = |port: u16, value: u8| Exit::IoOut { port, value };
        io(&mut w, out(0x61, 1), 1, vec![1]);
        io(&mut w, out(0x43, 0xb0), 1, vec![0xb0]);
        io(&mut w, out(0x42, 0xff), 1, vec![0xff]);
        io(&mut w, out(0x42, 0xff), 1, vec![0xff]);
        // `rep insb` of two elements: LSB then MSB of a count just below 0xffff.
        let count = io(&mut w, Exit::IoIn { port: 0x42 }, 1, vec![0; 2]);
        let count = u16::from_le_bytes([count[0], count[1]]);
        assert!(count > 0xf000, "{count:#x}");
        assert_eq!(io(&mut w, Exit::IoIn { port: 0x61 }, 1, vec![0])[0] & 3, 1);
        // A 32-bit read at 0x80: all ones.
        assert_eq!(
            io(&mut w, Exit::IoIn { port: 0x80 }, 4, vec![0; 4]),
            vec![0xff; 4]
        );
    }

    /// A kick that lands while the CPU holds a guest fault it has not delivered yet must
    /// not move rip to the event callback: the fault would then be delivered at the
    /// callback's first instruction (issue 10's oops at
    /// `xen_asm_exc_xen_hypervisor_callback+0x0`). The upcall waits for the trap exit.
    #[test]
    fn a_kick_with_a_fault_in_flight_leaves_the_upcall_for_the_trap_exit() {
        for in_flight in [true, false] {
            let mut w = world();
            w.vcpu.event_callback.address = CODE + 0x200;
            w.mem
                .write_obj(1u8, GuestAddress(w.vcpu.vcpu_info_gpa))
                .unwrap();
            let mut cpu = cpu_at(CODE + 7);
            cpu.fault_in_flight = in_flight;
            let action = {
                let mut dom = domain(&mut w);
                interrupted(&mut cpu, &mut dom).unwrap()
            };
            assert_eq!(action, Action::Interrupted);
            let pending: u8 = w.mem.read_obj(GuestAddress(w.vcpu.vcpu_info_gpa)).unwrap();
            if in_flight {
                assert_eq!(cpu.regs.rip, CODE + 7, "the faulting rip is kept");
                assert_eq!(w.stats.upcalls, 0);
                assert_eq!(pending, 1, "the upcall is still due");
            } else {
                assert_eq!(cpu.regs.rip, CODE + 0x200, "delivered at once");
                assert_eq!(w.stats.upcalls, 1);
            }
        }
    }

    /// A kick right after an `int3` (or `into`, `int n`) leaves the vCPU alone once: KVM
    /// may hold the trap queued, invisibly, and setting registers would drop it. A
    /// second kick at the same rip (no trap came, the bytes only looked like one)
    /// delivers; any other exit in between forgets the first look.
    #[test]
    fn a_kick_after_a_software_trap_leaves_it_to_kvm_then_delivers_on_the_second_look() {
        for insn in [
            &[0x90u8, 0xcc][..],
            &[0x90, 0xce],
            &[0xcd, 0x80],
            &[0xcd, 0x03],
        ] {
            let mut w = world();
            w.vcpu.event_callback.address = CODE + 0x200;
            w.mem
                .write_obj(1u8, GuestAddress(w.vcpu.vcpu_info_gpa))
                .unwrap();
            w.mem.write_slice(insn, GuestAddress(CODE + 5)).unwrap();
            // A timer that is due fires even so (its event waits, pending): the timer
            // deadline must move on, or no kick would come for the second look.
            w.vcpu.timer_deadline = Some(1);
            let mut cpu = cpu_at(CODE + 7);
            let action = interrupted(&mut cpu, &mut domain(&mut w)).unwrap();
            assert_eq!(action, Action::Interrupted);
            assert_eq!(
                w.vcpu.timer_deadline, None,
                "{insn:02x?}: the due timer fired"
            );
            assert_eq!(cpu.regs.rip, CODE + 7, "{insn:02x?}: left alone");
            assert_eq!(w.stats.upcalls, 0);
            assert_eq!(w.exits.kicks_after_soft_trap, 1);
            assert_eq!(w.soft_trap.deferred_at, Some(CODE + 7));
            assert!(w.soft_trap.recheck_at.is_some(), "a second look is due");

            // A second kick before the guest was entered again: a queued trap may still
            // wait for delivery, so the vCPU is left alone again.
            interrupted(&mut cpu, &mut domain(&mut w)).unwrap();
            assert_eq!(
                cpu.regs.rip,
                CODE + 7,
                "{insn:02x?}: not entered, left alone"
            );
            assert_eq!(w.exits.kicks_after_soft_trap, 2);

            // Entered since: the same rip proves no trap was queued.
            w.soft_trap.entered_since = true;
            interrupted(&mut cpu, &mut domain(&mut w)).unwrap();
            assert_eq!(cpu.regs.rip, CODE + 0x200, "{insn:02x?}: delivered");
            assert_eq!(w.stats.upcalls, 1);
            assert_eq!(w.soft_trap, SoftTrapCheck::default());
        }
        // With more than one vCPU, a byte a `text_poke_bp` leaves where its `int3` was
        // (here the first byte of a NOP5) counts too; with one, it does not.
        for (vcpus, deferred) in [(2, true), (1, false)] {
            let mut w = world();
            w.vcpu.event_callback.address = CODE + 0x200;
            w.mem
                .write_obj(1u8, GuestAddress(w.vcpu.vcpu_info_gpa))
                .unwrap();
            w.mem
                .write_slice(&[0x90, 0x0f, 0x1f, 0x44], GuestAddress(CODE + 5))
                .unwrap();
            let peers: Vec<crate::smp::VcpuHandle> = (0..vcpus)
                .map(|_| crate::smp::VcpuHandle::default())
                .collect();
            let mut cpu = cpu_at(CODE + 7);
            {
                let mut d = domain(&mut w);
                d.platform.peers = &peers;
                interrupted(&mut cpu, &mut d).unwrap();
            }
            assert_eq!(cpu.regs.rip == CODE + 7, deferred, "{vcpus} vCPUs");
            assert_eq!(w.exits.kicks_after_soft_trap, u64::from(deferred));
        }
        // Other bytes before rip: delivered at the first kick.
        let mut w = world();
        w.vcpu.event_callback.address = CODE + 0x200;
        w.mem
            .write_obj(1u8, GuestAddress(w.vcpu.vcpu_info_gpa))
            .unwrap();
        w.mem
            .write_slice(&[0x48, 0x90], GuestAddress(CODE + 5))
            .unwrap();
        let mut cpu = cpu_at(CODE + 7);
        interrupted(&mut cpu, &mut domain(&mut w)).unwrap();
        assert_eq!(cpu.regs.rip, CODE + 0x200);
        assert_eq!(w.exits.kicks_after_soft_trap, 0);
    }

    #[test]
    fn any_other_exit_forgets_a_deferred_kick() {
        let mut w = world();
        w.soft_trap = SoftTrapCheck {
            deferred_at: Some(CODE + 7),
            recheck_at: Some(1),
            entered_since: true,
        };
        let mut cpu = cpu_at(CODE + 7);
        let _ = handle(
            &mut w,
            Exit::IoOut {
                port: 0x80,
                value: 0,
            },
            &mut cpu,
        );
        assert_eq!(w.soft_trap, SoftTrapCheck::default());
    }

    /// A protection-key fault where PKRU can only change at ring 3: the trampoline runs
    /// with the guest's registers saved, events wait, and its doorbell puts everything
    /// back at the faulting instruction; no bounce to the guest.
    #[test]
    fn a_fault_in_the_gp_stubs_look_at_the_guest_resumes_its_ordinary_path() {
        let mut w = world();
        let fixup = w.region.vcpu0().gp_fixup.clone();
        assert!(!fixup.is_empty());
        // The #GP stub's read of the instruction byte faulted at ring 0 (a page another
        // vCPU unmapped since the #GP): the nested frame returns to the stub's fallback.
        for vector in [14u64, 13] {
            let frame = TrapFrame {
                vector,
                error_code: 0,
                rip: fixup.start,
                cs: u64::from(xen_abi::contract::selector::HYPERVISOR_CS),
                rflags: 0x2,
                rsp: w.region.vcpu0().stack_top - 0x100,
                ss: u64::from(xen_abi::contract::selector::HYPERVISOR_DS),
            };
            let (rsp0, frame_gpa) = push_trap_frame(&w, &frame);
            let mut cpu = cpu_at(0xffff_8100_0000_0500);
            cpu.regs.rsp = rsp0;
            let trap = Exit::IoOut {
                port: port::TRAP,
                value: 0,
            };
            assert_eq!(handle(&mut w, trap, &mut cpu), Action::Resume);
            let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
            w.mem.read_slice(&mut raw, GuestAddress(frame_gpa)).unwrap();
            let after = TrapFrame::read_from_bytes(&raw).unwrap();
            assert_eq!(after.rip, w.region.vcpu0().gp_fixup_resume);
            assert_eq!((after.cs, after.rsp), (frame.cs, frame.rsp));
        }
        // The same fault anywhere else in the shim is the shim's own: fatal.
        let frame = TrapFrame {
            vector: 14,
            error_code: 0,
            rip: fixup.end,
            cs: u64::from(xen_abi::contract::selector::HYPERVISOR_CS),
            rflags: 0x2,
            rsp: w.region.vcpu0().stack_top - 0x100,
            ss: u64::from(xen_abi::contract::selector::HYPERVISOR_DS),
        };
        let (rsp0, _) = push_trap_frame(&w, &frame);
        let mut cpu = cpu_at(0xffff_8100_0000_0500);
        cpu.regs.rsp = rsp0;
        let trap = Exit::IoOut {
            port: port::TRAP,
            value: 0,
        };
        assert!(matches!(handle(&mut w, trap, &mut cpu), Action::Fatal(_)));
    }

    #[test]
    fn a_protection_key_fault_runs_the_pkru_trampoline_and_retries() {
        let mut w = world();
        let frame = TrapFrame {
            vector: 14,
            error_code: PF_PK | 0x6,
            rip: CODE + 0x40,
            cs: 0xe033,
            rflags: 0x246,
            rsp: 0x8_0000,
            ss: 0xe02b,
        };
        let (rsp0, frame_gpa) = push_trap_frame(&w, &frame);
        let mut cpu = cpu_at(0xffff_8100_0000_0500);
        cpu.regs.rsp = rsp0;
        (cpu.regs.rax, cpu.regs.rcx, cpu.regs.rdx) = (0xa, 0xc, 0xd);
        let trap = Exit::IoOut {
            port: port::TRAP,
            value: 0,
        };
        let action = {
            let mut d = domain(&mut w);
            d.platform.xstate.reset_pkru = true;
            handle_exit(&trap, &mut cpu, &mut d)
        };
        assert_eq!(action, Action::Resume);
        let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
        w.mem.read_slice(&mut raw, GuestAddress(frame_gpa)).unwrap();
        let after = TrapFrame::read_from_bytes(&raw).unwrap();
        assert_eq!(after.rip, w.region.vcpu0().pkru_reset);
        assert_eq!((cpu.regs.rax, cpu.regs.rcx, cpu.regs.rdx), (0, 0, 0));
        assert!(w.pkru_reset.is_some());
        assert_eq!(w.exits.pkru_resets, 1);

        // The trampoline's doorbell: the guest's registers and the faulting rip again.
        cpu.regs.rip = w.region.vcpu0().pkru_reset_doorbell_end;
        cpu.regs.rflags = 0x2;
        let door = Exit::IoOut {
            port: port::HYPERCALL,
            value: 0,
        };
        assert_eq!(handle(&mut w, door, &mut cpu), Action::Resume);
        assert_eq!((cpu.regs.rax, cpu.regs.rcx, cpu.regs.rdx), (0xa, 0xc, 0xd));
        assert_eq!((cpu.regs.rip, cpu.regs.rflags), (CODE + 0x40, 0x246));
        assert!(w.pkru_reset.is_none());

        // Without the host need (KVM switches PKRU itself), the fault is the guest's.
        let (rsp0, _) = push_trap_frame(&w, &frame);
        cpu.regs.rsp = rsp0;
        let _ = handle(&mut w, trap, &mut cpu);
        assert!(w.pkru_reset.is_none());
        assert_eq!(w.exits.pkru_resets, 1);
    }

    /// A #BP from guest user mode at CODE + 1 whose kernel has a handler at CODE + 0x100:
    /// the trap table as set_trap_table leaves it, and the stub's frame (vector 3 and a 0
    /// error code below the CPU's) on the shim stack. Returns its rsp and address.
    fn bp_with_handler(w: &mut World) -> (u64, u64) {
        w.vcpu.trap_table[3] = xen_abi::xen::TrapInfo {
            vector: 3,
            flags: 3,
            cs: selector::FLAT_KERNEL_CS,
            _pad: 0,
            address: CODE + 0x100,
        };
        let frame = TrapFrame {
            vector: 3,
            error_code: 0,
            rip: CODE + 1,
            cs: 0xe033,
            rflags: 0x202,
            rsp: 0x8_0000,
            ss: 0xe02b,
        };
        push_trap_frame(w, &frame)
    }

    #[test]
    fn trap_doorbell_bounces_and_rewrites_the_iret_frame() {
        let mut w = world();
        let (rsp0, frame_gpa) = bp_with_handler(&mut w);
        let mut cpu = cpu_at(0xffff_8100_0000_0500);
        cpu.regs.rsp = rsp0;
        cpu.regs.rbx = 0xb0b;
        assert_eq!(
            handle(
                &mut w,
                Exit::IoOut {
                    port: port::TRAP,
                    value: 0
                },
                &mut cpu
            ),
            Action::Resume
        );
        let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
        w.mem.read_slice(&mut raw, GuestAddress(frame_gpa)).unwrap();
        let after = TrapFrame::read_from_bytes(&raw).unwrap();
        assert_eq!(after.rip, CODE + 0x100, "iret goes to the guest's handler");
        // Xen's frame (rcx, r11, rip, cs, rflags, rsp, ss) right below the aligned rsp.
        assert_eq!((0x8_0000u64 & !15) - after.rsp, 7 * 8);
        assert_eq!(
            (cpu.regs.rip, cpu.regs.rsp),
            (w.region.vcpu0().trap_return, rsp0 + 16),
            "nothing waits: straight to an iretq through the CPU's frame"
        );
        assert_eq!(cpu.regs.rbx, 0xb0b);
        assert_eq!(w.stats.bounces[3], 1);
    }

    /// What waits for the apply routine before a trap doorbell (a #BP the guest kernel
    /// has a handler for).
    enum Waiting {
        Stores(usize),
        FullFlush,
        OneStoreAndInvlpg,
    }

    /// Rings the trap doorbell with `waiting` queued; returns the vCPU and the frame's
    /// guest-physical address.
    fn trap_with(w: &mut World, waiting: Waiting) -> (FakeCpu, u64, u64) {
        trap_with_cr3(w, waiting, L4)
    }

    /// [`trap_with`] on a vCPU that ran with CR3 `ran_with` (the PV state's is L4).
    fn trap_with_cr3(w: &mut World, waiting: Waiting, ran_with: u64) -> (FakeCpu, u64, u64) {
        let (rsp0, frame_gpa) = bp_with_handler(w);
        {
            let mut p = platform(w);
            match waiting {
                Waiting::Stores(n) => {
                    for i in 0..n {
                        pv_mm::FrameAccess::write_entry(&mut p.frames, 5, i, 0x77 + i as u64);
                    }
                }
                Waiting::FullFlush => p.flush.local_all = true,
                Waiting::OneStoreAndInvlpg => {
                    pv_mm::FrameAccess::write_entry(&mut p.frames, 5, 0, 0x77);
                    assert!(p.flush.invlpg.try_push(0x4000));
                }
            }
        }
        let mut cpu = cpu_at(0xffff_8100_0000_0500);
        cpu.sregs.cr3 = ran_with;
        cpu.regs.rsp = rsp0;
        cpu.regs.rax = 0xaaaa;
        cpu.regs.rdi = 0xd1d1;
        cpu.regs.rcx = 0xc0c0;
        cpu.regs.rbx = 0xb0b;
        let exit = Exit::IoOut {
            port: port::TRAP,
            value: 0,
        };
        assert_eq!(handle(w, exit, &mut cpu), Action::Resume);
        (cpu, rsp0, frame_gpa)
    }

    fn read_frame(w: &World, gpa: u64) -> TrapFrame {
        let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
        w.mem.read_slice(&mut raw, GuestAddress(gpa)).unwrap();
        TrapFrame::read_from_bytes(&raw).unwrap()
    }

    #[test]
    fn one_store_goes_to_the_short_apply_in_registers() {
        let mut w = world();
        let (cpu, rsp0, frame_gpa) = trap_with(&mut w, Waiting::Stores(1));
        let shim = w.region.vcpu0();
        assert_eq!((cpu.regs.rip, cpu.regs.rsp), (shim.apply_one, rsp0));
        assert_eq!(
            (cpu.regs.rdi, cpu.regs.rax),
            (xen_abi::contract::DIRECTMAP_VA + 5 * 4096, 0x77)
        );
        let after = read_frame(&w, frame_gpa);
        assert_eq!(
            (after.vector, after.error_code),
            (0xd1d1, 0xaaaa),
            "the guest's rdi and rax, for the routine's pops"
        );
        assert_eq!(
            after.rip,
            CODE + 0x100,
            "the CPU's frame, to the guest's handler"
        );
        assert_eq!(cpu.regs.rbx, 0xb0b);
        assert!(w.posted.nothing_waits(&w.flush));
        assert_eq!(w.exits.applies, 1);
    }

    #[test]
    fn a_full_flush_alone_goes_to_the_short_flush() {
        let mut w = world();
        let (cpu, rsp0, frame_gpa) = trap_with(&mut w, Waiting::FullFlush);
        let shim = w.region.vcpu0();
        assert_eq!(
            (cpu.regs.rip, cpu.regs.rsp),
            (shim.apply_flush_all, rsp0 + 8)
        );
        assert_eq!((cpu.regs.rdi, cpu.regs.rax), (0xd1d1, 0xaaaa));
        assert_eq!(
            read_frame(&w, frame_gpa).error_code,
            0xaaaa,
            "the guest's rax"
        );
        assert!(w.posted.nothing_waits(&w.flush));
    }

    /// A full local flush alone, with the vCPU resuming on another CR3 (a base pointer
    /// switch): KVM's load of that CR3 is the flush, so no apply runs; with stores, or
    /// with the CR3 unchanged, the apply stays.
    #[test]
    fn a_new_cr3_is_the_full_flush_a_base_pointer_switch_asks_for() {
        let mut w = world();
        let (cpu, rsp0, _) = trap_with_cr3(&mut w, Waiting::FullFlush, 0x9000);
        let shim = w.region.vcpu0();
        assert_eq!(
            (cpu.regs.rip, cpu.regs.rsp),
            (shim.trap_return, rsp0 + 16),
            "no apply"
        );
        assert_eq!(cpu.sregs.cr3, L4, "the PV state's CR3 is loaded");
        assert_eq!((w.exits.applies, w.exits.flushes_by_cr3_load), (0, 1));
        assert!(w.flush.is_empty());

        let mut w = world();
        {
            let mut p = platform(&mut w);
            pv_mm::FrameAccess::write_entry(&mut p.frames, 5, 0, 0x77);
        }
        let (cpu, _, _) = trap_with_cr3(&mut w, Waiting::FullFlush, 0x9000);
        assert_eq!(
            cpu.regs.rip,
            w.region.vcpu0().apply_list_flush_all,
            "a store keeps the apply, and its flush"
        );
        assert_eq!(w.exits.flushes_by_cr3_load, 0);
    }

    /// A few stores: listed on the ring-0 stack below the guest's rcx, rdi and rax, for
    /// `apply_list`'s pops; the rest of the frame as for any apply.
    #[test]
    fn a_few_stores_are_listed_on_the_ring0_stack() {
        let mut w = world();
        let (cpu, rsp0, frame_gpa) = trap_with(&mut w, Waiting::Stores(3));
        let shim = w.region.vcpu0();
        let below = 3 * 16 + 8;
        assert_eq!(
            (cpu.regs.rip, cpu.regs.rsp, cpu.regs.rcx),
            (shim.apply_list, rsp0 - below, 3)
        );
        let mut words = [0u64; 7];
        w.mem
            .read_slice(words.as_mut_bytes(), GuestAddress(frame_gpa - below))
            .unwrap();
        let entry = xen_abi::contract::DIRECTMAP_VA + 5 * 4096;
        assert_eq!(
            words,
            [entry, 0x77, entry + 8, 0x78, entry + 16, 0x79, 0xc0c0],
            "the stores in order, then the guest's rcx"
        );
        let after = read_frame(&w, frame_gpa);
        assert_eq!((after.vector, after.error_code), (0xd1d1, 0xaaaa));
        assert_eq!(after.rip, CODE + 0x100);
        assert_eq!(cpu.regs.rbx, 0xb0b);
        assert!(w.posted.nothing_waits(&w.flush));
        assert_eq!((w.exits.applies, w.exits.posted_stores), (1, 3));
    }

    /// More stores than the list holds, or a single-address flush: the posting area.
    #[test]
    fn other_shapes_go_to_the_general_apply_through_the_posting_area() {
        let many = xen_abi::contract::MAX_LISTED_STORES + 1;
        for (waiting, stores, invlpg) in [
            (Waiting::Stores(many), many as u32, 0),
            (Waiting::OneStoreAndInvlpg, 1, 1),
        ] {
            let mut w = world();
            let (cpu, rsp0, _) = trap_with(&mut w, waiting);
            let shim = w.region.vcpu0();
            assert_eq!((cpu.regs.rip, cpu.regs.rsp), (shim.apply_entry, rsp0));
            assert_eq!((cpu.regs.rdi, cpu.regs.rax), (0xd1d1, 0xaaaa));
            let mut raw = vec![0u8; 0x1000];
            w.mem
                .read_slice(&mut raw, GuestAddress(shim.posted_gpa))
                .unwrap();
            let h = xen_abi::contract::PostedHeader::read_from_bytes(&raw).unwrap();
            assert_eq!((h.nr_stores, h.nr_invlpg, h.flags), (stores, invlpg, 0));
            assert!(w.posted.nothing_waits(&w.flush));
        }
    }

    #[test]
    fn a_hypercall_with_one_store_waiting_enters_the_short_apply_at_ring_0() {
        let mut w = world();
        {
            let mut p = platform(&mut w);
            pv_mm::FrameAccess::write_entry(&mut p.frames, 5, 2, 0x99);
        }
        let mut cpu = cpu_at(w.region.vcpu0().syscall_doorbell_end);
        cpu.regs.rax = hc::XEN_VERSION;
        cpu.regs.rdi = 0;
        cpu.regs.rcx = CODE + 2;
        cpu.regs.r11 = 0x246;
        assert_eq!(handle(&mut w, doorbell(), &mut cpu), Action::Resume);
        let shim = w.region.vcpu0();
        let rsp0 = shim.stack_top - core::mem::size_of::<TrapFrame>() as u64;
        assert_eq!((cpu.regs.rip, cpu.regs.rsp), (shim.apply_one, rsp0));
        assert_eq!(
            (cpu.regs.rdi, cpu.regs.rax),
            (xen_abi::contract::DIRECTMAP_VA + 5 * 4096 + 16, 0x99)
        );
        let frame = read_frame(&w, shim.va_to_gpa(rsp0).unwrap());
        assert_eq!(
            (frame.vector, frame.error_code),
            (0, (4 << 16) | 17),
            "the guest's rdi and its rax: the hypercall's result"
        );
        assert_eq!(frame.rip, CODE + 2);
        assert_eq!(cpu.sregs.cs.dpl, 0, "the short apply runs at ring 0");
    }

    #[test]
    fn a_read_of_xens_m2p_address_is_served_from_the_table() {
        let mut w = world();
        // The table as an MMU_MACHPHYS_UPDATE left it: entry 0x123 names pfn 0x77.
        w.mem
            .write_obj(0x77u64, GuestAddress(w.region.m2p_gpa + 0x123 * 8))
            .unwrap();
        // mov rax, [rbx+rdi*8], faulting with this host's reserved-bit error code.
        w.mem
            .write_slice(&[0x48, 0x8b, 0x04, 0xfb], GuestAddress(CODE))
            .unwrap();
        let frame = TrapFrame {
            vector: 14,
            error_code: 0b1101,
            rip: CODE,
            cs: 0xe033,
            rflags: 0x202,
            rsp: 0x8_0000,
            ss: 0xe02b,
        };
        let (rsp0, frame_gpa) = push_trap_frame(&w, &frame);
        let mut cpu = cpu_at(0xffff_8100_0000_0500);
        cpu.regs.rsp = rsp0;
        cpu.regs.rbx = xen_abi::xen::MACH2PHYS_VIRT_START;
        cpu.regs.rdi = 0x123;
        cpu.sregs.cr2 = xen_abi::xen::MACH2PHYS_VIRT_START + 0x123 * 8;
        let trap = Exit::IoOut {
            port: port::TRAP,
            value: 0,
        };
        assert_eq!(handle(&mut w, trap.clone(), &mut cpu), Action::Resume);
        let mut raw = [0u8; core::mem::size_of::<TrapFrame>()];
        w.mem.read_slice(&mut raw, GuestAddress(frame_gpa)).unwrap();
        let after = TrapFrame::read_from_bytes(&raw).unwrap();
        assert_eq!(after.rip, CODE + 4, "resumes after the load");
        assert_eq!(cpu.regs.rax, 0x77);
        assert_eq!(w.stats.emulated[pv_engine::stats::emulated::M2P_READ], 1);
        assert_eq!(w.stats.bounces[14], 0);

        // Past the table's end (whole pages for the RAM's frames) the read faults not
        // present, with the user bit cleared for the guest kernel.
        assert_eq!(w.region.m2p_bytes, (RAM >> 12) * 8);
        w.vcpu.trap_table[14] = xen_abi::xen::TrapInfo {
            vector: 14,
            flags: 0,
            cs: selector::FLAT_KERNEL_CS,
            _pad: 0,
            address: CODE + 0x100,
        };
        w.mem
            .write_slice(frame.as_bytes(), GuestAddress(frame_gpa))
            .unwrap();
        cpu.regs.rip = 0xffff_8100_0000_0500;
        cpu.regs.rsp = rsp0;
        cpu.regs.rdi = RAM >> 12;
        cpu.sregs.cr2 = xen_abi::xen::MACH2PHYS_VIRT_START + (RAM >> 12) * 8;
        assert_eq!(handle(&mut w, trap, &mut cpu), Action::Resume);
        w.mem.read_slice(&mut raw, GuestAddress(frame_gpa)).unwrap();
        let after = TrapFrame::read_from_bytes(&raw).unwrap();
        assert_eq!(after.rip, CODE + 0x100, "bounced to the #PF handler");
        assert_eq!(w.stats.bounces[14], 1);
        let ec: u64 = w.mem.read_obj(GuestAddress(after.rsp + 16)).unwrap();
        assert_eq!(ec, 0, "not present, read, kernel mode");
    }

    /// Xen's `hypercall_preempt_check` in the VMM: past the exit's budget, or with more
    /// stores queued than [`MAX_QUEUED_STORES`]; never otherwise.
    #[test]
    fn long_hypercalls_are_preempted_by_the_exit_budget_and_queued_stores() {
        use pv_mm::FrameAccess;
        use std::time::{Duration, Instant};
        let mut w = world();
        let mut p = platform(&mut w);
        assert!(!p.hypercall_preempt_check(), "no deadline, nothing queued");
        p.preempt_deadline = Some(Instant::now() + Duration::from_secs(3600));
        assert!(!p.hypercall_preempt_check());
        p.preempt_deadline = Some(Instant::now() - Duration::from_millis(1));
        assert!(p.hypercall_preempt_check(), "the budget is spent");
        p.preempt_deadline = None;
        for i in 0..MAX_QUEUED_STORES {
            p.frames.write_entry(0x10, i % 512, i as u64);
        }
        assert!(!p.hypercall_preempt_check(), "at the cap");
        p.frames.write_entry(0x10, 0, 0);
        assert!(p.hypercall_preempt_check(), "past the cap");
    }
}
