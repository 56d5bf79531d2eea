//! Per-frame bookkeeping: Xen's `struct page_info` reduced to what a PV MMU needs.
//!
//! Xen packs type, type count, `PGT_validated`, `PGT_partial` and `PGT_pinned` into one
//! word (`type_info`) and the general refcount into `count_info`. Here they are plain
//! fields; partial validation is an explicit [`Validation::Partial`] state instead of a
//! bit plus `nr_validated_ptes`.
//!
//! Types are sticky, as in Xen: when the type count drops to 0 the type stays (a
//! pagetable loses its validation; writable and descriptor pages stay validated, which is
//! safe because their contents can only change after a type change).

use crate::api::{Level, Mfn};

/// What a frame is used as (Xen's `PGT_*_page_table`, `PGT_seg_desc_page`,
/// `PGT_writable_page`, `PGT_none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageType {
    /// Never typed (`PGT_none`).
    None,
    /// L1 pagetable.
    L1,
    /// L2 pagetable.
    L2,
    /// L3 pagetable.
    L3,
    /// L4 pagetable (root).
    L4,
    /// GDT/LDT page (`PGT_seg_desc_page`).
    SegDesc,
    /// Writable data page (`PGT_writable_page`): every writable mapping holds a type ref.
    Writable,
}

impl PageType {
    /// The pagetable type of `level`.
    pub fn from_level(level: Level) -> Self {
        match level {
            Level::L1 => PageType::L1,
            Level::L2 => PageType::L2,
            Level::L3 => PageType::L3,
            Level::L4 => PageType::L4,
        }
    }

    /// The level, if this is a pagetable type.
    pub fn level(self) -> Option<Level> {
        match self {
            PageType::L1 => Some(Level::L1),
            PageType::L2 => Some(Level::L2),
            PageType::L3 => Some(Level::L3),
            PageType::L4 => Some(Level::L4),
            _ => None,
        }
    }

    /// True for L1..L4.
    pub fn is_pagetable(self) -> bool {
        self.level().is_some()
    }

    /// True for types whose contents are audited on the 0 -> 1 type transition.
    pub fn needs_validation(self) -> bool {
        self.is_pagetable() || self == PageType::SegDesc
    }
}

/// The level whose entries point at tables of `level` (None for L4), and the level the
/// entries of `level` point at (None for L1).
pub fn child_level(level: Level) -> Option<Level> {
    match level {
        Level::L1 => None,
        Level::L2 => Some(Level::L1),
        Level::L3 => Some(Level::L2),
        Level::L4 => Some(Level::L3),
    }
}

/// The level of the tables that reference tables of `level`.
pub fn parent_level(level: Level) -> Option<Level> {
    match level {
        Level::L1 => Some(Level::L2),
        Level::L2 => Some(Level::L3),
        Level::L3 => Some(Level::L4),
        Level::L4 => None,
    }
}

/// Validation state of a frame's current type (Xen's `PGT_validated` / `PGT_partial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Contents not (or no longer) audited for the current type.
    Unvalidated,
    /// Validation in progress or preempted (Xen's `PGT_partial` with `nr_validated_ptes`):
    /// slots `< next_slot` hold their references. Between operations only after an
    /// [`MmError::Restart`](crate::MmError::Restart): the partial state then holds the
    /// frame's one type reference and one general reference of its own, and the next
    /// `get_page_type` of the same type takes that type reference over and resumes at
    /// `next_slot`. A failed validation is undone at once.
    Partial {
        /// The next slot to validate.
        next_slot: u16,
    },
    /// Every entry holds its references (pagetables) or the contents were checked.
    Valid,
}

/// Per-frame state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// Current type (sticky when `type_count` is 0, as in Xen).
    pub ty: PageType,
    /// Number of type references.
    pub type_count: u32,
    /// Validation state of `ty`.
    pub validation: Validation,
    /// General references: mappings, table entries, pins, base pointers, engine holds.
    pub refcount: u32,
    /// Pinned (`PGT_pinned`): the pin holds one general and one type reference.
    pub pinned: bool,
    /// The frame has been a validated pagetable (any level) at some time since the
    /// domain was built, so hardware walks (and a host's shadow of them) may have used
    /// it. Never cleared. Until it is set, no walk can have reached the frame as a table:
    /// a walk follows only validated tables (base pointers and their entries). Not Xen
    /// state: it lets the VMM skip posting the stores of a first validation.
    pub was_pagetable: bool,
}

impl PageInfo {
    /// The state without history: a frame with no type references reads as untyped, and
    /// `was_pagetable` reads as false.
    /// (The sticky type of an unreferenced frame only decides whether a later type
    /// change needs a TLB flush.) Used to check that refused operations change nothing.
    pub fn normalized(&self) -> PageInfo {
        if self.type_count == 0 {
            PageInfo {
                ty: PageType::None,
                validation: Validation::Unvalidated,
                was_pagetable: false,
                ..*self
            }
        } else {
            PageInfo {
                was_pagetable: false,
                ..*self
            }
        }
    }
}

impl PageInfo {
    /// A frame never typed or referenced.
    pub const UNTYPED: Self = PageInfo {
        ty: PageType::None,
        type_count: 0,
        validation: Validation::Unvalidated,
        refcount: 0,
        pinned: false,
        was_pagetable: false,
    };
}

impl Default for PageInfo {
    fn default() -> Self {
        Self::UNTYPED
    }
}

/// A snapshot of one frame's state, as recorded in refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameState {
    /// The frame.
    pub mfn: Mfn,
    /// Its state at the time (None: not guest RAM; `shared` tells a shared frame apart).
    pub info: Option<PageInfo>,
    /// True for a configured shared frame (outside RAM, mappable).
    pub shared: bool,
}

#[cfg(test)]
mod tests {
    /// The frame table costs 16 bytes per guest frame (docs/architecture.md, "Bounded work
    /// per exit"): 4 MiB per GiB of guest RAM.
    #[test]
    fn page_info_is_16_bytes() {
        assert!(core::mem::size_of::<super::PageInfo>() <= 16);
    }
}
