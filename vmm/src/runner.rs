//! Runs one PV domain: builds it (loader + shim region), starts its vCPU thread, and
//! turns the end of the guest into an exit status and a diagnostic.
//!
//! The vCPU runs on its own thread; the calling thread is the watchdog. When the
//! deadline passes it marks the run as timed out and kicks the vCPU out of `KVM_RUN`
//! with a signal, so a guest that spins in ring 3 without ever trapping still ends with
//! a diagnostic instead of a hang.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::backends::console::{ConsoleBackend, GuestRingPage, Output};
use crate::backends::service::{
    self, Backends, Request, BACKEND_PORT_CONSOLE, BACKEND_PORT_XENSTORE,
};
use crate::cpuid::CpuidTable;
use crate::exit::{self, Action, CpuState, Domain, ExitStats, GuestPlatform};
use crate::inject::Injector;
use crate::loader::{self, DomainConfig, KernelImage};
use crate::posted::{Posted, VmmFrames};
use crate::shim::{self, ShimImage, ShimRegion};
use crate::vstate::{self, Regs, Vm};
use crate::xenstore::Xenstore;
use xen_abi::contract::layout::GRANT_FRAMES;

/// Errors that stop a domain before or while it runs (not the guest's own end).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or initrd file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a usable PV kernel.
    #[error("{path}: {source}")]
    Kernel {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: loader::LoaderError,
    },
    /// KVM failed.
    #[error(transparent)]
    Kvm(#[from] vstate::Error),
    /// The control socket could not be set up.
    #[error(transparent)]
    Api(#[from] crate::api::Error),
    /// The shim region could not be built.
    #[error(transparent)]
    Shim(#[from] shim::Error),
    /// The memory size is unusable.
    #[error("memory size {0} MiB is outside 16 MiB .. 64 GiB")]
    MemorySize(u64),
    /// The vCPU thread died.
    #[error("the vCPU thread failed: {0}")]
    Thread(String),
    /// A disk or network device cannot be set up.
    #[error("cannot set up the guest's devices: {0}")]
    Devices(String),
    /// A kernel, initrd or policy file is not something pvkvm can read whole.
    #[error("{path}: {what}")]
    Input {
        /// File.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The initrd does not fit the guest.
    #[error("initrd {path} is {size_mib} MiB, more than the guest's {memory_mib} MiB of memory")]
    InitrdTooLarge {
        /// File.
        path: PathBuf,
        /// Its size.
        size_mib: u64,
        /// Guest memory.
        memory_mib: u64,
    },
    /// Measuring the host's facts failed.
    #[error("cannot measure this host's KVM: {0}")]
    HostProbe(#[source] crate::probe::Error),
    /// A recorded CPUID dump is unusable.
    #[error("{path}: {source}")]
    CpuPolicy {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: crate::cpuid::DumpError,
    },
    /// More vCPUs than pvkvm runs.
    #[error("{0} vCPUs asked for; pvkvm runs 1 to {max}", max = xen_abi::contract::MAX_VCPUS)]
    Vcpus(u32),
    /// The vCPUs' host CPUs (`cpus`, `--cpus`) name a CPU this host lacks.
    #[error("cpus: {0}")]
    Affinity(#[source] crate::affinity::Error),
    /// A host fact makes pvkvm unsafe here.
    #[error(transparent)]
    HostRefused(#[from] crate::host::Refusal),
}

/// How to run a domain.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Kernel image (ELF or bzImage).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Where the PV console goes.
    pub console: ConsoleTarget,
    /// Stop the guest when it has not trapped at all for this long (a kernel that makes
    /// progress traps: hypercalls, faults, timer events); None disables the check.
    pub stall_timeout: Option<Duration>,
    /// Time every exit by kind for the `--stats` profile (off: no clock reads).
    pub profile: bool,
    /// Testing: a recorded CPU's CPUID dump to present instead of this host's (limited
    /// to what this host runs).
    pub cpu_policy: Option<PathBuf>,
    /// Testing: inject events, kicks, short applies, preemptions and late backend events
    /// with decisions drawn from this seed (see [`crate::inject`]).
    pub inject: Option<u64>,
    /// Testing: recompute the MMU engine's reference and type counts once a second and
    /// when the domain ends; a violation ends the domain with a diagnostic.
    pub check_mmu: bool,
    /// Which in-VM answers the shim gives.
    pub in_vm: InVmChoice,
    /// Virtual disks (`--disk`), in order.
    pub disks: Vec<crate::backends::blk::DiskSpec>,
    /// Virtual NICs (`--net`), in order (`vif0`, `vif1`, ...).
    pub nets: Vec<crate::backends::net::NetSpec>,
    /// The control socket (`--api-socket`), if any.
    pub api_socket: Option<PathBuf>,
    /// The domain's name (an xl.cfg's `name`), for the control socket's `info`.
    pub name: Option<String>,
    /// vCPUs online at boot (at least 1).
    pub vcpus: u32,
    /// vCPUs the domain has (at least `vcpus`); the others start offline, for the guest
    /// to bring up (`cpu/N/availability` in xenstore says which).
    pub max_vcpus: u32,
    /// The host CPUs each vCPU's thread is pinned to (`cpus`, `--cpus`); None: not
    /// pinned.
    pub cpus: Option<crate::affinity::CpuAffinity>,
    /// Kernel and initrd already read (from the guest's disk by the bootloader): used
    /// instead of reading `kernel` and `initrd`, which then only name them.
    pub preloaded: Option<Preloaded>,
}

/// A kernel and initrd in memory.
#[derive(Clone, Debug, Default)]
pub struct Preloaded {
    /// The kernel image.
    pub kernel: Vec<u8>,
    /// The initrd.
    pub initrd: Option<Vec<u8>>,
}

/// Why the watchdog stopped a guest.
const STOP_NONE: u8 = 0;
const STOP_TIMEOUT: u8 = 1;
const STOP_STALL: u8 = 2;
const STOP_DESTROY: u8 = 3;
const STOP_DESTROY_API: u8 = 4;
/// Another vCPU's end (shutdown, crash, fatal error) ended the domain.
const STOP_DOMAIN_ENDED: u8 = 5;

/// How long a guest asked to power off (SIGTERM) gets before it is destroyed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

static SIGTERMS: AtomicU8 = AtomicU8::new(0);

/// How often the watchdog loop looks at stop requests (the signal handler only counts
/// them): with exits bounded by `exit::EXIT_BUDGET`, a second stop request ends pvkvm
/// within about this long.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

extern "C" fn on_ignored_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn on_sigterm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: an atomic increment; the watchdog loop acts on it.
    SIGTERMS.fetch_add(1, Ordering::SeqCst);
}

/// Where the guest's PV console (hvc0) goes.
#[derive(Clone, Debug, Default)]
pub enum ConsoleTarget {
    /// This process's standard input and output (raw mode when it is a terminal).
    #[default]
    Stdio,
    /// Appended to a file (no input).
    File(PathBuf),
    /// A new pseudo-terminal, whose path is printed.
    Pty,
}

impl ConsoleTarget {
    fn into_output(self) -> Result<Output, Error> {
        Ok(match self {
            ConsoleTarget::Stdio => Output::Stdout,
            ConsoleTarget::Pty => Output::Pty,
            ConsoleTarget::File(path) => Output::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| Error::Read { path, source })?,
            ),
        })
    }
}

/// How a domain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEnd {
    /// `SCHEDOP_shutdown` with a reason.
    Shutdown(u32),
    /// The domain could not go on (diagnostic attached).
    Fatal(String),
    /// The watchdog stopped it (diagnostic attached).
    Timeout(String),
    /// A stop request (SIGTERM and the like) was not followed by a power-off: destroyed
    /// (diagnostic attached).
    Destroyed(String),
}

/// What a run reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub end: DomainEnd,
    /// Wall time from launch to end.
    pub elapsed: Duration,
    /// Exits by kind.
    pub exits: ExitStats,
    /// Engine counters.
    pub stats: pv_engine::Stats,
    /// The MMU engine's refusals, oldest first (the last ones it kept), for `--mmu-log`.
    pub mmu_refusals: Vec<String>,
    /// All refusals the MMU engine made.
    pub mmu_refusal_count: u64,
    /// vCPUs the domain had (the counters are all of theirs).
    pub vcpus: u32,
    /// The in-VM answers the shim gave (`xen_abi::contract::in_vm` bits).
    pub in_vm: u32,
    /// The guest console line that best says why it ended (its last panic, BUG or oops
    /// line, else its last line), for the crash report.
    pub guest_last_words: Option<String>,
}

impl RunReport {
    /// The process exit status for this end: poweroff and reboot 0, a crash 1, any other
    /// shutdown reason 3, a VMM-side fatal error 1, a timeout 124 (as timeout(1)).
    pub fn exit_status(&self) -> i32 {
        match self.end {
            DomainEnd::Shutdown(r)
                if r == xen_abi::sched::SHUTDOWN_POWEROFF
                    || r == xen_abi::sched::SHUTDOWN_REBOOT =>
            {
                0
            }
            DomainEnd::Shutdown(xen_abi::sched::SHUTDOWN_CRASH) => 1,
            DomainEnd::Shutdown(_) => 3,
            DomainEnd::Fatal(_) => 1,
            DomainEnd::Timeout(_) => 124,
            // As a process ended by SIGTERM reports it (128 + 15).
            DomainEnd::Destroyed(_) => 143,
        }
    }
}

const STORE_EVTCHN: u32 = 1;
const CONSOLE_EVTCHN: u32 = 2;
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Makes this thread's KVM_RUN return at once, whether it is in it now (EINTR) or
    // about to enter it: no kick is lost.
    vstate::kick_current_thread();
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn host_has_xsave(vm: &Vm) -> bool {
    vm.supported_cpuid()
        .map(|c| {
            c.as_slice()
                .iter()
                .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0)
        })
        .unwrap_or(false)
}

/// The largest kernel file pvkvm reads (Xen's builder caps a decompressed kernel at
/// 1 GiB too; a compressed one is far smaller).
const MAX_INPUT_FILE: u64 = 1 << 30;

/// The length of a regular file or block device at `path`, if it is one.
fn input_len(path: &PathBuf) -> Option<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.file_type().is_file() {
        Some(meta.len())
    } else if meta.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        std::fs::File::open(path).ok()?.seek(SeekFrom::End(0)).ok()
    } else {
        None
    }
}

