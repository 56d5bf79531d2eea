//! Console output through `HYPERVISOR_console_io(CONSOLEIO_write)` and the result
//! protocol: exactly one `Test result: SUCCESS` or `Test result: FAILURE: <why>` line,
//! then `SCHEDOP_shutdown` with reason poweroff (success) or crash (failure).

use core::fmt::{self, Write};
use xen_abi::sched::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF};

use crate::hypercall;

/// The success line, without its newline.
pub const SUCCESS_LINE: &str = "Test result: SUCCESS";
/// Prefix of the failure line.
pub const FAILURE_PREFIX: &str = "Test result: FAILURE: ";

/// Buffers one line and hands it to the hypervisor in a single `console_io` call at each
/// `'\n'` (or when the buffer is full), so a line is never split by another writer.
pub struct LineWriter {
    buf: [u8; 480],
    len: usize,
}

impl LineWriter {
    /// An empty writer.
    pub const fn new() -> Self {
        LineWriter {
            buf: [0; 480],
            len: 0,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            hypercall::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for LineWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints `args` followed by `"\n"` as one console line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut w = LineWriter::new();
    let _ = w.write_fmt(args);
    let _ = w.write_str("\n");
}

/// Prints a formatted line on the hypervisor console (a trailing `"\n"` is added).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Reports FAILURE with a formatted reason and crashes the domain; never returns.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::console::fail(format_args!($($arg)*))
    };
}

/// Fails unless `got == want`, naming `what` and printing both values in hex.
#[macro_export]
macro_rules! check_eq {
    ($what:expr, $got:expr, $want:expr) => {{
        let got = $got;
        let want = $want;
        if got != want {
            $crate::fail!("{}: got {:#x}, expected {:#x}", $what, got, want);
        }
    }};
}

/// Fails unless a hypercall returned `want`, printing the return values as signed numbers.
#[macro_export]
macro_rules! check_rc {
    ($what:expr, $got:expr, $want:expr) => {{
        let got: i64 = $got;
        let want: i64 = $want;
        if got != want {
            $crate::fail!("{}: returned {}, expected {}", $what, got, want);
        }
    }};
}

/// Prints the SUCCESS line and powers off; never returns.
pub fn succeed() -> ! {
    print_line(format_args!("{}", SUCCESS_LINE));
    finish(SHUTDOWN_POWEROFF)
}

/// Prints `Test result: FAILURE: <why>` and crashes the domain; never returns.
pub fn fail(why: fmt::Arguments<'_>) -> ! {
    {
        let mut w = LineWriter::new();
        let _ = w.write_str(FAILURE_PREFIX);
        let _ = w.write_fmt(why);
        let _ = w.write_str("\n");
    }
    finish(SHUTDOWN_CRASH)
}

/// Shuts the domain down with `reason`; if the hypervisor returns, says so and keeps
/// asking (yield in between), as the domain must not go on.
pub fn finish(reason: u32) -> ! {
    let rc = hypercall::shutdown(reason);
    print_line(format_args!("SCHEDOP_shutdown({}) returned {}", reason, rc));
    loop {
        hypercall::shutdown(reason);
        // SAFETY: SCHEDOP_yield has no argument and no effect on guest state.
        unsafe {
            hypercall::hypercall2(
                xen_abi::xen::hypercall::SCHED_OP,
                xen_abi::sched::SCHEDOP_YIELD,
                0,
            );
        }
    }
}
