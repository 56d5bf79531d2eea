//! `preempt_long_calls`: hypercalls over guest-chosen counts far longer than one exit may
//! run. Xen preempts them between items and continues them (the guest re-executes the
//! `syscall` with the rest); the guest sees only the complete result.
//!
//! The lists are long without memory to match: one page is mapped at every page of a
//! large region (an L1 whose 512 entries map the page, an L2 whose 512 entries are that
//! L1, an L3 whose entries are that L2, hooked into a free slot of the boot L4), so the
//! same records repeat for as long as the count runs.
//!
//! Default run (the integration test checks `--stats` for the continuations and for the
//! exact number of sub-calls, so every entry ran exactly once):
//! * `multicall` of `mc=` entries (default 2^20): 32 pairs `set_debugreg(0, v_j)`,
//!   `get_debugreg(0)`, over and over; rc 0, and each pair's results are (0, v_j);
//! * `mmu_update` of `mu=` requests (default 2^16) on a pinned L1, each pair mapping slot
//!   `j` to frame A, then frame B; rc 0, `*pdone` == count (from a garbage start), every
//!   slot maps frame B;
//! * `mmuext_op` of `me=` `MMUEXT_INVLPG_LOCAL` operations (default 2^18), 24-byte
//!   records read from a page filled with the word 7 (cmd 7, arg1 7); rc 0, done == count.
//!
//! `mode=huge`: a multicall of 2^32 - 1 entries (the maximal count: 256 GiB of list),
//! which takes hours; the integration tests stop pvkvm in the middle of it.
#![no_std]
#![no_main]

use core::arch::asm;

use pv_test_kernels::hypercall::{hypercall2, hypercall4};
use pv_test_kernels::mm::{self, MulticallEntry};
use pv_test_kernels::xen_abi::xen::{hypercall as nr, mmuext, DOMID_SELF};
use pv_test_kernels::{check_eq, cmdline_arg, fail, println, test_kernel, StartInfo};

test_kernel!(main);

/// Slack frames: each alias takes four (data, L1, L2, L3).
const MC_ALIAS: u64 = 100;
const MU_ALIAS: u64 = 104;
const ME_ALIAS: u64 = 108;
/// The L1 the `mmu_update` requests change, and the two frames they map.
const TARGET_L1: u64 = 112;
const FRAME_A: u64 = 113;
const FRAME_B: u64 = 114;

/// Boot L4 slots of the aliased regions (user half, unused by the builder).
const MC_SLOT: u64 = 2;
const MU_SLOT: u64 = 3;
const ME_SLOT: u64 = 4;

/// The region one L3 of `n` entries covers: n GiB. The multicall's covers 2^32 entries.
const MC_GIB: u64 = 256;

/// The TSC, after earlier instructions have completed.
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: lfence + rdtsc read the time-stamp counter; no memory effects.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Maps slack frame `first` at every page of `gib` GiB from boot L4 slot `slot`, with
/// slack frames `first + 1..=first + 3` as its L1, L2 and L3. Returns the region's VA.
fn alias(si: &StartInfo, slot: u64, first: u64, gib: u64) -> u64 {
    if mm::rd(si.pt_base + slot * 8) != 0 {
        fail!(
            "boot L4 slot {} is in use; the aliased region needs it",
            slot
        );
    }
    let (data, l1, l2, l3) = (first, first + 1, first + 2, first + 3);
    let table = |f: u64| (mm::slack_mfn(si, f) << 12) | mm::PDE_FLAGS;
    for k in 0..512u64 {
        mm::wr(
            mm::slack_va(si, l1) + k * 8,
            mm::pte_rw(mm::slack_mfn(si, data)),
        );
        mm::wr(mm::slack_va(si, l2) + k * 8, table(l1));
        mm::wr(
            mm::slack_va(si, l3) + k * 8,
            if k < gib { table(l2) } else { 0 },
        );
    }
    for f in [l1, l2, l3] {
        mm::slack_make_ro(si, f);
    }
    let l4 = mm::va_to_mfn(si, si.pt_base);
    let (rc, done) = mm::mmu_update1(mm::entry_ma(l4, slot), table(l3));
    if rc != 0 || done != 1 {
        fail!(
            "hooking the aliased region into L4 slot {}: rc {}, done {}",
            slot,
            rc,
            done
        );
    }
    slot << 39
}

fn count_arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    match cmdline_arg(si, key) {
        None => default,
        Some(v) => match v.parse() {
            Ok(n) => n,
            Err(_) => fail!("{}={} is not a number", key, v),
        },
    }
}

/// The multicall entries of the data page: pairs set_debugreg(0, v_j), get_debugreg(0).
fn debugreg_pairs(va: u64) {
    for j in 0..32u64 {
        let set = MulticallEntry {
            op: nr::SET_DEBUGREG,
            result: 0x5555,
            args: [0, dr0_value(j), 0, 0, 0, 0],
        };
        let get = MulticallEntry {
            op: nr::GET_DEBUGREG,
            result: 0x5555,
            args: [0; 6],
        };
        for (k, e) in [(2 * j, set), (2 * j + 1, get)] {
            let at = va + k * 64;
            mm::wr(at, e.op);
            mm::wr(at + 8, e.result);
            for (a, v) in e.args.iter().enumerate() {
                mm::wr(at + 16 + a as u64 * 8, *v);
            }
        }
    }
}

