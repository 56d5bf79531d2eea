//! The API the rest of pvkvm programs against. Keep these names and meanings.

use alloc::vec::Vec;

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

/// TLB work an operation leaves to do before the guest runs again. Every mutator returns
/// one; dropping it unused is a compiler warning.
#[must_use = "a pagetable change whose flush is dropped leaves stale TLB entries"]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushSet {
    /// Flush the whole TLB of this vCPU (the one the operation ran for).
    pub local_all: bool,
    /// Flush the whole TLB of every vCPU of the domain, this one included (Xen:
    /// `flush_tlb_mask(d->dirty_cpumask)`): set for type changes that may leave stale
    /// entries on any CPU the domain ran on (a frame becoming a pagetable or descriptor
    /// page while a writable TLB entry may survive, a former table's paging-structure
    /// caches), and for an L4 update while another vCPU may have that L4 loaded.
    pub all_vcpus: bool,
    /// Single addresses to invalidate on this vCPU only.
    pub invlpg: Vec<u64>,
}

impl FlushSet {
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

    /// Adds `other`'s work to this set.
    pub fn merge(&mut self, other: FlushSet) {
        self.local_all |= other.local_all;
        self.all_vcpus |= other.all_vcpus;
        self.invlpg.extend(other.invlpg);
    }
}
