//! The Debian guest's network through pvkvm's netback: the user network (passt) with
//! DHCP, guest-to-host TCP and a forwarded port; a tap device (root only) with TCP both
//! ways; and two NICs with the MACs given on the command line.
//!
//! Every guest command prints one line; the tests read the `TAG:value` lines from the
//! console (a command's echo starts with the prompt, so it never matches). Commands stay
//! short, since the shell's line editor wraps long ones on the 80-column console.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a host-side helper thread waits for the guest before giving up (the
/// guest's own commands are bounded by `debian_shell`'s timeouts).
const HOST_WAIT: Duration = Duration::from_secs(200);

/// The value of the first console line `TAG:value`.
fn tagged(console: &str, tag: &str) -> Option<String> {
    let prefix = format!("{tag}:");
    console
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
}

/// A TCP port that was free a moment ago (bound to port 0 and let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// What a guest client pipes into `nc`: its line, then 2 s before its EOF. busybox nc
/// shuts down its sending side at EOF on stdin; when the host then answers and closes
/// at once, Debian 12's passt (0.0~git20230309.7c7625d) delivers the answer but never
/// sends the guest the FIN (a pcap shows the guest ACKing the data and nothing after),
/// so nc would wait for ever. Keeping the guest's side open avoids that passt path.
const NC_HOLD: &str = "(echo ping-from-guest; sleep 2)";

/// Guest commands that write the udhcpc script /tmp/d (busybox has no default one),
/// bring eth0 up and ask for a lease; the router goes to /tmp/gw. Prints `DHCP:status`.
fn dhcp_commands() -> Vec<String> {
    [
        r#"printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\n' >/tmp/d; echo ok"#,
        "echo 'ip addr add $ip/$mask dev $interface' >>/tmp/d; echo ok",
        "echo 'ip route add default via $router' >>/tmp/d; echo ok",
        "echo 'echo $router >/tmp/gw' >>/tmp/d; chmod +x /tmp/d; echo ok",
        "ip link set eth0 up; udhcpc -i eth0 -n -q -s /tmp/d >/dev/null 2>&1; echo DHCP:$?",
        "echo ADDR:$(ip -4 addr show eth0 | grep inet)",
        "echo GW:$(cat /tmp/gw)",
    ]
    .map(String::from)
    .to_vec()
}

/// Guest commands that write /tmp/s, the server `nc -e` runs: it says `guest-hello`,
/// reads a line and answers `guest-got-LINE`.
fn server_script_commands() -> Vec<String> {
    [
        r#"printf '#!/bin/sh\necho guest-hello\n' >/tmp/s; echo ok"#,
        r#"printf 'read l\necho guest-got-$l\n' >>/tmp/s; chmod +x /tmp/s; echo ok"#,
    ]
    .map(String::from)
    .to_vec()
}

/// Checks the DHCP lines: a lease, an `inet A/N` address on eth0 and a gateway in the
/// same subnet. Returns (address, gateway).
fn check_dhcp(run: &common::ShellRun) -> (Ipv4Addr, Ipv4Addr) {
    let console = &run.console;
    assert_eq!(
        tagged(console, "DHCP").as_deref(),
        Some("0"),
        "udhcpc got no lease from passt; pvkvm:\n{}\nconsole:\n{console}",
        run.stderr
    );
    let addr_line = tagged(console, "ADDR").unwrap_or_default();
    // `inet 192.0.2.2/24 scope global eth0`
    let cidr = addr_line
        .strip_prefix("inet ")
        .and_then(|r| r.split_whitespace().next())
        .filter(|_| addr_line.ends_with(" eth0"))
        .unwrap_or_else(|| panic!("no DHCP address on eth0: `{addr_line}`; console:\n{console}"));
    let (addr, prefix) = cidr.split_once('/').expect("A/N");
    let addr: Ipv4Addr = addr.parse().expect("an IPv4 address");
    let prefix: u32 = prefix.parse().expect("a prefix length");
    assert!((8..=30).contains(&prefix), "prefix /{prefix}");
    let gw: Ipv4Addr = tagged(console, "GW")
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no gateway from DHCP; console:\n{console}"));
    let mask = u32::MAX << (32 - prefix);
    assert_eq!(
        u32::from(addr) & mask,
        u32::from(gw) & mask,
        "gateway {gw} is outside {cidr}"
    );
    assert_ne!(addr, gw, "the guest got the gateway's address");
    (addr, gw)
}