/// Reads a host input file whole, after checking that it is a regular file or block
/// device of at most `max` bytes: a FIFO would block before any timeout is armed and
/// `/dev/zero` would be read until memory runs out.
fn read_input(path: &PathBuf, max: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let input = |what: String| Error::Input {
        path: path.clone(),
        what,
    };
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let Some(len) = input_len(path) else {
        return Err(input(format!(
            "not a regular file or block device (a {})",
            file_kind(&meta.file_type())
        )));
    };
    if len > max {
        return Err(input(format!(
            "{} MiB, more than the {} MiB pvkvm reads",
            len >> 20,
            max >> 20
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(input(format!("grew past {} MiB while read", max >> 20)));
    }
    Ok(bytes)
}

/// What kind of file `t` is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Builds and runs a domain until it ends. Console output goes to `console`.
pub fn run(cfg: &RunConfig, console: Box<dyn Write + Send>) -> Result<RunReport, Error> {
    let started = Instant::now();
    if !(16 << 20..=64 << 30).contains(&cfg.memory) {
        return Err(Error::MemorySize(cfg.memory >> 20));
    }
    // A CPU the host lacks is a typo: refused before anything is built or booted.
    if let Some(cpus) = &cfg.cpus {
        let vcpus = cfg.max_vcpus.max(cfg.vcpus).max(1) as usize;
        crate::affinity::host_cpus()
            .and_then(|host| cpus.check_host(&host, vcpus))
            .map_err(Error::Affinity)?;
    }
    let kernel_bytes = match &cfg.preloaded {
        Some(p) => std::borrow::Cow::Borrowed(p.kernel.as_slice()),
        None => std::borrow::Cow::Owned(read_input(&cfg.kernel, MAX_INPUT_FILE)?),
    };
    let image = KernelImage::parse(&kernel_bytes).map_err(|source| Error::Kernel {
        path: cfg.kernel.clone(),
        source,
    })?;
    // The initrd lives in guest memory: one larger than the guest is refused before it
    // is read, naming the initrd (the domain builder would refuse it later anyway).
    let initrd = match (&cfg.preloaded, &cfg.initrd) {
        (Some(p), _) => match &p.initrd {
            Some(bytes) if bytes.len() as u64 > cfg.memory => {
                return Err(Error::InitrdTooLarge {
                    path: cfg.initrd.clone().unwrap_or_default(),
                    size_mib: bytes.len() as u64 >> 20,
                    memory_mib: cfg.memory >> 20,
                })
            }
            other => other.clone(),
        },
        (None, Some(path)) => {
            if let Some(len) = input_len(path).filter(|&len| len > cfg.memory) {
                return Err(Error::InitrdTooLarge {
                    path: path.clone(),
                    size_mib: len >> 20,
                    memory_mib: cfg.memory >> 20,
                });
            }
            Some(read_input(path, cfg.memory)?)
        }
        (None, None) => None,
    };
    let recorded_cpu = match &cfg.cpu_policy {
        Some(path) => {
            let text = read_input(path, 1 << 20)?;
            let text = String::from_utf8_lossy(&text);
            Some(
                crate::cpuid::RawCpuid::parse_dump(&text).map_err(|source| Error::CpuPolicy {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };

    // Disks and NICs are opened before anything is built: an image that cannot be
    // used stops the start with its own message.
    let device_models = open_devices(cfg)?;

    let measuring = Instant::now();
    let facts = crate::host::HostFacts::probe().map_err(Error::HostProbe)?;
    let paths = facts.paths()?;
    log::info!(
        "host facts (measured in {:?}): {facts:?}; paths: {paths:?}",
        measuring.elapsed()
    );

    let ram = cfg.memory & !0xfff;
    let shim_gpa = shim::region_gpa(ram >> 12);
    let nr_vcpus = cfg.max_vcpus.max(cfg.vcpus).max(1);
    if nr_vcpus > xen_abi::contract::MAX_VCPUS {
        return Err(Error::Vcpus(nr_vcpus));
    }
    let vm = Vm::new(&[
        (0, ram as usize),
        (shim_gpa, shim::region_size(ram >> 12, nr_vcpus)? as usize),
    ])?;
    let shim_image = ShimImage::embedded()?;
    let mut region = shim::build_region(vm.memory(), shim_gpa, &shim_image, ram >> 12, nr_vcpus)?;
    if paths.m2p_at_abi {
        region.map_m2p_at_abi();
    }
    let in_vm = match cfg.in_vm {
        InVmChoice::Auto => paths.in_vm,
        InVmChoice::Off => 0,
        InVmChoice::All => xen_abi::contract::in_vm::ALL,
    };
    region.set_in_vm(vm.memory(), in_vm)?;
    log::info!("in-VM answers: {in_vm:#x} (xen_abi::contract::in_vm bits)");

    let dom_cfg = DomainConfig {
        mem_bytes: ram,
        cmdline: cfg.cmdline.clone(),
        initrd,
        shared_info_gpa: region.shared_info_gpa,
        hole_l4: region.hole_l4,
        store_evtchn: STORE_EVTCHN,
        console_evtchn: CONSOLE_EVTCHN,
    };
    let layout = loader::build(&image, &dom_cfg, vm.memory()).map_err(|source| Error::Kernel {
        path: cfg.kernel.clone(),
        source,
    })?;
    log::info!(
        "domain built: entry {:#x}, start_info {:#x}, cr3 {:#x}",
        layout.entry,
        layout.start_info_va,
        layout.l4_gpa
    );

    // Events start masked on every vCPU, as Xen's toolstack leaves them.
    for id in 0..nr_vcpus.min(pv_engine::domain::LEGACY_MAX_VCPUS) {
        let at = region.shared_info_gpa
            + u64::from(id) * xen_abi::xen::vcpu_info::SIZE
            + xen_abi::xen::vcpu_info::UPCALL_MASK;
        vm.memory()
            .write_obj(1u8, GuestAddress(at))
            .map_err(|_| shim::Error::Memory(at))?;
    }

    let mut vcpu = vm.create_vcpu(0)?;
    let mut secondaries = (1..nr_vcpus)
        .map(|id| vm.create_vcpu(u64::from(id)))
        .collect::<Result<Vec<_>, _>>()?;
    let xstate = paths.xstate;
    log::info!("extended state: {xstate:?}");
    let policy = crate::cpuid::PolicyOptions {
        xcr0: xstate.xcr0_mask,
        tsc_aux: paths.guest_tsc_aux,
        tsc_khz: vcpu.tsc_khz()?,
    };
    let mut host_cpuid = crate::cpuid::RawCpuid::from_kvm(&vm.supported_cpuid()?);
    host_cpuid.arch_caps = vm
        .feature_msr(pv_engine::msr::MSR_ARCH_CAPABILITIES)
        .unwrap_or(0);
    let cpuid = match &recorded_cpu {
        Some(recorded) => CpuidTable::build_as(recorded, &host_cpuid, &policy),
        None => CpuidTable::build(&host_cpuid, &policy),
    };
    let xsave = host_has_xsave(&vm) || xstate.control != crate::xstate::Xcr0Control::Hidden;
    let kvm_cpuid = cpuid
        .to_kvm()
        .ok_or(vstate::Error::Missing("room for the CPUID table"))?;
    // Every vCPU gets the shim's state for its own block; the secondaries' pagetable is
    // the builder's until VCPUOP_initialise names theirs.
    for (id, v) in core::iter::once(&mut vcpu)
        .chain(secondaries.iter_mut())
        .enumerate()
    {
        let shim = region
            .vcpu(id as u32)
            .ok_or(vstate::Error::Missing("the vCPU's shim block"))?;
        v.set_cpuid(&kvm_cpuid)?;
        let sregs = v.sregs()?;
        v.set_sregs_ioctl(&shim.initial_sregs(sregs, layout.l4_gpa, xsave))?;
        v.set_msrs(&shim.msrs())?;
        if xsave {
            // The guest kernel raises it with xsetbv (x87|SSE as on Xen; where ring 3's
            // is fixed, KVM's copy is only bookkeeping).
            if v.set_xcr0(xstate.initial_xcr0()).is_err() {
                v.set_xcr0(0b11)?;
            }
        }
    }
    let regs = Regs {
        rip: layout.entry,
        rsp: layout.stack_top,
        rsi: layout.start_info_va,
        rflags: 0x202,
        ..Default::default()
    };
    vcpu.set_regs_ioctl(&regs)?;

    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| Error::Thread(format!("cannot install the kick signal handler: {e}")))?;
    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    let progress = Arc::new(AtomicU64::new(0));
    let mut pv_domain = pv_engine::Domain::new(region.shared_info_gpa, nr_vcpus);
    pv_domain.gnttab =
        pv_engine::gnttab::GrantTable::new(region.grant_table_gpa >> 12, GRANT_FRAMES as u32);
    // The xenstore and console channels start_info names, connected to the backends.
    pv_domain
        .evtchn
        .bind_backend(STORE_EVTCHN, BACKEND_PORT_XENSTORE);
    pv_domain
        .evtchn
        .bind_backend(CONSOLE_EVTCHN, BACKEND_PORT_CONSOLE);
    let pv_vcpu = pv_engine::Vcpu::new(
        0,
        layout.l4_gpa,
        pv_domain
            .vcpu_info_gpa(0)
            .ok_or(Error::Thread("vCPU 0 has no vcpu_info".into()))?,
    );
    let tsc_hz = u64::from(vcpu.tsc_khz()?) * 1000;
    let clock = pv_engine::time::PvClock::new(exit::guest_tsc(paths.tsc_offset), tsc_hz);
    let wall_at_zero = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    {
        let mut boot_platform = BootPlatform(vm.memory());
        pv_engine::time::publish(
            &pv_vcpu,
            &pv_domain,
            &mut boot_platform,
            &clock,
            wall_at_zero,
        );
        // Every other vCPU's vcpu_info in shared_info gets its pvclock too (a guest
        // reads another CPU's before that CPU runs; one that moves its vcpu_info
        // carries it along, and the vCPU publishes again when it comes up).
        for id in 1..nr_vcpus {
            if let Some(gpa) = pv_domain.vcpu_info_gpa(id) {
                let v = pv_engine::Vcpu::new(id, 0, gpa);
                pv_engine::time::publish(&v, &pv_domain, &mut boot_platform, &clock, wall_at_zero);
            }
        }
    }
    // Raw mode while the guest owns the terminal; restored on every way out (Drop, the
    // panic hook, SIGTERM's path below).
    let _raw = match cfg.console {
        ConsoleTarget::Stdio => crate::backends::console::RawTerminal::new().ok(),
        _ => None,
    };
    let mut console_backend = ConsoleBackend::new(cfg.console.clone().into_output()?);
    let console_mirror = crate::backends::console::ConsoleMirror::default();
    if cfg.api_socket.is_some() {
        console_backend.set_mirror(console_mirror.clone());
    }
    let console_gpa = layout.console_gfn << 12;
    console_backend.connect(&mut GuestRingPage::new(
        vm.memory(),
        GuestAddress(console_gpa),
    ));
    let (input_tx, input_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let input_reader = console_backend.spawn_input_reader(input_tx).ok();
    let mut store_cfg = crate::xenstore::DomainConfig::new(u32::from(pv_engine::GUEST_DOMID));
    store_cfg.memory_target_kib = ram >> 10;
    store_cfg.memory_static_max_kib = ram >> 10;
    store_cfg.vcpus = cfg.vcpus.clamp(1, nr_vcpus);
    store_cfg.max_vcpus = nr_vcpus;
    store_cfg.store_port = STORE_EVTCHN;
    store_cfg.store_ring_ref = layout.store_gfn;
    store_cfg.console_port = CONSOLE_EVTCHN;
    store_cfg.console_ring_ref = layout.console_gfn;
    let mut xenstore = Xenstore::with_config(&store_cfg);
    let router = crate::backends::xenbus::PortRouter::default();
    let grant_table_gpa = region.grant_table_gpa;
    let (request_tx, request_rx) = std::sync::mpsc::channel::<Request>();
    let backend_mem = vm.memory().clone();
    let profile = cfg.profile;
    let inject = cfg.inject;
    let check_mmu = cfg.check_mmu;
    let mm: SharedMm = Arc::new(std::sync::Mutex::new(
        initial_mm(&vm, &region, ram, layout.l4_gpa >> 12).map_err(|e| {
            Error::Thread(format!(
                "the domain builder's pagetables do not validate ({e}); this is a pvkvm bug"
            ))
        })?,
    ));
    let grant_mm = mm.clone();
    let paused = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<WatchNote>();
    let control_tx = done_tx.clone();
    // The domain's state every vCPU thread reaches: the engine's domain (locked per
    // exit) and a handle per vCPU (kicks, remote flushes, timers).
    let domain = Arc::new(SharedDomain {
        pv: std::sync::Mutex::new(pv_domain),
        vcpus: (0..nr_vcpus)
            .map(|_| crate::smp::VcpuHandle::default())
            .collect(),
    });
    let vm = Arc::new(vm);
    let region = Arc::new(region);
    let console: SharedConsole = Arc::new(std::sync::Mutex::new(console));
    let mut first = Some(pv_vcpu);
    let mut handles = Vec::new();
    for (id, kvm_vcpu) in core::iter::once(vcpu).chain(secondaries).enumerate() {
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<Wake>();
        domain.vcpus[id].set_wake(wake_tx);
        let thread = VcpuThread {
            hypercall_page: layout.hypercall_page,
            id: id as u32,
            vm: vm.clone(),
            vcpu: kvm_vcpu,
            region: region.clone(),
            pv_vcpu: first.take(),
            domain: domain.clone(),
            mm: mm.clone(),
            ram,
            cpuid: cpuid.clone(),
            console: console.clone(),
            clock,
            paths,
            xsave,
            wall_at_zero,
            wake: wake_rx,
            backend_requests: request_tx.clone(),
            router: router.clone(),
            profile,
            inject,
            check_mmu,
        };
        let pin = cfg.cpus.as_ref().and_then(|c| c.for_vcpu(id)).cloned();
        let (stop, progress, paused, done_tx) = (
            stop.clone(),
            progress.clone(),
            paused.clone(),
            done_tx.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let domain = thread.domain.clone();
                let id = thread.id;
                let handle = &domain.vcpus[id as usize];
                handle.set_thread();
                if let Some(set) = &pin {
                    // Not fatal: the host may restrict affinity (a cgroup cpuset).
                    if let Err(e) = crate::affinity::apply_to_current_thread(set) {
                        log::warn!("vCPU {id}: {e}; its thread runs unpinned");
                    }
                }
                let shared = Shared {
                    stop: &stop,
                    progress: &progress,
                    paused: &paused,
                    next_timer: &handle.next_timer,
                    watchdog: &done_tx,
                };
                let report = vcpu_loop(thread, shared);
                handle.clear_thread();
                let _ = done_tx.send(WatchNote::VcpuEnded(id));
                report
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        handles.push(handle);
    }
    drop(done_tx);

    // The backends' thread raises its events on the vCPU thread: a message, then a kick
    // that takes the vCPU out of KVM_RUN (or a blocked vCPU's wait ends on the message).
    // (vCPU 0's thread takes them: any vCPU's thread may raise an event for any other.)
    let raise_domain = domain.clone();
    let mut late_backends = cfg.inject.map(|seed| Injector::new(seed, 2));
    let raise: service::Raise = Box::new(move |port| {
        if let Some(delay) = late_backends.as_mut().and_then(Injector::backend_delay) {
            std::thread::sleep(delay);
        }
        raise_domain.vcpus[0].send(Wake::BackendEvent(port));
    });
    // The split-driver devices: directories in xenstore before the guest's first
    // xenstore request is served (the backends' thread is not running yet).
    let grants = Arc::new(crate::backends::gnttab::GuestGrantTable::new(
        backend_mem.clone(),
        grant_mm,
        grant_table_gpa,
        GRANT_FRAMES as u32,
        ram >> 12,
    ));
    let channels = Arc::new(VcpuChannels {
        domain: domain.clone(),
    });
    let mut xenbus = crate::backends::xenbus::Xenbus::new(
        u32::from(pv_engine::GUEST_DOMID),
        device_models,
        grants,
        channels,
        router,
    );
    xenbus.publish(&mut xenstore).map_err(Error::Devices)?;
    let backends = Backends {
        console: console_backend,
        console_gpa,
        xenstore,
        store_gpa: layout.store_gfn << 12,
        xenbus,
    };
    let backend_thread = service::spawn(backends, backend_mem, request_rx, raise)
        .map_err(|e| Error::Thread(e.to_string()))?;

    // The control socket: commands go to the watchdog loop below, which owns stopping,
    // pausing and the requests to the guest; typed console bytes go to the backends.
    let _api = match &cfg.api_socket {
        Some(path) => {
            let control_tx = std::sync::Mutex::new(control_tx);
            let input_tx = std::sync::Mutex::new(request_tx.clone());
            let hooks = crate::api::Hooks {
                control: Box::new(move |command| {
                    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
                    let sent = control_tx
                        .lock()
                        .map(|tx| tx.send(WatchNote::Control(command, reply_tx)).is_ok())
                        .unwrap_or(false);
                    if !sent {
                        return Err(crate::api::Refusal::new(409, "the domain has ended"));
                    }
                    reply_rx
                        .recv_timeout(Duration::from_secs(10))
                        .unwrap_or_else(|_| {
                            Err(crate::api::Refusal::new(409, "the domain has ended"))
                        })
                }),
                console: Some(crate::api::ConsoleHooks {
                    mirror: console_mirror,
                    input: Box::new(move |bytes| {
                        input_tx
                            .lock()
                            .map(|tx| tx.send(Request::ConsoleInput(bytes)).is_ok())
                            .unwrap_or(false)
                    }),
                }),
            };
            Some(crate::api::ApiServer::start(path, hooks).map_err(Error::Api)?)
        }
        None => {
            drop(control_tx);
            None
        }
    };

    // Console input goes to the backends' thread, which gives it to a running or blocked
    // guest at once.
    if input_reader.is_some() {
        let request_tx = request_tx.clone();
        std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || {
                // Ctrl-] q asks the guest to power off; everything else is the guest's.
                let mut escape = crate::backends::console::EscapeScanner::new();
                for bytes in input_rx {
                    let (to_guest, quit) = escape.scan(&bytes);
                    let sent = (to_guest.is_empty()
                        || request_tx.send(Request::ConsoleInput(to_guest)).is_ok())
                        && (!quit || request_tx.send(Request::PowerOff).is_ok());
                    if !sent {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
    }

    // Injection's kicks come from their own thread, until the domain ends.
    let kicker_stop = Arc::new(AtomicBool::new(false));
    let kicker = match cfg.inject {
        Some(seed) => {
            let stop = kicker_stop.clone();
            let kicked = domain.clone();
            let mut injector = Injector::new(seed, 1);
            Some(
                std::thread::Builder::new()
                    .name("inject-kicks".into())
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(injector.next_kick());
                            for v in &kicked.vcpus {
                                v.signal();
                            }
                        }
                    })
                    .map_err(|e| Error::Thread(e.to_string()))?,
            )
        }
        None => None,
    };

    // A timeout too large for the clock is no timeout.
    let deadline = cfg.timeout.and_then(|t| started.checked_add(t));
    let mut last_progress = (0, Instant::now());
    // SIGTERM (and SIGINT, SIGHUP, SIGQUIT, which would otherwise kill pvkvm with the
    // terminal left raw): the first asks the guest to power off; a second one, or the
    // guest not going within SHUTDOWN_GRACE, destroys it. SIGUSR1 and SIGUSR2 mean
    // nothing to pvkvm and are ignored rather than fatal.
    SIGTERMS.store(0, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        let _ = register_signal_handler(sig, on_sigterm);
    }
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        let _ = register_signal_handler(sig, on_ignored_signal);
    }
    let mut poweroff_asked: Option<Instant> = None;
    // The timer deadline each vCPU was last kicked for: one kick per deadline (the vCPU
    // fires timers on its next exit; kicking again would only keep it from running).
    let mut kicked_for = vec![u64::MAX; domain.vcpus.len()];
    // The vCPU threads still running, and the one whose end is the domain's.
    let mut running = domain.vcpus.len();
    let mut first_ended: Option<u32> = None;
    let kick_all = |w: fn() -> Wake| {
        for v in &domain.vcpus {
            v.send(w());
        }
    };
    loop {
        // Wake every WATCH_INTERVAL to look at stop requests and the vCPUs' progress, and
        // when a vCPU's timer is due, to kick it out of the guest so it fires.
        let now_ns = clock.ns(exit::guest_tsc(paths.tsc_offset));
        let timer_wait = domain
            .vcpus
            .iter()
            .zip(&kicked_for)
            .filter_map(|(v, &kicked)| {
                let due = v.next_timer.load(Ordering::SeqCst);
                (due != u64::MAX && due != kicked)
                    .then(|| Duration::from_nanos(due.saturating_sub(now_ns)))
            })
            .min()
            .unwrap_or(WATCH_INTERVAL);
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(WATCH_INTERVAL)
            .min(WATCH_INTERVAL)
            .min(timer_wait);
        match done_rx.recv_timeout(wait) {
            Ok(WatchNote::VcpuEnded(id)) => {
                // One vCPU's end (shutdown, crash, a fatal error) is the domain's: the
                // others stop.
                running -= 1;
                first_ended.get_or_insert(id);
                let _ = stop.compare_exchange(
                    STOP_NONE,
                    STOP_DOMAIN_ENDED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                paused.store(false, Ordering::SeqCst);
                kick_until_ended(&done_rx, &domain, &mut running)?;
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(WatchNote::Control(command, reply)) => {
                use crate::api::{Command, Refusal};
                let kick = || kick_all(|| Wake::Timer);
                let answer = match command {
                    Command::Info => Ok(Some(serde_json::json!({
                        "name": cfg.name,
                        "state": if paused.load(Ordering::SeqCst) { "paused" } else { "running" },
                        "pid": std::process::id(),
                        "uptime_s": started.elapsed().as_secs_f64(),
                        "memory_mib": cfg.memory >> 20,
                        "vcpus": domain.vcpus.len(),
                        "kernel": cfg.kernel.display().to_string(),
                        "cmdline": cfg.cmdline,
                        "disks": cfg.disks.iter().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
                        "nics": cfg.nets.len(),
                        "exits": progress.load(Ordering::Relaxed),
                        "counters": counters_json(&domain.vcpus),
                    }))),
                    Command::Pause if paused.swap(true, Ordering::SeqCst) => {
                        Err(Refusal::new(409, "the domain is already paused"))
                    }
                    Command::Pause => {
                        kick();
                        Ok(None)
                    }
                    Command::Resume if !paused.swap(false, Ordering::SeqCst) => {
                        Err(Refusal::new(409, "the domain is not paused"))
                    }
                    Command::Resume => {
                        kick();
                        Ok(None)
                    }
                    Command::Shutdown => request_tx
                        .send(Request::PowerOff)
                        .map(|_| None)
                        .map_err(|_| Refusal::new(409, "the domain has ended")),
                    Command::Reboot => request_tx
                        .send(Request::Reboot)
                        .map(|_| None)
                        .map_err(|_| Refusal::new(409, "the domain has ended")),
                    Command::Destroy => Ok(None),
                };
                let _ = reply.send(answer);
                if command == Command::Destroy {
                    stop.store(STOP_DESTROY_API, Ordering::SeqCst);
                    paused.store(false, Ordering::SeqCst);
                    kick_until_ended(&done_rx, &domain, &mut running)?;
                    break;
                }
            }
            // A new timer deadline: look at it now (and at everything else: notes can
            // come more often than the interval).
            Ok(WatchNote::TimerMoved) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let terms = SIGTERMS.load(Ordering::SeqCst);
                if terms >= 1 && poweroff_asked.is_none() {
                    poweroff_asked = Some(Instant::now());
                    let _ = request_tx.send(Request::PowerOff);
                }
                let destroy =
                    terms >= 2 || poweroff_asked.is_some_and(|t| t.elapsed() >= SHUTDOWN_GRACE);
                if destroy {
                    stop.store(STOP_DESTROY, Ordering::SeqCst);
                    kick_until_ended(&done_rx, &domain, &mut running)?;
                    break;
                }
                let now_ns = clock.ns(exit::guest_tsc(paths.tsc_offset));
                for (v, kicked) in domain.vcpus.iter().zip(kicked_for.iter_mut()) {
                    let due = v.next_timer.load(Ordering::SeqCst);
                    if due != u64::MAX && due != *kicked && now_ns >= due {
                        *kicked = due;
                        v.send(Wake::Timer);
                    }
                }
                let now = Instant::now();
                let exits = progress.load(Ordering::Relaxed);
                if exits != last_progress.0 {
                    last_progress = (exits, now);
                }
                let reason = if deadline.is_some_and(|d| now >= d) {
                    STOP_TIMEOUT
                } else if cfg
                    .stall_timeout
                    .is_some_and(|t| now.duration_since(last_progress.1) >= t)
                {
                    STOP_STALL
                } else {
                    continue;
                };
                stop.store(reason, Ordering::SeqCst);
                // Kick until the thread notices (a kick that lands just before KVM_RUN
                // is lost; the next one is not).
                kick_until_ended(&done_rx, &domain, &mut running)?;
                break;
            }
        }
    }
    // Typed input from now on waits for the next run (a restart), not this one's
    // backends, which are ending.
    crate::backends::console::release_stdin();
    kicker_stop.store(true, Ordering::SeqCst);
    if let Some(k) = kicker {
        let _ = k.join();
    }
    // The backends serve what is queued and flush the console, then end; only then is
    // the vCPU thread joined (their kicks name it).
    let _ = request_tx.send(Request::DomainEnded);
    drop(request_tx);
    let guest_last_words = match backend_thread.join() {
        Ok(line) => line,
        Err(_) => {
            log::error!("the backends' thread panicked");
            None
        }
    };
    // The vCPU whose end ended the domain says how it ended (the others were stopped
    // for it); when the watchdog stopped them all, vCPU 0 says it.
    let mut ends = Vec::new();
    for (id, h) in handles.into_iter().enumerate() {
        let end = h
            .join()
            .map_err(|_| Error::Thread(format!("the thread of vCPU {id} panicked")))?;
        ends.push(end);
    }
    let chosen = first_ended.map_or(0, |id| id as usize);
    let mut others = ExitStats::default();
    let mut all_stats = Vec::new();
    for (id, end) in ends.iter().enumerate() {
        if let Ok(t) = end {
            if id != chosen {
                others.absorb(&t.exits);
                all_stats.push(t.stats.clone());
            }
        }
    }
    // A watchdog stop describes every vCPU, each where it was.
    let others_said: Vec<String> = ends
        .iter()
        .enumerate()
        .filter(|&(id, _)| id != chosen)
        .filter_map(|(id, e)| match e {
            Ok(ThreadEnd {
                end: DomainEnd::Timeout(d) | DomainEnd::Destroyed(d),
                ..
            }) => Some(format!("vCPU {id}: {d}")),
            _ => None,
        })
        .collect();
    let ThreadEnd {
        end,
        mut exits,
        mut stats,
        mmu_refusals,
        mmu_refusal_count,
    } = ends.swap_remove(chosen)?;
    exits.absorb(&others);
    let end = match end {
        DomainEnd::Timeout(d) if !others_said.is_empty() => {
            DomainEnd::Timeout(format!("vCPU 0: {d}\n{}", others_said.join("\n")))
        }
        DomainEnd::Destroyed(d) if !others_said.is_empty() => {
            DomainEnd::Destroyed(format!("vCPU 0: {d}\n{}", others_said.join("\n")))
        }
        other => other,
    };
    for s in &all_stats {
        stats.absorb(s);
    }
    Ok(RunReport {
        vcpus: nr_vcpus,
        in_vm,
        end,
        elapsed: started.elapsed(),
        exits,
        stats,
        mmu_refusals,
        mmu_refusal_count,
        guest_last_words,
    })
}

fn thread_end(
    end: DomainEnd,
    exits: ExitStats,
    stats: pv_engine::Stats,
    (mmu_refusals, mmu_refusal_count): (Vec<String>, u64),
) -> ThreadEnd {
    ThreadEnd {
        end,
        exits,
        stats,
        mmu_refusals,
        mmu_refusal_count,
    }
}

/// The MMU engine's logged refusals and their count, from the frame table the exit
/// holds (the vCPU thread never locks it twice).
fn mm_refusals(mm: Option<&pv_mm::Mm>) -> (Vec<String>, u64) {
    match mm {
        Some(mm) => (
            mm.refusals().map(|r| r.to_string()).collect(),
            mm.refusal_count(),
        ),
        None => (Vec::new(), 0),
    }
}

/// The domain's frame table (pagetable engine), shared by the vCPU thread and the
/// backends' grant mappings.
pub type SharedMm = Arc<std::sync::Mutex<pv_mm::Mm>>;

/// Locks the frame table. A thread that panicked holding it ended the domain anyway;
/// what it left is still the best account of the frames for the teardown.
pub fn lock_mm(mm: &std::sync::Mutex<pv_mm::Mm>) -> std::sync::MutexGuard<'_, pv_mm::Mm> {
    mm.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks the frame table for vCPU `id`'s exit: its operations are that vCPU's (base
/// pointers, deferred teardowns, as Xen keeps them per vCPU).
fn lock_mm_for(mm: &std::sync::Mutex<pv_mm::Mm>, id: u32) -> std::sync::MutexGuard<'_, pv_mm::Mm> {
    let mut guard = lock_mm(mm);
    guard.set_current_vcpu(id as usize);
    guard
}

/// Opens every disk and NIC of `cfg` (each image locked, each host side attached).
fn open_devices(
    cfg: &RunConfig,
) -> Result<Vec<Box<dyn crate::backends::xenbus::DeviceModel>>, Error> {
    use crate::backends::devices::{assign_vdevs, Vbd, Vif};
    let mut models: Vec<Box<dyn crate::backends::xenbus::DeviceModel>> = Vec::new();
    let vdevs = assign_vdevs(&cfg.disks).map_err(Error::Devices)?;
    for (spec, vdev) in cfg.disks.iter().zip(vdevs) {
        models.push(Box::new(Vbd::open(spec, vdev).map_err(Error::Devices)?));
    }
    for (i, spec) in cfg.nets.iter().enumerate() {
        models.push(Box::new(Vif::open(spec, i as u32).map_err(Error::Devices)?));
    }
    Ok(models)
}

/// What the vCPU thread hands back.
struct ThreadEnd {
    end: DomainEnd,
    exits: ExitStats,
    stats: pv_engine::Stats,
    mmu_refusals: Vec<String>,
    mmu_refusal_count: u64,
}

/// Everything the vCPU thread owns.
struct VcpuThread {
    id: u32,
    /// VA of the guest's hypercall page, when its kernel named one.
    hypercall_page: Option<u64>,
    vm: Arc<Vm>,
    vcpu: vstate::Vcpu,
    region: Arc<ShimRegion>,
    /// The engine's state for this vCPU: vCPU 0's is the builder's; another vCPU's is
    /// built by `VCPUOP_initialise` and taken when it first comes up.
    pv_vcpu: Option<pv_engine::Vcpu>,
    domain: Arc<SharedDomain>,
    mm: SharedMm,
    ram: u64,
    cpuid: CpuidTable,
    console: SharedConsole,
    clock: pv_engine::time::PvClock,
    paths: crate::host::Paths,
    /// The guest has XSAVE (the shim's initial CR4 says so).
    xsave: bool,
    /// Real time at system time 0 (ns since the epoch), for the pvclock it publishes.
    wall_at_zero: u64,
    wake: std::sync::mpsc::Receiver<Wake>,
    backend_requests: service::RequestSender,
    router: crate::backends::xenbus::PortRouter,
    profile: bool,
    inject: Option<u64>,
    check_mmu: bool,
}

/// The domain's state the vCPU threads share.
pub struct SharedDomain {
    /// The engine's domain state (event channels, grant table, vCPU slots); a vCPU
    /// thread holds it while it handles an exit, before the frame table's lock.
    pub pv: std::sync::Mutex<pv_engine::Domain>,
    /// Each vCPU as the others reach it.
    pub vcpus: Vec<crate::smp::VcpuHandle>,
}

/// The console writer every vCPU thread's `CONSOLEIO_write` goes to.
type SharedConsole = Arc<std::sync::Mutex<Box<dyn Write + Send>>>;

/// One vCPU thread's view of the shared console.
struct ConsoleWriter<'a>(&'a std::sync::Mutex<Box<dyn Write + Send>>);

impl Write for ConsoleWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// What the other threads tell the vCPU thread (each message comes with a kick).
#[derive(Debug)]
pub enum Wake {
    /// The guest's timer is due.
    Timer,
    /// Look at this vCPU's state: an event became pending for it, another vCPU brought
    /// it up or took it down, or asked for a TLB flush.
    Look,
    /// A backend owes the guest an event on its end of this backend port.
    BackendEvent(u32),
    /// A device backend binds to the guest's unbound port (a frontend connected).
    BindBackend {
        /// The guest's port, as the frontend wrote it in xenstore.
        guest_port: u32,
        /// The device's backend port.
        backend_port: u32,
        /// Where the result goes (Xen's errno on failure).
        reply: std::sync::mpsc::SyncSender<Result<(), i64>>,
    },
    /// A device backend closed its port (the frontend disconnected).
    UnbindBackend(u32),
}

/// What the vCPU thread tells the watchdog loop.
enum WatchNote {
    /// The guest's next timer deadline changed: the watchdog sleeps until the earliest
    /// one to kick the vCPU out of the guest for it, so it must not sleep past a new one.
    TimerMoved,
    /// This vCPU's thread is ending.
    VcpuEnded(u32),
    /// A control-socket command, and where its answer goes.
    Control(
        crate::api::Command,
        std::sync::mpsc::Sender<crate::api::Reply>,
    ),
}

/// Kicks every vCPU thread until all have ended (a kick that lands just before
/// `KVM_RUN` is lost; the next one is not). `running` counts the threads not ended yet.
fn kick_until_ended(
    notes: &std::sync::mpsc::Receiver<WatchNote>,
    domain: &SharedDomain,
    running: &mut usize,
) -> Result<(), Error> {
    let started = Instant::now();
    for v in &domain.vcpus {
        v.send(Wake::Timer);
    }
    while *running > 0 {
        match notes.recv_timeout(Duration::from_millis(50)) {
            Ok(WatchNote::VcpuEnded(_)) => *running -= 1,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Ok(WatchNote::Control(_, reply)) => {
                let _ = reply.send(Err(crate::api::Refusal::new(409, "the domain is ending")));
            }
            Ok(WatchNote::TimerMoved) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Every exit path of the vCPU threads is bounded (long hypercalls are
                // preempted); one that is not is a pvkvm bug, and the stop request must
                // still end pvkvm rather than hang it.
                if started.elapsed() >= VCPU_STOP_LIMIT {
                    return Err(Error::Thread(format!(
                        "a vCPU thread did not stop within {} s of the stop request (a pvkvm bug); giving up on the domain",
                        VCPU_STOP_LIMIT.as_secs()
                    )));
                }
                for v in &domain.vcpus {
                    v.send(Wake::Timer);
                }
            }
        }
    }
    Ok(())
}

/// Whether the watchdog must hear that a vCPU's deadline moved from `before` to `due`
/// (guest system time, u64::MAX for none) at `now`. It sleeps until the earliest
/// deadline it has seen that is not yet kicked for: a deadline moved later is found
/// when it wakes for the earlier one, as long as that one is still ahead; a note per
/// move was a futex wake per exit whenever Linux reprogrammed its timer. No deadline
/// (u64::MAX) needs no look.
fn watchdog_must_look(before: u64, due: u64, now: u64) -> bool {
    due != before && due != u64::MAX && (due < before || before <= now)
}

/// How long a stopped vCPU thread may take to notice.
const VCPU_STOP_LIMIT: Duration = Duration::from_secs(10);

/// State the vCPU thread shares with the watchdog.
struct Shared<'a> {
    stop: &'a AtomicU8,
    progress: &'a AtomicU64,
    /// Paused through the control socket: the vCPU runs no guest code.
    paused: &'a AtomicBool,
    /// System time of the guest's next timer (u64::MAX: none).
    next_timer: &'a AtomicU64,
    /// Where a changed deadline is announced.
    watchdog: &'a std::sync::mpsc::Sender<WatchNote>,
}

/// Guest memory as the engine's platform before the vCPU runs (boot-time writes).
struct BootPlatform<'a>(&'a vm_memory::GuestMemoryMmap);

impl pv_engine::Platform for BootPlatform<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), pv_engine::PhysError> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| pv_engine::PhysError::OutOfRange)
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), pv_engine::PhysError> {
        self.0
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| pv_engine::PhysError::OutOfRange)
    }
    fn console_write(&mut self, _bytes: &[u8]) {}
    fn console_read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
    fn hypercall_preempt_check(&mut self) -> bool {
        false
    }
    fn cpuid(&self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
    // Boot-time writes run before any vCPU does, on the builder's thread: nothing else
    // touches guest memory, no vCPU can be kicked or initialised, no hypercall runs.
    fn atomic_or_u64(&mut self, gpa: u64, bits: u64) -> Result<u64, pv_engine::PhysError> {
        pv_engine::plain_or_u64(self, gpa, bits)
    }
    fn atomic_and_u64(&mut self, gpa: u64, mask: u64) -> Result<u64, pv_engine::PhysError> {
        pv_engine::plain_and_u64(self, gpa, mask)
    }
    fn kick_vcpu(&mut self, _id: u32) {}
    fn vcpu_initialised(&mut self, _id: u32, _new: &pv_engine::vcpu_context::NewVcpu) {}
    fn set_xcr0(&mut self, _xcr0: u64) -> bool {
        false
    }
    fn arch_capabilities(&self) -> u64 {
        0
    }
    fn mm(&mut self) -> Option<pv_engine::MmCtx<'_>> {
        None
    }
    fn notify_backend(&mut self, _remote_port: u32) {}
    fn system_time_ns(&self) -> u64 {
        0
    }
    fn msr_effect(&mut self, _effect: pv_engine::msr::MsrEffect) {}
    fn read_m2p(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), pv_engine::PhysError> {
        Err(pv_engine::PhysError::OutOfRange)
    }
}

