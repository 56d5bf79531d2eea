//! The `--net` command-line value: which host side a guest's network device uses, and
//! its MAC address.
//!
//! `tap=NAME[,mac=MAC]` or `user[,hostfwd=PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...[,mac=MAC]`
//! (QEMU's `hostfwd` syntax; `mac=` may come anywhere after the first part).

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// Why a `--net` value was refused. Each names the part at fault.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither `tap=NAME` nor `user`.
    #[error("`{0}` is not a network backend: use `tap=NAME` or `user[,hostfwd=...]`")]
    Kind(String),
    /// A tap name that is empty or too long for an interface name.
    #[error("`{0}` is not a valid tap interface name (1 to 15 characters, no `/` or spaces)")]
    TapName(String),
    /// An option this backend does not know, or one that does not belong to it.
    #[error("`{0}` is not an option of this network backend")]
    Option(String),
    /// A malformed MAC address.
    #[error("`{0}` is not a MAC address (expected six hex bytes like 00:16:3e:12:34:56)")]
    Mac(String),
    /// A MAC address that is multicast: a NIC's own address must be unicast.
    #[error("`{0}` is a multicast MAC address; a network device needs a unicast one")]
    MulticastMac(String),
    /// A `mac=` given twice.
    #[error("`mac=` is given more than once")]
    DuplicateMac,
    /// A malformed `hostfwd=` rule.
    #[error(
        "`{rule}` is not a port forward ({why}); expected tcp|udp:[HOSTADDR]:HOSTPORT-:GUESTPORT"
    )]
    HostFwd {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random address under Xen's OUI 00:16:3e (as Xen's toolstack makes them);
    /// the low three bytes come from the kernel's random pool.
    pub fn random_local() -> Mac {
        let mut r = [0u8; 3];
        let got = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut r));
        if got.is_err() {
            // No /dev/urandom (a stripped sandbox): fall back to the clock and PID,
            // which still differ between VMs started on one host.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
                ^ std::process::id().rotate_left(16);
            r.copy_from_slice(&t.to_le_bytes()[..3]);
        }
        // Xen keeps the top bit of the fourth byte clear for guest addresses.
        Mac([0x00, 0x16, 0x3e, r[0] & 0x7f, r[1], r[2]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Mac, SpecError> {
        let bad = || SpecError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if out[0] & 1 != 0 {
            return Err(SpecError::MulticastMac(s.to_string()));
        }
        Ok(Mac(out))
    }
}

/// A transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One `hostfwd=` rule: connections to the host's `host_port` (on `host_addr`, or all
/// addresses) reach the guest's `guest_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFwd {
    /// TCP or UDP.
    pub proto: Proto,
    /// The host address to bind, if not all.
    pub host_addr: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
}

impl FromStr for HostFwd {
    type Err = SpecError;
    fn from_str(rule: &str) -> Result<HostFwd, SpecError> {
        let err = |why| SpecError::HostFwd {
            rule: rule.to_string(),
            why,
        };
        let (proto, rest) = rule.split_once(':').ok_or_else(|| err("no protocol"))?;
        let proto = match proto {
            "tcp" | "" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(err("the protocol is not tcp or udp")),
        };
        let (host, guest) = rest
            .split_once('-')
            .ok_or_else(|| err("no `-` between the host and guest sides"))?;
        let (haddr, hport) = host
            .rsplit_once(':')
            .ok_or_else(|| err("the host side is not [ADDR]:PORT"))?;
        let host_addr = if haddr.is_empty() {
            None
        } else {
            Some(
                haddr
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| err("the host address is not an IP address"))?,
            )
        };
        let host_port = hport
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| err("the host port is not 1..65535"))?;
        let (gaddr, gport) = guest
            .rsplit_once(':')
            .ok_or_else(|| err("the guest side is not :PORT"))?;
        if !gaddr.is_empty() {
            // passt hands the guest one address (the host's); there is no other guest
            // address to forward to.
            return Err(err(
                "a guest address cannot be chosen with the user network",
            ));
        }
        let guest_port = gport
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| err("the guest port is not 1..65535"))?;
        Ok(HostFwd {
            proto,
            host_addr,
            host_port,
            guest_port,
        })
    }
}

/// Which host side carries a guest's frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSpec {
    /// An existing or new tap interface (needs CAP_NET_ADMIN).
    Tap(String),
    /// The unprivileged user-mode network through passt, with port forwards.
    User(Vec<HostFwd>),
    /// A tap interface made for the guest and enslaved to this existing bridge (an
    /// xl.cfg `vif=['bridge=BR']`), as xl's vif-bridge script does.
    Bridge(String),
}

/// A parsed `--net` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The host side.
    pub host: HostSpec,
    /// The guest's MAC address, if given (the caller picks [`Mac::random_local`]
    /// otherwise).
    pub mac: Option<Mac>,
}

impl NetSpec {
    /// Parses `tap=NAME[,mac=MAC]`, `bridge=NAME[,mac=MAC]` or
    /// `user[,hostfwd=RULE]...[,mac=MAC]`.
    pub fn parse(s: &str) -> Result<NetSpec, SpecError> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let mut host = if first == "user" {
            HostSpec::User(Vec::new())
        } else if let Some(name) = first.strip_prefix("bridge=") {
            if name.is_empty()
                || name.len() > 15
                || name.contains(|c: char| c == '/' || c.is_whitespace())
            {
                return Err(SpecError::TapName(name.to_string()));
            }
            HostSpec::Bridge(name.to_string())
        } else if let Some(name) = first.strip_prefix("tap=") {
            if name.is_empty()
                || name.len() > 15
                || name.contains(|c: char| c == '/' || c.is_whitespace())
            {
                return Err(SpecError::TapName(name.to_string()));
            }
            HostSpec::Tap(name.to_string())
        } else {
            return Err(SpecError::Kind(first.to_string()));
        };
        let mut mac = None;
        for part in parts {
            if let Some(m) = part.strip_prefix("mac=") {
                if mac.replace(m.parse()?).is_some() {
                    return Err(SpecError::DuplicateMac);
                }
            } else if let Some(rule) = part.strip_prefix("hostfwd=") {
                match &mut host {
                    HostSpec::User(fwds) => fwds.push(rule.parse()?),
                    HostSpec::Tap(_) | HostSpec::Bridge(_) => {
                        return Err(SpecError::Option(part.to_string()))
                    }
                }
            } else {
                return Err(SpecError::Option(part.to_string()));
            }
        }
        Ok(NetSpec { host, mac })
    }
}

impl FromStr for NetSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<NetSpec, SpecError> {
        NetSpec::parse(s)
    }
}
