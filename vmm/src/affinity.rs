//! Pinning vCPU threads to host CPUs: xl's CPU list syntax (`cpus=` in xl.cfg(5),
//! `--cpus` on the command line) and applying a set to the calling thread.
//!
//! The syntax, as libxl's xl accepts it: items separated by commas, each one of
//!
//! * `N`: CPU N;
//! * `A-B`: CPUs A to B (B not below A);
//! * `all`: every CPU;
//! * any of those but `all` prefixed with `^`: remove them.
//!
//! Items apply left to right to a set that starts empty, so `0-7,^3` is 0-2 and 4-7,
//! while `^3,0-7` is 0-7. Empty items (`0,,1`) are skipped, as xl's tokenizer does.
//! NUMA forms (`node:N`, `nodes:N-M`) are refused: pvkvm has no NUMA placement.
//!
//! A string gives every vCPU the same set; a list (`cpus = ["2", "3-4"]`) gives vCPU i
//! the i-th item's set, vCPUs past the end of the list are not pinned, and items past
//! the domain's vCPUs are ignored, all as xl does. A set with every CPU (`all`) leaves
//! the thread's affinity as pvkvm inherited it (for example from `taskset`).

use std::fmt;

use thiserror::Error;

/// The CPUs a thread's affinity mask can name (glibc's `CPU_SETSIZE`).
pub const CPU_SETSIZE: usize = 1024;

const WORDS: usize = CPU_SETSIZE / 64;

/// Why a CPU list is refused or could not be applied.
#[derive(Debug, Error)]
pub enum Error {
    /// A NUMA form.
    #[error("{0:?} names NUMA nodes, which pvkvm does not place guests by; name host CPUs instead (such as \"0-3\")")]
    Nodes(String),
    /// An item that is not a CPU, a range or `all`.
    #[error("{0:?} is not a CPU number, a range of CPUs such as 2-5, or \"all\"")]
    BadItem(String),
    /// A range whose end is below its start.
    #[error("the range {0:?} ends before it starts")]
    Reversed(String),
    /// `^all`.
    #[error("\"^all\" would remove every CPU; list the CPUs to keep instead")]
    NotAll,
    /// A CPU number past [`CPU_SETSIZE`].
    #[error("CPU {0} is beyond the {CPU_SETSIZE} CPUs an affinity mask can name")]
    TooLarge(u64),
    /// The list leaves no CPU.
    #[error("{0:?} leaves no CPU to run on")]
    Empty(String),
    /// A CPU this host does not have.
    #[error("CPU {cpu} does not exist on this host, whose CPUs are {host}")]
    NotOnHost {
        /// The CPU named.
        cpu: usize,
        /// The host's CPUs, as a list.
        host: String,
    },
    /// The host's CPUs cannot be found out.
    #[error("cannot read this host's CPUs from {path}: {source}")]
    HostCpus {
        /// The file read.
        path: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `sched_setaffinity` failed.
    #[error("cannot pin the thread to CPUs {set}: {source}")]
    Apply {
        /// The set, as a list.
        set: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A set of host CPUs, numbered from 0 to [`CPU_SETSIZE`] - 1. Two sets are equal when
/// they have the same CPUs, however written.
#[derive(Clone)]
pub struct CpuSet {
    bits: [u64; WORDS],
    /// The highest CPU named by number (not by `all`), for the host check.
    highest_named: Option<usize>,
}

impl CpuSet {
    /// No CPUs.
    pub fn new() -> CpuSet {
        CpuSet {
            bits: [0; WORDS],
            highest_named: None,
        }
    }

    /// Adds a CPU (below [`CPU_SETSIZE`]; others are ignored).
    pub fn insert(&mut self, cpu: usize) {
        if cpu < CPU_SETSIZE {
            self.bits[cpu / 64] |= 1 << (cpu % 64);
        }
    }

    /// Removes a CPU.
    pub fn remove(&mut self, cpu: usize) {
        if cpu < CPU_SETSIZE {
            self.bits[cpu / 64] &= !(1 << (cpu % 64));
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        cpu < CPU_SETSIZE && self.bits[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    /// The CPUs, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..CPU_SETSIZE).filter(|&c| self.contains(c))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// Whether the set has every CPU (as `all` makes it).
    pub fn is_all(&self) -> bool {
        self.bits.iter().all(|&w| w == u64::MAX)
    }

    /// The highest CPU the list named by number (`all` names none), whether added or
    /// removed.
    pub fn highest_named(&self) -> Option<usize> {
        self.highest_named
    }

    /// Parses one CPU list (`0-3,5`, `all,^1`; see the module documentation).
    pub fn parse(list: &str) -> Result<CpuSet, Error> {
        let mut set = CpuSet::new();
        for item in list.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (remove, body) = match item.strip_prefix('^') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            if body.starts_with("node:") || body.starts_with("nodes:") {
                return Err(Error::Nodes(item.to_string()));
            }
            if body == "all" {
                if remove {
                    return Err(Error::NotAll);
                }
                set.bits = [u64::MAX; WORDS];
                continue;
            }
            let number = |s: &str| -> Result<usize, Error> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::BadItem(item.to_string()));
                }
                // Digits only: a parse failure is an overflow, past CPU_SETSIZE anyway.
                let n = s.parse::<u64>().unwrap_or(u64::MAX);
                if n >= CPU_SETSIZE as u64 {
                    return Err(Error::TooLarge(n));
                }
                Ok(n as usize)
            };
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(body)?;
                    (n, n)
                }
            };
            if last < first {
                return Err(Error::Reversed(item.to_string()));
            }
            for cpu in first..=last {
                if remove {
                    set.remove(cpu);
                } else {
                    set.insert(cpu);
                }
            }
            set.highest_named = set.highest_named.max(Some(last));
        }
        if set.is_empty() {
            return Err(Error::Empty(list.to_string()));
        }
        Ok(set)
    }
}