/// Accepts one connection on `listener` (until `HOST_WAIT`), reads a line, answers
/// `reply` and closes. Returns the line and the peer's address.
fn serve_once(listener: TcpListener, reply: &str) -> Result<(String, String), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if start.elapsed() > HOST_WAIT {
                    return Err("the guest never connected".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the guest's line: {e}"))?;
    (&stream)
        .write_all(format!("{reply}\n").as_bytes())
        .map_err(|e| format!("answering the guest: {e}"))?;
    Ok((line.trim().to_string(), peer.ip().to_string()))
}

/// Reads up to `n` lines from `stream` until EOF or its read timeout.
fn read_lines(stream: &TcpStream, n: usize) -> (Vec<String>, Option<std::io::Error>) {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    while lines.len() < n {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return (lines, None),
            Ok(_) => lines.push(line.trim().to_string()),
            Err(e) => return (lines, Some(e)),
        }
    }
    (lines, None)
}

/// Whether a passt process started with `marker` in its arguments still runs (waiting
/// up to 5 s for one to go).
fn passt_left(marker: &str) -> Option<String> {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .find(|c| {
                    let prog = c.split(' ').next().unwrap_or_default();
                    let name = prog.rsplit('/').next().unwrap_or_default();
                    name.starts_with("passt") && c.contains(marker)
                })
        });
        if found.is_none() || start.elapsed() > Duration::from_secs(5) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn debian_kernel() -> Option<std::path::PathBuf> {
    let kernel = common::debian_kernel()?;
    assert!(
        Path::new("/usr/bin/passt").exists() || which_passt(),
        "the user network needs passt: run guest-images/scripts/install-deps.sh"
    );
    Some(kernel)
}

