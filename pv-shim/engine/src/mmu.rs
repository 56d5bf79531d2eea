//! The pagetable hypercalls over the PV MMU engine (`pv-mm`): `mmu_update`,
//! `mmuext_op`, `update_va_mapping`, `set_gdt`, `update_descriptor`. This module reads
//! the guest's request records, resolves virtual addresses through the guest's own
//! tables, and turns each request into one `pv_mm::Mm` operation; the typing,
//! validation and reference counting live in `pv-mm`. TLB work is accumulated in the
//! platform's flush set and carried out by the host before the guest runs again.
//!
//! A batch is served in one trap as long as the host's budget lasts (its
//! [`Platform::hypercall_preempt_check`]: about a millisecond of work or a cap on the
//! pagetable stores queued for the guest, in the VMM placement), which covers every batch
//! Linux makes. A longer one is preempted between records as Xen preempts it: `*pdone`
//! gets the records done so far and the guest re-executes the call with the list
//! advanced and `count - done | MMU_UPDATE_PREEMPTED`. A record whose operation stopped
//! part-way (`-ERESTART`, a large pagetable validation) is not counted done and is
//! continued the same way: pv-mm gives each operation a budget of
//! [`MM_PREEMPT_ENTRIES`] entries and answers `-ERESTART` past it, and the same record
//! issued again resumes the validation where it stopped.
//!
//! TLB work accumulates in the flush set as single-address invalidations until there are
//! more than one apply can carry ([`MAX_INVLPG`]); then it becomes a full flush, so the
//! set stays small whatever the batch.

use pv_mm::{FlushSet, Level, Mfn, MmError};
use xen_abi::errno::{EACCES, EFAULT, EINVAL, ENOSYS, EOPNOTSUPP, ERESTART, ESRCH};
use xen_abi::xen::hypercall as hc;
use xen_abi::xen::mmuext::{self, MmuextOp, MMU_UPDATE_PREEMPTED};
use xen_abi::xen::{selector, MmuUpdate, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};
use zerocopy::{FromBytes, IntoBytes};

use crate::guest::{self, is_canonical};
use crate::hypercall::{addr_ok, Action};
use crate::{Domain, MmCtx, Platform, Vcpu};

/// Single-address invalidations a flush set holds at most; one more turns it into a full
/// flush. The posting area carries this many to the shim
/// (`xen_abi::contract::MAX_POSTED_INVLPG`).
pub const MAX_INVLPG: usize = xen_abi::contract::MAX_POSTED_INVLPG;

/// The flush set a host accumulates until the guest runs again ([`MmCtx::flush`]): up to
/// [`MAX_INVLPG`] single addresses in a fixed array (4 KiB), so it lives in the host's
/// storage (one per vCPU) and is only ever passed by reference.
pub type BatchFlush = FlushSet<MAX_INVLPG>;

/// `mmu_update` commands (low two bits of `ptr`).
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// Update the M2P entry of the frame `ptr >> 12` to `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// As a normal update, but keep the accessed and dirty bits the hardware set.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;

/// `update_va_mapping` flags: the flush type in the low bits.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Flush the whole TLB.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// Invalidate the one address.
pub const UVMF_INVLPG: u64 = 2;
/// Flush on all vCPUs.
pub const UVMF_ALL: u64 = 4;
/// Flush on the vCPUs in the mask the rest of the flags point at.
pub const UVMF_MULTI: u64 = 0;

/// Xen's `get_page_from_gfn` + `get_page_type(PGT_writable_page)` for a page the
/// hypervisor keeps writing on the guest's behalf (vcpu_info, the PIRQ EOI map): one
/// general and one writable type reference on a frame of the guest's own. False for a
/// shared hypervisor frame or a frame that cannot be writable (a pagetable, a descriptor
/// page, not the domain's).
pub(crate) fn get_writable_page(ctx: MmCtx<'_>, mfn: u64) -> bool {
    if ctx.mm.is_shared(mfn) {
        return false;
    }
    match ctx
        .mm
        .get_page_and_type(ctx.mem, mfn, pv_mm::PageType::Writable)
    {
        Ok(f) => {
            merge_flush(ctx.flush, f);
            true
        }
        Err(_) => false,
    }
}

