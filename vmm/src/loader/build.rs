//! Writing a planned domain into guest RAM: the kernel's segments (`elf_load_binary`),
//! the initrd, the identity p2m, start_info (`start_info_x86_64`), the bootstrap
//! pagetables (`setup_pgtables_pv`) and the hypercall page (which Xen's hypervisor
//! writes on the builder's request; the stubs are 64-bit PV's `hypercall_page_initialise`).
//!
//! Guest RAM is identity-mapped (machine frame == guest-physical frame), so a PFN of the
//! layout is also the MFN that goes into PTEs, start_info and the p2m.
//! The VMM writes these frames directly: no hardware walk can reach them before the
//! first vCPU runs, so the host's shadowing (DESIGN.md) does not matter yet.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::xen::{StartInfo, HOLE_FIRST_L4_SLOT, MAX_GUEST_CMDLINE, START_INFO_MAGIC};
use zerocopy::{FromZeros, IntoBytes};

use super::elf::KernelImage;
use super::layout::{plan, DomainLayout, Mapping};
use super::{DomainConfig, LoaderError, PAGE_SHIFT, PAGE_SIZE};

/// L1 entries: P|RW|A as Xen's builder writes them, plus U, which Xen adds to every
/// present guest L1 entry (`adjust_guest_l1e`) and which the shim's tables need as well.
const L1_PROT: u64 = PTE_P | PTE_RW | PTE_A | PTE_U;
/// Upper levels: P|RW|A|D|U (`lvl_prot[1 ... 3]`).
const UPPER_PROT: u64 = PTE_P | PTE_RW | PTE_A | PTE_D | PTE_U;
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;

/// Hypercall stubs are 32 bytes apart; 128 of them fill the page.
const HYPERCALL_STUB_SIZE: usize = 32;
/// `__HYPERVISOR_iret`, whose stub does not return.
const HYPERCALL_IRET: u32 = 23;
/// Hypercalls whose stubs keep Xen's `syscall`: the shim's `syscall` entry answers
/// their common cases inside the VM (`VCPUOP_is_up`, `MMUEXT_INVLPG_LOCAL`).
const HYPERCALLS_VIA_SYSCALL: [u32; 2] = [
    xen_abi::xen::hypercall::VCPU_OP as u32,
    xen_abi::xen::hypercall::MMUEXT_OP as u32,
];

/// The contents of a 64-bit PV hypercall page: `int3` filler, then for each hypercall
/// `push %rcx; push %r11; mov $nr,%eax; out %al,$DOORBELL; pop %r11; pop %rcx; ret`,
/// except iret: `push %rcx; push %r11; push %rax; mov $23,%eax; out %al,$DOORBELL` (the
/// guest jumps to it). Xen's stubs have `syscall` where these ring the hypercall
/// doorbell directly (`xen_abi::contract::port::HYPERCALL`, which the TSS I/O bitmap
/// lets ring 3 use): the same registers and stack, one transition fewer (a `syscall`
/// from ring 3 costs a round trip through the host on a software-KVM host before the
/// shim's stub rings the same doorbell). The page's contents are the hypervisor's
/// choice, not ABI (Linux fills it with `ret`s for Xen to overwrite). `vcpu_op` and
/// `mmuext_op` keep `syscall` (HYPERCALLS_VIA_SYSCALL).
pub fn hypercall_page_bytes() -> Vec<u8> {
    let mut page = vec![0xccu8; PAGE_SIZE as usize];
    let doorbell = [0xe6, xen_abi::contract::port::HYPERCALL as u8];
    for (nr, stub) in page.chunks_exact_mut(HYPERCALL_STUB_SIZE).enumerate() {
        let nr = nr as u32;
        let imm = nr.to_le_bytes();
        let enter: &[u8] = if HYPERCALLS_VIA_SYSCALL.contains(&nr) {
            &[0x0f, 0x05]
        } else {
            &doorbell
        };
        let code: Vec<u8> = if nr == HYPERCALL_IRET {
            [&[0x51, 0x41, 0x53, 0x50, 0xb8][..], &imm, enter].concat()
        } else {
            [
                &[0x51, 0x41, 0x53, 0xb8][..],
                &imm,
                enter,
                &[0x41, 0x5b, 0x59, 0xc3],
            ]
            .concat()
        };
        for (dst, src) in stub.iter_mut().zip(code) {
            *dst = src;
        }
    }
    page
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    gpa: u64,
    bytes: &[u8],
) -> Result<(), LoaderError> {
    mem.write_slice(bytes, GuestAddress(gpa))
        .map_err(|e| LoaderError::GuestMemory {
            what,
            gpa,
            reason: e.to_string(),
        })
}

