//! The xenbus side of the VMM's split-driver backends: each device's frontend and
//! backend directories in xenstore (Xen's toolstack layout), the XenbusState handshake
//! from the backend's side (Linux's `xen-blkback/xenbus.c` and `xen-netback/xenbus.c`
//! `frontend_changed` are the behaviour matched), and one data-path thread per
//! connected device.
//!
//! Layout, for the guest `D` and device `N` of kind `K` (`vbd`, `vif`):
//! - frontend `/local/domain/D/device/K/N`: `backend`, `backend-id`, `state`, plus the
//!   kind's keys (`virtual-device`, `device-type` / `handle`, `mac`); the guest owns it,
//!   the backend domain (0) may read it;
//! - backend `/local/domain/0/backend/K/D/N`: `frontend`, `frontend-id`, `online`,
//!   `state`, plus the kind's keys and features; owned by domain 0, readable by the
//!   guest.
//!
//! The state machine is level-triggered: after every batch of xenstore traffic the hub
//! calls [`Xenbus::reconcile`], which reads each frontend's `state` and moves the
//! backend: Initialised/Connected → connect (map the rings, bind the event channel, start
//! the data path), Closing → disconnect, Closed → Closed, Initialising after Closed →
//! InitWait again (a frontend driver that reconnects). A frontend whose connect fails
//! gets `error` written under the backend's error path and the backend state Closing, as
//! `xenbus_dev_fatal` does; the VMM carries on.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::grant::GrantAccess;
use crate::xenstore::{Perm, Xenstore};

/// `enum xenbus_state` (`public/io/xenbus.h`).
pub use xen_abi::xenbus as state;

/// First backend port given to a device (1 and 2 are xenstored and the console).
pub const FIRST_DEVICE_PORT: u32 = 16;

/// How long a connect waits for the vCPU thread to bind the event channel.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected device's data path, served on its own thread.
pub trait DataPath: Send {
    /// A host-side descriptor the thread also waits on (a tap, the user network).
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// Serves what is waiting (rings and host side); returns whether the frontend is
    /// owed an event. An error means the frontend broke the protocol: the thread stops
    /// serving and the device waits for the frontend to reconnect.
    fn serve(&mut self) -> Result<bool, String>;
    /// Whether more work is known to be waiting (a bounded `serve` left some).
    fn more(&self) -> bool {
        false
    }
    /// Whether the thread should wait on [`Self::host_fd`] now: not while the data
    /// path cannot take more from the host (its buffer for the guest is full), which
    /// would make a readable fd wake the thread in a loop.
    fn wants_host_input(&self) -> bool {
        true
    }
    /// Gives every grant back (the frontend disconnected or the domain ended).
    fn disconnect(self: Box<Self>);
}

/// One kind of device (a disk, a NIC), as the xenbus layer drives it.
pub trait DeviceModel: Send {
    /// The xenbus device type: `vbd` or `vif`.
    fn kind(&self) -> &'static str;
    /// The device id in both directories (`virtual-device` of a vbd, the vif index).
    fn devid(&self) -> u32;
    /// A name for messages (`xvda`, `vif0`).
    fn name(&self) -> String;
    /// Keys of the frontend directory besides `backend`, `backend-id`, `state`.
    fn frontend_keys(&self) -> Vec<(String, String)>;
    /// Keys of the backend directory besides `frontend`, `frontend-id`, `online`,
    /// `state`: what the device is and the features it offers.
    fn backend_keys(&self) -> Vec<(String, String)>;
    /// Connects to a frontend that reached Initialised or Connected: `front` reads a
    /// key of the frontend directory.
    fn connect(
        &mut self,
        front: &mut dyn FnMut(&str) -> Option<String>,
        grants: Arc<dyn GrantAccess>,
    ) -> Result<Box<dyn DataPath>, String>;
}

