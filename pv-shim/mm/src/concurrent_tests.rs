//! Several vCPUs: a model of 2-4 vCPUs whose MMU operations interleave between
//! hypercalls (the VMM's domain lock runs one operation at a time). Each vCPU holds its
//! own kernel and user base pointers (`set_root`), its own `old_guest_table` slot (Xen's
//! `v->arch.old_guest_table`) and at most one operation in flight: one that returned
//! `Restart` and that only this vCPU's continuation issues again, until it ends. A small
//! preemption budget leaves tables `Partial` (in validation or in teardown) while the
//! other vCPUs pin, unpin, update entries of, load or drop the same tables.
//!
//! After every step: `check_invariants`, and the model's own checks:
//! - every base pointer a vCPU holds is a validated L4 with its references (type count
//!   and refcount cover every vCPU's uses and the pin), and `loaded_roots_of` agrees;
//! - refusals only where Xen refuses: an unpin of a pinned table, a base-pointer load or
//!   a pin of an already validated table of that type, a clear of an entry of a
//!   validated table (outside the L4 hole), a GDT load of a descriptor page: never
//!   refused; `NotValidated` (the "validate locked" answer) never reaches the guest;
//! - a vCPU's `put_old_guest_table` never touches another vCPU's list;
//! - an L4 update while another vCPU has that L4 loaded asks every vCPU to flush;
//! - a frame seen mapped writable becomes a table or descriptor page only after a
//!   remote flush was reported (returned or pending), or every vCPU flushed.
//!
//! At the end every vCPU finishes its continuation and deferred puts, drops its base
//! pointers and GDT frames, every pin is dropped: no frame keeps a reference.
//!
//! Cases: `PVMM_SMP_CASES` (else `PROPTEST_CASES`, else 256; 64 in a debug build), for
//! soaks: `PVMM_SMP_CASES=100000 cargo test -p pv-mm --release --lib concurrent`.
#![allow(unused_must_use)]

extern crate std;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::fuzz::*;
use crate::pte::*;
use crate::*;

// The domain: four L4s sharing two L3s, three L2s and six L1s, data frames, spare
// frames (empty, become tables or descriptor pages on demand).
const L4S: [Mfn; 4] = [0, 1, 2, 3];
const L3S: [Mfn; 2] = [4, 5];
const L2S: [Mfn; 3] = [6, 7, 8];
const L1S: [Mfn; 6] = [9, 10, 11, 12, 13, 14];
const DATA: [Mfn; 8] = [16, 17, 18, 19, 20, 21, 22, 23];
const SPARE: [Mfn; 4] = [24, 25, 26, 27];
const NR: u64 = 32;

fn domain() -> Harness {
    let mut h = Harness::empty(NR);
    for (k, &l4) in L4S.iter().enumerate() {
        h.mem.set(l4, 0, pte(L3S[k % 2], LINK));
        if k >= 2 {
            h.mem.set(l4, 1, pte(L3S[(k + 1) % 2], LINK));
        }
    }
    h.mem.set(L3S[0], 0, pte(L2S[0], LINK));
    h.mem.set(L3S[0], 1, pte(L2S[1], LINK));
    h.mem.set(L3S[1], 0, pte(L2S[1], LINK));
    h.mem.set(L3S[1], 1, pte(L2S[2], LINK));
    for (k, &l1) in L1S.iter().enumerate() {
        h.mem.set(L2S[k / 2], k % 2, pte(l1, LINK));
    }
    h.mem.set(L2S[2], 2, pte(L1S[0], LINK));
    for &l1 in &L1S {
        for (j, &d) in DATA.iter().enumerate() {
            let flags = if j % 2 == 0 { RW } else { RO };
            h.mem.set(l1, j, pte(d, flags));
        }
        // Every pagetable read-only, as Linux maps its own.
        for (j, &t) in L4S.iter().chain(&L3S).chain(&L2S).chain(&L1S).enumerate() {
            h.mem.set(l1, 16 + j, pte(t, RO));
        }
    }
    h
}

fn tables() -> impl Strategy<Value = Mfn> {
    prop_oneof![
        proptest::sample::select(L4S.to_vec()),
        proptest::sample::select(L3S.to_vec()),
        proptest::sample::select(L2S.to_vec()),
        proptest::sample::select(L1S.to_vec()),
        proptest::sample::select(SPARE.to_vec()),
    ]
}

/// Mostly the L4s and L3s: what base pointers and big unpins use.
fn upper() -> impl Strategy<Value = Mfn> {
    prop_oneof![
        3 => proptest::sample::select(L4S.to_vec()),
        1 => proptest::sample::select(L3S.to_vec()),
        1 => tables(),
    ]
}

fn any_frame() -> impl Strategy<Value = Mfn> {
    prop_oneof![
        4 => tables(),
        1 => proptest::sample::select(DATA.to_vec()),
    ]
}

