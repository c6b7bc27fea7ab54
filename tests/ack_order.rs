//! No `OK` before the record is written, seen in the worker's own system calls: `strace` follows
//! a worker while clients send requests one by one and in pipelined bursts, and for every
//! `OK <count> <total>` the worker writes to a socket, the `completed ... total reqs <count>`
//! record must already have been written, whole and successfully, to the log. Independent of the
//! full-disk test (which only shows that a failed write is refused), and a third: a log at its
//! size limit written in part, where exactly the requests whose records fit are `OK`.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `strace` attached to one process, writing its trace to a file.
struct Trace {
    child: Child,
    out: std::path::PathBuf,
}

impl Trace {
    /// Attaches to `pid` and waits until the kernel shows the tracer in place. Every call that
    /// writes, and every sync.
    fn attach(pid: i32, out: std::path::PathBuf) -> Trace {
        let child = Command::new("strace")
            .args(["-qq", "-y", "-s", "1000000", "-e", "signal=none"])
            .args([
                "-e",
                "trace=write,writev,pwrite64,pwritev,sendto,sendmsg,sendmmsg,fsync,fdatasync,\
                 sync_file_range,syncfs,sync",
            ])
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace (Debian package strace; make test installs it)");
        let trace = Trace { child, out };
        wait_until("strace to attach", PATIENCE, || tracer_of(pid) != 0);
        trace
    }

