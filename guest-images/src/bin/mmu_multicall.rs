//! `mmu_multicall`: `HYPERVISOR_multicall` with 32 `update_va_mapping` entries, a
//! `stack_switch`, `xen_version` and two failing entries.
//!
//! Asserts: the multicall returns 0; every entry's `result` is what the call alone would
//! return (update_va_mapping 0, stack_switch 0, `xen_version(XENVER_version)` equal to a
//! direct call, `xen_version(99)` -ENOSYS, `update_va_mapping` of a VA without an L1
//! -EINVAL); entries after the failing ones still ran (a last `update_va_mapping`); all 33
//! mappings are in place and visible at once (each VA was not present before; the PTEs
//! hold the new MFNs). Only `result` is read back: debug Xen scribbles over the rest of
//! each entry.
#![no_std]
#![no_main]

use pv_test_kernels::hypercall;
use pv_test_kernels::mm::{self, MulticallEntry};
use pv_test_kernels::traps::kernel_stack_top;
use pv_test_kernels::xen_abi::errno::{EINVAL, ENOSYS};
use pv_test_kernels::xen_abi::xen::{hypercall as nr, selector};
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const FIRST_VA: u64 = 50;
const N: usize = 32;

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    pv_test_kernels::traps::install_trap_table();
    mm::assume("multicall_entry {op, result, args[6]}, 64 bytes; failing entries do not stop the list (common/multicall.c)");
    for i in 0..N as u64 {
        mm::fill(mm::slack_va(si, i), mm::seed_of(i));
    }
    for k in 0..=N as u64 {
        mm::remap("unmap", mm::slack_va(si, FIRST_VA + k), 0);
    }
    // SAFETY: XENVER_version takes no buffer.
    let version = unsafe { hypercall::xen_version(0, core::ptr::null_mut()) };

    let mut calls = [MulticallEntry::default(); N + 5];
    let frame_of = |k: u64| N as u64 - 1 - k;
    for (k, call) in calls.iter_mut().enumerate().take(N) {
        let flags = match k % 3 {
            0 => mm::UVMF_NONE,
            1 => mm::UVMF_INVLPG | mm::UVMF_LOCAL,
            _ => mm::UVMF_TLB_FLUSH | mm::UVMF_ALL,
        };
        *call = MulticallEntry {
            op: nr::UPDATE_VA_MAPPING,
            result: 0x5555,
            args: [
                mm::slack_va(si, FIRST_VA + k as u64),
                mm::pte_rw(mm::slack_mfn(si, frame_of(k as u64))),
                flags,
                0,
                0,
                0,
            ],
        };
    }
    calls[N] = MulticallEntry {
        op: nr::STACK_SWITCH,
        result: 0x5555,
        args: [
            selector::FLAT_KERNEL_SS as u64,
            kernel_stack_top(),
            0,
            0,
            0,
            0,
        ],
    };
    calls[N + 1] = MulticallEntry {
        op: nr::XEN_VERSION,
        result: 0x5555,
        args: [0; 6],
    };
    calls[N + 2] = MulticallEntry {
        op: nr::XEN_VERSION,
        result: 0x5555,
        args: [99, 0, 0, 0, 0, 0],
    };
    calls[N + 3] = MulticallEntry {
        op: nr::UPDATE_VA_MAPPING,
        result: 0x5555,
        args: [
            0x1000_0000_0000,
            mm::pte_rw(mm::slack_mfn(si, 0)),
            mm::UVMF_INVLPG,
            0,
            0,
            0,
        ],
    };
    calls[N + 4] = MulticallEntry {
        op: nr::UPDATE_VA_MAPPING,
        result: 0x5555,
        args: [
            mm::slack_va(si, FIRST_VA + N as u64),
            mm::pte_rw(mm::slack_mfn(si, 0)),
            mm::UVMF_NONE,
            0,
            0,
            0,
        ],
    };

    // SAFETY: every call maps slack VAs or is harmless.
    let rc = unsafe { hypercall::multicall(&mut calls) };
    check_eq!("multicall rc", rc, 0i64);
    for (k, call) in calls.iter().enumerate().take(N) {
        let r = call.result as i64;
        if r != 0 {
            fail!(
                "multicall entry {} (update_va_mapping): result {}, expected 0",
                k,
                r
            );
        }
    }
    check_eq!(
        "multicall stack_switch result",
        calls[N].result as i64,
        0i64
    );
    check_eq!(
        "multicall xen_version(XENVER_version) result",
        calls[N + 1].result as i64,
        version
    );
    check_eq!(
        "multicall xen_version(99) result",
        calls[N + 2].result as i64,
        -ENOSYS
    );
    check_eq!(
        "multicall update_va_mapping without an L1: result",
        calls[N + 3].result as i64,
        -EINVAL
    );
    check_eq!(
        "multicall last update_va_mapping result",
        calls[N + 4].result as i64,
        0i64
    );

    for k in 0..N as u64 {
        let va = mm::slack_va(si, FIRST_VA + k);
        let pte = mm::walk(si, va).pte;
        let want = mm::pte_rw(mm::slack_mfn(si, frame_of(k)));
        if pte & mm::PTE_CMP_MASK != want & mm::PTE_CMP_MASK {
            fail!(
                "entry {}: PTE of {:#x} is {:#x}, expected {:#x}",
                k,
                va,
                pte,
                want
            );
        }
        mm::expect_fill(
            "read through a VA mapped by the multicall",
            va,
            mm::seed_of(frame_of(k)),
        );
    }
    mm::expect_fill(
        "VA mapped after the failing entries",
        mm::slack_va(si, FIRST_VA + N as u64),
        mm::seed_of(0),
    );
    println!(
        "multicall of {} entries: all results and effects ok (xen_version {:#x})",
        N + 5,
        version
    );
}
