//! The only code that touches `kvm-ioctls` and `kvm-bindings`: the VM, its memory slots,
//! a vCPU and the exits it reports, in the VMM's own terms.
//!
//! Registers travel through `KVM_CAP_SYNC_REGS` when the host offers it: after every exit
//! the general registers and the system registers are already in the shared `kvm_run`
//! page, and changes are handed back by marking them dirty, so a trap costs one
//! `KVM_RUN` and no extra ioctl (DESIGN.md, "Count traps").

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub use kvm_bindings::{kvm_msr_entry as MsrEntry, kvm_segment as Segment};
/// General registers as KVM exchanges them.
pub type Regs = kvm_regs;
/// System registers as KVM exchanges them.
pub type Sregs = kvm_sregs;

/// Errors of the KVM layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is missing or cannot be opened.
    #[error("cannot open /dev/kvm ({0}): pvkvm needs KVM; check that the kvm module is loaded and that you may open /dev/kvm")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("cannot allocate guest memory: {0}")]
    Memory(#[from] vm_memory::mmap::FromRangesError),
    /// The host lacks something pvkvm needs.
    #[error("this host's KVM lacks {0}")]
    Missing(&'static str),
}

/// Bytes of the XSAVE image `KVM_GET_XSAVE`/`KVM_SET_XSAVE` exchange.
pub const XSAVE_AREA_BYTES: usize = 4096;
/// Offset of PKRU in the standard XSAVE layout (CPUID leaf 0xD.9 EBX on every CPU so far).
pub const XSAVE_PKRU_OFFSET: usize = 0xa80;

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { what, source }
}

