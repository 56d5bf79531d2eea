//! `pvkvm`: run Xen PV kernels on KVM. Subcommands: `run`, `inspect`, `probe`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pvkvm",
    version,
    about = "Run unmodified Xen PV guest kernels on Linux KVM, without Xen"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of `Run` costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Boot a PV kernel, from the command line or from an xl.cfg file.
    ///
    /// With a configuration file, the command line's --kernel, --initrd, --cmdline
    /// and --memory replace the file's values; --disk adds to the file's disks (one
    /// naming a vdev the file uses replaces that disk); any --net replaces all of the
    /// file's vifs. See docs/xl-config.md.
    Run {
        /// An xl.cfg domain configuration file (xl.cfg(5) syntax; the supported keys
        /// are in docs/xl-config.md).
        #[arg(value_name = "FILE.cfg", conflicts_with = "config")]
        config_file: Option<PathBuf>,
        /// The same as the FILE.cfg argument.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Kernel image: bzImage (gzip, xz, lz4, zstd, bzip2) or ELF with Xen notes.
        /// Required unless a configuration file names a kernel or a bootloader; it
        /// overrides both.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Initial ramdisk (replaces the file's `ramdisk`).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Boot the kernel installed on the first disk, as pygrub does: the default
        /// entry of its GRUB 2, GRUB legacy or extlinux menu (what bootloader="pygrub"
        /// in a configuration file does). See docs/bootloader.md.
        #[arg(long, conflicts_with = "kernel")]
        pygrub: bool,
        /// The boot menu entry to boot instead of the default: its number (from 0) or
        /// its title (implies --pygrub; replaces bootloader_args' --entry).
        #[arg(long, value_name = "N|TITLE", conflicts_with = "kernel")]
        entry: Option<String>,
        /// Kernel command line (replaces the file's `cmdline`, `root` and `extra`).
        #[arg(long)]
        cmdline: Option<String>,
        /// Guest memory, e.g. 512M or 2G (default: the file's `memory`, else 512M).
        #[arg(long, value_parser = parse_size)]
        memory: Option<u64>,
        /// vCPUs online at boot (default: the file's `vcpus`, else 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(xen_abi::contract::MAX_VCPUS)))]
        vcpus: Option<u32>,
        /// vCPUs the domain has, the ones past `--vcpus` offline until the guest brings
        /// them up (default: the file's `maxvcpus`, else `--vcpus`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(xen_abi::contract::MAX_VCPUS)))]
        maxvcpus: Option<u32>,
        /// Pin every vCPU's thread to these host CPUs, in xl's syntax: `0-3,5`,
        /// `0-7,^3`, `all` (default: the file's `cpus`, else not pinned).
        #[arg(long, value_name = "LIST", value_parser = pvkvm::affinity::CpuAffinity::parse)]
        cpus: Option<pvkvm::affinity::CpuAffinity>,
        /// Stop the guest (exit status 124) after this many seconds (1 to 10 years' worth).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
        timeout: Option<u64>,
        /// Stop the guest (exit status 124) when it has not trapped for this many seconds;
        /// 0 disables the check. Default: off when the console is this terminal (a quiet
        /// guest at a prompt is not a hung one), 60 otherwise.
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
        stall_timeout: Option<u64>,
        /// Print exit and hypercall counters at the end.
        #[arg(long)]
        stats: bool,
        /// Write the guest's console (hvc0) to this file instead of the terminal.
        #[arg(long, conflicts_with = "console_pty")]
        console_log: Option<PathBuf>,
        /// Connect the guest's console to a new pseudo-terminal (its path is printed).
        #[arg(long)]
        console_pty: bool,
        /// Print every pagetable operation the MMU engine refused (frame, level, slot,
        /// old and new entry, types and counts, the guest rip, and for a bad type where
        /// the conflicting writable mapping is).
        #[arg(long)]
        mmu_log: bool,
        /// A virtual disk: `path[,format=raw|qcow2][,vdev=xvda][,ro]` (repeatable). The
        /// guest sees it as the vdev named (a whole disk `xvdb`, or one partition
        /// `xvda1`), else as the next free `xvdX`. Added to a configuration file's
        /// disks; one naming a vdev the file uses replaces that disk.
        #[arg(long = "disk", value_name = "DISK")]
        disks: Vec<pvkvm::backends::blk::DiskSpec>,
        /// A virtual NIC: `tap=NAME` (an existing or new tap device), `bridge=NAME` (a
        /// new tap on that bridge, as xl's vif `bridge=`) or
        /// `user[,hostfwd=tcp::2222-:22]...` (a user-mode network through passt, no root
        /// needed), each with an optional `,mac=MAC` (repeatable; the guest's eth0,
        /// eth1, ...).
        /// Any --net replaces all of a configuration file's vifs.
        #[arg(long = "net", value_name = "NET")]
        nets: Vec<pvkvm::backends::net::NetSpec>,
        /// Serve a control socket (HTTP+JSON) at this path: `pvkvm remote` talks to it
        /// (info, pause, resume, shutdown, reboot, destroy, console).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
        /// Testing: present the CPUID of a recorded CPU (a dump as in
        /// vmm/tests/data/cpuid/), limited to what this host runs, so the guest kernel
        /// takes that CPU's CPUID and MSR decisions.
        #[arg(long, hide = true)]
        cpu_policy: Option<PathBuf>,
        /// Testing: inject events at exits, kicks at random times, short applies,
        /// preempted hypercalls and late backend events, decided by this seed.
        #[arg(long, hide = true, value_parser = pvkvm::inject::parse_seed)]
        inject: Option<u64>,
        /// Testing: recompute the MMU engine's reference and type counts once a second
        /// and at the end; a violation ends the domain (exit status 1).
        #[arg(long, hide = true)]
        check_mmu: bool,
        /// Which answers the shim gives inside the VM, without a VM exit: `auto` (those
        /// the host's measured costs favour), `off` (every one through the engine in
        /// the VMM) or `all` (every one the shim has, whatever they cost here); the
        /// last two for comparisons and tests.
        #[arg(long, value_name = "auto|off|all", default_value = "auto", value_parser = ["auto", "off", "all"])]
        in_vm: String,
    },
    /// Show a kernel's Xen notes and the layout the domain builder would make.
    Inspect {
        /// Kernel image.
        kernel: PathBuf,
        /// Guest memory to plan for.
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        memory: u64,
    },
    /// Control a running pvkvm through its control socket (`run --api-socket`).
    Remote {
        /// The control socket.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Measure what this host's KVM is and what traps cost.
    Probe {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum RemoteCommand {
    /// Print the domain's state (JSON).
    Info,
    /// Stop running the guest (`xl pause`).
    Pause,
    /// Run it again (`xl unpause`).
    Resume,
    /// Ask the guest to power off (`xl shutdown`).
    Shutdown,
    /// Ask the guest to reboot (`xl reboot`).
    Reboot,
    /// End the domain now (`xl destroy`).
    Destroy,
    /// Attach this terminal to the guest's console; Ctrl-] detaches (`xl console`).
    Console,
}

/// `pvkvm remote`: one call through the control socket.
fn remote(socket: &std::path::Path, command: RemoteCommand) -> ExitCode {
    use pvkvm::api::client;
    let (method, path) = match command {
        RemoteCommand::Console => {
            return match client::attach_console(socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pvkvm: {}", pvkvm::error_chain(&e));
                    ExitCode::from(1)
                }
            };
        }
        RemoteCommand::Info => ("GET", "/api/v1/vm.info"),
        RemoteCommand::Pause => ("PUT", "/api/v1/vm.pause"),
        RemoteCommand::Resume => ("PUT", "/api/v1/vm.resume"),
        RemoteCommand::Shutdown => ("PUT", "/api/v1/vm.shutdown"),
        RemoteCommand::Reboot => ("PUT", "/api/v1/vm.reboot"),
        RemoteCommand::Destroy => ("PUT", "/api/v1/vm.destroy"),
    };
    match client::call(socket, method, path) {
        Ok(Some(body)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvkvm: {}", pvkvm::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The longest duration a seconds argument takes: ten years.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1 << 20),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512M or 2G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// A guest that ends sooner than this after starting is not restarted.
const MIN_RUN_BEFORE_RESTART: Duration = Duration::from_secs(2);

/// The configuration file's action for a shutdown reason, if it has one.
fn action_for(d: &pvkvm::xlcfg::DomainConfig, reason: u32) -> Option<pvkvm::xlcfg::Action> {
    use xen_abi::sched::*;
    Some(match reason {
        SHUTDOWN_POWEROFF => d.on_poweroff,
        SHUTDOWN_REBOOT => d.on_reboot,
        SHUTDOWN_CRASH => d.on_crash,
        SHUTDOWN_WATCHDOG => d.on_watchdog,
        SHUTDOWN_SOFT_RESET => d.on_soft_reset,
        _ => return None,
    })
}

/// The file's disks with the command line's: a command-line disk naming a vdev the
/// file uses takes that disk's place; the others come after the file's.
fn merge_disks(
    mut file: Vec<pvkvm::backends::blk::DiskSpec>,
    cli: Vec<pvkvm::backends::blk::DiskSpec>,
) -> Vec<pvkvm::backends::blk::DiskSpec> {
    for d in cli {
        match file
            .iter_mut()
            .find(|f| d.vdev.is_some() && f.vdev == d.vdev)
        {
            Some(slot) => *slot = d,
            None => file.push(d),
        }
    }
    file
}

/// pygrub's part: the kernel, initrd and command line from the first disk's boot menu.
fn boot_from_first_disk(
    disks: &[pvkvm::backends::blk::DiskSpec],
    bl: &pvkvm::xlcfg::Bootloader,
) -> Result<pvkvm::bootloader::BootImage, String> {
    let disk = disks
        .first()
        .ok_or("there is no disk to read the boot menu from (give --disk or disk=)")?;
    let opts = pvkvm::bootloader::BootOptions {
        entry: bl.entry.as_ref().map(|e| match e {
            pvkvm::xlcfg::BootEntry::Index(i) => i.to_string(),
            pvkvm::xlcfg::BootEntry::Title(t) => t.clone(),
        }),
        kernel: bl.kernel.clone(),
        ramdisk: bl.ramdisk.clone(),
        args: bl.args.clone(),
    };
    pvkvm::bootloader::boot_from_disk(disk, &opts).map_err(|e| pvkvm::error_chain(&e))
}

/// Prints how a run ended, and the statistics asked for.
fn report_end(report: &pvkvm::runner::RunReport, stats: bool, mmu_log: bool) {
    match &report.end {
        pvkvm::runner::DomainEnd::Shutdown(r) => {
            eprintln!(
                "pvkvm: guest shut down ({}) after {:.3} s",
                xen_abi::sched::shutdown_reason_name(*r),
                report.elapsed.as_secs_f64()
            );
            if *r == xen_abi::sched::SHUTDOWN_CRASH {
                if let Some(line) = &report.guest_last_words {
                    eprintln!("pvkvm: the guest's last word: {line}");
                }
            }
        }
        pvkvm::runner::DomainEnd::Fatal(d)
        | pvkvm::runner::DomainEnd::Timeout(d)
        | pvkvm::runner::DomainEnd::Destroyed(d) => eprint!("{d}"),
    }
    if stats {
        eprint!("{}", pvkvm::metrics::format_report(report));
    }
    if mmu_log {
        eprintln!(
            "pvkvm: the MMU engine refused {} operation(s); the last {}:",
            report.mmu_refusal_count,
            report.mmu_refusals.len()
        );
        for r in &report.mmu_refusals {
            eprintln!("  {r}");
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config_file,
            config,
            kernel,
            initrd,
            pygrub,
            entry,
            cmdline,
            memory,
            vcpus,
            maxvcpus,
            cpus,
            timeout,
            stall_timeout,
            stats,
            mmu_log,
            console_log,
            console_pty,
            cpu_policy,
            inject,
            check_mmu,
            in_vm,
            disks,
            nets,
            api_socket,
        } => {
            let file = config_file.or(config);
            let loaded = match &file {
                Some(path) => match pvkvm::xlcfg::load(path) {
                    Ok(l) => {
                        for w in &l.warnings {
                            eprintln!("pvkvm: {w}");
                        }
                        Some(l)
                    }
                    Err(e) => {
                        eprintln!("pvkvm: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            let file_name = file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            let dom = loaded.as_ref().map(|l| &l.config);
            let mut bootloader = dom.and_then(|d| d.bootloader.clone());
            if (pygrub || entry.is_some()) && bootloader.is_none() {
                bootloader = Some(pvkvm::xlcfg::Bootloader::default());
            }
            if let (Some(bl), Some(e)) = (bootloader.as_mut(), entry) {
                bl.entry = Some(match e.parse::<usize>() {
                    Ok(i) => pvkvm::xlcfg::BootEntry::Index(i),
                    Err(_) => pvkvm::xlcfg::BootEntry::Title(e),
                });
            }
            let bootloader = bootloader.as_ref();
            let kernel = match kernel {
                Some(k) => {
                    if bootloader.is_some() {
                        eprintln!(
                            "pvkvm: {file_name}: --kernel given: booting it instead of running the bootloader"
                        );
                    }
                    k
                }
                // Read from the guest's first disk before each start (below), as xl runs
                // pygrub: a kernel the guest installed is booted on its next start.
                None if bootloader.is_some() => PathBuf::new(),
                None => match dom.and_then(|d| d.kernel.clone()) {
                    Some(k) => k,
                    None => {
                        eprintln!(
                            "pvkvm: no kernel to boot: give --kernel FILE, --pygrub with a --disk, or a configuration file with kernel= or bootloader="
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            let initrd = initrd.or_else(|| dom.and_then(|d| d.ramdisk.clone()));
            let cmdline_given = cmdline.is_some();
            let cmdline = cmdline
                .or_else(|| dom.and_then(|d| d.cmdline.clone()))
                .unwrap_or_default();
            let memory = memory
                .or_else(|| {
                    dom.and_then(|d| d.memory_mib)
                        .and_then(|m| m.checked_mul(1 << 20))
                })
                .unwrap_or(512 << 20);
            // xl's rules: `vcpus` online at boot (default 1), `maxvcpus` the domain's
            // vCPUs (default `vcpus`); the CLI overrides each.
            let max_allowed = u64::from(xen_abi::contract::MAX_VCPUS);
            let from_file = |key: &str, v: Option<u64>| -> Result<Option<u32>, String> {
                match v {
                    Some(n) if n > max_allowed => Err(format!(
                        "{}: {key}={n} is more than the {max_allowed} vCPUs pvkvm runs",
                        loaded.as_ref().map(|l| l.place(key)).unwrap_or_default()
                    )),
                    other => Ok(other.map(|n| n.max(1) as u32)),
                }
            };
            let (file_vcpus, file_max) = match (
                from_file("vcpus", dom.and_then(|d| d.vcpus)),
                from_file("maxvcpus", dom.and_then(|d| d.maxvcpus)),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("pvkvm: {e}");
                    return ExitCode::from(2);
                }
            };
            let vcpus = vcpus.or(file_vcpus).unwrap_or(1);
            let max_vcpus = maxvcpus.or(file_max).unwrap_or(vcpus).max(vcpus);
            let cpus = cpus.or_else(|| dom.and_then(|d| d.cpus.clone()));
            let disks = merge_disks(dom.map(|d| d.disks.clone()).unwrap_or_default(), disks);
            let nets = if nets.is_empty() {
                dom.map(|d| d.nets.clone()).unwrap_or_default()
            } else {
                nets
            };
            let name = dom.and_then(|d| d.name.clone());
            if let Some(n) = &name {
                log::info!("domain {n}");
            }

            // The guest's console is this terminal: someone may be reading a quiet prompt.
            let interactive =
                console_log.is_none() && !console_pty && std::io::stdin().is_terminal();
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
            let mut cfg = pvkvm::runner::RunConfig {
                kernel,
                initrd,
                cmdline,
                memory,
                timeout: timeout.map(Duration::from_secs),
                console: match (console_log, console_pty) {
                    (Some(path), _) => pvkvm::runner::ConsoleTarget::File(path),
                    (None, true) => pvkvm::runner::ConsoleTarget::Pty,
                    (None, false) => pvkvm::runner::ConsoleTarget::Stdio,
                },
                stall_timeout: {
                    let secs = stall_timeout.unwrap_or(if interactive { 0 } else { 60 });
                    (secs > 0).then(|| Duration::from_secs(secs))
                },
                profile: stats,
                cpu_policy,
                inject,
                check_mmu,
                in_vm: match in_vm.as_str() {
                    "off" => pvkvm::runner::InVmChoice::Off,
                    "all" => pvkvm::runner::InVmChoice::All,
                    _ => pvkvm::runner::InVmChoice::Auto,
                },
                disks,
                nets,
                api_socket,
                preloaded: None,
                name: name.clone(),
                vcpus,
                max_vcpus,
                cpus,
            };
            let use_bootloader = bootloader.is_some() && cfg.kernel.as_os_str().is_empty();
            let cli_cmdline = cmdline_given;
            loop {
                if use_bootloader {
                    let Some(bl) = bootloader else {
                        unreachable!("checked above")
                    };
                    match boot_from_first_disk(&cfg.disks, bl) {
                        Ok(image) => {
                            for w in &image.warnings {
                                eprintln!("pvkvm: {w}");
                            }
                            eprintln!("pvkvm: booting '{}' from {}", image.title, image.source);
                            cfg.kernel = PathBuf::from(format!("{}: kernel", image.source));
                            cfg.initrd = image
                                .initrd
                                .as_ref()
                                .map(|_| PathBuf::from(format!("{}: initrd", image.source)));
                            if !cli_cmdline {
                                cfg.cmdline = image.cmdline.clone();
                            }
                            cfg.preloaded = Some(pvkvm::runner::Preloaded {
                                kernel: image.kernel,
                                initrd: image.initrd,
                            });
                        }
                        Err(e) => {
                            if file_name.is_empty() {
                                eprintln!("pvkvm: bootloader: {e}");
                            } else {
                                eprintln!("pvkvm: {file_name}: bootloader: {e}");
                            }
                            return ExitCode::from(2);
                        }
                    }
                }
                let report = match pvkvm::runner::run(&cfg, Box::new(std::io::stdout())) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("pvkvm: {e}");
                        return ExitCode::from(2);
                    }
                };
                report_end(&report, stats, mmu_log);
                // xl's on_poweroff/on_reboot/on_crash/...: only a configuration file
                // asks for a restart; the command line alone keeps one run.
                let restart = match (&report.end, dom) {
                    (pvkvm::runner::DomainEnd::Shutdown(r), Some(d)) => {
                        action_for(d, *r).filter(|a| a.restarts())
                    }
                    _ => None,
                };
                let Some(action) = restart else {
                    return ExitCode::from(report.exit_status() as u8);
                };
                // A guest that dies at once would restart in a tight loop.
                if report.elapsed < MIN_RUN_BEFORE_RESTART {
                    eprintln!(
                        "pvkvm: the guest ended {:.3} s after it started; not restarting it",
                        report.elapsed.as_secs_f64()
                    );
                    return ExitCode::from(report.exit_status() as u8);
                }
                // --timeout bounds all runs together.
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return ExitCode::from(124);
                    }
                    cfg.timeout = Some(left);
                }
                if action != pvkvm::xlcfg::Action::Restart {
                    eprintln!(
                        "pvkvm: {action}: only the restart is done (no core dumps, no renaming)"
                    );
                }
                eprintln!(
                    "pvkvm: restarting the domain{} ({file_name} says {action})",
                    name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
                );
            }
        }
        Command::Inspect { kernel, memory } => {
            let bytes = match std::fs::read(&kernel) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("pvkvm: cannot read {}: {e}", kernel.display());
                    return ExitCode::from(2);
                }
            };
            match pvkvm::loader::KernelImage::parse(&bytes) {
                Ok(image) => {
                    print!("{}", pvkvm::loader::inspect(&image, Some(memory)));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pvkvm: {}: {e}", kernel.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Remote {
            api_socket,
            command,
        } => remote(&api_socket, command),
        Command::Probe { json } => match pvkvm::probe::run()
            .and_then(|report| pvkvm::host::HostFacts::probe().map(|facts| (report, facts)))
        {
            Ok((report, facts)) => {
                if json {
                    let mut v: serde_json::Value =
                        serde_json::from_str(&report.to_json()).unwrap_or_default();
                    v["host_facts"] = facts.to_json();
                    println!("{v}");
                } else {
                    print!("{}", report.to_table());
                    print!("{}", facts.to_table());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pvkvm: {e}");
                ExitCode::from(2)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::merge_disks;
    use pvkvm::backends::blk::DiskSpec;

    fn d(s: &str) -> DiskSpec {
        DiskSpec::parse(s).expect("a disk")
    }

    #[test]
    fn cli_disks_add_to_the_files_or_replace_by_vdev() {
        let file = vec![d("/a,vdev=xvda"), d("/b,vdev=xvdb")];
        let cli = vec![d("/c,vdev=xvdb,ro"), d("/d"), d("/e,vdev=xvdc")];
        let got: Vec<String> = merge_disks(file, cli)
            .iter()
            .map(|x| x.path.display().to_string())
            .collect();
        assert_eq!(got, ["/a", "/c", "/d", "/e"]);
    }
}
