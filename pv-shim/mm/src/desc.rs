//! Segment-descriptor auditing: Xen's `check_descriptor` (arch/x86/pv/descriptor-tables.c)
//! for a 64-bit PV guest.
//!
//! A guest's GDT/LDT frames and `update_descriptor` writes may only hold descriptors that
//! cannot lift the guest above ring 3: code/data descriptors get their DPL raised to 3
//! (`__fixup_guest_selector` with `GUEST_KERNEL_RPL == 3`), call gates must target a guest
//! or flat-kernel code selector and get DPL 0 so every use traps, and all other system
//! descriptors are refused.

use xen_abi::xen::selector::{FIRST_RESERVED_GDT_ENTRY, FLAT_KERNEL_CS};

const SEG_TYPE: u32 = 15 << 8;
const SEG_S: u32 = 1 << 12;
const SEG_DPL: u32 = 3 << 13;
const SEG_P: u32 = 1 << 15;
/// Guest kernel RPL of a 64-bit PV guest (`GUEST_KERNEL_RPL`).
const GUEST_KERNEL_RPL: u32 = 3;

/// `guest_gate_selector_okay`: a gate may target a guest GDT selector below Xen's reserved
/// entries, the flat kernel code selector, or any LDT selector.
fn gate_selector_okay(sel: u32) -> bool {
    ((sel >> 3) as usize) < FIRST_RESERVED_GDT_ENTRY
        || sel == u32::from(FLAT_KERNEL_CS)
        || sel & 4 != 0
}

/// Checks one 8-byte descriptor; returns it with Xen's fixups applied, or None if Xen
/// refuses it.
pub fn check_descriptor(desc: u64) -> Option<u64> {
    let mut a = desc as u32;
    let mut b = (desc >> 32) as u32;

    // A not-present descriptor always faults, so it is safe as is.
    if b & SEG_P == 0 {
        return Some(desc);
    }

    // Raise the DPL to the guest kernel's RPL (the guest kernel runs in ring 3).
    let mut dpl = (b >> 13) & 3;
    if dpl < GUEST_KERNEL_RPL {
        dpl = GUEST_KERNEL_RPL;
    }
    b = (b & !SEG_DPL) | (dpl << 13);

    if b & SEG_S == 0 {
        // System descriptor. Type 0 is the harmless upper half of a 16-byte call gate:
        // accepted unchanged (Xen returns before writing its fixups back).
        if b & SEG_TYPE == 0 {
            return Some(desc);
        }
        // Everything but a 64-bit call gate is refused.
        if b & SEG_TYPE != 0xc00 {
            return None;
        }
        let cs = a >> 16;
        if !gate_selector_okay(cs) {
            return None;
        }
        // DPL 0 makes every use of the gate #GP so it can be emulated; the original DPL
        // is kept in the target selector's RPL.
        b &= !SEG_DPL;
        let cs = (cs & !3) | dpl;
        a = (a & 0xffff) | (cs << 16);
        // Reserved bits of a 64-bit gate must be zero.
        if b & 0xff != 0 {
            return None;
        }
    }
    // Code and data segments: no base/limit checks for a 64-bit guest.
    Some((u64::from(b) << 32) | u64::from(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_present_is_kept() {
        assert_eq!(check_descriptor(0x1234_0000_5678), Some(0x1234_0000_5678));
    }

    #[test]
    fn code_segment_dpl_raised_to_3() {
        // 64-bit code, DPL 0, present: 0x00af9a000000ffff.
        let d = 0x00af_9a00_0000_ffffu64;
        let fixed = check_descriptor(d).unwrap();
        assert_eq!((fixed >> 45) & 3, 3);
        assert_eq!(fixed & !(3 << 45), d & !(3 << 45));
    }

    #[test]
    fn tss_and_ldt_descriptors_refused() {
        // Present 64-bit TSS (type 9), and LDT (type 2).
        assert_eq!(check_descriptor(0x0000_8900_0000_0067), None);
        assert_eq!(check_descriptor(0x0000_8200_0000_0067), None);
    }

    #[test]
    fn call_gate_checked_and_dpl_forced_to_0() {
        // Present call gate (type 0xc), DPL 3, target FLAT_KERNEL_CS.
        let d = (0x0000_ec00u64 << 32) | (u64::from(FLAT_KERNEL_CS) << 16) | 0x1000;
        let fixed = check_descriptor(d).unwrap();
        assert_eq!((fixed >> 45) & 3, 0, "gate DPL forced to 0");
        assert_eq!(
            (fixed >> 16) & 3,
            3,
            "original DPL kept in the selector RPL"
        );
        // A gate into Xen's reserved GDT area is refused.
        let bad_sel = (FIRST_RESERVED_GDT_ENTRY as u64) << 3;
        let d = (0x0000_ec00u64 << 32) | (bad_sel << 16);
        assert_eq!(check_descriptor(d), None);
        // Reserved bits (b & 0xff) refused.
        let d = (0x0000_ec01u64 << 32) | (u64::from(FLAT_KERNEL_CS) << 16);
        assert_eq!(check_descriptor(d), None);
    }

    #[test]
    fn type0_system_descriptor_kept() {
        let d = 0x0000_8000_1234_5678u64;
        assert_eq!(check_descriptor(d), Some(d));
    }
}