fn which_passt() -> bool {
    Command::new("sh")
        .args(["-c", "command -v passt"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// User network: DHCP from passt, then one TCP connection from the guest to a host
/// listener on 127.0.0.1 through the gateway passt maps to the host's loopback; the
/// guest's line reaches the host and the host's answer comes back on it.
#[test]
fn user_net_dhcp_and_tcp_guest_to_host() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("addr").port();
    let host = std::thread::spawn(move || serve_once(listener, "pong-from-host"));
    // A forward nobody uses, to recognise our passt among the host's processes.
    let marker = free_port();
    let net = format!("user,hostfwd=tcp::{marker}-:9");
    let mut cmds = dhcp_commands();
    // The guest keeps its sending side open until the answer is in: this passt does
    // not pass the host's FIN on to a guest that shut down its side first (see
    // NC_HOLD).
    cmds.push(format!("echo R:$( {NC_HOLD} | nc $(cat /tmp/gw) {port})"));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--net", &net], &cmds);
    eprintln!("user network guest->host: {:.1?}", started.elapsed());
    let (addr, gw) = check_dhcp(&run);
    eprintln!("guest address {addr}, gateway {gw}");
    let got = host.join().expect("host thread");
    let (line, peer) =
        got.unwrap_or_else(|e| panic!("host listener: {e}; console:\n{}", run.console));
    assert_eq!(line, "ping-from-guest", "what the host received");
    assert_eq!(peer, "127.0.0.1", "passt connects from the host's loopback");
    assert_eq!(
        tagged(&run.console, "R").as_deref(),
        Some("pong-from-host"),
        "the host's answer on the same connection; console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
    assert_eq!(
        passt_left(&format!("-t {marker}:9")),
        None,
        "passt outlived pvkvm"
    );
}

/// What the host client of a forwarded port saw.
struct FwdOutcome {
    lines: Vec<String>,
    error: Option<std::io::Error>,
    elapsed: Duration,
}

/// A forwarded port (`hostfwd=tcp::PORT-:22`) to `nc -l -p 22 -e /tmp/s` in the guest.
/// The guest starts its listener (for 40 s at most), having a background job tell the
/// host a second later over a guest->host connection. The host client then connects to
/// 127.0.0.1:PORT, sends `host-hello` first when `client_first`, and reads the guest's
/// lines (10 s each at most).
fn forwarded_port(client_first: bool) -> Option<(common::ShellRun, FwdOutcome)> {
    let kernel = debian_kernel()?;
    let started = Instant::now();
    let fwd_port = free_port();
    let ready = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let ready_port = ready.local_addr().expect("addr").port();
    let host = std::thread::spawn(move || -> Result<FwdOutcome, String> {
        ready.set_nonblocking(true).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let (signal, _) = loop {
            match ready.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && t.elapsed() < HOST_WAIT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("the guest never said it listens: {e}")),
            }
        };
        drop(signal);
        let t = Instant::now();
        let client = TcpStream::connect(("127.0.0.1", fwd_port))
            .map_err(|e| format!("connect to the forwarded port: {e}"))?;
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        if client_first {
            (&client)
                .write_all(b"host-hello\n")
                .map_err(|e| e.to_string())?;
        }
        let (lines, error) = read_lines(&client, if client_first { 2 } else { 1 });
        let elapsed = t.elapsed();
        Ok(FwdOutcome {
            lines,
            error,
            elapsed,
        })
    });
    let net = format!("user,hostfwd=tcp::{fwd_port}-:22");
    let mut cmds = dhcp_commands();
    cmds.extend(server_script_commands());
    cmds.push(format!(
        "sh -c '(sleep 1; echo ready | nc $(cat /tmp/gw) {ready_port}) >/dev/null 2>&1 &'; echo BG"
    ));
    cmds.push("timeout 40 nc -l -p 22 -e /tmp/s; echo SERVED:$?".into());
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--net", &net], &cmds);
    eprintln!(
        "forwarded port (client first: {client_first}): {:.1?}",
        started.elapsed()
    );
    check_dhcp(&run);
    let outcome = host
        .join()
        .expect("host thread")
        .unwrap_or_else(|e| panic!("host side: {e}; console:\n{}", run.console));
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
    assert_eq!(
        passt_left(&format!("-t {fwd_port}:22")),
        None,
        "passt outlived pvkvm"
    );
    Some((run, outcome))
}

/// Host -> guest through a forwarded port, the client speaking first (as an SSH client
/// does): both of the guest's lines arrive, the second echoing the host's line.
#[test]
fn user_net_forwarded_port_client_speaks_first() {
    let Some((run, got)) = forwarded_port(true) else {
        return;
    };
    eprintln!("forwarded exchange took {:.1?}", got.elapsed);
    assert_eq!(
        got.lines,
        ["guest-hello", "guest-got-host-hello"],
        "the host client's reading ended with {:?}; console:\n{}",
        got.error,
        run.console
    );
}

/// Host -> guest through a forwarded port, the guest's server speaking first and the
/// host client only reading.
///
/// Fails with Debian 12's passt (0.0~git20230309.7c7625d): after the guest's SYN-ACK,
/// that passt marks the connection established without acknowledging it
/// (tcp_conn_from_sock_finish() calls `tcp_send_flag(c, conn, ACK_IF_NEEDED)` after
/// setting `seq_ack_to_tap` to the SYN-ACK's sequence, so no ACK is due and any segment
/// it sends has no ACK flag). The guest's socket stays in SYN_RECV, retransmitting its
/// SYN-ACK, so `nc -l` never accepts until the host sends data (whose segment carries
/// the ACK). Later passt releases send the ACK unconditionally (`tcp_send_flag(c, conn,
/// ACK)`). Trixie's passt has the fix but needs glibc 2.38, which Debian 12 lacks.
/// Run with `cargo test --release -p pvkvm --test net_debian -- --ignored` on a host
/// whose passt is newer; the client-speaks-first test above covers ssh (whose client
/// sends its banner at once) on every host.
#[test]
#[ignore = "Debian 12's passt never acknowledges the guest's SYN-ACK of a forwarded connection (docs/backends.md)"]
fn user_net_forwarded_port_server_speaks_first() {
    let Some((run, got)) = forwarded_port(false) else {
        return;
    };
    assert_eq!(
        got.lines,
        ["guest-hello"],
        "a host client of the forwarded port that only reads got nothing within 10 s \
         (reading ended with {:?}). This is passt's bug, not the guest's: Debian 12's \
         passt 0.0~git20230309.7c7625d never ACKs the guest's SYN-ACK of a forwarded \
         connection (tcp_conn_from_sock_finish sends ACK_IF_NEEDED, and none is due), so \
         the guest's listener cannot accept until the host client sends data; newer \
         passt ACKs it unconditionally. A pcap (PVKVM_PASST_PCAP=FILE) shows the guest \
         retransmitting its SYN-ACK after 1, 3 and 7 s and nothing from passt until the \
         client closes. Clients that speak first (ssh) work, see \
         user_net_forwarded_port_client_speaks_first. console:\n{}",
        got.error,
        run.console
    );
}

/// Whether we run as root.
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `ip ARGS`, with /sbin and /usr/sbin on PATH.
fn ip(args: &[&str]) -> Result<(), String> {
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ip")
        .args(args)
        .env("PATH", path)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the tap device when the test ends, passed or not.
struct TapGuard(String);

impl TapGuard {
    fn exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.0).exists()
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if self.exists() {
            let _ = ip(&["link", "del", &self.0]);
        }
    }
}