/// What the xenbus layer asks of the vCPU thread and the guest's event channels.
pub trait EventChannels: Send {
    /// Binds the guest's unbound port `guest_port` (allocated for domain 0) to backend
    /// port `backend_port`; Xen's errors (`-EINVAL` for a port that is not unbound for
    /// domain 0) come back as the error.
    fn bind(&self, guest_port: u32, backend_port: u32) -> Result<(), i64>;
    /// The backend closed `backend_port`: the guest's end goes back to unbound.
    fn unbind(&self, backend_port: u32);
    /// Raises the guest's end of `backend_port`.
    fn raise(&self, backend_port: u32);
}

/// Guest notifies on device ports go straight to the device's thread.
#[derive(Clone, Default)]
pub struct PortRouter(Arc<RwLock<HashMap<u32, Arc<EventFd>>>>);

impl PortRouter {
    /// Kicks the device behind `backend_port`; false when no device serves it.
    pub fn kick(&self, backend_port: u32) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        match map.get(&backend_port) {
            Some(fd) => {
                let _ = fd.write(1);
                true
            }
            None => false,
        }
    }

    fn insert(&self, port: u32, fd: Arc<EventFd>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, fd);
    }

    fn remove(&self, port: u32) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
    }
}

struct Connection {
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct XenbusDevice {
    model: Box<dyn DeviceModel>,
    backend_port: u32,
    /// The backend's state as last written.
    state: u32,
    conn: Option<Connection>,
    front_path: String,
    back_path: String,
    /// The frontend's state as last read, since when, and whether a handshake stuck
    /// there was reported.
    front_seen: (u32, std::time::Instant, bool),
}

/// How long a frontend may sit between starting its handshake and `Connected` (or
/// closed) before pvkvm says so: Linux waits up to 300 s for its disks at boot, silently.
pub const HANDSHAKE_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

fn state_name(s: u32) -> &'static str {
    match s {
        state::UNKNOWN => "Unknown",
        state::INITIALISING => "Initialising",
        state::INIT_WAIT => "InitWait",
        state::INITIALISED => "Initialised",
        state::CONNECTED => "Connected",
        state::CLOSING => "Closing",
        state::CLOSED => "Closed",
        _ => "Reconfiguring",
    }
}

/// Every device of the domain.
pub struct Xenbus {
    domid: u32,
    devices: Vec<XenbusDevice>,
    grants: Arc<dyn GrantAccess>,
    evtchn: Arc<dyn EventChannels + Sync>,
    router: PortRouter,
}

impl Xenbus {
    /// The devices `models`, for guest `domid`; notifies for their ports are routed
    /// through `router`.
    pub fn new(
        domid: u32,
        models: Vec<Box<dyn DeviceModel>>,
        grants: Arc<dyn GrantAccess>,
        evtchn: Arc<dyn EventChannels + Sync>,
        router: PortRouter,
    ) -> Self {
        let devices = models
            .into_iter()
            .enumerate()
            .map(|(i, model)| {
                let (kind, id) = (model.kind(), model.devid());
                XenbusDevice {
                    front_path: format!("/local/domain/{domid}/device/{kind}/{id}"),
                    back_path: format!("/local/domain/0/backend/{kind}/{domid}/{id}"),
                    backend_port: FIRST_DEVICE_PORT + i as u32,
                    state: state::UNKNOWN,
                    conn: None,
                    front_seen: (state::UNKNOWN, std::time::Instant::now(), false),
                    model,
                }
            })
            .collect();
        Xenbus {
            domid,
            devices,
            grants,
            evtchn,
            router,
        }
    }