/// The frames outside RAM the guest maps: `shared_info` and the grant table.
fn shared_frames(region: &ShimRegion) -> pv_mm::SharedFrames {
    const NR: usize = 1 + GRANT_FRAMES as usize;
    const _: () = assert!(NR <= pv_mm::MAX_SHARED_FRAMES);
    let mut mfns = [0; NR];
    mfns[0] = region.shared_info_gpa >> 12;
    for (i, m) in (0..).zip(mfns[1..].iter_mut()) {
        *m = (region.grant_table_gpa >> 12) + i;
    }
    // Fits: asserted above.
    pv_mm::SharedFrames::from_slice(&mfns).unwrap_or_default()
}

/// The frame table as Xen's domain builder leaves it: the bootstrap L4 pinned and in
/// use as the kernel's base pointer, which validates every table the builder made.
fn initial_mm(
    vm: &Vm,
    region: &ShimRegion,
    ram: u64,
    l4: u64,
) -> Result<pv_mm::Mm, pv_mm::MmError> {
    let mut mm = pv_mm::Mm::new(pv_mm::MmConfig {
        nr_frames: ram >> 12,
        hole_l4: region.hole_l4,
        shared_frames: shared_frames(region),
        max_machine_frame: (region.gpa + region.size) >> 12,
    });
    let mut posted = Posted::default();
    let mut flush = pv_engine::mmu::BatchFlush::default();
    let mut frames = VmmFrames::new(vm.memory(), &mut posted, region.m2p_gpa, ram >> 12);
    let _ = mm.pin_table(&mut frames, l4, pv_mm::Level::L4)?;
    let _ = mm.set_root(&mut frames, None, Some(l4))?;
    // Nothing has run: the stores are in memory, which is all a first walk will read.
    posted.discard(&mut flush);
    Ok(mm)
}