fn level() -> impl Strategy<Value = Level> {
    proptest::sample::select(vec![Level::L1, Level::L2, Level::L3, Level::L4])
}

fn entry() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => tables().prop_map(|t| pte(t, LINK)),
        1 => any_frame().prop_map(|t| pte(t, RO)),
        1 => proptest::sample::select(DATA.to_vec()).prop_map(|t| pte(t, RW)),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Pin(Mfn, Level),
    Unpin(Mfn),
    Mod {
        table: Mfn,
        slot: usize,
        value: u64,
    },
    SetRoot {
        user: bool,
        new: Option<Mfn>,
    },
    DescGet(Mfn),
    DescPut,
    Budget(Option<u32>),
    TlbFlushed,
    /// The vCPU goes offline (Xen's `vcpu_destroy_pagetables`): drops both base
    /// pointers and its GDT frames, finishing its deferred puts first.
    Offline,
    /// Issues nothing new: only a continuation or deferred puts run (not generated).
    Idle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (tables(), level()).prop_map(|(m, l)| Op::Pin(m, l)),
        3 => upper().prop_map(Op::Unpin),
        6 => (tables(), prop_oneof![0usize..4, Just(256usize)], entry())
            .prop_map(|(table, slot, value)| Op::Mod { table, slot, value }),
        4 => (any::<bool>(), proptest::option::weighted(0.8, upper()))
            .prop_map(|(user, new)| Op::SetRoot { user, new }),
        1 => proptest::sample::select(SPARE.to_vec()).prop_map(Op::DescGet),
        1 => Just(Op::DescPut),
        1 => Just(Op::Offline),
        1 => proptest::option::weighted(
                0.85,
                proptest::sample::select(vec![1u32, 300, 600, 1100, 1700, 2500]),
            ).prop_map(Op::Budget),
        1 => Just(Op::TlbFlushed),
    ]
}

/// An operation as issued (resolved against the vCPU's state at its first issue), so a
/// continuation repeats it exactly.
#[derive(Clone, Debug)]
enum Issued {
    Pin(Mfn, Level),
    Unpin(Mfn),
    Mod {
        table: Mfn,
        slot: usize,
        value: u64,
    },
    SetRoot {
        user: bool,
        old: Option<Mfn>,
        new: Option<Mfn>,
    },
    DescGet(Mfn),
}

#[derive(Clone, Debug, Default)]
struct Vcpu {
    root: Option<Mfn>,
    user_root: Option<Mfn>,
    gdt: Vec<Mfn>,
    /// The operation this vCPU's continuation must issue again.
    inflight: Option<Issued>,
}

struct Smp {
    h: Harness,
    v: Vec<Vcpu>,
    steps: u64,
    restarts: u64,
    orphans: u64,
    seen: Seen,
    /// Flush work reported by the current step (returned or pending).
    step_fl: FlushSet,
    /// Steps that reported a remote flush so far.
    remote_flushes: u64,
    /// Per frame: `remote_flushes` when it was last seen with a writable mapping (a
    /// type reference of `Writable`), until a remote flush or `tlb_flushed` after it.
    writable_seen: Vec<Option<u64>>,
}

/// How often the interleavings this test is about happened (see `coverage`).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// An operation met (on its first issue) a frame left `Partial` by another
    /// operation (validation or teardown, often another vCPU's).
    on_partial: u64,
    /// A base-pointer load of an L4 in partial validation or teardown.
    root_to_partial: u64,
    /// An unpin of a table another vCPU has loaded.
    unpin_other_root: u64,
    /// An entry update of an L4 another vCPU has loaded.
    mod_other_root: u64,
    /// Deferred puts queued on two vCPUs at once.
    two_deferred: u64,
    /// Operations in flight (preempted) on two vCPUs at once.
    two_inflight: u64,
    /// Orphaned partial validations recovered at teardown.
    orphans: u64,
}

fn roots_of(c: &Vcpu) -> Vec<Mfn> {
    c.root.into_iter().chain(c.user_root).collect()
}

impl Smp {
    fn new(n: usize) -> Self {
        Smp {
            h: domain(),
            v: vec![Vcpu::default(); n],
            steps: 0,
            restarts: 0,
            orphans: 0,
            seen: Seen::default(),
            step_fl: FlushSet::default(),
            remote_flushes: 0,
            writable_seen: vec![None; NR as usize],
        }
    }

    fn info(&self, m: Mfn) -> PageInfo {
        self.h.mm.page_info(m).copied().unwrap_or_default()
    }

    fn live(&self, m: Mfn, ty: PageType) -> bool {
        let p = self.info(m);
        p.ty == ty && p.type_count > 0 && p.validation == Validation::Valid
    }

