//! `cserverctl`'s commands: read the live scoreboard (like Apache's server-status), print it as a
//! table, JSON or Prometheus text, and signal the master (stop, quit, reload, reopen, upgrade,
//! workers +N/-N).
//!
//! A signal goes only to a process that is alive, is not pid 0 or 1 (nor a negative "pid", which
//! `kill(2)` would take as a process group) and whose `/proc/PID/comm` is `cserverd`: a stale pid
//! file or scoreboard cannot make it signal an unrelated process.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::scoreboard::{self, now_ms, OpenError, Scoreboard, Snapshot};

/// The process name (`/proc/PID/comm`) a signalled process must have.
pub const SERVER_COMM: &str = "cserverd";

/// How often waits poll.
const POLL: Duration = Duration::from_millis(10);

/// How long `workers ±N` waits for the master to take one signal before sending the next (the
/// kernel keeps at most one pending instance of a standard signal, so two sent back to back can
/// merge into one).
const TAKE_SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest `workers ±N`.
const MAX_WORKER_DELTA: u32 = 1024;

/// cserverctl: reads cserverd's shared-memory scoreboard and signals its master.
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
    /// Immediate stop (SIGQUIT).
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
    /// The scoreboard file (cserverd's --stats-file).
    #[arg(long, conflicts_with = "port")]
    pub stats_file: Option<PathBuf>,

    /// Find the scoreboard by the server's port (the default path).
    #[arg(long, default_value_t = 31337)]
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
            .unwrap_or_else(|| scoreboard::default_path(self.port))
    }
}

/// Which master to signal: the pid in `--pid-file`, else the master pid in the scoreboard.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Read the master's pid from this file (cserverd's --pid-file).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["stats_file", "port"])]
    pub pid_file: Option<PathBuf>,

    /// Without --pid-file: the scoreboard file whose header names the master.
    #[arg(long, value_name = "PATH", conflicts_with = "port")]
    pub stats_file: Option<PathBuf>,

    /// Without --pid-file: find the scoreboard by the server's port (the default path).
    #[arg(long, default_value_t = 31337)]
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

/// A signal `cserverctl` sends to the master, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Quit,
    Reload,
    Reopen,
    Upgrade,
    AddWorker,
    RemoveWorker,
}

impl Action {
    /// The signal for this action.
    pub fn signal(self) -> Signal {
        match self {
            Action::Stop => Signal::SIGTERM,
            Action::Quit => Signal::SIGQUIT,
            Action::Reload => Signal::SIGHUP,
            Action::Reopen => Signal::SIGUSR1,
            Action::Upgrade => Signal::SIGUSR2,
            Action::AddWorker => Signal::SIGTTIN,
            Action::RemoveWorker => Signal::SIGTTOU,
        }
    }

    /// What the signal asks for, for the one-line report.
    pub fn meaning(self) -> &'static str {
        match self {
            Action::Stop => "graceful stop",
            Action::Quit => "immediate stop",
            Action::Reload => "reload",
            Action::Reopen => "reopen log",
            Action::Upgrade => "upgrade",
            Action::AddWorker => "add a worker",
            Action::RemoveWorker => "remove a worker",
        }
    }
}

/// Runs one command, writing its normal output to `out`. The error is one line without the
/// program name; the caller prints it and exits 1.
pub fn run(command: &Command, out: &mut dyn Write) -> Result<(), String> {
    let write_err = |e: io::Error| format!("cannot write output: {e}");
    match command {
        Command::Status(args) => {
            let mut text = status(args)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            out.write_all(text.as_bytes()).map_err(write_err)?;
            out.flush().map_err(write_err)
        }
        Command::Stop(args) => signal_master(&args.target, Action::Stop, 1, args.wait, out),
        Command::Quit(args) => signal_master(&args.target, Action::Quit, 1, args.wait, out),
        Command::Reload(t) => signal_master(t, Action::Reload, 1, Duration::ZERO, out),
        Command::Reopen(t) => signal_master(t, Action::Reopen, 1, Duration::ZERO, out),
        Command::Upgrade(t) => signal_master(t, Action::Upgrade, 1, Duration::ZERO, out),
        Command::Workers(w) => {
            let action = if w.delta < 0 {
                Action::RemoveWorker
            } else {
                Action::AddWorker
            };
            signal_master(
                &w.target,
                action,
                w.delta.unsigned_abs(),
                Duration::ZERO,
                out,
            )
        }
    }
}

