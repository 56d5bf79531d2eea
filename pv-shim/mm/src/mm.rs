//! The engine: Xen's page typing, validation, pinning and pagetable updates for a 64-bit
//! PV guest (Xen 4.17 `arch/x86/mm.c` and `arch/x86/pv/*`, pv-linear-pt disabled, no
//! superpages).
//!
//! Names follow Xen so a reviewer can cross-read: `get_page`, `get_page_type`,
//! `promote_l1_table`.. (validation on the type's 0 -> 1 transition), `free_lN_table`
//! (Xen's `demote_lN_table`, teardown on 1 -> 0), `get_page_from_lNe` /
//! `put_page_from_lNe`, `mod_lN_entry`.
//!
//! Reference model. Every present entry of a validated table holds one general reference
//! on its target; an RW L1 entry also holds a `Writable` type reference, an L2/L3/L4
//! entry a type reference of the next lower level. A pin holds one general and one type
//! reference, and so does every reference the engine takes through the public API
//! (base pointers, GDT frames, `get_page*`); those are kept in a ledger so releases are
//! checked and `check_invariants` can recompute every count.
//!
//! Preemption (Xen's `hypercall_preempt_check()` inside `promote_l2/l3_table`): with a
//! budget set ([`Mm::set_preempt_budget`]), an operation counts the entries it checks
//! (an L1 counts its 512 whole: it is never split) and, once past the budget, stops
//! between two entries of an L2 or L3 table with [`MmError::Restart`] (`-ERESTART`).
//! Every table on the way down is left `Partial { next_slot }`: slots below `next_slot`
//! hold their references, and the partial state holds the frame's type reference and a
//! general reference (Xen's `PGT_partial` and `get_page_light`). Issuing the operation
//! again resumes: a `get_page_type` of the same type takes the partial type reference
//! over and validates on from `next_slot` (`_get_page_type`'s `PGT_partial` case), so a
//! pin, base-pointer load or L3/L4 entry update that restarts completes on re-entry with
//! exactly the state an unpreempted run gives. As in Xen, the first slot of a resumed
//! table is never preempted, so every restart makes progress. Meanwhile another
//! operation on a partial frame gets Xen's answer: the same type continues its
//! validation, any other type or an unpin is refused (-EINVAL, or -EBUSY for a
//! writable mapping), and a failure found while resuming undoes the whole partial
//! validation.
//!
//! Teardown (`put_page_type` on 1 -> 0, `demote_lN_table`) is preemptible too, as Xen's
//! `put_page_and_type_preemptible`: a table is released from its highest held slot
//! down; an L2/L3 checks the budget between entries (an L4 only passes on a child's
//! stop) and stops with the frame `Partial { next_slot }` — the same state as a
//! preempted validation (Xen's `PGT_partial` does not record a direction either): type
//! count still 1, the dropped general reference now the partial state's, slots below
//! `next_slot` still held. A child that stops inside its parent's teardown takes the
//! parent's slot references into its own partial state, and the parent records that it
//! stopped there (`partial_set`, Xen's `PTF_partial_set`): its resumed teardown
//! continues that child first. So a stopped teardown is one table, the topmost, and
//! that table goes to the vCPU's one `old_guest_table` slot (Xen's `v->arch.
//! old_guest_table`; the vCPU set with [`Mm::set_current_vcpu`], vCPU 0 unless set),
//! while the operation that started the put still succeeds: the unpin (the pin is
//! cleared first, so it is never redone), the base-pointer switch, the entry update
//! (Xen's `PTF_defer`). [`Mm::put_old_guest_table`] continues it under the budget
//! (`Restart` while work is left), and every operation that may start a teardown (pin,
//! unpin, base-pointer switch, entry update) does the same first and, if the slot's
//! teardown does not finish within the budget, returns `Restart` having done nothing
//! else: the guest's continuation comes back until it does. Every call is thus bounded
//! by the budget and nothing is capped, however large the tree. The engine also calls
//! it on entry to every MMU hypercall and ends a batch before the record after one that
//! filled the slot. Meanwhile a frame in teardown answers as any partial frame: a
//! same-type get resumes its validation (the slot or the parent's `partial_set` then
//! finds nothing to do), anything else is refused.
//!
//! Several vCPUs (docs/mmu-invariants.md, "Several vCPUs"): operations run one at a
//! time (the VMM's domain lock) but interleave between hypercalls, so a vCPU's
//! operation may meet tables another vCPU left partial. The frame table is shared and
//! a partial state is nobody's: whoever gets the frame as its type resumes it, and a
//! deferred put of any vCPU continues the teardown of whatever partial frame it finds
//! (Xen's `put_old_guest_table` with `PTF_partial_set`). What is per vCPU is what Xen
//! keeps in `struct vcpu`: the `old_guest_table` slot and the base pointers
//! ([`Mm::set_current_vcpu`], [`Mm::loaded_roots_of`]), so a vCPU's hypercall never
//! waits for nor does another vCPU's deferred work, and an L4 update knows which
//! vCPUs' TLBs it concerns ([`FlushSet::needs_remote`]).
//!
//! Deviations from Xen (also listed in the crate docs):
//! - Xen defers the old target of every L2..L4 entry update to `old_guest_table`; here
//!   the put is tried at once and only a teardown that runs out of budget is deferred.
//!   Puts that are never continued stay synchronous: the undo of a failed validation and
//!   the engine's own `put_page_type`/`put_page_and_type`.
//! - A failed validation is undone at once: slots below the failing one are released and
//!   the frame returns to its previous state; Xen defers the L2..L4 undo to
//!   `old_guest_table`. A preempted parent does not keep a general reference on the
//!   partial child it stopped in (Xen's `PTF_partial_set`): the child's own partial
//!   state holds one, and the parent takes a fresh one on resuming.
//! - The budget is a count of entries, not time; L4 tables, like Xen's
//!   `promote_l4_table`, do not check it themselves.
//! - The L1TF check on non-present entries (`pv_l1tf_check_*`) is not done: there is no
//!   shadow-paging fallback to switch to, and non-present entries are never walked.
//! - Frames outside RAM: one error (`ForeignMapping`, -EBUSY) for an L1 mapping of any
//!   frame that is not RAM or shared; Xen says -EBUSY for another owner's page and -EPERM
//!   for MMIO. Shared frames are Xen's `share_xen_page_with_guest` pages: mappable RW, never
//!   typed otherwise, not refcounted, not usable as tables, M2P or copy targets.
//! - Reference counts are `u32`; an overflow is `CountOverflow` (-EINVAL everywhere).
//! - Type-change TLB flushes use a single global epoch instead of per-CPU timestamps
//!   (see [`Mm::tlb_flushed`]).

use crate::api::{FlushSet, FrameAccess, Level, Mfn};
use crate::desc::check_descriptor;
use crate::error::MmError;
use crate::frame::{child_level, parent_level, FrameState, PageInfo, PageType, Validation};
use crate::pte::*;
use crate::refusal::{EntryCause, MmOp, Refusal, WritableMapping, REFUSAL_LOG_LEN};
use crate::storage::{FrameList, FrameSlot, FrameTable, Held, SharedFrames, MAX_VCPUS};

/// Tables one operation validates at once (at most one per level; room to spare).
const BUSY_MAX: usize = 8;
/// Base pointers one vCPU holds through `set_root` (kernel and user; room to spare).
/// Past it the vCPUs' roots are no longer told apart and from then on every L4 update
/// flushes all vCPUs (a degradation, always correct: see `root_flush`).
pub const LOADED_ROOTS_MAX: usize = 4;

/// Where a preemptible teardown stopped (`demote_table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stop {
    /// Slots below it still hold their references.
    next_slot: u16,
    /// The child at `next_slot` stopped in its own teardown and holds that slot's
    /// references in its partial state (the frame's `partial_set`).
    in_child: bool,
}

/// The last [`REFUSAL_LOG_LEN`] refusals, a ring.
#[derive(Clone, Debug)]
struct RefusalLog {
    ring: [Option<Refusal>; REFUSAL_LOG_LEN],
    /// Index of the oldest record.
    head: usize,
    len: usize,
}

impl RefusalLog {
    const EMPTY: Self = Self {
        ring: [None; REFUSAL_LOG_LEN],
        head: 0,
        len: 0,
    };

    fn push(&mut self, r: Refusal) {
        let at = (self.head + self.len) % REFUSAL_LOG_LEN;
        if let Some(slot) = self.ring.get_mut(at) {
            *slot = Some(r);
        }
        if self.len == REFUSAL_LOG_LEN {
            self.head = (self.head + 1) % REFUSAL_LOG_LEN;
        } else {
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Refusal> {
        (0..self.len).filter_map(move |k| {
            self.ring
                .get((self.head + k) % REFUSAL_LOG_LEN)
                .and_then(|r| r.as_ref())
        })
    }
}

/// What the engine is given about the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmConfig {
    /// The domain owns mfn `0..nr_frames` (guest RAM).
    pub nr_frames: u64,
    /// Written into slots 256..=271 of every L4 the engine validates (the shim and the
    /// M2P); guest updates to those slots are refused.
    pub hole_l4: [u64; 16],
    /// Frames outside RAM the guest may map (shared_info): RW mappings allowed, never
    /// typed as pagetables, no refcounts.
    pub shared_frames: SharedFrames,
    /// Machine frames that exist at all (RAM and the hypervisor's own memory). An L1
    /// mapping of a frame at or above this is I/O space, which an unprivileged domain may
    /// not map (Xen: -EPERM); below it but not the domain's is another owner's (-EBUSY).
    pub max_machine_frame: Mfn,
}

/// Counters for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmStats {
    /// Entry updates that took the no-revalidation fast path.
    pub fast_path: u64,
    /// Entry updates that revalidated the new entry.
    pub slow_path: u64,
    /// `mmu_update`s into non-pagetable frames (plain writes).
    pub plain_writes: u64,
    /// Tables validated (`promote_lN_table` successes).
    pub promotions: u64,
    /// Tables torn down (`free_lN_table`, including undo of failed validations).
    pub teardowns: u64,
    /// Type changes that required a TLB flush.
    pub type_change_flushes: u64,
    /// Operations preempted with [`MmError::Restart`].
    pub restarts: u64,
}

