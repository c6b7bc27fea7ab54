//! What a load run is given and what its threads share and report, apart from how they run
//! it: the plan, a thread's outcome, the state shared with the main thread, and the message
//! template. A leaf: [`super::load`], [`super::multi`] and [`super::report`] all use it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Distinct error messages kept per thread.
const ERROR_KINDS: usize = 8;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub threads: usize,
    /// Sessions each thread drives (1: one blocking connection; more: an epoll loop).
    pub conns_per_thread: usize,
    pub user: String,
    /// Transactions per thread (ignored with `duration`).
    pub requests: u64,
    /// Message text; `%t` is the thread (session) number, `%r` the request number, `%u` the user.
    pub message: String,
    pub connect_per_request: bool,
    /// Run for this long instead of a fixed count.
    pub duration: Option<Duration>,
    /// Limit on each connect, send and receive.
    pub timeout: Duration,
    /// Keep the text of every acknowledged message.
    pub record_acks: bool,
}

/// What one user thread saw.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) sent: u64,
    pub(super) acknowledged: u64,
    pub(super) failed: u64,
    pub(super) latencies_us: Vec<u64>,
    pub(super) errors: BTreeMap<String, u64>,
    /// Texts of acknowledged messages (with `record_acks`).
    pub(super) acked_texts: Vec<String>,
    /// When the barrier released this thread, and when it was done.
    pub(super) began: Option<Instant>,
    pub(super) finished: Option<Instant>,
}

impl Outcome {
    pub(super) fn error(&mut self, e: &io::Error) {
        let text = e.to_string();
        if self.errors.len() < ERROR_KINDS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += 1;
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
