//! Kernel image parsing: bzImage unwrapping (`xg_dom_bzimageloader.c`), the ELF64
//! program headers, the Xen notes (PT_NOTE segments first, SHT_NOTE sections only when
//! the segments hold none, as `elf_xen_parse` does) and libelf's address checks
//! (`elf_xen_addr_calc_check`).

use std::fmt;

use object::elf::{FileHeader64, EM_X86_64, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE, SHT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::LittleEndian;

use super::decompress;
use super::notes::XenNotes;
use super::{LoaderError, PAGE_SIZE};

/// Largest kernel image (virt_kend - virt_kstart) we accept; far above any real kernel,
/// low enough that layout arithmetic cannot overflow.
const MAX_KERNEL_SPAN: u64 = 1 << 32;

/// bzImage setup header offsets (Documentation/arch/x86/boot.rst).
const BZ_SETUP_SECTS: usize = 0x1f1;
const BZ_HEADER_MAGIC: usize = 0x202;
const BZ_VERSION: usize = 0x206;
const BZ_PAYLOAD_OFFSET: usize = 0x248;
const BZ_PAYLOAD_LENGTH: usize = 0x24c;

/// Compression of a bzImage payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// An uncompressed ELF payload.
    None,
    /// gzip.
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// lzma (legacy .lzma "alone" format).
    Lzma,
    /// lz4 in the kernel's legacy framing.
    Lz4Legacy,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Lz4Legacy => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// What the file was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain ELF file.
    Elf,
    /// A bzImage with the given payload compression.
    BzImage {
        /// Boot protocol version (0x020f = 2.15).
        version: u16,
        /// Payload compression.
        compression: Compression,
    },
}

/// One loadable segment (PT_LOAD) of the kernel ELF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// p_paddr.
    pub paddr: u64,
    /// p_vaddr (informational: the builder places by paddr, as libelf does).
    pub vaddr: u64,
    /// Offset of the file bytes in the ELF.
    pub offset: u64,
    /// Bytes present in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero: bss).
    pub memsz: u64,
}

/// A parsed, checked Xen PV kernel.
#[derive(Clone, Debug)]
pub struct KernelImage {
    /// Container format of the file.
    pub format: ImageFormat,
    /// The kernel ELF (the decompressed payload for a bzImage).
    pub elf: Vec<u8>,
    /// ELF e_entry.
    pub e_entry: u64,
    /// Loadable segments.
    pub segments: Vec<LoadSegment>,
    /// The Xen notes.
    pub notes: XenNotes,
    /// Lowest p_paddr of the loadable segments (libelf `pstart`).
    pub pstart: u64,
    /// Highest p_paddr + p_memsz (libelf `pend`).
    pub pend: u64,
    /// VIRT_BASE (0 when unset, as libelf).
    pub virt_base: u64,
    /// PADDR_OFFSET (0 when unset: with ELF notes libelf defaults it to 0).
    pub elf_paddr_offset: u64,
    /// VA of the first kernel byte: pstart + virt_base - elf_paddr_offset.
    pub virt_kstart: u64,
    /// VA just past the kernel: pend + virt_base - elf_paddr_offset.
    pub virt_kend: u64,
    /// Entry point: the ENTRY note, else e_entry.
    pub virt_entry: u64,
    /// HYPERCALL_PAGE VA, if the kernel wants the page filled.
    pub virt_hypercall: Option<u64>,
    /// INIT_P2M VA (None when unset or unusable, as `xc_dom_build_image` decides).
    pub p2m_base: Option<u64>,
    /// MOD_START_PFN != 0: the initrd stays unmapped and is passed by PFN.
    pub unmapped_initrd: bool,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_le_bytes)
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn bad_elf(e: object::Error) -> LoaderError {
    LoaderError::BadElf(e.to_string())
}

