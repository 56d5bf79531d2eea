//! The domain layout: Xen's x86_64 PV allocation order (`xc_dom_build_image` in
//! `xg_dom_core.c`, `alloc_magic_pages_pv`, `alloc_pgtables_pv`, `count_pgtables` and
//! `alloc_p2m_list_x86_64` in `xg_dom_x86.c`), computed without touching guest memory.
//!
//! The initial mapping is linear: VA `virt_base + n * 4096` is PFN `n`, from `virt_base`
//! to `virt_pgtab_end`. Allocation moves `virt_alloc_end`/`pfn_alloc_end` forward in
//! lock step, so the kernel of a Linux built at paddr 0x1000000 lands at PFN 0x1000 and
//! the PFNs below it are padding (ordinary RAM the kernel gets to use).
//!
//! Order: kernel, initrd (only without MOD_START_PFN), p2m list (only without INIT_P2M),
//! start_info, xenstore, console, bootstrap pagetables, boot stack, padding up to
//! `virt_pgtab_end`; then, outside the mapping, the initrd (MOD_START_PFN) and the p2m
//! list with its own pagetables (INIT_P2M).

use std::fmt;
use std::ops::Range;

use xen_abi::xen::{sif, HOLE_FIRST_L4_SLOT, HOLE_LAST_L4_SLOT};

use super::elf::KernelImage;
use super::{DomainConfig, LoaderError, PAGE_SHIFT, PAGE_SIZE};

/// Memory `pvkvm inspect` lays a kernel out for when given none.
pub const DEFAULT_INSPECT_MEM_BYTES: u64 = 512 << 20;

/// Pagetable levels of x86_64 (`PGTBL_LEVELS_X86_64`).
const LEVELS: usize = 4;
/// Bits per level (`PGTBL_LEVEL_SHIFT_X86`).
const LEVEL_SHIFT: u32 = 9;
/// Xen masks VAs to 48 bits (`VIRT_BITS_X86_64`) while counting tables.
const VADDR_MASK: u64 = (1 << 48) - 1;
/// "512kB padding" after the boot stack (`alloc_pgtables_pv`).
const PGTAB_SLACK_PAGES: u64 = (512 * 1024) / PAGE_SIZE;
/// `virt_pgtab_end` is 4 MiB aligned (`bits_to_mask(22)`).
const PGTAB_ALIGN_MASK: u64 = (1 << 22) - 1;
/// Size of `struct start_info` (x86_64), for the log line.
const START_INFO_SIZE: u64 = core::mem::size_of::<xen_abi::xen::StartInfo>() as u64;

fn bits_to_mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

/// One level of a mapping (`struct xc_dom_x86_mapping_lvl`): the VA range its tables
/// cover (inclusive `to`, 48-bit masked), the first PFN of those tables, and their count.
/// For `Mapping::area` the fields describe the mapped pages themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingLevel {
    /// First VA covered (masked to 48 bits).
    pub from: u64,
    /// Last VA covered, inclusive (masked to 48 bits).
    pub to: u64,
    /// First PFN (of the tables, or of the mapped pages for `area`).
    pub pfn: u64,
    /// Number of tables.
    pub pgtables: u64,
}

/// One linear mapping (`struct xc_dom_x86_mapping`): the kernel's initial mapping, or
/// the INIT_P2M mapping of the p2m list. `lvls[0]` are the L1 tables, `lvls[3]` the L4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// The mapped range and its first PFN; `area.pgtables` counts all tables.
    pub area: MappingLevel,
    /// Tables per level, L1 first.
    pub lvls: [MappingLevel; LEVELS],
}

/// A pagetable frame the builder created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableFrame {
    /// Guest-physical (== machine) address of the frame.
    pub gpa: u64,
    /// 4 = L4 ... 1 = L1.
    pub level: u8,
}

