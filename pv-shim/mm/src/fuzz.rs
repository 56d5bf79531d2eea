//! Test support shared by unit tests, the property test and the fuzz target: a fake
//! guest memory, a small model guest, an operation language decoded from bytes, and
//! [`fuzz_one`], which runs such a program checking every invariant after every step.
//!
//! Always compiled (it is small and `no_std`), so the fuzz target in `fuzz/` and any
//! consumer's tests build on stable without features.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::api::{FlushSet, FrameAccess, Level, Mfn};
use crate::frame::PageInfo;
use crate::mm::{Mm, MmConfig};
use crate::pte::*;

/// A fake guest memory: a vector of frames plus an M2P map. Accesses outside it read as
/// zero and are ignored (the engine must never need them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMem {
    /// Frame contents, as 512 entries each.
    pub frames: Vec<Vec<u64>>,
    /// M2P entries written.
    pub m2p: BTreeMap<Mfn, u64>,
    /// Number of `write_entry` calls (to check that refused operations write nothing).
    pub writes: u64,
    /// Number of `write_entry_unwalked` calls (stores the host need not post).
    pub unwalked_writes: u64,
}

impl VecMem {
    /// `n` zeroed frames.
    pub fn new(n: usize) -> Self {
        VecMem {
            frames: vec![vec![0; ENTRIES]; n],
            m2p: BTreeMap::new(),
            writes: 0,
            unwalked_writes: 0,
        }
    }

    /// Sets an entry directly (the guest writing a frame nobody validated yet, or a
    /// builder laying out the initial tables).
    pub fn set(&mut self, mfn: Mfn, slot: usize, v: u64) {
        if let Some(e) = self.slot_mut(mfn, slot) {
            *e = v;
        }
    }

    fn slot_mut(&mut self, mfn: Mfn, slot: usize) -> Option<&mut u64> {
        self.frames
            .get_mut(usize::try_from(mfn).ok()?)?
            .get_mut(slot)
    }
}

impl FrameAccess for VecMem {
    fn read_entry(&self, mfn: Mfn, slot: usize) -> u64 {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get(i))
            .and_then(|f| f.get(slot))
            .copied()
            .unwrap_or(0)
    }
    fn write_entry(&mut self, mfn: Mfn, slot: usize, value: u64) {
        self.writes += 1;
        self.set(mfn, slot, value);
    }
    fn write_entry_unwalked(&mut self, mfn: Mfn, slot: usize, value: u64) {
        self.unwalked_writes += 1;
        self.set(mfn, slot, value);
    }
    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        let (Some(d), Some(s)) = (usize::try_from(dst).ok(), usize::try_from(src).ok()) else {
            return;
        };
        if let Some(f) = self.frames.get(s).cloned() {
            if let Some(t) = self.frames.get_mut(d) {
                *t = f;
            }
        }
    }
    fn clear_frame(&mut self, mfn: Mfn) {
        if let Some(f) = usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get_mut(i))
        {
            f.iter_mut().for_each(|e| *e = 0);
        }
    }
    fn write_m2p(&mut self, mfn: Mfn, pfn: u64) {
        self.m2p.insert(mfn, pfn);
    }
}

/// An entry pointing at `mfn` with `flags`.
pub fn pte(mfn: Mfn, flags: u64) -> u64 {
    (mfn << 12) & PAGE_ADDR_MASK | flags
}

/// Flags of a kernel pagetable link as Linux writes them (P|RW|A|D, U added by Xen).
pub const LINK: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY;
/// Flags of a read-only data mapping.
pub const RO: u64 = PAGE_PRESENT | PAGE_ACCESSED;
/// Flags of a writable data mapping.
pub const RW: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY;

/// Distinct hole values, so tests see them written.
pub fn test_hole() -> [u64; 16] {
    let mut h = [0u64; 16];
    for (i, e) in h.iter_mut().enumerate() {
        *e = pte(0x10_0000 + i as u64, PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED);
    }
    h
}

/// Frames of the model guest.
pub mod model {
    use crate::api::Mfn;
    /// Guest RAM frames.
    pub const NR_FRAMES: u64 = 32;
    /// The shared frame (shared_info), outside RAM.
    pub const SHARED: Mfn = 40;
    /// The kernel L4.
    pub const L4: Mfn = 0;
    /// The L3 under it.
    pub const L3: Mfn = 1;
    /// The L2 under that.
    pub const L2: Mfn = 2;
    /// Three L1s under that.
    pub const L1S: [Mfn; 3] = [3, 4, 5];
    /// A user L4 (built, not loaded at start).
    pub const USER_L4: Mfn = 6;
    /// First data frame.
    pub const DATA0: Mfn = 8;
}

