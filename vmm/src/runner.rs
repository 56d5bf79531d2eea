//! Runs one PV domain: builds it (loader + shim region), starts its vCPU thread, and
//! turns the end of the guest into an exit status and a diagnostic.
//!
//! The vCPU runs on its own thread; the calling thread is the watchdog. When the
//! deadline passes it marks the run as timed out and kicks the vCPU out of `KVM_RUN`
//! with a signal, so a guest that spins in ring 3 without ever trapping still ends with
//! a diagnostic instead of a hang.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::cpuid::CpuidTable;
use crate::exit::{self, Action, CpuState, Domain, ExitStats, GuestPlatform};
use crate::loader::{self, DomainConfig, KernelImage};
use crate::posted::{Posted, VmmFrames};
use crate::shim::{self, ShimImage, ShimRegion, XCR0_X87_SSE_AVX};
use crate::vstate::{self, Regs, Vm};

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
    /// The shim region could not be built.
    #[error(transparent)]
    Shim(#[from] shim::Error),
    /// The memory size is unusable.
    #[error("memory size {0} MiB is outside 16 MiB .. 64 GiB")]
    MemorySize(u64),
    /// The vCPU thread died.
    #[error("the vCPU thread failed: {0}")]
    Thread(String),
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
    /// Stop the guest when it has not trapped at all for this long (a kernel that makes
    /// progress traps: hypercalls, faults, timer events); None disables the check.
    pub stall_timeout: Option<Duration>,
}

/// Why the watchdog stopped a guest.
const STOP_NONE: u8 = 0;
const STOP_TIMEOUT: u8 = 1;
const STOP_STALL: u8 = 2;

/// How a domain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEnd {
    /// `SCHEDOP_shutdown` with a reason.
    Shutdown(u32),
    /// The domain could not go on (diagnostic attached).
    Fatal(String),
    /// The watchdog stopped it (diagnostic attached).
    Timeout(String),
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
        }
    }
}

const STORE_EVTCHN: u32 = 1;
const CONSOLE_EVTCHN: u32 = 2;

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN return with EINTR.
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

/// Builds and runs a domain until it ends. Console output goes to `console`.
pub fn run(cfg: &RunConfig, console: Box<dyn Write + Send>) -> Result<RunReport, Error> {
    let started = Instant::now();
    if !(16 << 20..=64 << 30).contains(&cfg.memory) {
        return Err(Error::MemorySize(cfg.memory >> 20));
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })
    };
    let kernel_bytes = read(&cfg.kernel)?;
    let image = KernelImage::parse(&kernel_bytes).map_err(|source| Error::Kernel {
        path: cfg.kernel.clone(),
        source,
    })?;
    let initrd = cfg.initrd.as_ref().map(read).transpose()?;

    let ram = cfg.memory & !0xfff;
    let shim_gpa = shim::region_gpa(ram >> 12);
    let vm = Vm::new(&[
        (0, ram as usize),
        (shim_gpa, shim::region_size(ram >> 12) as usize),
    ])?;
    let shim_image = ShimImage::embedded()?;
    let region = shim::build_region(vm.memory(), shim_gpa, &shim_image, ram >> 12)?;

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

    // Events start masked, as Xen's builder leaves them.
    vm.memory()
        .write_obj(
            1u8,
            GuestAddress(region.shared_info_gpa + xen_abi::xen::vcpu_info::UPCALL_MASK),
        )
        .map_err(|_| shim::Error::Memory(region.shared_info_gpa))?;

    let cpuid = CpuidTable::pv_policy(&vm.supported_cpuid()?);
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid(
        &cpuid
            .to_kvm()
            .ok_or(vstate::Error::Missing("room for the CPUID table"))?,
    )?;
    let xsave = host_has_xsave(&vm);
    let sregs = vcpu.sregs()?;
    vcpu.set_sregs_ioctl(&region.initial_sregs(sregs, layout.l4_gpa, xsave))?;
    vcpu.set_msrs(&region.msrs())?;
    if xsave {
        // Best effort: a host without AVX refuses XCR0 bits it lacks; x87|SSE then.
        if vcpu.set_xcr0(XCR0_X87_SSE_AVX).is_err() {
            vcpu.set_xcr0(0b11)?;
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
    let pv_vcpu = pv_engine::Vcpu::new(0, layout.l4_gpa, region.shared_info_gpa);
    let mm = initial_mm(&vm, &region, ram, layout.l4_gpa >> 12).map_err(|e| {
        Error::Thread(format!(
            "the domain builder's pagetables do not validate ({e}); this is a pvkvm bug"
        ))
    })?;
    let thread_stop = stop.clone();
    let thread_progress = progress.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || {
            let thread = VcpuThread {
                vm,
                vcpu,
                region,
                pv_vcpu,
                mm,
                ram,
                cpuid,
                console,
            };
            let report = vcpu_loop(thread, &thread_stop, &thread_progress);
            let _ = done_tx.send(());
            report
        })
        .map_err(|e| Error::Thread(e.to_string()))?;

    let deadline = cfg.timeout.map(|t| started + t);
    let mut last_progress = (0, Instant::now());
    loop {
        // Wake at least once a second to look at the vCPU's progress.
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        match done_rx.recv_timeout(wait) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
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
                while done_rx.recv_timeout(Duration::from_millis(50)).is_err() {
                    let _ = handle.kill(kick_signal());
                }
                break;
            }
        }
    }
    let ThreadEnd {
        end,
        exits,
        stats,
        mmu_refusals,
        mmu_refusal_count,
    } = handle
        .join()
        .map_err(|_| Error::Thread("the vCPU thread panicked".into()))??;
    Ok(RunReport {
        end,
        elapsed: started.elapsed(),
        exits,
        stats,
        mmu_refusals,
        mmu_refusal_count,
    })
}

