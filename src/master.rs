//! The master process: binds, creates the log and the scoreboard, forks the workers (the only
//! `fork` of the server), then reaps, respawns, reports and handles signals. It serves no client.
//!
//! Signals are blocked and read from a signalfd, so nothing runs in a signal handler; workers
//! inherit the mask and read their own signalfd.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::Settings;
use crate::listener;
use crate::log::{Batch, LogFile};
use crate::scoreboard::{self, Scoreboard, ServerState, SlotState};
use crate::sys::{self, Forked};
use crate::worker::{self, WorkerInit};

/// Signals the master handles (blocked, read from its signalfd).
const MASTER_SIGNALS: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// A worker died this soon after it started: count it towards the respawn backoff.
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// Longest respawn backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A worker process in a slot.
struct Child {
    pid: Pid,
    started: Instant,
}

/// Per-slot bookkeeping of the master.
#[derive(Default)]
struct SlotLife {
    child: Option<Child>,
    /// When a dead worker's replacement is due (backoff).
    respawn_at: Option<Instant>,
    /// Deaths in a row, each within `QUICK_DEATH` of starting.
    quick_deaths: u32,
}

/// How the master is stopping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `TERM`/`INT`: sessions finish first.
    Graceful,
    /// `QUIT`: now.
    Immediate,
}

struct Master {
    settings: Settings,
    /// One reuseport listener per slot, kept open so a respawned worker inherits the queue.
    listeners: Vec<Option<OwnedFd>>,
    log: LogFile,
    batch: Batch,
    board: Scoreboard,
    signals: Option<SignalFd>,
    slots: Vec<SlotLife>,
    stop: Option<(Stop, Instant)>,
    killed_stragglers: bool,
    next_report: Instant,
    pid: Pid,
}

/// Why the server could not start (exit status 1 with this message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