impl PartialEq for CpuSet {
    fn eq(&self, other: &CpuSet) -> bool {
        self.bits == other.bits
    }
}

impl Eq for CpuSet {}

impl Default for CpuSet {
    fn default() -> CpuSet {
        CpuSet::new()
    }
}

/// As xl prints CPU lists: `0-3,5`, or `all`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut cpus = self.iter().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end = cpus.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

/// Which host CPUs each vCPU's thread may run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuAffinity {
    /// Any (no pinning).
    All,
    /// Every vCPU the same set (the string form).
    Same(CpuSet),
    /// vCPU i the i-th set; vCPUs past the end are not pinned (the list form).
    PerVcpu(Vec<CpuSet>),
}

impl CpuAffinity {
    /// The string form: one list for every vCPU.
    pub fn parse(list: &str) -> Result<CpuAffinity, Error> {
        let set = CpuSet::parse(list)?;
        Ok(if set.is_all() {
            CpuAffinity::All
        } else {
            CpuAffinity::Same(set)
        })
    }

    /// The list form: one list per vCPU, in order.
    pub fn parse_per_vcpu<S: AsRef<str>>(lists: &[S]) -> Result<CpuAffinity, Error> {
        let sets = lists
            .iter()
            .map(|l| CpuSet::parse(l.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if sets.iter().all(CpuSet::is_all) {
            CpuAffinity::All
        } else {
            CpuAffinity::PerVcpu(sets)
        })
    }

    /// The set vCPU `id`'s thread is pinned to, or None to leave it unpinned.
    pub fn for_vcpu(&self, id: usize) -> Option<&CpuSet> {
        match self {
            CpuAffinity::All => None,
            CpuAffinity::Same(set) => Some(set),
            CpuAffinity::PerVcpu(sets) => sets.get(id),
        }
        .filter(|s| !s.is_all())
    }

    /// The sets of the first `vcpus` vCPUs (as xl, list items past them are ignored).
    fn sets(&self, vcpus: usize) -> &[CpuSet] {
        match self {
            CpuAffinity::All => &[],
            CpuAffinity::Same(set) => std::slice::from_ref(set),
            CpuAffinity::PerVcpu(sets) => &sets[..sets.len().min(vcpus)],
        }
    }

    /// Refuses a CPU number the host does not have (`host`: its CPUs, from
    /// [`host_cpus`]) in the sets of a domain of `vcpus` vCPUs: every CPU named, added or
    /// removed, must exist.
    pub fn check_host(&self, host: &CpuSet, vcpus: usize) -> Result<(), Error> {
        for set in self.sets(vcpus) {
            let Some(highest) = set.highest_named() else {
                continue;
            };
            // The highest named, then the set's CPUs below it (those the list put in by
            // number; past it, only `all` did).
            let bad = std::iter::once(highest)
                .chain(set.iter().take_while(|&c| c < highest))
                .find(|&c| !host.contains(c));
            if let Some(cpu) = bad {
                return Err(Error::NotOnHost {
                    cpu,
                    host: host.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The host's CPUs: `/sys/devices/system/cpu/present` (online or not).
pub fn host_cpus() -> Result<CpuSet, Error> {
    const PATH: &str = "/sys/devices/system/cpu/present";
    let text =
        std::fs::read_to_string(PATH).map_err(|source| Error::HostCpus { path: PATH, source })?;
    CpuSet::parse(text.trim()).map_err(|e| Error::HostCpus {
        path: PATH,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// Pins the calling thread to `set` (`sched_setaffinity(0, ...)`).
pub fn apply_to_current_thread(set: &CpuSet) -> Result<(), Error> {
    const _: () = assert!(std::mem::size_of::<libc::cpu_set_t>() == WORDS * 8);
    // SAFETY: pid 0 is the calling thread. The mask is CpuSet's bit array, which has
    // cpu_set_t's size (checked above) and layout (an array of 64-bit words, CPU n at
    // bit n % 64 of word n / 64) and outlives the call; the kernel only reads it.
    let rc = unsafe {
        libc::sched_setaffinity(
            0,
            std::mem::size_of_val(&set.bits),
            set.bits.as_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc != 0 {
        return Err(Error::Apply {
            set: set.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> String {
        match CpuSet::parse(list) {
            Ok(s) => s.to_string(),
            Err(e) => panic!("{list:?} refused: {e}"),
        }
    }

    fn err(list: &str) -> String {
        match CpuSet::parse(list) {
            Ok(s) => panic!("{list:?} accepted as {s}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(set("0"), "0");
        assert_eq!(set("3"), "3");
        assert_eq!(set("0-3"), "0-3");
        assert_eq!(set("0-3,5"), "0-3,5");
        assert_eq!(set("5,0-3"), "0-3,5");
        assert_eq!(set("2-2"), "2");
        assert_eq!(set("0,1,2,7"), "0-2,7");
        assert_eq!(set("1023"), "1023");
        assert_eq!(set("1020-1023"), "1020-1023");
    }

    #[test]
    fn exclusions_apply_in_order() {
        assert_eq!(set("0-7,^3"), "0-2,4-7");
        assert_eq!(set("0-7,^2-4"), "0-1,5-7");
        // Left to right: a later item adds back what an earlier one removed.
        assert_eq!(set("^3,0-7"), "0-7");
        assert_eq!(set("0-7,^3,3"), "0-7");
        assert_eq!(set("all,^0"), "1-1023");
    }

    #[test]
    fn all_and_blanks() {
        assert_eq!(set("all"), "all");
        assert_eq!(set("0,all"), "all");
        assert_eq!(set(" 0 , 2 "), "0,2");
        assert_eq!(set("0,,2,"), "0,2");
    }

    #[test]
    fn refused_lists() {
        assert!(err("nodes:0").contains("NUMA"), "{}", err("nodes:0"));
        assert!(err("node:1").contains("\"node:1\""));
        assert!(err("^nodes:0-1").contains("NUMA"));
        assert!(err("0,nodes:all").contains("NUMA"));
        assert_eq!(
            err("^all"),
            "\"^all\" would remove every CPU; list the CPUs to keep instead"
        );
        assert_eq!(err("3-1"), "the range \"3-1\" ends before it starts");
        assert!(err("x").contains("\"x\" is not a CPU number"));
        assert!(err("1-").contains("\"1-\""));
        assert!(err("-1").contains("\"-1\""));
        assert!(err("1-2-3").contains("\"1-2-3\""));
        assert!(err("+1").contains("\"+1\""));
        assert!(err("0x1").contains("\"0x1\""));
        assert!(err("^").contains("\"^\""));
        assert!(err("1 2").contains("\"1 2\""));
        assert_eq!(
            err("1024"),
            "CPU 1024 is beyond the 1024 CPUs an affinity mask can name"
        );
        assert!(err("0-99999999999999999999999").contains("CPU 18446744073709551615"));
        assert!(err("0-4096").contains("CPU 4096"));
        assert_eq!(err("^3"), "\"^3\" leaves no CPU to run on");
        assert_eq!(err("0-1,^0-1"), "\"0-1,^0-1\" leaves no CPU to run on");
        assert!(err("").contains("leaves no CPU"));
        assert!(err(",").contains("leaves no CPU"));
    }

    #[test]
    fn per_vcpu_sets() {
        let a = CpuAffinity::parse("0-1").unwrap();
        assert_eq!(a.for_vcpu(0).unwrap().to_string(), "0-1");
        assert_eq!(a.for_vcpu(7).unwrap().to_string(), "0-1");
        assert_eq!(CpuAffinity::parse("all").unwrap(), CpuAffinity::All);
        assert_eq!(CpuAffinity::All.for_vcpu(0), None);

        let l = CpuAffinity::parse_per_vcpu(&["2", "3-4", "all"]).unwrap();
        assert_eq!(l.for_vcpu(0).unwrap().to_string(), "2");
        assert_eq!(l.for_vcpu(1).unwrap().to_string(), "3-4");
        // `all` and vCPUs past the list: not pinned.
        assert_eq!(l.for_vcpu(2), None);
        assert_eq!(l.for_vcpu(3), None);
        let none: [&str; 0] = [];
        assert_eq!(
            CpuAffinity::parse_per_vcpu(&none).unwrap(),
            CpuAffinity::All
        );
        assert!(CpuAffinity::parse_per_vcpu(&["1", "nodes:0"]).is_err());
    }

    #[test]
    fn host_check() {
        let host = CpuSet::parse("0-3").unwrap();
        assert!(CpuAffinity::parse("0-3")
            .unwrap()
            .check_host(&host, 4)
            .is_ok());
        assert!(CpuAffinity::parse("all,^2")
            .unwrap()
            .check_host(&host, 4)
            .is_ok());
        let e = CpuAffinity::parse("1,7")
            .unwrap()
            .check_host(&host, 4)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CPU 7 does not exist on this host, whose CPUs are 0-3"
        );
        // A removed CPU is named too: a typo there is caught as well.
        let e = CpuAffinity::parse("all,^9")
            .unwrap()
            .check_host(&host, 4)
            .unwrap_err();
        assert!(e.to_string().starts_with("CPU 9 "), "{e}");
        let e = CpuAffinity::parse_per_vcpu(&["0", "5"])
            .unwrap()
            .check_host(&host, 4)
            .unwrap_err();
        assert!(e.to_string().starts_with("CPU 5 "), "{e}");
        // Items past the domain's vCPUs are ignored, as xl ignores them.
        assert!(CpuAffinity::parse_per_vcpu(&["0", "5"])
            .unwrap()
            .check_host(&host, 1)
            .is_ok());
    }

    #[test]
    fn this_host_has_cpu_0() {
        assert!(host_cpus().unwrap().contains(0));
    }

    /// Pinning a scratch thread to one CPU (the first it may run on) shows in its own
    /// affinity.
    #[test]
    fn apply_pins_the_thread() {
        std::thread::spawn(|| {
            let allowed = || {
                let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                let line = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap()
                    .trim()
                    .to_string();
                CpuSet::parse(&line).unwrap()
            };
            let first = allowed().iter().next().unwrap();
            let mut one = CpuSet::new();
            one.insert(first);
            apply_to_current_thread(&one).unwrap();
            assert_eq!(allowed(), one);
        })
        .join()
        .unwrap();
    }
}
