//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` for the freestanding link: the
//! host target's `compiler_builtins` expects them from libc. Written with string
//! instructions so the compiler cannot turn them back into calls to themselves.

use core::arch::asm;

/// Copies `n` bytes forwards.
///
/// # Safety
/// The usual `memcpy` contract: both ranges valid, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds the memcpy contract; rep movsb only touches the ranges.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes, handling overlap.
///
/// # Safety
/// Both ranges valid.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dest is below src or the ranges are disjoint.
        unsafe { memcpy(dest, src, n) }
    } else {
        // SAFETY: copy backwards (DF=1) from the last byte; DF is restored before leaving.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dest.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
        dest
    }
}

/// Fills `n` bytes with `c`.
///
/// # Safety
/// The range is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; rep stosb only writes it.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes.
///
/// # Safety
/// Both ranges valid for reads.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees both ranges; volatile keeps the loop a loop.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only.
///
/// # Safety
/// Both ranges valid for reads.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
