//! `public/sched.h`: `sched_op` commands and shutdown reasons.

#![allow(missing_docs)]
pub const SCHEDOP_YIELD: u64 = 0;
pub const SCHEDOP_BLOCK: u64 = 1;
pub const SCHEDOP_SHUTDOWN: u64 = 2;
pub const SCHEDOP_POLL: u64 = 3;
pub const SCHEDOP_REMOTE_SHUTDOWN: u64 = 4;
pub const SCHEDOP_SHUTDOWN_CODE: u64 = 5;
pub const SCHEDOP_WATCHDOG: u64 = 6;
pub const SCHEDOP_PIN_OVERRIDE: u64 = 7;

pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;
pub const SHUTDOWN_WATCHDOG: u32 = 4;
pub const SHUTDOWN_SOFT_RESET: u32 = 5;

/// Name of a shutdown reason.
pub fn shutdown_reason_name(reason: u32) -> &'static str {
    match reason {
        SHUTDOWN_POWEROFF => "poweroff",
        SHUTDOWN_REBOOT => "reboot",
        SHUTDOWN_SUSPEND => "suspend",
        SHUTDOWN_CRASH => "crash",
        SHUTDOWN_WATCHDOG => "watchdog",
        SHUTDOWN_SOFT_RESET => "soft_reset",
        _ => "unknown",
    }
}

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct sched_poll` (x86_64), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedPoll {
    pub ports: u64,
    pub nr_ports: u32,
    pub _pad: u32,
    pub timeout: u64,
}

/// `struct sched_remote_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SchedRemoteShutdown {
    pub domain_id: u16,
    pub _pad: u16,
    pub reason: u32,
}