    /// Writes every device's directories, the backend in InitWait (as a backend
    /// driver leaves it after its probe), before the guest boots.
    pub fn publish(&mut self, xs: &mut Xenstore) -> Result<(), String> {
        let domid = self.domid;
        for d in &mut self.devices {
            let front = &d.front_path;
            let back = &d.back_path;
            xs_write(xs, &format!("{back}/frontend"), front)?;
            xs_write(xs, &format!("{back}/frontend-id"), &domid.to_string())?;
            xs_write(xs, &format!("{back}/online"), "1")?;
            xs_write(
                xs,
                &format!("{back}/state"),
                &state::INITIALISING.to_string(),
            )?;
            for (k, v) in d.model.backend_keys() {
                xs_write(xs, &format!("{back}/{k}"), &v)?;
            }
            xs_write(xs, &format!("{front}/backend"), back)?;
            xs_write(xs, &format!("{front}/backend-id"), "0")?;
            xs_write(
                xs,
                &format!("{front}/state"),
                &state::INITIALISING.to_string(),
            )?;
            for (k, v) in d.model.frontend_keys() {
                xs_write(xs, &format!("{front}/{k}"), &v)?;
            }
            // The guest owns its frontend directory; domain 0 reads it. The backend
            // directory is domain 0's; the guest reads it.
            let owner_guest = [Perm::none(domid), Perm::read(0)];
            let owner_dom0 = [Perm::none(0), Perm::read(domid)];
            set_perms_tree(xs, front, &owner_guest)?;
            set_perms_tree(xs, back, &owner_dom0)?;
            d.state = state::INIT_WAIT;
            xs_write(xs, &format!("{back}/state"), &state::INIT_WAIT.to_string())?;
        }
        Ok(())
    }

    /// Moves each backend after the frontends' states (see the module docs). Returns
    /// whether xenstore changed (the hub then serves the guest's watches).
    pub fn reconcile(&mut self, xs: &mut Xenstore) -> bool {
        let mut changed = false;
        for i in 0..self.devices.len() {
            changed |= self.reconcile_one(xs, i);
        }
        changed
    }

    fn reconcile_one(&mut self, xs: &mut Xenstore, i: usize) -> bool {
        let d = &mut self.devices[i];
        let front_state = xs
            .read(&format!("{}/state", d.front_path))
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(state::UNKNOWN);
        let now = std::time::Instant::now();
        if front_state != d.front_seen.0 {
            d.front_seen = (front_state, now, false);
        } else if !d.front_seen.2
            && matches!(front_state, state::INITIALISING | state::INITIALISED)
            && now.duration_since(d.front_seen.1) >= HANDSHAKE_REPORT_AFTER
        {
            // Not an error the VMM can act on (the frontend may be waiting for its
            // driver), but the one clue when a guest's boot waits on a device.
            d.front_seen.2 = true;
            log::warn!(
                "pvkvm: {}: the frontend has been {} for {} s (backend {}); the guest may be waiting for this device",
                d.model.name(),
                state_name(front_state),
                HANDSHAKE_REPORT_AFTER.as_secs(),
                state_name(d.state)
            );
        }
        // A data path that stopped on a protocol error: the backend closes, as
        // `xenbus_dev_fatal` makes it, and waits for the frontend to start over.
        let broken = d.conn.as_ref().is_some_and(|c| c.thread.is_finished());
        if broken {
            self.disconnect(i);
        }
        let d = &mut self.devices[i];
        let next = match (front_state, d.state) {
            (_, state::CONNECTED) if broken => state::CLOSING,
            (state::INITIALISED | state::CONNECTED, state::INIT_WAIT) => {
                match self.connect(xs, i) {
                    Ok(()) => state::CONNECTED,
                    Err(e) => {
                        let d = &self.devices[i];
                        log::warn!(
                            "pvkvm: {}: cannot connect the frontend: {e}",
                            d.model.name()
                        );
                        let err_path = format!(
                            "/local/domain/0/error/backend/{}/{}/{}/error",
                            d.model.kind(),
                            self.domid,
                            d.model.devid()
                        );
                        let _ = xs.write(&err_path, e.as_bytes());
                        state::CLOSING
                    }
                }
            }
            (state::CLOSING, s) if s != state::CLOSING && s != state::CLOSED => {
                self.disconnect(i);
                state::CLOSING
            }
            (state::CLOSED | state::UNKNOWN, s) if s != state::CLOSED && s != state::INIT_WAIT => {
                self.disconnect(i);
                state::CLOSED
            }
            // A frontend starting over after a close: offer the device again.
            (state::INITIALISING, state::CLOSED | state::CLOSING) => {
                self.disconnect(i);
                state::INIT_WAIT
            }
            (_, s) => s,
        };
        let d = &mut self.devices[i];
        if next == d.state {
            return false;
        }
        d.state = next;
        let _ = xs.write(
            &format!("{}/state", d.back_path),
            next.to_string().as_bytes(),
        );
        true
    }

