//! xl.cfg domain configuration files (`xl.cfg(5)`): the syntax ([`parse`]), the disk
//! ([`disk`]) and vif ([`vif`]) item syntaxes, and the typed [`DomainConfig`] pvkvm
//! runs.
//!
//! What a file says that pvkvm does not do is either refused (an [`Error`] naming the
//! file and line: `type="hvm"`, a bootloader other than pygrub, a disk format other
//! than raw and qcow2, ...) or, when the guest runs the same without it, reported as
//! one warning per key (`guest.cfg:7: 'vfb' is not supported; ignored`) in
//! [`Loaded::warnings`] for the caller to print.
//!
//! As in xl, a key set twice takes its last value, and `KEY += VALUE` appends to the
//! earlier value (strings join, lists extend; `+=` on a number is refused).
//!
//! Paths: xl hands `kernel`, `ramdisk` and disk targets to libxl unchanged, and libxl
//! opens them from xl's working directory (the domain is built before xl
//! daemonizes), so a relative path is relative to the current directory, not to the
//! configuration file. pvkvm keeps them unchanged the same way. With a `bootloader`,
//! `kernel` and `ramdisk` are paths inside the guest's disk (libxl passes them to
//! pygrub as `--kernel`/`--ramdisk`), and the command line is appended to the boot
//! entry's (`--args`).

pub mod disk;
pub mod parse;
pub mod vif;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::affinity::CpuAffinity;
use crate::backends::blk::DiskSpec;
use crate::backends::net::NetSpec;
pub use disk::DiskError;
pub use parse::{ParseError, Setting, Settings, SyntaxError, Value};
pub use vif::VifError;

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{file}: cannot read the configuration file: {source}")]
    Read {
        /// The file as named.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`parse::MAX_FILE_BYTES`].
    #[error(
        "{file}: the configuration file is larger than {} bytes; is it the right file?",
        parse::MAX_FILE_BYTES
    )]
    TooLarge {
        /// The file as named.
        file: String,
    },
    /// The file is not text.
    #[error("{file}: the configuration file is not UTF-8 text")]
    NotText {
        /// The file as named.
        file: String,
    },
    /// A syntax error.
    #[error("{file}:{source}")]
    Syntax {
        /// The file as named.
        file: String,
        /// Where and what.
        #[source]
        source: ParseError,
    },
    /// A setting's value is refused.
    #[error("{file}:{line}: {source}")]
    Setting {
        /// The file as named.
        file: String,
        /// The line of the setting (of the list item, for disks and vifs).
        line: u32,
        /// What is wrong.
        #[source]
        source: SettingError,
    },
}

