//! `mmu_mmuext_ops`: `HYPERVISOR_mmuext_op` commands on frames the kernel builds itself.
//!
//! Asserts:
//!
//! * an L1 built in a slack frame (4 entries mapping data frames), made read-only, is
//!   pinned (`PIN_L1_TABLE`), a second pin is -EINVAL; hooked into a free slot of the
//!   kernel's L2 with `mmu_update`, the 2 MiB window shows the data frames at once (reads
//!   and a write seen through the frame's own VA); unhooked, the window faults (#PF, error
//!   code 0) at once; `UNPIN_TABLE` 0, a second unpin -EINVAL; the frame can be made
//!   writable again;
//! * an L4 copied from the boot L4 plus one alias slot (L4 slot 1 -> the kernel's L3),
//!   made read-only and pinned (`PIN_L4_TABLE`): `NEW_BASEPTR` to it keeps the kernel
//!   running and the alias shows kernel data; `NEW_BASEPTR` back makes the alias fault;
//!   `UNPIN_TABLE` and writable again;
//! * `TLB_FLUSH_LOCAL`, `INVLPG_LOCAL`, `TLB_FLUSH_ALL`, `INVLPG_ALL`, `TLB_FLUSH_MULTI`
//!   and `INVLPG_MULTI` (vcpumask {vCPU 0}) each return 0/done 1 and make a present ->
//!   present `mmu_update` of a VA that was just read visible; a 3-op batch returns done 3;
//! * `FLUSH_CACHE` -EACCES (domU without cache-flush permission), done 0;
//! * `COPY_PAGE` and `CLEAR_PAGE` on slack data frames (contents checked);
//! * `SET_LDT` with 0 entries: 0;
//! * `PIN_L2_TABLE` of a read-only frame full of garbage present entries: -EINVAL, and the
//!   frame takes a writable mapping again afterwards (no type reference left).
#![no_std]
#![no_main]

use pv_test_kernels::mm::{self, MmuUpdate};
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::{EACCES, EINVAL};
use pv_test_kernels::xen_abi::xen::mmuext;
use pv_test_kernels::{check_eq, fail, hypercall, println, test_kernel, StartInfo, VIRT_BASE};

test_kernel!(main);

static MARKER: u64 = 0x4d41_524b_4552_0001;

const L1_FRAME: u64 = 20;
const L4_FRAME: u64 = 21;
const GARBAGE_FRAME: u64 = 22;
const FLUSH_VA_FRAME: u64 = 30;

fn expect_fault(what: &str, va: u64) {
    let p = mm::probe_read(va);
    if !p.trapped {
        fail!(
            "{}: read of {:#x} returned {:#x}, expected a #PF",
            what,
            va,
            p.value
        );
    }
    if p.trap.vector != 14 || p.trap.error_code != 0 || p.trap.rip != p.insn {
        fail!(
            "{}: read of {:#x} raised vector {} error code {:#x} at rip {:#x}, expected #PF error code 0 at {:#x}",
            what,
            va,
            p.trap.vector,
            p.trap.error_code,
            p.trap.rip,
            p.insn
        );
    }
}

fn pinned_l1(si: &StartInfo) {
    let l1_va = mm::slack_va(si, L1_FRAME);
    let l1_mfn = mm::slack_mfn(si, L1_FRAME);
    for k in 0..512u64 {
        mm::wr(
            l1_va + k * 8,
            if k < 4 {
                mm::pte_rw(mm::slack_mfn(si, k))
            } else {
                0
            },
        );
    }
    mm::slack_make_ro(si, L1_FRAME);
    mm::mmuext_ok("MMUEXT_PIN_L1_TABLE", mmuext::PIN_L1_TABLE, l1_mfn, 0);
    mm::mmuext_err(
        "MMUEXT_PIN_L1_TABLE (already pinned)",
        mmuext::PIN_L1_TABLE,
        l1_mfn,
        0,
        -EINVAL,
    );

    // A free slot of the kernel's L2, well after the bootstrap region.
    let k = mm::walk(si, VIRT_BASE);
    let first = ((mm::mapped_end(si) - VIRT_BASE) >> 21) + 2;
    let slot = match (first..512).find(|&s| mm::rd(k.l2_va + s * 8) == 0) {
        Some(s) => s,
        None => fail!(
            "no free slot in the kernel's L2 (mfn {:#x}) from {}",
            k.l2_mfn,
            first
        ),
    };
    let win = VIRT_BASE + (slot << 21);
    let (rc, done) = mm::mmu_update1(mm::entry_ma(k.l2_mfn, slot), (l1_mfn << 12) | mm::PDE_FLAGS);
    if rc != 0 || done != 1 {
        fail!(
            "mmu_update hooking the pinned L1 into L2 slot {}: returned {}, done {}",
            slot,
            rc,
            done
        );
    }
    for d in 0..4u64 {
        mm::expect_fill("read through the new L1", win + d * 4096, mm::seed_of(d));
    }
    mm::wr(win + 3 * 4096 + 8, 0x1234_5678);
    check_eq!(
        "write through the new L1, read at the frame's own VA",
        mm::rd(mm::slack_va(si, 3) + 8),
        0x1234_5678u64
    );
    mm::fill(mm::slack_va(si, 3), mm::seed_of(3));
    expect_fault("slot 4 of the new L1 (empty)", win + 4 * 4096);
    println!(
        "pinned L1 at mfn {:#x} hooked into L2 slot {} ({:#x}): ok",
        l1_mfn, slot, win
    );

    let (rc, done) = mm::mmu_update1(mm::entry_ma(k.l2_mfn, slot), 0);
    if rc != 0 || done != 1 {
        fail!(
            "mmu_update unhooking L2 slot {}: returned {}, done {}",
            slot,
            rc,
            done
        );
    }
    expect_fault("window after unhooking the L1", win);
    mm::mmuext_ok("MMUEXT_UNPIN_TABLE", mmuext::UNPIN_TABLE, l1_mfn, 0);
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (not pinned)",
        mmuext::UNPIN_TABLE,
        l1_mfn,
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, L1_FRAME);
    mm::wr(l1_va, 0);
    println!("L1 unhooked, unpinned, writable again: ok");
}

