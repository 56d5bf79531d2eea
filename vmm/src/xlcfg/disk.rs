//! One `disk=[...]` item, in xl's syntax (`xl-disk-configuration(5)`, libxlu's
//! `libxlu_disk_l.l`): `key=value` parameters, the positional form
//! `TARGET[,FORMAT[,VDEV[,ACCESS]]]`, and the old prefixes (`file:`, `phy:`,
//! `tap:aio:`, `tap:qcow2:`, `tap2:tapdisk:aio:`, ...), mapped to a [`DiskSpec`].

use std::path::PathBuf;

use thiserror::Error;

use crate::backends::blk::{DiskFormat, DiskSpec, SpecError, Vdev};

/// Why a disk item was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DiskError {
    /// `key=` that xl does not know.
    #[error("`{0}` is not a disk parameter")]
    UnknownParameter(String),
    /// A `prefix:` that xl does not know.
    #[error("`{0}` is not a known disk prefix (known: file:, phy:, tap:, tap2:, tapdisk:, aio:, ioemu:, raw:, qcow:, qcow2:, vhd:)")]
    UnknownPrefix(String),
    /// A parameter given twice with different values.
    #[error("`{0}` is given more than once")]
    Respecified(&'static str),
    /// More than TARGET, FORMAT, VDEV, ACCESS.
    #[error("`{0}` is one positional parameter too many (the form is TARGET,FORMAT,VDEV,ACCESS)")]
    TooManyPositional(String),
    /// A format xl knows but pvkvm cannot read.
    #[error("the disk format `{0}` is not supported (pvkvm reads raw and qcow2)")]
    UnsupportedFormat(String),
    /// A format xl does not know.
    #[error("`{0}` is not a disk format (raw, qcow, qcow2, vhd, qed or empty)")]
    BadFormat(String),
    /// `access=` other than r, ro, w, rw.
    #[error("`{0}` is not a disk access mode (r, ro, w or rw)")]
    BadAccess(String),
    /// `devtype=` other than disk or cdrom.
    #[error("`{0}` is not a device type (disk or cdrom)")]
    BadDevtype(String),
    /// A `backendtype=` xl does not know.
    #[error("`{0}` is not a backend type (phy, tap, qdisk or standalone)")]
    BadBackendType(String),
    /// A hotplug script or a script prefix (`iscsi:`, `nbd:`, `drbd:`).
    #[error(
        "disk scripts (`{0}`) are not supported: pvkvm opens the target as a file or block device"
    )]
    Script(String),
    /// `specification=virtio`.
    #[error("the disk specification `{0}` is not supported (pvkvm offers Xen PV disks only)")]
    Specification(String),
    /// No vdev.
    #[error("the disk has no virtual device (vdev=xvda, or TARGET,FORMAT,VDEV)")]
    NoVdev,
    /// No target on a disk that is not a CD-ROM.
    #[error("the disk has no target (the image file or block device)")]
    NoTarget,
    /// A vdev that is not an xvd name.
    #[error("{0}")]
    Vdev(#[source] SpecError),
}

/// A parsed disk item: the spec and the notes to warn about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedDisk {
    /// The disk, or None for an empty CD-ROM drive (nothing to attach).
    pub spec: Option<DiskSpec>,
    /// Things accepted but not honoured.
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct State {
    target: Option<String>,
    format: Option<String>,
    vdev: Option<String>,
    access: Option<bool>,
    access_positional: bool,
    cdrom: bool,
    had_prefix: bool,
    warnings: Vec<String>,
}

