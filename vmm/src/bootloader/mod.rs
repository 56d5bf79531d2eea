//! Booting from a guest's disk image: what Xen's pygrub does, inside the VMM.
//!
//! [`boot_from_disk`] opens the disk read-only, lists its partitions (MBR with logical
//! partitions, GPT, or none: the whole disk is one filesystem), looks on each ext2/3/4
//! filesystem for a boot configuration in pygrub's order (GRUB 2 `grub.cfg`,
//! extlinux/syslinux, GRUB legacy `menu.lst`), picks the default entry (or the one asked
//! for) and reads its kernel and initrd out of the filesystem. Nothing is written, and
//! the image is closed (its shared `flock` released) before the function returns, so the
//! block backend can open it for writing afterwards.
//!
//! Every image and configuration is treated as hostile: files are read only up to the
//! caps below, configuration nesting and entry counts are bounded, partition tables are
//! checked against the image's size, and all reads go through a byte budget. See
//! docs/bootloader.md.

mod disk;
mod extlinux;
mod fs;
mod grub2;
mod grub_legacy;

#[cfg(test)]
mod tests;

use std::rc::Rc;

use thiserror::Error;

use crate::backends::blk::{DiskFormat, DiskImage, DiskSpec, ImageError};

/// The largest boot configuration file read (pygrub's `FS_READ_MAX`).
pub const MAX_CONFIG: u64 = 1 << 20;
/// The largest kernel image read.
pub const MAX_KERNEL: u64 = 256 << 20;
/// The largest initrd read (all of an entry's initrds together); the loader's cap on a
/// decompressed kernel (`MAX_DECOMPRESSED`) is the same 1 GiB.
pub const MAX_INITRD: u64 = 1 << 30;
/// The most menu entries a configuration may have.
pub const MAX_ENTRIES: usize = 1024;
/// The deepest nesting of blocks (`if`, `menuentry`, `submenu`, functions) in a
/// `grub.cfg`.
pub const MAX_NESTING: usize = 16;
/// The longest line of a menu.lst or extlinux.conf.
pub const MAX_LINE: usize = 64 << 10;
/// The most partitions looked at on one disk.
pub const MAX_PARTITIONS: usize = 128;

/// Where pygrub looks for a boot configuration, in its order; the first file found on
/// a filesystem is the one used.
pub const CONFIG_PATHS: &[(&str, ConfigKind)] = &[
    ("/boot/grub/grub.cfg", ConfigKind::Grub2),
    ("/grub/grub.cfg", ConfigKind::Grub2),
    ("/boot/grub2/grub.cfg", ConfigKind::Grub2),
    ("/grub2/grub.cfg", ConfigKind::Grub2),
    ("/boot/isolinux/isolinux.cfg", ConfigKind::Extlinux),
    ("/boot/extlinux/extlinux.conf", ConfigKind::Extlinux),
    ("/boot/extlinux.conf", ConfigKind::Extlinux),
    ("/extlinux/extlinux.conf", ConfigKind::Extlinux),
    ("/extlinux.conf", ConfigKind::Extlinux),
    ("/syslinux/syslinux.cfg", ConfigKind::Extlinux),
    ("/boot/grub/menu.lst", ConfigKind::GrubLegacy),
    ("/boot/grub/grub.conf", ConfigKind::GrubLegacy),
    ("/grub/menu.lst", ConfigKind::GrubLegacy),
    ("/grub/grub.conf", ConfigKind::GrubLegacy),
];

/// The configuration languages read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// GRUB 2's `grub.cfg`.
    Grub2,
    /// GRUB legacy's `menu.lst` / `grub.conf`.
    GrubLegacy,
    /// extlinux / syslinux / isolinux.
    Extlinux,
}

/// What to boot, as pygrub's options say it.
#[derive(Clone, Debug, Default)]
pub struct BootOptions {
    /// The entry: a number (the position in [`list_entries`]' list, from 0) or a title
    /// (the full `Submenu>Entry` path, the entry's own title, or its GRUB `--id`).
    /// `None`: the configuration's default.
    pub entry: Option<String>,
    /// A kernel path inside the image: when given, no configuration is read (as with
    /// pygrub's `--kernel`); the first partition holding the file is used.
    pub kernel: Option<String>,
    /// An initrd path inside the image, replacing the entry's initrds.
    pub ramdisk: Option<String>,
    /// Extra kernel arguments, appended to the entry's (pygrub's `--args`); with
    /// `kernel`, the whole command line.
    pub args: Option<String>,
}

