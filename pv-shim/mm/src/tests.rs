//! Unit tests: each level's rules and each refusal, on the fake memory and the model
//! guest from `fuzz.rs`.
#![allow(unused_must_use)] // Tests check flush sets where they matter.

extern crate std;

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use crate::fuzz::model::*;
use crate::fuzz::*;
use crate::pte::*;
use crate::*;

fn h() -> Harness {
    let h = Harness::model_guest();
    h.mm.check_invariants(&h.mem).unwrap();
    h
}

fn roots(h: &Harness) -> Vec<Mfn> {
    h.root.into_iter().chain(h.user_root).collect()
}

fn upd(h: &mut Harness, table: Mfn, slot: usize, v: u64) -> Result<FlushSet, MmError> {
    let r = roots(h);
    let res = h.mm.mod_entry(&mut h.mem, table, slot, v, false, &r);
    h.mm.check_invariants(&h.mem).unwrap();
    res
}

fn info(h: &Harness, m: Mfn) -> PageInfo {
    *h.mm.page_info(m).unwrap()
}

fn last(h: &Harness) -> Refusal {
    *h.mm.refusals().last().unwrap()
}

/// Checks an operation was refused with `e` and changed no frame state.
fn refused<T: core::fmt::Debug>(
    h: &mut Harness,
    e: MmError,
    f: impl FnOnce(&mut Harness) -> Result<T, MmError>,
) {
    let before: Vec<_> = (0..NR_FRAMES).map(|m| info(h, m).normalized()).collect();
    let n = h.mm.refusal_count();
    assert_eq!(f(h).unwrap_err(), e);
    let after: Vec<_> = (0..NR_FRAMES).map(|m| info(h, m).normalized()).collect();
    assert_eq!(before, after, "a refusal changed state");
    assert_eq!(h.mm.refusal_count(), n + 1, "refusal not recorded");
    assert_eq!(last(h).error, e);
    h.mm.check_invariants(&h.mem).unwrap();
}

#[test]
fn model_guest_is_consistent() {
    let h = h();
    let l4 = info(&h, L4);
    assert_eq!((l4.ty, l4.type_count, l4.pinned), (PageType::L4, 2, true));
    assert_eq!(info(&h, L3).ty, PageType::L3);
    assert_eq!(info(&h, L1S[0]).ty, PageType::L1);
    assert_eq!(info(&h, DATA0).ty, PageType::Writable);
    assert_eq!(info(&h, DATA0).type_count, 1);
    // Pagetables are mapped read-only: one general ref from the L1 plus their links.
    assert_eq!(info(&h, L2).refcount, 2);
}

// ---------------------------------------------------------------- L1 rules

#[test]
fn l1_maps_owned_frame_rw() {
    let mut h = h();
    let before = info(&h, 7);
    upd(&mut h, L1S[0], 200, pte(7, RW)).unwrap();
    let after = info(&h, 7);
    assert_eq!(after.refcount, before.refcount + 1);
    assert_eq!((after.ty, after.type_count), (PageType::Writable, 1));
    // Unmapping drops both.
    upd(&mut h, L1S[0], 200, 0).unwrap();
    assert_eq!(info(&h, 7).refcount, before.refcount);
    assert_eq!(info(&h, 7).type_count, 0);
}

#[test]
fn l1_refuses_frame_outside_ram() {
    let mut h = h();
    refused(&mut h, MmError::ForeignMapping, |h| {
        upd(h, L1S[0], 200, pte(35, RO))
    });
    assert_eq!(MmError::ForeignMapping.errno(), -16);
}

#[test]
fn l1_shared_frame_rw_is_allowed_but_never_a_table() {
    let mut h = h();
    upd(&mut h, L1S[1], 201, pte(SHARED, RW)).unwrap();
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| h.mm.pin_table(&mut h.mem, SHARED, Level::L1),
    );
    // Nor a lower-level table through an L2 entry.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| upd(h, L2, 10, pte(SHARED, LINK)),
    );
}

#[test]
fn l1_flag_rules() {
    let mut h = h();
    for bad in [PAGE_PCD, PAGE_PWT, PAGE_PAT, PAGE_GNTTAB] {
        refused(
            &mut h,
            MmError::BadFlags {
                level: Level::L1,
                bits: bad,
            },
            |h| upd(h, L1S[0], 200, pte(7, RW | bad)),
        );
    }
    // G, NX, AVAIL and AVAIL_HIGH are allowed in an L1.
    for ok in [PAGE_GLOBAL, PAGE_NX, PAGE_AVAIL, 1 << 55] {
        upd(&mut h, L1S[0], 200, pte(7, RO | ok)).unwrap();
    }
}

