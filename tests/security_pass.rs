//! Guessing `PASS` secrets (issue 11, the trust boundary): wrong secrets are counted per client
//! address across connections and workers, and each one shuts that address out of `PASS` for
//! twice as long as the last (1 s, 2 s, 4 s, ... 10 min; src/penalty.rs). The penalties are
//! real seconds: the tests wait them out against deadlines, never by sleeping a guessed time.

mod common;

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use cserver::penalty::{penalty, Source};

/// A secrets file naming ari (secret `s3cret`), and its directory.
fn secrets() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets");
    fs::write(&path, "ari:s3cret\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

fn login(c: &mut Client, user: &str) {
    assert_eq!(c.ask(&format!("USER {user}")), format!("OK hello {user}"));
}

const WRONG: &str = "ERR 401 wrong secret";
const NEED_PASS: &str = "ERR 401 this user needs PASS <secret> first";

/// The refusal of a `PASS` from `addr` while it is penalised, `secs` seconds to go.
fn penalised(addr: &str, secs: u64) -> String {
    format!("ERR 429 too many wrong secrets from {addr}; retry in {secs} s")
}

fn is_penalised(reply: &str, addr: &str) -> bool {
    reply.starts_with(&format!(
        "ERR 429 too many wrong secrets from {addr}; retry in "
    ))
}

/// Sends `line` until it is no longer refused for `addr`'s penalty; returns the reply it got.
fn wait_out(c: &mut Client, line: &str, addr: &str) -> String {
    let mut reply = String::new();
    wait_until(&format!("the end of {addr}'s penalty"), PATIENCE, || {
        reply = c.ask(line);
        !is_penalised(&reply, addr)
    });
    reply
}

/// The record of the penalty for the `strikes`-th wrong secret from `ip`.
fn record(ip: &str, strikes: u64) -> String {
    let source = Source::of(ip.parse().unwrap());
    let length = penalty(strikes);
    Event::PassPenalty {
        source,
        strikes,
        length,
    }
    .to_string()
}

/// How many penalty records the log holds.
fn penalty_records(server: &Server) -> usize {
    server.log_text().matches(" -- PASS penalty for ").count()
}

fn loopback(n: u8) -> IpAddr {
    [127, 0, 0, n].into()
}

#[test]
fn a_guess_after_a_reconnect_meets_the_penalty_and_the_right_secret_waits_it_out() {
    let (_dir, secrets) = secrets();
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    let mut a = server.connect();
    login(&mut a, "ari");
    assert_eq!(a.ask("PASS guess1"), WRONG);
    let wrong_at = Instant::now();
    drop(a);
    // A new connection does not start afresh: the address is penalised, and its PASS is not
    // even compared, the right secret no more than a wrong one.
    let mut b = server.connect();
    login(&mut b, "ari");
    assert_eq!(b.ask("PASS guess2"), penalised("127.0.0.1", 1));
    assert_eq!(b.ask("PASS s3cret"), penalised("127.0.0.1", 1));
    assert_eq!(b.ask("MSG hi"), NEED_PASS);
    // Only PASS is held back: the address's other requests, and users without secrets, go on.
    assert_eq!(b.ask("PING"), "OK PONG");
    let mut bob = server.connect();
    login(&mut bob, "bob");
    assert_eq!(bob.ask("MSG from the same address"), "OK 1 1");
    // Another address is not penalised.
    let mut other = server.connect_from(loopback(2));
    login(&mut other, "ari");
    assert_eq!(other.ask("PASS s3cret"), "OK pass accepted");
    // Once the second is over, the right secret is compared again, and works.
    assert_eq!(
        wait_out(&mut b, "PASS s3cret", "127.0.0.1"),
        "OK pass accepted"
    );
    let waited = wrong_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "penalty of {waited:?}"
    );
    assert_eq!(b.ask("MSG in"), "OK 2 2");
    // The right secret forgave the wrong one: the next wrong secret costs 1 s again, not 2.
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS guess3"), WRONG);
    assert_eq!(c.ask("PASS guess4"), penalised("127.0.0.1", 1));
    let log = server.log_text();
    assert_eq!(log.matches(&record("127.0.0.1", 1)).count(), 2, "{log}");
    assert_eq!(penalty_records(&server), 2);
    assert!(!log.contains("s3cret") && !log.contains("guess"), "{log}");
}

#[test]
fn every_worker_shares_the_penalty_and_racing_guesses_get_one_compared() {
    let (_dir, secrets) = secrets();
    let server = Server::start(&["--workers", "2", "--secrets", &secrets]);
    // Four sessions on each worker (the greeting names it).
    let mut sessions: Vec<(Client, String)> = Vec::new();
    for _ in 0..200 {
        let mut c = Client::connect(server.addr);
        let greeting = c.line();
        let pid = greeting.split_whitespace().nth(4).unwrap().to_string();
        if sessions.iter().filter(|(_, p)| *p == pid).count() < 4 {
            sessions.push((c, pid));
        }
        if sessions.len() == 8 {
            break;
        }
    }
    let workers: HashSet<&String> = sessions.iter().map(|(_, p)| p).collect();
    assert_eq!(sessions.len(), 8, "four sessions on each of two workers");
    assert_eq!(workers.len(), 2);
    for (c, _) in &mut sessions {
        login(c, "ari");
    }
    // All eight guess at once: one secret is compared, and seven are refused unlooked-at, on
    // both workers.
    for (i, (c, _)) in sessions.iter_mut().enumerate() {
        c.send(format!("PASS guess{i}\n").as_bytes());
    }
    let replies: Vec<(String, String)> = sessions
        .iter_mut()
        .map(|(c, pid)| (c.line(), pid.clone()))
        .collect();
    let compared: Vec<&(String, String)> = replies.iter().filter(|(r, _)| r == WRONG).collect();
    assert_eq!(compared.len(), 1, "{replies:?}");
    let guessed_on = compared[0].1.clone();
    for (reply, _) in replies.iter().filter(|(r, _)| r != WRONG) {
        assert_eq!(*reply, penalised("127.0.0.1", 1), "{replies:?}");
    }
    let on = |same: bool| -> Vec<usize> {
        (0..sessions.len())
            .filter(|&i| (sessions[i].1 == guessed_on) == same)
            .collect()
    };
    let (first, other) = (on(true), on(false));
    // Waited out on the other worker: compared again there, and right.
    let c = &mut sessions[other[0]].0;
    assert_eq!(wait_out(c, "PASS s3cret", "127.0.0.1"), "OK pass accepted");
    // And the other way round: a wrong secret on the other worker penalises the address on
    // the first.
    assert_eq!(sessions[other[1]].0.ask("PASS guess8"), WRONG);
    let c = &mut sessions[first[0]].0;
    assert_eq!(c.ask("PASS s3cret"), penalised("127.0.0.1", 1));
    assert_eq!(penalty_records(&server), 2);
}

