//! The domain builder: what Xen's libxenguest (`xg_dom_core.c`, `xg_dom_x86.c`,
//! `xg_dom_bzimageloader.c`, `xg_dom_elfloader.c` and libelf) does for a 64-bit PV domU.
//!
//! Three steps, as in Xen:
//! 1. [`KernelImage::parse`] reads a plain ELF64 or a bzImage (gzip, xz, lzma, lz4 legacy,
//!    zstd or bzip2 payload), its Xen ELF notes, and checks them the way libelf does
//!    (`elf_xen_note_check`, `elf_xen_addr_calc_check`).
//! 2. [`plan`] lays the domain out (kernel, initrd, p2m list, start_info, xenstore and
//!    console pages, bootstrap pagetables, boot stack) without touching guest memory,
//!    following `xc_dom_build_image` allocation order page for page.
//! 3. [`build`] writes that layout into guest RAM: the kernel's PT_LOAD segments, the
//!    identity p2m (machine frame == guest-physical frame), start_info, the pagetables
//!    and, when the kernel asks for one, the hypercall page.
//!
//! Names follow Xen's builder (`virt_kstart`, `virt_pgtab_end`, `count_pgtables`,
//! `alloc_magic_pages`, ...) so the code can be cross-read with Xen's.

mod build;
mod decompress;
mod elf;
mod layout;
mod notes;

#[cfg(test)]
mod bomb_tests;
#[cfg(test)]
mod tests;

pub use build::{build, hypercall_page_bytes};
pub use elf::{Compression, ImageFormat, KernelImage, LoadSegment};
pub use layout::{
    plan, DomainLayout, Mapping, MappingLevel, PageTableFrame, DEFAULT_INSPECT_MEM_BYTES,
};
pub use notes::{NoteValue, RawNote, XenNotes};

/// Page size of x86 PV guests (`PAGE_SIZE_X86`).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// What the VMM tells the builder about the domain it is building.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    /// Guest RAM size in bytes (GPA 0 .. mem_bytes); rounded down to whole pages.
    pub mem_bytes: u64,
    /// Kernel command line; truncated to 1023 bytes in start_info, as Xen does.
    pub cmdline: String,
    /// Initial ramdisk (the first module), loaded as is.
    pub initrd: Option<Vec<u8>>,
    /// Machine address of the shared_info page (owned by the VMM, outside guest RAM).
    pub shared_info_gpa: u64,
    /// The shim's L4 entries for slots 256..=271 (the hypervisor hole), copied verbatim.
    pub hole_l4: [u64; 16],
    /// Pre-bound event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Pre-bound event channel of the console ring.
    pub console_evtchn: u32,
}

impl DomainConfig {
    /// A configuration with `mem_bytes` of RAM and everything else empty or zero.
    pub fn with_memory(mem_bytes: u64) -> Self {
        DomainConfig {
            mem_bytes,
            cmdline: String::new(),
            initrd: None,
            shared_info_gpa: 0,
            hole_l4: [0; 16],
            store_evtchn: 0,
            console_evtchn: 0,
        }
    }
}

