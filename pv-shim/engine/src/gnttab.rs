//! `grant_table_op`: the version-1 grant table of the domain, as far as a guest with no
//! peer domain needs it. The table's frames are hypervisor frames shared with the guest
//! (outside its RAM, like `shared_info`; the host lists them in the MMU engine's shared
//! frames so the guest may map them writable). `setup_table` grows the table and names its
//! frames, `query_size` reports the sizes, `set_version`/`get_version` keep version 1.
//!
//! Mapping or copying another domain's grants needs a granting domain; pvkvm has none
//! (its backends live in the VMM and do not grant), so those operations answer -ENOSYS,
//! as a Xen built without grant-table support would.

use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, ESRCH};
use xen_abi::grant_table::*;

use crate::{guest, Domain, Platform, Vcpu};

/// The domain's grant table: `max_frames` contiguous machine frames from `first_mfn`, of
/// which the first `nr_frames` are in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantTable {
    /// Machine frame of table frame 0.
    pub first_mfn: u64,
    /// Frames the table may grow to (Xen's `max_grant_frames`).
    pub max_frames: u32,
    /// Frames in use; Xen starts a domain with one.
    pub nr_frames: u32,
}

impl GrantTable {
    /// A table of up to `max_frames` frames at `first_mfn`, one in use.
    pub fn new(first_mfn: u64, max_frames: u32) -> Self {
        GrantTable {
            first_mfn,
            max_frames,
            nr_frames: max_frames.min(1),
        }
    }
}