/// Context of the innermost failure while an operation runs.
#[derive(Clone, Copy, Debug)]
struct FailCtx {
    cause: EntryCause,
    wmap: Option<WritableMapping>,
}

/// The PV MMU engine: the frame table and everything else. Its storage is fixed but
/// for the frame table (see the `storage` module): no operation allocates.
#[derive(Debug)]
#[cfg_attr(feature = "alloc", derive(Clone))]
pub struct Mm {
    cfg: MmConfig,
    /// Per RAM frame: the frame-table entry, its TLB-flush stamp, the references the
    /// engine holds on it through the public API (base pointers, GDT frames, direct
    /// `get_page*` calls, so releases can be checked) and whether it was released.
    frames: FrameTable,
    epoch: u64,
    last_flush: u64,
    refusals: RefusalLog,
    refusal_count: u64,
    rip: u64,
    fail: Option<FailCtx>,
    stats: MmStats,
    /// Flushes needed by operations whose signature returns no `FlushSet` (copy/clear
    /// page, set_gdt, update_descriptor); see [`Mm::take_pending_flush`].
    pending: FlushSet,
    /// Entries one operation may check before it is preempted (None: never).
    preempt_budget: Option<u32>,
    /// Entries the current operation has checked.
    work: u32,
    /// Tables whose validation runs in the current operation, outermost first (Xen's
    /// "validate locked" state; at most one per level).
    busy: FrameList<BUSY_MAX>,
    /// Per vCPU, Xen's `v->arch.old_guest_table`: the one table whose teardown an unpin,
    /// base-pointer switch or entry update of that vCPU left part-way (`Restart`), to be
    /// finished by [`Mm::put_old_guest_table`] before any other operation of that vCPU
    /// does anything. Only the topmost table of the stopped teardown: the tables it
    /// stopped in are reached through its `partial_set` entry (Xen's
    /// `PTF_partial_set`). The frame is `Partial` with its type reference and one
    /// general reference held by the partial state; the slot holds no reference of its
    /// own, so a frame that is no longer in teardown (a getter resumed its validation
    /// meanwhile and took those references over) is simply forgotten. Indexed by vCPU
    /// id (see [`Mm::set_current_vcpu`]).
    old_guest_table: [Option<Mfn>; MAX_VCPUS],
    /// The vCPU the next operations run for (Xen's `current`); 0 unless set.
    cur_vcpu: usize,
    /// Per vCPU: the base pointers it loaded through [`Mm::set_root`] (kernel and user,
    /// a multiset), to tell this vCPU's uses of an L4 from other vCPUs' for TLB flushes.
    loaded_roots: [FrameList<LOADED_ROOTS_MAX>; MAX_VCPUS],
    /// Some vCPU loaded more base pointers than `loaded_roots` holds: roots are no longer
    /// told apart by vCPU (every L4 update flushes all vCPUs).
    roots_overflow: bool,
}

/// Reads a guest entry; `slot` is always < 512 here.
fn rd(mem: &dyn FrameAccess, mfn: Mfn, slot: usize) -> u64 {
    mem.read_entry(mfn, slot)
}

impl Mm {
    /// A fresh engine: every frame untyped, unreferenced, unpinned; the frame table is
    /// allocated here, once.
    #[cfg(feature = "alloc")]
    pub fn new(cfg: MmConfig) -> Self {
        let n = usize::try_from(cfg.nr_frames).unwrap_or(usize::MAX);
        Self::over(cfg, FrameTable::Owned(alloc::vec![FrameSlot::EMPTY; n]))
    }

    /// A fresh engine over the host's storage for the frame table (one slot per RAM
    /// frame, `cfg.nr_frames` of them; frames past the storage's end are not the
    /// domain's). The slots are reset here; nothing is allocated, now or later.
    pub fn with_storage(cfg: MmConfig, frames: &'static mut [FrameSlot]) -> Self {
        frames.fill(FrameSlot::EMPTY);
        Self::over(cfg, FrameTable::Borrowed(frames))
    }

    fn over(cfg: MmConfig, frames: FrameTable) -> Self {
        Mm {
            cfg,
            frames,
            ..Self::EMPTY
        }
    }

    /// An engine of no frames, as a constant: a host that keeps the engine in static
    /// storage (it is tens of KiB: per-vCPU lists, the refusal ring) starts from it and
    /// builds it in place with [`Mm::reset_with_storage`].
    pub const EMPTY: Self = Mm {
        cfg: MmConfig {
            nr_frames: 0,
            hole_l4: [0; 16],
            shared_frames: SharedFrames::EMPTY,
            max_machine_frame: 0,
        },
        frames: FrameTable::Empty,
        epoch: 0,
        last_flush: 0,
        refusals: RefusalLog::EMPTY,
        refusal_count: 0,
        rip: 0,
        fail: None,
        stats: MmStats {
            fast_path: 0,
            slow_path: 0,
            plain_writes: 0,
            promotions: 0,
            teardowns: 0,
            type_change_flushes: 0,
            restarts: 0,
        },
        pending: FlushSet::EMPTY,
        preempt_budget: None,
        work: 0,
        busy: FrameList::EMPTY,
        old_guest_table: [None; MAX_VCPUS],
        cur_vcpu: 0,
        loaded_roots: [FrameList::EMPTY; MAX_VCPUS],
        roots_overflow: false,
    };

    /// [`Mm::with_storage`] in place: this engine becomes a fresh one over `frames`
    /// (reset here), with nothing of its previous state kept and nothing moved by value.
    pub fn reset_with_storage(&mut self, cfg: MmConfig, frames: &'static mut [FrameSlot]) {
        frames.fill(FrameSlot::EMPTY);
        self.cfg = cfg;
        self.frames = FrameTable::Borrowed(frames);
        self.epoch = 0;
        self.last_flush = 0;
        self.refusals = RefusalLog::EMPTY;
        self.refusal_count = 0;
        self.rip = 0;
        self.fail = None;
        self.stats = MmStats::default();
        self.pending.clear();
        self.preempt_budget = None;
        self.work = 0;
        self.busy = FrameList::EMPTY;
        self.old_guest_table.fill(None);
        self.cur_vcpu = 0;
        self.loaded_roots.fill(FrameList::EMPTY);
        self.roots_overflow = false;
    }

    /// Sets how many entries one operation (`pin_table`, `set_root`, `mod_entry`,
    /// `get_page_type`...) may check before it stops with [`MmError::Restart`]; None
    /// (the default) never preempts. The engine's stand-in for Xen's
    /// `hypercall_preempt_check()`: a budget needs no access to the platform.
    pub fn set_preempt_budget(&mut self, entries: Option<u32>) {
        self.preempt_budget = entries;
    }

    /// The budget set with [`Mm::set_preempt_budget`].
    pub fn preempt_budget(&self) -> Option<u32> {
        self.preempt_budget
    }

    /// Entries the last operation checked (an L1 counts 512), whether it finished or
    /// was preempted: what the budget measures.
    pub fn entries_checked(&self) -> u32 {
        self.work
    }

    /// Starts a public operation: no failure context, no work done yet.
    fn begin(&mut self) {
        self.fail = None;
        self.work = 0;
    }

    /// Counts `n` entries checked.
    fn tick(&mut self, n: u32) {
        self.work = self.work.saturating_add(n);
    }

    /// `hypercall_preempt_check()`: the operation has used its budget.
    fn preempt_due(&self) -> bool {
        self.preempt_budget.is_some_and(|b| self.work >= b)
    }

    /// `XENMEM_decrease_reservation` of one frame (Xen's `guest_remove_page`): the frame
    /// stops being the domain's. Refused while anything still references it (Xen frees
    /// such a page later; pvkvm keeps the rule simple and the guest unmaps first, as
    /// Linux's balloon driver does).
    pub fn release_frame(&mut self, mfn: Mfn) -> Result<(), MmError> {
        let i = self.idx(mfn).ok_or(MmError::NotOwned)?;
        let slot = self.frames.get(i).ok_or(MmError::NotOwned)?;
        let info = slot.info;
        if info.refcount != 0 || info.type_count != 0 || info.pinned || slot.held != Held::default()
        {
            return Err(MmError::InUse);
        }
        if let Some(f) = self.frames.get_mut(i) {
            f.released = true;
            f.info = PageInfo::default();
        }
        Ok(())
    }

    /// `XENMEM_populate_physmap` of one frame: hands a released frame back to the domain,
    /// fresh (untyped, unreferenced). None when no frame was released.
    pub fn reclaim_frame(&mut self) -> Option<Mfn> {
        let i = self.frames.iter().position(|f| f.released)?;
        if let Some(f) = self.frames.get_mut(i) {
            f.released = false;
        }
        Some(i as Mfn)
    }

    /// Frames the domain owns now (`XENMEM_current_reservation`).
    pub fn owned_frames(&self) -> u64 {
        self.cfg.nr_frames - self.frames.iter().filter(|f| f.released).count() as u64
    }

    /// The configuration.
    pub fn config(&self) -> &MmConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &MmStats {
        &self.stats
    }

    /// State of a RAM frame (None outside RAM).
    pub fn page_info(&self, mfn: Mfn) -> Option<&PageInfo> {
        self.idx(mfn)
            .and_then(|i| self.frames.get(i))
            .map(|f| &f.info)
    }

    /// Whether `mfn` is a configured shared frame.
    pub fn is_shared(&self, mfn: Mfn) -> bool {
        mfn >= self.cfg.nr_frames && self.cfg.shared_frames.contains(&mfn)
    }