/// A model guest: an engine, its memory and the loaded base pointers.
#[derive(Clone, Debug)]
pub struct Harness {
    /// The engine.
    pub mm: Mm,
    /// Guest memory.
    pub mem: VecMem,
    /// The kernel base pointer currently loaded.
    pub root: Option<Mfn>,
    /// The user base pointer currently loaded.
    pub user_root: Option<Mfn>,
    /// GDT frames currently held.
    pub gdt: Vec<Mfn>,
    /// Flushes reported so far (merged).
    pub flushes: FlushSet,
    /// The last operation was preempted (`MmError::Restart`).
    pub restarted: bool,
    /// Leave preempted operations partial instead of issuing them again until they
    /// finish (as a guest's continuation does).
    pub abandon_restarts: bool,
    /// Restarts seen by [`Harness::step`].
    pub restarts: u64,
}

impl Harness {
    /// An empty domain of `nr` frames with the model's shared frame.
    pub fn empty(nr: u64) -> Self {
        let cfg = MmConfig {
            nr_frames: nr,
            hole_l4: test_hole(),
            shared_frames: crate::SharedFrames::from_slice(&[model::SHARED]).unwrap_or_default(),
            max_machine_frame: model::SHARED + 1,
        };
        Harness {
            mm: Mm::new(cfg),
            mem: VecMem::new(nr as usize),
            root: None,
            user_root: None,
            gdt: Vec::new(),
            flushes: FlushSet::default(),
            restarted: false,
            abandon_restarts: false,
            restarts: 0,
        }
    }

    /// The model guest, laid out like a PV Linux at boot: L4[0] -> L3, L3[0] -> L2,
    /// L2[0..3] -> three L1s; the L1s map the data frames RW, every pagetable frame RO
    /// (as Linux maps its own pagetables) and the shared frame RW; the L4 is pinned and
    /// loaded. A user L4 (frame 6) links the same L3, built but not yet pinned.
    pub fn model_guest() -> Self {
        use model::*;
        let mut h = Harness::empty(NR_FRAMES);
        h.mem.set(L4, 0, pte(L3, LINK));
        h.mem.set(L3, 0, pte(L2, LINK));
        for (k, &l1) in L1S.iter().enumerate() {
            h.mem.set(L2, k, pte(l1, LINK));
        }
        let pts = [L4, L3, L2, L1S[0], L1S[1], L1S[2], USER_L4];
        for f in 0..NR_FRAMES {
            let l1 = L1S[(f % 3) as usize];
            let slot = f as usize;
            let flags = if pts.contains(&f) || f == 7 { RO } else { RW };
            h.mem.set(l1, slot, pte(f, flags));
        }
        h.mem.set(L1S[0], 100, pte(SHARED, RW));
        h.mem.set(USER_L4, 0, pte(L3, LINK));
        let fl =
            h.mm.pin_table(&mut h.mem, L4, Level::L4)
                .expect("model L4 pins");
        h.merge(fl);
        let fl =
            h.mm.set_root(&mut h.mem, None, Some(L4))
                .expect("model root loads");
        h.merge(fl);
        h.root = Some(L4);
        h
    }

    fn merge(&mut self, fl: FlushSet) {
        self.flushes.local_all |= fl.local_all;
        self.flushes.all_vcpus |= fl.all_vcpus;
    }

    fn roots(&self) -> Vec<Mfn> {
        self.root.into_iter().chain(self.user_root).collect()
    }

