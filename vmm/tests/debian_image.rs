//! A real Debian 12 PV image, as a Xen user has one: built from Debian's packages by
//! guest-images/scripts/build-debian-image.sh (cached), booted from its xl.cfg
//! (`bootloader = "pygrub"`: the kernel comes from the image's own grub.cfg) to the
//! login prompt on hvc0; root logs in, systemd is running, sshd answers through the
//! forwarded port, `reboot` restarts the domain (`on_reboot = "restart"`) and
//! `poweroff` ends pvkvm with status 0. The image is copied first: a boot changes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds (or finds in the cache) the image; returns its xl.cfg.
fn image_cfg() -> PathBuf {
    let out = Command::new(common::repo_root().join("guest-images/scripts/build-debian-image.sh"))
        .output()
        .expect("build-debian-image.sh runs");
    assert!(
        out.status.success(),
        "build-debian-image.sh failed (it needs root, mmdebstrap and fdisk: guest-images/scripts/install-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with(".cfg"))
        .map(PathBuf::from)
        .expect("the script prints the xl.cfg's path");
    assert!(cfg.exists(), "{}", cfg.display());
    cfg
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The image's xl.cfg, pointed at a copy of the image and at a free host port.
fn private_copy(cfg: &Path, dir: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(cfg).expect("cfg");
    let image = text
        .split("file:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("a file: disk");
    let copy = dir.join("disk.img");
    let st = Command::new("cp")
        .args(["--sparse=always", image])
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success());
    let text = text
        .replace(
            &format!("file:{image},"),
            &format!("file:{},", copy.display()),
        )
        .replace("tcp::2222-:22", &format!("tcp::{port}-:22"));
    let out = dir.join("guest.cfg");
    std::fs::write(&out, text).expect("cfg copy");
    out
}

fn ssh(key: &Path, port: u16, command: &str) -> Option<String> {
    let out = Command::new("ssh")
        .args(["-i", key.to_str().expect("utf-8")])
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ])
        .output()
        .expect("ssh runs (openssh-client: guest-images/scripts/install-deps.sh)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Logs in on the console from byte `from`; returns the offset after the shell prompt.
fn login(console: &mut common::DebianConsole, from: usize, what: &str) -> usize {
    let Some(at) = console.wait_for_from("login: ", from, Duration::from_secs(420)) else {
        panic!("no login prompt ({what}); console:\n{}", console.text());
    };
    console.send("root");
    let Some(at) = console.wait_for_from("Password: ", at, Duration::from_secs(60)) else {
        panic!("no password prompt ({what}); console:\n{}", console.text());
    };
    console.send("pvkvm");
    let Some(at) = console.wait_for_from(":~# ", at, Duration::from_secs(120)) else {
        panic!(
            "no shell after login ({what}); console:\n{}",
            console.text()
        );
    };
    at
}

#[test]
fn the_debian_image_boots_from_its_xl_cfg_serves_ssh_reboots_and_powers_off() {
    common::require_kvm();
    let cfg = image_cfg();
    let key = cfg.with_file_name("id_ed25519");
    let dir = Scratch(std::env::temp_dir().join(format!("pvkvm-debimg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("scratch");
    let port = free_port();
    let guest_cfg = private_copy(&cfg, &dir.0, port);

    let started = Instant::now();
    let mut console = common::DebianConsole::spawn_args(&[
        guest_cfg.to_str().expect("utf-8"),
        "--timeout",
        "1500",
    ]);
    let at = login(&mut console, 0, "first boot");
    let to_shell = started.elapsed();

    console.send("systemctl is-system-running; systemctl --failed --no-legend | head -5");
    let Some(state_at) = console.wait_for_from("running", at, Duration::from_secs(120)) else {
        panic!("systemd state unknown; console:\n{}", console.text());
    };
    let text = console.text();
    let line = text[..state_at]
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        line.ends_with("running") || line.contains("degraded"),
        "systemd is not running: {line}; console:\n{text}"
    );

    // sshd through the forwarded port (the network came up by DHCP from passt).
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    while answer.is_none() && Instant::now() < deadline {
        answer = ssh(
            &key,
            port,
            "echo ssh-$((6*7)); ip -4 -o addr show scope global",
        );
        if answer.is_none() {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    let to_ssh = started.elapsed();
    let answer =
        answer.unwrap_or_else(|| panic!("no ssh within 180 s; console:\n{}", console.text()));
    assert!(answer.contains("ssh-42"), "{answer}");
    assert!(
        answer.contains("inet "),
        "the guest has an address: {answer}"
    );

    // reboot: the domain restarts (the image's menu is read again) to a new login.
    let mark = console.text().len();
    console.send("reboot");
    let at = login(&mut console, mark, "after reboot");
    console.send("echo up-again-$((6*7))");
    assert!(
        console
            .wait_for_from("up-again-42", at, Duration::from_secs(60))
            .is_some(),
        "no shell after the reboot; console:\n{}",
        console.text()
    );
    console.send("poweroff");
    let (status, _, stderr) = console.wait_exit(Duration::from_secs(300));
    assert_eq!(status, Some(0), "pvkvm's stderr:\n{stderr}");
    assert!(
        stderr.contains("restarting the domain debian-12-pv"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("booting 'Debian GNU/Linux'").count(),
        2,
        "{stderr}"
    );
    eprintln!(
        "debian image: login prompt + login after {:.1} s, ssh after {:.1} s, whole test {:.1} s",
        to_shell.as_secs_f64(),
        to_ssh.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
