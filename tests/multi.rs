//! `cclient --conns-per-thread N`: each load thread drives N sessions with its own epoll loop.
//! Thousands of sessions from a few threads, exact accounting against the log, sessions that
//! really run at once, a connection per request, and failures (nothing listening, sessions
//! refused, a server that never answers, `ERR` replies) that end by themselves.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The load tests share two cores: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Texts of the `completed req` records.
fn completed_texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Completed { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn assert_all_acknowledged(summary: &Value, n: u64) {
    assert_eq!(summary["sent"], n, "{summary}");
    assert_eq!(summary["acknowledged"], n, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
    assert_eq!(summary["server_delta"], n, "{summary}");
}

#[test]
fn ten_threads_drive_a_thousand_sessions_with_exact_accounting() {
    let _serial = serial();
    let server = Server::start(&["--workers", "2"]);
    let acks = server.dir.path().join("acks");
    let acks_arg = acks.to_str().unwrap();
    let (status, summary) = server.cclient(&[
        "--threads",
        "10",
        "--conns-per-thread",
        "100",
        "--requests",
        "5",
        "--acks",
        acks_arg,
    ]);
    assert!(status.success(), "{summary}");
    assert_all_acknowledged(&summary, 5000);
    // The JSON keeps its shape: `threads` is still the --threads given.
    assert_eq!(summary["threads"], 10, "{summary}");
    assert_eq!(summary["requests_per_thread"], 5, "{summary}");

    let records = parse_log(&server.log_text());
    assert_eq!(message_counts(&records), (5000, 5000));
    // %t is the session number (thread * 100 + i): every text is distinct.
    let logged: BTreeSet<String> = completed_texts(&records).into_iter().collect();
    assert_eq!(logged.len(), 5000);
    let expected: BTreeSet<String> = (0..1000)
        .flat_map(|t| (0..5).map(move |r| format!("hello from arijort thread {t} request {r}")))
        .collect();
    assert_eq!(logged, expected);
    // --acks lists exactly the acknowledged texts.
    let acked: Vec<String> = std::fs::read_to_string(&acks)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(acked.len(), 5000);
    assert_eq!(acked.into_iter().collect::<BTreeSet<_>>(), logged);
    assert_eq!(server.status()["total"]["requests"], 5000);
}

#[test]
fn two_thousand_sessions_from_four_threads_run_at_once() {
    let _serial = serial();
    // Every MSG takes a second on the server: one after the other would take 2000 s / 4.
    let server = Server::start(&["--workers", "2", "--work-ms", "1000"]);
    let (status, summary) = server.cclient(&["--threads", "4", "--conns-per-thread", "500"]);
    assert!(status.success(), "{summary}");
    assert_all_acknowledged(&summary, 2000);
    let wall = summary["wall_s"].as_f64().unwrap();
    assert!((1.0..10.0).contains(&wall), "wall {wall} s: {summary}");
    let p50 = summary["latency"]["p50_us"].as_u64().unwrap();
    assert!(p50 >= 1_000_000, "MSG latency {p50} µs below --work-ms");
    let records = parse_log(&server.log_text());
    assert_eq!(message_counts(&records), (2000, 2000));
}

#[test]
fn a_connection_per_request_from_many_sessions() {
    let _serial = serial();
    let server = Server::start(&["--workers", "2"]);
    let (status, summary) = server.cclient(&[
        "--connect-per-request",
        "--threads",
        "4",
        "--conns-per-thread",
        "25",
        "--requests",
        "4",
    ]);
    assert!(status.success(), "{summary}");
    assert_all_acknowledged(&summary, 400);
    assert_eq!(summary["connect_per_request"], true);
    let records = parse_log(&server.log_text());
    assert_eq!(message_counts(&records), (400, 400));
    let logged: BTreeSet<String> = completed_texts(&records).into_iter().collect();
    assert_eq!(logged.len(), 400);
    // One connection per request, plus the two STATS sessions.
    assert_eq!(server.status()["total"]["accepted"], 402);
}

#[test]
fn keeps_going_for_a_duration() {
    let _serial = serial();
    let server = Server::start(&["--workers", "2"]);
    let (status, summary) = server.cclient(&[
        "--threads",
        "2",
        "--conns-per-thread",
        "50",
        "--duration",
        "1",
        "--message",
        "%t/%r",
    ]);
    assert!(status.success(), "{summary}");
    let n = summary["acknowledged"].as_u64().unwrap();
    assert!(n >= 100, "{summary}");
    assert_all_acknowledged(&summary, n);
    assert_eq!(summary["duration_s"], 1.0);
    let wall = summary["wall_s"].as_f64().unwrap();
    assert!((1.0..5.0).contains(&wall), "wall {wall} s");
    let records = parse_log(&server.log_text());
    let texts = completed_texts(&records);
    assert_eq!(texts.len() as u64, n);
    let sessions: BTreeSet<&str> = texts.iter().map(|t| t.split_once('/').unwrap().0).collect();
    assert_eq!(sessions.len(), 100, "every session sent");
    assert_eq!(texts.iter().collect::<BTreeSet<_>>().len() as u64, n);
}

/// Runs cclient with `args`; kills it and fails if it has not ended within `limit`.
fn run_bounded(args: &[&str], limit: Duration) -> (ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let child = Command::new(CCLIENT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cclient");
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(limit) else {
        let _ = kill(pid, Signal::SIGKILL);
        panic!("cclient {args:?} did not stop by itself within {limit:?}");
    };
    let out = out.expect("cclient output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A port where nothing listens.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn nothing_listening_fails_at_once() {
    let _serial = serial();
    let port = dead_port().to_string();
    let (status, stdout, stderr, took) = run_bounded(
        &[
            "--port",
            &port,
            "--threads",
            "4",
            "--conns-per-thread",
            "100",
            "--requests",
            "3",
            "--timeout",
            "5",
            "--json",
        ],
        Duration::from_secs(15),
    );
    assert!(!status.success(), "{stdout}");
    assert!(
        stderr.contains("cannot reach cserverd") && stderr.contains("Connection refused"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// What a fake server does with `MSG`.
#[derive(Clone, Copy)]
enum OnMsg {
    /// Never answers (the session waits for its timeout).
    Silence,
    /// Answers `ERR 503 try later`.
    Refuse,
    /// Acknowledges every `MSG` and counts it in `count`; once anything was counted, `STATS`
    /// reports that count plus `miscount`: 0 is an honest server, anything else one whose books
    /// are off by that much.
    Count {
        count: &'static AtomicU64,
        miscount: i64,
    },
}

/// A fake cserverd on its own port: greeting, `USER`, a `STATS` with total 0, and `MSG` as
/// `on_msg` says. One thread per connection.
fn fake_server(on_msg: OnMsg) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            thread::spawn(move || fake_session(stream, on_msg));
        }
    });
    port
}

fn fake_session(stream: TcpStream, on_msg: OnMsg) {
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    if out.write_all(b"OK fake ready\n").is_err() {
        return;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let reply = match (line.split_whitespace().next(), on_msg) {
            (Some("USER"), _) => "OK hello\n".to_string(),
            (Some("STATS"), OnMsg::Count { count, miscount }) => {
                let n = count.load(SeqCst);
                let total = if n == 0 {
                    0
                } else {
                    n.saturating_add_signed(miscount)
                };
                format!("OK 1 stats\ntotal requests {total} accepted 0\n")
            }
            (Some("STATS"), _) => "OK 1 stats\ntotal requests 0 accepted 0\n".to_string(),
            (Some("MSG"), OnMsg::Refuse) => "ERR 503 try later\n".to_string(),
            (Some("MSG"), OnMsg::Count { count, .. }) => {
                let n = count.fetch_add(1, SeqCst) + 1;
                format!("OK {n} {n}\n")
            }
            (Some("QUIT"), _) => "OK bye\n".to_string(),
            _ => continue,
        };
        if out.write_all(reply.as_bytes()).is_err() || line == "QUIT" {
            break;
        }
    }
}

fn summary_of(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("cclient printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// A listener on a port outside the kernel's ephemeral range, so that none of a hundred
/// connects to it (once it is gone) can pick it as its own source port and connect to itself.
fn listener_outside_ephemeral_range() -> TcpListener {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    (low.saturating_sub(2000).max(1024)..low)
        .rev()
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").unwrap())
}

#[test]
fn refused_sessions_send_nothing_and_end() {
    let _serial = serial();
    // The listener answers the STATS before the run, then goes away: every session's connect
    // is refused, and without --duration none of its requests is sent.
    let listener = listener_outside_ephemeral_range();
    let port = listener.local_addr().unwrap().port().to_string();
    thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            drop(listener);
            fake_session(stream, OnMsg::Silence);
        }
    });
    let (status, stdout, stderr, took) = run_bounded(
        &[
            "--port",
            &port,
            "--threads",
            "2",
            "--conns-per-thread",
            "50",
            "--requests",
            "3",
            "--timeout",
            "5",
            "--json",
        ],
        Duration::from_secs(15),
    );
    assert!(!status.success(), "{stdout}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let summary = summary_of(&stdout, &stderr);
    assert_eq!(summary["sent"], 0, "{summary}");
    assert_eq!(summary["acknowledged"], 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["not_sent"], 300, "{summary}");
    // Nor can the server's count be read after the run: unverifiable, status 3.
    assert_eq!(summary["check"], "unverifiable", "{summary}");
    assert_eq!(status.code(), Some(3), "{summary}");
    assert_eq!(
        summary["errors"]["connect: Connection refused (os error 111)"], 100,
        "{summary}"
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let _serial = serial();
    let port = fake_server(OnMsg::Silence).to_string();
    let (status, stdout, stderr, took) = run_bounded(
        &[
            "--port",
            &port,
            "--threads",
            "2",
            "--conns-per-thread",
            "10",
            "--timeout",
            "5",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{stdout}");
    let summary = summary_of(&stdout, &stderr);
    assert_eq!(summary["sent"], 20, "{summary}");
    assert_eq!(summary["acknowledged"], 0, "{summary}");
    assert_eq!(summary["failed"], 20, "{summary}");
    assert_eq!(summary["errors"]["receive: timed out"], 20, "{summary}");
    let wall = summary["wall_s"].as_f64().unwrap();
    assert!((4.9..8.0).contains(&wall), "wall {wall} s");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn err_replies_fail_the_request_and_the_session_reconnects() {
    let _serial = serial();
    let port = fake_server(OnMsg::Refuse).to_string();
    let (status, stdout, stderr, _) = run_bounded(
        &[
            "--port",
            &port,
            "--threads",
            "2",
            "--conns-per-thread",
            "10",
            "--requests",
            "3",
            "--timeout",
            "5",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{stdout}");
    let summary = summary_of(&stdout, &stderr);
    // Each failed MSG closes its connection; the next request connects again and is sent.
    assert_eq!(summary["sent"], 60, "{summary}");
    assert_eq!(summary["failed"], 60, "{summary}");
    assert_eq!(summary["errors"]["MSG: ERR 503 try later"], 60, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
}

/// Runs cclient (both drivers: a thread per session, and an epoll loop driving several) against
/// a fake server of its own whose `STATS` is `miscount` off the number of `MSG`s it acknowledged.
fn run_against_books_off_by(miscount: i64, args: &[&str]) -> (ExitStatus, String, String) {
    let count: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let port = fake_server(OnMsg::Count { count, miscount }).to_string();
    let mut all = vec!["--port", &port, "--requests", "3", "--timeout", "10"];
    all.extend_from_slice(args);
    let (status, stdout, stderr, _) = run_bounded(&all, Duration::from_secs(30));
    (status, stdout, stderr)
}

#[test]
fn a_server_whose_count_differs_from_the_acknowledgements_fails_the_run() {
    let _serial = serial();
    for (driver, sessions) in [
        (&["--threads", "4"][..], 4),
        (&["--threads", "2", "--conns-per-thread", "5"][..], 10),
    ] {
        let acked = sessions * 3;
        let json = [driver, &["--json"]].concat();
        // The honest fake first: the same run passes, so what fails below is the count alone.
        let (status, stdout, stderr) = run_against_books_off_by(0, &json);
        let summary = summary_of(&stdout, &stderr);
        assert_eq!(status.code(), Some(0), "{driver:?}: {summary}");
        assert_all_acknowledged(&summary, acked);
        let (status, text, _) = run_against_books_off_by(0, driver);
        assert_eq!(status.code(), Some(0), "{driver:?}: {text}");
        assert!(text.contains(" = acknowledged "), "{text}");

        // More counted than acknowledged (someone else's work, or a double count), and less (an
        // acknowledged request the server does not have).
        for off in [1, -1] {
            let (status, stdout, stderr) = run_against_books_off_by(off, &json);
            let summary = summary_of(&stdout, &stderr);
            assert_eq!(status.code(), Some(1), "{driver:?} off by {off}: {summary}");
            assert_eq!(summary["acknowledged"], acked, "{summary}");
            assert_eq!(summary["failed"], 0, "{summary}");
            let delta = summary["server_delta"].as_u64().unwrap() as i64;
            assert_eq!(delta, acked as i64 + off, "{summary}");
            assert_eq!(summary["accounting_ok"], false, "{summary}");
            let (status, text, _) = run_against_books_off_by(off, driver);
            assert_eq!(status.code(), Some(1), "{driver:?} off by {off}: {text}");
            assert!(
                text.contains(" != acknowledged ") && text.contains(": mismatch"),
                "{text}"
            );
            // Against a server shared with others, only less than acknowledged is wrong.
            let shared = [&json[..], &["--verify", "at-least"]].concat();
            let (status, stdout, stderr) = run_against_books_off_by(off, &shared);
            let summary = summary_of(&stdout, &stderr);
            let (want, check) = if off > 0 {
                (0, "match")
            } else {
                (1, "mismatch")
            };
            assert_eq!(
                status.code(),
                Some(want),
                "{driver:?} off by {off}: {summary}"
            );
            assert_eq!(summary["check"], check, "{summary}");
        }
    }
}
