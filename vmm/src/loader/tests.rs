//! Loader tests: a hand-made PV ELF (and bzImages wrapping it in every supported
//! compression) is parsed, planned and built into guest memory, and the result is
//! checked by walking the pagetables like the MMU would. Plus the hostile inputs, an
//! xz-utils fixture with the x86 BCJ filter, and the real Debian kernels (bookworm cloud
//! and generic, trixie cloud) when `guest-images/scripts/fetch-debian-kernel.sh` has
//! fetched them.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::elfnote;
use xen_abi::xen::{sif, StartInfo};
use zerocopy::FromBytes;

use super::*;

const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
const KERNEL_PADDR: u64 = 0x20_0000;
const TEXT_SIZE: u64 = 0x3000;
const BSS_SIZE: u64 = 0x2000;
const HYPERCALL_OFF: u64 = 0x1000;
const ENTRY_OFF: u64 = 0x10;
const INIT_P2M: u64 = 0x80_0000_0000;

/// Options of the synthetic kernel.
#[derive(Clone)]
struct Synth {
    init_p2m: bool,
    mod_start_pfn: bool,
    hypercall_page: bool,
    guest_os: &'static str,
    xen_version: &'static str,
    notes: bool,
    notes_in_section_only: bool,
    entry: u64,
}

impl Default for Synth {
    fn default() -> Self {
        Synth {
            init_p2m: true,
            mod_start_pfn: true,
            hypercall_page: true,
            guest_os: "linux",
            xen_version: "xen-3.0",
            notes: true,
            notes_in_section_only: false,
            entry: VIRT_BASE + KERNEL_PADDR + ENTRY_OFF,
        }
    }
}

fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(b"Xen\0");
    out.extend_from_slice(desc);
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The text/data bytes of the synthetic kernel: a recognisable pattern per page.
fn text_pattern(i: u64) -> u8 {
    ((i / PAGE_SIZE) as u8)
        .wrapping_mul(0x11)
        .wrapping_add(0x5a)
        ^ (i as u8)
}

/// Writes a little ELF64 x86-64 PV kernel by hand: one PT_LOAD (text + data + bss) at
/// paddr 0x200000 and a PT_NOTE with the Xen notes Linux carries.
fn synth_elf(o: &Synth) -> Vec<u8> {
    let mut notes = Vec::new();
    if o.notes {
        note(&mut notes, elfnote::GUEST_OS, &cstr(o.guest_os));
        note(&mut notes, elfnote::GUEST_VERSION, &cstr("2.6"));
        note(&mut notes, elfnote::XEN_VERSION, &cstr(o.xen_version));
        note(&mut notes, elfnote::VIRT_BASE, &VIRT_BASE.to_le_bytes());
        note(&mut notes, elfnote::PADDR_OFFSET, &0u64.to_le_bytes());
        note(&mut notes, elfnote::ENTRY, &o.entry.to_le_bytes());
        if o.hypercall_page {
            note(
                &mut notes,
                elfnote::HYPERCALL_PAGE,
                &(VIRT_BASE + KERNEL_PADDR + HYPERCALL_OFF).to_le_bytes(),
            );
        }
        if o.init_p2m {
            note(&mut notes, elfnote::INIT_P2M, &INIT_P2M.to_le_bytes());
        }
        note(
            &mut notes,
            elfnote::FEATURES,
            &cstr("!writable_page_tables|pae_pgdir_above_4gb"),
        );
        note(
            &mut notes,
            elfnote::SUPPORTED_FEATURES,
            &0x8801u32.to_le_bytes(),
        );
        note(&mut notes, elfnote::PAE_MODE, &cstr("yes"));
        let l1 = [1u64.to_le_bytes(), 1u64.to_le_bytes()].concat();
        note(&mut notes, elfnote::L1_MFN_VALID, &l1);
        note(&mut notes, elfnote::LOADER, &cstr("generic"));
        note(&mut notes, elfnote::SUSPEND_CANCEL, &1u32.to_le_bytes());
        note(
            &mut notes,
            elfnote::HV_START_LOW,
            &0xffff_8000_0000_0000u64.to_le_bytes(),
        );
        if o.mod_start_pfn {
            note(&mut notes, elfnote::MOD_START_PFN, &1u32.to_le_bytes());
        }
    }
    // Layout: ehdr 64, 2 phdrs (112) at 64, notes at 0x100, text at 0x1000,
    // section headers (null + .notes + .shstrtab) after the text.
    let note_off = 0x100u64;
    let text_off = 0x1000u64;
    let shstr = b"\0.notes\0.shstrtab\0";
    let shstr_off = text_off + TEXT_SIZE;
    let sh_off = (shstr_off + shstr.len() as u64 + 7) & !7;
    let phnum: u16 = if o.notes_in_section_only { 1 } else { 2 };
    let mut f = vec![0u8; (sh_off + 3 * 64) as usize];
    let put = |f: &mut Vec<u8>, at: u64, b: &[u8]| {
        f[at as usize..at as usize + b.len()].copy_from_slice(b);
    };
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(
        &mut f,
        24,
        &(VIRT_BASE + KERNEL_PADDR + ENTRY_OFF).to_le_bytes(),
    );
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 40, &sh_off.to_le_bytes()); // e_shoff
    put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut f, 56, &phnum.to_le_bytes());
    put(&mut f, 58, &64u16.to_le_bytes()); // e_shentsize
    put(&mut f, 60, &3u16.to_le_bytes()); // e_shnum
    put(&mut f, 62, &2u16.to_le_bytes()); // e_shstrndx
    let phdr =
        |f: &mut Vec<u8>, at: u64, ty: u32, flags: u32, off, addr: u64, fsz, msz, al: u64| {
            put(f, at, &ty.to_le_bytes());
            put(f, at + 4, &flags.to_le_bytes());
            put(f, at + 8, &u64::to_le_bytes(off));
            put(f, at + 16, &(addr + VIRT_BASE).to_le_bytes());
            put(f, at + 24, &addr.to_le_bytes());
            put(f, at + 32, &u64::to_le_bytes(fsz));
            put(f, at + 40, &u64::to_le_bytes(msz));
            put(f, at + 48, &al.to_le_bytes());
        };
    phdr(
        &mut f,
        64,
        1,
        7,
        text_off,
        KERNEL_PADDR,
        TEXT_SIZE,
        TEXT_SIZE + BSS_SIZE,
        0x1000,
    );
    if !o.notes_in_section_only {
        let n = notes.len() as u64;
        phdr(&mut f, 120, 4, 4, note_off, 0, n, n, 4);
    }
    put(&mut f, note_off, &notes);
    for i in 0..TEXT_SIZE {
        f[(text_off + i) as usize] = text_pattern(i);
    }
    put(&mut f, shstr_off, shstr);
    // Section 1: .notes (SHT_NOTE), section 2: .shstrtab.
    let sh = |f: &mut Vec<u8>, idx: u64, name: u32, ty: u32, off: u64, size: u64, al: u64| {
        let at = sh_off + idx * 64;
        put(f, at, &name.to_le_bytes());
        put(f, at + 4, &ty.to_le_bytes());
        put(f, at + 24, &off.to_le_bytes());
        put(f, at + 32, &size.to_le_bytes());
        put(f, at + 48, &al.to_le_bytes());
    };
    sh(&mut f, 1, 1, 7, note_off, notes.len() as u64, 4);
    sh(&mut f, 2, 8, 3, shstr_off, shstr.len() as u64, 1);
    f
}

