//! The mixed user workload (issue 14, item 5): ordinary command-line work done by the
//! guest's own busybox userland, timed phase by phase with the wall clock
//! (CLOCK_MONOTONIC). Every platform runs the same work for the same sizes
//! (`--mixed mib=N,dirs=N,files=N,procs=N,cc=N`), in a tmpfs mounted for it:
//!
//! - `mixed_gen`: generates the data set in this process only (deterministic
//!   pseudo-random text, about 4.6:1 with gzip) and throws it away: the
//!   generator's share of the next two phases.
//! - `mixed_gzip`: the data set (`mib` MiB) piped into `gzip -c` (level 6), written to tmpfs.
//! - `mixed_sha256`: the data set piped into `sha256sum` (the reference digest).
//! - `mixed_gunzip`: `gunzip -c data.gz | sha256sum`, compared with the reference.
//! - `mixed_mktree`: this process creates `dirs` directories (two levels) of `files`
//!   small text files each (256 B to 2.3 KiB, every third one holding a keyword).
//! - `mixed_find`: a shell script traversing that tree: `find -type f | wc -l`, `find
//!   -type d | wc -l`, `find -type f -exec stat -c %s {} +` summed with awk, `grep -rl`
//!   for the keyword, `du -sk`; the counts are checked.
//! - `mixed_procs`: a shell script of many short-lived processes: `seq 1 procs | xargs
//!   -n 1 expr 2 '*'` summed with awk (one fork+exec per number), then procs/2
//!   iterations of `v=$(echo $i | tr 0-9 a-j)` (a subshell and a two-process
//!   pipeline each, one exec); the results are checked. expr, tr, gzip and the others
//!   are run by their path (busybox applets all): a real fork+exec each time.
//! - `mixed_cc`: compiles wordstat.c (benches/workload/wordstat.c, in the initramfs as
//!   /usr/share/pvkvm/wordstat.c; ~130 lines: word counts, a hash table, FNV-1a) `cc`
//!   times with Debian's tcc (`tcc -c`, dynamically linked against the glibc that
//!   benches/linux.py adds with it), links it once and runs it on 1 MiB of the generated
//!   text; its output is checked against the same figures computed here. Without tcc in
//!   the initramfs this phase is reported as failed (`wl-fail`, not failing the run) and
//!   the total leaves it out.
//! - `mixed_total`: launch of the first phase to the end of the last (with the untimed
//!   set-up and clean-up between them, which is small).
//!
//! Each phase is one `wl` line with one operation and one sample (median = p10 = p90 =
//! the phase's nanoseconds). A phase that fails is a `wl-fail` line and fails the run.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::{info, now_ns, Runner};

const PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
const KEYWORD: &str = "pvkvmneedle";

/// The work, the same on every platform.
pub struct Sizes {
    /// MiB of generated text compressed, checksummed and decompressed.
    pub mib: u64,
    /// Directories of the tree (two levels: 8 groups of dirs/8).
    pub dirs: u64,
    /// Files per directory.
    pub files: u64,
    /// fork+exec of `expr` by xargs; the shell loop runs procs/2 iterations.
    pub procs: u64,
    /// Compilations of wordstat.c with tcc.
    pub cc: u64,
}

impl Sizes {
    /// `mib=32,dirs=40,files=50,procs=60,cc=8` (keys left out keep these defaults).
    pub fn parse(spec: &str) -> Result<Sizes, String> {
        let mut s = Sizes {
            mib: 32,
            dirs: 40,
            files: 50,
            procs: 60,
            cc: 8,
        };
        for kv in spec.split(',').filter(|k| !k.is_empty() && *k != "default") {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("mixed size {kv:?} is not key=value"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| format!("mixed size {kv:?}: not a number"))?;
            match k {
                "mib" => s.mib = v,
                "dirs" => s.dirs = v,
                "files" => s.files = v,
                "procs" => s.procs = v,
                "cc" => s.cc = v,
                _ => {
                    return Err(format!(
                        "unknown mixed size {k:?} (mib, dirs, files, procs, cc)"
                    ))
                }
            }
        }
        if s.mib == 0 || s.dirs == 0 || s.files == 0 || s.procs < 2 || s.cc == 0 {
            return Err("mixed sizes must be positive (procs at least 2)".into());
        }
        Ok(s)
    }
}

/// Deterministic text: lines of 6 to 13 words from a small vocabulary and a number.
struct TextGen {
    rng: u64,
    pending: Vec<u8>,
}

