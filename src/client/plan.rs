//! What a load run is given and what its threads share and report, apart from how they run
//! it: the plan, a thread's outcome, the state shared with the main thread, and the message
//! template. A leaf: [`super::load`], [`super::multi`] and [`super::report`] all use it.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Distinct error messages kept per thread.
const ERROR_KINDS: usize = 8;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub threads: usize,
    /// Sessions each thread drives (1: one blocking connection; more: an epoll loop).
    pub conns_per_thread: usize,
    /// How each session logs in (user, `PASS`, PROXY header).
    pub login: Login,
    /// Transactions per thread (ignored with `duration`).
    pub requests: u64,
    /// Message text; `%t` is the thread (session) number, `%r` the request number, `%u` the user.
    pub message: String,
    pub connect_per_request: bool,
    /// Run for this long instead of a fixed count.
    pub duration: Option<Duration>,
    /// Open loop: requests a second across all sessions, each sent at its intended time.
    pub rate: Option<f64>,
    /// Limit on each connect, send and receive.
    pub timeout: Duration,
    /// Keep the text of every acknowledged message.
    pub record_acks: bool,
    /// How the server's count is checked against what was acknowledged.
    pub verify: Verify,
}

impl Plan {
    /// Sessions in the run.
    pub fn sessions(&self) -> u64 {
        (self.threads as u64).saturating_mul(self.conns_per_thread as u64)
    }

    /// Requests the run means to send, when that is fixed: every session's `--requests`, or
    /// with `--rate` and `--duration` the requests scheduled within the duration. `None` for a
    /// closed-loop run for a duration (as many as the server answers).
    pub fn planned(&self) -> Option<u64> {
        match (self.duration, self.rate) {
            (None, _) => Some(self.sessions().saturating_mul(self.requests)),
            (Some(d), Some(rate)) => Some((d.as_secs_f64() * rate).ceil() as u64),
            (Some(_), None) => None,
        }
    }

    /// When request `k` of session `session` is meant to be sent, after the start, in an
    /// open-loop run: the sessions take turns, `1/rate` apart.
    pub fn intended(&self, session: u64, k: u64) -> Option<Duration> {
        let rate = self.rate?;
        let n = k.saturating_mul(self.sessions()).saturating_add(session);
        Some(Duration::from_secs_f64(n as f64 / rate))
    }

    /// Whether session `session` has a request `k` to send (`elapsed` since the start).
    pub fn has_request(&self, session: u64, k: u64, elapsed: Duration) -> bool {
        match (self.duration, self.intended(session, k)) {
            (Some(d), Some(at)) => at < d && elapsed < d,
            (Some(d), None) => elapsed < d,
            (None, _) => k < self.requests,
        }
    }
}

/// How each session logs in.
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub user: String,
    /// Sent with `PASS` after `USER` (`--pass`, `--pass-file`).
    pub pass: Option<String>,
    /// A PROXY protocol header first (`--proxy-protocol`).
    pub proxy: Option<Proxy>,
}

/// The PROXY protocol header a load run sends, as a load balancer would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    pub version: ProxyVersion,
    /// The client it names (`--proxy-source`); the connection's own address if not given.
    pub source: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyVersion {
    V1,
    V2,
}

impl Proxy {
    /// The header for a connection from `local` to `server`.
    pub fn header(&self, local: SocketAddr, server: SocketAddr) -> Vec<u8> {
        let source = match self.source {
            Some(s) if s.port() == 0 => SocketAddr::new(s.ip(), local.port()),
            Some(s) => s,
            None => local,
        };
        // Both ends in one family: an IPv4 address beside IPv6 is written IPv4-mapped.
        let (src, dst) = match (source, server) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => (IpAddr::V4(*a.ip()), IpAddr::V4(*b.ip())),
            (a, b) => (IpAddr::V6(v6(a.ip())), IpAddr::V6(v6(b.ip()))),
        };
        let (sp, dp) = (source.port(), server.port());
        match self.version {
            ProxyVersion::V1 => {
                let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {family} {src} {dst} {sp} {dp}\r\n").into_bytes()
            }
            ProxyVersion::V2 => {
                let mut h = b"\r\n\r\n\x00\r\nQUIT\n\x21".to_vec();
                match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        h.extend_from_slice(&[0x11, 0, 12]);
                        h.extend_from_slice(&s.octets());
                        h.extend_from_slice(&d.octets());
                    }
                    (s, d) => {
                        h.extend_from_slice(&[0x21, 0, 36]);
                        h.extend_from_slice(&v6(s).octets());
                        h.extend_from_slice(&v6(d).octets());
                    }
                }
                h.extend_from_slice(&sp.to_be_bytes());
                h.extend_from_slice(&dp.to_be_bytes());
                h
            }
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// `--verify`: what the server's total must have done during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// Grown by exactly what this run was acknowledged (a server nobody else uses).
    #[default]
    Exact,
    /// Grown by at least that (a server shared with other clients).
    AtLeast,
    /// Not asked.
    Off,
}

