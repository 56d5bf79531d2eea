//! The partitions of a disk, in the order pygrub tries them.
//!
//! No partition table (no `55 aa` at byte 510): the whole disk is one filesystem. A
//! protective MBR (a type `0xee` entry): the GPT, parsed here (header and table CRCs
//! checked, entry count and size bounded; the `gpt` crate asserts on an entry size
//! other than 128). Otherwise the MBR, through `mbrman` (which follows the extended
//! partition's EBR chain): the active partition first, then the other primaries in
//! table order, then the logical partitions. A partition reaching past the end of the
//! image is left out, with a note saying so.

use std::io::{self, Read, Seek, SeekFrom};

use super::{Error, MAX_PARTITIONS};
use crate::backends::blk::DiskImage;

/// Sector size the tables are read with (pygrub's `SECTOR_SIZE`).
pub const SECTOR: u64 = 512;
/// At most this many bytes read for the MBR and its EBR chain (an EBR chain is as long
/// as the image lets it be; 256 KiB is 512 EBRs).
const MBR_READ_BUDGET: u64 = 256 << 10;
/// The most GPT entries read (the usual table has 128).
const GPT_MAX_ENTRIES: u32 = 1024;
/// The largest GPT entry size accepted.
const GPT_MAX_ENTRY_SIZE: u32 = 1024;

/// One place a filesystem may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Its guest name, such as `xvda1` (the disk's name when the disk has no table).
    pub name: String,
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The partitions to try, and notes on those left out. `disk` names the disk in
/// messages; `base` is its guest device name, which partition numbers are appended to.
pub fn partitions(
    image: &DiskImage,
    disk: &str,
    base: &str,
) -> Result<(Vec<Part>, Vec<String>), Error> {
    let size = image.size();
    let whole = Part {
        name: base.to_string(),
        offset: 0,
        len: size,
    };
    if size < SECTOR {
        return Ok((vec![whole], Vec::new()));
    }
    let mut mbr = [0u8; 512];
    image.read_at(&mut mbr, 0).map_err(|source| Error::Read {
        disk: disk.to_string(),
        what: "the partition table".to_string(),
        source,
    })?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok((vec![whole], Vec::new()));
    }
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    let (parts, notes) = if types.contains(&0xee) {
        gpt(image, disk, base, size)?
    } else {
        msdos(image, disk, base, size)?
    };
    if parts.is_empty() && notes.is_empty() {
        // A boot signature but not one partition: a filesystem whose boot sector ends
        // in 55 aa, most likely.
        return Ok((vec![whole], Vec::new()));
    }
    Ok((parts, notes))
}

/// Keeps `p` if it lies inside the image, else notes why not.
fn check_bounds(
    parts: &mut Vec<Part>,
    notes: &mut Vec<String>,
    name: String,
    first: u64,
    sectors: u64,
    size: u64,
) {
    let offset = first.checked_mul(SECTOR);
    let len = sectors.checked_mul(SECTOR);
    match (offset, len) {
        (Some(offset), Some(len)) if offset.checked_add(len).is_some_and(|e| e <= size) => {
            parts.push(Part { name, offset, len })
        }
        _ => notes.push(format!(
            "{name}: the partition (sectors {first}..{}) lies past the end of the image ({} sectors)",
            first.saturating_add(sectors),
            size / SECTOR
        )),
    }
}

fn msdos(
    image: &DiskImage,
    disk: &str,
    base: &str,
    size: u64,
) -> Result<(Vec<Part>, Vec<String>), Error> {
    let mut reader = Reader {
        image,
        pos: 0,
        size,
        bytes_left: MBR_READ_BUDGET,
    };
    let table =
        mbrman::MBR::read_from(&mut reader, SECTOR as u32).map_err(|source| Error::Mbr {
            disk: disk.to_string(),
            source,
        })?;
    let (mut parts, mut notes) = (Vec::new(), Vec::new());
    let mut active = None;
    for (i, p) in table.iter() {
        if parts.len() >= MAX_PARTITIONS {
            notes.push(format!(
                "{disk}: only the first {MAX_PARTITIONS} partitions are looked at"
            ));
            break;
        }
        // Unused entries and the extended partition itself (its logical partitions
        // come through the iterator after the primaries).
        if p.sys == 0
            || p.starting_lba == 0
            || p.sectors == 0
            || matches!(p.sys, 0x05 | 0x0f | 0x85)
        {
            continue;
        }
        let before = parts.len();
        check_bounds(
            &mut parts,
            &mut notes,
            format!("{base}{i}"),
            u64::from(p.starting_lba),
            u64::from(p.sectors),
            size,
        );
        if p.boot == 0x80 && i <= 4 && active.is_none() && parts.len() > before {
            active = Some(before);
        }
    }
    // pygrub: "if we have [an active partition], use it as the first partition".
    if let Some(a) = active {
        let p = parts.remove(a);
        parts.insert(0, p);
    }
    Ok((parts, notes))
}

