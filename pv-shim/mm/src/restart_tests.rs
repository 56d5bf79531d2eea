//! Restartable validation: a large tree pinned under a small budget restarts until done,
//! the invariants hold at every restart point and the end state is the unpreempted
//! one; other operations meeting a partial table get Xen's answers.
#![allow(unused_must_use)] // Flush sets are not the point here.

extern crate std;

use alloc::vec::Vec;
use std::time::Instant;

use crate::fuzz::*;
use crate::pte::*;
use crate::*;

/// A tree: frame 0 the L4; `l3s` L3s under L4 slots 0.., each with `l2s` L2s, each with
/// `l1s` L1s whose 512 entries map the last 16 frames (every fourth RW, the rest RO).
struct Tree {
    h: Harness,
    l4: Mfn,
    l3: Vec<Mfn>,
    l2: Vec<Mfn>,
    l1: Vec<Mfn>,
    data: Mfn,
}

const DATA_FRAMES: u64 = 16;

fn tree(l3s: u64, l2s: u64, l1s: u64) -> Tree {
    let nr_l2 = l3s * l2s;
    let nr_l1 = nr_l2 * l1s;
    let nr = 1 + l3s + nr_l2 + nr_l1 + DATA_FRAMES;
    let mut h = Harness::empty(nr);
    let l4 = 0;
    let l3: Vec<Mfn> = (1..=l3s).collect();
    let l2: Vec<Mfn> = (1 + l3s..1 + l3s + nr_l2).collect();
    let l1: Vec<Mfn> = (1 + l3s + nr_l2..1 + l3s + nr_l2 + nr_l1).collect();
    let data = 1 + l3s + nr_l2 + nr_l1;
    for (i, &t) in l3.iter().enumerate() {
        h.mem.set(l4, i, pte(t, LINK));
        for (j, &t2) in l2[i * l2s as usize..][..l2s as usize].iter().enumerate() {
            h.mem.set(t, j, pte(t2, LINK));
        }
    }
    for (k, &t2) in l2.iter().enumerate() {
        for (j, &t1) in l1[k * l1s as usize..][..l1s as usize].iter().enumerate() {
            h.mem.set(t2, j, pte(t1, LINK));
        }
    }
    for &t1 in &l1 {
        for slot in 0..ENTRIES {
            let f = data + (slot as u64 % DATA_FRAMES);
            h.mem
                .set(t1, slot, pte(f, if slot % 4 == 0 { RW } else { RO }));
        }
    }
    Tree {
        h,
        l4,
        l3,
        l2,
        l1,
        data,
    }
}

/// Frame states and memory, for comparing two runs.
fn snapshot(h: &Harness) -> (Vec<Option<PageInfo>>, Vec<Vec<u64>>) {
    let n = h.mem.frames.len() as u64;
    (
        (0..n).map(|m| h.mm.page_info(m).copied()).collect(),
        h.mem.frames.clone(),
    )
}

/// Pins `l4` under `budget`, issuing it again after every restart; returns the number
/// of restarts and the most entries one call checked.
fn pin_to_completion(h: &mut Harness, l4: Mfn, budget: Option<u32>) -> (u32, u32) {
    h.mm.set_preempt_budget(budget);
    let (mut restarts, mut most) = (0u32, 0u32);
    loop {
        let r = h.mm.pin_table(&mut h.mem, l4, Level::L4);
        most = most.max(h.mm.entries_checked());
        h.mm.check_invariants(&h.mem)
            .unwrap_or_else(|e| panic!("after restart {restarts}: {e}"));
        match r {
            Err(MmError::Restart) => restarts += 1,
            Ok(_) => return (restarts, most),
            Err(e) => panic!("pin failed after {restarts} restarts: {e}"),
        }
        assert!(restarts < 1_000_000, "no progress");
    }
}

/// Finishes deferred teardowns (`put_old_guest_table`) under the harness's budget,
/// checking the invariants at every stop; returns the number of restarts.
fn finish_deferred(h: &mut Harness) -> u32 {
    let mut restarts = 0;
    loop {
        let r = h.mm.put_old_guest_table(&mut h.mem);
        h.mm.check_invariants(&h.mem)
            .unwrap_or_else(|e| panic!("after deferred restart {restarts}: {e}"));
        match r {
            Ok(()) => {
                assert!(!h.mm.has_deferred_put());
                return restarts;
            }
            Err(MmError::Restart) => restarts += 1,
            Err(e) => panic!("deferred put refused: {e}"),
        }
        assert!(restarts < 1_000_000, "no progress");
    }
}

