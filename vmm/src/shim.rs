//! The shim region: the domain's grant frames and `shared_info`, then per vCPU a block
//! with a copy of the ring-0 shim image and the data structures that vCPU's shim owns
//! (GDT, IDT, TSS with its I/O bitmap, ring-0 stacks, guest-state page, posting area),
//! then the shim's pagetables, the M2P table and the direct map; laid out at the offsets
//! of `xen_abi::contract::layout` in guest-physical memory above guest RAM and mapped in
//! the hypervisor hole at `SHIM_VA_BASE`. [`ShimRegion`] holds the domain-wide parts,
//! [`VcpuShim`] what one vCPU enters.
//!
//! The VMM writes all of it before the first `KVM_RUN`: no hardware walk can have cached
//! those tables yet, so the host's shadow pagetables see them (DESIGN.md: only writes to
//! tables the guest already runs on must come from inside the VM).

use object::{Object, ObjectSegment};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::contract::{self, layout, port, selector as shim_sel, ShimHeader, SHIM_VA_BASE};
use xen_abi::xen::selector;
use zerocopy::{FromBytes, IntoBytes};

use crate::vstate::{MsrEntry, Segment, Sregs};

/// Errors of the shim region.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shim ELF is malformed.
    #[error("the shim image is not a loadable ELF: {0}")]
    BadElf(String),
    /// The shim's header does not match this VMM.
    #[error("the shim image's header is wrong ({0}); rebuild pvkvm")]
    BadHeader(&'static str),
    /// The region cannot have that many vCPU blocks.
    #[error("a domain has 1 to {max} vCPUs, not {0}", max = contract::MAX_VCPUS)]
    VcpuCount(u32),
    /// Writing guest memory failed.
    #[error("cannot write the shim region at {0:#x}: outside guest memory")]
    Memory(u64),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Page-table entry bits used here.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User accessible.
    pub const U: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Large page (PS) in L2/L3.
    pub const PS: u64 = 1 << 7;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// Physical address bits of an entry.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// The shim binary embedded at build time, with its parsed header.
pub struct ShimImage {
    bytes: Vec<u8>,
    header: ShimHeader,
}

impl ShimImage {
    /// The shim that `build.rs` built for this VMM.
    pub fn embedded() -> Result<Self> {
        // ELF parsing wants the header aligned; include_bytes! gives no alignment.
        #[repr(C, align(16))]
        struct Aligned<T: ?Sized>(T);
        static SHIM_ELF: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("PVKVM_SHIM_ELF")));
        Self::from_elf(&SHIM_ELF.0)
    }

    /// Loads a shim ELF: one loadable segment at address 0 with the header first.
    pub fn from_elf(elf: &[u8]) -> Result<Self> {
        let file = object::File::parse(elf).map_err(|e| Error::BadElf(e.to_string()))?;
        let mut bytes = Vec::new();
        for seg in file.segments() {
            let data = seg.data().map_err(|e| Error::BadElf(e.to_string()))?;
            let end = seg.address() as usize + data.len();
            if end as u64 > layout::vcpu::TEXT_SIZE {
                return Err(Error::BadElf(format!(
                    "segment ends at {end:#x}, beyond the shim's text area"
                )));
            }
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[seg.address() as usize..end].copy_from_slice(data);
        }
        let (header, _) = ShimHeader::read_from_prefix(&bytes)
            .map_err(|_| Error::BadHeader("image too short"))?;
        if header.magic != contract::SHIM_MAGIC {
            return Err(Error::BadHeader("bad magic"));
        }
        if header.version != contract::CONTRACT_VERSION {
            return Err(Error::BadHeader("contract version differs"));
        }
        if header
            .vector_entry
            .iter()
            .any(|&o| u64::from(o) >= bytes.len() as u64)
        {
            return Err(Error::BadHeader("a vector stub lies outside the image"));
        }
        Ok(Self { bytes, header })
    }

    /// The header.
    pub fn header(&self) -> &ShimHeader {
        &self.header
    }
}

/// Where the shim region is: the domain-wide parts, and one [`VcpuShim`] per vCPU block.
#[derive(Clone, Debug)]
pub struct ShimRegion {
    /// Guest-physical base of the region.
    pub gpa: u64,
    /// Bytes of the whole region (blocks, pagetables, M2P, direct map): what
    /// [`region_size`] gave for it.
    pub size: u64,
    /// L4 entries for hypervisor-hole slots 256..=271, to copy into every guest L4.
    pub hole_l4: [u64; 16],
    /// Guest-physical address of `shared_info`.
    pub shared_info_gpa: u64,
    /// Guest-physical address of grant-table frame 0 (`layout::GRANT_FRAMES` frames).
    pub grant_table_gpa: u64,
    /// Guest-physical address of the M2P table.
    pub m2p_gpa: u64,
    /// Bytes of the M2P table: whole pages, entries past the last RAM frame invalid.
    pub m2p_bytes: u64,
    /// One per vCPU, in id order; never empty (`build_region` refuses 0 vCPUs).
    vcpus: Vec<VcpuShim>,
}