/// Wraps `payload` (already compressed) into a minimal bzImage with protocol 2.15.
pub(super) fn bzimage(payload: &[u8], setup_sects: u8) -> Vec<u8> {
    let sects = if setup_sects == 0 { 4 } else { setup_sects } as usize;
    let payload_offset = 0x40usize;
    let start = (sects + 1) * 512 + payload_offset;
    let mut f = vec![0u8; start];
    f[0x1f1] = setup_sects;
    f[0x1fe] = 0x55;
    f[0x1ff] = 0xaa;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
    f[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0u8; 64]); // trailing code/data after the payload, like a real bzImage
    f
}

/// Linux's `size_append`: the decompressed size after the compressed stream.
pub(super) fn with_size(mut c: Vec<u8>, raw: &[u8]) -> Vec<u8> {
    c.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    c
}

pub(super) fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}
pub(super) fn xz(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut std::io::Cursor::new(raw), &mut out).unwrap();
    with_size(out, raw)
}
pub(super) fn lzma(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::lzma_compress(&mut std::io::Cursor::new(raw), &mut out).unwrap();
    with_size(out, raw)
}
pub(super) fn zstd(raw: &[u8]) -> Vec<u8> {
    let c = ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest);
    with_size(c, raw)
}
pub(super) fn bzip2(raw: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(raw).unwrap();
    with_size(e.finish().unwrap(), raw)
}
/// lz4 legacy framing with small blocks so there are several, and a repeated magic.
pub(super) fn lz4_legacy(raw: &[u8]) -> Vec<u8> {
    let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
    for (i, chunk) in raw.chunks(0x1000).enumerate() {
        if i == 2 {
            out.extend_from_slice(&0x184c_2102u32.to_le_bytes());
        }
        let c = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
    }
    with_size(out, raw)
}

fn test_cfg(mem: u64) -> DomainConfig {
    let mut hole = [0u64; 16];
    for (i, e) in hole.iter_mut().enumerate() {
        *e = (0x7700_0000 + ((i as u64) << 12)) | 0x63;
    }
    DomainConfig {
        mem_bytes: mem,
        cmdline: "console=hvc0 root=/dev/xvda".into(),
        initrd: None,
        shared_info_gpa: 0xfee0_0000_0000,
        hole_l4: hole,
        store_evtchn: 1,
        console_evtchn: 2,
    }
}

fn guest_mem(bytes: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
}

