//! Counters the VMM prints in its metrics and in a crash diagnostic: which hypercalls and
//! exceptions a guest used, what it asked for that the engine does not implement yet,
//! and the last few hypercalls, because the call before a crash is usually the clue.

use xen_abi::xen::hypercall::COUNT;

/// Number of hypercalls kept in [`Stats::recent`].
pub const RECENT: usize = 16;

/// Buckets of [`Stats::mmu_update_batches`]: 0, 1, 2-3, ..., 512-1023, 1024 and more.
pub const MMU_BATCH_BUCKETS: usize = 12;

/// Kinds of instructions the engine emulates for the guest kernel, in
/// [`Stats::emulated`] order.
pub const EMULATED_NAMES: [&str; EMULATED_KINDS] = [
    "mov to/from cr",
    "port I/O",
    "cli/sti",
    "rdmsr/wrmsr",
    "forced cpuid",
    "xsetbv",
    "M2P read at Xen's address",
];
/// Number of [`EMULATED_NAMES`].
pub const EMULATED_KINDS: usize = 7;

/// Indexes into [`Stats::emulated`].
pub mod emulated {
    #![allow(missing_docs)]
    pub const MOV_CR: usize = 0;
    pub const PORT_IO: usize = 1;
    pub const CLI_STI: usize = 2;
    pub const MSR: usize = 3;
    pub const FORCED_CPUID: usize = 4;
    pub const XSETBV: usize = 5;
    pub const M2P_READ: usize = 6;
}

/// One hypercall as the engine saw and answered it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallRecord {
    /// Hypercall number (rax at entry).
    pub nr: u64,
    /// rdi, rsi, rdx, r10, r8 at entry.
    pub args: [u64; 5],
    /// rax on return (for `iret`: the restored rax; for a continuation: the number).
    pub result: u64,
}