/// A kernel to boot, read from a disk.
#[derive(Clone, Debug)]
pub struct BootImage {
    /// The kernel image file's bytes.
    pub kernel: Vec<u8>,
    /// The initrd (several initrds of one entry concatenated, as GRUB loads them).
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line.
    pub cmdline: String,
    /// The chosen entry's title.
    pub title: String,
    /// Where it came from, such as `xvda1 (ext4) /boot/grub/grub.cfg`.
    pub source: String,
    /// Things worth telling the user (a default that names no entry, for one).
    pub warnings: Vec<String>,
}

/// One menu entry, as [`list_entries`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Its number for [`BootOptions::entry`].
    pub index: usize,
    /// Its title (`Submenu>Entry` for an entry in a GRUB submenu).
    pub title: String,
    /// The kernel path inside the filesystem, if the entry names one.
    pub kernel: Option<String>,
    /// The initrd paths.
    pub initrds: Vec<String>,
    /// The kernel arguments.
    pub args: String,
}

/// A disk's boot menu.
#[derive(Clone, Debug)]
pub struct EntryList {
    /// Where the configuration is, such as `xvda1 (ext4) /boot/grub/grub.cfg`.
    pub source: String,
    /// The entries in order.
    pub entries: Vec<EntryInfo>,
    /// The entry booted by default.
    pub default: usize,
    /// Warnings about the configuration.
    pub warnings: Vec<String>,
}

