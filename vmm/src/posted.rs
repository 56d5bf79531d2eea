//! Pagetable stores and TLB flushes the engine made, waiting for the ring-0 shim to
//! repeat them inside the VM before the guest runs again.
//!
//! The host's KVM shadows guest pagetables and does not notice stores the VMM makes
//! through its own mapping (docs/host-kvm.md). So every store into a guest frame goes
//! twice: into memory at once (so the engine reads its own writes), and into this queue,
//! which the shim's apply routine performs as ordinary guest stores through its direct
//! map, followed by the flushes. Chunks larger than the posting area go through the
//! `APPLY_MORE` doorbell.

use pv_engine::mmu::BatchFlush as FlushSet;
use pv_mm::{FrameAccess, Mfn};
use std::cell::Cell;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory, VolatileSlice,
};
use xen_abi::contract::{
    PostedHeader, PostedStore, DIRECTMAP_VA, MAX_LISTED_STORES, MAX_POSTED_INVLPG,
    MAX_POSTED_STORES, POSTED_FLUSH_ALL, POSTED_MORE,
};
use zerocopy::{FromZeros, IntoBytes};

/// What the next apply does, when it fits one of the shim's short routines: the VMM
/// then hands the operands over in registers (or on the ring-0 stack) instead of the
/// posting area, and the shim runs 4 ring-0 instructions a store instead of 6 plus ~25
/// (each one emulated on a software-KVM host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShortApply {
    /// One store and no flush (`xen_abi::contract::ShimHeader::apply_one`): `*va = value`.
    One {
        /// Direct-map address of the entry.
        va: u64,
        /// What to store there.
        value: u64,
    },
    /// A full flush of this vCPU's TLB and no store
    /// (`xen_abi::contract::ShimHeader::apply_flush_all`).
    FlushAll,
    /// Up to [`MAX_LISTED_STORES`] stores, in order, then a full flush or none
    /// (`xen_abi::contract::ShimHeader::apply_list`, `apply_list_flush_all`).
    List {
        /// The stores.
        stores: Vec<PostedStore>,
        /// Whether a full flush of this vCPU's TLB follows them.
        flush_all: bool,
    },
}

/// The store queue of one vCPU (the flushes that go with it are the engine's
/// [`FlushSet`], kept beside it).
#[derive(Debug, Default)]
pub struct Posted {
    stores: Vec<PostedStore>,
    sent: usize,
    /// Stores over not-present entries written without posting, so far.
    absent_unposted: u64,
    /// Fault injection: chunks shorter than the posting area (None: as long as it takes).
    chunk_limit: Option<usize>,
}

impl Posted {
    /// Whether no store is queued.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// Whether nothing waits: no store and no flush.
    pub fn nothing_waits(&self, flush: &FlushSet) -> bool {
        self.stores.is_empty() && flush.is_empty()
    }

    /// Sends the next applies in chunks of at most `limit` stores (fault injection: the
    /// refill path runs), or as few chunks as the posting area allows (None).
    pub fn set_chunk_limit(&mut self, limit: Option<usize>) {
        self.chunk_limit = limit.map(|n| n.clamp(1, MAX_POSTED_STORES));
    }

    /// Stores queued so far.
    pub fn queued(&self) -> usize {
        self.stores.len()
    }

    /// Stores over not-present entries written without posting, since the start.
    pub fn absent_unposted(&self) -> u64 {
        self.absent_unposted
    }

    /// The store at `s.va` with the value guest memory holds there now: the last store
    /// the engine made to that entry (it writes memory at once). A queue may hold an
    /// earlier store to an entry that a later one, not posted (over a not-present
    /// entry), or another vCPU's, changed again; repeating the older value would undo
    /// that. Memory, not the queue, has the entry's value.
    fn current(mem: &GuestMemoryMmap, s: &PostedStore) -> PostedStore {
        let value =
            s.va.checked_sub(DIRECTMAP_VA)
                .and_then(|gpa| mem.read_obj(GuestAddress(gpa)).ok())
                .unwrap_or(s.value);
        PostedStore { va: s.va, value }
    }

    /// Forgets everything queued (used once at boot: nothing has walked the tables yet,
    /// so the stores already in memory are all the hardware will ever see).
    pub fn discard(&mut self, flush: &mut FlushSet) {
        self.stores.clear();
        self.sent = 0;
        flush.clear();
    }