fn new_l4(si: &StartInfo) {
    let boot_l4 = si.pt_base;
    let boot_mfn = mm::va_to_mfn(si, boot_l4);
    let va = mm::slack_va(si, L4_FRAME);
    let mfn = mm::slack_mfn(si, L4_FRAME);
    if mm::rd(boot_l4 + 8) != 0 {
        fail!(
            "boot L4 slot 1 is {:#x}, expected empty (used for the alias)",
            mm::rd(boot_l4 + 8)
        );
    }
    for k in 0..512u64 {
        mm::wr(va + k * 8, mm::rd(boot_l4 + k * 8));
    }
    let l3 = mm::walk(si, VIRT_BASE).l3_mfn;
    mm::wr(va + 8, (l3 << 12) | mm::PDE_FLAGS);
    mm::slack_make_ro(si, L4_FRAME);
    mm::mmuext_ok("MMUEXT_PIN_L4_TABLE", mmuext::PIN_L4_TABLE, mfn, 0);
    mm::mmuext_ok("MMUEXT_NEW_BASEPTR (copy)", mmuext::NEW_BASEPTR, mfn, 0);
    let marker = &MARKER as *const u64 as u64;
    let alias = (1u64 << 39) | (marker & ((1u64 << 39) - 1));
    println!("running on the copied L4 (mfn {:#x})", mfn);
    let p = mm::probe_read(alias);
    if p.trapped || p.value != MARKER {
        fail!(
            "alias {:#x} of {:#x} under the new L4: trapped {} (vector {}), value {:#x}; expected {:#x}",
            alias,
            marker,
            p.trapped,
            p.trap.vector,
            p.value,
            MARKER
        );
    }
    mm::mmuext_ok(
        "MMUEXT_NEW_BASEPTR (boot L4)",
        mmuext::NEW_BASEPTR,
        boot_mfn,
        0,
    );
    expect_fault("alias after NEW_BASEPTR back to the boot L4", alias);
    mm::mmuext_ok(
        "MMUEXT_UNPIN_TABLE (copied L4)",
        mmuext::UNPIN_TABLE,
        mfn,
        0,
    );
    mm::slack_make_rw(si, L4_FRAME);
    println!("copied L4: pinned, NEW_BASEPTR there and back, unpinned: ok");
}

