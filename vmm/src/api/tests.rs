use super::client::{call, ClientError};
use super::*;
use std::io::{Read, Write};
use std::sync::Mutex;

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pvkvm-api-{}-{tag}.sock", std::process::id()))
}

/// A server whose VMM side records the commands and answers like a running domain.
fn server(
    tag: &str,
    console: Option<ConsoleHooks>,
) -> (ApiServer, PathBuf, Arc<Mutex<Vec<Command>>>) {
    let path = socket_path(tag);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let paused = Arc::new(AtomicBool::new(false));
    let hooks = Hooks {
        control: Box::new(move |c| {
            log.lock().unwrap().push(c);
            match c {
                Command::Info => Ok(Some(serde_json::json!({"state": "running"}))),
                Command::Pause if paused.swap(true, Ordering::SeqCst) => {
                    Err(Refusal::new(409, "the domain is already paused"))
                }
                _ => Ok(None),
            }
        }),
        console,
    };
    (ApiServer::start(&path, hooks).unwrap(), path, seen)
}

#[test]
fn commands_reach_the_vmm_and_refusals_come_back_as_errors() {
    let (srv, path, seen) = server("cmds", None);
    let info = call(&path, "GET", "/api/v1/vm.info").unwrap().unwrap();
    assert_eq!(info["state"], "running");
    assert_eq!(call(&path, "PUT", "/api/v1/vm.pause").unwrap(), None);
    match call(&path, "PUT", "/api/v1/vm.pause") {
        Err(ClientError::Refused {
            status: 409,
            message,
        }) => {
            assert!(message.contains("already paused"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    for p in ["vm.resume", "vm.shutdown", "vm.reboot", "vm.destroy"] {
        call(&path, "PUT", &format!("/api/v1/{p}")).unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Command::Info,
            Command::Pause,
            Command::Pause,
            Command::Resume,
            Command::Shutdown,
            Command::Reboot,
            Command::Destroy
        ]
    );
    let v = call(&path, "GET", "/api/v1/vmm.ping").unwrap().unwrap();
    assert!(v["version"].is_string());
    drop(srv);
    assert!(!path.exists(), "the socket file goes with the server");
}

#[test]
fn wrong_paths_methods_and_garbage_get_http_errors() {
    let (_srv, path, seen) = server("errors", None);
    assert!(matches!(
        call(&path, "GET", "/api/v1/vm.nothing"),
        Err(ClientError::Refused { status: 404, .. })
    ));
    assert!(matches!(
        call(&path, "GET", "/api/v1/vm.destroy"),
        Err(ClientError::Refused { status: 405, .. })
    ));
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let r = http::read_response(&mut s).unwrap();
    assert_eq!(r.status, 400);
    // A client that says nothing is dropped after the request timeout, and does not
    // keep others out meanwhile.
    let _silent = UnixStream::connect(&path).unwrap();
    assert!(call(&path, "GET", "/api/v1/vm.info").is_ok());
    assert!(!seen.lock().unwrap().contains(&Command::Destroy));
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let (_srv, path, _) = server("inuse", None);
    let hooks = || Hooks {
        control: Box::new(|_| Ok(None)),
        console: None,
    };
    assert!(matches!(
        ApiServer::start(&path, hooks()),
        Err(Error::InUse(_))
    ));
    let stale = socket_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let srv = ApiServer::start(&stale, hooks()).unwrap();
    drop(srv);
    let file = socket_path("file");
    std::fs::write(&file, b"not a socket").unwrap();
    assert!(matches!(
        ApiServer::start(&file, hooks()),
        Err(Error::NotASocket(_))
    ));
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn an_attached_console_sees_output_and_types_into_the_guest() {
    let mirror = ConsoleMirror::default();
    let typed = Arc::new(Mutex::new(Vec::new()));
    let sink = typed.clone();
    let console = ConsoleHooks {
        mirror: mirror.clone(),
        input: Box::new(move |b| {
            sink.lock().unwrap().extend(b);
            true
        }),
    };
    let (_srv, path, _) = server("console", Some(console));
    // Without the upgrade: refused.
    assert!(matches!(
        call(&path, "GET", "/api/v1/vm.console"),
        Err(ClientError::Refused { status: 400, .. })
    ));
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"GET /api/v1/vm.console HTTP/1.1\r\nConnection: Upgrade\r\n\r\n")
        .unwrap();
    let r = http::read_response(&mut s).unwrap();
    assert_eq!(r.status, 101);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mirror.attached() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    mirror.write(b"guest says hi");
    let mut got = [0u8; 13];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"guest says hi");
    s.write_all(b"ls\n").unwrap();
    while typed.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*typed.lock().unwrap(), b"ls\n");
    drop(s);
    while mirror.attached() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mirror.attached(), 0, "a client that leaves is detached");
}