/// Merges `more` into `into`. A full flush makes single-address invalidations moot; more
/// than [`MAX_INVLPG`] of them become a full flush, so a flush set never grows beyond
/// that bound.
pub fn merge_flush(into: &mut BatchFlush, more: FlushSet) {
    into.local_all |= more.local_all;
    into.all_vcpus |= more.all_vcpus;
    if !into.local_all && !into.all_vcpus && !into.invlpg.try_extend(&more.invlpg) {
        into.local_all = true;
    }
    if into.local_all || into.all_vcpus {
        into.invlpg.clear();
    }
}

/// The errno of a pv-mm error; `MmError::Restart` is `-ERESTART`: the operation was
/// preempted part-way and resumes when issued again (Xen's continuation).
fn errno(e: MmError) -> i64 {
    e.errno()
}

/// Entries one pv-mm operation (a pin, a base-pointer load, an L3/L4 entry update) may
/// check before it stops with `-ERESTART`: the engine's stand-in for Xen's
/// `hypercall_preempt_check()` inside validation, decided without the platform. About
/// 0.3 to 0.7 ms of validation on the development host (pv-mm's `large_pin_timing`).
pub const MM_PREEMPT_ENTRIES: u32 = 16 << 10;

/// The frame table with the preemption budget set for the next operation.
fn budgeted<'a>(ctx: MmCtx<'a>) -> MmCtx<'a> {
    ctx.mm.set_preempt_budget(Some(MM_PREEMPT_ENTRIES));
    ctx
}

/// Xen's `put_old_guest_table(curr)` at the entry of every MMU hypercall: finishes
/// (under the budget) the teardown an unpin, base-pointer switch or entry update left
/// part-way. True when work is left: the caller continues the hypercall unchanged.
pub(crate) fn put_old_guest_table(p: &mut dyn Platform) -> bool {
    let Some(ctx) = p.mm().map(budgeted) else {
        return false;
    };
    if !ctx.mm.has_deferred_put() {
        return false;
    }
    ctx.mm.put_old_guest_table(ctx.mem) == Err(MmError::Restart)
}

/// Whether a teardown is left for [`put_old_guest_table`].
fn deferred_put_pending(p: &mut dyn Platform) -> bool {
    p.mm().is_some_and(|ctx| ctx.mm.has_deferred_put())
}

/// The top-level tables this vCPU has loaded, as frames.
fn roots(vcpu: &Vcpu) -> [Mfn; 2] {
    [vcpu.kernel_cr3 >> 12, vcpu.user_cr3 >> 12]
}

/// Xen's `__addr_ok` for a guest linear address: not in the hypervisor hole, canonical.
fn guest_va_ok(va: u64) -> bool {
    is_canonical(va) && !(HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).contains(&va)
}

