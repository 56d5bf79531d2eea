//! `mmu_descriptors`: `HYPERVISOR_set_gdt` and `HYPERVISOR_update_descriptor`.
//!
//! A slack frame holding a flat 32-bit data descriptor (DPL 3) at GDT index 2 is made
//! read-only and installed with `set_gdt(frames, 16)`. Asserts:
//!
//! * `set_gdt` of that frame: 0 (loading one of its selectors is `gdt_selector_load`);
//! * `set_gdt` of a frame still mapped writable: -EINVAL; with more than
//!   `FIRST_RESERVED_GDT_ENTRY` (7168) entries: -EINVAL;
//! * `update_descriptor` (machine address of the slot) on the GDT frame: a flat data
//!   descriptor: 0, visible at once through the read-only mapping; a DPL 0 64-bit code
//!   descriptor: 0, stored with DPL 3 (Xen 4.17 `check_descriptor` raises the DPL to the
//!   guest kernel RPL rather than refusing it); a present 64-bit TSS (system) descriptor:
//!   -EINVAL, slot unchanged; a misaligned address: -EINVAL; a frame not ours: -EINVAL;
//! * `update_descriptor` on an ordinary writable data frame: 0, visible at once;
//! * `set_gdt(frames, 0)` releases the frame: 0, and it takes a writable mapping again.
#![no_std]
#![no_main]

use pv_test_kernels::hypercall;
use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::EINVAL;
use pv_test_kernels::{check_eq, println, test_kernel, StartInfo};

test_kernel!(main);

const PLAIN: u64 = 61;

const FLAT_DATA32_DPL3_RO: u64 = 0x00cf_f100_0000_ffff;
const CODE64_DPL0: u64 = 0x00af_9a00_0000_ffff;
const CODE64_DPL3: u64 = 0x00af_fa00_0000_ffff;
const TSS64_DPL0: u64 = 0x0000_8900_0000_0067;

fn upd(ma: u64, desc: u64) -> i64 {
    // SAFETY: slots of the test's own frames (or deliberately bad addresses).
    unsafe { hypercall::update_descriptor(ma, desc) }
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    let gmfn = mm::install_test_gdt(si);
    let g = mm::slack_va(si, mm::GDT_SLACK);

    // update_descriptor on the live GDT frame.
    let rc = upd(mm::entry_ma(gmfn, 4), FLAT_DATA32_DPL3_RO);
    check_eq!("update_descriptor(flat data)", rc, 0i64);
    check_eq!(
        "GDT slot 4 right after update_descriptor",
        mm::rd(g + 4 * 8),
        FLAT_DATA32_DPL3_RO
    );
    let rc = upd(mm::entry_ma(gmfn, 5), CODE64_DPL0);
    check_eq!("update_descriptor(64-bit code, DPL 0)", rc, 0i64);
    check_eq!(
        "GDT slot 5 (DPL 0 code stored with DPL 3)",
        mm::rd(g + 5 * 8),
        CODE64_DPL3
    );
    let rc = upd(mm::entry_ma(gmfn, 6), TSS64_DPL0);
    check_eq!(
        "update_descriptor(present 64-bit TSS descriptor)",
        rc,
        -EINVAL
    );
    check_eq!(
        "GDT slot 6 after the refused update",
        mm::rd(g + 6 * 8),
        0u64
    );
    let rc = upd(mm::entry_ma(gmfn, 7) + 4, mm::FLAT_DATA32_DPL3);
    check_eq!("update_descriptor at a misaligned address", rc, -EINVAL);
    check_eq!(
        "GDT slot 7 after the refused update",
        mm::rd(g + 7 * 8),
        0u64
    );
    let rc = upd(mm::entry_ma(mm::MFN_NOT_RAM, 0), mm::FLAT_DATA32_DPL3);
    check_eq!("update_descriptor on a frame not ours", rc, -EINVAL);
    println!("update_descriptor on the GDT frame: ok");

    let p = mm::slack_va(si, PLAIN);
    mm::wr(p, 0);
    let rc = upd(
        mm::entry_ma(mm::slack_mfn(si, PLAIN), 0),
        mm::FLAT_DATA32_DPL3,
    );
    check_eq!("update_descriptor on a writable data frame", rc, 0i64);
    check_eq!(
        "data frame slot 0 right after update_descriptor",
        mm::rd(p),
        mm::FLAT_DATA32_DPL3
    );

    // Release the GDT frame.
    // SAFETY: %ds is null again; an empty GDT.
    let rc = unsafe { hypercall::set_gdt(&[gmfn], 0) };
    check_eq!("set_gdt(_, 0)", rc, 0i64);
    mm::slack_make_rw(si, mm::GDT_SLACK);
    mm::wr(g, 0);
    println!("GDT released and the frame writable again: ok");
}
