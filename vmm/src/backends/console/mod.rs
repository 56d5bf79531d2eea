//! The PV console backend: pvkvm's stand-in for xenconsoled.
//!
//! A PV guest's hvc0 (Linux `drivers/tty/hvc/hvc_xen.c`) talks to its console through
//! one shared 4 KiB page laid out as Xen's `struct xencons_interface`
//! (`xen/include/public/io/console.h`):
//!
//! | offset | field                         |
//! |--------|-------------------------------|
//! | 0      | `char in[1024]` (to guest)    |
//! | 1024   | `char out[2048]` (from guest) |
//! | 3072   | `u32 in_cons`                 |
//! | 3076   | `u32 in_prod`                 |
//! | 3080   | `u32 out_cons`                |
//! | 3084   | `u32 out_prod`                |
//! | 3088   | `u8 connection`               |
//!
//! Indices are free-running `u32`s, masked with the ring size to address the ring.
//! The guest produces `out` and consumes `in`; the backend does the opposite.
//!
//! The indices live in guest memory and are hostile. The backend copes the way
//! xenconsoled does (`tools/console/daemon/io.c`):
//! * output: when `out_prod - out_cons` (mod 2^32) exceeds the ring size the ring is
//!   broken and is left alone: nothing is read, no index is written, the guest is not
//!   notified (`buffer_append`). A guest that repairs its indices is serviced again.
//! * input: when `in_prod - in_cons` exceeds the ring size there is no free space and
//!   nothing is written (`handle_tty_read`); the input stays buffered here.
//!
//! Every copy is bounded by the ring size, so a call never loops on guest data.
//!
//! The terminal side ([`RawTerminal`], [`restore_terminal`], [`EscapeScanner`],
//! [`spawn_stdin_reader`]) lives in the `terminal` submodule and is re-exported here.

mod mirror;
mod pty;
mod terminal;

pub use mirror::ConsoleMirror;
pub use terminal::{
    release_stdin, restore_terminal, spawn_stdin_reader, EscapeScanner, RawTerminal, ESCAPE_BYTE,
    ESCAPE_QUIT,
};

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{fence, Ordering};
use std::sync::mpsc::Sender;

use super::ring_page::{read_u32, write_u32};
pub use super::ring_page::{GuestRingPage, RingPage, PAGE_SIZE};

/// Offset of `in[]`, the ring the backend produces and the guest consumes.
pub const IN_OFFSET: usize = 0;
/// Size of `in[]`.
pub const IN_SIZE: usize = 1024;
/// Offset of `out[]`, the ring the guest produces and the backend consumes.
pub const OUT_OFFSET: usize = 1024;
/// Size of `out[]`.
pub const OUT_SIZE: usize = 2048;
/// Offset of `in_cons` (written by the guest).
pub const IN_CONS_OFFSET: usize = 3072;
/// Offset of `in_prod` (written by the backend).
pub const IN_PROD_OFFSET: usize = 3076;
/// Offset of `out_cons` (written by the backend).
pub const OUT_CONS_OFFSET: usize = 3080;
/// Offset of `out_prod` (written by the guest).
pub const OUT_PROD_OFFSET: usize = 3084;
/// Offset of the `connection` byte.
pub const CONNECTION_OFFSET: usize = 3088;
/// `connection` value: the backend is connected and will service the rings.
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// `connection` value: no backend yet.
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

/// Most guest output held back when a pseudo-terminal's reader is not keeping up;
/// beyond it the oldest bytes are dropped (xenconsoled's `discard_overflowed_data`).
pub const MAX_OUTPUT_BACKLOG: usize = 64 * 1024;
/// Most host input held for a guest that is not reading its console; further input
/// is dropped.
pub const MAX_INPUT_BACKLOG: usize = 64 * 1024;

/// Where guest console output goes (and, for [`Output::Pty`], where input comes from).
#[derive(Debug)]
pub enum Output {
    /// The VMM's standard output; input from standard input.
    Stdout,
    /// An already opened file (a log); input, if any, from standard input.
    File(File),
    /// A new pseudo-terminal: output to it and input from it. Its path is printed to
    /// standard error once, for `screen`, `minicom` or `socat` to attach to.
    Pty,
}