/// After an exit: loads the XCR0 the guest set (where KVM governs ring 3's), and resets
/// PKRU when the guest entered its kernel from user mode on a host where guest processes
/// can write PKRU (docs/host-kvm.md, "Extended state").
fn load_xstate(
    vcpu: &mut vstate::Vcpu,
    dom: &mut Domain<'_>,
    from_user: bool,
) -> Result<(), vstate::Error> {
    if let Some(xcr0) = dom.platform.xcr0_pending.take() {
        if dom.platform.xstate.control == crate::xstate::Xcr0Control::Vcpu {
            vcpu.set_xcr0(xcr0)?;
        }
    }
    if dom.platform.xstate.reset_pkru_by_xsave
        && from_user
        && dom.vcpu.mode == pv_engine::Mode::Kernel
    {
        crate::xstate::reset_pkru(vcpu)?;
    }
    Ok(())
}

fn vcpu_loop(t: VcpuThread, shared: Shared<'_>) -> Result<ThreadEnd, Error> {
    let VcpuThread {
        id,
        hypercall_page,
        vm,
        mut vcpu,
        region,
        pv_vcpu,
        domain,
        mm,
        ram,
        cpuid,
        console,
        clock,
        paths,
        xsave,
        wall_at_zero,
        wake,
        backend_requests,
        router,
        profile,
        inject,
        check_mmu,
    } = t;
    let mut mmu_checked = Instant::now();
    let mut injector = inject.map(|seed| Injector::new(seed, 3 + u64::from(id)));
    vcpu.install_kick_target();
    let shim = region
        .vcpu(id)
        .ok_or_else(|| Error::Thread(format!("vCPU {id} has no shim block")))?;
    let me = &domain.vcpus[id as usize];
    let mut console = ConsoleWriter(&console);
    let mut stats = pv_engine::Stats::new();
    // vCPU 0 starts as the builder left it; another waits until the guest brings it up.
    let mut pv_vcpu = match pv_vcpu {
        Some(v) => v,
        None => match await_bringup(id, &domain, &wake, &shared, &clock, &paths)? {
            Some(new) => {
                load_new_vcpu(&mut vcpu, shim, &new, xsave)?;
                let d = domain.pv.lock().unwrap_or_else(|e| e.into_inner());
                pv_engine::time::publish(
                    &new.vcpu,
                    &d,
                    &mut BootPlatform(vm.memory()),
                    &clock,
                    wall_at_zero,
                );
                drop(d);
                new.vcpu
            }
            None => {
                return Ok(thread_end(
                    DomainEnd::Fatal(format!("vCPU {id} stopped before the guest brought it up")),
                    ExitStats::default(),
                    stats,
                    (Vec::new(), 0),
                ))
            }
        },
    };
    let mut posted = Posted::default();
    let mut flush = pv_engine::mmu::BatchFlush::default();
    let mut mapped_gdt = [0u64; xen_abi::xen::selector::FIRST_RESERVED_GDT_PAGE];
    let mut soft_trap = exit::SoftTrapCheck::default();
    let mut pkru_reset: Option<exit::PkruReset> = None;
    let mut denied_in: Option<exit::DeniedIn> = None;
    let mut exits = ExitStats {
        profile: profile.then(crate::metrics::Profile::default),
        ..ExitStats::default()
    };
    let mut notified: Vec<u32> = Vec::new();
    let mut msr_writes: Vec<(u32, u64)> = Vec::new();
    let mut msr_refused: Vec<u32> = Vec::new();
    let mut blocked = false;
    // Down (VCPUOP_down, by itself or another vCPU): runs no guest code until up again.
    let mut down = false;
    // The guest-state page's mode-dependent words as written (the builder's values) and
    // as the vCPU's PV state wants them (recomputed after every exit).
    let mut stub_written = StubView {
        kernel_mode: 1,
        kernel_io_ok: 0,
        ports_open: false,
    };
    let mut stub_wanted = StubView {
        kernel_mode: u32::from(pv_vcpu.mode == pv_engine::Mode::Kernel),
        kernel_io_ok: 0,
        ports_open: false,
    };
    loop {
        // Paused through the control socket (a blocked or down vCPU waits for its pause
        // where it waits anyway).
        let paused = !blocked && !down && shared.paused.load(Ordering::SeqCst);
        let waiting = blocked || down || paused;
        let exit = if waiting {
            // SCHEDOP_block: wait, outside the guest, for an event (a timer, a backend,
            // console input) or the watchdog.
            vstate::Exit::Interrupted
        } else {
            // The stubs answer some hypercalls and cli/sti themselves, only for
            // the guest kernel: tell them what the guest resumes in.
            if stub_wanted != stub_written {
                stub_wanted.write(vm.memory(), shim.guest_state_gpa)?;
                if stub_wanted.ports_open != stub_written.ports_open {
                    shim.write_io_bitmap(vm.memory(), stub_wanted.ports_open)?;
                }
                stub_written = stub_wanted;
            }
            // A remote TLB flush asked of this vCPU keeps it out of the guest until it
            // performed it (this exit's apply does).
            if me.enter_guest() {
                let exit = vcpu.run();
                me.left_guest();
                soft_trap.entered_since |= vcpu.entered_guest();
                exit?
            } else {
                vstate::Exit::Interrupted
            }
        };
        if exit != vstate::Exit::Interrupted {
            shared.progress.fetch_add(1, Ordering::Relaxed);
        }
        log::trace!("exit {exit:?} blocked {blocked}");
        let from_user = pv_vcpu.mode == pv_engine::Mode::User;
        // The domain's frame table is shared with the backends (their grant mappings
        // take page references): held while an exit is handled, never while the vCPU
        // runs or waits blocked.
        // The engine's domain state first, then the frame table.
        let pv_domain = if waiting {
            crate::smp::DomainLock::new(&domain.pv)
        } else {
            crate::smp::DomainLock::locked(&domain.pv)
        };
        let mut mm_guard = (!waiting).then(|| lock_mm_for(&mm, id));
        let mut mm_after_wait;
        let mut dom = Domain {
            vcpu: &mut pv_vcpu,
            pv_domain,
            stats: &mut stats,
            exits: &mut exits,
            shim,
            platform: GuestPlatform {
                mem: vm.memory(),
                ram_bytes: ram,
                shared_info_gpa: region.shared_info_gpa,
                cpuid: &cpuid,
                console: &mut console,
                mm: mm_guard.as_deref_mut(),
                frames: VmmFrames::new(vm.memory(), &mut posted, region.m2p_gpa, ram >> 12)
                    .absent_stores_unposted(paths.absent_stores_unposted),
                flush: &mut flush,
                clock,
                tsc_offset: paths.tsc_offset,
                notified: &mut notified,
                msr_writes: &mut msr_writes,
                xstate: paths.xstate,
                xcr0_pending: None,
                m2p_gpa: region.m2p_gpa,
                m2p_bytes: region.m2p_bytes,
                preempt_deadline: None,
                vcpu_id: id,
                peers: &domain.vcpus,
                remote_flush: false,
            },
            mapped_gdt: &mut mapped_gdt,
            paths,
            hypercall_page,
            soft_trap: &mut soft_trap,
            pkru_reset: &mut pkru_reset,
            denied_in: &mut denied_in,
        };
        if !waiting && me.take_flush_request() {
            // Another vCPU changed what this one may cache: flush before running on.
            dom.platform.flush.local_all = true;
        }
        let action = if paused {
            let action = wait_while_paused(&mut dom, &wake, &shared, &clock);
            dom.pv_domain.get();
            mm_after_wait = Some(lock_mm_for(&mm, id));
            dom.platform.mm = mm_after_wait.as_deref_mut();
            action
        } else if blocked || down {
            let action = if down {
                wait_until_up(&mut dom, &wake, &shared, &clock)
            } else {
                wait_for_event(&mut dom, &wake, &shared, &clock)
            };
            dom.pv_domain.get();
            mm_after_wait = Some(lock_mm_for(&mm, id));
            dom.platform.mm = mm_after_wait.as_deref_mut();
            if me.take_flush_request() {
                dom.platform.flush.local_all = true;
            }
            if action == Action::Resume {
                blocked = false;
                down = false;
                dom.platform.preempt_deadline = Some(Instant::now() + exit::EXIT_BUDGET);
                match exit::interrupted(&mut vcpu, &mut dom) {
                    Ok(Action::Interrupted) => Action::Resume,
                    Ok(other) => other,
                    Err(e) => Action::Fatal(format!("pvkvm: cannot access vCPU state: {e}")),
                }
            } else {
                action
            }
        } else {
            let handling = Instant::now();
            dom.platform.preempt_deadline = Some(handling + exit::EXIT_BUDGET);
            if let Some(i) = injector.as_mut() {
                inject_at_exit(&mut dom, i.at_exit(xen_abi::contract::MAX_POSTED_STORES));
            }
            let mut action = exit::handle_exit(&exit, &mut vcpu, &mut dom);
            let spent = handling.elapsed().as_nanos() as u64;
            match exit {
                vstate::Exit::IoOut {
                    port: xen_abi::contract::port::HYPERCALL,
                    ..
                } => {
                    dom.exits.hypercall_ns += spent;
                    dom.exits.hypercall_max_ns = dom.exits.hypercall_max_ns.max(spent);
                }
                vstate::Exit::IoOut {
                    port: xen_abi::contract::port::TRAP,
                    ..
                } => dom.exits.trap_ns += spent,
                _ => {}
            }
            let kind = dom.exits.last;
            if let Some(p) = &mut dom.exits.profile {
                p.add(kind, spent);
            }
            if action == Action::Interrupted {
                for w in wake.try_iter() {
                    handle_wake(&mut dom, w);
                }
                action = match exit::interrupted(&mut vcpu, &mut dom) {
                    Ok(a) => a,
                    Err(e) => Action::Fatal(format!("pvkvm: cannot access vCPU state: {e}")),
                };
            }
            action
        };
        // A barrier the guest asked for must happen before it runs again.
        if !dom.platform.msr_writes.is_empty() {
            apply_msr_writes(&mut vcpu, dom.platform.msr_writes, &mut msr_refused);
        }
        let ending = !matches!(
            action,
            Action::Resume | Action::Yield | Action::Block | Action::Down | Action::Interrupted
        );
        let action = if check_mmu && (ending || mmu_checked.elapsed() >= MMU_CHECK_EVERY) {
            mmu_checked = Instant::now();
            match mmu_invariants(&mut dom) {
                Ok(()) => action,
                Err(e) => Action::Fatal(exit::diagnostic(
                    &format!("MMU invariant violated: {e}"),
                    &dom,
                    None,
                    Some(&mut vcpu as &mut dyn CpuState),
                )),
            }
        } else {
            action
        };
        dom.exits.absent_unposted = dom.platform.frames.posted.absent_unposted();
        publish_counters(&me.counters, dom.exits);
        let action = match load_xstate(&mut vcpu, &mut dom, from_user) {
            Ok(()) => action,
            Err(e) => Action::Fatal(format!(
                "pvkvm: cannot load the guest's extended state: {e}"
            )),
        };
        let kernel_io_ok = pv_engine::emulate::kernel_io_ok(dom.vcpu, dom.pv_domain.get());
        stub_wanted = StubView {
            kernel_mode: u32::from(dom.vcpu.mode == pv_engine::Mode::Kernel),
            kernel_io_ok: u32::from(kernel_io_ok),
            // The guest kernel's port I/O under its virtual IOPL then reaches the VMM
            // as plain I/O exits, not as #GP (`shim::io_bitmap`).
            ports_open: kernel_io_ok,
        };
        // Another vCPU took this one down (VCPUOP_down names any vCPU): it stops here.
        let action = match action {
            Action::Resume | Action::Yield | Action::Interrupted
                if shared.stop.load(Ordering::SeqCst) == STOP_NONE
                    && dom.pv_domain.get().vcpu(id).is_some_and(|s| !s.up) =>
            {
                Action::Down
            }
            other => other,
        };
        // Flushes this exit asked of the other vCPUs are done before this vCPU runs on
        // (its own is in its apply).
        if dom.platform.remote_flush {
            dom.exits.remote_flush_kicks += crate::smp::flush_others(&domain.vcpus, id) as u64;
            dom.exits.remote_flushes += 1;
        }
        // Backends the guest notified work on their own thread; their answers come back
        // as Wake::BackendEvent.
        if !dom.platform.notified.is_empty() {
            notify_backends(&mut dom, &backend_requests, &router);
        }
        // A kick left alone for a possible software trap asks for a second look.
        let due = pv_engine::time::next_deadline(dom.vcpu)
            .unwrap_or(u64::MAX)
            .min(dom.soft_trap.recheck_at.unwrap_or(u64::MAX));
        let before = shared.next_timer.swap(due, Ordering::SeqCst);
        let now = pv_engine::Platform::system_time_ns(&dom.platform);
        if watchdog_must_look(before, due, now) {
            let _ = shared.watchdog.send(WatchNote::TimerMoved);
        }
        match action {
            Action::Resume => {}
            Action::Yield => {
                drop(dom);
                std::thread::yield_now();
            }
            // Offline until another vCPU brings it up (the engine powers the domain off
            // when its last vCPU goes down instead).
            Action::Down => {
                down = true;
                let now = clock.ns(exit::guest_tsc(paths.tsc_offset));
                pv_engine::vcpu_op::runstate_change(
                    dom.vcpu,
                    dom.pv_domain.get(),
                    &mut dom.platform,
                    pv_engine::vcpu_op::runstate::OFFLINE,
                    now,
                );
            }
            Action::Block => {
                blocked = true;
                let now = clock.ns(exit::guest_tsc(paths.tsc_offset));
                pv_engine::vcpu_op::runstate_change(
                    dom.vcpu,
                    dom.pv_domain.get(),
                    &mut dom.platform,
                    pv_engine::vcpu_op::runstate::BLOCKED,
                    now,
                );
            }
            Action::Interrupted => {
                let what = match shared.stop.load(Ordering::SeqCst) {
                    STOP_TIMEOUT => "the guest did not finish in time (watchdog: --timeout)",
                    STOP_STALL => "the guest stopped making progress: no trap for --stall-timeout seconds (watchdog)",
                    STOP_DESTROY => "the guest was destroyed: a second stop request (SIGTERM, SIGINT, SIGHUP, SIGQUIT), or it did not power off within 30 s of the first",
                    STOP_DESTROY_API => "the guest was destroyed through the control socket",
                    STOP_DOMAIN_ENDED => "another vCPU ended the domain",
                    _ => continue,
                };
                let diag = exit::diagnostic(what, &dom, None, Some(&mut vcpu as &mut dyn CpuState));
                let end = if matches!(
                    shared.stop.load(Ordering::SeqCst),
                    STOP_DESTROY | STOP_DESTROY_API
                ) {
                    DomainEnd::Destroyed(diag)
                } else {
                    DomainEnd::Timeout(diag)
                };
                let refusals = mm_refusals(dom.platform.mm.as_deref());
                drop(dom);
                return Ok(thread_end(end, exits, stats, refusals));
            }
            Action::Shutdown(reason) => {
                let refusals = mm_refusals(dom.platform.mm.as_deref());
                drop(dom);
                return Ok(thread_end(
                    DomainEnd::Shutdown(reason),
                    exits,
                    stats,
                    refusals,
                ));
            }
            Action::Fatal(diag) => {
                let refusals = mm_refusals(dom.platform.mm.as_deref());
                drop(dom);
                return Ok(thread_end(DomainEnd::Fatal(diag), exits, stats, refusals));
            }
        }
    }
}