impl KernelImage {
    /// Parses a plain ELF64 or a bzImage and checks its Xen notes like Xen's builder.
    pub fn parse(bytes: &[u8]) -> Result<KernelImage, LoaderError> {
        if bytes.starts_with(b"\x7fELF") {
            return Self::parse_elf(bytes.to_vec(), ImageFormat::Elf);
        }
        if bytes.get(BZ_HEADER_MAGIC..BZ_HEADER_MAGIC + 4) != Some(b"HdrS") {
            return Err(LoaderError::UnknownFormat);
        }
        let truncated = |what, need: usize| LoaderError::TruncatedBzImage {
            what,
            need: need as u64,
            have: bytes.len() as u64,
        };
        let version = le16(bytes, BZ_VERSION).ok_or(truncated("the setup header", 0x208))?;
        if version < 0x0208 {
            return Err(LoaderError::OldBootProtocol {
                major: (version >> 8) as u8,
                minor: version as u8,
            });
        }
        let setup_sects = bytes
            .get(BZ_SETUP_SECTS)
            .copied()
            .ok_or(truncated("the setup header", 0x250))?;
        // boot.rst: "If this field is 0, the real value is 4."
        let setup_sects = if setup_sects == 0 { 4 } else { setup_sects };
        let payload_offset =
            le32(bytes, BZ_PAYLOAD_OFFSET).ok_or(truncated("the setup header", 0x250))?;
        let payload_length =
            le32(bytes, BZ_PAYLOAD_LENGTH).ok_or(truncated("the setup header", 0x250))?;
        let start = (usize::from(setup_sects) + 1) * 512 + payload_offset as usize;
        let end = start + payload_length as usize;
        let payload = bytes.get(start..end).ok_or(truncated("the payload", end))?;
        let compression = decompress::detect(payload)?;
        let elf = decompress::decompress(compression, payload)?;
        if !elf.starts_with(b"\x7fELF") {
            return Err(LoaderError::PayloadNotElf {
                magic: elf.iter().take(4).copied().collect(),
            });
        }
        Self::parse_elf(
            elf,
            ImageFormat::BzImage {
                version,
                compression,
            },
        )
    }

    fn parse_elf(elf: Vec<u8>, format: ImageFormat) -> Result<KernelImage, LoaderError> {
        let data = elf.as_slice();
        match data.get(4) {
            Some(1) => return Err(LoaderError::Elf32Unsupported),
            Some(2) => {}
            Some(c) => return Err(LoaderError::BadElf(format!("unknown ELF class {c}"))),
            None => return Err(LoaderError::BadElf("the ELF header is truncated".into())),
        }
        let hdr = FileHeader64::<LittleEndian>::parse(data).map_err(bad_elf)?;
        let endian = hdr.endian().map_err(bad_elf)?;
        let machine = hdr.e_machine(endian);
        if machine != EM_X86_64 {
            return Err(LoaderError::WrongMachine(machine));
        }
        let phdrs = hdr.program_headers(endian, data).map_err(bad_elf)?;

        let mut notes = XenNotes::default();
        let mut found = 0usize;
        for ph in phdrs {
            // libelf skips PT_NOTE with p_offset 0 (some binutils got it wrong).
            if ph.p_type(endian) != PT_NOTE || ph.p_offset(endian) == 0 {
                continue;
            }
            if let Some(mut it) = ph.notes(endian, data).map_err(bad_elf)? {
                while let Some(note) = it.next().map_err(bad_elf)? {
                    if note.name() == b"Xen" {
                        notes.add(note.n_type(endian), note.desc())?;
                        found += 1;
                    }
                }
            }
        }
        if found == 0 {
            // Fall back to SHT_NOTE sections, as elf_xen_parse does.
            let sections = hdr.sections(endian, data).map_err(bad_elf)?;
            for sh in sections.iter() {
                if sh.sh_type(endian) != SHT_NOTE {
                    continue;
                }
                if let Some(mut it) = sh.notes(endian, data).map_err(bad_elf)? {
                    while let Some(note) = it.next().map_err(bad_elf)? {
                        if note.name() == b"Xen" {
                            notes.add(note.n_type(endian), note.desc())?;
                            found += 1;
                        }
                    }
                }
            }
        }
        if found == 0 {
            return Err(LoaderError::NoXenNotes);
        }
        notes.check()?;

        // Loadable segments (libelf's elf_phdr_is_loadable: PT_LOAD with any of R/W/X).
        let mut segments = Vec::new();
        for (index, ph) in phdrs.iter().enumerate() {
            if ph.p_type(endian) != PT_LOAD || ph.p_flags(endian) & (PF_R | PF_W | PF_X) == 0 {
                continue;
            }
            let seg = LoadSegment {
                paddr: ph.p_paddr(endian),
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
            };
            if seg.filesz > seg.memsz {
                return Err(LoaderError::BadSegment {
                    index,
                    reason: "p_filesz is larger than p_memsz",
                });
            }
            let in_file = seg
                .offset
                .checked_add(seg.filesz)
                .is_some_and(|end| end <= data.len() as u64);
            if !in_file {
                return Err(LoaderError::BadSegment {
                    index,
                    reason: "its file bytes lie beyond the end of the ELF",
                });
            }
            if seg.paddr.checked_add(seg.memsz).is_none() {
                return Err(LoaderError::BadSegment {
                    index,
                    reason: "p_paddr + p_memsz overflows",
                });
            }
            segments.push(seg);
        }
        let pstart = segments
            .iter()
            .map(|s| s.paddr)
            .min()
            .ok_or(LoaderError::NoLoadSegments)?;
        let pend = segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .ok_or(LoaderError::NoLoadSegments)?;
        if pend - pstart > MAX_KERNEL_SPAN {
            return Err(LoaderError::KernelTooLarge(pend - pstart));
        }

        // elf_xen_addr_calc_check.
        if notes.paddr_offset.is_some() && notes.virt_base.is_none() {
            return Err(LoaderError::PaddrOffsetWithoutVirtBase);
        }
        let virt_base = notes.virt_base.unwrap_or(0);
        let elf_paddr_offset = notes.paddr_offset.unwrap_or(0);
        let virt_offset = virt_base.wrapping_sub(elf_paddr_offset);
        let virt_kstart = pstart.wrapping_add(virt_offset);
        let virt_kend = pend.wrapping_add(virt_offset);
        let e_entry = hdr.e_entry(endian);
        let virt_entry = notes.entry.unwrap_or(e_entry);
        if virt_kstart > virt_kend
            || virt_entry < virt_kstart
            || virt_entry > virt_kend
            || virt_base > virt_kstart
        {
            return Err(LoaderError::EntryOutOfBounds {
                entry: virt_entry,
                kstart: virt_kstart,
                kend: virt_kend,
                virt_base,
            });
        }
        if let Some(p2m) = notes.init_p2m {
            if p2m >= virt_kstart && p2m < virt_kend {
                return Err(LoaderError::P2mBaseInKernel(p2m));
            }
        }
        // xc_dom_alloc_pad: "segment boundary isn't page aligned".
        if (virt_kstart - virt_base) & (PAGE_SIZE - 1) != 0 {
            return Err(LoaderError::KernelNotPageAligned(virt_kstart));
        }
        // Xen (xc_dom_boot.c setup_hypercall_page) fills the page containing the VA;
        // refuse one outside the image, which would land in some other segment.
        let virt_hypercall = notes.hypercall_page;
        if let Some(hc) = virt_hypercall {
            if hc < virt_kstart || hc >= virt_kend {
                return Err(LoaderError::HypercallPageOutOfBounds(hc));
            }
        }
        // xc_dom_build_image drops an INIT_P2M it cannot honour: at or above virt_base,
        // or not page aligned; the p2m then lives in the initial mapping.
        let p2m_base = notes
            .init_p2m
            .filter(|&b| b < virt_base && b & (PAGE_SIZE - 1) == 0);
        let unmapped_initrd = notes.mod_start_pfn.is_some_and(|v| v != 0);

        Ok(KernelImage {
            format,
            e_entry,
            segments,
            pstart,
            pend,
            virt_base,
            elf_paddr_offset,
            virt_kstart,
            virt_kend,
            virt_entry,
            virt_hypercall,
            p2m_base,
            unmapped_initrd,
            notes,
            elf,
        })
    }
}

