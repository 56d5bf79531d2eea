//! Property test: any sequence of operations with hostile operands, the extremes of every
//! guest-controlled number included (frames at and past the end of the domain and up to
//! `u64::MAX`, entries with every bit set, slot 511 and past the frame, byte offsets at
//! the end of the frame and of the address space), keeps every invariant, and a refused
//! operation changes nothing ((`Harness::step`)). Case counts honour `PROPTEST_CASES`.

use proptest::prelude::*;
use pv_mm::fuzz::model::NR_FRAMES;
use pv_mm::fuzz::{pte, FuzzOp, Harness, LINK, RO, RW};
use pv_mm::pte::*;
use pv_mm::{Level, Mfn};

/// Frames a hostile guest names: the model's own, the last one, the first past the end,
/// the shared frame, a foreign frame, frames whose `<< 12` leaves the address field, and
/// anything.
fn frame() -> impl Strategy<Value = Mfn> {
    prop_oneof![
        4 => 0..NR_FRAMES,
        1 => Just(NR_FRAMES - 1),
        1 => Just(NR_FRAMES),
        1 => Just(pv_mm::fuzz::model::SHARED),
        1 => Just(NR_FRAMES + 3),
        1 => Just((1u64 << 40) - 1),
        1 => Just(1u64 << 52),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX >> 12),
        1 => any::<u64>(),
    ]
}

/// Slots: the model's live ones, both ends of the frame, the hole's edges, and past the
/// frame up to `usize::MAX`.
fn slot() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..8,
        2 => 0usize..ENTRIES,
        2 => Just(ENTRIES - 1),
        1 => Just(255usize),
        1 => Just(256usize),
        1 => Just(271usize),
        1 => Just(272usize),
        1 => Just(ENTRIES),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

/// Entry values: well-formed entries of hostile frames, and raw extremes.
fn entry() -> impl Strategy<Value = u64> {
    let flags = prop_oneof![
        Just(LINK),
        Just(RO),
        Just(RW),
        Just(0u64),
        Just(PAGE_PRESENT),
        Just(RW | PAGE_NX | PAGE_GLOBAL | PAGE_USER),
        Just(RW | PAGE_PSE),
        Just(PAGE_FLAGS_MASK),
        any::<u64>().prop_map(|f| f & PAGE_FLAGS_MASK),
    ];
    prop_oneof![
        6 => (frame(), flags).prop_map(|(m, f)| pte(m, f)),
        1 => Just(u64::MAX),
        1 => Just(!PAGE_RW),
        1 => Just(PAGE_ADDR_MASK | PAGE_PRESENT),
        1 => Just(PAGE_ADDR_MASK | LINK),
        1 => Just(1u64 << 63 | PAGE_PRESENT),
        1 => any::<u64>(),
    ]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::L1),
        Just(Level::L2),
        Just(Level::L3),
        Just(Level::L4)
    ]
}

/// Byte offsets for `update_descriptor`: aligned, misaligned, the last descriptor, the
/// end of the frame, and the top of the address space.
fn offset() -> impl Strategy<Value = usize> {
    prop_oneof![
        (0usize..512).prop_map(|i| i * 8),
        Just(4088usize),
        Just(4092usize),
        Just(4095usize),
        Just(4096usize),
        Just(usize::MAX - 7),
        Just(usize::MAX),
        any::<usize>(),
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
        6 => (frame(), slot(), entry(), any::<bool>()).prop_map(|(table, slot, value, ad)| {
            FuzzOp::ModEntry { table, slot, value, preserve_ad: ad }
        }),
        1 => (frame(), slot(), 0u32..64, any::<bool>()).prop_map(|(table, slot, b, ad)| {
            FuzzOp::FlipBits { table, slot, bits: 1 << b, preserve_ad: ad }
        }),
        2 => (frame(), level()).prop_map(|(mfn, level)| FuzzOp::Pin { mfn, level }),
        1 => frame().prop_map(|mfn| FuzzOp::Unpin { mfn }),
        1 => (proptest::option::of(frame()), any::<bool>())
            .prop_map(|(new, user)| FuzzOp::SetRoot { new, user }),
        1 => (frame(), any::<u64>()).prop_map(|(mfn, pfn)| FuzzOp::Machphys { mfn, pfn }),
        1 => (frame(), frame()).prop_map(|(dst, src)| FuzzOp::CopyPage { dst, src }),
        1 => frame().prop_map(|mfn| FuzzOp::ClearPage { mfn }),
        1 => frame().prop_map(|mfn| FuzzOp::SetGdt { mfn }),
        1 => Just(FuzzOp::DropGdt),
        1 => (frame(), offset(), any::<u64>())
            .prop_map(|(mfn, offset, desc)| FuzzOp::UpdateDescriptor { mfn, offset, desc }),
        1 => Just(FuzzOp::TlbFlushed),
        // Small budgets preempt pins and base-pointer loads part-way (MmError::Restart):
        // mostly issued again until done, sometimes left partial.
        1 => (budget(), proptest::bool::weighted(0.3))
            .prop_map(|(entries, abandon)| FuzzOp::Budget { entries, abandon }),
    ]
}

proptest! {
    // PROPTEST_CASES makes a long run one variable away.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000)
    ))]

    #[test]
    fn hostile_operations_keep_every_invariant(ops in proptest::collection::vec(op(), 1..48)) {
        let mut h = Harness::model_guest();
        for op in &ops {
            if let Err(e) = h.step(op) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