    /// The last (up to 64) refusals, oldest first.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter()
    }

    /// Number of refusals since creation.
    pub fn refusal_count(&self) -> u64 {
        self.refusal_count
    }

    /// Stamps later refusal records with this guest rip.
    pub fn set_context_rip(&mut self, rip: u64) {
        self.rip = rip;
    }

    /// Tells the engine that every vCPU's TLB was fully flushed (global entries
    /// included): with several vCPUs, all of them, not only the current one (a local
    /// flush leaves other vCPUs' stale entries; the epoch is global). Type changes of frames whose last type reference was dropped before
    /// this point no longer need a flush (Xen's `tlbflush_filter`). Never calling it is
    /// safe: every such type change then asks for a flush.
    pub fn tlb_flushed(&mut self) {
        self.last_flush = self.epoch;
    }

    /// Takes the TLB work left by `copy_page`, `clear_page`, `get_segdesc_page` and
    /// `update_descriptor`: their target can change type (Xen's `_get_page_type` flushes
    /// on a type change), which may need a flush before the guest runs again. Call it
    /// after every batch that used them.
    pub fn take_pending_flush(&mut self) -> FlushSet {
        core::mem::take(&mut self.pending)
    }

    /// An operation's flush work: returned when it succeeds; when it stops with
    /// `Restart` or is refused, what its type changes already needed (a child validated
    /// before a sibling ran out of budget keeps its new type) goes to
    /// [`Mm::take_pending_flush`] instead of being lost with the error (Xen flushes
    /// inside `_get_page_type`, whatever the operation's outcome).
    fn flush_or_pend(&mut self, r: Result<(), MmError>, fl: FlushSet) -> Result<FlushSet, MmError> {
        match r {
            Ok(()) => Ok(fl),
            Err(e) => {
                self.pend(fl);
                Err(e)
            }
        }
    }

    fn pend(&mut self, fl: FlushSet) {
        self.pending.merge(fl);
    }

    fn idx(&self, mfn: Mfn) -> Option<usize> {
        if mfn < self.cfg.nr_frames {
            usize::try_from(mfn)
                .ok()
                .filter(|&i| self.frames.get(i).is_some_and(|f| !f.released))
        } else {
            None
        }
    }

    fn info_mut(&mut self, mfn: Mfn) -> Option<&mut PageInfo> {
        let i = self.idx(mfn)?;
        self.frames.get_mut(i).map(|f| &mut f.info)
    }

    fn info(&self, mfn: Mfn) -> Option<PageInfo> {
        self.page_info(mfn).copied()
    }

    fn frame_state(&self, mfn: Mfn) -> FrameState {
        FrameState {
            mfn,
            info: self.info(mfn),
            shared: self.is_shared(mfn),
        }
    }

    fn stamp(&mut self, mfn: Mfn) {
        // set_tlbflush_timestamp(): a TLB entry through the dropped use may be stale.
        self.epoch = self.epoch.wrapping_add(1);
        let e = self.epoch;
        if let Some(f) = self.idx(mfn).and_then(|i| self.frames.get_mut(i)) {
            f.stamp = e;
        }
    }

    // ------------------------------------------------------------------------------
    // Core reference counting (internal: no ledger, no refusal records).
    // ------------------------------------------------------------------------------

    /// `get_page`: one general reference. Shared frames are not counted.
    fn get_page_raw(&mut self, mfn: Mfn) -> Result<(), MmError> {
        if self.is_shared(mfn) {
            return Ok(());
        }
        let pi = self.info_mut(mfn).ok_or(MmError::NotOwned)?;
        pi.refcount = pi.refcount.checked_add(1).ok_or(MmError::CountOverflow)?;
        Ok(())
    }

    /// `put_page`. Nothing is freed at 0: the domain still owns the frame.
    fn put_page_raw(&mut self, mfn: Mfn) {
        if let Some(pi) = self.info_mut(mfn) {
            // Saturating: a release without a reference is an engine bug; never panic.
            pi.refcount = pi.refcount.saturating_sub(1);
        }
    }

    /// `_get_page_type`: one type reference; validates on 0 -> 1 (`validate_page`).
    fn get_type_raw(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        ty: PageType,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        if ty == PageType::None {
            return Err(MmError::InvalidType);
        }
        if self.is_shared(mfn) {
            // Xen's shared pages are permanently PGT_writable_page.
            return if ty == PageType::Writable {
                Ok(())
            } else {
                Err(MmError::BadType {
                    want: ty,
                    have: PageType::Writable,
                })
            };
        }
        let i = self.idx(mfn).ok_or(MmError::NotOwned)?;
        let pi = self.frames.get(i).ok_or(MmError::NotOwned)?.info;
        if pi.type_count > 0 {
            if pi.ty != ty {
                return Err(MmError::BadType {
                    want: ty,
                    have: pi.ty,
                });
            }
            return match pi.validation {
                Validation::Valid => {
                    let c = pi.type_count.checked_add(1).ok_or(MmError::CountOverflow)?;
                    if let Some(f) = self.frames.get_mut(i) {
                        f.info.type_count = c;
                    }
                    Ok(())
                }
                // A preempted validation (PGT_partial): take its type reference over and
                // validate on from where it stopped. A table whose validation runs in
                // this very operation is "validate locked" instead.
                Validation::Partial { next_slot } if !self.busy.contains(&mfn) => {
                    // A stopped teardown's child at `next_slot` (`partial_set`) is
                    // re-got by the validation like any entry from `next_slot` on: its
                    // partial state is taken over there if still there.
                    if let Some(f) = self.frames.get_mut(i) {
                        f.partial_set = false;
                    }
                    self.validate(mem, mfn, ty, usize::from(next_slot), true, fl)
                }
                _ => Err(MmError::NotValidated),
            };
        }

        // Type count 0 -> 1: a type change is allowed. A different type may leave stale
        // TLB entries (a writable mapping of a future pagetable, or paging-structure
        // caches of a former one): flush unless a flush happened since the last drop.
        let changed = pi.ty != ty;
        let stale = self.frames.get(i).map_or(0, |f| f.stamp) > self.last_flush;
        let before = pi;
        if let Some(p) = self.frames.get_mut(i).map(|f| &mut f.info) {
            p.type_count = 1;
            if changed {
                p.ty = ty;
                p.validation = Validation::Unvalidated;
            }
        }
        let needs = ty.needs_validation()
            && self.frames.get(i).map(|f| f.info.validation) != Some(Validation::Valid);
        if needs {
            match self.validate(mem, mfn, ty, 0, false, fl) {
                Ok(()) => {}
                Err(MmError::Restart) => {
                    // The frame stays typed (partially): the flush its type change needs
                    // cannot wait for the validation to finish.
                    if changed && stale {
                        self.stats.type_change_flushes += 1;
                        self.pending.all_vcpus = true;
                        self.pending.local_all = true;
                    }
                    return Err(MmError::Restart);
                }
                Err(e) => {
                    // validate_page() failure: the frame returns to its previous state
                    // (Xen resets type_info to 0; restoring is the same up to sticky
                    // types).
                    if let Some(p) = self.frames.get_mut(i).map(|f| &mut f.info) {
                        *p = PageInfo {
                            refcount: p.refcount,
                            pinned: p.pinned,
                            ..before
                        };
                    }
                    return Err(e);
                }
            }
        }
        if let Some(f) = self.frames.get_mut(i) {
            f.info.validation = Validation::Valid;
        }
        if changed && stale {
            self.stats.type_change_flushes += 1;
            fl.all_vcpus = true;
            fl.local_all = true;
        }
        Ok(())
    }

    /// `validate_page`: audits `mfn` as `ty` from slot `start`, with its type count at 1.
    /// `resumed`: the type reference was taken over from a partial state, whose general
    /// reference is dropped once the validation ends either way. On `Restart` the frame
    /// is left `Partial` holding its type reference and a general reference
    /// (`get_page_light`); on failure it is unvalidated with nothing held (the caller
    /// restores a first-time frame's previous state).
    fn validate(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        ty: PageType,
        start: usize,
        resumed: bool,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        if !self.busy.push(mfn) {
            // Deeper than any pagetable tree: refused rather than tracked partly.
            return Err(MmError::NotValidated);
        }
        let r = match ty {
            PageType::SegDesc => self.validate_segdesc_page(mem, mfn),
            _ => match ty.level() {
                Some(level) => self.promote_table(mem, mfn, level, start, fl),
                None => Err(MmError::InvalidType),
            },
        };
        self.busy.pop();
        match r {
            Ok(()) => {
                if resumed {
                    self.put_page_raw(mfn);
                }
                if let Some(p) = self.info_mut(mfn) {
                    p.validation = Validation::Valid;
                    // From now on a base pointer or a parent entry can make walks reach
                    // the frame as a table.
                    p.was_pagetable |= ty.is_pagetable();
                }
                if ty.is_pagetable() {
                    self.stats.promotions += 1;
                }
                Ok(())
            }
            Err(MmError::Restart) => {
                if resumed {
                    return Err(MmError::Restart); // The partial state keeps its ref.
                }
                if let Err(e) = self.get_page_raw(mfn) {
                    // No general reference left for the partial state: undo it all.
                    let upto = match self.info(mfn).map(|p| p.validation) {
                        Some(Validation::Partial { next_slot }) => usize::from(next_slot),
                        _ => 0,
                    };
                    if let Some(level) = ty.level() {
                        self.free_table(mem, mfn, level, upto);
                    }
                    if let Some(p) = self.info_mut(mfn) {
                        p.validation = Validation::Unvalidated;
                    }
                    return Err(e);
                }
                Err(MmError::Restart)
            }
            Err(e) => {
                if resumed {
                    // The partial state ends: its type and general references go.
                    self.put_page_raw(mfn);
                    if let Some(p) = self.info_mut(mfn) {
                        p.type_count = 0;
                        p.validation = Validation::Unvalidated;
                    }
                    self.stamp(mfn);
                }
                Err(e)
            }
        }
    }

    /// `_put_page_type` without preemption: on 1 -> 0 a pagetable is torn down at once
    /// (`free_lN_table`) and loses its validation. For the puts that cannot be
    /// continued: the undo of a failed validation, transient writable references, and
    /// references that are never a table's last (L1 entries' writable references).
    fn put_type_raw(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) {
        let _ = self.put_type(mem, mfn, false);
    }

    /// `_put_page_type` (with `PTF_preemptible` when `preemptible`). On 1 -> 0 a
    /// pagetable is torn down from its last held slot down to slot 0; a preemptible
    /// teardown that runs out of budget (or whose child's teardown did) stops with
    /// `Restart`, leaving the frame `Partial { next_slot }` (slots below `next_slot` still
    /// hold their references; `partial_set` when it stopped inside the child at
    /// `next_slot`) with its type count still 1. The caller's general reference then
    /// becomes the partial state's own (Xen's `get_page_light`): on `Restart` the caller
    /// must not drop it, and the outermost caller keeps the frame in the vCPU's
    /// `old_guest_table` ([`Mm::put_deferred`]). A frame already `Partial` is continued
    /// (its stopped child first, then from its `next_slot` down); the caller's general
    /// reference is then the partial state's.
    fn put_type(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        preemptible: bool,
    ) -> Result<(), MmError> {
        let Some(pi) = self.info(mfn) else {
            return Ok(());
        };
        if pi.type_count == 0 {
            return Ok(()); // Engine bug; never underflow.
        }
        if pi.type_count > 1 {
            if let Some(p) = self.info_mut(mfn) {
                p.type_count -= 1;
            }
            return Ok(());
        }
        if let Some(level) = pi.ty.level() {
            let upto = match pi.validation {
                Validation::Valid => ENTRIES,
                Validation::Partial { next_slot } => usize::from(next_slot),
                Validation::Unvalidated => 0,
            };
            // The type count stays 1 during teardown (Xen's "validate locked" state),
            // so nothing can re-reference the frame meanwhile.
            if let Some(p) = self.info_mut(mfn) {
                p.validation = Validation::Unvalidated;
            }
            if let Err(stop) = self.demote_table(mem, mfn, level, upto, preemptible) {
                if let Some(f) = self.idx(mfn).and_then(|i| self.frames.get_mut(i)) {
                    f.info.validation = Validation::Partial {
                        next_slot: stop.next_slot,
                    };
                    f.partial_set = stop.in_child;
                }
                return Err(MmError::Restart);
            }
        }
        if let Some(p) = self.info_mut(mfn) {
            p.type_count = 0;
        }
        self.stamp(mfn);
        Ok(())
    }

    /// `put_page_and_type_preemptible`: as [`Mm::put_page_and_type_raw`], but a
    /// teardown may stop with `Restart` (the frame is then left partial, and the general
    /// reference stays with it; the outermost caller remembers it, see
    /// [`Mm::put_deferred`]).
    fn put_page_and_type_preemptible(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
    ) -> Result<(), MmError> {
        if self.is_shared(mfn) {
            return Ok(());
        }
        self.put_type(mem, mfn, true)?;
        self.put_page_raw(mfn);
        Ok(())
    }

    /// Xen's `PTF_defer` put of an old table (the unpinned table, the old base pointer,
    /// an entry update's old target): `put_page_and_type_preemptible`, and a teardown
    /// that stops part-way goes to the current vCPU's `old_guest_table` slot, to be
    /// finished by [`Mm::put_old_guest_table`]; the operation itself is done. The slot
    /// is empty here: every operation that can get here finished it first
    /// ([`Mm::old_guest_table_first`]), and each puts at most one old table. Were it not
    /// (an engine bug), the put runs to its end rather than lose the slot's table.
    fn put_deferred(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) {
        let v = self.cur_vcpu;
        if self.old_guest_table.get(v).is_none_or(|s| s.is_some()) {
            self.put_page_and_type_raw(mem, mfn);
            return;
        }
        if self.put_page_and_type_preemptible(mem, mfn) == Err(MmError::Restart) {
            if let Some(s) = self.old_guest_table.get_mut(v) {
                *s = Some(mfn);
            }
        }
    }

    /// A table in teardown whose partial state nobody has taken over: `Partial`, type
    /// count 1 (the partial state's own reference), a pagetable, unpinned, and not being
    /// validated in this very operation. Such a frame's type and general references are
    /// its partial state's, and continuing its teardown puts them.
    fn teardown_claimable(&self, mfn: Mfn) -> bool {
        self.info(mfn).is_some_and(|p| {
            matches!(p.validation, Validation::Partial { .. })
                && p.type_count == 1
                && p.ty.is_pagetable()
                && !p.pinned
        }) && !self.busy.contains(&mfn)
    }

    /// `get_page_and_type`.
    fn get_page_and_type_raw(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        ty: PageType,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        self.get_page_raw(mfn)?;
        if let Err(e) = self.get_type_raw(mem, mfn, ty, fl) {
            self.put_page_raw(mfn);
            return Err(e);
        }
        Ok(())
    }

    /// `put_page_and_type`.
    fn put_page_and_type_raw(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) {
        if self.is_shared(mfn) {
            return;
        }
        self.put_type_raw(mem, mfn);
        self.put_page_raw(mfn);
    }

    // ------------------------------------------------------------------------------
    // Entries: get_page_from_lNe / put_page_from_lNe.
    // ------------------------------------------------------------------------------

    /// Flags check shared by validation and `mod_lN_entry`.
    fn check_flags(level: Level, e: u64) -> Result<(), MmError> {
        let bad = e & disallow_mask(level);
        if bad == 0 {
            return Ok(());
        }
        if matches!(level, Level::L2 | Level::L3) && bad & PAGE_PSE != 0 {
            return Err(MmError::Superpage { level });
        }
        Err(MmError::BadFlags { level, bits: bad })
    }

    /// `get_page_from_l1e` (present entry): general ref on the target; RW also takes a
    /// `Writable` type ref, which fails while the target is a pagetable/descriptor page.
    fn get_page_from_l1e(
        &mut self,
        mem: &mut dyn FrameAccess,
        e: u64,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        Self::check_flags(Level::L1, e)?;
        let t = entry_mfn(e);
        if self.is_shared(t) {
            return Ok(());
        }
        if self.idx(t).is_none() {
            return Err(if t >= self.cfg.max_machine_frame {
                MmError::IoSpace
            } else {
                MmError::ForeignMapping
            });
        }
        self.get_page_raw(t)?;
        if e & PAGE_RW != 0 {
            if let Err(err) = self.get_type_raw(mem, t, PageType::Writable, fl) {
                self.put_page_raw(t);
                return Err(match err {
                    MmError::BadType { have, .. } => MmError::NotWritable { have },
                    MmError::NotValidated => MmError::NotWritable {
                        have: self.info(t).map_or(PageType::None, |p| p.ty),
                    },
                    other => other,
                });
            }
        }
        Ok(())
    }

    /// `put_page_from_l1e`.
    fn put_page_from_l1e(&mut self, mem: &mut dyn FrameAccess, e: u64) {
        if !present(e) {
            return;
        }
        let t = entry_mfn(e);
        if self.is_shared(t) || self.idx(t).is_none() {
            return;
        }
        if e & PAGE_RW != 0 {
            self.put_type_raw(mem, t);
        }
        self.put_page_raw(t);
    }

    /// `get_page_from_l2e` / `l3e` / `l4e` (present entry of a table at `level`): the
    /// target must be typeable as the next lower level. Without linear pagetables an
    /// entry pointing at its own table, or at any table of the same level, fails here on
    /// the type check.
    fn get_page_from_upper(
        &mut self,
        mem: &mut dyn FrameAccess,
        level: Level,
        e: u64,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        Self::check_flags(level, e)?;
        let Some(child) = child_level(level) else {
            return Err(MmError::InvalidType);
        };
        self.get_page_and_type_raw(mem, entry_mfn(e), PageType::from_level(child), fl)
    }

    /// `put_page_from_l2e` / `l3e` / `l4e`. An entry pointing at its own table holds no
    /// reference (Xen skips it; here it cannot even be validated).
    fn put_page_from_upper(&mut self, mem: &mut dyn FrameAccess, table: Mfn, e: u64) {
        if !present(e) || entry_mfn(e) == table {
            return;
        }
        self.put_page_and_type_raw(mem, entry_mfn(e));
    }

    /// `put_page_from_lNe` with `PTF_preemptible`: `Restart` when the target's teardown
    /// stopped part-way (it is then partial and queued; the entry's general reference
    /// went to its partial state).
    fn put_page_from_upper_preemptible(
        &mut self,
        mem: &mut dyn FrameAccess,
        table: Mfn,
        e: u64,
    ) -> Result<(), MmError> {
        if !present(e) || entry_mfn(e) == table {
            return Ok(());
        }
        self.put_page_and_type_preemptible(mem, entry_mfn(e))
    }

    fn get_page_from_entry(
        &mut self,
        mem: &mut dyn FrameAccess,
        level: Level,
        e: u64,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        match level {
            Level::L1 => self.get_page_from_l1e(mem, e, fl),
            _ => self.get_page_from_upper(mem, level, e, fl),
        }
    }

    // ------------------------------------------------------------------------------
    // Validation and teardown.
    // ------------------------------------------------------------------------------

    /// `promote_l1_table` .. `promote_l4_table` from slot `start`: takes every present
    /// entry's references and writes back the `adjust_guest_lNe` form. On failure at slot
    /// k, slots < k are released and the error returned. L2 and L3 tables check the
    /// preemption budget between entries (never before their first one in this call, so
    /// every call makes progress) and stop with `Restart`, as they do when a child table
    /// stops: the frame is then left `Partial { next_slot }` with slots below it held.
    /// An L4 skips the hole slots and gets `hole_l4` written into them once valid
    /// (`init_xen_l4_slots`).
    fn promote_table(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        level: Level,
        start: usize,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        let preemptible = matches!(level, Level::L2 | Level::L3);
        // A frame never validated as a pagetable cannot be reached by any walk until
        // this validation ends (walks follow validated tables only), so its write-backs
        // need not be made visible to walks now: the VMM then writes memory only instead
        // of posting each store for the shim (the bulk of a large guest's boot: Linux's
        // direct map is 512 fresh L1 entries per 2 MiB, every one adjusted).
        let unwalked = self.info(mfn).is_some_and(|p| !p.was_pagetable);
        let write = |mem: &mut dyn FrameAccess, slot: usize, value: u64| {
            if unwalked {
                mem.write_entry_unwalked(mfn, slot, value);
            } else {
                mem.write_entry(mfn, slot, value);
            }
        };
        for slot in start..ENTRIES {
            if let Some(p) = self.info_mut(mfn) {
                p.validation = Validation::Partial {
                    next_slot: slot as u16,
                };
            }
            if preemptible && slot > start && self.preempt_due() {
                return Err(MmError::Restart);
            }
            if level == Level::L4 && is_hole_slot(slot) {
                continue;
            }
            self.tick(1);
            let e = rd(mem, mfn, slot);
            if !present(e) {
                continue;
            }
            match self.get_page_from_entry(mem, level, e, fl) {
                Ok(()) => {}
                Err(MmError::Restart) => return Err(MmError::Restart),
                Err(err) => {
                    self.note_fail(mem, mfn, level, slot, None, e, err);
                    self.free_table(mem, mfn, level, slot);
                    if let Some(p) = self.info_mut(mfn) {
                        p.validation = Validation::Unvalidated;
                    }
                    return Err(err);
                }
            }
            let adj = adjust_guest_entry(level, e);
            if adj != e {
                write(mem, slot, adj);
            }
        }
        if level == Level::L4 {
            for (k, slot) in HOLE_L4_SLOTS.enumerate() {
                let want = self.cfg.hole_l4.get(k).copied().unwrap_or(0);
                if rd(mem, mfn, slot) != want {
                    write(mem, slot, want);
                }
            }
        }
        Ok(())
    }

    /// `free_l1_table` .. `free_l4_table` (Xen's `demote_lN_table`) without preemption:
    /// releases what slots `< upto` hold (the undo of a failed validation).
    fn free_table(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn, level: Level, upto: usize) {
        let _ = self.demote_table(mem, mfn, level, upto, false);
    }

    /// `demote_l1_table` .. `demote_l4_table`: releases what slots `< upto` hold, from
    /// the highest slot down (Xen's `nr_validated_ptes` counting down). With
    /// `preemptible`, an L2 or L3 checks the budget between entries (never before its
    /// first one in this call, so every call makes progress) and a child table whose own
    /// teardown stopped stops this one too (so does an L4, which, as Xen's, does not check
    /// the budget itself). `Err(stop)`: stopped, slots `< stop.next_slot` still hold
    /// their references; `stop.in_child`: a child that stopped in slot `next_slot` took
    /// that slot's references into its partial state (the frame's `partial_set`). A
    /// frame whose `partial_set` is set continues that child first (Xen's
    /// `PTF_partial_set` on the resumed slot), if it is still in teardown (a getter may
    /// have taken its partial state over meanwhile: then the slot holds nothing more).
    /// An L1 counts its 512 entries whole and never stops.
    fn demote_table(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        level: Level,
        upto: usize,
        preemptible: bool,
    ) -> Result<(), Stop> {
        let can_stop = preemptible && matches!(level, Level::L2 | Level::L3);
        if level == Level::L1 {
            self.tick(ENTRIES as u32);
        }
        let mut slot = upto.min(ENTRIES);
        let mut first = true;
        let partial_set = self
            .idx(mfn)
            .and_then(|i| self.frames.get_mut(i))
            .map(|f| core::mem::take(&mut f.partial_set))
            .unwrap_or(false);
        if partial_set && level != Level::L1 && slot < ENTRIES {
            let e = rd(mem, mfn, slot);
            let child = entry_mfn(e);
            if present(e) && child != mfn && self.teardown_claimable(child) {
                self.tick(1);
                if preemptible {
                    if self.put_page_and_type_preemptible(mem, child).is_err() {
                        return Err(Stop {
                            next_slot: slot as u16,
                            in_child: true,
                        });
                    }
                } else {
                    self.put_page_and_type_raw(mem, child);
                }
                first = false;
            }
        }
        while slot > 0 {
            if can_stop && !first && self.preempt_due() {
                return Err(Stop {
                    next_slot: slot as u16,
                    in_child: false,
                });
            }
            first = false;
            slot -= 1;
            if level == Level::L4 && is_hole_slot(slot) {
                continue;
            }
            let e = rd(mem, mfn, slot);
            match level {
                Level::L1 => self.put_page_from_l1e(mem, e),
                _ => {
                    self.tick(1);
                    if !preemptible {
                        self.put_page_from_upper(mem, mfn, e);
                    } else if self.put_page_from_upper_preemptible(mem, mfn, e).is_err() {
                        return Err(Stop {
                            next_slot: slot as u16,
                            in_child: true,
                        });
                    }
                }
            }
        }
        self.stats.teardowns += 1;
        Ok(())
    }

    /// `validate_segdesc_page`: every descriptor must pass `check_descriptor`; fixups
    /// are written back as Xen does.
    fn validate_segdesc_page(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
    ) -> Result<(), MmError> {
        // Check everything first, then write the fixups: a refused frame stays
        // untouched (Xen writes fixups as it goes; harmless either way).
        for i in 0..ENTRIES {
            if check_descriptor(rd(mem, mfn, i)).is_none() {
                return Err(MmError::BadDescriptor { index: i as u16 });
            }
        }
        for i in 0..ENTRIES {
            let d = rd(mem, mfn, i);
            if let Some(fixed) = check_descriptor(d) {
                if fixed != d {
                    mem.write_entry(mfn, i, fixed);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------
    // Diagnostics.
    // ------------------------------------------------------------------------------

    /// Remembers the innermost failing entry (outer levels see it already set).
    #[allow(clippy::too_many_arguments)]
    fn note_fail(
        &mut self,
        mem: &dyn FrameAccess,
        table: Mfn,
        level: Level,
        slot: usize,
        old: Option<u64>,
        new: u64,
        err: MmError,
    ) {
        if self.fail.is_some() {
            return;
        }
        let target = entry_mfn(new);
        let wmap = match err {
            MmError::BadType {
                have: PageType::Writable,
                want,
            } if want != PageType::Writable => self.find_writable_mapping(mem, target),
            _ => None,
        };
        self.fail = Some(FailCtx {
            cause: EntryCause {
                table,
                level,
                slot: slot as u16,
                table_state: self.frame_state(table),
                old,
                new,
                target: self.frame_state(target),
            },
            wmap,
        });
    }

    /// Slots of `table` whose references are held right now.
    fn held_slots(&self, table: Mfn, want: PageType) -> usize {
        match self.info(table) {
            Some(p) if p.ty == want && p.type_count > 0 => match p.validation {
                Validation::Valid => ENTRIES,
                Validation::Partial { next_slot } => usize::from(next_slot),
                Validation::Unvalidated => 0,
            },
            _ => 0,
        }
    }

    /// A live table of `level` with a present entry pointing at `child`.
    fn find_parent(&self, mem: &dyn FrameAccess, child: Mfn, level: Level) -> Option<(Mfn, usize)> {
        let ty = PageType::from_level(level);
        for t in 0..self.cfg.nr_frames.min(self.frames.len() as u64) {
            for slot in 0..self.held_slots(t, ty) {
                if level == Level::L4 && is_hole_slot(slot) {
                    continue;
                }
                let e = rd(mem, t, slot);
                if present(e) && entry_mfn(e) == child {
                    return Some((t, slot));
                }
            }
        }
        None
    }

    /// Finds an RW L1 entry mapping `target`, and a virtual address it maps at.
    pub fn find_writable_mapping(
        &self,
        mem: &dyn FrameAccess,
        target: Mfn,
    ) -> Option<WritableMapping> {
        for l1 in 0..self.cfg.nr_frames.min(self.frames.len() as u64) {
            for slot in 0..self.held_slots(l1, PageType::L1) {
                let e = rd(mem, l1, slot);
                if e & (PAGE_PRESENT | PAGE_RW) == PAGE_PRESENT | PAGE_RW && entry_mfn(e) == target
                {
                    return Some(WritableMapping {
                        l1,
                        slot: slot as u16,
                        va: self.va_of(mem, l1, slot),
                    });
                }
            }
        }
        None
    }

    /// Composes a VA for `slot` of L1 `l1` by walking up through live L2/L3/L4 tables.
    fn va_of(&self, mem: &dyn FrameAccess, l1: Mfn, slot: usize) -> Option<u64> {
        let mut idx = [0usize; 4];
        idx[0] = slot;
        let mut child = l1;
        let mut level = Level::L1;
        for k in 1..4 {
            let parent = parent_level(level)?;
            let (p, s) = self.find_parent(mem, child, parent)?;
            *idx.get_mut(k)? = s;
            child = p;
            level = parent;
        }
        Some(compose_va(idx[3], idx[2], idx[1], idx[0]))
    }

    /// Records a refusal (ring of the last 64).
    fn refuse(
        &mut self,
        mem: &dyn FrameAccess,
        op: MmOp,
        frame: Mfn,
        slot: Option<u16>,
        value: Option<u64>,
        error: MmError,
    ) {
        let ctx = self.fail.take();
        let mut wmap = ctx.and_then(|c| c.wmap);
        // A top-level bad type (pin, base pointer, set_gdt of a frame mapped RW).
        if wmap.is_none() && ctx.is_none() {
            if let MmError::BadType {
                have: PageType::Writable,
                want,
            } = error
            {
                if want != PageType::Writable {
                    wmap = self.find_writable_mapping(mem, frame);
                }
            }
        }
        self.refusal_count += 1;
        let r = Refusal {
            seq: self.refusal_count,
            rip: self.rip,
            op,
            frame,
            slot,
            value,
            error,
            frame_state: self.frame_state(frame),
            cause: ctx.map(|c| c.cause),
            writable_mapping: wmap,
        };
        self.refusals.push(r);
    }

    /// Wraps an operation: clears the failure context, records a refusal on error.
    fn finish<T>(
        &mut self,
        mem: &dyn FrameAccess,
        op: MmOp,
        frame: Mfn,
        slot: Option<u16>,
        value: Option<u64>,
        r: Result<T, MmError>,
    ) -> Result<T, MmError> {
        match r {
            Ok(v) => {
                self.fail = None;
                Ok(v)
            }
            Err(MmError::Restart) => {
                // Preempted, not refused: resumed when the operation comes again.
                self.fail = None;
                self.stats.restarts += 1;
                Err(MmError::Restart)
            }
            Err(e) => {
                self.refuse(mem, op, frame, slot, value, e);
                Err(e)
            }
        }
    }

    // ------------------------------------------------------------------------------
    // Public Xen-named core (references held by the engine; kept in the ledger).
    // ------------------------------------------------------------------------------

    /// Counts `general` and `typed` references held through the public API on `mfn`
    /// (a RAM frame of the domain: every caller has just taken the references, which
    /// only such a frame gives).
    fn hold(&mut self, mfn: Mfn, general: u32, typed: u32) {
        if let Some(f) = self.idx(mfn).and_then(|i| self.frames.get_mut(i)) {
            f.held.general += general;
            f.held.typed += typed;
        }
    }

    fn held_get(&self, mfn: Mfn) -> Held {
        self.idx(mfn)
            .and_then(|i| self.frames.get(i))
            .map_or_else(Held::default, |f| f.held)
    }

    fn held_drop(&mut self, mfn: Mfn, general: bool, typed: bool) {
        if let Some(f) = self.idx(mfn).and_then(|i| self.frames.get_mut(i)) {
            if general {
                f.held.general = f.held.general.saturating_sub(1);
            }
            if typed {
                f.held.typed = f.held.typed.saturating_sub(1);
            }
        }
    }

    /// `get_page`: a general reference held by the engine. Shared frames succeed
    /// without counting.
    pub fn get_page(&mut self, mfn: Mfn) -> Result<(), MmError> {
        self.begin();
        let r = self.get_page_raw(mfn);
        if r.is_ok() && !self.is_shared(mfn) {
            self.hold(mfn, 1, 0);
        }
        let Err(e) = r else { return Ok(()) };
        // No memory access needed to describe this refusal.
        self.refuse(&NoMem, MmOp::GetPage, mfn, None, None, e);
        Err(e)
    }

    /// `put_page`: releases a general reference taken with [`Mm::get_page`].
    pub fn put_page(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) -> FlushSet {
        self.begin();
        if self.is_shared(mfn) {
            return FlushSet::default();
        }
        if self.held_get(mfn).general <= self.held_get(mfn).typed {
            // Every typed hold also holds a general ref (get_page_and_type); a bare
            // put_page may only drop the surplus.
            self.refuse(mem, MmOp::PutRef, mfn, None, None, MmError::NotHeld);
            return FlushSet::default();
        }
        self.held_drop(mfn, true, false);
        self.put_page_raw(mfn);
        FlushSet::default()
    }

    /// `get_page_type`: a type reference held by the engine (the caller also holds a
    /// general reference, as in Xen). Validates on the 0 -> 1 transition.
    pub fn get_page_type(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        ty: PageType,
    ) -> Result<FlushSet, MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = self.get_type_raw(mem, mfn, ty, &mut fl);
        if r.is_ok() && !self.is_shared(mfn) {
            self.hold(mfn, 0, 1);
        }
        let r = self.flush_or_pend(r, fl);
        self.finish(mem, MmOp::GetPageType, mfn, None, None, r)
    }

    /// `put_page_type`: releases a type reference taken with [`Mm::get_page_type`]; tears
    /// a pagetable down on 1 -> 0.
    pub fn put_page_type(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) -> FlushSet {
        self.begin();
        if self.is_shared(mfn) {
            return FlushSet::default();
        }
        if self.held_get(mfn).typed == 0 {
            self.refuse(mem, MmOp::PutRef, mfn, None, None, MmError::NotHeld);
            return FlushSet::default();
        }
        self.held_drop(mfn, false, true);
        self.put_type_raw(mem, mfn);
        FlushSet::default()
    }

    /// `get_page_and_type`.
    pub fn get_page_and_type(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        ty: PageType,
    ) -> Result<FlushSet, MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = self.get_page_and_type_raw(mem, mfn, ty, &mut fl);
        if r.is_ok() && !self.is_shared(mfn) {
            self.hold(mfn, 1, 1);
        }
        let r = self.flush_or_pend(r, fl);
        self.finish(mem, MmOp::GetPageType, mfn, None, None, r)
    }

    /// `put_page_and_type`.
    pub fn put_page_and_type(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) -> FlushSet {
        self.begin();
        if self.is_shared(mfn) {
            return FlushSet::default();
        }
        let h = self.held_get(mfn);
        if h.typed == 0 || h.general == 0 {
            self.refuse(mem, MmOp::PutRef, mfn, None, None, MmError::NotHeld);
            return FlushSet::default();
        }
        self.held_drop(mfn, true, true);
        self.put_page_and_type_raw(mem, mfn);
        FlushSet::default()
    }

    // ------------------------------------------------------------------------------
    // Hypercall operations.
    // ------------------------------------------------------------------------------

    /// Whether a teardown was left part-way and must be finished with
    /// [`Mm::put_old_guest_table`] (Xen: `curr->arch.old_guest_table != NULL`). An MMU
    /// hypercall batch stops (continuation) before its next record while this holds.
    /// Asks about the current vCPU's slot ([`Mm::set_current_vcpu`]; vCPU 0 unless set).
    pub fn has_deferred_put(&self) -> bool {
        self.has_deferred_put_of(self.cur_vcpu)
    }

    /// The current vCPU's `old_guest_table`: the table whose teardown is left part-way.
    pub fn old_guest_table(&self) -> Option<Mfn> {
        self.old_guest_table_of(self.cur_vcpu)
    }

    /// vCPU `vcpu`'s `old_guest_table` (Xen's `v->arch.old_guest_table`).
    pub fn old_guest_table_of(&self, vcpu: usize) -> Option<Mfn> {
        self.old_guest_table.get(vcpu).copied().flatten()
    }

    /// The frames whose teardown is deferred on the current vCPU: its `old_guest_table`
    /// (at most one; the tables the teardown stopped in are reached through it).
    pub fn deferred_puts(&self) -> impl Iterator<Item = Mfn> + '_ {
        self.deferred_puts_of(self.cur_vcpu)
    }

    /// [`Mm::has_deferred_put`] of vCPU `vcpu` (Xen: `v->arch.old_guest_table != NULL`).
    pub fn has_deferred_put_of(&self, vcpu: usize) -> bool {
        self.old_guest_table_of(vcpu).is_some()
    }

    /// [`Mm::deferred_puts`] of vCPU `vcpu`.
    pub fn deferred_puts_of(&self, vcpu: usize) -> impl Iterator<Item = Mfn> + '_ {
        self.old_guest_table_of(vcpu).into_iter()
    }

    /// Whether any vCPU has a deferred teardown left (for domain teardown, which
    /// finishes every vCPU's slot as Xen's `vcpu_destroy_pagetables` does).
    pub fn any_deferred_put(&self) -> bool {
        self.old_guest_table.iter().any(Option::is_some)
    }

    /// Sets the vCPU later operations run for (Xen's `current`): an operation whose
    /// teardown runs out of budget leaves it in this vCPU's `old_guest_table` slot,
    /// [`Mm::put_old_guest_table`] and [`Mm::has_deferred_put`] work on this vCPU's
    /// slot, and [`Mm::set_root`] records the base pointers as this vCPU's (TLB flush
    /// scope of L4 updates). 0 until set: single-vCPU callers never call it.
    pub fn set_current_vcpu(&mut self, vcpu: usize) {
        self.cur_vcpu = vcpu;
    }

    /// The vCPU set with [`Mm::set_current_vcpu`].
    pub fn current_vcpu(&self) -> usize {
        self.cur_vcpu
    }

    /// The base pointers vCPU `vcpu` holds through [`Mm::set_root`] (kernel and user, in
    /// load order).
    pub fn loaded_roots_of(&self, vcpu: usize) -> &[Mfn] {
        self.loaded_roots.get(vcpu).map_or(&[], |r| r.as_slice())
    }

    /// `put_old_guest_table`: finishes the teardowns an unpin, base-pointer switch or
    /// entry update left part-way (under the budget, like every operation). The engine
    /// calls it first on entry to every MMU hypercall; `Restart` means work is left and
    /// the hypercall is to be continued (re-entered) before it does anything else.
    /// Never refused. Each call makes progress: a resumed teardown always releases at
    /// least one entry. Works on the current vCPU's list only ([`Mm::set_current_vcpu`]):
    /// as in Xen, a vCPU never finishes (or waits for) another vCPU's deferred puts.
    pub fn put_old_guest_table(&mut self, mem: &mut dyn FrameAccess) -> Result<(), MmError> {
        self.begin();
        let r = self.old_guest_table_first(mem);
        if r.is_err() {
            self.stats.restarts += 1;
        }
        r
    }

    /// The body of [`Mm::put_old_guest_table`], under the current operation's budget:
    /// every operation that may start a teardown, or may meet the tables of one, calls
    /// it first and, on `Restart`, returns `Restart` having done nothing else (Xen's MMU
    /// hypercalls and `arch_set_info_guest` call `put_old_guest_table(curr)` first). So
    /// a vCPU has at most one teardown left part-way, and the work of every call is
    /// bounded by the budget, however large the tree being torn down.
    fn old_guest_table_first(&mut self, mem: &mut dyn FrameAccess) -> Result<(), MmError> {
        let v = self.cur_vcpu;
        let Some(m) = self.old_guest_table_of(v) else {
            return Ok(());
        };
        // The partial state's type and general references are the ones put here; a
        // frame no longer in teardown (its validation was resumed and completed
        // meanwhile, the getter taking those references over, or another vCPU's
        // teardown finished it through a parent) holds nothing for the slot.
        if self.teardown_claimable(m) && self.put_page_and_type_preemptible(mem, m).is_err() {
            return Err(MmError::Restart);
        }
        if let Some(s) = self.old_guest_table.get_mut(v) {
            *s = None;
        }
        Ok(())
    }

    /// `MMUEXT_PIN_L{1,2,3,4}_TABLE` (`do_mmuext_op` `pin_page`): takes a general and a
    /// type reference (validating the tree below on first use) and sets `pinned`.
    /// Pinning a pinned frame: -EINVAL, counts unchanged.
    pub fn pin_table(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        level: Level,
    ) -> Result<FlushSet, MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = self
            .old_guest_table_first(mem)
            .and_then(|()| self.pin_inner(mem, mfn, level, &mut fl));
        let r = self.flush_or_pend(r, fl);
        self.finish(mem, MmOp::PinTable(level), mfn, None, None, r)
    }

    fn pin_inner(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        level: Level,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        self.get_page_and_type_raw(mem, mfn, PageType::from_level(level), fl)?;
        let Some(p) = self.info_mut(mfn) else {
            return Err(MmError::NotOwned);
        };
        if p.pinned {
            // Xen: test_and_set_bit(_PGT_pinned) failed -> pin_drop.
            self.put_page_and_type_raw(mem, mfn);
            return Err(MmError::AlreadyPinned);
        }
        p.pinned = true;
        Ok(())
    }

    /// `MMUEXT_UNPIN_TABLE`: clears `pinned` and drops the pin's references; the table
    /// is torn down only if that was its last type reference (a table still in use as a
    /// base pointer or referenced by another table stays typed and validated).
    pub fn unpin_table(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
    ) -> Result<FlushSet, MmError> {
        self.begin();
        if let Err(e) = self.old_guest_table_first(mem) {
            return self.finish(mem, MmOp::UnpinTable, mfn, None, None, Err(e));
        }
        let r = match self.info_mut(mfn) {
            None => Err(MmError::NotOwned),
            Some(p) if !p.pinned => Err(MmError::NotPinned),
            Some(p) => {
                // The pin is gone first (Xen's test_and_clear_bit(_PGT_pinned)): a
                // teardown that stops part-way is finished by `put_old_guest_table`,
                // never by unpinning again.
                p.pinned = false;
                // A teardown that stops part-way goes to `old_guest_table`; the unpin
                // is done.
                self.put_deferred(mem, mfn);
                Ok(FlushSet::default())
            }
        };
        self.finish(mem, MmOp::UnpinTable, mfn, None, None, r)
    }

    /// `MMUEXT_NEW_BASEPTR` / `MMUEXT_NEW_USER_BASEPTR` (`new_guest_cr3`): takes
    /// `get_page_and_type(new, L4)` first, then releases `old` (a reference previously
    /// taken by this function). Same frame: nothing to do. The CR3 load itself is the
    /// caller's.
    pub fn set_root(
        &mut self,
        mem: &mut dyn FrameAccess,
        old: Option<Mfn>,
        new: Option<Mfn>,
    ) -> Result<FlushSet, MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let frame = new.or(old).unwrap_or(0);
        let r = self
            .old_guest_table_first(mem)
            .and_then(|()| self.set_root_inner(mem, old, new, &mut fl));
        let r = self.flush_or_pend(r, fl);
        self.finish(mem, MmOp::SetRoot, frame, None, None, r)
    }

    fn set_root_inner(
        &mut self,
        mem: &mut dyn FrameAccess,
        old: Option<Mfn>,
        new: Option<Mfn>,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        if old == new {
            return Ok(());
        }
        if let Some(o) = old {
            let h = self.held_get(o);
            let is_l4 = self.info(o).is_some_and(|p| p.ty == PageType::L4);
            if h.general == 0 || h.typed == 0 || !is_l4 {
                return Err(MmError::NotHeld);
            }
        }
        if let Some(n) = new {
            self.get_page_and_type_raw(mem, n, PageType::L4, fl)?;
            self.hold(n, 1, 1);
        }
        let v = self.cur_vcpu;
        match self.loaded_roots.get_mut(v) {
            Some(r) => {
                if let Some(o) = old {
                    if let Some(k) = r.iter().position(|&x| x == o) {
                        r.remove(k);
                    }
                }
                if let Some(n) = new {
                    if !r.push(n) {
                        self.roots_overflow = true;
                    }
                }
            }
            None => self.roots_overflow |= new.is_some(),
        }
        if let Some(o) = old {
            self.held_drop(o, true, true);
            // A teardown that stops part-way goes to this vCPU's `old_guest_table`; the
            // new base is loaded either way.
            self.put_deferred(mem, o);
        }
        Ok(())
    }

    /// `MMU_NORMAL_PT_UPDATE` / `MMU_PT_UPDATE_PRESERVE_AD` of entry `slot` of `table`
    /// (`do_mmu_update`): dispatches on the table frame's type. A validated pagetable
    /// goes to `mod_lN_entry`; a writable page, or any frame that can take a transient
    /// `Writable` type reference, gets a plain write; a descriptor page is refused.
    /// `vcpu_roots` are the L4s loaded on the current vCPU (kernel and user); other
    /// vCPUs' base pointers are known from their [`Mm::set_root`] calls and, beyond
    /// that, from the type count (see [`FlushSet::needs_remote`]).
    #[allow(clippy::too_many_arguments)]
    pub fn mod_entry(
        &mut self,
        mem: &mut dyn FrameAccess,
        table: Mfn,
        slot: usize,
        new: u64,
        preserve_ad: bool,
        vcpu_roots: &[Mfn],
    ) -> Result<FlushSet, MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = self.old_guest_table_first(mem).and_then(|()| {
            self.mod_entry_inner(mem, table, slot, new, preserve_ad, vcpu_roots, &mut fl)
        });
        let r = self.flush_or_pend(r, fl);
        let s = u16::try_from(slot).ok();
        self.finish(mem, MmOp::ModEntry, table, s, Some(new), r)
    }

    #[allow(clippy::too_many_arguments)]
    fn mod_entry_inner(
        &mut self,
        mem: &mut dyn FrameAccess,
        table: Mfn,
        slot: usize,
        new: u64,
        preserve_ad: bool,
        vcpu_roots: &[Mfn],
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        if slot >= ENTRIES {
            return Err(MmError::BadOffset);
        }
        let pi = self.info(table).ok_or(MmError::NotOwned)?;
        // Xen's page_lock() succeeds only on a validated frame with type refs.
        if pi.type_count > 0 && pi.validation == Validation::Valid {
            match pi.ty {
                PageType::L1 => return self.mod_l1_entry(mem, table, slot, new, preserve_ad, fl),
                PageType::L2 | PageType::L3 | PageType::L4 => {
                    let level = pi.ty.level().unwrap_or(Level::L2);
                    return self.mod_upper_entry(
                        mem,
                        table,
                        level,
                        slot,
                        new,
                        preserve_ad,
                        vcpu_roots,
                        fl,
                    );
                }
                PageType::Writable => {
                    mem.write_entry(table, slot, new);
                    self.stats.plain_writes += 1;
                    return Ok(());
                }
                PageType::SegDesc | PageType::None => return Err(MmError::SegDescTable),
            }
        }
        // Not lockable: write through a transient writable type reference, which fails
        // while the frame is typed as anything else (e.g. a table being validated).
        self.get_type_raw(mem, table, PageType::Writable, fl)?;
        mem.write_entry(table, slot, new);
        self.stats.plain_writes += 1;
        self.put_type_raw(mem, table);
        Ok(())
    }

    fn write_ad(
        mem: &mut dyn FrameAccess,
        table: Mfn,
        slot: usize,
        old: u64,
        new: u64,
        preserve_ad: bool,
    ) -> u64 {
        // update_intpte(): PRESERVE_AD ORs in the current A/D bits.
        let v = if preserve_ad {
            new | (old & (PAGE_ACCESSED | PAGE_DIRTY))
        } else {
            new
        };
        mem.write_entry(table, slot, v);
        v
    }

    /// `mod_l1_entry`.
    fn mod_l1_entry(
        &mut self,
        mem: &mut dyn FrameAccess,
        table: Mfn,
        slot: usize,
        new: u64,
        preserve_ad: bool,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        let old = rd(mem, table, slot);
        if present(new) {
            if let Err(e) = Self::check_flags(Level::L1, new) {
                self.note_fail(mem, table, Level::L1, slot, Some(old), new, e);
                return Err(e);
            }
            let new = adjust_guest_entry(Level::L1, new);
            if !has_changed(old, new, FASTPATH_FLAG_WHITELIST) {
                // Fast path: same frame and same safety-relevant bits; refs unchanged.
                Self::write_ad(mem, table, slot, old, new, preserve_ad);
                self.stats.fast_path += 1;
                return Ok(());
            }
            if let Err(e) = self.get_page_from_l1e(mem, new, fl) {
                self.note_fail(mem, table, Level::L1, slot, Some(old), new, e);
                return Err(e);
            }
            Self::write_ad(mem, table, slot, old, new, preserve_ad);
        } else {
            Self::write_ad(mem, table, slot, old, new, preserve_ad);
        }
        self.stats.slow_path += 1;
        self.put_page_from_l1e(mem, old);
        Ok(())
    }

    /// `mod_l2_entry` / `mod_l3_entry` / `mod_l4_entry`.
    #[allow(clippy::too_many_arguments)]
    fn mod_upper_entry(
        &mut self,
        mem: &mut dyn FrameAccess,
        table: Mfn,
        level: Level,
        slot: usize,
        new: u64,
        preserve_ad: bool,
        vcpu_roots: &[Mfn],
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        let old = rd(mem, table, slot);
        if level == Level::L4 && is_hole_slot(slot) {
            let e = MmError::HoleSlot { slot: slot as u16 };
            self.note_fail(mem, table, level, slot, Some(old), new, e);
            return Err(e);
        }
        let written;
        if present(new) {
            if let Err(e) = Self::check_flags(level, new) {
                self.note_fail(mem, table, level, slot, Some(old), new, e);
                return Err(e);
            }
            let new = adjust_guest_entry(level, new);
            if !has_changed(old, new, fastpath_whitelist(level)) {
                written = Self::write_ad(mem, table, slot, old, new, preserve_ad);
                self.stats.fast_path += 1;
                self.root_flush(table, level, old, written, vcpu_roots, fl);
                return Ok(());
            }
            if let Err(e) = self.get_page_from_upper(mem, level, new, fl) {
                if e != MmError::Restart {
                    self.note_fail(mem, table, level, slot, Some(old), new, e);
                }
                return Err(e);
            }
            written = Self::write_ad(mem, table, slot, old, new, preserve_ad);
        } else {
            written = Self::write_ad(mem, table, slot, old, new, preserve_ad);
        }
        self.stats.slow_path += 1;
        // Xen's PTF_defer: the old target's teardown may be left to `old_guest_table`;
        // the update itself is done.
        if present(old) && entry_mfn(old) != table {
            self.put_deferred(mem, entry_mfn(old));
        }
        self.root_flush(table, level, old, written, vcpu_roots, fl);
        Ok(())
    }

    /// After an L4 update (Xen's `do_mmu_update`, `PGT_l4_page_table` case): this
    /// vCPU's TLB if it has the L4 loaded (`flush_root_pt_local`), and every vCPU's when
    /// the L4 has uses beyond the pin and this vCPU's base pointers (`sync_guest`: type
    /// count > pinned + local uses; Xen adds 1 for its page lock) or another vCPU is
    /// known to have it loaded.
    fn root_flush(
        &self,
        table: Mfn,
        level: Level,
        old: u64,
        written: u64,
        roots: &[Mfn],
        fl: &mut FlushSet,
    ) {
        if level != Level::L4 || old == written {
            return;
        }
        let local = roots.iter().filter(|&&r| r == table).count() as u64;
        // `loaded_roots` only narrows the remote flush. Once a vCPU loaded more roots
        // than its list holds (`roots_overflow`, sticky until `reset`), the lists no
        // longer say who has which L4 loaded: the overflowing vCPU's list misses the
        // root it could not record, and a later drop of a duplicate may remove the
        // recorded copy instead. So any L4 update then counts as "loaded elsewhere" and
        // asks every vCPU to flush its whole TLB before it runs guest code again
        // (`all_vcpus`, as Xen's `sync_guest` flushes `d->dirty_cpumask`): a superset of
        // the vCPUs that really have it loaded, so no stale translation survives; only
        // kicks are added. The local flush (`local`, from the caller's own base
        // pointers) and the type-count test (`beyond`) do not read the lists.
        let elsewhere = self.roots_overflow
            || self
                .loaded_roots
                .iter()
                .enumerate()
                .any(|(v, r)| v != self.cur_vcpu && r.contains(&table));
        let beyond = self
            .info(table)
            .is_some_and(|p| u64::from(p.type_count) > local + u64::from(p.pinned));
        if local > 0 {
            fl.local_all = true;
        }
        if elsewhere || beyond {
            fl.all_vcpus = true;
        }
    }

    /// `MMU_MACHPHYS_UPDATE`: only the domain's own RAM frames.
    pub fn machphys_update(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        pfn: u64,
    ) -> Result<(), MmError> {
        self.begin();
        let r = match self.idx(mfn) {
            None => Err(MmError::NotOwned),
            Some(_) => {
                mem.write_m2p(mfn, pfn);
                Ok(())
            }
        };
        self.finish(mem, MmOp::MachphysUpdate, mfn, None, Some(pfn), r)
    }

    /// `set_gdt` (`pv_set_gdt`) for one frame: general + `SegDesc` type reference, every
    /// descriptor checked (and fixed up) on first use. Held until
    /// [`Mm::put_segdesc_page`]. A needed TLB flush goes to [`Mm::take_pending_flush`].
    pub fn get_segdesc_page(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) -> Result<(), MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = self.get_page_and_type_raw(mem, mfn, PageType::SegDesc, &mut fl);
        if r.is_ok() {
            self.hold(mfn, 1, 1);
        }
        self.pend(fl);
        self.finish(mem, MmOp::SetGdt, mfn, None, None, r)
    }

    /// Releases a frame taken with [`Mm::get_segdesc_page`] (`pv_destroy_gdt`).
    pub fn put_segdesc_page(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) {
        self.begin();
        let h = self.held_get(mfn);
        let is_seg = self.info(mfn).is_some_and(|p| p.ty == PageType::SegDesc);
        if h.general == 0 || h.typed == 0 || !is_seg {
            self.refuse(mem, MmOp::PutRef, mfn, None, None, MmError::NotHeld);
            return;
        }
        self.held_drop(mfn, true, true);
        self.put_page_and_type_raw(mem, mfn);
    }

    /// `HYPERVISOR_update_descriptor` (`do_update_descriptor`): `offset` is the byte
    /// offset in the frame (8-aligned). The frame must take a `SegDesc` type reference
    /// (if that is its type) or a `Writable` one; the descriptor must pass
    /// `check_descriptor` and is stored with its fixups. A needed TLB flush goes to
    /// [`Mm::take_pending_flush`].
    pub fn update_descriptor(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        offset: usize,
        desc: u64,
    ) -> Result<(), MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let slot = offset / 8;
        let r = self.update_descriptor_inner(mem, mfn, offset, desc, &mut fl);
        self.pend(fl);
        self.finish(
            mem,
            MmOp::UpdateDescriptor,
            mfn,
            u16::try_from(slot).ok(),
            Some(desc),
            r,
        )
    }

    fn update_descriptor_inner(
        &mut self,
        mem: &mut dyn FrameAccess,
        mfn: Mfn,
        offset: usize,
        desc: u64,
        fl: &mut FlushSet,
    ) -> Result<(), MmError> {
        if offset & 7 != 0 || offset >= 4096 {
            return Err(MmError::BadOffset);
        }
        let slot = offset / 8;
        let d = check_descriptor(desc).ok_or(MmError::BadDescriptor { index: slot as u16 })?;
        let pi = self.info(mfn).ok_or(MmError::NotOwned)?;
        let ty = if pi.ty == PageType::SegDesc {
            PageType::SegDesc
        } else {
            PageType::Writable
        };
        self.get_type_raw(mem, mfn, ty, fl)?;
        mem.write_entry(mfn, slot, d);
        self.put_type_raw(mem, mfn);
        Ok(())
    }

    /// `MMUEXT_COPY_PAGE`: `src` any own frame, `dst` must take a `Writable` type
    /// reference (so never a live pagetable or descriptor page). A needed TLB flush goes
    /// to [`Mm::take_pending_flush`].
    pub fn copy_page(
        &mut self,
        mem: &mut dyn FrameAccess,
        dst: Mfn,
        src: Mfn,
    ) -> Result<(), MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = (|| {
            if self.idx(src).is_none() || self.idx(dst).is_none() {
                return Err(MmError::NotOwned);
            }
            self.get_type_raw(mem, dst, PageType::Writable, &mut fl)?;
            mem.copy_frame(dst, src);
            self.put_type_raw(mem, dst);
            Ok(())
        })();
        self.pend(fl);
        self.finish(mem, MmOp::CopyPage, dst, None, Some(src), r)
    }

    /// `MMUEXT_CLEAR_PAGE`: the frame must take a `Writable` type reference. A needed TLB
    /// flush goes to [`Mm::take_pending_flush`].
    pub fn clear_page(&mut self, mem: &mut dyn FrameAccess, mfn: Mfn) -> Result<(), MmError> {
        self.begin();
        let mut fl = FlushSet::default();
        let r = (|| {
            if self.idx(mfn).is_none() {
                return Err(MmError::NotOwned);
            }
            self.get_type_raw(mem, mfn, PageType::Writable, &mut fl)?;
            mem.clear_frame(mfn);
            self.put_type_raw(mem, mfn);
            Ok(())
        })();
        self.pend(fl);
        self.finish(mem, MmOp::ClearPage, mfn, None, None, r)
    }

    // Accessors for the invariant checker.
    #[cfg(feature = "alloc")]
    pub(crate) fn frames(&self) -> impl ExactSizeIterator<Item = &PageInfo> + '_ {
        self.frames.iter().map(|f| &f.info)
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn held_refs(&self) -> impl Iterator<Item = (Mfn, u32, u32)> + '_ {
        (0u64..)
            .zip(self.frames.iter())
            .filter(|(_, f)| f.held != Held::default())
            .map(|(m, f)| (m, f.held.general, f.held.typed))
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn refusal_log_len(&self) -> usize {
        self.refusals.len
    }
}

/// A memory that reads as zero, for refusals that need no memory access.
struct NoMem;

impl FrameAccess for NoMem {
    fn read_entry(&self, _mfn: Mfn, _slot: usize) -> u64 {
        0
    }
    fn write_entry(&mut self, _mfn: Mfn, _slot: usize, _value: u64) {}
    fn copy_frame(&mut self, _dst: Mfn, _src: Mfn) {}
    fn clear_frame(&mut self, _mfn: Mfn) {}
    fn write_m2p(&mut self, _mfn: Mfn, _pfn: u64) {}
}
