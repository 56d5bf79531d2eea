//! The tap host side: a Linux tap interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`)
//! carrying whole Ethernet frames, non-blocking, brought up when opened.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

use super::HostNet;

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: u64 = 0x4004_54ca;
const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCSIFFLAGS: u64 = 0x8914;
const IFF_UP: i16 = 0x1;
/// `SIOCBRADDIF`: enslave the interface whose index is in the request to the bridge
/// the request names.
const SIOCBRADDIF: u64 = 0x89a2;
const IFF_TAP: i16 = 0x0002;
/// No 4-byte packet-information prefix: frames only.
const IFF_NO_PI: i16 = 0x1000;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as these ioctls use it: the name and the flags member of the union
/// (padded to the union's 24 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // The caller checked the length (< IFNAMSIZ, so a NUL stays at the end).
        let n = name.len().min(IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
}

/// Why a tap interface could not be opened.
#[derive(Debug, Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded, and may this user open it?)")]
    Open(#[source] io::Error),
    /// An interface name the kernel cannot take.
    #[error("`{0}` is not a valid interface name (1 to 15 bytes)")]
    Name(String),
    /// `TUNSETIFF` was refused without the privilege to create or attach a tap.
    #[error("attaching tap `{0}` needs root or CAP_NET_ADMIN (or a tap created beforehand for this user with `ip tuntap add {0} mode tap user USER`)")]
    Permission(String, #[source] io::Error),
    /// `TUNSETIFF` was refused because another process holds the device.
    #[error("tap `{0}` is busy: another process (another VM?) has it open")]
    Busy(String, #[source] io::Error),
    /// `TUNSETIFF` failed otherwise (a non-tap interface of that name, ...).
    #[error("cannot attach tap `{0}`")]
    Attach(String, #[source] io::Error),
    /// The link could not be set up.
    #[error("cannot bring tap `{0}` up")]
    LinkUp(String, #[source] io::Error),
    /// No bridge of that name (or not a bridge).
    #[error("there is no bridge `{0}` (create it, e.g. `ip link add {0} type bridge; ip link set {0} up`)")]
    NoBridge(String, #[source] io::Error),
    /// Enslaving the tap to the bridge failed otherwise.
    #[error("cannot add tap `{tap}` to bridge `{bridge}`")]
    Enslave {
        /// The tap.
        tap: String,
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `ioctl(fd, req, ifr)`.
fn ioctl_ifreq(fd: RawFd, req: u64, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: the three requests used here read and write a `struct ifreq`, which
    // `IfReq` lays out in full (40 bytes); the pointer is valid for the call.
    let r = unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Creates or attaches tap interface `name`, non-blocking, and sets it up.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut ifr = IfReq::new(name);
        ifr.flags = IFF_TAP | IFF_NO_PI;
        if let Err(e) = ioctl_ifreq(file.as_raw_fd(), TUNSETIFF, &mut ifr) {
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.into(), e),
                Some(libc::EBUSY) => TapError::Busy(name.into(), e),
                _ => TapError::Attach(name.into(), e),
            });
        }
        // The kernel may have completed a name pattern ("tap%d"): keep what it chose.
        let end = ifr.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&ifr.name[..end]).into_owned();
        set_link_up(&name).map_err(|e| TapError::LinkUp(name.clone(), e))?;
        Ok(Tap { file, name })
    }

    /// Creates a tap for the guest (named by the kernel, `pvkvm0`, `pvkvm1`, ...) and
    /// enslaves it to `bridge`, as xl's vif-bridge script does with `vif=['bridge=BR']`.
    /// The tap is not persistent: it leaves the bridge and disappears with pvkvm.
    pub fn open_on_bridge(bridge: &str) -> Result<Tap, TapError> {
        if bridge.is_empty() || bridge.len() >= IFNAMSIZ || bridge.contains('\0') {
            return Err(TapError::Name(bridge.to_string()));
        }
        let tap = Tap::open("pvkvm%d")?;
        add_to_bridge(bridge, &tap.name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                TapError::NoBridge(bridge.to_string(), e)
            }
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(tap.name.clone(), e),
            _ => TapError::Enslave {
                tap: tap.name.clone(),
                bridge: bridge.to_string(),
                source: e,
            },
        })?;
        log::info!("tap {} added to bridge {bridge}", tap.name);
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `struct ifreq` with the interface index member of the union.
#[repr(C)]
struct IfReqIndex {
    name: [u8; IFNAMSIZ],
    index: i32,
    _pad: [u8; 20],
}

/// Enslaves interface `port` to bridge `bridge` (`SIOCBRADDIF`).
fn add_to_bridge(bridge: &str, port: &str) -> io::Result<()> {
    let cport = std::ffi::CString::new(port).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid NUL-terminated name for the call's duration.
    let index = unsafe { libc::if_nametoindex(cport.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let mut ifr = IfReqIndex {
        name: IfReq::new(bridge).name,
        index: index as i32,
        _pad: [0; 20],
    };
    // SAFETY: SIOCBRADDIF reads a `struct ifreq` (name and ifindex), which `IfReqIndex`
    // lays out in full (40 bytes); the pointer is valid for the call.
    let r = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            SIOCBRADDIF as _,
            &mut ifr as *mut IfReqIndex,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `IFF_UP` on interface `name` through an ordinary socket.
fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let mut ifr = IfReq::new(name);
    ioctl_ifreq(sock.as_raw_fd(), SIOCGIFFLAGS, &mut ifr)?;
    if ifr.flags & IFF_UP == 0 {
        ifr.flags |= IFF_UP;
        ioctl_ifreq(sock.as_raw_fd(), SIOCSIFFLAGS, &mut ifr)?;
    }
    Ok(())
}

impl HostNet for Tap {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A tap write takes the whole frame or fails; a full queue (EAGAIN) drops it,
        // as a NIC would.
        self.file.write(frame).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
