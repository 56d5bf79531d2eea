//! Access to guest virtual memory, as Xen's `copy_{from,to}_guest` give it to hypercalls.
//!
//! Xen dereferences guest pointers directly with the guest's pagetables loaded; the
//! engine, living outside the guest's address space, walks those 4-level tables itself
//! through [`Platform::read_phys`]. The walk is read-only on purpose: the host KVM shadows
//! guest pagetables, so a store into one from outside the VM (even just an accessed or
//! dirty bit) might never be seen by the guest; accessed/dirty bits are therefore not set.
//!
//! Every address is hostile. Non-canonical addresses and the hypervisor hole (where the
//! shim lives, and which no guest pointer may name) fault before any walk, so a guest
//! cannot make the engine read or write the shim's own mappings.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{Platform, Vcpu};
use xen_abi::xen::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

const PAGE_SIZE: u64 = 4096;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;
/// Physical address bits 12-51 of a pagetable entry.
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a guest virtual access failed; hypercalls turn every variant into `-EFAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// The address is not canonical (or the range wraps around the address space).
    NonCanonical {
        /// Offending address.
        va: u64,
    },
    /// The address lies in the hypervisor hole.
    HypervisorHole {
        /// Offending address.
        va: u64,
    },
    /// An entry on the walk is not present (`level` 4 = L4 ... 1 = L1).
    NotPresent {
        /// Offending address.
        va: u64,
        /// Pagetable level whose entry was not present.
        level: u8,
    },
    /// A write through an entry without RW.
    ReadOnly {
        /// Offending address.
        va: u64,
        /// Pagetable level whose entry lacked RW.
        level: u8,
    },
    /// A pagetable or the final frame lies outside guest-physical memory.
    BadPhys {
        /// Offending address.
        va: u64,
    },
}

/// Whether `va` is a canonical 48-bit address.
pub fn is_canonical(va: u64) -> bool {
    ((va as i64) >> 47) == ((va as i64) >> 63)
}

fn check_va(va: u64) -> Result<(), GuestFault> {
    if !is_canonical(va) {
        return Err(GuestFault::NonCanonical { va });
    }
    if (HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).contains(&va) {
        return Err(GuestFault::HypervisorHole { va });
    }
    Ok(())
}

/// Translates one guest virtual address to guest-physical through the tables at `cr3`,
/// checking presence (and RW for writes) at every level.
pub fn translate(cr3: u64, p: &dyn Platform, va: u64, write: bool) -> Result<u64, GuestFault> {
    check_va(va)?;
    let mut table = cr3 & PTE_ADDR_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let index = (va >> shift) & 0x1ff;
        let mut raw = [0u8; 8];
        p.read_phys(table + index * 8, &mut raw)
            .map_err(|_| GuestFault::BadPhys { va })?;
        let entry = u64::from_le_bytes(raw);
        if entry & PTE_PRESENT == 0 {
            return Err(GuestFault::NotPresent { va, level });
        }
        if write && entry & PTE_RW == 0 {
            return Err(GuestFault::ReadOnly { va, level });
        }
        // A PS bit at L3 or L2 maps a 1 GiB or 2 MiB page; at L4 and L1 it means
        // something else (reserved, or PAT), so it must not end the walk there.
        if level == 1 || ((level == 2 || level == 3) && entry & PTE_PS != 0) {
            let size_mask = (1u64 << shift) - 1;
            return Ok((entry & PTE_ADDR_MASK & !size_mask) | (va & size_mask));
        }
        table = entry & PTE_ADDR_MASK;
    }
    unreachable!("the walk returns at level 1")
}

/// Calls `f(gpa, offset, len)` for each page-bounded piece of `[va, va + len)` in order,
/// stopping at the first fault; pieces before the fault have been handled, as with Xen's
/// copy routines.
fn for_each_piece(
    cr3: u64,
    p: &mut dyn Platform,
    va: u64,
    len: usize,
    write: bool,
    mut f: impl FnMut(&mut dyn Platform, u64, usize, usize) -> Result<(), GuestFault>,
) -> Result<(), GuestFault> {
    if len == 0 {
        return Ok(());
    }
    if va.checked_add(len as u64 - 1).is_none() {
        return Err(GuestFault::NonCanonical { va });
    }
    let mut done = 0usize;
    while done < len {
        let cur = va + done as u64;
        let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
        let n = in_page.min(len - done);
        let gpa = translate(cr3, p, cur, write)?;
        f(p, gpa, done, n).map_err(|_| GuestFault::BadPhys { va: cur })?;
        done += n;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at guest virtual `va` through the vCPU's active pagetables.
pub fn copy_from_guest(
    vcpu: &Vcpu,
    p: &dyn Platform,
    va: u64,
    buf: &mut [u8],
) -> Result<(), GuestFault> {
    let cr3 = vcpu.hw_state().cr3;
    if buf.is_empty() {
        return Ok(());
    }
    if va.checked_add(buf.len() as u64 - 1).is_none() {
        return Err(GuestFault::NonCanonical { va });
    }
    let mut done = 0usize;
    while done < buf.len() {
        let cur = va + done as u64;
        let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = translate(cr3, p, cur, false)?;
        p.read_phys(gpa, &mut buf[done..done + n])
            .map_err(|_| GuestFault::BadPhys { va: cur })?;
        done += n;
    }
    Ok(())
}

/// Writes `buf` at guest virtual `va`; every level must grant RW.
pub fn copy_to_guest(
    vcpu: &Vcpu,
    p: &mut dyn Platform,
    va: u64,
    buf: &[u8],
) -> Result<(), GuestFault> {
    let cr3 = vcpu.hw_state().cr3;
    for_each_piece(cr3, p, va, buf.len(), true, |p, gpa, off, n| {
        p.write_phys(gpa, &buf[off..off + n])
            .map_err(|_| GuestFault::BadPhys { va })
    })
}

/// Checks that `[va, va + len)` is writable without writing it: for callers that must not
/// consume input (console reads) before knowing the destination is good.
pub fn check_writable(
    vcpu: &Vcpu,
    p: &mut dyn Platform,
    va: u64,
    len: usize,
) -> Result<(), GuestFault> {
    let cr3 = vcpu.hw_state().cr3;
    for_each_piece(cr3, p, va, len, true, |_, _, _, _| Ok(()))
}

/// Reads one ABI structure at `va`.
pub fn read_obj<T: FromBytes + IntoBytes>(
    vcpu: &Vcpu,
    p: &dyn Platform,
    va: u64,
) -> Result<T, GuestFault> {
    let mut obj = T::new_zeroed();
    copy_from_guest(vcpu, p, va, obj.as_mut_bytes())?;
    Ok(obj)
}

/// Writes one ABI structure at `va`.
pub fn write_obj<T: IntoBytes + Immutable>(
    vcpu: &Vcpu,
    p: &mut dyn Platform,
    va: u64,
    obj: &T,
) -> Result<(), GuestFault> {
    copy_to_guest(vcpu, p, va, obj.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn canonical_and_hole() {
        assert!(is_canonical(0x7fff_ffff_ffff));
        assert!(!is_canonical(0x8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0xfff7_8000_0000_0000));
        let (v, _, mut p) = setup();
        let mut b = [0u8; 1];
        assert_eq!(
            copy_from_guest(&v, &p, 0x8000_0000_0000, &mut b),
            Err(GuestFault::NonCanonical {
                va: 0x8000_0000_0000
            })
        );
        assert_eq!(
            copy_from_guest(&v, &p, HYPERVISOR_VIRT_START + 0x1000, &mut b),
            Err(GuestFault::HypervisorHole {
                va: HYPERVISOR_VIRT_START + 0x1000
            })
        );
        assert_eq!(
            copy_to_guest(&v, &mut p, HYPERVISOR_VIRT_END - 1, &b),
            Err(GuestFault::HypervisorHole {
                va: HYPERVISOR_VIRT_END - 1
            })
        );
        // A range that would wrap past the top of the address space.
        let mut two = [0u8; 2];
        assert!(copy_from_guest(&v, &p, u64::MAX, &mut two).is_err());
    }

    #[test]
    fn read_write_roundtrip_across_pages() {
        let (v, _, mut p) = setup();
        // DATA_VA..+2 pages are mapped to two non-adjacent frames.
        let data: [u8; 64] = core::array::from_fn(|i| i as u8);
        let va = DATA_VA + 0x1000 - 32;
        copy_to_guest(&v, &mut p, va, &data).unwrap();
        let mut back = [0u8; 64];
        copy_from_guest(&v, &p, va, &mut back).unwrap();
        assert_eq!(back, data);
        // Physically: the first half lands at the end of frame 0, the second at frame 1.
        assert_eq!(p.mem[(DATA_GPA + 0x1000 - 32) as usize], 0);
        assert_eq!(p.mem[(DATA_GPA2) as usize], 32);
    }

    #[test]
    fn not_present_and_read_only() {
        let (v, _, mut p) = setup();
        let mut b = [0u8; 8];
        assert_eq!(
            copy_from_guest(&v, &p, UNMAPPED_VA, &mut b),
            Err(GuestFault::NotPresent {
                va: UNMAPPED_VA,
                level: 1
            })
        );
        // Unmapped at L4.
        assert_eq!(
            copy_from_guest(&v, &p, 0x0000_4000_0000_0000, &mut b),
            Err(GuestFault::NotPresent {
                va: 0x0000_4000_0000_0000,
                level: 4
            })
        );
        copy_from_guest(&v, &p, RO_VA, &mut b).unwrap();
        assert_eq!(
            copy_to_guest(&v, &mut p, RO_VA, &b),
            Err(GuestFault::ReadOnly {
                va: RO_VA,
                level: 1
            })
        );
        // RW clear at an upper level only.
        assert_eq!(
            copy_to_guest(&v, &mut p, RO_L2_VA, &b),
            Err(GuestFault::ReadOnly {
                va: RO_L2_VA,
                level: 2
            })
        );
        // A write crossing from a writable into a read-only page fails.
        assert!(copy_to_guest(&v, &mut p, RO_VA - 4, &b).is_err());
        assert!(check_writable(&v, &mut p, RO_VA - 4, 8).is_err());
        assert!(check_writable(&v, &mut p, RO_VA - 8, 8).is_ok());
    }

    #[test]
    fn superpages() {
        let (v, _, mut p) = setup();
        // 2 MiB page at SUPER2M_VA -> gpa 0x20_0000, 1 GiB page at SUPER1G_VA -> gpa 0.
        copy_to_guest(&v, &mut p, SUPER2M_VA + 0x1234, &[0xab]).unwrap();
        assert_eq!(p.mem[0x20_1234], 0xab);
        let mut b = [0u8; 1];
        copy_from_guest(&v, &p, SUPER1G_VA + 0x20_1234, &mut b).unwrap();
        assert_eq!(b[0], 0xab);
        assert_eq!(
            translate(v.kernel_cr3, &p, SUPER1G_VA + 0x3_0000, false),
            Ok(0x3_0000)
        );
    }

    #[test]
    fn pagetable_outside_memory() {
        let (mut v, _, p) = setup();
        v.kernel_cr3 = 0x7fff_f000_0000;
        let mut b = [0u8; 1];
        assert!(matches!(
            copy_from_guest(&v, &p, DATA_VA, &mut b),
            Err(GuestFault::BadPhys { .. })
        ));
    }

    #[test]
    fn user_mode_uses_user_table() {
        let (mut v, _, p) = setup();
        v.mode = crate::Mode::User;
        v.user_cr3 = USER_L4;
        let mut b = [0u8; 1];
        // The user table maps nothing but USER_VA.
        assert!(copy_from_guest(&v, &p, DATA_VA, &mut b).is_err());
        copy_from_guest(&v, &p, USER_VA, &mut b).unwrap();
    }
}
