//! `public/io/blkif.h`: the block device protocol.