/// Translation as the MMU does it: VA -> (GPA, writable).
fn walk(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<(u64, bool)> {
    let mut table = cr3;
    let mut writable = true;
    for level in (0..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 0x1ff;
        let e: u64 = mem.read_obj(GuestAddress(table + idx * 8)).unwrap();
        if e & 1 == 0 {
            return None;
        }
        assert_eq!(e & (1 << 63), 0, "no NX anywhere");
        assert_ne!(e & 4, 0, "U set at every level");
        writable &= e & 2 != 0;
        table = e & 0x000f_ffff_ffff_f000;
    }
    Some((table | (va & 0xfff), writable))
}

#[test]
fn parse_synthetic_elf_notes() {
    let img = KernelImage::parse(&synth_elf(&Synth::default())).unwrap();
    assert_eq!(img.format, ImageFormat::Elf);
    assert_eq!(img.virt_base, VIRT_BASE);
    assert_eq!(img.virt_kstart, VIRT_BASE + KERNEL_PADDR);
    assert_eq!(
        img.virt_kend,
        VIRT_BASE + KERNEL_PADDR + TEXT_SIZE + BSS_SIZE
    );
    assert_eq!(img.virt_entry, VIRT_BASE + KERNEL_PADDR + ENTRY_OFF);
    assert_eq!(img.p2m_base, Some(INIT_P2M));
    assert!(img.unmapped_initrd);
    let n = &img.notes;
    assert_eq!(n.guest_os.as_deref(), Some("linux"));
    assert_eq!(n.loader.as_deref(), Some("generic"));
    assert_eq!(
        n.features.as_deref(),
        Some("!writable_page_tables|pae_pgdir_above_4gb")
    );
    assert_eq!(n.supported_features, Some(0x8801));
    assert_eq!(n.l1_mfn_valid, Some(vec![1, 1]));
    assert_eq!(n.suspend_cancel, Some(1));
    assert_eq!(n.raw.len(), 16);
    let text = format!("{n}");
    assert!(text.contains("GUEST_OS \"linux\"\n"), "{text}");
    assert!(text.contains("INIT_P2M 0x8000000000\n"), "{text}");
    assert!(text.contains("L1_MFN_VALID 0x1 0x1\n"), "{text}");
}

#[test]
fn notes_from_sections_when_no_pt_note() {
    let o = Synth {
        notes_in_section_only: true,
        ..Synth::default()
    };
    let img = KernelImage::parse(&synth_elf(&o)).unwrap();
    assert_eq!(img.notes.init_p2m, Some(INIT_P2M));
}

#[test]
fn bzimage_every_compression_gives_the_same_elf() {
    let elf = synth_elf(&Synth::default());
    let cases: [(Compression, Vec<u8>); 6] = [
        (Compression::Gzip, gzip(&elf)),
        (Compression::Xz, xz(&elf)),
        (Compression::Lzma, lzma(&elf)),
        (Compression::Zstd, zstd(&elf)),
        (Compression::Bzip2, bzip2(&elf)),
        (Compression::Lz4Legacy, lz4_legacy(&elf)),
    ];
    for (kind, payload) in cases {
        for sects in [0u8, 27] {
            let img = KernelImage::parse(&bzimage(&payload, sects))
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(
                img.format,
                ImageFormat::BzImage {
                    version: 0x020f,
                    compression: kind
                }
            );
            assert_eq!(img.elf, elf, "{kind:?}");
        }
        // Without Linux's appended size too (other bzImage producers).
        let bare = if kind == Compression::Gzip {
            payload.clone()
        } else {
            payload[..payload.len() - 4].to_vec()
        };
        let img =
            KernelImage::parse(&bzimage(&bare, 5)).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(img.elf, elf, "{kind:?} without size");
    }
}

/// The 8 KiB in testdata/x86-bcj.xz: x86 `call rel32` (E8) instructions whose targets
/// are below 4 KiB, so the x86 BCJ filter rewrites every one, between filler bytes.
fn x86_like() -> Vec<u8> {
    (0u32..1024)
        .flat_map(|i| {
            let rel = i.wrapping_mul(0x9e37_79b9) >> 20;
            let mut insn = [0xe8, 0, 0, 0, 0, 0x90, 0x48, 0x89];
            insn[1..5].copy_from_slice(&rel.to_le_bytes());
            insn
        })
        .collect()
}

/// Linux's x86 xz payloads put the x86 BCJ filter before LZMA2 (scripts/xz_wrap.sh runs
/// `xz --check=crc32 --x86 --lzma2=...,dict=32MiB`); lzma-rs refused them with "Unknown
/// filter id 4". The fixture was made by xz-utils the same way:
/// `xz --format=xz --check=crc32 --x86 --lzma2=dict=1MiB` of [`x86_like`].
#[test]
fn xz_with_the_x86_bcj_filter_decompresses() {
    let fixture = include_bytes!("testdata/x86-bcj.xz");
    // Stream header (12 bytes), block header size and flags (two filters), then the first
    // filter's id: 4, x86 BCJ.
    assert_eq!(fixture[12..15], [0x02, 0x01, 0x04]);
    let raw = x86_like();
    let sized = with_size(fixture.to_vec(), &raw);
    assert_eq!(
        decompress::decompress(Compression::Xz, &sized).unwrap(),
        raw
    );
    assert_eq!(
        decompress::decompress(Compression::Xz, fixture).unwrap(),
        raw
    );
    // Through the bzImage path: the payload decompresses, and is then (rightly) no ELF.
    match KernelImage::parse(&bzimage(&sized, 3)) {
        Err(LoaderError::PayloadNotElf { magic }) => assert_eq!(magic, raw[..4]),
        other => panic!("expected PayloadNotElf, got {other:?}"),
    }
    // Damage inside the LZMA2 data is reported, not returned as a kernel.
    let mut bad = fixture.to_vec();
    bad[40] ^= 0x10;
    assert!(decompress::decompress(Compression::Xz, &bad).is_err());
}

#[test]
fn plan_follows_xens_order() {
    let img = KernelImage::parse(&synth_elf(&Synth::default())).unwrap();
    let mut cfg = test_cfg(64 << 20);
    cfg.initrd = Some(vec![0xab; 10_000]);
    let l = plan(&img, &cfg).unwrap();
    let nr = (64 << 20) / PAGE_SIZE;
    assert_eq!(l.nr_pages, nr);
    assert_eq!(l.kernel_pfn, KERNEL_PADDR / PAGE_SIZE);
    // start_info, xenstore, console right after the kernel (p2m is at INIT_P2M).
    let kend_pfn = (KERNEL_PADDR + TEXT_SIZE + BSS_SIZE) / PAGE_SIZE;
    assert_eq!(l.start_info_gpa, kend_pfn * PAGE_SIZE);
    assert_eq!(l.start_info_va, VIRT_BASE + kend_pfn * PAGE_SIZE);
    assert_eq!(l.store_gfn, kend_pfn + 1);
    assert_eq!(l.console_gfn, kend_pfn + 2);
    // Pagetables: L4, one L3, one L2, and L1s for the 4 MiB-rounded mapping.
    assert_eq!(l.l4_gpa, (kend_pfn + 3) * PAGE_SIZE);
    assert_eq!(l.pt_base, VIRT_BASE + l.l4_gpa);
    assert_eq!(
        l.nr_pt_frames,
        1 + 1 + 1 + l.virt_pgtab_end.wrapping_sub(VIRT_BASE) / (2 << 20)
    );
    assert_eq!(l.bootstack_pfn, kend_pfn + 3 + l.nr_pt_frames);
    assert_eq!(l.stack_top, VIRT_BASE + (l.bootstack_pfn + 1) * PAGE_SIZE);
    // virt_pgtab_end: 4 MiB aligned, >= 512 KiB after the boot stack.
    assert_eq!(l.virt_pgtab_end % (4 << 20), 0);
    assert!(l.virt_pgtab_end >= l.stack_top + (512 << 10));
    assert!(l.virt_pgtab_end - (4 << 20) < l.stack_top + (512 << 10));
    // Unmapped initrd right after the mapping, passed by PFN, whole pages.
    let map_end_pfn = (l.virt_pgtab_end - VIRT_BASE) / PAGE_SIZE;
    assert_eq!(l.initrd_pfns, Some(map_end_pfn..map_end_pfn + 3));
    assert_eq!(l.mod_start, map_end_pfn);
    assert_eq!(l.mod_len, 3 * PAGE_SIZE);
    assert_eq!(l.flags, sif::MOD_START_PFN | sif::VIRT_P2M_4TOOLS);
    // p2m list after it, then its own L3, L2, L1.
    assert_eq!(l.p2m_va, INIT_P2M);
    assert_eq!(l.p2m_pfn, map_end_pfn + 3);
    assert_eq!(l.p2m_frames, nr * 8 / PAGE_SIZE);
    assert_eq!(l.p2m_seg, Some((l.p2m_pfn, l.p2m_frames + 3)));
    assert_eq!(l.pfn_alloc_end, l.p2m_pfn + l.p2m_frames + 3);
    assert_eq!(
        l.page_tables.len() as u64,
        l.nr_pt_frames + 3,
        "initial tables + p2m tables"
    );
    assert_eq!(
        l.page_tables[0],
        PageTableFrame {
            gpa: l.l4_gpa,
            level: 4
        }
    );
    let shown = format!("{l}");
    assert!(
        shown.contains("Phys-Mach map: 0000008000000000->0000008000020000"),
        "{shown}"
    );
}

#[test]
fn plan_without_init_p2m_or_mod_start_pfn_maps_both() {
    let o = Synth {
        init_p2m: false,
        mod_start_pfn: false,
        ..Synth::default()
    };
    let img = KernelImage::parse(&synth_elf(&o)).unwrap();
    let mut cfg = test_cfg(32 << 20);
    cfg.initrd = Some(vec![1; 5000]);
    let l = plan(&img, &cfg).unwrap();
    let kend_pfn = (KERNEL_PADDR + TEXT_SIZE + BSS_SIZE) / PAGE_SIZE;
    // Kernel, initrd (2 pages, mapped, by VA), p2m (16 pages), start_info...
    assert_eq!(l.initrd_pfns, Some(kend_pfn..kend_pfn + 2));
    assert_eq!(l.mod_start, VIRT_BASE + kend_pfn * PAGE_SIZE);
    assert_eq!(l.mod_len, 2 * PAGE_SIZE);
    assert_eq!(l.flags, sif::VIRT_P2M_4TOOLS);
    assert_eq!(l.p2m_pfn, kend_pfn + 2);
    assert_eq!(l.p2m_va, VIRT_BASE + (kend_pfn + 2) * PAGE_SIZE);
    assert_eq!(l.p2m_frames, 16);
    assert_eq!(l.p2m_seg, None);
    assert_eq!(l.start_info_gpa, (kend_pfn + 18) * PAGE_SIZE);
    assert_eq!(l.mappings.len(), 1);
}

#[test]
fn build_writes_a_walkable_domain() {
    let img = KernelImage::parse(&synth_elf(&Synth::default())).unwrap();
    let mem_bytes = 64u64 << 20;
    let mut cfg = test_cfg(mem_bytes);
    let initrd: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
    cfg.initrd = Some(initrd.clone());
    cfg.cmdline = "x".repeat(2000);
    let mem = guest_mem(mem_bytes);
    let l = build(&img, &cfg, &mem).unwrap();
    let cr3 = l.l4_gpa;

    // Kernel text at VA -> PFN (va - virt_base) / 4096, bytes intact; bss zero.
    for off in [0u64, 0x123, 0x2fff] {
        let va = VIRT_BASE + KERNEL_PADDR + off;
        let (gpa, w) = walk(&mem, cr3, va).unwrap();
        assert_eq!(gpa, KERNEL_PADDR + off);
        assert!(w);
        if off != HYPERCALL_OFF {
            let b: u8 = mem.read_obj(GuestAddress(gpa)).unwrap();
            assert_eq!(b, text_pattern(off));
        }
    }
    let bss: u64 = mem
        .read_obj(GuestAddress(KERNEL_PADDR + TEXT_SIZE + 8))
        .unwrap();
    assert_eq!(bss, 0);
    // Every page up to virt_pgtab_end is mapped linearly; nothing after it.
    let mut va = VIRT_BASE;
    while va < l.virt_pgtab_end {
        let (gpa, w) = walk(&mem, cr3, va).unwrap();
        assert_eq!(gpa, va - VIRT_BASE);
        let is_pt = l.pt_gpa.contains(&gpa);
        assert_eq!(
            w, !is_pt,
            "pagetable frames read-only, the rest writable at {va:#x}"
        );
        va += PAGE_SIZE;
    }
    assert!(walk(&mem, cr3, l.virt_pgtab_end).is_none());
    // All pagetable frames the layout lists are mapped RO where the mapping covers them.
    for pt in &l.page_tables[..l.nr_pt_frames as usize] {
        let (_, w) = walk(&mem, cr3, VIRT_BASE + pt.gpa).unwrap();
        assert!(!w);
    }
    // The hole slots are the shim's, verbatim.
    for i in 0..16u64 {
        let e: u64 = mem.read_obj(GuestAddress(cr3 + (256 + i) * 8)).unwrap();
        assert_eq!(e, cfg.hole_l4[i as usize]);
    }
    // p2m through INIT_P2M: identity.
    for pfn in [0u64, 1, 0x1234, l.nr_pages - 1] {
        let (gpa, _) = walk(&mem, cr3, INIT_P2M + pfn * 8).unwrap();
        let v: u64 = mem.read_obj(GuestAddress(gpa)).unwrap();
        assert_eq!(v, pfn);
    }
    assert!(walk(&mem, cr3, INIT_P2M + l.p2m_frames * PAGE_SIZE).is_none());
    // start_info.
    let (si_gpa, _) = walk(&mem, cr3, l.start_info_va).unwrap();
    assert_eq!(si_gpa, l.start_info_gpa);
    let mut raw = vec![0u8; core::mem::size_of::<StartInfo>()];
    mem.read_slice(&mut raw, GuestAddress(si_gpa)).unwrap();
    let si = StartInfo::read_from_bytes(&raw).unwrap();
    assert_eq!(&si.magic[..15], b"xen-3.0-x86_64\0");
    assert_eq!(si.nr_pages, l.nr_pages);
    assert_eq!(si.shared_info, cfg.shared_info_gpa);
    assert_eq!(si.flags, sif::MOD_START_PFN | sif::VIRT_P2M_4TOOLS);
    assert_eq!(si.store_mfn, l.store_gfn);
    assert_eq!(si.store_evtchn, 1);
    assert_eq!(si.console_mfn, l.console_gfn);
    assert_eq!(si.console_evtchn, 2);
    assert_eq!(si.pt_base, VIRT_BASE + cr3);
    assert_eq!(si.nr_pt_frames, l.nr_pt_frames);
    assert_eq!(si.mfn_list, INIT_P2M);
    assert_eq!(si.mod_start, l.initrd_pfns.clone().unwrap().start);
    assert_eq!(si.mod_len, 3 * PAGE_SIZE);
    assert!(si.cmd_line[..1023].iter().all(|&b| b == b'x'));
    assert_eq!(si.cmd_line[1023], 0);
    assert_eq!(si.first_p2m_pfn, l.p2m_pfn);
    assert_eq!(si.nr_p2m_frames, l.p2m_frames + 3);
    // The initrd by PFN.
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, GuestAddress(si.mod_start * PAGE_SIZE))
        .unwrap();
    assert_eq!(back, initrd);
    // Hypercall page.
    let (hc, _) = walk(&mem, cr3, VIRT_BASE + KERNEL_PADDR + HYPERCALL_OFF).unwrap();
    let mut page = vec![0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(hc)).unwrap();
    assert_eq!(
        &page[0..32],
        &[
            0x51, 0x41, 0x53, 0xb8, 0, 0, 0, 0, 0xe6, 0xe1, 0x41, 0x5b, 0x59, 0xc3, 0xcc, 0xcc,
            0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
            0xcc, 0xcc
        ]
    );
    assert_eq!(
        &page[29 * 32..29 * 32 + 14],
        &[0x51, 0x41, 0x53, 0xb8, 29, 0, 0, 0, 0xe6, 0xe1, 0x41, 0x5b, 0x59, 0xc3]
    );
    assert_eq!(
        &page[23 * 32..23 * 32 + 12],
        &[0x51, 0x41, 0x53, 0x50, 0xb8, 0x17, 0, 0, 0, 0xe6, 0xe1, 0xcc]
    );
    // vcpu_op and mmuext_op keep Xen's `syscall` (the shim's in-VM answers).
    assert_eq!(
        &page[24 * 32..24 * 32 + 14],
        &[0x51, 0x41, 0x53, 0xb8, 24, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3]
    );
    assert_eq!(&page[26 * 32 + 8..26 * 32 + 10], &[0x0f, 0x05]);
    assert_eq!(&page[127 * 32 + 4..127 * 32 + 8], &127u32.to_le_bytes());
    // Entry state.
    assert_eq!(l.entry, VIRT_BASE + KERNEL_PADDR + ENTRY_OFF);
    let (stack, w) = walk(&mem, cr3, l.stack_top - 8).unwrap();
    assert!(w);
    assert_eq!(stack, l.bootstack_pfn * PAGE_SIZE + PAGE_SIZE - 8);
}