/// Maps the scoreboard read-only, with a friendly message when it does not exist.
fn open_board(stats_file: Option<&Path>, port: u16) -> Result<Scoreboard, String> {
    let path = stats_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| scoreboard::default_path(port));
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

/// Escapes a label value for the Prometheus text format: `\`, `"` and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes `# HELP` text: `\` and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples (`labels` already rendered as
/// `{a="1",...}` or empty).
fn family(s: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(s, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(s, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(s, "{name}{labels} {value}");
    }
}

/// Renders `{k="v",...}` with escaped values.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// The scoreboard in the Prometheus text exposition format, version 0.0.4: every family has its
/// `# HELP` and `# TYPE` line before its samples; totals have no labels, the per-worker families
/// (`cserverd_worker_*`) are labelled `slot`, `pid` and `state`. `now_ms` is the wall clock in
/// ms since the epoch (for the uptime). No sample carries a timestamp.
pub fn prometheus(snap: &Snapshot, now_ms: u64) -> String {
    let mut s = String::new();
    let plain = |v: String| vec![(String::new(), v)];
    let t = &snap.total;

    family(
        &mut s,
        "cserverd_up",
        "gauge",
        "1: the scoreboard of a cserverd master was read.",
        &plain("1".into()),
    );
    family(
        &mut s,
        "cserverd_info",
        "gauge",
        "The master's pid, port and state (running or stopping); the value is always 1.",
        &[(
            labels(&[
                ("master_pid", &snap.master_pid.to_string()),
                ("port", &snap.port.to_string()),
                ("state", snap.state.name()),
            ]),
            "1".into(),
        )],
    );
    family(
        &mut s,
        "cserverd_start_time_seconds",
        "gauge",
        "When the master started, seconds since the Unix epoch.",
        &plain(seconds(snap.started_ms)),
    );
    family(
        &mut s,
        "cserverd_uptime_seconds",
        "gauge",
        "Seconds since the master started.",
        &plain(seconds(now_ms.saturating_sub(snap.started_ms))),
    );
    family(
        &mut s,
        "cserverd_workers",
        "gauge",
        "Worker slots the master keeps filled.",
        &plain(snap.workers.to_string()),
    );

    // (name after `cserverd_` / `cserverd_worker_`, type, help, total, per-slot value)
    type Get = fn(&scoreboard::SlotSnapshot) -> u64;
    let series: [(&str, &str, &str, u64, Get); 7] = [
        (
            "requests_total",
            "counter",
            "MSG requests handled and logged.",
            t.requests,
            |w| w.requests,
        ),
        (
            "accepted_connections_total",
            "counter",
            "Client connections accepted.",
            t.accepted,
            |w| w.accepted,
        ),
        (
            "open_connections",
            "gauge",
            "Client connections open now.",
            t.open,
            |w| w.open,
        ),
        (
            "received_bytes_total",
            "counter",
            "Bytes read from clients.",
            t.bytes_in,
            |w| w.bytes_in,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            t.bytes_out,
            |w| w.bytes_out,
        ),
        (
            "errors_total",
            "counter",
            "ERR replies sent.",
            t.errors,
            |w| w.errors,
        ),
        (
            "restarts_total",
            "counter",
            "Worker processes replaced after they died.",
            t.restarts,
            |w| w.restarts,
        ),
    ];
    for (name, kind, help, total, _) in &series {
        family(
            &mut s,
            &format!("cserverd_{name}"),
            kind,
            &format!("{help} All workers together."),
            &plain(total.to_string()),
        );
    }
    for (name, kind, help, _, get) in &series {
        let samples: Vec<(String, String)> = snap
            .slots
            .iter()
            .map(|w| {
                (
                    labels(&[
                        ("slot", &w.slot.to_string()),
                        ("pid", &w.pid.to_string()),
                        ("state", w.state.name()),
                    ]),
                    get(w).to_string(),
                )
            })
            .collect();
        family(
            &mut s,
            &format!("cserverd_worker_{name}"),
            kind,
            &format!("{help} Per worker slot (counters continue across respawns)."),
            &samples,
        );
    }
    s
}

/// Reads a pid file: one decimal pid, surrounding white space allowed.
pub fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "no pid file at {}: is cserverd running with --pid-file?",
                path.display()
            )
        } else {
            format!("cannot read pid file {}: {e}", path.display())
        }
    })?;
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "pid file {} does not hold a pid: {:?}",
            path.display(),
            t.chars().take(40).collect::<String>()
        ));
    }
    t.parse()
        .map_err(|_| format!("pid file {} holds an impossible pid {t}", path.display()))
}