/// Why a configuration file could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Blocks nested deeper than [`MAX_NESTING`].
    #[error("blocks nest deeper than {max} levels at line {line}")]
    TooDeep {
        /// The line.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("it has more than {max} menu entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// A word or variable longer than GRUB needs, or too many variables.
    #[error("line {line} makes a value over {max_value} bytes or more than {max_vars} variables")]
    TooBig {
        /// The line.
        line: usize,
        /// The longest value.
        max_value: usize,
        /// The most variables.
        max_vars: usize,
    },
    /// A line longer than [`MAX_LINE`].
    #[error("line {line} is longer than {max} bytes")]
    LineTooLong {
        /// The line.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// A quote left open.
    #[error("a quoted string starting on line {line} is never closed")]
    Unterminated {
        /// The line.
        line: usize,
    },
    /// A `}`, `fi`, `else` or `then` where none belongs, or a block left open.
    #[error("line {line}: {what}")]
    Structure {
        /// The line.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// Why no kernel could be taken from a disk.
#[derive(Debug, Error)]
pub enum Error {
    /// The image could not be opened (or its lock taken).
    #[error("cannot open {disk} to look for a kernel in it")]
    Open {
        /// The disk.
        disk: String,
        /// The cause.
        #[source]
        source: ImageError,
    },
    /// Reading the disk failed.
    #[error("cannot read {what} of {disk}")]
    Read {
        /// The disk.
        disk: String,
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The MBR partition table is damaged.
    #[error("the MBR partition table of {disk} cannot be read")]
    Mbr {
        /// The disk.
        disk: String,
        /// The cause.
        #[source]
        source: mbrman::Error,
    },
    /// The partition table is damaged.
    #[error("the partition table of {disk} is damaged: {what}")]
    PartitionTable {
        /// The disk.
        disk: String,
        /// What is wrong.
        what: String,
    },
    /// No filesystem of the disk holds a boot configuration.
    #[error("no boot configuration (grub.cfg, extlinux.conf, menu.lst) found on {disk}: {tried}")]
    NoConfig {
        /// The disk.
        disk: String,
        /// What was found on each partition.
        tried: String,
    },
    /// The kernel given as an override is on no filesystem of the disk.
    #[error("the kernel {path} is on no filesystem of {disk}: {tried}")]
    KernelNotOnDisk {
        /// The disk.
        disk: String,
        /// The path.
        path: String,
        /// What was found on each partition.
        tried: String,
    },
    /// The configuration file could not be parsed.
    #[error("the boot configuration {source_desc} cannot be read")]
    Config {
        /// Where it is.
        source_desc: String,
        /// The cause.
        #[source]
        source: ConfigError,
    },
    /// The configuration has no entries.
    #[error("the boot configuration {source_desc} has no menu entries")]
    NoEntries {
        /// Where it is.
        source_desc: String,
    },
    /// The requested entry is not in the menu.
    #[error("the boot configuration {source_desc} has no entry {entry:?} (entries: {available})")]
    NoSuchEntry {
        /// Where it is.
        source_desc: String,
        /// What was asked for.
        entry: String,
        /// What there is.
        available: String,
    },
    /// The chosen entry names no kernel.
    #[error("the entry {title:?} of {source_desc} has no linux/kernel command")]
    NoKernel {
        /// Where it is.
        source_desc: String,
        /// The entry.
        title: String,
    },
    /// A file the entry names is not on the filesystem.
    #[error("the {what} {path} named by {source_desc} is not on {partition}")]
    FileMissing {
        /// Kernel, initrd or configuration.
        what: &'static str,
        /// The path.
        path: String,
        /// Where the configuration is.
        source_desc: String,
        /// The partition.
        partition: String,
    },
    /// A file is larger than its cap.
    #[error("the {what} {path} on {partition} is {size} bytes, more than the {max} allowed")]
    FileTooLarge {
        /// Kernel, initrd or configuration.
        what: &'static str,
        /// The path.
        path: String,
        /// The partition.
        partition: String,
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// A file could not be read from the filesystem.
    #[error("cannot read the {what} {path} from {partition}")]
    FileRead {
        /// Kernel, initrd or configuration.
        what: &'static str,
        /// The path.
        path: String,
        /// The partition.
        partition: String,
        /// The cause.
        #[source]
        source: ext4_view::Ext4Error,
    },
}

/// One parsed menu entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MenuEntry {
    pub title: String,
    /// The entry's own title when it sits in a submenu (`title` is then the path).
    pub leaf_title: Option<String>,
    pub id: Option<String>,
    pub kernel: Option<String>,
    pub initrds: Vec<String>,
    pub args: String,
}

/// A parsed configuration: its entries in menu order and the default.
#[derive(Clone, Debug, Default)]
pub(crate) struct Menu {
    pub entries: Vec<MenuEntry>,
    pub default: usize,
    pub warnings: Vec<String>,
}

impl Menu {
    /// Index of `entry` (a number or a title/id), if the menu has it.
    fn find(&self, entry: &str) -> Option<usize> {
        if let Ok(n) = entry.trim().parse::<usize>() {
            return (n < self.entries.len()).then_some(n);
        }
        let e = entry.trim();
        self.entries
            .iter()
            .position(|m| m.title == e)
            .or_else(|| {
                self.entries
                    .iter()
                    .position(|m| m.leaf_title.as_deref() == Some(e))
            })
            .or_else(|| self.entries.iter().position(|m| m.id.as_deref() == Some(e)))
    }
}

/// Parses `text` as a `kind` configuration found at `path` (for relative paths).
pub(crate) fn parse_config(
    kind: ConfigKind,
    text: &str,
    path: &str,
    grubenv: Option<&str>,
) -> Result<Menu, ConfigError> {
    match kind {
        ConfigKind::Grub2 => grub2::parse(text, grubenv),
        ConfigKind::GrubLegacy => grub_legacy::parse(text),
        ConfigKind::Extlinux => {
            let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
            extlinux::parse(text, if dir.is_empty() { "/" } else { dir })
        }
    }
}

/// Makes a path from a configuration absolute on its filesystem: drops a GRUB device
/// prefix (`(hd0,msdos1)/vmlinuz`, `($root)/vmlinuz`) and adds a leading `/`.
pub(crate) fn clean_path(p: &str, dir: &str) -> String {
    let p = p.trim();
    let p = match p.strip_prefix('(') {
        Some(rest) => rest.split_once(')').map_or(rest, |(_, after)| after),
        None => p,
    };
    if p.starts_with('/') {
        p.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{p}")
    } else {
        format!("{dir}/{p}")
    }
}

/// The disk's name in messages (`xvda (/path/to/image)`) and its guest device name,
/// which partition numbers are appended to (`xvda` when the spec names none).
fn disk_names(disk: &DiskSpec) -> (String, String) {
    let base = disk
        .vdev
        .map_or_else(|| "xvda".to_string(), |v| v.to_string());
    (format!("{base} ({})", disk.path.display()), base)
}

/// Opens the image read-only (shared lock), whatever the guest will get.
fn open_image(disk: &DiskSpec, name: &str) -> Result<DiskImage, Error> {
    let r = match disk.format {
        DiskFormat::Raw => DiskImage::open_raw(&disk.path, true),
        DiskFormat::Qcow2 => DiskImage::open_qcow2(&disk.path, true),
    };
    r.map_err(|source| Error::Open {
        disk: name.to_string(),
        source,
    })
}

/// A configuration found on a filesystem, parsed, with the entry chosen.
struct Found {
    fs: fs::Fs,
    source: String,
    menu: Menu,
    chosen: usize,
}

/// Walks the partitions for the first with a boot configuration.
fn find_config(
    image: &Rc<DiskImage>,
    (name, base): (&str, &str),
    opts: &BootOptions,
) -> Result<Result<Found, String>, Error> {
    let (parts, mut notes) = disk::partitions(image, name, base)?;
    for n in &notes {
        log::debug!("{n}");
    }
    for part in parts {
        let fs = match fs::Fs::open(image.clone(), &part) {
            Ok(fs) => fs,
            Err(why) => {
                log::debug!("{}: {why}", part.name);
                notes.push(format!("{}: {why}", part.name));
                continue;
            }
        };
        let Some((path, kind)) = CONFIG_PATHS
            .iter()
            .find(|(p, _)| fs.is_file(p))
            .map(|&(p, k)| (p, k))
        else {
            notes.push(format!(
                "{}: {}, no configuration file",
                part.name,
                fs.kind()
            ));
            continue;
        };
        let source = format!("{} ({}) {path}", part.name, fs.kind());
        let bytes = fs.read_file(path, "configuration", MAX_CONFIG, &source)?;
        let text = String::from_utf8_lossy(&bytes);
        // GRUB keeps its environment block next to grub.cfg ($prefix/grubenv).
        let grubenv = if kind == ConfigKind::Grub2 {
            let env_path = format!("{}/grubenv", path.rsplit_once('/').map_or("", |(d, _)| d));
            if fs.is_file(&env_path) {
                fs.read_file(&env_path, "GRUB environment block", 64 << 10, &source)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            } else {
                None
            }
        } else {
            None
        };
        let menu =
            parse_config(kind, &text, path, grubenv.as_deref()).map_err(|e| Error::Config {
                source_desc: source.clone(),
                source: e,
            })?;
        if menu.entries.is_empty() {
            return Err(Error::NoEntries {
                source_desc: source,
            });
        }
        let chosen = match &opts.entry {
            None => menu.default,
            Some(e) => menu.find(e).ok_or_else(|| Error::NoSuchEntry {
                source_desc: source.clone(),
                entry: e.clone(),
                available: available(&menu),
            })?,
        };
        return Ok(Ok(Found {
            fs,
            source,
            menu,
            chosen,
        }));
    }
    Ok(Err(notes.join("; ")))
}

/// `0 'Title', 1 'Other'` (the first 20).
fn available(menu: &Menu) -> String {
    let mut s: Vec<String> = menu
        .entries
        .iter()
        .take(20)
        .enumerate()
        .map(|(i, e)| format!("{i} {:?}", e.title))
        .collect();
    if menu.entries.len() > 20 {
        s.push("...".to_string());
    }
    s.join(", ")
}

/// Reads the kernel, the initrd and the command line a pygrub would hand the domain
/// builder from `disk` (opened read-only and closed again before returning).
///
/// The partitions are tried in pygrub's order (the active MBR partition first, then the
/// others in table order, then logical partitions; GPT entries in table order; a disk
/// without a partition table is one filesystem). On the first ext2/3/4 filesystem with
/// a configuration (see [`CONFIG_PATHS`]) the entry `opts.entry` (or the configuration's
/// default; a default naming no entry falls back to entry 0 with a warning, as GRUB
/// does) is read. With `opts.kernel`, no configuration is read: the first filesystem
/// holding that path supplies the kernel (and `opts.ramdisk`), and `opts.args` is the
/// command line.
pub fn boot_from_disk(disk: &DiskSpec, opts: &BootOptions) -> Result<BootImage, Error> {
    let (name, base) = disk_names(disk);
    let image = Rc::new(open_image(disk, &name)?);
    if let Some(kernel) = &opts.kernel {
        return boot_override(&image, (&name, &base), kernel, opts);
    }
    let found = match find_config(&image, (&name, &base), opts)? {
        Ok(f) => f,
        Err(tried) => return Err(Error::NoConfig { disk: name, tried }),
    };
    let Found {
        fs,
        source,
        menu,
        chosen,
    } = found;
    let entry = menu.entries.get(chosen).ok_or_else(|| Error::NoEntries {
        source_desc: source.clone(),
    })?;
    log::info!(
        "reading {}: entry {chosen} '{}'",
        source,
        entry.title.escape_debug()
    );
    let kernel_path = entry.kernel.as_deref().ok_or_else(|| Error::NoKernel {
        source_desc: source.clone(),
        title: entry.title.clone(),
    })?;
    let kernel = fs.read_boot_file(kernel_path, "kernel", MAX_KERNEL, &source)?;
    let initrd_paths: Vec<String> = match &opts.ramdisk {
        Some(r) => vec![r.clone()],
        None => entry.initrds.clone(),
    };
    let initrd = read_initrds(&fs, &initrd_paths, &source)?;
    let mut cmdline = entry.args.trim().to_string();
    if let Some(extra) = &opts.args {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(extra.trim());
    }
    let warnings = menu.warnings;
    for w in &warnings {
        log::warn!("{source}: {w}");
    }
    Ok(BootImage {
        kernel,
        initrd,
        cmdline,
        title: entry.title.clone(),
        source,
        warnings,
    })
}

/// `--kernel`: the first filesystem with that file.
fn boot_override(
    image: &Rc<DiskImage>,
    (name, base): (&str, &str),
    kernel: &str,
    opts: &BootOptions,
) -> Result<BootImage, Error> {
    let (parts, mut notes) = disk::partitions(image, name, base)?;
    let path = clean_path(kernel, "/");
    for part in parts {
        let fs = match fs::Fs::open(image.clone(), &part) {
            Ok(fs) => fs,
            Err(why) => {
                notes.push(format!("{}: {why}", part.name));
                continue;
            }
        };
        if !fs.is_file(&path) {
            notes.push(format!("{}: {}, no {path}", part.name, fs.kind()));
            continue;
        }
        let source = format!("{} ({}) {path}", part.name, fs.kind());
        log::info!("reading {source} (kernel given, no configuration read)");
        let kernel = fs.read_boot_file(&path, "kernel", MAX_KERNEL, &source)?;
        let initrd_paths: Vec<String> = opts.ramdisk.iter().cloned().collect();
        let initrd = read_initrds(&fs, &initrd_paths, &source)?;
        return Ok(BootImage {
            kernel,
            initrd,
            cmdline: opts.args.as_deref().unwrap_or("").trim().to_string(),
            title: path.clone(),
            source,
            warnings: Vec::new(),
        });
    }
    Err(Error::KernelNotOnDisk {
        disk: name.to_string(),
        path,
        tried: notes.join("; "),
    })
}

/// Reads and concatenates an entry's initrds, all together capped at [`MAX_INITRD`].
fn read_initrds(fs: &fs::Fs, paths: &[String], source: &str) -> Result<Option<Vec<u8>>, Error> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut all = Vec::new();
    for p in paths {
        let left = MAX_INITRD.saturating_sub(all.len() as u64);
        let bytes = fs.read_boot_file(p, "initrd", left, source)?;
        all.extend_from_slice(&bytes);
    }
    Ok(Some(all))
}

/// The boot menu of `disk` (for a `--list-entries`): the configuration pygrub's search
/// finds, its entries and its default. The image is opened read-only and closed again.
pub fn list_entries(disk: &DiskSpec) -> Result<EntryList, Error> {
    let (name, base) = disk_names(disk);
    let image = Rc::new(open_image(disk, &name)?);
    let found = match find_config(&image, (&name, &base), &BootOptions::default())? {
        Ok(f) => f,
        Err(tried) => return Err(Error::NoConfig { disk: name, tried }),
    };
    Ok(EntryList {
        source: found.source,
        entries: found
            .menu
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| EntryInfo {
                index,
                title: e.title.clone(),
                kernel: e.kernel.clone(),
                initrds: e.initrds.clone(),
                args: e.args.clone(),
            })
            .collect(),
        default: found.chosen,
        warnings: found.menu.warnings,
    })
}