#[test]
fn each_penalty_is_one_record() {
    let (_dir, secrets) = secrets();
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    let mut a = server.connect();
    login(&mut a, "ari");
    assert_eq!(a.ask("PASS guess1"), WRONG);
    // Refused tries write nothing, however many: a penalised address cannot fill the log.
    for _ in 0..50 {
        let mut c = server.connect();
        login(&mut c, "ari");
        assert!(is_penalised(&c.ask("PASS again"), "127.0.0.1"));
    }
    assert_eq!(penalty_records(&server), 1);
    // The next wrong secret once the penalty is over: a second penalty, twice as long.
    assert_eq!(wait_out(&mut a, "PASS guess2", "127.0.0.1"), WRONG);
    assert_eq!(a.ask("PASS guess3"), penalised("127.0.0.1", 2));
    let log = server.log_text();
    assert_eq!(log.matches(&record("127.0.0.1", 1)).count(), 1, "{log}");
    assert_eq!(log.matches(&record("127.0.0.1", 2)).count(), 1, "{log}");
    assert_eq!(penalty_records(&server), 2);
    assert!(
        log.contains(" -- PASS penalty for 127.0.0.1: 2 wrong secrets, 2 s\n"),
        "{log}"
    );
}

#[test]
fn three_wrong_secrets_still_close_a_session_that_waits_out_its_penalties() {
    let (_dir, secrets) = secrets();
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    // Two clients at two addresses, side by side, so that their penalties run together.
    let mut e = server.connect();
    let mut f = server.connect_from(loopback(2));
    login(&mut e, "ari");
    login(&mut f, "ari");
    assert_eq!(e.ask("PASS a"), WRONG);
    assert_eq!(f.ask("PASS a"), WRONG);
    // Refused tries are not guesses: they do not count towards the three.
    assert_eq!(wait_out(&mut e, "PASS b", "127.0.0.1"), WRONG);
    assert_eq!(wait_out(&mut f, "PASS b", "127.0.0.2"), WRONG);
    assert_eq!(
        wait_out(&mut e, "PASS c", "127.0.0.1"),
        "ERR 401 too many wrong secrets; closing"
    );
    assert_eq!(e.rest(), "");
    // Switching names does not buy more guesses either.
    login(&mut f, "bob");
    login(&mut f, "ari");
    assert_eq!(
        wait_out(&mut f, "PASS c", "127.0.0.2"),
        "ERR 401 too many wrong secrets; closing"
    );
    assert_eq!(f.rest(), "");
    let log = server.log_text();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        for strikes in 1..=3 {
            assert_eq!(log.matches(&record(ip, strikes)).count(), 1, "{log}");
        }
    }
}

#[test]
fn behind_a_proxy_the_header_names_the_penalised_address() {
    let (_dir, secrets) = secrets();
    let server = Server::start(&[
        "--workers",
        "1",
        "--secrets",
        &secrets,
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
    ]);
    let via = |client: &str| {
        let mut c = Client::connect(server.addr);
        let family = if client.contains(':') { "TCP6" } else { "TCP4" };
        let to = if client.contains(':') {
            "::1"
        } else {
            "10.0.0.1"
        };
        c.send(format!("PROXY {family} {client} {to} 4242 31337\r\n").as_bytes());
        assert!(c.line().starts_with("OK cserverd "));
        login(&mut c, "ari");
        c
    };
    assert_eq!(via("192.0.2.7").ask("PASS guess"), WRONG);
    // The same client IPv4-mapped is the same address; the proxy itself, and the client's
    // neighbour, are not penalised.
    assert_eq!(
        via("::ffff:192.0.2.7").ask("PASS s3cret"),
        penalised("192.0.2.7", 1)
    );
    assert_eq!(via("192.0.2.8").ask("PASS s3cret"), "OK pass accepted");
    // IPv6 clients are penalised by their /64, where a host may pick any address.
    assert_eq!(via("2001:db8::1").ask("PASS guess"), WRONG);
    assert_eq!(
        via("2001:db8::ffff:2").ask("PASS s3cret"),
        penalised("2001:db8::/64", 1)
    );
    assert_eq!(
        via("2001:db8:0:1::1").ask("PASS s3cret"),
        "OK pass accepted"
    );
    let log = server.log_text();
    assert!(log.contains(&record("192.0.2.7", 1)), "{log}");
    assert!(log.contains(&record("2001:db8::1", 1)), "{log}");
    assert_eq!(penalty_records(&server), 2);
}