    /// Issues `op` for vCPU `v`; returns its result.
    fn issue(&mut self, v: usize, op: &Issued) -> Result<FlushSet, String> {
        let roots = roots_of(&self.v[v]);
        let elsewhere = |t: Mfn, s: &Smp| {
            s.v.iter()
                .enumerate()
                .any(|(w, c)| w != v && roots_of(c).contains(&t))
        };
        let before = self.clone_state();
        let partial =
            |m: Mfn| matches!(before.0[m as usize].validation, Validation::Partial { .. });
        let target = match *op {
            Issued::Pin(m, _) | Issued::Unpin(m) | Issued::DescGet(m) => Some(m),
            Issued::Mod { value, .. } if present(value) => Some(entry_mfn(value)),
            Issued::Mod { table, .. } => Some(table),
            Issued::SetRoot { new, .. } => new,
        };
        // First issues only (a continuation meets its own partial tables).
        let first = self.v[v].inflight.is_none();
        if first && target.is_some_and(|t| t < NR && partial(t)) {
            self.seen.on_partial += 1;
            if matches!(op, Issued::SetRoot { .. }) {
                self.seen.root_to_partial += 1;
            }
        }
        match *op {
            Issued::Unpin(m) if elsewhere(m, self) => self.seen.unpin_other_root += 1,
            Issued::Mod { table, .. } if elsewhere(table, self) => self.seen.mod_other_root += 1,
            _ => {}
        }
        if (0..self.v.len())
            .filter(|&w| self.h.mm.has_deferred_put_of(w))
            .count()
            > 1
        {
            self.seen.two_deferred += 1;
        }
        if self.v.iter().filter(|c| c.inflight.is_some()).count() > 1 {
            self.seen.two_inflight += 1;
        }
        let h = &mut self.h;
        let r = match *op {
            Issued::Pin(m, l) => h.mm.pin_table(&mut h.mem, m, l),
            Issued::Unpin(m) => h.mm.unpin_table(&mut h.mem, m),
            Issued::Mod { table, slot, value } => {
                h.mm.mod_entry(&mut h.mem, table, slot, value, false, &roots)
            }
            Issued::SetRoot { old, new, .. } => h.mm.set_root(&mut h.mem, old, new),
            Issued::DescGet(m) => {
                h.mm.get_segdesc_page(&mut h.mem, m)
                    .map(|()| h.mm.take_pending_flush())
            }
        };
        if let Ok(f) = &r {
            self.step_fl.merge(f.clone());
        }
        if r == Err(MmError::Restart) {
            self.restarts += 1;
            self.v[v].inflight = Some(op.clone());
            return Ok(FlushSet::default());
        }
        self.v[v].inflight = None;
        // Refusals only where Xen refuses.
        if let Err(e) = r {
            if e == MmError::NotValidated {
                return Err(format!(
                    "{op:?} on vCPU {v}: 'validate locked' reached the guest"
                ));
            }
            let must_pass = match *op {
                Issued::Unpin(m) => before.0[m as usize].pinned,
                Issued::Pin(m, l) => {
                    let p = before.0[m as usize];
                    !p.pinned
                        && p.ty == PageType::from_level(l)
                        && p.type_count > 0
                        && p.validation == Validation::Valid
                }
                Issued::SetRoot { new, .. } => new.is_none_or(|n| {
                    let p = before.0[n as usize];
                    p.ty == PageType::L4 && p.type_count > 0 && p.validation == Validation::Valid
                }),
                Issued::Mod { table, slot, value } => {
                    let p = before.0[table as usize];
                    value == 0
                        && p.ty.is_pagetable()
                        && p.type_count > 0
                        && p.validation == Validation::Valid
                        && !(p.ty == PageType::L4 && is_hole_slot(slot))
                }
                Issued::DescGet(m) => {
                    let p = before.0[m as usize];
                    p.ty == PageType::SegDesc && p.type_count > 0
                }
            };
            if must_pass {
                return Err(format!(
                    "{op:?} on vCPU {v} refused ({e:?}); Xen accepts it"
                ));
            }
            // A refusal changes nothing (up to sticky types), unless it met a partial
            // state (a failure found while resuming undoes that whole validation).
            let any_partial = before
                .0
                .iter()
                .any(|p| matches!(p.validation, Validation::Partial { .. }));
            if !any_partial {
                for m in 0..NR {
                    let (a, b) = (before.0[m as usize].normalized(), self.info(m).normalized());
                    if a != b {
                        return Err(format!(
                            "{op:?} on vCPU {v} refused ({e:?}) but changed mfn {m:#x}: \
                             {a:?} -> {b:?}"
                        ));
                    }
                }
            }
            return Ok(FlushSet::default());
        }
        let fl = r.unwrap_or_default();
        match *op {
            Issued::SetRoot { user, new, .. } => {
                if user {
                    self.v[v].user_root = new;
                } else {
                    self.v[v].root = new;
                }
            }
            Issued::DescGet(m) => self.v[v].gdt.push(m),
            Issued::Mod { table, slot, value } => {
                let p = before.0[table as usize];
                let changed =
                    before.1[table as usize][slot] != self.h.mem.frames[table as usize][slot];
                if p.ty == PageType::L4
                    && p.validation == Validation::Valid
                    && p.type_count > 0
                    && changed
                    && elsewhere(table, self)
                    && !fl.needs_remote()
                {
                    return Err(format!(
                        "{op:?} (value {value:#x}) on vCPU {v}: L4 loaded on another vCPU \
                         changed without a remote flush: {fl:?}"
                    ));
                }
            }
            _ => {}
        }
        Ok(fl)
    }

