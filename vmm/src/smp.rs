//! What the vCPU threads of one domain share besides the engine's domain state: how one
//! vCPU reaches another (a kick), and remote TLB flushes.
//!
//! Each vCPU runs on its own host thread. Another thread (a vCPU raising an event, a
//! backend, the watchdog) reaches it with a [`Wake`] message and the kick signal, which
//! takes it out of `KVM_RUN` (or ends its blocked wait on the message).
//!
//! A remote flush (the guest's `TLB_FLUSH_MULTI`/`ALL`, `UVMF_ALL`, or a pagetable change
//! another vCPU may cache) must be complete before the asking vCPU runs on: no other
//! vCPU may go on using a stale translation. On this host a vCPU's TLB is the host's
//! shadow of it, flushed when the shim reloads CR3 inside the VM. So the asker marks
//! every other vCPU with [`VcpuHandle::request_flush`]; a vCPU outside the guest needs
//! nothing more (it performs the flush, through the shim's apply routine, before it
//! enters the guest again); one inside is kicked, and the asker waits until it has left
//! the guest. Entering the guest is [`VcpuHandle::enter_guest`], which looks at the
//! request after announcing itself, so one of the two always sees the other (both
//! sides use sequentially consistent atomics). No host-wide IPI, and vCPUs that are
//! blocked, down or busy in the VMM cost nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::runner::{kick_signal, Wake};

/// The engine's domain state as one vCPU thread holds it: locked for the length of an
/// exit, released while the vCPU waits (blocked, down, paused) so that the other vCPUs
/// go on. The frame table's lock (`runner::SharedMm`) is taken after this one, never
/// before.
pub struct DomainLock<'m> {
    mutex: &'m Mutex<pv_engine::Domain>,
    guard: Option<MutexGuard<'m, pv_engine::Domain>>,
}

impl<'m> DomainLock<'m> {
    /// Not locked yet.
    pub fn new(mutex: &'m Mutex<pv_engine::Domain>) -> Self {
        Self { mutex, guard: None }
    }

    /// Locked now.
    pub fn locked(mutex: &'m Mutex<pv_engine::Domain>) -> Self {
        let mut l = Self::new(mutex);
        l.get();
        l
    }

    /// The domain state, locking it first if this thread does not hold it. A thread that
    /// panicked holding it ended the domain anyway; what it left is the best account.
    pub fn get(&mut self) -> &mut pv_engine::Domain {
        self.guard
            .get_or_insert_with(|| self.mutex.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Lets the other vCPUs have it (before a wait).
    pub fn release(&mut self) {
        self.guard = None;
    }

    /// Whether this thread holds it.
    pub fn is_held(&self) -> bool {
        self.guard.is_some()
    }
}

/// One vCPU as the domain's other threads reach it.
#[derive(Debug)]
pub struct VcpuHandle {
    wake: Mutex<Option<Sender<Wake>>>,
    /// The vCPU thread's pthread id; 0 until it runs.
    tid: AtomicU64,
    in_guest: AtomicBool,
    flush_requested: AtomicBool,
    /// Threads waiting for this vCPU to leave the guest, and where they sleep: a waiter
    /// must not spin, because on a busy host the vCPU it waits for may need its CPU.
    waiters: AtomicU64,
    left: (Mutex<()>, Condvar),
    /// Guest system time of this vCPU's next timer (u64::MAX: none), for the watchdog.
    pub next_timer: AtomicU64,
    /// Kicks this vCPU took to flush its TLB for another vCPU.
    pub remote_flushes: AtomicU64,
    /// This vCPU's exit counters, as its thread last published them.
    pub counters: ExitCounters,
    /// The state `VCPUOP_initialise` built for this vCPU, until its thread takes it up
    /// (`Platform::vcpu_initialised` puts it here under the domain lock; the thread
    /// takes it under the same lock).
    pub new_vcpu: Mutex<Option<Box<pv_engine::vcpu_context::NewVcpu>>>,
}

/// Exit counters a vCPU thread publishes after every exit (it is their only writer), for
/// the control API's `vm.info`: what `--stats` counts, while the domain runs.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Hypercall doorbells (`ExitStats::hypercall_doorbells`).
    pub hypercall_doorbells: AtomicU64,
    /// Trap doorbells.
    pub trap_doorbells: AtomicU64,
    /// Apply refills (`APPLY_MORE`).
    pub apply_refills: AtomicU64,
    /// The guest kernel's own port I/O.
    pub port_io: AtomicU64,
    /// Kicks.
    pub interrupted: AtomicU64,
    /// Every other exit.
    pub other: AtomicU64,
    /// Applies inside the VM (no exit of their own).
    pub applies: AtomicU64,
}

impl Default for VcpuHandle {
    fn default() -> Self {
        Self {
            wake: Mutex::new(None),
            tid: AtomicU64::new(0),
            in_guest: AtomicBool::new(false),
            flush_requested: AtomicBool::new(false),
            waiters: AtomicU64::new(0),
            left: (Mutex::new(()), Condvar::new()),
            next_timer: AtomicU64::new(u64::MAX),
            remote_flushes: AtomicU64::new(0),
            counters: ExitCounters::default(),
            new_vcpu: Mutex::new(None),
        }
    }
}

impl VcpuHandle {
    /// Where the vCPU's messages go.
    pub fn set_wake(&self, tx: Sender<Wake>) {
        if let Ok(mut w) = self.wake.lock() {
            *w = Some(tx);
        }
    }

    /// Records the vCPU thread (called on that thread).
    pub fn set_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let tid = unsafe { libc::pthread_self() };
        self.tid.store(tid as u64, Ordering::SeqCst);
    }

