//! Planned worker changes move idle sessions instead of ending them: `HUP`, `TTIN`+`TTOU` and
//! `--max-requests` recycling hand each idle session (its socket and state) to a serving worker.
//! The clients notice nothing: no greeting, no error, no chat event lost or repeated.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Sessions that are only connected (half logged in, half not) and chat members.
const PLAIN: usize = 480;
const MEMBERS: usize = 20;

struct Sessions {
    plain: Vec<Client>,
    members: Vec<Client>,
}

impl Sessions {
    fn open(server: &Server) -> Sessions {
        let mut plain = Vec::new();
        for i in 0..PLAIN {
            let mut c = server.connect();
            if i % 2 == 0 {
                assert!(c.ask("USER arijort").starts_with("OK "));
            }
            plain.push(c);
        }
        let mut members: Vec<Client> = Vec::new();
        for i in 0..MEMBERS {
            let mut c = server.connect();
            assert!(c.ask(&format!("USER m{i:02}")).starts_with("OK "));
            assert_eq!(c.ask("JOIN"), "OK 0 joined");
            for (j, m) in members.iter_mut().enumerate() {
                assert_eq!(m.line(), format!("* m{i:02} joined"), "member {j}");
            }
            members.push(c);
        }
        Sessions { plain, members }
    }

    /// Every session answers `PING` with `OK PONG` as its very next line: still connected,
    /// and nothing it was not asked for came before.
    fn all_answer(&mut self, when: &str) {
        for (i, c) in self.plain.iter_mut().chain(&mut self.members).enumerate() {
            assert_eq!(c.ask("PING"), "OK PONG", "session {i} {when}");
        }
    }

    /// Member `k` says `text`: every other member gets it once, the speaker not at all.
    fn say(&mut self, k: usize, text: &str) {
        assert!(self.members[k]
            .ask(&format!("SAY {text}"))
            .starts_with("OK said "));
        self.expect_said(k, text);
    }

    fn expect_said(&mut self, k: usize, text: &str) {
        for (i, m) in self.members.iter_mut().enumerate() {
            if i != k {
                assert_eq!(m.line(), format!("* m{k:02}: {text}"), "member {i}");
            }
        }
    }
}

fn live_workers(server: &Server) -> BTreeSet<i32> {
    server
        .worker_pids()
        .into_iter()
        .filter(|&p| p > 0)
        .collect()
}

/// Waits until none of `old` runs any more and `n` workers serve.
fn wait_replaced(server: &Server, old: &BTreeSet<i32>, n: usize) -> BTreeSet<i32> {
    wait_until("the old workers to hand over and exit", PATIENCE, || {
        old.iter().all(|&p| !alive(p))
    });
    server.wait_workers_ready(n);
    let now = live_workers(server);
    assert!(now.is_disjoint(old), "old {old:?}, now {now:?}");
    now
}

/// The master the scoreboard names (a new one after an upgrade).
fn master_pid(server: &Server) -> i32 {
    server.status()["master_pid"].as_i64().expect("master pid") as i32
}

fn signal_master(server: &Server, sig: Signal) {
    let pid = nix::unistd::Pid::from_raw(master_pid(server));
    nix::sys::signal::kill(pid, sig).expect("signal the master");
}

/// `USR2`: waits for the new master to take over and the old one, its workers' sessions
/// handed over, to exit.
fn upgrade(server: &Server, old: &BTreeSet<i32>, n: usize) -> BTreeSet<i32> {
    let master = master_pid(server);
    signal_master(server, Signal::SIGUSR2);
    upgrade_done(server, master, old, n)
}

/// After `USR2` was sent to `master`: as [`upgrade`].
fn upgrade_done(server: &Server, master: i32, old: &BTreeSet<i32>, n: usize) -> BTreeSet<i32> {
    wait_until("the new master to take over", PATIENCE, || {
        master_pid(server) != master
    });
    wait_until("the old master to exit", PATIENCE, || !alive(master));
    wait_replaced(server, old, n)
}

fn total(server: &Server, what: &str) -> u64 {
    server.status()["total"][what].as_u64().unwrap_or(0)
}