#[test]
fn adjust_guest_l1e_kernel_and_user() {
    let mut h = h();
    upd(&mut h, L1S[0], 200, pte(7, RO)).unwrap();
    assert_eq!(
        h.mem.read_entry(L1S[0], 200),
        pte(7, RO | PAGE_USER | PAGE_GUEST_KERNEL)
    );
    upd(&mut h, L1S[0], 201, pte(7, RO | PAGE_USER)).unwrap();
    assert_eq!(
        h.mem.read_entry(L1S[0], 201),
        pte(7, RO | PAGE_USER | PAGE_GLOBAL)
    );
    // Upper levels get U; L4 entries also A.
    assert_eq!(h.mem.read_entry(L2, 0) & PAGE_USER, PAGE_USER);
    upd(&mut h, L4, 5, pte(L3, PAGE_PRESENT)).unwrap();
    assert_eq!(
        h.mem.read_entry(L4, 5),
        pte(L3, PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED)
    );
}

// ------------------------------------------------- first validation (unwalked stores)

#[test]
fn initial_tables_count_as_walked() {
    let h = h();
    for t in [L4, L3, L2, L1S[0], L1S[1], L1S[2]] {
        assert!(info(&h, t).was_pagetable, "mfn {t}");
    }
    assert!(!info(&h, DATA0).was_pagetable);
}

#[test]
fn first_validation_writes_unwalked_and_later_ones_post() {
    let mut h = h();
    // Frame 9 is data mapped RW by L1S[0] slot 9: unmap it, then fill it as Linux fills
    // a fresh direct-map L1 (kernel entries, without U) while no table points at it.
    upd(&mut h, L1S[0], 9, 0).unwrap();
    for slot in 0..3 {
        h.mem.set(9, slot, pte(DATA0 + 3 + slot as u64, RO));
    }
    let (w, u) = (h.mem.writes, h.mem.unwalked_writes);
    h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    // The same adjusted entries as ever, none of them posted.
    assert_eq!(h.mem.unwalked_writes - u, 3);
    assert_eq!(h.mem.writes, w);
    for slot in 0..3 {
        assert_eq!(
            h.mem.read_entry(9, slot),
            pte(DATA0 + 3 + slot as u64, RO | PAGE_USER | PAGE_GUEST_KERNEL)
        );
    }
    assert!(info(&h, 9).was_pagetable);
    // Unpinned it stays "walked" (a host may still hold a shadow of it): a new kernel
    // entry written while it is not a table is adjusted by a posted store.
    h.mm.unpin_table(&mut h.mem, 9).unwrap();
    assert_eq!(info(&h, 9).type_count, 0);
    assert!(info(&h, 9).was_pagetable);
    h.mem.set(9, 7, pte(DATA0 + 4, RO));
    let (w, u) = (h.mem.writes, h.mem.unwalked_writes);
    h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap();
    assert_eq!((h.mem.writes - w, h.mem.unwalked_writes - u), (1, 0));
    assert_eq!(
        h.mem.read_entry(9, 7),
        pte(DATA0 + 4, RO | PAGE_USER | PAGE_GUEST_KERNEL)
    );
}

#[test]
fn a_refused_first_validation_leaves_the_frame_unwalked() {
    let mut h = h();
    upd(&mut h, L1S[0], 9, 0).unwrap();
    h.mem.set(9, 0, pte(DATA0 + 3, RO));
    // Slot 1 maps a frame outside RAM: the validation fails after slot 0's write-back.
    h.mem.set(9, 1, pte(35, RO));
    assert_eq!(
        h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap_err(),
        MmError::ForeignMapping
    );
    h.mm.check_invariants(&h.mem).unwrap();
    assert!(!info(&h, 9).was_pagetable, "no walk can have reached it");
    h.mem.set(9, 1, 0);
    let w = h.mem.writes;
    h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap();
    assert_eq!(h.mem.writes, w, "still a first validation: nothing posted");
    assert!(info(&h, 9).was_pagetable);
}

