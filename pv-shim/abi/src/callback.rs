//! `public/callback.h`: `callback_op` commands and callback types.

#![allow(missing_docs)]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const CALLBACKOP_REGISTER: u64 = 0;
pub const CALLBACKOP_UNREGISTER: u64 = 1;

pub const CALLBACKTYPE_EVENT: u16 = 0;
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
pub const CALLBACKTYPE_NMI: u16 = 4;
pub const CALLBACKTYPE_SYSENTER: u16 = 5;
pub const CALLBACKTYPE_SYSCALL32: u16 = 7;

/// Entering the callback masks event delivery.
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// `struct callback_register` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CallbackRegister {
    pub kind: u16,
    pub flags: u16,
    pub _pad: u32,
    pub address: u64,
}

/// `struct callback_unregister`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CallbackUnregister {
    pub kind: u16,
    pub _unused: u16,
}