/// Zeroes `len` bytes at `gpa` in 1 MiB steps (Xen clears every segment it allocates).
fn zero(mem: &GuestMemoryMmap, what: &'static str, gpa: u64, len: u64) -> Result<(), LoaderError> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        write(
            mem,
            what,
            gpa + done,
            zeros.get(..n as usize).unwrap_or_default(),
        )?;
        done += n;
    }
    Ok(())
}

/// The pagetable frames of one mapping, assembled in memory before being written.
struct TableBuf {
    first_pfn: u64,
    bytes: Vec<u8>,
}

impl TableBuf {
    fn set(&mut self, gpa: u64, value: u64) -> bool {
        let Some(off) = gpa.checked_sub(self.first_pfn << PAGE_SHIFT) else {
            return false;
        };
        match self.bytes.get_mut(off as usize..off as usize + 8) {
            Some(slot) => {
                slot.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}

/// `get_pg_prot`: L1 entries that map a pagetable frame of any mapping are read-only.
fn pg_prot(maps: &[Mapping], l: usize, pfn: u64) -> u64 {
    if l > 0 {
        return UPPER_PROT;
    }
    let is_pt = maps.iter().any(|m| {
        let s = m.lvls[3].pfn;
        pfn >= s && pfn < s + m.area.pgtables
    });
    if is_pt {
        L1_PROT & !PTE_RW
    } else {
        L1_PROT
    }
}

/// `setup_pgtables_pv`: fills every table of every mapping. Tables of one level are
/// contiguous, so entry `p` of level `l` lives at `lvls[l].pfn * 4096 + p * 8`.
fn setup_pgtables(layout: &DomainLayout, hole_l4: &[u64; 16]) -> Vec<TableBuf> {
    let maps = &layout.mappings;
    let mut bufs: Vec<TableBuf> = maps
        .iter()
        .map(|m| TableBuf {
            first_pfn: m.lvls[3].pfn,
            bytes: vec![0; (m.area.pgtables << PAGE_SHIFT) as usize],
        })
        .collect();
    for l in (0..4usize).rev() {
        for m1 in maps {
            let (from, to) = (m1.lvls[l].from, m1.lvls[l].to);
            let table_gpa = m1.lvls[l].pfn << PAGE_SHIFT;
            let shift = PAGE_SHIFT + 9 * l as u32;
            for m2 in maps {
                let lvl = if l > 0 { m2.lvls[l - 1] } else { m2.area };
                if l > 0 && lvl.pgtables == 0 {
                    continue;
                }
                if lvl.from >= to || lvl.to <= from {
                    continue;
                }
                let p_s = (from.max(lvl.from) - from) >> shift;
                let p_e = (to.min(lvl.to) - from) >> shift;
                let first_pfn = ((from.max(lvl.from) - lvl.from) >> shift) + lvl.pfn;
                for (p, pfn) in (p_s..=p_e).zip(first_pfn..) {
                    let entry = (pfn << PAGE_SHIFT) | pg_prot(maps, l, pfn);
                    let gpa = table_gpa + p * 8;
                    for b in bufs.iter_mut() {
                        if b.set(gpa, entry) {
                            break;
                        }
                    }
                }
            }
        }
    }
    // The hypervisor hole belongs to the shim: its L4 entries, verbatim.
    if let Some(l4) = bufs.first_mut() {
        for (i, e) in hole_l4.iter().enumerate() {
            l4.set(layout.l4_gpa + ((HOLE_FIRST_L4_SLOT + i) as u64) * 8, *e);
        }
    }
    bufs
}

/// Lays out the domain ([`plan`]) and writes it into `mem` (guest RAM at GPA 0).
pub fn build(
    image: &KernelImage,
    cfg: &DomainConfig,
    mem: &GuestMemoryMmap,
) -> Result<DomainLayout, LoaderError> {
    let layout = plan(image, cfg)?;
    let page = |pfn: u64| pfn << PAGE_SHIFT;

    // Kernel: the whole segment zeroed (bss), then each PT_LOAD at its paddr offset.
    let kbase = page(layout.kernel_pfn);
    let klen = image
        .virt_kend
        .saturating_sub(image.virt_kstart)
        .div_ceil(PAGE_SIZE)
        * PAGE_SIZE;
    zero(mem, "kernel", kbase, klen)?;
    for seg in &image.segments {
        // parse() checked that the bytes are in the file and inside [pstart, pend).
        let end = seg.offset.saturating_add(seg.filesz);
        let bytes = image
            .elf
            .get(seg.offset as usize..end as usize)
            .unwrap_or_default();
        let gpa = kbase.saturating_add(seg.paddr.saturating_sub(image.pstart));
        write(mem, "kernel", gpa, bytes)?;
    }

    // Initrd, zero padded to whole pages (Xen passes the page-rounded length).
    if let (Some(initrd), Some(pfns)) = (&cfg.initrd, &layout.initrd_pfns) {
        zero(mem, "initrd", page(pfns.start), page(pfns.end - pfns.start))?;
        write(mem, "initrd", page(pfns.start), initrd)?;
    }

    // Identity p2m: entry n holds MFN n.
    {
        let mut p2m = Vec::with_capacity((layout.p2m_frames << PAGE_SHIFT) as usize);
        for pfn in 0..layout.nr_pages {
            p2m.extend_from_slice(&pfn.to_le_bytes());
        }
        p2m.resize((layout.p2m_frames << PAGE_SHIFT) as usize, 0);
        write(mem, "p2m list", page(layout.p2m_pfn), &p2m)?;
    }

    // start_info (start_info_x86_64).
    let mut si = StartInfo::new_zeroed();
    for (dst, src) in si.magic.iter_mut().zip(START_INFO_MAGIC) {
        *dst = *src;
    }
    si.nr_pages = layout.nr_pages;
    si.shared_info = cfg.shared_info_gpa;
    si.flags = layout.flags;
    si.store_mfn = layout.store_gfn;
    si.store_evtchn = cfg.store_evtchn;
    si.console_mfn = layout.console_gfn;
    si.console_evtchn = cfg.console_evtchn;
    si.pt_base = layout.pt_base;
    si.nr_pt_frames = layout.nr_pt_frames;
    si.mfn_list = layout.p2m_va;
    if cfg.initrd.is_some() {
        si.mod_start = layout.mod_start;
        si.mod_len = layout.mod_len;
    }
    let cmdline = cfg.cmdline.as_bytes();
    let n = cmdline.len().min(MAX_GUEST_CMDLINE - 1);
    for (dst, src) in si.cmd_line.iter_mut().zip(cmdline.iter().take(n)) {
        *dst = *src;
    }
    if let Some((first, nr)) = layout.p2m_seg {
        si.first_p2m_pfn = first;
        si.nr_p2m_frames = nr;
    }
    zero(mem, "start_info", layout.start_info_gpa, PAGE_SIZE)?;
    write(mem, "start_info", layout.start_info_gpa, si.as_bytes())?;

    // The rings start empty.
    zero(mem, "xenstore ring", page(layout.store_gfn), PAGE_SIZE)?;
    zero(mem, "console ring", page(layout.console_gfn), PAGE_SIZE)?;

    // Pagetables, then the boot stack.
    for buf in setup_pgtables(&layout, &cfg.hole_l4) {
        write(mem, "page tables", page(buf.first_pfn), &buf.bytes)?;
    }
    zero(mem, "boot stack", page(layout.bootstack_pfn), PAGE_SIZE)?;

    // The hypercall page lies inside the kernel (checked by parse), so after the kernel.
    if let Some(va) = layout.hypercall_page {
        let pfn = (va - layout.virt_base) >> PAGE_SHIFT;
        write(mem, "hypercall page", page(pfn), &hypercall_page_bytes())?;
    }

    log::debug!("built PV domain:\n{layout}");
    Ok(layout)
}