    /// Applies one operation; returns whether the engine accepted it.
    pub fn apply(&mut self, op: &FuzzOp) -> bool {
        // As the engine does on entry to every MMU hypercall: a teardown left part-way
        // is finished first (under the budget; out of budget again, this step is that
        // continuation and the operation waits). With `abandon_restarts` the operation
        // runs regardless and meets the tables in teardown.
        if self.mm.has_deferred_put()
            && !self.abandon_restarts
            && !matches!(op, FuzzOp::Budget { .. } | FuzzOp::TlbFlushed)
            && self.mm.put_old_guest_table(&mut self.mem) == Err(crate::MmError::Restart)
        {
            self.restarted = true;
            return true;
        }
        let roots = self.roots();
        let r: Result<FlushSet, crate::MmError> = match *op {
            FuzzOp::ModEntry {
                table,
                slot,
                value,
                preserve_ad,
            } => self
                .mm
                .mod_entry(&mut self.mem, table, slot, value, preserve_ad, &roots),
            FuzzOp::FlipBits {
                table,
                slot,
                bits,
                preserve_ad,
            } => {
                let value = self.mem.read_entry(table, slot) ^ bits;
                self.mm
                    .mod_entry(&mut self.mem, table, slot, value, preserve_ad, &roots)
            }
            FuzzOp::Pin { mfn, level } => self.mm.pin_table(&mut self.mem, mfn, level),
            FuzzOp::Unpin { mfn } => self.mm.unpin_table(&mut self.mem, mfn),
            FuzzOp::SetRoot { new, user } => {
                let old = if user { self.user_root } else { self.root };
                let r = self.mm.set_root(&mut self.mem, old, new);
                if r.is_ok() {
                    if user {
                        self.user_root = new;
                    } else {
                        self.root = new;
                    }
                }
                r
            }
            FuzzOp::Machphys { mfn, pfn } => self
                .mm
                .machphys_update(&mut self.mem, mfn, pfn)
                .map(|()| FlushSet::default()),
            FuzzOp::CopyPage { dst, src } => self
                .mm
                .copy_page(&mut self.mem, dst, src)
                .map(|()| self.mm.take_pending_flush()),
            FuzzOp::ClearPage { mfn } => self
                .mm
                .clear_page(&mut self.mem, mfn)
                .map(|()| self.mm.take_pending_flush()),
            FuzzOp::SetGdt { mfn } => {
                let r = self
                    .mm
                    .get_segdesc_page(&mut self.mem, mfn)
                    .map(|()| self.mm.take_pending_flush());
                if r.is_ok() {
                    self.gdt.push(mfn);
                }
                r
            }
            FuzzOp::DropGdt => {
                if let Some(m) = self.gdt.pop() {
                    self.mm.put_segdesc_page(&mut self.mem, m);
                }
                Ok(FlushSet::default())
            }
            FuzzOp::UpdateDescriptor { mfn, offset, desc } => self
                .mm
                .update_descriptor(&mut self.mem, mfn, offset, desc)
                .map(|()| self.mm.take_pending_flush()),
            FuzzOp::TlbFlushed => {
                self.mm.tlb_flushed();
                Ok(FlushSet::default())
            }
            FuzzOp::Budget { entries, abandon } => {
                self.mm.set_preempt_budget(entries);
                self.abandon_restarts = abandon;
                Ok(FlushSet::default())
            }
        };
        self.restarted = r == Err(crate::MmError::Restart);
        match r {
            Ok(fl) => {
                self.merge(fl);
                true
            }
            Err(_) => false,
        }
    }

    /// Applies `op` and checks: the invariants hold, and a refused operation changed
    /// nothing but the refusal log (memory may only gain `adjust_guest_*` bits in
    /// entries a failed validation already processed, as on Xen). A preempted operation
    /// is issued again until it ends (the invariants checked at every restart), unless
    /// [`Harness::abandon_restarts`] leaves it partial.
    pub fn step(&mut self, op: &FuzzOp) -> Result<bool, alloc::string::String> {
        let infos: Vec<Option<PageInfo>> = (0..self.mem.frames.len() as u64)
            .map(|m| self.mm.page_info(m).map(PageInfo::normalized))
            .collect();
        let partial_before = infos
            .iter()
            .flatten()
            .any(|p| matches!(p.validation, crate::frame::Validation::Partial { .. }));
        let mem_before = self.mem.frames.clone();
        let m2p_before = self.mem.m2p.clone();
        let mut ok = self.apply(op);
        let mut rounds = 0u32;
        loop {
            self.mm
                .check_invariants(&self.mem)
                .map_err(|e| alloc::format!("after {op:?} (restart {rounds}): {e}"))?;
            if !self.restarted || self.abandon_restarts {
                break;
            }
            self.restarts += 1;
            rounds += 1;
            if rounds > 1_000_000 {
                return Err(alloc::format!("{op:?} restarts without end"));
            }
            ok = self.apply(op);
        }
        // Resuming someone else's partial validation and failing undoes it too: only
        // a refusal that started from no partial state must have changed nothing.
        if !ok && !self.restarted && !partial_before {
            for (m, before) in infos.iter().enumerate() {
                let now = self.mm.page_info(m as u64).map(PageInfo::normalized);
                if now != *before {
                    return Err(alloc::format!(
                        "refused {op:?} changed mfn {m:#x}: {before:?} -> {now:?}"
                    ));
                }
            }
            for (m, (a, b)) in mem_before.iter().zip(self.mem.frames.iter()).enumerate() {
                for (s, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    if (x ^ y) & !ADJUST_BITS != 0 || (x & !y) != 0 {
                        return Err(alloc::format!(
                            "refused {op:?} changed mfn {m:#x} slot {s}: {x:#x} -> {y:#x}"
                        ));
                    }
                }
            }
            if self.mem.m2p != m2p_before {
                return Err(alloc::format!("refused {op:?} changed the M2P"));
            }
        }
        Ok(ok)
    }
}