#[test]
fn a_fresh_l4_gets_its_hole_slots_unwalked() {
    let mut h = h();
    // Frame 10 (data, mapped RW by L1S[1] slot 10) becomes an empty L4.
    upd(&mut h, L1S[1], 10, 0).unwrap();
    let (w, u) = (h.mem.writes, h.mem.unwalked_writes);
    h.mm.pin_table(&mut h.mem, 10, Level::L4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    assert_eq!((h.mem.writes - w, h.mem.unwalked_writes - u), (0, 16));
    let hole = test_hole();
    for (k, slot) in HOLE_L4_SLOTS.enumerate() {
        assert_eq!(h.mem.read_entry(10, slot), hole[k]);
    }
}

#[test]
fn rw_mapping_of_a_pagetable_is_refused() {
    let mut h = h();
    for (t, ty) in [
        (L1S[2], PageType::L1),
        (L2, PageType::L2),
        (L3, PageType::L3),
        (L4, PageType::L4),
    ] {
        refused(&mut h, MmError::NotWritable { have: ty }, |h| {
            upd(h, L1S[0], 200, pte(t, RW))
        });
    }
    assert_eq!(MmError::NotWritable { have: PageType::L1 }.errno(), -16);
    // Read-only is fine.
    upd(&mut h, L1S[0], 200, pte(L2, RO)).unwrap();
}

#[test]
fn pinning_a_frame_mapped_rw_names_the_mapping() {
    let mut h = h();
    // Frame 9 is mapped RW by L1S[0] slot 9 (9 % 3 == 0), VA = L4 0 / L3 0 / L2 0 / slot 9.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| h.mm.pin_table(&mut h.mem, 9, Level::L1),
    );
    let r = last(&h);
    let w = r.writable_mapping.unwrap();
    assert_eq!((w.l1, w.slot, w.va), (L1S[0], 9, Some(9 << 12)));
    let text = r.to_string();
    assert!(text.contains("L1 mfn 0x3 slot 9 (va 0x9000)"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert_eq!(r.errno(), -22);
}

#[test]
fn nested_bad_type_names_innermost_entry_and_mapping() {
    let mut h = h();
    // Hook data frame 10 in as an L1 under the live L2: refused, and the record names the
    // failing entry and where frame 10 is mapped writable (L1S[1] slot 10).
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| upd(h, L2, 7, pte(10, LINK)),
    );
    let r = last(&h);
    let c = r.cause.unwrap();
    assert_eq!((c.table, c.level, c.slot), (L2, Level::L2, 7));
    assert_eq!(c.target.mfn, 10);
    let w = r.writable_mapping.unwrap();
    assert_eq!((w.l1, w.slot), (L1S[1], 10));
    assert_eq!(w.va, Some((1 << 21) | (10 << 12)));
}

// ---------------------------------------------------------------- L2..L4 rules

#[test]
fn superpages_and_upper_flags_refused() {
    let mut h = h();
    refused(&mut h, MmError::Superpage { level: Level::L2 }, |h| {
        upd(h, L2, 10, pte(9, LINK | PAGE_PSE))
    });
    refused(&mut h, MmError::Superpage { level: Level::L3 }, |h| {
        upd(h, L3, 10, pte(9, LINK | PAGE_PSE))
    });
    refused(
        &mut h,
        MmError::BadFlags {
            level: Level::L4,
            bits: PAGE_PSE,
        },
        |h| upd(h, L4, 10, pte(L3, LINK | PAGE_PSE)),
    );
    for lvl_table in [
        (Level::L2, L2, L1S[0]),
        (Level::L3, L3, L2),
        (Level::L4, L4, L3),
    ] {
        let (level, t, child) = lvl_table;
        for bad in [PAGE_GLOBAL, PAGE_PCD, PAGE_PWT] {
            refused(&mut h, MmError::BadFlags { level, bits: bad }, |h| {
                upd(h, t, 10, pte(child, LINK | bad))
            });
        }
    }
}

#[test]
fn hole_slots_written_on_promote_and_refused_to_guest() {
    let mut h = Harness::empty(NR_FRAMES);
    // Garbage in the hole is ignored by validation and replaced.
    h.mem.set(0, 256, pte(35, RW | PAGE_PSE));
    h.mem.set(0, 271, 0xdead_beef);
    h.mm.pin_table(&mut h.mem, 0, Level::L4).unwrap();
    let hole = test_hole();
    for (k, slot) in (256..=271).enumerate() {
        assert_eq!(h.mem.read_entry(0, slot), hole[k]);
    }
    h.mm.check_invariants(&h.mem).unwrap();
    for slot in [256usize, 263, 271] {
        refused(&mut h, MmError::HoleSlot { slot: slot as u16 }, |h| {
            upd(h, 0, slot, 0)
        });
    }
    // Slots 255 and 272 are the guest's.
    upd(&mut h, 0, 255, 0).unwrap();
    upd(&mut h, 0, 272, 0).unwrap();
}

#[test]
fn table_looping_into_itself_is_refused() {
    let mut h = h();
    // An L4 entry pointing at the L4 itself wants an L3: type mismatch.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L3,
            have: PageType::L4,
        },
        |h| upd(h, L4, 1, pte(L4, LINK)),
    );
    // An L2 entry pointing at its own L2.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::L2,
        },
        |h| upd(h, L2, 9, pte(L2, LINK)),
    );
    // A loop through lower levels: a fresh L3 whose L2 points back at the L3 as an L1.
    let mut h = Harness::empty(NR_FRAMES);
    h.mem.set(0, 0, pte(1, LINK)); // L4 -> 1 (L3)
    h.mem.set(1, 0, pte(2, LINK)); // L3 -> 2 (L2)
    h.mem.set(2, 0, pte(1, LINK)); // L2 -> 1 as an L1: 1 is already typed L3
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::L3,
        },
        |h| h.mm.pin_table(&mut h.mem, 0, Level::L4),
    );
    let c = last(&h).cause.unwrap();
    assert_eq!((c.table, c.slot, c.level), (2, 0, Level::L2));
    for m in 0..3 {
        assert_eq!(info(&h, m).type_count, 0);
        assert_eq!(info(&h, m).refcount, 0);
    }
}