/// Which of the shim's in-VM answers a run gives (`pvkvm run --in-vm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InVmChoice {
    /// Those the host's measured costs favour (`host::in_vm_paths`).
    #[default]
    Auto,
    /// None: every case through the engine in the VMM.
    Off,
    /// Every one the shim has, whatever it costs on this host (tests, comparisons).
    All,
}

/// The words of a vCPU's `GuestStatePage` that follow its PV state (the others are
/// the domain's, written once), and whether its TSS I/O bitmap is open to the guest
/// kernel's port I/O (`shim::io_bitmap`; written only when that changes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct StubView {
    kernel_mode: u32,
    kernel_io_ok: u32,
    ports_open: bool,
}

const STATE_KERNEL_MODE: u64 =
    core::mem::offset_of!(xen_abi::contract::GuestStatePage, kernel_mode) as u64;
const STATE_KERNEL_IO_OK: u64 =
    core::mem::offset_of!(xen_abi::contract::GuestStatePage, kernel_io_ok) as u64;

impl StubView {
    fn write(&self, mem: &GuestMemoryMmap, state_gpa: u64) -> Result<(), shim::Error> {
        for (off, value) in [
            (STATE_KERNEL_MODE, self.kernel_mode),
            (STATE_KERNEL_IO_OK, self.kernel_io_ok),
        ] {
            mem.write_obj(value, GuestAddress(state_gpa + off))
                .map_err(|_| shim::Error::Memory(state_gpa + off))?;
        }
        Ok(())
    }
}

