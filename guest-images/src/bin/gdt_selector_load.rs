//! `gdt_selector_load` (split from `mmu_descriptors`): after `set_gdt`, a data selector of the guest's own GDT loads into %ds at ring 3 and works. Needs a host that runs guest ring 3 with the guest's descriptors (the probe tells).
//! Original description of the shared setup: `mmu_descriptors`: `HYPERVISOR_set_gdt` and `HYPERVISOR_update_descriptor`.
//!
//! A slack frame holding a flat 32-bit data descriptor (DPL 3) at GDT index 2 is made
//! read-only and installed with `set_gdt(frames, 16)`. Asserts:
//!
//! * `set_gdt` of that frame: 0; selector 0x13 (index 2, RPL 3) loads into %ds from guest
//!   kernel mode (ring 3) and reads back; %ds is reset to the null selector;
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

use core::arch::asm;
use pv_test_kernels::mm;
use pv_test_kernels::traps::{install_trap_table, last_trap};
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

/// Loads `sel` into %ds (trap table armed), reads %ds back, reads memory through %ds,
/// and resets %ds to 0. Returns (trapped, %ds read back).
fn load_ds(sel: u16, probe: &u64) -> (bool, u64, u64) {
    let before = last_trap().count;
    let got: u64;
    let val: u64;
    // SAFETY: a fault resumes at label 3; %ds is reset to the null selector either way.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "mov {d:e}, 0xffff",
            "xor {v:e}, {v:e}",
            "mov ds, {s:x}",
            "mov {d:x}, ds",
            "mov {v}, qword ptr [{p}]",
            "3:",
            "mov qword ptr [rip + PVT_TRAP + 64], 0",
            "mov qword ptr [rip + PVT_TRAP + 72], 0",
            "xor {a:e}, {a:e}",
            "mov ds, {a:x}",
            a = out(reg) _,
            d = out(reg) got,
            v = out(reg) val,
            s = in(reg) sel as u64,
            p = in(reg) probe as *const u64,
        );
    }
    (last_trap().count != before, got & 0xffff, val)
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::install_test_gdt(si);

    let probe: u64 = 0x0d5d_5d5d_0d5d_5d5d;
    let (trapped, ds, v) = load_ds(0x13, &probe);
    if trapped {
        let t = last_trap();
        fail!(
            "loading %ds with 0x13 (GDT index 2, flat data DPL 3) raised vector {} error code {:#x}",
            t.vector,
            t.error_code
        );
    }
    check_eq!("%ds after loading 0x13", ds, 0x13u64);
    check_eq!("read through %ds = 0x13", v, probe);
    println!("%ds = 0x13 loaded from the guest GDT: ok");
}
