//! Property test: random sequences of entry updates, pins, unpins and base-pointer
//! switches from the model guest (32 frames, a pinned 4-level tree). After every step:
//! `check_invariants` (no pagetable has a writable mapping; every type count and refcount
//! equals the recomputed value; every live L4's hole slots equal `hole_l4`; nothing maps
//! outside RAM but the shared frame) and a refused step changed nothing.

use proptest::prelude::*;
use pv_mm::fuzz::model::*;
use pv_mm::fuzz::{pte, FuzzOp, Harness};
use pv_mm::pte::*;
use pv_mm::Level;

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::L1),
        Just(Level::L2),
        Just(Level::L3),
        Just(Level::L4)
    ]
}

/// Frames: RAM (its last frame and the first past it included), a foreign frame, the
/// shared frame, and the largest frame an entry can name.
fn frame() -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => 0u64..NR_FRAMES,
        1 => Just(NR_FRAMES - 1),
        1 => Just(NR_FRAMES),
        2 => Just(35u64),
        2 => Just(SHARED),
        1 => Just(PAGE_ADDR_MASK >> 12)
    ]
}

/// Mostly sane entries (like a kernel writes), some Xen refuses.
fn flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY),
        3 => Just(PAGE_PRESENT | PAGE_ACCESSED),
        2 => Just(0u64),
        1 => Just(PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_NX),
        1 => Just(PAGE_PRESENT | PAGE_RW | PAGE_PSE),
        1 => Just(PAGE_PRESENT | PAGE_PCD),
        1 => Just(PAGE_PRESENT | PAGE_GLOBAL),
        1 => Just(PAGE_PRESENT | PAGE_GNTTAB),
    ]
}

fn slot() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..12,
        1 => Just(256usize),
        1 => Just(271usize),
        1 => Just(511usize),
        1 => 0usize..512
    ]
}

/// Preemption budgets: none, zero (one entry per level and call), a few entries, and
/// about one or three L1s' worth.
fn budget() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(0u32)),
        Just(Some(1)),
        (2u32..700).prop_map(Some),
        Just(Some(1500)),
    ]
}

fn op() -> impl Strategy<Value = FuzzOp> {
    prop_oneof![
        // Updates of any entry of any frame (tables or not).
        6 => (0u64..NR_FRAMES, slot(), frame(), flags(), any::<bool>()).prop_map(
            |(table, slot, t, f, preserve_ad)| FuzzOp::ModEntry {
                table,
                slot,
                value: pte(t, f),
                preserve_ad
            }
        ),
        // L1 updates of the live L1s (a guest remapping its data pages).
        4 => (0usize..3, 0usize..40, 0u64..NR_FRAMES, flags()).prop_map(|(k, slot, t, f)| {
            FuzzOp::ModEntry {
                table: L1S[k],
                slot,
                value: pte(t, f),
                preserve_ad: false,
            }
        }),
        // Bit flips of existing entries of the model's tables (fast path, A/D).
        4 => (0u64..8, 0usize..12, 0u32..64, any::<bool>()).prop_map(|(table, slot, bit, preserve_ad)| {
            FuzzOp::FlipBits { table, slot, bits: 1u64 << bit, preserve_ad }
        }),
        2 => (0u64..NR_FRAMES, level()).prop_map(|(mfn, level)| FuzzOp::Pin { mfn, level }),
        1 => Just(FuzzOp::Pin { mfn: L4, level: Level::L4 }),
        1 => Just(FuzzOp::Pin { mfn: USER_L4, level: Level::L4 }),
        2 => (0u64..NR_FRAMES).prop_map(|mfn| FuzzOp::Unpin { mfn }),
        2 => (
            prop_oneof![
                Just(None),
                Just(Some(L4)),
                Just(Some(USER_L4)),
                (0u64..NR_FRAMES).prop_map(Some)
            ],
            any::<bool>()
        )
            .prop_map(|(new, user)| FuzzOp::SetRoot { new, user }),
        1 => Just(FuzzOp::TlbFlushed),
        // Small budgets preempt pins and base-pointer loads part-way (MmError::Restart):
        // mostly issued again until done, sometimes left partial.
        1 => (budget(), proptest::bool::weighted(0.3))
            .prop_map(|(entries, abandon)| FuzzOp::Budget { entries, abandon }),
        1 => (0u64..NR_FRAMES, 0u64..NR_FRAMES).prop_map(|(dst, src)| FuzzOp::CopyPage { dst, src }),
    ]
}

proptest! {
    // PROPTEST_CASES makes a long run one variable away.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400)
    ))]

    #[test]
    fn invariants_hold_after_every_step(ops in proptest::collection::vec(op(), 1..80)) {
        let mut h = Harness::model_guest();
        h.mm.check_invariants(&h.mem).map_err(TestCaseError::fail)?;
        for op in &ops {
            h.step(op).map_err(TestCaseError::fail)?;
        }
    }
}

/// The generator reaches both outcomes often enough to mean something.
#[test]
fn generator_exercises_accepts_and_refusals() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut ok, mut err) = (0u32, 0u32);
    let mut h = Harness::model_guest();
    for _ in 0..2000 {
        let op = op().new_tree(&mut runner).unwrap().current();
        if h.step(&op).unwrap() {
            ok += 1;
        } else {
            err += 1;
        }
    }
    println!(
        "ok {ok} err {err} restarts {} stats {:?}",
        h.restarts,
        h.mm.stats()
    );
    assert!(ok > 400 && err > 200, "ok {ok} err {err}");
    let st = h.mm.stats();
    assert!(
        st.promotions > 5 && st.fast_path > 20 && st.slow_path > 100 && st.restarts > 5,
        "{st:?}"
    );
}
