//! `cserverctl`'s commands: read the live scoreboard (like Apache's server-status).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::scoreboard::{self, now_ms, OpenError, Scoreboard, Snapshot};

/// cserverctl: reads cserverd's shared-memory scoreboard.
#[derive(Debug, Parser)]
#[command(name = "cserverctl", version)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the totals and one row per worker.
    Status(StatusArgs),
}

/// Where the scoreboard is and how to print it.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The scoreboard file (cserverd's --stats-file).
    #[arg(long, conflicts_with = "port")]
    pub stats_file: Option<PathBuf>,

    /// Find the scoreboard by the server's port (the default path).
    #[arg(long, default_value_t = 31337)]
    pub port: u16,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// The scoreboard path these options name.
    pub fn path(&self) -> PathBuf {
        self.stats_file
            .clone()
            .unwrap_or_else(|| scoreboard::default_path(self.port))
    }
}

/// Reads the scoreboard and renders it.
pub fn status(args: &StatusArgs) -> Result<String, String> {
    let path = args.path();
    let board = Scoreboard::open_readonly(&path).map_err(|e| match e {
        OpenError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => format!(
            "no scoreboard at {}: is cserverd running{}?",
            path.display(),
            if args.stats_file.is_none() {
                format!(" on port {}", args.port)
            } else {
                String::new()
            }
        ),
        e => e.to_string(),
    })?;
    let snap = board.snapshot();
    if args.json {
        serde_json::to_string_pretty(&snap).map_err(|e| e.to_string())
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
        "total requests {} accepted {} open {} bytes_in {} bytes_out {} errors {} restarts {}",
        t.requests, t.accepted, t.open, t.bytes_in, t.bytes_out, t.errors, t.restarts
    );
    let _ = writeln!(
        s,
        "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>9}",
        "slot", "pid", "state", "requests", "accepted", "open", "errors", "restarts", "heartbeat"
    );
    for w in &snap.slots {
        let _ = writeln!(
            s,
            "{:>4} {:>8} {:>9} {:>10} {:>10} {:>6} {:>7} {:>8} {:>9}",
            w.slot,
            w.pid,
            w.state.name(),
            w.requests,
            w.accepted,
            w.open,
            w.errors,
            w.restarts,
            ago(now, w.heartbeat_ms)
        );
    }
    s
}