/// Where everything went: the result of [`plan`] and [`super::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainLayout {
    /// Pages of guest RAM (`start_info.nr_pages`; also the p2m length).
    pub nr_pages: u64,
    /// VIRT_BASE.
    pub virt_base: u64,
    /// First kernel VA.
    pub virt_kstart: u64,
    /// VA past the kernel (incl. bss).
    pub virt_kend: u64,
    /// PFN of the first kernel page.
    pub kernel_pfn: u64,
    /// Entry RIP.
    pub entry: u64,
    /// Initial RSP: the top of the boot stack page.
    pub stack_top: u64,
    /// PFN of the boot stack page.
    pub bootstack_pfn: u64,
    /// VA of start_info (RSI at entry).
    pub start_info_va: u64,
    /// GPA of start_info.
    pub start_info_gpa: u64,
    /// GFN (== MFN) of the xenstore ring.
    pub store_gfn: u64,
    /// GFN (== MFN) of the console ring.
    pub console_gfn: u64,
    /// VA of the L4 (`start_info.pt_base`).
    pub pt_base: u64,
    /// GPA of the L4: the initial CR3.
    pub l4_gpa: u64,
    /// GPAs of the bootstrap pagetable frames (`nr_pt_frames` pages from the L4).
    pub pt_gpa: Range<u64>,
    /// `start_info.nr_pt_frames`: tables of the initial mapping.
    pub nr_pt_frames: u64,
    /// End of the initial mapping (exclusive VA).
    pub virt_pgtab_end: u64,
    /// VA of the p2m list (`start_info.mfn_list`).
    pub p2m_va: u64,
    /// First PFN of the p2m list.
    pub p2m_pfn: u64,
    /// Pages of the p2m list itself.
    pub p2m_frames: u64,
    /// INIT_P2M only: (first_p2m_pfn, nr_p2m_frames) = the list plus its own tables.
    pub p2m_seg: Option<(u64, u64)>,
    /// HYPERCALL_PAGE VA, when the kernel asked for one.
    pub hypercall_page: Option<u64>,
    /// PFNs of the initrd, if any.
    pub initrd_pfns: Option<Range<u64>>,
    /// `start_info.mod_start` (a PFN with SIF_MOD_START_PFN, else a VA).
    pub mod_start: u64,
    /// `start_info.mod_len` (whole pages, as Xen passes it).
    pub mod_len: u64,
    /// `start_info.flags`.
    pub flags: u32,
    /// First PFN nothing was allocated at.
    pub pfn_alloc_end: u64,
    /// The mappings (initial, then INIT_P2M), as `setup_pgtables_pv` walks them.
    pub mappings: Vec<Mapping>,
    /// Every pagetable frame built, L4 first.
    pub page_tables: Vec<PageTableFrame>,
}

/// A segment in Xen's sense (`struct xc_dom_seg`).
#[derive(Clone, Copy, Debug, Default)]
struct Seg {
    vstart: u64,
    vend: u64,
    pfn: u64,
    pages: u64,
}

/// The allocator state of `struct xc_dom_image`.
struct Alloc {
    total_pages: u64,
    virt_alloc_end: u64,
    pfn_alloc_end: u64,
}

/// Internal failure: the plan needs more pages than `total_pages`.
struct NoRoom;

/// Why a planning attempt failed.
enum PlanError {
    NoRoom,
    Fatal(LoaderError),
}

impl From<NoRoom> for PlanError {
    fn from(_: NoRoom) -> Self {
        PlanError::NoRoom
    }
}
impl From<LoaderError> for PlanError {
    fn from(e: LoaderError) -> Self {
        PlanError::Fatal(e)
    }
}

impl Alloc {
    /// `xc_dom_chk_alloc_pages`.
    fn chk_alloc_pages(&mut self, pages: u64) -> Result<(), NoRoom> {
        if pages > self.total_pages || self.pfn_alloc_end > self.total_pages - pages {
            return Err(NoRoom);
        }
        self.pfn_alloc_end += pages;
        self.virt_alloc_end = self
            .virt_alloc_end
            .checked_add(pages * PAGE_SIZE)
            .ok_or(NoRoom)?;
        Ok(())
    }

