//! `hello`: the smallest PV test kernel. Prints a greeting through
//! `HYPERVISOR_console_io(CONSOLEIO_write)` and reports SUCCESS (then
//! `SCHEDOP_shutdown(poweroff)`). Proves the ELF notes, the builder's entry state,
//! `syscall` hypercalls, the console and the shutdown path.
#![no_std]
#![no_main]

use pv_test_kernels::{println, test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    println!("Hello from a pvkvm test kernel");
}