/// The batch loop `mmu_update` (`nr`) and `mmuext_op` share, as Xen's `do_mmu_update`
/// and `do_mmuext_op`: reads the `count` records of `T` at `list` (`a`: list, count,
/// pdone, foreigndom), runs `one` on each until one fails, and adds the records done to
/// `*pdone` (continuing the count a continuation carried over with
/// `MMU_UPDATE_PREEMPTED`). Preempted before a record (never the first), or when a
/// record answers `-ERESTART` (that record is not done), it writes `*pdone` and
/// continues with the list advanced to that record and `(count - i) |
/// MMU_UPDATE_PREEMPTED`.
fn batch<T: FromBytes + IntoBytes>(
    vcpu: &mut Vcpu,
    p: &mut dyn Platform,
    nr: u64,
    a: [u64; 5],
    mut one: impl FnMut(&mut Vcpu, &mut dyn Platform, &T) -> i64,
) -> Action {
    // Xen's put_old_guest_table() on entry: a teardown an earlier call left part-way is
    // finished before anything else; out of budget again, the call is continued as is.
    if put_old_guest_table(p) {
        return Action::cont(nr, a);
    }
    let (list, mut count, pdone, foreigndom) = (a[0], a[1] as u32, a[2], a[3] as u32);
    if count == MMU_UPDATE_PREEMPTED && list == 0 {
        // A continuation carrying a final result in `foreigndom` (Xen's form).
        return Action::Ret(i64::from(foreigndom as i32));
    }
    let mut done: u32 = 0;
    if count & MMU_UPDATE_PREEMPTED != 0 {
        count &= !MMU_UPDATE_PREEMPTED;
        if pdone != 0 {
            done = guest::read_obj(vcpu, p, pdone).unwrap_or(0);
        }
    }
    // Xen's guest_handle_okay: the list must start outside the hypervisor hole.
    if !addr_ok(list) {
        return Action::Ret(-EFAULT);
    }
    if !crate::is_own_domain(foreigndom as u16) {
        return Action::Ret(-ESRCH);
    }
    let size = core::mem::size_of::<T>() as u64;
    let mut rc = 0;
    let mut i: u32 = 0;
    let mut va = list;
    while i < count {
        // A record that left a teardown part-way (Xen: old_guest_table set) ends the
        // batch here; the continuation finishes the teardown first.
        if i > 0 && (p.hypercall_preempt_check() || deferred_put_pending(p)) {
            rc = -ERESTART;
            break;
        }
        let item: T = match guest::read_obj(vcpu, p, va) {
            Ok(r) => r,
            Err(_) => {
                rc = -EFAULT;
                break;
            }
        };
        rc = one(vcpu, p, &item);
        if rc != 0 {
            break;
        }
        i += 1;
        // A list that runs off the end of the address space faults at the next record.
        match va.checked_add(size) {
            Some(next) => va = next,
            None if i < count => {
                rc = -EFAULT;
                break;
            }
            None => {}
        }
    }
    if pdone != 0 {
        let _ = guest::write_obj(vcpu, p, pdone, &done.wrapping_add(i));
    }
    if rc == -ERESTART {
        let left = (count - i) | MMU_UPDATE_PREEMPTED;
        return Action::cont(
            nr,
            [va, u64::from(left), pdone, u64::from(foreigndom), a[4]],
        );
    }
    if deferred_put_pending(p) {
        // Xen's do_mmu_update/do_mmuext_op: the last record left a teardown in this
        // vCPU's old_guest_table, so the call ends in a continuation that finishes it
        // (on entry, above) before the guest runs on, carrying the final result in
        // `foreigndom`.
        return Action::cont(
            nr,
            [
                0,
                u64::from(MMU_UPDATE_PREEMPTED),
                0,
                u64::from(rc as i32 as u32),
                a[4],
            ],
        );
    }
    Action::Ret(rc)
}

/// `mmu_update(reqs, count, pdone, foreigndom)`.
pub(crate) fn do_mmu_update(vcpu: &mut Vcpu, p: &mut dyn Platform, a: [u64; 5]) -> Action {
    batch::<MmuUpdate>(vcpu, p, hc::MMU_UPDATE, a, mmu_update_one)
}

fn mmu_update_one(vcpu: &mut Vcpu, p: &mut dyn Platform, req: &MmuUpdate) -> i64 {
    let roots = roots(vcpu);
    let Some(ctx) = p.mm().map(budgeted) else {
        return -ENOSYS;
    };
    match req.ptr & 3 {
        cmd @ (MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD) => {
            let maddr = req.ptr & !3;
            if maddr & 7 != 0 {
                return -EINVAL;
            }
            let (table, slot) = (maddr >> 12, ((maddr & 0xfff) >> 3) as usize);
            match ctx.mm.mod_entry(
                ctx.mem,
                table,
                slot,
                req.val,
                cmd == MMU_PT_UPDATE_PRESERVE_AD,
                &roots,
            ) {
                Ok(f) => {
                    merge_flush(ctx.flush, f);
                    0
                }
                Err(e) => errno(e),
            }
        }
        MMU_MACHPHYS_UPDATE => match ctx.mm.machphys_update(ctx.mem, req.ptr >> 12, req.val) {
            Ok(()) => 0,
            Err(e) => errno(e),
        },
        _ => -ENOSYS,
    }
}

/// `mmuext_op(ops, count, pdone, foreigndom)`.
pub(crate) fn do_mmuext_op(
    vcpu: &mut Vcpu,
    dom: &Domain,
    p: &mut dyn Platform,
    a: [u64; 5],
    stats: &mut crate::Stats,
) -> Action {
    let nr_vcpus = dom.nr_vcpus();
    batch::<MmuextOp>(vcpu, p, hc::MMUEXT_OP, a, |v, p, op| {
        stats.count_mmuext(op.cmd);
        mmuext_one(v, nr_vcpus, p, op)
    })
}