    /// Detaches (strace lets go on SIGINT) and returns the trace.
    fn finish(mut self) -> String {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        // strace detaches, then ends by the same signal.
        let status = self.child.wait().unwrap();
        assert!(
            status.success() || status.signal() == Some(Signal::SIGINT as i32),
            "strace: {status}"
        );
        fs::read_to_string(&self.out).unwrap()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracer_of(pid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// Numbers following each `prefix` in `s` (strace shows `\n` as the two characters `\n`).
fn numbers_after(s: &str, prefix: &str) -> Vec<u64> {
    s.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &s[i + prefix.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let after = &rest[digits.len()..];
            (after.starts_with("\\n") || after.starts_with(' '))
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect()
}

#[test]
fn every_ok_follows_the_successful_write_of_its_record() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let (seen, acked, text) = traced_requests(&server, worker, 10, Durable::Written);
    assert!(
        seen.log_writes > 0 && seen.log_writes < acked,
        "{} log writes",
        seen.log_writes
    );
    assert_eq!(
        seen.syncs,
        0,
        "--sync none syncs nothing; trace: {}",
        short(&text)
    );
}

/// The first 300 characters of a trace or a line of it (they run to megabytes).
fn short(text: &str) -> &str {
    match text.char_indices().nth(300) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// What an `OK` must follow in the worker's system calls.
#[derive(Clone, Copy, PartialEq)]
enum Durable {
    /// The successful write of its record.
    Written,
    /// The successful write of its record, then a successful sync of the log.
    Synced,
}

/// What a walk through a worker's trace saw.
struct Seen {
    log_writes: usize,
    syncs: usize,
    oks: usize,
}

/// Walks the worker's calls in order: a log write that succeeded whole makes its counts
/// written, a successful sync of the log makes every written count synced; an `OK <count>
/// <total>` to a socket must name a count that is `durable`. Every record seen was written.
fn walk(text: &str, server: &Server, durable: Durable) -> Seen {
    let log_path = fs::canonicalize(&server.log).unwrap();
    let log_fd = format!("<{}>", log_path.display());
    let (mut written, mut synced) = (Vec::new(), std::collections::BTreeSet::new());
    let mut seen = Seen {
        log_writes: 0,
        syncs: 0,
        oks: 0,
    };
    for line in text.lines() {
        let Some(call) = line.split_once('(').map(|(name, _)| name.trim()) else {
            continue;
        };
        let Some((_, ret)) = line.rsplit_once(" = ") else {
            continue;
        };
        if call.contains("sync") {
            assert!(
                line.contains(&log_fd),
                "only the log is synced: {}",
                short(line)
            );
            assert_eq!(call, "fdatasync", "{}", short(line));
            assert!(ret.starts_with('0'), "a sync failed here: {}", short(line));
            seen.syncs += 1;
            synced.extend(written.drain(..));
        } else if line.contains(&log_fd) {
            assert_eq!(
                call,
                "write",
                "the log is written with write(2): {}",
                short(line)
            );
            let whole = ret
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n > 0);
            assert!(whole, "a log write failed here: {}", short(line));
            seen.log_writes += 1;
            let counts = numbers_after(line, " total reqs ");
            if durable == Durable::Written {
                synced.extend(counts);
            } else {
                written.extend(counts);
            }
        } else if line.contains("<TCP") || line.contains("<socket:") {
            // `OK <count> <total>` at the start of the buffer or after a `\n` in it.
            let first = numbers_after(line, "\"OK ");
            for count in first.into_iter().chain(numbers_after(line, "\\nOK ")) {
                seen.oks += 1;
                assert!(
                    synced.contains(&count),
                    "OK {count} was sent before its record was {}: {}",
                    if durable == Durable::Written {
                        "written"
                    } else {
                        "written and synced"
                    },
                    short(line)
                );
            }
        }
    }
    seen
}

/// One client asking one request at a time, another sending bursts of pipelined requests:
/// returns how many were acknowledged (each reply checked to be `OK`).
fn requests_one_by_one_and_in_bursts(server: &Server, rounds: usize) -> usize {
    let mut one = server.connect();
    assert_eq!(one.ask("USER one"), "OK hello one");
    let mut burst = server.connect();
    assert_eq!(burst.ask("USER burst"), "OK hello burst");
    let mut acked = 0;
    for round in 0..rounds {
        for i in 0..5 {
            let reply = one.ask(&format!("MSG single {round}.{i}"));
            assert!(reply.starts_with("OK "), "{reply}");
            acked += 1;
        }
        let lines: String = (0..50)
            .map(|i| format!("MSG burst {round}.{i}\n"))
            .collect();
        burst.send(lines.as_bytes());
        for _ in 0..50 {
            let reply = burst.line();
            assert!(reply.starts_with("OK "), "{reply}");
            acked += 1;
        }
    }
    acked
}

/// Requests one by one and in bursts (`rounds` of each) while `worker` is traced: what the
/// walk of its calls saw (every request's `OK` among it), how many were acknowledged, the trace.
fn traced_requests(
    server: &Server,
    worker: i32,
    rounds: usize,
    durable: Durable,
) -> (Seen, usize, String) {
    let trace = Trace::attach(worker, server.dir.path().join("strace.out"));
    let acked = requests_one_by_one_and_in_bursts(server, rounds);
    let text = trace.finish();
    let seen = walk(&text, server, durable);
    assert_eq!(
        seen.oks,
        acked,
        "OKs seen for {acked} requests; trace: {}",
        short(&text)
    );
    (seen, acked, text)
}

/// `--sync always` and `batch`: every `OK` follows the write and then the sync of its record,
/// and one sync covers many requests (group commit).
#[test]
fn with_sync_every_ok_follows_the_sync_of_its_record() {
    for mode in [
        &["--sync", "always"][..],
        &["--sync", "batch", "--sync-interval", "5"],
    ] {
        let server = Server::start(&[&["--workers", "1"][..], mode].concat());
        let worker = server.ready_pids()[0];
        let (seen, acked, _) = traced_requests(&server, worker, 6, Durable::Synced);
        assert!(
            seen.syncs > 0 && seen.syncs < acked,
            "{mode:?}: {} syncs for {acked} requests",
            seen.syncs
        );
        // The syncs are counted where operators look.
        let status = server.status();
        let syncs = status["total"]["sync"]["syncs"].as_u64().unwrap();
        assert!(syncs >= seen.syncs as u64, "{mode:?}: {status}");
        assert_eq!(status["total"]["sync"]["failures"], 0, "{mode:?}: {status}");
        let mut c = server.connect();
        c.ask("USER stats");
        c.send(b"STATS\n");
        assert!(c.line().starts_with("OK "));
        let total = c.line();
        assert!(total.contains(" sync_failures 0 sync_mean_us "), "{total}");
    }
}

/// A `MSG` of a chat member, and in the same turn a burst of chat events that its worker
/// delivers (and flushes, past 64 KiB) before the turn's records are written: the provisional
/// `OK` stays behind until the records are written and synced.
#[test]
fn a_chat_burst_in_the_turn_of_a_msg_sends_no_ok_before_its_sync() {
    let server = Server::start(&["--workers", "2", "--sync", "always"]);
    let (mut member, worker) = server.client_on(None);
    let other = server
        .ready_pids()
        .into_iter()
        .find(|&p| p != worker)
        .unwrap();
    let (mut sayer, _) = server.client_on(Some(other));
    join_as_member_and_sayer(&mut member, &mut sayer);
    let trace = Trace::attach(worker, server.dir.path().join("strace.out"));
    // The member's worker stops; its MSG arrives first, then 100 KiB of chat from the other
    // worker: one turn when it goes on, the MSG first.
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    member.send(b"MSG during a burst\n");
    let me = member.stream().local_addr().unwrap();
    wait_until(
        "the MSG to wait in the stopped worker's socket",
        PATIENCE,
        || server_side(server.port(), me).is_some_and(|s| s.unread > 0),
    );
    let text = "x".repeat(1000);
    for _ in 0..100 {
        assert!(sayer.ask(&format!("SAY {text}")).starts_with("OK said "));
    }
    kill(Pid::from_raw(worker), Signal::SIGCONT).unwrap();
    // The reply first, then the chat; nobody dropped for not reading.
    assert_eq!(member.line(), "OK 1 1");
    for _ in 0..100 {
        assert!(member.line().starts_with("* sayer: xxx"));
    }
    let trace = trace.finish();
    let seen = walk(&trace, &server, Durable::Synced);
    assert_eq!(seen.oks, 1);
}

/// `--sync batch`: replies held for a sync are not a chat member's failure to read, and a
/// chat event in the meantime waits behind them.
#[test]
fn replies_held_for_a_sync_do_not_get_a_chat_member_dropped() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--sync",
        "batch",
        "--sync-interval",
        "2000",
    ]);
    let mut member = server.connect();
    let mut sayer = server.connect();
    join_as_member_and_sayer(&mut member, &mut sayer);
    // More replies than a member may have unsent (64 KiB), all waiting for the next sync,
    // then a chat event.
    let n = 6000;
    let lines: String = (0..n).map(|i| format!("MSG {i}\n")).collect();
    member.send(lines.as_bytes());
    // All written (the scoreboard counts a request once its record is in the file), none
    // synced yet: the first sync is due 2 s after the worker started.
    wait_until("every MSG to be written", PATIENCE, || {
        server.status()["total"]["requests"] == n
    });
    assert!(sayer.ask("SAY hi").starts_with("OK said "));
    // Every reply in order, and the chat line among them (where the MSGs had got to).
    let (mut oks, mut chat) = (0, 0);
    for _ in 0..=n {
        let line = member.line();
        if line == "* sayer: hi" {
            chat += 1;
        } else {
            oks += 1;
            assert!(line.starts_with(&format!("OK {oks} ")), "{line}");
        }
    }
    assert_eq!((oks, chat), (n, 1));
    assert_eq!(member.ask("PING"), "OK PONG");
}