fn gpt(
    image: &DiskImage,
    disk: &str,
    base: &str,
    size: u64,
) -> Result<(Vec<Part>, Vec<String>), Error> {
    let bad = |what: String| Error::PartitionTable {
        disk: disk.to_string(),
        what,
    };
    let read = |buf: &mut [u8], offset: u64, what: &str| {
        image.read_at(buf, offset).map_err(|source| Error::Read {
            disk: disk.to_string(),
            what: what.to_string(),
            source,
        })
    };
    if size < 2 * SECTOR {
        return Err(bad(
            "the disk is too small to hold the GPT header its MBR announces".into(),
        ));
    }
    let mut h = [0u8; 512];
    read(&mut h, SECTOR, "the GPT header")?;
    if &h[0..8] != b"EFI PART" {
        return Err(bad(
            "the protective MBR announces a GPT but sector 1 has no GPT header".into(),
        ));
    }
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let le64 = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let header_size = le32(&h, 12);
    if !(92..=512).contains(&header_size) {
        return Err(bad(format!(
            "the GPT header size {header_size} is not between 92 and 512"
        )));
    }
    let mut hc = h;
    hc[16..20].fill(0);
    let crc = crc32fast::hash(&hc[..header_size as usize]);
    if crc != le32(&h, 16) {
        return Err(bad("the GPT header's CRC does not match".into()));
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let entry_size = le32(&h, 84);
    if count > GPT_MAX_ENTRIES {
        return Err(bad(format!(
            "the GPT claims {count} entries, more than {GPT_MAX_ENTRIES}"
        )));
    }
    if !(128..=GPT_MAX_ENTRY_SIZE).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(bad(format!("the GPT entry size {entry_size} is not a multiple of 8 from 128 to {GPT_MAX_ENTRY_SIZE}")));
    }
    let table_len = u64::from(count) * u64::from(entry_size);
    let table_off = entries_lba
        .checked_mul(SECTOR)
        .filter(|o| o.checked_add(table_len).is_some_and(|end| end <= size));
    let Some(table_off) = table_off else {
        return Err(bad(format!("the GPT entry array (sector {entries_lba}, {table_len} bytes) lies past the end of the image")));
    };
    let mut table = vec![0u8; table_len as usize];
    read(&mut table, table_off, "the GPT entry array")?;
    if crc32fast::hash(&table) != le32(&h, 88) {
        return Err(bad("the GPT entry array's CRC does not match".into()));
    }
    let (mut parts, mut notes) = (Vec::new(), Vec::new());
    for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        if parts.len() >= MAX_PARTITIONS {
            notes.push(format!(
                "{disk}: only the first {MAX_PARTITIONS} partitions are looked at"
            ));
            break;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let name = format!("{base}{}", i + 1);
        if last < first {
            notes.push(format!(
                "{name}: the GPT entry ends (sector {last}) before it starts (sector {first})"
            ));
            continue;
        }
        check_bounds(&mut parts, &mut notes, name, first, last - first + 1, size);
    }
    Ok((parts, notes))
}

/// `Read + Seek` over the image for mbrman, with a bound on the bytes read.
struct Reader<'a> {
    image: &'a DiskImage,
    pos: u64,
    size: u64,
    bytes_left: u64,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        if n as u64 > self.bytes_left {
            return Err(io::Error::other("the extended partition chain is too long"));
        }
        self.bytes_left -= n as u64;
        self.image.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Reader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}