/// Which vCPUs a vCPU bitmap of the `*_MULTI` flushes names, as the flush it asks for:
/// this vCPU's TLB (`local_all`) and the others' (`all_vcpus`, carried out on every vCPU
/// of the domain: a superset is always correct). Reads the words of the domain's
/// `nr_vcpus` bits, as Xen's `vcpumask_to_pcpumask` does.
fn mask_flush(vcpu: &Vcpu, nr_vcpus: u32, p: &dyn Platform, mask_va: u64) -> Result<FlushSet, i64> {
    let mut flush = FlushSet::default();
    for w in 0..nr_vcpus.div_ceil(64) {
        let word: u64 = guest::read_obj(vcpu, p, mask_va.wrapping_add(u64::from(w) * 8))
            .map_err(|_| -EFAULT)?;
        let bits = (nr_vcpus - w * 64).min(64);
        let word = if bits == 64 {
            word
        } else {
            word & ((1 << bits) - 1)
        };
        let own = if vcpu.id / 64 == w {
            1u64 << (vcpu.id % 64)
        } else {
            0
        };
        flush.local_all |= word & own != 0;
        flush.all_vcpus |= word & !own != 0;
    }
    Ok(flush)
}

fn mmuext_one(vcpu: &mut Vcpu, nr_vcpus: u32, p: &mut dyn Platform, op: &MmuextOp) -> i64 {
    let level = match op.cmd {
        mmuext::PIN_L1_TABLE => Some(Level::L1),
        mmuext::PIN_L2_TABLE => Some(Level::L2),
        mmuext::PIN_L3_TABLE => Some(Level::L3),
        mmuext::PIN_L4_TABLE => Some(Level::L4),
        _ => None,
    };
    let flush_multi = match op.cmd {
        mmuext::TLB_FLUSH_MULTI | mmuext::INVLPG_MULTI => {
            match mask_flush(vcpu, nr_vcpus, p, op.arg2) {
                Ok(named) => Some(named),
                Err(e) => return e,
            }
        }
        _ => None,
    };
    let (kernel_root, user_root) = (vcpu.kernel_cr3 >> 12, vcpu.user_cr3 >> 12);
    let Some(ctx) = p.mm().map(budgeted) else {
        return -ENOSYS;
    };
    let result: Result<FlushSet, MmError> = match op.cmd {
        _ if level.is_some() => ctx
            .mm
            .pin_table(ctx.mem, op.arg1, level.unwrap_or(Level::L1)),
        mmuext::UNPIN_TABLE => ctx.mm.unpin_table(ctx.mem, op.arg1),
        mmuext::NEW_BASEPTR => {
            if op.arg1 == kernel_root {
                Ok(FlushSet {
                    local_all: true,
                    ..Default::default()
                })
            } else {
                let r = ctx.mm.set_root(ctx.mem, Some(kernel_root), Some(op.arg1));
                if r.is_ok() {
                    vcpu.kernel_cr3 = op.arg1 << 12;
                }
                r.map(|mut f| {
                    f.local_all = true;
                    f
                })
            }
        }
        mmuext::NEW_USER_BASEPTR => {
            if op.arg1 == user_root {
                Ok(FlushSet::default())
            } else {
                let old = (user_root != 0).then_some(user_root);
                let new = (op.arg1 != 0).then_some(op.arg1);
                let r = ctx.mm.set_root(ctx.mem, old, new);
                if r.is_ok() {
                    vcpu.user_cr3 = op.arg1 << 12;
                }
                r
            }
        }
        mmuext::TLB_FLUSH_LOCAL => Ok(FlushSet {
            local_all: true,
            ..Default::default()
        }),
        // Every vCPU of the domain (the others' TLBs as a whole: see mask_flush).
        mmuext::TLB_FLUSH_ALL => Ok(FlushSet {
            local_all: true,
            all_vcpus: nr_vcpus > 1,
            ..Default::default()
        }),
        mmuext::INVLPG_LOCAL | mmuext::INVLPG_ALL => {
            if guest_va_ok(op.arg1) {
                Ok(FlushSet {
                    invlpg: pv_mm::InvlpgList::one(op.arg1),
                    all_vcpus: op.cmd == mmuext::INVLPG_ALL && nr_vcpus > 1,
                    ..Default::default()
                })
            } else {
                Ok(FlushSet::default())
            }
        }
        mmuext::TLB_FLUSH_MULTI => Ok(flush_multi.unwrap_or_default()),
        mmuext::INVLPG_MULTI => Ok(match flush_multi {
            Some(named) if guest_va_ok(op.arg1) => FlushSet {
                invlpg: if named.local_all {
                    pv_mm::InvlpgList::one(op.arg1)
                } else {
                    pv_mm::InvlpgList::new()
                },
                all_vcpus: named.all_vcpus,
                ..Default::default()
            },
            _ => FlushSet::default(),
        }),
        // An unprivileged domain may not flush caches (Xen: cache_flush_permitted()).
        mmuext::FLUSH_CACHE | mmuext::FLUSH_CACHE_GLOBAL => return -EACCES,
        mmuext::SET_LDT => {
            let (base, ents) = (op.arg1, op.arg2);
            if base & 0xfff != 0 || ents > 8192 || (ents != 0 && !guest_va_ok(base)) {
                return -EINVAL;
            }
            vcpu.ldt_base = base;
            vcpu.ldt_ents = ents as u32;
            Ok(FlushSet::default())
        }
        mmuext::CLEAR_PAGE => ctx
            .mm
            .clear_page(ctx.mem, op.arg1)
            .map(|()| FlushSet::default()),
        mmuext::COPY_PAGE => ctx
            .mm
            .copy_page(ctx.mem, op.arg1, op.arg2)
            .map(|()| FlushSet::default()),
        mmuext::MARK_SUPER | mmuext::UNMARK_SUPER => return -EOPNOTSUPP,
        _ => return -ENOSYS,
    };
    match result {
        Ok(f) => {
            merge_flush(ctx.flush, f);
            0
        }
        Err(e) => errno(e),
    }
}

