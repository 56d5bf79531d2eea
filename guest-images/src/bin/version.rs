//! `version`: `HYPERVISOR_xen_version` sub-ops a PV kernel relies on.
//!
//! Asserts: XENVER_version >= 3.0 (major in bits 16-31); XENVER_extraversion returns 0
//! and a non-empty string; XENVER_capabilities returns 0 and contains "xen-3.0-x86_64";
//! XENVER_get_features submap 0 has mmu_pt_update_preserve_ad (5) and
//! gnttab_map_avail_bits (7) and not auto_translated_physmap (2); XENVER_pagesize is
//! 4096; XENVER_platform_parameters.virt_start is HYPERVISOR_VIRT_START
//! (0xffff800000000000, what release builds of Xen report to 64-bit PV); an undefined
//! sub-op (99) returns -ENOSYS.
#![no_std]
#![no_main]

use pv_test_kernels::hypercall::{abi_extra, xen_version, FeatureInfo};
use pv_test_kernels::xen_abi::{errno, features, version as ver, xen};
use pv_test_kernels::{check_eq, check_rc, fail, println, test_kernel, StartInfo};

test_kernel!(main);

fn cstr(buf: &[u8]) -> &str {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    core::str::from_utf8(&buf[..n]).unwrap_or("<not utf-8>")
}

fn main(_si: &'static StartInfo) {
    // SAFETY: the argument is null where the sub-op takes none; each buffer below is at
    // least as large as the structure its sub-op writes.
    let v = unsafe { xen_version(ver::XENVER_VERSION, core::ptr::null_mut()) };
    let (major, minor) = (v >> 16, v & 0xffff);
    if v <= 0 || major < 3 {
        fail!("XENVER_version: returned {:#x}, expected major >= 3", v);
    }

    let mut extra = [0u8; ver::EXTRAVERSION_LEN];
    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(ver::XENVER_EXTRAVERSION, extra.as_mut_ptr()) };
    check_rc!("XENVER_extraversion", rc, 0);
    if extra[0] == 0 {
        fail!("XENVER_extraversion: empty string");
    }

    let mut caps = [0u8; ver::CAPABILITIES_LEN];
    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(ver::XENVER_CAPABILITIES, caps.as_mut_ptr()) };
    check_rc!("XENVER_capabilities", rc, 0);
    let caps_str = cstr(&caps);
    if !caps_str.contains("xen-3.0-x86_64") {
        fail!(
            "XENVER_capabilities: \"{}\" does not contain \"xen-3.0-x86_64\"",
            caps_str
        );
    }

    let mut fi = FeatureInfo {
        submap_idx: 0,
        submap: 0,
    };
    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(ver::XENVER_GET_FEATURES, &mut fi as *mut _ as *mut u8) };
    check_rc!("XENVER_get_features(0)", rc, 0);
    for (bit, name, want) in [
        (
            features::MMU_PT_UPDATE_PRESERVE_AD,
            "mmu_pt_update_preserve_ad",
            true,
        ),
        (
            features::GNTTAB_MAP_AVAIL_BITS,
            "gnttab_map_avail_bits",
            true,
        ),
        (
            features::AUTO_TRANSLATED_PHYSMAP,
            "auto_translated_physmap",
            false,
        ),
    ] {
        let have = fi.submap & (1 << bit) != 0;
        if have != want {
            fail!(
                "XENVER_get_features(0): submap {:#x}: bit {} ({}) is {}, expected {}",
                fi.submap,
                bit,
                name,
                if have { "set" } else { "clear" },
                if want { "set" } else { "clear" }
            );
        }
    }

    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(ver::XENVER_PAGESIZE, core::ptr::null_mut()) };
    check_rc!("XENVER_pagesize", rc, 4096);

    let mut params = [0u8; abi_extra::PLATFORM_PARAMETERS_LEN];
    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(ver::XENVER_PLATFORM_PARAMETERS, params.as_mut_ptr()) };
    check_rc!("XENVER_platform_parameters", rc, 0);
    check_eq!(
        "XENVER_platform_parameters.virt_start",
        u64::from_le_bytes(params),
        xen::HYPERVISOR_VIRT_START
    );

    // SAFETY: the argument is a local buffer of the size this sub-op writes, or NULL where it takes none.
    let rc = unsafe { xen_version(abi_extra::XENVER_UNDEFINED, core::ptr::null_mut()) };
    check_rc!("xen_version(99)", rc, -errno::ENOSYS);

    println!(
        "Xen {}.{}{}, capabilities \"{}\", features[0] {:#x}",
        major,
        minor,
        cstr(&extra),
        caps_str,
        fi.submap
    );
}
