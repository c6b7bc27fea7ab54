//! Operations under load, checked afterwards against the client's acknowledgements, the log and
//! the scoreboard: reload (HUP), log reopen (USR1), pool size (TTIN/TTOU), heartbeat timeout,
//! respawn backoff, --max-requests, and the graceful stop that drains the accept backlog.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The load tests share two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client, log and scoreboard agree, and nothing failed.
fn assert_clean_run(
    server: &Server,
    status: std::process::ExitStatus,
    summary: &serde_json::Value,
) {
    assert!(status.success(), "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
    let records = parse_log(&server.log_text());
    let (recvd, completed) = message_counts(&records);
    assert_eq!(recvd, completed);
    assert_eq!(
        server.status()["total"]["requests"].as_u64().unwrap(),
        completed as u64
    );
}

/// Number of `completed req` records per worker pid in a log.
fn completed_by_pid(log: &str) -> BTreeMap<i32, usize> {
    let mut by_pid = BTreeMap::new();
    for r in parse_log(log) {
        if let Record::Completed { pid, .. } = r {
            *by_pid.entry(pid as i32).or_insert(0) += 1;
        }
    }
    by_pid
}

#[test]
fn hup_reloads_users_and_replaces_every_worker_without_refusing_anyone() {
    let _s = serial();
    let users = tempfile::NamedTempFile::new().unwrap();
    fs::write(users.path(), "arijort\n").unwrap();
    let server = Server::start(&["--workers", "2", "--users", users.path().to_str().unwrap()]);
    let before: BTreeSet<i32> = server.ready_pids().into_iter().collect();

    // A session open across the reload keeps working on its old worker.
    let mut old_session = server.connect();
    assert_eq!(old_session.ask("USER arijort"), "OK hello arijort");
    let mut c = server.connect();
    assert_eq!(c.ask("USER newbie"), "ERR 403 user not allowed");

    let since = server.completed_count();
    let load = server.cclient_spawn(&[
        "--threads",
        "50",
        "--connect-per-request",
        "--duration",
        "3",
    ]);
    server.wait_for_load(since, 50); // the load runs before the reload
    fs::write(users.path(), "arijort\nnewbie\n").unwrap();
    server.signal(Signal::SIGHUP);
    let mut new = BTreeSet::new();
    wait_until("two new workers", PATIENCE, || {
        new = server.ready_pids().into_iter().collect();
        new.len() == 2 && new.is_disjoint(&before)
    });
    let (status, summary) = finish_cclient(load);
    assert_clean_run(&server, status, &summary);
    // The load ran across the reload: the old workers served its start (waited for above), the
    // new ones served some of it too, and nobody else served any.
    let by_pid = completed_by_pid(&server.log_text());
    let served = |pids: &BTreeSet<i32>| pids.iter().filter_map(|p| by_pid.get(p)).sum::<usize>();
    assert!(
        served(&new) > 0,
        "the load ended before the new workers {new:?} served any of it: {by_pid:?}"
    );
    assert_eq!(
        served(&before) + served(&new),
        summary["acknowledged"].as_u64().unwrap() as usize,
        "{by_pid:?}"
    );

    assert!(old_session.ask("MSG still here").starts_with("OK "));
    assert_eq!(old_session.ask("QUIT"), "OK bye");
    wait_until("the old workers to exit", PATIENCE, || {
        before.iter().all(|&p| !alive(p))
    });
    let mut c = server.connect();
    assert_eq!(c.ask("USER newbie"), "OK hello newbie");
    assert!(server.log_text().contains(&Event::Reloaded.to_string()));
}

#[test]
fn usr1_reopens_the_log_in_every_process_and_loses_no_record() {
    let _s = serial();
    let server = Server::start(&["--workers", "2"]);
    let since = server.completed_count();
    let load = server.cclient_spawn(&["--threads", "40", "--duration", "3"]);
    server.wait_for_load(since, 50); // mid-run
    let rotated = server.dir.path().join("server.log.1");
    fs::rename(&server.log, &rotated).unwrap();
    server.signal(Signal::SIGUSR1);
    server.check_rotation(&rotated, load);
}

#[test]
fn ttin_and_ttou_change_the_pool_without_resetting_anyone() {
    let _s = serial();
    let server = Server::start(&["--workers", "2", "--max-workers", "3"]);
    let since = server.completed_count();
    let load = server.cclient_spawn(&[
        "--threads",
        "50",
        "--connect-per-request",
        "--duration",
        "4",
    ]);
    server.wait_for_load(since, 50);
    server.signal(Signal::SIGTTIN);
    wait_until("3 workers", PATIENCE, || {
        let s = server.status();
        s["workers"] == 3 && server.ready_pids().len() == 3
    });
    server.signal(Signal::SIGTTIN); // at --max-workers: refused
    wait_until("the refusal of a 4th worker", PATIENCE, || {
        server
            .log_text()
            .contains(&Event::AtMaxWorkers { size: 3 }.to_string())
    });
    // Signals of one kind do not queue: one at a time.
    server.signal(Signal::SIGTTOU);
    wait_until("2 workers", PATIENCE, || server.status()["workers"] == 2);
    server.signal(Signal::SIGTTOU);
    wait_until("1 worker", PATIENCE, || {
        server.status()["workers"] == 1 && server.ready_pids().len() == 1
    });
    // The load outlived every change of the pool, so it ran across all of them.
    let since = server.completed_count();
    server.wait_for_load(since, 50);
    let (status, summary) = finish_cclient(load);
    assert_clean_run(&server, status, &summary);
    let log = server.log_text();
    assert_eq!(log.matches("pool shrunk").count(), 2, "{log}");
    server.signal(Signal::SIGTTOU); // never below one
    wait_until("the refusal", PATIENCE, || {
        server
            .log_text()
            .contains(&Event::KeepingLastWorker.to_string())
    });
}

#[test]
fn a_worker_without_heartbeat_is_replaced_but_a_stopped_master_kills_nobody() {
    let _s = serial();
    let server = Server::start(&["--workers", "2", "--worker-timeout", "2"]);

    // The whole server stopped (like a suspended terminal job) and continued: nobody is judged.
    let pids = server.ready_pids();
    killpg(server.pid(), Signal::SIGSTOP).unwrap();
    thread::sleep(Duration::from_secs(3)); // longer than --worker-timeout, on purpose
    killpg(server.pid(), Signal::SIGCONT).unwrap();
    thread::sleep(Duration::from_secs(3)); // the window in which a wrong verdict would come
    assert_eq!(server.ready_pids(), pids, "healthy workers were killed");
    assert!(!server.log_text().contains("no heartbeat"));

    // One worker stopped alone: killed and replaced, with a record saying why.
    let stuck = pids[0];
    kill(Pid::from_raw(stuck), Signal::SIGSTOP).unwrap();
    wait_until("the stuck worker to be replaced", PATIENCE, || {
        let now = server.ready_pids();
        now.len() == 2 && !now.contains(&stuck)
    });
    let log = server.log_text();
    assert!(
        log.contains(&format!("worker {stuck} (slot 0) sent no heartbeat")),
        "{log}"
    );
    assert!(
        log.contains(
            &Event::WorkerEnded {
                pid: stuck,
                slot: 0,
                ended: Ended::Killed(Signal::SIGKILL),
                then: Then::Respawn,
            }
            .to_string()
        ),
        "{log}"
    );
    let (ok, summary) = server.cclient(&["--threads", "20"]);
    assert!(ok.success(), "{summary}");
}

#[test]
fn a_worker_that_keeps_dying_is_restarted_with_backoff() {
    let _s = serial();
    let server = Server::start(&["--workers", "1"]);
    let mut killed = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let pid = server.status()["slots"][0]["pid"].as_i64().unwrap_or(0) as i32;
        if pid > 0 && killed.insert(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Without backoff this would be hundreds; with 0, 100, 200, 400, 800, 1600 ms it is a few.
    assert!(
        killed.len() >= 3 && killed.len() <= 10,
        "{} starts in 3 s",
        killed.len()
    );
    let log = server.log_text();
    assert!(
        log.contains("times in a row within 1000 ms of starting, respawning in"),
        "{log}"
    );
    // It recovers once left alone.
    wait_until("a worker again", PATIENCE, || {
        server.ready_pids().len() == 1
    });
    let (ok, summary) = server.cclient(&["--threads", "10"]);
    assert!(ok.success(), "{summary}");
}

#[test]
fn max_requests_recycles_workers_and_loses_nothing() {
    let _s = serial();
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-requests",
        "100",
        "--max-requests-jitter",
        "0",
    ]);
    let first = server.ready_pids();
    let (status, summary) = server.cclient(&[
        "--threads",
        "10",
        "--requests",
        "50",
        "--connect-per-request",
    ]);
    assert_clean_run(&server, status, &summary);
    assert_eq!(summary["acknowledged"], 500);
    let log = server.log_text();
    let retired = log.matches(" requests (--max-requests)").count();
    assert!(retired >= 3, "{retired} recycles for 500 requests: {log}");
    assert!(!server.ready_pids().iter().any(|p| first.contains(p)));
    // No process handled far more than its share (the ones in flight when it retired).
    let mut per_pid = std::collections::BTreeMap::new();
    for r in parse_log(&log) {
        if let Record::Completed { pid, .. } = r {
            *per_pid.entry(pid).or_insert(0u64) += 1;
        }
    }
    assert!(per_pid.values().all(|&n| n <= 110), "{per_pid:?}");
    // Nor did any retire before its share: each counts what it did itself, not what its slot
    // carried over from the workers before it.
    for line in log
        .lines()
        .filter(|l| l.ends_with(" requests (--max-requests)"))
    {
        let pid: u32 = line
            .split("worker ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line}"));
        let done = per_pid.get(&pid).copied().unwrap_or(0);
        assert!(
            done >= 100,
            "worker {pid} retired after {done} requests: {line}"
        );
    }
}