/// Performs the guest MSR writes that must reach hardware (`pv_engine::msr::MsrEffect`)
/// on the vCPU. A write this host's KVM refuses is logged once per MSR and the guest
/// goes on without it, as it would on a host without the feature. A refused SBPB is
/// retried as IBPB, a stronger barrier that KVMs older than SBPB support.
/// How often `--check-mmu` recomputes the MMU engine's counts.
const MMU_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The MMU engine's invariants over guest memory as it is now (`--check-mmu`).
fn mmu_invariants(dom: &mut Domain<'_>) -> Result<(), String> {
    let p = &mut dom.platform;
    match p.mm.as_deref() {
        Some(mm) => mm.check_invariants(&p.frames),
        None => Ok(()),
    }
}

/// Fault injection at one exit (see [`crate::inject`]): a spurious upcall once the guest
/// has an event callback to take it, the chunk size of this exit's posted stores, and a
/// spent work budget (hypercalls preempted after their first item).
fn inject_at_exit(dom: &mut Domain<'_>, plan: crate::inject::AtExit) {
    if plan.upcall && dom.vcpu.event_callback.address != 0 {
        let at = dom.vcpu.vcpu_info_gpa + xen_abi::xen::vcpu_info::UPCALL_PENDING;
        let _ = dom.platform.mem.write_obj(1u8, GuestAddress(at));
    }
    dom.platform.frames.posted.set_chunk_limit(plan.apply_chunk);
    if plan.preempt {
        // The budget is spent: a long hypercall continues after its first item.
        dom.platform.preempt_deadline = Some(Instant::now());
    }
}

