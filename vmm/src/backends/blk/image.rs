//! Disk images behind a virtual block device: raw files, host block devices, and
//! qcow2 images (with their backing chains) through the `imago` crate.
//!
//! The image is locked with `flock` for as long as it is open (exclusive for a
//! writable disk, shared for a read-only one), so a second pvkvm, or a second disk of
//! the same guest, cannot write it at the same time and corrupt it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use thiserror::Error;

use super::spec::{DiskFormat, DiskSpec};

/// Why an image could not be opened.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be opened at all.
    #[error("cannot open the disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A writable disk whose image cannot be written.
    #[error("the disk image {path} cannot be opened for writing; add ,ro to give it to the guest read-only")]
    NotWritable {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process (or another disk of this guest) holds the image's lock.
    #[error("the disk image {path} is in use by another process (locked)")]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// The lock could not be taken for another reason.
    #[error("cannot lock the disk image {path}")]
    Lock {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("the disk image {path} is neither a regular file nor a block device")]
    NotADisk {
        /// The image.
        path: PathBuf,
    },
    /// The size could not be determined.
    #[error("cannot determine the size of the disk image {path}")]
    Size {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The qcow2 image (or one of its backing files) could not be opened.
    #[error("cannot open the qcow2 image {path} (or its backing chain)")]
    Qcow2 {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What the image is on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A regular file.
    File,
    /// A block device.
    BlockDevice,
}

/// Where the guest's bytes live.
enum Store {
    /// The file's bytes are the disk's.
    Raw(File),
    /// A qcow2 image; `_lock` is a descriptor of the same file that holds the flock
    /// (imago does not lock).
    Qcow2 {
        access: FormatAccess<imago::file::File>,
        _lock: File,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Raw(_) => "Raw",
            Store::Qcow2 { .. } => "Qcow2",
        })
    }
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskImage {
    store: Store,
    format: DiskFormat,
    path: PathBuf,
    size: u64,
    read_only: bool,
    kind: ImageKind,
    discard: bool,
    discard_granularity: u32,
}

/// The start of a qcow2 header (`QFI\xfb`).
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

impl DiskImage {
    /// Opens the image a `--disk` argument names.
    pub fn open(spec: &DiskSpec) -> Result<DiskImage, ImageError> {
        match spec.format {
            DiskFormat::Raw => DiskImage::open_raw(&spec.path, spec.read_only),
            DiskFormat::Qcow2 => DiskImage::open_qcow2(&spec.path, spec.read_only),
        }
    }

    /// Opens a qcow2 image and, read-only, its backing chain as its header names it;
    /// locked, writable unless `read_only`. Discard is not offered for qcow2.
    pub fn open_qcow2(path: &Path, read_only: bool) -> Result<DiskImage, ImageError> {
        let path = path.to_path_buf();
        let lock_file = open_locked(&path, read_only)?;
        let kind = match lock_file.metadata() {
            Ok(m) if m.file_type().is_block_device() => ImageKind::BlockDevice,
            _ => ImageKind::File,
        };
        let qcow2 = Qcow2::<imago::file::File>::builder_path(&path)
            .write(!read_only)
            .open(PermissiveImplicitOpenGate::default())
            .map_err(|source| ImageError::Qcow2 {
                path: path.clone(),
                source,
            })?;
        let access = FormatAccess::new(qcow2);
        Ok(DiskImage {
            size: access.size(),
            store: Store::Qcow2 {
                access,
                _lock: lock_file,
            },
            format: DiskFormat::Qcow2,
            path,
            read_only,
            kind,
            discard: false,
            discard_granularity: 512,
        })
    }

    /// Opens a raw image file or block device, locked, writable unless `read_only`.
    pub fn open_raw(path: &Path, read_only: bool) -> Result<DiskImage, ImageError> {
        let path = path.to_path_buf();
        let file = open_locked(&path, read_only)?;
        let meta = file.metadata().map_err(|source| ImageError::Open {
            path: path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        let (kind, size) = if ft.is_file() {
            (ImageKind::File, meta.len())
        } else if ft.is_block_device() {
            // A block device's metadata length is 0; its end is its size.
            let size = (&file)
                .seek(SeekFrom::End(0))
                .map_err(|source| ImageError::Size {
                    path: path.clone(),
                    source,
                })?;
            (ImageKind::BlockDevice, size)
        } else {
            return Err(ImageError::NotADisk { path });
        };
        let mut image = DiskImage {
            store: Store::Raw(file),
            format: DiskFormat::Raw,
            path,
            size,
            read_only,
            kind,
            discard: false,
            discard_granularity: 512,
        };
        if kind == ImageKind::File {
            image.warn_if_qcow2();
            if !read_only {
                image.discard = image.probe_punch_hole();
                // Punching frees whole filesystem blocks; a partial one is only zeroed.
                image.discard_granularity =
                    u32::try_from(std::os::unix::fs::MetadataExt::blksize(&meta))
                        .ok()
                        .filter(|b| b.is_power_of_two() && *b >= 512)
                        .unwrap_or(4096);
            }
        }
        Ok(image)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's format.
    pub fn format(&self) -> DiskFormat {
        self.format
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors (a partial last sector is not addressable).
    pub fn sectors(&self) -> u64 {
        self.size / xen_abi::blkif::SECTOR_SIZE
    }

    /// Whether the guest gets the disk read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Regular file or block device.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// Whether [`Self::discard`] can free space (a writable regular file on a
    /// filesystem that punches holes).
    pub fn supports_discard(&self) -> bool {
        self.discard
    }

    /// The unit, in bytes, a discard frees whole.
    pub fn discard_granularity(&self) -> u32 {
        self.discard_granularity
    }

    /// Reads exactly `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.store {
            Store::Raw(file) => file.read_exact_at(buf, offset),
            Store::Qcow2 { access, .. } => access.read(buf, offset),
        }
    }

    /// Writes all of `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match &self.store {
            Store::Raw(file) => file.write_all_at(buf, offset),
            Store::Qcow2 { access, .. } => access.write(buf, offset),
        }
    }

    /// Makes completed writes durable (`fdatasync`; for qcow2, its cached metadata is
    /// written out first).
    pub fn flush(&self) -> io::Result<()> {
        match &self.store {
            Store::Raw(file) => file.sync_data(),
            Store::Qcow2 { access, .. } => {
                access.flush()?;
                access.sync()
            }
        }
    }

    /// Frees `len` bytes at `offset`; they read back as zeroes.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.discard {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        match &self.store {
            Store::Raw(file) => punch_hole(file, offset, len),
            Store::Qcow2 { .. } => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    fn raw_file(&self) -> Option<&File> {
        match &self.store {
            Store::Raw(file) => Some(file),
            Store::Qcow2 { .. } => None,
        }
    }

    /// Whether punching a hole works here: one past the end of the file changes
    /// nothing the guest can see (KEEP_SIZE), and fails where holes are unsupported.
    fn probe_punch_hole(&self) -> bool {
        self.raw_file()
            .is_some_and(|f| punch_hole(f, self.size, 4096).is_ok())
    }

    /// A raw disk whose first bytes are a qcow2 header is almost always a mistake
    /// (the guest would see the qcow2 metadata); say so, but serve what was asked.
    fn warn_if_qcow2(&self) {
        let mut magic = [0u8; 4];
        let Some(mut file) = self.raw_file() else {
            return;
        };
        if file.read_exact(&mut magic).is_ok() && magic == QCOW2_MAGIC {
            log::warn!(
                "the disk image {} looks like qcow2 but is served raw; add ,format=qcow2 if that is not meant",
                self.path.display()
            );
        }
    }
}

/// Opens `path` (for writing unless `read_only`) and takes its lock.
fn open_locked(path: &Path, read_only: bool) -> Result<File, ImageError> {
    let file = match OpenOptions::new().read(true).write(!read_only).open(path) {
        Ok(f) => f,
        Err(source)
            if !read_only
                && (source.kind() == io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(libc::EROFS)) =>
        {
            return Err(ImageError::NotWritable {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => {
            return Err(ImageError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    lock(&file, path, read_only)?;
    Ok(file)
}

fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate only reads its scalar arguments; the descriptor is the open
    // file borrowed for the call.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), ImageError> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock takes a descriptor and flags; the descriptor is the open file
    // borrowed for the call. The lock goes with the descriptor when the file closes.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if source.kind() == io::ErrorKind::WouldBlock {
        Err(ImageError::Locked {
            path: path.to_path_buf(),
        })
    } else {
        Err(ImageError::Lock {
            path: path.to_path_buf(),
            source,
        })
    }
}
