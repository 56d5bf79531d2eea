//! The engine's safety invariants, recomputed from scratch (for tests, fuzzing and a
//! debug option in the engine).
//!
//! Between operations:
//! 1. A frame with type references is validated, or it is a preempted pagetable
//!    (`Partial`, after `MmError::Restart`) with exactly one type reference, unpinned;
//!    a pagetable without type references is unvalidated. A partial frame's state
//!    holds its type reference and one general reference, and its slots below
//!    `next_slot` hold theirs (checked as a live table's); the rest is not looked at.
//! 2. Every type count and refcount equals the value recomputed by scanning every live
//!    (typed, validated) table, the pins and the engine's held references.
//! 3. No pagetable or descriptor frame has a writable mapping: every present RW entry of a
//!    live L1 points at a `Writable` frame or a shared frame.
//! 4. Entries of live tables pass their level's checks: RAM or shared targets only for
//!    L1s; L2..L4 entries point at live tables of the next lower level; the
//!    `adjust_guest_*` bits are present.
//! 5. Every live L4's hole slots equal `hole_l4`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::api::{FrameAccess, Level, Mfn};
use crate::frame::{child_level, PageType, Validation};
use crate::mm::Mm;
use crate::pte::*;
use crate::refusal::REFUSAL_LOG_LEN;

impl Mm {
    /// Checks every invariant; returns a description of the first violation.
    pub fn check_invariants(&self, mem: &dyn FrameAccess) -> Result<(), String> {
        let n = self.frames().len();
        let mut refs: Vec<u64> = vec![0; n];
        let mut types: Vec<u64> = vec![0; n];
        let bump = |v: &mut Vec<u64>, m: Mfn| {
            if let Some(x) = usize::try_from(m).ok().and_then(|i| v.get_mut(i)) {
                *x += 1;
            }
        };

        for (i, p) in self.frames().enumerate() {
            let mfn = i as Mfn;
            let mut held_slots = ENTRIES;
            if let Validation::Partial { next_slot } = p.validation {
                if !p.ty.is_pagetable() || p.type_count != 1 || p.pinned {
                    return Err(format!(
                        "mfn {mfn:#x} partially validated but not a preempted table with \
                         one type reference: {p:?}"
                    ));
                }
                if usize::from(next_slot) >= ENTRIES {
                    return Err(format!("mfn {mfn:#x} partial past its last slot: {p:?}"));
                }
                // The partial state's own references (PGT_partial, get_page_light).
                bump(&mut refs, mfn);
                bump(&mut types, mfn);
                held_slots = usize::from(next_slot);
            } else if p.type_count > 0 && p.validation != Validation::Valid {
                return Err(format!(
                    "mfn {mfn:#x} has type refs but is not validated: {p:?}"
                ));
            }
            if p.type_count == 0 && p.ty.is_pagetable() && p.validation != Validation::Unvalidated {
                return Err(format!(
                    "mfn {mfn:#x} is an unreferenced but validated table: {p:?}"
                ));
            }
            // Walks reach validated tables, so every one must be marked: an unmarked
            // one would have its later write-backs go unposted.
            if p.ty.is_pagetable() && p.validation == Validation::Valid && !p.was_pagetable {
                return Err(format!(
                    "mfn {mfn:#x} is a validated table not marked as ever walked: {p:?}"
                ));
            }
            if p.pinned {
                if !p.ty.is_pagetable() || p.type_count == 0 {
                    return Err(format!("mfn {mfn:#x} pinned but not a live table: {p:?}"));
                }
                bump(&mut refs, mfn);
                bump(&mut types, mfn);
            }
            let Some(level) = p.ty.level() else { continue };
            if p.type_count == 0 {
                continue;
            }
            let partial = held_slots < ENTRIES;
            for slot in 0..held_slots {
                let e = mem.read_entry(mfn, slot);
                if level == Level::L4 && is_hole_slot(slot) {
                    if partial {
                        continue; // Written when the validation completes.
                    }
                    let want = self
                        .config()
                        .hole_l4
                        .get(slot - *HOLE_L4_SLOTS.start())
                        .copied()
                        .unwrap_or(0);
                    if e != want {
                        return Err(format!(
                            "L4 mfn {mfn:#x} hole slot {slot} is {e:#x}, expected {want:#x}"
                        ));
                    }
                    continue;
                }
                if !present(e) {
                    continue;
                }
                let here = format!("{level:?} mfn {mfn:#x} slot {slot} entry {e:#x}");
                if e & disallow_mask(level) != 0 {
                    return Err(format!("{here}: disallowed bits"));
                }
                if adjust_guest_entry(level, e) != e {
                    return Err(format!("{here}: missing adjust_guest bits"));
                }
                let t = entry_mfn(e);
                let tinfo = self.page_info(t);
                match level {
                    Level::L1 => {
                        if self.is_shared(t) {
                            continue;
                        }
                        let Some(ti) = tinfo else {
                            return Err(format!("{here}: maps a frame outside RAM"));
                        };
                        bump(&mut refs, t);
                        if e & PAGE_RW != 0 {
                            if ti.ty != PageType::Writable {
                                return Err(format!(
                                    "{here}: writable mapping of a frame typed {:?}",
                                    ti.ty
                                ));
                            }
                            bump(&mut types, t);
                        }
                    }
                    _ => {
                        let want = child_level(level).map(PageType::from_level);
                        let Some(ti) = tinfo else {
                            return Err(format!("{here}: points outside RAM"));
                        };
                        if Some(ti.ty) != want || ti.validation != Validation::Valid {
                            return Err(format!(
                                "{here}: target is {ti:?}, expected live {want:?}"
                            ));
                        }
                        bump(&mut refs, t);
                        bump(&mut types, t);
                    }
                }
            }
        }

        for (m, general, typed) in self.held_refs() {
            if general < typed {
                return Err(format!(
                    "held refs of mfn {m:#x}: typed {typed} > general {general}"
                ));
            }
            let Some(i) = usize::try_from(m).ok().filter(|&i| i < n) else {
                return Err(format!("held refs on non-RAM mfn {m:#x}"));
            };
            if let Some(x) = refs.get_mut(i) {
                *x += u64::from(general);
            }
            if let Some(x) = types.get_mut(i) {
                *x += u64::from(typed);
            }
        }

        for (i, p) in self.frames().enumerate() {
            let (r, t) = (refs.get(i).copied(), types.get(i).copied());
            if r != Some(u64::from(p.refcount)) {
                return Err(format!(
                    "mfn {i:#x}: refcount {} but {} references found ({p:?})",
                    p.refcount,
                    r.unwrap_or(0)
                ));
            }
            if t != Some(u64::from(p.type_count)) {
                return Err(format!(
                    "mfn {i:#x}: type_count {} but {} type references found ({p:?})",
                    p.type_count,
                    t.unwrap_or(0)
                ));
            }
        }
        if self.refusal_log_len() > REFUSAL_LOG_LEN {
            return Err(format!(
                "refusal log holds {} records",
                self.refusal_log_len()
            ));
        }
        Ok(())
    }
}