#[test]
fn linear_pagetables_are_refused() {
    let mut h = h();
    // Same-level entries: an L4 entry to another L4, an L3 to another L3, an L2 to L2.
    h.mm.pin_table(&mut h.mem, USER_L4, Level::L4).unwrap();
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L3,
            have: PageType::L4,
        },
        |h| upd(h, L4, 2, pte(USER_L4, LINK)),
    );
    h.mem.set(20, 0, 0);
    upd(&mut h, L1S[2], 20, pte(20, RO)).unwrap(); // make 20 RO so it can be a table
    h.mm.pin_table(&mut h.mem, 20, Level::L3).unwrap();
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L2,
            have: PageType::L3,
        },
        |h| upd(h, L3, 3, pte(20, LINK)),
    );
}

// ---------------------------------------------------------------- pins and roots

#[test]
fn pin_twice_refused_counts_unchanged() {
    let mut h = h();
    refused(&mut h, MmError::AlreadyPinned, |h| {
        h.mm.pin_table(&mut h.mem, L4, Level::L4)
    });
    refused(&mut h, MmError::NotPinned, |h| {
        h.mm.unpin_table(&mut h.mem, L3)
    });
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.unpin_table(&mut h.mem, 99)
    });
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.pin_table(&mut h.mem, 99, Level::L1)
    });
    // Pinning at the wrong level.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L3,
            have: PageType::L4,
        },
        |h| h.mm.pin_table(&mut h.mem, L4, Level::L3),
    );
}

#[test]
fn unpin_of_a_loaded_root_keeps_it_typed() {
    let mut h = h();
    h.mm.unpin_table(&mut h.mem, L4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    let l4 = info(&h, L4);
    assert_eq!((l4.ty, l4.type_count, l4.pinned), (PageType::L4, 1, false));
    assert_eq!(l4.validation, Validation::Valid);
    assert_eq!(info(&h, L3).type_count, 1, "tree below stays validated");
    // Dropping the root now tears everything down.
    h.mm.set_root(&mut h.mem, Some(L4), None).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    for m in 0..NR_FRAMES {
        let p = info(&h, m);
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
    }
    assert_eq!(info(&h, L4).validation, Validation::Unvalidated);
}

#[test]
fn set_root_takes_new_before_releasing_old() {
    let mut h = h();
    // Same root: nothing happens.
    let before = info(&h, L4);
    h.mm.set_root(&mut h.mem, Some(L4), Some(L4)).unwrap();
    assert_eq!(info(&h, L4), before);
    // Switch to the user L4 (validated on the spot), then back.
    h.mm.set_root(&mut h.mem, Some(L4), Some(USER_L4)).unwrap();
    h.root = Some(USER_L4);
    h.mm.check_invariants(&h.mem).unwrap();
    assert_eq!(info(&h, USER_L4).type_count, 1);
    assert_eq!(info(&h, L3).type_count, 2, "L3 now linked from two L4s");
    assert_eq!(info(&h, L4).type_count, 1, "pin remains");
    // Releasing a root that was never loaded is refused.
    refused(&mut h, MmError::NotHeld, |h| {
        h.mm.set_root(&mut h.mem, Some(L3), Some(L4))
    });
    // A new root that does not validate leaves the old one loaded.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L4,
            have: PageType::L3,
        },
        |h| h.mm.set_root(&mut h.mem, Some(USER_L4), Some(L3)),
    );
}

#[test]
fn teardown_releases_every_count() {
    let mut h = h();
    h.mm.pin_table(&mut h.mem, USER_L4, Level::L4).unwrap();
    h.mm.unpin_table(&mut h.mem, USER_L4).unwrap();
    h.mm.unpin_table(&mut h.mem, L4).unwrap();
    h.mm.set_root(&mut h.mem, Some(L4), None).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    for m in 0..NR_FRAMES {
        let p = info(&h, m);
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
    }
    assert!(h.mm.stats().teardowns >= 6);
}

