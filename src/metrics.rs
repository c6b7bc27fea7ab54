//! `--metrics-addr HOST:PORT`: the master serves `GET /metrics` (Prometheus text format 0.0.4)
//! from the scoreboard. The workers are not involved at all; the master handles the few scrape
//! connections in its own poll loop, non-blocking, each with a deadline, so a slow or silent
//! scraper can hold nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::scoreboard::{now_ms, Scoreboard};

/// A scrape may take this long before it is dropped.
const DEADLINE: Duration = Duration::from_secs(2);
/// Scrapes served at once; more wait in the listen queue.
const MAX_CONNS: usize = 16;
/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// One scrape in progress.
struct Scrape {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    response: Vec<u8>,
    sent: usize,
}

/// The metrics endpoint.
pub struct Metrics {
    listener: TcpListener,
    scrapes: Vec<Scrape>,
}

impl Metrics {
    /// Binds `addr` (`SO_REUSEPORT`, so the new master of a binary upgrade can bind it too).
    pub fn bind(addr: SocketAddr) -> io::Result<Metrics> {
        let listener = TcpListener::from(crate::listener::bind_reuseport(addr, 128)?);
        Ok(Metrics {
            listener,
            scrapes: Vec::new(),
        })
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
        if self.scrapes.len() < MAX_CONNS {
            fds.push((self.listener.as_fd(), false));
        }
        for s in &self.scrapes {
            fds.push((s.stream.as_fd(), !s.response.is_empty()));
        }
        fds
    }

    /// Does whatever can be done now without blocking: accept, read, answer, drop the done
    /// and the late.
    pub fn serve(&mut self, board: &Scoreboard) {
        while self.scrapes.len() < MAX_CONNS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.scrapes.push(Scrape {
                            stream,
                            deadline: Instant::now() + DEADLINE,
                            request: Vec::new(),
                            response: Vec::new(),
                            sent: 0,
                        });
                    }
                }
                Err(_) => break, // WouldBlock, or a connection that went away
            }
        }
        let now = Instant::now();
        self.scrapes
            .retain_mut(|s| now < s.deadline && s.step(board));
    }
}

impl Scrape {
    /// Advances; false when finished (or failed).
    fn step(&mut self, board: &Scoreboard) -> bool {
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