    fn clone_state(&self) -> (Vec<PageInfo>, Vec<Vec<u64>>) {
        (
            (0..NR).map(|m| self.info(m)).collect(),
            self.h.mem.frames.clone(),
        )
    }

    /// vCPU `v`'s deferred puts, as its hypercall entry runs them. False: out of budget
    /// (the continuation comes back here).
    fn deferred(&mut self, v: usize) -> Result<bool, String> {
        if !self.h.mm.has_deferred_put() {
            return Ok(true);
        }
        let others: Vec<Vec<Mfn>> = (0..self.v.len())
            .map(|w| self.h.mm.deferred_puts_of(w).collect())
            .collect();
        let r = self.h.mm.put_old_guest_table(&mut self.h.mem);
        for (w, o) in others.iter().enumerate() {
            let now: Vec<Mfn> = self.h.mm.deferred_puts_of(w).collect();
            if w != v && &now != o {
                return Err(format!("vCPU {v}'s deferred puts changed vCPU {w}'s list"));
            }
        }
        match r {
            Ok(()) => Ok(true),
            Err(MmError::Restart) => {
                self.restarts += 1;
                Ok(false)
            }
            Err(e) => Err(format!("put_old_guest_table refused: {e:?}")),
        }
    }

    /// One step of vCPU `v`: its continuation if one is in flight, else `op`.
    fn step(&mut self, v: usize, op: &Op) -> Result<(), String> {
        self.steps += 1;
        self.h.mm.set_current_vcpu(v);
        match op {
            Op::Budget(b) => {
                self.h.mm.set_preempt_budget(*b);
                return self.check();
            }
            Op::TlbFlushed => {
                self.h.mm.tlb_flushed();
                for m in 0..NR {
                    let p = self.info(m);
                    if !(p.ty == PageType::Writable && p.type_count > 0) {
                        self.writable_seen[m as usize] = None;
                    }
                }
                return self.check();
            }
            _ => {}
        }
        let lists: Vec<Vec<Mfn>> = (0..self.v.len())
            .map(|w| self.h.mm.deferred_puts_of(w).collect())
            .collect();
        let r = self.step_inner(v, op);
        for (w, o) in lists.iter().enumerate() {
            let now: Vec<Mfn> = self.h.mm.deferred_puts_of(w).collect();
            if w != v && &now != o {
                return Err(format!("vCPU {v}'s step changed vCPU {w}'s deferred puts"));
            }
        }
        r?;
        self.check_type_change_flushes()?;
        self.check()
    }

    /// A frame seen with a writable mapping that is now a pagetable or descriptor page
    /// (partially validated included) must have had a remote flush reported since (Xen:
    /// `_get_page_type` flushes `d->dirty_cpumask` on the type change), unless every
    /// vCPU flushed meanwhile (`tlb_flushed`).
    fn check_type_change_flushes(&mut self) -> Result<(), String> {
        let fl = core::mem::take(&mut self.step_fl);
        let pending = self.h.mm.take_pending_flush();
        if fl.needs_remote() || pending.needs_remote() {
            self.remote_flushes += 1;
        }
        for m in 0..NR {
            let p = self.info(m);
            let i = m as usize;
            if p.ty == PageType::Writable && p.type_count > 0 {
                self.writable_seen[i] = Some(self.remote_flushes);
            } else if p.type_count > 0 && p.ty.needs_validation() {
                if let Some(e) = self.writable_seen[i] {
                    if self.remote_flushes <= e {
                        return Err(format!(
                            "mfn {m:#x} was mapped writable and is now {p:?} without a \
                             remote flush"
                        ));
                    }
                    self.writable_seen[i] = None;
                }
            }
        }
        Ok(())
    }