    /// `xc_dom_alloc_pad`: allocate padding pages up to `boundary`.
    fn alloc_pad(&mut self, boundary: u64) -> Result<(), PlanError> {
        if boundary & (PAGE_SIZE - 1) != 0 || boundary < self.virt_alloc_end {
            return Err(LoaderError::BadMapping {
                from: self.virt_alloc_end,
                to: boundary,
                reason: "a segment boundary is unaligned or below the allocation end",
            }
            .into());
        }
        Ok(self.chk_alloc_pages((boundary - self.virt_alloc_end) / PAGE_SIZE)?)
    }

    /// `xc_dom_alloc_segment`.
    fn alloc_segment(&mut self, start: Option<u64>, size: u64) -> Result<Seg, PlanError> {
        if let Some(start) = start {
            self.alloc_pad(start)?;
        }
        let pages = size.div_ceil(PAGE_SIZE);
        let vstart = self.virt_alloc_end;
        let pfn = self.pfn_alloc_end;
        self.chk_alloc_pages(pages)?;
        Ok(Seg {
            vstart,
            vend: self.virt_alloc_end,
            pfn,
            pages,
        })
    }

    /// `xc_dom_alloc_page`.
    fn alloc_page(&mut self) -> Result<u64, NoRoom> {
        let pfn = self.pfn_alloc_end;
        self.chk_alloc_pages(1)?;
        Ok(pfn)
    }
}

/// `count_pgtables`: the tables needed to map `from..=to` at `pfn`, sharing upper-level
/// tables with the mappings already made; their PFNs start at `pfn_alloc_end`.
fn count_pgtables(
    maps: &[Mapping],
    from: u64,
    to: u64,
    pfn: u64,
    pfn_alloc_end: u64,
    p2m_size: u64,
) -> Result<Mapping, PlanError> {
    let pfn_end = pfn + ((to - from) >> PAGE_SHIFT);
    if pfn_end >= p2m_size {
        return Err(PlanError::NoRoom);
    }
    let mut map = Mapping::default();
    map.area.from = from & VADDR_MASK;
    map.area.to = to & VADDR_MASK;
    for cmp in maps {
        if map.area.from < cmp.area.to && map.area.to > cmp.area.from {
            return Err(LoaderError::BadMapping {
                from,
                to,
                reason: "it overlaps another initial mapping",
            }
            .into());
        }
    }
    for l in (0..LEVELS).rev() {
        map.lvls[l].pfn = pfn_alloc_end + map.area.pgtables;
        if l == LEVELS - 1 {
            // The top-level table belongs to the first mapping only.
            if maps.is_empty() {
                map.lvls[l].from = 0;
                map.lvls[l].to = VADDR_MASK;
                map.lvls[l].pgtables = 1;
                map.area.pgtables += 1;
            }
            continue;
        }
        let bits = PAGE_SHIFT + (l as u32 + 1) * LEVEL_SHIFT;
        let mask = bits_to_mask(bits);
        let mut lf = map.area.from & !mask;
        let mut lt = map.area.to | mask;
        // Tables of an earlier mapping that already cover part of this range are reused.
        for cmp in maps {
            let c = cmp.lvls[l];
            if c.from == c.to {
                continue;
            }
            if lf >= c.from && lt <= c.to {
                lf = 0;
                lt = 0;
                break;
            }
            if lf >= c.from && lf <= c.to {
                lf = c.to + 1;
            }
            if lt >= c.from && lt <= c.to {
                lt = c.from - 1;
            }
        }
        map.lvls[l].from = lf;
        map.lvls[l].to = lt;
        if lf < lt {
            map.lvls[l].pgtables = ((lt - lf) >> bits) + 1;
        }
        map.area.pgtables += map.lvls[l].pgtables;
    }
    Ok(map)
}