/// Why one setting's value was refused.
#[derive(Debug, Error)]
pub enum SettingError {
    /// A list where one value belongs.
    #[error("'{0}' must be a single value, not a list")]
    NotSingle(String),
    /// A value that is not a number.
    #[error("'{key}' must be a number (decimal, 0x hex or 0 octal), not {value:?}")]
    NotNumber {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// `+=` on a number.
    #[error("'{0}' is a number; `+=` applies to strings and lists")]
    AddNumber(String),
    /// A number out of range.
    #[error("'{key}' must be from {min} to {max}, not {value}")]
    Range {
        /// The key.
        key: String,
        /// Its value.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// A list item that is itself a list.
    #[error("the items of '{0}' must be strings, not lists")]
    NestedList(String),
    /// A domain type other than PV.
    #[error("{key}=\"{value}\" is not supported: pvkvm runs PV guests only (type=\"pv\")")]
    NotPv {
        /// `type` or `builder`.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// An unknown domain type.
    #[error("\"{0}\" is not a domain type (pv, pvh or hvm)")]
    BadType(String),
    /// `type` and `builder` disagree.
    #[error("'builder' and 'type' contradict each other")]
    TypeContradiction,
    /// A bootloader other than pygrub.
    #[error("bootloader=\"{0}\" is not supported: pvkvm reads the kernel from the disk as pygrub does (bootloader=\"pygrub\"), or boots kernel=")]
    Bootloader(String),
    /// An unknown `on_*` action.
    #[error("\"{value}\" is not an {key} action (destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart or soft-reset)")]
    Action {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A disk item.
    #[error("disk {spec:?}: {source}")]
    Disk {
        /// The item.
        spec: String,
        /// What is wrong.
        #[source]
        source: DiskError,
    },
    /// Two disks with one vdev.
    #[error("disk {spec:?}: the virtual device {vdev} is already used by an earlier disk")]
    DuplicateVdev {
        /// The item.
        spec: String,
        /// The device.
        vdev: String,
    },
    /// A vif item.
    #[error("vif {spec:?}: {source}")]
    Vif {
        /// The item.
        spec: String,
        /// What is wrong.
        #[source]
        source: VifError,
    },
    /// A `cpus` list is refused.
    #[error("cpus: {0}")]
    Cpus(#[source] crate::affinity::Error),
    /// A `bootloader_args` option that takes a value has none.
    #[error("bootloader_args: `{0}` needs a value")]
    BootloaderArgValue(String),
}

/// What xl does when the domain stops for a reason (`xl.cfg(5)` `on_poweroff` and
/// friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// End the domain.
    Destroy,
    /// Start it again with the same configuration.
    Restart,
    /// Keep the old domain under a new name and start a new one.
    RenameRestart,
    /// Keep the stopped domain for inspection.
    Preserve,
    /// Write a core dump, then destroy.
    CoredumpDestroy,
    /// Write a core dump, then restart.
    CoredumpRestart,
    /// Reset the domain in place (kexec-style).
    SoftReset,
}

impl Action {
    /// Parses xl's names.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "destroy" => Action::Destroy,
            "restart" => Action::Restart,
            "rename-restart" => Action::RenameRestart,
            "preserve" => Action::Preserve,
            "coredump-destroy" => Action::CoredumpDestroy,
            "coredump-restart" => Action::CoredumpRestart,
            "soft-reset" => Action::SoftReset,
            _ => return None,
        })
    }

    /// Whether the action starts the domain again.
    pub fn restarts(self) -> bool {
        matches!(
            self,
            Action::Restart | Action::RenameRestart | Action::CoredumpRestart
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        })
    }
}

/// Which pygrub menu entry to boot (`--entry=N|TITLE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// By position, from 0.
    Index(usize),
    /// By title, exactly.
    Title(String),
}

/// `bootloader="pygrub"`: read the kernel from the guest's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bootloader {
    /// The menu entry, else the menu's default.
    pub entry: Option<BootEntry>,
    /// A kernel path inside the guest's filesystem instead of the menu's.
    pub kernel: Option<String>,
    /// An initrd path inside the guest's filesystem.
    pub ramdisk: Option<String>,
    /// Appended to the entry's kernel command line.
    pub args: Option<String>,
}

/// The typed configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name` (required by xl; pvkvm only uses it in messages).
    pub name: Option<String>,
    /// `memory` in MiB.
    pub memory_mib: Option<u64>,
    /// `maxmem` in MiB, as given.
    pub maxmem_mib: Option<u64>,
    /// `vcpus` (at least 1 when given, as xl makes it).
    pub vcpus: Option<u64>,
    /// `maxvcpus`.
    pub maxvcpus: Option<u64>,
    /// `cpus`: the host CPUs each vCPU's thread runs on.
    pub cpus: Option<CpuAffinity>,
    /// `kernel`, to boot directly (None with a bootloader: it went to
    /// [`Bootloader::kernel`]).
    pub kernel: Option<PathBuf>,
    /// `ramdisk` (None with a bootloader).
    pub ramdisk: Option<PathBuf>,
    /// The command line: `cmdline`, else `root=ROOT EXTRA` (None with a bootloader:
    /// it went to [`Bootloader::args`]).
    pub cmdline: Option<String>,
    /// `bootloader` and `bootloader_args`.
    pub bootloader: Option<Bootloader>,
    /// `disk`, in order.
    pub disks: Vec<DiskSpec>,
    /// `vif`, in order.
    pub nets: Vec<NetSpec>,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: Action,
    /// `on_reboot` (default restart).
    pub on_reboot: Action,
    /// `on_crash` (default destroy).
    pub on_crash: Action,
    /// `on_watchdog` (default destroy).
    pub on_watchdog: Action,
    /// `on_soft_reset` (default soft-reset).
    pub on_soft_reset: Action,
}