/// Counters of what the backend did, for `--stats` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Bytes taken from the guest's `out` ring.
    pub bytes_out: u64,
    /// Bytes put into the guest's `in` ring.
    pub bytes_in: u64,
    /// Times the `out` ring was found broken (`out_prod - out_cons > 2048`).
    pub broken_out: u64,
    /// Times the `in` ring was found broken (`in_prod - in_cons > 1024`).
    pub broken_in: u64,
    /// Output bytes dropped because a pseudo-terminal reader did not keep up.
    pub dropped_out: u64,
    /// Input bytes dropped because the guest did not read its console.
    pub dropped_in: u64,
}

enum Sink {
    Stdout,
    File(File),
    Pty(pty::Pty),
    #[cfg(test)]
    Memory(Vec<u8>),
}

/// One guest console: drains the guest's `out` ring to the [`Output`] and feeds host
/// input into the `in` ring.
///
/// The runner calls [`process_output`](Self::process_output) and
/// [`push_input`](Self::push_input) (with no new bytes) whenever the guest signals the
/// console event channel, and `push_input` with new bytes whenever input arrives;
/// each returns whether to signal the guest back.
pub struct ConsoleBackend {
    sink: Sink,
    /// Output accepted from the guest that the pseudo-terminal has not taken yet.
    backlog: VecDeque<u8>,
    /// Input not yet in the guest's ring.
    input: VecDeque<u8>,
    stats: ConsoleStats,
    warned_broken: bool,
    /// The last bytes the guest wrote, whatever the sink: what the VMM quotes when the
    /// guest crashes.
    tail: VecDeque<u8>,
    /// Consoles attached through the control socket.
    mirror: Option<ConsoleMirror>,
}

/// How much of the guest's latest output [`ConsoleBackend::crash_line`] looks through.
const TAIL_BYTES: usize = 8192;