#[test]
fn build_without_init_p2m_maps_p2m_in_the_kernel_mapping() {
    let o = Synth {
        init_p2m: false,
        mod_start_pfn: false,
        hypercall_page: false,
        ..Synth::default()
    };
    let img = KernelImage::parse(&synth_elf(&o)).unwrap();
    let mem_bytes = 32u64 << 20;
    let mut cfg = test_cfg(mem_bytes);
    cfg.initrd = Some(vec![7; 100]);
    let mem = guest_mem(mem_bytes);
    let l = build(&img, &cfg, &mem).unwrap();
    assert_eq!(l.hypercall_page, None);
    for pfn in [0u64, 77, l.nr_pages - 1] {
        let (gpa, w) = walk(&mem, l.l4_gpa, l.p2m_va + pfn * 8).unwrap();
        assert!(w);
        let v: u64 = mem.read_obj(GuestAddress(gpa)).unwrap();
        assert_eq!(v, pfn);
    }
    let (gpa, _) = walk(&mem, l.l4_gpa, l.mod_start).unwrap();
    let b: u8 = mem.read_obj(GuestAddress(gpa + 99)).unwrap();
    assert_eq!(b, 7);
}

#[test]
fn too_little_memory_says_how_much_is_needed() {
    let img = KernelImage::parse(&synth_elf(&Synth::default())).unwrap();
    let err = plan(&img, &test_cfg(2 << 20)).unwrap_err();
    let LoaderError::OutOfMemory { need_bytes, .. } = err else {
        panic!("{err}");
    };
    assert!(err.to_string().contains("needs at least"), "{err}");
    // The stated amount is enough, one page less is not.
    assert!(plan(&img, &test_cfg(need_bytes)).is_ok());
    assert!(matches!(
        plan(&img, &test_cfg(need_bytes - PAGE_SIZE)),
        Err(LoaderError::OutOfMemory { .. })
    ));
    // Guest memory smaller than mem_bytes is an error too, not a panic.
    let mem = guest_mem(4 << 20);
    assert!(matches!(
        build(&img, &test_cfg(64 << 20), &mem),
        Err(LoaderError::GuestMemory { .. })
    ));
}