    /// Takes everything that waits (the queue and the flushes) when it is one of the
    /// [`ShortApply`] shapes; otherwise takes nothing (the general routine then runs
    /// from [`Posted::fill`]). A flush is never dropped: exactly what `fill` would have
    /// posted, stores in order, the flush as `POSTED_FLUSH_ALL` or none (single
    /// addresses stay the general routine's).
    pub fn take_short(
        &mut self,
        flush: &mut FlushSet,
        mem: &GuestMemoryMmap,
    ) -> Option<ShortApply> {
        if self.sent != 0 {
            return None;
        }
        let full = flush.local_all || flush.all_vcpus || flush.invlpg.len() > MAX_POSTED_INVLPG;
        if !full && !flush.is_empty() {
            return None;
        }
        let shape = match self.stores.as_slice() {
            [] if full => ShortApply::FlushAll,
            [] => return None,
            [only] if !full => {
                let s = Self::current(mem, only);
                ShortApply::One {
                    va: s.va,
                    value: s.value,
                }
            }
            // Fault injection's short chunks keep the refill path running.
            stores
                if stores.len() <= MAX_LISTED_STORES
                    && self.chunk_limit.is_none_or(|c| stores.len() <= c) =>
            {
                ShortApply::List {
                    stores: stores.iter().map(|s| Self::current(mem, s)).collect(),
                    flush_all: full,
                }
            }
            _ => return None,
        };
        self.discard(flush);
        Some(shape)
    }

    /// Writes the next chunk into the posting area at `area_gpa`. The last chunk carries
    /// the flushes and empties the queue; earlier ones ask the shim to ring `APPLY_MORE`.
    pub fn fill(
        &mut self,
        flush: &mut FlushSet,
        mem: &GuestMemoryMmap,
        area_gpa: u64,
    ) -> Result<(), String> {
        let chunk = self.chunk_limit.unwrap_or(MAX_POSTED_STORES);
        let end = (self.sent + chunk).min(self.stores.len());
        let chunk: Vec<PostedStore> = self.stores[self.sent..end]
            .iter()
            .map(|s| Self::current(mem, s))
            .collect();
        let more = end < self.stores.len();
        let mut header = PostedHeader::new_zeroed();
        header.nr_stores = chunk.len() as u32;
        if more {
            header.flags |= POSTED_MORE;
        } else if flush.local_all || flush.all_vcpus || flush.invlpg.len() > MAX_POSTED_INVLPG {
            header.flags |= POSTED_FLUSH_ALL;
        } else {
            header.nr_invlpg = flush.invlpg.len() as u32;
            header.invlpg[..flush.invlpg.len()].copy_from_slice(&flush.invlpg);
        }
        mem.write_slice(header.as_bytes(), GuestAddress(area_gpa))
            .map_err(|e| e.to_string())?;
        mem.write_slice(chunk.as_bytes(), GuestAddress(area_gpa + 0x1000))
            .map_err(|e| e.to_string())?;
        if more {
            self.sent = end;
        } else {
            self.discard(flush);
        }
        Ok(())
    }
}

/// Guest frames as the engine sees them in the VMM placement.
pub struct VmmFrames<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// Where stores are queued for the shim.
    pub posted: &'a mut Posted,
    /// Guest-physical address of the M2P table (in the shim region).
    pub m2p_gpa: u64,
    /// Frames the M2P table has entries for.
    pub m2p_frames: u64,
    /// The frame `read_entry` read last and its bytes: validating or demoting a table
    /// reads its 512 entries in a row, and a lookup of the guest-memory region per
    /// entry cost ~30 ns, a fifth of a fork's VMM time.
    last_read: Cell<Option<(Mfn, VolatileSlice<'a>)>>,
    /// Whether stores over not-present entries are written without posting
    /// (`crate::host::Paths::absent_stores_unposted`).
    absent_unposted: bool,
}

impl<'a> VmmFrames<'a> {
    /// The frames of `mem`, queueing stores into `posted`; the M2P table is at
    /// `m2p_gpa` with `m2p_frames` entries (0: no M2P writes).
    pub fn new(
        mem: &'a GuestMemoryMmap,
        posted: &'a mut Posted,
        m2p_gpa: u64,
        m2p_frames: u64,
    ) -> Self {
        VmmFrames {
            mem,
            posted,
            m2p_gpa,
            m2p_frames,
            last_read: Cell::new(None),
            absent_unposted: false,
        }
    }

