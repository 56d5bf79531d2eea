//! pvkvm-workload: Linux workload micro-benchmarks, run inside a guest by benches/linux.sh.
//!
//! Each figure is measured in samples; a sample times a batch of operations with
//! CLOCK_MONOTONIC and yields nanoseconds per operation. A figure takes samples until it
//! has `max` of them or has used its time budget (but always at least `min`), so the
//! whole program stays well under a minute even where every syscall or page fault costs
//! ~100 us (pvkvm on a software-KVM host) or the CPU is emulated (QEMU TCG).
//!
//! Output (stdout, one line each, stable and machine-readable):
//!
//! ```text
//! pvkvm-workload begin v1
//! info <key> <value>
//! wl-begin <name>
//! wl <name> <median_ns> <p10_ns> <p90_ns> <ops> <samples>
//! wl-fail <name> <reason>
//! pvkvm-workload end status=<ok|failed> total_ms=<ms>
//! ```
//!
//! `ops` is the number of operations timed (samples x batch); `wl-begin` comes right
//! before the first timed sample (after an untimed warm-up), so the operations between it
//! and the figure's `wl` line are exactly those `ops`. Figures:
//! clock (one clock_gettime), getppid (one raw syscall), cpu (1M rounds of xorshift,
//! no syscalls), fault (first write to an anonymous page, per page), mmap_cycle (mmap 64
//! pages + touch each + munmap, per page), memfill (mmap 4 MiB, write every byte,
//! munmap, per MiB: the memory fill rate), mprotect (16 present pages, RO<->RW, per
//! call), pipe (1-byte ping-pong between two processes, per round trip), fork_exit
//! (fork, child _exits, parent waits), fork_exec (fork, child execs a 129-byte static ELF
//! that only exits), fork_exec_busybox (same with busybox `true`, when /bin/true exists).
//!
//! With `--disk DEV` (a raw block device whose contents it destroys), O_DIRECT figures:
//! disk_seq_write and disk_seq_read (one 1 MiB request, sequential from offset 0, up to
//! 64 MiB), disk_rand_write and disk_rand_read (one 4 KiB request at a random offset in
//! the first 64 MiB, queue depth 1, up to 500). With `--net HOST:PORT` (the host peer of
//! benches/linux.py; `error:REASON` when the guest has no network), TCP figures: tcp_rtt
//! (1-byte echo round trip, up to 200), tcp_tx (guest->host) and tcp_rx (host->guest),
//! per MiB, in samples of 4 MiB (up to 16 MiB). These figures' failures are reported
//! (`wl-fail`) without failing the run.
//!
//! With `--mixed SIZES` (`mib=32,dirs=40,files=50,procs=60,cc=8`, or `default`), the mixed
//! user workload after the other figures (see mixed.rs): one `wl` line per phase
//! (`mixed_gen`, `mixed_gzip`, `mixed_sha256`, `mixed_gunzip`, `mixed_mktree`,
//! `mixed_find`, `mixed_procs`) and `mixed_total`, each one operation of one sample.
//! `--only` does not select these: `--only none --mixed ...` runs only them.
//!
//! Usage: pvkvm-workload [--budget-ms N] [--only NAME,...] [--disk DEV] [--net HOST:PORT]
//! [--mixed SIZES] (per-figure time budget, default 2000 ms; only the named figures,
//! `none` for none)

mod mixed;

use std::ffi::CString;
use std::io::Write;
use std::ptr;

const PAGE: usize = 4096;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno_str() -> String {
    std::io::Error::last_os_error().to_string()
}

/// How many samples a figure takes and how many operations each sample times.
struct Plan {
    batch: u64,
    min: usize,
    max: usize,
}

impl Plan {
    /// `batch` operations a sample, at least `min` and at most `max` samples.
    fn new(batch: u64, min: usize, max: usize) -> Plan {
        Plan { batch, min, max }
    }
}