    fn step_inner(&mut self, v: usize, op: &Op) -> Result<(), String> {
        if !self.deferred(v)? {
            return Ok(());
        }
        let issued = if let Some(i) = self.v[v].inflight.clone() {
            Some(i)
        } else {
            match *op {
                Op::Pin(m, l) => Some(Issued::Pin(m, l)),
                Op::Unpin(m) => Some(Issued::Unpin(m)),
                Op::Mod { table, slot, value } => Some(Issued::Mod { table, slot, value }),
                Op::SetRoot { user, new } => {
                    let c = &self.v[v];
                    let old = if user { c.user_root } else { c.root };
                    Some(Issued::SetRoot { user, old, new })
                }
                Op::DescGet(m) => Some(Issued::DescGet(m)),
                Op::DescPut => {
                    if let Some(m) = self.v[v].gdt.pop() {
                        self.h.mm.put_segdesc_page(&mut self.h.mem, m);
                    }
                    None
                }
                Op::Offline => {
                    for user in [false, true] {
                        let c = &self.v[v];
                        let old = if user { c.user_root } else { c.root };
                        if old.is_some() {
                            self.issue(
                                v,
                                &Issued::SetRoot {
                                    user,
                                    old,
                                    new: None,
                                },
                            )?;
                        }
                    }
                    while let Some(m) = self.v[v].gdt.pop() {
                        self.h.mm.put_segdesc_page(&mut self.h.mem, m);
                    }
                    None
                }
                Op::Budget(_) | Op::TlbFlushed | Op::Idle => None,
            }
        };
        if let Some(i) = issued {
            self.issue(v, &i)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.h.mm.check_invariants(&self.h.mem)?;
        for (v, c) in self.v.iter().enumerate() {
            let mut want = roots_of(c);
            let mut have = self.h.mm.loaded_roots_of(v).to_vec();
            want.sort_unstable();
            have.sort_unstable();
            if want != have {
                return Err(format!("vCPU {v}: roots {want:?}, engine has {have:?}"));
            }
            for r in roots_of(c) {
                let uses = self
                    .v
                    .iter()
                    .map(|c| roots_of(c).iter().filter(|&&x| x == r).count() as u32)
                    .sum::<u32>();
                let p = self.info(r);
                if !self.live(r, PageType::L4)
                    || p.type_count < uses + u32::from(p.pinned)
                    || p.refcount < uses + u32::from(p.pinned)
                {
                    return Err(format!("vCPU {v}'s root {r:#x} ({uses} uses) is {p:?}"));
                }
            }
            for &g in &c.gdt {
                let p = self.info(g);
                if p.ty != PageType::SegDesc || p.type_count == 0 {
                    return Err(format!("vCPU {v}'s GDT frame {g:#x} is {p:?}"));
                }
            }
        }
        Ok(())
    }

    /// Issues `op` on vCPU `v` again until it is no longer in flight (a vCPU's operation
    /// first finishes that vCPU's `old_guest_table`, and returns `Restart` having done
    /// nothing else while it does not finish).
    fn issue_to_end(&mut self, v: usize, op: &Issued) -> Result<(), String> {
        self.h.mm.set_current_vcpu(v);
        for _ in 0..200_000 {
            self.issue(v, op)?;
            self.check()?;
            if self.v[v].inflight.is_none() {
                return Ok(());
            }
        }
        Err(format!("vCPU {v}: {op:?} makes no progress"))
    }

    /// Every vCPU finishes what it has in flight and lets go of everything; then nothing
    /// may hold a reference.
    fn drain(&mut self) -> Result<(), String> {
        let n = self.v.len();
        let mut guard = 0u32;
        for v in 0..n {
            while self.v[v].inflight.is_some() || self.h.mm.has_deferred_put_of(v) {
                self.step(v, &Op::Idle)?;
                guard += 1;
                if guard > 200_000 {
                    return Err(format!("vCPU {v}: no progress"));
                }
            }
        }
        for v in 0..n {
            for user in [false, true] {
                self.h.mm.set_current_vcpu(v);
                let c = &self.v[v];
                let old = if user { c.user_root } else { c.root };
                if old.is_some() {
                    self.issue_to_end(
                        v,
                        &Issued::SetRoot {
                            user,
                            old,
                            new: None,
                        },
                    )?;
                }
            }
            while let Some(m) = self.v[v].gdt.pop() {
                self.h.mm.put_segdesc_page(&mut self.h.mem, m);
            }
        }
        self.h.mm.set_current_vcpu(0);
        for m in 0..NR {
            if self.info(m).pinned {
                self.issue_to_end(0, &Issued::Unpin(m))?;
            }
        }
        for v in 0..n {
            self.h.mm.set_current_vcpu(v);
            while !self.deferred(v)? {
                guard += 1;
                if guard > 200_000 {
                    return Err(format!("vCPU {v}: no progress"));
                }
            }
            self.check()?;
        }
        // A validation preempted inside an entry update whose retry then found the table
        // no longer a validated table (another vCPU dropped it meanwhile) ends as a plain
        // write, leaving the child Partial with nobody to finish it: Xen does the same
        // (the partial state keeps its own references until the page is got again as
        // that type, or the domain dies). A guest recovers it by pinning it as that
        // type; so does this teardown, then drops it like the rest.
        self.h.mm.set_current_vcpu(0);
        for m in 0..NR {
            let p = self.info(m);
            if let (Validation::Partial { .. }, Some(l)) = (p.validation, p.ty.level()) {
                if p.type_count != 1 || p.refcount == 0 || p.pinned {
                    return Err(format!("orphan partial mfn {m:#x} holds more: {p:?}"));
                }
                self.orphans += 1;
                self.seen.orphans += 1;
                loop {
                    self.issue(0, &Issued::Pin(m, l))?;
                    self.check()?;
                    guard += 1;
                    if self.v[0].inflight.is_none() || guard > 200_000 {
                        break;
                    }
                }
                if self.info(m).pinned {
                    self.issue_to_end(0, &Issued::Unpin(m))?;
                }
                while !self.deferred(0)? {
                    guard += 1;
                    if guard > 200_000 {
                        return Err("no progress".into());
                    }
                }
                self.check()?;
            }
        }
        for m in 0..NR {
            let p = self.info(m);
            if p.type_count != 0 || p.refcount != 0 {
                return Err(format!("mfn {m:#x} still referenced after teardown: {p:?}"));
            }
        }
        Ok(())
    }
}

fn run(n: usize, ops: &[(usize, Op)]) -> Result<Seen, String> {
    let mut s = Smp::new(n);
    s.h.mm.set_preempt_budget(Some(600));
    s.check()?;
    for (k, (v, op)) in ops.iter().enumerate() {
        s.step(v % n, op)
            .map_err(|e| format!("step {k} ({op:?} on vCPU {}): {e}", v % n))?;
    }
    s.drain().map_err(|e| format!("teardown: {e}"))?;
    Ok(s.seen)
}

fn cases() -> u32 {
    ["PVMM_SMP_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|c| c.parse().ok()))
        .unwrap_or(if cfg!(debug_assertions) { 64 } else { 256 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn vcpus_interleaving_keep_every_invariant(
        n in 2usize..=4,
        ops in proptest::collection::vec((0usize..4, op()), 1..120),
    ) {
        if let Err(e) = run(n, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The interleavings the property test is about do happen, and often: 300 generated
/// cases (100 in a debug build), counted.
#[test]
fn coverage() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = (
        2usize..=4,
        proptest::collection::vec((0usize..4, op()), 1..120),
    );
    let mut t = Seen::default();
    for _ in 0..if cfg!(debug_assertions) { 100 } else { 300 } {
        let (n, ops) = strat.new_tree(&mut runner).unwrap().current();
        let s = run(n, &ops).unwrap_or_else(|e| panic!("{e}"));
        t.on_partial += s.on_partial;
        t.root_to_partial += s.root_to_partial;
        t.unpin_other_root += s.unpin_other_root;
        t.mod_other_root += s.mod_other_root;
        t.two_deferred += s.two_deferred;
        t.two_inflight += s.two_inflight;
        t.orphans += s.orphans;
    }
    std::println!("{t:?}");
    assert!(t.on_partial > 50, "{t:?}");
    assert!(t.root_to_partial > 10, "{t:?}");
    assert!(t.unpin_other_root > 10, "{t:?}");
    assert!(t.mod_other_root > 10, "{t:?}");
    assert!(t.two_deferred > 0, "{t:?}");
    assert!(t.two_inflight > 0, "{t:?}");
}

// ------------------------------------------------------------- flush scope, per vCPU

mod scope {
    use super::*;
    use crate::fuzz::model::{L1S as M_L1S, L3, L4, USER_L4};

    fn upd(h: &mut Harness, table: Mfn, slot: usize, v: u64, roots: &[Mfn]) -> FlushSet {
        h.mm.mod_entry(&mut h.mem, table, slot, v, false, roots)
            .unwrap_or_else(|e| panic!("update refused: {e:?}"))
    }

    #[test]
    fn flush_set_scope_methods() {
        let none: FlushSet = FlushSet::default();
        assert!(none.is_empty() && !none.needs_local() && !none.needs_remote());
        let local: FlushSet = FlushSet {
            local_all: true,
            ..FlushSet::default()
        };
        assert!(local.needs_local() && !local.needs_remote());
        let one: FlushSet = FlushSet {
            invlpg: crate::InvlpgList::one(0x1000),
            ..FlushSet::default()
        };
        assert!(one.needs_local() && !one.needs_remote());
        let all: FlushSet = FlushSet {
            all_vcpus: true,
            ..FlushSet::default()
        };
        assert!(all.needs_local() && all.needs_remote());
        let mut m = local.clone();
        m.merge(one.clone());
        m.merge(all);
        assert!(m.local_all && m.needs_remote() && m.invlpg[..] == [0x1000]);
    }

    /// A type change that may leave a stale TLB entry on any CPU the domain ran on
    /// (Xen: `_get_page_type` flushing `d->dirty_cpumask`) is remote, whichever vCPU
    /// caused it.
    #[test]
    fn type_change_flush_is_remote() {
        let mut h = Harness::model_guest();
        h.mm.set_current_vcpu(2);
        // Data frame 9 loses its RW mapping, then becomes an L1.
        let fl = upd(&mut h, M_L1S[0], 9, pte(9, RO), &[]);
        assert!(
            !fl.needs_remote(),
            "the guest's own L1 update: its own invalidation"
        );
        h.mem.set(9, 0, 0);
        let fl = h.mm.pin_table(&mut h.mem, 9, Level::L1).unwrap();
        assert!(fl.needs_remote());
        // A retired pagetable becoming writable data: remote too.
        h.mm.unpin_table(&mut h.mem, 9).unwrap();
        h.mm.clear_page(&mut h.mem, 9).unwrap();
        assert!(h.mm.take_pending_flush().needs_remote());
    }

    /// A type change inside an operation that then stops with `Restart` (or is
    /// refused) still needs its flush: it goes to `take_pending_flush` (it used to be
    /// dropped with the error). Found by the model test.
    #[test]
    fn flush_of_a_preempted_operation_is_not_lost() {
        let mut h = Harness::model_guest();
        // The tables-to-be lose their writable mappings before a full flush, data
        // frame 9 after it: only 9's type change needs a flush.
        for f in [10, 11] {
            let l1 = M_L1S[(f % 3) as usize];
            upd(&mut h, l1, f as usize, pte(f, RO), &[]);
        }
        h.mm.tlb_flushed();
        upd(&mut h, M_L1S[0], 9, pte(9, RO), &[]);
        h.mem.set(10, 0, pte(9, LINK));
        h.mem.set(10, 1, pte(11, LINK));
        // L3 10: slot 0 makes data frame 9 an L2 (1 + 512 entries), then the budget
        // stops the L3 before slot 1.
        h.mm.set_preempt_budget(Some(513));
        assert_eq!(
            h.mm.pin_table(&mut h.mem, 10, Level::L3),
            Err(MmError::Restart)
        );
        assert_eq!(h.mm.page_info(9).unwrap().ty, PageType::L2);
        assert!(h.mm.take_pending_flush().needs_remote());
        h.mm.check_invariants(&h.mem).unwrap();
        // Same through a base-pointer load.
        let mut g = Harness::model_guest();
        // The tables-to-be lose their writable mappings before a full flush, data
        // frame 9 after it: only 9's type change needs a flush.
        for f in [10, 11, 12] {
            let l1 = M_L1S[(f % 3) as usize];
            upd(&mut g, l1, f as usize, pte(f, RO), &[]);
        }
        g.mm.tlb_flushed();
        upd(&mut g, M_L1S[0], 9, pte(9, RO), &[]);
        g.mem.set(12, 0, pte(10, LINK)); // 12: an L4 whose slot 0 is L3 10
        g.mem.set(10, 0, pte(9, LINK));
        g.mem.set(10, 1, pte(11, LINK));
        g.mm.set_preempt_budget(Some(514));
        let _ = g.mm.take_pending_flush();
        assert_eq!(
            g.mm.set_root(&mut g.mem, None, Some(12)),
            Err(MmError::Restart)
        );
        assert!(g.mm.take_pending_flush().needs_remote());
        g.mm.check_invariants(&g.mem).unwrap();
    }

    /// An L4 update: local when only this vCPU has it loaded (and the pin), remote when
    /// another vCPU has it loaded (Xen's `sync_guest`), nothing when nobody does.
    #[test]
    fn l4_update_flush_scope_follows_the_vcpus_that_loaded_it() {
        let mut h = Harness::model_guest(); // L4 pinned, loaded on vCPU 0.
        let fl = upd(&mut h, L4, 3, pte(L3, LINK), &[L4]);
        assert!(fl.local_all && !fl.needs_remote());
        // vCPU 1 updates vCPU 0's root: vCPU 0 must flush.
        h.mm.set_current_vcpu(1);
        let fl = upd(&mut h, L4, 4, pte(L3, LINK), &[]);
        assert!(fl.needs_remote(), "{fl:?}");
        assert!(!fl.local_all);
        // Both have it loaded.
        h.mm.set_root(&mut h.mem, None, Some(L4)).unwrap();
        assert_eq!(h.mm.loaded_roots_of(1), &[L4]);
        let fl = upd(&mut h, L4, 5, pte(L3, LINK), &[L4]);
        assert!(fl.local_all && fl.needs_remote());
        // Only vCPU 1 now: an update from vCPU 1 is local.
        h.mm.set_current_vcpu(0);
        h.mm.set_root(&mut h.mem, Some(L4), None).unwrap();
        assert!(h.mm.loaded_roots_of(0).is_empty());
        h.mm.set_current_vcpu(1);
        let fl = upd(&mut h, L4, 6, pte(L3, LINK), &[L4]);
        assert!(fl.local_all && !fl.needs_remote(), "{fl:?}");
        // Loaded by a caller that tracks roots itself (no set_root on this engine's
        // books): the type count still shows the other use.
        h.mm.pin_table(&mut h.mem, USER_L4, Level::L4).unwrap();
        h.mm.get_page_and_type(&mut h.mem, USER_L4, PageType::L4)
            .unwrap();
        let fl = upd(&mut h, USER_L4, 3, pte(L3, LINK), &[]);
        assert!(fl.needs_remote());
        // Pinned only: nobody to flush.
        h.mm.put_page_and_type(&mut h.mem, USER_L4);
        let fl = upd(&mut h, USER_L4, 4, pte(L3, LINK), &[]);
        assert!(fl.is_empty(), "{fl:?}");
    }

    /// Past `LOADED_ROOTS_MAX` roots on one vCPU, the per-vCPU lists no longer tell who
    /// has an L4 loaded: every L4 update from then on asks every vCPU to flush (the
    /// degraded path, a superset of the flush the lists would narrow it to).
    #[test]
    fn l4_update_flushes_every_vcpu_once_a_vcpu_overflows_its_roots() {
        // L4 pinned, loaded on vCPU 0.
        let mut h = Harness::model_guest();
        // vCPU 2 loads the user L4 as often as its list holds: still told apart.
        h.mm.set_current_vcpu(2);
        for _ in 0..crate::LOADED_ROOTS_MAX {
            h.mm.set_root(&mut h.mem, None, Some(USER_L4)).unwrap();
        }
        assert_eq!(h.mm.loaded_roots_of(2).len(), crate::LOADED_ROOTS_MAX);
        h.mm.set_current_vcpu(0);
        let fl = upd(&mut h, L4, 3, pte(L3, LINK), &[L4]);
        assert!(fl.local_all && !fl.needs_remote(), "{fl:?}");
        // One more: the list overflows, and vCPU 0's update of its own L4, which no
        // other vCPU has loaded, flushes every vCPU.
        h.mm.set_current_vcpu(2);
        h.mm.set_root(&mut h.mem, None, Some(USER_L4)).unwrap();
        assert_eq!(h.mm.loaded_roots_of(2).len(), crate::LOADED_ROOTS_MAX);
        h.mm.set_current_vcpu(0);
        let fl = upd(&mut h, L4, 4, pte(L3, LINK), &[L4]);
        assert!(fl.local_all && fl.needs_remote(), "{fl:?}");
        // Sticky: after vCPU 2 dropped every root, still a full flush of all vCPUs.
        h.mm.set_current_vcpu(2);
        for _ in 0..=crate::LOADED_ROOTS_MAX {
            h.mm.set_root(&mut h.mem, Some(USER_L4), None).unwrap();
        }
        h.mm.set_current_vcpu(0);
        let fl = upd(&mut h, L4, 5, pte(L3, LINK), &[L4]);
        assert!(fl.needs_remote(), "{fl:?}");
        // An unchanged entry needs no flush at all, degraded or not.
        let fl = upd(&mut h, L4, 5, pte(L3, LINK), &[L4]);
        assert!(fl.is_empty(), "{fl:?}");
        h.mm.check_invariants(&h.mem).unwrap();
    }

    /// Deferred puts belong to the vCPU whose operation left them (Xen's
    /// `v->arch.old_guest_table`): another vCPU neither sees nor finishes them.
    #[test]
    fn deferred_puts_are_per_vcpu() {
        let mut h = domain();
        h.mm.set_current_vcpu(1);
        h.mm.pin_table(&mut h.mem, L4S[2], Level::L4).unwrap();
        h.mm.set_preempt_budget(Some(1));
        h.mm.unpin_table(&mut h.mem, L4S[2]).unwrap();
        assert!(h.mm.has_deferred_put());
        assert!(h.mm.has_deferred_put_of(1) && h.mm.any_deferred_put());
        let mine: Vec<Mfn> = h.mm.deferred_puts().collect();
        assert!(!mine.is_empty());
        // vCPU 0 (the default, as for single-vCPU callers): nothing of its own.
        h.mm.set_current_vcpu(0);
        assert!(!h.mm.has_deferred_put() && !h.mm.has_deferred_put_of(0));
        assert_eq!(h.mm.put_old_guest_table(&mut h.mem), Ok(()));
        assert_eq!(h.mm.deferred_puts_of(1).collect::<Vec<_>>(), mine);
        // vCPU 1 finishes its own.
        h.mm.set_current_vcpu(1);
        let mut n = 0;
        while h.mm.put_old_guest_table(&mut h.mem) == Err(MmError::Restart) {
            h.mm.check_invariants(&h.mem).unwrap();
            n += 1;
            assert!(n < 10_000);
        }
        assert!(!h.mm.any_deferred_put());
        h.mm.check_invariants(&h.mem).unwrap();
        for m in 0..NR {
            assert_eq!(h.mm.page_info(m).unwrap().type_count, 0, "mfn {m}");
        }
    }
}
