//! Process management: a killed worker is replaced in its slot without losing counts, a
//! graceful stop finishes open sessions and leaves nothing behind, startup errors are clear.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn a_killed_worker_is_replaced_in_its_slot_and_totals_never_go_back() {
    let server = Server::start(&["--workers", "2"]);
    let (ok, summary) = server.cclient(&["--threads", "100", "--requests", "3"]);
    assert!(ok.success(), "{summary}");
    let before = server.status();
    assert_eq!(before["total"]["requests"], 300);
    let slot0 = &before["slots"][0];
    let (old_pid, old_requests) = (
        slot0["pid"].as_i64().unwrap() as i32,
        slot0["requests"].as_u64().unwrap(),
    );
    assert!(
        old_requests > 0,
        "slot 0 must have counted something: {before}"
    );

    kill(Pid::from_raw(old_pid), Signal::SIGKILL).unwrap();
    wait_until("a new worker in slot 0", PATIENCE, || {
        let s = server.status();
        let pid = s["slots"][0]["pid"].as_i64().unwrap_or(0) as i32;
        pid != 0 && pid != old_pid && s["slots"][0]["state"] == "ready"
    });
    let after = server.status();
    assert_eq!(after["slots"][0]["restarts"], 1, "{after}");
    let new_pid = after["slots"][0]["pid"].as_i64().unwrap() as u32;
    assert_eq!(after["total"]["requests"], 300, "totals never go back");
    assert!(!alive(old_pid));

    // New connections are served, and counted on top: slot 0's counter goes on from where the
    // killed worker left it, by what the new worker handled (a counter that restarted from 0
    // would show only the latter).
    let (ok, summary) = server.cclient(&["--threads", "100"]);
    let log = server.log_text();
    let by_new = parse_log(&log)
        .iter()
        .filter(|r| matches!(r, Record::Completed { pid, .. } if *pid == new_pid))
        .count() as u64;
    assert!(
        by_new > 0,
        "the new worker {new_pid} handled none of 100 requests"
    );
    let status = server.status();
    assert_eq!(status["slots"][0]["pid"], new_pid, "{status}");
    assert_eq!(
        status["slots"][0]["requests"],
        old_requests + by_new,
        "slot 0 counters continue: {old_requests} before the kill, {by_new} since; {status}"
    );
    assert!(ok.success(), "{summary}");
    assert_eq!(status["total"]["requests"], 400, "{status}");
    assert!(
        log.contains(
            &Event::WorkerEnded {
                pid: old_pid,
                slot: 0,
                ended: Ended::Killed(Signal::SIGKILL),
                then: Then::Respawn,
            }
            .to_string()
        ),
        "{log}"
    );
    let records = parse_log(&log);
    assert_eq!(message_counts(&records), (400, 400));
}

#[test]
fn sigterm_finishes_open_sessions_and_leaves_nothing_behind() {
    let mut server = Server::start(&["--workers", "3"]);
    let (ok, summary) = server.cclient(&["--threads", "50", "--requests", "4"]);
    assert!(ok.success(), "{summary}");
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 3);

    // A session open when the stop begins may go on until it quits.
    let mut open = server.connect();
    assert_eq!(open.ask("USER late"), "OK hello late");
    server.signal(Signal::SIGTERM);
    wait_until("the stop to begin", PATIENCE, || {
        server.log_text().contains(&graceful_stop())
    });
    // Longer than the half second an orphaned worker gives its sessions: with its master
    // alive, a worker keeps them for --shutdown-timeout (30 s by default).
    std::thread::sleep(Duration::from_millis(1200));
    let reply = open.ask("MSG after the signal");
    assert!(reply.starts_with("OK "), "{reply}");
    assert_eq!(open.ask("QUIT"), "OK bye");

    let status = server.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{status:?}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} left behind");
    }
    let log = server.log_text();
    let last: Vec<&str> = log.lines().rev().take(2).collect();
    assert!(last[1].ends_with(" -- total requests 201"), "{last:?}");
    assert!(last[0].contains("Server exit"), "{last:?}");
    assert_eq!(message_counts(&parse_log(&log)), (201, 201));
    assert!(!server.board.exists(), "scoreboard removed");
    assert!(!server.pid_file.exists(), "pid file removed");
}

#[test]
fn the_shutdown_timeout_closes_lingering_sessions() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-timeout", "0.3"]);
    let mut idle = server.connect();
    assert_eq!(idle.ask("PING"), "OK PONG");
    server.signal(Signal::SIGTERM);
    assert_eq!(idle.line(), "ERR 503 server shutting down");
    assert_eq!(idle.rest(), "");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
}

