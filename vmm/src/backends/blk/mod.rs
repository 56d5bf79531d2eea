//! blkback: the block device backend (`public/io/blkif.h`).
