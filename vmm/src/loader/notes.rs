//! Xen ELF notes (name "Xen", `public/elfnote.h`): decoding each note the way libelf's
//! `elf_xen_parse_note` does, keeping the raw list in file order for `pvkvm inspect`.

use std::fmt;

use xen_abi::elfnote;

use super::LoaderError;

/// A decoded note descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoteValue {
    /// A string note (NUL terminated in the file; the NUL is dropped).
    Str(String),
    /// A numeric note (1, 2, 4 or 8 bytes little endian).
    Num(u64),
    /// An array of 8-byte values (L1_MFN_VALID is mask, value).
    Nums(Vec<u64>),
    /// An unknown note type or a shape the builder does not read: the raw bytes.
    Bytes(Vec<u8>),
}

/// One Xen note as found in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawNote {
    /// Note type (`XEN_ELFNOTE_*`).
    pub kind: u32,
    /// The decoded descriptor.
    pub value: NoteValue,
}

impl RawNote {
    /// The note's name (`ENTRY`, `GUEST_OS`, ...).
    pub fn name(&self) -> &'static str {
        elfnote::name(self.kind)
    }
}

/// The Xen notes of a kernel: each known note decoded (None when absent; the last one
/// wins when a note repeats, as in libelf) plus the raw list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XenNotes {
    /// All Xen notes in file order.
    pub raw: Vec<RawNote>,
    /// ENTRY: virtual entry point.
    pub entry: Option<u64>,
    /// HYPERCALL_PAGE: VA of the page the builder fills with hypercall stubs.
    pub hypercall_page: Option<u64>,
    /// VIRT_BASE.
    pub virt_base: Option<u64>,
    /// PADDR_OFFSET.
    pub paddr_offset: Option<u64>,
    /// XEN_VERSION.
    pub xen_version: Option<String>,
    /// GUEST_OS.
    pub guest_os: Option<String>,
    /// GUEST_VERSION.
    pub guest_version: Option<String>,
    /// LOADER.
    pub loader: Option<String>,
    /// PAE_MODE.
    pub pae_mode: Option<String>,
    /// FEATURES ('|'-separated, '!' prefix = required).
    pub features: Option<String>,
    /// HV_START_LOW.
    pub hv_start_low: Option<u64>,
    /// L1_MFN_VALID (mask, value, ...).
    pub l1_mfn_valid: Option<Vec<u64>>,
    /// SUSPEND_CANCEL.
    pub suspend_cancel: Option<u64>,
    /// INIT_P2M: VA where the kernel wants its p2m list.
    pub init_p2m: Option<u64>,
    /// MOD_START_PFN: the initrd may stay unmapped and be passed by PFN.
    pub mod_start_pfn: Option<u64>,
    /// SUPPORTED_FEATURES: XENFEAT bitmap, first 32 bits.
    pub supported_features: Option<u32>,
    /// PHYS32_ENTRY (PVH only; ignored for PV).
    pub phys32_entry: Option<u64>,
}

/// String-valued note types (libelf's `note_desc[].str`).
fn is_string_note(kind: u32) -> bool {
    matches!(
        kind,
        elfnote::XEN_VERSION
            | elfnote::GUEST_OS
            | elfnote::GUEST_VERSION
            | elfnote::LOADER
            | elfnote::PAE_MODE
            | elfnote::FEATURES
            | elfnote::BSD_SYMTAB
    )
}

/// Numeric descriptor as libelf's `elf_note_numeric` reads it.
fn numeric(desc: &[u8]) -> Option<u64> {
    match desc.len() {
        1 => desc.first().map(|&b| u64::from(b)),
        2 => desc
            .try_into()
            .ok()
            .map(|b| u64::from(u16::from_le_bytes(b))),
        4 => desc
            .try_into()
            .ok()
            .map(|b| u64::from(u32::from_le_bytes(b))),
        8 => desc.try_into().ok().map(u64::from_le_bytes),
        _ => None,
    }
}

