//! The command line's disk syntax, `path[,format=raw|qcow2][,vdev=xvda][,ro]`, and the
//! guest-visible device names (`xvda`, `xvdb2`, `xvdaa`) with their `virtual-device`
//! numbers.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use xen_abi::blkif::vdev::{xvd_devid, XVD_EXTENDED_MAX_DISKS, XVD_EXTENDED_MAX_PARTITIONS};

/// Why a disk specification or device name was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// Nothing before the first comma.
    #[error("the disk specification {0:?} does not start with an image path")]
    NoPath(String),
    /// An option this syntax does not have.
    #[error(
        "the disk option {0:?} is not known (expected format=raw|qcow2, vdev=NAME, ro or readonly)"
    )]
    UnknownOption(String),
    /// An option given twice.
    #[error("the disk option {0:?} is given more than once")]
    Repeated(String),
    /// A `format=` value other than raw or qcow2.
    #[error("the disk format {0:?} is not known (expected raw or qcow2)")]
    BadFormat(String),
    /// A device name that is not an xvd name.
    #[error("the virtual device name {0:?} is not of the form xvd<letters>[<partition>] (such as xvda, xvdb1, xvdaa) or d<disk>[p<partition>]")]
    BadVdev(String),
    /// A disk or partition beyond what the `virtual-device` encoding can carry.
    #[error("the virtual device {0:?} is beyond the last disk (1048575) or partition (255) Xen can number")]
    VdevRange(String),
}

/// A guest-visible xvd device: a disk and a partition of it (0: the whole disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vdev {
    disk: u32,
    partition: u32,
}

impl Vdev {
    /// Disk `disk`, partition `partition`; `None` when the pair has no `virtual-device`
    /// number.
    pub fn new(disk: u32, partition: u32) -> Option<Vdev> {
        xvd_devid(disk, partition).map(|_| Vdev { disk, partition })
    }

    /// Parses `xvd<letters>[<partition>]` (letters count a, b, ..., z, aa, ab, ... as
    /// Xen's tools do) or `d<disk>[p<partition>]`.
    pub fn parse(name: &str) -> Result<Vdev, SpecError> {
        let bad = || SpecError::BadVdev(name.to_string());
        let range = || SpecError::VdevRange(name.to_string());
        let (disk, partition) = if let Some(rest) = name.strip_prefix("xvd") {
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            let (letters, digits) = rest.split_at(letters);
            if letters.is_empty() {
                return Err(bad());
            }
            // Bijective base 26: a=1 .. z=26, aa=27; the disk is that minus one.
            let mut n: u64 = 0;
            for c in letters.bytes() {
                n = n * 26 + u64::from(c - b'a' + 1);
                if n > u64::from(XVD_EXTENDED_MAX_DISKS) {
                    return Err(range());
                }
            }
            let disk = u32::try_from(n - 1).map_err(|_| range())?;
            let partition = if digits.is_empty() {
                0
            } else {
                // A partition is named from 1 ("xvda0" would alias "xvda").
                parse_number(digits).filter(|&p| p != 0).ok_or_else(bad)?
            };
            (disk, partition)
        } else if let Some(rest) = name.strip_prefix('d') {
            let (disk, partition) = match rest.split_once('p') {
                Some((d, p)) => (d, Some(p)),
                None => (rest, None),
            };
            let disk = parse_number(disk).ok_or_else(bad)?;
            let partition = match partition {
                Some(p) => parse_number(p).ok_or_else(bad)?,
                None => 0,
            };
            (disk, partition)
        } else {
            return Err(bad());
        };
        if disk >= XVD_EXTENDED_MAX_DISKS || partition >= XVD_EXTENDED_MAX_PARTITIONS {
            return Err(range());
        }
        Vdev::new(disk, partition).ok_or_else(range)
    }

    /// The disk number (0 for xvda).
    pub fn disk(&self) -> u32 {
        self.disk
    }

    /// The partition number (0: the whole disk).
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The `virtual-device` number the frontend directory carries.
    pub fn devid(&self) -> u32 {
        // `new` and `parse` only build pairs that have a number.
        xvd_devid(self.disk, self.partition).unwrap_or(0)
    }

    /// The xvd name (`xvda`, `xvdb2`, `xvdaa`).
    pub fn name(&self) -> String {
        let mut letters = Vec::new();
        let mut n = self.disk + 1;
        while n > 0 {
            n -= 1;
            letters.push(b'a' + (n % 26) as u8);
            n /= 26;
        }
        letters.reverse();
        let mut name = String::from("xvd");
        name.extend(letters.into_iter().map(char::from));
        if self.partition != 0 {
            name.push_str(&self.partition.to_string());
        }
        name
    }
}

impl fmt::Display for Vdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Vdev {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Vdev::parse(s)
    }
}

/// A decimal number without sign or leading zeros.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// The image file format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFormat {
    /// The file's bytes are the disk's bytes.
    #[default]
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// One `--disk` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file or block device.
    pub path: PathBuf,
    /// Its format (raw unless `format=` says otherwise).
    pub format: DiskFormat,
    /// The guest device; the caller picks the next free one when absent.
    pub vdev: Option<Vdev>,
    /// Whether the guest gets the disk read-only (`ro` or `readonly`).
    pub read_only: bool,
}

impl DiskSpec {
    /// Parses `path[,format=raw|qcow2][,vdev=NAME][,ro|,readonly]`. The path is
    /// everything before the first comma.
    pub fn parse(s: &str) -> Result<DiskSpec, SpecError> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(SpecError::NoPath(s.to_string()));
        }
        let (mut format, mut vdev, mut read_only) = (None, None, None);
        for opt in parts {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("format", Some(v)) => {
                    let f = match v {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        _ => return Err(SpecError::BadFormat(v.to_string())),
                    };
                    set_once(&mut format, f, "format")?;
                }
                ("vdev", Some(v)) => set_once(&mut vdev, Vdev::parse(v)?, "vdev")?,
                ("ro" | "readonly", None) => set_once(&mut read_only, true, "ro")?,
                _ => return Err(SpecError::UnknownOption(opt.to_string())),
            }
        }
        Ok(DiskSpec {
            path: PathBuf::from(path),
            format: format.unwrap_or_default(),
            vdev,
            read_only: read_only.unwrap_or(false),
        })
    }
}

impl FromStr for DiskSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        DiskSpec::parse(s)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), SpecError> {
    if slot.replace(value).is_some() {
        return Err(SpecError::Repeated(name.to_string()));
    }
    Ok(())
}