#[test]
fn idle_sessions_and_chat_members_survive_reload_resize_and_recycling() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--handshake-timeout",
        "600",
        "--idle-timeout",
        "600",
        "--max-requests",
        "400",
        "--max-requests-jitter",
        "0",
    ]);
    server.wait_workers_ready(2);
    let first = live_workers(&server);
    let mut s = Sessions::open(&server);
    let everyone = (PLAIN + MEMBERS) as u64;

    // HUP: both workers replaced. A member speaks while the sessions are moving: every other
    // member gets the line exactly once, wherever it is at that moment.
    server.signal(Signal::SIGHUP);
    s.say(0, "said while moving");
    let second = wait_replaced(&server, &first, 2);
    assert_eq!(total(&server, "handed_over"), everyone);
    // Spread over the successors in turn, as new connections are.
    for slot in server.status()["slots"].as_array().unwrap() {
        if second.contains(&(slot["pid"].as_i64().unwrap() as i32)) {
            let open = slot["open"].as_u64().unwrap();
            assert!(
                open >= everyone * 2 / 5,
                "{open} of {everyone} sessions: {slot}"
            );
        }
    }
    s.all_answer("after HUP");
    s.say(1, "after the reload");

    // TTIN then TTOU: the newest worker goes, its sessions move to the other two.
    server.signal(Signal::SIGTTIN);
    server.wait_workers_ready(3);
    let third: BTreeSet<i32> = live_workers(&server).difference(&second).copied().collect();
    assert_eq!(third.len(), 1);
    s.all_answer("with three workers");
    server.signal(Signal::SIGTTOU);
    let left = wait_replaced(&server, &third, 2);
    assert_eq!(left, second, "TTOU retired the newest worker only");
    s.say(2, "after the shrink");
    s.all_answer("after TTOU");

    // Two binary upgrades: the sessions move to the new master's workers each time, and the
    // chat is one hub across the generations.
    let upgraded = upgrade(&server, &second, 2);
    s.say(3, "after an upgrade");
    s.all_answer("after the first upgrade");
    let master = master_pid(&server);
    signal_master(&server, Signal::SIGUSR2);
    s.say(4, "said during an upgrade");
    let second = upgrade_done(&server, master, &upgraded, 2);
    s.all_answer("after the second upgrade");

    // --max-requests: requests on the moved sessions until every worker was recycled.
    let mut sent = 0u64;
    while !live_workers(&server).is_disjoint(&second) {
        assert!(
            sent < 5_000,
            "{sent} requests and the workers were not recycled: {}",
            server.status()["slots"]
        );
        // The logged-in ones: every other session.
        let c = &mut s.plain[(sent as usize * 2) % PLAIN];
        assert!(c.ask(&format!("MSG request {sent}")).starts_with("OK "));
        sent += 1;
    }
    wait_replaced(&server, &second, 2);
    s.all_answer("after recycling");
    s.say(5, "after recycling");

    // Accounting: every move one record, counted on both sides; every acknowledged request
    // in the log and in the total.
    let log = server.log_text();
    let moves = log.matches(" moved from worker ").count() as u64;
    assert_eq!(moves, total(&server, "adopted"));
    assert_eq!(moves, total(&server, "handed_over"));
    assert!(moves >= 4 * everyone, "{moves} moves");
    assert_eq!(log.matches(COMPLETED_REQ).count() as u64, sent);
    assert_eq!(total(&server, "requests"), sent);
    // Every member moved at the reload, at each upgrade and at the recycling at least (a
    // recycled worker's successor may recycle too, and TTOU moved only the third worker's).
    for k in 0..MEMBERS {
        let moved = log
            .matches(&format!("session of user m{k:02} moved from worker "))
            .count();
        assert!(moved >= 4, "member {k} moved {moved} times");
    }
    assert!(!log.contains("told to reconnect"), "no session was cut");
}

#[test]
fn a_request_at_work_is_answered_where_it_began_then_its_session_moves() {
    let server = Server::start(&["--workers", "1", "--work-ms", "500"]);
    let old = live_workers(&server);
    let mut c = server.connect();
    assert_eq!(c.ask("USER arijort"), "OK hello arijort");
    c.send(b"MSG slow one\n");
    wait_until("the request to be at work", PATIENCE, || {
        server.log_text().contains(RECVD_MESSAGE)
    });
    server.signal(Signal::SIGHUP);
    // Answered by the worker that read it (its first request, the server's first)...
    assert_eq!(c.line(), "OK 1 1");
    // ...then idle, handed to the successor.
    wait_replaced(&server, &old, 1);
    assert_eq!(c.ask("PING"), "OK PONG");
    assert!(c.ask("MSG quick").starts_with("OK 1 2"));
    let log = server.log_text();
    let from = old.iter().next().unwrap();
    assert!(log.contains(&format!(
        "session of user arijort moved from worker {from} to"
    )));
    assert_eq!(message_counts(&parse_log(&log)), (2, 2));
}

