//! The protocol over real sockets: framing for any split, CRLF, limits, refusals, escaping, and
//! a session driven by the real `nc`.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_session_with_netcat() {
    let server = Server::start(&[]);
    let nc = which("nc").expect("nc not found: install netcat-openbsd (make test does)");
    let mut child = Command::new(nc)
        .args(["127.0.0.1", &server.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"USER arijort\nMSG hello from nc\nQUIT\n")
        .unwrap();
    // nc exits when the server closes after QUIT.
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nc did not finish: the server did not close after QUIT");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("OK cserverd ") && lines[0].ends_with(" ready"),
        "{text}"
    );
    assert_eq!(&lines[1..], ["OK hello arijort", "OK 1 1", "OK bye"]);
    let records = parse_log(&server.log_text());
    assert!(records.iter().any(|r| matches!(r, Record::Recvd { text, user, .. } if text == "hello from nc" && user == "arijort")));
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::Completed { text, count: 1, .. } if text == "hello from nc")));
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).is_file())
}

/// The worker pid a greeting names: `OK cserverd <version> worker <pid> ready`.
fn greeting_pid(greeting: &str) -> u32 {
    let words: Vec<&str> = greeting.split(' ').collect();
    match words.as_slice() {
        ["OK", "cserverd", _version, "worker", pid, "ready"] => pid
            .parse()
            .unwrap_or_else(|_| panic!("greeting pid {pid:?}: {greeting:?}")),
        _ => panic!("greeting {greeting:?}"),
    }
}

#[test]
fn the_legacy_line_logs_in_and_sends() {
    let server = Server::start(&[]);
    // Not `server.connect()`: its greeting names the worker that serves this session.
    let mut c = Client::connect(server.addr);
    let worker = greeting_pid(&c.line());
    assert!(
        server.ready_pids().contains(&(worker as i32)),
        "the greeting's pid {worker} is not a ready worker: {:?}",
        server.ready_pids()
    );
    assert_eq!(c.ask("arijort:hello"), "OK 1 1");
    // The session is now logged in as arijort.
    assert_eq!(c.ask("MSG again"), "OK 2 2");
    // Only as a session's first line: later, a colon in the first word is no command (a typo
    // in nc logs nobody in and no message).
    for later in ["note: this is a typo", "bad!name:x", "arijort:again"] {
        assert_eq!(c.ask(later), "ERR 400 unknown command; try HELP");
    }
    let mut first = Client::connect(server.addr);
    first.line();
    assert_eq!(
        first.ask("bad!name:x"),
        "ERR 400 bad user name: 1 to 32 of A-Z a-z 0-9 . _ -"
    );
    let records = parse_log(&server.log_text());
    // Both records of the legacy line, by the worker that greeted this session.
    assert!(
        records.contains(&Record::Recvd {
            pid: worker,
            text: "hello".into(),
            user: "arijort".into(),
            cut: None
        }),
        "no recvd record of worker {worker}: {records:?}"
    );
    assert!(
        records.contains(&Record::Completed {
            text: "hello".into(),
            pid: worker,
            count: 1,
            cut: None
        }),
        "no completed record of worker {worker}: {records:?}"
    );
    // The plain MSG after it runs as arijort too.
    assert!(
        records.contains(&Record::Recvd {
            pid: worker,
            text: "again".into(),
            user: "arijort".into(),
            cut: None
        }),
        "{records:?}"
    );
    assert_eq!(message_counts(&records), (2, 2));
}