/// What one vCPU needs to enter its block of the shim region: its own text copy, stacks,
/// descriptor tables and pages.
#[derive(Clone, Debug)]
pub struct VcpuShim {
    /// The vCPU's id (its block's index).
    pub id: u32,
    /// Virtual address of this block's text copy (the shim image).
    pub text_va: u64,
    /// Guest-physical address of this block.
    pub block_gpa: u64,
    /// MSR_LSTAR: the `syscall` stub.
    pub syscall_entry: u64,
    /// Where rip points when the `syscall` stub rings its doorbell.
    pub syscall_doorbell_end: u64,
    /// The `syscall` stub's reads of guest memory (a #PF there falls back to the
    /// doorbell at `syscall_slow_path`).
    pub syscall_fixup: core::ops::Range<u64>,
    /// The `syscall` stub's doorbell.
    pub syscall_slow_path: u64,
    /// The CPL3 PKRU-reset trampoline.
    pub pkru_reset: u64,
    /// Where rip points when the trampoline rings its doorbell.
    pub pkru_reset_doorbell_end: u64,
    /// The #GP stub's read of the guest's instruction byte (a fault there resumes the
    /// stub at `gp_fixup_resume`, which takes the ordinary path to the engine).
    pub gp_fixup: core::ops::Range<u64>,
    /// Where the #GP stub goes on after a fault in `gp_fixup`.
    pub gp_fixup_resume: u64,
    /// The #GP gate's handler with the in-VM cli/sti answers, and without.
    gp_entry: u64,
    gp_plain: u64,
    /// The apply routine (see `xen_abi::contract::ShimHeader::apply_entry`).
    pub apply_entry: u64,
    /// Where rip points when the apply routine rings `APPLY_MORE`.
    pub apply_more_doorbell_end: u64,
    /// The short apply of one store (`ShimHeader::apply_one`).
    pub apply_one: u64,
    /// The short apply of one full flush (`ShimHeader::apply_flush_all`).
    pub apply_flush_all: u64,
    /// An `iretq` a trap's doorbell resumes at when nothing waits (`ShimHeader::trap_return`).
    pub trap_return: u64,
    /// The apply of a few stores listed on the stack (`ShimHeader::apply_list`).
    pub apply_list: u64,
    /// The same, then a full flush (`ShimHeader::apply_list_flush_all`).
    pub apply_list_flush_all: u64,
    /// Top of the vCPU's ring-0 stack (TSS rsp0).
    pub stack_top: u64,
    /// Guest-physical address of the `GuestStatePage` this vCPU's syscall stub reads.
    pub guest_state_gpa: u64,
    /// Guest-physical address of this vCPU's posting area (`xen_abi::contract::PostedHeader`).
    pub posted_gpa: u64,
    /// Region base and the bytes mapped at `SHIM_VA_BASE` (for `va_to_gpa`).
    region_gpa: u64,
    region_mapped: u64,
    /// Guest-physical address of the shim's first L1 (the one mapping region offset 0).
    l1_gpa: u64,
}

/// Extended machine-state components the VMM enables in XCR0 when the host has them.
pub const XCR0_X87_SSE_AVX: u64 = 0b111;

/// Guest-physical address of shim virtual address `va` in a region at `gpa`, if it lies
/// in the `mapped` bytes from the region's base (its part at `SHIM_VA_BASE`).
fn shim_va_to_gpa(gpa: u64, mapped: u64, va: u64) -> Option<u64> {
    let off = va.checked_sub(SHIM_VA_BASE)?;
    (off < mapped).then_some(gpa + off)
}

impl ShimRegion {
    /// Number of vCPU blocks.
    pub fn nr_vcpus(&self) -> u32 {
        self.vcpus.len() as u32
    }

    /// vCPU `id`'s part of the region, if the region has a block for it.
    pub fn vcpu(&self, id: u32) -> Option<&VcpuShim> {
        self.vcpus.get(id as usize)
    }

    /// vCPU 0's part, which every region has.
    pub fn vcpu0(&self) -> &VcpuShim {
        &self.vcpus[0]
    }

    /// Tells every vCPU's stubs which answers they may give inside the VM
    /// (`xen_abi::contract::in_vm` bits; the others go through the engine).
    /// Without `IOPL_OPS` the #GP gate goes straight to the ordinary stub.
    pub fn set_in_vm(&self, mem: &GuestMemoryMmap, bits: u32) -> Result<()> {
        let at = core::mem::offset_of!(contract::GuestStatePage, in_vm) as u64;
        for v in &self.vcpus {
            write(mem, v.guest_state_gpa + at, &bits.to_le_bytes())?;
            let gp = if bits & contract::in_vm::IOPL_OPS != 0 {
                v.gp_entry
            } else {
                v.gp_plain
            };
            write_gate(mem, v.block_gpa, 13, gp)?;
        }
        Ok(())
    }

    /// Every vCPU's part, in id order.
    pub fn vcpus(&self) -> &[VcpuShim] {
        &self.vcpus
    }

    /// Maps the M2P at Xen's `MACH2PHYS_VIRT_START` (slot 256) too, for guests that read
    /// it there without asking `XENMEM_machphys_mapping`: only where the host lets guest
    /// ring 3 use that slot (elsewhere the engine serves those reads, `pv_engine::m2p`).
    /// Both addresses have the same offset within their 512 GiB slot, so slot 256
    /// shares slot 257's L3.
    pub fn map_m2p_at_abi(&mut self) {
        const _: () = assert!(
            (contract::M2P_VA & ((1 << 39) - 1))
                == (xen_abi::xen::MACH2PHYS_VIRT_START & ((1 << 39) - 1))
        );
        let slot = |va: u64| ((va >> 39) & 511) as usize - xen_abi::xen::HOLE_FIRST_L4_SLOT;
        self.hole_l4[slot(xen_abi::xen::MACH2PHYS_VIRT_START)] =
            self.hole_l4[slot(contract::M2P_VA)];
    }

    /// Guest-physical address of a shim virtual address, if it is in the region (any
    /// vCPU's block, or the domain part).
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        shim_va_to_gpa(self.gpa, layout::size(self.nr_vcpus()), va)
    }
}

impl VcpuShim {
    /// Region offset of this vCPU's block.
    fn block(&self) -> u64 {
        layout::vcpu_block(self.id)
    }

    /// The shim's L1 entry (its frame, its slot, the value) that maps page `page` of the
    /// guest part of this vCPU's GDT: the guest's segment-descriptor frame, or the
    /// shim's own empty page when the guest gave none.
    pub fn gdt_page_entry(&self, page: usize, guest_frame: Option<u64>) -> (u64, usize, u64) {
        let off = self.block() + layout::vcpu::GDT + page as u64 * 0x1000;
        // The L1s map the region linearly from its base, 512 pages each.
        let l1 = self.l1_gpa + (off >> 21) * 0x1000;
        let slot = ((off >> 12) & 511) as usize;
        let target = guest_frame
            .map(|f| f << 12)
            .unwrap_or(self.region_gpa + off);
        (
            l1 >> 12,
            slot,
            target | pte::P | pte::RW | pte::A | pte::D | pte::NX,
        )
    }

    /// Whether `va` is in this vCPU's copy of the shim's code.
    pub fn in_text(&self, va: u64) -> bool {
        (self.text_va..self.text_va + layout::vcpu::TEXT_SIZE).contains(&va)
    }

    /// Virtual address of page `page` of this vCPU's GDT.
    pub fn gdt_page_va(&self, page: usize) -> u64 {
        SHIM_VA_BASE + self.block() + layout::vcpu::GDT + page as u64 * 0x1000
    }