fn dr0_value(j: u64) -> u64 {
    0x10_0000 + j * 0x1000
}

fn multicall(list: u64, count: u64) -> i64 {
    // SAFETY: every entry is a debug-register call on DR0, which these kernels never
    // enable.
    unsafe { hypercall2(nr::MULTICALL, list, count) }
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    pv_test_kernels::traps::install_trap_table();
    mm::assume("multicall, mmu_update and mmuext_op are preemptible and continue with the rest; the guest sees only the complete result (common/multicall.c, x86/mm.c)");

    let mc_list = alias(si, MC_SLOT, MC_ALIAS, MC_GIB);
    debugreg_pairs(mm::slack_va(si, MC_ALIAS));

    if cmdline_arg(si, "mode") == Some("huge") {
        println!("huge multicall: 4294967295 entries, entering");
        let rc = multicall(mc_list, u64::from(u32::MAX));
        fail!("the huge multicall returned {} (it should take hours)", rc);
    }

    let mc = count_arg(si, "mc", 1 << 20);
    let mu = count_arg(si, "mu", 1 << 16);
    let me = count_arg(si, "me", 1 << 18);

    // multicall.
    let t = tsc();
    let rc = multicall(mc_list, mc);
    let cycles = tsc() - t;
    check_eq!("multicall rc", rc, 0i64);
    let page = mm::slack_va(si, MC_ALIAS);
    for j in 0..32u64.min(mc / 2) {
        check_eq!("set_debugreg result", mm::rd(page + 2 * j * 64 + 8), 0u64);
        check_eq!(
            "get_debugreg result",
            mm::rd(page + (2 * j + 1) * 64 + 8),
            dr0_value(j)
        );
    }
    println!(
        "multicall of {} entries: rc 0 in {} Mcycles",
        mc,
        cycles >> 20
    );

    // mmu_update on a pinned L1: pairs map slot j to frame A, then to frame B.
    let mu_list = alias(si, MU_SLOT, MU_ALIAS, 1);
    let target = mm::slack_mfn(si, TARGET_L1);
    let reqs = mm::slack_va(si, MU_ALIAS);
    for j in 0..128u64 {
        for (k, frame) in [(2 * j, FRAME_A), (2 * j + 1, FRAME_B)] {
            mm::wr(reqs + k * 16, mm::entry_ma(target, j));
            mm::wr(reqs + k * 16 + 8, mm::pte_rw(mm::slack_mfn(si, frame)));
        }
    }
    for k in 0..512u64 {
        mm::wr(mm::slack_va(si, TARGET_L1) + k * 8, 0);
    }
    mm::slack_make_ro(si, TARGET_L1);
    mm::mmuext_ok("pin the target L1", mmuext::PIN_L1_TABLE, target, 0);
    let mut done: u32 = 0xdead_beef;
    let t = tsc();
    // SAFETY: the requests change only the private, unhooked L1.
    let rc = unsafe {
        hypercall4(
            nr::MMU_UPDATE,
            mu_list,
            mu,
            &mut done as *mut u32 as u64,
            u64::from(DOMID_SELF),
        )
    };
    let cycles = tsc() - t;
    check_eq!("mmu_update rc", rc, 0i64);
    check_eq!("mmu_update done", u64::from(done), mu);
    let b = mm::pte_rw(mm::slack_mfn(si, FRAME_B));
    for j in 0..128u64.min(mu / 2) {
        let e = mm::rd(mm::slack_va(si, TARGET_L1) + j * 8);
        if e & mm::PTE_CMP_MASK != b & mm::PTE_CMP_MASK {
            fail!("target L1 slot {} is {:#x}, expected {:#x}", j, e, b);
        }
    }
    println!(
        "mmu_update of {} requests: rc 0, done {} in {} Mcycles",
        mu,
        done,
        cycles >> 20
    );

    // mmuext_op: 24-byte records over a page of 7s are all INVLPG_LOCAL(7).
    let me_list = alias(si, ME_SLOT, ME_ALIAS, 1);
    for k in 0..512u64 {
        mm::wr(
            mm::slack_va(si, ME_ALIAS) + k * 8,
            u64::from(mmuext::INVLPG_LOCAL),
        );
    }
    let mut done: u32 = 0xdead_beef;
    let t = tsc();
    // SAFETY: single-page invalidations of address 7 change nothing.
    let rc = unsafe {
        hypercall4(
            nr::MMUEXT_OP,
            me_list,
            me,
            &mut done as *mut u32 as u64,
            u64::from(DOMID_SELF),
        )
    };
    let cycles = tsc() - t;
    check_eq!("mmuext_op rc", rc, 0i64);
    check_eq!("mmuext_op done", u64::from(done), me);
    println!(
        "mmuext_op of {} invlpg: rc 0, done {} in {} Mcycles",
        me,
        done,
        cycles >> 20
    );
}