/// A warning: a setting accepted but not (fully) honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The file as named.
    pub file: String,
    /// Its line.
    pub line: u32,
    /// What is ignored.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// A loaded file: the configuration and its warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: DomainConfig,
    /// One per ignored key or option, in file order.
    pub warnings: Vec<Warning>,
    /// The file as named, for messages about its values.
    pub file: String,
    /// The line of each key's last setting, for the caller's own messages (such as
    /// refusing `vcpus` > 1).
    pub lines: std::collections::BTreeMap<String, u32>,
}

impl Loaded {
    /// `FILE:LINE` of `key`'s setting, or `FILE` when the key is not set.
    pub fn place(&self, key: &str) -> String {
        match self.lines.get(key) {
            Some(l) => format!("{}:{l}", self.file),
            None => self.file.clone(),
        }
    }
}

/// The keys [`DomainConfig`] takes; the others are warned about.
const KNOWN: &[&str] = &[
    "name",
    "type",
    "builder",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "cpus",
    "kernel",
    "ramdisk",
    "cmdline",
    "extra",
    "root",
    "disk",
    "vif",
    "bootloader",
    "bootloader_args",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_watchdog",
    "on_soft_reset",
];

/// Reads and converts a file. `file` is also the name used in messages.
pub fn load(file: &Path) -> Result<Loaded, Error> {
    let name = file.display().to_string();
    let read = |source| Error::Read {
        file: name.clone(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(read)?;
    if meta.len() > parse::MAX_FILE_BYTES as u64 {
        return Err(Error::TooLarge { file: name });
    }
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        // Bounded again: the file may grow, or be a device that reports no length.
        std::fs::File::open(file)
            .map_err(read)?
            .take(parse::MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
    }
    if bytes.len() > parse::MAX_FILE_BYTES {
        return Err(Error::TooLarge { file: name });
    }
    let text = String::from_utf8(bytes).map_err(|_| Error::NotText { file: name.clone() })?;
    from_str(&text, &name)
}

/// Converts a file's text; `file` names it in messages.
pub fn from_str(text: &str, file: &str) -> Result<Loaded, Error> {
    if text.len() > parse::MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            file: file.to_string(),
        });
    }
    let settings = parse::parse(text).map_err(|source| Error::Syntax {
        file: file.to_string(),
        source,
    })?;
    Builder {
        file,
        settings: &settings,
        warnings: Vec::new(),
    }
    .build()
}

struct Builder<'a> {
    file: &'a str,
    settings: &'a Settings,
    warnings: Vec<Warning>,
}