    /// Guest-physical address of a shim virtual address, if it is in the region (the
    /// whole region, as `ShimRegion::va_to_gpa`: any vCPU's block or the domain part).
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        shim_va_to_gpa(self.region_gpa, self.region_mapped, va)
    }

    /// Initial system registers: long mode, this vCPU's GDT/IDT/TSS, guest kernel mode
    /// at CPL3 on `cr3`.
    pub fn initial_sregs(&self, mut sregs: Sregs, cr3: u64, xsave: bool) -> Sregs {
        let block_va = SHIM_VA_BASE + self.block();
        let code = |sel: u16, dpl: u8, long: bool| Segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: sel,
            type_: 11,
            present: 1,
            dpl,
            db: u8::from(!long),
            s: 1,
            l: u8::from(long),
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = |sel: u16, dpl: u8| Segment {
            type_: 3,
            db: 1,
            l: 0,
            ..code(sel, dpl, false)
        };
        let null = Segment {
            unusable: 1,
            present: 0,
            selector: 0,
            ..data(0, 3)
        };
        sregs.cs = code(selector::FLAT_KERNEL_CS, 3, true);
        sregs.ss = data(selector::FLAT_KERNEL_SS, 3);
        sregs.ds = null;
        sregs.es = null;
        sregs.fs = null;
        sregs.gs = null;
        sregs.ldt = Segment {
            type_: 2,
            s: 0,
            ..null
        };
        sregs.tr = Segment {
            base: block_va + layout::vcpu::TSS,
            limit: layout::vcpu::TSS_LIMIT as u32,
            selector: shim_sel::TSS,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.gdt.base = block_va + layout::vcpu::GDT;
        sregs.gdt.limit = (layout::vcpu::GDT_SIZE - 1) as u16;
        sregs.idt.base = block_va + layout::vcpu::IDT;
        sregs.idt.limit = 0xfff;
        // PG | AM | WP | NE | ET | MP | PE
        sregs.cr0 = 0x8005_0033;
        // PAE | OSFXSR | OSXMMEXCPT, and OSXSAVE so guests may use AVX.
        sregs.cr4 = 0x620 | if xsave { 1 << 18 } else { 0 };
        // SCE | LME | LMA | NXE
        sregs.efer = 0xd01;
        sregs.cr3 = cr3;
        sregs
    }

    /// MSRs of the shim on this vCPU: its block's syscall entry, Xen's PAT.
    pub fn msrs(&self) -> Vec<MsrEntry> {
        let star = (u64::from(selector::FLAT_RING3_CS32) << 48)
            | (u64::from(shim_sel::HYPERVISOR_CS) << 32);
        // TF | IF | DF | NT | RF | AC: the stub runs with none of them.
        let sfmask = 0x4_7700;
        [
            (0xc000_0081, star),
            (0xc000_0082, self.syscall_entry),
            (0xc000_0083, self.syscall_entry),
            (0xc000_0084, sfmask),
            (0x277, 0x0000_0501_0007_0406),
            (0xc000_0102, 0),
        ]
        .iter()
        .map(|&(index, data)| MsrEntry {
            index,
            data,
            ..Default::default()
        })
        .collect()
    }
}

fn write(mem: &GuestMemoryMmap, gpa: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(gpa))
        .map_err(|_| Error::Memory(gpa))
}

fn write_u64(mem: &GuestMemoryMmap, gpa: u64, v: u64) -> Result<()> {
    write(mem, gpa, &v.to_le_bytes())
}

/// A code or data descriptor with the accessed bit preset (the CPU need not write it).
const fn descriptor(type_and_flags: u64) -> u64 {
    0x0000_0000_0000_ffff | (0xf << 48) | (type_and_flags << 40)
}

/// Pages of the read-only M2P table for a guest of `ram_frames` frames.
fn m2p_pages(ram_frames: u64) -> u64 {
    (ram_frames * 8).div_ceil(0x1000)
}

/// Guest-physical base of the shim region: right above guest RAM, 2 MiB aligned.
pub fn region_gpa(ram_frames: u64) -> u64 {
    (ram_frames * 0x1000).next_multiple_of(0x20_0000)
}

/// Pages of the M2P part: the table, its L1s, its L3 and L2.
fn m2p_part_pages(ram_frames: u64) -> u64 {
    let pages = m2p_pages(ram_frames);
    pages + pages.div_ceil(512) + 2
}

/// L2 pages of the direct map: 2 MiB pages covering guest RAM and the whole shim region
/// (the direct map's own tables included; the bound of 64 such pages is 64 GiB).
fn directmap_l2_pages(ram_frames: u64, nr_vcpus: u32) -> u64 {
    let end = region_gpa(ram_frames)
        + layout::size(nr_vcpus)
        + (m2p_part_pages(ram_frames) + 1 + 64) * 0x1000;
    end.div_ceil(1 << 30)
}

/// Refuses a vCPU count the region has no room for.
fn check_vcpus(nr_vcpus: u32) -> Result<()> {
    if (1..=contract::MAX_VCPUS).contains(&nr_vcpus) {
        Ok(())
    } else {
        Err(Error::VcpuCount(nr_vcpus))
    }
}

/// Bytes of the shim region for a guest of `ram_frames` frames and `nr_vcpus` vCPUs
/// (1..=`MAX_VCPUS`): the domain part, one block per vCPU and the shim's pagetables,
/// the M2P table and the pagetables that map it at `contract::M2P_VA`, then the direct
/// map's pagetables.
pub fn region_size(ram_frames: u64, nr_vcpus: u32) -> Result<u64> {
    check_vcpus(nr_vcpus)?;
    Ok(layout::size(nr_vcpus)
        + (m2p_part_pages(ram_frames) + 1 + directmap_l2_pages(ram_frames, nr_vcpus)) * 0x1000)
}

/// Maps all of guest-physical memory up to the end of the shim region at
/// `DIRECTMAP_VA` with 2 MiB supervisor pages; returns the L4 entry for its slot.
fn build_directmap(mem: &GuestMemoryMmap, gpa: u64, ram_frames: u64, nr_vcpus: u32) -> Result<u64> {
    let l3 = gpa + layout::size(nr_vcpus) + m2p_part_pages(ram_frames) * 0x1000;
    let upper = pte::P | pte::RW | pte::A;
    let n_l2 = directmap_l2_pages(ram_frames, nr_vcpus);
    for i in 0..n_l2 {
        let l2 = l3 + (1 + i) * 0x1000;
        write_u64(mem, l3 + i * 8, l2 | upper)?;
        for j in 0..512u64 {
            let target = (i << 30) | (j << 21);
            write_u64(
                mem,
                l2 + j * 8,
                target | pte::P | pte::RW | pte::A | pte::D | pte::PS | pte::NX,
            )?;
        }
    }
    Ok(l3 | upper)
}

