//! The user-mode host side: an unprivileged network through passt (Debian package
//! `passt`), the way QEMU's `-netdev stream` uses it.
//!
//! passt runs as a child process and is handed one end of a UNIX stream socket pair
//! with `--fd`, so no socket path is shared in /tmp and no other local user can
//! connect to it. On that socket every Ethernet frame travels prefixed by its length as
//! a 4-byte big-endian integer (passt's "qemu" mode). passt answers the guest's ARP,
//! DHCP, NDP and DHCPv6 itself (the guest gets the host's address and gateway), and
//! proxies TCP/UDP/ICMP through ordinary host sockets.
//!
//! The command line: `passt -f -q -1 -F FD [--runas nobody] [-t|-u SPEC]...`:
//! `-f` keeps it in the foreground as our child (no daemonising, so it can be killed and
//! reaped), `-q` quiets informational messages, `-1` makes it exit when our end of the
//! socket closes (should the VMM die without killing it), and as root `--runas nobody`
//! states the privilege drop passt does anyway (it refuses to keep root), without its
//! warning. Port forwards become `-t [ADDR/]HOSTPORT:GUESTPORT` (`-u` for UDP).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use thiserror::Error;

use super::spec::{HostFwd, Proto};
use super::{HostNet, MAX_HOST_FRAME};

/// Bytes of frames waiting for passt to read before further frames are dropped
/// (a NIC's transmit queue; passt normally drains it at once).
const TX_QUEUE_LIMIT: usize = 1 << 20;

/// Why the user network could not be started.
#[derive(Debug, Error)]
pub enum UserNetError {
    /// The passt binary is not on PATH.
    #[error("the user network needs passt, which is not installed: run guest-images/scripts/install-deps.sh (Debian package `passt`)")]
    NotInstalled(#[source] io::Error),
    /// The socket pair could not be made.
    #[error("cannot create the socket pair for passt")]
    Socket(#[source] io::Error),
    /// passt could not be started.
    #[error("cannot start passt")]
    Spawn(#[source] io::Error),
}

/// A running passt and our end of its socket.
#[derive(Debug)]
pub struct UserNet {
    stream: FrameStream,
    child: Child,
}

/// Length-prefixed Ethernet frames over a non-blocking UNIX stream socket (passt's
/// qemu protocol), with partial reads and writes carried over between calls.
#[derive(Debug)]
pub struct FrameStream {
    sock: UnixStream,
    /// Bytes read not yet returned as frames; the unread part starts at `rx_start`.
    rx: Vec<u8>,
    rx_start: usize,
    /// Framed bytes not yet written, from `tx_start`.
    tx: Vec<u8>,
    tx_start: usize,
}

/// The passt arguments for `hostfwds` (after the fixed ones).
pub fn passt_forward_args(hostfwds: &[HostFwd]) -> Vec<String> {
    let mut args = Vec::new();
    for f in hostfwds {
        args.push(
            match f.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            }
            .to_string(),
        );
        let addr = f.host_addr.map(|a| format!("{a}/")).unwrap_or_default();
        args.push(format!("{addr}{}:{}", f.host_port, f.guest_port));
    }
    args
}

impl UserNet {
    /// Starts passt with `hostfwds` and connects to it.
    pub fn start(hostfwds: &[HostFwd]) -> Result<UserNet, UserNetError> {
        Self::start_with(std::path::Path::new("passt"), hostfwds)
    }

    /// [`Self::start`] with the passt binary at `passt`.
    pub fn start_with(
        passt: &std::path::Path,
        hostfwds: &[HostFwd],
    ) -> Result<UserNet, UserNetError> {
        let (ours, theirs) = UnixStream::pair().map_err(UserNetError::Socket)?;
        ours.set_nonblocking(true).map_err(UserNetError::Socket)?;
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(passt);
        cmd.args(["-f", "-q", "-1", "-F", &child_fd.to_string()]);
        // Debugging a guest's network: PVKVM_PASST_PCAP=FILE has passt record the
        // frames it exchanges with the guest there. (Its own debug log is not offered:
        // Debian 12's passt crashes in it.)
        if let Some(pcap) = std::env::var_os("PVKVM_PASST_PCAP") {
            cmd.arg("-p").arg(pcap);
        }
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["--runas", "nobody"]);
        }
        cmd.args(passt_forward_args(hostfwds));
        // Its stdin/stdout stay off our terminal; its errors (an option it refuses) go
        // to our stderr, where the user sees them. (A forwarded port that is already
        // taken on the host is not an error to passt: it goes on without it.)
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // fcntl(2), which is async-signal-safe; it clears close-on-exec on the one
        // descriptor passt is told about (std opens the pair close-on-exec, so no other
        // child started meanwhile inherits it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(child_fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => UserNetError::NotInstalled(e),
            _ => UserNetError::Spawn(e),
        })?;
        // passt holds its own copy now.
        drop(theirs);
        Ok(UserNet {
            stream: FrameStream::new(ours),
            child,
        })
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Says why the stream ended, with passt's exit status if it has exited.
    fn explain(&mut self, e: io::Error) -> io::Error {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            return e;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => io::Error::new(e.kind(), format!("passt exited ({s})")),
            _ => io::Error::new(e.kind(), "passt closed its socket"),
        }
    }
}