/// `--sync batch`: a worker that stops syncs its held replies at once, not at the end of an
/// interval that may outlast it.
#[test]
fn a_stopping_worker_syncs_held_replies_at_once() {
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--sync",
        "batch",
        "--sync-interval",
        "10000",
        "--shutdown-timeout",
        "1",
    ]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER late"), "OK hello late");
    c.send(b"MSG held\n");
    wait_until("the MSG to be written", PATIENCE, || {
        server.status()["total"]["requests"] == 1
    });
    server.signal(Signal::SIGTERM);
    assert_eq!(c.line(), "OK 1 1");
    assert!(server.wait_exit(PATIENCE).success());
}

/// With `--sync`, a write that fails is refused as one (not as a failed sync), every time: a
/// failed write is tried again next turn, nothing waits for a sync that could not cover it.
#[test]
fn with_sync_an_unwritable_log_refuses_as_unwritten() {
    for mode in ["always", "batch"] {
        let server = Server::start_with_log(Some("/dev/full"), &["--workers", "1", "--sync", mode]);
        server.expect_stderr("/dev/full");
        let mut c = server.connect();
        assert_eq!(c.ask("USER full"), "OK hello full");
        for text in ["lost?", "again"] {
            assert_eq!(
                c.ask(&format!("MSG {text}")),
                "ERR 503 cannot write the log; request not done",
                "{mode}"
            );
        }
    }
}