    /// Writes stores over not-present entries without posting them, where the host's
    /// paging reads memory for an entry it never saw present (a shadow MMU keeps no
    /// translation of one): the probe's `vmm_absent_pte_store_visible`.
    pub fn absent_stores_unposted(mut self, on: bool) -> Self {
        self.absent_unposted = on;
        self
    }

    /// The 4 KiB of frame `mfn`, None outside guest memory.
    fn frame(&self, mfn: Mfn) -> Option<VolatileSlice<'a>> {
        if let Some((last, bytes)) = self.last_read.get() {
            if last == mfn {
                return Some(bytes);
            }
        }
        let bytes = self
            .mem
            .get_slice(GuestAddress(mfn.checked_mul(4096)?), 4096)
            .ok()?;
        self.last_read.set(Some((mfn, bytes)));
        Some(bytes)
    }

    fn store(&mut self, gpa: u64, value: u64) {
        if self.mem.write_obj(value, GuestAddress(gpa)).is_ok() {
            self.posted.stores.push(PostedStore {
                va: DIRECTMAP_VA + gpa,
                value,
            });
        }
    }
}

impl FrameAccess for VmmFrames<'_> {
    fn read_entry(&self, mfn: Mfn, slot: usize) -> u64 {
        match self.frame(mfn) {
            Some(bytes) => bytes
                .get_ref::<u64>((slot & 511) * 8)
                .map_or(0, |entry| entry.load()),
            None => 0,
        }
    }

    fn write_entry(&mut self, mfn: Mfn, slot: usize, value: u64) {
        let gpa = (mfn << 12) + (slot as u64 & 511) * 8;
        if self.absent_unposted && self.read_entry(mfn, slot) & pv_mm::pte::PAGE_PRESENT == 0 {
            // No walk has found this entry present since it last was (every store over
            // a present entry is posted, and the host then drops what it derived from
            // it): nothing holds a translation of it, and the next walk reads memory.
            if self.mem.write_obj(value, GuestAddress(gpa)).is_ok() {
                self.posted.absent_unposted += 1;
            }
            return;
        }
        self.store(gpa, value);
    }

    fn write_entry_unwalked(&mut self, mfn: Mfn, slot: usize, value: u64) {
        // No walk has used the frame as a table, so the host holds no shadow of it: the
        // first walk that reaches it reads memory (pv-mm's contract for this call).
        let gpa = (mfn << 12) + (slot as u64 & 511) * 8;
        let _ = self.mem.write_obj(value, GuestAddress(gpa));
    }

    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        for slot in 0..512 {
            let v = self.read_entry(src, slot);
            self.write_entry(dst, slot, v);
        }
    }

    fn clear_frame(&mut self, mfn: Mfn) {
        for slot in 0..512 {
            self.write_entry(mfn, slot, 0);
        }
    }

    fn write_m2p(&mut self, mfn: Mfn, pfn: u64) {
        // The M2P is data (read-only to the guest, never a pagetable): a plain write.
        if mfn < self.m2p_frames {
            let _ = self
                .mem
                .write_obj(pfn, GuestAddress(self.m2p_gpa + mfn * 8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// The VMM's frames over `m`, queueing into `posted`, with no M2P.
    fn vmm_frames<'a>(m: &'a GuestMemoryMmap, posted: &'a mut Posted) -> VmmFrames<'a> {
        VmmFrames::new(m, posted, 0, 0)
    }

    fn header(mem: &GuestMemoryMmap, at: u64) -> PostedHeader {
        let mut raw = vec![0u8; 0x1000];
        mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
        PostedHeader::read_from_bytes(&raw).unwrap()
    }

    #[test]
    fn stores_reach_memory_at_once_and_the_queue_in_order() {
        let m = mem();
        let mut posted = Posted::default();
        let mut flush = FlushSet::default();
        let mut frames = VmmFrames::new(&m, &mut posted, 0x8_0000, 16);
        frames.write_entry(3, 7, 0xabc);
        frames.write_entry(3, 8, 0xdef);
        assert_eq!(frames.read_entry(3, 7), 0xabc);
        frames.write_m2p(2, 99);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x8_0000 + 16)).unwrap(), 99);
        assert_eq!(
            posted.queued(),
            2,
            "the M2P write is data, not a posted store"
        );
        assert!(flush.invlpg.try_push(0x4000));
        let area = 0x9_0000;
        posted.fill(&mut flush, &m, area).unwrap();
        let h = header(&m, area);
        assert_eq!(
            (h.nr_stores, h.flags, h.nr_invlpg, h.invlpg[0]),
            (2, 0, 1, 0x4000)
        );
        let first: u64 = m.read_obj(GuestAddress(area + 0x1000)).unwrap();
        assert_eq!(first, DIRECTMAP_VA + 3 * 4096 + 7 * 8);
        assert!(posted.nothing_waits(&flush));
    }

    #[test]
    fn reads_follow_frame_switches_writes_and_end_of_memory() {
        let m = mem();
        let mut posted = Posted::default();
        let mut frames = vmm_frames(&m, &mut posted);
        m.write_obj(0x11u64, GuestAddress(2 * 4096 + 511 * 8))
            .unwrap();
        m.write_obj(0x22u64, GuestAddress(3 * 4096)).unwrap();
        assert_eq!(frames.read_entry(2, 511), 0x11);
        assert_eq!(frames.read_entry(3, 0), 0x22);
        assert_eq!(frames.read_entry(2, 511), 0x11, "back to the first frame");
        frames.write_entry(2, 511, 0x33);
        assert_eq!(
            frames.read_entry(2, 511),
            0x33,
            "a read sees the frame's own store"
        );
        m.write_obj(0x44u64, GuestAddress(2 * 4096 + 8)).unwrap();
        assert_eq!(frames.read_entry(2, 1), 0x44, "and anyone else's");
        // Frames past the end of guest memory (a hostile mfn) read as 0.
        assert_eq!(frames.read_entry(0x100, 0), 0);
        assert_eq!(frames.read_entry(u64::MAX, 3), 0);
        assert_eq!(frames.read_entry(2, 512 + 511), 0x33, "slots wrap at 512");
    }

    /// Where the host reads memory for an entry it never saw present, a store over a
    /// not-present entry is written and not posted; a store over a present one is
    /// posted; and what an apply repeats is the entry's value now, so an older queued
    /// store cannot undo a later unposted one.
    #[test]
    fn stores_over_absent_entries_are_written_not_posted_and_applies_repeat_memory() {
        let m = mem();
        let mut posted = Posted::default();
        let mut flush = FlushSet::default();
        let present = 0x7000 | pv_mm::pte::PAGE_PRESENT;
        let mut frames = VmmFrames::new(&m, &mut posted, 0, 0).absent_stores_unposted(true);
        frames.write_entry(6, 1, present);
        assert_eq!(frames.read_entry(6, 1), present);
        assert_eq!(
            (frames.posted.queued(), frames.posted.absent_unposted()),
            (0, 1)
        );
        // Present -> not present: posted (the host may hold a translation of it)...
        frames.write_entry(6, 1, 0x2);
        assert_eq!(frames.posted.queued(), 1);
        // ...and not present -> present again in the same batch: not posted.
        frames.write_entry(6, 1, present | 0x60);
        assert_eq!(
            (frames.posted.queued(), frames.posted.absent_unposted()),
            (1, 2)
        );
        assert_eq!(
            posted.take_short(&mut flush, &m),
            Some(ShortApply::One {
                va: DIRECTMAP_VA + 6 * 4096 + 8,
                value: present | 0x60
            }),
            "the apply stores the entry's final value, not the queued 0x2"
        );
        // Off (the default): every store is posted.
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(6, 2, present);
        assert_eq!(posted.queued(), 1);
        assert_eq!(posted.absent_unposted(), 2);
    }

    #[test]
    fn unwalked_stores_reach_memory_and_are_not_posted() {
        let m = mem();
        let mut posted = Posted::default();
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry_unwalked(5, 3, 0x1234);
        assert_eq!(frames.read_entry(5, 3), 0x1234);
        frames.write_entry(5, 4, 0x5678);
        assert_eq!(posted.queued(), 1, "only the ordinary store is posted");
    }

    #[test]
    fn long_queues_go_in_chunks_and_the_flush_comes_last() {
        let m = mem();
        let mut posted = Posted::default();
        let mut flush = FlushSet::default();
        let mut frames = vmm_frames(&m, &mut posted);
        for i in 0..(MAX_POSTED_STORES + 5) {
            frames.write_entry(10 + (i / 512) as u64, i % 512, i as u64);
        }
        flush.local_all = true;
        let area = 0xa_0000;
        posted.fill(&mut flush, &m, area).unwrap();
        let h = header(&m, area);
        assert_eq!(
            (h.nr_stores as usize, h.flags),
            (MAX_POSTED_STORES, POSTED_MORE)
        );
        assert!(!posted.nothing_waits(&flush));
        posted.fill(&mut flush, &m, area).unwrap();
        let h = header(&m, area);
        assert_eq!((h.nr_stores, h.flags), (5, POSTED_FLUSH_ALL));
        assert!(posted.nothing_waits(&flush));
    }

    #[test]
    fn short_applies_take_exactly_their_shapes() {
        let m = mem();
        let mut posted = Posted::default();
        let mut flush = FlushSet::default();
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(3, 7, 0xabc);
        assert_eq!(
            posted.take_short(&mut flush, &m),
            Some(ShortApply::One {
                va: DIRECTMAP_VA + 3 * 4096 + 7 * 8,
                value: 0xabc
            })
        );
        assert!(posted.nothing_waits(&flush));

        // A store with a single-address flush is the general routine's: nothing taken.
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(3, 7, 1);
        assert!(flush.invlpg.try_push(0x4000));
        assert_eq!(posted.take_short(&mut flush, &m), None);
        assert_eq!((posted.queued(), flush.invlpg.len()), (1, 1));
        posted.discard(&mut flush);

        // Two stores, or one with a full flush, are a list, in order.
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(3, 7, 1);
        frames.write_entry(3, 8, 2);
        let store = |slot: u64, value| PostedStore {
            va: DIRECTMAP_VA + 3 * 4096 + slot * 8,
            value,
        };
        assert_eq!(
            posted.take_short(&mut flush, &m),
            Some(ShortApply::List {
                stores: vec![store(7, 1), store(8, 2)],
                flush_all: false
            })
        );
        assert!(posted.nothing_waits(&flush));
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(3, 9, 3);
        flush.all_vcpus = true;
        assert_eq!(
            posted.take_short(&mut flush, &m),
            Some(ShortApply::List {
                stores: vec![store(9, 3)],
                flush_all: true
            })
        );
        assert!(posted.nothing_waits(&flush));
        let mut frames = vmm_frames(&m, &mut posted);
        frames.write_entry(3, 9, 3);
        frames.write_entry(3, 10, 4);
        flush.local_all = true;
        assert_eq!(
            posted.take_short(&mut flush, &m),
            Some(ShortApply::List {
                stores: vec![store(9, 3), store(10, 4)],
                flush_all: true
            })
        );
        assert!(posted.nothing_waits(&flush));

        // Under fault injection's short chunks, more than a chunk: the posting area's.
        posted.set_chunk_limit(Some(2));
        let mut frames = vmm_frames(&m, &mut posted);
        for slot in 0..3 {
            frames.write_entry(3, slot, 1);
        }
        assert_eq!(posted.take_short(&mut flush, &m), None);
        posted.discard(&mut flush);
        posted.set_chunk_limit(None);

        // More than the stack list holds: the posting area's.
        let mut frames = vmm_frames(&m, &mut posted);
        for slot in 0..=MAX_LISTED_STORES {
            frames.write_entry(3, slot, 1);
        }
        assert_eq!(posted.take_short(&mut flush, &m), None);
        assert_eq!(posted.queued(), MAX_LISTED_STORES + 1);
        posted.discard(&mut flush);

        // Single addresses stay the general routine's; a full flush, of this vCPU or of
        // all, is the short one.
        assert!(flush.invlpg.try_push(0x4000));
        assert_eq!(posted.take_short(&mut flush, &m), None);
        flush.clear();
        for all_vcpus in [false, true] {
            flush.local_all = !all_vcpus;
            flush.all_vcpus = all_vcpus;
            assert_eq!(
                posted.take_short(&mut flush, &m),
                Some(ShortApply::FlushAll)
            );
            assert!(posted.nothing_waits(&flush));
        }
        // Nothing waits: nothing to take.
        assert_eq!(posted.take_short(&mut flush, &m), None);
    }
}