/// Times `n` calls of `op` (given the call's index, from 0): the nanoseconds they took
/// together, or the first error.
fn time_each(n: u64, mut op: impl FnMut(u64) -> Result<(), String>) -> Result<u64, String> {
    let t0 = now_ns();
    for i in 0..n {
        op(i)?;
    }
    Ok(now_ns() - t0)
}

struct Runner {
    budget_ns: u64,
    failed: bool,
    /// Only these figures (`--only`); None: all.
    only: Option<Vec<String>>,
}

impl Runner {
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    }

    /// Takes samples of `sample` (which returns the nanoseconds it timed for `plan.batch`
    /// operations, or an error) and prints the figure's line.
    fn figure(
        &mut self,
        name: &str,
        plan: Plan,
        mut sample: impl FnMut(u64) -> Result<u64, String>,
    ) {
        if !self.wants(name) {
            return;
        }
        let start = now_ns();
        let mut per_op: Vec<f64> = Vec::with_capacity(plan.max);
        // One untimed warm-up sample (page cache, first faults of the code, lazy binding).
        if let Err(e) = sample(plan.batch) {
            self.fail(name, &e);
            return;
        }
        // The timed samples start now: a host that counts its exits reads them here and
        // at the figure's line (benches/before_after.py, through pvkvm's control API).
        println!("wl-begin {name}");
        while per_op.len() < plan.max
            && (per_op.len() < plan.min || now_ns() - start < self.budget_ns)
        {
            match sample(plan.batch) {
                Ok(ns) => per_op.push(ns as f64 / plan.batch as f64),
                Err(e) => {
                    self.fail(name, &e);
                    return;
                }
            }
        }
        per_op.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pick = |q: f64| -> f64 {
            // Nearest rank on the sorted samples.
            let i = (q * (per_op.len() - 1) as f64).round() as usize;
            per_op[i]
        };
        let n = per_op.len();
        let median = if n % 2 == 1 {
            per_op[n / 2]
        } else {
            (per_op[n / 2 - 1] + per_op[n / 2]) / 2.0
        };
        println!(
            "wl {} {:.0} {:.0} {:.0} {} {}",
            name,
            median,
            pick(0.1),
            pick(0.9),
            n as u64 * plan.batch,
            n
        );
    }

    /// A figure whose samples each time `plan.batch` calls of `op` (as [`time_each`]).
    fn figure_each(
        &mut self,
        name: &str,
        plan: Plan,
        mut op: impl FnMut(u64) -> Result<(), String>,
    ) {
        self.figure(name, plan, |n| time_each(n, &mut op));
    }

    fn fail(&mut self, name: &str, reason: &str) {
        self.failed = true;
        self.fail_soft(name, reason);
    }

    /// Reports a figure as failed without failing the run: the disk and TCP figures
    /// depend on devices and a host peer that a platform may not offer.
    fn fail_soft(&mut self, name: &str, reason: &str) {
        println!("wl-fail {} {}", name, reason.replace('\n', " "));
    }

    /// [`Runner::figure`] whose failure does not fail the run ([`Runner::fail_soft`]).
    fn soft_figure(
        &mut self,
        name: &str,
        plan: Plan,
        sample: impl FnMut(u64) -> Result<u64, String>,
    ) {
        let failed = self.failed;
        self.figure(name, plan, sample);
        self.failed = failed;
    }

    /// [`Runner::figure_each`] whose failure does not fail the run.
    fn soft_figure_each(
        &mut self,
        name: &str,
        plan: Plan,
        mut op: impl FnMut(u64) -> Result<(), String>,
    ) {
        self.soft_figure(name, plan, |n| time_each(n, &mut op));
    }
}

fn black_box<T>(x: T) -> T {
    std::hint::black_box(x)
}

fn cpu_rounds(n: u64) -> u64 {
    let mut x: u64 = black_box(0x9e37_79b9_7f4a_7c15);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

/// mmap `pages` anonymous private pages.
fn map_anon(pages: usize) -> Result<*mut u8, String> {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", errno_str()));
    }
    Ok(p as *mut u8)
}