/// Latency histogram bounds: 1 µs to 100 s, 3 significant digits (what wrk2 keeps).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// What one user thread saw.
pub(super) struct Outcome {
    pub(super) sent: u64,
    pub(super) acknowledged: u64,
    /// Sent and not acknowledged.
    pub(super) failed: u64,
    /// Microseconds from each request's start (its intended send time in an open-loop run) to
    /// its `OK`: bounded memory however long the run.
    pub(super) latency: Histogram<u64>,
    /// Open loop: how late requests were sent after their intended time (µs), the worst and
    /// the sum.
    pub(super) late_max_us: u64,
    pub(super) late_sum_us: u64,
    pub(super) errors: BTreeMap<String, u64>,
    /// Texts of acknowledged messages (with `record_acks`).
    pub(super) acked_texts: Vec<String>,
    /// When the barrier released this thread, and when it was done.
    pub(super) began: Option<Instant>,
    pub(super) finished: Option<Instant>,
}

impl Outcome {
    pub(super) fn new() -> Outcome {
        Outcome {
            sent: 0,
            acknowledged: 0,
            failed: 0,
            latency: latency_histogram(),
            late_max_us: 0,
            late_sum_us: 0,
            errors: BTreeMap::new(),
            acked_texts: Vec::new(),
            began: None,
            finished: None,
        }
    }

    pub(super) fn error(&mut self, e: &io::Error) {
        let text = e.to_string();
        if self.errors.len() < ERROR_KINDS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += 1;
        }
    }

    /// An acknowledged request that started at `t0` (µs to now).
    pub(super) fn acked(&mut self, t0: Instant) {
        self.acknowledged += 1;
        self.latency
            .saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }

    /// An open-loop request sent `late` after its intended time.
    pub(super) fn sent_late(&mut self, late: Duration) {
        let us = late.as_micros() as u64;
        self.late_max_us = self.late_max_us.max(us);
        self.late_sum_us = self.late_sum_us.saturating_add(us);
    }

    /// Adds another thread's outcome to this one.
    pub(super) fn merge(&mut self, o: Outcome) {
        self.sent += o.sent;
        self.acknowledged += o.acknowledged;
        self.failed += o.failed;
        let _ = self.latency.add(&o.latency);
        self.late_max_us = self.late_max_us.max(o.late_max_us);
        self.late_sum_us = self.late_sum_us.saturating_add(o.late_sum_us);
        self.acked_texts.extend(o.acked_texts);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if let Some(t) = o.began {
            self.began = Some(self.began.map_or(t, |b| b.min(t)));
        }
        if let Some(t) = o.finished {
            self.finished = Some(self.finished.map_or(t, |f| f.max(t)));
        }
    }
}

/// Shared between the user threads and the main thread.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) barrier: Barrier,
    /// Acknowledged so far, for the progress bar.
    pub(super) progress: AtomicU64,
    /// Threads that finished.
    pub(super) done: AtomicUsize,
    /// Set by SIGINT: finish the current transaction and stop.
    pub(super) interrupted: Arc<AtomicBool>,
    /// When the run started (the open-loop schedule's origin), set before the threads go.
    pub(super) start: std::sync::OnceLock<Instant>,
}

/// Expands `%t`, `%r`, `%u` and `%%` into `out`.
pub fn expand(template: &str, thread: usize, request: u64, user: &str, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => {
                let _ = write!(out, "{thread}");
            }
            Some('r') => {
                let _ = write!(out, "{request}");
            }
            Some('u') => out.push_str(user),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
}