/// The L1 table and slot that map `va` in the table rooted at `root`, as the hardware
/// would find them; None if an upper level is not present or maps a superpage.
pub fn l1_slot_of(mem: &dyn pv_mm::FrameAccess, root: Mfn, va: u64) -> Option<(Mfn, usize)> {
    const P: u64 = 1;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let mut table = root;
    for shift in [39u32, 30, 21] {
        let e = mem.read_entry(table, ((va >> shift) & 511) as usize);
        if e & P == 0 || e & PS != 0 {
            return None;
        }
        table = (e & ADDR) >> 12;
    }
    Some((table, ((va >> 12) & 511) as usize))
}

/// `update_va_mapping(va, val, flags)`: replace the L1 entry that maps `va` in the
/// current kernel table, then flush as `flags` say.
pub fn do_update_va_mapping(
    vcpu: &mut Vcpu,
    dom: &Domain,
    p: &mut dyn Platform,
    va: u64,
    val: u64,
    flags: u64,
) -> i64 {
    if !guest_va_ok(va) {
        return -EINVAL;
    }
    // Whose TLBs the flush type applies to: UVMF_LOCAL, UVMF_ALL, or a vCPU bitmap.
    let named = match flags & UVMF_FLUSHTYPE_MASK {
        0 => FlushSet::default(),
        _ if flags & UVMF_ALL != 0 => FlushSet {
            local_all: true,
            all_vcpus: dom.nr_vcpus() > 1,
            ..Default::default()
        },
        _ if flags & !7 != 0 => match mask_flush(vcpu, dom.nr_vcpus(), p, flags & !7) {
            Ok(named) => named,
            Err(e) => return e,
        },
        _ => FlushSet {
            local_all: true,
            ..Default::default()
        },
    };
    let flush_named = named.local_all;
    let roots = roots(vcpu);
    let root = vcpu.hw_state().cr3 >> 12;
    let Some(ctx) = p.mm() else { return -ENOSYS };
    let Some((l1, slot)) = l1_slot_of(ctx.mem, root, va) else {
        return -EINVAL;
    };
    match ctx.mm.mod_entry(ctx.mem, l1, slot, val, false, &roots) {
        Ok(f) => {
            merge_flush(ctx.flush, f);
            if flush_named {
                let more = match flags & UVMF_FLUSHTYPE_MASK {
                    UVMF_TLB_FLUSH => FlushSet {
                        local_all: true,
                        ..Default::default()
                    },
                    UVMF_INVLPG => FlushSet {
                        invlpg: pv_mm::InvlpgList::one(va),
                        ..Default::default()
                    },
                    _ => return -EINVAL,
                };
                merge_flush(ctx.flush, more);
            }
            if named.all_vcpus {
                merge_flush(
                    ctx.flush,
                    FlushSet {
                        all_vcpus: true,
                        ..Default::default()
                    },
                );
            }
            0
        }
        Err(e) => errno(e),
    }
}