fn touch(p: *mut u8, pages: usize) {
    for i in 0..pages {
        // SAFETY: p maps `pages` writable pages.
        unsafe { ptr::write_volatile(p.add(i * PAGE), i as u8) };
    }
}

fn unmap(p: *mut u8, pages: usize) -> Result<(), String> {
    // SAFETY: p..p+pages*PAGE is a mapping this program made and no longer uses.
    if unsafe { libc::munmap(p as *mut libc::c_void, pages * PAGE) } != 0 {
        return Err(format!("munmap: {}", errno_str()));
    }
    Ok(())
}

/// Waits for `pid` and requires a clean exit with status 0.
fn reap(pid: libc::pid_t) -> Result<(), String> {
    let mut status = 0;
    // SAFETY: status is a valid int.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return Err(format!("waitpid: {}", errno_str()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("child ended with wait status {status:#x}"));
    }
    Ok(())
}

fn fork() -> Result<libc::pid_t, String> {
    // SAFETY: this program is single-threaded; the child only calls async-signal-safe
    // functions (_exit, execve, read, write) before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", errno_str()));
    }
    Ok(pid)
}

/// The smallest static x86-64 executable: one PT_LOAD segment whose code is
/// `mov eax, 60; xor edi, edi; syscall` (exit(0)). 129 bytes.
fn tiny_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let code: [u8; 9] = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let total = (64 + 56 + code.len()) as u64;
    let mut e = Vec::with_capacity(total as usize);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    e.extend_from_slice(&(BASE + 120).to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    e.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    e.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    e.extend_from_slice(&total.to_le_bytes()); // p_filesz
    e.extend_from_slice(&total.to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(&code);
    assert_eq!(e.len() as u64, total);
    e
}

fn write_tiny_elf() -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut last = String::new();
    for dir in ["/tmp", "/dev/shm", "/run", "/"] {
        let path = format!("{dir}/pvkvm-wl-true");
        match std::fs::write(&path, tiny_elf())
            .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
        {
            Ok(()) => return Ok(path),
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    Err(format!("cannot write the tiny ELF anywhere ({last})"))
}

fn fork_exec_batch(path: &CString, arg0: &CString, n: u64) -> Result<u64, String> {
    let argv = [arg0.as_ptr(), ptr::null()];
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    time_each(n, |_| {
        let pid = fork()?;
        if pid == 0 {
            // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
            unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        reap(pid)
    })
}

fn pipe_pair() -> Result<[libc::c_int; 2], String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", errno_str()));
    }
    Ok(fds)
}

fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this program owns.
    unsafe { libc::close(fd) };
}

fn read1(fd: libc::c_int, b: &mut u8) -> isize {
    // SAFETY: b is one writable byte.
    unsafe { libc::read(fd, b as *mut u8 as *mut libc::c_void, 1) }
}

fn write1(fd: libc::c_int, b: &u8) -> isize {
    // SAFETY: b is one readable byte.
    unsafe { libc::write(fd, b as *const u8 as *const libc::c_void, 1) }
}