#[test]
fn graceful_stop_under_load_answers_the_backlog_and_resets_nobody() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2"]);
    let since = server.completed_count();
    let load = server.cclient_spawn(&[
        "--threads",
        "100",
        "--connect-per-request",
        "--duration",
        "2",
    ]);
    server.wait_for_load(since, 50);
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(60)).code(), Some(0));
    let (status, summary) = finish_cclient(load);

    // cclient cannot verify (status 3, not a crash), and only because after the stop connects
    // were refused and the final STATS could not be read: every session that got in was
    // served, none was reset or cut off (a refused connect sends nothing: not failed).
    assert_eq!(status.code(), Some(3), "{status:?}: {summary}");
    assert_eq!(summary["check"], "unverifiable", "{summary}");
    assert!(
        summary["check_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("STATS after the run: ")),
        "{summary}"
    );
    let u = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k}: {summary}"))
    };
    let acked = u("acknowledged");
    assert!(acked > 0, "{summary}");
    assert_eq!(
        u("sent"),
        acked,
        "a request sent was not answered: {summary}"
    );
    assert_eq!(u("failed"), 0, "{summary}");
    let errors = summary["errors"].as_object().unwrap();
    let mut refused = 0;
    for (e, n) in errors {
        if e.starts_with("connect: ") {
            refused += n.as_u64().unwrap();
        } else {
            panic!("a session was broken: {e}; {summary}");
        }
    }
    assert_eq!(
        summary["server_total_after"],
        serde_json::Value::Null,
        "{summary}"
    );
    assert!(
        refused > 0,
        "the load ended before the stop, so the stop was not under load: {summary}"
    );
    let log = server.log_text();
    let records = parse_log(&log);
    let (recvd, completed) = message_counts(&records);
    assert_eq!(
        completed as u64, acked,
        "every completed request was acknowledged, and back"
    );
    assert_eq!(recvd, completed, "every request read was answered");
    let last_total = log
        .lines()
        .rev()
        .find_map(|l| l.split(" -- total requests ").nth(1))
        .unwrap();
    assert_eq!(last_total.parse::<u64>().unwrap(), acked);
}

