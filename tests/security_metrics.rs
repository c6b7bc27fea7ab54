//! Issue 11, starving: what a hostile client or a careless operator can do to the server's
//! resources. The metrics endpoint under a flood of idle and trickling sockets; duration options
//! too large for the clock.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The metrics endpoint's address, from the master's start-up record.
fn metrics_addr(server: &Server) -> SocketAddr {
    let log = server.log_text();
    let url = log
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|_| panic!("bad metrics address {url:?}"))
}

/// `GET /metrics` on a fresh connection; the whole response (the server closes after it).
fn scrape(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).expect("connect to metrics");
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: cserverd\r\n\r\n")
        .expect("send request");
    let mut response = Vec::new();
    c.read_to_end(&mut response).expect("read response");
    String::from_utf8(response).expect("UTF-8 response")
}

/// True once the server has closed `c` (EOF or reset); false if it is still open after `wait`.
fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // a response to discard (not expected from a silent client)
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn a_scrape_is_served_under_a_flood_of_idle_connections() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    // Many more than the endpoint serves at once; they connect and say nothing.
    let mut idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).expect("idle connect"))
        .collect();

    let start = Instant::now();
    let response = scrape(addr);
    let took = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("cserverd_requests_total"), "{response}");
    // Without eviction it would wait for the idle ones ahead of it to time out, 16 every 2 s.
    assert!(
        took < Duration::from_secs(3),
        "the scrape took {took:?} behind 100 idle connections"
    );

    // None of the idle ones is kept: each is evicted or times out, and the server closes it.
    let deadline = Instant::now() + PATIENCE;
    for (i, c) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(c, left.max(Duration::from_millis(1))),
            "idle connection {i} still open after {PATIENCE:?}"
        );
    }
    // And the endpoint still serves.
    assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_slowloris_scraper_is_cut_off() {
    let server = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    let request = b"GET /metrics HTTP/1.1\r\nHost: cserverd\r\nUser-Agent: slowloris\r\n\r\n";
    let mut c = TcpStream::connect(addr).expect("connect to metrics");
    let start = Instant::now();
    let mut sent = 0;
    // One byte, then up to 500 ms waiting for the server to close; the read's timeout is the
    // client's pace.
    let cut = loop {
        assert!(
            sent < request.len(),
            "the whole request went out a byte every 500 ms without the server closing"
        );
        if c.write_all(&request[sent..sent + 1]).is_err() {
            break start.elapsed();
        }
        sent += 1;
        if closed_within(&mut c, Duration::from_millis(500)) {
            break start.elapsed();
        }
    };
    assert!(
        cut < Duration::from_secs(5),
        "cut off only after {cut:?} ({sent} bytes)"
    );
    // The slot it held is free again.
    assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
}

/// Runs `cserverd` with `args` (on port 0, its log in a temp dir) and waits for it to exit;
/// its status and stderr.
fn cserverd_exit(args: &[&str]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(CSERVERD)
        .args(["--port", "0", "--log"])
        .arg(dir.path().join("log"))
        .arg("--stats-file")
        .arg(dir.path().join("scoreboard"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn cserverd");
    // Polled with a deadline: a cserverd that accepts the option runs until killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cserverd {args:?} started instead of refusing; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, std::fs::read_to_string(&stderr).unwrap())
}

#[test]
fn a_timeout_beyond_the_clock_is_a_bad_option() {
    for (option, value) in [
        ("--idle-timeout", "1e19"),
        ("--handshake-timeout", "31536001"),
        ("--work-ms", "18446744073709551615"),
    ] {
        let (status, stderr) = cserverd_exit(&[option, value]);
        assert_eq!(status.code(), Some(2), "{option} {value}: {stderr}");
        assert!(stderr.contains(option), "{option} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_timeout_of_a_year_serves_a_user() {
    let year = "31536000";
    let mut server = Server::start(&[
        "--idle-timeout",
        year,
        "--handshake-timeout",
        year,
        "--shutdown-timeout",
        year,
        "--worker-timeout",
        year,
        "--work-ms",
        "3600000",
    ]);
    let workers = server.worker_pids();
    let mut c = server.connect();
    // The idle deadline is set here: a year from now.
    assert_eq!(c.ask("USER ari"), "OK hello ari");
    assert_eq!(c.ask("PING"), "OK PONG");
    c.send(b"QUIT\n");
    c.rest();
    assert_eq!(server.worker_pids(), workers, "a worker died");
    // A graceful stop with no session open does not wait for the year.
    assert!(server.stop().success());
}