impl ConsoleBackend {
    /// A backend writing to `output`. If a pseudo-terminal cannot be opened, the
    /// error is printed and standard output is used instead; see
    /// [`try_new`](Self::try_new) to handle it.
    pub fn new(output: Output) -> Self {
        match Self::try_new(output) {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "pvkvm: cannot open a pseudo-terminal for the console ({e}); using stdout"
                );
                Self::with_sink(Sink::Stdout)
            }
        }
    }

    /// A backend writing to `output`; fails only if a pseudo-terminal cannot be opened.
    pub fn try_new(output: Output) -> io::Result<Self> {
        let sink = match output {
            Output::Stdout => Sink::Stdout,
            Output::File(f) => Sink::File(f),
            Output::Pty => {
                let p = pty::Pty::open()?;
                eprintln!("pvkvm: guest console is on {}", p.path());
                Sink::Pty(p)
            }
        };
        Ok(Self::with_sink(sink))
    }

    fn with_sink(sink: Sink) -> Self {
        Self {
            sink,
            backlog: VecDeque::new(),
            input: VecDeque::new(),
            stats: ConsoleStats::default(),
            warned_broken: false,
            tail: VecDeque::new(),
            mirror: None,
        }
    }

    /// Also copies output to the clients attached to `mirror` (the control socket's
    /// console attach).
    pub fn set_mirror(&mut self, mirror: ConsoleMirror) {
        self.mirror = Some(mirror);
    }

    /// The line of the guest's latest output that says why it crashed: the last kernel
    /// panic, BUG or oops line, else the last non-empty line (None before any output).
    pub fn crash_line(&self) -> Option<String> {
        let text: Vec<u8> = self.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let telling = ["Kernel panic", "kernel BUG", "BUG:", "Oops"];
        lines
            .iter()
            .rev()
            .find(|l| telling.iter().any(|t| l.contains(t)))
            .or(lines.last())
            .map(|l| l.to_string())
    }

    /// Marks the page connected (`connection = XENCONSOLE_CONNECTED`), as xenconsoled
    /// does once it services the rings. A zeroed page already reads as connected.
    pub fn connect(&mut self, page: &mut dyn RingPage) {
        page.write(CONNECTION_OFFSET, &[XENCONSOLE_CONNECTED]);
    }

    /// The pseudo-terminal's path, for [`Output::Pty`].
    pub fn pty_path(&self) -> Option<&str> {
        match &self.sink {
            Sink::Pty(p) => Some(p.path()),
            _ => None,
        }
    }

    /// What the backend has done so far.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// Whether host input is waiting for room in the guest's `in` ring.
    pub fn has_pending_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Starts the thread that reads console input and sends it as chunks on `tx`:
    /// the pseudo-terminal for [`Output::Pty`], standard input otherwise (see
    /// [`spawn_stdin_reader`]). The thread ends at end of file, on a read error, or
    /// when the receiver is gone.
    pub fn spawn_input_reader(&self, tx: Sender<Vec<u8>>) -> io::Result<()> {
        match &self.sink {
            Sink::Pty(p) => p.spawn_reader(tx).map(drop),
            _ => {
                spawn_stdin_reader(tx);
                Ok(())
            }
        }
    }

    /// Drains the guest's `out` ring, from `out_cons` to `out_prod`, to the output and
    /// advances `out_cons`. Returns whether the guest should be notified (something
    /// was consumed).
    ///
    /// A broken ring (`out_prod - out_cons > 2048`) is left untouched and yields
    /// `Ok(false)`, as in xenconsoled. On a write error the ring has already been
    /// consumed (a dead terminal must not stall the guest): the error is returned and
    /// the caller should still notify the guest if it carries on.
    pub fn process_output(&mut self, page: &mut dyn RingPage) -> io::Result<bool> {
        // Whatever a pseudo-terminal refused last time goes first.
        self.flush_backlog()?;

        let cons = read_u32(page, OUT_CONS_OFFSET);
        let prod = read_u32(page, OUT_PROD_OFFSET);
        // Read the indices before the data they cover (xenconsoled's mb()).
        fence(Ordering::SeqCst);

        let size = prod.wrapping_sub(cons) as usize;
        if size == 0 {
            return Ok(false);
        }
        if size > OUT_SIZE {
            self.stats.broken_out += 1;
            self.warn_broken("out", cons, prod);
            return Ok(false);
        }

        let mut data = vec![0u8; size];
        let start = cons as usize & (OUT_SIZE - 1);
        let first = size.min(OUT_SIZE - start);
        page.read(OUT_OFFSET + start, &mut data[..first]);
        page.read(OUT_OFFSET, &mut data[first..]);

        // Finish reading the data before handing the space back.
        fence(Ordering::SeqCst);
        write_u32(page, OUT_CONS_OFFSET, prod);
        self.stats.bytes_out += size as u64;

        self.emit(&data)?;
        Ok(true)
    }

    /// Queues `bytes` of host input and copies as much queued input as fits into the
    /// guest's `in` ring (between `in_prod` and `in_cons`), advancing `in_prod`. What
    /// does not fit stays queued for later calls (pass an empty `bytes` to retry, e.g.
    /// when the guest signals it has read). Returns whether the guest should be
    /// notified (something was written).
    ///
    /// Queued input is capped at [`MAX_INPUT_BACKLOG`]; bytes beyond it are dropped.
    /// A broken ring (`in_prod - in_cons > 1024`) gets nothing, as in xenconsoled.
    pub fn push_input(&mut self, page: &mut dyn RingPage, bytes: &[u8]) -> bool {
        let room = MAX_INPUT_BACKLOG.saturating_sub(self.input.len());
        let take = bytes.len().min(room);
        self.input.extend(&bytes[..take]);
        self.stats.dropped_in += (bytes.len() - take) as u64;

        if self.input.is_empty() {
            return false;
        }

        let cons = read_u32(page, IN_CONS_OFFSET);
        let prod = read_u32(page, IN_PROD_OFFSET);
        fence(Ordering::SeqCst);

        let used = prod.wrapping_sub(cons) as usize;
        if used > IN_SIZE {
            self.stats.broken_in += 1;
            self.warn_broken("in", cons, prod);
            return false;
        }
        let n = (IN_SIZE - used).min(self.input.len());
        if n == 0 {
            return false;
        }

        let chunk: Vec<u8> = self.input.drain(..n).collect();
        let start = prod as usize & (IN_SIZE - 1);
        let first = n.min(IN_SIZE - start);
        page.write(IN_OFFSET + start, &chunk[..first]);
        page.write(IN_OFFSET, &chunk[first..]);

        // The data must be visible before the index that publishes it (xen_wmb()).
        fence(Ordering::SeqCst);
        write_u32(page, IN_PROD_OFFSET, prod.wrapping_add(n as u32));
        self.stats.bytes_in += n as u64;
        true
    }

    fn warn_broken(&mut self, ring: &str, cons: u32, prod: u32) {
        if !self.warned_broken {
            self.warned_broken = true;
            log::warn!(
                "console: guest {ring} ring is broken (cons {cons:#x}, prod {prod:#x}); ignoring it"
            );
        }
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(m) = &self.mirror {
            m.write(data);
        }
        self.tail.extend(data);
        let over = self.tail.len().saturating_sub(TAIL_BYTES);
        self.tail.drain(..over);
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(data)?;
                out.flush()
            }
            Sink::File(f) => f.write_all(data),
            #[cfg(test)]
            Sink::Memory(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            Sink::Pty(_) => {
                self.backlog.extend(data);
                let over = self.backlog.len().saturating_sub(MAX_OUTPUT_BACKLOG);
                if over > 0 {
                    self.backlog.drain(..over);
                    self.stats.dropped_out += over as u64;
                }
                self.flush_backlog()
            }
        }
    }

    /// Writes held-back output to the pseudo-terminal as far as it takes it without
    /// blocking. Nothing to do for the other outputs.
    pub fn flush_backlog(&mut self) -> io::Result<()> {
        let Sink::Pty(p) = &mut self.sink else {
            return Ok(());
        };
        while !self.backlog.is_empty() {
            let (a, _) = self.backlog.as_slices();
            match p.write_nonblocking(a)? {
                0 => break,
                n => {
                    self.backlog.drain(..n);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn page() -> Box<[u8; PAGE_SIZE]> {
        Box::new([0u8; PAGE_SIZE])
    }

    fn backend() -> ConsoleBackend {
        ConsoleBackend::with_sink(Sink::Memory(Vec::new()))
    }

    #[test]
    fn the_crash_line_is_the_last_panic_line_or_the_last_line() {
        let mut b = backend();
        assert_eq!(b.crash_line(), None);
        b.emit(b"[ 1.0] booting\r\n[ 2.0] Kernel panic - not syncing: MCA violation!\r\n")
            .unwrap();
        b.emit(b"[ 2.1] ---[ end Kernel panic ]---\r\n").unwrap();
        assert_eq!(
            b.crash_line().as_deref(),
            Some("[ 2.1] ---[ end Kernel panic ]---")
        );
        let mut b = backend();
        b.emit(b"one\ntwo\n\n").unwrap();
        assert_eq!(b.crash_line().as_deref(), Some("two"));
        // Only the latest output is kept.
        let mut b = backend();
        b.emit(b"Kernel panic - old\n").unwrap();
        b.emit(&vec![b'x'; TAIL_BYTES]).unwrap();
        assert!(!b.crash_line().unwrap().contains("old"));
    }

    fn written(b: &ConsoleBackend) -> &[u8] {
        match &b.sink {
            Sink::Memory(v) => v,
            _ => unreachable!(),
        }
    }

    fn get(p: &[u8; PAGE_SIZE], off: usize) -> u32 {
        read_u32(p, off)
    }

    fn set(p: &mut [u8; PAGE_SIZE], off: usize, v: u32) {
        write_u32(p, off, v)
    }

    /// Plays the guest's `__write_console`: copies what fits and advances out_prod.
    fn guest_write(p: &mut [u8; PAGE_SIZE], data: &[u8]) -> usize {
        let cons = get(p, OUT_CONS_OFFSET);
        let mut prod = get(p, OUT_PROD_OFFSET);
        let mut sent = 0;
        while sent < data.len() && (prod.wrapping_sub(cons) as usize) < OUT_SIZE {
            p[OUT_OFFSET + (prod as usize & (OUT_SIZE - 1))] = data[sent];
            prod = prod.wrapping_add(1);
            sent += 1;
        }
        set(p, OUT_PROD_OFFSET, prod);
        sent
    }

    /// Plays the guest's `domU_read_console`: takes up to `max` bytes from in[].
    fn guest_read(p: &mut [u8; PAGE_SIZE], max: usize) -> Vec<u8> {
        let mut cons = get(p, IN_CONS_OFFSET);
        let prod = get(p, IN_PROD_OFFSET);
        assert!(
            prod.wrapping_sub(cons) as usize <= IN_SIZE,
            "guest would BUG_ON"
        );
        let mut v = Vec::new();
        while cons != prod && v.len() < max {
            v.push(p[IN_OFFSET + (cons as usize & (IN_SIZE - 1))]);
            cons = cons.wrapping_add(1);
        }
        set(p, IN_CONS_OFFSET, cons);
        v
    }

    #[test]
    fn layout_matches_xencons_interface() {
        assert_eq!(IN_OFFSET + IN_SIZE, OUT_OFFSET);
        assert_eq!(OUT_OFFSET + OUT_SIZE, IN_CONS_OFFSET);
        assert_eq!(CONNECTION_OFFSET, OUT_PROD_OFFSET + 4);
        assert!(IN_SIZE.is_power_of_two() && OUT_SIZE.is_power_of_two());
    }

    #[test]
    fn empty_ring_is_a_no_op() {
        let mut p = page();
        let mut b = backend();
        assert!(!b.process_output(&mut *p).unwrap());
        assert!(written(&b).is_empty());
    }

    #[test]
    fn output_is_drained_and_cons_advanced() {
        let mut p = page();
        let mut b = backend();
        assert_eq!(guest_write(&mut p, b"hello, world\r\n"), 14);
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(written(&b), b"hello, world\r\n");
        assert_eq!(get(&p, OUT_CONS_OFFSET), 14);
        assert!(!b.process_output(&mut *p).unwrap(), "nothing new");
        assert_eq!(b.stats().bytes_out, 14);
    }

    #[test]
    fn output_across_the_wrap() {
        let mut p = page();
        let mut b = backend();
        // Start 10 bytes before the end of out[].
        let start = (OUT_SIZE - 10) as u32;
        set(&mut p, OUT_CONS_OFFSET, start);
        set(&mut p, OUT_PROD_OFFSET, start);
        let msg: Vec<u8> = (0..100u8).collect();
        assert_eq!(guest_write(&mut p, &msg), 100);
        assert_eq!(&p[OUT_OFFSET..OUT_OFFSET + 90], &msg[10..]);
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(written(&b), &msg[..]);
        assert_eq!(get(&p, OUT_CONS_OFFSET), start + 100);
    }

    #[test]
    fn output_across_the_u32_wrap_and_full_ring() {
        let mut p = page();
        let mut b = backend();
        let start = u32::MAX - 5;
        set(&mut p, OUT_CONS_OFFSET, start);
        set(&mut p, OUT_PROD_OFFSET, start);
        let msg: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        // Exactly a full ring is legal.
        assert_eq!(guest_write(&mut p, &msg), OUT_SIZE);
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(
            get(&p, OUT_CONS_OFFSET),
            start.wrapping_add(OUT_SIZE as u32)
        );
        // The guest goes on with the rest.
        assert_eq!(guest_write(&mut p, &msg[OUT_SIZE..]), 3000 - OUT_SIZE);
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(written(&b), &msg[..]);
    }

    #[test]
    fn overrun_out_ring_is_ignored_like_xenconsoled() {
        let mut p = page();
        let mut b = backend();
        for (cons, prod) in [
            (0u32, OUT_SIZE as u32 + 1),
            (100, 99), // prod behind cons: a huge size mod 2^32
            (0, u32::MAX),
            (u32::MAX, u32::MAX - 1),
        ] {
            set(&mut p, OUT_CONS_OFFSET, cons);
            set(&mut p, OUT_PROD_OFFSET, prod);
            assert!(!b.process_output(&mut *p).unwrap());
            assert_eq!(get(&p, OUT_CONS_OFFSET), cons, "indices left alone");
            assert_eq!(get(&p, OUT_PROD_OFFSET), prod);
        }
        assert!(written(&b).is_empty());
        assert_eq!(b.stats().broken_out, 4);
        // A guest that repairs its ring is serviced again.
        set(&mut p, OUT_CONS_OFFSET, 7);
        set(&mut p, OUT_PROD_OFFSET, 7);
        guest_write(&mut p, b"ok");
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(written(&b), b"ok");
    }

    #[test]
    fn indices_near_the_limit() {
        let mut p = page();
        let mut b = backend();
        set(&mut p, OUT_CONS_OFFSET, 0);
        set(&mut p, OUT_PROD_OFFSET, OUT_SIZE as u32); // full: legal
        assert!(b.process_output(&mut *p).unwrap());
        assert_eq!(written(&b).len(), OUT_SIZE);

        set(&mut p, IN_CONS_OFFSET, 5);
        set(&mut p, IN_PROD_OFFSET, 5 + IN_SIZE as u32); // full: no room
        assert!(!b.push_input(&mut *p, b"x"));
        assert_eq!(b.stats().broken_in, 0);
        assert!(b.has_pending_input());
    }

    #[test]
    fn short_page_never_panics() {
        // A RingPage smaller than the layout reads zeros and drops writes.
        let mut small = [0u8; 16];
        let mut b = backend();
        assert!(!b.process_output(&mut small).unwrap());
        assert!(b.push_input(&mut small, b"abc"));
        assert_eq!(&small[..3], b"abc");
    }

    #[test]
    fn guest_memory_page() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let base = GuestAddress(0x2000);
        mem.write_slice(b"hi", GuestAddress(0x2000 + OUT_OFFSET as u64))
            .unwrap();
        mem.write_slice(
            &2u32.to_le_bytes(),
            GuestAddress(0x2000 + OUT_PROD_OFFSET as u64),
        )
        .unwrap();
        let mut b = backend();
        assert!(b
            .process_output(&mut GuestRingPage::new(&mem, base))
            .unwrap());
        assert_eq!(written(&b), b"hi");
        let mut cons = [0u8; 4];
        mem.read_slice(&mut cons, GuestAddress(0x2000 + OUT_CONS_OFFSET as u64))
            .unwrap();
        assert_eq!(u32::from_le_bytes(cons), 2);
        assert!(b.push_input(&mut GuestRingPage::new(&mem, base), b"k"));
        let mut k = [0u8; 1];
        mem.read_slice(&mut k, GuestAddress(0x2000)).unwrap();
        assert_eq!(&k, b"k");

        // A page past the end of memory, or at an address that wraps: no panic.
        for at in [0x3800, u64::MAX - 10] {
            let mut gp = GuestRingPage::new(&mem, GuestAddress(at));
            assert!(!b.process_output(&mut gp).unwrap());
            let mut x = [7u8; 4];
            gp.read(4094, &mut x);
            assert_eq!(x, [0; 4]);
            gp.write(usize::MAX, b"z");
        }
    }

    #[test]
    fn input_is_pushed_with_backpressure() {
        let mut p = page();
        let mut b = backend();
        let msg: Vec<u8> = (0..1500u32).map(|i| (i % 253) as u8).collect();
        assert!(b.push_input(&mut *p, &msg));
        assert_eq!(get(&p, IN_PROD_OFFSET), IN_SIZE as u32, "ring filled");
        assert!(b.has_pending_input(), "the rest is kept");
        // Ring full: nothing to do, nothing lost.
        assert!(!b.push_input(&mut *p, &[]));
        let got1 = guest_read(&mut p, 600);
        assert_eq!(got1, &msg[..600]);
        // The guest read 600: they go in, wrapping in[].
        assert!(b.push_input(&mut *p, &[]));
        assert_eq!(get(&p, IN_PROD_OFFSET), (IN_SIZE + 476) as u32);
        assert!(!b.has_pending_input());
        let got2 = guest_read(&mut p, usize::MAX);
        assert_eq!(got2, &msg[600..]);
        assert!(!b.push_input(&mut *p, &[]), "nothing queued");
        assert_eq!(b.stats().bytes_in, 1500);
    }

    #[test]
    fn input_order_is_kept_across_calls() {
        let mut p = page();
        let mut b = backend();
        set(&mut p, IN_CONS_OFFSET, u32::MAX - 2);
        set(
            &mut p,
            IN_PROD_OFFSET,
            (u32::MAX - 2).wrapping_add(IN_SIZE as u32 - 2),
        ); // 2 free
        assert!(b.push_input(&mut *p, b"abc"));
        assert!(!b.push_input(&mut *p, b"def"));
        assert_eq!(guest_read(&mut p, usize::MAX).len(), IN_SIZE);
        assert!(b.push_input(&mut *p, b"g"));
        assert_eq!(guest_read(&mut p, usize::MAX), b"cdefg");
    }

    #[test]
    fn broken_in_ring_gets_nothing_and_input_is_kept() {
        let mut p = page();
        let mut b = backend();
        set(&mut p, IN_CONS_OFFSET, 10);
        set(&mut p, IN_PROD_OFFSET, 9); // prod behind cons
        assert!(!b.push_input(&mut *p, b"hi"));
        assert_eq!(get(&p, IN_PROD_OFFSET), 9);
        assert!(p[IN_OFFSET..IN_OFFSET + IN_SIZE].iter().all(|&x| x == 0));
        assert_eq!(b.stats().broken_in, 1);
        set(&mut p, IN_PROD_OFFSET, 10);
        assert!(b.push_input(&mut *p, &[]));
        assert_eq!(guest_read(&mut p, usize::MAX), b"hi");
    }

    #[test]
    fn input_backlog_is_capped() {
        let mut p = page();
        set(&mut p, IN_PROD_OFFSET, IN_SIZE as u32); // full
        let mut b = backend();
        let big = vec![b'x'; MAX_INPUT_BACKLOG + 10];
        assert!(!b.push_input(&mut *p, &big));
        assert_eq!(b.input.len(), MAX_INPUT_BACKLOG);
        assert_eq!(b.stats().dropped_in, 10);
    }

    #[test]
    fn connect_sets_the_flag() {
        let mut p = page();
        p[CONNECTION_OFFSET] = XENCONSOLE_DISCONNECTED;
        backend().connect(&mut *p);
        assert_eq!(p[CONNECTION_OFFSET], XENCONSOLE_CONNECTED);
    }

    #[test]
    fn file_output() {
        let path = std::env::temp_dir().join(format!("pvkvm-console-{}.log", std::process::id()));
        let f = File::create(&path).unwrap();
        let mut b = ConsoleBackend::new(Output::File(f));
        let mut p = page();
        guest_write(&mut p, b"to the log\n");
        assert!(b.process_output(&mut *p).unwrap());
        drop(b);
        assert_eq!(std::fs::read(&path).unwrap(), b"to the log\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn pty_output_and_input() {
        let mut b = match ConsoleBackend::try_new(Output::Pty) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: no pseudo-terminals here ({e})");
                return;
            }
        };
        let path = b.pty_path().unwrap().to_owned();
        assert!(path.starts_with("/dev/"));
        // A user attaches.
        let mut user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut p = page();
        guest_write(&mut p, b"login: ");
        assert!(b.process_output(&mut *p).unwrap());
        let mut buf = [0u8; 7];
        use std::io::Read;
        user.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"login: ");

        let (tx, rx) = std::sync::mpsc::channel();
        b.spawn_input_reader(tx).unwrap();
        user.write_all(b"root\r").unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            got.extend(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap());
        }
        assert_eq!(got, b"root\r");
        assert!(b.push_input(&mut *p, &got));
        assert_eq!(guest_read(&mut p, usize::MAX), b"root\r");
    }

    #[test]
    fn pty_without_reader_does_not_block() {
        let mut b = match ConsoleBackend::try_new(Output::Pty) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: no pseudo-terminals here ({e})");
                return;
            }
        };
        let mut p = page();
        // Far more than the tty buffers plus the backlog; nobody reads.
        let chunk = vec![b'.'; OUT_SIZE];
        for _ in 0..(2 * MAX_OUTPUT_BACKLOG / OUT_SIZE + 40) {
            guest_write(&mut p, &chunk);
            assert!(b.process_output(&mut *p).unwrap());
        }
        assert!(b.backlog.len() <= MAX_OUTPUT_BACKLOG);
        assert!(b.stats().dropped_out > 0);
    }
}
