#!/usr/bin/env python3
"""Boot build-debian-image.sh's Debian 12 PV image under pvkvm and check it end to end.

    boot-debian-image.py [--pvkvm target/release/pvkvm] [--timeout 900] [--log FILE]

Builds (or finds cached) the image, extracts the default GRUB entry's kernel, initrd and
command line (extract-boot.sh), runs pvkvm with the disk as xvda and a user network
forwarding host port 2222 to the guest's sshd, then on the console (pvkvm's stdin and
stdout): waits for the login prompt, logs in as root/pvkvm, checks that systemd is
`running` and the netfront NIC (enX0) has an IPv4 address; meanwhile polls
`ssh -p 2222 root@127.0.0.1 systemctl is-system-running` with the image's key (skipped
when there is no ssh client); finally `poweroff` must end pvkvm with status 0. Prints the
time to the login prompt and to sshd; exits 1 on the first failure. The console goes to
--log (default /tmp/pvkvm-debian-console.log).
"""
import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))
ap = argparse.ArgumentParser()
ap.add_argument("--pvkvm", default=os.path.join(repo, "target/release/pvkvm"))
ap.add_argument("--timeout", type=int, default=900)
ap.add_argument("--log", default="/tmp/pvkvm-debian-console.log")
args = ap.parse_args()

t0 = time.time()


def say(msg):
    print(f"boot-debian-image: {time.time() - t0:6.1f}s {msg}", file=sys.stderr, flush=True)


def fail(msg):
    say("FAIL: " + msg)
    sys.exit(1)


img = subprocess.run([os.path.join(here, "build-debian-image.sh")], check=True,
                     stdout=subprocess.PIPE, text=True).stdout.split()[-1]
key = os.path.join(os.path.dirname(img), "id_ed25519")
bootdir = tempfile.mkdtemp(prefix="pvkvm-debian-boot.")
kernel, initrd, cmdline = subprocess.run(
    [os.path.join(here, "extract-boot.sh"), img, bootdir], check=True,
    stdout=subprocess.PIPE, text=True).stdout.splitlines()[:3]
say(f"booting {img}: {os.path.basename(kernel)} {cmdline!r}")

t0 = time.time()
log = open(args.log, "wb")
p = subprocess.Popen([args.pvkvm, "run", "--kernel", kernel, "--initrd", initrd,
                      "--cmdline", cmdline, "--memory", "1G", "--disk", img + ",vdev=xvda",
                      "--net", "user,hostfwd=tcp::2222-:22", "--timeout", str(args.timeout),
                      "--stall-timeout", "0"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
buf = b""


def read_until(pat, timeout):
    global buf
    end = time.time() + timeout
    while True:
        if pat.encode() in buf:
            i = buf.index(pat.encode()) + len(pat)
            out, buf = buf[:i], buf[i:]
            return out.decode(errors="replace")
        if time.time() > end:
            fail(f"no {pat!r} on the console within {timeout} s (see {args.log})")
        r, _, _ = select.select([p.stdout], [], [], 1)
        if r:
            d = os.read(p.stdout.fileno(), 65536)
            if not d:
                fail(f"pvkvm exited ({p.wait()}) before {pat!r} (see {args.log})")
            log.write(d)
            log.flush()
            buf += d


def send(s):
    p.stdin.write(s.encode())
    p.stdin.flush()


def run(cmd, timeout=300):
    send(cmd + '; echo __DO""NE__\n')
    out = read_until("__DONE__", timeout)
    read_until("# ", 60)
    # Drop the echoed command line and the bracketed-paste escapes.
    lines = out.replace("\x1b[?2004l", "").replace("\x1b[?2004h", "").splitlines()[1:-1]
    return "\n".join(l.strip("\r") for l in lines if l.strip("\r"))


ssh_at = [None]
ssh_out = [None]


def poll_ssh():
    while p.poll() is None:
        r = subprocess.run(["ssh", "-i", key, "-p", "2222", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "root@127.0.0.1",
                            "systemctl is-system-running"], capture_output=True, text=True)
        if r.stdout.strip():
            ssh_at[0] = time.time() - t0
            ssh_out[0] = r.stdout.strip()
            say(f"ssh: systemctl is-system-running -> {ssh_out[0]}")
            return
        time.sleep(2)


have_ssh = shutil.which("ssh") is not None
if have_ssh:
    threading.Thread(target=poll_ssh, daemon=True).start()
else:
    say("no ssh client on this host (openssh-client): the ssh check is skipped")

read_until("login:", args.timeout)
login_at = time.time() - t0
say("login prompt on hvc0")
send("root\n")
read_until("Password:", 120)
send("pvkvm\n")
read_until("# ", 120)
state = run("systemctl is-system-running --wait", 600)
say(f"console: systemctl is-system-running -> {state}")
if state != "running":
    say(run("systemctl --failed --no-legend"))
    fail(f"systemd is {state!r}")
addr = run("ip -4 -o addr show enX0")
say(f"console: {addr}")
if " inet " not in addr:
    fail("the netfront NIC (enX0) has no IPv4 address")
say("console: " + run("systemd-analyze | head -n 1"))
if have_ssh:
    end = time.time() + 300
    while ssh_at[0] is None and time.time() < end:
        time.sleep(1)
    if ssh_at[0] is None:
        fail("no ssh login to root@127.0.0.1:2222 within 300 s of the console login")
send("poweroff\n")
while True:
    r, _, _ = select.select([p.stdout], [], [], 1)
    if r:
        d = os.read(p.stdout.fileno(), 65536)
        if not d:
            break
        log.write(d)
    if time.time() - t0 > args.timeout + 60:
        break
try:
    rc = p.wait(timeout=60)
except subprocess.TimeoutExpired:
    p.kill()
    fail("pvkvm did not exit after poweroff")
shutil.rmtree(bootdir, ignore_errors=True)
if rc != 0:
    fail(f"pvkvm exited with status {rc} after poweroff")
ssh_text = f"{ssh_at[0]:.1f} s" if ssh_at[0] is not None else "skipped"
say(f"OK: login prompt after {login_at:.1f} s, sshd after {ssh_text}, poweroff -> exit 0")