/// A log that takes records and refuses syncs (a pseudo-terminal, read here): the failed sync
/// is recorded where it happened, and from then on no `MSG` writes a record, however the next
/// syncs go, until the log is reopened.
#[test]
fn a_failed_sync_is_recorded_and_stops_every_msg_until_a_reopen() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    let mut master = std::fs::File::from(pty.master);
    let (tx, records) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                if tx.send(line.trim_end().to_string()).is_err() {
                    return;
                }
            }
        }
    });
    let server = Server::start_with_log(
        Some(path.to_str().unwrap()),
        &["--workers", "1", "--sync", "always"],
    );
    server.expect_stderr("Invalid argument (os error 22)");
    let worker = server.ready_pids()[0];
    let record = |what: &str| -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = records
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no record with {what:?} in time"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let mut c = server.connect();
    assert_eq!(c.ask("USER tty"), "OK hello tty");
    let refused = "ERR 503 cannot sync the log to disk; request not done";
    assert_eq!(c.ask("MSG first"), refused);
    record(
        "server {worker} recvd message \"first\""
            .replace("{worker}", &worker.to_string())
            .as_str(),
    );
    let said = record("cannot sync the log");
    assert!(
        said.ends_with(&format!(
            "worker {worker} cannot sync the log (Invalid argument (os error 22)); refusing MSG \
             until it is reopened"
        )),
        "{said}"
    );
    // Refused without a record from now on: the next record is that of a reverse request
    // made after it, with nothing about the refused MSG before it.
    assert_eq!(c.ask("MSG second"), refused);
    assert_eq!(c.ask("REV marker"), "OK rekram");
    loop {
        let line = records
            .recv_timeout(PATIENCE)
            .expect("the REV's record in time");
        assert!(!line.contains("second"), "{line}");
        if line.contains("REV \"marker\"") {
            break;
        }
    }
}

/// `--sync batch` syncs at most once an interval: a client asking one `MSG` at a time waits
/// for each sync, and the syncs are never closer together than the interval.
#[test]
fn batch_syncs_at_most_once_an_interval() {
    let interval = Duration::from_millis(200);
    let server = Server::start(&[
        "--workers",
        "1",
        "--sync",
        "batch",
        "--sync-interval",
        "200",
    ]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER paced"), "OK hello paced");
    let started = std::time::Instant::now();
    for i in 1..=6 {
        assert!(c.ask(&format!("MSG {i}")).starts_with(&format!("OK {i} ")));
    }
    let took = started.elapsed();
    let syncs = server.status()["total"]["sync"]["syncs"].as_u64().unwrap();
    // Each reply waited for a sync made after its record was written: at least one a request
    // (a sync covers them all, but they came one at a time), at most one an interval.
    assert!(syncs >= 6, "{syncs} syncs");
    assert!(
        (syncs - 1) as u32 * interval <= took,
        "{syncs} syncs in {took:?}, {interval:?} apart at least"
    );
    // With nothing left to sync the worker sleeps: no wake-up for a sync not needed.
    let worker = server.ready_pids()[0];
    let used = cpu_ticks_over_a_second(worker);
    assert!(used < 30, "an idle worker used {used} ticks of CPU in 1 s");
}

/// A log whose syncs fail (`/dev/null` takes writes but not `fdatasync`): no `MSG` is ever
/// acknowledged, in either mode; each worker says so once, and the failures are counted.
#[test]
fn a_log_that_cannot_be_synced_never_acknowledges() {
    for mode in ["always", "batch"] {
        let server = Server::start_with_log(Some("/dev/null"), &["--workers", "2", "--sync", mode]);
        server.expect_stderr("cannot sync /dev/null: Invalid argument (os error 22)");
        let refused = "ERR 503 cannot sync the log to disk; request not done";
        let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(c.ask(&format!("USER u{i}")), format!("OK hello u{i}"));
            c.send(b"MSG one\nMSG two\nPING\n");
            assert_eq!(c.line(), refused, "{mode}");
            assert_eq!(c.line(), refused, "{mode}");
            assert_eq!(c.line(), "OK PONG", "{mode}");
            // And later: a failed sync is not retried and taken as covering anything.
            assert_eq!(c.ask("MSG three"), refused, "{mode}");
            // The seed's one-line form, as the first line of a session.
            assert_eq!(server.connect().ask("u:legacy"), refused, "{mode}");
        }
        wait_until("the refusals and failures to be counted", PATIENCE, || {
            let total = &server.status()["total"];
            total["errors"] == 16 && total["sync"]["failures"].as_u64() >= Some(1)
        });
        let said = server
            .stderr_text()
            .matches("cannot sync /dev/null: Invalid argument (os error 22); refusing MSG until")
            .count();
        assert!(
            (1..=2).contains(&said),
            "once per worker: {}",
            server.stderr_text()
        );
    }
}

