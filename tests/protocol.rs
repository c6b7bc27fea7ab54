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

#[test]
fn the_legacy_line_logs_in_and_sends() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask("arijort:hello"), "OK 1 1");
    // The session is now logged in as arijort.
    assert_eq!(c.ask("MSG again"), "OK 2 2");
    assert_eq!(
        c.ask("bad!name:x"),
        "ERR 400 bad user name: 1 to 32 of A-Z a-z 0-9 . _ -"
    );
    let records = parse_log(&server.log_text());
    assert!(records.contains(&Record::Recvd {
        pid: records
            .iter()
            .find_map(|r| match r {
                Record::Recvd { pid, .. } => Some(*pid),
                _ => None,
            })
            .unwrap(),
        text: "hello".into(),
        user: "arijort".into()
    }));
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

#[test]
fn services_need_a_user_and_unknown_verbs_are_refused() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask("MSG too early"), "ERR 401 log in first: USER <name>");
    assert_eq!(c.ask("STATS"), "ERR 401 log in first: USER <name>");
    assert_eq!(
        c.ask("FLY me to the moon"),
        "ERR 400 unknown command; try HELP"
    );
    assert_eq!(c.ask(""), "ERR 400 empty request; try HELP");
    assert_eq!(c.ask("MSG"), "ERR 400 usage: MSG <text>");
    assert_eq!(
        c.ask("USER no/slashes"),
        "ERR 400 bad user name: 1 to 32 of A-Z a-z 0-9 . _ -"
    );
    assert_eq!(c.ask("user carol"), "OK hello carol");
    assert_eq!(c.ask("msg"), "ERR 400 usage: MSG <text>");
    assert_eq!(c.ask("msg now"), "OK 1 1");
    let help = c.ask("HELP");
    let n: usize = help.split_whitespace().nth(1).unwrap().parse().unwrap();
    for _ in 0..n {
        c.line();
    }
    assert_eq!(c.ask("PING"), "OK PONG");
    let stats = c.ask("STATS");
    let n: usize = stats.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lines: Vec<String> = (0..n).map(|_| c.line()).collect();
    assert!(lines[0].starts_with("total requests 1 "), "{lines:?}");
    assert_eq!(c.ask("QUIT"), "OK bye");
    assert_eq!(c.rest(), "");
    // Nothing but the one MSG was logged.
    assert_eq!(message_counts(&parse_log(&server.log_text())), (1, 1));
    let status = server.status();
    assert!(status["total"]["errors"].as_u64().unwrap() >= 7, "{status}");
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