#[test]
fn any_split_of_the_bytes_gives_the_same_replies() {
    let server = Server::start(&["--workers", "1"]);
    let script = b"USER bob\r\nMSG one byte at a time\nPING\r\nFROB\nMSG two\n";
    let expected = [
        "OK hello bob",
        "OK 1 1",
        "OK PONG",
        "ERR 400 unknown command; try HELP",
        "OK 2 2",
    ];

    let mut whole = server.connect();
    whole.send(script);
    let got: Vec<String> = expected.iter().map(|_| whole.line()).collect();
    assert_eq!(got, expected);

    let mut bytewise = server.connect();
    bytewise.stream().set_nodelay(true).unwrap();
    for b in script {
        bytewise.send(&[*b]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let got: Vec<String> = expected.iter().map(|_| bytewise.line()).collect();
    // Same replies, the counts continuing from the first session.
    assert_eq!(
        got,
        [
            "OK hello bob",
            "OK 3 3",
            "OK PONG",
            "ERR 400 unknown command; try HELP",
            "OK 4 4"
        ]
    );
    let records = parse_log(&server.log_text());
    let texts: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Completed { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    // CR never reaches the log.
    assert_eq!(
        texts,
        ["one byte at a time", "two", "one byte at a time", "two"]
    );
}

#[test]
fn an_over_long_line_is_refused_and_the_session_goes_on() {
    let server = Server::start(&["--max-line", "100"]);
    let mut c = server.connect();
    let mut long = vec![b'x'; 5000];
    long.push(b'\n');
    c.send(&long);
    assert_eq!(c.line(), "ERR 413 line too long (max 100 bytes); discarded");
    assert_eq!(c.ask("PING"), "OK PONG");
    assert_eq!(
        c.ask(&format!("USER a\nMSG {}", "y".repeat(96))),
        "OK hello a"
    );
    assert_eq!(c.line(), "OK 1 1");
}

/// Bytes the server has read so far, all workers together (published every loop turn).
fn bytes_in(server: &Server) -> u64 {
    server.status()["total"]["bytes_in"]
        .as_u64()
        .expect("bytes_in")
}

/// Sends `bytes` and waits until the server has read them (the only client of a one-worker
/// server): what is sent next cannot arrive in the same read.
fn send_apart(server: &Server, c: &mut Client, bytes: &[u8]) {
    let before = bytes_in(server);
    c.send(bytes);
    wait_until("the server to read what was sent", PATIENCE, || {
        bytes_in(server) >= before + bytes.len() as u64
    });
}

/// `REV` of a text of `len - 4` bytes: a request line of exactly `len` bytes, and its reply.
fn rev_line(len: usize) -> (String, String) {
    let text = format!("{}b", "a".repeat(len - 5));
    let reply = format!("OK b{}", "a".repeat(len - 5));
    (format!("REV {text}"), reply)
}

#[test]
fn an_over_long_line_and_the_next_request_in_one_write() {
    let server = Server::start(&["--workers", "1", "--max-line", "100"]);
    let mut c = server.connect();
    let mut burst = vec![b'x'; 150];
    burst.extend_from_slice(b"\nPING\n");
    c.send(&burst);
    assert_eq!(c.line(), "ERR 413 line too long (max 100 bytes); discarded");
    // Exactly one ERR: the next line is the PING's reply, and the one after that the next
    // request's.
    assert_eq!(c.line(), "OK PONG");
    assert_eq!(c.ask("USER a"), "OK hello a");
}

#[test]
fn the_line_limit_is_exact_and_does_not_count_the_terminator() {
    let server = Server::start(&["--workers", "1", "--max-line", "100"]);
    let too_long = "ERR 413 line too long (max 100 bytes); discarded";
    let mut c = server.connect();
    assert_eq!(c.ask("USER a"), "OK hello a");
    let (at_limit, at_limit_reply) = rev_line(100);
    let (over, _) = rev_line(101);
    assert_eq!((at_limit.len(), over.len()), (100, 101));

    // Whole lines, all in one write: 100 bytes pass with `\n` or `\r\n`, 101 do not.
    let burst = format!("{at_limit}\n{at_limit}\r\n{over}\n{over}\r\nPING\n");
    c.send(burst.as_bytes());
    assert_eq!(c.line(), at_limit_reply);
    assert_eq!(c.line(), at_limit_reply);
    assert_eq!(c.line(), too_long);
    assert_eq!(c.line(), too_long);
    assert_eq!(c.line(), "OK PONG");

    // The same in pieces, the terminator read apart from the line. 101 bytes without a `\n`
    // may still be 100 and a `\r`: no verdict until the `\n` comes.
    send_apart(&server, &mut c, format!("{at_limit}\r").as_bytes());
    c.send(b"\nPING\n");
    assert_eq!(c.line(), at_limit_reply);
    assert_eq!(c.line(), "OK PONG");
    send_apart(&server, &mut c, over.as_bytes());
    c.send(b"\r\nPING\n");
    assert_eq!(c.line(), too_long);
    assert_eq!(c.line(), "OK PONG");
    send_apart(&server, &mut c, at_limit.as_bytes());
    c.send(b"\nPING\n");
    assert_eq!(c.line(), at_limit_reply);
    assert_eq!(c.line(), "OK PONG");
}

#[test]
fn an_over_long_line_whose_tail_arrives_later_is_discarded_whole() {
    let server = Server::start(&["--workers", "1", "--max-line", "100"]);
    let too_long = "ERR 413 line too long (max 100 bytes); discarded";
    let mut c = server.connect();
    assert_eq!(c.ask("USER a"), "OK hello a");
    // 102 bytes without a `\n` cannot be a line of 100: refused before the line ends.
    c.send(&[b'x'; 102]);
    assert_eq!(c.line(), too_long);
    // The rest of it comes in pieces, one that looks like a request included: all discarded,
    // no second ERR, until its `\n`; the request after it is served.
    send_apart(&server, &mut c, &[b'y'; 500]);
    send_apart(&server, &mut c, b" FROB PING");
    c.send(b"zzz\nPING\n");
    assert_eq!(c.line(), "OK PONG");
    // And a line over the limit by far, read in many pieces, then its end together with the
    // next request.
    let mut long = vec![b'w'; 100_000];
    long.extend_from_slice(b"\nREV abc\n");
    c.send(&long);
    assert_eq!(c.line(), too_long);
    assert_eq!(c.line(), "OK cba");
    assert_eq!(c.ask("PING"), "OK PONG");
}

/// The value after `key` in a line of `key value` pairs (`STATS`' totals line).
fn field(line: &str, key: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn services_need_a_user_and_unknown_verbs_are_refused() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    let script = [
        ("MSG too early", "ERR 401 log in first: USER <name>"),
        ("STATS", "ERR 401 log in first: USER <name>"),
        ("FLY me to the moon", "ERR 400 unknown command; try HELP"),
        ("", "ERR 400 empty request; try HELP"),
        ("MSG", "ERR 400 usage: MSG <text>"),
        (
            "USER no/slashes",
            "ERR 400 bad user name: 1 to 32 of A-Z a-z 0-9 . _ -",
        ),
        ("user carol", "OK hello carol"),
        ("msg", "ERR 400 usage: MSG <text>"),
        ("msg now", "OK 1 1"),
    ];
    for (request, reply) in script {
        assert_eq!(c.ask(request), reply, "reply to {request:?}");
    }
    // Every refusal counts as an error in the scoreboard, the 401s before USER included (the
    // worker's `session::refuse` counts each ERR it answers with). Nothing after this point is
    // refused, so the count must come out exactly.
    let errors = script
        .iter()
        .filter(|(_, reply)| reply.starts_with("ERR "))
        .count() as u64;
    assert_eq!(errors, 7);

    // HELP: `OK <n> commands`, then exactly n lines, one a command.
    let help = c.ask("HELP");
    let n: usize = help
        .strip_prefix("OK ")
        .and_then(|r| r.strip_suffix(" commands"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("HELP reply {help:?}"));
    let lines: Vec<String> = (0..n).map(|_| c.line()).collect();
    // The verbs each line names: the upper-case words of its first column (the description
    // follows after two spaces or more).
    let mut named: Vec<String> = Vec::new();
    for line in &lines {
        assert!(
            !line.starts_with("OK") && !line.starts_with("ERR") && !line.starts_with("* "),
            "a reply, not a HELP line: {line:?} in {lines:#?}"
        );
        let usage = line.split("  ").next().unwrap_or_default();
        let verbs: Vec<&str> = usage
            .split(|ch: char| ch.is_whitespace() || ch == '|')
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase()))
            .collect();
        assert!(
            !verbs.is_empty() || usage.starts_with("<name>:<text>"),
            "a HELP line that names no command: {line:?}"
        );
        named.extend(verbs.iter().map(|v| v.to_string()));
    }
    for verb in [
        "USER",
        "PASS",
        "MSG",
        "REV",
        "ADD",
        "SUB",
        "MUL",
        "DIV",
        "RUN",
        "LIST",
        "CLOSE",
        "JOIN",
        "SAY",
        "LEAVE",
        "SHELL",
        "STATS",
        "PING",
        "QUIT",
        "EXIT",
        "DISCONNECT",
    ] {
        assert!(
            named.iter().any(|v| v == verb),
            "HELP does not describe {verb}: {lines:#?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("<name>:<text>")),
        "HELP does not describe the legacy line: {lines:#?}"
    );
    // The next request gets its own reply: n was exactly the number of lines that followed.
    assert_eq!(c.ask("PING"), "OK PONG");

    let stats = c.ask("STATS");
    let n: usize = stats
        .strip_prefix("OK ")
        .and_then(|r| r.strip_suffix(" stats"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("STATS reply {stats:?}"));
    let lines: Vec<String> = (0..n).map(|_| c.line()).collect();
    assert!(lines[0].starts_with("total requests 1 "), "{lines:?}");
    // Without --sync no sync fields: the lines end as they always have.
    assert!(lines[0].ends_with(" rembash 0"), "{lines:?}");
    assert!(
        lines[1..].iter().all(|l| l.ends_with(" retired 0")),
        "{lines:?}"
    );
    // Errors are published at the end of the turn that refused them: all of them by now.
    assert_eq!(field(&lines[0], "errors"), errors, "{lines:?}");
    assert_eq!(c.ask("QUIT"), "OK bye");
    assert_eq!(c.rest(), "");
    // Nothing but the one MSG was logged.
    assert_eq!(message_counts(&parse_log(&server.log_text())), (1, 1));
    let status = server.status();
    assert_eq!(status["total"]["errors"].as_u64(), Some(errors), "{status}");
}

#[test]
fn message_text_cannot_forge_or_break_records() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER mallory"), "OK hello mallory");
    let text = b"say \"hi\" \\ back\x01\x1b\tend\" on 1 total reqs 9\r2026.01.01 00:00:00.000000000 -- completed req \"x\xff";
    let mut line = b"MSG ".to_vec();
    line.extend_from_slice(text);
    line.push(b'\n');
    c.send(&line);
    assert_eq!(c.line(), "OK 1 1");
    let log = server.log_text();
    let records = parse_log(&log);
    assert_eq!(message_counts(&records), (1, 1));
    let escaped = "say \\\"hi\\\" \\\\ back\\x01\\x1b\\tend\\\" on 1 total reqs 9\\r2026.01.01 00:00:00.000000000 -- completed req \\\"x\\xff";
    assert!(
        log.contains(&format!("recvd message \"{escaped}\" from user mallory\n")),
        "{log}"
    );
    assert!(
        log.contains(&format!("completed req \"{escaped}\" on ")),
        "{log}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    let mut burst = b"USER pipe\n".to_vec();
    for i in 0..500 {
        burst.extend_from_slice(format!("MSG number {i}\nPING\n").as_bytes());
    }
    c.send(&burst);
    assert_eq!(c.line(), "OK hello pipe");
    for i in 1..=500 {
        assert_eq!(c.line(), format!("OK {i} {i}"));
        assert_eq!(c.line(), "OK PONG");
    }
    assert_eq!(message_counts(&parse_log(&server.log_text())), (500, 500));
}

#[test]
fn a_half_closed_client_still_gets_its_replies() {
    let server = Server::start(&["--work-ms", "200"]);
    let mut c = server.connect();
    c.send(b"USER half\nMSG before shutdown\nMSG last line without newline");
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.rest(), "OK hello half\nOK 1 1\nOK 2 2\n");
    assert_eq!(message_counts(&parse_log(&server.log_text())), (2, 2));
}

#[test]
fn a_half_closed_client_with_more_lines_than_a_turn_answers_gets_exactly_its_replies() {
    let server = Server::start(&["--workers", "1"]);
    let mut c = server.connect();
    // More complete lines than a worker answers for one connection in one loop turn (256), so
    // the end of input is read while many are still waiting.
    let mut burst = b"USER half\n".to_vec();
    burst.extend_from_slice(&b"PING\n".repeat(300));
    c.send(&burst);
    c.stream().shutdown(Shutdown::Write).unwrap();
    let expected = format!("OK hello half\n{}", "OK PONG\n".repeat(300));
    assert_eq!(c.rest(), expected);
    assert_eq!(server.status()["total"]["errors"], 0);
}

#[test]
fn a_line_longer_than_the_input_bound_but_within_max_line_is_served() {
    // The unanswered-input bound (64 KiB beyond --max-line) must leave room for a whole line
    // of --max-line bytes: a 200 KB line with --max-line 256 KiB is read to its end.
    let server = Server::start(&["--workers", "1", "--max-line", "262144"]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER long"), "OK hello long");
    let text = "a".repeat(200_000) + "b";
    let writer = {
        let s = c.stream().try_clone().unwrap();
        let line = format!("REV {text}\nPING\n");
        std::thread::spawn(move || (&s).write_all(line.as_bytes()))
    };
    let reply = c.line();
    writer.join().unwrap().unwrap();
    assert_eq!(
        reply.len(),
        3 + text.len(),
        "{}",
        &reply[..40.min(reply.len())]
    );
    assert!(reply.starts_with("OK ba") && reply.ends_with("aaa"));
    assert_eq!(c.line(), "OK PONG");
}

#[test]
fn work_ms_holds_the_reply_for_its_whole_time() {
    let server = Server::start(&["--workers", "1", "--work-ms", "300"]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER slow"), "OK hello slow");
    let t = Instant::now();
    assert_eq!(c.ask("MSG takes a while"), "OK 1 1");
    // A lower bound only: a busy machine can make it later, never earlier.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
}

#[test]
fn a_session_reset_during_its_work_does_not_shorten_the_next_ones() {
    // The first session sends a MSG and resets its connection while the work runs; its
    // connection slot is then reused by the second session. The first MSG's timer must not
    // complete the second session's MSG early.
    let server = Server::start(&["--workers", "1", "--work-ms", "800"]);
    let mut first = server.connect();
    assert_eq!(first.ask("USER first"), "OK hello first");
    first.send(b"MSG cut off\n");
    wait_until("the first MSG to start", PATIENCE, || {
        server.log_text().contains("recvd message \"cut off\"")
    });
    let started = Instant::now();
    reset_on_close(first.stream());
    drop(first);
    // Well inside the first MSG's work time.
    std::thread::sleep(Duration::from_millis(300));
    let mut second = server.connect();
    assert_eq!(second.ask("USER second"), "OK hello second");
    let t = Instant::now();
    let reply = second.ask("MSG full time");
    let took = t.elapsed();
    assert!(reply.starts_with("OK "), "{reply}");
    assert!(
        took >= Duration::from_millis(800),
        "answered after {took:?}, {:?} after the first MSG started",
        started.elapsed()
    );
}

/// A connection to `server` whose receive buffer is small (set before connecting, so the
/// window stays small): the server's replies back up in its own buffers as soon as this client
/// reads slowly.
fn narrow_client(server: &Server) -> std::net::TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let std::net::SocketAddr::V4(addr) = server.addr else {
        panic!("an IPv4 test server")
    };
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )
    .unwrap();
    std::net::TcpStream::from(fd)
}

/// Sends `requests` after a run of long replies, reading them slowly, and returns every line
/// the server sent until it closed or `until` came.
fn behind_long_replies(server: &Server, requests: &str, until: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader, Read};
    let stream = narrow_client(server);
    let big = "r".repeat(60_000);
    let mut input = String::from("USER slow\n");
    // 7.2 MB of replies: more than the server's socket buffer grows to (4 MB by default).
    for _ in 0..120 {
        input.push_str(&format!("REV {big}\n"));
    }
    input.push_str(requests);
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(input.as_bytes()));
    // Slowly: the replies the worker holds are still being written when it reaches the
    // requests at the end, and it is woken to write more, not by new input.
    let mut reader = BufReader::with_capacity(4096, stream);
    reader.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
    let mut lines = Vec::new();
    let mut line = String::new();
    // Whether the piece read next begins a line (a long reply comes in several pieces).
    let mut at_start = true;
    loop {
        line.clear();
        let mut chunk = (&mut reader).take(4096);
        match chunk.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("read: {e}"),
        }
        let whole = at_start && line.ends_with('\n');
        at_start = line.ends_with('\n');
        if whole {
            let l = line.trim_end().to_string();
            let done = l == until;
            lines.push(l);
            if done {
                // What may follow it (nothing, unless a line behind it was answered early).
                reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut rest = String::new();
                let _ = reader.read_to_string(&mut rest);
                lines.extend(rest.lines().map(str::to_string));
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    sender.join().unwrap().unwrap();
    lines
}

#[test]
fn lines_behind_a_slow_msg_or_a_quit_wait_while_earlier_replies_drain() {
    let server = Server::start(&["--workers", "1", "--work-ms", "300"]);
    let lines = behind_long_replies(&server, "MSG slow\nPING\n", "OK PONG");
    let tail: Vec<&str> = lines.iter().map(String::as_str).rev().take(2).collect();
    assert_eq!(tail, ["OK PONG", "OK 1 1"], "{lines:?}");
    let lines = behind_long_replies(&server, "QUIT\nPING\n", "OK bye");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("OK bye"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l == "OK PONG"),
        "answered after QUIT: {lines:?}"
    );
}
