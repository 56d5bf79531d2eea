//! The user's terminal: raw mode with a guaranteed restore, the escape sequence, and
//! the standard-input reader.
//!
//! The saved terminal mode lives in a static so that [`restore_terminal`] can run from
//! a signal handler or a panic hook. Access to it is arbitrated by one atomic state:
//! whoever moves it from `RAW` to `BUSY` owns the saved mode, restores it, and frees
//! the slot; everyone else does nothing. Only one terminal is in raw mode at a time.

use std::cell::UnsafeCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Once;

/// Ctrl-]: the first byte of the escape sequence.
pub const ESCAPE_BYTE: u8 = 0x1d;
/// After [`ESCAPE_BYTE`]: ask the guest to power off.
pub const ESCAPE_QUIT: u8 = b'q';

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const RAW: u8 = 2;

struct Saved {
    state: AtomicU8,
    fd: AtomicI32,
    termios: UnsafeCell<MaybeUninit<libc::termios>>,
}

// SAFETY: `termios` is only touched by the thread that moved `state` to BUSY (see
// the module documentation), so there is never concurrent access to it.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved {
    state: AtomicU8::new(IDLE),
    fd: AtomicI32::new(-1),
    termios: UnsafeCell::new(MaybeUninit::uninit()),
};

static PANIC_HOOK: Once = Once::new();

/// Puts the terminal that was switched to raw mode back the way it was, if any.
///
/// Async-signal-safe (atomics and `tcsetattr` only) and idempotent: call it from
/// signal handlers, `atexit`-like paths, or before `std::process::exit`. A no-op when
/// no terminal is raw, or while another thread is switching modes at that instant.
pub fn restore_terminal() {
    if SAVED
        .state
        .compare_exchange(RAW, BUSY, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let fd = SAVED.fd.load(Ordering::Relaxed);
    // SAFETY: we own the slot (state is BUSY, set by us), and it was initialised
    // before the state became RAW. tcsetattr is async-signal-safe.
    unsafe {
        let t = (*SAVED.termios.get()).as_ptr();
        libc::tcsetattr(fd, libc::TCSANOW, t);
    }
    SAVED.state.store(IDLE, Ordering::Release);
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Restore first, so the panic message is readable.
            restore_terminal();
            previous(info);
        }));
    });
}

/// Whether `fd` is a terminal.
pub(super) fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// The mode the console wants: no echo, no line editing, no signals from ^C/^Z/^\,
/// no flow control from ^S/^Q, no CR/NL translation on input (the guest's tty does
/// that), 8-bit characters, reads return as soon as one byte is there. Output
/// processing stays on, so the VMM's own log lines still start at column 0.
fn make_raw(t: &mut libc::termios) {
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB);
    t.c_cflag |= libc::CS8;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
}

/// Splits host input into bytes for the guest and the escape sequence
/// Ctrl-] `q` (power the guest off).
///
/// Ctrl-] followed by any other byte passes both through, except that Ctrl-] Ctrl-]
/// passes a single Ctrl-] (the way to type Ctrl-] `q` into the guest). A Ctrl-] at the
/// end of a chunk is held until the next chunk decides what it was.
#[derive(Debug, Default)]
pub struct EscapeScanner {
    pending: bool,
}

impl EscapeScanner {
    /// A scanner with nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the bytes to give the guest and whether the user asked to quit. Bytes
    /// after the quit sequence in the same chunk are dropped.
    pub fn scan(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        for &b in bytes {
            if self.pending {
                self.pending = false;
                match b {
                    ESCAPE_QUIT => return (out, true),
                    ESCAPE_BYTE => out.push(ESCAPE_BYTE),
                    _ => {
                        out.push(ESCAPE_BYTE);
                        out.push(b);
                    }
                }
            } else if b == ESCAPE_BYTE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }

    /// Whether a Ctrl-] is held waiting for the next byte.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Gives up on a held Ctrl-] (e.g. after a timeout) and returns it for the guest.
    pub fn take_pending(&mut self) -> Option<u8> {
        std::mem::take(&mut self.pending).then_some(ESCAPE_BYTE)
    }
}

/// Standard input in raw mode for as long as this lives (when it is a terminal).
///
/// The saved mode is restored on drop, by the panic hook installed on first use (which
/// then runs the previous hook), and by [`restore_terminal`], which signal handlers and
/// exit paths can call.
pub struct RawTerminal {
    active: bool,
    escape: EscapeScanner,
}

impl RawTerminal {
    /// Switches standard input to raw mode if it is a terminal; otherwise does nothing
    /// (see [`is_raw`](Self::is_raw)) but still scans for the escape sequence.
    pub fn new() -> io::Result<Self> {
        Self::with_fd(libc::STDIN_FILENO)
    }

