//! The control socket (`pvkvm run --api-socket PATH`): HTTP/1.1 with JSON bodies over a
//! Unix socket, in the style of Cloud Hypervisor's and Firecracker's APIs, and the
//! client that `pvkvm remote` uses.
//!
//! | request                        | effect                                            |
//! |--------------------------------|---------------------------------------------------|
//! | `GET /api/v1/vmm.ping`         | `{"version": ...}`                                |
//! | `GET /api/v1/vm.info`          | state, uptime, memory, devices (JSON)             |
//! | `PUT /api/v1/vm.pause`         | the vCPU stops running guest code (`xl pause`)    |
//! | `PUT /api/v1/vm.resume`        | and runs again (`xl unpause`)                     |
//! | `PUT /api/v1/vm.shutdown`      | asks the guest to power off (`control/shutdown`)  |
//! | `PUT /api/v1/vm.reboot`        | asks the guest to reboot (`control/shutdown`)     |
//! | `PUT /api/v1/vm.destroy`       | ends the domain at once (`xl destroy`)            |
//! | `GET /api/v1/vm.console` + `Connection: Upgrade` | `101`, then the console's bytes both ways (`xl console`) |
//!
//! Success without a body is `204`; a refusal is `4xx`/`5xx` with `{"error": "..."}`.
//! The socket is created with mode 0600: whoever can reach it controls the domain.
//! Each request gets its own thread, at most [`MAX_CONNECTIONS`] at once; a request is
//! read within [`REQUEST_TIMEOUT`] and bounded in size ([`http`]).

pub mod client;
pub mod http;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backends::console::ConsoleMirror;

/// The most requests served at once; more get `503`.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks of the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Describe the domain.
    Info,
    /// Stop running the guest.
    Pause,
    /// Run it again.
    Resume,
    /// Ask the guest to power off.
    Shutdown,
    /// Ask the guest to reboot.
    Reboot,
    /// End the domain now.
    Destroy,
}

/// Why the VMM refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// One sentence for a person.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// The VMM's answer to a [`Command`]: a JSON body, nothing, or a refusal.
pub type Reply = Result<Option<serde_json::Value>, Refusal>;

/// What the server needs from the VMM.
pub struct Hooks {
    /// Carries out a command (on the VMM's side; it may block briefly).
    pub control: Box<dyn Fn(Command) -> Reply + Send + Sync>,
    /// The guest's console, when it can be attached.
    pub console: Option<ConsoleHooks>,
}

/// The console as attached clients reach it.
pub struct ConsoleHooks {
    /// Where the console's output is copied for attached clients.
    pub mirror: ConsoleMirror,
    /// Gives typed bytes to the guest; false once the domain is gone.
    pub input: Box<dyn Fn(Vec<u8>) -> bool + Send + Sync>,
}

/// The control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process answers on the path.
    #[error("the control socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// The socket could not be created.
    #[error("cannot create the control socket {path}")]
    Bind {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A running control socket; dropping it closes the socket and removes its file.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Creates the socket at `path` (replacing a stale one nobody answers on) and
    /// serves it on a thread.
    pub fn start(path: &Path, hooks: Hooks) -> Result<ApiServer, Error> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| Error::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let hooks = Arc::new(hooks);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || accept_loop(listener, &thread_stop, hooks))
            .map_err(bind_err)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, stop: &AtomicBool, hooks: Arc<Hooks>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let body = serde_json::json!({"error": "too many requests at once"});
            let _ = http::write_response(&mut stream, 503, Some(&body));
            continue;
        }
        let hooks = hooks.clone();
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .name("api-request".into())
            .spawn(move || {
                serve(stream, &hooks);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Ping,
    Command(Command),
    Console,
}

fn route(method: &str, path: &str) -> Result<Route, Refusal> {
    let (want, route) = match path {
        "/api/v1/vmm.ping" => ("GET", Route::Ping),
        "/api/v1/vm.info" => ("GET", Route::Command(Command::Info)),
        "/api/v1/vm.pause" => ("PUT", Route::Command(Command::Pause)),
        "/api/v1/vm.resume" => ("PUT", Route::Command(Command::Resume)),
        "/api/v1/vm.shutdown" => ("PUT", Route::Command(Command::Shutdown)),
        "/api/v1/vm.reboot" => ("PUT", Route::Command(Command::Reboot)),
        "/api/v1/vm.destroy" => ("PUT", Route::Command(Command::Destroy)),
        "/api/v1/vm.console" => ("GET", Route::Console),
        _ => return Err(Refusal::new(404, format!("no such endpoint: {path}"))),
    };
    // The console also answers PUT, as some clients upgrade with it.
    if method == want || (route == Route::Console && method == "PUT") {
        Ok(route)
    } else {
        Err(Refusal::new(
            405,
            format!("{path} takes {want}, not {method}"),
        ))
    }
}

fn refuse(stream: &mut UnixStream, r: &Refusal) {
    let body = serde_json::json!({ "error": r.message });
    let _ = http::write_response(stream, r.status, Some(&body));
}

fn serve(mut stream: UnixStream, hooks: &Hooks) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let req = match http::read_request(&mut stream) {
        Ok(r) => r,
        Err(e) => return refuse(&mut stream, &Refusal::new(400, e.to_string())),
    };
    match route(&req.method, &req.path) {
        Err(r) => refuse(&mut stream, &r),
        Ok(Route::Ping) => {
            let body = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") });
            let _ = http::write_response(&mut stream, 200, Some(&body));
        }
        Ok(Route::Command(c)) => match (hooks.control)(c) {
            Ok(Some(body)) => {
                let _ = http::write_response(&mut stream, 200, Some(&body));
            }
            Ok(None) => {
                let _ = http::write_response(&mut stream, 204, None);
            }
            Err(r) => refuse(&mut stream, &r),
        },
        Ok(Route::Console) => match (&hooks.console, req.upgrade) {
            (None, _) => refuse(
                &mut stream,
                &Refusal::new(409, "this domain's console cannot be attached"),
            ),
            (Some(_), false) => refuse(
                &mut stream,
                &Refusal::new(400, "attach the console with 'Connection: Upgrade'"),
            ),
            (Some(console), true) => attach_console(stream, console),
        },
    }
}

/// Hands the connection to the console: output through the mirror, input read here
/// until the client goes (or the domain does).
fn attach_console(mut stream: UnixStream, console: &ConsoleHooks) {
    let Ok(out) = stream.try_clone() else { return };
    if http::write_response(&mut stream, 101, None).is_err() {
        return;
    }
    let Some(id) = console.mirror.attach(out) else {
        let _ = io::Write::write_all(&mut stream, b"\r\npvkvm: too many consoles attached\r\n");
        return;
    };
    let _ = stream.set_read_timeout(None);
    let mut buf = [0u8; 1024];
    loop {
        match io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !(console.input)(buf[..n].to_vec()) {
                    break;
                }
            }
        }
    }
    console.mirror.detach(id);
}

#[cfg(test)]
mod tests;