/// The master's pid and where it came from (for messages).
pub fn find_master(target: &TargetArgs) -> Result<(i32, String), String> {
    if let Some(path) = &target.pid_file {
        return Ok((read_pid_file(path)?, format!("pid file {}", path.display())));
    }
    let board = open_board(target.stats_file.as_deref(), target.port)?;
    Ok((
        board.snapshot().master_pid,
        format!("scoreboard {}", board.path().display()),
    ))
}

/// `/proc/PID/comm` without its newline.
fn comm(pid: i32) -> io::Result<String> {
    let mut c = fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if c.ends_with('\n') {
        c.pop();
    }
    Ok(c)
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...).
fn proc_state(pid: i32) -> io::Result<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) S ...": comm may itself hold ')' and spaces, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat"))
}

/// Checks that `pid` may be signalled: > 1, alive (not a zombie) and named `cserverd`.
pub fn check_target(pid: i32, source: &str) -> Result<Pid, String> {
    if pid <= 1 {
        return Err(format!(
            "{source} names pid {pid}: refusing to signal it (not a cserverd master)"
        ));
    }
    let gone = || format!("no process {pid} (from {source}): is cserverd running?");
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Err(gone()),
        Err(Errno::EPERM) => {
            return Err(format!(
                "process {pid} (from {source}) belongs to another user: not permitted to signal it"
            ))
        }
        Err(e) => return Err(format!("cannot check process {pid}: {e}")),
    }
    let name = match comm(pid) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(format!("cannot read /proc/{pid}/comm: {e}")),
    };
    if name != SERVER_COMM {
        return Err(format!(
            "process {pid} (from {source}) is {name:?}, not {SERVER_COMM}: refusing to signal it"
        ));
    }
    if matches!(proc_state(pid), Ok('Z' | 'X')) {
        return Err(format!("cserverd {pid} (from {source}) has already exited"));
    }
    Ok(Pid::from_raw(pid))
}

/// True once `pid` no longer names a running cserverd: no such process, a zombie waiting for
/// its parent, or the pid reused by something else.
fn is_gone(pid: Pid) -> bool {
    is_gone_as(pid, SERVER_COMM)
}

