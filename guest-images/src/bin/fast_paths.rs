//! `fast_paths`: the hypercall answers the shim gives inside the VM answer exactly as the
//! engine would, and only for the cases they are meant for.
//!
//! Asserts:
//! - `mmuext_op(&{MMUEXT_INVLPG_LOCAL, va}, 1, NULL, DOMID_SELF)` (Linux's page flush):
//!   0, 1000 times (the host test checks these cost no VM exit); the page still reads the
//!   same afterwards.
//! - The same with the op behind an unmapped pointer: -EFAULT (the fast path's read faults
//!   and falls back to the engine); with a non-canonical pointer: -EFAULT.
//! - The variants the fast path leaves to the engine: two ops (0, done 2), a done pointer
//!   (0, done 1), another domain (-ESRCH), another command (`TLB_FLUSH_LOCAL`: 0).
//! - The guest's own `int3` (the shim enters ring 0 through the #BP gate for the flush):
//!   still a #BP to the guest's handler, with the rip after the `int3`.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::hypercall::{hypercall4, MmuextOp};
use pv_test_kernels::mm;
use pv_test_kernels::traps::{install_trap_table, last_trap};
use pv_test_kernels::xen_abi::errno::{EFAULT, ESRCH};
use pv_test_kernels::xen_abi::xen::{hypercall as hc, mmuext, DOMID_SELF};
use pv_test_kernels::{check_eq, check_rc, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const UNMAPPED: u64 = 0xffff_c900_dead_0000;
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

fn mmuext(ops: u64, count: u64, pdone: u64, dom: u64) -> i64 {
    // SAFETY: flushes and bad pointers change nothing the kernel relies on.
    unsafe { hypercall4(hc::MMUEXT_OP, ops, count, pdone, dom) }
}

fn op(cmd: u32, arg1: u64) -> MmuextOp {
    MmuextOp {
        cmd,
        _pad: 0,
        arg1,
        arg2: 0,
    }
}

fn own_int3_is_a_breakpoint() {
    let before = last_trap().count;
    let insn: u64;
    // SAFETY: the #GP handler resumes at label 3 with all registers intact; the record
    // is disarmed afterwards either way.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "lea {i}, [rip + 2f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "int3",
            "2:",
            "3:",
            "mov qword ptr [rip + PVT_TRAP + 64], 0",
            "mov qword ptr [rip + PVT_TRAP + 72], 0",
            a = out(reg) _,
            i = out(reg) insn,
        );
    }
    let t = last_trap();
    if t.count != before + 1 {
        fail!("int3 raised no exception");
    }
    check_eq!("int3: vector", t.vector, 3u64);
    check_eq!("int3: rip (after the int3)", t.rip, insn);
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    let va = mm::slack_va(si, 0);
    mm::wr(va, 0x1234_5678);
    let flush = op(mmuext::INVLPG_LOCAL, va);
    let p = &flush as *const MmuextOp as u64;
    let self_dom = u64::from(DOMID_SELF);
    for _ in 0..1000 {
        check_rc!("INVLPG_LOCAL", mmuext(p, 1, 0, self_dom), 0);
    }
    check_eq!("page after the flushes", mm::rd(va), 0x1234_5678u64);
    println!("mmuext_op INVLPG_LOCAL x1, no done pointer: 0 (1000 times)");

    check_rc!(
        "INVLPG_LOCAL, op unmapped",
        mmuext(UNMAPPED, 1, 0, self_dom),
        -EFAULT
    );
    check_rc!(
        "INVLPG_LOCAL, op non-canonical",
        mmuext(NON_CANONICAL, 1, 0, self_dom),
        -EFAULT
    );
    println!("bad op pointers: -EFAULT");

    let two = [flush, op(mmuext::INVLPG_LOCAL, va + 0x1000)];
    let mut done: u32 = 0;
    let pdone = &mut done as *mut u32 as u64;
    check_rc!(
        "two INVLPG_LOCAL",
        mmuext(two.as_ptr() as u64, 2, pdone, self_dom),
        0
    );
    check_eq!("done after two", done, 2u32);
    done = 0;
    check_rc!(
        "INVLPG_LOCAL with a done pointer",
        mmuext(p, 1, pdone, self_dom),
        0
    );
    check_eq!("done after one", done, 1u32);
    check_rc!("INVLPG_LOCAL for domain 7", mmuext(p, 1, 0, 7), -ESRCH);
    let full = op(mmuext::TLB_FLUSH_LOCAL, 0);
    check_rc!(
        "TLB_FLUSH_LOCAL",
        mmuext(&full as *const MmuextOp as u64, 1, 0, self_dom),
        0
    );
    println!("two ops, done pointer, other domain, other command: answered by the engine");

    own_int3_is_a_breakpoint();
    println!("the kernel's own int3: #BP after the int3");
}
