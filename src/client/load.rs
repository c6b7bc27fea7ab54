//! Load mode: one OS thread per user, all released together by a barrier, each running its
//! transactions against the server; the results are merged into a [`Summary`]. With
//! `--conns-per-thread N` > 1 each thread drives N sessions itself (`multi.rs`).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::line::{server_total, LineConn};
use super::multi;
pub use super::plan::Plan;
use super::plan::{expand, Outcome, Shared};
use super::report::{Latency, Summary};

/// Stack of each user thread: they only run a small loop over a socket.
const STACK: usize = 128 * 1024;

/// Runs the plan and returns the summary and the texts of acknowledged messages (empty unless
/// the plan records them). `progress` is called from the main thread now and
/// then with the number acknowledged so far.
pub fn run(
    plan: Plan,
    interrupted: Arc<AtomicBool>,
    mut progress: impl FnMut(u64),
) -> io::Result<(Summary, Vec<String>)> {
    let before = server_total(plan.addr, &plan.user, plan.timeout).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach cserverd at {}: {e}", plan.addr),
        )
    })?;
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
    shared.barrier.wait();
    let start = Instant::now();
    while shared.done.load(Relaxed) < threads {
        progress(shared.progress.load(Relaxed));
        thread::sleep(Duration::from_millis(50));
    }
    progress(shared.progress.load(Relaxed));
    let mut all = Outcome::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
    let (mut first, mut last) = (None::<Instant>, start);
    for h in handles {
        let o = h
            .join()
            .map_err(|_| io::Error::other("a user thread panicked"))?;
        all.sent += o.sent;
        all.acknowledged += o.acknowledged;
        all.failed += o.failed;
        all.acked_texts.extend(o.acked_texts);
        for (k, v) in o.errors {
            *all.errors.entry(k).or_default() += v;
        }
        for us in o.latencies_us {
            let _ = hist.record(us.max(1));
        }
        if let Some(t) = o.finished {
            last = last.max(t);
        }
        if let Some(t) = o.began {
            first = Some(first.map_or(t, |f| f.min(t)));
        }
    }
    // From the first thread released to the last one done: the main thread may be scheduled
    // after the users, so its own clock would start late.
    let wall = last.saturating_duration_since(first.unwrap_or(start).min(start));
    let plan = &shared.plan;
    let after = server_total(plan.addr, &plan.user, plan.timeout);
    let summary = Summary::new(
        plan,
        all.sent,
        all.acknowledged,
        all.failed,
        wall,
        Latency::from(&hist),
        before,
        after,
        all.errors,
    );
    Ok((summary, all.acked_texts))
}

fn user_thread(id: usize, shared: &Shared) -> Outcome {
    let plan = &shared.plan;
    let mut out = Outcome {
        latencies_us: Vec::with_capacity(plan.requests.min(1 << 16) as usize),
        ..Outcome::default()
    };
    shared.barrier.wait();
    out.began = Some(Instant::now());
    let deadline = plan.duration.map(|d| Instant::now() + d);
    let more = |r: u64| match deadline {
        Some(at) => Instant::now() < at,
        None => r < plan.requests,
    };
    let mut text = String::with_capacity(plan.message.len() + 16);
    let mut conn: Option<LineConn> = None;
    let mut r = 0;
    while more(r) && !shared.interrupted.load(Relaxed) {
        expand(&plan.message, id, r, &plan.user, &mut text);
        r += 1;
        let t0 = Instant::now();
        if conn.is_none() {
            match LineConn::open(plan.addr, &plan.user, plan.timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    out.error(&e);
                    out.failed += 1;
                    // Without a duration, one failed connect fails the rest of this user's run.
                    if deadline.is_none() {
                        out.failed += plan.requests - r;
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let t_req = if plan.connect_per_request {
            t0
        } else {
            Instant::now()
        };
        out.sent += 1;
        let result = c
            .request(format_args!("MSG {text}"))
            .and_then(|()| c.expect_ok("MSG").map(|_| ()));
        match result {
            Ok(()) => {
                out.acknowledged += 1;
                if plan.record_acks {
                    out.acked_texts.push(text.clone());
                }
                out.latencies_us.push(t_req.elapsed().as_micros() as u64);
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
