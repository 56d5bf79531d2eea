//! `bench_pte`: the guest side of the PTE-update benchmark. Remaps slack pages between
//! two frames through each path a PV kernel has, timed with the TSC:
//! `mmu_update` in batches of 1, 16 and 512 entries, `update_va_mapping` (no flush), and
//! direct writes to the read-only L1 that the hypervisor traps and emulates. Prints one
//! line per path: `bench <path> calls <n> entries <n> cycles_per_entry <c>` plus the number
//! of hypercalls and trapped writes it made, so the host side can check the trap count
//! (one per hypercall, one per trapped write) against `pvkvm run --stats`.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::mm::{self, MmuUpdate, MMU_NORMAL_PT_UPDATE};
use pv_test_kernels::{check_eq, fail, hypercall, println, test_kernel, StartInfo};

test_kernel!(main);

const PAGES: u64 = 64;

fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads the time-stamp counter; no memory effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// PTE of slack page `i` mapped to the frame of slack page `i` or `i + PAGES` (RW).
fn pte_for(si: &StartInfo, i: u64, flip: bool) -> u64 {
    mm::pte_rw(mm::slack_mfn(si, i + if flip { PAGES } else { 0 }))
}

fn report(path: &str, calls: u64, entries: u64, cycles: u64) {
    println!(
        "bench {} calls {} entries {} cycles_per_entry {}",
        path,
        calls,
        entries,
        cycles / entries.max(1)
    );
}

fn main(si: &'static StartInfo) {
    mm::check_slack(si);
    let walks: [mm::Walk; PAGES as usize] =
        core::array::from_fn(|i| mm::walk(si, mm::slack_va(si, i as u64)));
    let mut hypercalls: u64 = 0;
    let mut flip = false;

    for (batch, rounds) in [(1u64, 200u64), (16, 50), (512, 10)] {
        let mut reqs = [MmuUpdate::default(); 512];
        let start = tsc();
        for _ in 0..rounds {
            flip = !flip;
            for (j, r) in reqs.iter_mut().enumerate().take(batch as usize) {
                let i = j as u64 % PAGES;
                *r = MmuUpdate {
                    ptr: walks[i as usize].pte_ma() | MMU_NORMAL_PT_UPDATE,
                    val: pte_for(si, i, flip),
                };
            }
            // SAFETY: remaps only slack pages, between two own frames.
            let (rc, done) = unsafe { hypercall::mmu_update(&reqs[..batch as usize]) };
            hypercalls += 1;
            if rc != 0 || u64::from(done) != batch {
                fail!("mmu_update batch {}: rc {} done {}", batch, rc, done);
            }
        }
        let cycles = tsc() - start;
        report(
            match batch {
                1 => "mmu_update_1",
                16 => "mmu_update_16",
                _ => "mmu_update_512",
            },
            rounds,
            rounds * batch,
            cycles,
        );
    }

    let rounds = 200;
    let start = tsc();
    for k in 0..rounds {
        let i = k % PAGES;
        flip = !flip;
        let rc = mm::uvm(mm::slack_va(si, i), pte_for(si, i, flip), mm::UVMF_NONE);
        hypercalls += 1;
        check_eq!("update_va_mapping", rc, 0i64);
    }
    report("update_va_mapping", rounds, rounds, tsc() - start);

    // Direct writes to the read-only L1: trapped and emulated (needs the VM assist).
    check_eq!(
        "vm_assist(writable_pagetables)",
        hypercall::vm_assist(mm::VMASST_CMD_ENABLE, mm::VMASST_TYPE_WRITABLE_PAGETABLES),
        0i64
    );
    hypercalls += 1;
    let start = tsc();
    for k in 0..rounds {
        let i = k % PAGES;
        flip = !flip;
        let target = walks[i as usize].pte_va();
        // SAFETY: a store to a read-only mapping of our own L1: it faults and the
        // hypervisor emulates it, remapping a slack page between two own frames.
        unsafe {
            asm!("mov qword ptr [{t}], {v}", t = in(reg) target, v = in(reg) pte_for(si, i, flip))
        };
    }
    report("trapped_write", rounds, rounds, tsc() - start);
    for i in 0..PAGES {
        let now = walks[i as usize].pte_now() & mm::PTE_ADDR_MASK;
        if now != pte_for(si, i, false) & mm::PTE_ADDR_MASK
            && now != pte_for(si, i, true) & mm::PTE_ADDR_MASK
        {
            fail!("slack PTE {} holds {:#x} after the benchmark", i, now);
        }
    }
    println!(
        "bench totals hypercalls {} trapped_writes {}",
        hypercalls, rounds
    );
}