#[test]
fn a_reload_tells_a_session_that_could_not_move_the_truth() {
    let server = Server::start(&["--workers", "1", "--shutdown-timeout", "0.3"]);
    // Half a line typed: not idle, so it cannot move to the new worker (an idle one would).
    let mut busy = server.connect();
    assert_eq!(busy.ask("PING"), "OK PONG");
    busy.send(b"PI");
    server.signal(Signal::SIGHUP);
    // Not "shutting down": the server goes on, and a new connection is served.
    assert_eq!(busy.line(), "ERR 503 server reloading; reconnect");
    assert_eq!(busy.rest(), "");
    let mut again = server.connect();
    assert_eq!(again.ask("USER again"), "OK hello again");
    // The session cut is one error in the old worker's counts (and nothing else is one).
    wait_until("the cut session counted", PATIENCE, || {
        server.status()["total"]["errors"] == 1
    });
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let mut server = Server::start(&["--workers", "4"]);
    let workers = server.worker_pids();
    kill(server.pid(), Signal::SIGKILL).unwrap();
    server.wait_exit(PATIENCE);
    wait_until("every worker to exit", Duration::from_secs(2), || {
        workers.iter().all(|&p| !alive(p))
    });
}

fn start_fails(args: &[&str]) -> String {
    let out = Command::new(CSERVERD).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let board = dir.path().join("sb").display().to_string();
    let bad_log = dir.path().join("no/such/dir/log").display().to_string();
    let err = start_fails(&["--port", "0", "--log", &bad_log, "--stats-file", &board]);
    assert!(
        err.contains("cannot open log") && err.contains("No such file"),
        "{err}"
    );

    let server = Server::start(&[]);
    let log = dir.path().join("log").display().to_string();
    let port = server.port().to_string();
    let err = start_fails(&["--port", &port, "--log", &log, "--stats-file", &board]);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn cserverctl_refuses_missing_and_foreign_scoreboards() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = Command::new(CSERVERCTL)
        .arg("status")
        .arg("--stats-file")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4)); // LSB status: unknown
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is cserverd running"),
        "{out:?}"
    );
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![0u8; 8192]).unwrap();
    let out = Command::new(CSERVERCTL)
        .arg("status")
        .arg("--stats-file")
        .arg(&foreign)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4)); // LSB status: unknown
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cserverd scoreboard"),
        "{out:?}"
    );
}

fn uids(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn with_user_and_group_the_workers_drop_root_and_rotation_still_works() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: dropping privileges needs root (CI runs as root)");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let mut server =
        Server::start_in_open_dir(&["--workers", "2", "--user", "nobody", "--group", "nogroup"]);
    // nginx's model: the master keeps root, the workers are the service account's.
    assert_eq!(uids(server.pid().as_raw()), "0 0 0 0", "master");
    let want = format!("{0} {0} {0} {0}", nobody.uid);
    for pid in server.ready_pids() {
        assert_eq!(uids(pid), want, "worker {pid}");
    }
    let (ok, summary) = server.cclient(&["--threads", "50"]);
    assert!(ok.success(), "{summary}");
    // Log rotation still works: the workers reopen as the unprivileged user.
    let rotated = server.dir.path().join("server.log.1");
    std::fs::rename(&server.log, &rotated).unwrap();
    let workers = server.ready_pids();
    server.signal(Signal::SIGUSR1);
    wait_until("the master and every worker to reopen", PATIENCE, || {
        let text = server.log_text();
        text.contains(&Event::Reopened.to_string())
            && workers
                .iter()
                .all(|&pid| text.contains(&Event::WorkerReopened { pid }.to_string()))
    });
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&server.log).unwrap().uid(),
        nobody.uid.as_raw()
    );
    assert_eq!(server.stop().code(), Some(0));
    assert!(!server.board.exists());
    assert!(!server.pid_file.exists());
}