    fn connect(&mut self, xs: &mut Xenstore, i: usize) -> Result<(), String> {
        let evtchn = self.evtchn.clone();
        let grants = self.grants.clone();
        let d = &mut self.devices[i];
        let front_path = d.front_path.clone();
        let mut read = |key: &str| -> Option<String> {
            xs.read(&format!("{front_path}/{key}"))
                .and_then(|v| String::from_utf8(v).ok())
        };
        let port: u32 = read("event-channel")
            .and_then(|v| v.trim().parse().ok())
            .ok_or("the frontend wrote no valid event-channel")?;
        let path = d.model.connect(&mut read, grants)?;
        let backend_port = d.backend_port;
        if let Err(e) = evtchn.bind(port, backend_port) {
            path.disconnect();
            return Err(format!(
                "event channel {port} is not an unbound port for domain 0 (error {e})"
            ));
        }
        let kick = Arc::new(
            EventFd::new(EFD_NONBLOCK).map_err(|e| format!("cannot create an eventfd: {e}"))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let name = d.model.name();
        let thread = spawn_data_path(
            name.clone(),
            path,
            kick.clone(),
            stop.clone(),
            evtchn.clone(),
            backend_port,
        )
        .map_err(|e| {
            evtchn.unbind(backend_port);
            format!("cannot start the {name} thread: {e}")
        })?;
        self.router.insert(backend_port, kick.clone());
        // Requests the frontend queued before the bind are served now.
        let _ = kick.write(1);
        self.devices[i].conn = Some(Connection { kick, stop, thread });
        Ok(())
    }

    fn disconnect(&mut self, i: usize) {
        let d = &mut self.devices[i];
        if let Some(c) = d.conn.take() {
            self.router.remove(d.backend_port);
            self.evtchn.unbind(d.backend_port);
            c.stop.store(true, Ordering::SeqCst);
            let _ = c.kick.write(1);
            if c.thread.join().is_err() {
                log::error!("pvkvm: the {} thread panicked", d.model.name());
            }
        }
    }

    /// Stops every data path (the domain ended): grants are given back, nothing queued
    /// is lost (each thread finishes its current batch first).
    pub fn shutdown(&mut self) {
        for i in 0..self.devices.len() {
            self.disconnect(i);
        }
    }
}

fn xs_write(xs: &mut Xenstore, path: &str, value: &str) -> Result<(), String> {
    xs.write(path, value.as_bytes())
        .map_err(|e| format!("xenstore write of {path} failed: {e}"))
}

fn set_perms_tree(xs: &mut Xenstore, path: &str, perms: &[Perm]) -> Result<(), String> {
    xs.set_perms(path, perms)
        .map_err(|e| format!("xenstore set_perms of {path} failed: {e}"))?;
    for child in xs.directory(path).unwrap_or_default() {
        set_perms_tree(xs, &format!("{path}/{child}"), perms)?;
    }
    Ok(())
}

/// The event loop of one device: the guest's kicks and the host side's readiness.
struct DataPathLoop {
    path: Option<Box<dyn DataPath>>,
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    evtchn: Arc<dyn EventChannels + Sync>,
    backend_port: u32,
    name: String,
    failed: bool,
    /// Whether the host fd is in the event loop's set.
    host_armed: bool,
}

impl DataPathLoop {
    /// Puts the host fd into the event set or takes it out, after what the data path
    /// can take now.
    fn rearm(&mut self, ops: &mut EventOps) {
        let Some(path) = self.path.as_ref() else {
            return;
        };
        let Some(fd) = path.host_fd() else { return };
        let want = !self.failed && path.wants_host_input();
        if want != self.host_armed {
            let ev = Events::new_raw(fd, EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            match r {
                Ok(()) => self.host_armed = want,
                Err(e) => log::warn!("pvkvm: {}: cannot change its event set: {e:?}", self.name),
            }
        }
    }

    fn serve(&mut self) {
        let Some(path) = self.path.as_mut() else {
            return;
        };
        loop {
            match path.serve() {
                Ok(notify) => {
                    if notify {
                        self.evtchn.raise(self.backend_port);
                    }
                }
                Err(e) => {
                    log::warn!("pvkvm: {}: the frontend broke the protocol: {e}; the device stops until it reconnects", self.name);
                    self.failed = true;
                    return;
                }
            }
            if !path.more() || self.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

impl MutEventSubscriber for DataPathLoop {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.kick.as_raw_fd() {
            let _ = self.kick.read();
        }
        if !self.failed {
            self.serve();
        }
        self.rearm(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&*self.kick, EventSet::IN));
        self.rearm(ops);
    }
}

fn spawn_data_path(
    name: String,
    path: Box<dyn DataPath>,
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    evtchn: Arc<dyn EventChannels + Sync>,
    backend_port: u32,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let subscriber = Arc::new(std::sync::Mutex::new(DataPathLoop {
                path: Some(path),
                kick,
                stop: stop.clone(),
                evtchn,
                backend_port,
                name: name.clone(),
                failed: false,
                host_armed: false,
            }));
            let mut em = match EventManager::<Arc<std::sync::Mutex<DataPathLoop>>>::new() {
                Ok(em) => em,
                Err(e) => {
                    log::error!("pvkvm: {name}: cannot create its event loop: {e:?}");
                    return;
                }
            };
            let id = em.add_subscriber(subscriber.clone());
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = em.run_with_timeout(200) {
                    log::error!("pvkvm: {name}: its event loop failed: {e:?}");
                    break;
                }
                let mut s = subscriber.lock().unwrap_or_else(|e| e.into_inner());
                // Work left by a bounded serve, or host output waiting for room, is
                // picked up without a new event.
                if !s.failed && s.path.as_ref().is_some_and(|p| p.more()) {
                    s.serve();
                    if let Ok(mut ops) = em.event_ops(id) {
                        s.rearm(&mut ops);
                    }
                }
                if s.failed {
                    break;
                }
            }
            let mut s = subscriber.lock().unwrap_or_else(|e| e.into_inner());
            // Serve what the frontend queued before the stop, then give the grants back.
            if !s.failed && !stop.load(Ordering::SeqCst) {
                s.serve();
            }
            if let Some(p) = s.path.take() {
                p.disconnect();
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::grant::fake::FakeGrants;
    use super::*;

    const DOMID: u32 = 1;

    /// Event channels that record what the xenbus layer asked for.
    #[derive(Default)]
    struct Channels {
        bound: Mutex<Vec<(u32, u32)>>,
        raised: Mutex<Vec<u32>>,
        refuse: AtomicBool,
    }

    impl EventChannels for Channels {
        fn bind(&self, guest_port: u32, backend_port: u32) -> Result<(), i64> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(-22);
            }
            self.bound.lock().unwrap().push((guest_port, backend_port));
            Ok(())
        }
        fn unbind(&self, backend_port: u32) {
            self.bound.lock().unwrap().retain(|b| b.1 != backend_port);
        }
        fn raise(&self, backend_port: u32) {
            self.raised.lock().unwrap().push(backend_port);
        }
    }

