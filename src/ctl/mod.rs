//! `cserverctl`'s commands: the options and the dispatch. The work is in `status` (the
//! scoreboard as a table or JSON), `liveness` (whether its master runs), `prometheus` (the
//! scoreboard as Prometheus text), `target` (which process is the master, and the proof),
//! `signal` (signalling it, `--wait`) and `workers` (`workers +N/-N`, checked in the header).
//!
//! `cserverctl` reads the live scoreboard (like Apache's server-status), prints it as a table,
//! JSON or Prometheus text, and signals the master (stop, quit, reload, reopen, upgrade,
//! workers +N/-N).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_HOST, DEFAULT_PORT};
use crate::scoreboard::{self, OpenError, Scoreboard};
use std::net::{IpAddr, SocketAddr};

mod liveness;
mod prometheus;
mod signal;
mod status;
mod target;
mod workers;

pub use liveness::Liveness;
pub use prometheus::{escape_label_value, prometheus};
pub use signal::{signal_master, wait_gone, Action};
pub use status::{status, table};
pub use target::{find_master, Master};

/// How a command that did its work ended; `main` turns it into the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (for `status`: the master runs).
    Done,
    /// `status`: the master the scoreboard or pid file names is not running.
    NotRunning,
}

/// Why a command failed: one line without the program name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The command could not do what was asked.
    Failed(String),
    /// `status` cannot tell whether the server runs: no scoreboard or pid file, or one that
    /// cannot be read or is refused.
    Unknown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(m) | Failure::Unknown(m) => f.write_str(m),
        }
    }
}

/// The largest `workers ±N`.
const MAX_WORKER_DELTA: u32 = 1024;

/// Reads cserverd's shared-memory scoreboard and signals its master.
#[derive(Debug, Parser)]
#[command(name = "cserverctl", version)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the totals and one row per worker (or JSON, or Prometheus text).
    Status(StatusArgs),
    /// Graceful stop (SIGTERM): open sessions may finish, up to cserverd's --shutdown-timeout.
    Stop(StopArgs),
    /// Immediate stop (SIGQUIT), the same as `stop --now`. (nginx's `-s quit` is graceful:
    /// this is not.)
    Quit(StopArgs),
    /// Reload (SIGHUP).
    Reload(TargetArgs),
    /// Reopen the log, e.g. after logrotate moved it (SIGUSR1).
    Reopen(TargetArgs),
    /// Start a new master binary (SIGUSR2).
    Upgrade(TargetArgs),
    /// Add (+N: N times SIGTTIN) or remove (-N: N times SIGTTOU) workers.
    Workers(WorkersArgs),
}

/// Where the scoreboard is and how to print it.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Find the master by its pid file (cserverd's --pid-file), then the scoreboard its own
    /// arguments name.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["stats_file", "port", "host"])]
    pub pid_file: Option<PathBuf>,

    /// The scoreboard file (cserverd's --stats-file).
    #[arg(long, conflicts_with_all = ["port", "host"])]
    pub stats_file: Option<PathBuf>,

    /// Find the scoreboard by the server's address (cserverd's --host; the default path).
    #[arg(long, default_value = DEFAULT_HOST)]
    pub host: IpAddr,

    /// Find the scoreboard by the server's port (the default path).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Print the Prometheus text exposition format (0.0.4) instead of a table.
    #[arg(long, conflicts_with = "json")]
    pub prometheus: bool,
}

impl StatusArgs {
    /// The scoreboard path these options name.
    pub fn path(&self) -> PathBuf {
        self.stats_file
            .clone()
            .unwrap_or_else(|| scoreboard::default_path(SocketAddr::new(self.host, self.port)))
    }
}

/// Which master to signal: the pid in `--pid-file`, else the master pid in the scoreboard.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Read the master's pid from this file (cserverd's --pid-file).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["stats_file", "port", "host"])]
    pub pid_file: Option<PathBuf>,

    /// Without --pid-file: the scoreboard file whose header names the master.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["port", "host"])]
    pub stats_file: Option<PathBuf>,

    /// Without --pid-file: find the scoreboard by the server's address (the default path).
    #[arg(long, default_value = DEFAULT_HOST)]
    pub host: IpAddr,

    /// Without --pid-file: find the scoreboard by the server's port (the default path).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

/// `stop` and `quit`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Wait up to SECONDS for the master to exit (0: do not wait); exit status 1 on timeout.
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_wait)]
    pub wait: Duration,

    /// Stop at once (SIGQUIT): open sessions are cut, as `quit` does.
    #[arg(long)]
    pub now: bool,
}

/// `workers +N` / `workers -N`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// +N adds N workers, -N removes N; a plain N means +N.
    #[arg(
        value_name = "+N|-N",
        allow_negative_numbers = true,
        value_parser = parse_delta
    )]
    pub delta: i32,

    #[command(flatten)]
    pub target: TargetArgs,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!(
            "{s:?} is not a number of seconds from 0 up to a year"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_delta(s: &str) -> Result<i32, String> {
    let (sign, digits) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => (1, s),
    };
    let n: u32 = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().map_err(|_| format!("{s:?} is too large"))?
    } else {
        return Err(format!("{s:?} is not +N or -N"));
    };
    if n == 0 || n > MAX_WORKER_DELTA {
        return Err(format!("{s:?}: N must be from 1 to {MAX_WORKER_DELTA}"));
    }
    Ok(sign * n as i32)
}