#[test]
fn each_bad_image_has_its_own_error() {
    let no_notes = synth_elf(&Synth {
        notes: false,
        ..Synth::default()
    });
    assert!(matches!(
        KernelImage::parse(&no_notes),
        Err(LoaderError::NoXenNotes)
    ));

    let mut elf32 = synth_elf(&Synth::default());
    elf32[4] = 1;
    assert!(matches!(
        KernelImage::parse(&elf32),
        Err(LoaderError::Elf32Unsupported)
    ));

    assert!(matches!(
        KernelImage::parse(b"this is not a kernel at all, just some text"),
        Err(LoaderError::UnknownFormat)
    ));

    let bz = bzimage(&gzip(&synth_elf(&Synth::default())), 0);
    assert!(matches!(
        KernelImage::parse(&bz[..bz.len() - 200]),
        Err(LoaderError::TruncatedBzImage { .. })
    ));
    assert!(matches!(
        KernelImage::parse(&bz[..0x204]),
        Err(LoaderError::UnknownFormat)
    ));

    let bsd = synth_elf(&Synth {
        guest_os: "NetBSD",
        ..Synth::default()
    });
    // LOADER "generic" is enough, as in Xen.
    assert!(KernelImage::parse(&bsd).is_ok());

    let old = synth_elf(&Synth {
        xen_version: "xen-2.0",
        ..Synth::default()
    });
    assert!(matches!(
        KernelImage::parse(&old),
        Err(LoaderError::BadXenVersion(_))
    ));

    let far = synth_elf(&Synth {
        entry: VIRT_BASE + 0x1000_0000,
        ..Synth::default()
    });
    assert!(matches!(
        KernelImage::parse(&far),
        Err(LoaderError::EntryOutOfBounds { .. })
    ));

    let mut wrong_payload = bzimage(&gzip(b"not an elf"), 0);
    assert!(matches!(
        KernelImage::parse(&wrong_payload),
        Err(LoaderError::PayloadNotElf { .. })
    ));
    wrong_payload[0x206] = 0x04; // protocol 2.04
    assert!(matches!(
        KernelImage::parse(&wrong_payload),
        Err(LoaderError::OldBootProtocol { .. })
    ));
    for e in [
        LoaderError::NoXenNotes,
        LoaderError::Elf32Unsupported,
        LoaderError::UnknownFormat,
    ] {
        let s = e.to_string();
        assert!(s.ends_with(')') || !s.contains('\n'), "one sentence: {s}");
    }
}

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn hostile_inputs_give_errors_not_panics() {
    let elf = synth_elf(&Synth::default());
    let images = [
        elf.clone(),
        bzimage(&gzip(&elf), 0),
        bzimage(&lz4_legacy(&elf), 3),
        bzimage(&zstd(&elf), 1),
        bzimage(&xz(&elf), 2),
        bzimage(&lzma(&elf), 4),
        bzimage(
            &with_size(include_bytes!("testdata/x86-bcj.xz").to_vec(), &x86_like()),
            1,
        ),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mem = guest_mem(16 << 20);
    let try_one = |bytes: &[u8]| {
        if let Ok(img) = KernelImage::parse(bytes) {
            // Whatever parses must also plan and build without panicking.
            let _ = inspect(&img, None);
            let _ = build(&img, &DomainConfig::with_memory(16 << 20), &mem);
        }
    };
    for img in &images {
        // Every truncation of the headers, then coarser ones.
        for len in (0..img.len().min(0x600)).chain((0x600..img.len()).step_by(97)) {
            try_one(&img[..len]);
        }
        // Random byte and word mutations, concentrated on headers and notes.
        for _ in 0..1500 {
            let mut m = img.clone();
            for _ in 0..1 + rng.below(4) {
                let span = if rng.below(2) == 0 {
                    0x300.min(m.len())
                } else {
                    m.len()
                };
                let at = rng.below(span);
                match rng.below(3) {
                    0 => m[at] = rng.next() as u8,
                    1 => m[at] ^= 1 << rng.below(8),
                    _ => {
                        let v = rng.next().to_le_bytes();
                        let end = (at + 8).min(m.len());
                        m[at..end].copy_from_slice(&v[..end - at]);
                    }
                }
            }
            try_one(&m);
        }
    }
    for _ in 0..300 {
        let len = rng.below(5000);
        let mut r: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        try_one(&r);
        if r.len() > 8 {
            r[..4].copy_from_slice(b"\x7fELF");
            r[4] = 2;
            r[5] = 1;
            try_one(&r);
        }
        if r.len() > 0x260 {
            r[0x202..0x206].copy_from_slice(b"HdrS");
            r[0x206] = 0x0f;
            r[0x207] = 0x02;
            try_one(&r);
        }
    }
}

/// Numbers in a kernel file name, in order, so "6.1.0-10" sorts after "6.1.0-9".
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest `guest-images/cache/vmlinuz-<abi>` whose ABI `matches`, as fetched by
/// `guest-images/scripts/fetch-debian-kernel.sh <fetch_args>`. None, with a note, when
/// there is none; a failure instead when PVKVM_REQUIRE_DEBIAN_KERNEL is set (CI).
fn debian_kernel(matches: fn(&str) -> bool, fetch_args: &str) -> Option<std::path::PathBuf> {
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/cache");
    let found = std::fs::read_dir(cache).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .is_some_and(matches)
            })
            .max_by_key(|p| version_key(&p.to_string_lossy()))
    });
    if found.is_none() {
        let hint = format!("run guest-images/scripts/fetch-debian-kernel.sh {fetch_args}");
        assert!(
            std::env::var_os("PVKVM_REQUIRE_DEBIAN_KERNEL").is_none(),
            "the Debian kernel is not in guest-images/cache: {hint}"
        );
        println!("skipped: the Debian kernel is not in guest-images/cache ({hint})");
    }
    found
}