#[test]
fn usr2_upgrades_the_binary_without_refusing_or_failing_anyone() {
    let _s = serial();
    let mut server = Server::start(&["--workers", "2"]);
    let old_master = server.pid().as_raw();
    let mut across = server.connect();
    assert_eq!(across.ask("USER across"), "OK hello across");

    let old_workers: BTreeSet<i32> = server.ready_pids().into_iter().collect();
    let since = server.completed_count();
    let load = server.cclient_spawn(&[
        "--threads",
        "50",
        "--connect-per-request",
        "--duration",
        "3",
    ]);
    server.wait_for_load(since, 50); // mid-run
    server.signal(Signal::SIGUSR2);
    wait_until("the new master's pid file", PATIENCE, || {
        server
            .pid_file_names()
            .is_some_and(|p| p != old_master && alive(p))
    });
    let new_master = server.pid_file_names().unwrap();
    let (status, summary) = finish_cclient(load);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        summary["accounting_ok"], true,
        "totals go on across the upgrade: {summary}"
    );

    // A session opened before the upgrade is still served by its old worker until it quits.
    assert!(across.ask("MSG across the upgrade").starts_with("OK "));
    assert_eq!(across.ask("QUIT"), "OK bye");
    assert_eq!(
        server.wait_exit(PATIENCE).code(),
        Some(0),
        "the old master exits cleanly"
    );
    let records = parse_log(&server.log_text());
    let (recvd, completed) = message_counts(&records);
    assert_eq!(
        (recvd, completed as u64),
        (completed, summary["acknowledged"].as_u64().unwrap() + 1)
    );
    // The load ran across the upgrade: the old workers served its start (waited for above),
    // the new master's workers served some of it too.
    let by_pid = completed_by_pid(&server.log_text());
    assert!(
        by_pid.keys().any(|p| !old_workers.contains(p)),
        "the load ended before the new master's workers served any of it: {by_pid:?}"
    );
    assert_eq!(
        server.status()["total"]["requests"].as_u64().unwrap(),
        completed as u64
    );
    let log = server.log_text();
    assert!(
        log.contains(&format!("{}", Event::UpgradeReady { pid: new_master })),
        "{log}"
    );
    assert!(
        log.contains(&format!("(binary upgrade from master {old_master})")),
        "{log}"
    );
    assert_eq!(server.status()["master_pid"], new_master);

    // The new master kept the old one's connection steering: still exactly in turn.
    if nix::unistd::geteuid().is_root() {
        assert!(
            log.contains(&format!(
                "(reuseport steering, kept from master {old_master})"
            )),
            "{log}"
        );
        wait_until("the old workers to go", PATIENCE, || {
            accepted_by_slot(&server).len() == 2
        });
        let before = accepted_by_slot(&server);
        let clients: Vec<_> = (0..200).map(|_| server.connect()).collect();
        wait_until("100 more each", PATIENCE, || {
            let now = accepted_by_slot(&server);
            now.keys().eq(before.keys()) && now.iter().all(|(slot, n)| *n == before[slot] + 100)
        });
        drop(clients);
    }

    kill(Pid::from_raw(new_master), Signal::SIGTERM).unwrap();
    wait_until("the new master to exit", PATIENCE, || !alive(new_master));
    assert!(
        !server.board.exists(),
        "the new master removed the scoreboard"
    );
    assert!(!server.pid_file.exists(), "and its pid file");
}