#[test]
fn a_large_pin_restarts_until_done_and_ends_as_an_unpreempted_one() {
    // 2 L3s x 4 L2s x 16 L1s: 128 L1s, 65,536 L1 entries.
    let t = tree(2, 4, 16);
    let mut whole = t.h.clone();
    whole.mm.pin_table(&mut whole.mem, t.l4, Level::L4).unwrap();
    let entries = whole.mm.entries_checked();
    assert!(entries > 128 * 512, "{entries}");

    let mut h = t.h.clone();
    const BUDGET: u32 = 2000;
    let (restarts, most) = pin_to_completion(&mut h, t.l4, Some(BUDGET));
    std::println!("{entries} entries: {restarts} restarts, at most {most} entries a call");
    // Every call but the last stopped near the budget: past it by at most one L1 and
    // the entries above it.
    assert!(
        restarts as u64 >= u64::from(entries / (BUDGET + 512)),
        "{restarts}"
    );
    assert!(most <= BUDGET + 512 + 4, "{most}");
    assert_eq!(snapshot(&h), snapshot(&whole));
    assert_eq!(h.mm.refusal_count(), 0, "a restart is no refusal");
    assert_eq!(h.mm.stats().restarts, u64::from(restarts));
    assert_eq!(h.mm.stats().promotions, whole.mm.stats().promotions);

    // And both tear down to nothing.
    for x in [&mut h, &mut whole] {
        x.mm.unpin_table(&mut x.mem, t.l4).unwrap();
        x.mm.check_invariants(&x.mem).unwrap();
        finish_deferred(x);
    }
    assert_eq!(snapshot(&h), snapshot(&whole));
    for m in 0..h.mem.frames.len() as u64 {
        let p = h.mm.page_info(m).unwrap();
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
    }
}

#[test]
fn a_zero_budget_still_progresses_every_call() {
    let t = tree(1, 2, 8);
    let mut whole = t.h.clone();
    whole.mm.pin_table(&mut whole.mem, t.l4, Level::L4).unwrap();
    let mut h = t.h.clone();
    let (restarts, most) = pin_to_completion(&mut h, t.l4, Some(0));
    // Each call does one entry of each table it resumes (an L1 whole), as Xen's check
    // `i > nr_validated_ptes` allows: at least one entry a call, at most one L1's worth
    // and the entries above it. So a call per L2/L3 entry, present or not.
    let upper = (t.l2.len() + t.l3.len()) * ENTRIES;
    assert!(
        restarts as usize >= t.l1.len() - 1 && restarts as usize <= upper,
        "{restarts}"
    );
    assert!(most <= 512 + 3, "{most}");
    assert_eq!(snapshot(&h), snapshot(&whole));
}

