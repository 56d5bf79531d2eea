//! Where pv-mm keeps its state, without an allocator on any operation's path.
//!
//! The per-frame state (the frame table) is the only part that grows with the domain: it
//! lives in storage the host gives ([`Mm::with_storage`]: a `&'static mut [FrameSlot]`,
//! e.g. a region the shim reserves for it) or, with the `alloc` feature, in a vector
//! [`Mm::new`] allocates once. Everything else is fixed-size: the refusal ring, the
//! validation stack, and per vCPU (up to [`MAX_VCPUS`]) the one `old_guest_table` slot
//! and the loaded base pointers.
//!
//! [`Mm::with_storage`]: crate::Mm::with_storage
//! [`Mm::new`]: crate::Mm::new

use core::ops::{Deref, DerefMut};

use crate::api::Mfn;
use crate::frame::PageInfo;

/// The most vCPUs a domain has (the VMM<->shim contract's limit).
pub const MAX_VCPUS: usize = xen_abi::contract::MAX_VCPUS as usize;

/// Frames outside RAM a domain may map ([`crate::MmConfig::shared_frames`]): room for
/// `shared_info` and a full grant table (64 frames) with margin.
pub const MAX_SHARED_FRAMES: usize = 128;

/// References the engine holds through the public API on one frame (base pointers,
/// GDT frames, direct `get_page*` calls), so releases can be checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) general: u32,
    pub(crate) typed: u32,
}

/// pv-mm's state for one RAM frame: its frame-table entry and bookkeeping. Hosts only
/// allocate these ([`FrameSlot::EMPTY`]); their contents are pv-mm's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSlot {
    pub(crate) info: PageInfo,
    /// The epoch at which its type count last dropped to 0 (Xen's
    /// `tlbflush_timestamp`): a stale TLB entry may exist until a flush after it.
    pub(crate) stamp: u64,
    pub(crate) held: Held,
    /// The guest gave it back (`XENMEM_decrease_reservation`): not its own until
    /// `reclaim_frame` hands it out again.
    pub(crate) released: bool,
    /// Xen's `partial_flags` (`PTF_partial_set`) of a table whose teardown stopped: it
    /// stopped inside the table its entry at `next_slot` points at, whose own teardown
    /// stopped and which took that entry's references into its partial state. A resumed
    /// teardown continues that child first (if it is still in teardown), so only the
    /// topmost table of a stopped teardown is remembered per vCPU (`old_guest_table`).
    pub(crate) partial_set: bool,
}

impl FrameSlot {
    /// A frame untyped, unreferenced and owned (usable in a `static` initialiser).
    pub const EMPTY: Self = Self {
        info: PageInfo::UNTYPED,
        stamp: 0,
        held: Held {
            general: 0,
            typed: 0,
        },
        released: false,
        partial_set: false,
    };
}

impl Default for FrameSlot {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// The frame table: the host's storage or pv-mm's own vector.
#[derive(Debug)]
pub(crate) enum FrameTable {
    /// Allocated once by [`crate::Mm::new`].
    #[cfg(feature = "alloc")]
    Owned(alloc::vec::Vec<FrameSlot>),
    /// Given by the host ([`crate::Mm::with_storage`]).
    Borrowed(&'static mut [FrameSlot]),
    /// None yet ([`crate::Mm::EMPTY`]).
    Empty,
}

impl Deref for FrameTable {
    type Target = [FrameSlot];
    fn deref(&self) -> &[FrameSlot] {
        match self {
            #[cfg(feature = "alloc")]
            FrameTable::Owned(v) => v,
            FrameTable::Borrowed(s) => s,
            FrameTable::Empty => &[],
        }
    }
}

impl DerefMut for FrameTable {
    fn deref_mut(&mut self) -> &mut [FrameSlot] {
        match self {
            #[cfg(feature = "alloc")]
            FrameTable::Owned(v) => v,
            FrameTable::Borrowed(s) => s,
            FrameTable::Empty => &mut [],
        }
    }
}

#[cfg(feature = "alloc")]
impl Clone for FrameTable {
    /// A copy is pv-mm's own (host storage cannot be duplicated).
    fn clone(&self) -> Self {
        FrameTable::Owned(self.to_vec())
    }
}

/// A fixed-capacity list of frames (a stack or a FIFO queue), for the bounded lists
/// pv-mm keeps: the tables under validation, a vCPU's base pointers,
/// the shared frames.
#[derive(Clone, Copy)]
pub struct FrameList<const N: usize> {
    mfns: [Mfn; N],
    len: usize,
}

impl<const N: usize> FrameList<N> {
    /// Empty.
    pub const EMPTY: Self = Self {
        mfns: [0; N],
        len: 0,
    };

    /// The frames of `mfns`; None when there are more than `N`.
    pub fn from_slice(mfns: &[Mfn]) -> Option<Self> {
        let mut l = Self::EMPTY;
        l.mfns.get_mut(..mfns.len())?.copy_from_slice(mfns);
        l.len = mfns.len();
        Some(l)
    }

    /// Appends `mfn`; false (nothing added) when full.
    pub(crate) fn push(&mut self, mfn: Mfn) -> bool {
        match self.mfns.get_mut(self.len) {
            Some(slot) => {
                *slot = mfn;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Removes and returns the last frame.
    pub(crate) fn pop(&mut self) -> Option<Mfn> {
        self.len = self.len.checked_sub(1)?;
        self.mfns.get(self.len).copied()
    }

    /// Removes the frame at `k`, keeping the order of the others.
    pub(crate) fn remove(&mut self, k: usize) {
        if k < self.len {
            self.mfns.copy_within(k + 1..self.len, k);
            self.len -= 1;
        }
    }

    /// The frames, in order.
    pub fn as_slice(&self) -> &[Mfn] {
        self.mfns.get(..self.len).unwrap_or(&[])
    }
}

impl<const N: usize> Default for FrameList<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> Deref for FrameList<N> {
    type Target = [Mfn];
    fn deref(&self) -> &[Mfn] {
        self.as_slice()
    }
}

impl<const N: usize> PartialEq for FrameList<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for FrameList<N> {}

impl<const N: usize> core::fmt::Debug for FrameList<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The shared frames of [`crate::MmConfig`].
pub type SharedFrames = FrameList<MAX_SHARED_FRAMES>;