/// Ping-pong over two pipes with a child that echoes every byte back.
fn pipe_figure(r: &mut Runner, plan: Plan) {
    if !r.wants("pipe") {
        return;
    }
    let setup = (|| -> Result<_, String> {
        let to_child = pipe_pair()?;
        let to_parent = pipe_pair()?;
        let pid = fork()?;
        if pid == 0 {
            close(to_child[1]);
            close(to_parent[0]);
            let mut b = 0u8;
            while read1(to_child[0], &mut b) == 1 {
                if write1(to_parent[1], &b) != 1 {
                    break;
                }
            }
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        close(to_child[0]);
        close(to_parent[1]);
        Ok((pid, to_child[1], to_parent[0]))
    })();
    let (pid, tx, rx) = match setup {
        Ok(v) => v,
        Err(e) => {
            r.fail("pipe", &e);
            return;
        }
    };
    r.figure_each("pipe", plan, |i| {
        let b = i as u8;
        let mut back = 0u8;
        if write1(tx, &b) != 1 {
            return Err(format!("pipe write: {}", errno_str()));
        }
        if read1(rx, &mut back) != 1 || back != b {
            return Err(format!("pipe read: {}", errno_str()));
        }
        Ok(())
    });
    close(tx);
    close(rx);
    if let Err(e) = reap(pid) {
        r.fail("pipe", &format!("echo child: {e}"));
    }
}

// --- disk and TCP figures (issue 11) -----------------------------------------------------

/// A page-aligned buffer of `len` bytes (O_DIRECT needs aligned memory), filled with a
/// pattern so that writes carry non-zero data.
struct AlignedBuf {
    p: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Result<AlignedBuf, String> {
        let pages = len.div_ceil(PAGE);
        let p = map_anon(pages)?;
        for i in 0..pages * PAGE {
            // SAFETY: p maps `pages` writable pages.
            unsafe { ptr::write(p.add(i), (i * 7 + 1) as u8) };
        }
        Ok(AlignedBuf { p, len })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let _ = unmap(self.p, self.len.div_ceil(PAGE));
    }
}

/// xorshift64: the random 4 KiB offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;
/// Sequential figures: at most this many 1 MiB requests (64 MiB), the random ones stay in
/// this region too (written first, so reads never hit holes of a sparse image).
const DISK_REGION: u64 = 64 * MIB as u64;

fn pwrite_all(fd: libc::c_int, buf: &AlignedBuf, len: usize, off: u64) -> Result<(), String> {
    // SAFETY: buf holds at least len readable bytes.
    let n = unsafe { libc::pwrite(fd, buf.p as *const libc::c_void, len, off as libc::off_t) };
    if n != len as isize {
        return Err(format!("pwrite {len} at {off}: {} ({n})", errno_str()));
    }
    Ok(())
}

fn pread_all(fd: libc::c_int, buf: &AlignedBuf, len: usize, off: u64) -> Result<(), String> {
    // SAFETY: buf holds at least len writable bytes.
    let n = unsafe { libc::pread(fd, buf.p as *mut libc::c_void, len, off as libc::off_t) };
    if n != len as isize {
        return Err(format!("pread {len} at {off}: {} ({n})", errno_str()));
    }
    Ok(())
}

/// Waits up to 15 s for `dev` to appear (the frontend probes asynchronously).
fn wait_for(dev: &str) -> bool {
    for _ in 0..150 {
        if std::path::Path::new(dev).exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

const DISK_FIGURES: [&str; 4] = [
    "disk_seq_write",
    "disk_seq_read",
    "disk_rand_write",
    "disk_rand_read",
];

/// O_DIRECT on the raw block device `dev`: sequential 1 MiB writes then reads (from
/// offset 0, per request), random 4 KiB writes then reads within the first 64 MiB (per
/// request, one at a time: queue depth 1). Destroys the device's contents.
fn disk_figures(r: &mut Runner, dev: &str) {
    if !DISK_FIGURES.iter().any(|f| r.wants(f)) {
        return;
    }
    let fail_all = |r: &mut Runner, e: &str| {
        for f in DISK_FIGURES {
            if r.wants(f) {
                r.fail_soft(f, e);
            }
        }
    };
    if !wait_for(dev) {
        fail_all(r, &format!("{dev} did not appear within 15 s"));
        return;
    }
    let c = CString::new(dev).unwrap();
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_DIRECT | libc::O_CLOEXEC) };
    if fd < 0 {
        fail_all(r, &format!("open {dev} O_DIRECT: {}", errno_str()));
        return;
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    unsafe { libc::ioctl(fd, 0x8008_1272, &mut size) };
    info("disk_dev", dev);
    info("disk_bytes", &size.to_string());
    if size < DISK_REGION {
        fail_all(r, &format!("{dev} has {size} bytes, needs {DISK_REGION}"));
        close(fd);
        return;
    }
    let buf = match AlignedBuf::new(MIB) {
        Ok(b) => b,
        Err(e) => {
            fail_all(r, &e);
            close(fd);
            return;
        }
    };
    let seq = Plan::new(1, 8, (DISK_REGION as usize / MIB) - 1);
    let mut off = 0u64;
    r.soft_figure_each("disk_seq_write", seq, |_| {
        let o = off % DISK_REGION;
        off += MIB as u64;
        pwrite_all(fd, &buf, MIB, o)
    });
    // Makes sure the whole region is written before reading it (the write figure may
    // have stopped early on its time budget).
    if r.wants("disk_seq_read") || r.wants("disk_rand_read") {
        while off < DISK_REGION {
            if pwrite_all(fd, &buf, MIB, off).is_err() {
                break;
            }
            off += MIB as u64;
        }
    }
    let mut off = 0u64;
    let seq = Plan::new(1, 8, (DISK_REGION as usize / MIB) - 1);
    r.soft_figure_each("disk_seq_read", seq, |_| {
        let o = off % DISK_REGION;
        off += MIB as u64;
        pread_all(fd, &buf, MIB, o)
    });
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let blocks = DISK_REGION / BLOCK as u64;
    r.soft_figure_each("disk_rand_write", Plan::new(1, 20, 500), |_| {
        pwrite_all(fd, &buf, BLOCK, (rng.next() % blocks) * BLOCK as u64)
    });
    r.soft_figure_each("disk_rand_read", Plan::new(1, 20, 500), |_| {
        pread_all(fd, &buf, BLOCK, (rng.next() % blocks) * BLOCK as u64)
    });
    close(fd);
}

const NET_FIGURES: [&str; 3] = ["tcp_rtt", "tcp_tx", "tcp_rx"];

/// A TCP connection to the host's peer (benches/linux.py), announcing `mode`: b'E' echo,
/// b'S' sink (a byte n, then n MiB, answered with one byte), b'R' source (a byte n asks for n MiB).
fn peer(addr: &str, mode: u8) -> Result<std::net::TcpStream, String> {
    use std::io::Write as _;
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| format!("timeout: {e}"))?;
    s.write_all(&[mode])
        .map_err(|e| format!("send mode: {e}"))?;
    Ok(s)
}

/// TCP with the host: `tcp_rtt` 1-byte echo round trip; `tcp_tx` guest->host and
/// `tcp_rx` host->guest bulk transfer, per MiB (a sample is 4 MiB, ended by the
/// receiver's acknowledgement or the last byte; at most 4 samples: 16 MiB).
fn net_figures(r: &mut Runner, addr: &str) {
    use std::io::{Read as _, Write as _};
    if !NET_FIGURES.iter().any(|f| r.wants(f)) {
        return;
    }
    if let Some(why) = addr.strip_prefix("error:") {
        for f in NET_FIGURES {
            if r.wants(f) {
                r.fail_soft(f, &format!("no network: {}", why.replace('_', " ")));
            }
        }
        return;
    }
    info("net_peer", addr);
    if r.wants("tcp_rtt") {
        match peer(addr, b'E') {
            Ok(mut s) => r.soft_figure_each("tcp_rtt", Plan::new(1, 20, 200), |i| {
                let b = [i as u8];
                let mut back = [0u8];
                s.write_all(&b).map_err(|e| format!("send: {e}"))?;
                s.read_exact(&mut back).map_err(|e| format!("recv: {e}"))?;
                if back != b {
                    return Err("echo mismatch".into());
                }
                Ok(())
            }),
            Err(e) => r.fail_soft("tcp_rtt", &e),
        }
    }
    let chunk = vec![0x5au8; 256 * 1024];
    if r.wants("tcp_tx") {
        match peer(addr, b'S') {
            Ok(mut s) => r.soft_figure("tcp_tx", Plan::new(4, 2, 4), |n| {
                let t0 = now_ns();
                s.write_all(&[n as u8])
                    .map_err(|e| format!("announce: {e}"))?;
                for _ in 0..n as usize * MIB / chunk.len() {
                    s.write_all(&chunk).map_err(|e| format!("send: {e}"))?;
                }
                let mut ack = [0u8];
                s.read_exact(&mut ack).map_err(|e| format!("ack: {e}"))?;
                Ok(now_ns() - t0)
            }),
            Err(e) => r.fail_soft("tcp_tx", &e),
        }
    }
    if r.wants("tcp_rx") {
        match peer(addr, b'R') {
            Ok(mut s) => {
                let mut buf = vec![0u8; 256 * 1024];
                r.soft_figure("tcp_rx", Plan::new(4, 2, 4), |n| {
                    let t0 = now_ns();
                    s.write_all(&[n as u8]).map_err(|e| format!("ask: {e}"))?;
                    let mut left = n as usize * MIB;
                    while left > 0 {
                        let want = left.min(buf.len());
                        let got = s.read(&mut buf[..want]).map_err(|e| format!("recv: {e}"))?;
                        if got == 0 {
                            return Err(format!("peer closed with {left} bytes to go"));
                        }
                        left -= got;
                    }
                    Ok(now_ns() - t0)
                })
            }
            Err(e) => r.fail_soft("tcp_rx", &e),
        }
    }
}

fn info(key: &str, value: &str) {
    let v = value.split_whitespace().collect::<Vec<_>>().join("_");
    println!("info {} {}", key, if v.is_empty() { "-" } else { &v });
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let mut budget_ms: u64 = 2000;
    let mut only: Option<Vec<String>> = None;
    let mut disk: Option<String> = None;
    let mut net: Option<String> = None;
    let mut mixed_sizes: Option<mixed::Sizes> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--budget-ms" => {
                budget_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("pvkvm-workload: --budget-ms needs a number of milliseconds");
                    std::process::exit(2)
                })
            }
            "--disk" => disk = args.next(),
            "--net" => net = args.next(),
            "--mixed" => match mixed::Sizes::parse(&args.next().unwrap_or_default()) {
                Ok(s) => mixed_sizes = Some(s),
                Err(e) => {
                    eprintln!("pvkvm-workload: --mixed: {e}");
                    std::process::exit(2)
                }
            },
            // Comma-separated figure names; "none" runs no figure (a baseline).
            "--only" => {
                only = Some(
                    args.next()
                        .unwrap_or_default()
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            _ => {
                eprintln!("pvkvm-workload: unknown argument {a:?}; usage: pvkvm-workload [--budget-ms N] [--only NAME,...] [--disk DEV] [--net HOST:PORT] [--mixed SIZES]");
                std::process::exit(2)
            }
        }
    }
    let t_start = now_ns();
    println!("pvkvm-workload begin v1");
    let uptime = read_trim("/proc/uptime");
    info("uptime_s", uptime.split_whitespace().next().unwrap_or(""));
    info("kernel", &read_trim("/proc/sys/kernel/osrelease"));
    info("hypervisor", &read_trim("/sys/hypervisor/type"));
    info(
        "clocksource",
        &read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    );
    info("budget_ms", &budget_ms.to_string());

    let mut r = Runner {
        budget_ns: budget_ms * 1_000_000,
        failed: false,
        only,
    };

    r.figure("clock", Plan::new(100, 5, 51), |n| {
        let t0 = now_ns();
        let mut last = t0;
        for _ in 0..n {
            last = black_box(now_ns());
        }
        Ok(last - t0)
    });

    r.figure_each("getppid", Plan::new(100, 5, 51), |_| {
        // SAFETY: getppid has no arguments and no side effects.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
        Ok(())
    });

    // ns per 1M rounds (about 3M instructions); no syscalls, no faults. Five rounds of 1M
    // per sample, so that the two clock reads (a syscall each where the vDSO cannot read
    // the clock, ~230 us on pvkvm here) weigh little.
    r.figure_each("cpu", Plan::new(5, 5, 31), |_| {
        black_box(cpu_rounds(1_000_000));
        Ok(())
    });

    const FAULT_PAGES: usize = 64;
    r.figure("fault", Plan::new(FAULT_PAGES as u64, 5, 31), |_| {
        let p = map_anon(FAULT_PAGES)?;
        let t0 = now_ns();
        touch(p, FAULT_PAGES);
        let dt = now_ns() - t0;
        unmap(p, FAULT_PAGES)?;
        Ok(dt)
    });

    r.figure("mmap_cycle", Plan::new(FAULT_PAGES as u64, 5, 31), |_| {
        let t0 = now_ns();
        let p = map_anon(FAULT_PAGES)?;
        touch(p, FAULT_PAGES);
        unmap(p, FAULT_PAGES)?;
        Ok(now_ns() - t0)
    });

    // Memory fill rate: per MiB, a fresh anonymous mapping of FILL_MIB MiB written in
    // full (every byte, as a program filling a new buffer does), then unmapped: the first
    // write of each page faults it in, so the rate is the page faults' cost plus the
    // stores. 1 MiB / median is the rate (MiB/s).
    const FILL_MIB: usize = 4;
    r.figure("memfill", Plan::new(FILL_MIB as u64, 5, 31), |_| {
        let pages = FILL_MIB * 256;
        let t0 = now_ns();
        let p = map_anon(pages)?;
        // SAFETY: p maps `pages` writable pages, all of them written here.
        unsafe { ptr::write_bytes(p, 0xa5, pages * PAGE) };
        black_box(p);
        unmap(p, pages)?;
        Ok(now_ns() - t0)
    });

    const MPROT_PAGES: usize = 16;
    match map_anon(MPROT_PAGES) {
        Ok(_) if !r.wants("mprotect") => {}
        Ok(p) => {
            touch(p, MPROT_PAGES);
            let mut writable = true;
            r.figure_each("mprotect", Plan::new(20, 5, 31), |_| {
                writable = !writable;
                let prot = if writable {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                };
                // SAFETY: p maps MPROT_PAGES pages owned by this program and nothing
                // writes them while they are read-only.
                if unsafe { libc::mprotect(p as *mut libc::c_void, MPROT_PAGES * PAGE, prot) } != 0
                {
                    return Err(format!("mprotect: {}", errno_str()));
                }
                Ok(())
            });
            let _ = unmap(p, MPROT_PAGES);
        }
        Err(e) => r.fail("mprotect", &e),
    }

    pipe_figure(&mut r, Plan::new(50, 5, 31));

    r.figure_each("fork_exit", Plan::new(5, 5, 31), |_| {
        let pid = fork()?;
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        reap(pid)
    });

    match write_tiny_elf() {
        Ok(_) if !r.wants("fork_exec") => {}
        Ok(path) => {
            let c = CString::new(path.clone()).unwrap();
            r.figure("fork_exec", Plan::new(5, 5, 31), |n| {
                fork_exec_batch(&c, &c, n)
            });
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => r.fail("fork_exec", &e),
    }

    if std::path::Path::new("/bin/true").exists() && r.wants("fork_exec_busybox") {
        let path = CString::new("/bin/true").unwrap();
        let arg0 = CString::new("true").unwrap();
        r.figure("fork_exec_busybox", Plan::new(5, 5, 31), |n| {
            fork_exec_batch(&path, &arg0, n)
        });
    }

    if let Some(dev) = &disk {
        disk_figures(&mut r, dev);
    }
    if let Some(addr) = &net {
        net_figures(&mut r, addr);
    }
    if let Some(s) = &mixed_sizes {
        mixed::run_mixed(&mut r, s);
    }

    let total_ms = (now_ns() - t_start) / 1_000_000;
    println!(
        "pvkvm-workload end status={} total_ms={}",
        if r.failed { "failed" } else { "ok" },
        total_ms
    );
    let _ = std::io::stdout().flush();
    std::process::exit(if r.failed { 1 } else { 0 });
}
