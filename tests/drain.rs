//! The graceful stop drains the accept queue: connections the kernel completed before `TERM` but
//! no worker had accepted yet are greeted and served, none reset. The workers are frozen with
//! `SIGSTOP` so that connections pile up in the queues, `TERM` reaches the master and is passed
//! on while they are frozen, and only then do they continue: the first thing each sees is a stop
//! with a full queue.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The process state letter from `/proc/<pid>/stat` (`T` for stopped).
fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// True if `sig` is pending for the whole process `pid` (sent with kill, not yet taken).
fn pending(pid: i32, sig: Signal) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

#[test]
fn term_with_connections_waiting_in_the_accept_queue_serves_every_one() {
    // More per worker than a worker accepts in one loop turn (128): whichever it sees first
    // after it continues, the stop or the readable listener, some connections are still queued
    // when it learns of the stop.
    const QUEUED: usize = 600;
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.ready_pids();
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGSTOP).unwrap();
    }
    wait_until("both workers stopped", PATIENCE, || {
        workers.iter().all(|&w| state(w) == Some('T'))
    });

    // The handshake completes in the kernel: each of these waits in a worker's accept queue.
    let queued: Vec<TcpStream> = (0..QUEUED)
        .map(|_| {
            let s = TcpStream::connect(server.addr).expect("connect while workers are stopped");
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s
        })
        .collect();

    server.signal(Signal::SIGTERM);
    wait_until("the master to pass TERM to both workers", PATIENCE, || {
        workers.iter().all(|&w| pending(w, Signal::SIGTERM))
    });
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGCONT).unwrap();
    }

    // Every queued connection is greeted, its request is done and acknowledged, and QUIT says
    // goodbye: nothing was reset.
    for (i, stream) in queued.into_iter().enumerate() {
        let mut out = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let mut next = |what: &str| {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => line.trim_end().to_string(),
                r => panic!("queued connection {i}: no {what} ({r:?}): reset or closed"),
            }
        };
        let greeting = next("greeting");
        assert!(
            greeting.starts_with("OK cserverd ") && greeting.ends_with(" ready"),
            "{greeting:?}"
        );
        out.write_all(format!("USER queued{i}\nMSG queued {i}\nQUIT\n").as_bytes())
            .unwrap();
        assert_eq!(next("USER reply"), format!("OK hello queued{i}"));
        let ack = next("MSG reply");
        assert!(ack.starts_with("OK "), "queued connection {i}: {ack:?}");
        assert_eq!(next("QUIT reply"), "OK bye");
    }
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let records = parse_log(&server.log_text());
    assert_eq!(message_counts(&records), (QUEUED, QUEUED));
}