fn thread_end(
    end: DomainEnd,
    exits: ExitStats,
    stats: pv_engine::Stats,
    mm: &pv_mm::Mm,
) -> ThreadEnd {
    ThreadEnd {
        end,
        exits,
        stats,
        mmu_refusals: mm.refusals().map(|r| r.to_string()).collect(),
        mmu_refusal_count: mm.refusal_count(),
    }
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
    vm: Vm,
    vcpu: vstate::Vcpu,
    region: ShimRegion,
    pv_vcpu: pv_engine::Vcpu,
    mm: pv_mm::Mm,
    ram: u64,
    cpuid: CpuidTable,
    console: Box<dyn Write + Send>,
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
        shared_frames: vec![region.shared_info_gpa >> 12],
        max_machine_frame: (region.gpa + shim::region_size(ram >> 12)) >> 12,
    });
    let mut posted = Posted::default();
    let mut flush = pv_mm::FlushSet::default();
    let mut frames = VmmFrames {
        mem: vm.memory(),
        posted: &mut posted,
        m2p_gpa: region.m2p_gpa,
        m2p_frames: ram >> 12,
    };
    let _ = mm.pin_table(&mut frames, l4, pv_mm::Level::L4)?;
    let _ = mm.set_root(&mut frames, None, Some(l4))?;
    // Nothing has run: the stores are in memory, which is all a first walk will read.
    posted.discard(&mut flush);
    Ok(mm)
}

fn vcpu_loop(t: VcpuThread, stop: &AtomicU8, progress: &AtomicU64) -> Result<ThreadEnd, Error> {
    let VcpuThread {
        vm,
        mut vcpu,
        region,
        mut pv_vcpu,
        mut mm,
        ram,
        cpuid,
        mut console,
    } = t;
    let mut stats = pv_engine::Stats::new();
    let mut posted = Posted::default();
    let mut flush = pv_mm::FlushSet::default();
    let mut mapped_gdt = [0u64; xen_abi::xen::selector::FIRST_RESERVED_GDT_PAGE];
    let mut exits = ExitStats::default();
    loop {
        let exit = vcpu.run()?;
        if exit != vstate::Exit::Interrupted {
            progress.fetch_add(1, Ordering::Relaxed);
        }
        let mut dom = Domain {
            vcpu: &mut pv_vcpu,
            stats: &mut stats,
            exits: &mut exits,
            shim: &region,
            platform: GuestPlatform {
                mem: vm.memory(),
                ram_bytes: ram,
                shared_info_gpa: region.shared_info_gpa,
                cpuid: &cpuid,
                console: &mut *console,
                mm: Some(&mut mm),
                frames: VmmFrames {
                    mem: vm.memory(),
                    posted: &mut posted,
                    m2p_gpa: region.m2p_gpa,
                    m2p_frames: ram >> 12,
                },
                flush: &mut flush,
            },
            mapped_gdt: &mut mapped_gdt,
        };
        let handling = Instant::now();
        let action = exit::handle_exit(&exit, &mut vcpu, &mut dom);
        let spent = handling.elapsed().as_nanos() as u64;
        match exit {
            vstate::Exit::IoOut {
                port: xen_abi::contract::port::HYPERCALL,
                ..
            } => dom.exits.hypercall_ns += spent,
            vstate::Exit::IoOut {
                port: xen_abi::contract::port::TRAP,
                ..
            } => dom.exits.trap_ns += spent,
            _ => {}
        }
        match action {
            Action::Resume => {}
            Action::Interrupted => {
                let what = match stop.load(Ordering::SeqCst) {
                    STOP_TIMEOUT => "the guest did not finish in time (watchdog: --timeout)",
                    STOP_STALL => "the guest stopped making progress: no trap for --stall-timeout seconds (watchdog)",
                    _ => continue,
                };
                {
                    let diag =
                        exit::diagnostic(what, &dom, None, Some(&mut vcpu as &mut dyn CpuState));
                    return Ok(thread_end(DomainEnd::Timeout(diag), exits, stats, &mm));
                }
            }
            Action::Shutdown(reason) => {
                return Ok(thread_end(DomainEnd::Shutdown(reason), exits, stats, &mm))
            }
            Action::Fatal(diag) => {
                return Ok(thread_end(DomainEnd::Fatal(diag), exits, stats, &mm))
            }
        }
    }
}
