//! `public/version.h`: `xen_version` sub-ops and their argument sizes.

#![allow(missing_docs)]
pub const XENVER_VERSION: u64 = 0;
pub const XENVER_EXTRAVERSION: u64 = 1;
pub const XENVER_COMPILE_INFO: u64 = 2;
pub const XENVER_CAPABILITIES: u64 = 3;
pub const XENVER_CHANGESET: u64 = 4;
pub const XENVER_PLATFORM_PARAMETERS: u64 = 5;
pub const XENVER_GET_FEATURES: u64 = 6;
pub const XENVER_PAGESIZE: u64 = 7;
pub const XENVER_GUEST_HANDLE: u64 = 8;
pub const XENVER_COMMANDLINE: u64 = 9;
pub const XENVER_BUILD_ID: u64 = 10;

/// `xen_extraversion_t`: char[16].
pub const EXTRAVERSION_LEN: usize = 16;
/// `xen_capabilities_info_t`: char[1024].
pub const CAPABILITIES_LEN: usize = 1024;
/// `xen_changeset_info_t`: char[64].
pub const CHANGESET_LEN: usize = 64;
/// `xen_compile_info_t`: compiler[64], compile_by[16], compile_domain[32], compile_date[32].
pub const COMPILE_INFO_LEN: usize = 144;
/// `xen_commandline_t`: char[1024].
pub const COMMANDLINE_LEN: usize = 1024;
/// `xen_domain_handle_t`: 16 bytes.
pub const GUEST_HANDLE_LEN: usize = 16;

/// `struct xen_feature_info` (`XENVER_get_features`).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Default,
    Debug,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct FeatureInfo {
    pub submap_idx: u32,
    pub submap: u32,
}

/// `struct xen_platform_parameters` (x86_64).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Default,
    Debug,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
pub struct PlatformParameters {
    pub virt_start: u64,
}
