//! Tests: a fake xenstore page and a minimal guest-side client.

use super::ring::{read_u32, write_u32};
use super::wire::*;
use super::*;

const DOMID: u32 = 3;

/// The guest's side of the page.
struct Client {
    page: Box<[u8; 4096]>,
    next_req: u32,
    rx: Vec<u8>,
    /// Watch events seen so far (path, token).
    events: Vec<(String, String)>,
}

impl Client {
    fn new() -> Self {
        Self {
            page: Box::new([0u8; 4096]),
            next_req: 1,
            rx: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Starts the indices at `base` (to exercise wrap-around of u32 and ring).
    fn with_base(base: u32) -> Self {
        let mut c = Self::new();
        for off in [OFF_REQ_CONS, OFF_REQ_PROD, OFF_RSP_CONS, OFF_RSP_PROD] {
            write_u32(c.page.as_mut(), off, base);
        }
        c
    }

    fn req_free(&self) -> usize {
        let cons = read_u32(self.page.as_ref(), OFF_REQ_CONS);
        let prod = read_u32(self.page.as_ref(), OFF_REQ_PROD);
        XENSTORE_RING_SIZE - prod.wrapping_sub(cons) as usize
    }

    /// Puts raw bytes into the request ring; returns how many fit.
    fn push_raw(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.req_free());
        let prod = read_u32(self.page.as_ref(), OFF_REQ_PROD);
        for (i, b) in bytes[..n].iter().enumerate() {
            let idx = (prod.wrapping_add(i as u32) as usize) & (XENSTORE_RING_SIZE - 1);
            self.page[OFF_REQ + idx] = *b;
        }
        write_u32(
            self.page.as_mut(),
            OFF_REQ_PROD,
            prod.wrapping_add(n as u32),
        );
        n
    }

    fn msg(ty: u32, req_id: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
        let hdr = MsgHeader {
            ty,
            req_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let mut v = hdr.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// Queues a request (which must fit); returns its req_id.
    fn send(&mut self, ty: u32, tx: u32, payload: &[u8]) -> u32 {
        let id = self.next_req;
        self.next_req += 1;
        let m = Self::msg(ty, id, tx, payload);
        assert_eq!(self.push_raw(&m), m.len(), "request ring full");
        id
    }

    /// Takes everything in the response ring; returns complete replies (events are
    /// stored in `events`).
    fn drain(&mut self) -> Vec<(MsgHeader, Vec<u8>)> {
        let cons = read_u32(self.page.as_ref(), OFF_RSP_CONS);
        let prod = read_u32(self.page.as_ref(), OFF_RSP_PROD);
        let n = prod.wrapping_sub(cons) as usize;
        assert!(n <= XENSTORE_RING_SIZE);
        for i in 0..n {
            let idx = (cons.wrapping_add(i as u32) as usize) & (XENSTORE_RING_SIZE - 1);
            self.rx.push(self.page[OFF_RSP + idx]);
        }
        write_u32(self.page.as_mut(), OFF_RSP_CONS, prod);
        let mut out = Vec::new();
        while self.rx.len() >= HEADER_LEN {
            let hdr = MsgHeader::from_bytes(self.rx[..HEADER_LEN].try_into().unwrap());
            let total = HEADER_LEN + hdr.len as usize;
            assert!(hdr.len as usize <= XENSTORE_PAYLOAD_MAX);
            if self.rx.len() < total {
                break;
            }
            let body = self.rx[HEADER_LEN..total].to_vec();
            self.rx.drain(..total);
            if hdr.ty == XS_WATCH_EVENT {
                assert_eq!((hdr.req_id, hdr.tx_id), (0, 0));
                let s = get_strings(&body);
                assert_eq!(s.len(), 2);
                self.events.push((
                    String::from_utf8(s[0].to_vec()).unwrap(),
                    String::from_utf8(s[1].to_vec()).unwrap(),
                ));
            } else {
                out.push((hdr, body));
            }
        }
        out
    }

    fn take_events(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.events)
    }
}

/// One request, processed and answered: (type, payload).
fn call(xs: &mut Xenstore, c: &mut Client, ty: u32, tx: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    let id = c.next_req;
    c.next_req += 1;
    let m = Client::msg(ty, id, tx, payload);
    // Requests longer than the ring are streamed through it.
    let mut off = 0;
    while off < m.len() {
        off += c.push_raw(&m[off..]);
        xs.process(c.page.as_mut());
    }
    let mut replies = Vec::new();
    for _ in 0..16 {
        xs.process(c.page.as_mut());
        replies.extend(c.drain());
        if !replies.is_empty() {
            break;
        }
    }
    assert_eq!(replies.len(), 1, "expected one reply");
    let (h, b) = replies.pop().unwrap();
    assert_eq!(h.req_id, id);
    assert_eq!(h.tx_id, tx);
    (h.ty, b)
}

fn nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn err(e: &str) -> (u32, Vec<u8>) {
    (XS_ERROR, nul(e))
}

fn ok(ty: u32) -> (u32, Vec<u8>) {
    (ty, nul("OK"))
}

fn read(xs: &mut Xenstore, c: &mut Client, tx: u32, path: &str) -> (u32, Vec<u8>) {
    call(xs, c, XS_READ, tx, &nul(path))
}

fn write(xs: &mut Xenstore, c: &mut Client, tx: u32, path: &str, v: &str) -> (u32, Vec<u8>) {
    let mut p = nul(path);
    p.extend_from_slice(v.as_bytes());
    call(xs, c, XS_WRITE, tx, &p)
}

fn watch(xs: &mut Xenstore, c: &mut Client, path: &str, token: &str) -> (u32, Vec<u8>) {
    let mut p = nul(path);
    p.extend_from_slice(&nul(token));
    call(xs, c, XS_WATCH, 0, &p)
}

fn strings(b: &[u8]) -> Vec<String> {
    get_strings(b)
        .into_iter()
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

fn setup() -> (Xenstore, Client) {
    (Xenstore::new(DOMID), Client::new())
}

fn tx_start(xs: &mut Xenstore, c: &mut Client) -> u32 {
    let (ty, b) = call(xs, c, XS_TRANSACTION_START, 0, b"\0");
    assert_eq!(
        ty,
        XS_TRANSACTION_START,
        "{:?}",
        String::from_utf8_lossy(&b)
    );
    strings(&b)[0].parse().unwrap()
}

#[test]
fn xenstore_default_tree() {
    let (mut xs, mut c) = setup();
    assert_eq!(
        read(&mut xs, &mut c, 0, "name"),
        (XS_READ, b"pvkvm-3".to_vec())
    );
    assert_eq!(read(&mut xs, &mut c, 0, "domid"), (XS_READ, b"3".to_vec()));
    assert_eq!(
        read(&mut xs, &mut c, 0, "memory/target"),
        (XS_READ, b"262144".to_vec())
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "memory/static-max"),
        (XS_READ, b"262144".to_vec())
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/3/console/type"),
        (XS_READ, b"xenconsoled".to_vec())
    );
    for n in [
        "console/port",
        "console/ring-ref",
        "console/limit",
        "console/tty",
    ] {
        assert_eq!(read(&mut xs, &mut c, 0, n).0, XS_READ, "{n}");
    }
    assert_eq!(
        read(&mut xs, &mut c, 0, "control/shutdown"),
        (XS_READ, vec![])
    );
    assert_eq!(
        read(
            &mut xs,
            &mut c,
            0,
            "control/platform-feature-multiprocessor-suspend"
        ),
        (XS_READ, b"1".to_vec())
    );
    assert_eq!(read(&mut xs, &mut c, 0, "vm").0, XS_READ);
    assert_eq!(read(&mut xs, &mut c, 0, "data"), (XS_READ, vec![]));
    let (ty, b) = call(&mut xs, &mut c, XS_DIRECTORY, 0, &nul("device"));
    assert_eq!(
        (ty, strings(&b)),
        (XS_DIRECTORY, vec!["suspend".to_string()])
    );
    let (ty, b) = call(&mut xs, &mut c, XS_DIRECTORY, 0, &nul("cpu"));
    assert_eq!((ty, strings(&b)), (XS_DIRECTORY, vec!["0".to_string()]));
    // Dom0's area: not readable by the guest; the VMM sees it.
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/0/backend"),
        err("EACCES")
    );
    assert_eq!(xs.directory("/local/domain/0/backend"), Some(vec![]));
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/0/nothere"),
        err("EACCES")
    );
    // Permissions as libxl sets them.
    let perms = |xs: &mut Xenstore, c: &mut Client, p: &str| -> Vec<String> {
        let (ty, b) = call(xs, c, XS_GET_PERMS, 0, &nul(p));
        assert_eq!(ty, XS_GET_PERMS, "{p}");
        strings(&b)
    };
    assert_eq!(perms(&mut xs, &mut c, "/local/domain/3"), vec!["n0", "r3"]);
    assert_eq!(perms(&mut xs, &mut c, "name"), vec!["n0", "r3"]);
    assert_eq!(perms(&mut xs, &mut c, "control"), vec!["n0", "r3"]);
    assert_eq!(perms(&mut xs, &mut c, "control/shutdown"), vec!["n3"]);
    assert_eq!(perms(&mut xs, &mut c, "data"), vec!["n3"]);
    assert_eq!(perms(&mut xs, &mut c, "console"), vec!["n3", "r0"]);
    assert_eq!(perms(&mut xs, &mut c, "console/port"), vec!["n0", "r3"]);
    assert_eq!(
        perms(&mut xs, &mut c, "@releaseDomain"),
        vec!["n0", "r32756"]
    );
    // Read-only for the guest: EACCES on write; may write what it owns.
    assert_eq!(write(&mut xs, &mut c, 0, "name", "x"), err("EACCES"));
    assert_eq!(
        write(&mut xs, &mut c, 0, "device/vbd/768/state", "1"),
        err("EACCES")
    );
    assert_eq!(
        write(&mut xs, &mut c, 0, "control/shutdown", ""),
        ok(XS_WRITE)
    );
    assert_eq!(
        write(&mut xs, &mut c, 0, "control/feature-poweroff", "1"),
        ok(XS_WRITE)
    );
    assert_eq!(
        write(&mut xs, &mut c, 0, "control/feature-new", "1"),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("3")),
        (XS_GET_DOMAIN_PATH, nul("/local/domain/3"))
    );
}