/// `set_gdt(frame_list, entries)`: type the frames as segment-descriptor pages and make
/// them the guest part of the GDT (the host maps them below Xen's reserved entries).
pub fn do_set_gdt(vcpu: &mut Vcpu, p: &mut dyn Platform, list: u64, entries: u64) -> i64 {
    if entries > selector::FIRST_RESERVED_GDT_ENTRY as u64 {
        return -EINVAL;
    }
    let nr = entries.div_ceil(512) as usize;
    let mut frames = [0u64; selector::FIRST_RESERVED_GDT_PAGE];
    for (i, f) in frames.iter_mut().enumerate().take(nr) {
        match guest::read_obj::<u64>(vcpu, p, list.wrapping_add(i as u64 * 8)) {
            Ok(mfn) => *f = mfn,
            Err(_) => return -EFAULT,
        }
    }
    set_gdt_frames(vcpu, p, &frames, entries as u32)
}

/// Xen's `pv_set_gdt`: takes a descriptor-table type reference on each frame the
/// `entries` need (all or none: a refusal drops the ones taken), then drops the vCPU's
/// old ones and installs the new frames.
pub(crate) fn set_gdt_frames(
    vcpu: &mut Vcpu,
    p: &mut dyn Platform,
    frames: &[u64; selector::FIRST_RESERVED_GDT_PAGE],
    entries: u32,
) -> i64 {
    let nr = (entries as usize).div_ceil(512).min(frames.len());
    let old = vcpu.gdt_frames;
    let old_nr = (vcpu.gdt_ents as u64).div_ceil(512) as usize;
    let Some(ctx) = p.mm() else { return -ENOSYS };
    for i in 0..nr {
        if let Err(e) = ctx.mm.get_segdesc_page(ctx.mem, frames[i]) {
            for &f in &frames[..i] {
                ctx.mm.put_segdesc_page(ctx.mem, f);
            }
            return errno(e);
        }
    }
    for &f in &old[..old_nr] {
        ctx.mm.put_segdesc_page(ctx.mem, f);
    }
    vcpu.gdt_frames = [0; selector::FIRST_RESERVED_GDT_PAGE];
    vcpu.gdt_frames[..nr].copy_from_slice(&frames[..nr]);
    vcpu.gdt_ents = entries;
    0
}

/// `update_descriptor(maddr, desc)`.
pub fn do_update_descriptor(p: &mut dyn Platform, maddr: u64, desc: u64) -> i64 {
    if maddr & 7 != 0 {
        return -EINVAL;
    }
    let Some(ctx) = p.mm() else { return -ENOSYS };
    match ctx
        .mm
        .update_descriptor(ctx.mem, maddr >> 12, (maddr & 0xfff) as usize, desc)
    {
        Ok(()) => 0,
        Err(e) => errno(e),
    }
}

/// `#PF` error-code bits.
const PFEC_PRESENT: u64 = 1 << 0;
const PFEC_WRITE: u64 = 1 << 1;
const PFEC_RESERVED: u64 = 1 << 3;
const PFEC_INSN_FETCH: u64 = 1 << 4;

