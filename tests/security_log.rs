//! The trust boundary of the log and the chat (issue 11): whatever a client sends, it cannot
//! forge a record, fool the commands people count records with, or reach another member's
//! terminal as control bytes.
//!
//! - The README's counting `grep`s, read from the README itself (and those `make demo` and the
//!   top of the README show), give exactly the true counts against messages built to fool them.
//! - Unicode line breaks and C1 controls are escaped in the log.
//! - `--max-log-text` caps what a record keeps of a text, says its length, and bounds the
//!   log's growth per request.
//! - Chat lines, delivered or replayed, carry no control bytes from another member.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use cserver::log::never_raw;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The log path the README's commands name.
const README_LOG: &str = "/tmp/myserver.log";

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `grep` command shown in an indented code block (`grep ...` or `$ grep ...`), and its
/// `# comment` if it has one.
fn shown_grep(line: &str) -> Option<(String, Option<String>)> {
    let body = line.strip_prefix("    ")?.trim_start();
    let body = body.strip_prefix("$ ").unwrap_or(body);
    if !body.starts_with("grep ") {
        return None;
    }
    Some(match body.split_once(" #") {
        Some((cmd, comment)) => (cmd.trim().to_string(), Some(comment.trim().to_string())),
        None => (body.trim().to_string(), None),
    })
}

/// The counting commands of the README's log section, each with what it counts (its comment);
/// and every other `grep` command the README and `make demo` show, each of which must be one
/// of them.
fn documented_greps() -> (Vec<(String, String)>, Vec<String>) {
    let readme = repo_file("README.md");
    let start = readme
        .find("\n## The log\n")
        .expect("README has a log section");
    let len = readme[start + 1..]
        .find("\n## ")
        .expect("a section after it")
        + 1;
    let section = &readme[start..start + len];
    let counting: Vec<(String, String)> = section
        .lines()
        .filter_map(shown_grep)
        .map(|(cmd, comment)| {
            let what = comment.unwrap_or_else(|| panic!("no comment saying what {cmd} counts"));
            (cmd, what)
        })
        .collect();
    let mut others: Vec<String> = readme[..start]
        .lines()
        .chain(readme[start + len..].lines())
        .filter_map(shown_grep)
        .map(|(cmd, _)| cmd)
        .collect();
    // loadtest/demo.sh (make demo) echoes each command, then runs it on the log, "$log".
    let demo = repo_file("loadtest/demo.sh");
    for line in demo.lines().map(str::trim) {
        if let Some(shown) = line.strip_prefix("echo \"\\$ grep ") {
            let shown = shown.strip_suffix('"').expect("echo \"...\"");
            others
                .push(format!("grep {}", shown.replace("\\\"", "\"")).replace("$log", README_LOG));
        } else if line.starts_with("grep ") && line.contains("\"$log\"") {
            others.push(line.replace("\"$log\"", README_LOG));
        }
    }
    assert!(
        others.len() >= 5,
        "the card, the demo run and demo.sh show grep commands: {others:?}"
    );
    (counting, others)
}