fn flushes(si: &StartInfo) {
    let t = mm::slack_va(si, FLUSH_VA_FRAME);
    let ma = mm::walk(si, t).pte_ma();
    let mask: u64 = 1; // vCPU 0
    let maskp = &mask as *const u64 as u64;
    let ops: [(&str, u32, u64, u64); 6] = [
        ("MMUEXT_TLB_FLUSH_LOCAL", mmuext::TLB_FLUSH_LOCAL, 0, 0),
        ("MMUEXT_INVLPG_LOCAL", mmuext::INVLPG_LOCAL, t, 0),
        ("MMUEXT_TLB_FLUSH_ALL", mmuext::TLB_FLUSH_ALL, 0, 0),
        ("MMUEXT_INVLPG_ALL", mmuext::INVLPG_ALL, t, 0),
        (
            "MMUEXT_TLB_FLUSH_MULTI {vcpu0}",
            mmuext::TLB_FLUSH_MULTI,
            0,
            maskp,
        ),
        (
            "MMUEXT_INVLPG_MULTI {vcpu0}",
            mmuext::INVLPG_MULTI,
            t,
            maskp,
        ),
    ];
    mm::remap("map the flush test VA", t, mm::pte_rw(mm::slack_mfn(si, 0)));
    for (n, &(name, cmd, a1, a2)) in ops.iter().enumerate() {
        // Load the old translation, change it behind the TLB's back, flush, read.
        let _ = mm::rd(t);
        let f = n as u64 + 1;
        let (rc, done) = mm::mmu_update1(ma, mm::pte_rw(mm::slack_mfn(si, f)));
        if rc != 0 || done != 1 {
            fail!(
                "{}: mmu_update before it returned {}, done {}",
                name,
                rc,
                done
            );
        }
        mm::mmuext_ok(name, cmd, a1, a2);
        mm::expect_fill(name, t, mm::seed_of(f));
    }
    let batch = [
        hypercall::MmuextOp {
            cmd: mmuext::TLB_FLUSH_LOCAL,
            _pad: 0,
            arg1: 0,
            arg2: 0,
        },
        hypercall::MmuextOp {
            cmd: mmuext::INVLPG_LOCAL,
            _pad: 0,
            arg1: t,
            arg2: 0,
        },
        hypercall::MmuextOp {
            cmd: mmuext::SET_LDT,
            _pad: 0,
            arg1: 0,
            arg2: 0,
        },
    ];
    // SAFETY: flushes and an empty LDT.
    let (rc, done) = unsafe { hypercall::mmuext_op(&batch) };
    if rc != 0 || done != 3 {
        fail!(
            "mmuext_op batch of 3: returned {}, done {}; expected 0, done 3",
            rc,
            done
        );
    }
    println!("TLB flush/INVLPG LOCAL/ALL/MULTI: ok");
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::assume("a frame must have no writable mapping before it is pinned; pin twice / unpin unpinned = -EINVAL (mm.c do_mmuext_op)");
    mm::assume("mmu_update of an L2e flushes the TLB (flush_linear_pt); of an L1e it does not");
    for i in 0..16 {
        mm::fill(mm::slack_va(si, i), mm::seed_of(i));
    }

    pinned_l1(si);
    new_l4(si);
    flushes(si);

    mm::assume(
        "FLUSH_CACHE needs cache-flush permission (iomem/ioport caps); a plain domU gets -EACCES",
    );
    mm::mmuext_err("MMUEXT_FLUSH_CACHE", mmuext::FLUSH_CACHE, 0, 0, -EACCES);

    mm::mmuext_ok(
        "MMUEXT_COPY_PAGE",
        mmuext::COPY_PAGE,
        mm::slack_mfn(si, 8),
        mm::slack_mfn(si, 9),
    );
    mm::expect_fill(
        "MMUEXT_COPY_PAGE destination",
        mm::slack_va(si, 8),
        mm::seed_of(9),
    );
    mm::expect_fill(
        "MMUEXT_COPY_PAGE source",
        mm::slack_va(si, 9),
        mm::seed_of(9),
    );
    mm::mmuext_ok(
        "MMUEXT_CLEAR_PAGE",
        mmuext::CLEAR_PAGE,
        mm::slack_mfn(si, 10),
        0,
    );
    for k in 0..512u64 {
        let v = mm::rd(mm::slack_va(si, 10) + k * 8);
        if v != 0 {
            fail!("MMUEXT_CLEAR_PAGE: word {} is {:#x}, expected 0", k, v);
        }
    }
    mm::expect_fill(
        "frame after the cleared one",
        mm::slack_va(si, 11),
        mm::seed_of(11),
    );
    println!("COPY_PAGE / CLEAR_PAGE: ok");

    mm::mmuext_ok("MMUEXT_SET_LDT (0 entries)", mmuext::SET_LDT, 0, 0);

    // PIN_L2 of garbage.
    let g = mm::slack_va(si, GARBAGE_FRAME);
    for k in 0..512u64 {
        mm::wr(g + k * 8, ((0xdead_b000 + k) << 12) | mm::PDE_FLAGS);
    }
    mm::slack_make_ro(si, GARBAGE_FRAME);
    mm::mmuext_err(
        "MMUEXT_PIN_L2_TABLE (garbage entries)",
        mmuext::PIN_L2_TABLE,
        mm::slack_mfn(si, GARBAGE_FRAME),
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (garbage frame, never pinned)",
        mmuext::UNPIN_TABLE,
        mm::slack_mfn(si, GARBAGE_FRAME),
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, GARBAGE_FRAME);
    mm::wr(g, 0);
    println!("PIN_L2_TABLE of garbage: -EINVAL, no type reference left");
    let _ = MmuUpdate::default();
}
