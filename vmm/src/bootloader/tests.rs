//! Tests over the whole search on small images built here: partition tables written by
//! hand around a filesystem-less payload (the ext2/3/4 images need mkfs and are in
//! vmm/tests/boot_from_image.rs).

use super::disk::{partitions, Part};
use std::path::PathBuf;

use super::*;
use crate::backends::blk::DiskImage;

fn temp_image(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("pvkvm-bootloader-{tag}-{}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mbr_entry(buf: &mut [u8], i: usize, boot: u8, sys: u8, first: u32, sectors: u32) {
    let o = 446 + 16 * i;
    buf[o] = boot;
    buf[o + 4] = sys;
    buf[o + 8..o + 12].copy_from_slice(&first.to_le_bytes());
    buf[o + 12..o + 16].copy_from_slice(&sectors.to_le_bytes());
    buf[510] = 0x55;
    buf[511] = 0xaa;
}

fn parts_of(tag: &str, bytes: &[u8]) -> Result<(Vec<Part>, Vec<String>), Error> {
    let p = temp_image(tag, bytes);
    let img = DiskImage::open_raw(&p, true).unwrap();
    let r = partitions(&img, "xvda (test)", "xvda");
    std::fs::remove_file(&p).unwrap();
    r
}

#[test]
fn no_table_is_the_whole_disk() {
    let (parts, notes) = parts_of("whole", &vec![0u8; 8192]).unwrap();
    assert_eq!(
        parts,
        vec![Part {
            name: "xvda".into(),
            offset: 0,
            len: 8192
        }]
    );
    assert!(notes.is_empty());
}

#[test]
fn mbr_active_first_and_past_the_end() {
    let mut d = vec![0u8; 64 * 512];
    mbr_entry(&mut d, 0, 0, 0x83, 8, 8);
    mbr_entry(&mut d, 1, 0x80, 0x83, 16, 8);
    mbr_entry(&mut d, 2, 0, 0x83, 32, 1000);
    let (parts, notes) = parts_of("mbr", &d).unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["xvda2", "xvda1"]);
    assert_eq!(parts[0].offset, 16 * 512);
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("xvda3") && notes[0].contains("past the end"),
        "{notes:?}"
    );
}

fn gpt_disk(entries: &[(u64, u64)], entry_size: u32) -> Vec<u8> {
    let mut d = vec![0u8; 256 * 512];
    mbr_entry(&mut d, 0, 0, 0xee, 1, 255);
    let mut table = vec![0u8; 128 * entry_size as usize];
    for (i, &(first, last)) in entries.iter().enumerate() {
        let e = &mut table[i * entry_size as usize..];
        e[0..16].copy_from_slice(&[0xaf; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
    }
    let mut h = [0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&entry_size.to_le_bytes());
    h[88..92].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    d[512..604].copy_from_slice(&h);
    let end = (1024 + table.len()).min(d.len());
    let n = end - 1024;
    d[1024..end].copy_from_slice(&table[..n]);
    d
}

#[test]
fn gpt_entries() {
    let d = gpt_disk(&[(100, 149), (150, 400)], 128);
    let (parts, notes) = parts_of("gpt", &d).unwrap();
    assert_eq!(
        parts,
        vec![Part {
            name: "xvda1".into(),
            offset: 100 * 512,
            len: 50 * 512
        }]
    );
    assert!(notes[0].contains("xvda2"), "{notes:?}");
}

#[test]
fn gpt_damaged() {
    let mut d = gpt_disk(&[(100, 149)], 128);
    d[1024 + 40] ^= 1;
    let e = parts_of("gptcrc", &d).unwrap_err();
    assert!(e.to_string().contains("entry array's CRC"), "{e}");
    // An entry size the gpt crate would assert on: valid, read.
    let d = gpt_disk(&[(100, 149)], 136);
    assert_eq!(parts_of("gpt136", &d).unwrap().0.len(), 1);
    let d = gpt_disk(&[(100, 149)], 130);
    let e = parts_of("gpt130", &d).unwrap_err();
    assert!(e.to_string().contains("entry size 130"), "{e}");
    let mut d = gpt_disk(&[(100, 149)], 128);
    d[512] = b'X';
    assert!(parts_of("gptsig", &d)
        .unwrap_err()
        .to_string()
        .contains("no GPT header"));
}

#[test]
fn no_filesystem_is_one_clear_error() {
    let mut d = vec![0u8; 64 * 512];
    mbr_entry(&mut d, 0, 0, 0x83, 8, 8);
    let p = temp_image("nofs", &d);
    let spec = DiskSpec::parse(&format!("{},vdev=xvda", p.display())).unwrap();
    let e = boot_from_disk(&spec, &BootOptions::default()).unwrap_err();
    std::fs::remove_file(&p).unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("xvda1: no ext2/3/4 filesystem") && msg.contains("xvda (/"),
        "{msg}"
    );
}

#[test]
fn clean_paths() {
    assert_eq!(clean_path("(hd0,msdos1)/boot/k", "/"), "/boot/k");
    assert_eq!(clean_path("()/k", "/"), "/k");
    assert_eq!(clean_path("k", "/boot/extlinux"), "/boot/extlinux/k");
    assert_eq!(clean_path("k", "/"), "/k");
}

#[test]
fn entry_by_number_title_leaf_or_id() {
    let menu = Menu {
        entries: vec![
            MenuEntry {
                title: "A".into(),
                id: Some("a-id".into()),
                ..Default::default()
            },
            MenuEntry {
                title: "S>B".into(),
                leaf_title: Some("B".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    assert_eq!(menu.find("1"), Some(1));
    assert_eq!(menu.find("2"), None);
    assert_eq!(menu.find("S>B"), Some(1));
    assert_eq!(menu.find("B"), Some(1));
    assert_eq!(menu.find("a-id"), Some(0));
    assert_eq!(menu.find("C"), None);
}

/// An extended partition at sector 40 with `n` logical partitions of 4 sectors, each
/// EBR followed by its partition.
fn extended_disk(n: u32) -> Vec<u8> {
    let ext_start = 40u32;
    let mut d = vec![0u8; (ext_start as usize + 8 * n as usize + 8) * 512];
    mbr_entry(&mut d, 0, 0x80, 0x83, 8, 8);
    mbr_entry(&mut d, 1, 0, 0x05, ext_start, 8 * n);
    for i in 0..n {
        let ebr = (ext_start + 8 * i) as usize * 512;
        let mut sector = [0u8; 512];
        mbr_entry(&mut sector, 0, 0, 0x83, 1, 4);
        if i + 1 < n {
            mbr_entry(&mut sector, 1, 0, 0x05, 8 * (i + 1), 8);
        }
        d[ebr..ebr + 512].copy_from_slice(&sector);
    }
    d
}

#[test]
fn logical_partitions() {
    let (parts, notes) = parts_of("logical", &extended_disk(3)).unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["xvda1", "xvda5", "xvda6", "xvda7"], "{notes:?}");
    assert_eq!(parts[1].offset, 41 * 512);
    assert_eq!(parts[3].offset, (40 + 16 + 1) * 512);
    // A chain longer than the read budget is one clear error, not endless reading.
    let e = parts_of("longchain", &extended_disk(2000)).unwrap_err();
    assert!(e.to_string().contains("MBR partition table of xvda"), "{e}");
}
