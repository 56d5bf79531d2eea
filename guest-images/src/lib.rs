//! The tiny runtime shared by pvkvm's Xen PV test kernels.
//!
//! Each binary in `src/bin/` is one scenario: a freestanding 64-bit Xen PV guest kernel
//! that checks one area of the PV ABI and ends by printing exactly one result line on the
//! hypervisor console (`CONSOLEIO_write`):
//!
//! * `Test result: SUCCESS` and `SCHEDOP_shutdown(SHUTDOWN_poweroff)`, or
//! * `Test result: FAILURE: <why>` and `SCHEDOP_shutdown(SHUTDOWN_crash)`.
//!
//! The runtime provides the entry point and the Xen ELF notes ([`start`]), inline
//! `syscall` hypercalls ([`hypercall`]), console printing ([`console`]), trap-table,
//! syscall-callback and iret helpers ([`traps`]) and the freestanding memory functions
//! the compiler expects ([`mem`]). The kernels must be correct against the real Xen PV
//! ABI: they are meant to run unchanged on Xen and on pvkvm.
#![no_std]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod blkfront;
pub mod console;
pub mod evtchn;
pub mod gnttab;
pub mod hypercall;
pub mod kernel_fault;
pub mod mem;
pub mod mm;
pub mod smp;
pub mod start;
pub mod traps;
pub mod xenstore;

pub use xen_abi;
pub use xen_abi::xen::StartInfo;

/// `VIRT_BASE` of the test kernels (and `__START_KERNEL_map` of Linux).
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// Page size.
pub const PAGE_SIZE: u64 = 4096;

/// The kernel command line: `start_info.cmd_line` up to its first NUL ("" if it is not
/// UTF-8).
pub fn cmdline(si: &StartInfo) -> &str {
    let raw = &si.cmd_line[..];
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    core::str::from_utf8(&raw[..len]).unwrap_or("")
}

/// The value of the first `key=value` word of the command line (words are separated by
/// spaces), or `None`. A bare `key` yields `Some("")`.
pub fn cmdline_arg<'a>(si: &'a StartInfo, key: &str) -> Option<&'a str> {
    cmdline(si).split(' ').find_map(|word| {
        let rest = word.strip_prefix(key)?;
        if rest.is_empty() {
            Some(rest)
        } else {
            rest.strip_prefix('=')
        }
    })
}

/// Defines the kernel's scenario function: `test_kernel!(main)` with
/// `fn main(si: &'static StartInfo)`. Returning from it reports SUCCESS; failures are
/// reported with [`fail!`] (or a panic) and never return.
#[macro_export]
macro_rules! test_kernel {
    ($main:path) => {
        /// Called by the runtime's entry point on the runtime's own stack.
        #[no_mangle]
        pub extern "C" fn pvt_main(si: &'static $crate::StartInfo) {
            $main(si)
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => console::fail(format_args!(
            "panic at {}:{}: {}",
            loc.file(),
            loc.line(),
            info.message()
        )),
        None => console::fail(format_args!("panic: {}", info.message())),
    }
}

/// The precompiled `core` of the host target is built with unwinding and references this
/// symbol from its (discarded) unwind tables; with `panic = "abort"` it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
