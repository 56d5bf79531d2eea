//! The PV ABI engine (placeholder, being written).
#![no_std]
