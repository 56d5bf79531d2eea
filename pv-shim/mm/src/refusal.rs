//! Refusal records: what the engine refused, where, and why, in terms a guest kernel
//! developer can act on.
//!
//! Xen prints the frame number and the raw `type_info` word. A record here keeps the
//! operation and its operands, the guest rip, the innermost failing entry of a recursive
//! validation, the states of the frames involved, and, for a "bad type" refusal caused by
//! a writable mapping, the L1 frame, slot and virtual address of that mapping.

use core::fmt;

use crate::api::{Level, Mfn};
use crate::error::MmError;
use crate::frame::{FrameState, Validation};

/// How many refusals are kept.
pub const REFUSAL_LOG_LEN: usize = 64;

/// The operation that was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmOp {
    /// `get_page` on behalf of the engine.
    GetPage,
    /// `get_page_type` / `get_page_and_type` on behalf of the engine.
    GetPageType,
    /// A release of a reference (only refused when the caller does not hold it).
    PutRef,
    /// `MMUEXT_PIN_Ln_TABLE`.
    PinTable(Level),
    /// `MMUEXT_UNPIN_TABLE`.
    UnpinTable,
    /// `MMUEXT_NEW_BASEPTR` / `MMUEXT_NEW_USER_BASEPTR`.
    SetRoot,
    /// `MMU_NORMAL_PT_UPDATE` / `MMU_PT_UPDATE_PRESERVE_AD` (also `update_va_mapping`).
    ModEntry,
    /// `MMU_MACHPHYS_UPDATE`.
    MachphysUpdate,
    /// `set_gdt` (typing a frame as a descriptor page).
    SetGdt,
    /// `update_descriptor`.
    UpdateDescriptor,
    /// `MMUEXT_COPY_PAGE`.
    CopyPage,
    /// `MMUEXT_CLEAR_PAGE`.
    ClearPage,
}

/// The innermost entry whose validation failed (it may sit several levels below the
/// frame the operation named, e.g. a bad L1 entry found while pinning an L4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryCause {
    /// The table holding the entry.
    pub table: Mfn,
    /// The table's level.
    pub level: Level,
    /// The slot.
    pub slot: u16,
    /// The table's state at the failure (during a validation: `Partial { next_slot }`).
    pub table_state: FrameState,
    /// The entry's value before the update (None when validating an existing entry).
    pub old: Option<u64>,
    /// The entry that was refused.
    pub new: u64,
    /// The frame the refused entry points at, and its state at the time.
    pub target: FrameState,
}

/// Where a writable mapping of a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritableMapping {
    /// The L1 table holding the RW entry.
    pub l1: Mfn,
    /// The slot in that L1.
    pub slot: u16,
    /// A virtual address it maps at (through some validated L2/L3/L4 chain), or None if
    /// no validated L4 reaches that L1.
    pub va: Option<u64>,
}

/// One refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Sequence number (refusals since the engine was created, from 1).
    pub seq: u64,
    /// Guest rip stamped with `Mm::set_context_rip`.
    pub rip: u64,
    /// The operation.
    pub op: MmOp,
    /// The frame the operation named (table, pinned frame, new base pointer, ...).
    pub frame: Mfn,
    /// Slot or descriptor index the operation named, if any.
    pub slot: Option<u16>,
    /// Value the operation tried to store (entry, descriptor, pfn), if any.
    pub value: Option<u64>,
    /// Why.
    pub error: MmError,
    /// The named frame's state (after the refusal: unchanged from before the operation).
    pub frame_state: FrameState,
    /// The innermost failing entry, for refusals found while validating entries.
    pub cause: Option<EntryCause>,
    /// For a bad-type refusal caused by an existing writable mapping: where it is.
    pub writable_mapping: Option<WritableMapping>,
}

impl Refusal {
    /// The errno the guest saw.
    pub fn errno(&self) -> i64 {
        self.error.errno()
    }
}

struct State<'a>(&'a FrameState);

impl fmt::Display for State<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match s.info {
            None if s.shared => write!(f, "mfn {:#x} (shared frame)", s.mfn),
            None => write!(f, "mfn {:#x} (not guest RAM)", s.mfn),
            Some(i) => {
                write!(
                    f,
                    "mfn {:#x} [{:?}, type_count {}, refcount {}",
                    s.mfn, i.ty, i.type_count, i.refcount
                )?;
                match i.validation {
                    Validation::Valid => write!(f, ", validated")?,
                    Validation::Unvalidated => write!(f, ", unvalidated")?,
                    Validation::Partial { next_slot } => {
                        write!(f, ", partially validated up to slot {next_slot}")?
                    }
                }
                if i.pinned {
                    write!(f, ", pinned")?;
                }
                write!(f, "]")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pv-mm refusal #{} at guest rip {:#x}: ",
            self.seq, self.rip
        )?;
        match self.op {
            MmOp::PinTable(l) => write!(f, "pin as {l:?}")?,
            op => write!(f, "{op:?}")?,
        }
        write!(f, " of mfn {:#x}", self.frame)?;
        if let Some(s) = self.slot {
            write!(f, " slot {s}")?;
        }
        if let Some(v) = self.value {
            write!(f, " value {v:#x}")?;
        }
        write!(
            f,
            " -> errno {} ({})\n  frame: {}",
            self.error.errno(),
            self.error,
            State(&self.frame_state)
        )?;
        if let Some(c) = &self.cause {
            write!(
                f,
                "\n  failing entry: {:?} table mfn {:#x} slot {} ",
                c.level, c.table, c.slot
            )?;
            if let Some(o) = c.old {
                write!(f, "old {o:#x} ")?;
            }
            write!(f, "entry {:#x} -> {}", c.new, State(&c.target))?;
            write!(
                f,
                "\n  failing table at the time: {}",
                State(&c.table_state)
            )?;
        }
        if let Some(w) = &self.writable_mapping {
            write!(
                f,
                "\n  conflicting writable mapping: L1 mfn {:#x} slot {}",
                w.l1, w.slot
            )?;
            match w.va {
                Some(va) => write!(f, " (va {va:#x})")?,
                None => write!(f, " (not reachable from any validated L4)")?,
            }
            write!(
                f,
                "; make that mapping read-only (clear _PAGE_RW) before using the frame as a pagetable or descriptor page"
            )?;
        }
        Ok(())
    }
}