#[test]
fn a_shell_goes_on_through_a_reload_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = private_file(dir.path(), "secrets", "ari:s3cret\n");
    let server = Server::start(&["--workers", "1", "--secrets", &secrets, "--allow-shell"]);
    let old = live_workers(&server);
    let mut c = server.connect();
    assert_eq!(c.ask("USER ari"), "OK hello ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("SHELL 24 80"), "OK shell");
    c.send(b"echo before-$((1+1))\n");
    c.until("before-2");
    server.signal(Signal::SIGHUP);
    wait_until("the successor", PATIENCE, || {
        !live_workers(&server).is_subset(&old)
    });
    // The shell cannot move (its pty is the old worker's child): it goes on there.
    c.send(b"echo after-$((2+2))\n");
    c.until("after-4");
    let from = *old.iter().next().unwrap();
    assert!(alive(from), "the old worker keeps the shell");
    c.send(b"exit\n");
    c.rest();
    wait_until("the old worker to exit with its shell", PATIENCE, || {
        !alive(from)
    });
    let log = server.log_text();
    assert!(
        log.contains(&format!("server {from} shell end pid ")),
        "{log}"
    );
    assert!(!log.contains("moved from worker"), "{log}");
}

#[test]
fn keep_alive_load_through_a_reload_every_second_loses_nothing() {
    let server = Server::start(&["--workers", "2"]);
    let since = server.completed_count();
    // Reloads start only in the load's first 7 of 12 seconds: each one's sessions are all
    // still there to move (a slow machine took the load's first seconds to get going, and a
    // reload after its end found the sessions closed).
    let load_started = Instant::now();
    let load = server.cclient_spawn(&["--threads", "200", "--duration", "12"]);
    server.wait_for_load(since, 1_000);
    // Every session is open before the first reload (a loaded machine starts the 200 threads
    // over a while): each reload has all 200 to move.
    wait_until("the 200 sessions to be open", PATIENCE, || {
        server.status()["total"]["open"] == 200
    });
    let mut reloads = 0;
    while load_started.elapsed() < Duration::from_secs(7) || reloads < 5 {
        let old = live_workers(&server);
        server.signal(Signal::SIGHUP);
        reloads += 1;
        // Every session of the old workers moved: they have nothing left and exit.
        wait_until(
            "the reloaded workers to hand over and exit",
            PATIENCE,
            || old.iter().all(|&p| !alive(p)),
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (status, summary) = finish_cclient(load);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
    let log = server.log_text();
    let (recvd, completed) = message_counts(&parse_log(&log));
    assert_eq!(recvd, completed);
    assert_eq!(summary["acknowledged"].as_u64(), Some(completed as u64));
    assert_eq!(total(&server, "requests"), completed as u64);
    assert!(reloads >= 5, "{reloads} reloads");
    // The 200 sessions moved at every reload; none was cut.
    let moves = log.matches(" moved from worker ").count();
    assert!(moves >= 200 * reloads, "{moves} moves in {reloads} reloads");
    assert_eq!(total(&server, "errors"), 0, "no session was cut");
}

#[test]
fn an_upgrade_to_a_build_that_takes_no_sessions_lets_them_finish_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("cserverd");
    std::fs::copy(CSERVERD, &binary).unwrap();
    let server = Server::start_binary(&binary, &["--workers", "1", "--shutdown-timeout", "20"]);
    let old = live_workers(&server);
    let mut c = server.connect();
    assert_eq!(c.ask("USER arijort"), "OK hello arijort");
    assert_eq!(c.ask("MSG one"), "OK 1 1");
    // The binary is replaced by a build that takes no sessions (as one from before session
    // hand-over: it never says so on the channel it is given, which it keeps open unread).
    script(
        dir.path(),
        "older",
        &format!("unset CSERVERD_HANDOFF_FD\nexec {CSERVERD} \"$@\""),
    );
    std::fs::rename(dir.path().join("older"), &binary).unwrap();
    let master = master_pid(&server);
    signal_master(&server, Signal::SIGUSR2);
    wait_until("the new master to take over", PATIENCE, || {
        master_pid(&server) != master
    });
    // The session stays with the old worker, which goes on serving it; nothing is lost.
    assert_eq!(c.ask("PING"), "OK PONG");
    assert_eq!(c.ask("MSG two"), "OK 2 2");
    assert!(alive(master) && old.iter().all(|&p| alive(p)));
    assert_eq!(c.ask("QUIT"), "OK bye");
    wait_until("the old master to exit", PATIENCE, || !alive(master));
    let log = server.log_text();
    assert!(log.contains("the new master takes no sessions: open sessions finish here"));
    assert!(!log.contains(" moved from worker "), "{log}");
    assert_eq!(message_counts(&parse_log(&log)), (2, 2));
}

#[test]
fn replies_a_client_has_not_read_yet_are_all_delivered_before_its_session_moves() {
    let server = Server::start(&["--workers", "1"]);
    let old = live_workers(&server);
    let mut c = server.connect();
    assert_eq!(c.ask("USER arijort"), "OK hello arijort");
    // Far more replies than the socket buffers hold, unread: the worker keeps the rest and
    // stops reading (the session is not idle while it holds any).
    const N: usize = 400_000;
    let mut writer = c.stream().try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&b"PING\n".repeat(N)).unwrap();
    });
    wait_until(
        "the worker to hold replies the client has not read",
        PATIENCE,
        || {
            server.status()["slots"][0]["bytes_out"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    );
    server.signal(Signal::SIGHUP);
    for i in 0..N {
        assert_eq!(c.line(), "OK PONG", "reply {i}");
    }
    sending.join().unwrap();
    // All answered where they were read; then idle, the session moved.
    wait_replaced(&server, &old, 1);
    assert_eq!(c.ask("PING"), "OK PONG");
    let from = old.iter().next().unwrap();
    assert!(server.log_text().contains(&format!(
        "session of user arijort moved from worker {from} to "
    )));
}

#[test]
fn a_chat_member_typing_at_a_reload_still_hears_the_chat_while_the_others_move() {
    let server = Server::start(&["--workers", "1"]);
    let old = live_workers(&server);
    let join = |name: &str| {
        let mut c = server.connect();
        assert_eq!(c.ask(&format!("USER {name}")), format!("OK hello {name}"));
        assert!(c.ask("JOIN").starts_with("OK "));
        c
    };
    let mut idle = join("idle");
    let mut typing = join("typing");
    assert_eq!(idle.line(), "* typing joined");
    // Half a line typed: this member cannot move; the idle one does.
    typing.send(b"SA");
    server.signal(Signal::SIGHUP);
    wait_until("the idle member to move", PATIENCE, || {
        server
            .log_text()
            .contains("session of user idle moved from worker")
    });
    // A member on the new worker speaks: the one still on the old worker hears it there.
    let mut late = join("late");
    assert_eq!(idle.line(), "* late joined");
    assert_eq!(typing.line(), "* late joined");
    assert!(late.ask("SAY hello both").starts_with("OK said "));
    assert_eq!(idle.line(), "* late: hello both");
    assert_eq!(typing.line(), "* late: hello both");
    // The line finished, it is answered where it began; then that member moves too.
    assert!(typing.ask("Y and me").starts_with("OK said "));
    assert_eq!(idle.line(), "* typing: and me");
    assert_eq!(late.line(), "* typing: and me");
    wait_replaced(&server, &old, 1);
    assert_eq!(typing.ask("PING"), "OK PONG");
}

#[test]
fn a_moved_session_keeps_its_protocols_framing_and_its_place_under_the_address_limit() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--listen",
        "0=procman",
        "--max-conns-per-ip",
        "2",
    ]);
    let old = live_workers(&server);
    // A procman client ends its commands with NUL, not a line end.
    let mut procman = Client::connect(server.listener("procman"));
    procman.send(b"add 1 2\0");
    assert_eq!(procman.line(), "3");
    let mut plain = server.connect();
    assert_eq!(plain.ask("PING"), "OK PONG");
    server.signal(Signal::SIGHUP);
    wait_replaced(&server, &old, 1);
    procman.send(b"add 40 2\0");
    assert_eq!(procman.line(), "42");
    assert_eq!(plain.ask("PING"), "OK PONG");
    // Both still count against the address: a third connection from it is refused.
    let mut third = Client::connect(server.addr);
    assert!(third.line().starts_with("ERR 503 "), "the limit of 2 holds");
}