#[test]
fn failed_validation_is_undone_exactly() {
    let mut h = Harness::empty(NR_FRAMES);
    // An L2 whose slots 0 and 1 are good L1s and slot 2 is an L1 mapping itself RW.
    for (k, l1) in [3u64, 4, 5].iter().enumerate() {
        h.mem.set(2, k, pte(*l1, LINK));
        h.mem.set(*l1, 0, pte(10 + k as u64, RW));
    }
    h.mem.set(5, 1, pte(5, RW));
    refused(&mut h, MmError::NotWritable { have: PageType::L1 }, |h| {
        h.mm.pin_table(&mut h.mem, 2, Level::L2)
    });
    for m in 0..NR_FRAMES {
        let p = info(&h, m);
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
        assert_ne!(p.ty, PageType::L2);
    }
    let c = last(&h).cause.unwrap();
    assert_eq!((c.table, c.level, c.slot), (5, Level::L1, 1));
    // Once fixed, the same pin succeeds.
    h.mem.set(5, 1, pte(5, RO));
    h.mm.pin_table(&mut h.mem, 2, Level::L2).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    assert_eq!(info(&h, 5).refcount, 2);
}

// ---------------------------------------------------------------- fast path

fn fast_path_flip(bit: u64, level: Level) -> bool {
    let mut h = h();
    let (t, slot) = match level {
        Level::L1 => (L1S[0], 9usize),
        Level::L2 => (L2, 0),
        Level::L3 => (L3, 0),
        Level::L4 => (L4, 0),
    };
    let old = h.mem.read_entry(t, slot);
    let n = h.mm.stats().fast_path;
    let r = upd(&mut h, t, slot, old ^ bit);
    r.is_ok() && h.mm.stats().fast_path == n + 1
}

macro_rules! fast_path_bit {
    ($name:ident, $bit:expr) => {
        #[test]
        fn $name() {
            assert_ne!(FASTPATH_FLAG_WHITELIST & $bit, 0);
            // Clearing U is re-added by adjust_guest, so flip it only from the kernel
            // side (the model's entries carry U after adjustment).
            for level in [Level::L1, Level::L2, Level::L3, Level::L4] {
                if $bit == PAGE_GLOBAL && level != Level::L1 {
                    continue; // G is refused by the L2..L4 disallow mask
                }
                assert!(fast_path_flip($bit, level), "{level:?}");
            }
        }
    };
}

fast_path_bit!(fast_path_nx, PAGE_NX);
fast_path_bit!(fast_path_avail_high, 1u64 << 55);
fast_path_bit!(fast_path_avail, 1u64 << 10);
fast_path_bit!(fast_path_global, PAGE_GLOBAL);
fast_path_bit!(fast_path_dirty, PAGE_DIRTY);
fast_path_bit!(fast_path_accessed, PAGE_ACCESSED);
fast_path_bit!(fast_path_user, PAGE_USER);

#[test]
fn fast_path_rw_only_for_upper_levels() {
    assert!(!fast_path_flip(PAGE_RW, Level::L1));
    for level in [Level::L2, Level::L3, Level::L4] {
        assert!(fast_path_flip(PAGE_RW, level), "{level:?}");
    }
}

#[test]
fn fast_path_whitelist_is_exactly_these_bits() {
    let expect = PAGE_NX
        | PAGE_AVAIL_HIGH
        | PAGE_AVAIL
        | PAGE_GLOBAL
        | PAGE_DIRTY
        | PAGE_ACCESSED
        | PAGE_USER;
    assert_eq!(FASTPATH_FLAG_WHITELIST, expect);
    // Every other bit (address, P, RW, PWT, PCD, PAT/PSE) takes the slow path or is
    // refused.
    for bit in 0..64 {
        let b = 1u64 << bit;
        if FASTPATH_FLAG_WHITELIST & b != 0 || b == PAGE_GNTTAB {
            continue;
        }
        assert!(!fast_path_flip(b, Level::L1), "bit {bit}");
    }
}

#[test]
fn preserve_ad_keeps_accessed_and_dirty() {
    let mut h = h();
    let old = h.mem.read_entry(L1S[0], 9);
    assert_eq!(
        old & (PAGE_ACCESSED | PAGE_DIRTY),
        PAGE_ACCESSED | PAGE_DIRTY
    );
    let new = old & !(PAGE_ACCESSED | PAGE_DIRTY | PAGE_RW);
    let r = roots(&h);
    h.mm.mod_entry(&mut h.mem, L1S[0], 9, new, true, &r)
        .unwrap();
    assert_eq!(
        h.mem.read_entry(L1S[0], 9),
        new | PAGE_ACCESSED | PAGE_DIRTY
    );
    assert_eq!(
        info(&h, 9).type_count,
        0,
        "RW dropped: writable ref released"
    );
}

// ---------------------------------------------------------------- plain writes

