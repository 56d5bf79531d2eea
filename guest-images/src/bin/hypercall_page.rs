//! `hypercall_page`: the kernel names a HYPERCALL_PAGE in its ELF notes, so the domain
//! builder must fill it with 32-byte stubs shaped like Xen's, and calls through the stubs
//! must work like inline `syscall`s. Checks: the page is no longer the `int3` fill; stub
//! 17 is `push rcx; push r11; mov $17, %eax; out %al, $0xe1; pop r11; pop rcx; ret`
//! (pvkvm rings its hypercall doorbell where Xen's stub has `syscall`: the page's
//! contents are the hypervisor's, not ABI); stub 23 is the `iret` stub (no `ret`); stub
//! 24 (`vcpu_op`) keeps Xen's `syscall`; `call`ing stub 17 returns the same version as an inline
//! hypercall and keeps rcx and r11 (the stub saves them); a console line is written
//! through stub 18.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::hypercall::xen_version;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};
use xen_abi::xen::hypercall as nr;

test_kernel!(main);

unsafe extern "C" {
    static pvt_hypercall_page: [u8; 4096];
}

fn stub(n: u64) -> &'static [u8] {
    // SAFETY: the runtime defines pvt_hypercall_page as a 4 KiB page in .text; the
    // builder filled it before entry and nothing writes it afterwards.
    let page = unsafe { &pvt_hypercall_page };
    &page[(n * 32) as usize..(n * 32 + 32) as usize]
}

fn main(_si: &'static StartInfo) {
    let xv = [
        0x51, 0x41, 0x53, 0xb8, 17, 0, 0, 0, 0xe6, 0xe1, 0x41, 0x5b, 0x59, 0xc3,
    ];
    if stub(nr::XEN_VERSION)[..xv.len()] != xv {
        fail!(
            "stub 17 is {:02x?}, expected {:02x?}",
            &stub(nr::XEN_VERSION)[..xv.len()],
            xv
        );
    }
    let iret = [0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0xe6, 0xe1];
    if stub(nr::IRET)[..iret.len()] != iret {
        fail!(
            "stub 23 is {:02x?}, expected the iret stub {:02x?}",
            &stub(nr::IRET)[..iret.len()],
            iret
        );
    }
    let vcpu_op = [
        0x51, 0x41, 0x53, 0xb8, 24, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3,
    ];
    if stub(nr::VCPU_OP)[..vcpu_op.len()] != vcpu_op {
        fail!(
            "stub 24 is {:02x?}, expected Xen's {:02x?}",
            &stub(nr::VCPU_OP)[..vcpu_op.len()],
            vcpu_op
        );
    }

    // SAFETY: XENVER_version takes no buffer.
    let inline = unsafe { xen_version(0, core::ptr::null_mut()) };
    let via_page: i64;
    let (rcx_after, r11_after): (u64, u64);
    let target = stub(nr::XEN_VERSION).as_ptr();
    // SAFETY: a call into the builder's stub: it saves rcx/r11, makes the hypercall with
    // the argument registers set here and returns; the argument registers are clobbered.
    unsafe {
        asm!(
            "mov rcx, 0x1111",
            "mov r11, 0x2222",
            "call {t}",
            t = in(reg) target,
            inlateout("rdi") 0u64 => _,
            inlateout("rsi") 0u64 => _,
            lateout("rdx") _, lateout("r10") _, lateout("r8") _,
            lateout("rax") via_page,
            lateout("rcx") rcx_after,
            lateout("r11") r11_after,
        );
    }
    check_eq!("xen_version through the hypercall page", via_page, inline);
    check_eq!("rcx across a hypercall-page call", rcx_after, 0x1111u64);
    check_eq!("r11 across a hypercall-page call", r11_after, 0x2222u64);

    let line = b"console_io through the hypercall page\n";
    let rc: i64;
    let target = stub(nr::CONSOLE_IO).as_ptr();
    // SAFETY: as above; console_io(CONSOLEIO_write, len, buf) reads `line`.
    unsafe {
        asm!(
            "call {t}",
            t = in(reg) target,
            inlateout("rdi") xen_abi::console::CONSOLEIO_WRITE => _,
            inlateout("rsi") line.len() as u64 => _,
            inlateout("rdx") line.as_ptr() => _,
            lateout("r10") _, lateout("r8") _,
            lateout("rax") rc,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    check_eq!("console_io through the hypercall page", rc, 0i64);
    println!("hypercall page stubs work");
}
