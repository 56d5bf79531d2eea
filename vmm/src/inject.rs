//! Fault injection (`pvkvm run --inject SEED`, a testing flag): makes the rare timings of
//! a real host common, so ordering bugs between events, traps and hypercalls show up in
//! seconds instead of once in a hundred boots.
//!
//! What it does, each decision drawn from a pseudo-random stream seeded by `SEED`:
//! - **Events at exits**: before an exit is handled, the guest's `evtchn_upcall_pending`
//!   is set (a spurious upcall, which the 2-level ABI allows: the guest's handler finds
//!   no port and returns), so the upcall is delivered on top of whatever the exit does:
//!   an exception bounce, a trapped pagetable write, a hypercall and its continuation.
//! - **Kicks at random times**: the vCPU thread is kicked out of `KVM_RUN` every few
//!   tens to hundreds of microseconds, so kicks land between a `syscall` and its
//!   doorbell, inside the shim, and between a guest fault and its delivery.
//! - **Short applies**: the posted stores go to the shim in chunks of a random size, so
//!   the `APPLY_MORE` refill path runs.
//! - **Preempted hypercalls**: the engine's `hypercall_preempt_check` says yes at random,
//!   so multicalls and batches continue from the guest (at least one item per entry).
//! - **Late backends**: the backends' events reach the vCPU after a random delay.
//!
//! Decisions are reproducible for one seed given the same sequence of exits; the host's
//! timing (when a kick lands) is not, so a seed names a family of runs, not one run.

use std::time::Duration;

/// The decisions for one seed.
#[derive(Clone, Debug)]
pub struct Injector {
    state: u64,
}

/// What to inject at one exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtExit {
    /// Make an event upcall pending before the exit is handled.
    pub upcall: bool,
    /// Let the engine's preemption check say yes during this exit.
    pub preempt: bool,
    /// Send the posted stores of this exit in chunks of at most this many.
    pub apply_chunk: Option<usize>,
}

/// One in this many exits gets a spurious upcall.
const UPCALL_ONE_IN: u64 = 6;
/// One in this many exits has its hypercall preempted.
const PREEMPT_ONE_IN: u64 = 4;
/// One in this many exits sends its stores in short chunks.
const SHORT_APPLY_ONE_IN: u64 = 3;
/// A short chunk holds 1 to this many stores. Small on purpose: most exits post only
/// one or two stores (a first validation writes its entries unposted), and a chunk as
/// large as the posting area would almost never make the shim ask for more.
const SHORT_APPLY_MAX: u64 = 4;
/// Kicks come after 20 us to this many microseconds.
const KICK_MAX_US: u64 = 400;
/// One in this many backend events is late, by up to this many microseconds.
const LATE_BACKEND_ONE_IN: u64 = 2;
const LATE_BACKEND_MAX_US: u64 = 3000;

impl Injector {
    /// The stream for `seed`; `stream` separates the threads that each draw from their
    /// own copy (the vCPU's exits, the kicker, the backends).
    pub fn new(seed: u64, stream: u64) -> Injector {
        let mut i = Injector {
            state: seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f),
        };
        i.next();
        i
    }

    /// SplitMix64: small, fast, and the same sequence on every build and host (a seed
    /// printed by a failing run reproduces its decisions anywhere).
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    /// The decisions for the next exit.
    pub fn at_exit(&mut self, max_chunk: usize) -> AtExit {
        let upcall = self.one_in(UPCALL_ONE_IN);
        let preempt = self.one_in(PREEMPT_ONE_IN);
        let apply_chunk = self
            .one_in(SHORT_APPLY_ONE_IN)
            .then(|| 1 + (self.next() % SHORT_APPLY_MAX.min(max_chunk.max(1) as u64)) as usize);
        AtExit {
            upcall,
            preempt,
            apply_chunk,
        }
    }

    /// How long until the next kick.
    pub fn next_kick(&mut self) -> Duration {
        Duration::from_micros(20 + self.next() % (KICK_MAX_US - 20))
    }

    /// How long to hold back a backend's event (None: send it now).
    pub fn backend_delay(&mut self) -> Option<Duration> {
        self.one_in(LATE_BACKEND_ONE_IN)
            .then(|| Duration::from_micros(self.next() % LATE_BACKEND_MAX_US))
    }
}

/// Parses `--inject`'s value: a seed, decimal or 0x-hex.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("'{s}' is not a seed (a number, decimal or 0x-hex)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_decisions_every_time_and_seeds_differ() {
        let draw = |seed, stream| {
            let mut i = Injector::new(seed, stream);
            (0..64).map(|_| i.at_exit(100)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(8, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
    }

    #[test]
    fn every_kind_of_injection_happens_at_its_rate() {
        let mut i = Injector::new(1, 0);
        let n = 60_000u64;
        let (mut up, mut pre, mut short) = (0u64, 0u64, 0u64);
        for _ in 0..n {
            let d = i.at_exit(200);
            up += u64::from(d.upcall);
            pre += u64::from(d.preempt);
            if let Some(c) = d.apply_chunk {
                assert!((1..=SHORT_APPLY_MAX as usize).contains(&c));
                short += 1;
            }
        }
        let near = |got: u64, one_in: u64| {
            let want = n / one_in;
            got > want * 9 / 10 && got < want * 11 / 10
        };
        assert!(near(up, UPCALL_ONE_IN), "upcalls {up}");
        assert!(near(pre, PREEMPT_ONE_IN), "preemptions {pre}");
        assert!(near(short, SHORT_APPLY_ONE_IN), "short applies {short}");
        for _ in 0..1000 {
            let k = i.next_kick();
            assert!(k >= Duration::from_micros(20) && k < Duration::from_micros(KICK_MAX_US));
            if let Some(d) = i.backend_delay() {
                assert!(d < Duration::from_micros(LATE_BACKEND_MAX_US));
            }
        }
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("x").is_err());
        assert!(parse_seed("-1").is_err());
    }
}