/// [`is_gone`] for a process named `name`.
fn is_gone_as(pid: Pid, name: &str) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return true;
    }
    let raw = pid.as_raw();
    match (comm(raw), proc_state(raw)) {
        (Ok(now), Ok(state)) => now != name || matches!(state, 'Z' | 'X'),
        (Err(e), _) | (_, Err(e)) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Waits until `pid` is gone, polling every 10 ms up to `limit`; returns how long it took.
pub fn wait_gone(pid: Pid, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        if is_gone(pid) {
            return Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cserverd {pid} is still running after {}s",
                limit.as_secs_f64()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Whether `sig` is pending (sent, not yet taken) for `pid`, from `/proc/PID/status`.
fn signal_pending(pid: Pid, sig: Signal) -> io::Result<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bit = 1u64 << (sig as i32 - 1);
    Ok(status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .any(|mask| mask & bit != 0))
}

/// Waits until `sig` is no longer pending for `pid`, so the next one is not merged with it.
fn wait_taken(pid: Pid, sig: Signal, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match signal_pending(pid, sig) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("cserverd {pid} exited"))
            }
            Err(e) => return Err(format!("cannot read /proc/{pid}/status: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cserverd {pid} did not take a pending {sig} within {}s",
                limit.as_secs_f64()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Finds and checks the master, sends `action`'s signal `times` times (a worker signal only once
/// the master has taken the previous one), reports one line on `out`, then waits up to `wait` for
/// the master to exit (`wait` zero: no waiting).
pub fn signal_master(
    target: &TargetArgs,
    action: Action,
    times: u32,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (raw, source) = find_master(target)?;
    let pid = check_target(raw, &source)?;
    let sig = action.signal();
    // Worker signals are counted: each waits until the master has taken the one before (or one
    // someone else sent), so two never merge into one pending signal.
    let counted = matches!(action, Action::AddWorker | Action::RemoveWorker);
    for i in 0..times {
        if counted {
            wait_taken(pid, sig, TAKE_SIGNAL_TIMEOUT)
                .map_err(|e| format!("{e}; sent {sig} {i} of {times} times"))?;
        }
        kill(pid, sig).map_err(|e| {
            format!(
                "cannot send {sig} to cserverd {pid}: {e}{}",
                if i > 0 {
                    format!(" (after {i} of {times})")
                } else {
                    String::new()
                }
            )
        })?;
    }
    let write_err = |e: io::Error| format!("cannot write output: {e}");
    let count = if times > 1 {
        format!(" x{times}")
    } else {
        String::new()
    };
    writeln!(
        out,
        "sent {sig}{count} ({}) to cserverd master {pid}",
        action.meaning()
    )
    .and_then(|()| out.flush())
    .map_err(write_err)?;
    if !wait.is_zero() {
        let took = wait_gone(pid, wait)?;
        writeln!(
            out,
            "cserverd master {pid} exited after {:.1}s",
            took.as_secs_f64()
        )
        .and_then(|()| out.flush())
        .map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::{Slot, SlotState};
    use std::collections::HashMap;

    /// A real scoreboard (so the test keeps compiling when fields are added to the slots) with
    /// slots 0 and 2 used.
    fn sample_snapshot() -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 4, 4242).unwrap();
        let s0 = board.slot(0);
        s0.pid.store(1001, std::sync::atomic::Ordering::Relaxed);
        s0.set_state(SlotState::Ready);
        Slot::add(&s0.requests, 5);
        Slot::add(&s0.accepted, 6);
        Slot::add(&s0.open, 1);
        Slot::add(&s0.bytes_in, 100);
        Slot::add(&s0.bytes_out, 200);
        Slot::add(&s0.errors, 2);
        let s2 = board.slot(2);
        s2.pid.store(1003, std::sync::atomic::Ordering::Relaxed);
        s2.set_state(SlotState::Stopping);
        Slot::add(&s2.requests, 7);
        Slot::add(&s2.accepted, 8);
        Slot::add(&s2.restarts, 3);
        board.snapshot()
    }

    /// One parsed sample line: `name{labels} value`.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    /// Parses a sample line strictly by the 0.0.4 text format grammar (no timestamp expected).
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let name = &line[..end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or("label without '='")?;
                let lname = &rest[..eq];
                if !is_name(lname, false) {
                    return Err(format!("bad label name {lname:?}"));
                }
                let mut chars = rest[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("label value not quoted".into());
                }
                let mut value = String::new();
                let mut closed = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = Some(eq + 1 + i + 1);
                            break;
                        }
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        '\n' => return Err("raw newline in label value".into()),
                        c => value.push(c),
                    }
                }
                let after = closed.ok_or("unterminated label value")?;
                labels.push((lname.to_string(), value));
                rest = &rest[after..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err(format!("expected ',' or '}}' at {rest:?}"));
                }
            }
        }
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before value in {line:?}"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
        };
        Ok(Sample {
            name: name.to_string(),
            labels,
            value,
        })
    }

    /// Checks the exposition's structure; returns every sample.
    fn check_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "must end with a newline");
        let mut help: HashMap<String, usize> = HashMap::new();
        let mut kind: HashMap<String, String> = HashMap::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            assert!(!line.is_empty(), "blank line {n}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has text");
                assert!(help.insert(name.into(), n).is_none(), "second HELP {name}");
                if let Some(c) = current.take() {
                    finished.push(c);
                }
                current = Some(name.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').expect("TYPE has a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&k),
                    "type {k}"
                );
                assert_eq!(current.as_deref(), Some(name), "TYPE right after its HELP");
                assert!(kind.insert(name.into(), k.into()).is_none(), "second TYPE");
                if k == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                } else {
                    assert!(!name.ends_with("_total"), "{k} {name} named like a counter");
                }
            } else {
                assert!(!line.starts_with('#'), "stray comment {line:?}");
                let sample = parse_sample(line).unwrap_or_else(|e| panic!("line {n}: {e}"));
                assert!(sample.name.starts_with("cserverd_"), "{}", sample.name);
                assert_eq!(
                    current.as_deref(),
                    Some(sample.name.as_str()),
                    "sample {line:?} outside its family (HELP/TYPE must come first)"
                );
                assert!(kind.contains_key(&sample.name), "no TYPE before {line:?}");
                assert!(!finished.contains(&sample.name), "family split: {line:?}");
                samples.push(sample);
            }
        }
        assert_eq!(help.len(), kind.len(), "every HELP has a TYPE");
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}");
        found[0].value
    }

    #[test]
    fn prometheus_is_well_formed() {
        let snap = sample_snapshot();
        let text = prometheus(&snap, snap.started_ms + 2500);
        let samples = check_exposition(&text);
        assert!(text.contains("# TYPE cserverd_requests_total counter\n"));
        assert!(text.contains("# TYPE cserverd_open_connections gauge\n"));
        assert!(text.contains("\ncserverd_requests_total 12\n"), "{text}");
        assert!(
            text.contains(
                "\ncserverd_worker_requests_total{slot=\"0\",pid=\"1001\",state=\"ready\"} 5\n"
            ),
            "{text}"
        );
        assert!(!samples.is_empty());
    }

    #[test]
    fn prometheus_values_match_the_snapshot() {
        let snap = sample_snapshot();
        let s = check_exposition(&prometheus(&snap, snap.started_ms + 2500));
        assert_eq!(value(&s, "cserverd_up", &[]), 1.0);
        assert_eq!(value(&s, "cserverd_uptime_seconds", &[]), 2.5);
        assert_eq!(
            value(&s, "cserverd_start_time_seconds", &[]),
            snap.started_ms as f64 / 1000.0
        );
        assert_eq!(value(&s, "cserverd_workers", &[]), snap.workers as f64);
        let pid = snap.master_pid.to_string();
        assert_eq!(
            value(
                &s,
                "cserverd_info",
                &[("master_pid", &pid), ("port", "4242"), ("state", "running")]
            ),
            1.0
        );
        for (name, total) in [
            ("requests_total", 12.0),
            ("accepted_connections_total", 14.0),
            ("open_connections", 1.0),
            ("received_bytes_total", 100.0),
            ("sent_bytes_total", 200.0),
            ("errors_total", 2.0),
            ("restarts_total", 3.0),
        ] {
            assert_eq!(value(&s, &format!("cserverd_{name}"), &[]), total, "{name}");
            let per_worker: f64 = s
                .iter()
                .filter(|x| x.name == format!("cserverd_worker_{name}"))
                .map(|x| x.value)
                .sum();
            assert_eq!(per_worker, total, "{name} per worker");
        }
        let w2 = [("slot", "2"), ("pid", "1003"), ("state", "stopping")];
        assert_eq!(value(&s, "cserverd_worker_requests_total", &w2), 7.0);
        assert_eq!(value(&s, "cserverd_worker_restarts_total", &w2), 3.0);
        // Only used slots get series: slots 0 and 2.
        assert_eq!(
            s.iter()
                .filter(|x| x.name == "cserverd_worker_requests_total")
                .count(),
            2
        );
        // A clock behind the start does not make the uptime negative.
        let s = check_exposition(&prometheus(&snap, 0));
        assert_eq!(value(&s, "cserverd_uptime_seconds", &[]), 0.0);
    }

    #[test]
    fn label_values_are_escaped_per_the_spec() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value("a\\b"), "a\\\\b");
        assert_eq!(escape_label_value("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(escape_label_value("two\nlines"), "two\\nlines");
        let nasty = "x\\\"\n} 1\ncserverd_up 0";
        let line = format!("cserverd_test{} 1", labels(&[("v", nasty), ("w", "ok")]));
        assert!(!line.contains('\n'));
        let sample = parse_sample(&line).unwrap();
        assert_eq!(sample.labels[0], ("v".to_string(), nasty.to_string()));
        assert_eq!(sample.labels[1], ("w".to_string(), "ok".to_string()));
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn sample_parser_rejects_malformed_lines() {
        for bad in [
            "cserverd_x",
            "cserverd_x{a=\"1\"}",
            "9bad 1",
            "cserverd_x{a=1} 1",
            "cserverd_x{a=\"1} 1",
            "cserverd_x{a=\"\\t\"} 1",
            "cserverd_x one",
        ] {
            assert!(parse_sample(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_sample("cserverd_x{a=\"1\",} 2.5").is_ok());
    }

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

    #[test]
    fn actions_map_to_their_signals() {
        assert_eq!(Action::Stop.signal(), Signal::SIGTERM);
        assert_eq!(Action::Quit.signal(), Signal::SIGQUIT);
        assert_eq!(Action::Reload.signal(), Signal::SIGHUP);
        assert_eq!(Action::Reopen.signal(), Signal::SIGUSR1);
        assert_eq!(Action::Upgrade.signal(), Signal::SIGUSR2);
        assert_eq!(Action::AddWorker.signal(), Signal::SIGTTIN);
        assert_eq!(Action::RemoveWorker.signal(), Signal::SIGTTOU);
    }

    #[test]
    fn pid_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        let err = read_pid_file(&p).unwrap_err();
        assert!(err.contains("no pid file"), "{err}");
        fs::write(&p, " 1234\n").unwrap();
        assert_eq!(read_pid_file(&p).unwrap(), 1234);
        for bad in ["", "\n", "-1", "12x", "1 2", "99999999999"] {
            fs::write(&p, bad).unwrap();
            assert!(read_pid_file(&p).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_a_live_cserverd_may_be_signalled() {
        for pid in [-1, 0, 1] {
            let err = check_target(pid, "pid file p").unwrap_err();
            assert!(err.contains("refusing"), "{err}");
        }
        // This test process is alive but is not cserverd.
        let me = std::process::id() as i32;
        let err = check_target(me, "pid file p").unwrap_err();
        assert!(err.contains("not cserverd"), "{err}");
        // No such pid (above any pid_max).
        let err = check_target(i32::MAX, "pid file p").unwrap_err();
        assert!(err.contains("no process"), "{err}");
    }

    #[test]
    fn nothing_is_pending_for_an_idle_process() {
        let me = Pid::this();
        assert!(!signal_pending(me, Signal::SIGTTIN).unwrap());
        wait_taken(me, Signal::SIGTTIN, Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn a_zombie_or_reused_pid_counts_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(!is_gone_as(pid, "sleep"));
        // Named otherwise: the pid was reused by an unrelated process.
        assert!(is_gone_as(pid, SERVER_COMM));
        kill(pid, Signal::SIGKILL).unwrap();
        // Dead but not reaped yet (a zombie): gone.
        wait_gone_as(pid, "sleep");
        child.wait().unwrap();
        assert!(is_gone_as(pid, "sleep"));
        assert!(is_gone(Pid::from_raw(i32::MAX)));
    }

    fn wait_gone_as(pid: Pid, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_gone_as(pid, name) {
            assert!(Instant::now() < deadline, "{pid} not gone");
            thread::sleep(POLL);
        }
        assert_eq!(proc_state(pid.as_raw()).unwrap(), 'Z');
    }
}