impl fmt::Display for KernelImage {
    /// The image summary `pvkvm inspect` prints: format, Xen notes, derived parameters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            ImageFormat::Elf => writeln!(f, "format: ELF64 x86-64, {} bytes", self.elf.len())?,
            ImageFormat::BzImage {
                version,
                compression,
            } => writeln!(
                f,
                "format: bzImage (boot protocol {}.{:02}), {} payload, ELF64 x86-64 of {} bytes",
                version >> 8,
                version & 0xff,
                compression.name(),
                self.elf.len()
            )?,
        }
        writeln!(f, "Xen ELF notes:")?;
        for note in &self.notes.raw {
            writeln!(f, "  {note}")?;
        }
        writeln!(f, "ELF: addresses:")?;
        writeln!(f, "    virt_base        = {:#018x}", self.virt_base)?;
        writeln!(f, "    elf_paddr_offset = {:#x}", self.elf_paddr_offset)?;
        writeln!(f, "    virt_kstart      = {:#018x}", self.virt_kstart)?;
        writeln!(f, "    virt_kend        = {:#018x}", self.virt_kend)?;
        writeln!(f, "    virt_entry       = {:#018x}", self.virt_entry)?;
        match self.p2m_base {
            Some(b) => writeln!(f, "    p2m_base         = {b:#018x}")?,
            None => writeln!(f, "    p2m_base         = (in the initial mapping)")?,
        }
        match self.virt_hypercall {
            Some(h) => writeln!(f, "    virt_hypercall   = {h:#018x}")?,
            None => writeln!(f, "    virt_hypercall   = (none)")?,
        }
        writeln!(
            f,
            "    initrd           = {}",
            if self.unmapped_initrd {
                "unmapped, passed by PFN (MOD_START_PFN)"
            } else {
                "mapped after the kernel"
            }
        )?;
        for (i, s) in self.segments.iter().enumerate() {
            writeln!(
                f,
                "    PT_LOAD[{i}] paddr {:#010x} filesz {:#x} memsz {:#x}",
                s.paddr, s.filesz, s.memsz
            )?;
        }
        Ok(())
    }
}
