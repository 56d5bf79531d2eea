//! `unhandled_fault`: a negative test asset. Executes `ud2` with no trap table
//! registered, which Xen answers by crashing the domain. pvkvm must end it with a
//! diagnostic naming the vector and exit non-zero; it never prints a test result.
#![no_std]
#![no_main]

use pv_test_kernels::{println, test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    println!("executing ud2 with no trap table");
    // SAFETY: deliberately raises #UD; the hypervisor crashes the domain.
    unsafe { core::arch::asm!("ud2") };
    println!("still running after an unhandled #UD");
}
