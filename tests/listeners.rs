//! Several listeners in one pool (`--listen [ADDR:]PORT[=PROTOCOL]`): each speaks its own
//! protocol, every worker serves all of them, and they live through TTIN, TTOU, USR2 and TERM
//! together. The `reverse` protocol as its seed's users knew it, driven with `nc`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

/// One line to a reverse listener and its answer.
fn reversed(addr: SocketAddr, line: &str) -> String {
    let mut c = Client::connect(addr);
    c.send(format!("{line}\n").as_bytes());
    c.line()
}

#[test]
fn reverse_answers_each_line_as_nc_users_knew_it_and_exit_closes_only_that_connection() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--listen",
        "0=reverse",
        "--max-line",
        "1024",
    ]);
    let addr = server.listener("reverse");
    // As the seed's README shows: `nc localhost 9090`, and type.
    let mut nc = Command::new("nc")
        .args([&addr.ip().to_string(), &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("nc (netcat-openbsd) is installed by make test");
    let mut typing = nc.stdin.take().unwrap();
    typing
        .write_all("hello world\nhéllo wörld ✓\nexit\n".as_bytes())
        .unwrap();
    // The server closes the connection at `exit`; nc ends at the end of its input and the
    // connection's (it keeps reading its input while that is open, whatever the server did).
    drop(typing);
    let out = nc.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(text(&out.stdout), "dlrow olleh\n✓ dlröw olléh\n");

    // No greeting, no login; a line end comes back as it came (CRLF from telnet), and a line
    // arriving in pieces is one line (the seed reversed each read).
    let mut c = Client::connect(addr);
    c.send(b"ab");
    let me = c.stream().local_addr().unwrap();
    wait_until("the worker to read the first piece", PATIENCE, || {
        server_side(addr.port(), me).is_some_and(|s| s.unread == 0)
            && server.status()["total"]["bytes_in"].as_u64() > Some(0)
    });
    c.send(b"cd\r\nxyz\n");
    assert_eq!(c.line_bytes(), b"dcba\r");
    assert_eq!(c.line(), "zyx");
    // `exit` ended only its own connection: the server serves the next one.
    assert_eq!(reversed(addr, "still here"), "ereh llits");
    let log = server.log_text();
    for line in ["hello world", "héllo wörld ✓", "abcd", "xyz", "still here"] {
        let record = format!(" reverse \"{line}\" from client 127.0.0.1:");
        assert!(log.contains(&record), "no {record:?} in:\n{log}");
    }
    assert!(!log.contains("reverse \"exit\""), "{log}");
    // A line over --max-line is refused in plain words, and the next line is served.
    c.send(format!("{}\nok\n", "x".repeat(5000)).as_bytes());
    assert_eq!(c.line(), "line too long (max 1024 bytes); discarded");
    assert_eq!(c.line(), "ko");
}

#[test]
fn every_worker_serves_every_listener_through_ttin_ttou_usr2_and_term() {
    let mut server = Server::start(&[
        "--workers",
        "2",
        "--listen",
        "0=reverse",
        "--listen",
        "[::1]:0=reverse",
        "--shutdown-timeout",
        "2",
    ]);
    let v4 = server.listener("reverse");
    let v6 = server.listening[1].0;
    assert!(v6.is_ipv6(), "{:?}", server.listening);
    // The default listener still speaks cserver (connect reads its greeting).
    let mut plain = server.connect();
    assert_eq!(plain.ask("PING"), "OK PONG");
    assert_eq!(reversed(v6, "over ipv6"), "6vpi revo");

    // New connections of a listener are spread over the workers: each takes some.
    let spread = |server: &Server, n: usize| {
        let before = accepted_by_slot(server);
        for i in 0..n {
            let line = format!("n{i}");
            assert_eq!(reversed(v4, &line), line.chars().rev().collect::<String>());
        }
        wait_until("every worker to count its share", PATIENCE, || {
            let now = accepted_by_slot(server);
            now.values().sum::<u64>() >= before.values().sum::<u64>() + n as u64
                && now.len() >= before.len()
        });
        let now = accepted_by_slot(server);
        now.iter()
            .filter(|(slot, n)| **n > before.get(slot).copied().unwrap_or(0))
            .count()
    };
    assert_eq!(spread(&server, 20), 2, "{:?}", accepted_by_slot(&server));

    // TTIN: the third worker serves the reverse listeners too.
    server.signal(Signal::SIGTTIN);
    server.wait_workers_ready(3);
    assert_eq!(spread(&server, 30), 3, "{:?}", accepted_by_slot(&server));
    assert_eq!(reversed(v6, "three"), "eerht");
    // TTOU: back to two, nothing refused.
    server.signal(Signal::SIGTTOU);
    wait_until("two workers", PATIENCE, || {
        server.status()["workers"].as_u64() == Some(2) && accepted_by_slot(&server).len() == 2
    });
    assert_eq!(spread(&server, 20), 2, "{:?}", accepted_by_slot(&server));

    // USR2: the new master takes every listener, on the same addresses.
    let old_master = server.pid().as_raw();
    let mut across = Client::connect(v4);
    assert_eq!(across.ask("before"), "erofeb");
    server.signal(Signal::SIGUSR2);
    wait_until("the new master's pid file", PATIENCE, || {
        server
            .pid_file_names()
            .is_some_and(|p| p != old_master && alive(p))
    });
    let new_master = server.pid_file_names().unwrap();
    // The old master hands over and exits; the session it held goes on until it ends.
    assert_eq!(across.ask("during"), "gnirud");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    drop(across);
    assert_eq!(reversed(v4, "after"), "retfa");
    assert_eq!(reversed(v6, "after6"), "6retfa");
    let mut plain = Client::connect(server.addr);
    assert!(plain.line().starts_with("OK cserverd "));
    let log = server.log_text();
    assert!(
        log.contains(&format!("also listening on {v4} (reverse)"))
            && log.contains(&format!("also listening on {v6} (reverse)")),
        "{log}"
    );

    // TERM: a reverse session is served until the stop's deadline, then told in plain words.
    let mut last = Client::connect(v4);
    assert_eq!(last.ask("last"), "tsal");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new_master), Signal::SIGTERM).unwrap();
    wait_until("the stop to begin", PATIENCE, || {
        server.status()["state"] == "stopping"
    });
    assert_eq!(last.ask("still"), "llits");
    assert_eq!(last.line(), "server shutting down");
    assert_eq!(last.rest(), "");
    wait_until("the new master to exit", PATIENCE, || !alive(new_master));
    // Every listener is closed: nothing is accepted any more.
    for addr in [v4, v6, server.addr] {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still accepts");
    }
}