/// What the host's KVM is, as far as the API tells.
#[derive(Clone, Debug)]
pub struct HostKvm {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CAP_SYNC_REGS` is offered.
    pub sync_regs: bool,
    /// `KVM_CAP_XEN_HVM` bits (0: the kernel's Xen emulation is absent).
    pub xen_hvm: i32,
    /// `KVM_CAP_IMMEDIATE_EXIT`.
    pub immediate_exit: bool,
    /// `KVM_CAP_TSC_DEADLINE_TIMER`.
    pub tsc_deadline: bool,
    /// `KVM_CAP_IRQCHIP`.
    pub irqchip: bool,
    /// The module serving /dev/kvm, from /sys/module (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub module: String,
    /// Hardware virtualization flags in /proc/cpuinfo (vmx or svm), if any.
    pub cpu_virt_flag: Option<String>,
}

/// Opens /dev/kvm and reads what the host offers.
pub fn host_kvm() -> Result<(Kvm, HostKvm)> {
    let kvm = Kvm::new().map_err(Error::NoKvm)?;
    let module = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .iter()
        .find(|m| std::path::Path::new(&format!("/sys/module/{m}")).exists())
        .map(|m| m.to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_virt_flag = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_whitespace().find(|f| *f == "vmx" || *f == "svm"))
        .map(str::to_string);
    let info = HostKvm {
        api_version: kvm.get_api_version(),
        sync_regs: kvm.check_extension(Cap::SyncRegs),
        xen_hvm: kvm.check_extension_int(Cap::XenHvm),
        immediate_exit: kvm.check_extension(Cap::ImmediateExit),
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        irqchip: kvm.check_extension(Cap::Irqchip),
        module,
        cpu_virt_flag,
    };
    Ok((kvm, info))
}

/// A KVM VM and its guest memory.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
    sync_regs: bool,
}

impl Vm {
    /// Creates a VM whose memory is the given (guest-physical base, size) regions.
    pub fn new(regions: &[(u64, usize)]) -> Result<Self> {
        let (kvm, info) = host_kvm()?;
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let ranges: Vec<(GuestAddress, usize)> = regions
            .iter()
            .map(|&(base, size)| (GuestAddress(base), size))
            .collect();
        let memory = GuestMemoryMmap::<()>::from_ranges(&ranges)?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region.as_ptr() as u64;

            let mem_region = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which this Vm keeps for
            // as long as the VM fd (and so the slot) exists.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(Self {
            kvm,
            fd,
            memory,
            sync_regs: info.sync_regs,
        })
    }

    /// Guest memory, as the VMM sees it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The CPUID leaves this host's KVM supports.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// A feature MSR as KVM reports it can give a guest (`KVM_GET_MSRS` on /dev/kvm,
    /// e.g. `MSR_ARCH_CAPABILITIES`); None where KVM does not list it.
    pub fn feature_msr(&self, index: u32) -> Option<u64> {
        let list = self.kvm.get_msr_feature_index_list().ok()?;
        if !list.as_slice().contains(&index) {
            return None;
        }
        let mut msrs = Msrs::from_entries(&[MsrEntry {
            index,
            ..Default::default()
        }])
        .ok()?;
        match self.kvm.get_msrs(&mut msrs) {
            Ok(1) => Some(msrs.as_slice()[0].data),
            _ => None,
        }
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let mut fd = self.fd.create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
        if self.sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        Ok(Vcpu {
            fd,
            sync_regs: self.sync_regs,
            regs: None,
            sregs: None,
            regs_dirty: false,
            sregs_dirty: false,
            synced: false,
            entered: false,
        })
    }
}

/// Why `KVM_RUN` returned, in the VMM's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `out` to a port (value of the first byte).
    IoOut {
        /// Port.
        port: u16,
        /// First data byte.
        value: u8,
    },
    /// `in` from a port; the VMM answers all-ones.
    IoIn {
        /// Port.
        port: u16,
    },
    /// `hlt` at CPL0.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM could not emulate or deliver something.
    InternalError {
        /// `KVM_INTERNAL_ERROR_*` sub-error.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// `KVM_RUN` was interrupted by a signal (a kick from the watchdog or a backend).
    Interrupted,
    /// MMIO access outside guest memory.
    Mmio {
        /// Guest-physical address.
        addr: u64,
    },
    /// Anything else, named.
    Other(String),
}

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs (null: none).
    static KICK_TARGET: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Called from the kick signal's handler: makes the calling thread's vCPU (see
/// [`Vcpu::install_kick_target`]) leave or skip its next `KVM_RUN`. Async-signal-safe:
/// one const-initialised thread-local read and one byte store.
pub fn kick_current_thread() {
    let flag = KICK_TARGET.with(|t| t.get());
    if !flag.is_null() {
        // SAFETY: `flag` points into the kvm_run area of the vCPU this thread runs; the
        // mapping lives as long as that Vcpu, whose Drop clears the pointer (on this
        // same thread) first. KVM reads the byte only on entry to KVM_RUN.
        unsafe { flag.write_volatile(1) };
    }
}

/// One vCPU, with its registers cached between exits.
pub struct Vcpu {
    fd: VcpuFd,
    sync_regs: bool,
    regs: Option<Regs>,
    sregs: Option<Sregs>,
    regs_dirty: bool,
    sregs_dirty: bool,
    /// The sync-regs area holds the state of the last exit (false before the first run
    /// and after a direct set ioctl).
    synced: bool,
    /// The last `run` entered the guest (see [`Vcpu::entered_guest`]).
    entered: bool,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        let ours: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        KICK_TARGET.with(|t| {
            if t.get() == ours {
                t.set(std::ptr::null_mut());
            }
        });
    }
}

impl Vcpu {
    /// Whether the last [`Vcpu::run`] entered the guest: false when a kick had already
    /// asked it to return at once. (A kick landing between this check and the entry
    /// also keeps the guest out, unseen here: the window is a few instructions wide.)
    pub fn entered_guest(&self) -> bool {
        self.entered
    }

    /// Runs the vCPU until its next exit.
    pub fn run(&mut self) -> Result<Exit> {
        self.flush()?;
        // A kick that landed before this call makes KVM_RUN return without entering
        // the guest (and without delivering what KVM had queued for it).
        self.entered = self.fd.get_kvm_run().immediate_exit == 0;
        self.regs = None;
        self.sregs = None;
        self.synced = self.sync_regs;
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut {
                port,
                value: data.first().copied().unwrap_or(0),
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(0xff);
                Exit::IoIn { port }
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the
                // `internal` member of the union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Exit::InternalError { suberror }
            }
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
            Ok(VcpuExit::Intr) => {
                self.fd.set_kvm_immediate_exit(0);
                Exit::Interrupted
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0xff);
                Exit::Mmio { addr }
            }
            Ok(VcpuExit::MmioWrite(addr, _)) => Exit::Mmio { addr },
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: clear its flag; the caller looks at what the kick was for.
                self.fd.set_kvm_immediate_exit(0);
                Exit::Interrupted
            }
            Err(e) => {
                return Err(Error::Ioctl {
                    what: "KVM_RUN",
                    source: e,
                })
            }
        };
        Ok(exit)
    }

    fn flush(&mut self) -> Result<()> {
        if self.sync_regs {
            if self.regs_dirty {
                let regs = self.regs.unwrap_or_default();
                self.fd.sync_regs_mut().regs = regs;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            }
            if self.sregs_dirty {
                let sregs = self.sregs.unwrap_or_default();
                self.fd.sync_regs_mut().sregs = sregs;
                self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            }
        } else {
            if self.regs_dirty {
                if let Some(regs) = &self.regs {
                    self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))?;
                }
            }
            if self.sregs_dirty {
                if let Some(sregs) = &self.sregs {
                    self.fd.set_sregs(sregs).map_err(|e| {
                        log::debug!("KVM_SET_SREGS refused {sregs:?}");
                        Error::Ioctl {
                            what: "KVM_SET_SREGS",
                            source: e,
                        }
                    })?;
                }
            }
        }
        self.regs_dirty = false;
        self.sregs_dirty = false;
        Ok(())
    }

    /// The general registers at the last exit.
    pub fn regs(&mut self) -> Result<Regs> {
        if let Some(r) = self.regs {
            return Ok(r);
        }
        let r = if self.synced {
            self.fd.sync_regs().regs
        } else {
            self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?
        };
        self.regs = Some(r);
        Ok(r)
    }

    /// Replaces the general registers at the next entry.
    pub fn set_regs(&mut self, regs: &Regs) {
        self.regs = Some(*regs);
        self.regs_dirty = true;
    }

    /// The system registers at the last exit.
    pub fn sregs(&mut self) -> Result<Sregs> {
        if let Some(s) = self.sregs {
            return Ok(s);
        }
        let s = if self.synced {
            self.fd.sync_regs().sregs
        } else {
            self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?
        };
        self.sregs = Some(s);
        Ok(s)
    }

    /// Replaces the system registers at the next entry.
    pub fn set_sregs(&mut self, sregs: &Sregs) {
        self.sregs = Some(*sregs);
        self.sregs_dirty = true;
    }

    /// The data of the port I/O the last exit stopped at (`KVM_EXIT_IO`): each element's
    /// width in bytes and the elements, one after the other (several for a string
    /// instruction). The VMM reads an `out`'s and fills an `in`'s before the next entry,
    /// which finishes the instruction with them. None after any other exit.
    pub fn io_data(&mut self) -> Option<(u8, &mut [u8])> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_IO {
            return None;
        }
        // SAFETY: exit_reason is KVM_EXIT_IO, so KVM filled the `io` member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = usize::from(io.size) * io.count as usize;
        let base: *mut u8 = (run as *mut kvm_bindings::kvm_run).cast();
        // KVM places the `size * count` data bytes at `data_offset` inside the vCPU's
        // kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE covers it: the PIO page), the contract
        // kvm-ioctls relies on for `VcpuExit::IoIn`.
        let at = io.data_offset as usize;
        // SAFETY: `base + at .. + len` lies in that mapping, which lives as long as
        // `self.fd`; the slice borrows `self` mutably, so nothing else touches it meanwhile.
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(at), len) };
        Some((io.size, data))
    }

    /// Whether KVM holds an exception, NMI or interrupt that it will deliver at the next
    /// entry (`KVM_GET_VCPU_EVENTS`). A `KVM_RUN` that a signal cut short can return
    /// between injecting a guest fault and delivering it: the fault is then delivered with
    /// whatever rip the registers hold at the next entry.
    pub fn event_in_flight(&mut self) -> Result<bool> {
        let ev = self
            .fd
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok(ev.exception.injected != 0
            || ev.exception.pending != 0
            || ev.nmi.injected != 0
            || ev.interrupt.injected != 0)
    }

    /// Writes model-specific registers now.
    pub fn set_msrs(&mut self, entries: &[MsrEntry]) -> Result<()> {
        let msrs =
            Msrs::from_entries(entries).map_err(|_| Error::Missing("room for the MSR list"))?;
        let n = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(Error::Missing(
                "one of the MSRs pvkvm sets (KVM_SET_MSRS stopped early)",
            ));
        }
        Ok(())
    }

    /// Writes one MSR of the vCPU now (host-initiated, so KVM either performs it at once,
    /// as for a barrier, or keeps it as the value it loads on every entry).
    pub fn set_msr(&mut self, index: u32, data: u64) -> Result<()> {
        self.set_msrs(&[MsrEntry {
            index,
            data,
            ..Default::default()
        }])
    }

    /// Sets the CPUID the guest sees.
    pub fn set_cpuid(&mut self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    /// Sets XCR0.
    pub fn set_xcr0(&mut self, value: u64) -> Result<()> {
        let mut xcrs = kvm_bindings::kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = value;
        self.fd.set_xcrs(&xcrs).map_err(ioctl("KVM_SET_XCRS"))
    }

    /// Reads XCR0 as KVM holds it for this vCPU.
    pub fn xcr0(&self) -> Result<u64> {
        let xcrs = self.fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
        Ok(xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())]
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(0, |x| x.value))
    }

    /// The vCPU's extended state in the standard (non-compacted) XSAVE layout, first
    /// 4 KiB (`KVM_GET_XSAVE`): legacy area, XSAVE header at 512, components at their
    /// CPUID leaf 0xD offsets (PKRU at 0xa80).
    pub fn xsave_area(&self) -> Result<[u8; XSAVE_AREA_BYTES]> {
        let x = self.fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
        let mut out = [0u8; XSAVE_AREA_BYTES];
        for (chunk, word) in out.chunks_exact_mut(4).zip(x.region.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(out)
    }

    /// Replaces the vCPU's extended state (`KVM_SET_XSAVE`, the layout of
    /// [`Vcpu::xsave_area`]).
    pub fn set_xsave_area(&mut self, area: &[u8; XSAVE_AREA_BYTES]) -> Result<()> {
        let mut x = kvm_bindings::kvm_xsave::default();
        for (word, chunk) in x.region.iter_mut().zip(area.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        // SAFETY: `x` is a whole kvm_xsave (4 KiB); KVM_SET_XSAVE reads no more than
        // that on a VM that did not enable KVM_CAP_XSAVE2 beyond 4 KiB (pvkvm does not).
        unsafe { self.fd.set_xsave(&x) }.map_err(ioctl("KVM_SET_XSAVE"))
    }

    /// Reads general registers with the ioctl, bypassing the sync-regs cache (for probe).
    pub fn get_regs_ioctl(&self) -> Result<Regs> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    /// Writes general registers with the ioctl (for probe).
    pub fn set_regs_ioctl(&mut self, regs: &Regs) -> Result<()> {
        self.regs = None;
        self.synced = false;
        self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
    }

    /// Writes system registers with the ioctl now (for probe).
    pub fn set_sregs_ioctl(&mut self, sregs: &Sregs) -> Result<()> {
        self.sregs = None;
        self.synced = false;
        self.fd.set_sregs(sregs).map_err(|e| {
            log::debug!("KVM_SET_SREGS refused {sregs:?}");
            Error::Ioctl {
                what: "KVM_SET_SREGS",
                source: e,
            }
        })
    }

    /// The guest TSC frequency KVM uses (kHz).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.fd.get_tsc_khz().map_err(ioctl("KVM_GET_TSC_KHZ"))
    }

    /// Makes this vCPU the target of [`kick_current_thread`] on the calling thread (the
    /// thread that runs it), so a kick that arrives outside `KVM_RUN` is not lost: it
    /// sets `kvm_run.immediate_exit` and the next `KVM_RUN` returns at once.
    pub fn install_kick_target(&mut self) {
        let flag: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        KICK_TARGET.with(|t| t.set(flag));
    }

    /// Makes the next `KVM_RUN` return at once (set from a signal handler's thread).
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }
}
