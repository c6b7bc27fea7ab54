//! No `OK` before the record is written, seen in the worker's own system calls: `strace` follows
//! a worker while clients send requests one by one and in pipelined bursts, and for every
//! `OK <count> <total>` the worker writes to a socket, the `completed ... total reqs <count>`
//! record must already have been written, whole and successfully, to the log. Independent of the
//! full-disk test (which only shows that a failed write is refused).

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `strace` attached to one process, writing its trace to a file.
struct Trace {
    child: Child,
    out: std::path::PathBuf,
}

impl Trace {
    /// Attaches to `pid` and waits until the kernel shows the tracer in place.
    fn attach(pid: i32, out: std::path::PathBuf) -> Trace {
        let child = Command::new("strace")
            .args(["-qq", "-y", "-s", "1000000", "-e", "signal=none"])
            .args([
                "-e",
                "trace=write,writev,pwrite64,pwritev,sendto,sendmsg,sendmmsg",
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
    let log_path = fs::canonicalize(&server.log).unwrap();
    let trace = Trace::attach(worker, server.dir.path().join("strace.out"));

    let mut one = server.connect();
    assert_eq!(one.ask("USER one"), "OK hello one");
    let mut burst = server.connect();
    assert_eq!(burst.ask("USER burst"), "OK hello burst");
    let mut acked = 0;
    for round in 0..10 {
        for i in 0..5 {
            assert!(one
                .ask(&format!("MSG single {round}.{i}"))
                .starts_with("OK "));
            acked += 1;
        }
        let mut lines = String::new();
        for i in 0..50 {
            lines.push_str(&format!("MSG burst {round}.{i}\n"));
        }
        burst.send(lines.as_bytes());
        for _ in 0..50 {
            assert!(burst.line().starts_with("OK "));
            acked += 1;
        }
    }
    let text = trace.finish();

    // Walk the worker's writes in order: a log write that succeeded whole makes its counts
    // written; an `OK <count> <total>` to a socket must name a written count.
    let log_fd = format!("<{}>", log_path.display());
    let mut written = std::collections::BTreeSet::new();
    let (mut log_writes, mut oks) = (0, 0);
    for line in text.lines() {
        let Some(call) = line.split_once('(').map(|(name, _)| name.trim()) else {
            continue;
        };
        let Some((_, ret)) = line.rsplit_once(" = ") else {
            continue;
        };
        if line.contains(&log_fd) {
            assert_eq!(call, "write", "the log is written with write(2): {line}");
            let counts = numbers_after(line, " total reqs ");
            let whole = ret
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n > 0);
            assert!(whole, "a log write failed here: {line}");
            log_writes += 1;
            written.extend(counts);
        } else if line.contains("<TCP") || line.contains("<socket:") {
            // `OK <count> <total>` at the start of the buffer or after a `\n` in it.
            let first = numbers_after(line, "\"OK ");
            for count in first.into_iter().chain(numbers_after(line, "\\nOK ")) {
                oks += 1;
                assert!(
                    written.contains(&count),
                    "OK {count} was sent before its record was written: {line}\n{text}"
                );
            }
        }
    }
    assert_eq!(written.len(), acked, "every request's record was seen");
    assert_eq!(oks, acked, "OKs seen for {acked} requests:\n{text}");
    assert!(
        log_writes > 0 && log_writes < acked,
        "{log_writes} log writes"
    );
}