#[test]
fn every_protocol_counts_its_requests_exactly_as_logged() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--listen",
        "0=reverse",
        "--listen",
        "0=chat",
        "--listen",
        "0=procman",
    ]);
    let mut msg = server.connect();
    assert_eq!(msg.ask("USER counter"), "OK hello counter");
    for i in 0..3 {
        assert!(msg.ask(&format!("MSG m{i}")).starts_with("OK "));
    }
    for i in 0..7 {
        assert_eq!(
            reversed(server.listener("reverse"), &format!("r{i}")),
            format!("{i}r")
        );
    }
    // Chat: two joins, five lines, one leave: eight requests.
    let chat = server.listener("chat");
    let mut a = Client::connect(chat);
    let mut b = Client::connect(chat);
    assert!(a.line().ends_with(" connected!"));
    for i in 0..5 {
        b.send(format!("c{i}\n").as_bytes());
        assert!(a.line().ends_with(&format!(": c{i}")));
    }
    drop(b);
    assert!(a.line().ends_with(" disconnected!"));
    // Procman: four commands.
    let mut p = Client::connect(server.listener("procman"));
    for command in ["add 1 1", "mult 2 2", "list", "bogus"] {
        p.send(format!("{command}\0").as_bytes());
        p.line();
    }
    let want = [
        ("cserver", 3u64),
        ("chat", 8),
        ("reverse", 7),
        ("procman", 4),
        ("rembash", 0),
    ];
    wait_until("every request counted", PATIENCE, || {
        let status = server.status();
        want.iter()
            .all(|(p, n)| status["total"]["by_protocol"][p].as_u64() == Some(*n))
    });
    // One record each, as counted.
    let log = server.log_text();
    let records = |what: &str| log.lines().filter(|l| l.contains(what)).count() as u64;
    assert_eq!(
        records(" chat join \"") + records(" chat \"") + records(" chat leave \""),
        8
    );
    assert_eq!(records(" reverse \""), 7);
    assert_eq!(records(" procman \""), 4);
    // The per-slot counts add up to the totals.
    let status = server.status();
    for (p, n) in want {
        let sum: u64 = status["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["by_protocol"][p].as_u64().unwrap())
            .sum();
        assert_eq!(sum, n, "{p}: {status}");
    }
    // STATS, cserverctl status and /metrics say the same.
    let stats = msg.ask("STATS");
    assert!(stats.starts_with("OK "), "{stats}");
    let total = msg.line();
    assert!(
        total.ends_with(" chat 8 reverse 7 procman 4 rembash 0"),
        "{total}"
    );
    let out = Command::new(CSERVERCTL)
        .args(["status", "--stats-file"])
        .arg(&server.board)
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("other protocols chat 8 reverse 7 procman 4 rembash 0"),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(CSERVERCTL)
        .args(["status", "--prometheus", "--stats-file"])
        .arg(&server.board)
        .output()
        .unwrap();
    let metrics = text(&out.stdout);
    for (p, n) in want {
        let sample = format!("cserverd_requests_total{{protocol=\"{p}\"}} {n}\n");
        assert!(metrics.contains(&sample), "no {sample:?} in\n{metrics}");
    }
}
