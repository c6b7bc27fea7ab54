//! systemd socket activation: with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` the master
//! adopts the sockets it is handed (their names are the protocols) instead of binding, and keeps
//! them through a reload and a binary upgrade. The variables are set here as systemd sets them
//! (`systemd-socket-activate` cannot pick a free port itself).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn the_master_adopts_the_sockets_systemd_hands_it_and_keeps_them_through_hup_and_usr2() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let chat = TcpListener::bind("127.0.0.1:0").unwrap();
    let (plain_addr, chat_addr) = (plain.local_addr().unwrap(), chat.local_addr().unwrap());
    let (a, b) = (plain.as_raw_fd(), chat.as_raw_fd());
    let log = dir.path().join("server.log");
    let board = dir.path().join("scoreboard");
    let pid_file = dir.path().join("cserverd.pid");
    let mut cmd = Command::new("sh");
    // As systemd does it: the sockets as descriptors 3 and 4, LISTEN_PID the service's own pid
    // (the shell's, which exec keeps).
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", CSERVERD])
        .args(["--workers", "2", "--port", "1", "--listen", "2=reverse"])
        .arg("--log")
        .arg(&log)
        .arg("--stats-file")
        .arg(&board)
        .arg("--pid-file")
        .arg(&pid_file)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "cserver:chat")
        .stdout(Stdio::piped())
        .process_group(0);
    // SAFETY: only dup2/fcntl between fork and exec (async-signal-safe); the copies first go
    // above 4 so that neither target clobbers a source.
    unsafe {
        cmd.pre_exec(move || {
            let high_a = libc::fcntl(a, libc::F_DUPFD, 100);
            let high_b = libc::fcntl(b, libc::F_DUPFD, 100);
            if high_a < 0 || high_b < 0 || libc::dup2(high_a, 3) < 0 || libc::dup2(high_b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop((plain, chat));
    let group = Pid::from_raw(child.id() as i32);
    struct Cleanup(Pid);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(self.0, Signal::SIGKILL);
        }
    }
    let _cleanup = Cleanup(group);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    // The handed sockets, not --port 1 or --listen 2.
    assert_eq!(
        out.next().unwrap().unwrap(),
        format!("listening on {plain_addr}")
    );
    assert_eq!(
        out.next().unwrap().unwrap(),
        format!("listening on {chat_addr} (chat)")
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("two workers", PATIENCE, || {
        log_text().matches("have child pid").count() >= 2
    });
    let works = |plain_addr: SocketAddr, chat_addr: SocketAddr| {
        let mut c = Client::connect(plain_addr);
        assert!(c.line().starts_with("OK cserverd "));
        assert_eq!(c.ask("PING"), "OK PONG");
        let mut one = Client::connect(chat_addr);
        let mut two = Client::connect(chat_addr);
        one.send(b"hello\n");
        loop {
            let line = two.line();
            if line.ends_with(": hello") {
                break;
            }
            assert!(line.ends_with(" connected!"), "{line}");
        }
    };
    works(plain_addr, chat_addr);
    assert!(
        log_text().contains(&format!("{chat_addr} (chat) is one socket from systemd")),
        "{}",
        log_text()
    );

    // HUP: new workers on the same sockets.
    let master = Pid::from_raw(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    );
    assert_eq!(master, group, "the shell exec'd cserverd");
    kill(master, Signal::SIGHUP).unwrap();
    wait_until("the reload's new workers", PATIENCE, || {
        log_text().matches("have child pid").count() >= 4
    });
    works(plain_addr, chat_addr);

    // USR2: the new master is handed the same sockets and knows what each speaks.
    kill(master, Signal::SIGUSR2).unwrap();
    let new_master = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|&p| p != master.as_raw() && alive(p))
    };
    wait_until("the new master", PATIENCE, || new_master().is_some());
    let upgraded = new_master().unwrap();
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "the old master exits cleanly"
    );
    works(plain_addr, chat_addr);
    kill(Pid::from_raw(upgraded), Signal::SIGTERM).unwrap();
    wait_until("the new master to stop", PATIENCE, || !alive(upgraded));
    assert!(std::net::TcpStream::connect(plain_addr).is_err());
}

#[test]
fn a_socket_named_for_no_protocol_is_refused() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = socket.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", CSERVERD])
        .args(["--log", "/dev/null", "--stats-file"])
        .arg(tempfile::tempdir().unwrap().path().join("board"))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "gopher");
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(move || {
            let high = libc::fcntl(fd, libc::F_DUPFD, 100);
            if high < 0 || libc::dup2(high, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("unknown protocol \"gopher\""), "{err}");
}
