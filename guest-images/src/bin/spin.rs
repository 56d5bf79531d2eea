//! `spin`: a negative test asset. Prints one line, then spins in guest kernel mode
//! without ever trapping. pvkvm's watchdog must stop it (`--timeout`) with a diagnostic
//! instead of hanging; it never prints a test result.
#![no_std]
#![no_main]

use pv_test_kernels::{println, test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    println!("spinning without trapping");
    loop {
        core::hint::spin_loop();
    }
}