#[test]
fn xenstore_read_write_mkdir_rm_directory() {
    let (mut xs, mut c) = setup();
    assert_eq!(read(&mut xs, &mut c, 0, "data/a"), err("ENOENT"));
    assert_eq!(write(&mut xs, &mut c, 0, "data/a/b/c", "v1"), ok(XS_WRITE));
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/a/b/c"),
        (XS_READ, b"v1".to_vec())
    );
    assert_eq!(read(&mut xs, &mut c, 0, "data/a/b"), (XS_READ, vec![]));
    // Binary values with nuls.
    let mut p = nul("data/bin");
    p.extend_from_slice(b"x\0y\0");
    assert_eq!(call(&mut xs, &mut c, XS_WRITE, 0, &p), ok(XS_WRITE));
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/bin"),
        (XS_READ, b"x\0y\0".to_vec())
    );
    // Absolute and relative paths name the same node; the guest owns what it makes.
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/3/data/a/b/c"),
        (XS_READ, b"v1".to_vec())
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_PERMS, 0, &nul("data/a/b")),
        (XS_GET_PERMS, [nul("n3")].concat())
    );
    assert_eq!(xs.read("data/a/b/c"), Some(b"v1".to_vec()));
    // MKDIR keeps existing values.
    assert_eq!(
        call(&mut xs, &mut c, XS_MKDIR, 0, &nul("data/a/b/c")),
        ok(XS_MKDIR)
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/a/b/c"),
        (XS_READ, b"v1".to_vec())
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_MKDIR, 0, &nul("data/d/e")),
        ok(XS_MKDIR)
    );
    let (ty, b) = call(&mut xs, &mut c, XS_DIRECTORY, 0, &nul("data"));
    assert_eq!(ty, XS_DIRECTORY);
    assert_eq!(strings(&b), vec!["a", "bin", "d"]);
    // RM: subtree goes; missing node with existing parent is fine; missing parent
    // is ENOENT.
    assert_eq!(call(&mut xs, &mut c, XS_RM, 0, &nul("data/a")), ok(XS_RM));
    assert_eq!(read(&mut xs, &mut c, 0, "data/a/b/c"), err("ENOENT"));
    assert_eq!(xs.read("data/a/b"), None);
    assert_eq!(call(&mut xs, &mut c, XS_RM, 0, &nul("data/a")), ok(XS_RM));
    assert_eq!(
        call(&mut xs, &mut c, XS_RM, 0, &nul("data/a/x")),
        err("ENOENT")
    );
    assert_eq!(call(&mut xs, &mut c, XS_RM, 0, &nul("name")), err("EACCES"));
    let (_, b) = call(&mut xs, &mut c, XS_DIRECTORY, 0, &nul("data"));
    assert_eq!(strings(&b), vec!["bin", "d"]);
    // Malformed payloads.
    assert_eq!(call(&mut xs, &mut c, XS_READ, 0, b"data"), err("EINVAL"));
    assert_eq!(
        call(&mut xs, &mut c, XS_READ, 0, b"data\0x\0"),
        err("EINVAL")
    );
    assert_eq!(call(&mut xs, &mut c, XS_READ, 0, b""), err("EINVAL"));
    assert_eq!(call(&mut xs, &mut c, XS_WRITE, 0, b"data/x"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, ""), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "data/"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "data//x"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "data/x y"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "data/x.y"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "@releaseDomain"), err("EINVAL"));
    assert_eq!(read(&mut xs, &mut c, 0, "/"), err("EACCES"));
    // Path length: below /local/domain/3/, 2047 bytes are fine, 2048 are not.
    // (Short components: a long name would overflow the parent's node size.)
    let deep = |n: usize| {
        let mut p = String::from("data");
        while p.len() + 10 < n {
            p.push_str("/xxxxxxxxx");
        }
        p.push('/');
        while p.len() < n {
            p.push('y');
        }
        p
    };
    assert_eq!(deep(2047).len(), 2047);
    assert_eq!(write(&mut xs, &mut c, 0, &deep(2047), "1"), ok(XS_WRITE));
    assert_eq!(write(&mut xs, &mut c, 0, &deep(2048), "1"), err("EINVAL"));
    let abs = format!("/local/domain/3/{}", deep(2047));
    assert_eq!(read(&mut xs, &mut c, 0, &abs), (XS_READ, b"1".to_vec()));
    let long = format!("data/{}", "x".repeat(2030));
    assert_eq!(write(&mut xs, &mut c, 0, &long, "1"), err("ENOSPC"));
    // Value size: the node (16 + 8 per perm + value + children) must stay below 2048.
    assert_eq!(
        write(&mut xs, &mut c, 0, "data/big", &"v".repeat(2000)),
        ok(XS_WRITE)
    );
    assert_eq!(
        write(&mut xs, &mut c, 0, "data/big", &"v".repeat(2040)),
        err("ENOSPC")
    );
}