#[test]
fn an_unwritable_log_refuses_messages_and_counts_nothing() {
    let server = Server::start_with_log(Some("/dev/full"), &["--workers", "1"]);
    // Both say so on stderr, the worker once until it works again.
    server.expect_stderr("cserverd master: cannot write /dev/full: No space left on device");
    server.expect_stderr("cannot write /dev/full: No space left on device (os error 28); refusing MSG until it works");
    let mut c = server.connect();
    assert_eq!(c.ask("USER full"), "OK hello full");
    assert_eq!(
        c.ask("MSG lost?"),
        "ERR 503 cannot write the log; request not done"
    );
    let mut legacy = server.connect();
    assert_eq!(
        legacy.ask("arijort:legacy too"),
        "ERR 503 cannot write the log; request not done"
    );
    assert_eq!(c.ask("PING"), "OK PONG");
    let status = server.status();
    assert_eq!(status["total"]["requests"], 0, "{status}");
    // Each refusal is one error, counted when it is published (every loop turn).
    wait_until("the refusals to be counted", PATIENCE, || {
        server.status()["total"]["errors"] == 2
    });
    // Said once, not once a refusal.
    let said = server
        .stderr_text()
        .matches("refusing MSG until it works")
        .count();
    assert_eq!(said, 1, "{}", server.stderr_text());
}

/// Lets `pid` (and anything it starts later) write files up to `bytes` long.
fn limit_file_size(pid: i32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (no old-limit pointer).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
}

/// Sends `n` MSG lines in one write.
fn burst(c: &mut Client, tag: &str, n: usize) {
    let lines: String = (0..n).map(|i| format!("MSG {tag} {i}\n")).collect();
    c.send(lines.as_bytes());
}

#[test]
fn a_log_at_its_size_limit_acknowledges_exactly_the_records_that_fit() {
    let server = Server::start(&["--workers", "1"]);
    // A write past RLIMIT_FSIZE fails (EFBIG) rather than killing the writer: refused like a
    // full disk, said on stderr by the worker and the master.
    server.expect_stderr("File too large");
    let worker = server.ready_pids()[0];
    let (mut a, mut b) = (server.connect(), server.connect());
    assert_eq!(a.ask("USER a"), "OK hello a");
    assert_eq!(b.ask("USER b"), "OK hello b");
    let before = fs::metadata(&server.log).unwrap().len();
    burst(&mut a, "aa", 100);
    for i in 1..=100 {
        assert_eq!(a.line(), format!("OK {i} {i}"));
    }
    let size = fs::metadata(&server.log).unwrap().len();
    let per_burst = size - before;
    // Room for half of the next burst's records, in every process that writes the log.
    for pid in [server.pid().as_raw(), worker] {
        limit_file_size(pid, size + per_burst / 2);
    }
    // Both bursts in one turn of the worker (stopped while they arrive), one batch of records
    // that the file takes only in part.
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    burst(&mut a, "ab", 100);
    burst(&mut b, "bb", 100);
    wait_until(
        "both bursts to wait in the worker's sockets",
        PATIENCE,
        || {
            [&a, &b].iter().all(|c| {
                server_side(server.port(), c.stream().local_addr().unwrap())
                    .is_some_and(|s| s.unread > 0)
            })
        },
    );
    kill(Pid::from_raw(worker), Signal::SIGCONT).unwrap();
    let refused = "ERR 503 cannot write the log; request not done";
    let mut acknowledged = 100;
    let mut errors = 0;
    for c in [&mut a, &mut b] {
        let replies: Vec<String> = (0..100).map(|_| c.line()).collect();
        // OKs first, then refusals: nothing acknowledged after a record that did not fit.
        let ok = replies.iter().take_while(|r| r.starts_with("OK ")).count();
        assert!(replies[ok..].iter().all(|r| r == refused), "{replies:?}");
        for (i, r) in replies[..ok].iter().enumerate() {
            let n = acknowledged + i + 1;
            assert_eq!(r, &format!("OK {n} {n}"));
        }
        acknowledged += ok;
        errors += 100 - ok;
    }
    assert!(
        acknowledged > 100 && acknowledged < 200,
        "{acknowledged} acknowledged: the limit was not reached mid-batch"
    );
    // The log holds exactly the acknowledged requests, each record whole (a torn tail is all
    // the write left past the limit).
    let log = server.log_text();
    let whole = match log.rfind('\n') {
        Some(end) => &log[..=end],
        None => "",
    };
    let (recvd, completed) = message_counts(&parse_log(whole));
    assert_eq!(completed, acknowledged, "{log}");
    assert!(recvd >= completed);
    wait_until("the counters to be published", PATIENCE, || {
        let total = &server.status()["total"];
        total["requests"] == acknowledged as u64 && total["errors"] == errors as u64
    });
}
