//! `cserverctl workers +N/-N`: one `TTIN` (`TTOU`) at a time, each once the master has taken the
//! one before and the pool size in the scoreboard header has followed it. When it stops
//! following (the master's `--max-workers`, its last worker, a refusal in its log) no more are
//! sent, and the report says how far the pool got: `workers: 8 -> 64 (asked +100; ...)`, an
//! error unless it got where asked.
//!
//! The header records the pool size but not its maximum, so the cap is found by asking: at most
//! one signal is sent past it.

use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use super::signal::{wait_taken, Action};
use super::target::{find_master_and_board, option_value, Master};
use super::TargetArgs;
use crate::procfs;
use crate::scoreboard::Scoreboard;

/// How long the header may take to show a signal the master has taken.
const SETTLE: Duration = Duration::from_secs(2);

/// How long the master may take to take one signal (see [`super::signal`]).
const TAKE_SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(10);

/// Adds (`delta` > 0) or removes workers and reports the pool size before and after.
pub fn resize(target: &TargetArgs, delta: i32, out: &mut dyn Write) -> Result<(), String> {
    let write_err = |e: io::Error| format!("cannot write output: {e}");
    let (master, board) = find_master_and_board(target)?;
    let action = if delta < 0 {
        Action::RemoveWorker
    } else {
        Action::AddWorker
    };
    let (sig, pid, asked) = (action.signal(), master.pid(), delta.unsigned_abs());
    let Some(board) = board else {
        // A master without a scoreboard to be found (--port 0, no --stats-file): the signals
        // go out, nothing can tell what they did.
        for i in 0..asked {
            send(&master, action, i, asked)?;
        }
        return writeln!(
            out,
            "sent {sig} x{asked} ({}) to cserverd master {pid}; the pool size cannot be read \
             (no scoreboard)",
            action.meaning()
        )
        .map_err(write_err);
    };
    let before = board.header().workers.load(Relaxed);
    // The master keeps at least one worker: no TTOU past that; and no TTIN past the
    // --max-workers its header records (0: a master that does not record it; found by asking).
    let max = board.header().max_workers.load(Relaxed);
    let room = if delta < 0 {
        asked.min(before.saturating_sub(1))
    } else if max > 0 {
        asked.min(max.saturating_sub(before))
    } else {
        asked
    };
    let mut size = before;
    let mut sent = 0;
    while sent < room {
        send(&master, action, sent, asked)?;
        sent += 1;
        wait_taken(pid, sig, TAKE_SIGNAL_TIMEOUT)?;
        match followed(&board, size, delta) {
            Some(now) => size = now,
            None => break,
        }
    }
    if sent > 0 {
        writeln!(
            out,
            "sent {sig} x{sent} ({}) to cserverd master {pid}",
            action.meaning()
        )
        .map_err(write_err)?;
    }
    let report = format!("workers: {before} -> {size} (asked {delta:+}");
    if i64::from(size) == i64::from(before) + i64::from(delta) {
        return writeln!(out, "{report})")
            .and_then(|()| out.flush())
            .map_err(write_err);
    }
    out.flush().map_err(write_err)?;
    let why = if delta > 0 && max > 0 && size >= max {
        format!("the master's --max-workers {max} stopped it")
    } else {
        why_stopped(&master, size, delta)
    };
    Err(format!("{report}; {why})"))
}

/// Sends signal number `i` of `of`.
fn send(master: &Master, action: Action, i: u32, of: u32) -> Result<(), String> {
    let (sig, pid) = (action.signal(), master.pid());
    // Not merged with one still pending (see super::signal).
    wait_taken(pid, sig, TAKE_SIGNAL_TIMEOUT)
        .map_err(|e| format!("{e}; sent {sig} {i} of {of} times"))?;
    master
        .signal(sig)
        .map_err(|e| format!("cannot send {sig} to cserverd {pid}: {e} (after {i} of {of})"))
}

/// Waits up to [`SETTLE`] for the header's pool size to move from `from` the way `delta` asks;
/// the new size, or None if it did not.
fn followed(board: &Scoreboard, from: u32, delta: i32) -> Option<u32> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = board.header().workers.load(Relaxed);
        if (delta > 0 && now > from) || (delta < 0 && now < from) {
            return Some(now);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Why the pool stopped at `size`, as far as cserverctl can tell.
fn why_stopped(master: &Master, size: u32, delta: i32) -> String {
    if delta < 0 {
        return if size <= 1 {
            "the master keeps at least one".into()
        } else {
            "the master removed no more within 2s; see its log".into()
        };
    }
    let args = procfs::cmdline(master.pid().as_raw()).unwrap_or_default();
    let max = option_value(&args, "--max-workers")
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse::<u32>().ok());
    match max {
        Some(max) if size >= max => format!("the master's --max-workers {max} stopped it"),
        _ => "the master added no more within 2s: its --max-workers, or see its log".into(),
    }
}