#[test]
fn xenstore_directory_part() {
    let (mut xs, mut c) = setup();
    // The VMM is not bound by the node-size quota: make a long child list.
    let mut names = Vec::new();
    for i in 0..400 {
        let n = format!("child-with-a-long-name-{i:04}");
        xs.mkdir(&format!("/local/domain/3/data/many/{n}")).unwrap();
        names.push(n);
    }
    let (ty, b) = call(&mut xs, &mut c, XS_DIRECTORY, 0, &nul("data/many"));
    assert_eq!(b, nul("E2BIG"));
    assert_eq!(ty, XS_ERROR);
    let mut got = Vec::new();
    let mut off = 0usize;
    let mut gen0 = None;
    loop {
        let mut p = nul("data/many");
        p.extend_from_slice(&nul(&off.to_string()));
        let (ty, b) = call(&mut xs, &mut c, XS_DIRECTORY_PART, 0, &p);
        assert_eq!(ty, XS_DIRECTORY_PART);
        assert!(b.len() <= XENSTORE_PAYLOAD_MAX);
        let s = strings(&b);
        let gen = s[0].clone();
        assert_eq!(*gen0.get_or_insert(gen.clone()), gen);
        let done = b.ends_with(b"\0\0");
        let part: Vec<String> = s[1..].iter().filter(|x| !x.is_empty()).cloned().collect();
        off += part.iter().map(|x| x.len() + 1).sum::<usize>();
        got.extend(part);
        if done {
            break;
        }
    }
    assert_eq!(got, names);
    // Offset past the end: generation and an empty string.
    let mut p = nul("data/many");
    p.extend_from_slice(&nul("999999"));
    let (_, b) = call(&mut xs, &mut c, XS_DIRECTORY_PART, 0, &p);
    assert!(b.ends_with(b"\0\0"));
    assert_eq!(
        call(&mut xs, &mut c, XS_DIRECTORY_PART, 0, &nul("data")),
        err("EINVAL")
    );
    // Generation changes when the directory changes.
    xs.write("data/many/more", b"").unwrap();
    let mut p = nul("data/many");
    p.extend_from_slice(&nul("0"));
    let (_, b) = call(&mut xs, &mut c, XS_DIRECTORY_PART, 0, &p);
    assert_ne!(strings(&b)[0], gen0.unwrap());
}

