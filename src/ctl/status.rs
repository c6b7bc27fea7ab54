//! `cserverctl status`: the scoreboard as a table or JSON (or, by `prometheus`, Prometheus
//! text).

use std::fmt::Write as _;

use crate::scoreboard::{now_ms, Snapshot};

use super::{open_board, prometheus, StatusArgs};

/// Reads the scoreboard and renders it.
pub fn status(args: &StatusArgs) -> Result<String, String> {
    let board = open_board(args.stats_file.as_deref(), args.port)?;
    let snap = board.snapshot();
    if args.json {
        serde_json::to_string_pretty(&snap).map_err(|e| e.to_string())
    } else if args.prometheus {
        Ok(prometheus(&snap, now_ms()))
    } else {
        Ok(table(&snap, now_ms()))
    }
}

fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "-".into();
    }
    format!("{:.1}s", now.saturating_sub(then) as f64 / 1000.0)
}

/// The human-readable status.
pub fn table(snap: &Snapshot, now: u64) -> String {
    let mut s = String::new();
    let t = &snap.total;
    let _ = writeln!(
        s,
        "cserverd master {} port {} {} up {} workers {}",
        snap.master_pid,
        snap.port,
        snap.state.name(),
        ago(now, snap.started_ms),
        snap.workers
    );
    let _ = writeln!(
        s,
        "total requests {} accepted {} open {} bytes_in {} bytes_out {} errors {} restarts {} \
         retired {}",
        t.requests, t.accepted, t.open, t.bytes_in, t.bytes_out, t.errors, t.restarts, t.retired
    );
    let _ = writeln!(
        s,
        "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>7} {:>9}",
        "slot",
        "pid",
        "state",
        "requests",
        "accepted",
        "open",
        "errors",
        "restarts",
        "retired",
        "heartbeat"
    );
    for w in &snap.slots {
        let _ = writeln!(
            s,
            "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>7} {:>9}",
            w.slot,
            w.pid,
            w.state.name(),
            w.requests,
            w.accepted,
            w.open,
            w.errors,
            w.restarts,
            w.retired,
            ago(now, w.heartbeat_ms)
        );
    }
    s
}
