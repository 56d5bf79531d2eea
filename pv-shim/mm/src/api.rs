//! The API the rest of pvkvm programs against. Keep these names and meanings.

/// A machine frame number (== guest-physical frame number: identity p2m).
pub type Mfn = u64;

/// Pagetable levels as the guest pins them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// L1 (PTEs).
    L1 = 1,
    /// L2.
    L2 = 2,
    /// L3.
    L3 = 3,
    /// L4 (root).
    L4 = 4,
}

/// How the host reads and writes guest frames. Reads see the latest contents, including
/// the engine's own writes. `write_entry` is a store into a table the hardware may be
/// walking: the host must make it visible to hardware walks (in the VMM placement it
/// writes memory and posts the same store for the ring-0 shim to repeat inside the VM).
pub trait FrameAccess {
    /// Reads entry `slot` (0..512) of frame `mfn`.
    fn read_entry(&self, mfn: Mfn, slot: usize) -> u64;
    /// Writes entry `slot` of frame `mfn` (a pagetable store).
    fn write_entry(&mut self, mfn: Mfn, slot: usize, value: u64);
    /// Writes entry `slot` of frame `mfn`, a table that no hardware walk has ever used:
    /// pv-mm calls it only while it validates a frame that has never before been typed
    /// as a pagetable (Xen's `adjust_guest_lNe` write-backs and an L4's hole slots), so
    /// no translation through the frame can be cached anywhere and the first walk that
    /// reaches it (after its validation ends) reads memory. The host may therefore skip
    /// what `write_entry` does to reach hardware walks. Default: `write_entry`.
    fn write_entry_unwalked(&mut self, mfn: Mfn, slot: usize, value: u64) {
        self.write_entry(mfn, slot, value);
    }
    /// Copies a whole frame (for copy_page).
    fn copy_frame(&mut self, dst: Mfn, src: Mfn);
    /// Zeroes a whole frame (for clear_page).
    fn clear_frame(&mut self, mfn: Mfn);
    /// Writes M2P entry `mfn` (machphys update).
    fn write_m2p(&mut self, mfn: Mfn, pfn: u64);
}

/// Single addresses a [`FlushSet`] may carry without an allocator: a fixed array of
/// `N` entries and a count. What does not fit becomes a full flush (see
/// [`FlushSet::merge`]), as Xen turns a flush of too many pages into a full one.
#[derive(Clone)]
pub struct InvlpgList<const N: usize> {
    va: [u64; N],
    len: usize,
}

impl<const N: usize> InvlpgList<N> {
    /// No addresses.
    pub const fn new() -> Self {
        Self { va: [0; N], len: 0 }
    }

    /// One address (none when `N` is 0).
    pub fn one(va: u64) -> Self {
        let mut l = Self::new();
        let _ = l.try_push(va);
        l
    }

    /// Adds `va`; false (and nothing added) when the list is full.
    pub fn try_push(&mut self, va: u64) -> bool {
        match self.va.get_mut(self.len) {
            Some(slot) => {
                *slot = va;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Adds all of `more`, or nothing (false) when they do not all fit.
    pub fn try_extend(&mut self, more: &[u64]) -> bool {
        match self
            .va
            .get_mut(self.len..self.len.saturating_add(more.len()))
        {
            Some(dst) => {
                dst.copy_from_slice(more);
                self.len += more.len();
                true
            }
            None => false,
        }
    }

    /// Drops every address.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The addresses.
    pub fn as_slice(&self) -> &[u64] {
        &self.va[..self.len]
    }
}

impl<const N: usize> Default for InvlpgList<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::ops::Deref for InvlpgList<N> {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        self.as_slice()
    }
}

impl<const N: usize, const M: usize> PartialEq<InvlpgList<M>> for InvlpgList<N> {
    fn eq(&self, other: &InvlpgList<M>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for InvlpgList<N> {}

impl<const N: usize> core::fmt::Debug for InvlpgList<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// TLB work an operation leaves to do before the guest runs again. Every mutator returns
/// one; dropping it unused is a compiler warning.
///
/// `N` is how many single addresses it carries before it becomes a full flush. pv-mm's
/// own operations never name single addresses, and a hypercall names at most one per
/// operation, so the sets operations return are small (`N` = 1, the default); the set a
/// host accumulates over a batch is larger (the engine's `BatchFlush`) and lives in the
/// host's storage, never moved by value.
#[must_use = "a pagetable change whose flush is dropped leaves stale TLB entries"]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushSet<const N: usize = 1> {
    /// Flush the whole TLB of this vCPU (the one the operation ran for).
    pub local_all: bool,
    /// Flush the whole TLB of every vCPU of the domain, this one included (Xen:
    /// `flush_tlb_mask(d->dirty_cpumask)`): set for type changes that may leave stale
    /// entries on any CPU the domain ran on (a frame becoming a pagetable or descriptor
    /// page while a writable TLB entry may survive, a former table's paging-structure
    /// caches), and for an L4 update while another vCPU may have that L4 loaded.
    pub all_vcpus: bool,
    /// Single addresses to invalidate on this vCPU only.
    pub invlpg: InvlpgList<N>,
}

impl<const N: usize> FlushSet<N> {
    /// Nothing to do (usable in a `static` initialiser).
    pub const EMPTY: Self = Self {
        local_all: false,
        all_vcpus: false,
        invlpg: InvlpgList::new(),
    };

    /// Other vCPUs than the one the operation ran for must flush (and this one too):
    /// the host kicks every vCPU of the domain (Xen's `d->dirty_cpumask`) before any of
    /// them runs guest code again.
    pub fn needs_remote(&self) -> bool {
        self.all_vcpus
    }

    /// This vCPU has TLB work (a full flush or single addresses).
    pub fn needs_local(&self) -> bool {
        self.local_all || self.all_vcpus || !self.invlpg.is_empty()
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.needs_local()
    }

    /// Forgets all work, in place.
    pub fn clear(&mut self) {
        self.local_all = false;
        self.all_vcpus = false;
        self.invlpg.clear();
    }

    /// Adds `other`'s work to this set. Single addresses that do not fit make it a full
    /// flush of this vCPU (the addresses are then dropped: the full flush covers them).
    pub fn merge<const M: usize>(&mut self, other: FlushSet<M>) {
        self.local_all |= other.local_all;
        self.all_vcpus |= other.all_vcpus;
        if !self.invlpg.try_extend(&other.invlpg) {
            self.local_all = true;
            self.invlpg.clear();
        }
    }
}
