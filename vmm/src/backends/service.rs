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
            loop {
                let req = match requests.recv_timeout(RECONCILE_EVERY) {
                    Ok(req) => req,
                    // The device states are also looked at on a tick: a data path that
                    // broke closes its backend, and no frontend change can be missed.
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let moved = backends.xenbus.reconcile(&mut backends.xenstore);
                        if moved || backends.xenstore.needs_poll() {
                            if let Some(port) = backends.serve_xenstore(&mem) {
                                raise(port);
                            }
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
            // The devices finish what they took and give their grants back.
            backends.xenbus.shutdown();
            backends.flush_console(&mem);
            // What the guest said last, for a crash report.
            backends.console.crash_line()
        })
}

/// A [`Sender`] of requests, as the vCPU thread holds it.
pub type RequestSender = Sender<Request>;
