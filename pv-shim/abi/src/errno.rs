//! `public/errno.h`: the error numbers hypercalls return, negated.

#![allow(missing_docs)]
pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const ESRCH: i64 = 3;
pub const EINTR: i64 = 4;
pub const EIO: i64 = 5;
pub const E2BIG: i64 = 7;
pub const EBADF: i64 = 9;
pub const EAGAIN: i64 = 11;
pub const ENOMEM: i64 = 12;
pub const EACCES: i64 = 13;
pub const EFAULT: i64 = 14;
pub const EBUSY: i64 = 16;
pub const EEXIST: i64 = 17;
pub const ENODEV: i64 = 19;
pub const EINVAL: i64 = 22;
pub const ENOSPC: i64 = 28;
pub const ERANGE: i64 = 34;
pub const ENOSYS: i64 = 38;
pub const ENODATA: i64 = 61;
pub const ETIME: i64 = 62;
/// Xen-internal: the operation was preempted and continues in a continuation; a guest
/// never sees it (the hypercall is re-executed).
pub const ERESTART: i64 = 85;
pub const EOPNOTSUPP: i64 = 95;