    /// A data path that answers every kick with one event.
    struct Echo {
        served: Arc<Mutex<u32>>,
        fail: bool,
    }

    impl DataPath for Echo {
        fn serve(&mut self) -> Result<bool, String> {
            *self.served.lock().unwrap() += 1;
            if self.fail {
                Err("bad ring".into())
            } else {
                Ok(true)
            }
        }
        fn disconnect(self: Box<Self>) {}
    }

    struct Model {
        served: Arc<Mutex<u32>>,
        fail_connect: bool,
        fail_serve: bool,
        seen_ring_ref: Arc<Mutex<Option<String>>>,
    }

    impl DeviceModel for Model {
        fn kind(&self) -> &'static str {
            "vbd"
        }
        fn devid(&self) -> u32 {
            51712
        }
        fn name(&self) -> String {
            "xvda".into()
        }
        fn frontend_keys(&self) -> Vec<(String, String)> {
            vec![("virtual-device".into(), "51712".into())]
        }
        fn backend_keys(&self) -> Vec<(String, String)> {
            vec![("sectors".into(), "2048".into())]
        }
        fn connect(
            &mut self,
            front: &mut dyn FnMut(&str) -> Option<String>,
            _grants: Arc<dyn GrantAccess>,
        ) -> Result<Box<dyn DataPath>, String> {
            *self.seen_ring_ref.lock().unwrap() = front("ring-ref");
            if self.fail_connect {
                return Err("no ring".into());
            }
            Ok(Box::new(Echo {
                served: self.served.clone(),
                fail: self.fail_serve,
            }))
        }
    }

