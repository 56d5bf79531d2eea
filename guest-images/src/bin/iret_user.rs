//! `iret_user`: exceptions from guest user mode and `HYPERVISOR_iret` back to user mode.
//!
//! After `stack_switch`, `MMUEXT_NEW_USER_BASEPTR` (boot L4) and a trap table with #BP at
//! DPL 3, the kernel irets to user code on a user stack (CS 0xe033|3, SS 0xe02b|3). The
//! user code
//!   1. runs `int3`: the handler returns to user mode (plain iret of the bounce frame);
//!   2. reads the unmapped address 0x10000: #PF, the handler returns to user mode at the
//!      next instruction;
//!   3. reads pvkvm's hypercall doorbell port (`in al, 0xe1`; the I/O bitmap opens it to
//!      ring 3 for the shim): #GP(0) at the instruction, as any denied port I/O under
//!      Xen, the handler returns to user mode after it, and al is unchanged;
//!   4. runs `int3` again: this time the handler resumes the kernel (it rewrites the
//!      frame to CS 0xe030 / the kernel's rsp), and the kernel checks everything.
//!
//! The user code copies the trap record after steps 1 to 3. Asserted for each: vector,
//! error code (#PF: 4 = user-mode read of a non-present page), CS 0xe033 (RPL 3: user
//! mode), SS 0xe02b, the user rip (after `int3`; at the faulting load) and rsp, the saved
//! upcall mask 1 (user mode was entered with RFLAGS.IF clear), the bounce frame at the
//! top of the `stack_switch` stack, and that user mode resumed after each (4 exceptions in
//! total, the user's r12 intact).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use pv_test_kernels::traps::{
    install_trap_table, kernel_stack_top, last_trap, setup_user_mode, user_stack_top, USER_RFLAGS,
};
use pv_test_kernels::xen_abi::xen::{hypercall as nr, selector};
use pv_test_kernels::{fail, println, test_kernel, StartInfo};

test_kernel!(main);

const R12_MAGIC: u64 = 0x1212_3434_5656_7878;

/// Copies of the trap record's first 7 words (vector, error code, rip, cs, rflags, rsp,
/// ss) made by the user code after steps 1 and 2 (step 3: `IU_GP`); the resume target for step 4.
#[no_mangle]
static mut IU_BP1: [u64; 7] = [0; 7];
#[no_mangle]
static mut IU_PF: [u64; 7] = [0; 7];
#[no_mangle]
static mut IU_GP: [u64; 7] = [0; 7];
#[no_mangle]
static mut IU_GP_RAX: u64 = 0;
#[no_mangle]
static mut IU_KERNEL_RIP: u64 = 0;
#[no_mangle]
static mut IU_KERNEL_RSP: u64 = 0;
#[no_mangle]
static mut IU_R12_AT_END: u64 = 0;

global_asm!(
    r#"
    .section .text.user, "ax", @progbits
    .global iu_user_main
iu_user_main:
    mov r12, {r12}
    mov qword ptr [rip + PVT_TRAP + 64], 1
    int3
    .global iu_after_bp1
iu_after_bp1:
    lea rsi, [rip + PVT_TRAP]
    lea rdi, [rip + IU_BP1]
    mov ecx, 7
    rep movsq
    lea rax, [rip + iu_after_pf]
    mov [rip + PVT_TRAP + 72], rax
    mov qword ptr [rip + PVT_TRAP + 64], 1
    .global iu_pf_insn
iu_pf_insn:
    mov rdx, qword ptr [0x10000]
    ud2
iu_after_pf:
    lea rsi, [rip + PVT_TRAP]
    lea rdi, [rip + IU_PF]
    mov ecx, 7
    rep movsq
    lea rax, [rip + iu_after_gp]
    mov [rip + PVT_TRAP + 72], rax
    mov qword ptr [rip + PVT_TRAP + 64], 1
    mov eax, 0x77
    .global iu_gp_insn
iu_gp_insn:
    in al, 0xe1
    ud2
iu_after_gp:
    mov [rip + IU_GP_RAX], rax
    lea rsi, [rip + PVT_TRAP]
    lea rdi, [rip + IU_GP]
    mov ecx, 7
    rep movsq
    mov [rip + IU_R12_AT_END], r12
    mov rax, [rip + IU_KERNEL_RIP]
    mov [rip + PVT_TRAP + 72], rax
    mov rax, [rip + IU_KERNEL_RSP]
    mov [rip + PVT_TRAP + 80], rax
    mov qword ptr [rip + PVT_TRAP + 64], 1
    int3
    .global iu_after_bp2
iu_after_bp2:
    ud2
    .text
"#,
    r12 = const R12_MAGIC,
);

extern "C" {
    fn iu_user_main();
    static iu_after_bp1: u8;
    static iu_pf_insn: u8;
    static iu_gp_insn: u8;
    static iu_after_bp2: u8;
}

