//! The backends' own thread: the guest's notifies, typed console input and power-off
//! requests arrive as [`Request`]s; the thread services the rings in guest memory
//! (xenstored, the console) while the vCPU runs on, and hands each event it owes the
//! guest back to the vCPU thread through a [`Raise`] callback (which queues it and kicks
//! the vCPU out of `KVM_RUN`, or wakes it from a block).
//!
//! So a guest's notify costs it one exit and returns at once; the backend's work (ring
//! parsing, terminal output) runs beside the guest. The ring protocols were made for
//! exactly this concurrency: each side reads the other's index, then the data, and
//! publishes its own index last.
//!
//! When the domain ends, the VMM sends [`Request::DomainEnded`]; the thread serves what
//! was queued before it, copies out whatever console output the guest left in its ring,
//! and ends, so no output is lost.

use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::console::{ConsoleBackend, GuestRingPage};
use super::xenbus::Xenbus;
use crate::xenstore::Xenstore;

/// The backend port of xenstored (its end of the guest's store channel).
pub const BACKEND_PORT_XENSTORE: u32 = 1;
/// The backend port of the console.
pub const BACKEND_PORT_CONSOLE: u32 = 2;

/// How often the device states are reconciled without a xenstore request.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Rounds a xenstore ring that the guest keeps full is served in, per notify.
const XENSTORE_SLICES: usize = 64;

/// What the reconcile tick last saw of the xenstore ring: whether replies waited unread
/// and the guest's consumer index then.
#[derive(Debug, Default)]
struct StoreTick {
    /// The request producer index while requests waited unread.
    requests_at: Option<u32>,
    /// The response consumer index while replies waited unread.
    unread_at: Option<u32>,
    /// Times the tick found work no notify had announced (logged the first time).
    missed: u64,
}

impl StoreTick {
    /// Takes this tick's look at the ring; returns whether requests waited unread, and
    /// whether replies waited unread, since the last tick with the same indices (the
    /// guest produced nothing new, resp. consumed nothing, in between).
    fn observe(&mut self, look: Option<crate::xenstore::ring::RingLook>) -> (bool, bool) {
        let unannounced =
            look.is_some_and(|l| l.requests_unread && self.requests_at == Some(l.req_prod));
        let stale = look.is_some_and(|l| l.responses_unread && self.unread_at == Some(l.rsp_cons));
        self.requests_at = look.and_then(|l| l.requests_unread.then_some(l.req_prod));
        self.unread_at = look.and_then(|l| l.responses_unread.then_some(l.rsp_cons));
        (unannounced, stale)
    }
}

/// Work for the backend thread.
#[derive(Debug)]
pub enum Request {
    /// The guest sent on its channel to this backend port.
    Notify(u32),
    /// Bytes typed on the console, for the guest.
    ConsoleInput(Vec<u8>),
    /// Ask the guest to power off (console escape, SIGTERM): `control/shutdown`.
    PowerOff,
    /// Ask the guest to reboot (the control socket): `control/shutdown`.
    Reboot,
    /// The domain has ended: serve nothing more, flush the console and stop.
    DomainEnded,
}

/// Called on the backend thread with a backend port whose guest end must be raised.
pub type Raise = Box<dyn FnMut(u32) + Send>;

/// The VMM's backends for one domain.
pub struct Backends {
    /// The PV console (xenconsoled's part).
    pub console: ConsoleBackend,
    /// Guest-physical address of the console ring page.
    pub console_gpa: u64,
    /// xenstored.
    pub xenstore: Xenstore,
    /// Guest-physical address of the xenstore ring page.
    pub store_gpa: u64,
    /// The split-driver devices (disks, NICs) and their xenbus handshakes.
    pub xenbus: Xenbus,
}

impl Backends {
    /// Serves one request; returns the backend port whose guest end is owed an event.
    pub fn serve(&mut self, mem: &GuestMemoryMmap, req: Request) -> Option<u32> {
        match req {
            Request::Notify(BACKEND_PORT_CONSOLE) => {
                let mut page = GuestRingPage::new(mem, GuestAddress(self.console_gpa));
                // Output that cannot be written (a closed stdout) is dropped: the guest
                // must not stall on it.
                let out = self.console.process_output(&mut page).unwrap_or(true);
                let inp = self.console.push_input(&mut page, &[]);
                (out || inp).then_some(BACKEND_PORT_CONSOLE)
            }
            Request::Notify(BACKEND_PORT_XENSTORE) => self.serve_xenstore(mem),
            Request::Notify(_) => None,
            Request::ConsoleInput(bytes) => {
                let mut page = GuestRingPage::new(mem, GuestAddress(self.console_gpa));
                self.console
                    .push_input(&mut page, &bytes)
                    .then_some(BACKEND_PORT_CONSOLE)
            }
            Request::DomainEnded => None,
            Request::PowerOff | Request::Reboot => {
                let what: &[u8] = if matches!(req, Request::Reboot) {
                    b"reboot"
                } else {
                    b"poweroff"
                };
                // The guest's xenbus watch on control/shutdown does the rest.
                self.xenstore
                    .write("control/shutdown", what)
                    .ok()
                    .and_then(|()| self.serve_xenstore(mem))
            }
        }
    }