/// Runs one command, writing its normal output to `out`. The caller prints a failure's line
/// and chooses the exit status.
pub fn run(command: &Command, out: &mut dyn Write) -> Result<Outcome, Failure> {
    let write_err = |e: io::Error| Failure::Failed(format!("cannot write output: {e}"));
    let done = |r: Result<(), String>| r.map(|()| Outcome::Done).map_err(Failure::Failed);
    match command {
        Command::Status(args) => {
            let (mut text, outcome) = status(args)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            out.write_all(text.as_bytes()).map_err(write_err)?;
            out.flush().map_err(write_err)?;
            Ok(outcome)
        }
        Command::Stop(args) => {
            let action = if args.now { Action::Quit } else { Action::Stop };
            done(signal_master(&args.target, action, 1, args.wait, out))
        }
        Command::Quit(args) => done(signal_master(&args.target, Action::Quit, 1, args.wait, out)),
        Command::Reload(t) => done(signal_master(t, Action::Reload, 1, Duration::ZERO, out)),
        Command::Reopen(t) => done(signal_master(t, Action::Reopen, 1, Duration::ZERO, out)),
        Command::Upgrade(t) => done(signal_master(t, Action::Upgrade, 1, Duration::ZERO, out)),
        Command::Workers(w) => done(workers::resize(&w.target, w.delta, out)),
    }
}

/// Maps the scoreboard read-only, with a friendly message when it does not exist.
fn open_board(stats_file: Option<&Path>, addr: SocketAddr) -> Result<Scoreboard, String> {
    let port = addr.port();
    let path = stats_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| scoreboard::default_path(addr));
    Scoreboard::open_readonly(&path).map_err(|e| match e {
        OpenError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => format!(
            "no scoreboard at {}: is cserverd running{}?",
            path.display(),
            if stats_file.is_none() {
                format!(" on port {port}")
            } else {
                String::new()
            }
        ),
        e => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        CtlArgs::try_parse_from(std::iter::once("cserverctl").chain(args.iter().copied()))
            .map(|a| a.command)
    }

    fn workers_delta(args: &[&str]) -> Result<i32, clap::Error> {
        match parse(args)? {
            Command::Workers(w) => Ok(w.delta),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn workers_takes_plus_minus_and_plain_counts() {
        assert_eq!(workers_delta(&["workers", "+2"]).unwrap(), 2);
        assert_eq!(workers_delta(&["workers", "-1"]).unwrap(), -1);
        assert_eq!(workers_delta(&["workers", "2"]).unwrap(), 2);
        assert_eq!(
            workers_delta(&["workers", "-3", "--pid-file", "/x/pid"]).unwrap(),
            -3
        );
        assert_eq!(
            workers_delta(&["workers", "--port", "4000", "+1"]).unwrap(),
            1
        );
        for bad in [
            "0",
            "+0",
            "-0",
            "x",
            "+",
            "-",
            "1.5",
            "+-1",
            "99999999999",
            "2000",
        ] {
            assert!(workers_delta(&["workers", bad]).is_err(), "{bad} accepted");
        }
        assert!(parse(&["workers"]).is_err());
    }

    #[test]
    fn signal_commands_parse() {
        match parse(&["stop", "--pid-file", "/run/c.pid", "--wait", "20"]).unwrap() {
            Command::Stop(s) => {
                assert_eq!(s.wait, Duration::from_secs(20));
                assert_eq!(s.target.pid_file.as_deref(), Some(Path::new("/run/c.pid")));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["stop", "--now"]).unwrap() {
            Command::Stop(s) => assert!(s.now),
            other => panic!("{other:?}"),
        }
        match parse(&["quit", "--port", "4000", "--wait", "0.5"]).unwrap() {
            Command::Quit(s) => {
                assert_eq!(s.wait, Duration::from_millis(500));
                assert_eq!(s.target.port, 4000);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["stop"]).unwrap() {
            Command::Stop(s) => {
                assert!(s.wait.is_zero());
                assert_eq!(s.target.port, 31337);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["reload"]).unwrap(), Command::Reload(_)));
        assert!(matches!(
            parse(&["reopen", "--stats-file", "/dev/shm/x"]).unwrap(),
            Command::Reopen(_)
        ));
        assert!(matches!(parse(&["upgrade"]).unwrap(), Command::Upgrade(_)));
        assert!(parse(&["stop", "--wait", "-1"]).is_err());
        assert!(parse(&["stop", "--wait", "soon"]).is_err());
        assert!(parse(&["reload", "--wait", "1"]).is_err());
        assert!(parse(&["stop", "--pid-file", "p", "--port", "1"]).is_err());
        assert!(parse(&["stop", "--pid-file", "p", "--stats-file", "s"]).is_err());
        assert!(parse(&["stop", "--stats-file", "s", "--port", "1"]).is_err());
        assert!(parse(&["status", "--json", "--prometheus"]).is_err());
        assert!(matches!(
            parse(&["status", "--prometheus"]).unwrap(),
            Command::Status(StatusArgs {
                prometheus: true,
                ..
            })
        ));
    }
}
