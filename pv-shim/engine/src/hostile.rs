//! Property test: any sequence of hypercalls with hostile arguments and hostile guest
//! memory behind the pointers, preempted by the host at any point, is answered without a
//! panic, and a hypercall that returns to the guest changes no register but rax (the ones
//! that switch context, `iret` and a `multicall` holding one, excepted), or is a
//! continuation: rip back onto the `syscall`, the same number in rax, and only the
//! argument registers rewritten.

use proptest::prelude::*;

use crate::testutil::*;
use crate::{guest, Outcome, Stats};

/// Addresses a hostile guest would pass: its own data, the last page of the address
/// space (mapped: pointer arithmetic there must not wrap), unmapped and read-only
/// pages, the hypervisor hole, non-canonical and null pointers, and anything at all.
fn pointer() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x1000).prop_map(|o| DATA_VA + o),
        (0u64..0x1000).prop_map(|o| TOP_VA + o),
        // The last words of the address space: a field after them would wrap.
        (0u64..16).prop_map(|o| u64::MAX - o),
        Just(RO_VA),
        Just(UNMAPPED_VA),
        Just(0u64),
        Just(0xffff_8000_0000_0000u64),
        Just(0x0000_8000_0000_0000u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// Small numbers (commands, counts, ports, vCPU ids) or pointers or anything.
fn argument() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, pointer(), any::<u64>(), Just(u64::from(u32::MAX))]
}

fn hypercall() -> impl Strategy<Value = (u64, [u64; 5], std::vec::Vec<u8>)> {
    (
        prop_oneof![0u64..48, any::<u64>()],
        [argument(), argument(), argument(), argument(), argument()],
        proptest::collection::vec(any::<u8>(), 0..256),
    )
}

proptest! {
    // PROPTEST_CASES makes a long run one variable away.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn hostile_hypercalls_are_answered_without_panics(
        calls in proptest::collection::vec(hypercall(), 1..8),
        preempt_after in proptest::option::of(1u64..4),
    ) {
        let (mut v, mut d, mut p) = setup();
        p.preempt_after = preempt_after;
        let mut s = Stats::new();
        for (nr, args, memory) in calls {
            // What the pointers point at: the guest's own bytes.
            let _ = guest::copy_to_guest(&v, &mut p, DATA_VA, &memory);
            let _ = guest::copy_to_guest(&v, &mut p, TOP_VA, &memory);
            let mut r = distinct_regs();
            r.rax = nr;
            (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (args[0], args[1], args[2], args[3], args[4]);
            let before = r;
            let out = crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s);
            let switches = matches!(
                nr,
                xen_abi::xen::hypercall::IRET | xen_abi::xen::hypercall::MULTICALL
            );
            let mut after = r;
            after.rax = before.rax;
            if after.rip == before.rip.wrapping_sub(2) && !switches {
                prop_assert_eq!(r.rax, nr, "a continuation re-enters the same hypercall");
                (after.rdi, after.rsi, after.rdx, after.r10, after.r8) =
                    (before.rdi, before.rsi, before.rdx, before.r10, before.r8);
                after.rip = before.rip;
            }
            if out == Outcome::Resume && !switches {
                prop_assert_eq!(after, before, "hypercall {} changed registers", nr);
            }
            if matches!(out, Outcome::Crash(_) | Outcome::Shutdown(_)) {
                break;
            }
        }
    }
}
