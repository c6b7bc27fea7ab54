//! systemd `Type=notify`: readiness, reload and stop reach a datagram socket standing in for
//! systemd's, in order, and the main pid follows a binary upgrade.

mod common;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills the server's process group (the upgraded master included) however the test ends.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The next notification and the pid that sent it (SO_PASSCRED, as systemd reads it: with
/// `NotifyAccess=main` it heeds only the main pid).
fn next_from(sock: &UnixDatagram) -> (u32, String) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("a notification within the deadline");
    let pid = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
            _ => None,
        })
        .expect("credentials");
    let n = msg.bytes;
    (pid, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The next notification, which must come from `main` (the main pid systemd knows).
fn next_by(sock: &UnixDatagram, main: u32) -> String {
    let (from, text) = next_from(sock);
    assert_eq!(
        from, main,
        "{text:?} sent by {from}, not by the main pid {main}"
    );
    text
}

#[test]
fn ready_reloading_stopping_and_mainpid_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let log = dir.path().join("log");
    let board = dir.path().join("sb");
    let pid_file = dir.path().join("pid");
    let mut child = Command::new(CSERVERD)
        .args(["--port", "0", "--workers", "2"])
        .arg("--log")
        .arg(&log)
        .arg("--stats-file")
        .arg(&board)
        .arg("--pid-file")
        .arg(&pid_file)
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let master = child.id();
    let _cleanup = KillGroup(master as i32);
    let ready = next_by(&sock, master);
    assert!(ready.contains(&format!("MAINPID={master}\n")), "{ready}");
    assert!(ready.contains("READY=1\n"), "{ready}");
    // Ready means ready: both workers accept already.
    let status = Command::new(CSERVERCTL)
        .args(["status", "--json", "--stats-file"])
        .arg(&board)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "ready")
            .count(),
        2
    );

    kill(Pid::from_raw(master as i32), Signal::SIGHUP).unwrap();
    let reloading = next_by(&sock, master);
    assert!(
        reloading.starts_with("RELOADING=1\n") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next_by(&sock, master), "READY=1\n");

    // A binary upgrade: the old master, still the main pid, names the new one.
    kill(Pid::from_raw(master as i32), Signal::SIGUSR2).unwrap();
    let upgraded = next_by(&sock, master);
    let new_pid: u32 = upgraded
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{upgraded}"));
    assert_ne!(new_pid, master);
    assert!(upgraded.contains("READY=1\n"));
    // The old master hands over without saying STOPPING.
    let old = child.wait().unwrap();
    assert_eq!(old.code(), Some(0));
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        sock.recv(&mut buf).is_err(),
        "the old master sent something after the handover"
    );

    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM).unwrap();
    assert_eq!(next_by(&sock, new_pid), "STOPPING=1\n");
    wait_until("the new master to exit", PATIENCE, || {
        !alive(new_pid as i32)
    });
}
