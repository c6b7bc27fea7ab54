//! Session deadlines: a client that never logs in, one that goes idle and one that trickles
//! bytes without ever finishing a line are each closed with a last `ERR 408`; a session that
//! keeps making requests is not.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn handshake_and_idle_timeouts_close_with_a_last_err() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--handshake-timeout",
        "0.5",
        "--idle-timeout",
        "1",
    ]);
    let start = Instant::now();
    let mut silent = server.connect();
    assert_eq!(silent.line(), "ERR 408 timeout: no USER in time; closing");
    assert_eq!(silent.rest(), "");
    assert!(start.elapsed() < Duration::from_secs(5));

    // Unauthenticated chatter does not extend the handshake.
    let mut chatty = server.connect();
    for _ in 0..3 {
        assert_eq!(chatty.ask("PING"), "OK PONG");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(chatty.line(), "ERR 408 timeout: no USER in time; closing");

    let mut idle = server.connect();
    assert_eq!(idle.ask("USER idle"), "OK hello idle");
    assert_eq!(idle.line(), "ERR 408 timeout: idle too long; closing");
    assert_eq!(idle.rest(), "");
    // Each timeout is one error in the worker's counts.
    wait_until("three timeouts counted", PATIENCE, || {
        server.status()["total"]["errors"] == 3
    });
}

#[test]
fn requests_keep_a_session_alive_past_its_idle_timeout() {
    // A handshake deadline far beyond the test: only the idle deadline, moved by each request,
    // can close the session (and must, once it is silent).
    let server = Server::start(&[
        "--workers",
        "1",
        "--idle-timeout",
        "1",
        "--handshake-timeout",
        "60",
    ]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER busy"), "OK hello busy");
    // A request every 300 ms for 2.4 s: more than twice the idle timeout, never idle for it.
    for i in 1..=8 {
        thread::sleep(Duration::from_millis(300));
        assert_eq!(c.ask(&format!("MSG still here {i}")), format!("OK {i} {i}"));
    }
    // Then silent: closed after one idle timeout.
    assert_eq!(c.line(), "ERR 408 timeout: idle too long; closing");
}

#[test]
fn a_slowloris_client_cannot_hold_a_session() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "1",
    ]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER slow"), "OK hello slow");
    // One byte every 150 ms, never a complete line: the idle deadline does not move.
    let start = Instant::now();
    let mut closed = false;
    for b in b"MSG this line never ends ".iter().cycle().take(100) {
        if c.stream().write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        c.stream()
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        let mut buf = [0u8; 256];
        match c.stream().read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("ERR 408 timeout: idle"))
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the trickling client was never cut off");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_request_at_work_outlasts_the_idle_timeout() {
    // The work takes longer than the session may stay idle: a session waiting for its reply is
    // not idle, so it gets the reply, not ERR 408.
    let server = Server::start(&["--workers", "1", "--idle-timeout", "1", "--work-ms", "1800"]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER patient"), "OK hello patient");
    let start = Instant::now();
    assert_eq!(c.ask("MSG slow work"), "OK 1 1");
    assert!(start.elapsed() >= Duration::from_millis(1800));
    // Then idle for real: closed after one idle timeout.
    assert_eq!(c.line(), "ERR 408 timeout: idle too long; closing");
}

#[test]
fn the_idle_timeout_spares_a_chat_listener_member_that_only_listens() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--idle-timeout",
        "1",
        "--listen",
        "0=chat",
    ]);
    // A member of the chat listener may only listen; a JOIN member of the line protocol is a
    // session like any other, closed when idle.
    let mut listener = Client::connect(server.listener("chat"));
    let mut member = server.connect();
    assert_eq!(member.ask("USER ann"), "OK hello ann");
    assert_eq!(member.ask("JOIN"), "OK 0 joined");
    assert_eq!(listener.line(), "ann connected!");
    assert_eq!(member.line(), "ERR 408 timeout: idle too long; closing");
    assert_eq!(member.rest(), "");
    assert_eq!(listener.line(), "ann disconnected!");
    // Still there past the timeout: it hears the next speaker.
    let mut speaker = server.connect();
    assert_eq!(speaker.ask("USER bob"), "OK hello bob");
    assert_eq!(speaker.ask("JOIN"), "OK 0 joined");
    assert_eq!(listener.line(), "bob connected!");
    assert!(speaker.ask("SAY still there?").starts_with("OK said "));
    assert_eq!(listener.line(), "bob: still there?");
}
