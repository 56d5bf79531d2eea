//! `public/xen.h` console_io commands and `public/io/console.h` ring layout.

#![allow(missing_docs)]
pub const CONSOLEIO_WRITE: u64 = 0;
pub const CONSOLEIO_READ: u64 = 1;

/// Offsets in the console ring page (`struct xencons_interface`).
pub mod ring {
    pub const IN: u64 = 0;
    pub const IN_SIZE: u64 = 1024;
    pub const OUT: u64 = 1024;
    pub const OUT_SIZE: u64 = 2048;
    pub const IN_CONS: u64 = 3072;
    pub const IN_PROD: u64 = 3076;
    pub const OUT_CONS: u64 = 3080;
    pub const OUT_PROD: u64 = 3084;
}