const WORDS: [&str; 32] = [
    "the",
    "guest",
    "kernel",
    "page",
    "table",
    "hypercall",
    "event",
    "channel",
    "grant",
    "ring",
    "domain",
    "vcpu",
    "timer",
    "console",
    "block",
    "network",
    "memory",
    "shadow",
    "trap",
    "bounce",
    "syscall",
    "fault",
    "mapping",
    "store",
    "queue",
    "request",
    "response",
    "buffer",
    "interrupt",
    "device",
    "backend",
    "frontend",
];

impl TextGen {
    fn new(seed: u64) -> TextGen {
        TextGen {
            rng: seed | 1,
            pending: Vec::with_capacity(1 << 17),
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn line(&mut self) {
        let n = 6 + self.next() % 8;
        for i in 0..n {
            let r = self.next();
            if i > 0 {
                self.pending.push(b' ');
            }
            self.pending
                .extend_from_slice(WORDS[(r % 32) as usize].as_bytes());
        }
        let num = self.next() % 1_000_000;
        self.pending
            .extend_from_slice(format!(" {num}\n").as_bytes());
    }

    /// The next `n` bytes of the stream into `out` (replacing its contents).
    fn chunk(&mut self, out: &mut Vec<u8>, n: usize) {
        while self.pending.len() < n {
            self.line();
        }
        out.clear();
        out.extend(self.pending.drain(..n));
    }
}

const CHUNK: usize = 64 * 1024;
const DATA_SEED: u64 = 0x5eed_0fda_7a00;

/// Writes the `mib` MiB data set to `w`.
fn stream(mib: u64, mut w: impl Write) -> Result<(), String> {
    let mut g = TextGen::new(DATA_SEED);
    let mut buf = Vec::with_capacity(CHUNK);
    for _ in 0..mib * (1 << 20) / CHUNK as u64 {
        g.chunk(&mut buf, CHUNK);
        w.write_all(&buf)
            .map_err(|e| format!("writing the data set: {e}"))?;
    }
    Ok(())
}

/// The path of the applet or program `name` on PATH (busybox puts some in /bin, some in
/// /usr/bin), so that the scripts exec it by path: a real fork+exec, never one of
/// busybox sh's in-process shortcuts for applets.
fn which(name: &str) -> String {
    PATH.split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| name.to_string())
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script).env("PATH", PATH);
    c
}

/// Runs `cmd` (stdout captured), feeding it the data set on stdin when `feed` is Some(mib).
fn run(mut cmd: Command, feed: Option<u64>, what: &str) -> Result<String, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if feed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("{what}: spawn: {e}"))?;
    // Output is read by threads so that a chatty child cannot block the feeder.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let fed = match (feed, child.stdin.take()) {
        (Some(mib), Some(stdin)) => stream(mib, stdin),
        _ => Ok(()),
    };
    let status = child.wait().map_err(|e| format!("{what}: wait: {e}"))?;
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    fed.map_err(|e| format!("{what}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{what}: {status}: {}",
            err.trim().chars().take(200).collect::<String>()
        ));
    }
    Ok(out)
}