/// Everything that can go wrong while parsing a kernel image or building a domain.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Neither ELF nor bzImage.
    #[error("the kernel image is neither an ELF file nor a bzImage (no ELF magic, no \"HdrS\" setup header at 0x202)")]
    UnknownFormat,
    /// A bzImage shorter than its own header says.
    #[error("the bzImage is truncated: {what} needs {need} bytes but the file has {have}")]
    TruncatedBzImage {
        /// Which part did not fit.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// A bzImage whose boot protocol predates the payload fields.
    #[error(
        "the bzImage uses boot protocol {major}.{minor:02}, but a PV payload needs 2.08 or later"
    )]
    OldBootProtocol {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The bzImage payload starts with no known compression magic.
    #[error("the bzImage payload starts with {magic:02x?}, which is no known compression format")]
    UnknownCompression {
        /// The first bytes of the payload.
        magic: Vec<u8>,
    },
    /// A compression format that is recognised but not supported.
    #[error("the bzImage payload is {0}-compressed, which pvkvm does not decompress")]
    UnsupportedCompression(&'static str),
    /// The decompressor failed.
    #[error("the {format} payload of the bzImage does not decompress: {reason}")]
    Decompress {
        /// Compression format.
        format: &'static str,
        /// What the decompressor said.
        reason: String,
    },
    /// The decompressed payload exceeds the sanity limit (decoding stopped there).
    #[error(
        "the kernel's {format}-compressed payload expands beyond {}, more than pvkvm loads",
        size_text(*limit)
    )]
    DecompressedTooLarge {
        /// Compression format.
        format: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// The payload's header asks for more decoder memory (dictionary, window) than allowed.
    #[error(
        "the kernel's {format}-compressed payload asks for a {what}{}, more than the {} of \
         decoder memory pvkvm allows",
        need.map(|n| format!(" of {}", size_text(n))).unwrap_or_default(),
        size_text(*limit)
    )]
    DecoderMemory {
        /// Compression format.
        format: &'static str,
        /// What the decoder would have allocated ("dictionary", "window").
        what: &'static str,
        /// The size the header asks for, when known.
        need: Option<u64>,
        /// The limit in bytes.
        limit: u64,
    },
    /// The bzImage payload is not an ELF file.
    #[error("the decompressed bzImage payload is not an ELF file (it starts with {magic:02x?})")]
    PayloadNotElf {
        /// The first bytes of the payload.
        magic: Vec<u8>,
    },
    /// 32-bit (PAE) kernels come later.
    #[error("the kernel is a 32-bit ELF; pvkvm does not load 32-bit PV kernels yet")]
    Elf32Unsupported,
    /// Anything else wrong with the ELF structure.
    #[error("the kernel ELF is malformed: {0}")]
    BadElf(String),
    /// Not an x86-64 ELF.
    #[error("the kernel ELF is for machine {0}, not x86-64 (62)")]
    WrongMachine(u16),
    /// A kernel with no Xen notes: not a PV kernel.
    #[error("the kernel has no Xen ELF notes, so it is not a Xen PV kernel (build it with CONFIG_XEN_PV)")]
    NoXenNotes,
    /// A Xen note whose descriptor has the wrong shape.
    #[error("the Xen ELF note {name} is malformed: {reason}")]
    BadNote {
        /// Note name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Neither GUEST_OS "linux…" nor LOADER "generic…".
    #[error("the kernel is built neither for Linux nor for the generic loader (GUEST_OS {guest_os:?}, LOADER {loader:?})")]
    NotLinuxOrGeneric {
        /// GUEST_OS note.
        guest_os: String,
        /// LOADER note.
        loader: String,
    },
    /// XEN_VERSION other than "xen-3.0…".
    #[error("the kernel is built for Xen ABI {0:?}, but only \"xen-3.0\" images can be loaded")]
    BadXenVersion(String),
    /// PADDR_OFFSET without VIRT_BASE.
    #[error("the kernel sets PADDR_OFFSET but not VIRT_BASE")]
    PaddrOffsetWithoutVirtBase,
    /// No loadable segment.
    #[error("the kernel ELF has no loadable (PT_LOAD) segment")]
    NoLoadSegments,
    /// A PT_LOAD segment pointing outside the file or with filesz > memsz.
    #[error("PT_LOAD segment {index} is malformed: {reason}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// libelf's "ELF start or entries are out of bounds".
    #[error("the kernel's entry point {entry:#x} or start lies outside its image {kstart:#x}..{kend:#x} (VIRT_BASE {virt_base:#x})")]
    EntryOutOfBounds {
        /// ENTRY (or e_entry).
        entry: u64,
        /// virt_kstart.
        kstart: u64,
        /// virt_kend.
        kend: u64,
        /// virt_base.
        virt_base: u64,
    },
    /// INIT_P2M inside the kernel image.
    #[error("the kernel's INIT_P2M address {0:#x} lies inside the kernel image")]
    P2mBaseInKernel(u64),
    /// HYPERCALL_PAGE outside the kernel image.
    #[error("the kernel's HYPERCALL_PAGE {0:#x} lies outside the kernel image")]
    HypercallPageOutOfBounds(u64),
    /// Kernel start not page aligned (Xen: "segment boundary isn't page aligned").
    #[error("the kernel starts at {0:#x}, which is not page aligned")]
    KernelNotPageAligned(u64),
    /// The image is larger than any domain could hold.
    #[error("the kernel image spans {0:#x} bytes, which is more than pvkvm loads")]
    KernelTooLarge(u64),
    /// The layout does not fit in guest memory.
    #[error("the domain needs at least {need_bytes} bytes ({need_mib} MiB) of memory to boot this kernel, but has {have_bytes} bytes")]
    OutOfMemory {
        /// Bytes needed.
        need_bytes: u64,
        /// The same in MiB, rounded up.
        need_mib: u64,
        /// Bytes configured.
        have_bytes: u64,
    },
    /// A virtual address range overflows or collides with the hypervisor hole.
    #[error("the initial mapping {from:#x}..{to:#x} is impossible: {reason}")]
    BadMapping {
        /// Start VA.
        from: u64,
        /// End VA.
        to: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Writing guest memory failed (guest memory smaller than `mem_bytes`?).
    #[error("writing the {what} into guest memory at {gpa:#x} failed: {reason}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// The vm-memory error.
        reason: String,
    },
}

/// Parses `bytes` and lays the domain out for `mem_bytes` (default 512 MiB) and returns
/// the text `pvkvm inspect` prints: image format, one line per Xen note, the parameters
/// the builder derives, and the layout as Xen's builder logs it.
pub fn inspect(image: &KernelImage, mem_bytes: Option<u64>) -> String {
    let cfg = DomainConfig::with_memory(mem_bytes.unwrap_or(DEFAULT_INSPECT_MEM_BYTES));
    let mut out = format!("{image}");
    match plan(image, &cfg) {
        Ok(layout) => out.push_str(&format!("{layout}")),
        Err(e) => out.push_str(&format!("layout for {} bytes: {e}\n", cfg.mem_bytes)),
    }
    out
}

/// A byte count for messages: whole MiB when it is one, bytes otherwise.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}