impl FrameStream {
    /// Frames over `sock`, which must be non-blocking.
    pub fn new(sock: UnixStream) -> FrameStream {
        FrameStream {
            sock,
            rx: Vec::with_capacity(2 * MAX_HOST_FRAME),
            rx_start: 0,
            tx: Vec::new(),
            tx_start: 0,
        }
    }

    fn closed_error() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the socket")
    }

    /// One whole frame from the bytes already read, if there is one.
    fn take_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let avail = &self.rx[self.rx_start..];
        let Some(hdr) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len > MAX_HOST_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("passt sent a frame length of {len} bytes: the stream is out of step"),
            ));
        }
        let Some(frame) = avail.get(4..4 + len) else {
            return Ok(None);
        };
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        self.rx_start += 4 + len;
        if self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        }
        if n < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the receive buffer is smaller than passt's frame",
            ));
        }
        Ok(Some(len))
    }
}

impl FrameStream {
    /// Queues one frame and writes out what the socket takes; `WouldBlock` when the
    /// queue is full and the frame was dropped.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.tx.len() - self.tx_start + frame.len() + 4 > TX_QUEUE_LIMIT {
            // passt is not reading: drop, like a full NIC queue.
            self.flush()?;
            if self.tx.len() - self.tx_start + frame.len() + 4 > TX_QUEUE_LIMIT {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let len =
            u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.tx.extend_from_slice(&len.to_be_bytes());
        self.tx.extend_from_slice(frame);
        self.flush()
    }

    /// One whole frame into `buf`, or `None` while none has fully arrived.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(Some(n));
            }
            // Make room, then read whatever the socket has.
            if self.rx_start > 0 {
                self.rx.drain(..self.rx_start);
                self.rx_start = 0;
            }
            let old = self.rx.len();
            self.rx.resize(old + MAX_HOST_FRAME + 4, 0);
            let r = self.sock.read(&mut self.rx[old..]);
            match r {
                Ok(0) => {
                    self.rx.truncate(old);
                    return Err(Self::closed_error());
                }
                Ok(n) => self.rx.truncate(old + n),
                Err(e) => {
                    self.rx.truncate(old);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(None),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    };
                }
            }
        }
    }

    /// Writes out queued bytes until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.tx_start < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_start..]) {
                Ok(0) => return Err(Self::closed_error()),
                Ok(n) => self.tx_start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The rest waits for the socket to drain (the caller polls for
                // writability while `wants_write`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.tx_start == self.tx.len() {
            self.tx.clear();
            self.tx_start = 0;
        } else if self.tx_start > TX_QUEUE_LIMIT / 2 {
            self.tx.drain(..self.tx_start);
            self.tx_start = 0;
        }
        Ok(())
    }

    /// Whether queued bytes wait for the socket to drain.
    pub fn wants_write(&self) -> bool {
        self.tx_start < self.tx.len()
    }
}

impl HostNet for UserNet {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let r = self.stream.send(frame);
        r.map_err(|e| self.explain(e))
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let r = self.stream.recv(buf);
        r.map_err(|e| self.explain(e))
    }

    fn fd(&self) -> RawFd {
        self.stream.sock.as_raw_fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.stream.flush();
        r.map_err(|e| self.explain(e))
    }

    fn wants_write(&self) -> bool {
        self.stream.wants_write()
    }
}

impl Drop for UserNet {
    fn drop(&mut self) {
        // Kill and reap: no passt outlives its VM, and no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
