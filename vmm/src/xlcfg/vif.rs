//! One `vif=[...]` item: xl's comma-separated `key=value` options
//! (`xl-network-configuration(5)`), plus pvkvm's own keys for its host sides, mapped
//! to a [`NetSpec`].
//!
//! The host side is chosen by, in this order of precedence (giving two is an error):
//! - `pvkvm-net=user` or `pvkvm-net=tap:NAME`: pvkvm's user network (through passt,
//!   no privileges) or a tap interface;
//! - `bridge=BR`: a tap attached to the existing bridge BR, as Xen's vif-bridge
//!   script does (the host side for it is not written yet; the domain refuses to
//!   start with a message);
//! - `vifname=NAME`: xl's name for the host-side interface; in pvkvm that interface
//!   is a tap, so this is `pvkvm-net=tap:NAME`;
//! - none of them: the user network. Xen's default is the bridge `xenbr0`, but a
//!   host that never ran Xen has no such bridge, and making one needs root; the user
//!   network works for anyone and gives the guest outbound access.
//!
//! `pvkvm-hostfwd=tcp::2222-:22` (repeatable, or several rules joined by `;`) adds
//! port forwards to the user network. The `pvkvm-` prefix keeps these keys clear of
//! any xl option.

use thiserror::Error;

use crate::backends::net::{HostFwd, HostSpec, Mac, NetSpec, SpecError};

/// Why a vif item was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VifError {
    /// A malformed `mac=`.
    #[error("`{0}` is not a MAC address (six hex bytes like 00:16:3e:12:34:56)")]
    Mac(String),
    /// A multicast `mac=`.
    #[error("`{0}` is a multicast MAC address; a network device needs a unicast one")]
    MulticastMac(String),
    /// `pvkvm-net=` other than user or tap:NAME.
    #[error("`pvkvm-net={0}` is not a pvkvm network (use pvkvm-net=user or pvkvm-net=tap:NAME)")]
    PvkvmNet(String),
    /// Two keys that each pick the host side.
    #[error("`{0}` and `{1}` both choose the vif's host side; give one")]
    Conflict(String, String),
    /// `pvkvm-hostfwd=` on a vif that is not on the user network.
    #[error("`pvkvm-hostfwd=` needs the user network (pvkvm-net=user, or no bridge=/vifname=)")]
    HostFwdNotUser,
    /// `type=` other than vif or ioemu.
    #[error("`type={0}` is not a vif type (vif or ioemu)")]
    Type(String),
    /// A tap name or port forward that the `--net` syntax refuses.
    #[error("{0}")]
    Spec(#[source] SpecError),
}

/// A parsed vif item: the spec and the notes to warn about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedVif {
    /// The NIC.
    pub spec: NetSpec,
    /// Options accepted but not honoured.
    pub warnings: Vec<String>,
}

/// xl's MAC syntax: six hex numbers up to ff, each after one separator character
/// (`parse_nic_config` uses strtoul and skips one character).
fn parse_mac(s: &str) -> Result<Mac, VifError> {
    let bad = || VifError::Mac(s.to_string());
    let mut out = [0u8; 6];
    let mut rest = s;
    for (i, b) in out.iter_mut().enumerate() {
        let n = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 0 || n > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(&rest[..n], 16).map_err(|_| bad())?;
        rest = &rest[n..];
        if i < 5 {
            let mut chars = rest.chars();
            if chars.next().is_none() {
                return Err(bad());
            }
            rest = chars.as_str();
        }
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    if out[0] & 1 != 0 {
        return Err(VifError::MulticastMac(s.to_string()));
    }
    Ok(Mac(out))
}

fn tap(name: &str) -> Result<HostSpec, VifError> {
    // The `--net` parser holds the interface-name rules.
    NetSpec::parse(&format!("tap={name}"))
        .map(|s| s.host)
        .map_err(VifError::Spec)
}

/// Parses one vif item.
pub fn parse_vif(spec: &str) -> Result<ParsedVif, VifError> {
    let mut warnings = Vec::new();
    let mut mac = None;
    // The host side and the key that chose it.
    let mut host: Option<(HostSpec, String)> = None;
    let mut vifname: Option<String> = None;
    let mut fwds: Vec<HostFwd> = Vec::new();
    let choose = |h: HostSpec, key: String, host: &mut Option<(HostSpec, String)>| {
        if let Some((_, old)) = host {
            return Err(VifError::Conflict(old.clone(), key));
        }
        *host = Some((h, key));
        Ok(())
    };
    // As xl: split at commas, skip empty pieces and leading blanks.
    for opt in spec.split(',').map(|o| o.trim_start_matches(' ')) {
        if opt.is_empty() {
            continue;
        }
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key {
            "mac" => mac = Some(parse_mac(value)?),
            "bridge" => choose(
                HostSpec::Bridge(value.to_string()),
                format!("bridge={value}"),
                &mut host,
            )?,
            "pvkvm-net" => {
                let h = if value == "user" {
                    HostSpec::User(Vec::new())
                } else if let Some(name) = value.strip_prefix("tap:") {
                    tap(name)?
                } else {
                    return Err(VifError::PvkvmNet(value.to_string()));
                };
                choose(h, format!("pvkvm-net={value}"), &mut host)?;
            }
            "pvkvm-hostfwd" => {
                for rule in value.split(';').filter(|r| !r.is_empty()) {
                    fwds.push(rule.parse().map_err(VifError::Spec)?);
                }
            }
            "vifname" => vifname = Some(value.to_string()),
            "type" => {
                // ioemu adds an emulated NIC for HVM guests; a PV guest uses the vif.
                if !matches!(value, "vif" | "ioemu") {
                    return Err(VifError::Type(value.to_string()));
                }
            }
            // The emulated NIC model matters to HVM guests only.
            "model" => {}
            _ => warnings.push(format!("the vif option `{key}` is not supported; ignored")),
        }
    }
    let host = match (host, vifname) {
        (Some((HostSpec::Bridge(br), key)), Some(name)) => {
            warnings.push(format!(
                "`vifname={name}` is ignored with `{key}` (the bridge's tap is named by pvkvm)"
            ));
            HostSpec::Bridge(br)
        }
        (Some((_, key)), Some(name)) => {
            return Err(VifError::Conflict(key, format!("vifname={name}")))
        }
        (Some((h, _)), None) => h,
        (None, Some(name)) => tap(&name)?,
        (None, None) => HostSpec::User(Vec::new()),
    };
    let host = match host {
        HostSpec::User(mut f) => {
            f.extend(fwds);
            HostSpec::User(f)
        }
        other if fwds.is_empty() => other,
        _ => return Err(VifError::HostFwdNotUser),
    };
    Ok(ParsedVif {
        spec: NetSpec { host, mac },
        warnings,
    })
}