#[test]
fn plain_write_path() {
    let mut h = h();
    // Frame 20 is an ordinary data page mapped RW: raw value written, no validation.
    upd(&mut h, 20, 3, 0x1234_5678_9abc_def0).unwrap();
    assert_eq!(h.mem.read_entry(20, 3), 0x1234_5678_9abc_def0);
    // Frame 7 is mapped RO only (type count 0): a transient writable ref works too.
    upd(&mut h, 7, 3, 42).unwrap();
    assert_eq!(h.mem.read_entry(7, 3), 42);
    assert_eq!(info(&h, 7).type_count, 0);
    assert_eq!(h.mm.stats().plain_writes, 2);
    // Outside RAM: refused.
    refused(&mut h, MmError::NotOwned, |h| upd(h, SHARED, 0, 0));
    refused(&mut h, MmError::BadOffset, |h| upd(h, 20, 512, 0));
}

// ---------------------------------------------------------------- flushes

#[test]
fn type_change_after_writable_mapping_needs_a_flush() {
    let mut h = h();
    // Unmap data frame 9 (RW in L1S[0] slot 9), then pin it as an L1.
    upd(&mut h, L1S[0], 9, pte(9, RO)).unwrap();
    h.mem.set(9, 0, 0);
    let fl = h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap();
    assert!(fl.all_vcpus, "stale writable TLB entry must be flushed");
    // After a full flush the next type change needs none.
    h.mm.unpin_table(&mut h.mem, 9).unwrap();
    upd(&mut h, L1S[0], 12, pte(12, RO)).unwrap();
    h.mm.tlb_flushed();
    let fl = h.mm.pin_table(&mut h.mem, 12, Level::L1).unwrap();
    assert_eq!(fl, FlushSet::default());
}

#[test]
fn l4_update_of_a_loaded_root_reports_flush() {
    let mut h = h();
    let fl = upd(&mut h, L4, 3, pte(L3, LINK)).unwrap();
    assert!(fl.local_all);
    assert!(!fl.all_vcpus, "only this vCPU's root and the pin use it");
    // Not loaded: no flush.
    h.mm.pin_table(&mut h.mem, USER_L4, Level::L4).unwrap();
    let fl = upd(&mut h, USER_L4, 3, pte(L3, LINK)).unwrap();
    assert_eq!(fl, FlushSet::default());
}

// ---------------------------------------------------------------- other ops

#[test]
fn machphys_only_own_frames() {
    let mut h = h();
    h.mm.machphys_update(&mut h.mem, 5, 0x55).unwrap();
    assert_eq!(h.mem.m2p.get(&5), Some(&0x55));
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.machphys_update(&mut h.mem, 35, 1)
    });
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.machphys_update(&mut h.mem, SHARED, 1)
    });
}

const CODE_DPL0: u64 = 0x00af_9a00_0000_ffff;
const TSS: u64 = 0x0000_8900_0000_0067;

#[test]
fn segdesc_validation() {
    let mut h = h();
    // Frame 7 is mapped RO only: can be a GDT page.
    h.mem.set(7, 1, CODE_DPL0);
    h.mem.set(7, 2, TSS);
    refused(&mut h, MmError::BadDescriptor { index: 2 }, |h| {
        h.mm.get_segdesc_page(&mut h.mem, 7)
    });
    assert_eq!(h.mem.read_entry(7, 1), CODE_DPL0, "refused frame untouched");
    h.mem.set(7, 2, 0);
    h.mm.get_segdesc_page(&mut h.mem, 7).unwrap();
    assert_eq!((h.mem.read_entry(7, 1) >> 45) & 3, 3, "DPL fixed up");
    assert_eq!(info(&h, 7).ty, PageType::SegDesc);
    // Now it cannot be mapped writable, and mmu_update into it is refused.
    refused(
        &mut h,
        MmError::NotWritable {
            have: PageType::SegDesc,
        },
        |h| upd(h, L1S[0], 200, pte(7, RW)),
    );
    refused(&mut h, MmError::SegDescTable, |h| upd(h, 7, 0, 0));
    // update_descriptor works on it and checks the descriptor.
    h.mm.update_descriptor(&mut h.mem, 7, 24, CODE_DPL0)
        .unwrap();
    assert_eq!((h.mem.read_entry(7, 3) >> 45) & 3, 3);
    refused(&mut h, MmError::BadDescriptor { index: 4 }, |h| {
        h.mm.update_descriptor(&mut h.mem, 7, 32, TSS)
    });
    refused(&mut h, MmError::BadOffset, |h| {
        h.mm.update_descriptor(&mut h.mem, 7, 4, 0)
    });
    h.mm.put_segdesc_page(&mut h.mem, 7);
    assert_eq!(info(&h, 7).type_count, 0);
    h.mm.check_invariants(&h.mem).unwrap();
    // A frame mapped RW cannot become a GDT page; the refusal names the mapping.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::SegDesc,
            have: PageType::Writable,
        },
        |h| h.mm.get_segdesc_page(&mut h.mem, 9),
    );
    assert!(last(&h).writable_mapping.is_some());
    // update_descriptor on a writable data page is allowed.
    h.mm.update_descriptor(&mut h.mem, 9, 8, CODE_DPL0).unwrap();
    // Releasing a GDT frame not held is refused.
    let n = h.mm.refusal_count();
    h.mm.put_segdesc_page(&mut h.mem, 9);
    assert_eq!(h.mm.refusal_count(), n + 1);
}