/// One operation of the model guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzOp {
    /// `mmu_update` of one entry.
    ModEntry {
        /// Table frame.
        table: Mfn,
        /// Slot.
        slot: usize,
        /// New value.
        value: u64,
        /// `MMU_PT_UPDATE_PRESERVE_AD`.
        preserve_ad: bool,
    },
    /// `mmu_update` of one entry to its current value with `bits` flipped (reaches the
    /// fast path and the A/D handling).
    FlipBits {
        /// Table frame.
        table: Mfn,
        /// Slot.
        slot: usize,
        /// Bits to flip.
        bits: u64,
        /// `MMU_PT_UPDATE_PRESERVE_AD`.
        preserve_ad: bool,
    },
    /// `MMUEXT_PIN_Ln_TABLE`.
    Pin {
        /// Frame.
        mfn: Mfn,
        /// Level.
        level: Level,
    },
    /// `MMUEXT_UNPIN_TABLE`.
    Unpin {
        /// Frame.
        mfn: Mfn,
    },
    /// `MMUEXT_NEW_BASEPTR` / `NEW_USER_BASEPTR`.
    SetRoot {
        /// New base pointer.
        new: Option<Mfn>,
        /// The user one.
        user: bool,
    },
    /// `MMU_MACHPHYS_UPDATE`.
    Machphys {
        /// Frame.
        mfn: Mfn,
        /// Pfn.
        pfn: u64,
    },
    /// `MMUEXT_COPY_PAGE`.
    CopyPage {
        /// Destination.
        dst: Mfn,
        /// Source.
        src: Mfn,
    },
    /// `MMUEXT_CLEAR_PAGE`.
    ClearPage {
        /// Frame.
        mfn: Mfn,
    },
    /// `set_gdt` of one more frame.
    SetGdt {
        /// Frame.
        mfn: Mfn,
    },
    /// Release the last GDT frame.
    DropGdt,
    /// `update_descriptor`.
    UpdateDescriptor {
        /// Frame.
        mfn: Mfn,
        /// Byte offset.
        offset: usize,
        /// Descriptor.
        desc: u64,
    },
    /// The engine reports a full flush.
    TlbFlushed,
    /// Sets the preemption budget (`Mm::set_preempt_budget`) and whether preempted
    /// operations are left partial or issued again until they finish.
    Budget {
        /// Entries per operation (None: never preempt).
        entries: Option<u32>,
        /// Leave preempted operations partial.
        abandon: bool,
    },
}

/// Slots the decoder picks from: the model's live slots, the hole edges, the last slot
/// and past the frame.
const SLOTS: [usize; 15] = [
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    100,
    255,
    256,
    271,
    272,
    511,
    512,
    usize::MAX,
];

/// Raw entry values at the extremes (every bit, every address bit, NX alone...).
const EXTREME_ENTRIES: [u64; 8] = [
    u64::MAX,
    !PAGE_RW,
    PAGE_ADDR_MASK | PAGE_PRESENT,
    PAGE_ADDR_MASK | LINK,
    PAGE_NX | PAGE_PRESENT,
    PAGE_FLAGS_MASK,
    1 << 51 | RO,
    0x8000_0000_0000_0000,
];