/// Engine counters of one vCPU.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Hypercalls by number (numbers at or above `COUNT` are in `hypercalls_out_of_range`).
    pub hypercalls: [u64; COUNT],
    /// Hypercalls whose number is at or above `COUNT`.
    pub hypercalls_out_of_range: u64,
    /// Answers of `-ENOSYS` by hypercall number (out-of-range numbers count only in
    /// `enosys_total`).
    pub enosys: [u64; COUNT],
    /// All `-ENOSYS` answers.
    pub enosys_total: u64,
    /// `mmuext_op` commands refused because the engine does not implement them yet.
    pub mmuext_unimplemented: u64,
    /// Exceptions and software interrupts bounced to the guest, by vector.
    pub bounces: [u64; 256],
    /// Guest-user `syscall`s bounced to the syscall callback.
    pub syscall_bounces: u64,
    /// Event upcalls delivered.
    pub upcalls: u64,
    /// `mmu_update` calls by batch size: bucket `k` counts batches of `2^(k-1)` up to
    /// `2^k - 1` entries (bucket 0: empty batches), the last bucket everything larger.
    pub mmu_update_batches: [u64; MMU_BATCH_BUCKETS],
    /// `mmuext_op` commands by number (all in the last slot when out of range).
    pub mmuext_cmds: [u64; 32],
    /// Privileged instructions the engine emulated, by kind.
    pub emulated: [u64; EMULATED_KINDS],
    /// Ring of the last [`RECENT`] hypercalls; `recent_next` is the slot written next.
    pub recent: [HypercallRecord; RECENT],
    /// Next slot of `recent`.
    pub recent_next: usize,
    /// Total hypercalls recorded (so a reader knows how many ring slots are valid).
    pub recent_total: u64,
    /// Hypercalls that stopped part-way and made the guest re-execute them with the rest
    /// of their work (continuations; each re-entry also counts in `hypercalls`).
    pub continuations: u64,
    /// Continuations by hypercall number (out-of-range numbers never continue), so
    /// `hypercalls[nr] - continued[nr]` counts the calls the guest made.
    pub continued: [u64; COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Adds another vCPU's counters to these (the recent-hypercall ring stays this
    /// vCPU's).
    pub fn absorb(&mut self, other: &Stats) {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.hypercalls, &other.hypercalls);
        self.hypercalls_out_of_range += other.hypercalls_out_of_range;
        add(&mut self.enosys, &other.enosys);
        self.enosys_total += other.enosys_total;
        self.mmuext_unimplemented += other.mmuext_unimplemented;
        add(&mut self.bounces, &other.bounces);
        self.syscall_bounces += other.syscall_bounces;
        self.upcalls += other.upcalls;
        add(&mut self.mmu_update_batches, &other.mmu_update_batches);
        add(&mut self.mmuext_cmds, &other.mmuext_cmds);
        add(&mut self.emulated, &other.emulated);
        self.continuations += other.continuations;
        add(&mut self.continued, &other.continued);
    }

    /// All counters zero.
    pub const fn new() -> Self {
        Self {
            hypercalls: [0; COUNT],
            hypercalls_out_of_range: 0,
            enosys: [0; COUNT],
            enosys_total: 0,
            mmuext_unimplemented: 0,
            bounces: [0; 256],
            syscall_bounces: 0,
            upcalls: 0,
            mmu_update_batches: [0; MMU_BATCH_BUCKETS],
            mmuext_cmds: [0; 32],
            emulated: [0; EMULATED_KINDS],
            recent: [HypercallRecord {
                nr: 0,
                args: [0; 5],
                result: 0,
            }; RECENT],
            recent_next: 0,
            recent_total: 0,
            continuations: 0,
            continued: [0; COUNT],
        }
    }

    pub(crate) fn count_hypercall(&mut self, nr: u64) {
        match usize::try_from(nr)
            .ok()
            .and_then(|i| self.hypercalls.get_mut(i))
        {
            Some(c) => *c += 1,
            None => self.hypercalls_out_of_range += 1,
        }
    }

    pub(crate) fn count_continuation(&mut self, nr: u64) {
        self.continuations += 1;
        if let Some(c) = usize::try_from(nr)
            .ok()
            .and_then(|i| self.continued.get_mut(i))
        {
            *c += 1;
        }
    }

    pub(crate) fn count_enosys(&mut self, nr: u64) {
        self.enosys_total += 1;
        if let Some(c) = usize::try_from(nr)
            .ok()
            .and_then(|i| self.enosys.get_mut(i))
        {
            *c += 1;
        }
    }

    pub(crate) fn count_mmu_batch(&mut self, entries: u64) {
        let bucket = (64 - entries.leading_zeros() as usize).min(MMU_BATCH_BUCKETS - 1);
        self.mmu_update_batches[bucket] += 1;
    }

    pub(crate) fn count_mmuext(&mut self, cmd: u32) {
        let i = (cmd as usize).min(self.mmuext_cmds.len() - 1);
        self.mmuext_cmds[i] += 1;
    }

    pub(crate) fn count_emulated(&mut self, kind: usize) {
        if let Some(c) = self.emulated.get_mut(kind) {
            *c += 1;
        }
    }

    pub(crate) fn record(&mut self, rec: HypercallRecord) {
        self.recent[self.recent_next] = rec;
        self.recent_next = (self.recent_next + 1) % RECENT;
        self.recent_total += 1;
    }

    /// The recorded hypercalls, oldest first.
    pub fn recent_iter(&self) -> impl Iterator<Item = &HypercallRecord> {
        let valid = usize::try_from(self.recent_total)
            .unwrap_or(RECENT)
            .min(RECENT);
        let start = (self.recent_next + RECENT - valid) % RECENT;
        (0..valid).map(move |i| &self.recent[(start + i) % RECENT])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_fall_in_power_of_two_buckets() {
        let mut s = Stats::new();
        for n in [0, 1, 2, 3, 4, 511, 512, 1023, 1024, u64::MAX] {
            s.count_mmu_batch(n);
        }
        assert_eq!(s.mmu_update_batches, [1, 1, 2, 1, 0, 0, 0, 0, 0, 1, 2, 2]);
    }

    #[test]
    fn ring_keeps_last_sixteen_in_order() {
        let mut s = Stats::new();
        assert_eq!(s.recent_iter().count(), 0);
        for nr in 0..20u64 {
            s.record(HypercallRecord {
                nr,
                args: [nr; 5],
                result: nr,
            });
        }
        let v: std::vec::Vec<u64> = s.recent_iter().map(|r| r.nr).collect();
        assert_eq!(v, (4..20).collect::<std::vec::Vec<u64>>());
        s.count_hypercall(1000);
        assert_eq!(s.hypercalls_out_of_range, 1);
        s.count_enosys(1000);
        assert_eq!(s.enosys_total, 1);
    }
}
