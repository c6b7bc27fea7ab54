//! Bad input and limits: every case gets a clear `ERR` (where a reply is possible), nothing is
//! lost, memory stays bounded and the rest of the server is unaffected.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_client_that_never_reads_is_stopped_at_a_bounded_buffer() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let before = rss_kib(worker);
    let mut flood = server.connect();
    assert_eq!(flood.ask("USER flood"), "OK hello flood");
    let stream = flood.stream().try_clone().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // 2 million HELPs (10 MB, each answered with ~350 bytes) without reading a single reply:
    // the server stops reading and the writer ends up blocked.
    let writer = thread::spawn(move || {
        let chunk = b"HELP\n".repeat(10_000);
        let mut sent = 0usize;
        for _ in 0..200 {
            match (&stream).write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => break,
            }
        }
        sent
    });
    let sent = writer.join().unwrap();
    assert!(
        sent < 10_000 * 5 * 200,
        "the server read everything: no backpressure"
    );
    let grown = rss_kib(worker).saturating_sub(before);
    eprintln!("worker RSS grew by {grown} KiB while {sent} bytes were pushed at it unread");
    assert!(grown < 8 * 1024, "worker grew by {grown} KiB");
    // Everyone else is served meanwhile.
    let mut other = server.connect();
    assert_eq!(other.ask("PING"), "OK PONG");
    // And the flooder gets its replies, in order, once it reads.
    assert!(flood.line().ends_with(" commands"));
}

#[test]
fn out_of_descriptors_the_worker_pauses_accepting_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let board = dir.path().join("sb");
    let mut cmd = Command::new(CSERVERD);
    cmd.args(["--port", "0", "--workers", "1"])
        .arg("--log")
        .arg(&log)
        .arg("--stats-file")
        .arg(&board)
        .stdout(Stdio::piped())
        .process_group(0);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 40, 40)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    let addr = listening_addr(&mut child);
    let guard = KillGroup(child.id() as i32);

    // More connections than the worker can hold: the rest wait in the backlog.
    let mut conns: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let read_greeting = |c: &TcpStream, wait: Duration| -> bool {
        c.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        matches!((&*c).read(&mut buf), Ok(n) if n > 0)
    };
    let greeted = conns
        .iter()
        .filter(|c| read_greeting(c, Duration::from_millis(300)))
        .count();
    assert!(
        greeted > 10 && greeted < 40,
        "{greeted} greeted under a 40-descriptor limit"
    );

    // Not spinning on a listener it cannot accept from.
    let worker =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<i32>()
            .unwrap();
    let used = cpu_ticks_over_a_second(worker);
    assert!(
        used < 30,
        "worker used {used} ticks of CPU in 1 s while out of descriptors"
    );

    // Free some: the waiting connections get served.
    let waiting: Vec<TcpStream> = conns.drain(greeted..).collect();
    drop(conns);
    let served = waiting
        .iter()
        .take(10)
        .filter(|c| read_greeting(c, Duration::from_secs(5)))
        .count();
    assert_eq!(
        served, 10,
        "queued connections were not served after descriptors freed up"
    );
    drop(guard);
    let _ = child.wait();
}

struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn huge_binary_and_broken_input_gets_err_and_harms_nobody() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let mut c = server.connect();
    assert_eq!(c.ask("USER bin"), "OK hello bin");

    // A 10 MB line, read in many pieces, its end arriving together with the next request:
    // one ERR 413 (as soon as the limit is passed), then that request is served.
    let mut big = vec![b'z'; 10 * 1024 * 1024];
    big.extend_from_slice(b"\nPING\n");
    let writer = {
        let s = c.stream().try_clone().unwrap();
        thread::spawn(move || (&s).write_all(&big))
    };
    assert_eq!(
        c.line(),
        "ERR 413 line too long (max 65536 bytes); discarded"
    );
    assert_eq!(c.line(), "OK PONG");
    writer.join().unwrap().unwrap();
    // Nothing else was queued for it: the next request gets the next reply.
    assert_eq!(c.ask("PING"), "OK PONG");

    // NUL, invalid UTF-8 and other bytes, with CR and CRLF mixed in.
    c.send(b"MSG nul\x00and\xff\xfe bytes\r\nMSG lone\rcr inside\nPING\r\r\n");
    assert_eq!(c.line(), "OK 1 1");
    assert_eq!(c.line(), "OK 2 2");
    assert_eq!(c.line(), "ERR 400 unknown command; try HELP");
    let log = server.log_text();
    assert!(
        log.contains("recvd message \"nul\\x00and\\xff\\xfe bytes\" from user bin"),
        "{log}"
    );
    assert!(log.contains("recvd message \"lone\\rcr inside\""), "{log}");
    parse_log(&log);

    // A client that sends a burst and resets the connection before reading the replies.
    let mut rude = server.connect();
    rude.send(b"USER rude\n");
    rude.send(&b"MSG bye\n".repeat(500));
    let s = rude.stream();
    nix::sys::socket::setsockopt(
        s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(rude); // RST

    // A half-closed client still gets its reply.
    let mut half = server.connect();
    half.send(b"USER half\nPING\n");
    half.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(half.rest(), "OK hello half\nOK PONG\n");

    // The worker survived all of it and serves the next one.
    assert!(alive(worker));
    assert_eq!(server.ready_pids(), vec![worker]);
    let mut next = server.connect();
    assert_eq!(next.ask("USER next"), "OK hello next");
    assert!(next.ask("MSG fine").starts_with("OK "));
    let records = parse_log(&server.log_text());
    let (recvd, completed) = message_counts(&records);
    assert_eq!(
        recvd, completed,
        "every request read was answered or refused before logging"
    );
}

#[test]
fn a_client_that_pipelines_faster_than_it_is_answered_is_bounded_too() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let before = rss_kib(worker);
    let mut c = server.connect();
    assert_eq!(c.ask("USER pipe"), "OK hello pipe");
    // Reads every reply (so the output never backs up) while sending far more lines than the
    // worker answers per turn, until the server closes. Checks the replies as they come: returns
    // how many `OK PONG\n` came first, and what came after them (at most 4 KiB of it).
    const PONG: &[u8] = b"OK PONG\n";
    let reader = {
        let s = c.stream().try_clone().unwrap();
        thread::spawn(move || -> Result<(usize, Vec<u8>), String> {
            let mut buf = vec![0u8; 1 << 16];
            let mut pongs = 0usize;
            // Bytes not yet matched: part of a reply, or everything from the first other one.
            let mut tail: Vec<u8> = Vec::new();
            let mut other = false;
            loop {
                let n = match (&s).read(&mut buf) {
                    Ok(0) => return Ok((pongs, tail)),
                    Ok(n) => n,
                    Err(e) => return Err(format!("read failed after {pongs} replies: {e}")),
                };
                let mut got = &buf[..n];
                while !other && !got.is_empty() {
                    let take = (PONG.len() - tail.len()).min(got.len());
                    tail.extend_from_slice(&got[..take]);
                    got = &got[take..];
                    if tail[..] != PONG[..tail.len()] {
                        other = true;
                    } else if tail.len() == PONG.len() {
                        pongs += 1;
                        tail.clear();
                    }
                }
                let room = 4096usize.saturating_sub(tail.len());
                tail.extend_from_slice(&got[..got.len().min(room)]);
            }
        })
    };
    // A server that stopped reading for good would block the writer: fail instead of hanging.
    c.stream().set_write_timeout(Some(PATIENCE)).unwrap();
    const PER_CHUNK: usize = 20_000;
    let chunk = b"PING\n".repeat(PER_CHUNK);
    let until = Instant::now() + Duration::from_secs(3);
    let mut peak = 0;
    let mut pings = 0usize;
    while Instant::now() < until {
        c.stream().write_all(&chunk).unwrap();
        pings += PER_CHUNK;
        peak = peak.max(rss_kib(worker));
    }
    let grown = peak.saturating_sub(before);
    eprintln!("worker RSS grew by at most {grown} KiB under a pipelining client ({pings} PINGs)");
    assert!(grown < 16 * 1024, "worker grew by {grown} KiB");
    // No more requests: QUIT, whose `OK bye` must come right after the last PING's reply. Every
    // PING is answered exactly once, in order, nothing lost, doubled or added.
    c.send(b"QUIT\n");
    let (pongs, rest) = reader.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (pongs, String::from_utf8_lossy(&rest).as_ref()),
        (pings, "OK bye\n"),
        "OK PONGs, then what followed them, for {pings} PINGs"
    );
}