#[test]
fn xenstore_perms() {
    let (mut xs, mut c) = setup();
    write(&mut xs, &mut c, 0, "data/p", "1");
    let sp = |path: &str, perms: &[&str]| {
        let mut p = nul(path);
        for x in perms {
            p.extend_from_slice(&nul(x));
        }
        p
    };
    assert_eq!(
        call(
            &mut xs,
            &mut c,
            XS_SET_PERMS,
            0,
            &sp("data/p", &["n3", "r0"])
        ),
        ok(XS_SET_PERMS)
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_PERMS, 0, &nul("data/p")),
        (XS_GET_PERMS, [nul("n3"), nul("r0")].concat())
    );
    // Owner change is EPERM for a domain; unknown owner ENOENT; bad syntax EINVAL.
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("data/p", &["n0"])),
        err("EPERM")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("data/p", &["n7"])),
        err("ENOENT")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("data/p", &["x3"])),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("data/p", &["r"])),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("data/p", &["r3x"])),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &nul("data/p")),
        err("EINVAL")
    );
    assert_eq!(
        call(
            &mut xs,
            &mut c,
            XS_SET_PERMS,
            0,
            &sp("data/p", &["n3", "r0", "r1", "r2", "r4"])
        ),
        err("ENOSPC")
    );
    // Hex ids parse as strtol(.., 0) does; unknown domains are kept but ignored.
    assert_eq!(
        call(
            &mut xs,
            &mut c,
            XS_SET_PERMS,
            0,
            &sp("data/p", &["n0x3", "b9"])
        ),
        ok(XS_SET_PERMS)
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_PERMS, 0, &nul("data/p")),
        (XS_GET_PERMS, [nul("n3"), nul("b9")].concat())
    );
    // Not owner: EACCES.
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_PERMS, 0, &sp("name", &["n3"])),
        err("EACCES")
    );
    // The VMM makes a node the guest can read but not write, then write-only.
    xs.write("/local/domain/0/backend/vbd/3/768/state", b"1")
        .unwrap();
    xs.set_perms(
        "/local/domain/0/backend/vbd/3/768",
        &[Perm::none(0), Perm::read(DOMID)],
    )
    .unwrap();
    xs.set_perms(
        "/local/domain/0/backend/vbd/3/768/state",
        &[Perm::none(0), Perm::read(DOMID)],
    )
    .unwrap();
    assert_eq!(
        read(
            &mut xs,
            &mut c,
            0,
            "/local/domain/0/backend/vbd/3/768/state"
        ),
        (XS_READ, b"1".to_vec())
    );
    assert_eq!(
        write(
            &mut xs,
            &mut c,
            0,
            "/local/domain/0/backend/vbd/3/768/state",
            "2"
        ),
        err("EACCES")
    );
    // Creating below a readable (not writable) node: EACCES.
    assert_eq!(
        write(
            &mut xs,
            &mut c,
            0,
            "/local/domain/0/backend/vbd/3/768/x",
            "2"
        ),
        err("EACCES")
    );
    // Missing node below a readable parent: ENOENT; below an unreadable one: EACCES.
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/0/backend/vbd/3/768/nope"),
        err("ENOENT")
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "/local/domain/0/backend/vbd/3/nope"),
        err("EACCES")
    );
    xs.set_perms(
        "/local/domain/0/backend/vbd/3/768/state",
        &[Perm::write(0), Perm::write(DOMID)],
    )
    .unwrap();
    assert_eq!(
        write(
            &mut xs,
            &mut c,
            0,
            "/local/domain/0/backend/vbd/3/768/state",
            "4"
        ),
        ok(XS_WRITE)
    );
    assert_eq!(
        read(
            &mut xs,
            &mut c,
            0,
            "/local/domain/0/backend/vbd/3/768/state"
        ),
        err("EACCES")
    );
    assert_eq!(
        xs.read("/local/domain/0/backend/vbd/3/768/state"),
        Some(b"4".to_vec())
    );
    assert_eq!(Perm::parse("b0x10"), Some(Perm::both(16)));
    assert_eq!(Perm::parse("q1"), None);
}

#[test]
fn xenstore_misc_ops() {
    let (mut xs, mut c) = setup();
    assert_eq!(
        call(&mut xs, &mut c, XS_CONTROL, 0, &nul("check")),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_INTRODUCE, 0, b"3\x001\x002\0"),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_RELEASE, 0, &nul("3")),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_IS_DOMAIN_INTRODUCED, 0, &nul("3")),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_RESUME, 0, &nul("3")),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_SET_TARGET, 0, b"3\x004\0"),
        err("EACCES")
    );
    assert_eq!(call(&mut xs, &mut c, XS_GET_QUOTA, 0, b""), err("EACCES"));
    assert_eq!(call(&mut xs, &mut c, XS_WATCH_EVENT, 0, b""), err("ENOSYS"));
    assert_eq!(call(&mut xs, &mut c, XS_ERROR, 0, b""), err("ENOSYS"));
    assert_eq!(call(&mut xs, &mut c, 20, 0, b""), err("ENOSYS"));
    assert_eq!(call(&mut xs, &mut c, 27, 0, b""), err("ENOSYS"));
    assert_eq!(call(&mut xs, &mut c, 0xffff, 0, b""), err("ENOSYS"));
    assert_eq!(call(&mut xs, &mut c, u32::MAX, 0, b""), err("ENOSYS"));
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_FEATURE, 0, b""),
        (XS_GET_FEATURE, nul("2"))
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_FEATURE, 0, &nul("3")),
        err("EACCES")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("65535")),
        (XS_GET_DOMAIN_PATH, nul("/local/domain/65535"))
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("")),
        (XS_GET_DOMAIN_PATH, nul("/local/domain/0"))
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("65536")),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("3x")),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_GET_DOMAIN_PATH, 0, &nul("-1")),
        err("EINVAL")
    );
    // Unknown transaction id: ENOENT (except for WATCH, which ignores it).
    assert_eq!(read(&mut xs, &mut c, 77, "name"), err("ENOENT"));
    assert_eq!(watch(&mut xs, &mut c, "data", "t").0, XS_WATCH);
    assert_eq!(
        call(&mut xs, &mut c, XS_RESET_WATCHES, 0, b"\0"),
        ok(XS_RESET_WATCHES)
    );
    c.take_events();
    xs.write("data/x", b"1").unwrap();
    xs.process(c.page.as_mut());
    c.drain();
    assert!(c.take_events().is_empty(), "watches were reset");
}

