//! A pseudo-terminal for the console, set up the way xenconsoled sets up its ptys:
//! the slave is made raw and kept open by the backend (so the master never sees a
//! hangup when a user detaches), and the master is non-blocking (so a console nobody
//! reads never stalls the VMM).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

pub(super) struct Pty {
    master: OwnedFd,
    /// Held open so that the master never reads EIO between users.
    _slave: OwnedFd,
    path: String,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Pty {
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
        let m =
            cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
        // SAFETY: `m` is a fresh descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: plain calls on a valid master descriptor.
        cvt(unsafe { libc::grantpt(m) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::unlockpt(m) })?;

        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `name` is writable for its full length, which is what we pass.
        let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let cpath = unsafe { CStr::from_ptr(name.as_ptr()) };
        let path = cpath.to_string_lossy().into_owned();

        // SAFETY: `cpath` is a valid C string; open returns a new descriptor or -1.
        let s = cvt(unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `s` is a fresh descriptor that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };

        // SAFETY: termios is plain data; tcgetattr fills it before it is used.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a valid termios pointer.
        cvt(unsafe { libc::tcgetattr(s, &mut t) })?;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: valid descriptor and termios.
        cvt(unsafe { libc::tcsetattr(s, libc::TCSANOW, &t) })?;

        set_nonblocking(m)?;
        Ok(Self {
            master,
            _slave: slave,
            path,
        })
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Writes what the pty takes now; 0 when it is full.
    pub(super) fn write_nonblocking(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is readable for `buf.len()` bytes; the descriptor is ours.
            let n = unsafe { libc::write(self.master.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// A thread reading the master (through its own descriptor) into `tx`.
    pub(super) fn spawn_reader(&self, tx: Sender<Vec<u8>>) -> io::Result<JoinHandle<()>> {
        // SAFETY: duplicating a valid descriptor; the result is a new descriptor or -1.
        let fd = cvt(unsafe { libc::fcntl(self.master.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::thread::Builder::new()
            .name("pvkvm-pty-in".into())
            .spawn(move || super::terminal::read_fd_loop(fd.as_raw_fd(), &tx))
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid descriptor.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL on a valid descriptor with flags it returned plus O_NONBLOCK.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}