#[test]
fn planned_ends_count_as_retired_and_only_deaths_as_restarts() {
    let server = Server::start(&["--workers", "2"]);
    let total = |key: &str| server.status()["total"][key].as_u64().unwrap();
    // A reload replaces both workers; a TTIN and a TTOU add one and retire one.
    let first = server.ready_pids();
    server.signal(Signal::SIGHUP);
    wait_until("the reload's new workers, alone", PATIENCE, || {
        let now = server.ready_pids();
        now.len() == 2 && first.iter().all(|&p| !alive(p) && !now.contains(&p))
    });
    server.signal(Signal::SIGTTIN);
    wait_until("a third worker", PATIENCE, || {
        server.ready_pids().len() == 3
    });
    server.signal(Signal::SIGTTOU);
    wait_until("three planned ends", PATIENCE, || total("retired") == 3);
    assert_eq!(total("restarts"), 0, "{}", server.status());
    let states: Vec<String> = server.status()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect();
    // Every slot not serving is free (a freed one may have been taken again by the TTIN).
    let ready = states.iter().filter(|s| *s == "ready").count();
    assert_eq!(ready, 2, "{states:?}");
    assert!(
        states.iter().all(|s| s == "ready" || s == "free"),
        "{states:?}"
    );
    // A kill is a death.
    let victim = server.ready_pids()[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_until("the death counted", PATIENCE, || total("restarts") == 1);
    let log = server.log_text();
    let deaths: Vec<&str> = log.lines().filter(|l| l.contains(") died: ")).collect();
    assert_eq!(deaths.len(), 1, "{log}");
    assert!(deaths[0].contains(&format!("worker {victim} ")), "{log}");
    assert_eq!(
        log.matches(") retired: exited with status 0").count(),
        3,
        "{log}"
    );
}

#[test]
fn a_running_servers_pid_file_or_scoreboard_is_never_taken_over() {
    let server = Server::start(&["--workers", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let own_board = dir.path().join("sb").display().to_string();
    let pid_file = server.pid_file.display().to_string();
    let err = start_fails(&[
        "--port",
        "0",
        "--log",
        &log,
        "--stats-file",
        &own_board,
        "--pid-file",
        &pid_file,
    ]);
    assert!(
        err.contains(&format!(
            "pid file {pid_file} names cserverd master {}, still running",
            server.pid()
        )),
        "{err}"
    );
    let board = server.board.display().to_string();
    let err = start_fails(&["--port", "0", "--log", &log, "--stats-file", &board]);
    assert!(
        err.contains(&format!(
            "scoreboard {board} belongs to cserverd master {}, still running",
            server.pid()
        )),
        "{err}"
    );
    // Both still name the first server, which still serves.
    assert_eq!(
        std::fs::read_to_string(&server.pid_file).unwrap().trim(),
        server.pid().to_string()
    );
    assert_eq!(server.status()["master_pid"], server.pid().as_raw());
    let mut c = server.connect();
    assert_eq!(c.ask("PING"), "OK PONG");
}

#[test]
fn a_stale_pid_file_is_replaced_and_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.pid");
    // This test's own pid: a live process, but not a cserverd.
    std::fs::write(&stale, format!("{}\n", std::process::id())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(CSERVERD)
        .args(["--port", "0", "--workers", "1", "--pid-file"])
        .arg(&stale)
        .arg("--log")
        .arg(&log)
        .arg("--stats-file")
        .arg(dir.path().join("sb"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("listening on "), "{first:?}");
    let master = child.id();
    let text = std::fs::read_to_string(&log).unwrap();
    let named = std::fs::read_to_string(&stale).unwrap();
    kill(Pid::from_raw(master as i32), Signal::SIGQUIT).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(named.trim(), master.to_string());
    assert!(
        text.contains(&format!(
            "replaced the stale pid file {} (process {} is not a running cserverd)",
            stale.display(),
            std::process::id()
        )),
        "{text}"
    );
}

/// Voluntary context switches of `pid` so far: each time it blocked (in `epoll_wait`, mostly).
fn sleeps(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn an_idle_worker_sleeps_until_its_next_tick() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    // An idle session too: its idle deadline is minutes away, so it wakes nobody.
    let mut c = server.connect();
    assert_eq!(c.ask("USER idle"), "OK hello idle");
    let before = sleeps(worker);
    let started = std::time::Instant::now();
    wait_until("a second to pass", PATIENCE, || {
        started.elapsed() >= Duration::from_secs(1)
    });
    let woke = sleeps(worker) - before;
    // Connections are counted as the worker accepts them (this test's one and no other).
    assert_eq!(server.status()["slots"][0]["accepted"], 1);
    // Its heartbeat tick is every 500 ms: a handful of wakeups, not one per millisecond.
    assert!(woke <= 20, "an idle worker woke {woke} times in a second");
}

#[test]
fn sigquit_ends_every_worker_at_once_by_itself() {
    let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "30"]);
    let workers = server.worker_pids();
    let mut open = server.connect();
    assert_eq!(open.ask("USER quick"), "OK hello quick");
    server.signal(Signal::SIGQUIT);
    // No grace: the session is cut, not kept for the 30 s a graceful stop would give it.
    assert_eq!(open.rest(), "");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let log = server.log_text();
    // Each worker exited on the signal itself; none had to be killed after a wait.
    for pid in workers {
        let ended = log
            .lines()
            .find(|l| l.contains(&format!("worker {pid} (slot ")))
            .unwrap_or_default();
        assert!(
            ended.ends_with(": exited with status 0"),
            "worker {pid} did not exit by itself on SIGQUIT:\n{log}"
        );
    }
}

#[test]
fn accepted_connections_are_non_blocking_and_closed_on_exec() {
    let server = Server::start(&["--workers", "1"]);
    let mut c = server.connect();
    assert_eq!(c.ask("PING"), "OK PONG");
    let worker = server.worker_pids()[0];
    let inode = server_side(server.port(), c.stream().local_addr().unwrap())
        .expect("the kernel lists the connection")
        .inode;
    let fd = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]"))
        })
        .expect("the worker holds the connection")
        .file_name();
    let info =
        std::fs::read_to_string(format!("/proc/{worker}/fdinfo/{}", fd.to_string_lossy())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    // A blocking socket would let one slow client stall the worker; one inherited by a RUN
    // child would keep a closed session's connection open.
    assert_ne!(
        flags & libc::O_NONBLOCK as u32,
        0,
        "blocking: flags {flags:o}"
    );
    assert_ne!(
        flags & libc::O_CLOEXEC as u32,
        0,
        "not close-on-exec: flags {flags:o}"
    );
}

