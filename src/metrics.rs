//! `--metrics-addr HOST:PORT`: the master serves `GET /metrics` (Prometheus text format 0.0.4)
//! from the scoreboard. The workers are not involved at all; the master handles the few scrape
//! connections in its own poll loop, non-blocking, each with a deadline, so a slow or silent
//! scraper can hold nothing.
//!
//! The master is single-threaded and also reaps and respawns workers, so nothing here may block
//! it or be held by a client: every read and write is non-blocking and bounded (a request head of
//! at most `MAX_REQUEST` bytes, one response built once), a client has `DEADLINE` to send its
//! request and then as long to take the response, and the connection is closed after it. When
//! every slot is taken and another client waits, the oldest connection that has not finished its
//! request is closed to make room: a flood of silent or trickling sockets cannot keep a scrape
//! out, since a scraper sends its request at once and is then past eviction.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::scoreboard::{now_ms, Scoreboard};

/// Time a client has to send its whole request after it is accepted, and then to take the
/// response.
const DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more wait in the listen queue, or evict one still reading.
const MAX_CONNS: usize = 16;
/// Most connections accepted in one turn of the master's loop, so that a flood of connections
/// cannot keep the master from its workers and signals.
const MAX_ACCEPTS: usize = 4 * MAX_CONNS;
/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// One scrape in progress.
struct Scrape {
    stream: TcpStream,
    /// Until the request is complete: when it must be; then: when the response must be taken.
    deadline: Instant,
    request: Vec<u8>,
    /// Empty until the request is complete.
    response: Vec<u8>,
    sent: usize,
}

/// The metrics endpoint.
pub struct Metrics {
    listener: TcpListener,
    scrapes: Vec<Scrape>,
}

impl Metrics {
    /// Binds `addr` for this server alone (no `SO_REUSEPORT`: a second server given the same
    /// address fails to start rather than answer half the scrapes). A binary upgrade's new
    /// master gets the socket from the old one instead ([`Metrics::adopt`]).
    pub fn bind(addr: SocketAddr) -> io::Result<Metrics> {
        Ok(Metrics::adopt(crate::listener::bind_exclusive(addr, 128)?))
    }

    /// Serves on a listening socket handed down by the master this one replaces.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> Metrics {
        Metrics {
            listener: TcpListener::from(fd),
            scrapes: Vec::new(),
        }
    }

    /// The listening socket (to hand to a binary upgrade's new master).
    pub fn listener(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Every descriptor it holds: the listener and each scrape (closed in a new worker).
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(self.scrapes.iter().map(|s| s.stream.as_raw_fd()));
        fds
    }

    /// Descriptors to poll, with whether each waits to write (else to read).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut fds = Vec::with_capacity(1 + self.scrapes.len());
        if self.room() {
            fds.push((self.listener.as_fd(), false));
        }
        for s in &self.scrapes {
            fds.push((s.stream.as_fd(), !s.response.is_empty()));
        }
        fds
    }

    /// True if a new connection can be taken: a slot is free, or one can be evicted.
    fn room(&self) -> bool {
        self.scrapes.len() < MAX_CONNS || self.scrapes.iter().any(Scrape::reading)
    }

    /// Does whatever can be done now without blocking: drop the late, accept (evicting if
    /// full), read, answer, drop the done.
    pub fn serve(&mut self, board: &Scoreboard) {
        let now = Instant::now();
        self.scrapes.retain(|s| now < s.deadline);
        for _ in 0..MAX_ACCEPTS {
            if !self.room() {
                break;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // A connection reset while queued, or no descriptor left (the connection
                // stays queued until one is free).
                Err(_) => break,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.scrapes.len() >= MAX_CONNS {
                self.evict_oldest_reading();
            }
            let mut scrape = Scrape {
                stream,
                deadline: crate::clock::after(now, DEADLINE),
                request: Vec::new(),
                response: Vec::new(),
                sent: 0,
            };
            // Its request is usually here already: read it now, so that it is past eviction
            // before the next connection is taken.
            if scrape.step(board, now) {
                self.scrapes.push(scrape);
            }
        }
        self.scrapes.retain_mut(|s| s.step(board, now));
    }

    /// Closes the connection accepted first among those still sending their request.
    fn evict_oldest_reading(&mut self) {
        if let Some(i) = self.scrapes.iter().position(Scrape::reading) {
            self.scrapes.remove(i);
        }
    }
}

impl Scrape {
    /// True while the request is not complete (no response yet).
    fn reading(&self) -> bool {
        self.response.is_empty()
    }

    /// Advances; false when finished (or failed).
    fn step(&mut self, board: &Scoreboard, now: Instant) -> bool {
        if self.response.is_empty() {
            let mut buf = [0u8; 2048];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => self.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
                if self.request.len() > MAX_REQUEST {
                    break;
                }
            }
            let complete = self.request.windows(4).any(|w| w == b"\r\n\r\n")
                || self.request.windows(2).any(|w| w == b"\n\n");
            if !complete && self.request.len() <= MAX_REQUEST {
                return true;
            }
            self.response = respond(&self.request, board);
            self.request = Vec::new();
            self.deadline = crate::clock::after(now, DEADLINE);
        }
        while self.sent < self.response.len() {
            match self.stream.write(&self.response[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false // all sent: close
    }
}

/// The HTTP response for a request head.
fn respond(request: &[u8], board: &Scoreboard) -> Vec<u8> {
    let line = request.split(|&b| b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if request.len() > MAX_REQUEST {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_string(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path != "/metrics" && !path.starts_with("/metrics?") {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    } else {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            crate::ctl::prometheus(&board.snapshot(), now_ms()),
        )
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