/// bookworm's cloud flavour, 6.1.0-<n>-cloud-amd64.
fn is_bookworm_cloud(abi: &str) -> bool {
    abi.strip_prefix("6.1.0-")
        .and_then(|r| r.strip_suffix("-cloud-amd64"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// bookworm's generic flavour, 6.1.0-<n>-amd64 (no cloud or rt infix).
fn is_bookworm_generic(abi: &str) -> bool {
    abi.strip_prefix("6.1.0-")
        .and_then(|r| r.strip_suffix("-amd64"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// trixie's cloud flavour, 6.12.<n>+deb13-cloud-amd64.
fn is_trixie_cloud(abi: &str) -> bool {
    abi.starts_with("6.12.") && abi.ends_with("-cloud-amd64")
}

#[test]
fn debian_kernel_name_patterns() {
    assert!(is_bookworm_cloud("6.1.0-57-cloud-amd64"));
    assert!(!is_bookworm_cloud("6.1.0-57-amd64"));
    assert!(is_bookworm_generic("6.1.0-57-amd64"));
    for other in [
        "6.1.0-57-cloud-amd64",
        "6.1.0-57-rt-amd64",
        "6.12.48+deb13-amd64",
    ] {
        assert!(!is_bookworm_generic(other), "{other}");
    }
    assert!(is_trixie_cloud("6.12.118+deb13-cloud-amd64"));
    assert!(!is_trixie_cloud("6.1.0-57-cloud-amd64"));
    assert!(version_key("vmlinuz-6.1.0-10-amd64") > version_key("vmlinuz-6.1.0-9-amd64"));
}

/// Checks what every Debian x86-64 PV kernel so far has in common, builds a 512 MiB
/// domain from it and walks the result: entry mapped, P2M at INIT_P2M.
fn check_debian_kernel(img: &KernelImage) {
    let n = &img.notes;
    assert_eq!(n.virt_base, Some(0xffff_ffff_8000_0000));
    assert_eq!(n.init_p2m, Some(0x80_0000_0000));
    assert_eq!(n.mod_start_pfn, Some(1));
    assert_eq!(n.guest_os.as_deref(), Some("linux"));
    assert_eq!(n.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(img.virt_kstart, 0xffff_ffff_8100_0000);
    let entry = n.entry.unwrap();
    assert!(entry >= img.virt_kstart && entry < img.virt_kend);
    let mem_bytes = 512u64 << 20;
    let mut cfg = test_cfg(mem_bytes);
    cfg.initrd = Some(vec![0; 3 << 20]);
    let mem = guest_mem(mem_bytes);
    let l = build(img, &cfg, &mem).unwrap();
    // Linux is loaded by paddr: its first page at PFN 0x1000.
    assert_eq!(l.kernel_pfn, 0x1000);
    let (gpa, _) = walk(&mem, l.l4_gpa, entry).unwrap();
    assert_eq!(gpa, entry - VIRT_BASE);
    let (gpa, _) = walk(&mem, l.l4_gpa, 0x80_0000_0000 + 0x1000 * 8).unwrap();
    let v: u64 = mem.read_obj(GuestAddress(gpa)).unwrap();
    assert_eq!(v, 0x1000);
}

/// Parses the cached Debian kernel whose ABI `matches` (see [`debian_kernel`]), checks
/// its payload compression, the notes every Debian kernel has, then `more`.
fn check_cached_kernel(
    matches: fn(&str) -> bool,
    fetch_args: &str,
    compression: Compression,
    more: impl FnOnce(&KernelImage),
) {
    let Some(path) = debian_kernel(matches, fetch_args) else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let img = KernelImage::parse(&bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert!(
        matches!(&img.format, ImageFormat::BzImage { compression: c, .. } if *c == compression),
        "{path:?}: {:?}",
        img.format
    );
    more(&img);
    check_debian_kernel(&img);
    println!("{path:?}:\n{}", inspect(&img, None));
}

/// bookworm's generic flavour: an xz payload with the x86 BCJ filter.
#[test]
fn debian_generic_kernel() {
    check_cached_kernel(
        is_bookworm_generic,
        "--flavour generic",
        Compression::Xz,
        |img| {
            assert_eq!(
                img.notes.features.as_deref(),
                Some("!writable_page_tables|pae_pgdir_above_4gb")
            );
        },
    );
}

/// trixie's cloud flavour: Linux 6.12 with a zstd payload.
#[test]
fn debian_trixie_cloud_kernel() {
    check_cached_kernel(is_trixie_cloud, "--suite trixie", Compression::Zstd, |_| {});
}

/// bookworm's cloud flavour (the default guest): an lz4 payload.
#[test]
fn debian_cloud_kernel() {
    check_cached_kernel(is_bookworm_cloud, "", Compression::Lz4Legacy, |img| {
        assert_eq!(
            img.notes.features.as_deref(),
            Some("!writable_page_tables|pae_pgdir_above_4gb")
        );
        assert_eq!(
            img.notes.entry.unwrap() & 0xffff_ffff_ff00_0000,
            0xffff_ffff_8300_0000
        );
    });
}