    fn serve_xenstore(&mut self, mem: &GuestMemoryMmap) -> Option<u32> {
        let mut page = GuestRingPage::new(mem, GuestAddress(self.store_gpa));
        let mut notify = self.xenstore.process(&mut page);
        let mut slices = 0;
        loop {
            while self.xenstore.needs_poll() && slices < XENSTORE_SLICES {
                notify |= self.xenstore.process(&mut page);
                slices += 1;
            }
            // The frontends' state changes move the backends; what the backends write
            // fires the guest's watches, served in the same round.
            if !self.xenbus.reconcile(&mut self.xenstore) || slices >= XENSTORE_SLICES {
                break;
            }
            notify |= self.xenstore.process(&mut page);
            slices += 1;
        }
        notify.then_some(BACKEND_PORT_XENSTORE)
    }

    /// Copies out the console output still in the ring (the domain has ended).
    pub fn flush_console(&mut self, mem: &GuestMemoryMmap) {
        let mut page = GuestRingPage::new(mem, GuestAddress(self.console_gpa));
        let _ = self.console.process_output(&mut page);
    }
}

/// Starts the backend thread. It ends at [`Request::DomainEnded`] (or when every
/// [`Sender`] of `requests` is gone), after serving what was queued before and flushing
/// the console, and returns the console line that best says why a guest crashed
/// ([`ConsoleBackend::crash_line`]).
pub fn spawn(
    mut backends: Backends,
    mem: GuestMemoryMmap,
    requests: Receiver<Request>,
    mut raise: Raise,
) -> std::io::Result<JoinHandle<Option<String>>> {
    std::thread::Builder::new()
        .name("backends".into())
        .spawn(move || {
            let mut tick = StoreTick::default();
            loop {
                let req = match requests.recv_timeout(RECONCILE_EVERY) {
                    Ok(req) => req,
                    // The device states are also looked at on a tick: a data path that
                    // broke closes its backend, and no frontend change can be missed.
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let moved = backends.xenbus.reconcile(&mut backends.xenstore);
                        // The ring itself is looked at too: a request that waited a whole
                        // tick with no notify is served, and replies the guest left unread
                        // for a whole tick are announced again. Either means an event was
                        // lost on its way (or the guest did not run for that long), and
                        // a guest waiting for xenstore would wait forever; a spare event
                        // is harmless, as on Xen.
                        let look = {
                            let mut page =
                                GuestRingPage::new(&mem, GuestAddress(backends.store_gpa));
                            backends.xenstore.look(&mut page)
                        };
                        let (unannounced, stale) = tick.observe(look);
                        if unannounced || stale {
                            tick.missed += 1;
                            if tick.missed == 1 {
                                log::warn!(
                                    "pvkvm: xenstore: {} (a lost event, or a guest that did not run)",
                                    if unannounced {
                                        "a request waited 100 ms with no notify; served from the ring"
                                    } else {
                                        "replies waited unread for 100 ms; the guest was notified again"
                                    }
                                );
                            }
                        }
                        if moved || backends.xenstore.needs_poll() || unannounced {
                            if let Some(port) = backends.serve_xenstore(&mem) {
                                raise(port);
                            }
                        } else if stale {
                            raise(BACKEND_PORT_XENSTORE);
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                log::trace!("backend request {req:?}");
                if matches!(req, Request::DomainEnded) {
                    break;
                }
                if let Some(port) = backends.serve(&mem, req) {
                    raise(port);
                }
            }
            if tick.missed > 0 {
                log::warn!(
                    "pvkvm: xenstore: the ring check found unannounced work {} times",
                    tick.missed
                );
            }
            // The devices finish what they took and give their grants back.
            backends.xenbus.shutdown();
            backends.flush_console(&mem);
            // What the guest said last, for a crash report.
            backends.console.crash_line()
        })
}

/// A [`Sender`] of requests, as the vCPU thread holds it.
pub type RequestSender = Sender<Request>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::ring::RingLook;

    fn look(
        requests_unread: bool,
        req_prod: u32,
        responses_unread: bool,
        rsp_cons: u32,
    ) -> Option<RingLook> {
        Some(RingLook {
            requests_unread,
            req_prod,
            rsp_cons,
            responses_unread,
        })
    }

    #[test]
    fn the_ring_check_finds_work_only_when_it_waited_a_whole_tick() {
        let mut t = StoreTick::default();
        // Fresh work is the notify's to announce.
        assert_eq!(t.observe(look(true, 10, true, 4)), (false, false));
        // The same indices a tick later: nobody announced or read it.
        assert_eq!(t.observe(look(true, 10, true, 4)), (true, true));
        // The guest produced more and consumed some: in flight again, not stale.
        assert_eq!(t.observe(look(true, 12, true, 6)), (false, false));
        // Served and read: nothing waits.
        assert_eq!(t.observe(look(false, 12, false, 8)), (false, false));
        assert_eq!(t.observe(look(false, 12, false, 8)), (false, false));
        // A broken connection is not looked at.
        assert_eq!(t.observe(None), (false, false));
    }
}