#[test]
fn the_scoreboard_counts_every_byte_each_way() {
    use std::io::{BufRead, BufReader, Write};
    let server = Server::start(&["--workers", "1"]);
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut got = String::new();
    reader.read_line(&mut got).unwrap();
    let sent = b"PING\nUSER bytes\n";
    (&stream).write_all(sent).unwrap();
    reader.read_line(&mut got).unwrap();
    reader.read_line(&mut got).unwrap();
    assert!(got.ends_with("OK PONG\nOK hello bytes\n"), "{got:?}");
    // Published every loop turn: the counts settle on exactly what crossed the connection.
    let counted = || {
        let t = &server.status()["total"];
        (t["bytes_in"].as_u64(), t["bytes_out"].as_u64())
    };
    let want = (Some(sent.len() as u64), Some(got.len() as u64));
    wait_until("the bytes to be counted", PATIENCE, || counted() == want);
}

#[test]
fn a_client_that_resets_while_its_request_works_costs_no_cpu() {
    let server = Server::start(&["--workers", "1", "--work-ms", "3000"]);
    let worker = server.ready_pids()[0];
    let mut c = server.connect();
    assert_eq!(c.ask("USER gone"), "OK hello gone");
    c.send(b"MSG slow\n");
    wait_until("the MSG to start", PATIENCE, || {
        server.log_text().contains(" recvd message \"slow\"")
    });
    // Reset (RST, not FIN): the worker is told by a hang-up event, not by a read.
    reset_on_close(c.stream());
    drop(c);
    let used = cpu_ticks_over_a_second(worker);
    assert!(
        used < 30,
        "worker used {used} ticks of CPU in 1 s after a reset"
    );
    // The connection is gone at once, not when the work is done.
    wait_until("the connection to close", PATIENCE, || {
        server.status()["slots"][0]["open"] == 0
    });
}

#[test]
fn a_recycled_workers_successor_serves_while_it_finishes_its_sessions() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-requests",
        "3",
        "--max-requests-jitter",
        "0",
        "--shutdown-timeout",
        "60",
    ]);
    let old = server.ready_pids()[0];
    // A session in the middle of a line cannot move: it keeps the retiring worker alive for
    // up to a minute.
    let mut lingering = server.connect();
    assert_eq!(lingering.ask("USER stays"), "OK hello stays");
    lingering.send(b"PI");
    let mut c = server.connect();
    assert_eq!(c.ask("USER busy"), "OK hello busy");
    for i in 1..=3 {
        assert_eq!(c.ask(&format!("MSG {i}")), format!("OK {i} {i}"));
    }
    // The worker told the master it is retiring: a successor serves new connections now, not
    // when the old one exits.
    let mut next = Client::connect(server.addr);
    next.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let greeting = next.line();
    assert!(greeting.starts_with("OK cserverd "), "{greeting}");
    assert!(!greeting.contains(&format!(" worker {old} ")), "{greeting}");
    assert!(alive(old), "the old worker still finishes its sessions");
    // The line completed is answered where it was begun; then the session is idle and moves
    // to the successor, and the old worker, with nothing left, exits.
    assert_eq!(lingering.ask("NG"), "OK PONG");
    wait_until("the old worker to exit", PATIENCE, || !alive(old));
    assert_eq!(lingering.ask("PING"), "OK PONG");
    // Counted in the successor's slot (its first), and in the server's total (the fourth).
    assert_eq!(c.ask("MSG after"), "OK 1 4");
    assert_eq!(lingering.ask("QUIT"), "OK bye");
    assert_eq!(c.ask("QUIT"), "OK bye");
    let log = server.log_text();
    assert!(log.contains(&format!(
        "session of user stays moved from worker {old} to worker "
    )));
    assert!(log.contains(&format!(
        "session of user busy moved from worker {old} to worker "
    )));
}