#[test]
fn xenstore_watches() {
    let (mut xs, mut c) = setup();
    assert_eq!(
        watch(&mut xs, &mut c, "control/shutdown", "tok1"),
        ok(XS_WATCH)
    );
    // Fired once on registration, with the path as given (relative).
    assert_eq!(
        c.take_events(),
        vec![("control/shutdown".to_string(), "tok1".to_string())]
    );
    assert_eq!(
        watch(&mut xs, &mut c, "control/shutdown", "tok1"),
        err("EEXIST")
    );
    assert_eq!(
        watch(&mut xs, &mut c, "/local/domain/3/data", "abs"),
        ok(XS_WATCH)
    );
    assert_eq!(
        watch(&mut xs, &mut c, "@releaseDomain", "rel"),
        ok(XS_WATCH)
    );
    assert_eq!(watch(&mut xs, &mut c, "bad path", "x"), err("EINVAL"));
    assert_eq!(
        call(&mut xs, &mut c, XS_WATCH, 0, &nul("data")),
        err("EINVAL")
    );
    c.take_events();

    // The VMM asks the guest to power off.
    xs.write("control/shutdown", b"poweroff").unwrap();
    assert!(xs.needs_poll());
    assert!(xs.process(c.page.as_mut()));
    assert!(!xs.needs_poll());
    c.drain();
    assert_eq!(
        c.take_events(),
        vec![("control/shutdown".to_string(), "tok1".to_string())]
    );
    // Guest writes and removals of children fire the parent's watch, with the
    // child's path.
    assert_eq!(write(&mut xs, &mut c, 0, "data/a/b", "1"), ok(XS_WRITE));
    assert_eq!(
        c.take_events(),
        vec![("/local/domain/3/data/a/b".to_string(), "abs".to_string())]
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_MKDIR, 0, &nul("data/m")),
        ok(XS_MKDIR)
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_MKDIR, 0, &nul("data/m")),
        ok(XS_MKDIR)
    );
    assert_eq!(
        c.take_events(),
        vec![("/local/domain/3/data/m".to_string(), "abs".to_string())]
    );
    // rm of a parent: exact events for nodes below it, a subtree event for it.
    assert_eq!(watch(&mut xs, &mut c, "data/a/b", "deep"), ok(XS_WATCH));
    c.take_events();
    assert_eq!(call(&mut xs, &mut c, XS_RM, 0, &nul("data/a")), ok(XS_RM));
    let mut ev = c.take_events();
    ev.sort();
    assert_eq!(
        ev,
        vec![
            ("/local/domain/3/data/a".to_string(), "abs".to_string()),
            ("data/a/b".to_string(), "deep".to_string()),
        ]
    );
    // Not fired for other paths, nor after UNWATCH.
    xs.write("/local/domain/3/datax", b"1").unwrap();
    let mut p = nul("data");
    p.extend_from_slice(&nul("other"));
    assert_eq!(call(&mut xs, &mut c, XS_UNWATCH, 0, &p), err("ENOENT"));
    let mut p = nul("/local/domain/3/data");
    p.extend_from_slice(&nul("abs"));
    assert_eq!(call(&mut xs, &mut c, XS_UNWATCH, 0, &p), ok(XS_UNWATCH));
    xs.write("data/z", b"1").unwrap();
    xs.process(c.page.as_mut());
    c.drain();
    assert!(c.take_events().is_empty());
    // A watch on "/" sees only what the guest may read (node or parent).
    assert_eq!(watch(&mut xs, &mut c, "/", "root"), ok(XS_WATCH));
    c.take_events();
    xs.write("/local/domain/0/backend/secret/x", b"1").unwrap();
    xs.write("/local/domain/3/memory/target", b"1024").unwrap();
    xs.process(c.page.as_mut());
    c.drain();
    assert_eq!(
        c.take_events(),
        vec![(
            "/local/domain/3/memory/target".to_string(),
            "root".to_string()
        )]
    );
    // Permission changes fire too; identical pending events are merged.
    xs.set_perms("data/z", &[Perm::none(DOMID), Perm::read(0)])
        .unwrap();
    xs.write("data/z", b"2").unwrap();
    xs.write("data/z", b"3").unwrap();
    xs.process(c.page.as_mut());
    c.drain();
    assert_eq!(
        c.take_events(),
        vec![("/local/domain/3/data/z".to_string(), "root".to_string())]
    );
    // Watch quota: 128 watches fail (127 allowed).
    let have = 3; // control/shutdown, @releaseDomain, data/a/b ... counted below
    let _ = have;
    let mut n = 0;
    loop {
        let (ty, b) = watch(&mut xs, &mut c, "data", &format!("q{n}"));
        if ty == XS_ERROR {
            assert_eq!(b, nul("ENOSPC"));
            break;
        }
        n += 1;
        assert!(n < 200);
        c.take_events();
    }
    assert_eq!(xs.watches.len(), quota::WATCHES - 1);
}

