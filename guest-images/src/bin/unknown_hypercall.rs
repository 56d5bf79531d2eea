//! `unknown_hypercall`: undefined hypercalls and sub-ops fail cleanly with -ENOSYS and
//! the domain keeps running.
//!
//! Asserts -ENOSYS (-38) from hypercall numbers 50, 63 and 1000 (all arguments 0), from
//! `xen_version(99, NULL)`, `sched_op(99, NULL)` and `console_io(99, 0, NULL)`.
//! (On real Xen a domU's `console_io` passes the XSM check only for `CONSOLEIO_write` on
//! debug builds, so there `console_io(99)` gives -EPERM; pvkvm follows the privileged /
//! console-domain path and must give -ENOSYS.)
#![no_std]
#![no_main]

use pv_test_kernels::hypercall::{abi_extra, hypercall3, hypercall5};
use pv_test_kernels::xen_abi::{errno, xen::hypercall as nr};
use pv_test_kernels::{check_rc, println, test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    for n in [50u64, 63, 1000] {
        // SAFETY: an undefined hypercall has no effect.
        let rc = unsafe { hypercall5(n, 0, 0, 0, 0, 0) };
        if rc != -errno::ENOSYS {
            pv_test_kernels::fail!(
                "hypercall {}: returned {}, expected {}",
                n,
                rc,
                -errno::ENOSYS
            );
        }
    }
    // SAFETY: undefined sub-ops with null arguments have no effect.
    let rc = unsafe { hypercall3(nr::XEN_VERSION, abi_extra::XENVER_UNDEFINED, 0, 0) };
    check_rc!("xen_version(99, NULL)", rc, -errno::ENOSYS);
    // SAFETY: as above.
    let rc = unsafe { hypercall3(nr::SCHED_OP, abi_extra::SCHEDOP_UNDEFINED, 0, 0) };
    check_rc!("sched_op(99, NULL)", rc, -errno::ENOSYS);
    // SAFETY: as above.
    let rc = unsafe { hypercall3(nr::CONSOLE_IO, abi_extra::CONSOLEIO_UNDEFINED, 0, 0) };
    check_rc!("console_io(99, 0, NULL)", rc, -errno::ENOSYS);
    println!("all undefined hypercalls returned -ENOSYS; still running");
}
