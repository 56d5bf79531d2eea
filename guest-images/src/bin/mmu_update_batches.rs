//! `mmu_update_batches`: `HYPERVISOR_mmu_update` on L1 entries found by walking the
//! guest's own tables (boot L4 at `pt_base`, entries followed through the M2P).
//!
//! Slack frames 0..63 hold distinct patterns. Test VAs (other slack frames) are first
//! unmapped (`update_va_mapping(va, 0, UVMF_INVLPG)`), so every `mmu_update` turns a
//! not-present entry into a present one and the new translation must be visible at once,
//! without a flush. Asserts:
//!
//! * batches of 1, 16 and 512 requests: rc 0, done = count, the PTEs hold the new MFNs and
//!   reads through each VA show the new frame's pattern (the 512-request batch writes 32
//!   entries 16 times each: requests are applied in order, the last one wins);
//! * `MMU_PT_UPDATE_PRESERVE_AD` keeps A|D already in the PTE; `MMU_NORMAL_PT_UPDATE`
//!   does not (D checked only: the CPU may set A speculatively);
//! * `MMU_MACHPHYS_UPDATE` of an own frame shows in the M2P at once (then restored); of a
//!   frame that is not ours: -EINVAL;
//! * a batch of 5 whose 3rd request is bad (PCD in a domU's L1e: -EINVAL) returns
//!   -EINVAL and done 2; requests 0-1 applied, 2-4 not.
#![no_std]
#![no_main]

use pv_test_kernels::mm::{self, MmuUpdate};
use pv_test_kernels::xen_abi::errno::EINVAL;
use pv_test_kernels::xen_abi::xen::mmuext;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const DATA_FRAMES: u64 = 64;

fn unmap(si: &StartInfo, i: u64) {
    mm::remap("unmap test VA", mm::slack_va(si, i), 0);
}

fn expect_pte(what: &str, si: &StartInfo, i: u64, want: u64) {
    let got = mm::walk(si, mm::slack_va(si, i)).pte;
    if got & mm::PTE_CMP_MASK != want & mm::PTE_CMP_MASK {
        fail!(
            "{}: PTE of {:#x} is {:#x}, expected {:#x} (compared under {:#x})",
            what,
            mm::slack_va(si, i),
            got,
            want,
            mm::PTE_CMP_MASK
        );
    }
}