/// Runs a README command (its log path replaced by `log`) with `sh`; returns its output.
fn run_shown(cmd: &str, log: &Path) -> String {
    let cmd = cmd.replace(README_LOG, &format!("'{}'", log.display()));
    let out = Command::new("sh").arg("-c").arg(&cmd).output().expect("sh");
    assert!(
        out.stderr.is_empty(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Messages built to be counted as records they are not: the words of each record, its quote,
/// its ending, timestamps, and line breaks of every kind before them.
const FORGERIES: &[&str] = &[
    "x completed req \"y\" recvd message \"z\"",
    "a -- completed req \"b\" on 1 total reqs 1",
    "c\" -- completed req \"d",
    "e\\\" -- server 1 recvd message \"f\" from user arijort",
    "2026.01.01 00:00:00.000000000 -- total requests 999999",
    "2026.01.01 00:00:00.000000000 -- worker 1 (slot 0) killed by signal SIGKILL; respawning",
    "g\u{2028}2026.01.01 00:00:00.000000000 -- completed req \"h\" on 1 total reqs 1",
    "i\u{85}2026.01.01 00:00:00.000000000 -- server 1 recvd message \"j\" from user arijort",
    "k\r2026.01.01 00:00:00.000000000 -- worker 1 (slot 0) exited with status 1",
];

#[test]
fn the_readme_greps_count_only_real_records() {
    let (counting, others) = documented_greps();
    let commands: Vec<&str> = counting.iter().map(|(c, _)| c.as_str()).collect();
    for cmd in &others {
        assert!(
            commands.contains(&cmd.as_str()),
            "{cmd:?} is shown but is not one of the log section's commands {commands:?}"
        );
    }

    let mut server = Server::start(&["--workers", "2"]);
    // A real worker death, for the deaths command to find.
    let victim = server.ready_pids()[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_until("the death to be logged", PATIENCE, || {
        server
            .log_text()
            .contains(&format!("worker {victim} (slot "))
    });
    server.wait_workers_ready(2);

    let mut acked = 0;
    let mut ari = server.connect();
    let mut eve = server.connect();
    assert_eq!(ari.ask("USER arijort"), "OK hello arijort");
    assert_eq!(eve.ask("USER eve"), "OK hello eve");
    assert_eq!(eve.ask("JOIN"), "OK 0 joined");
    for text in FORGERIES {
        for c in [&mut ari, &mut eve] {
            let reply = c.ask(&format!("MSG {text}"));
            assert!(reply.starts_with("OK "), "{reply}");
            acked += 1;
        }
        assert!(eve.ask(&format!("REV {text}")).starts_with("OK "));
        assert!(eve.ask(&format!("SAY {text}")).starts_with("OK said "));
        // The legacy one-line form (a session's first line), as the other user.
        let mut legacy = server.connect();
        let reply = legacy.ask(&format!("arijort:{text}"));
        assert!(reply.starts_with("OK "), "{reply}");
        acked += 1;
    }
    assert_eq!(ari.ask("QUIT"), "OK bye");
    assert_eq!(eve.ask("QUIT"), "OK bye");
    // After a graceful stop the log is complete: the final count and `Server exit`, whose
    // text mentions `total requests` too.
    server.stop();

    let log = server.log_text();
    let records = parse_log(&log);
    let lines: Vec<&str> = log.lines().collect();
    let (recvd, completed) = message_counts(&records);
    assert_eq!((recvd, completed), (acked, acked));
    let mut per_pid = BTreeMap::new();
    let mut by_arijort = 0;
    let mut last_total = String::new();
    let mut deaths = String::new();
    for (record, line) in records.iter().zip(&lines) {
        match record {
            Record::Completed { pid, .. } => *per_pid.entry(*pid).or_insert(0) += 1,
            Record::Recvd { user, .. } if user == "arijort" => by_arijort += 1,
            Record::Other(e) if e.starts_with("total requests ") => {
                last_total = format!("{line}\n")
            }
            // Deaths only: planned ends read `retired:` or `ended:`.
            Record::Other(e) if e.starts_with("worker ") && e.contains(") died: ") => {
                deaths += &format!("{line}\n");
            }
            _ => {}
        }
    }
    assert_eq!(by_arijort, 2 * FORGERIES.len());
    assert!(deaths.contains(&format!("worker {victim} ")), "{deaths}");
    assert!(last_total.ends_with(&format!(" -- total requests {acked}\n")));

    for (cmd, what) in &counting {
        let out = run_shown(cmd, &server.log);
        let want = match what.as_str() {
            "transactions received" => format!("{recvd}\n"),
            "transactions done (= acknowledged)" => format!("{completed}\n"),
            "one user's messages" => format!("{by_arijort}\n"),
            "the master's last count" => last_total.clone(),
            "worker deaths" => deaths.clone(),
            "per worker pid" => {
                let counted: BTreeMap<u32, usize> = out
                    .lines()
                    .map(|l| {
                        let (n, pid) = l.trim().split_once(' ').expect("uniq -c");
                        (pid.parse().expect("pid"), n.parse().expect("count"))
                    })
                    .collect();
                assert_eq!(counted, per_pid, "{cmd}");
                continue;
            }
            other => panic!("the README's {cmd:?} counts {other:?}: teach this test the truth"),
        };
        assert_eq!(out, want, "{cmd} ({what})");
    }
}

#[test]
fn unicode_line_breaks_and_c1_controls_are_escaped_in_the_log() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER eve"), "OK hello eve");
    let forged =
        "x\u{2028}2026.01.01 00:00:00.000000000 -- completed req \"y\u{2029}z\u{85}w\u{9b}2J\u{80}";
    assert_eq!(c.ask(&format!("MSG {forged}")), "OK 1 1");
    assert!(c.ask(&format!("REV {forged}")).starts_with("OK "));
    assert_eq!(c.ask("PING"), "OK PONG");

    let log = server.log_text();
    let raw: Vec<char> = log.chars().filter(|&c| c != '\n' && never_raw(c)).collect();
    assert!(raw.is_empty(), "raw {raw:?} in the log:\n{log}");
    // Lines as Python's str.splitlines() cuts them: as many as the records.
    let unicode_breaks = [
        '\n', '\r', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\u{85}', '\u{2028}', '\u{2029}',
    ];
    assert_eq!(
        log.matches(|c| unicode_breaks.contains(&c)).count(),
        log.matches('\n').count()
    );
    let escaped =
        "x\\xe2\\x80\\xa82026.01.01 00:00:00.000000000 -- completed req \\\"y\\xe2\\x80\\xa9z\
                   \\xc2\\x85w\\xc2\\x9b2J\\xc2\\x80";
    assert!(
        log.contains(&format!(" recvd message \"{escaped}\" from user eve\n")),
        "{log}"
    );
    assert!(
        log.contains(&format!(" -- completed req \"{escaped}\" on ")),
        "{log}"
    );
    assert!(
        log.contains(&format!(" REV \"{escaped}\" from user eve\n")),
        "{log}"
    );
    assert_eq!(message_counts(&parse_log(&log)), (1, 1));
}

#[test]
fn max_log_text_keeps_the_first_bytes_and_the_length() {
    let server = Server::start(&["--max-log-text", "100"]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER arijort"), "OK hello arijort");
    // The finding: 60,000 bytes that each escape to 4, in two records, were 480 KB of log.
    let big = [b"MSG ".as_slice(), &[1; 60_000], b"\n"].concat();
    c.send(&big);
    assert_eq!(c.line(), "OK 1 1");
    let exact = "y".repeat(100);
    assert_eq!(c.ask(&format!("MSG {exact}")), "OK 2 2");
    assert!(c
        .ask(&format!("REV {}", "z".repeat(5000)))
        .starts_with("OK "));
    assert_eq!(c.ask("PING"), "OK PONG");

    let log = server.log_text();
    let records = parse_log(&log);
    let kept = "\\x01".repeat(100);
    let cut: Vec<&Record> = records
        .iter()
        .filter(|r| {
            matches!(r, Record::Recvd { text, user, cut: Some(60_000), .. }
                if *text == kept && user == "arijort")
                || matches!(r, Record::Completed { text, count: 1, cut: Some(60_000), .. }
                if *text == kept)
        })
        .collect();
    assert_eq!(cut.len(), 2, "{records:?}");
    // A text of the cap's length is whole.
    assert!(records.iter().any(|r| matches!(r,
        Record::Completed { text, count: 2, cut: None, .. } if *text == exact)));
    assert!(
        log.contains(&format!(
            " REV \"{}\"... (5000 bytes) from user arijort\n",
            "z".repeat(100)
        )),
        "{log}"
    );
    // The two records of the 60,000-byte MSG: at most 8 N + 241 bytes (README).
    let grown: usize = log
        .lines()
        .filter(|l| l.contains("\"... (60000 bytes) "))
        .map(|l| l.len() + 1)
        .sum();
    assert!(grown > 800 && grown <= 8 * 100 + 241, "{grown} bytes");
    // The README's counting commands count cut records as the records they are.
    let (counting, _) = documented_greps();
    for (cmd, what) in &counting {
        let want = match what.as_str() {
            "transactions received" | "transactions done (= acknowledged)" => "2\n",
            "one user's messages" => "2\n",
            _ => continue,
        };
        assert_eq!(run_shown(cmd, &server.log), want, "{cmd}");
    }
}

/// True if a terminal shows every byte of `line` as a character: printable ASCII, TAB, or UTF-8
/// that is neither a control character nor a line separator.
fn printable(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok_and(|l| l.chars().all(|c| c == '\t' || !never_raw(c)))
}

#[test]
fn chat_members_receive_no_control_bytes_from_each_other() {
    let server = Server::start(&["--workers", "2"]);
    let mut alice = server.connect();
    let mut bob = server.connect();
    assert_eq!(alice.ask("USER alice"), "OK hello alice");
    assert_eq!(bob.ask("USER bob"), "OK hello bob");
    assert_eq!(alice.ask("JOIN"), "OK 0 joined");
    assert_eq!(bob.ask("JOIN"), "OK 0 joined");
    assert_eq!(alice.line(), "* bob joined");

    // Clear the screen, return to the line's start, NUL (framing splits lines only at LF, so
    // CR and NUL inside a line reach SAY as they are); then 8-bit CSI, a Unicode line
    // separator and bytes that are not UTF-8; and a tab, which is shown as it is.
    let says: [(&[u8], &str); 3] = [
        (b"a\x1b[2Jb\rc\x00d", "* bob: a\\x1b[2Jb\\x0dc\\x00d"),
        (
            "e\u{9b}31mf\u{2028}g\u{85}".as_bytes(),
            "* bob: e\\xc2\\x9b31mf\\xe2\\x80\\xa8g\\xc2\\x85",
        ),
        (b"h\ti\xff\x9bj\x07", "* bob: h\ti\\xff\\x9bj\\x07"),
    ];
    for (text, shown) in says {
        bob.send(&[b"SAY ".as_slice(), text, b"\n"].concat());
        let reply = bob.line();
        assert!(reply.starts_with("OK said "), "{reply}");
        let got = alice.line_bytes();
        assert!(printable(&got), "alice's terminal got {got:?}");
        assert_eq!(String::from_utf8_lossy(&got), shown);
    }
    // The history a JOIN replays is shown the same way.
    let mut carol = server.connect();
    assert_eq!(carol.ask("USER carol"), "OK hello carol");
    assert_eq!(carol.ask("JOIN"), "OK 3 joined");
    for (_, shown) in says {
        let got = carol.line_bytes();
        assert!(printable(&got), "carol's terminal got {got:?}");
        assert_eq!(String::from_utf8_lossy(&got), shown);
    }
    // The log has the texts escaped as the log escapes them.
    let log = server.log_text();
    assert!(
        log.contains(" SAY \"a\\x1b[2Jb\\rc\\x00d\" from user bob\n"),
        "{log}"
    );
    parse_log(&log);
}