/// Refuses mappings whose L4 slots fall into the hypervisor hole (the shim's slots).
fn check_hole(map: &Mapping, from: u64, to: u64) -> Result<(), LoaderError> {
    let first = (map.area.from >> 39) as usize;
    let last = (map.area.to >> 39) as usize;
    if first <= HOLE_LAST_L4_SLOT && last >= HOLE_FIRST_L4_SLOT {
        return Err(LoaderError::BadMapping {
            from,
            to,
            reason: "it reaches into the hypervisor hole (L4 slots 256..=271)",
        });
    }
    Ok(())
}

/// One planning attempt for `total_pages` of RAM.
fn plan_pages(
    image: &KernelImage,
    initrd_len: Option<u64>,
    total_pages: u64,
) -> Result<DomainLayout, PlanError> {
    let p2m_size = total_pages;
    let virt_base = image.virt_base;
    let mut a = Alloc {
        total_pages,
        virt_alloc_end: virt_base,
        pfn_alloc_end: 0,
    };
    let mut maps: Vec<Mapping> = Vec::new();
    let mut flags = sif::VIRT_P2M_4TOOLS; // xc_dom_allocate's default
    let (mut mod_start, mut mod_len, mut initrd_pfns) = (0, 0, None);

    // The kernel, at its own VA: padding fills virt_base .. virt_kstart.
    let kernel = a.alloc_segment(
        Some(image.virt_kstart),
        image.virt_kend.saturating_sub(image.virt_kstart),
    )?;

    // A mapped initrd follows the kernel.
    if let (Some(len), false) = (initrd_len, image.unmapped_initrd) {
        let seg = a.alloc_segment(None, len)?;
        mod_start = seg.vstart;
        mod_len = seg.vend - seg.vstart;
        initrd_pfns = Some(seg.pfn..seg.pfn + seg.pages);
    }

    // The p2m list in the initial mapping when the kernel has no (usable) INIT_P2M.
    let p2m_bytes = (p2m_size * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut p2m = None;
    if image.p2m_base.is_none() {
        p2m = Some(a.alloc_segment(None, p2m_bytes)?);
    }

    // alloc_magic_pages_pv.
    let start_info_pfn = a.alloc_page()?;
    let xenstore_pfn = a.alloc_page()?;
    let console_pfn = a.alloc_page()?;

    // alloc_pgtables_pv: grow the mapping until it covers its own tables, the boot stack
    // and 512 KiB of slack, in 4 MiB steps.
    let extra_pages = 1 + PGTAB_SLACK_PAGES;
    let mut pages = extra_pages;
    let (map0, try_virt_end) = loop {
        let try_virt_end = a
            .virt_alloc_end
            .checked_add(pages * PAGE_SIZE)
            .map(|v| v | PGTAB_ALIGN_MASK)
            .filter(|v| *v != u64::MAX)
            .ok_or(LoaderError::BadMapping {
                from: virt_base,
                to: a.virt_alloc_end,
                reason: "the initial mapping would wrap past the top of the address space",
            })?;
        let map = count_pgtables(&maps, virt_base, try_virt_end, 0, a.pfn_alloc_end, p2m_size)?;
        pages = map.area.pgtables + extra_pages;
        if a.virt_alloc_end + pages * PAGE_SIZE <= try_virt_end + 1 {
            break (map, try_virt_end);
        }
    };
    check_hole(&map0, virt_base, try_virt_end)?;
    let mut map0 = map0;
    map0.area.pfn = 0;
    maps.push(map0);
    let virt_pgtab_end = try_virt_end + 1;
    let pgtables = a.alloc_segment(None, map0.area.pgtables * PAGE_SIZE)?;

    let bootstack_pfn = a.alloc_page()?;

    // Everything the initial pagetables map must exist.
    a.alloc_pad(virt_pgtab_end)?;

    // An unmapped initrd goes after the mapping and is passed by PFN.
    if let (Some(len), true) = (initrd_len, image.unmapped_initrd) {
        let seg = a.alloc_segment(None, len)?;
        flags |= sif::MOD_START_PFN;
        mod_start = seg.pfn;
        mod_len = PAGE_SIZE * seg.pages;
        initrd_pfns = Some(seg.pfn..seg.pfn + seg.pages);
    }

    // alloc_p2m_list_x86_64 with INIT_P2M: the list, then its own tables (upper first).
    let mut p2m_seg = None;
    let (p2m_va, p2m_pfn) = if let Some(base) = image.p2m_base {
        let to = base
            .checked_add(p2m_bytes - 1)
            .ok_or(LoaderError::BadMapping {
                from: base,
                to: u64::MAX,
                reason: "the p2m list would wrap past the top of the address space",
            })?;
        let mut map = count_pgtables(&maps, base, to, a.pfn_alloc_end, a.pfn_alloc_end, p2m_size)?;
        check_hole(&map, base, to)?;
        map.area.pfn = a.pfn_alloc_end;
        for lvl in map.lvls.iter_mut() {
            lvl.pfn += p2m_bytes >> PAGE_SHIFT;
        }
        maps.push(map);
        let seg = a.alloc_segment(None, p2m_bytes + (map.area.pgtables << PAGE_SHIFT))?;
        p2m_seg = Some((seg.pfn, seg.pages));
        (base, seg.pfn)
    } else {
        let seg = p2m.unwrap_or_default();
        (seg.vstart, seg.pfn)
    };

    // The frames setup_pgtables_pv fills, level by level, per mapping.
    let mut page_tables = Vec::new();
    for map in &maps {
        for l in (0..LEVELS).rev() {
            for i in 0..map.lvls[l].pgtables {
                page_tables.push(PageTableFrame {
                    gpa: (map.lvls[l].pfn + i) << PAGE_SHIFT,
                    level: l as u8 + 1,
                });
            }
        }
    }

    Ok(DomainLayout {
        nr_pages: total_pages,
        virt_base,
        virt_kstart: image.virt_kstart,
        virt_kend: image.virt_kend,
        kernel_pfn: kernel.pfn,
        entry: image.virt_entry,
        stack_top: virt_base + ((bootstack_pfn + 1) << PAGE_SHIFT),
        bootstack_pfn,
        start_info_va: virt_base + (start_info_pfn << PAGE_SHIFT),
        start_info_gpa: start_info_pfn << PAGE_SHIFT,
        store_gfn: xenstore_pfn,
        console_gfn: console_pfn,
        pt_base: pgtables.vstart,
        l4_gpa: pgtables.pfn << PAGE_SHIFT,
        pt_gpa: (pgtables.pfn << PAGE_SHIFT)..((pgtables.pfn + pgtables.pages) << PAGE_SHIFT),
        nr_pt_frames: map0.area.pgtables,
        virt_pgtab_end,
        p2m_va,
        p2m_pfn,
        p2m_frames: p2m_bytes >> PAGE_SHIFT,
        p2m_seg,
        hypercall_page: image.virt_hypercall,
        initrd_pfns,
        mod_start,
        mod_len,
        flags,
        pfn_alloc_end: a.pfn_alloc_end,
        mappings: maps,
        page_tables,
    })
}

/// Lays the domain out as Xen's builder would, without touching guest memory.
pub fn plan(image: &KernelImage, cfg: &DomainConfig) -> Result<DomainLayout, LoaderError> {
    let initrd_len = cfg.initrd.as_ref().map(|i| i.len() as u64);
    let total_pages = cfg.mem_bytes >> PAGE_SHIFT;
    match plan_pages(image, initrd_len, total_pages) {
        Ok(layout) => Ok(layout),
        Err(PlanError::Fatal(e)) => Err(e),
        Err(PlanError::NoRoom) => {
            // Find the smallest page count that fits, to say how much is needed. The
            // need grows with memory (the p2m list does), so search, don't add up.
            let fits = |pages: u64| match plan_pages(image, initrd_len, pages) {
                Ok(_) => Ok(true),
                Err(PlanError::NoRoom) => Ok(false),
                Err(PlanError::Fatal(e)) => Err(e),
            };
            let mut lo = total_pages; // does not fit
            let mut hi = total_pages.max(1);
            loop {
                hi = hi.saturating_mul(2);
                if fits(hi)? {
                    break;
                }
                if hi >= 1 << 40 {
                    return Err(LoaderError::KernelTooLarge(
                        image.virt_kend.saturating_sub(image.virt_kstart),
                    ));
                }
                lo = hi;
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid)? {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            let need_bytes = hi << PAGE_SHIFT;
            Err(LoaderError::OutOfMemory {
                need_bytes,
                need_mib: need_bytes.div_ceil(1 << 20),
                have_bytes: cfg.mem_bytes,
            })
        }
    }
}

impl fmt::Display for DomainLayout {
    /// The layout the way Xen's builder logs it ("VIRTUAL MEMORY ARRANGEMENT").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let va = |pfn: u64| self.virt_base + (pfn << PAGE_SHIFT);
        writeln!(
            f,
            "domain: {} pages ({} MiB), start_info flags {:#x}",
            self.nr_pages,
            self.nr_pages >> (20 - PAGE_SHIFT),
            self.flags
        )?;
        writeln!(f, "VIRTUAL MEMORY ARRANGEMENT:")?;
        writeln!(
            f,
            " Loaded kernel: {:016x}->{:016x} (pfn {:#x})",
            self.virt_kstart, self.virt_kend, self.kernel_pfn
        )?;
        match &self.initrd_pfns {
            Some(r) if self.flags & sif::MOD_START_PFN != 0 => writeln!(
                f,
                " Init. ramdisk: pfn {:#x}->{:#x} (unmapped, mod_start = pfn)",
                r.start, r.end
            )?,
            Some(r) => writeln!(
                f,
                " Init. ramdisk: {:016x}->{:016x} (pfn {:#x})",
                va(r.start),
                va(r.end),
                r.start
            )?,
            None => writeln!(f, " Init. ramdisk: (none)")?,
        }
        writeln!(
            f,
            " Phys-Mach map: {:016x}->{:016x} (pfn {:#x}, {} frames{})",
            self.p2m_va,
            self.p2m_va + self.nr_pages * 8,
            self.p2m_pfn,
            self.p2m_frames,
            match self.p2m_seg {
                Some((first, nr)) => format!(
                    "; with its pagetables pfn {first:#x} + {nr} = first_p2m_pfn/nr_p2m_frames"
                ),
                None => String::new(),
            }
        )?;
        writeln!(
            f,
            " Start info:    {:016x}->{:016x} (pfn {:#x})",
            self.start_info_va,
            self.start_info_va + START_INFO_SIZE,
            self.start_info_gpa >> PAGE_SHIFT
        )?;
        writeln!(
            f,
            " Xenstore ring: {:016x} (pfn {:#x})",
            va(self.store_gfn),
            self.store_gfn
        )?;
        writeln!(
            f,
            " Console ring:  {:016x} (pfn {:#x})",
            va(self.console_gfn),
            self.console_gfn
        )?;
        writeln!(
            f,
            " Page tables:   {:016x}->{:016x} (pfn {:#x}, {} frames, CR3 {:#x})",
            self.pt_base,
            self.pt_base + (self.nr_pt_frames << PAGE_SHIFT),
            self.l4_gpa >> PAGE_SHIFT,
            self.nr_pt_frames,
            self.l4_gpa
        )?;
        writeln!(
            f,
            " Boot stack:    {:016x}->{:016x} (pfn {:#x})",
            va(self.bootstack_pfn),
            self.stack_top,
            self.bootstack_pfn
        )?;
        writeln!(
            f,
            " TOTAL:         {:016x}->{:016x}",
            self.virt_base, self.virt_pgtab_end
        )?;
        writeln!(f, " ENTRY ADDRESS: {:016x}", self.entry)?;
        if let Some(h) = self.hypercall_page {
            writeln!(f, " Hypercall page: {h:016x}")?;
        }
        writeln!(
            f,
            " Allocated:     pfn 0x0->{:#x} of {:#x}",
            self.pfn_alloc_end, self.nr_pages
        )?;
        Ok(())
    }
}