/// Xen's `ptwr_do_page_fault`: a guest-kernel write that faulted on a read-only mapping
/// of one of its own validated L1 tables is emulated: the instruction is decoded, the new
/// entry validated and performed through the MMU engine, and the guest resumes after the
/// instruction. Returns false when this is not such a write or the engine refuses it:
/// the caller then bounces the #PF, as Xen does.
pub fn ptwr_emulate(
    vcpu: &mut Vcpu,
    dom: &Domain,
    regs: &mut crate::GuestRegs,
    cr2: u64,
    error_code: u64,
    p: &mut dyn Platform,
) -> bool {
    use xen_abi::xen::vmassist::TYPE_WRITABLE_PAGETABLES;
    if vcpu.mode != crate::Mode::Kernel
        || dom.vm_assist & (1 << TYPE_WRITABLE_PAGETABLES) == 0
        || error_code & (PFEC_PRESENT | PFEC_WRITE) != (PFEC_PRESENT | PFEC_WRITE)
        || error_code & (PFEC_RESERVED | PFEC_INSN_FETCH) != 0
    {
        return false;
    }
    // The instruction: up to 15 bytes, fewer when it sits at the end of a mapped page.
    let mut insn = [0u8; 15];
    let mut len = insn.len();
    if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn).is_err() {
        len = ((0x1000 - (regs.rip & 0xfff)) as usize).min(len);
        if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn[..len]).is_err() {
            return false;
        }
    }
    let roots = roots(vcpu);
    let root = vcpu.hw_state().cr3 >> 12;
    let Some(ctx) = p.mm().map(budgeted) else {
        return false;
    };
    let Some((l1, slot)) = l1_slot_of(ctx.mem, root, cr2) else {
        return false;
    };
    let mapping = ctx.mem.read_entry(l1, slot);
    const P: u64 = 1;
    const RW: u64 = 2;
    if mapping & P == 0 || mapping & RW != 0 {
        return false;
    }
    let table = (mapping & 0x000f_ffff_ffff_f000) >> 12;
    match ctx.mm.page_info(table) {
        Some(info)
            if info.ty == pv_mm::PageType::L1 && info.validation == pv_mm::Validation::Valid => {}
        _ => return false,
    }
    let idx = ((cr2 & 0xfff) >> 3) as usize;
    let old = ctx.mem.read_entry(table, idx);
    let Ok(op) = crate::ptwr::decode(&insn[..len], regs, cr2, old) else {
        return false;
    };
    if !op.write {
        op.complete(regs, old, false);
        return true;
    }
    if let Some(expected) = op.cmpxchg_old {
        if old != expected {
            if !op.must_retry(old) {
                op.complete(regs, old, false);
            }
            return true;
        }
    }
    match ctx.mm.mod_entry(ctx.mem, table, idx, op.new, false, &roots) {
        Ok(f) => {
            merge_flush(ctx.flush, f);
            op.complete(regs, old, true);
            true
        }
        // This vCPU's old_guest_table is being finished first (pv-mm does that before
        // any entry update) and did not finish within the budget: the write is not
        // done, and the guest re-executes the instruction, which traps again and goes
        // on with it (an MMU hypercall ends in a continuation until the slot is empty,
        // so only guest code that runs between two of those, an event upcall, gets
        // here).
        Err(MmError::Restart) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{setup, DATA_VA};
    use xen_abi::xen::DOMID_SELF;

    #[test]
    fn a_vcpu_mask_asks_for_this_and_the_other_vcpus_tlbs() {
        let (mut v, _, mut p) = setup();
        let at = |p: &mut crate::testutil::FakePlatform, v: &Vcpu, words: &[u64]| {
            for (i, w) in words.iter().enumerate() {
                guest::write_obj(v, p, DATA_VA + i as u64 * 8, w).unwrap();
            }
        };
        at(&mut p, &v, &[0b10]);
        let f = mask_flush(&v, 2, &p, DATA_VA).unwrap();
        assert!(f.all_vcpus && !f.local_all, "vCPU 1 only");
        at(&mut p, &v, &[0b01]);
        let f = mask_flush(&v, 2, &p, DATA_VA).unwrap();
        assert!(!f.all_vcpus && f.local_all, "this vCPU only");
        // Bits past the domain's vCPUs mean nothing.
        at(&mut p, &v, &[!0b11]);
        assert_eq!(mask_flush(&v, 2, &p, DATA_VA).unwrap(), FlushSet::default());
        // vCPU 65 of a domain of 70 sits in the second word.
        v.id = 65;
        at(&mut p, &v, &[1, 0b10]);
        let f = mask_flush(&v, 70, &p, DATA_VA).unwrap();
        assert!(f.all_vcpus && f.local_all);
        assert_eq!(mask_flush(&v, 70, &p, 0xdead_0000_0000), Err(-EFAULT));
    }

    #[test]
    fn a_record_that_answers_erestart_is_continued_not_counted() {
        let (mut v, _, mut p) = setup();
        let pdone = DATA_VA + 0xf00;
        let list = DATA_VA;
        let mut seen = std::vec::Vec::new();
        let mut restarted = false;
        // Record 3 stops part-way once (a large validation), then completes.
        let mut one = |_: &mut Vcpu, _: &mut dyn Platform, r: &MmuUpdate| {
            seen.push(r.ptr);
            if r.ptr == 3 && !restarted {
                restarted = true;
                return -ERESTART;
            }
            0
        };
        for k in 0..8u64 {
            let r = MmuUpdate { ptr: k, val: 0 };
            guest::write_obj(&v, &mut p, list + k * 16, &r).unwrap();
        }
        let a = [list, 8, pdone, u64::from(DOMID_SELF), 0];
        let action = batch::<MmuUpdate>(&mut v, &mut p, hc::MMU_UPDATE, a, &mut one);
        let rest = [
            list + 3 * 16,
            u64::from(5 | MMU_UPDATE_PREEMPTED),
            pdone,
            u64::from(DOMID_SELF),
            0,
        ];
        assert_eq!(action, Action::cont(hc::MMU_UPDATE, rest));
        assert_eq!(guest::read_obj::<u32>(&v, &p, pdone), Ok(3));
        let action = batch::<MmuUpdate>(&mut v, &mut p, hc::MMU_UPDATE, rest, &mut one);
        assert_eq!(action, Action::Ret(0));
        assert_eq!(guest::read_obj::<u32>(&v, &p, pdone), Ok(8));
        assert_eq!(seen, [0, 1, 2, 3, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn xens_final_result_continuation_and_bad_lists() {
        let (mut v, _, mut p) = setup();
        let never = |_: &mut Vcpu, _: &mut dyn Platform, _: &MmuUpdate| 0;
        // Xen's form for a continuation carrying a final result in foreigndom.
        let a = [
            0,
            u64::from(MMU_UPDATE_PREEMPTED),
            0,
            (-EINVAL) as u32 as u64,
            0,
        ];
        assert_eq!(
            batch::<MmuUpdate>(&mut v, &mut p, hc::MMU_UPDATE, a, never),
            Action::Ret(-EINVAL)
        );
        // guest_handle_okay: a list in the hypervisor hole faults even when empty.
        let a = [HYPERVISOR_VIRT_START, 0, 0, u64::from(DOMID_SELF), 0];
        assert_eq!(
            batch::<MmuUpdate>(&mut v, &mut p, hc::MMU_UPDATE, a, never),
            Action::Ret(-EFAULT)
        );
        // A list that would run off the end of the address space.
        let a = [u64::MAX - 15, 2, 0, u64::from(DOMID_SELF), 0];
        assert_eq!(
            batch::<MmuUpdate>(&mut v, &mut p, hc::MMU_UPDATE, a, never),
            Action::Ret(-EFAULT)
        );
    }

    #[test]
    fn a_flush_set_holds_at_most_max_invlpg_addresses() {
        let mut f = BatchFlush::default();
        for k in 0..MAX_INVLPG as u64 {
            merge_flush(
                &mut f,
                FlushSet {
                    invlpg: pv_mm::InvlpgList::one(k << 12),
                    ..Default::default()
                },
            );
        }
        assert_eq!((f.invlpg.len(), f.local_all), (MAX_INVLPG, false));
        merge_flush(
            &mut f,
            FlushSet {
                invlpg: pv_mm::InvlpgList::one(0x1234_5000),
                ..Default::default()
            },
        );
        assert!(f.local_all && f.invlpg.is_empty(), "one more: a full flush");
        merge_flush(
            &mut f,
            FlushSet {
                invlpg: pv_mm::InvlpgList::one(0x1000),
                ..Default::default()
            },
        );
        assert!(f.invlpg.is_empty(), "nothing to add to a full flush");
        // A full flush arriving later drops the addresses gathered so far.
        let mut f = BatchFlush::default();
        assert!(f.invlpg.try_extend(&[0x1000, 0x2000]));
        merge_flush(
            &mut f,
            FlushSet {
                all_vcpus: true,
                ..Default::default()
            },
        );
        assert!(f.all_vcpus && f.invlpg.is_empty());
    }
}
