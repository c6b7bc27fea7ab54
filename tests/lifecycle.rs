//! The master's phases meeting signals they were not written for: an upgrade and a stop at once
//! (either order), a reload during an upgrade, and storms of TTIN/TTOU under load. Whatever the
//! order, the server ends in a state that is whole: stopped with nothing left alive, or serving.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use common::*;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// One at a time: these tests start upgrades and load on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pid of the master that `USR2` started, from the old master's record.
fn new_master_pid(log: &str) -> Option<i32> {
    log.lines()
        .find_map(|l| {
            l.split_once("SIGUSR2: started ")?
                .1
                .split_once(" as master ")
        })
        .and_then(|(_, pid)| pid.trim().parse().ok())
}

/// Waits for the old master to exit, then for the whole group to be gone (the old master, its
/// workers, the new master it started and that one's workers); checks that nothing listens on
/// the port any more.
fn assert_stopped_whole(server: &mut Server) {
    let group = server.pid();
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0), "old master");
    wait_until("every process of the server to exit", PATIENCE, || {
        killpg(group, None) == Err(Errno::ESRCH)
    });
    let refused = TcpStream::connect(server.addr).map_err(|e| e.kind());
    assert_eq!(refused.err(), Some(ErrorKind::ConnectionRefused));
}

#[test]
fn usr2_then_term_at_once_stops_the_whole_server() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2"]);
    // In one breath, as an operator who changes their mind would type them.
    server.signal(Signal::SIGUSR2);
    server.signal(Signal::SIGTERM);
    // The old master stops gracefully, and takes the upgrade it started down with it: no new
    // master is left behind serving (or refusing) on the port.
    let pid = server.pid();
    assert_stopped_whole(&mut server);
    let log = server.log_text();
    assert!(
        log.contains("SIGTERM during the upgrade: abandoning it"),
        "{log}"
    );
    assert!(log.contains(&graceful_stop()), "{log}");
    if let Some(new) = new_master_pid(&log) {
        assert!(!alive(new), "new master {new} still alive: {log}");
    }
    assert!(log.contains(&format!("Server exit: master {pid}")), "{log}");
}

#[test]
fn term_then_usr2_stops_and_starts_nothing() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2"]);
    // A session keeps the stop from ending at once, so USR2 arrives while stopping.
    let mut session = server.connect();
    assert_eq!(session.ask("USER stays"), "OK hello stays");
    server.signal(Signal::SIGTERM);
    wait_until("the graceful stop", PATIENCE, || {
        server.log_text().contains(&graceful_stop())
    });
    server.signal(Signal::SIGUSR2);
    wait_until("the refusal of USR2", PATIENCE, || {
        server
            .log_text()
            .contains(&ignored(Signal::SIGUSR2, cserver::phase::STOPPING))
    });
    // The open session is still answered, then the server ends.
    assert_eq!(session.ask("MSG while stopping"), "OK 1 1");
    assert_eq!(session.ask("QUIT"), "OK bye");
    assert_stopped_whole(&mut server);
    let log = server.log_text();
    assert_eq!(new_master_pid(&log), None, "{log}");
}

/// `strace` on the master, following its children, holding the new master of an upgrade in its
/// `execve` for 3 s: the upgrade stays under way long enough for a signal to meet it.
struct SlowExec(std::process::Child);