fn apply_msr_writes(vcpu: &mut vstate::Vcpu, writes: &mut Vec<(u32, u64)>, refused: &mut Vec<u32>) {
    use pv_engine::msr::{MSR_PRED_CMD, PRED_CMD_IBPB, PRED_CMD_SBPB};
    for (index, data) in writes.drain(..) {
        let mut result = vcpu.set_msr(index, data);
        if result.is_err() && index == MSR_PRED_CMD && data & PRED_CMD_SBPB != 0 {
            result = vcpu.set_msr(index, PRED_CMD_IBPB);
        }
        if let Err(e) = result {
            if !refused.contains(&index) {
                refused.push(index);
                log::warn!(
                    "pvkvm: KVM refused the guest's write of MSR {index:#x} = {data:#x} ({e}); the guest runs without it"
                );
            }
        }
    }
}

/// One message from another thread.
fn handle_wake(dom: &mut Domain<'_>, w: Wake) {
    match w {
        // Timers, events and the vCPU's state are looked at on every resume.
        Wake::Timer | Wake::Look => {}
        Wake::BackendEvent(port) => {
            pv_engine::evtchn::backend_notify(dom.pv_domain.get(), &mut dom.platform, port);
        }
        Wake::BindBackend {
            guest_port,
            backend_port,
            reply,
        } => {
            let r = dom
                .pv_domain
                .get()
                .evtchn
                .bind_backend_to_unbound(guest_port, backend_port);
            let _ = reply.send(r);
        }
        Wake::UnbindBackend(port) => dom.pv_domain.get().evtchn.unbind_backend(port),
    }
}

/// The vCPU is blocked: waits until an event is pending for it (or its poll ends).
/// Returns `Resume` when one is, `Interrupted` when the watchdog wants the thread.
/// The domain's state is held only to look, never while sleeping.
fn wait_for_event(
    dom: &mut Domain<'_>,
    wake: &std::sync::mpsc::Receiver<Wake>,
    shared: &Shared<'_>,
    clock: &pv_engine::time::PvClock,
) -> Action {
    loop {
        let now = clock.ns(exit::guest_tsc(dom.paths.tsc_offset));
        pv_engine::time::fire_timers(dom.vcpu, dom.pv_domain.get(), &mut dom.platform, now);
        if pv_engine::hypercall::unblock_due(dom.vcpu, dom.pv_domain.get(), &dom.platform, now) {
            return running_again(dom, now);
        }
        if shared.stop.load(Ordering::SeqCst) != STOP_NONE {
            return Action::Interrupted;
        }
        // Taken down by another vCPU while blocked: wait for up instead.
        if dom.pv_domain.get().vcpu(dom.vcpu.id).is_some_and(|s| !s.up) {
            return Action::Resume;
        }
        if shared.paused.load(Ordering::SeqCst) {
            if wait_while_paused(dom, wake, shared, clock) == Action::Interrupted {
                return Action::Interrupted;
            }
            continue;
        }
        // Blocked is progress as far as the stall watchdog is concerned.
        shared.progress.fetch_add(1, Ordering::Relaxed);
        let wait = match pv_engine::time::next_deadline(dom.vcpu) {
            Some(due) => {
                Duration::from_nanos(due.saturating_sub(now)).min(Duration::from_millis(200))
            }
            None => Duration::from_millis(200),
        };
        dom.pv_domain.release();
        if let Ok(w) = wake.recv_timeout(wait) {
            handle_wake(dom, w);
        }
    }
}

/// The end of a wait: the vCPU runs again from system time `now`.
fn running_again(dom: &mut Domain<'_>, now: u64) -> Action {
    pv_engine::vcpu_op::runstate_change(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut dom.platform,
        pv_engine::vcpu_op::runstate::RUNNING,
        now,
    );
    Action::Resume
}