#[test]
fn xenstore_transactions() {
    let (mut xs, mut c) = setup();
    assert_eq!(watch(&mut xs, &mut c, "data", "w"), ok(XS_WATCH));
    c.take_events();
    // Commit: invisible until the end, then visible, with the watch fired.
    let t = tx_start(&mut xs, &mut c);
    assert_ne!(t, 0);
    assert_eq!(write(&mut xs, &mut c, t, "data/t1", "a"), ok(XS_WRITE));
    assert_eq!(
        read(&mut xs, &mut c, t, "data/t1"),
        (XS_READ, b"a".to_vec())
    );
    assert_eq!(read(&mut xs, &mut c, 0, "data/t1"), err("ENOENT"));
    assert!(c.take_events().is_empty());
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_START, t, b"\0"),
        err("EBUSY")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("X")),
        err("EINVAL")
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/t1"),
        (XS_READ, b"a".to_vec())
    );
    assert_eq!(
        c.take_events(),
        vec![("data/t1".to_string(), "w".to_string())]
    );
    assert_eq!(read(&mut xs, &mut c, t, "data/t1"), err("ENOENT"));
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, 0, &nul("T")),
        err("ENOENT")
    );

    // Abort: nothing happens.
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(write(&mut xs, &mut c, t, "data/t2", "b"), ok(XS_WRITE));
    assert_eq!(call(&mut xs, &mut c, XS_RM, t, &nul("data/t1")), ok(XS_RM));
    assert_eq!(read(&mut xs, &mut c, t, "data/t1"), err("ENOENT"));
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("F")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(read(&mut xs, &mut c, 0, "data/t2"), err("ENOENT"));
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/t1"),
        (XS_READ, b"a".to_vec())
    );
    assert!(c.take_events().is_empty());

    // Conflict: a node read in the transaction changes outside it.
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(
        read(&mut xs, &mut c, t, "control/shutdown"),
        (XS_READ, vec![])
    );
    assert_eq!(
        write(&mut xs, &mut c, t, "control/shutdown", ""),
        ok(XS_WRITE)
    );
    xs.write("control/shutdown", b"reboot").unwrap();
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        err("EAGAIN")
    );
    assert_eq!(xs.read("control/shutdown"), Some(b"reboot".to_vec()));
    // The retry (as Linux's shutdown handler does) succeeds.
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(
        read(&mut xs, &mut c, t, "control/shutdown"),
        (XS_READ, b"reboot".to_vec())
    );
    assert_eq!(
        write(&mut xs, &mut c, t, "control/shutdown", ""),
        ok(XS_WRITE)
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(xs.read("control/shutdown"), Some(vec![]));

    // Conflict through a created sibling (the parent's child list changed), and
    // between two transactions.
    let t1 = tx_start(&mut xs, &mut c);
    let t2 = tx_start(&mut xs, &mut c);
    assert_ne!(t1, t2);
    assert_eq!(write(&mut xs, &mut c, t1, "data/s1", "1"), ok(XS_WRITE));
    assert_eq!(write(&mut xs, &mut c, t2, "data/s2", "2"), ok(XS_WRITE));
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t1, &nul("T")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t2, &nul("T")),
        err("EAGAIN")
    );
    assert_eq!(read(&mut xs, &mut c, 0, "data/s2"), err("ENOENT"));
    // No conflict: unrelated change outside.
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(write(&mut xs, &mut c, t, "data/s1", "x"), ok(XS_WRITE));
    xs.write("memory/target", b"5").unwrap();
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(
        read(&mut xs, &mut c, 0, "data/s1"),
        (XS_READ, b"x".to_vec())
    );
    // A node absent at the first read and created outside: conflict.
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(read(&mut xs, &mut c, t, "data/new"), err("ENOENT"));
    xs.write("data/new", b"1").unwrap();
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        err("EAGAIN")
    );
    // Transaction quota: 9 open at most.
    let mut ids = Vec::new();
    loop {
        let (ty, b) = call(&mut xs, &mut c, XS_TRANSACTION_START, 0, b"\0");
        if ty == XS_ERROR {
            assert_eq!(b, nul("ENOSPC"));
            break;
        }
        ids.push(strings(&b)[0].clone());
        assert!(ids.len() < 20);
    }
    assert_eq!(ids.len(), quota::TRANSACTIONS - 1);
    assert_eq!(
        call(&mut xs, &mut c, XS_RESET_WATCHES, 0, b"\0"),
        ok(XS_RESET_WATCHES)
    );
    assert!(xs.txns.is_empty());
}

#[test]
fn xenstore_node_quota() {
    let (mut xs, mut c) = setup();
    let mut made = 0;
    for i in 0..1200 {
        let (ty, b) = write(
            &mut xs,
            &mut c,
            0,
            &format!("data/n{}/x{}", i / 30, i % 30),
            "v",
        );
        if ty == XS_ERROR {
            assert_eq!(b, nul("ENOSPC"));
            break;
        }
        made += 1;
    }
    assert!(made < 1200);
    assert!(xs.guest_nodes < quota::NODES);
    // The VMM is not limited.
    xs.write("data/vmm/a", b"1").unwrap();
    // Removing frees quota.
    assert_eq!(call(&mut xs, &mut c, XS_RM, 0, &nul("data/n0")), ok(XS_RM));
    assert_eq!(write(&mut xs, &mut c, 0, "data/again", "1"), ok(XS_WRITE));
}

#[test]
fn xenstore_ring_wraparound() {
    // Indices near u32::MAX: both rings wrap (u32 and ring offset) many times.
    let mut xs = Xenstore::new(DOMID);
    let mut c = Client::with_base(u32::MAX - 700);
    for i in 0..300 {
        let v = "x".repeat(i % 97);
        assert_eq!(
            write(&mut xs, &mut c, 0, &format!("data/k{}", i % 13), &v),
            ok(XS_WRITE)
        );
        assert_eq!(
            read(&mut xs, &mut c, 0, &format!("data/k{}", i % 13)),
            (XS_READ, v.into_bytes())
        );
    }
    let prod = read_u32(c.page.as_ref(), OFF_REQ_PROD);
    assert!(prod < u32::MAX - 700, "req index wrapped");
    let rprod = read_u32(c.page.as_ref(), OFF_RSP_PROD);
    assert!(rprod < u32::MAX - 700, "rsp index wrapped");

    // A request fed one byte at a time across the wrap point.
    let m = Client::msg(XS_READ, 999, 0, &nul("data/k1"));
    for b in &m {
        assert!(!xs.process(c.page.as_mut()) || c.drain().is_empty());
        c.push_raw(&[*b]);
    }
    xs.process(c.page.as_mut());
    let r = c.drain();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0.req_id, 999);
}

#[test]
fn xenstore_queued_responses() {
    // Replies larger than the free space wait and go out as the guest consumes.
    let (mut xs, mut c) = setup();
    let big = vec![b'B'; 4000];
    xs.write("data/big", &big).unwrap();
    let ids: Vec<u32> = (0..3)
        .map(|_| c.send(XS_READ, 0, &nul("data/big")))
        .collect();
    assert!(xs.process(c.page.as_mut()));
    // The ring is full; nothing more fits.
    assert_eq!(
        read_u32(c.page.as_ref(), OFF_RSP_PROD)
            .wrapping_sub(read_u32(c.page.as_ref(), OFF_RSP_CONS)),
        1024
    );
    assert!(!xs.process(c.page.as_mut()));
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(c.drain());
        if got.len() == 3 {
            break;
        }
        assert!(xs.process(c.page.as_mut()));
    }
    assert_eq!(got.len(), 3);
    for (i, (h, b)) in got.iter().enumerate() {
        assert_eq!(h.req_id, ids[i]);
        assert_eq!(h.ty, XS_READ);
        assert_eq!(b, &big);
    }
}