/// `GNTTABOP_setup_table`: grow the table to `nr_frames` and list frames `0..nr_frames`.
fn setup_table(vcpu: &Vcpu, dom: &mut Domain, p: &mut dyn Platform, uop: u64) -> i64 {
    let Ok(op) = guest::read_obj::<GnttabSetupTable>(vcpu, p, uop) else {
        return -EFAULT;
    };
    let gt = dom.gnttab;
    let status = if !crate::is_own_domain(op.dom) {
        // Xen looks the domain up first: an unprivileged guest names no other one.
        status::BAD_DOMAIN
    } else if op.nr_frames > gt.max_frames {
        status::GENERAL_ERROR
    } else {
        dom.gnttab.nr_frames = gt.nr_frames.max(op.nr_frames);
        let mut st = status::OKAY;
        for i in 0..u64::from(op.nr_frames) {
            let slot = op.frame_list.wrapping_add(i * 8);
            if guest::write_obj(vcpu, p, slot, &(gt.first_mfn + i)).is_err() {
                st = status::BAD_VIRT_ADDR;
                break;
            }
        }
        st
    };
    match guest::write_obj(vcpu, p, uop + SETUP_TABLE_STATUS, &status) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// `GNTTABOP_query_size`.
fn query_size(vcpu: &Vcpu, dom: &Domain, p: &mut dyn Platform, uop: u64) -> i64 {
    let Ok(mut op) = guest::read_obj::<GnttabQuerySize>(vcpu, p, uop) else {
        return -EFAULT;
    };
    if crate::is_own_domain(op.dom) {
        op.nr_frames = dom.gnttab.nr_frames;
        op.max_nr_frames = dom.gnttab.max_frames;
        op.status = status::OKAY;
    } else {
        op.status = status::BAD_DOMAIN;
    }
    match guest::write_obj(vcpu, p, uop, &op) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// `GNTTABOP_set_version`: version 1 is the only one in force; asking for 2 is refused
/// the way Xen refuses it when the domain's maximum version is 1.
fn set_version(vcpu: &Vcpu, p: &mut dyn Platform, uop: u64) -> i64 {
    let Ok(op) = guest::read_obj::<GnttabSetVersion>(vcpu, p, uop) else {
        return -EFAULT;
    };
    let rc = match op.version {
        1 => 0,
        2 => -ENOSYS,
        _ => -EINVAL,
    };
    match guest::write_obj(vcpu, p, uop, &GnttabSetVersion { version: 1 }) {
        Ok(()) => rc,
        Err(_) => -EFAULT,
    }
}

/// `GNTTABOP_get_version`.
fn get_version(vcpu: &Vcpu, p: &mut dyn Platform, uop: u64) -> i64 {
    let Ok(mut op) = guest::read_obj::<GnttabGetVersion>(vcpu, p, uop) else {
        return -EFAULT;
    };
    if !crate::is_own_domain(op.dom) {
        return -ESRCH;
    }
    op.version = 1;
    match guest::write_obj(vcpu, p, uop, &op) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// `HYPERVISOR_grant_table_op(cmd, uop, count)`.
pub fn do_grant_table_op(
    vcpu: &mut Vcpu,
    dom: &mut Domain,
    p: &mut dyn Platform,
    cmd: u64,
    uop: u64,
    count: u32,
) -> i64 {
    match cmd {
        // These take exactly one record (Xen: -EINVAL otherwise).
        GNTTABOP_SETUP_TABLE | GNTTABOP_QUERY_SIZE | GNTTABOP_SET_VERSION
        | GNTTABOP_GET_VERSION
            if count != 1 =>
        {
            -EINVAL
        }
        GNTTABOP_SETUP_TABLE => setup_table(vcpu, dom, p, uop),
        GNTTABOP_QUERY_SIZE => query_size(vcpu, dom, p, uop),
        GNTTABOP_SET_VERSION => set_version(vcpu, p, uop),
        GNTTABOP_GET_VERSION => get_version(vcpu, p, uop),
        _ => -ENOSYS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const FIRST: u64 = 0x9_0000;

    const SCRATCH: u64 = DATA_VA;

    fn with_table() -> (Vcpu, crate::Domain, FakePlatform) {
        let (v, mut d, p) = setup();
        d.gnttab = GrantTable::new(FIRST, 4);
        (v, d, p)
    }

    fn put<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        v: &Vcpu,
        p: &mut FakePlatform,
        va: u64,
        obj: &T,
    ) {
        guest::write_obj(v, p, va, obj).unwrap();
    }

    fn get<T: zerocopy::FromBytes + zerocopy::IntoBytes>(v: &Vcpu, p: &FakePlatform, va: u64) -> T {
        guest::read_obj(v, p, va).unwrap()
    }

    #[test]
    fn query_size_reports_one_of_four_frames() {
        let (mut v, mut d, mut p) = with_table();
        let op = GnttabQuerySize {
            dom: xen_abi::xen::DOMID_SELF,
            ..Default::default()
        };
        put(&v, &mut p, SCRATCH, &op);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_QUERY_SIZE, SCRATCH, 1),
            0
        );
        let out: GnttabQuerySize = get(&v, &p, SCRATCH);
        assert_eq!((out.nr_frames, out.max_nr_frames, out.status), (1, 4, 0));
    }

    #[test]
    fn setup_table_lists_frames_and_grows_the_table() {
        let (mut v, mut d, mut p) = with_table();
        let list = SCRATCH + 0x100;
        let op = GnttabSetupTable {
            dom: xen_abi::xen::DOMID_SELF,
            nr_frames: 3,
            status: 77,
            frame_list: list,
            ..Default::default()
        };
        put(&v, &mut p, SCRATCH, &op);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_SETUP_TABLE, SCRATCH, 1),
            0
        );
        let out: GnttabSetupTable = get(&v, &p, SCRATCH);
        assert_eq!(out.status, status::OKAY);
        for i in 0..3 {
            assert_eq!(get::<u64>(&v, &p, list + 8 * i), FIRST + i);
        }
        assert_eq!(d.gnttab.nr_frames, 3);
    }

    #[test]
    fn setup_table_refuses_more_than_the_maximum_and_other_domains() {
        let (mut v, mut d, mut p) = with_table();
        let mut op = GnttabSetupTable {
            dom: xen_abi::xen::DOMID_SELF,
            nr_frames: 5,
            frame_list: SCRATCH + 0x100,
            ..Default::default()
        };
        put(&v, &mut p, SCRATCH, &op);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_SETUP_TABLE, SCRATCH, 1),
            0
        );
        assert_eq!(
            get::<GnttabSetupTable>(&v, &p, SCRATCH).status,
            status::GENERAL_ERROR
        );
        assert_eq!(
            d.gnttab.nr_frames, 1,
            "a refused setup leaves the table alone"
        );

        op.nr_frames = 1;
        op.dom = 0;
        put(&v, &mut p, SCRATCH, &op);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_SETUP_TABLE, SCRATCH, 1),
            0
        );
        assert_eq!(
            get::<GnttabSetupTable>(&v, &p, SCRATCH).status,
            status::BAD_DOMAIN
        );
    }

    #[test]
    fn setup_table_with_an_unwritable_list_says_bad_virt_addr() {
        let (mut v, mut d, mut p) = with_table();
        let op = GnttabSetupTable {
            dom: xen_abi::xen::DOMID_SELF,
            nr_frames: 1,
            frame_list: 0xdead_0000_0000,
            ..Default::default()
        };
        put(&v, &mut p, SCRATCH, &op);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_SETUP_TABLE, SCRATCH, 1),
            0
        );
        assert_eq!(
            get::<GnttabSetupTable>(&v, &p, SCRATCH).status,
            status::BAD_VIRT_ADDR
        );
    }

    #[test]
    fn counts_versions_and_unknown_ops() {
        let (mut v, mut d, mut p) = with_table();
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_QUERY_SIZE, SCRATCH, 2),
            -EINVAL
        );
        assert_eq!(
            do_grant_table_op(
                &mut v,
                &mut d,
                &mut p,
                GNTTABOP_QUERY_SIZE,
                0xdead_0000_0000,
                1
            ),
            -EFAULT
        );
        put(&v, &mut p, SCRATCH, &GnttabSetVersion { version: 2 });
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_SET_VERSION, SCRATCH, 1),
            -ENOSYS
        );
        assert_eq!(get::<GnttabSetVersion>(&v, &p, SCRATCH).version, 1);
        put(
            &v,
            &mut p,
            SCRATCH,
            &GnttabGetVersion {
                dom: xen_abi::xen::DOMID_SELF,
                ..Default::default()
            },
        );
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_GET_VERSION, SCRATCH, 1),
            0
        );
        assert_eq!(get::<GnttabGetVersion>(&v, &p, SCRATCH).version, 1);
        assert_eq!(
            do_grant_table_op(&mut v, &mut d, &mut p, GNTTABOP_MAP_GRANT_REF, SCRATCH, 1),
            -ENOSYS
        );
    }
}
