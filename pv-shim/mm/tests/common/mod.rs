//! Strategies the property tests share.

use proptest::prelude::*;
use pv_mm::Level;

/// Any table level.
pub fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::L1),
        Just(Level::L2),
        Just(Level::L3),
        Just(Level::L4)
    ]
}

/// Preemption budgets: none, zero (one entry per level and call), a few entries, and
/// about one or three L1s' worth.
pub fn budget() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(0u32)),
        Just(Some(1)),
        (2u32..700).prop_map(Some),
        Just(Some(1500)),
    ]
}