#[test]
fn xenstore_outstanding_quota() {
    // With replies not consumed, at most 20 are queued; the rest of the requests
    // stay in the ring until the guest catches up.
    let (mut xs, mut c) = setup();
    xs.write("data/big", &vec![b'B'; 1000]).unwrap();
    let mut sent = 0;
    while c.req_free() >= 16 + 9 {
        c.send(XS_READ, 0, &nul("data/big"));
        sent += 1;
    }
    assert!(sent > quota::OUTSTANDING);
    xs.process(c.page.as_mut());
    let left = read_u32(c.page.as_ref(), OFF_REQ_PROD)
        .wrapping_sub(read_u32(c.page.as_ref(), OFF_REQ_CONS));
    assert!(left > 0);
    assert!(xs.outstanding <= quota::OUTSTANDING);
    let mut got = 0;
    for _ in 0..1000 {
        got += c.drain().len();
        xs.process(c.page.as_mut());
        if got == sent {
            break;
        }
    }
    assert_eq!(got, sent);
}

#[test]
fn xenstore_hostile_header() {
    let (mut xs, mut c) = setup();
    assert_eq!(watch(&mut xs, &mut c, "data", "w"), ok(XS_WATCH));
    let mut h = MsgHeader {
        ty: XS_READ,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    }
    .to_bytes()
    .to_vec();
    h.extend_from_slice(b"data\0");
    c.push_raw(&h);
    assert!(xs.process(c.page.as_mut()));
    assert_eq!(xs.broken(), Some(XENSTORE_ERROR_PROTO));
    assert_eq!(read_u32(c.page.as_ref(), OFF_ERROR), XENSTORE_ERROR_PROTO);
    // Left alone afterwards.
    let snapshot = *c.page;
    c.send(XS_READ, 0, &nul("name"));
    let snapshot2 = *c.page;
    assert_ne!(snapshot[..], snapshot2[..]);
    assert!(!xs.process(c.page.as_mut()));
    assert_eq!(c.page[..], snapshot2[..]);
    // The VMM side still works; the dropped watch no longer fires.
    xs.write("data/x", b"1").unwrap();
    assert!(!xs.process(c.page.as_mut()));
    // A reset brings the connection back.
    xs.reset(c.page.as_mut());
    c.rx.clear();
    assert_eq!(read_u32(c.page.as_ref(), OFF_ERROR), 0);
    assert_eq!(read(&mut xs, &mut c, 0, "data/x"), (XS_READ, b"1".to_vec()));
}

#[test]
fn xenstore_hostile_indices() {
    // Request producer more than a ring ahead.
    let (mut xs, mut c) = setup();
    write_u32(c.page.as_mut(), OFF_REQ_PROD, 1025);
    assert!(xs.process(c.page.as_mut()));
    assert_eq!(xs.broken(), Some(XENSTORE_ERROR_RINGIDX));
    assert_eq!(read_u32(c.page.as_ref(), OFF_ERROR), XENSTORE_ERROR_RINGIDX);
    assert_eq!(read_u32(c.page.as_ref(), OFF_REQ_CONS), 0);
    // Producer behind the consumer.
    let (mut xs, mut c) = setup();
    write_u32(c.page.as_mut(), OFF_REQ_CONS, 10);
    write_u32(c.page.as_mut(), OFF_REQ_PROD, 5);
    xs.process(c.page.as_mut());
    assert_eq!(xs.broken(), Some(XENSTORE_ERROR_RINGIDX));
    // Response consumer ahead of the producer (seen when there is output).
    let (mut xs, mut c) = setup();
    write_u32(c.page.as_mut(), OFF_RSP_CONS, 7);
    c.send(XS_READ, 0, &nul("name"));
    xs.process(c.page.as_mut());
    assert_eq!(xs.broken(), Some(XENSTORE_ERROR_RINGIDX));
    // Exactly a full ring is fine.
    let (mut xs, mut c) = setup();
    write_u32(c.page.as_mut(), OFF_REQ_PROD, 1024);
    xs.process(c.page.as_mut());
    assert_eq!(xs.broken(), None);
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn xenstore_fuzz_random_pages() {
    // Random page contents and indices: no panic, bounded work per call.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..3000 {
        let mut xs = Xenstore::new(DOMID);
        let mut page = Box::new([0u8; 4096]);
        for b in page.iter_mut() {
            *b = rng.next() as u8;
        }
        if round % 2 == 0 {
            // Plausible indices so the data gets parsed.
            let cons = rng.next() as u32;
            write_u32(page.as_mut(), OFF_REQ_CONS, cons);
            write_u32(
                page.as_mut(),
                OFF_REQ_PROD,
                cons.wrapping_add(rng.below(1025) as u32),
            );
            let rc = rng.next() as u32;
            write_u32(page.as_mut(), OFF_RSP_CONS, rc);
            write_u32(page.as_mut(), OFF_RSP_PROD, rc);
        }
        for _ in 0..4 {
            let t = std::time::Instant::now();
            xs.process(page.as_mut());
            assert!(t.elapsed() < std::time::Duration::from_secs(2));
            // The guest mangles indices between calls.
            if rng.below(3) == 0 {
                let off =
                    [OFF_REQ_CONS, OFF_REQ_PROD, OFF_RSP_CONS, OFF_RSP_PROD][rng.below(4) as usize];
                write_u32(page.as_mut(), off, rng.next() as u32);
            }
        }
    }
}

