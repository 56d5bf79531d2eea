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
//! - Under a virtual IOPL of 1 (`PHYSDEVOP_set_iopl`; port I/O then leaves the VM as plain
//!   I/O exits, `cli`/`sti` go to the shim's #GP stub or the engine): `in` from a port
//!   without a device (0x80) reads all ones, only in al (8-bit), zero-extended into rax
//!   (32-bit), only in ax (16-bit, `66` prefix) for immediate and dx ports, 1000 times
//!   for `in al, imm8` (the host test counts them as I/O exits, not #GP), and from
//!   pvkvm's doorbell port 0xe1 too (only the shim's own `out` there is a doorbell);
//!   `out` changes no register; the PIT Xen emulates (channel 2 through ports 0x42/0x43, gated by 0x61)
//!   counts down once programmed; `cli`/`sti` are skipped and leave the event mask as it
//!   was (the host test checks these cost no VM exit where the stub answers them). Under
//!   IOPL 0 the same `in` is a #GP to the guest's handler at the instruction.
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

/// PHYSDEVOP_set_iopl, which must succeed.
fn set_iopl(iopl: u32) {
    check_rc!(
        "PHYSDEVOP_set_iopl",
        pv_test_kernels::hypercall::set_iopl(iopl),
        0
    );
}

/// Runs one port-I/O or cli/sti instruction (`$insn`, Intel syntax) with rax = `rax`
/// and dx = 0x80; returns rax after it.
macro_rules! with_rax {
    ($insn:literal, $rax:expr) => {{
        let mut rax: u64 = $rax;
        // SAFETY: under the IOPL set above the instruction only reads all ones into
        // rax (or nothing) or reaches the emulated PIT; the domain has no ports.
        unsafe {
            asm!($insn, inout("rax") rax, in("rdx") 0x80u64, options(nostack));
        }
        rax
    }};
}

/// Channel 2's count: latched, then read LSB and MSB (as Linux's PIT code reads it).
fn pit_count() -> u16 {
    let _ = with_rax!("out 0x43, al", 0x80);
    let lo = with_rax!("in al, 0x42", 0) as u16;
    let hi = with_rax!("in al, 0x42", 0) as u16;
    lo | hi << 8
}

const PATTERN: u64 = 0x1122_3344_5566_7788;

fn port_io_under_iopl(si: &StartInfo) {
    set_iopl(1);
    for _ in 0..1000 {
        check_eq!(
            "in al, 0x80",
            with_rax!("in al, 0x80", PATTERN),
            0x1122_3344_5566_77ffu64
        );
    }
    check_eq!(
        "in eax, 0x80",
        with_rax!("in eax, 0x80", PATTERN),
        0xffff_ffffu64
    );
    check_eq!(
        "in ax, 0x80",
        with_rax!("in ax, 0x80", PATTERN),
        0x1122_3344_5566_ffffu64
    );
    check_eq!(
        "in al, dx",
        with_rax!("in al, dx", PATTERN),
        0x1122_3344_5566_77ffu64
    );
    check_eq!(
        "in eax, dx",
        with_rax!("in eax, dx", PATTERN),
        0xffff_ffffu64
    );
    check_eq!(
        "in ax, dx",
        with_rax!("in ax, dx", PATTERN),
        0x1122_3344_5566_ffffu64
    );
    check_eq!("out 0x80, al", with_rax!("out 0x80, al", PATTERN), PATTERN);
    check_eq!(
        "out 0x80, eax",
        with_rax!("out 0x80, eax", PATTERN),
        PATTERN
    );
    check_eq!("out dx, al", with_rax!("out dx, al", PATTERN), PATTERN);
    check_eq!("out dx, ax", with_rax!("out dx, ax", PATTERN), PATTERN);
    // pvkvm's doorbell port (0xe1, which the I/O bitmap always opens for the shim's
    // stub) is a port without a device to the guest, like any other.
    check_eq!(
        "in al, 0xe1",
        with_rax!("in al, 0xe1", PATTERN),
        0x1122_3344_5566_77ffu64
    );
    check_eq!("out 0xe1, al", with_rax!("out 0xe1, al", PATTERN), PATTERN);
    println!("IOPL 1: in reads all ones (al, ax, eax zero-extended), out changes nothing");

    // The PIT Xen emulates for every domain: channel 2 programmed as Linux's
    // quick_pit_calibrate does (gate on, speaker off; LSB then MSB, mode 0; 0xffff)
    // counts down; port 0x61 shows the gate.
    let _ = with_rax!("out 0x61, al", 1);
    let _ = with_rax!("out 0x43, al", 0xb0);
    let _ = with_rax!("out 0x42, al", 0xff);
    let _ = with_rax!("out 0x42, al", 0xff);
    let first = pit_count();
    let mut last = first;
    for _ in 0..20 {
        last = pit_count();
    }
    if last >= first {
        fail!(
            "PIT channel 2 did not count down: {:#x} then {:#x}",
            first,
            last
        );
    }
    check_eq!(
        "port 0x61 gate and speaker bits",
        with_rax!("in al, 0x61", 0) & 3,
        1u64
    );
    println!(
        "IOPL 1: PIT channel 2 counts down ({:#x} -> {:#x})",
        first, last
    );

    let sh = mm::slack_va(si, 2);
    mm::map_shared_info(si, sh);
    let mask = mm::rd8(sh + mm::VCPU_INFO_UPCALL_MASK);
    for _ in 0..100 {
        check_eq!("cli", with_rax!("cli", PATTERN), PATTERN);
        check_eq!("sti", with_rax!("sti", PATTERN), PATTERN);
    }
    check_eq!(
        "event mask after cli/sti",
        mm::rd8(sh + mm::VCPU_INFO_UPCALL_MASK),
        mask
    );
    println!("IOPL 1: cli/sti skipped, event mask still {mask}");

    set_iopl(0);
    let before = last_trap().count;
    let at: u64;
    // SAFETY: the #GP handler resumes at label 3 with all registers intact; the record
    // is disarmed afterwards either way.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "lea {i}, [rip + 2f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "2:",
            "in al, 0x80",
            "3:",
            "mov qword ptr [rip + PVT_TRAP + 64], 0",
            "mov qword ptr [rip + PVT_TRAP + 72], 0",
            a = out(reg) _,
            i = out(reg) at,
            out("rax") _,
        );
    }
    let t = last_trap();
    if t.count != before + 1 {
        fail!("in al, 0x80 under IOPL 0 raised no exception");
    }
    check_eq!("IOPL 0: vector", t.vector, 13u64);
    check_eq!("IOPL 0: rip (the in)", t.rip, at);
    println!("IOPL 0: in is a #GP to the guest at the instruction");
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

    port_io_under_iopl(si);
}