fn check_frame(what: &str, f: &[u64; 7], vector: u64, ec: u64, rip: u64, rsp: u64) {
    let ucs = (selector::FLAT_USER_CS | 3) as u64;
    let uss = (selector::FLAT_USER_SS | 3) as u64;
    let checks: [(&str, u64, u64); 6] = [
        ("vector", f[0], vector),
        ("error code (u64::MAX = none)", f[1], ec),
        ("saved rip", f[2], rip),
        ("saved CS (RPL 3: user mode)", f[3] & 0xffff, ucs),
        ("saved rsp", f[5], rsp),
        ("saved SS", f[6] & 0xffff, uss),
    ];
    for (name, got, want) in checks {
        if got != want {
            fail!("{}: {} {:#x}, expected {:#x}", what, name, got, want);
        }
    }
    let mask = (f[3] >> 32) & 0xff;
    let want_mask = (USER_RFLAGS & 0x200 == 0) as u64;
    if mask != want_mask {
        fail!(
            "{}: saved upcall mask (CS slot bits 32-39) {}, expected {} (user mode entered with RFLAGS {:#x})",
            what,
            mask,
            want_mask,
            USER_RFLAGS
        );
    }
    println!(
        "{}: ok (rip {:#x}, cs slot {:#x}, rsp {:#x})",
        what, f[2], f[3], f[5]
    );
}

fn main(si: &'static StartInfo) {
    install_trap_table();
    setup_user_mode(si);
    let usp = user_stack_top() - 128;
    let before = last_trap().count;
    println!("entering user mode");
    // SAFETY: irets to the user code above, which comes back to label 3 through the #BP
    // handler's kernel resume (rsp restored to the value saved here). rbx and rbp are
    // saved by hand (they cannot be asm operands); everything else is declared clobbered.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "mov [rip + IU_KERNEL_RSP], rsp",
            "push {ss}",
            "push {usp}",
            "push {fl}",
            "push {cs}",
            "push {ip}",
            // The inputs are consumed: rax may be reused now.
            "lea rax, [rip + 3f]",
            "mov [rip + IU_KERNEL_RIP], rax",
            "push 0",
            "push rcx",
            "push r11",
            "push rax",
            "mov eax, {iret}",
            "syscall",
            "ud2",
            "3:",
            "pop rbp",
            "pop rbx",
            ss = in(reg) (selector::FLAT_USER_SS | 3) as u64,
            usp = in(reg) usp,
            fl = in(reg) USER_RFLAGS,
            cs = in(reg) (selector::FLAT_USER_CS | 3) as u64,
            ip = in(reg) iu_user_main as *const () as u64,
            iret = const nr::IRET,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            clobber_abi("C"),
        );
    }
    let t = last_trap();
    if t.count != before + 4 {
        fail!(
            "{} exceptions delivered from user mode, expected 4 (int3, #PF, #GP, int3)",
            t.count.wrapping_sub(before)
        );
    }
    // SAFETY: plain statics written by the user code before the last int3.
    let (bp1, pf, gp, gp_rax, r12) = unsafe {
        (
            core::ptr::read_volatile(&raw const IU_BP1),
            core::ptr::read_volatile(&raw const IU_PF),
            core::ptr::read_volatile(&raw const IU_GP),
            core::ptr::read_volatile(&raw const IU_GP_RAX),
            core::ptr::read_volatile(&raw const IU_R12_AT_END),
        )
    };
    // SAFETY: only the addresses of the labels are taken.
    let (a_bp1, a_pf, a_gp, a_bp2) = unsafe {
        (
            &iu_after_bp1 as *const u8 as u64,
            &iu_pf_insn as *const u8 as u64,
            &iu_gp_insn as *const u8 as u64,
            &iu_after_bp2 as *const u8 as u64,
        )
    };
    check_frame("int3 from user mode", &bp1, 3, u64::MAX, a_bp1, usp);
    check_frame(
        "#PF from user mode (read of 0x10000)",
        &pf,
        14,
        4,
        a_pf,
        usp,
    );
    check_frame(
        "#GP from user mode (in al, 0xe1: the doorbell port)",
        &gp,
        13,
        0,
        a_gp,
        usp,
    );
    if gp_rax & 0xff != 0x77 {
        fail!("in al, 0xe1 from user mode changed al: rax {:#x}", gp_rax);
    }
    let bp2 = [t.vector, t.error_code, t.rip, t.cs, t.rflags, t.rsp, t.ss];
    check_frame("second int3 from user mode", &bp2, 3, u64::MAX, a_bp2, usp);
    if t.frame + 40 != kernel_stack_top() & !15 {
        fail!(
            "bounce frame from user mode ends at {:#x}, expected the stack_switch stack top {:#x}",
            t.frame + 40,
            kernel_stack_top() & !15
        );
    }
    if r12 != R12_MAGIC {
        fail!(
            "user r12 {:#x} after two exceptions, expected {:#x}",
            r12,
            R12_MAGIC
        );
    }
}