/// A restarted pin leaves the L4, the first L3 and its L2 partial; check what each
/// other operation on them gets (Xen 4.17's answers).
#[test]
fn other_operations_meet_partial_tables_as_on_xen() {
    let mut t = tree(2, 2, 4);
    let h = &mut t.h;
    h.mm.set_preempt_budget(Some(600));
    assert_eq!(
        h.mm.pin_table(&mut h.mem, t.l4, Level::L4),
        Err(MmError::Restart)
    );
    assert_eq!(MmError::Restart.errno(), -85);
    h.mm.set_preempt_budget(None);
    h.mm.check_invariants(&h.mem).unwrap();
    let l4 = *h.mm.page_info(t.l4).unwrap();
    assert_eq!(l4.validation, Validation::Partial { next_slot: 0 });
    // The partial state holds one type and one general reference; nothing is pinned.
    assert_eq!(
        (l4.ty, l4.type_count, l4.refcount, l4.pinned),
        (PageType::L4, 1, 1, false)
    );
    let l2 = *h.mm.page_info(t.l2[0]).unwrap();
    assert_eq!(l2.validation, Validation::Partial { next_slot: 2 });
    assert_eq!(
        h.mm.page_info(t.l1[0]).unwrap().validation,
        Validation::Valid
    );
    assert_eq!(h.mm.page_info(t.l1[2]).unwrap().type_count, 0);
    assert_eq!(h.mm.refusal_count(), 0);

    let before = snapshot(h);
    let roots: Vec<Mfn> = Vec::new();
    // Unpin: it was never pinned (-EINVAL).
    assert_eq!(h.mm.unpin_table(&mut h.mem, t.l4), Err(MmError::NotPinned));
    // Another level: bad type (-EINVAL).
    let e = h.mm.pin_table(&mut h.mem, t.l3[0], Level::L2).unwrap_err();
    assert_eq!(
        e,
        MmError::BadType {
            want: PageType::L2,
            have: PageType::L3
        }
    );
    // mmu_update into a partial table: not lockable, and no writable type (-EINVAL).
    let e =
        h.mm.mod_entry(&mut h.mem, t.l2[0], 7, pte(t.data, RO), false, &roots);
    assert_eq!(e.unwrap_err().errno(), -22);
    // A writable mapping of a partial table (-EBUSY), from a live L1.
    let e =
        h.mm.mod_entry(&mut h.mem, t.l1[0], 1, pte(t.l3[0], RW), false, &roots);
    assert_eq!(e.unwrap_err(), MmError::NotWritable { have: PageType::L3 });
    assert_eq!(MmError::NotWritable { have: PageType::L3 }.errno(), -16);
    // Giving a partial frame back: still in use.
    assert_eq!(h.mm.release_frame(t.l3[0]), Err(MmError::InUse));
    h.mm.check_invariants(&h.mem).unwrap();
    assert_eq!(snapshot(h), before, "refusals changed a partial tree");

    // Loading it as a base pointer is the same type: it takes the validation over and
    // completes it (here unbudgeted); the pin then finds it valid.
    h.mm.set_root(&mut h.mem, None, Some(t.l4)).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    h.mm.pin_table(&mut h.mem, t.l4, Level::L4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    let l4 = *h.mm.page_info(t.l4).unwrap();
    assert_eq!(
        (l4.validation, l4.type_count, l4.refcount),
        (Validation::Valid, 2, 2)
    );
}

/// Two L4s share an L3. The first pin stops inside it; the second pin takes the partial
/// L3 over and finishes it; the first pin, issued again, then finds it valid.
#[test]
fn a_partial_table_shared_by_two_trees() {
    let mut t = tree(1, 2, 4);
    let h = &mut t.h;
    let other = t.l1[t.l1.len() - 1] + 1; // The first data frame, as a second L4.
    h.mem.frames[other as usize].iter_mut().for_each(|e| *e = 0);
    h.mem.set(other, 3, pte(t.l3[0], LINK));
    for f in t.l1.iter() {
        // No mapping of the second L4 frame, so it can be a table.
        for slot in (0..ENTRIES).step_by(DATA_FRAMES as usize) {
            h.mem.set(*f, slot, 0);
        }
    }
    let mut whole = h.clone();
    whole
        .mm
        .pin_table(&mut whole.mem, other, Level::L4)
        .unwrap();
    whole.mm.pin_table(&mut whole.mem, t.l4, Level::L4).unwrap();

    h.mm.set_preempt_budget(Some(700));
    assert_eq!(
        h.mm.pin_table(&mut h.mem, t.l4, Level::L4),
        Err(MmError::Restart)
    );
    h.mm.check_invariants(&h.mem).unwrap();
    assert!(matches!(
        h.mm.page_info(t.l3[0]).unwrap().validation,
        Validation::Partial { .. }
    ));
    let (r, _) = pin_to_completion(h, other, Some(700));
    assert!(r > 0);
    let l3 = *h.mm.page_info(t.l3[0]).unwrap();
    assert_eq!((l3.validation, l3.type_count), (Validation::Valid, 1));
    // The first L4 is still partial; issued again, its pin completes.
    let (_, most) = pin_to_completion(h, t.l4, Some(700));
    assert!(most <= 512, "only the L4's own slots remained: {most}");
    assert_eq!(h.mm.page_info(t.l3[0]).unwrap().type_count, 2);
    assert_eq!(snapshot(h), snapshot(&whole));
}

/// While the pin is partial the guest changes an L1 the validation has not reached yet
/// (an untyped frame: plain writes are allowed) so that it maps the L4 writable. The
/// resumed pin fails there and everything, earlier calls' work included, is undone.
#[test]
fn a_failure_while_resuming_undoes_every_call() {
    let mut t = tree(1, 2, 4);
    let h = &mut t.h;
    let pristine = snapshot(h);
    h.mm.set_preempt_budget(Some(600));
    assert_eq!(
        h.mm.pin_table(&mut h.mem, t.l4, Level::L4),
        Err(MmError::Restart)
    );
    let last_l1 = t.l1[t.l1.len() - 1];
    assert_eq!(h.mm.page_info(last_l1).unwrap().type_count, 0);
    h.mm.mod_entry(&mut h.mem, last_l1, 9, pte(t.l4, RW), false, &[])
        .unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    let err = loop {
        match h.mm.pin_table(&mut h.mem, t.l4, Level::L4) {
            Err(MmError::Restart) => h.mm.check_invariants(&h.mem).unwrap(),
            Err(e) => break e,
            Ok(_) => panic!("a writable mapping of the L4 was accepted"),
        }
    };
    assert_eq!(err, MmError::NotWritable { have: PageType::L4 });
    h.mm.check_invariants(&h.mem).unwrap();
    let r = *h.mm.refusals().last().unwrap();
    let c = r.cause.unwrap();
    assert_eq!((c.table, c.slot), (last_l1, 9));
    for m in 0..h.mem.frames.len() as u64 {
        let p = h.mm.page_info(m).unwrap();
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
    }
    // Memory: the slot written, and adjust_guest bits in entries once validated.
    let (_, mem) = snapshot(h);
    for (m, (a, b)) in pristine.1.iter().zip(mem.iter()).enumerate() {
        for (s, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            if (m as Mfn, s) != (last_l1, 9) {
                assert_eq!(x & !ADJUST_BITS, y & !ADJUST_BITS, "mfn {m} slot {s}");
            }
        }
    }
}

/// An L3 entry update that reaches an unvalidated L2 is preempted in it and resumes
/// when issued again, like a pin (Xen's `mod_l3_entry` calls the preemptible
/// `get_page_from_l3e`); the entry is written only when it completes.
#[test]
fn an_l3_entry_update_restarts_too() {
    let mut t = tree(1, 2, 4);
    let h = &mut t.h;
    let (l3, l2b) = (t.l3[0], t.l2[1]);
    h.mem.set(l3, 1, 0); // The L3 links only the first L2 for now.
    pin_to_completion(h, t.l4, None);
    let roots = [t.l4];
    h.mm.set_preempt_budget(Some(600));
    let mut restarts = 0;
    loop {
        match h
            .mm
            .mod_entry(&mut h.mem, l3, 1, pte(l2b, LINK), false, &roots)
        {
            Err(MmError::Restart) => {
                restarts += 1;
                assert_eq!(h.mem.frames[l3 as usize][1], 0, "written before done");
                h.mm.check_invariants(&h.mem).unwrap();
            }
            Ok(_) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(restarts >= 2, "{restarts}");
    h.mm.check_invariants(&h.mem).unwrap();
    assert_eq!(h.mm.page_info(l2b).unwrap().validation, Validation::Valid);
}

/// The numbers for the record: an unpreempted pin of 1M L1 entries, and the same under
/// a 16K-entry budget. Printed, not asserted (timing varies).
#[test]
fn large_pin_timing() {
    let t = tree(1, 16, 128); // 2048 L1s: 1,048,576 L1 entries.
    let mut h = t.h.clone();
    let start = Instant::now();
    h.mm.pin_table(&mut h.mem, t.l4, Level::L4).unwrap();
    let whole = start.elapsed();
    let entries = h.mm.entries_checked();
    let mut p = t.h.clone();
    p.mm.set_preempt_budget(Some(16 << 10));
    let (mut restarts, mut longest) = (0u32, core::time::Duration::ZERO);
    let mut calls = Vec::new();
    loop {
        let s = Instant::now();
        let r = p.mm.pin_table(&mut p.mem, t.l4, Level::L4);
        longest = longest.max(s.elapsed());
        calls.push((s.elapsed(), p.mm.entries_checked()));
        match r {
            Err(MmError::Restart) => restarts += 1,
            Ok(_) => break,
            Err(e) => panic!("{e}"),
        }
    }
    std::println!(
        "pin of {entries} entries: {whole:?} unpreempted; with a 16384-entry budget \
         {restarts} restarts, longest call {longest:?}"
    );
    let mut by_time: Vec<(usize, _)> = calls.iter().copied().enumerate().collect();
    by_time.sort_by_key(|c| core::cmp::Reverse(c.1 .0));
    std::println!(
        "slowest calls (index, (time, entries)): {:?}",
        &by_time[..3]
    );
    assert_eq!(snapshot(&p), snapshot(&h));
}

/// Pins `t`'s L4 without a budget; returns the harness and the unpreempted end state of
/// `op` (run without a budget) for comparison.
fn pinned(t: &Tree) -> Harness {
    let mut h = t.h.clone();
    h.mm.set_preempt_budget(None);
    h.mm.pin_table(&mut h.mem, t.l4, Level::L4).unwrap();
    h
}

#[test]
fn a_large_unpin_finishes_across_restarts_as_an_unpreempted_one() {
    // 2 L3s x 4 L2s x 16 L1s: 128 L1s, 65,536 L1 entries.
    let t = tree(2, 4, 16);
    let mut whole = pinned(&t);
    let t0 = Instant::now();
    whole.mm.unpin_table(&mut whole.mem, t.l4).unwrap();
    let unpreempted = t0.elapsed();
    assert!(!whole.mm.has_deferred_put());

    let mut h = pinned(&t);
    const BUDGET: u32 = 2000;
    h.mm.set_preempt_budget(Some(BUDGET));
    // The unpin itself succeeds (the pin is gone) and leaves the rest deferred.
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    assert!(h.mm.has_deferred_put());
    assert!(!h.mm.page_info(t.l4).unwrap().pinned);
    // Another vCPU unpinning it again is refused: the continuation finishes the put,
    // not the guest.
    h.mm.set_current_vcpu(1);
    assert_eq!(h.mm.unpin_table(&mut h.mem, t.l4), Err(MmError::NotPinned));
    h.mm.set_current_vcpu(0);
    // This vCPU's next operation first continues the teardown (Xen's
    // put_old_guest_table on entry) and, as the budget runs out before it ends, does
    // nothing else: its continuation comes back.
    let before = *h.mm.page_info(t.l4).unwrap();
    assert_eq!(
        h.mm.unpin_table(&mut h.mem, t.l4),
        Err(MmError::Restart),
        "the slot is finished first"
    );
    assert_eq!(h.mm.page_info(t.l4).unwrap().pinned, before.pinned);
    h.mm.check_invariants(&h.mem).unwrap();
    let restarts = 1 + finish_deferred(&mut h);
    std::println!("unpin of 65K entries: {restarts} deferred restarts at budget {BUDGET}");
    assert!(
        restarts as u64 >= 128 * 512 / u64::from(BUDGET + 512),
        "{restarts}"
    );
    assert_eq!(snapshot(&h).0, snapshot(&whole).0);
    for m in 0..h.mem.frames.len() as u64 {
        let p = h.mm.page_info(m).unwrap();
        assert_eq!((p.type_count, p.refcount), (0, 0), "mfn {m}: {p:?}");
    }
    std::println!("unpreempted unpin of 65K entries: {unpreempted:?}");
}

#[test]
fn large_unpin_timing() {
    // 2048 L1s (about 1.06M entries) as in large_pin_timing: whole vs 16K-entry calls.
    let t = tree(4, 8, 64);
    let mut whole = pinned(&t);
    let t0 = Instant::now();
    whole.mm.unpin_table(&mut whole.mem, t.l4).unwrap();
    let unpreempted = t0.elapsed();
    let mut h = pinned(&t);
    h.mm.set_preempt_budget(Some(16 << 10));
    let t0 = Instant::now();
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    let mut most = t0.elapsed();
    let mut calls = 1;
    loop {
        let t0 = Instant::now();
        let r = h.mm.put_old_guest_table(&mut h.mem);
        most = most.max(t0.elapsed());
        calls += 1;
        if r.is_ok() {
            break;
        }
    }
    std::println!(
        "unpin of 1.06M entries: {unpreempted:?} unpreempted; {calls} calls of at most \
         {most:?} under the 16K budget"
    );
    assert_eq!(snapshot(&h).0, snapshot(&whole).0);
}

#[test]
fn an_entry_update_dropping_a_subtree_defers_its_teardown() {
    let t = tree(2, 4, 16);
    let mut whole = pinned(&t);
    let mut h = pinned(&t);
    let roots: Vec<Mfn> = Vec::new();
    whole
        .mm
        .mod_entry(&mut whole.mem, t.l4, 1, 0, false, &roots)
        .unwrap();
    h.mm.set_preempt_budget(Some(1000));
    // Clearing L4 slot 1 drops the last reference to the second L3's subtree.
    h.mm.mod_entry(&mut h.mem, t.l4, 1, 0, false, &roots)
        .unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    assert!(h.mm.has_deferred_put());
    assert_eq!(
        h.mem.frames[t.l4 as usize][1], 0,
        "the update itself is done"
    );
    finish_deferred(&mut h);
    assert_eq!(snapshot(&h), snapshot(&whole));
    assert_eq!(h.mm.page_info(t.l3[1]).unwrap().type_count, 0);
}

#[test]
fn a_new_base_pointer_dropping_the_old_tree_defers_its_teardown() {
    let t2 = tree(2, 4, 16);
    let mut h = t2.h.clone();
    // A second, empty root: the last L1, cleared and unlinked from its L2.
    let spare = *t2.l1.last().unwrap();
    h.mem.frames[spare as usize].fill(0);
    let l2_last = *t2.l2.last().unwrap();
    let idx = h.mem.frames[l2_last as usize]
        .iter()
        .position(|&e| entry_mfn(e) == spare)
        .unwrap();
    h.mem.frames[l2_last as usize][idx] = 0;
    h.mm.set_root(&mut h.mem, None, Some(t2.l4)).unwrap();
    let mut whole = h.clone();
    whole
        .mm
        .set_root(&mut whole.mem, Some(t2.l4), Some(spare))
        .unwrap();
    h.mm.set_preempt_budget(Some(1500));
    h.mm.set_root(&mut h.mem, Some(t2.l4), Some(spare)).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    assert!(h.mm.has_deferred_put());
    let restarts = finish_deferred(&mut h);
    assert!(restarts > 10, "{restarts}");
    assert_eq!(snapshot(&h), snapshot(&whole));
}

/// A frame in partial teardown meets other operations: Xen's `PGT_partial` answers (a
/// partial teardown is the same state as a partial validation).
#[test]
fn operations_on_a_table_in_teardown_get_xens_answers() {
    let t = tree(1, 2, 16);
    let mut h = pinned(&t);
    let roots: Vec<Mfn> = Vec::new();
    // Past the L4's and L3's empty slots (about 1000) into the second L2's L1s.
    h.mm.set_preempt_budget(Some(2100));
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    let l2 = t.l2[1];
    assert!(matches!(
        h.mm.page_info(l2).unwrap().validation,
        Validation::Partial { .. }
    ));
    assert_eq!(h.mm.page_info(l2).unwrap().type_count, 1);
    // From another vCPU (this one's next operation would first continue its
    // old_guest_table): another type: -EINVAL; a writable mapping of it: refused;
    // unpin: not pinned.
    h.mm.set_current_vcpu(1);
    let e = h.mm.pin_table(&mut h.mem, l2, Level::L1).unwrap_err();
    assert_eq!(e.errno(), -22);
    let e =
        h.mm.mod_entry(&mut h.mem, t.l1[0], 1, pte(l2, RW), false, &roots)
            .unwrap_err();
    assert_eq!(e, MmError::NotWritable { have: PageType::L2 });
    assert_eq!(h.mm.unpin_table(&mut h.mem, t.l4), Err(MmError::NotPinned));
    h.mm.check_invariants(&h.mem).unwrap();
    // Once the teardown is finished, the same requests succeed.
    h.mm.set_current_vcpu(0);
    finish_deferred(&mut h);
    h.mm.set_preempt_budget(None);
    assert_eq!(h.mm.page_info(l2).unwrap().type_count, 0);
    h.mm.pin_table(&mut h.mem, l2, Level::L1).unwrap();
    h.mm.unpin_table(&mut h.mem, l2).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
}

/// The same type meets a table in teardown: as on Xen, it takes the partial state over
/// and validates it again from where the teardown got to; the deferred put then finds
/// nothing left to do.
#[test]
fn a_same_type_get_resumes_validation_of_a_table_in_teardown() {
    let t = tree(1, 2, 16);
    let mut h = pinned(&t);
    let whole = pinned(&t);
    h.mm.set_preempt_budget(Some(600));
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    assert!(h.mm.has_deferred_put());
    h.mm.set_preempt_budget(None);
    // Another vCPU pins it (this one would finish its own old_guest_table first).
    h.mm.set_current_vcpu(1);
    h.mm.pin_table(&mut h.mem, t.l4, Level::L4).unwrap();
    h.mm.check_invariants(&h.mem).unwrap();
    h.mm.set_current_vcpu(0);
    assert!(h.mm.has_deferred_put());
    finish_deferred(&mut h);
    assert!(!h.mm.has_deferred_put());
    assert_eq!(snapshot(&h), snapshot(&whole));
}

/// Xen's discipline for a vCPU's deferred teardown: one `old_guest_table` slot. A
/// teardown that stops deep in the tree (inside an L3, inside an L2 of it) leaves only
/// the topmost table in the slot; the tables it stopped in are continued through it
/// (`partial_set`). Every continuation is bounded by the budget (plus one L1, counted
/// whole, and the handful of upper entries on the way down), nothing is capped, and the
/// end state is the unpreempted one.
#[test]
fn a_teardown_stopped_deep_in_the_tree_is_one_old_guest_table() {
    let t = tree(3, 4, 16);
    let mut whole = pinned(&t);
    whole.mm.unpin_table(&mut whole.mem, t.l4).unwrap();
    let mut h = pinned(&t);
    // Past the L4's, the last L3's and its last L2's empty slots (about 1500) into
    // that L2's L1s.
    const BUDGET: u32 = 2100;
    const BOUND: u32 = BUDGET + 512 + 8;
    h.mm.set_preempt_budget(Some(BUDGET));
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    assert!(
        h.mm.entries_checked() <= BOUND,
        "{}",
        h.mm.entries_checked()
    );
    assert_eq!(h.mm.deferred_puts().collect::<Vec<_>>(), alloc::vec![t.l4]);
    let partial = |h: &Harness| {
        (0..h.mem.frames.len() as u64)
            .filter(|&m| {
                matches!(
                    h.mm.page_info(m).unwrap().validation,
                    Validation::Partial { .. }
                )
            })
            .count()
    };
    // Stopped in an L2 under an L3 under the L4: three tables in teardown, one slot.
    assert_eq!(partial(&h), 3);
    let mut calls = 0u32;
    let mut most_partial = 0;
    loop {
        let r = h.mm.put_old_guest_table(&mut h.mem);
        h.mm.check_invariants(&h.mem).unwrap();
        assert!(
            h.mm.entries_checked() <= BOUND,
            "{}",
            h.mm.entries_checked()
        );
        assert!(h.mm.deferred_puts().count() <= 1);
        most_partial = most_partial.max(partial(&h));
        match r {
            Ok(()) => break,
            Err(MmError::Restart) => calls += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(calls < 10_000, "no progress");
    }
    assert!(
        calls as u64 >= 3 * 4 * 16 * 512 / u64::from(BOUND),
        "{calls}"
    );
    assert!(most_partial <= 3, "{most_partial}");
    assert!(!h.mm.has_deferred_put());
    assert_eq!(snapshot(&h).0, snapshot(&whole).0);
}

/// Before anything else, an operation of a vCPU finishes that vCPU's `old_guest_table`
/// under the same budget; while it does not finish, the operation returns `Restart`
/// having done nothing (the guest's continuation comes back). Other vCPUs' operations
/// are not held up.
#[test]
fn every_operation_finishes_old_guest_table_first() {
    let t = tree(2, 4, 16);
    let mut h = pinned(&t);
    h.mm.set_preempt_budget(Some(700));
    h.mm.unpin_table(&mut h.mem, t.l4).unwrap();
    assert_eq!(h.mm.old_guest_table(), Some(t.l4));
    let spare = t.data;
    let before = h.mem.frames[t.l1[0] as usize][0];
    // An entry update of an L1 that is already torn down: not done while the slot's
    // teardown goes on.
    let mut restarts = 0;
    loop {
        match h
            .mm
            .mod_entry(&mut h.mem, t.l1[0], 0, pte(spare, RW), false, &[])
        {
            Err(MmError::Restart) => {
                restarts += 1;
                assert_eq!(h.mem.frames[t.l1[0] as usize][0], before);
            }
            Ok(_) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(restarts < 10_000);
    }
    assert!(restarts > 5, "{restarts}");
    assert_eq!(h.mm.old_guest_table(), None);
    assert_eq!(h.mem.frames[t.l1[0] as usize][0], pte(spare, RW));
    h.mm.check_invariants(&h.mem).unwrap();
}