/// Writes the M2P table (identity: machine frame == guest-physical frame) at `table`,
/// after the fixed part of the region, and maps it read-only at `contract::M2P_VA`;
/// returns the L4 entry for its slot.
fn build_m2p(mem: &GuestMemoryMmap, table: u64, ram_frames: u64) -> Result<u64> {
    let pages = m2p_pages(ram_frames);
    let entries: Vec<u8> = (0..pages * 512)
        .flat_map(|mfn| if mfn < ram_frames { mfn } else { u64::MAX }.to_le_bytes())
        .collect();
    write(mem, table, &entries)?;
    let l1s = table + pages * 0x1000;
    let n_l1 = pages.div_ceil(512);
    if n_l1 > 512 {
        return Err(Error::Memory(table));
    }
    let l3 = l1s + n_l1 * 0x1000;
    let l2 = l3 + 0x1000;
    let upper = pte::P | pte::RW | pte::U | pte::A;
    for page in 0..pages {
        write_u64(
            mem,
            l1s + page * 8,
            (table + page * 0x1000) | pte::P | pte::U | pte::A | pte::NX,
        )?;
    }
    for i in 0..n_l1 {
        write_u64(mem, l2 + i * 8, (l1s + i * 0x1000) | upper)?;
    }
    let m2p_va = contract::M2P_VA;
    write_u64(mem, l3 + ((m2p_va >> 30) & 511) * 8, l2 | upper)?;
    Ok(l3 | upper)
}

/// Pages of one vCPU block the shim maps, with their flags (offsets in the block): the
/// text read-only and user-executable (the `syscall` stub runs at CPL3), the
/// guest-state page user-readable, the rest supervisor data. The pages between the TSS
/// and the ring-0 stack and between the two stacks stay unmapped, as guards.
const BLOCK_PAGES: &[(u64, u64, u64)] = &[
    (
        layout::vcpu::TEXT,
        layout::vcpu::TEXT_SIZE,
        pte::P | pte::U | pte::A,
    ),
    (
        layout::vcpu::GUEST_STATE,
        0x1000,
        pte::P | pte::U | pte::A | pte::NX,
    ),
    (
        layout::vcpu::GDT,
        layout::vcpu::GDT_SIZE,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    ),
    (layout::vcpu::IDT, 0x1000, pte::P | pte::A | pte::NX),
    (
        layout::vcpu::TSS,
        layout::vcpu::TSS_PAGES * 0x1000,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    ),
    (
        layout::vcpu::STACK - layout::vcpu::STACK_SIZE,
        layout::vcpu::STACK_SIZE,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    ),
    (
        layout::vcpu::POSTED,
        layout::vcpu::POSTED_SIZE,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    ),
    (
        layout::vcpu::DF_STACK - layout::vcpu::DF_STACK_SIZE,
        layout::vcpu::DF_STACK_SIZE,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    ),
];