impl SlowExec {
    fn attach(master: Pid) -> SlowExec {
        let child = std::process::Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=execve"])
            .args(["-e", "inject=execve:delay_enter=3000000"])
            .args(["-p", &master.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace (Debian package strace; make test installs it)");
        wait_until("strace to attach", PATIENCE, || {
            std::fs::read_to_string(format!("/proc/{master}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        });
        SlowExec(child)
    }
}

impl Drop for SlowExec {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let _ = self.0.wait();
    }
}

#[test]
fn hup_during_an_upgrade_is_left_to_the_new_master() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2"]);
    let old = server.pid().as_raw();
    let slow = SlowExec::attach(server.pid());
    server.signal(Signal::SIGUSR2);
    wait_until("the upgrade to start", PATIENCE, || {
        new_master_pid(&server.log_text()).is_some()
    });
    server.signal(Signal::SIGHUP);
    // Refused while the new master starts, or (on a loaded machine the new one may be ready
    // by the time the HUP arrives) while this one hands over: either way left to the new one.
    wait_until("the HUP to be refused", PATIENCE, || {
        let log = server.log_text();
        [cserver::phase::UPGRADING, cserver::phase::HANDING_OVER]
            .iter()
            .any(|phase| log.contains(&ignored(Signal::SIGHUP, phase)))
    });
    // Taken while upgrading (the record says so), and nothing reloaded.
    let log = server.log_text();
    assert!(!log.contains("SIGHUP: reloaded"), "{log}");
    // The upgrade completes: the old master exits, the new one serves.
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    drop(slow);
    let log = server.log_text();
    let new = new_master_pid(&log).expect("the upgrade started");
    assert!(alive(new), "{log}");
    let mut c = server.connect();
    assert_eq!(c.ask("USER after"), "OK hello after");
    assert_eq!(c.ask("MSG served by the new master"), "OK 1 1");
    assert_eq!(c.ask("QUIT"), "OK bye");
    assert!(
        log.contains(&format!("(binary upgrade from master {old})")),
        "{log}"
    );
    kill(Pid::from_raw(new), Signal::SIGTERM).unwrap();
    wait_until("the new master to exit", PATIENCE, || !alive(new));
}

#[test]
fn storms_of_ttin_and_ttou_under_load_keep_the_books_exact() {
    let _s = serial();
    let server = Server::start(&["--workers", "2", "--max-workers", "6"]);
    let since = server.completed_count();
    let load = server.cclient_spawn(&[
        "--threads",
        "40",
        "--connect-per-request",
        "--duration",
        "4",
    ]);
    server.wait_for_load(since, 50);
    // 50 signals: 25 rounds of a TTIN and a TTOU, without waiting for the pool to follow.
    for round in 0..25 {
        let sig = if round % 2 == 0 {
            Signal::SIGTTIN
        } else {
            Signal::SIGTTOU
        };
        server.signal(sig);
        server.signal(if sig == Signal::SIGTTIN {
            Signal::SIGTTOU
        } else {
            Signal::SIGTTIN
        });
        thread::sleep(Duration::from_millis(20));
    }
    let (status, summary) = finish_cclient(load);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
    // The pool settles to what the header says, every position served by one ready worker.
    wait_until("the pool to settle", PATIENCE, || {
        let status = server.status();
        let workers = status["workers"].as_u64().unwrap() as usize;
        let ready = server.ready_pids().len();
        (1..=6).contains(&workers) && ready == workers
    });
    let (recvd, completed) = message_counts(&parse_log(&server.log_text()));
    assert_eq!(recvd, completed);
    assert_eq!(completed as u64, summary["acknowledged"].as_u64().unwrap());
    assert_eq!(
        server.status()["total"]["requests"].as_u64().unwrap(),
        completed as u64
    );
    // Still serving, on every socket of the pool.
    let (ok, summary) = server.cclient(&["--threads", "20"]);
    assert!(ok.success(), "{summary}");
}

/// USR2 to `master`; waits until the pid file names a new, live master and returns it.
fn upgrade(server: &Server, master: i32) -> i32 {
    kill(Pid::from_raw(master), Signal::SIGUSR2).unwrap();
    let mut new = 0;
    wait_until("a new master in the pid file", PATIENCE, || {
        new = server.pid_file_names().unwrap_or(0);
        new != master && new != 0 && alive(new)
    });
    wait_until("its hand-over", PATIENCE, || {
        server
            .log_text()
            .contains(&Event::UpgradeReady { pid: new }.to_string())
    });
    new
}

#[test]
fn two_upgrades_in_a_row_leave_the_files_to_the_newest_master() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "20"]);
    let a = server.pid().as_raw();
    // A session on a first-generation worker, in the middle of a line (so it cannot move),
    // keeps master A handing over.
    let mut held = server.connect();
    assert_eq!(held.ask("USER held"), "OK hello held");
    held.send(b"QU");
    let b = upgrade(&server, a);
    let c = upgrade(&server, b);
    // B has no session left: it exits while A still hands over. The files stay C's.
    wait_until("master B to exit", PATIENCE, || !alive(b));
    assert!(alive(a), "A still drains its session");
    assert_eq!(server.pid_file_names(), Some(c));
    assert_eq!(server.status()["master_pid"], c);
    // Then A goes too, and C still owns and serves everything.
    assert_eq!(held.ask("IT"), "OK bye");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    assert_eq!(server.pid_file_names(), Some(c));
    assert!(server.board.exists());
    assert_eq!(server.status()["master_pid"], c);
    let mut client = server.connect();
    assert_eq!(client.ask("USER late"), "OK hello late");
    assert_eq!(client.ask("QUIT"), "OK bye");
    kill(Pid::from_raw(c), Signal::SIGTERM).unwrap();
    wait_until("master C to exit", PATIENCE, || !alive(c));
    assert!(!server.board.exists() && !server.pid_file.exists());
}

#[test]
fn an_upgrade_that_fails_after_writing_the_files_gives_them_back() {
    let _s = serial();
    // Four scoreboard slots: A's two, B's two; a held session keeps one of A's busy, so C
    // finds one free slot for its two workers and gives up, after writing the pid file and
    // the scoreboard header.
    let mut server = Server::start(&["--workers", "2", "--max-workers", "2"]);
    server.expect_stderr("cserverd: no free scoreboard slot");
    let a = server.pid().as_raw();
    let mut held = server.connect();
    assert_eq!(held.ask("USER held"), "OK hello held");
    held.send(b"QU");
    let b = upgrade(&server, a);
    kill(Pid::from_raw(b), Signal::SIGUSR2).unwrap();
    wait_until("the upgrade from B to give up", PATIENCE, || {
        server
            .log_text()
            .contains("before it was ready; this master goes on")
    });
    assert_eq!(server.pid_file_names(), Some(b));
    assert_eq!(server.status()["master_pid"], b);
    // A's exit leaves B's files alone.
    assert_eq!(held.ask("IT"), "OK bye");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    assert_eq!(server.pid_file_names(), Some(b));
    assert_eq!(server.status()["master_pid"], b);
    let mut client = server.connect();
    assert_eq!(client.ask("USER after"), "OK hello after");
    assert_eq!(client.ask("QUIT"), "OK bye");
    kill(Pid::from_raw(b), Signal::SIGTERM).unwrap();
    wait_until("master B to exit", PATIENCE, || !alive(b));
    assert!(!server.board.exists() && !server.pid_file.exists());
}

/// What a process's descriptors point at (the links in /proc/PID/fd).
fn held(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Sockets a process holds.
fn sockets_held(pid: i32) -> usize {
    held(pid)
        .iter()
        .filter(|t| t.starts_with("socket:["))
        .count()
}

#[test]
fn a_worker_holds_only_its_own_listening_socket_before_and_after_an_upgrade() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "3"]);
    let log = std::fs::canonicalize(&server.log).unwrap();
    // Each worker: its listening socket and its own hand-over channel to the master, none of
    // the other workers'.
    for w in server.ready_pids() {
        assert_eq!(sockets_held(w), 2, "worker {w} before the upgrade");
        // Its own log descriptor only, not the master's as well.
        let logs = held(w).iter().filter(|t| Path::new(t) == log).count();
        assert_eq!(logs, 1, "worker {w}: {:?}", held(w));
    }
    let old: Vec<i32> = server.ready_pids();
    let new = upgrade(&server, server.pid().as_raw());
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    wait_until("the new master's workers", PATIENCE, || {
        let now = server.ready_pids();
        now.len() == 3 && now.iter().all(|p| !old.contains(p))
    });
    for w in server.ready_pids() {
        assert_eq!(sockets_held(w), 2, "worker {w} of the new master {new}");
    }
    kill(Pid::from_raw(new), Signal::SIGTERM).unwrap();
    wait_until("the new master to exit", PATIENCE, || !alive(new));
}