/// Flag combinations the decoder picks from: mostly valid ones, some Xen refuses.
const FLAGS: [u64; 16] = [
    LINK,
    RO,
    RW,
    0,
    PAGE_PRESENT,
    PAGE_PRESENT | PAGE_RW,
    PAGE_PRESENT | PAGE_USER,
    RW | PAGE_USER | PAGE_GLOBAL,
    RW | PAGE_NX,
    RO | PAGE_AVAIL,
    RW | PAGE_PSE,
    RW | PAGE_PCD,
    RW | PAGE_PWT,
    RW | PAGE_GNTTAB,
    RO | PAGE_GUEST_KERNEL,
    PAGE_RW, // non-present with bits
];

fn pick<T: Copy>(xs: &[T], b: u8) -> Option<T> {
    xs.get(usize::from(b) % xs.len().max(1)).copied()
}

/// Decodes one operation from 6 bytes.
pub fn decode(b: [u8; 6]) -> FuzzOp {
    let [op, a, c, d, e, f] = b;
    // Frames 0..42 cover RAM (0..32), foreign frames and the shared frame (40); the two
    // top byte values name the largest frames there are.
    let frame = |x: u8| match x {
        0xff => u64::MAX,
        0xfe => PAGE_ADDR_MASK >> 12,
        _ => u64::from(x) % 42,
    };
    let level = |x: u8| match x % 4 {
        0 => Level::L1,
        1 => Level::L2,
        2 => Level::L3,
        _ => Level::L4,
    };
    match op % 16 {
        // Entry updates dominate, as in a real guest.
        0..=6 => FuzzOp::ModEntry {
            table: u64::from(a) % 34,
            slot: pick(&SLOTS, c).unwrap_or(0),
            value: if f & 0xe0 == 0xe0 {
                pick(&EXTREME_ENTRIES, d).unwrap_or(0)
            } else {
                pte(frame(d), pick(&FLAGS, e).unwrap_or(0))
            },
            preserve_ad: f & 1 != 0,
        },
        7 => FuzzOp::FlipBits {
            table: u64::from(a) % 8,
            slot: pick(&SLOTS, c).unwrap_or(0),
            bits: 1u64 << (d % 64),
            preserve_ad: f & 1 != 0,
        },
        8 => FuzzOp::Pin {
            mfn: u64::from(a) % 34,
            level: level(c),
        },
        9 => FuzzOp::Unpin {
            mfn: u64::from(a) % 34,
        },
        10 => FuzzOp::SetRoot {
            new: match c % 5 {
                0 => None,
                1 | 2 => Some(model::L4),
                3 => Some(model::USER_L4),
                _ => Some(u64::from(a) % 34),
            },
            user: d & 1 != 0,
        },
        11 => match c % 3 {
            0 => FuzzOp::Machphys {
                mfn: frame(a),
                pfn: u64::from(d),
            },
            1 => FuzzOp::CopyPage {
                dst: frame(a),
                src: frame(d),
            },
            _ => FuzzOp::ClearPage { mfn: frame(a) },
        },
        12 => FuzzOp::SetGdt {
            mfn: u64::from(a) % 34,
        },
        13 => FuzzOp::DropGdt,
        14 => FuzzOp::UpdateDescriptor {
            mfn: u64::from(a) % 34,
            offset: usize::from(c) * 8 + usize::from(d & 1) * 4,
            desc: u64::from_le_bytes([e, f, d, c, a, 0x9a | (f & 0x20), e, 0]),
        },
        _ if a & 1 == 0 => FuzzOp::TlbFlushed,
        _ => FuzzOp::Budget {
            entries: pick(&BUDGETS, c).unwrap_or(None),
            abandon: d & 1 != 0,
        },
    }
}

/// Budgets the decoder picks from: none, zero (one step per level and call), a few
/// entries, and about one or three L1s' worth.
const BUDGETS: [Option<u32>; 6] = [None, Some(0), Some(1), Some(64), Some(600), Some(1500)];

/// Runs the bytes as a program against the model guest (6 bytes an operation) and
/// panics with a description on the first invariant violation. The entry point for
/// fuzzers.
pub fn fuzz_one(data: &[u8]) {
    let mut h = Harness::model_guest();
    if let Err(e) = h.mm.check_invariants(&h.mem) {
        panic!("model guest: {e}");
    }
    for chunk in data.chunks_exact(6) {
        let mut b = [0u8; 6];
        b.copy_from_slice(chunk);
        let op = decode(b);
        if let Err(e) = h.step(&op) {
            panic!("{e}");
        }
    }
}
