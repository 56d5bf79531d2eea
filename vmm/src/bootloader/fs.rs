//! One ext2/3/4 filesystem on a partition, read through `ext4-view` (which replays an
//! ext3/ext4 journal in memory and bounds symlink following at 40 links).

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use ext4_view::{Ext4, Ext4Read};

use super::disk::Part;
use super::{Error, MAX_CONFIG, MAX_INITRD, MAX_KERNEL};
use crate::backends::blk::DiskImage;

/// The ext superblock magic, at byte 56 of the superblock (byte 1024 of the fs).
const EXT_MAGIC: u16 = 0xef53;
/// All the bytes read from one filesystem: the largest kernel and initrd plus room for
/// metadata. A corrupt filesystem cannot make reading loop past this.
const READ_BUDGET: u64 = MAX_KERNEL + MAX_INITRD + MAX_CONFIG + (256 << 20);

/// ext2, ext3 or ext4, from the superblock's feature flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtKind {
    /// No journal, no ext4 features.
    Ext2,
    /// A journal.
    Ext3,
    /// Extents, 64-bit or flex_bg.
    Ext4,
}

impl fmt::Display for ExtKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtKind::Ext2 => "ext2",
            ExtKind::Ext3 => "ext3",
            ExtKind::Ext4 => "ext4",
        })
    }
}

/// A readable filesystem.
pub struct Fs {
    fs: Ext4,
    kind: ExtKind,
    part: String,
}

/// Reads of one partition for ext4-view: inside the partition, within the budget.
struct PartReader {
    image: Rc<DiskImage>,
    offset: u64,
    len: u64,
    budget: Rc<Cell<u64>>,
}

type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Ext4Read for PartReader {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), BoxedError> {
        let n = dst.len() as u64;
        if start.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(format!(
                "the filesystem reads {n} bytes at {start}, past the end of its partition ({} bytes): the image is truncated or the filesystem is damaged",
                self.len
            )
            .into());
        }
        let left = self.budget.get();
        if n > left {
            return Err("the filesystem needs more reads than any boot files can take".into());
        }
        self.budget.set(left - n);
        self.image.read_at(dst, self.offset + start)?;
        Ok(())
    }
}

impl Fs {
    /// Opens the ext filesystem at `part`; the error says what is there instead.
    pub fn open(image: Rc<DiskImage>, part: &Part) -> Result<Fs, String> {
        let mut sb = [0u8; 1024];
        if part.len < 2048 {
            return Err("too small for an ext2/3/4 filesystem".into());
        }
        image
            .read_at(&mut sb, part.offset + 1024)
            .map_err(|e| format!("cannot read the superblock: {e}"))?;
        let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        if u16::from_le_bytes([sb[56], sb[57]]) != EXT_MAGIC {
            return Err("no ext2/3/4 filesystem".into());
        }
        let (compat, incompat) = (le32(92), le32(96));
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            ExtKind::Ext4
        } else if compat & 0x4 != 0 {
            ExtKind::Ext3
        } else {
            ExtKind::Ext2
        };
        // The filesystem's own size must fit its partition (or image): a truncated
        // image is refused here rather than failing somewhere inside a file.
        let log_block = le32(24);
        if log_block > 6 {
            return Err(format!(
                "{kind} with a block size of 2^(10+{log_block}) bytes"
            ));
        }
        let mut blocks = u64::from(le32(4));
        if incompat & 0x80 != 0 {
            blocks |= u64::from(le32(0x150)) << 32;
        }
        let fs_bytes = blocks.saturating_mul(1024 << log_block);
        if fs_bytes > part.len {
            return Err(format!(
                "{kind} of {fs_bytes} bytes in {} bytes: the image is truncated or the partition table is wrong",
                part.len
            ));
        }
        let reader = PartReader {
            image,
            offset: part.offset,
            len: part.len,
            budget: Rc::new(Cell::new(READ_BUDGET)),
        };
        let fs =
            Ext4::load(Box::new(reader)).map_err(|e| format!("{kind} that cannot be read: {e}"))?;
        Ok(Fs {
            fs,
            kind,
            part: part.name.clone(),
        })
    }

    /// ext2, ext3 or ext4.
    pub fn kind(&self) -> ExtKind {
        self.kind
    }

    /// Whether `path` is a regular file (after symlinks).
    pub fn is_file(&self, path: &str) -> bool {
        self.fs
            .metadata(path)
            .is_ok_and(|m| !m.is_dir() && !m.is_symlink())
    }

    /// Reads `path`, refusing it above `max` bytes.
    pub fn read_file(
        &self,
        path: &str,
        what: &'static str,
        max: u64,
        source: &str,
    ) -> Result<Vec<u8>, Error> {
        let read_err = |e| Error::FileRead {
            what,
            path: path.to_string(),
            partition: self.part.clone(),
            source: e,
        };
        let meta = match self.fs.metadata(path) {
            Ok(m) if !m.is_dir() => m,
            Ok(_) | Err(ext4_view::Ext4Error::NotFound) => {
                return Err(Error::FileMissing {
                    what,
                    path: path.to_string(),
                    source_desc: source.to_string(),
                    partition: self.part.clone(),
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        if meta.len() > max {
            return Err(Error::FileTooLarge {
                what,
                path: path.to_string(),
                partition: self.part.clone(),
                size: meta.len(),
                max,
            });
        }
        self.fs.read(path).map_err(read_err)
    }

    /// Reads a kernel or initrd path from a configuration. A path under `/boot/` that is
    /// missing is tried without the prefix: the configuration may sit on a separate
    /// /boot partition while naming files as the root filesystem sees them.
    pub fn read_boot_file(
        &self,
        path: &str,
        what: &'static str,
        max: u64,
        source: &str,
    ) -> Result<Vec<u8>, Error> {
        if !self.is_file(path) {
            if let Some(stripped) = path.strip_prefix("/boot").filter(|s| s.starts_with('/')) {
                if self.is_file(stripped) {
                    return self.read_file(stripped, what, max, source);
                }
            }
        }
        self.read_file(path, what, max, source)
    }
}
