//! Consoles attached through the control socket (`pvkvm remote console`): each gets a
//! copy of the guest's output from the moment it attaches, as `xl console` does.
//!
//! A client that does not keep up is detached rather than let it stall the backends'
//! thread: each write waits at most [`WRITE_TIMEOUT`].

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long one write to an attached client may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// The most clients attached at once.
pub const MAX_ATTACHED: usize = 8;

/// The clients attached to one console; cloned handles share them.
#[derive(Clone, Default)]
pub struct ConsoleMirror {
    inner: Arc<Mutex<Attached>>,
}

#[derive(Default)]
struct Attached {
    next_id: u64,
    clients: Vec<(u64, UnixStream)>,
}

impl ConsoleMirror {
    /// Attaches a client; returns its id, or None when [`MAX_ATTACHED`] are attached.
    pub fn attach(&self, stream: UnixStream) -> Option<u64> {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut a = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if a.clients.len() >= MAX_ATTACHED {
            return None;
        }
        let id = a.next_id;
        a.next_id += 1;
        a.clients.push((id, stream));
        Some(id)
    }

    /// Detaches a client (it left, or its connection broke).
    pub fn detach(&self, id: u64) {
        let mut a = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        a.clients.retain(|(i, _)| *i != id);
    }

    /// How many clients are attached.
    pub fn attached(&self) -> usize {
        let a = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        a.clients.len()
    }

    /// Copies guest output to every client; a client whose write fails or times out is
    /// detached (its connection is shut down, so its reader ends too).
    pub fn write(&self, data: &[u8]) {
        let mut a = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        a.clients.retain_mut(|(_, s)| {
            let ok = s.write_all(data).is_ok();
            if !ok {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            ok
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn output_reaches_every_attached_client_until_it_detaches() {
        let m = ConsoleMirror::default();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        let ida = m.attach(a).unwrap();
        m.attach(b).unwrap();
        m.write(b"hello");
        let mut buf = [0u8; 5];
        a_peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        b_peer.read_exact(&mut buf).unwrap();
        m.detach(ida);
        assert_eq!(m.attached(), 1);
        m.write(b"x");
        b_peer.read_exact(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], b'x');
    }

    #[test]
    fn a_gone_client_is_dropped_and_the_limit_holds() {
        let m = ConsoleMirror::default();
        let (a, a_peer) = UnixStream::pair().unwrap();
        m.attach(a).unwrap();
        drop(a_peer);
        m.write(b"lost");
        assert_eq!(m.attached(), 0);
        let mut keep = Vec::new();
        for _ in 0..MAX_ATTACHED {
            let (s, peer) = UnixStream::pair().unwrap();
            assert!(m.attach(s).is_some());
            keep.push(peer);
        }
        let (s, _peer) = UnixStream::pair().unwrap();
        assert!(m.attach(s).is_none());
    }

    #[test]
    fn a_client_that_does_not_read_is_detached_not_waited_for() {
        let m = ConsoleMirror::default();
        let (a, _a_peer) = UnixStream::pair().unwrap();
        m.attach(a).unwrap();
        let chunk = vec![b'.'; 64 << 10];
        let start = std::time::Instant::now();
        for _ in 0..64 {
            m.write(&chunk);
            if m.attached() == 0 {
                break;
            }
        }
        assert_eq!(m.attached(), 0);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