#[test]
fn xenstore_fuzz_random_requests() {
    // Well-framed requests with random types, transaction ids and payloads made of
    // path-ish pieces and garbage: every request is answered, nothing panics.
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let pieces: [&[u8]; 14] = [
        b"data",
        b"/",
        b"a",
        b"b",
        b"\0",
        b"/local/domain/3",
        b"@releaseDomain",
        b"T",
        b"F",
        b"r3",
        b"n0",
        b"..",
        b"\xff",
        b"control/shutdown",
    ];
    let (mut xs, mut c) = setup();
    let mut answered = 0;
    let mut sent = 0;
    for _ in 0..20000 {
        let ty = match rng.below(10) {
            0 => rng.next() as u32,
            _ => rng.below(28) as u32,
        };
        let mut payload = Vec::new();
        for _ in 0..rng.below(8) {
            payload.extend_from_slice(pieces[rng.below(pieces.len() as u64) as usize]);
        }
        if rng.below(20) == 0 {
            for _ in 0..rng.below(900) {
                payload.push(rng.next() as u8);
            }
        }
        let tx = if rng.below(4) == 0 {
            rng.below(12) as u32
        } else {
            0
        };
        if c.req_free() < HEADER_LEN + payload.len() {
            xs.process(c.page.as_mut());
            answered += c.drain().len();
            continue;
        }
        c.send(ty, tx, &payload);
        sent += 1;
        if rng.below(3) == 0 {
            xs.process(c.page.as_mut());
            answered += c.drain().len();
        }
    }
    for _ in 0..10000 {
        xs.process(c.page.as_mut());
        answered += c.drain().len();
        if answered == sent {
            break;
        }
    }
    assert_eq!(answered, sent);
    assert_eq!(xs.broken(), None);
    assert!(xs.guest_nodes < quota::NODES);
}

/// A guest that never stops: every look at `req_prod` finds the request ring
/// refilled, and responses are consumed as soon as they are produced.
struct Flood {
    page: Box<[u8; 4096]>,
    msg: Vec<u8>,
    pos: usize,
}

impl RingPage for Flood {
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.page.read(offset, buf)
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        self.page.write(offset, buf);
        if offset == OFF_RSP_PROD {
            let p = read_u32(self.page.as_ref(), OFF_RSP_PROD);
            write_u32(self.page.as_mut(), OFF_RSP_CONS, p);
        }
        if offset == OFF_REQ_CONS {
            // Refill the request ring completely.
            let cons = read_u32(self.page.as_ref(), OFF_REQ_CONS);
            let mut prod = read_u32(self.page.as_ref(), OFF_REQ_PROD);
            while prod.wrapping_sub(cons) < XENSTORE_RING_SIZE as u32 {
                self.page[OFF_REQ + (prod as usize & (XENSTORE_RING_SIZE - 1))] =
                    self.msg[self.pos];
                self.pos = (self.pos + 1) % self.msg.len();
                prod = prod.wrapping_add(1);
            }
            write_u32(self.page.as_mut(), OFF_REQ_PROD, prod);
        }
    }
}

#[test]
fn xenstore_input_budget() {
    // Against a guest that keeps producing, one call does bounded work and asks
    // to be polled again.
    let mut xs = Xenstore::new(DOMID);
    let mut f = Flood {
        page: Box::new([0u8; 4096]),
        msg: Client::msg(XS_READ, 1, 0, &nul("name")),
        pos: 0,
    };
    write_u32(f.page.as_mut(), OFF_REQ_CONS, 0);
    f.write(OFF_REQ_CONS, &0u32.to_le_bytes());
    for _ in 0..3 {
        let before = read_u32(f.page.as_ref(), OFF_REQ_CONS);
        assert!(xs.process(&mut f));
        let taken = read_u32(f.page.as_ref(), OFF_REQ_CONS).wrapping_sub(before) as usize;
        assert!(taken <= INPUT_BUDGET);
        assert!(taken >= INPUT_BUDGET - HEADER_LEN - 8);
        assert!(xs.needs_poll());
        assert_eq!(xs.broken(), None);
    }
}

#[test]
fn xenstore_transaction_rm_fires_on_commit() {
    let (mut xs, mut c) = setup();
    xs.write("data/r/a", b"1").unwrap();
    assert_eq!(watch(&mut xs, &mut c, "data/r/a", "w"), ok(XS_WATCH));
    c.take_events();
    let t = tx_start(&mut xs, &mut c);
    assert_eq!(call(&mut xs, &mut c, XS_RM, t, &nul("data/r")), ok(XS_RM));
    assert!(c.take_events().is_empty());
    assert_eq!(xs.read("data/r/a"), Some(b"1".to_vec()));
    assert_eq!(
        call(&mut xs, &mut c, XS_TRANSACTION_END, t, &nul("T")),
        ok(XS_TRANSACTION_END)
    );
    assert_eq!(
        c.take_events(),
        vec![("data/r/a".to_string(), "w".to_string())]
    );
    assert_eq!(xs.read("data/r"), None);
    assert_eq!(xs.directory("data"), Some(vec![]));
}

#[test]
fn xenstore_c_parsers() {
    assert_eq!(c_atoi(b"  -12x"), -12);
    assert_eq!(c_atoi(b"abc"), 0);
    assert_eq!(c_strtoul10(b"65535"), (65535, 5));
    assert_eq!(c_strtoul10(b""), (0, 0));
    assert_eq!(c_strtoul10(b"99999999999999999999999"), (u64::MAX, 23));
    assert_eq!(c_strtol0(b"0x1F"), (31, 4));
    assert_eq!(c_strtol0(b"017"), (15, 3));
    assert_eq!(c_strtol0(b"0x"), (0, 1));
    assert_eq!(c_strtol0(b"-5"), (-5, 2));
    assert_eq!(c_strtol0(b"x"), (0, 0));
    assert_eq!(onearg(b"a\0"), Some(&b"a"[..]));
    assert_eq!(onearg(b"a\0b"), None);
    assert_eq!(get_strings(b"a\0b\0c"), vec![&b"a"[..], &b"b"[..]]);
}

#[test]
fn a_look_at_the_ring_reads_only_indices() {
    let mut page = vec![0u8; 4096];
    assert_eq!(
        ring::look(&mut page),
        ring::RingLook {
            requests_unread: false,
            req_prod: 0,
            rsp_cons: 0,
            responses_unread: false,
        }
    );
    ring::write_u32(&mut page, OFF_REQ_PROD, 19);
    ring::write_u32(&mut page, OFF_RSP_PROD, 7);
    ring::write_u32(&mut page, OFF_RSP_CONS, 3);
    let l = ring::look(&mut page);
    assert!(l.requests_unread && l.responses_unread);
    assert_eq!((l.req_prod, l.rsp_cons), (19, 3));
    // Inconsistent indices say nothing waits (the next real access breaks the
    // connection).
    ring::write_u32(&mut page, OFF_REQ_PROD, 5000);
    assert!(!ring::look(&mut page).requests_unread);
}