/// Writes IDT gate `vector` of the block at `block_gpa`: an interrupt gate to `handler`;
/// int3/into may be raised from ring 3 (DPL3); a double fault gets its own stack (IST1).
fn write_gate(mem: &GuestMemoryMmap, block_gpa: u64, vector: usize, handler: u64) -> Result<()> {
    let user_gate = matches!(vector, 3 | 4) || vector == usize::from(contract::FAST_GATE_VECTOR);
    let dpl: u64 = if user_gate { 3 } else { 0 };
    let ist: u64 = if vector == 8 { 1 } else { 0 };
    let lo = (handler & 0xffff)
        | (u64::from(shim_sel::HYPERVISOR_CS) << 16)
        | (ist << 32)
        | ((0x8e | (dpl << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    let idt_entry = block_gpa + layout::vcpu::IDT + 16 * vector as u64;
    write_u64(mem, idt_entry, lo)?;
    write_u64(mem, idt_entry + 8, handler >> 32)
}

/// A vCPU's TSS I/O permission bitmap (65536 port bits, then the all-ones byte the CPU
/// may read past the last one). Closed: ring 3 reaches only the hypercall doorbell, and
/// any other port I/O raises #GP, which the engine (or the #GP stub) answers. Open:
/// every port but the shim's ring-0 doorbells, so the guest kernel's own port I/O
/// reaches the VMM as a plain I/O exit with nothing in between (half the cost of the #GP
/// path on a software-KVM host). The VMM opens it only while the engine would answer
/// such I/O anyway (guest kernel mode under its virtual IOPL), so the exit needs no
/// decision.
pub fn io_bitmap(open: bool) -> &'static [u8] {
    static BITMAPS: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    &BITMAPS.get_or_init(|| [build_io_bitmap(false), build_io_bitmap(true)])[usize::from(open)]
}

fn build_io_bitmap(open: bool) -> Vec<u8> {
    let mut bitmap = vec![if open { 0 } else { 0xff }; 8192 + 1];
    bitmap[8192] = 0xff;
    let mut set = |p: u16, allowed: bool| {
        let (byte, bit) = (usize::from(p / 8), p % 8);
        if allowed {
            bitmap[byte] &= !(1 << bit);
        } else {
            bitmap[byte] |= 1 << bit;
        }
    };
    set(port::HYPERCALL, true);
    // Ring 3 must never ring these: the VMM trusts them to come from the shim's ring 0.
    set(port::TRAP, false);
    set(port::APPLY_MORE, false);
    bitmap
}

impl VcpuShim {
    /// Writes this vCPU's I/O bitmap, open or closed (see [`io_bitmap`]).
    pub fn write_io_bitmap(&self, mem: &GuestMemoryMmap, open: bool) -> Result<()> {
        write(
            mem,
            self.block_gpa + layout::vcpu::TSS + layout::vcpu::TSS_IOPB,
            io_bitmap(open),
        )
    }
}

/// Writes vCPU `id`'s block of a region at `gpa` (its text copy, GDT, IDT, TSS and I/O
/// bitmap, guest-state page) and returns where its parts are.
fn build_block(
    mem: &GuestMemoryMmap,
    gpa: u64,
    image: &ShimImage,
    id: u32,
    nr_vcpus: u32,
) -> Result<VcpuShim> {
    let block = layout::vcpu_block(id);
    let block_gpa = gpa + block;
    write(mem, block_gpa + layout::vcpu::TEXT, &image.bytes)?;
    let va = |off: u64| SHIM_VA_BASE + block + off;
    let text = va(layout::vcpu::TEXT);

    // GDT: the Xen-reserved entries; the guest's 14 pages stay empty until set_gdt.
    let gdt = block_gpa + layout::vcpu::GDT;
    let entry = |sel: u16| gdt + u64::from(sel & !7);
    write_u64(mem, entry(shim_sel::HYPERVISOR_CS), descriptor(0xa09b))?; // L, P, DPL0, code
    write_u64(mem, entry(shim_sel::HYPERVISOR_DS), descriptor(0xc093))?; // P, DPL0, data
    write_u64(mem, entry(selector::FLAT_RING3_CS32), descriptor(0xc0fb))?; // D, P, DPL3, code
    write_u64(mem, entry(selector::FLAT_RING3_DS32), descriptor(0xc0f3))?; // P, DPL3, data
    write_u64(mem, entry(selector::FLAT_RING3_CS64), descriptor(0xa0fb))?; // L, P, DPL3, code
                                                                           // Each GDT describes its own block's TSS: a vCPU's TR must not share another's
                                                                           // stacks (and a TSS is busy on one CPU at a time).
    let tss_va = va(layout::vcpu::TSS);
    let limit = layout::vcpu::TSS_LIMIT;
    let tss_lo = (limit & 0xffff)
        | ((tss_va & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL0, busy 64-bit TSS (TR is loaded through sregs)
        | (((limit >> 16) & 0xf) << 48)
        | (((tss_va >> 24) & 0xff) << 56);
    write_u64(mem, entry(shim_sel::TSS), tss_lo)?;
    write_u64(mem, entry(shim_sel::TSS) + 8, tss_va >> 32)?;

    // IDT: every vector to its stub in this block's text copy (whose rip-relative
    // accesses then reach this vCPU's pages) through an interrupt gate; int3/into may
    // be raised from ring 3 (DPL3); a double fault gets its own stack (IST1).
    let hdr = image.header();
    for vector in 0..contract::NR_VECTORS {
        write_gate(
            mem,
            block_gpa,
            vector,
            text + u64::from(hdr.vector_entry[vector]),
        )?;
    }

    // TSS: this vCPU's ring-0 stack, IST1, and the I/O bitmap (closed: ring 3 reaches
    // only the hypercall doorbell).
    let tss = block_gpa + layout::vcpu::TSS;
    write_u64(mem, tss + 4, va(layout::vcpu::STACK))?;
    write_u64(mem, tss + 36, va(layout::vcpu::DF_STACK))?;
    write(
        mem,
        tss + 102,
        &(layout::vcpu::TSS_IOPB as u16).to_le_bytes(),
    )?;
    write(mem, tss + layout::vcpu::TSS_IOPB, io_bitmap(false))?;

    // The syscall stub's view of the guest: the kernel runs first. Every in-VM answer
    // is on until the VMM chooses ([`ShimRegion::set_in_vm`]).
    let state = xen_abi::contract::GuestStatePage {
        kernel_mode: 1,
        nr_vcpus,
        in_vm: contract::in_vm::ALL,
        kernel_io_ok: 0,
    };
    let guest_state_gpa = block_gpa + layout::vcpu::GUEST_STATE;
    write(mem, guest_state_gpa, state.as_bytes())?;

    Ok(VcpuShim {
        id,
        text_va: text,
        block_gpa,
        syscall_entry: text + u64::from(hdr.syscall_entry),
        syscall_doorbell_end: text + u64::from(hdr.syscall_doorbell_end),
        syscall_fixup: text + u64::from(hdr.syscall_fixup_start)
            ..text + u64::from(hdr.syscall_fixup_end),
        syscall_slow_path: text + u64::from(hdr.syscall_slow_path),
        pkru_reset: text + u64::from(hdr.pkru_reset),
        pkru_reset_doorbell_end: text + u64::from(hdr.pkru_reset_doorbell_end),
        gp_fixup: text + u64::from(hdr.gp_fixup_start)..text + u64::from(hdr.gp_fixup_end),
        gp_fixup_resume: text + u64::from(hdr.gp_fixup_resume),
        gp_entry: text + u64::from(hdr.vector_entry[13]),
        gp_plain: text + u64::from(hdr.gp_plain),
        apply_entry: text + u64::from(hdr.apply_entry),
        apply_more_doorbell_end: text + u64::from(hdr.apply_more_doorbell_end),
        apply_one: text + u64::from(hdr.apply_one),
        apply_flush_all: text + u64::from(hdr.apply_flush_all),
        trap_return: text + u64::from(hdr.trap_return),
        apply_list: text + u64::from(hdr.apply_list),
        apply_list_flush_all: text + u64::from(hdr.apply_list_flush_all),
        stack_top: va(layout::vcpu::STACK),
        guest_state_gpa,
        posted_gpa: block_gpa + layout::vcpu::POSTED,
        region_gpa: gpa,
        region_mapped: layout::size(nr_vcpus),
        l1_gpa: gpa + layout::pagetables(nr_vcpus) + 0x2000,
    })
}

/// Writes the shim region at `gpa` for a guest of `ram_frames` frames and `nr_vcpus`
/// vCPUs (1..=`MAX_VCPUS`) and returns where things are.
pub fn build_region(
    mem: &GuestMemoryMmap,
    gpa: u64,
    image: &ShimImage,
    ram_frames: u64,
    nr_vcpus: u32,
) -> Result<ShimRegion> {
    let size = region_size(ram_frames, nr_vcpus)?;
    let vcpus = (0..nr_vcpus)
        .map(|id| build_block(mem, gpa, image, id, nr_vcpus))
        .collect::<Result<Vec<_>>>()?;

    // The shim's pagetables: L3 -> L2 -> the L1s mapping the region linearly from its
    // base, as far as the last block.
    let l3 = gpa + layout::pagetables(nr_vcpus);
    let l2 = l3 + 0x1000;
    let l1s = l2 + 0x1000;
    let upper = pte::P | pte::RW | pte::U | pte::A;
    write_u64(mem, l3, l2 | upper)?;
    for i in 0..layout::l1_pages(nr_vcpus) {
        write_u64(mem, l2 + i * 8, (l1s + i * 0x1000) | upper)?;
    }
    // An L1 entry per mapped page: entry n of the L1s (taken as one array) maps region
    // page n.
    let map = |off: u64, flags: u64| write_u64(mem, l1s + (off >> 12) * 8, (gpa + off) | flags);
    map(
        layout::SHARED_INFO,
        pte::P | pte::RW | pte::A | pte::D | pte::NX,
    )?;
    for id in 0..nr_vcpus {
        let block = layout::vcpu_block(id);
        for &(off, len, flags) in BLOCK_PAGES {
            for page in (off..off + len).step_by(0x1000) {
                map(block + page, flags)?;
            }
        }
    }

    let slot = ((SHIM_VA_BASE >> 39) & 511) as usize;
    let mut hole_l4 = [0u64; 16];
    hole_l4[slot - xen_abi::xen::HOLE_FIRST_L4_SLOT] = l3 | upper;
    let m2p_gpa = gpa + layout::size(nr_vcpus);
    let m2p_slot = ((contract::M2P_VA >> 39) & 511) as usize;
    hole_l4[m2p_slot - xen_abi::xen::HOLE_FIRST_L4_SLOT] = build_m2p(mem, m2p_gpa, ram_frames)?;
    let dm_slot = ((contract::DIRECTMAP_VA >> 39) & 511) as usize;
    hole_l4[dm_slot - xen_abi::xen::HOLE_FIRST_L4_SLOT] =
        build_directmap(mem, gpa, ram_frames, nr_vcpus)?;

    Ok(ShimRegion {
        gpa,
        size,
        hole_l4,
        shared_info_gpa: gpa + layout::SHARED_INFO,
        grant_table_gpa: gpa + layout::GRANT_TABLE,
        m2p_gpa,
        m2p_bytes: m2p_pages(ram_frames) * 0x1000,
        vcpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_shim_has_a_valid_header() {
        let image = ShimImage::embedded().expect("embedded shim");
        let h = image.header();
        assert!(h.syscall_doorbell_end > h.syscall_entry);
        // The doorbell is `out %al, $imm8` (e6 xx) right before syscall_doorbell_end.
        let end = h.syscall_doorbell_end as usize;
        assert_eq!(&image.bytes[end - 2..end], &[0xe6, port::HYPERCALL as u8]);
    }

    #[test]
    fn stubs_use_no_simd_registers() {
        // The shim must not touch guest SSE/AVX state: no byte sequence of the stubs
        // may decode to an xmm/ymm instruction. The stubs are tiny; check each opcode.
        let image = ShimImage::embedded().expect("embedded shim");
        for &off in image.header().vector_entry.iter() {
            let stub = &image.bytes[off as usize..off as usize + 16];
            assert!(!stub
                .windows(2)
                .any(|w| w[0] == 0x0f
                    && (w[1] == 0x28 || w[1] == 0x29 || w[1] == 0x10 || w[1] == 0x11)));
        }
    }

    /// Guest memory holding just a shim region for `frames` RAM frames and `nr_vcpus`
    /// vCPUs, at `base`, and the region built there.
    fn built(base: u64, frames: u64, nr_vcpus: u32) -> (GuestMemoryMmap, ShimRegion) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(base),
            region_size(frames, nr_vcpus).unwrap() as usize,
        )])
        .unwrap();
        let image = ShimImage::embedded().unwrap();
        let region = build_region(&mem, base, &image, frames, nr_vcpus).unwrap();
        (mem, region)
    }

    fn read_u64(mem: &GuestMemoryMmap, gpa: u64) -> u64 {
        mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    /// The shim's own translation of `va` (through its L3, L2, L1): the target and the
    /// entry's flags.
    fn shim_walk(mem: &GuestMemoryMmap, region: &ShimRegion, va: u64) -> Option<(u64, u64)> {
        let slot = ((va >> 39) & 511) as usize;
        let mut entry = region.hole_l4[slot - xen_abi::xen::HOLE_FIRST_L4_SLOT];
        for shift in [30u32, 21, 12] {
            if entry & pte::P == 0 {
                return None;
            }
            entry = read_u64(mem, (entry & pte::ADDR_MASK) + ((va >> shift) & 511) * 8);
        }
        (entry & pte::P != 0).then_some((entry & pte::ADDR_MASK, entry & !pte::ADDR_MASK))
    }

    #[test]
    fn region_maps_only_the_doorbell_port_for_ring3() {
        let (mem, region) = built(0x10_0000, 1024, 1);
        let v = region.vcpu0();
        let bitmap_gpa = v.block_gpa + layout::vcpu::TSS + layout::vcpu::TSS_IOPB;
        let mut bitmap = vec![0u8; 8193];
        mem.read_slice(&mut bitmap, GuestAddress(bitmap_gpa))
            .unwrap();
        let open: Vec<usize> = (0..65536)
            .filter(|p| bitmap[p / 8] & (1 << (p % 8)) == 0)
            .collect();
        assert_eq!(open, vec![usize::from(port::HYPERCALL)]);
        assert_eq!(bitmap[8192], 0xff);

        // Opened for the guest kernel's port I/O: every port but the ring-0 doorbells.
        v.write_io_bitmap(&mem, true).unwrap();
        mem.read_slice(&mut bitmap, GuestAddress(bitmap_gpa))
            .unwrap();
        let closed: Vec<usize> = (0..65536)
            .filter(|p| bitmap[p / 8] & (1 << (p % 8)) != 0)
            .collect();
        assert_eq!(
            closed,
            vec![usize::from(port::TRAP), usize::from(port::APPLY_MORE)]
        );
        assert_eq!(bitmap[8192], 0xff);
        v.write_io_bitmap(&mem, false).unwrap();
        mem.read_slice(&mut bitmap, GuestAddress(bitmap_gpa))
            .unwrap();
        assert_eq!(bitmap, io_bitmap(false));
        assert_eq!(
            region.va_to_gpa(v.stack_top - 8),
            Some(v.block_gpa + layout::vcpu::STACK - 8)
        );
    }

    #[test]
    fn vcpu_counts_outside_the_contract_are_refused() {
        for n in [0, contract::MAX_VCPUS + 1] {
            assert!(matches!(region_size(1024, n), Err(Error::VcpuCount(m)) if m == n));
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x40_0000)])
                .unwrap();
            let image = ShimImage::embedded().unwrap();
            assert!(matches!(
                build_region(&mem, 0x10_0000, &image, 1024, n),
                Err(Error::VcpuCount(_))
            ));
        }
        assert!(region_size(1024, contract::MAX_VCPUS).is_ok());
    }

    #[test]
    fn region_size_grows_by_one_block_per_vcpu() {
        // The fixed part grows by a stride per vCPU; the shim's L1s by one page per
        // 2 MiB of blocks. The M2P and direct-map parts depend on RAM only (the direct
        // map's L2 count changes only across 1 GiB).
        let frames = 1 << 18;
        let base = region_size(frames, 1).unwrap();
        for n in 2..=contract::MAX_VCPUS {
            let grown = region_size(frames, n).unwrap() - base;
            let l1s = layout::l1_pages(n) - layout::l1_pages(1);
            assert_eq!(grown, u64::from(n - 1) * layout::VCPU_STRIDE + l1s * 0x1000);
        }
        assert_eq!(layout::l1_pages(1), 1);
    }

    #[test]
    fn the_gp_gate_follows_the_in_vm_choice() {
        let (mem, region) = built(0x20_0000, 1024, 2);
        let hdr = *ShimImage::embedded().unwrap().header();
        let gate13 = |v: &VcpuShim| {
            let gate = v.block_gpa + layout::vcpu::IDT + 16 * 13;
            let (lo, hi) = (read_u64(&mem, gate), read_u64(&mem, gate + 8));
            (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32)
        };
        region
            .set_in_vm(&mem, contract::in_vm::IS_UP | contract::in_vm::INVLPG_LOCAL)
            .unwrap();
        for v in region.vcpus() {
            // Straight to the doorbell stub, which is the 16-byte stub of vector 13.
            assert_eq!(gate13(v), v.text_va + u64::from(hdr.gp_plain));
            assert_eq!(
                u64::from(hdr.gp_plain),
                u64::from(hdr.vector_entry[12]) + 16
            );
        }
        region.set_in_vm(&mem, contract::in_vm::ALL).unwrap();
        for v in region.vcpus() {
            assert_eq!(gate13(v), v.text_va + u64::from(hdr.vector_entry[13]));
        }
    }

    /// Checks a region of `n` vCPUs: blocks apart from each other and from the domain
    /// part, each one's IDT, TSS and GDT its own, and the shim mapping every block page.
    fn check_blocks(n: u32) {
        let (mem, region) = built(0x20_0000, 1024, n);
        let image = ShimImage::embedded().unwrap();
        let hdr = image.header();
        assert_eq!(region.nr_vcpus(), n);
        assert!(region.vcpu(n).is_none());
        let domain = [
            region.shared_info_gpa..region.shared_info_gpa + 0x1000,
            region.grant_table_gpa..region.grant_table_gpa + layout::GRANT_FRAMES * 0x1000,
            region.gpa + layout::pagetables(n)..region.gpa + layout::size(n),
            region.m2p_gpa..region.gpa + region.size,
        ];
        let blocks: Vec<_> = region
            .vcpus()
            .iter()
            .map(|v| v.block_gpa..v.block_gpa + layout::VCPU_STRIDE)
            .collect();
        for (i, b) in blocks.iter().enumerate() {
            assert!(b.end <= region.gpa + layout::pagetables(n));
            for (j, other) in blocks.iter().enumerate().filter(|&(j, _)| j != i) {
                assert!(b.end <= other.start || other.end <= b.start, "{i} and {j}");
            }
            for d in &domain {
                assert!(b.end <= d.start || d.end <= b.start, "block {i} and {d:x?}");
            }
        }

        for (i, v) in region.vcpus().iter().enumerate() {
            assert_eq!(v.id, i as u32);
            assert_eq!(v.block_gpa, region.gpa + layout::vcpu_block(v.id));
            let block_va = SHIM_VA_BASE + layout::vcpu_block(v.id);
            let sregs = v.initial_sregs(Sregs::default(), 0x1000, false);
            assert_eq!(sregs.gdt.base, block_va + layout::vcpu::GDT);
            assert_eq!(sregs.idt.base, block_va + layout::vcpu::IDT);
            assert_eq!(sregs.tr.base, block_va + layout::vcpu::TSS);
            let lstar = v
                .msrs()
                .iter()
                .find(|m| m.index == 0xc000_0082)
                .unwrap()
                .data;
            assert_eq!(lstar, v.syscall_entry);
            assert!(v.in_text(v.syscall_entry) && v.in_text(v.apply_entry));
            assert!(v.in_text(v.apply_one) && v.in_text(v.apply_flush_all));
            assert!(v.in_text(v.trap_return));
            assert!(v.in_text(v.apply_list) && v.in_text(v.apply_list_flush_all));
            assert!(v.in_text(v.syscall_doorbell_end));
            assert_eq!(
                v.va_to_gpa(v.syscall_entry),
                region.va_to_gpa(v.syscall_entry)
            );

            // Every gate leads into this block's text copy, to the vector's stub.
            for vector in 0..contract::NR_VECTORS {
                let gate = v.block_gpa + layout::vcpu::IDT + 16 * vector as u64;
                let (lo, hi) = (read_u64(&mem, gate), read_u64(&mem, gate + 8));
                let handler = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32);
                assert_eq!(handler, v.text_va + u64::from(hdr.vector_entry[vector]));
                assert!(v.in_text(handler));
            }
            // The text copy is the image.
            let mut text = vec![0u8; image.bytes.len()];
            mem.read_slice(&mut text, GuestAddress(v.block_gpa))
                .unwrap();
            assert_eq!(text, image.bytes);

            // rsp0 and IST1 are this block's stacks.
            let tss = v.block_gpa + layout::vcpu::TSS;
            assert_eq!(read_u64(&mem, tss + 4), v.stack_top);
            assert_eq!(v.stack_top, block_va + layout::vcpu::STACK);
            assert_eq!(read_u64(&mem, tss + 36), block_va + layout::vcpu::DF_STACK);

            // The GDT's TSS descriptor is this block's TSS.
            let desc = v.block_gpa + layout::vcpu::GDT + u64::from(shim_sel::TSS);
            let (lo, hi) = (read_u64(&mem, desc), read_u64(&mem, desc + 8));
            let base = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
            assert_eq!(base, block_va + layout::vcpu::TSS);
            assert_eq!(
                read_u64(
                    &mem,
                    v.block_gpa + layout::vcpu::GDT + u64::from(shim_sel::HYPERVISOR_CS)
                ),
                descriptor(0xa09b)
            );

            let mut state = [0u8; core::mem::size_of::<contract::GuestStatePage>()];
            mem.read_slice(&mut state, GuestAddress(v.guest_state_gpa))
                .unwrap();
            let state = contract::GuestStatePage::read_from_bytes(&state).unwrap();
            assert_eq!(
                (state.kernel_mode, state.nr_vcpus, state.in_vm),
                (1, n, contract::in_vm::ALL)
            );
            assert_eq!(v.posted_gpa, v.block_gpa + layout::vcpu::POSTED);

            // The shim maps each block page where it lies, with the part's flags, and
            // leaves the guard pages unmapped.
            let mut mapped = vec![None; (layout::VCPU_STRIDE >> 12) as usize];
            for &(off, len, flags) in BLOCK_PAGES {
                for page in (off..off + len).step_by(0x1000) {
                    mapped[(page >> 12) as usize] = Some(flags);
                }
            }
            for (page, want) in mapped.iter().enumerate() {
                let off = page as u64 * 0x1000;
                let got = shim_walk(&mem, &region, block_va + off);
                assert_eq!(
                    got,
                    want.map(|f| (v.block_gpa + off, f)),
                    "vCPU {i} page {page}"
                );
            }
            assert_eq!(
                shim_walk(&mem, &region, block_va + layout::vcpu::TEXT).map(|(_, f)| f),
                Some(pte::P | pte::U | pte::A),
                "text: read-only, user-executable"
            );
            assert_eq!(
                shim_walk(&mem, &region, v.stack_top - 8).map(|(_, f)| f),
                Some(pte::P | pte::RW | pte::A | pte::D | pte::NX)
            );

            // The entry set_gdt rewrites is the one that maps this GDT's page.
            for page in [0usize, 13] {
                let (l1, slot, value) = v.gdt_page_entry(page, Some(0x1234));
                let gdt_va = v.gdt_page_va(page);
                assert_eq!(gdt_va, block_va + layout::vcpu::GDT + page as u64 * 0x1000);
                let entry = read_u64(&mem, (l1 << 12) + slot as u64 * 8);
                let expect = (v.block_gpa + layout::vcpu::GDT + page as u64 * 0x1000)
                    | pte::P
                    | pte::RW
                    | pte::A
                    | pte::D
                    | pte::NX;
                assert_eq!(entry, expect);
                assert_eq!(
                    shim_walk(&mem, &region, gdt_va),
                    Some((expect & pte::ADDR_MASK, expect & !pte::ADDR_MASK))
                );
                assert_eq!(value, (0x1234 << 12) | (expect & !pte::ADDR_MASK));
                assert_eq!(v.gdt_page_entry(page, None).2, expect);
            }
        }
        // shared_info's next frame is no grant frame (the guest may map those; the
        // hostile guest tests expect that neighbour refused).
        assert_eq!(region.shared_info_gpa + 0x1000, region.vcpu0().block_gpa);
        // shared_info stays mapped for the shim, the grant table does not.
        let si = shim_walk(&mem, &region, SHIM_VA_BASE + layout::SHARED_INFO);
        assert_eq!(si.map(|(a, _)| a), Some(region.shared_info_gpa));
        assert!(shim_walk(&mem, &region, SHIM_VA_BASE + layout::GRANT_TABLE).is_none());
        // Nothing past the last block.
        assert!(shim_walk(&mem, &region, SHIM_VA_BASE + layout::vcpu_block(n)).is_none());
        assert_eq!(
            region.va_to_gpa(SHIM_VA_BASE + layout::vcpu_block(n) - 1),
            Some(region.gpa + layout::vcpu_block(n) - 1)
        );
        assert_eq!(region.va_to_gpa(SHIM_VA_BASE + layout::size(n)), None);
    }

    #[test]
    fn one_vcpu_gets_one_block() {
        check_blocks(1);
    }

    #[test]
    fn two_vcpus_get_two_blocks() {
        check_blocks(2);
    }

    #[test]
    fn five_vcpus_get_five_blocks() {
        check_blocks(5);
    }

    #[test]
    fn blocks_past_the_first_l1_are_mapped() {
        // 12 blocks end past 2 MiB: the second L1 maps the rest.
        assert!(layout::vcpu_block(12) > 1 << 21);
        check_blocks(12);
    }

    #[test]
    fn m2p_is_the_identity_and_read_only() {
        let frames = 5000;
        let base = 0x10_0000;
        let (mem, mut region) = built(base, frames, 1);
        assert_eq!(region.hole_l4[0], 0, "slot 256 is left alone by default");
        region.map_m2p_at_abi();
        assert_eq!(region.m2p_bytes, (frames * 8).div_ceil(0x1000) * 0x1000);
        let walk = |va: u64| -> Option<(u64, u64)> {
            let slot = ((va >> 39) & 511) as usize;
            let mut entry = region.hole_l4[slot - 256];
            let mut flags = entry;
            for shift in [30u32, 21, 12] {
                if entry & pte::P == 0 {
                    return None;
                }
                let table = entry & pte::ADDR_MASK;
                entry = mem
                    .read_obj::<u64>(GuestAddress(table + ((va >> shift) & 511) * 8))
                    .unwrap();
                flags &= entry | !(pte::RW | pte::U);
            }
            (entry & pte::P != 0).then_some((entry & pte::ADDR_MASK, flags))
        };
        for m2p in [contract::M2P_VA, xen_abi::xen::MACH2PHYS_VIRT_START] {
            check_m2p(&walk, &mem, m2p, frames);
        }
    }

    fn check_m2p(
        walk: &dyn Fn(u64) -> Option<(u64, u64)>,
        mem: &GuestMemoryMmap,
        m2p: u64,
        frames: u64,
    ) {
        for mfn in [0u64, 1, 511, 512, 4999] {
            let (page, flags) = walk(m2p + mfn * 8).expect("M2P entry mapped");
            assert_eq!(flags & pte::RW, 0, "M2P must be read-only");
            assert_ne!(flags & pte::U, 0, "the guest kernel (CPL3) reads the M2P");
            let value: u64 = mem
                .read_obj(GuestAddress(page + (mfn * 8) % 0x1000))
                .unwrap();
            assert_eq!(value, mfn);
        }
        let last_page_end = m2p + (frames * 8).div_ceil(0x1000) * 0x1000;
        assert!(
            walk(last_page_end).is_none(),
            "nothing mapped past the table"
        );
    }
}