/// The tap device's host side: waits for pvkvm to create it, then gives it `addr`
/// and brings it up.
fn configure_tap(name: &str, addr: &str) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new("/sys/class/net").join(name).exists() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("pvkvm never created tap {name}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["addr", "add", addr, "dev", name])?;
    ip(&["link", "set", name, "up"])
}

/// A tap network (root only): the guest's static address on a tap whose host side has
/// the other end of a /24, TCP both ways and ping both ways.
#[test]
fn tap_net_tcp_both_ways() {
    assert!(
        is_root(),
        "this test needs root (it creates tap device and gives it an address): run it as root"
    );
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let started = Instant::now();
    let pid = std::process::id();
    let x = 1 + pid % 120;
    let tap = TapGuard(format!("pvkt{pid}"));
    let host_ip = format!("10.213.{x}.1");
    let guest_ip = format!("10.213.{x}.2");
    let port = free_port();
    let guest_port = 7777;

    let (name, hip) = (tap.0.clone(), host_ip.clone());
    // The host client starts once the tap has its address: before that, the host's
    // route to 10.213.x.0/24 is its default one, where something else may answer.
    let (configured, wait_configured) = std::sync::mpsc::channel::<()>();
    let listener_side = std::thread::spawn(move || -> Result<(String, String), String> {
        configure_tap(&name, &format!("{hip}/24"))?;
        let _ = configured.send(());
        let listener = TcpListener::bind((hip.as_str(), port))
            .map_err(|e| format!("bind {hip}:{port}: {e}"))?;
        serve_once(listener, "pong-from-host")
    });
    let gip = guest_ip.clone();
    let client_side = std::thread::spawn(move || -> Result<(Vec<String>, Option<bool>), String> {
        wait_configured
            .recv_timeout(HOST_WAIT)
            .map_err(|_| "the tap was never configured".to_string())?;
        let start = Instant::now();
        let client = loop {
            match TcpStream::connect_timeout(
                &format!("{gip}:{guest_port}").parse().expect("addr"),
                Duration::from_secs(2),
            ) {
                Ok(c) => break c,
                Err(e) if start.elapsed() > HOST_WAIT => {
                    return Err(format!("connect to the guest: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        // The guest is up and its server waits for our line: ping it now (when the host
        // has a ping; this one may not).
        let ping = Command::new("sh")
            .args([
                "-c",
                "command -v ping >/dev/null || exit 2; ping -c 1 -W 5 \"$0\"",
            ])
            .arg(&gip)
            .output()
            .ok()
            .and_then(|o| match o.status.code() {
                Some(2) => None,
                c => Some(c == Some(0)),
            });
        (&client)
            .write_all(b"host-hello\n")
            .map_err(|e| e.to_string())?;
        let (lines, _) = read_lines(&client, 2);
        Ok((lines, ping))
    });

    let net = format!("tap={},mac=00:16:3e:00:{:02x}:02", tap.0, x);
    let mut cmds = server_script_commands();
    cmds.push(format!(
        "ip addr add {guest_ip}/24 dev eth0; ip link set eth0 up; echo UP"
    ));
    cmds.push(format!(
        "for i in 1 2 3 4 5; do ping -c1 -W2 {host_ip} >/dev/null && break; done; echo PING:$?"
    ));
    cmds.push(format!("echo R:$( {NC_HOLD} | nc {host_ip} {port})"));
    cmds.push(format!(
        "timeout 60 nc -l -p {guest_port} -e /tmp/s; echo SERVED:$?"
    ));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--net", &net], &cmds);
    eprintln!("tap network: {:.1?}", started.elapsed());
    let console = &run.console;

    let got = listener_side.join().expect("host listener thread");
    let (line, peer) = got.unwrap_or_else(|e| panic!("host listener: {e}; console:\n{console}"));
    assert_eq!(line, "ping-from-guest", "what the host received");
    assert_eq!(peer, guest_ip, "the guest's address");
    assert_eq!(
        tagged(console, "R").as_deref(),
        Some("pong-from-host"),
        "the host's answer; console:\n{console}"
    );
    assert_eq!(
        tagged(console, "PING").as_deref(),
        Some("0"),
        "guest pings host; console:\n{console}"
    );
    let (lines, host_ping) = client_side
        .join()
        .expect("host client thread")
        .unwrap_or_else(|e| panic!("host client: {e}; console:\n{console}"));
    assert_eq!(
        lines,
        ["guest-hello", "guest-got-host-hello"],
        "host -> guest; console:\n{console}"
    );
    match host_ping {
        Some(ok) => assert!(ok, "host pings guest"),
        None => eprintln!("the host has no ping: host -> guest ping not tried"),
    }
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
    drop(tap);
    assert!(
        !Path::new("/sys/class/net")
            .join(format!("pvkt{pid}"))
            .exists(),
        "the tap device is left behind"
    );
}

/// Two NICs: eth0 and eth1 carry the MACs given with `mac=`, and the second one gets a
/// lease from its own passt.
#[test]
fn two_nics_with_given_macs() {
    let Some(kernel) = debian_kernel() else {
        return;
    };
    let started = Instant::now();
    let (m0, m1) = (free_port(), free_port());
    let net0 = format!("user,mac=00:16:3e:5a:00:01,hostfwd=tcp::{m0}-:9");
    let net1 = format!("user,hostfwd=tcp::{m1}-:9,mac=00:16:3e:5a:00:02");
    let mut cmds = dhcp_commands()[..4].to_vec();
    cmds.push("echo M0:$(cat /sys/class/net/eth0/address)".into());
    cmds.push("echo M1:$(cat /sys/class/net/eth1/address)".into());
    cmds.push(
        "ip link set eth1 up; udhcpc -i eth1 -n -q -s /tmp/d >/dev/null 2>&1; echo D1:$?".into(),
    );
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let run = common::debian_shell(
        &kernel,
        "console=hvc0 quiet",
        &["--net", &net0, "--net", &net1],
        &cmds,
    );
    eprintln!("two NICs: {:.1?}", started.elapsed());
    let console = &run.console;
    assert_eq!(
        tagged(console, "M0").as_deref(),
        Some("00:16:3e:5a:00:01"),
        "eth0's MAC; console:\n{console}"
    );
    assert_eq!(
        tagged(console, "M1").as_deref(),
        Some("00:16:3e:5a:00:02"),
        "eth1's MAC; console:\n{console}"
    );
    assert_eq!(
        tagged(console, "D1").as_deref(),
        Some("0"),
        "DHCP on eth1; console:\n{console}"
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
    for m in [m0, m1] {
        assert_eq!(
            passt_left(&format!("-t {m}:9")),
            None,
            "passt outlived pvkvm"
        );
    }
}

/// A bridge (root only), as xl's `vif=['bridge=BR']`: pvkvm makes a tap and enslaves it
/// to an existing bridge that holds the host's address; the guest pings the host and
/// the host reaches a server in the guest.
#[test]
fn bridge_net_reaches_the_host() {
    assert!(
        is_root(),
        "this test needs root (it creates a bridge and gives it an address): run it as root"
    );
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let pid = std::process::id();
    let x = 1 + pid % 120;
    let bridge = TapGuard(format!("pvkb{pid}"));
    ip(&["link", "add", &bridge.0, "type", "bridge"]).expect("ip link add type bridge");
    let host_ip = format!("10.214.{x}.1");
    let guest_ip = format!("10.214.{x}.2");
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &bridge.0]).expect("address");
    ip(&["link", "set", &bridge.0, "up"]).expect("up");
    let port = free_port();
    let hip = host_ip.clone();
    let listener = TcpListener::bind((hip.as_str(), port)).expect("bind on the bridge");
    let listener_side = std::thread::spawn(move || serve_once(listener, "pong-from-host"));

    let net = format!("bridge={},mac=00:16:3e:01:{:02x}:02", bridge.0, x);
    let cmds = [
        format!("ip addr add {guest_ip}/24 dev eth0; ip link set eth0 up; echo UP"),
        format!("for i in 1 2 3 4 5 6 7 8; do ping -c1 -W2 {host_ip} >/dev/null && break; done; echo PING:$?"),
        format!("echo R:$( (echo ping-from-guest; sleep 3) | nc {host_ip} {port})"),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--net", &net], &cmds);
    let console = &run.console;
    assert_eq!(
        tagged(console, "PING").as_deref(),
        Some("0"),
        "console:\n{console}"
    );
    assert_eq!(
        tagged(console, "R").as_deref(),
        Some("pong-from-host"),
        "console:\n{console}"
    );
    let (line, peer) = listener_side
        .join()
        .expect("listener thread")
        .unwrap_or_else(|e| panic!("host listener: {e}; console:\n{console}"));
    assert_eq!(line, "ping-from-guest");
    assert_eq!(peer, guest_ip);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
}