fn start_error(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StartError {
    move |e| StartError(format!("{what}: {e}"))
}

/// Starts the server and runs the master until it stops.
pub fn run(settings: Settings) -> Result<(), StartError> {
    let mut master = Master::start(settings)?;
    master.supervise();
    master.exit();
    Ok(())
}

impl Master {
    fn start(settings: Settings) -> Result<Master, StartError> {
        sys::raise_nofile_limit().map_err(start_error("raise open-files limit"))?;
        let (addr, fds) = listener::bind_group(settings.addr, settings.workers, settings.backlog)
            .map_err(start_error(format!("cannot listen on {}", settings.addr)))?;
        let log = LogFile::open(&settings.log).map_err(start_error(format!(
            "cannot open log {}",
            settings.log.display()
        )))?;
        let board_path = settings
            .stats_file
            .clone()
            .unwrap_or_else(|| scoreboard::default_path(addr.port()));
        let board = Scoreboard::create(&board_path, settings.max_workers, addr.port()).map_err(
            start_error(format!("cannot create scoreboard {}", board_path.display())),
        )?;
        let mask = sys::block_signals(MASTER_SIGNALS).map_err(start_error("block signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError(format!("signalfd: {e}")))?;
        let pid = nix::unistd::getpid();
        if let Some(path) = &settings.pid_file {
            write_pid_file(path, pid).map_err(start_error(format!(
                "cannot write pid file {}",
                path.display()
            )))?;
        }
        let mut listeners: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        listeners.resize_with(settings.max_workers, || None);
        let mut slots = Vec::new();
        slots.resize_with(settings.max_workers, SlotLife::default);
        let mut master = Master {
            next_report: Instant::now() + settings.report_interval,
            listeners,
            log,
            batch: Batch::new(),
            board,
            signals: Some(signals),
            slots,
            stop: None,
            killed_stragglers: false,
            pid,
            settings,
        };
        let init = format!(
            "Server init: cserverd {} master {} listening on {} workers {} log {} scoreboard {}",
            env!("CARGO_PKG_VERSION"),
            pid,
            addr,
            master.settings.workers,
            master.settings.log.display(),
            board_path.display()
        );
        master.record(format_args!("{init}"));
        let mut out = io::stdout();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
        for slot in 0..master.settings.workers {
            master.spawn_worker(slot);
        }
        master
            .board
            .header()
            .workers
            .store(master.settings.workers as u32, Relaxed);
        Ok(master)
    }

    /// Writes one record of the master's own.
    fn record(&mut self, args: std::fmt::Arguments<'_>) {
        self.batch.event(args);
        let (_, error) = self.log.append(self.batch.bytes());
        if let Some(e) = error {
            eprintln!(
                "cserverd master: cannot write {}: {e}",
                self.log.path().display()
            );
        }
        self.batch.clear();
    }

    /// Forks a worker into `slot`.
    fn spawn_worker(&mut self, slot: usize) {
        let Some(listener) = self.listeners[slot].as_ref() else {
            return;
        };
        // The child gets its own descriptors for the listener and the log.
        let (listener, log) = match (listener.try_clone(), self.log.try_clone()) {
            (Ok(l), Ok(g)) => (l, g),
            (Err(e), _) | (_, Err(e)) => {
                self.record(format_args!(
                    "cannot start worker for slot {slot}: dup: {e}"
                ));
                self.slots[slot].respawn_at = Some(Instant::now() + MAX_BACKOFF);
                return;
            }
        };
        let s = self.board.slot(slot);
        let respawned =
            s.pid.load(Relaxed) != 0 || s.state.load(Relaxed) != SlotState::Empty as u32;
        s.set_state(SlotState::Starting);
        match sys::fork_process() {
            Ok(Forked::Child) => {
                // Only the worker's own descriptors stay open in it.
                self.signals = None;
                self.listeners.clear();
                let code = worker::run(WorkerInit {
                    slot,
                    listener,
                    log,
                    board: &self.board,
                    settings: &self.settings,
                    master: self.pid,
                    respawned,
                });
                // Exit without running the master's cleanup (it owns the scoreboard file).
                std::process::exit(code);
            }
            Ok(Forked::Parent(pid)) => {
                s.pid.store(pid.as_raw(), Relaxed);
                self.slots[slot].child = Some(Child {
                    pid,
                    started: Instant::now(),
                });
                self.slots[slot].respawn_at = None;
                self.record(format_args!("have child pid {pid} (slot {slot})"));
            }
            Err(e) => {
                s.set_state(SlotState::Dead);
                self.record(format_args!(
                    "fork for slot {slot} failed: {e}; retrying in 1 s"
                ));
                self.slots[slot].respawn_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// The master's loop: until every worker has exited after a stop.
    fn supervise(&mut self) {
        loop {
            let now = Instant::now();
            if self.stop.is_some() && self.live_workers() == 0 {
                return;
            }
            let wait = self.next_wakeup(now).saturating_duration_since(now);
            let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as u64 + 1)
                .unwrap_or(PollTimeout::MAX);
            if let Some(signals) = &self.signals {
                let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                // EINTR cannot happen with every handled signal blocked; any error just loops.
                let _ = poll(&mut fds, timeout);
            }
            self.handle_signals();
            self.reap_children();
            self.respawn_due();
            self.report_if_due();
            self.enforce_stop_deadline();
        }
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = self.next_report;
        for life in &self.slots {
            if let Some(due) = life.respawn_at {
                at = at.min(due);
            }
        }
        if let Some((_, deadline)) = self.stop {
            at = at.min(deadline.max(now));
        }
        at
    }

    fn live_workers(&self) -> usize {
        self.slots.iter().filter(|l| l.child.is_some()).count()
    }

    fn handle_signals(&mut self) {
        let Some(signals) = &self.signals else { return };
        let mut got = Vec::new();
        while let Ok(Some(info)) = signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                got.push(sig);
            }
        }
        for sig in got {
            match sig {
                Signal::SIGCHLD => {} // reaped right after
                Signal::SIGTERM | Signal::SIGINT => self.begin_stop(Stop::Graceful, sig),
                Signal::SIGQUIT => self.begin_stop(Stop::Immediate, sig),
                Signal::SIGUSR1 => {
                    if let Err(e) = self.log.reopen() {
                        eprintln!("cserverd master: reopen log: {e}");
                    }
                    self.record(format_args!("reopened log on SIGUSR1"));
                    self.signal_workers(Signal::SIGUSR1);
                }
                other => self.record(format_args!("ignoring {other}: not supported yet")),
            }
        }
    }

    fn begin_stop(&mut self, how: Stop, sig: Signal) {
        let settings = &self.settings;
        let deadline = match how {
            Stop::Graceful => {
                Instant::now() + settings.shutdown_timeout + settings.work + Duration::from_secs(3)
            }
            Stop::Immediate => Instant::now() + Duration::from_secs(2),
        };
        match self.stop {
            // A second TERM changes nothing; QUIT hurries a graceful stop.
            Some((Stop::Immediate, _)) => return,
            Some((Stop::Graceful, _)) if how == Stop::Graceful => return,
            _ => {}
        }
        self.stop = Some((how, deadline));
        self.board
            .header()
            .state
            .store(ServerState::Stopping as u32, Relaxed);
        let kind = if how == Stop::Graceful {
            "graceful"
        } else {
            "immediate"
        };
        self.record(format_args!("{sig}: {kind} stop"));
        self.signal_workers(if how == Stop::Graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        });
    }

    fn signal_workers(&self, sig: Signal) {
        for life in &self.slots {
            if let Some(child) = &life.child {
                let _ = kill(child.pid, sig);
            }
        }
    }

    /// Collects every exited child, logs how it ended and schedules its replacement.
    fn reap_children(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exited with status {code}")),
                WaitStatus::Signaled(pid, sig, _) => (pid, format!("killed by signal {sig}")),
                _ => continue,
            };
            let Some(slot) = self
                .slots
                .iter()
                .position(|l| l.child.as_ref().is_some_and(|c| c.pid == pid))
            else {
                continue;
            };
            let child = self.slots[slot].child.take();
            let s = self.board.slot(slot);
            s.set_state(SlotState::Dead);
            s.pid.store(0, Relaxed);
            if self.stop.is_some() {
                self.record(format_args!("worker {pid} (slot {slot}) {how}"));
                continue;
            }
            let lived = child.map_or(Duration::ZERO, |c| c.started.elapsed());
            let life = &mut self.slots[slot];
            if lived < QUICK_DEATH {
                life.quick_deaths += 1;
            } else {
                life.quick_deaths = 0;
            }
            let delay = match life.quick_deaths {
                0 | 1 => Duration::ZERO,
                n => (Duration::from_millis(100) * 2u32.pow((n - 2).min(10))).min(MAX_BACKOFF),
            };
            life.respawn_at = Some(Instant::now() + delay);
            let deaths = life.quick_deaths;
            if delay.is_zero() {
                self.record(format_args!("worker {pid} (slot {slot}) {how}; respawning"));
            } else {
                self.record(format_args!(
                    "worker {pid} (slot {slot}) {how}; died {deaths} times within {} ms of start, respawning in {} ms",
                    QUICK_DEATH.as_millis(),
                    delay.as_millis()
                ));
            }
        }
    }

    fn respawn_due(&mut self) {
        if self.stop.is_some() {
            return;
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].respawn_at.is_some_and(|at| at <= now) {
                self.slots[slot].respawn_at = None;
                self.spawn_worker(slot);
            }
        }
    }

    fn report_if_due(&mut self) {
        let now = Instant::now();
        if now < self.next_report {
            return;
        }
        while self.next_report <= now {
            self.next_report += self.settings.report_interval;
        }
        let total = self.board.total_requests();
        self.record(format_args!("total requests {total}"));
    }

    fn enforce_stop_deadline(&mut self) {
        if let Some((_, deadline)) = self.stop {
            if Instant::now() >= deadline && !self.killed_stragglers {
                self.killed_stragglers = true;
                let left = self.live_workers();
                self.record(format_args!(
                    "stop deadline passed: killing {left} worker(s)"
                ));
                self.signal_workers(Signal::SIGKILL);
            }
        }
    }

    /// Final records and cleanup, after every worker has exited.
    fn exit(&mut self) {
        self.listeners.clear();
        let total = self.board.total_requests();
        self.record(format_args!("total requests {total}"));
        let pid = self.pid;
        self.record(format_args!(
            "Server exit: master {pid} served {total} requests"
        ));
        let _ = self.board.remove();
        if let Some(path) = self.settings.pid_file.clone() {
            remove_pid_file(&path, self.pid);
        }
    }
}

/// Writes the pid file (mode 0644, never through a symlink someone planted).
fn write_pid_file(path: &Path, pid: Pid) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    writeln!(f, "{pid}")
}

/// Removes the pid file only if it still names us (a newer master may have replaced it).
fn remove_pid_file(path: &Path, pid: Pid) {
    if fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string()) {
        let _ = fs::remove_file(path);
    }
}