fn batch(si: &StartInfo, what: &str, reqs: &[MmuUpdate]) {
    let (rc, done) = mm::mmu_update(reqs);
    if rc != 0 || done as usize != reqs.len() {
        fail!(
            "{}: mmu_update of {} requests returned {}, done {}; expected 0, done {}",
            what,
            reqs.len(),
            rc,
            done,
            reqs.len()
        );
    }
    let _ = si;
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    pv_test_kernels::traps::install_trap_table();
    mm::assume("slack = pt_base + (nr_pt_frames + 1) * 4096, 128 frames, mapped RW (xg_dom_x86.c alloc_pgtables_pv)");
    mm::assume("mmu_update of an L1e does not flush the TLB; not-present -> present needs no flush, present -> present does (INVLPG_LOCAL used there)");
    for i in 0..DATA_FRAMES {
        mm::fill(mm::slack_va(si, i), mm::seed_of(i));
    }

    // Batch of 1: VA of slack 64 -> frame 1.
    unmap(si, 64);
    let w = mm::walk(si, mm::slack_va(si, 64));
    check_eq!("PTE after unmapping", w.pte, 0u64);
    let val = mm::pte_rw(mm::slack_mfn(si, 1));
    batch(
        si,
        "batch of 1",
        &[MmuUpdate {
            ptr: w.pte_ma(),
            val,
        }],
    );
    expect_pte("batch of 1", si, 64, val);
    mm::expect_fill(
        "batch of 1: read through the remapped VA",
        mm::slack_va(si, 64),
        mm::seed_of(1),
    );
    println!(
        "batch of 1: ok (L1 mfn {:#x} slot {})",
        w.l1_mfn, w.l1_index
    );

    // Batch of 16: VAs of slack 65..80 -> frames 17..2 (reversed).
    let mut reqs = [MmuUpdate::default(); 16];
    for (k, r) in reqs.iter_mut().enumerate() {
        let i = 65 + k as u64;
        unmap(si, i);
        *r = MmuUpdate {
            ptr: mm::walk(si, mm::slack_va(si, i)).pte_ma(),
            val: mm::pte_rw(mm::slack_mfn(si, 17 - k as u64)),
        };
    }
    batch(si, "batch of 16", &reqs);
    for k in 0..16u64 {
        expect_pte("batch of 16", si, 65 + k, reqs[k as usize].val);
        mm::expect_fill(
            "batch of 16: read through a remapped VA",
            mm::slack_va(si, 65 + k),
            mm::seed_of(17 - k),
        );
    }
    println!("batch of 16: ok");

    // Batch of 512: VAs of slack 81..112 (32 entries), each written 16 times.
    let mut big = [MmuUpdate::default(); 512];
    let mut ptrs = [0u64; 32];
    for v in 0..32u64 {
        unmap(si, 81 + v);
        ptrs[v as usize] = mm::walk(si, mm::slack_va(si, 81 + v)).pte_ma();
    }
    let frame_of = |j: u64| (j * 7 + 3) % DATA_FRAMES;
    for (j, r) in big.iter_mut().enumerate() {
        let j = j as u64;
        *r = MmuUpdate {
            ptr: ptrs[(j % 32) as usize],
            val: mm::pte_rw(mm::slack_mfn(si, frame_of(j))),
        };
    }
    batch(si, "batch of 512", &big);
    for v in 0..32u64 {
        let f = frame_of(480 + v);
        expect_pte(
            "batch of 512 (last write wins)",
            si,
            81 + v,
            mm::pte_rw(mm::slack_mfn(si, f)),
        );
        mm::expect_fill(
            "batch of 512: read through a remapped VA",
            mm::slack_va(si, 81 + v),
            mm::seed_of(f),
        );
    }
    println!("batch of 512: ok");

    // MMU_PT_UPDATE_PRESERVE_AD.
    unmap(si, 113);
    let w = mm::walk(si, mm::slack_va(si, 113));
    batch(
        si,
        "NORMAL with A|D",
        &[MmuUpdate {
            ptr: w.pte_ma(),
            val: mm::pte_rw(mm::slack_mfn(si, 4)),
        }],
    );
    if w.pte_now() & (mm::PTE_A | mm::PTE_D) != mm::PTE_A | mm::PTE_D {
        fail!("NORMAL update with A|D: PTE {:#x} lacks A|D", w.pte_now());
    }
    let val = (mm::slack_mfn(si, 5) << 12) | mm::PTE_P | mm::PTE_RW;
    batch(
        si,
        "PRESERVE_AD",
        &[MmuUpdate {
            ptr: w.pte_ma() | mm::MMU_PT_UPDATE_PRESERVE_AD,
            val,
        }],
    );
    let got = w.pte_now();
    if got & mm::PTE_CMP_MASK != val & mm::PTE_CMP_MASK
        || got & (mm::PTE_A | mm::PTE_D) != mm::PTE_A | mm::PTE_D
    {
        fail!(
            "MMU_PT_UPDATE_PRESERVE_AD with {:#x} over an entry with A|D: PTE {:#x}, expected the new frame with A|D kept",
            val,
            got
        );
    }
    mm::mmuext_ok(
        "MMUEXT_INVLPG_LOCAL",
        mmuext::INVLPG_LOCAL,
        mm::slack_va(si, 113),
        0,
    );
    mm::expect_fill(
        "PRESERVE_AD: read through the VA",
        mm::slack_va(si, 113),
        mm::seed_of(5),
    );
    let val = (mm::slack_mfn(si, 6) << 12) | mm::PTE_P | mm::PTE_RW;
    batch(
        si,
        "NORMAL without A|D",
        &[MmuUpdate {
            ptr: w.pte_ma(),
            val,
        }],
    );
    let got = w.pte_now();
    if got & mm::PTE_CMP_MASK != val & mm::PTE_CMP_MASK || got & mm::PTE_D != 0 {
        fail!(
            "MMU_NORMAL_PT_UPDATE with {:#x} (no D) over an entry with D: PTE {:#x}, expected D clear",
            val,
            got
        );
    }
    println!(
        "MMU_PT_UPDATE_PRESERVE_AD: ok (PTE {:#x} after NORMAL)",
        got
    );

    // MMU_MACHPHYS_UPDATE of an own frame.
    let mfn0 = mm::slack_mfn(si, 0);
    let pfn0 = mm::m2p(mfn0);
    let alias = pfn0 + 1;
    batch(
        si,
        "MACHPHYS_UPDATE",
        &[MmuUpdate {
            ptr: (mfn0 << 12) | mm::MMU_MACHPHYS_UPDATE,
            val: alias,
        }],
    );
    check_eq!(
        "M2P entry right after MMU_MACHPHYS_UPDATE",
        mm::m2p(mfn0),
        alias
    );
    batch(
        si,
        "MACHPHYS_UPDATE (restore)",
        &[MmuUpdate {
            ptr: (mfn0 << 12) | mm::MMU_MACHPHYS_UPDATE,
            val: pfn0,
        }],
    );
    check_eq!("M2P entry after restoring", mm::m2p(mfn0), pfn0);
    let (rc, done) = mm::mmu_update1((mm::MFN_NOT_RAM << 12) | mm::MMU_MACHPHYS_UPDATE, 0);
    if rc != -EINVAL || done != 0 {
        fail!("MMU_MACHPHYS_UPDATE of mfn {:#x} (not ours): returned {}, done {}; expected -EINVAL, done 0", mm::MFN_NOT_RAM, rc, done);
    }
    println!(
        "MMU_MACHPHYS_UPDATE: ok (mfn {:#x}: pfn {:#x} -> {:#x} -> {:#x})",
        mfn0, pfn0, alias, pfn0
    );

    // A batch with a bad request in the middle.
    mm::assume("a domU (no iomem/ioport caps, no PCI devices) may not set PCD/PWT/PAT in an L1e: -EINVAL (mm.c l1_disallow_mask)");
    let mut bad = [MmuUpdate::default(); 5];
    for k in 0..5u64 {
        unmap(si, 114 + k);
        bad[k as usize] = MmuUpdate {
            ptr: mm::walk(si, mm::slack_va(si, 114 + k)).pte_ma(),
            val: mm::pte_rw(mm::slack_mfn(si, 10 + k)),
        };
    }
    bad[2].val |= mm::PTE_PCD;
    let (rc, done) = mm::mmu_update(&bad);
    if rc != -EINVAL || done != 2 {
        fail!(
            "batch of 5 with a bad 3rd request: returned {}, done {}; expected -EINVAL, done 2",
            rc,
            done
        );
    }
    for k in 0..2u64 {
        expect_pte(
            "request before the bad one",
            si,
            114 + k,
            bad[k as usize].val,
        );
        mm::expect_fill(
            "request before the bad one: read",
            mm::slack_va(si, 114 + k),
            mm::seed_of(10 + k),
        );
    }
    for k in 2..5u64 {
        let got = mm::walk(si, mm::slack_va(si, 114 + k)).pte;
        if got != 0 {
            fail!(
                "request {} (at or after the bad one) was applied: PTE {:#x}, expected 0",
                k,
                got
            );
        }
    }
    println!("batch with a bad 3rd request: -EINVAL, done 2, nothing after it applied");
}