/// The vCPU is down (`VCPUOP_down`): waits, offline, until the domain says it is up
/// again. Returns `Resume` then, `Interrupted` when the watchdog wants the thread.
fn wait_until_up(
    dom: &mut Domain<'_>,
    wake: &std::sync::mpsc::Receiver<Wake>,
    shared: &Shared<'_>,
    clock: &pv_engine::time::PvClock,
) -> Action {
    loop {
        if dom.pv_domain.get().vcpu(dom.vcpu.id).is_some_and(|s| s.up) {
            let now = clock.ns(exit::guest_tsc(dom.paths.tsc_offset));
            return running_again(dom, now);
        }
        if shared.stop.load(Ordering::SeqCst) != STOP_NONE {
            return Action::Interrupted;
        }
        // A vCPU the guest took offline is not a stalled guest.
        shared.progress.fetch_add(1, Ordering::Relaxed);
        dom.pv_domain.release();
        if let Ok(w) = wake.recv_timeout(Duration::from_millis(200)) {
            handle_wake(dom, w);
        }
    }
}

/// A vCPU other than 0, before the guest first brings it up: waits until
/// `VCPUOP_initialise` and `VCPUOP_up` have made it runnable and takes the state they
/// built. None when the domain ends first.
fn await_bringup(
    id: u32,
    domain: &SharedDomain,
    wake: &std::sync::mpsc::Receiver<Wake>,
    shared: &Shared<'_>,
    clock: &pv_engine::time::PvClock,
    paths: &crate::host::Paths,
) -> Result<Option<pv_engine::vcpu_context::NewVcpu>, Error> {
    loop {
        {
            let mut d = domain.pv.lock().unwrap_or_else(|e| e.into_inner());
            let handoff = domain.vcpus.get(id as usize).map(|h| &h.new_vcpu);
            if let Some(slot) = d.vcpu_mut(id).filter(|s| s.up) {
                let taken =
                    handoff.and_then(|m| m.lock().unwrap_or_else(|e| e.into_inner()).take());
                if let Some(new) = taken {
                    let mut new = *new;
                    // Offline from the domain's start until now, running from now.
                    let now = clock.ns(exit::guest_tsc(paths.tsc_offset));
                    new.vcpu.runstate = pv_engine::vcpu_op::RunstateInfo {
                        state: pv_engine::vcpu_op::runstate::RUNNING,
                        state_entry_time: now,
                        time: [0, 0, 0, now],
                        ..Default::default()
                    };
                    slot.runstate = new.vcpu.runstate;
                    return Ok(Some(new));
                }
            }
        }
        if shared.stop.load(Ordering::SeqCst) != STOP_NONE {
            return Ok(None);
        }
        shared.progress.fetch_add(1, Ordering::Relaxed);
        let _ = wake.recv_timeout(Duration::from_millis(200));
    }
}

/// Paused through the control socket: runs no guest code until resumed (or stopped),
/// while still taking the other threads' messages (a backend binding its channel waits
/// for the answer). The vCPU's runstate is `offline` meanwhile, as Xen accounts a
/// paused vCPU. Returns `Interrupted` when the watchdog wants the thread.
fn wait_while_paused(
    dom: &mut Domain<'_>,
    wake: &std::sync::mpsc::Receiver<Wake>,
    shared: &Shared<'_>,
    clock: &pv_engine::time::PvClock,
) -> Action {
    use pv_engine::vcpu_op::{runstate, runstate_change};
    let before = dom.vcpu.runstate.state;
    let now = clock.ns(exit::guest_tsc(dom.paths.tsc_offset));
    runstate_change(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut dom.platform,
        runstate::OFFLINE,
        now,
    );
    while shared.paused.load(Ordering::SeqCst) && shared.stop.load(Ordering::SeqCst) == STOP_NONE {
        // A paused guest is not a stalled one.
        shared.progress.fetch_add(1, Ordering::Relaxed);
        dom.pv_domain.release();
        if let Ok(w) = wake.recv_timeout(Duration::from_millis(200)) {
            handle_wake(dom, w);
        }
    }
    let now = clock.ns(exit::guest_tsc(dom.paths.tsc_offset));
    runstate_change(
        dom.vcpu,
        dom.pv_domain.get(),
        &mut dom.platform,
        before,
        now,
    );
    if shared.stop.load(Ordering::SeqCst) == STOP_NONE {
        Action::Resume
    } else {
        Action::Interrupted
    }
}

/// Loads the state `VCPUOP_initialise` built into a vCPU that comes up for the first
/// time: its shim block's descriptor tables with the guest's pagetable and segment
/// bases, then its registers.
fn load_new_vcpu(
    vcpu: &mut vstate::Vcpu,
    shim: &shim::VcpuShim,
    new: &pv_engine::vcpu_context::NewVcpu,
    xsave: bool,
) -> Result<(), Error> {
    let hw = new.vcpu.hw_state();
    let mut sregs = shim.initial_sregs(vcpu.sregs()?, hw.cr3, xsave);
    sregs.fs.base = hw.fs_base;
    sregs.gs.base = hw.gs_base;
    if hw.cr0_ts {
        sregs.cr0 |= 1 << 3;
    }
    vcpu.set_sregs_ioctl(&sregs)?;
    if new.fpu.is_some() {
        // The FXSAVE image of a VGCF_i387_valid context: Linux never sends one for a
        // secondary CPU, so pvkvm starts the vCPU with the reset FPU state instead.
        log::warn!(
            "pvkvm: vCPU {} starts with a reset FPU; the context's FXSAVE image is not loaded",
            new.vcpu.id
        );
    }
    let mut regs = Regs::default();
    exit::copy_gprs(&new.regs, &mut regs);
    regs.rip = new.regs.rip;
    regs.rsp = new.regs.rsp;
    regs.rflags = (new.regs.rflags & !(3 << 12)) | 0x202;
    vcpu.set_regs_ioctl(&regs)?;
    Ok(())
}

/// Hands the guest's notifies to the backends' thread; the guest runs on at once.
fn notify_backends(
    dom: &mut Domain<'_>,
    backends: &service::RequestSender,
    router: &crate::backends::xenbus::PortRouter,
) {
    for port in std::mem::take(dom.platform.notified) {
        // A device's own thread takes its kicks; the hub the rest. The hub is gone
        // only once the domain has ended.
        if !router.kick(port) {
            let _ = backends.send(Request::Notify(port));
        }
    }
}

/// The guest's event channels as the device backends reach them: through vCPU 0's
/// thread (a message and a kick), which holds the domain's state while it handles them.
struct VcpuChannels {
    domain: Arc<SharedDomain>,
}

impl VcpuChannels {
    fn send(&self, w: Wake) -> bool {
        self.domain.vcpus[0].send(w)
    }
}

impl crate::backends::xenbus::EventChannels for VcpuChannels {
    fn bind(&self, guest_port: u32, backend_port: u32) -> Result<(), i64> {
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        if !self.send(Wake::BindBackend {
            guest_port,
            backend_port,
            reply,
        }) {
            return Err(-xen_abi::errno::ESRCH);
        }
        // The vCPU thread answers at its next exit (the kick forces one) or from its
        // blocked wait.
        result
            .recv_timeout(crate::backends::xenbus::BIND_TIMEOUT)
            .unwrap_or(Err(-xen_abi::errno::ESRCH))
    }

    fn unbind(&self, backend_port: u32) {
        self.send(Wake::UnbindBackend(backend_port));
    }

    fn raise(&self, backend_port: u32) {
        self.send(Wake::BackendEvent(backend_port));
    }
}

/// Publishes a vCPU's exit counters for the control API (plain stores: this thread is
/// their only writer).
fn publish_counters(c: &crate::smp::ExitCounters, e: &ExitStats) {
    let pairs = [
        (&c.hypercall_doorbells, e.hypercall_doorbells),
        (&c.trap_doorbells, e.trap_doorbells),
        (&c.apply_refills, e.apply_more),
        (&c.port_io, e.port_io),
        (&c.interrupted, e.interrupted),
        (&c.other, e.other),
        (&c.applies, e.applies),
    ];
    for (to, value) in pairs {
        to.store(value, Ordering::Relaxed);
    }
}

/// The domain's exit counters so far, summed over its vCPUs, as `vm.info` reports them
/// (`vm_exits` is every exit kind's sum, as `--stats` prints it).
fn counters_json(vcpus: &[crate::smp::VcpuHandle]) -> serde_json::Value {
    let sum = |f: fn(&crate::smp::ExitCounters) -> &AtomicU64| -> u64 {
        vcpus
            .iter()
            .map(|v| f(&v.counters).load(Ordering::Relaxed))
            .sum()
    };
    let kinds = [
        ("hypercall_doorbells", sum(|c| &c.hypercall_doorbells)),
        ("trap_doorbells", sum(|c| &c.trap_doorbells)),
        ("apply_refills", sum(|c| &c.apply_refills)),
        ("port_io", sum(|c| &c.port_io)),
        ("interrupted", sum(|c| &c.interrupted)),
        ("other", sum(|c| &c.other)),
    ];
    let mut json = serde_json::Map::new();
    json.insert(
        "vm_exits".into(),
        kinds.iter().map(|(_, n)| n).sum::<u64>().into(),
    );
    for (name, n) in kinds {
        json.insert(name.into(), n.into());
    }
    json.insert("applies".into(), sum(|c| &c.applies).into());
    json.into()
}

#[cfg(test)]
mod tests {
    use super::watchdog_must_look;

    #[test]
    fn the_watchdog_hears_of_earlier_deadlines_and_of_any_after_a_passed_one() {
        const NONE: u64 = u64::MAX;
        let now = 1_000;
        assert!(watchdog_must_look(NONE, 2_000, now), "a first deadline");
        assert!(watchdog_must_look(3_000, 2_000, now), "an earlier one");
        assert!(
            !watchdog_must_look(2_000, 3_000, now),
            "later: found at 2,000"
        );
        assert!(
            !watchdog_must_look(2_000, NONE, now),
            "cancelled: found at 2,000"
        );
        assert!(!watchdog_must_look(2_000, 2_000, now), "unchanged");
        // The old deadline has passed: the watchdog may have kicked for it and sleep
        // for its whole interval now.
        assert!(watchdog_must_look(900, 3_000, now));
        assert!(watchdog_must_look(1_000, 3_000, now));
        assert!(!watchdog_must_look(900, NONE, now), "nothing to wake for");
    }
}