/// A tmpfs for the phases' files (falls back to a directory on the root filesystem).
fn workdir() -> Result<String, String> {
    let dir = "/tmp/pvkvm-mixed";
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    let c = std::ffi::CString::new(dir).unwrap();
    let t = std::ffi::CString::new("tmpfs").unwrap();
    let opts = std::ffi::CString::new("size=90%").unwrap();
    // SAFETY: valid C strings; mounts a fresh tmpfs on an empty directory of ours.
    let r = unsafe {
        libc::mount(
            t.as_ptr(),
            c.as_ptr(),
            t.as_ptr(),
            0,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    info(
        "mixed_fs",
        if r == 0 {
            "tmpfs"
        } else {
            "rootfs(tmpfs_mount_failed)"
        },
    );
    Ok(dir.to_string())
}

fn cleanup(dir: &str) {
    let c = std::ffi::CString::new(dir).unwrap();
    // SAFETY: unmounts the tmpfs this module mounted (fails harmlessly if it did not).
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Expected outcomes of the tree phase.
struct Tree {
    files: u64,
    dirs: u64,
    bytes: u64,
    keyword: u64,
}

fn make_tree(root: &str, s: &Sizes) -> Result<Tree, String> {
    let mut g = TextGen::new(0x7ee0_f11e_5000);
    let mut t = Tree {
        files: 0,
        dirs: 1,
        bytes: 0,
        keyword: 0,
    };
    let mut buf = Vec::new();
    for d in 0..s.dirs {
        let group = format!("{root}/g{}", d % 8);
        if d < 8 {
            std::fs::create_dir(&group).map_err(|e| format!("mkdir {group}: {e}"))?;
            t.dirs += 1;
        }
        let dir = format!("{group}/d{d:04}");
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        t.dirs += 1;
        for f in 0..s.files {
            let len = 256 + (g.next() % 2048) as usize;
            g.chunk(&mut buf, len);
            if (d * s.files + f).is_multiple_of(3) {
                buf.extend_from_slice(KEYWORD.as_bytes());
                buf.push(b'\n');
                t.keyword += 1;
            }
            let path = format!("{dir}/f{f:04}.txt");
            std::fs::write(&path, &buf).map_err(|e| format!("write {path}: {e}"))?;
            t.files += 1;
            t.bytes += buf.len() as u64;
        }
    }
    Ok(t)
}

/// Runs the phases and prints their lines.
pub fn run_mixed(r: &mut Runner, s: &Sizes) {
    info(
        "mixed_sizes",
        &format!(
            "mib={},dirs={},files={},procs={},cc={}",
            s.mib, s.dirs, s.files, s.procs, s.cc
        ),
    );
    let dir = match workdir() {
        Ok(d) => d,
        Err(e) => {
            r.fail("mixed_total", &e);
            return;
        }
    };
    let t_start = now_ns();
    let ok = phases(r, s, &dir);
    let total = now_ns() - t_start;
    cleanup(&dir);
    if ok {
        phase_line("mixed_total", total);
    } else {
        r.fail("mixed_total", "a phase failed");
    }
}

fn phase_line(name: &str, ns: u64) {
    println!("wl {name} {ns} {ns} {ns} 1 1");
}

/// Times `f` as the phase `name`; false (and a `wl-fail` line) when it fails.
fn phase(r: &mut Runner, name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
    let t0 = now_ns();
    match f() {
        Ok(()) => {
            phase_line(name, now_ns() - t0);
            let _ = std::io::stdout().flush();
            true
        }
        Err(e) => {
            r.fail(name, &e);
            false
        }
    }
}

fn phases(r: &mut Runner, s: &Sizes, dir: &str) -> bool {
    let gz = format!("{dir}/data.gz");
    let mib = s.mib;
    if !phase(r, "mixed_gen", || stream(mib, std::io::sink())) {
        return false;
    }
    let ok = phase(r, "mixed_gzip", || {
        let out = std::fs::File::create(&gz).map_err(|e| format!("create {gz}: {e}"))?;
        let mut c = Command::new(which("gzip"));
        c.arg("-c").env("PATH", PATH);
        // run() pipes stdout; gzip writes the file directly instead.
        c.stdout(out);
        let mut child = c
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("gzip: spawn: {e}"))?;
        let fed = stream(mib, child.stdin.take().unwrap());
        let st = child.wait().map_err(|e| format!("gzip: wait: {e}"))?;
        fed?;
        if !st.success() {
            return Err(format!("gzip: {st}"));
        }
        Ok(())
    });
    if !ok {
        return false;
    }
    if let Ok(m) = std::fs::metadata(&gz) {
        info("mixed_gz_bytes", &m.len().to_string());
    }
    let mut reference = String::new();
    if !phase(r, "mixed_sha256", || {
        let out = run(Command::new(which("sha256sum")), Some(mib), "sha256sum")?;
        reference = out.split_whitespace().next().unwrap_or("").to_string();
        if reference.len() != 64 {
            return Err(format!("sha256sum printed {out:?}"));
        }
        Ok(())
    }) {
        return false;
    }
    info("mixed_sha256", &reference);
    if !phase(r, "mixed_gunzip", || {
        let out = run(
            sh(&format!(
                "{} -c {gz} | {}",
                which("gunzip"),
                which("sha256sum")
            )),
            None,
            "gunzip | sha256sum",
        )?;
        let got = out.split_whitespace().next().unwrap_or("");
        if got != reference {
            return Err(format!("decompressed digest {got} != {reference}"));
        }
        Ok(())
    }) {
        return false;
    }
    let _ = std::fs::remove_file(&gz);
    let tree = format!("{dir}/tree");
    let mut expect = None;
    if !phase(r, "mixed_mktree", || {
        std::fs::create_dir(&tree).map_err(|e| format!("mkdir {tree}: {e}"))?;
        expect = Some(make_tree(&tree, s)?);
        Ok(())
    }) {
        return false;
    }
    let t = expect.unwrap();
    info(
        "mixed_tree",
        &format!(
            "{}_files,{}_dirs,{}_bytes,{}_with_keyword",
            t.files, t.dirs, t.bytes, t.keyword
        ),
    );
    if !phase(r, "mixed_find", || {
        let script = format!(
            "cd {tree} && find . -type f | wc -l && find . -type d | wc -l && \
             find . -type f -exec stat -c %s {{}} + | awk '{{s += $1}} END {{print s}}' && \
             grep -rl {KEYWORD} . | wc -l && du -sk . >/dev/null"
        );
        let out = run(sh(&script), None, "find")?;
        let got: Vec<&str> = out.split_whitespace().collect();
        let want = [
            t.files.to_string(),
            t.dirs.to_string(),
            t.bytes.to_string(),
            t.keyword.to_string(),
        ];
        if got.len() != 4 || got.iter().zip(want.iter()).any(|(a, b)| a != b) {
            return Err(format!(
                "find/stat/grep printed {got:?}, expected {want:?} (files, dirs, bytes, keyword)"
            ));
        }
        Ok(())
    }) {
        return false;
    }
    let n = s.procs;
    let loops = n / 2;
    let (expr, tr) = (which("expr"), which("tr"));
    let ok = phase(r, "mixed_procs", || {
        let script = format!(
            "seq 1 {n} | xargs -n 1 {expr} 2 '*' | awk '{{s += $1}} END {{print s}}' && \
             i=0 && v= && while [ $i -lt {loops} ]; do v=$(echo $i | {tr} 0-9 a-j); i=$((i + 1)); done && \
             echo $v"
        );
        let out = run(sh(&script), None, "procs")?;
        let got: Vec<&str> = out.split_whitespace().collect();
        let last: String = (loops - 1)
            .to_string()
            .bytes()
            .map(|b| (b - b'0' + b'a') as char)
            .collect();
        let want = [(n * (n + 1)).to_string(), last];
        if got.len() != 2 || got[0] != want[0] || got[1] != want[1] {
            return Err(format!("printed {got:?}, expected {want:?}"));
        }
        Ok(())
    });
    ok && cc_phase(r, s, dir)
}

const WORDSTAT: &str = "/usr/share/pvkvm/wordstat.c";

/// What wordstat prints for `input`: lines, words, bytes, distinct words, FNV-1a 64.
fn wordstat(input: &[u8]) -> String {
    let mut h: u64 = 1_469_598_103_934_665_603;
    for &b in input {
        h ^= b as u64;
        h = h.wrapping_mul(1_099_511_628_211);
    }
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    let mut distinct = std::collections::HashSet::new();
    let mut words = 0;
    for w in input
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .filter(|w| !w.is_empty())
    {
        words += 1;
        distinct.insert(&w[..w.len().min(256)]);
    }
    format!("{lines} {words} {} {} {h}", input.len(), distinct.len())
}

/// The compile phase (see the module's comment); false only when it ran and failed.
fn cc_phase(r: &mut Runner, s: &Sizes, dir: &str) -> bool {
    let tcc = which("tcc");
    if !std::path::Path::new(WORDSTAT).exists() || !tcc.starts_with('/') {
        r.fail_soft(
            "mixed_cc",
            "no tcc or no /usr/share/pvkvm/wordstat.c in the initramfs (benches/linux.py adds them)",
        );
        return true;
    }
    let mut input = Vec::new();
    let _ = stream(1, &mut input);
    let want = wordstat(&input);
    let (obj, exe) = (format!("{dir}/wordstat.o"), format!("{dir}/wordstat"));
    phase(r, "mixed_cc", || {
        for _ in 0..s.cc {
            let mut c = Command::new(&tcc);
            c.args(["-O2", "-c", WORDSTAT, "-o", &obj])
                .env("PATH", PATH);
            run(c, None, "tcc -c")?;
        }
        let mut c = Command::new(&tcc);
        c.args([obj.as_str(), "-o", &exe]).env("PATH", PATH);
        run(c, None, "tcc (link)")?;
        let out = run(Command::new(&exe), Some(1), "wordstat")?;
        if out.trim() != want {
            return Err(format!(
                "wordstat printed {:?}, expected {want:?}",
                out.trim()
            ));
        }
        Ok(())
    })
}
