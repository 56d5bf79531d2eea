//! `pvkvm`: run Xen PV kernels on KVM. Subcommands: `run`, `inspect`, `probe`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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

// Parsed once per process: the size of the `run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Boot a PV kernel.
    Run {
        /// Kernel image: bzImage (gzip, xz, lz4, zstd, bzip2) or ELF with Xen notes.
        #[arg(long)]
        kernel: PathBuf,
        /// Initial ramdisk.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Guest memory, e.g. 512M or 2G.
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        memory: u64,
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
        /// `xvda1`), else as the next free `xvdX`.
        #[arg(long = "disk", value_name = "DISK")]
        disks: Vec<pvkvm::backends::blk::DiskSpec>,
        /// A virtual NIC: `tap=NAME` (an existing or new tap device, for a bridge) or
        /// `user[,hostfwd=tcp::2222-:22]...` (a user-mode network through passt, no root
        /// needed), either with `,mac=MAC` (repeatable; the guest's eth0, eth1, ...).
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
                    eprintln!("pvkvm: {}", error_chain(&e));
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
            eprintln!("pvkvm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            kernel,
            initrd,
            cmdline,
            memory,
            timeout,
            stall_timeout,
            stats,
            mmu_log,
            console_log,
            console_pty,
            cpu_policy,
            inject,
            check_mmu,
            disks,
            nets,
            api_socket,
        } => {
            // The guest's console is this terminal: someone may be reading a quiet prompt.
            let interactive =
                console_log.is_none() && !console_pty && std::io::stdin().is_terminal();
            let cfg = pvkvm::runner::RunConfig {
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
                disks,
                nets,
                api_socket,
            };
            match pvkvm::runner::run(&cfg, Box::new(std::io::stdout())) {
                Ok(report) => {
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
                        eprint!("{}", pvkvm::metrics::format_report(&report));
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
                    ExitCode::from(report.exit_status() as u8)
                }
                Err(e) => {
                    eprintln!("pvkvm: {e}");
                    ExitCode::from(2)
                }
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