    struct Setup {
        xs: Xenstore,
        bus: Xenbus,
        channels: Arc<Channels>,
        router: PortRouter,
        served: Arc<Mutex<u32>>,
        ring_ref: Arc<Mutex<Option<String>>>,
    }

    fn setup(fail_connect: bool, fail_serve: bool) -> Setup {
        let mut xs = Xenstore::new(DOMID);
        let channels = Arc::new(Channels::default());
        let router = PortRouter::default();
        let served = Arc::new(Mutex::new(0));
        let ring_ref = Arc::new(Mutex::new(None));
        let model = Model {
            served: served.clone(),
            fail_connect,
            fail_serve,
            seen_ring_ref: ring_ref.clone(),
        };
        let mut bus = Xenbus::new(
            DOMID,
            vec![Box::new(model)],
            Arc::new(FakeGrants::new(8)),
            channels.clone(),
            router.clone(),
        );
        bus.publish(&mut xs).unwrap();
        Setup {
            xs,
            bus,
            channels,
            router,
            served,
            ring_ref,
        }
    }

    const FRONT: &str = "/local/domain/1/device/vbd/51712";
    const BACK: &str = "/local/domain/0/backend/vbd/1/51712";

    fn read(xs: &mut Xenstore, path: &str) -> String {
        String::from_utf8(xs.read(path).unwrap_or_default()).unwrap()
    }

    fn front_state(s: &mut Setup, st: u32) {
        s.xs.write(&format!("{FRONT}/state"), st.to_string().as_bytes())
            .unwrap();
        s.bus.reconcile(&mut s.xs);
    }

    fn wait_served(s: &Setup, n: u32) {
        for _ in 0..500 {
            if *s.served.lock().unwrap() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the data path was not served {n} times");
    }

    #[test]
    fn directories_follow_the_toolstack_layout() {
        let mut s = setup(false, false);
        assert_eq!(read(&mut s.xs, &format!("{FRONT}/backend")), BACK);
        assert_eq!(read(&mut s.xs, &format!("{FRONT}/backend-id")), "0");
        assert_eq!(read(&mut s.xs, &format!("{FRONT}/virtual-device")), "51712");
        assert_eq!(read(&mut s.xs, &format!("{BACK}/frontend")), FRONT);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/frontend-id")), "1");
        assert_eq!(read(&mut s.xs, &format!("{BACK}/sectors")), "2048");
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "2");
        let fp = s.xs.get_perms(FRONT).unwrap();
        assert_eq!(fp, vec![Perm::none(DOMID), Perm::read(0)]);
        let bp = s.xs.get_perms(&format!("{BACK}/state")).unwrap();
        assert_eq!(bp, vec![Perm::none(0), Perm::read(DOMID)]);
    }