/// Connections accepted so far by each worker in the pool, by slot (workers `ready` only).
#[test]
fn new_connections_go_to_the_workers_in_turn_as_the_pool_changes() {
    let _s = serial();
    let server = Server::start(&["--workers", "4", "--max-workers", "5"]);
    let log = server.log_text();
    if !nix::unistd::geteuid().is_root() {
        // Loading the steering program needs privileges: the kernel's hash spreads instead.
        assert!(
            log.contains("spread by the kernel's reuseport hash"),
            "{log}"
        );
        return;
    }
    assert!(log.contains("(reuseport steering)"), "{log}");
    let open = |n: usize| (0..n).map(|_| server.connect()).collect::<Vec<_>>();
    let expect = |want: BTreeMap<u64, u64>| {
        wait_until(&format!("accepted {want:?}"), PATIENCE, || {
            accepted_by_slot(&server) == want
        });
    };
    let first = open(400);
    expect((0..4).map(|slot| (slot, 100)).collect());

    // One more worker: the next 500 are shared by five.
    server.signal(Signal::SIGTTIN);
    wait_until("5 ready workers", PATIENCE, || {
        server.ready_pids().len() == 5
    });
    let second = open(500);
    let mut want: BTreeMap<u64, u64> = (0..4).map(|slot| (slot, 200)).collect();
    let added = *accepted_by_slot(&server)
        .keys()
        .find(|s| !want.contains_key(s))
        .expect("the new worker's slot");
    want.insert(added, 100);
    expect(want.clone());

    // One fewer (the newest socket refuses, its worker finishes its sessions): four share again.
    server.signal(Signal::SIGTTOU);
    wait_until("4 workers", PATIENCE, || server.status()["workers"] == 4);
    let third = open(400);
    wait_until("300 each for the four", PATIENCE, || {
        let counts = accepted_by_slot(&server);
        (0..4).all(|slot| counts.get(&slot) == Some(&300))
    });
    // Still finishing its sessions, or gone: either way it took nothing more.
    let removed = accepted_by_slot(&server).get(&added).copied();
    assert!(matches!(removed, None | Some(100)), "{removed:?}");
    drop((first, second, third));
}

#[test]
fn an_upgrade_that_gives_up_hands_the_steering_back() {
    let _s = serial();
    // The new master takes over the steering, then cannot open the log (its directory moved
    // away) and exits: the old master must go on steering, exactly in turn.
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let log = logs.join("server.log");
    let server = Server::start_with_log(log.to_str(), &["--workers", "4"]);
    server.expect_stderr("cserverd: cannot open log "); // the new master, as provoked
    let moved = dir.path().join("moved");
    fs::rename(&logs, &moved).unwrap();
    let log_text = || fs::read_to_string(moved.join("server.log")).unwrap_or_default();
    if !nix::unistd::geteuid().is_root() {
        assert!(log_text().contains("spread by the kernel's reuseport hash"));
        return;
    }
    server.signal(Signal::SIGUSR2);
    wait_until("the upgrade to give up", PATIENCE, || {
        log_text().contains("before it was ready; this master goes on")
    });
    let clients: Vec<_> = (0..400).map(|_| server.connect()).collect();
    wait_until("100 each", PATIENCE, || {
        accepted_by_slot(&server) == (0..4).map(|slot| (slot, 100)).collect()
    });
    assert_eq!(clients.len(), 400);
}