#[test]
fn copy_and_clear_refuse_pagetables() {
    let mut h = h();
    let bt = |have| MmError::BadType {
        want: PageType::Writable,
        have,
    };
    refused(&mut h, bt(PageType::L2), |h| {
        h.mm.clear_page(&mut h.mem, L2)
    });
    refused(&mut h, bt(PageType::L1), |h| {
        h.mm.copy_page(&mut h.mem, L1S[0], 9)
    });
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.clear_page(&mut h.mem, 35)
    });
    refused(&mut h, MmError::NotOwned, |h| {
        h.mm.copy_page(&mut h.mem, 9, SHARED)
    });
    // Copying from a pagetable into a data page is fine (reading is harmless).
    h.mm.copy_page(&mut h.mem, 20, L1S[0]).unwrap();
    assert_eq!(h.mem.frames[20], h.mem.frames[L1S[0] as usize]);
    h.mm.clear_page(&mut h.mem, 20).unwrap();
    assert!(h.mem.frames[20].iter().all(|&e| e == 0));
    h.mm.check_invariants(&h.mem).unwrap();
}

#[test]
fn engine_references_are_checked() {
    let mut h = h();
    h.mm.get_page(20).unwrap();
    h.mm.get_page_and_type(&mut h.mem, 7, PageType::Writable)
        .unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    // Can't type frame 7 as a table while the engine holds a writable ref on it.
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| h.mm.pin_table(&mut h.mem, 7, Level::L1),
    );
    let _ = h.mm.put_page_and_type(&mut h.mem, 7);
    let _ = h.mm.put_page(&mut h.mem, 20);
    h.mm.check_invariants(&h.mem).unwrap();
    // Releasing what is not held is refused and changes nothing.
    let before = info(&h, 20);
    let n = h.mm.refusal_count();
    let _ = h.mm.put_page(&mut h.mem, 20);
    let _ = h.mm.put_page_type(&mut h.mem, 20);
    assert_eq!(info(&h, 20), before);
    assert_eq!(h.mm.refusal_count(), n + 2);
    assert_eq!(last(&h).error, MmError::NotHeld);
    refused(&mut h, MmError::InvalidType, |h| {
        h.mm.get_page_type(&mut h.mem, 20, PageType::None)
    });
    refused(&mut h, MmError::NotOwned, |h| h.mm.get_page(77));
    h.mm.check_invariants(&h.mem).unwrap();
}

#[test]
fn refusal_log_keeps_last_64_and_stamps_rip() {
    let mut h = h();
    for i in 0..100u64 {
        h.mm.set_context_rip(0xffff_ffff_8100_0000 + i);
        let _ = upd(&mut h, L1S[0], 200, pte(35, RO));
    }
    assert_eq!(h.mm.refusal_count(), 100);
    let v: Vec<_> = h.mm.refusals().collect();
    assert_eq!(v.len(), REFUSAL_LOG_LEN);
    assert_eq!(v[0].seq, 37);
    assert_eq!(v[63].rip, 0xffff_ffff_8100_0000 + 99);
    let text = format!("{}", v[63]);
    assert!(text.contains("rip 0xffffffff81000063"), "{text}");
    assert!(text.contains("errno -16"), "{text}");
}

#[test]
fn errno_mapping() {
    use xen_abi::errno::*;
    let cases = [
        (MmError::NotOwned, -EINVAL),
        (MmError::ForeignMapping, -EBUSY),
        (MmError::NotWritable { have: PageType::L1 }, -EBUSY),
        (MmError::AlreadyPinned, -EINVAL),
        (MmError::HoleSlot { slot: 256 }, -EINVAL),
        (MmError::Superpage { level: Level::L2 }, -EINVAL),
    ];
    for (e, n) in cases {
        assert_eq!(e.errno(), n, "{e:?}");
    }
}