impl XenNotes {
    /// Decodes and records one note of name "Xen".
    pub(crate) fn add(&mut self, kind: u32, desc: &[u8]) -> Result<(), LoaderError> {
        let name = elfnote::name(kind);
        let value = if is_string_note(kind) {
            // Strings end at their NUL. Linux 6.1 writes FEATURES with `.ascii`, so its
            // descriptor has no NUL: Xen's elf_strval reads on into the note padding
            // (zero) and gets the whole descriptor; take the whole descriptor too.
            let s = match desc.iter().position(|&b| b == 0) {
                Some(nul) => desc.get(..nul).unwrap_or_default(),
                None => desc,
            };
            NoteValue::Str(String::from_utf8_lossy(s).into_owned())
        } else {
            match kind {
                elfnote::L1_MFN_VALID => NoteValue::Nums(
                    desc.chunks_exact(8)
                        .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                        .collect(),
                ),
                elfnote::SUPPORTED_FEATURES => match numeric(desc) {
                    Some(v) => NoteValue::Num(v),
                    None => NoteValue::Bytes(desc.to_vec()),
                },
                elfnote::ENTRY
                | elfnote::HYPERCALL_PAGE
                | elfnote::VIRT_BASE
                | elfnote::PADDR_OFFSET
                | elfnote::HV_START_LOW
                | elfnote::SUSPEND_CANCEL
                | elfnote::INIT_P2M
                | elfnote::MOD_START_PFN
                | elfnote::PHYS32_ENTRY => match numeric(desc) {
                    Some(v) => NoteValue::Num(v),
                    None => {
                        return Err(LoaderError::BadNote {
                            name,
                            reason: format!(
                                "a numeric note must be 1, 2, 4 or 8 bytes, not {}",
                                desc.len()
                            ),
                        })
                    }
                },
                _ => NoteValue::Bytes(desc.to_vec()),
            }
        };
        self.record(kind, &value);
        self.raw.push(RawNote { kind, value });
        Ok(())
    }

    fn record(&mut self, kind: u32, value: &NoteValue) {
        let num = match value {
            NoteValue::Num(v) => Some(*v),
            _ => None,
        };
        let s = match value {
            NoteValue::Str(s) => Some(s.clone()),
            _ => None,
        };
        match kind {
            elfnote::ENTRY => self.entry = num,
            elfnote::HYPERCALL_PAGE => self.hypercall_page = num,
            elfnote::VIRT_BASE => self.virt_base = num,
            elfnote::PADDR_OFFSET => self.paddr_offset = num,
            elfnote::XEN_VERSION => self.xen_version = s,
            elfnote::GUEST_OS => self.guest_os = s,
            elfnote::GUEST_VERSION => self.guest_version = s,
            elfnote::LOADER => self.loader = s,
            elfnote::PAE_MODE => self.pae_mode = s,
            elfnote::FEATURES => self.features = s,
            elfnote::HV_START_LOW => self.hv_start_low = num,
            elfnote::L1_MFN_VALID => {
                if let NoteValue::Nums(v) = value {
                    self.l1_mfn_valid = Some(v.clone());
                }
            }
            elfnote::SUSPEND_CANCEL => self.suspend_cancel = num,
            elfnote::INIT_P2M => self.init_p2m = num,
            elfnote::MOD_START_PFN => self.mod_start_pfn = num,
            // XENFEAT submap 0 is all a 64-bit guest defines today.
            elfnote::SUPPORTED_FEATURES => self.supported_features = num.map(|v| v as u32),
            elfnote::PHYS32_ENTRY => self.phys32_entry = num,
            _ => {}
        }
    }

    /// libelf's `elf_xen_note_check`: a PV image must be Linux or built for the generic
    /// loader, and for the Xen 3.0 ABI.
    pub(crate) fn check(&self) -> Result<(), LoaderError> {
        let loader = self.loader.clone().unwrap_or_default();
        let guest_os = self.guest_os.clone().unwrap_or_default();
        if !loader.starts_with("generic") && !guest_os.starts_with("linux") {
            return Err(LoaderError::NotLinuxOrGeneric { guest_os, loader });
        }
        let xen_version = self.xen_version.clone().unwrap_or_default();
        if !xen_version.starts_with("xen-3.0") {
            return Err(LoaderError::BadXenVersion(xen_version));
        }
        Ok(())
    }
}

impl fmt::Display for NoteValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoteValue::Str(s) => write!(f, "{s:?}"),
            NoteValue::Num(v) => write!(f, "{v:#x}"),
            NoteValue::Nums(v) => {
                let parts: Vec<String> = v.iter().map(|x| format!("{x:#x}")).collect();
                write!(f, "{}", parts.join(" "))
            }
            NoteValue::Bytes(b) => {
                write!(f, "[")?;
                for (i, x) in b.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{x:02x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

impl fmt::Display for RawNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name() == "UNKNOWN" {
            write!(f, "UNKNOWN({}) {}", self.kind, self.value)
        } else {
            write!(f, "{} {}", self.name(), self.value)
        }
    }
}

impl fmt::Display for XenNotes {
    /// One line per note, in file order: `NAME value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.raw {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}
