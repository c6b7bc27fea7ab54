//! `cserverctl status`: the scoreboard as a table or JSON (or, by `prometheus`, Prometheus
//! text), and whether the master it records is running.
//!
//! The outcome follows the LSB convention for an init script's `status` (as `systemctl status`
//! does): the master runs; it does not (a stale scoreboard or pid file, whose numbers are still
//! shown); or no one can tell (no scoreboard, an unreadable or refused file), an error.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scoreboard::{now_ms, Snapshot};

use super::liveness::{board_liveness, Liveness};
use super::prometheus::prometheus_down;
use super::target::{pid_file_board, PidFileError};
use super::{open_board, prometheus, Failure, Outcome, StatusArgs};

/// `status --json`: the scoreboard's fields with whether its master runs.
#[derive(Serialize)]
struct Json<'a> {
    running: bool,
    /// The phrase the table's first line shows: `running`, `not running (why)`.
    status: String,
    #[serde(flatten)]
    snapshot: Option<&'a Snapshot>,
}

/// Reads the scoreboard, checks its master, and renders both.
pub fn status(args: &StatusArgs) -> Result<(String, Outcome), Failure> {
    let board = match &args.pid_file {
        Some(path) => match pid_file_board(path) {
            Ok(board) => board,
            // A stale pid file: nothing but that to show.
            Err(PidFileError::NotRunning { why, .. }) => {
                let text = render(args, None, &Liveness::NotRunning(why))?;
                return Ok((text, Outcome::NotRunning));
            }
            Err(PidFileError::Unknown(message)) => return Err(Failure::Unknown(message)),
        },
        None => open_board(
            args.stats_file.as_deref(),
            std::net::SocketAddr::new(args.host, args.port),
        )
        .map_err(Failure::Unknown)?,
    };
    let snap = board.snapshot();
    let liveness = board_liveness(&board).map_err(Failure::Unknown)?;
    let outcome = if liveness.is_running() {
        Outcome::Done
    } else {
        Outcome::NotRunning
    };
    Ok((render(args, Some(&snap), &liveness)?, outcome))
}

/// The output `args` ask for; without a scoreboard only whether the master runs.
fn render(
    args: &StatusArgs,
    snap: Option<&Snapshot>,
    liveness: &Liveness,
) -> Result<String, Failure> {
    if args.json {
        let json = Json {
            running: liveness.is_running(),
            status: liveness.phrase(),
            snapshot: snap,
        };
        serde_json::to_string_pretty(&json).map_err(|e| Failure::Failed(e.to_string()))
    } else {
        Ok(match snap {
            Some(snap) if args.prometheus && liveness.is_running() => prometheus(snap, now_ms()),
            _ if args.prometheus => prometheus_down(),
            Some(snap) => table(snap, now_ms(), liveness),
            None => format!("cserverd {}\n", liveness.phrase()),
        })
    }
}

fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "-".into();
    }
    format!("{:.1}s", now.saturating_sub(then) as f64 / 1000.0)
}

/// The human-readable status. A master that is not running has no uptime or pool size; its
/// slots show what it last recorded.
pub fn table(snap: &Snapshot, now: u64, liveness: &Liveness) -> String {
    let mut s = String::new();
    let t = &snap.total;
    let _ = match liveness {
        Liveness::Running => writeln!(
            s,
            "cserverd master {} port {} {} up {} workers {}",
            snap.master_pid,
            snap.port,
            snap.state.name(),
            ago(now, snap.started_ms),
            snap.workers
        ),
        Liveness::NotRunning(_) => writeln!(
            s,
            "cserverd master {} port {} {}",
            snap.master_pid,
            snap.port,
            liveness.phrase()
        ),
    };
    let _ = writeln!(
        s,
        "total requests {} accepted {} open {} bytes_in {} bytes_out {} errors {} restarts {} \
         retired {}",
        t.requests, t.accepted, t.open, t.bytes_in, t.bytes_out, t.errors, t.restarts, t.retired
    );
    // Sessions moved between workers, once any has.
    if t.handed_over > 0 || t.adopted > 0 {
        let _ = writeln!(
            s,
            "sessions handed_over {} adopted {}",
            t.handed_over, t.adopted
        );
    }
    // The log's syncs (--sync), once any was made.
    if t.sync.syncs > 0 {
        let _ = writeln!(
            s,
            "log syncs {} failed {} mean_us {} max_us {}",
            t.sync.syncs,
            t.sync.failures,
            t.sync.mean_us(),
            t.sync.max_ns / 1000
        );
    }
    // The other listeners' protocols, once any has served a request.
    let others = &t.by_protocol.each()[1..];
    if others.iter().any(|(_, n)| *n > 0) {
        let counts: Vec<String> = others.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let _ = writeln!(s, "other protocols {}", counts.join(" "));
    }
    let _ = writeln!(
        s,
        "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>7} {:>11} {:>9}",
        "slot",
        "pid",
        "state",
        "requests",
        "accepted",
        "open",
        "errors",
        "restarts",
        "retired",
        "handed_over",
        "heartbeat"
    );
    for w in &snap.slots {
        let _ = writeln!(
            s,
            "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>7} {:>11} {:>9}",
            w.slot,
            w.pid,
            w.state.name(),
            w.requests,
            w.accepted,
            w.open,
            w.errors,
            w.restarts,
            w.retired,
            w.handed_over,
            ago(now, w.heartbeat_ms)
        );
    }
    s
}