    /// As [`new`](Self::new), for the terminal on `fd`, which must stay open while
    /// this lives. Fails if the mode cannot be read or set, or if another terminal is
    /// already raw.
    pub fn with_fd(fd: RawFd) -> io::Result<Self> {
        let mut me = Self {
            active: false,
            escape: EscapeScanner::new(),
        };
        if !is_tty(fd) {
            return Ok(me);
        }
        install_panic_hook();
        if SAVED
            .state
            .compare_exchange(IDLE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "a terminal is already in raw mode",
            ));
        }
        // SAFETY: we own the slot (state BUSY). tcgetattr fills the termios.
        let r = unsafe { libc::tcgetattr(fd, (*SAVED.termios.get()).as_mut_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            SAVED.state.store(IDLE, Ordering::Release);
            return Err(e);
        }
        // SAFETY: we own the slot and tcgetattr initialised it.
        let mut raw = unsafe { (*SAVED.termios.get()).assume_init() };
        make_raw(&mut raw);
        // SAFETY: valid descriptor and termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } < 0 {
            let e = io::Error::last_os_error();
            SAVED.state.store(IDLE, Ordering::Release);
            return Err(e);
        }
        SAVED.fd.store(fd, Ordering::Relaxed);
        SAVED.state.store(RAW, Ordering::Release);
        me.active = true;
        Ok(me)
    }

    /// Whether this switched a terminal to raw mode.
    pub fn is_raw(&self) -> bool {
        self.active
    }

    /// See [`EscapeScanner::scan`]: bytes for the guest, and whether Ctrl-] `q` was
    /// typed (the runner should then ask the guest to power off).
    pub fn scan_escape(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        self.escape.scan(bytes)
    }

    /// The escape scanner, e.g. to flush a held Ctrl-].
    pub fn escape(&mut self) -> &mut EscapeScanner {
        &mut self.escape
    }

    /// Restores the saved mode now (also done on drop).
    pub fn restore(&mut self) {
        if std::mem::take(&mut self.active) {
            restore_terminal();
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Where standard input goes: one reader thread per process, whose destination each
/// run sets (a domain restarted by `on_reboot` gets the same terminal). Bytes read
/// while no run takes them are kept, up to [`STDIN_HOLD_MAX`], for the next one.
struct StdinRoute {
    dest: Option<Sender<Vec<u8>>>,
    held: Vec<u8>,
}

/// The most typed bytes kept between two runs.
pub const STDIN_HOLD_MAX: usize = 64 << 10;

static STDIN_ROUTE: std::sync::Mutex<StdinRoute> = std::sync::Mutex::new(StdinRoute {
    dest: None,
    held: Vec::new(),
});
static STDIN_READER: std::sync::Once = std::sync::Once::new();

fn stdin_route() -> std::sync::MutexGuard<'static, StdinRoute> {
    STDIN_ROUTE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends standard input, chunk by chunk, on `tx` from now on (and what was typed since
/// the previous receiver went away). The reading thread is started on the first call
/// and ends at end of file or on a read error; a later call only moves the
/// destination.
pub fn spawn_stdin_reader(tx: Sender<Vec<u8>>) {
    {
        let mut route = stdin_route();
        let held = std::mem::take(&mut route.held);
        if held.is_empty() || tx.send(held).is_ok() {
            route.dest = Some(tx);
        }
    }
    STDIN_READER.call_once(|| {
        let (chunks, from_stdin) = std::sync::mpsc::channel::<Vec<u8>>();
        let started = std::thread::Builder::new()
            .name("pvkvm-stdin".into())
            .spawn(move || {
                let forward = std::thread::spawn(move || {
                    for chunk in from_stdin {
                        let mut route = stdin_route();
                        let sent = match &route.dest {
                            Some(d) => d.send(chunk.clone()).is_ok(),
                            None => false,
                        };
                        if !sent {
                            route.dest = None;
                            let room = STDIN_HOLD_MAX.saturating_sub(route.held.len());
                            route
                                .held
                                .extend_from_slice(&chunk[..chunk.len().min(room)]);
                        }
                    }
                });
                read_fd_loop(libc::STDIN_FILENO, &chunks);
                drop(chunks);
                let _ = forward.join();
            });
        if let Err(e) = started {
            log::warn!("cannot start the console input thread: {e}");
        }
    });
}

/// Stops sending standard input to the current receiver (its run is ending): what is
/// typed from now on is kept for the next [`spawn_stdin_reader`].
pub fn release_stdin() {
    stdin_route().dest = None;
}

/// Reads `fd` (blocking, or non-blocking through poll) into `tx` until end of file,
/// an error, or the receiver hanging up.
pub(super) fn read_fd_loop(fd: RawFd, tx: &Sender<Vec<u8>>) {
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            if tx.send(buf[..n as usize].to_vec()).is_err() {
                return;
            }
            continue;
        }
        if n == 0 {
            return;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                // Hung up or in error with nothing to read: stop rather than spin.
                if r > 0
                    && pfd.revents & libc::POLLIN == 0
                    && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;

    /// Tests that touch the process-wide saved mode take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pty pair (master, slave) standing in for a terminal, or None if this host has
    /// no pseudo-terminals.
    fn pty_pair() -> Option<(OwnedFd, OwnedFd)> {
        // SAFETY: plain libc calls; every descriptor is checked and owned right away.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if m < 0 {
                return None;
            }
            let master = OwnedFd::from_raw_fd(m);
            if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
                return None;
            }
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
                return None;
            }
            let s = libc::open(
                CStr::from_ptr(name.as_ptr()).as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if s < 0 {
                return None;
            }
            Some((master, OwnedFd::from_raw_fd(s)))
        }
    }

    fn mode(fd: RawFd) -> libc::termios {
        // SAFETY: termios is plain data, filled by tcgetattr.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd, &mut t), 0);
            t
        }
    }

    fn same(a: &libc::termios, b: &libc::termios) -> bool {
        a.c_iflag == b.c_iflag
            && a.c_oflag == b.c_oflag
            && a.c_cflag == b.c_cflag
            && a.c_lflag == b.c_lflag
            && a.c_cc == b.c_cc
    }

    fn assert_raw(t: &libc::termios) {
        assert_eq!(t.c_lflag & (libc::ECHO | libc::ICANON | libc::ISIG), 0);
        assert_eq!(t.c_iflag & (libc::ICRNL | libc::IXON), 0);
        assert_eq!(t.c_cc[libc::VMIN], 1);
    }

    #[test]
    fn escape_quit_in_one_chunk() {
        let mut s = EscapeScanner::new();
        assert_eq!(s.scan(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(s.scan(b"ab\x1dqcd"), (b"ab".to_vec(), true));
        assert!(!s.is_pending());
    }

    #[test]
    fn escape_split_across_chunks() {
        let mut s = EscapeScanner::new();
        assert_eq!(s.scan(b"x\x1d"), (b"x".to_vec(), false));
        assert!(s.is_pending());
        assert_eq!(s.scan(b""), (vec![], false));
        assert!(s.is_pending());
        assert_eq!(s.scan(b"q"), (vec![], true));

        // A held Ctrl-] followed by something else passes through whole.
        assert_eq!(s.scan(b"\x1d"), (vec![], false));
        assert_eq!(s.scan(b"x"), (b"\x1dx".to_vec(), false));
    }

    #[test]
    fn other_sequences_pass_through() {
        let mut s = EscapeScanner::new();
        assert_eq!(
            s.scan(b"\x03\x1d\x1b[A"),
            (b"\x03\x1d\x1b[A".to_vec(), false)
        );
        assert_eq!(s.scan(b"Q"), (b"Q".to_vec(), false));
        // Ctrl-] Ctrl-] is a literal Ctrl-], so Ctrl-] Ctrl-] q types "^]q".
        assert_eq!(s.scan(b"\x1d\x1dq"), (b"\x1dq".to_vec(), false));
        assert_eq!(s.scan(b"\x1d"), (vec![], false));
        assert_eq!(s.scan(b"\x1d"), (b"\x1d".to_vec(), false));
        assert_eq!(s.scan(b"q"), (b"q".to_vec(), false));
        s.scan(b"\x1d");
        assert_eq!(s.take_pending(), Some(ESCAPE_BYTE));
        assert_eq!(s.take_pending(), None);
        assert_eq!(s.scan(b"q"), (b"q".to_vec(), false));
    }

    #[test]
    fn raw_terminal_scans_escape() {
        let _g = lock();
        // On a non-terminal (a pipe) nothing is switched but scanning works.
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors, owned right away.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut t = RawTerminal::with_fd(r.as_raw_fd()).unwrap();
        assert!(!t.is_raw());
        assert_eq!(t.scan_escape(b"a\x1d"), (b"a".to_vec(), false));
        assert_eq!(t.scan_escape(b"q"), (vec![], true));
        restore_terminal(); // nothing raw: a no-op
    }

    #[test]
    fn raw_mode_on_a_pty_restored_on_drop() {
        let _g = lock();
        let Some((_m, s)) = pty_pair() else {
            eprintln!("skipped: no pseudo-terminals here");
            return;
        };
        let fd = s.as_raw_fd();
        let before = mode(fd);
        let t = RawTerminal::with_fd(fd).unwrap();
        assert!(t.is_raw());
        assert_raw(&mode(fd));
        // One raw terminal at a time.
        assert!(RawTerminal::with_fd(fd).is_err());
        drop(t);
        assert!(same(&mode(fd), &before));
    }

    #[test]
    fn restore_terminal_from_a_signal_path() {
        let _g = lock();
        let Some((_m, s)) = pty_pair() else {
            eprintln!("skipped: no pseudo-terminals here");
            return;
        };
        let fd = s.as_raw_fd();
        let before = mode(fd);
        let mut t = RawTerminal::with_fd(fd).unwrap();
        assert_raw(&mode(fd));
        restore_terminal();
        assert!(same(&mode(fd), &before));
        restore_terminal(); // idempotent
        t.restore();
        drop(t); // nothing left to do
        assert!(same(&mode(fd), &before));
        // The slot is free again.
        let t2 = RawTerminal::with_fd(fd).unwrap();
        assert!(t2.is_raw());
    }

    #[test]
    fn restore_terminal_from_a_real_signal_handler() {
        let _g = lock();
        let Some((_m, s)) = pty_pair() else {
            eprintln!("skipped: no pseudo-terminals here");
            return;
        };
        extern "C" fn handler(_: libc::c_int) {
            restore_terminal();
        }
        let fd = s.as_raw_fd();
        let before = mode(fd);
        let t = RawTerminal::with_fd(fd).unwrap();
        // SAFETY: installs a handler that only calls an async-signal-safe function,
        // then raises the signal on this thread; the old disposition is put back.
        unsafe {
            let h: extern "C" fn(libc::c_int) = handler;
            let old = libc::signal(libc::SIGUSR2, h as libc::sighandler_t);
            libc::raise(libc::SIGUSR2);
            libc::signal(libc::SIGUSR2, old);
        }
        assert!(same(&mode(fd), &before));
        drop(t);
    }

    #[test]
    fn panic_restores_the_terminal() {
        let _g = lock();
        let Some((_m, s)) = pty_pair() else {
            eprintln!("skipped: no pseudo-terminals here");
            return;
        };
        let fd = s.as_raw_fd();
        let before = mode(fd);
        let t = RawTerminal::with_fd(fd).unwrap();
        let seen_in_hook = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _keep = &t;
            panic!("test panic (expected)");
        }));
        assert!(seen_in_hook.is_err());
        // The hook ran before unwinding reached `t`; `t` is still alive here.
        assert!(same(&mode(fd), &before));
        drop(t); // nothing left to restore
    }

    #[test]
    fn stdin_if_it_is_a_terminal() {
        let _g = lock();
        if !is_tty(libc::STDIN_FILENO) {
            eprintln!("skipped the tty part: stdin is not a terminal");
            let t = RawTerminal::new().unwrap();
            assert!(!t.is_raw());
            return;
        }
        let before = mode(libc::STDIN_FILENO);
        let t = RawTerminal::new().unwrap();
        assert!(t.is_raw());
        assert_raw(&mode(libc::STDIN_FILENO));
        drop(t);
        assert!(same(&mode(libc::STDIN_FILENO), &before));
    }

    #[test]
    fn reader_sends_chunks_and_ends_at_eof() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors, owned right away.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || read_fd_loop(r.as_raw_fd(), &tx));
        let mut w = std::fs::File::from(w);
        use std::io::Write;
        w.write_all(b"abc").unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, b"abc");
        drop(w);
        h.join().unwrap();
        assert!(rx.recv().is_err(), "sender dropped at EOF");
    }
}
