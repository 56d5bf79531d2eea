//! The client side of the control socket, for `pvkvm remote`.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::{self, HttpError, Response};

/// The byte that detaches an attached console: Ctrl-], as in `xl console`.
pub const DETACH: u8 = 0x1d;

/// How long a request may take (a shutdown or pause is answered at once; the guest
/// acts on a shutdown later).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A call through the control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach the control socket {path}")]
    Connect {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The request could not be sent.
    #[error("cannot send the request")]
    Send(#[source] io::Error),
    /// The answer could not be read.
    #[error("cannot read the answer")]
    Answer(#[source] HttpError),
    /// The VMM refused.
    #[error("the VMM refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The terminal or the connection failed while attached.
    #[error("the console connection failed")]
    Console(#[source] io::Error),
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let _ = s.set_read_timeout(Some(CALL_TIMEOUT));
    let _ = s.set_write_timeout(Some(CALL_TIMEOUT));
    Ok(s)
}

fn refused(r: &Response) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
    ClientError::Refused {
        status: r.status,
        message,
    }
}

/// Sends `method path` and returns the JSON body (None for `204`); a `4xx`/`5xx`
/// becomes [`ClientError::Refused`].
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<Option<serde_json::Value>, ClientError> {
    let mut s = connect(socket)?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(ClientError::Send)?;
    let r = http::read_response(&mut s).map_err(ClientError::Answer)?;
    match r.status {
        200 => Ok(serde_json::from_slice(&r.body).ok()),
        204 => Ok(None),
        _ => Err(refused(&r)),
    }
}

/// Attaches this terminal to the guest's console until Ctrl-] (or until the domain
/// ends). The terminal is raw while attached and restored on every way out.
pub fn attach_console(socket: &Path) -> Result<(), ClientError> {
    let mut s = connect(socket)?;
    let req = "GET /api/v1/vm.console HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: console\r\n\r\n";
    s.write_all(req.as_bytes()).map_err(ClientError::Send)?;
    let r = http::read_response(&mut s).map_err(ClientError::Answer)?;
    if r.status != 101 {
        return Err(refused(&r));
    }
    let _ = s.set_read_timeout(None);
    let _raw = crate::backends::console::RawTerminal::new().ok();
    eprint!("pvkvm: attached to the guest's console; Ctrl-] detaches\r\n");
    let stdin = io::stdin();
    let fd = stdin.as_raw_fd();
    let result = pump(&mut s, fd, &mut stdin.lock(), io::stdout().lock());
    eprint!("\r\npvkvm: detached\r\n");
    result
}

/// Copies the console to `out` and `input` to the console until the connection ends or
/// `input` sends [`DETACH`] (or ends).
fn pump(
    s: &mut UnixStream,
    input_fd: std::os::fd::RawFd,
    input: &mut impl Read,
    mut out: impl Write,
) -> Result<(), ClientError> {
    let mut buf = [0u8; 4096];
    let mut input_open = true;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if input_open { input_fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ClientError::Console(e));
        }
        if fds[0].revents != 0 {
            let n = s.read(&mut buf).map_err(ClientError::Console)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n]).map_err(ClientError::Console)?;
            out.flush().map_err(ClientError::Console)?;
        }
        if fds[1].revents != 0 {
            let n = input.read(&mut buf).map_err(ClientError::Console)?;
            if n == 0 {
                input_open = false;
                continue;
            }
            let (send, detach) = match buf[..n].iter().position(|&b| b == DETACH) {
                Some(i) => (&buf[..i], true),
                None => (&buf[..n], false),
            };
            s.write_all(send).map_err(ClientError::Console)?;
            if detach {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pump_forwards_both_ways_and_ctrl_bracket_detaches() {
        let (mut ours, mut vmm) = UnixStream::pair().unwrap();
        let (mut input_w, mut input_r) = UnixStream::pair().unwrap();
        vmm.write_all(b"login: ").unwrap();
        input_w.write_all(b"root\n\x1dafter").unwrap();
        let mut out = Vec::new();
        let fd = input_r.as_raw_fd();
        pump(&mut ours, fd, &mut input_r, &mut out).unwrap();
        assert!(out.is_empty() || out == b"login: ");
        let mut got = [0u8; 5];
        vmm.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"root\n");
        vmm.set_nonblocking(true).unwrap();
        let mut rest = [0u8; 8];
        assert!(vmm.read(&mut rest).is_err(), "nothing after Ctrl-] is sent");
    }

    #[test]
    fn the_pump_ends_when_the_domain_does() {
        let (mut ours, vmm) = UnixStream::pair().unwrap();
        let (_input_w, mut input_r) = UnixStream::pair().unwrap();
        drop(vmm);
        let mut out = Vec::new();
        let fd = input_r.as_raw_fd();
        pump(&mut ours, fd, &mut input_r, &mut out).unwrap();
    }
}