    #[test]
    fn a_frontend_connects_is_kicked_and_closes() {
        let mut s = setup(false, false);
        s.xs.write(&format!("{FRONT}/ring-ref"), b"8").unwrap();
        s.xs.write(&format!("{FRONT}/event-channel"), b"5").unwrap();
        front_state(&mut s, state::INITIALISED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "4");
        assert_eq!(s.ring_ref.lock().unwrap().as_deref(), Some("8"));
        assert_eq!(
            *s.channels.bound.lock().unwrap(),
            vec![(5, FIRST_DEVICE_PORT)]
        );
        // The connect kicks once; a guest notify kicks again.
        wait_served(&s, 1);
        assert!(s.router.kick(FIRST_DEVICE_PORT));
        wait_served(&s, 2);
        assert!(s
            .channels
            .raised
            .lock()
            .unwrap()
            .contains(&FIRST_DEVICE_PORT));
        front_state(&mut s, state::CLOSING);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "5");
        assert!(s.channels.bound.lock().unwrap().is_empty());
        assert!(!s.router.kick(FIRST_DEVICE_PORT));
        front_state(&mut s, state::CLOSED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "6");
        // The frontend driver comes back: the device is offered again and reconnects.
        front_state(&mut s, state::INITIALISING);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "2");
        front_state(&mut s, state::CONNECTED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "4");
        s.bus.shutdown();
        assert!(s.channels.bound.lock().unwrap().is_empty());
    }

    #[test]
    fn a_handshake_stuck_before_connected_is_reported_once() {
        let mut s = setup(false, false);
        front_state(&mut s, state::INITIALISING);
        assert!(!s.bus.devices[0].front_seen.2);
        let long_ago = std::time::Instant::now() - HANDSHAKE_REPORT_AFTER - Duration::from_secs(1);
        s.bus.devices[0].front_seen.1 = long_ago;
        s.bus.reconcile(&mut s.xs);
        assert!(s.bus.devices[0].front_seen.2, "reported");
        // A change of state starts the clock again.
        front_state(&mut s, state::CLOSED);
        assert!(!s.bus.devices[0].front_seen.2);
        s.bus.shutdown();
    }

    #[test]
    fn a_failed_connect_is_reported_and_closes_the_backend() {
        let mut s = setup(true, false);
        s.xs.write(&format!("{FRONT}/event-channel"), b"5").unwrap();
        front_state(&mut s, state::INITIALISED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "5");
        assert_eq!(
            read(&mut s.xs, "/local/domain/0/error/backend/vbd/1/51712/error"),
            "no ring"
        );
        assert!(s.channels.bound.lock().unwrap().is_empty());
    }

    #[test]
    fn a_bad_event_channel_is_refused() {
        let mut s = setup(false, false);
        s.channels.refuse.store(true, Ordering::SeqCst);
        s.xs.write(&format!("{FRONT}/event-channel"), b"4096")
            .unwrap();
        front_state(&mut s, state::INITIALISED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "5");
        let mut s = setup(false, false);
        s.xs.write(&format!("{FRONT}/event-channel"), b"five")
            .unwrap();
        front_state(&mut s, state::CONNECTED);
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "5");
    }

    #[test]
    fn a_data_path_that_breaks_closes_the_backend() {
        let mut s = setup(false, true);
        s.xs.write(&format!("{FRONT}/event-channel"), b"5").unwrap();
        front_state(&mut s, state::INITIALISED);
        wait_served(&s, 1);
        for _ in 0..500 {
            s.bus.reconcile(&mut s.xs);
            if read(&mut s.xs, &format!("{BACK}/state")) == "5" {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(read(&mut s.xs, &format!("{BACK}/state")), "5");
        assert!(s.channels.bound.lock().unwrap().is_empty());
    }
}