    /// Forgets the vCPU thread (called on that thread as it ends), so no signal is sent
    /// to a thread id that may be reused.
    pub fn clear_thread(&self) {
        self.tid.store(0, Ordering::SeqCst);
    }

    /// Sends `w` and kicks the thread out of `KVM_RUN` (a blocked vCPU wakes on the
    /// message). False when the vCPU thread is gone.
    pub fn send(&self, w: Wake) -> bool {
        let sent = self
            .wake
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(w).is_ok()))
            .unwrap_or(false);
        self.signal();
        sent
    }

    /// Kicks the thread out of `KVM_RUN` without a message.
    pub fn signal(&self) {
        let tid = self.tid.load(Ordering::SeqCst);
        if tid != 0 {
            // SAFETY: pthread_kill with a thread id the vCPU thread stored for itself and
            // clears before it ends; the kick signal's handler only sets a flag. A
            // thread that ended between the load and the call is joined only after the
            // domain's other threads stopped sending (runner::run).
            unsafe { libc::pthread_kill(tid as libc::pthread_t, kick_signal()) };
        }
    }

    /// Called by the vCPU thread right before `KVM_RUN`: false when a remote flush is
    /// asked for, and the thread must not enter the guest before it performed it.
    pub fn enter_guest(&self) -> bool {
        self.in_guest.store(true, Ordering::SeqCst);
        if self.flush_requested.load(Ordering::SeqCst) {
            self.in_guest.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called by the vCPU thread as soon as `KVM_RUN` returns.
    pub fn left_guest(&self) {
        self.in_guest.store(false, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            // Taking the lock orders this with a waiter between its check and its sleep.
            let _held = self.left.0.lock().unwrap_or_else(|e| e.into_inner());
            self.left.1.notify_all();
        }
    }

    /// Waits until the vCPU has left the guest, kicking it again every `rekick`; false
    /// when it did not within `limit`.
    fn wait_left(&self, rekick: Duration, limit: Duration) -> bool {
        let start = Instant::now();
        // A vCPU on another host CPU leaves within tens of microseconds: spin that
        // long (waking from a sleep costs about as much again), then sleep, so that a
        // vCPU sharing this thread's CPU gets it.
        while start.elapsed() < SPIN_BEFORE_SLEEP {
            if !self.in_guest() {
                return true;
            }
            std::hint::spin_loop();
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut held = self.left.0.lock().unwrap_or_else(|e| e.into_inner());
        let left = loop {
            if !self.in_guest() {
                break true;
            }
            if start.elapsed() >= limit {
                break false;
            }
            held = match self.left.1.wait_timeout(held, rekick) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            if self.in_guest() {
                self.signal();
            }
        };
        drop(held);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        left
    }

    /// Takes a remote flush asked of this vCPU (the thread performs it before it runs
    /// guest code again).
    pub fn take_flush_request(&self) -> bool {
        self.flush_requested.swap(false, Ordering::SeqCst)
    }

    /// Asks this vCPU to flush its TLB before it runs guest code again; returns whether
    /// it is in the guest now (the asker must then kick it and wait, see
    /// [`flush_others`]).
    pub fn request_flush(&self) -> bool {
        self.flush_requested.store(true, Ordering::SeqCst);
        self.in_guest.load(Ordering::SeqCst)
    }

    /// Whether the vCPU is running guest code now.
    pub fn in_guest(&self) -> bool {
        self.in_guest.load(Ordering::SeqCst)
    }
}

/// How long a remote flush waits for a vCPU to leave the guest before it kicks again
/// (a kick landing just before `KVM_RUN` is not lost, but a second one costs nothing).
const REKICK_AFTER: Duration = Duration::from_millis(1);
/// How long a remote flush spins for the target to leave the guest before it sleeps.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(150);
/// How long a remote flush waits at most: a vCPU thread that does not leave the guest
/// within this is stuck in the host, and the asker goes on rather than hang.
const FLUSH_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// Flushes every vCPU's TLB but `me`'s (see the module docs): returns when none of them
/// can run guest code with a translation older than now. Returns how many had to be
/// kicked out of the guest.
pub fn flush_others(vcpus: &[VcpuHandle], me: u32) -> usize {
    let mut kicked = 0;
    for (id, v) in vcpus.iter().enumerate() {
        if id as u32 == me || !v.request_flush() {
            continue;
        }
        kicked += 1;
        v.remote_flushes.fetch_add(1, Ordering::Relaxed);
        v.signal();
        if !v.wait_left(REKICK_AFTER, FLUSH_WAIT_LIMIT) {
            log::warn!("pvkvm: vCPU {id} did not leave the guest for a remote TLB flush within {FLUSH_WAIT_LIMIT:?}");
        }
    }
    kicked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_outside_the_guest_takes_the_flush_before_it_enters() {
        let v = VcpuHandle::default();
        assert!(!v.request_flush(), "outside the guest: no kick needed");
        assert!(!v.enter_guest(), "the request keeps it out");
        assert!(!v.in_guest());
        assert!(v.take_flush_request());
        assert!(v.enter_guest());
        assert!(v.in_guest());
        v.left_guest();
    }

    #[test]
    fn a_vcpu_in_the_guest_is_waited_for() {
        let vcpus: std::sync::Arc<Vec<VcpuHandle>> =
            std::sync::Arc::new((0..2).map(|_| VcpuHandle::default()).collect());
        assert!(vcpus[1].enter_guest());
        let other = vcpus.clone();
        let leaver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other[1].left_guest();
        });
        let start = Instant::now();
        assert_eq!(flush_others(&vcpus, 0), 1);
        assert!(start.elapsed() >= Duration::from_millis(15));
        assert!(!vcpus[1].in_guest());
        assert!(vcpus[1].take_flush_request());
        assert!(!vcpus[0].take_flush_request(), "not the asker");
        leaver.join().unwrap();
    }
}
