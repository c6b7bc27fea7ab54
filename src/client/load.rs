//! Load mode: one OS thread per user, all released together by a barrier, each running its
//! transactions against the server; the results are merged into a [`Summary`]. With
//! `--conns-per-thread N` > 1 each thread drives N sessions itself (`multi.rs`).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::line::{server_total, LineConn};
use super::multi;
pub use super::plan::Plan;
use super::plan::Verify;
use super::plan::{expand, Outcome, Shared};
use super::report::{Counts, Latency, Summary};

/// Stack of each user thread: they only run a small loop over a socket.
const STACK: usize = 128 * 1024;
/// After a failed connect in a run for a duration, the next try waits this long.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Runs the plan and returns the summary and the texts of acknowledged messages (empty unless
/// the plan records them). `progress` is called from the main thread now and then with the
/// number acknowledged so far and the time since the start.
pub fn run(
    plan: Plan,
    interrupted: Arc<AtomicBool>,
    mut progress: impl FnMut(u64, Duration),
) -> io::Result<(Summary, Vec<String>)> {
    let before = match plan.verify {
        Verify::Off => None,
        Verify::Exact | Verify::AtLeast => Some(
            server_total(plan.addr, &plan.login, plan.timeout).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot reach cserverd at {}: {e}", plan.addr),
                )
            })?,
        ),
    };
    let threads = plan.threads;
    let multi = plan.conns_per_thread > 1;
    if multi {
        // Thousands of sockets in one process: the soft open-files limit may be 1024.
        let _ = crate::sys::raise_nofile_limit();
    }
    let shared = Arc::new(Shared {
        barrier: Barrier::new(threads + 1),
        progress: AtomicU64::new(0),
        done: AtomicUsize::new(0),
        interrupted,
        plan,
        start: std::sync::OnceLock::new(),
    });
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(format!("user-{id}"))
            .stack_size(STACK)
            .spawn(move || {
                if multi {
                    multi::drive(id, &shared)
                } else {
                    user_thread(id, &shared)
                }
            });
        match handle {
            Ok(h) => handles.push(h),
            // The threads already started wait at the barrier; main exits and ends them.
            Err(e) => {
                return Err(io::Error::other(format!(
                    "cannot start thread {id} of {threads}: {e}"
                )))
            }
        }
    }
    // The schedule's origin, for every thread the same: set before anyone is released.
    let start = *shared.start.get_or_init(Instant::now);
    shared.barrier.wait();
    while shared.done.load(Relaxed) < threads {
        progress(shared.progress.load(Relaxed), start.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    progress(shared.progress.load(Relaxed), start.elapsed());
    let mut all = Outcome::new();
    for h in handles {
        let o = h
            .join()
            .map_err(|_| io::Error::other("a user thread panicked"))?;
        all.merge(o);
    }
    // From the first thread released to the last one done: the main thread may be scheduled
    // after the users, so its own clock would start late.
    let first = all.began.unwrap_or(start).min(start);
    let wall = all
        .finished
        .unwrap_or(start)
        .saturating_duration_since(first);
    let plan = &shared.plan;
    let after = before.map(|_| server_total(plan.addr, &plan.login, plan.timeout));
    let behind_us = plan.rate.map(|_| {
        let mean = all.late_sum_us as f64 / all.sent.max(1) as f64;
        (all.late_max_us, mean)
    });
    let latency = Latency::from(&all.latency);
    let counts = Counts {
        sent: all.sent,
        acknowledged: all.acknowledged,
        failed: all.failed,
        wall,
        latency,
        behind_us,
        interrupted: shared.interrupted.load(Relaxed),
        errors: std::mem::take(&mut all.errors),
    };
    let mut summary = Summary::new(plan, counts, before, after);
    summary.histogram = Some(all.latency);
    Ok((summary, all.acked_texts))
}

fn user_thread(id: usize, shared: &Shared) -> Outcome {
    let plan = &shared.plan;
    let mut out = Outcome::new();
    shared.barrier.wait();
    let start = shared.start.get().copied().unwrap_or_else(Instant::now);
    out.began = Some(Instant::now());
    let mut text = String::with_capacity(plan.message.len() + 16);
    let mut conn: Option<LineConn> = None;
    let mut r = 0;
    while plan.has_request(id as u64, r, start.elapsed()) && !shared.interrupted.load(Relaxed) {
        // Open loop: wait for this request's turn; a request already late goes at once, and its
        // latency counts from when it was due.
        let intended = plan.intended(id as u64, r).map(|at| start + at);
        if let Some(at) = intended {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
        }
        expand(&plan.message, id, r, &plan.login.user, &mut text);
        r += 1;
        let t0 = intended.unwrap_or_else(Instant::now);
        if conn.is_none() {
            match LineConn::open(plan.addr, &plan.login, plan.timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    // Nothing was sent: counted as not sent (against the plan) at the end.
                    out.error(&e);
                    // Without a duration, one failed connect ends this user's run.
                    if plan.duration.is_none() {
                        break;
                    }
                    // Not in a tight loop against a server that refuses.
                    thread::sleep(RETRY_PAUSE);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // Closed loop, keep-alive: the request's own time, not the connect before it.
        let t_req = match (intended, plan.connect_per_request) {
            (None, false) => Instant::now(),
            _ => t0,
        };
        if let Some(at) = intended {
            out.sent_late(Instant::now().saturating_duration_since(at));
        }
        out.sent += 1;
        let result = c
            .request(format_args!("MSG {text}"))
            .and_then(|()| c.expect_ok("MSG").map(|_| ()));
        match result {
            Ok(()) => {
                out.acked(t_req);
                if plan.record_acks {
                    out.acked_texts.push(text.clone());
                }
                shared.progress.fetch_add(1, Relaxed);
            }
            Err(e) => {
                out.error(&e);
                out.failed += 1;
                // The session may be unusable now: start a new one for the next request.
                conn = None;
            }
        }
        if plan.connect_per_request {
            if let Some(c) = conn.take() {
                c.quit();
            }
        }
    }
    if let Some(c) = conn.take() {
        c.quit();
    }
    out.finished = Some(Instant::now());
    shared.done.fetch_add(1, Relaxed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand() {
        let mut s = String::new();
        expand("hi %u from %t.%r 100%% %x%", 7, 3, "ari", &mut s);
        assert_eq!(s, "hi ari from 7.3 100% %x%");
    }
}