#[test]
fn partial_state_is_explicit_during_validation() {
    // L2 frame 2: slot 0 -> L1 frame 3, which maps data frame 10 RW; slot 1 -> frame 10
    // as an L1. Slot 1 fails: 10 has a writable mapping (from 3, validated a moment ago).
    let mut h = Harness::empty(NR_FRAMES);
    h.mem.set(2, 0, pte(3, LINK));
    h.mem.set(3, 7, pte(10, RW));
    h.mem.set(2, 1, pte(10, LINK));
    refused(
        &mut h,
        MmError::BadType {
            want: PageType::L1,
            have: PageType::Writable,
        },
        |h| h.mm.pin_table(&mut h.mem, 2, Level::L2),
    );
    let r = last(&h);
    let c = r.cause.unwrap();
    assert_eq!((c.table, c.slot), (2, 1));
    // At the failure the L2 was explicitly partially validated up to slot 1 ...
    let ts = c.table_state.info.unwrap();
    assert_eq!(ts.validation, Validation::Partial { next_slot: 1 });
    assert_eq!((ts.ty, ts.type_count), (PageType::L2, 1));
    // ... the writable mapping was found in the L1 that slot 0 had just validated (not
    // reachable from any L4, so no VA) ...
    let w = r.writable_mapping.unwrap();
    assert_eq!((w.l1, w.slot, w.va), (3, 7, None));
    assert!(r.to_string().contains("partially validated up to slot 1"));
    // ... and afterwards everything is back to unreferenced.
    assert_eq!(
        r.frame_state.info.unwrap().validation,
        Validation::Unvalidated
    );
    for m in 0..NR_FRAMES {
        assert_eq!((info(&h, m).type_count, info(&h, m).refcount), (0, 0));
    }
}

#[test]
fn refusal_display_is_actionable() {
    let mut h = h();
    h.mm.set_context_rip(0xffff_ffff_8100_1234);
    let _ = upd(&mut h, L2, 7, pte(10, LINK));
    let text = last(&h).to_string();
    std::println!("{text}");
    for want in [
        "rip 0xffffffff81001234",
        "ModEntry of mfn 0x2 slot 7",
        "errno -22",
        "wanted L1 but the frame is Writable",
        "failing entry: L2 table mfn 0x2 slot 7",
        "conflicting writable mapping: L1 mfn 0x4 slot 10 (va 0x20a000)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

// ---------------------------------------------------------------- fuzz smoke

#[test]
fn fuzz_one_seeded_random_inputs() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // PROPTEST_CASES scales this run like the property tests (3000 by default).
    let runs: u64 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000);
    for _ in 0..runs {
        let len = (next() % 240) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fuzz_one(&data);
    }
}

#[test]
fn fuzz_one_edge_inputs() {
    fuzz_one(&[]);
    fuzz_one(&[0xff; 600]);
    fuzz_one(&[0; 600]);
    let v: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    fuzz_one(&v);
}

#[test]
fn pending_flush_after_clearing_a_former_pagetable() {
    let mut h = h();
    // Retire the user L4 after using it, then clear it: its paging-structure cache
    // entries may be stale, so the type change to Writable asks for a flush.
    h.mm.pin_table(&mut h.mem, USER_L4, Level::L4).unwrap();
    h.mm.unpin_table(&mut h.mem, USER_L4).unwrap();
    assert_eq!(h.mm.take_pending_flush(), FlushSet::default());
    h.mm.clear_page(&mut h.mem, USER_L4).unwrap();
    let fl = h.mm.take_pending_flush();
    assert!(fl.all_vcpus);
    assert_eq!(h.mm.take_pending_flush(), FlushSet::default(), "taken once");
}

/// The engine over the host's storage, built in place from `Mm::EMPTY`, behaves as
/// `Mm::new`'s: the model guest's root pins and loads to the same frame states, and a
/// reset forgets everything (the slots are cleared, nothing is allocated).
#[test]
fn an_engine_over_host_storage_built_in_place_matches_mm_new() {
    let reference = h();
    let cfg = reference.mm.config().clone();
    let slots: &'static mut [FrameSlot] =
        std::boxed::Box::leak(std::vec![FrameSlot::EMPTY; NR_FRAMES as usize].into_boxed_slice());
    let mut h = Harness::model_guest();
    let mut mm = std::boxed::Box::new(Mm::EMPTY);
    mm.reset_with_storage(cfg.clone(), slots);
    assert_eq!(mm.owned_frames(), NR_FRAMES);
    mm.pin_table(&mut h.mem, L4, Level::L4).unwrap();
    mm.set_root(&mut h.mem, None, Some(L4)).unwrap();
    for m in 0..NR_FRAMES {
        assert_eq!(mm.page_info(m), reference.mm.page_info(m), "mfn {m}");
    }
    mm.check_invariants(&h.mem).unwrap();
    let again: &'static mut [FrameSlot] =
        std::boxed::Box::leak(std::vec![FrameSlot::EMPTY; NR_FRAMES as usize].into_boxed_slice());
    mm.reset_with_storage(cfg, again);
    assert!((0..NR_FRAMES).all(|m| mm.page_info(m) == Some(&PageInfo::UNTYPED)));
    assert_eq!((mm.refusal_count(), mm.loaded_roots_of(0)), (0, &[][..]));
}
