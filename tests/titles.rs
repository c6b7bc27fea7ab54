//! Process titles: `ps`, `top` and `pgrep` tell the master and the workers apart, and show what
//! the master is doing (serving, handing over to an upgrade's new master, stopping), while the
//! master's command line stays the real one that `cserverctl` reads.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use nix::sys::signal::Signal;

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn cmdline(pid: i32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// What `ps` itself shows in `column` (`comm`, `args`) for `pid`.
fn ps(column: &str, pid: i32) -> String {
    let out = Command::new("ps")
        .args(["-o", &format!("{column}="), "-p", &pid.to_string()])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn workers_are_named_by_slot_and_the_master_keeps_its_arguments() {
    let server = Server::start(&["--workers", "3"]);
    let master = server.pid().as_raw();
    assert_eq!(comm(master), "cserverd");
    assert_eq!(ps("comm", master), "cserverd");
    // The master's command line is its real one (cserverctl reads --pid-file in it).
    let args = String::from_utf8_lossy(&cmdline(master)).replace('\0', " ");
    assert!(
        args.contains(&format!("--pid-file {}", server.pid_file.display())),
        "{args}"
    );
    for (slot, pid) in server.worker_pids().into_iter().enumerate().take(3) {
        assert_eq!(comm(pid), format!("cserverd-w{slot}"), "worker {pid}");
        assert_eq!(ps("comm", pid), format!("cserverd-w{slot}"), "worker {pid}");
        let title = format!("cserverd: worker {slot}\0");
        assert!(
            cmdline(pid).starts_with(title.as_bytes()),
            "worker {pid}: {:?}",
            String::from_utf8_lossy(&cmdline(pid))
        );
        assert_eq!(ps("args", pid), format!("cserverd: worker {slot}"));
    }
    // cserverctl still finds and proves the master from its pid file.
    let out = Command::new(CSERVERCTL)
        .args(["reopen", "--pid-file"])
        .arg(&server.pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_respawned_worker_takes_its_slots_name() {
    let server = Server::start(&["--workers", "2"]);
    let old = server.worker_pids()[1];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).unwrap();
    wait_until("a new worker in slot 1", PATIENCE, || {
        let pid = server.worker_pids()[1];
        pid != 0 && pid != old && comm(pid) == "cserverd-w1"
    });
}

#[test]
fn a_stopping_master_says_so() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-timeout", "30"]);
    let master = server.pid().as_raw();
    // An open session keeps the stop going while we look.
    let mut open = server.connect();
    assert_eq!(open.ask("USER late"), "OK hello late");
    server.signal(Signal::SIGTERM);
    wait_until("the master to be named cserverd-stop", PATIENCE, || {
        comm(master) == "cserverd-stop"
    });
    assert_eq!(open.ask("QUIT"), "OK bye");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn an_old_master_says_so_while_the_new_one_takes_over() {
    let mut server = Server::start(&["--workers", "1"]);
    let old_master = server.pid().as_raw();
    // A session on an old worker keeps the hand-over going while we look.
    let mut across = server.connect();
    assert_eq!(across.ask("USER across"), "OK hello across");
    server.signal(Signal::SIGUSR2);
    wait_until("the new master's pid file", PATIENCE, || {
        server
            .pid_file_names()
            .is_some_and(|p| p != old_master && alive(p))
    });
    let new_master = server.pid_file_names().unwrap();
    wait_until("the old master to be named cserverd-old", PATIENCE, || {
        comm(old_master) == "cserverd-old"
    });
    wait_until("the new master to be named cserverd", PATIENCE, || {
        comm(new_master) == "cserverd"
    });
    // The new master was executed with the old one's real arguments.
    let args = String::from_utf8_lossy(&cmdline(new_master)).replace('\0', " ");
    assert!(
        args.contains(&format!("--pid-file {}", server.pid_file.display())),
        "{args}"
    );
    assert_eq!(across.ask("QUIT"), "OK bye");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
}