/// Stores a string once; an empty earlier value may be replaced (as libxlu's
/// `savestring`).
fn save(slot: &mut Option<String>, value: &str, what: &'static str) -> Result<(), DiskError> {
    match slot {
        Some(old) if !old.is_empty() => Err(DiskError::Respecified(what)),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

fn set_format(st: &mut State, f: &str) -> Result<(), DiskError> {
    let f = if f.is_empty() { "raw" } else { f };
    if !matches!(f, "raw" | "qcow" | "qcow2" | "vhd" | "empty" | "qed") {
        return Err(DiskError::BadFormat(f.to_string()));
    }
    match &st.format {
        Some(old) if old != f => Err(DiskError::Respecified("format")),
        _ => {
            st.format = Some(f.to_string());
            Ok(())
        }
    }
}

fn parse_access(a: &str) -> Result<bool, DiskError> {
    // Returns read-only.
    match a {
        "r" | "ro" => Ok(true),
        "w" | "rw" | "" => Ok(false),
        _ => Err(DiskError::BadAccess(a.to_string())),
    }
}

/// `VDEV:cdrom` / `VDEV:disk`, the old way to give the device type; false when there
/// is no colon.
fn vdev_and_devtype(st: &mut State, s: &str) -> Result<bool, DiskError> {
    let Some((vdev, ty)) = s.rsplit_once(':') else {
        return Ok(false);
    };
    save(&mut st.vdev, vdev, "vdev")?;
    match ty {
        "cdrom" => st.cdrom = true,
        "disk" => st.cdrom = false,
        _ => return Err(DiskError::BadDevtype(ty.to_string())),
    }
    Ok(true)
}

/// The flags and `key=value` parameters; Ok(false) when `tok` is neither.
fn parameter(st: &mut State, tok: &str) -> Result<bool, DiskError> {
    match tok {
        "cdrom" => st.cdrom = true,
        // Performance and trust hints for Xen's backends; pvkvm's backend has
        // nothing they change.
        "direct-io-safe" | "discard" | "no-discard" | "trusted" | "untrusted" => {}
        "colo" | "no-colo" => st
            .warnings
            .push(format!("the disk flag `{tok}` is not supported; ignored")),
        _ => {
            let Some((key, value)) = tok.split_once('=') else {
                return Ok(false);
            };
            match key {
                "format" => set_format(st, value)?,
                "devtype" => match value {
                    "cdrom" => st.cdrom = true,
                    "disk" => st.cdrom = false,
                    _ => return Err(DiskError::BadDevtype(value.to_string())),
                },
                "access" => st.access = Some(parse_access(value)?),
                "vdev" => save(&mut st.vdev, value, "vdev")?,
                "backendtype" => {
                    // Which Xen backend serves the disk; pvkvm has one, for all.
                    if !matches!(value, "phy" | "tap" | "qdisk" | "standalone") {
                        return Err(DiskError::BadBackendType(value.to_string()));
                    }
                }
                "backend" => st.warnings.push(format!(
                    "the disk's backend domain `{value}` is ignored (pvkvm serves every disk itself)"
                )),
                "script" => return Err(DiskError::Script(format!("script={value}"))),
                "specification" => match value {
                    "xen" => {}
                    _ => return Err(DiskError::Specification(value.to_string())),
                },
                "grant_usage" if matches!(value, "0" | "1") => {}
                "colo-host" | "colo-port" | "colo-export" | "active-disk" | "hidden-disk" => st
                    .warnings
                    .push(format!("the disk parameter `{key}` is not supported; ignored")),
                _ => return Err(DiskError::UnknownParameter(tok.to_string())),
            }
        }
    }
    Ok(true)
}

/// A leading `prefix:` of the old syntax, if `rest` starts with one: returns the
/// length to skip.
fn prefix(st: &mut State, rest: &str) -> Result<Option<usize>, DiskError> {
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        .count();
    if name_len == 0 || !rest.as_bytes()[0].is_ascii_lowercase() {
        return Ok(None);
    }
    if rest.as_bytes().get(name_len) != Some(&b':') {
        return Ok(None);
    }
    let name = &rest[..name_len];
    match name {
        "raw" | "qcow" | "qcow2" | "vhd" => set_format(st, name)?,
        "iscsi" | "nbd" | "enbd" | "drbd" => return Err(DiskError::Script(format!("{name}:"))),
        "tapdisk" | "tap" | "tap2" | "aio" | "ioemu" | "file" | "phy" => {}
        _ => {
            // As libxlu: a word and a colon followed by a letter or digit is not a
            // prefix (it may be `xvdc:cdrom`); followed by anything else it is an
            // unknown one.
            let next = rest.as_bytes().get(name_len + 1);
            if next.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                return Ok(None);
            }
            return Err(DiskError::UnknownPrefix(format!("{name}:")));
        }
    }
    st.had_prefix = true;
    Ok(Some(name_len + 1))
}

/// Parses one disk item.
pub fn parse_disk(spec: &str) -> Result<ParsedDisk, DiskError> {
    let mut st = State::default();
    let mut rest = spec;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\n']);
        if rest.is_empty() {
            break;
        }
        if let Some(v) = rest.strip_prefix("target=") {
            // `target=` takes the rest of the item, commas and all, so it comes last.
            let v = v.strip_suffix(',').unwrap_or(v);
            save(&mut st.target, v, "target")?;
            break;
        }
        if let Some(n) = prefix(&mut st, rest)? {
            rest = &rest[n..];
            continue;
        }
        let (tok, next) = match rest.find(',') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        if parameter(&mut st, tok)? {
            continue;
        }
        if tok.contains('=') {
            return Err(DiskError::UnknownParameter(tok.to_string()));
        }
        // Positional: TARGET, then FORMAT (only without an old prefix, which stood
        // for it), then VDEV, then ACCESS.
        if st.target.is_none() {
            save(&mut st.target, tok, "target")?;
        } else if !st.had_prefix && st.format.is_none() {
            let empty_target = st.target.as_deref() == Some("");
            if empty_target && vdev_and_devtype(&mut st, tok)? {
                st.format = Some("empty".into());
            } else {
                set_format(&mut st, tok)?;
            }
        } else if st.vdev.is_none() {
            if !vdev_and_devtype(&mut st, tok)? {
                save(&mut st.vdev, tok, "vdev")?;
            }
        } else if !st.access_positional {
            st.access_positional = true;
            st.access = Some(parse_access(tok)?);
        } else {
            return Err(DiskError::TooManyPositional(tok.to_string()));
        }
    }

    let vdev = st
        .vdev
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or(DiskError::NoVdev)?;
    let vdev = Vdev::parse(vdev).map_err(DiskError::Vdev)?;
    let target = st.target.clone().unwrap_or_default();
    let mut warnings = std::mem::take(&mut st.warnings);
    if st.cdrom && target.is_empty() {
        warnings.push(format!(
            "the empty CD-ROM drive {vdev} is not supported (pvkvm has no removable media); ignored"
        ));
        return Ok(ParsedDisk {
            spec: None,
            warnings,
        });
    }
    if target.is_empty() {
        return Err(DiskError::NoTarget);
    }
    let format = match st.format.as_deref().unwrap_or("raw") {
        "raw" => DiskFormat::Raw,
        "qcow2" => DiskFormat::Qcow2,
        other => return Err(DiskError::UnsupportedFormat(other.to_string())),
    };
    if st.cdrom {
        warnings.push(format!(
            "the CD-ROM {vdev} is given to the guest as a read-only disk (pvkvm has no removable media)"
        ));
    }
    Ok(ParsedDisk {
        spec: Some(DiskSpec {
            path: PathBuf::from(target),
            format,
            vdev: Some(vdev),
            // A CD-ROM is read-only whatever the access says, as in libxlu.
            read_only: st.cdrom || st.access.unwrap_or(false),
        }),
        warnings,
    })
}