impl Builder<'_> {
    fn err(&self, line: u32, source: SettingError) -> Error {
        Error::Setting {
            file: self.file.to_string(),
            line,
            source,
        }
    }

    fn warn(&mut self, line: u32, message: String) {
        self.warnings.push(Warning {
            file: self.file.to_string(),
            line,
            message,
        });
    }

    fn string(&self, key: &str) -> Result<Option<(String, u32)>, Error> {
        let Some(s) = self.settings.get(key) else {
            return Ok(None);
        };
        match &s.value {
            Value::Atom { text, .. } => Ok(Some((text.clone(), s.line))),
            Value::List { .. } => Err(self.err(s.line, SettingError::NotSingle(key.into()))),
        }
    }

    /// A number as libxlu reads it (strtol base 0: decimal, 0x hex, 0 octal), from a
    /// number or a quoted string, within `min..=max`.
    fn number(&self, key: &str, min: i64, max: i64) -> Result<Option<(i64, u32)>, Error> {
        let Some(s) = self.settings.get(key) else {
            return Ok(None);
        };
        if s.op == parse::Op::Add {
            return Err(self.err(s.line, SettingError::AddNumber(key.into())));
        }
        let Value::Atom { text, .. } = &s.value else {
            return Err(self.err(s.line, SettingError::NotSingle(key.into())));
        };
        let bad = || {
            self.err(
                s.line,
                SettingError::NotNumber {
                    key: key.into(),
                    value: text.clone(),
                },
            )
        };
        let t = text.trim_start();
        let (neg, t) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        if t.contains(['+', '-']) {
            return Err(bad());
        }
        let n = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            i64::from_str_radix(h, 16)
        } else if t.len() > 1 && t.starts_with('0') {
            i64::from_str_radix(&t[1..], 8)
        } else {
            t.parse::<i64>()
        }
        .map_err(|_| bad())?;
        let n = if neg { -n } else { n };
        if n < min || n > max {
            return Err(self.err(
                s.line,
                SettingError::Range {
                    key: key.into(),
                    value: n,
                    min,
                    max,
                },
            ));
        }
        Ok(Some((n, s.line)))
    }

    /// A list's string items with their lines.
    fn list(&self, key: &str) -> Result<Vec<(String, u32)>, Error> {
        let Some(s) = self.settings.get(key) else {
            return Ok(Vec::new());
        };
        match &s.value {
            Value::List { items, .. } => items
                .iter()
                .map(|v| match v {
                    Value::Atom { text, line, .. } => Ok((text.clone(), *line)),
                    Value::List { line, .. } => {
                        Err(self.err(*line, SettingError::NestedList(key.into())))
                    }
                })
                .collect(),
            // A single string where a list belongs: xl refuses it; one item is what
            // the writer meant.
            Value::Atom { text, .. } => Ok(vec![(text.clone(), s.line)]),
        }
    }

    fn action(&self, key: &str, default: Action) -> Result<Action, Error> {
        match self.string(key)? {
            None => Ok(default),
            Some((v, line)) => Action::parse(&v).ok_or_else(|| {
                self.err(
                    line,
                    SettingError::Action {
                        key: key.into(),
                        value: v,
                    },
                )
            }),
        }
    }

    fn build(mut self) -> Result<Loaded, Error> {
        // One warning per unknown key, at its last setting.
        let mut seen = HashSet::new();
        let unknown: Vec<(String, u32)> = self
            .settings
            .settings
            .iter()
            .rev()
            .filter(|s| !KNOWN.contains(&s.name.as_str()) && seen.insert(s.name.clone()))
            .map(|s| (s.name.clone(), s.line))
            .collect();
        for (name, line) in unknown.into_iter().rev() {
            self.warn(line, format!("'{name}' is not supported; ignored"));
        }

        self.domain_type()?;
        let name = self.string("name")?.map(|(n, _)| n);

        const MIB_MAX: i64 = 1 << 40;
        let memory = self.number("memory", 1, MIB_MAX)?;
        let maxmem = self.number("maxmem", 1, MIB_MAX)?;
        if let (Some((m, _)), Some((mx, line))) = (memory, maxmem) {
            if mx > m {
                self.warn(
                    line,
                    format!(
                        "maxmem={mx} is more than memory={m}: ballooning up is not supported; the guest gets {m} MiB"
                    ),
                );
            }
        }
        // As libxl: without `memory`, the domain starts with `maxmem`.
        let memory_mib = memory.or(maxmem).map(|(m, _)| m as u64);
        let vcpus = self
            .number("vcpus", i64::MIN, 4096)?
            .map(|(v, _)| v.max(1) as u64);
        let maxvcpus = self.number("maxvcpus", 1, 4096)?.map(|(v, _)| v as u64);
        let cpus = self.cpus()?;

        let kernel = self.string("kernel")?;
        let ramdisk = self.string("ramdisk")?;
        let cmdline = self.cmdline()?;
        let bootloader = self.bootloader()?;
        let (kernel, ramdisk, cmdline, bootloader) = match bootloader {
            Some(mut b) => {
                // libxl passes these to the bootloader ahead of bootloader_args,
                // whose own --kernel/--ramdisk/--args come later and win.
                b.kernel = b.kernel.or(kernel.map(|k| k.0));
                b.ramdisk = b.ramdisk.or(ramdisk.map(|r| r.0));
                b.args = b.args.or(cmdline.filter(|c| !c.is_empty()));
                (None, None, None, Some(b))
            }
            None => (
                kernel.map(|k| PathBuf::from(k.0)),
                ramdisk.map(|r| PathBuf::from(r.0)),
                cmdline,
                None,
            ),
        };

        let disks = self.disks()?;
        let nets = self.vifs()?;
        let config = DomainConfig {
            name,
            memory_mib,
            maxmem_mib: maxmem.map(|(m, _)| m as u64),
            vcpus,
            maxvcpus,
            cpus,
            kernel,
            ramdisk,
            cmdline,
            bootloader,
            disks,
            nets,
            on_poweroff: self.action("on_poweroff", Action::Destroy)?,
            on_reboot: self.action("on_reboot", Action::Restart)?,
            on_crash: self.action("on_crash", Action::Destroy)?,
            on_watchdog: self.action("on_watchdog", Action::Destroy)?,
            on_soft_reset: self.action("on_soft_reset", Action::SoftReset)?,
        };
        // Warnings in file order, whichever check made them.
        self.warnings.sort_by_key(|w| w.line);
        let lines = self
            .settings
            .settings
            .iter()
            .map(|s| (s.name.clone(), s.line))
            .collect();
        Ok(Loaded {
            config,
            warnings: self.warnings,
            file: self.file.to_string(),
            lines,
        })
    }

    /// `type` and the older `builder`: only PV runs.
    fn domain_type(&self) -> Result<(), Error> {
        let ty = self.string("type")?;
        if let Some((t, line)) = &ty {
            match t.as_str() {
                "pv" => {}
                "hvm" | "pvh" => {
                    return Err(self.err(
                        *line,
                        SettingError::NotPv {
                            key: "type",
                            value: t.clone(),
                        },
                    ))
                }
                _ => return Err(self.err(*line, SettingError::BadType(t.clone()))),
            }
        }
        if let Some((b, line)) = self.string("builder")? {
            match b.as_str() {
                // `generic` is xl's name for PV; `linux` is xm's.
                "generic" | "linux" => {}
                "hvm" => {
                    if ty.is_some() {
                        return Err(self.err(line, SettingError::TypeContradiction));
                    }
                    return Err(self.err(
                        line,
                        SettingError::NotPv {
                            key: "builder",
                            value: b,
                        },
                    ));
                }
                _ => return Err(self.err(line, SettingError::BadType(b))),
            }
        }
        Ok(())
    }

    /// As xl's `parse_cmdline`: `cmdline` wins over `root` and `extra`, which make
    /// `root=ROOT EXTRA` otherwise.
    fn cmdline(&mut self) -> Result<Option<String>, Error> {
        let cmdline = self.string("cmdline")?;
        let root = self.string("root")?;
        let extra = self.string("extra")?;
        Ok(match (cmdline, root, extra) {
            (Some((c, line)), r, e) => {
                if r.is_some() || e.is_some() {
                    self.warn(
                        line,
                        "'root' and 'extra' are ignored in favour of 'cmdline'".into(),
                    );
                }
                Some(c)
            }
            (None, Some((r, _)), Some((e, _))) => Some(format!("root={r} {e}")),
            (None, Some((r, _)), None) => Some(format!("root={r}")),
            (None, None, Some((e, _))) => Some(e),
            (None, None, None) => None,
        })
    }

    fn bootloader(&mut self) -> Result<Option<Bootloader>, Error> {
        let Some((prog, line)) = self.string("bootloader")? else {
            if let Some(s) = self.settings.get("bootloader_args") {
                let line = s.line;
                self.warn(
                    line,
                    "'bootloader_args' is ignored without 'bootloader'".into(),
                );
            }
            return Ok(None);
        };
        // pygrub by name or by any path to it (/usr/lib/xen/bin/pygrub, ...).
        if Path::new(&prog).file_name().and_then(|n| n.to_str()) != Some("pygrub") {
            return Err(self.err(line, SettingError::Bootloader(prog)));
        }
        let Some(s) = self.settings.get("bootloader_args") else {
            return Ok(Some(Bootloader::default()));
        };
        let args_line = s.line;
        let args: Vec<String> = match &s.value {
            // A string is split at blanks, as xl does (with a deprecation warning).
            Value::Atom { text, .. } => text.split_whitespace().map(String::from).collect(),
            Value::List { .. } => self
                .list("bootloader_args")?
                .into_iter()
                .map(|(a, _)| a)
                .collect(),
        };
        let mut b = Bootloader::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (opt, inline) = match arg.split_once('=') {
                Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let takes_value = matches!(
                opt.as_str(),
                "--entry" | "--kernel" | "--ramdisk" | "--args"
            );
            let value = if takes_value {
                match inline {
                    Some(v) => Some(v),
                    None => Some(it.next().ok_or_else(|| {
                        self.err(args_line, SettingError::BootloaderArgValue(opt.clone()))
                    })?),
                }
            } else {
                None
            };
            match (opt.as_str(), value) {
                ("--entry", Some(v)) => {
                    // As pygrub: a number is a position, anything else a title.
                    b.entry = Some(match v.parse::<usize>() {
                        Ok(n) => BootEntry::Index(n),
                        Err(_) => BootEntry::Title(v),
                    })
                }
                ("--kernel", Some(v)) => b.kernel = Some(v),
                ("--ramdisk", Some(v)) => b.ramdisk = Some(v),
                ("--args", Some(v)) => b.args = Some(v),
                // pvkvm never shows pygrub's menu, so these change nothing.
                ("-q" | "--quiet" | "-n" | "--not-really", _) => {}
                _ => self.warn(
                    args_line,
                    format!("bootloader_args: `{arg}` is not supported; ignored"),
                ),
            }
        }
        Ok(Some(b))
    }

    /// `cpus`: a string for every vCPU, or a list with one item per vCPU (as xl:
    /// `cpus = "0-3,^1"`, `cpus = ["2", "3-4"]`).
    fn cpus(&self) -> Result<Option<CpuAffinity>, Error> {
        let Some(s) = self.settings.get("cpus") else {
            return Ok(None);
        };
        let refused = |line, e| self.err(line, SettingError::Cpus(e));
        match &s.value {
            Value::Atom { text, .. } => CpuAffinity::parse(text)
                .map(Some)
                .map_err(|e| refused(s.line, e)),
            Value::List { .. } => {
                let items = self.list("cpus")?;
                // Each item on its own first, for the line of a bad one.
                for (item, line) in &items {
                    crate::affinity::CpuSet::parse(item).map_err(|e| refused(*line, e))?;
                }
                let lists: Vec<&str> = items.iter().map(|(i, _)| i.as_str()).collect();
                CpuAffinity::parse_per_vcpu(&lists)
                    .map(Some)
                    .map_err(|e| refused(s.line, e))
            }
        }
    }

    fn disks(&mut self) -> Result<Vec<DiskSpec>, Error> {
        let mut out: Vec<DiskSpec> = Vec::new();
        for (spec, line) in self.list("disk")? {
            let parsed = disk::parse_disk(&spec).map_err(|source| {
                self.err(
                    line,
                    SettingError::Disk {
                        spec: spec.clone(),
                        source,
                    },
                )
            })?;
            for w in parsed.warnings {
                self.warn(line, format!("disk {spec:?}: {w}"));
            }
            let Some(d) = parsed.spec else { continue };
            if let Some(v) = d.vdev {
                if out.iter().any(|o| o.vdev == Some(v)) {
                    return Err(self.err(
                        line,
                        SettingError::DuplicateVdev {
                            spec,
                            vdev: v.name(),
                        },
                    ));
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    fn vifs(&mut self) -> Result<Vec<NetSpec>, Error> {
        let mut out = Vec::new();
        for (spec, line) in self.list("vif")? {
            let parsed = vif::parse_vif(&spec).map_err(|source| {
                self.err(
                    line,
                    SettingError::Vif {
                        spec: spec.clone(),
                        source,
                    },
                )
            })?;
            for w in parsed.warnings {
                self.warn(line, format!("vif {spec:?}: {w}"));
            }
            out.push(parsed.spec);
        }
        Ok(out)
    }
}
