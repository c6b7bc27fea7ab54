//! The master process: binds, creates the log and the scoreboard, forks the workers (the only
//! `fork` of the server, in [`crate::pool`]), then reaps, respawns, reports and handles signals.
//! It serves no client.
//!
//! Signals are blocked and read from a signalfd, so nothing runs in a signal handler; workers
//! inherit the mask and read their own signalfd. Workers report "stopped accepting" through the
//! [`crate::notify`] pipe.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use sd_notify::NotifyState;

use crate::auth::Secrets;
use crate::config::{Settings, Users};
use crate::listener;
use crate::log::{Batch, LogFile};
use crate::metrics::Metrics;
use crate::notify::{self, Inbox, Notifier};
use crate::pool::{Position, SlotLife};
use crate::scoreboard::{self, Scoreboard, ServerState, SlotState};
use crate::services::chat::Hub;
use crate::steering::Steering;
use crate::sys;
use crate::upgrade::{self, Upgrade};

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

/// How the master is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `TERM`/`INT`: new connections refused, the backlog drained, sessions finish.
    Graceful,
    /// `QUIT`: now.
    Immediate,
    /// After `USR2`, the new master is ready: stop accepting (the sockets stay open in the new
    /// master), finish sessions, exit; the scoreboard and pid file now belong to the new one.
    Handover,
}

/// The master's state. Pool management lives in [`crate::pool`].
pub(crate) struct Master {
    pub(crate) settings: Settings,
    pub(crate) addr: SocketAddr,
    /// Listening sockets, one per pool position, each served by one active worker.
    pub(crate) positions: Vec<Position>,
    /// Per scoreboard slot: the process in it and its respawn state.
    pub(crate) slots: Vec<SlotLife>,
    pub(crate) log: LogFile,
    batch: Batch,
    pub(crate) board: Scoreboard,
    /// The chat hub's shared ring, inherited by every worker.
    pub(crate) hub: Hub,
    pub(crate) signals: Option<SignalFd>,
    /// `--metrics-addr`: scrapes served in this loop.
    pub(crate) metrics: Option<Metrics>,
    pub(crate) inbox: Option<Inbox>,
    /// The write end of the notify pipe, handed to each worker.
    pub(crate) notifier: Option<Notifier>,
    pub(crate) stop: Option<(Stop, Instant)>,
    killed_stragglers: bool,
    next_report: Instant,
    pub(crate) pid: Pid,
    /// The binary and arguments this master was started with (for `USR2`).
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// A new master started by `USR2` that has not said ready yet.
    upgrade: Option<Upgrade>,
    /// Round-robin spreading of new connections over the pool's sockets (`None`: the kernel's
    /// reuseport hash).
    pub(crate) steering: Option<Steering>,
    /// When the master's own loop last ran (to notice that it was stopped itself).
    pub(crate) last_loop: Instant,
    /// No heartbeat verdict before this instant (after the master itself was stalled).
    pub(crate) beat_grace_until: Instant,
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

/// The steering of new connections over `fds` (see [`crate::steering`]): the old master's, kept
/// across a binary upgrade, or a new one; `true` when kept. On failure no program is left
/// attached (one left by an old master would steer a pool that no longer exists).
fn steer_connections(
    inherited: &mut Option<upgrade::Inherited>,
    fds: &[OwnedFd],
    max_workers: usize,
) -> io::Result<(Steering, bool)> {
    let handed = inherited.as_mut().and_then(|i| i.steering.take());
    let adopted = handed.is_some();
    let steering = match handed {
        Some(h) => Ok(Steering::adopt(h)),
        None => Steering::attach(&fds[0], max_workers.max(fds.len())),
    };
    let all: Vec<&OwnedFd> = fds.iter().collect();
    let steering = steering.and_then(|mut s| s.set(&all).map(|()| s));
    if steering.is_err() {
        let _ = Steering::detach(&fds[0]);
    }
    steering.map(|s| (s, adopted))
}

impl Master {
    fn start(settings: Settings) -> Result<Master, StartError> {
        sys::raise_nofile_limit().map_err(start_error("raise open-files limit"))?;
        let mut inherited = upgrade::inherited().map_err(start_error("binary upgrade"))?;
        let (addr, fds) = match &inherited {
            Some(inh) => {
                let fds: Vec<OwnedFd> = inh
                    .listeners
                    .iter()
                    .map(|fd| fd.try_clone())
                    .collect::<io::Result<_>>()
                    .map_err(start_error("inherited listeners"))?;
                let addr = fds
                    .first()
                    .ok_or_else(|| StartError("binary upgrade: no listener inherited".into()))
                    .and_then(|fd| {
                        listener::local_addr(fd).map_err(start_error("inherited listener"))
                    })?;
                (addr, fds)
            }
            None => listener::bind_group(settings.addr, settings.workers, settings.backlog)
                .map_err(start_error(format!("cannot listen on {}", settings.addr)))?,
        };
        // Before privileges are dropped: loading the program needs them, and so may map
        // updates on older kernels.
        let steering = steer_connections(&mut inherited, &fds, settings.max_workers);
        let metrics = match settings.metrics_addr {
            Some(a) => Some(
                Metrics::bind(a).map_err(start_error(format!("cannot serve metrics on {a}")))?,
            ),
            None => None,
        };
        let log = LogFile::open(&settings.log).map_err(start_error(format!(
            "cannot open log {}",
            settings.log.display()
        )))?;
        let board_path = settings
            .stats_file
            .clone()
            .unwrap_or_else(|| scoreboard::default_path(addr.port()));
        let board = match &inherited {
            // The old master's scoreboard, with its workers still counting in it: totals go on.
            Some(_) => Scoreboard::adopt(&board_path).map_err(|e| StartError(e.to_string()))?,
            // Room for a replacement beside every worker (reload, recycling) at full size.
            None => {
                Scoreboard::create(&board_path, settings.max_workers * 2, addr.port()).map_err(
                    start_error(format!("cannot create scoreboard {}", board_path.display())),
                )?
            }
        };
        let capacity = board.capacity();
        let header = board.header();
        header.master_pid.store(std::process::id() as i32, Relaxed);
        header.state.store(ServerState::Running as u32, Relaxed);
        let mask = sys::block_signals(MASTER_SIGNALS).map_err(start_error("block signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError(format!("signalfd: {e}")))?;
        let (inbox, notifier) = notify::channel().map_err(start_error("pipe"))?;
        let hub = Hub::create().map_err(start_error("chat hub"))?;
        let pid = nix::unistd::getpid();
        if let Some(path) = &settings.pid_file {
            write_pid_file(path, pid).map_err(start_error(format!(
                "cannot write pid file {}",
                path.display()
            )))?;
        }
        if let Some(account) = settings.account {
            let mut files = vec![settings.log.as_path(), board_path.as_path()];
            files.extend(settings.pid_file.as_deref());
            sys::become_account(account, &files).map_err(start_error("drop privileges"))?;
        }
        let now = Instant::now();
        let exe = std::env::current_exe().map_err(start_error("current_exe"))?;
        let mut master = Master {
            exe,
            args: std::env::args_os().skip(1).collect(),
            upgrade: None,
            next_report: now + settings.report_interval,
            addr,
            positions: fds.into_iter().map(Position::new).collect(),
            slots: (0..capacity).map(|_| SlotLife::default()).collect(),
            log,
            batch: Batch::new(),
            board,
            hub,
            metrics,
            signals: Some(signals),
            inbox: Some(inbox),
            notifier: Some(notifier),
            stop: None,
            killed_stragglers: false,
            pid,
            last_loop: now,
            beat_grace_until: now,
            steering: None,
            settings,
        };
        let metrics_at = match master.metrics.as_ref().map(|m| m.local_addr()) {
            Some(Ok(a)) => format!(" metrics http://{a}/metrics"),
            _ => String::new(),
        };
        let from = inherited.as_ref().map_or(String::new(), |i| {
            format!(" (binary upgrade from master {})", i.from)
        });
        let init = format!(
            "Server init: cserverd {} master {} listening on {} workers {} log {} scoreboard {}{metrics_at}{from}",
            env!("CARGO_PKG_VERSION"),
            pid,
            addr,
            master.positions.len(),
            master.settings.log.display(),
            board_path.display()
        );
        master.record(format_args!("{init}"));
        match steering {
            Ok((s, adopted)) => {
                master.steering = Some(s);
                let kept = if adopted {
                    format!(
                        ", kept from master {}",
                        inherited.as_ref().map_or(0, |i| i.from)
                    )
                } else {
                    String::new()
                };
                master.record(format_args!(
                    "new connections go to the listening sockets in turn (reuseport steering{kept})"
                ));
            }
            Err(e) => master.record(format_args!(
                "new connections spread by the kernel's reuseport hash (no steering program: {e})"
            )),
        }
        let mut out = io::stdout();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
        for position in 0..master.positions.len() {
            match master.free_slot() {
                Some(slot) => master.spawn_worker(slot, position),
                None => return Err(StartError("no free scoreboard slot".into())),
            }
        }
        master.publish_pool_size();
        master.wait_workers_ready(Duration::from_secs(10));
        if let Some(ready) = inherited.and_then(|i| i.ready) {
            // The old master stops accepting once ours accept.
            upgrade::say_ready(ready);
        }
        // systemd (Type=notify): the main pid, which changes in an upgrade, and readiness.
        let status = format!("serving {addr} with {} workers", master.positions.len());
        notify_systemd(&[
            NotifyState::MainPid(pid.as_raw() as u32),
            NotifyState::Status(&status),
            NotifyState::Ready,
        ]);
        Ok(master)
    }

    /// Writes one record of the master's own.
    pub(crate) fn record(&mut self, args: std::fmt::Arguments<'_>) {
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
            if let (Some(signals), Some(inbox)) = (&self.signals, &self.inbox) {
                let mut fds = vec![
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(inbox.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(up) = &self.upgrade {
                    fds.push(PollFd::new(up.ready_fd(), PollFlags::POLLIN));
                }
                if let Some(m) = &self.metrics {
                    for (fd, writing) in m.poll_fds() {
                        let want = if writing {
                            PollFlags::POLLOUT
                        } else {
                            PollFlags::POLLIN
                        };
                        fds.push(PollFd::new(fd, want));
                    }
                }
                // Every handled signal is blocked, so EINTR cannot happen; errors just loop.
                let _ = poll(&mut fds, timeout);
            }
            // Before any verdict: were we ourselves stopped while waiting?
            self.notice_own_stall(Instant::now());
            self.handle_signals();
            if let Some(m) = self.metrics.as_mut() {
                m.serve(&self.board);
            }
            self.check_upgrade();
            // News first: a worker that retired on its own says so before it can be reaped, so
            // its exit is not mistaken for a crash.
            self.handle_notifications();
            self.reap_children();
            self.respawn_due();
            self.check_heartbeats();
            self.report_if_due();
            self.enforce_stop_deadline();
        }
    }

    /// If the master itself did not run for a while (SIGSTOP, a suspended machine), workers
    /// had no chance to be judged fairly: give them a full timeout from now.
    fn notice_own_stall(&mut self, now: Instant) {
        let timeout = self.settings.worker_timeout;
        if !timeout.is_zero() && now.duration_since(self.last_loop) > timeout / 2 {
            self.beat_grace_until = now + timeout;
        }
        self.last_loop = now;
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
        if !self.settings.worker_timeout.is_zero() || self.metrics.is_some() {
            // Heartbeat verdicts, and scrape deadlines.
            at = at.min(now + Duration::from_millis(500));
        }
        at
    }

    pub(crate) fn live_workers(&self) -> usize {
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
                Signal::SIGUSR1 => self.reopen_log(),
                Signal::SIGHUP => self.reload(),
                Signal::SIGUSR2 if self.stop.is_none() => self.start_upgrade(),
                Signal::SIGTTIN if self.stop.is_none() => self.grow(),
                Signal::SIGTTOU if self.stop.is_none() => self.shrink(),
                other => self.record(format_args!("ignoring {other}")),
            }
        }
    }

    fn reopen_log(&mut self) {
        match self.log.reopen() {
            Ok(()) => self.record(format_args!("reopened log on SIGUSR1")),
            Err(e) => {
                // Still the old file: say so there and on stderr.
                eprintln!("cserverd master: reopen log: {e}");
                self.record(format_args!(
                    "SIGUSR1: cannot reopen the log ({e}); still writing the old file"
                ));
            }
        }
        self.signal_workers(Signal::SIGUSR1);
    }

    /// `HUP`: reread the users file, then replace every worker gracefully.
    fn reload(&mut self) {
        if self.stop.is_some() {
            return;
        }
        let users = match self
            .settings
            .users_file
            .as_deref()
            .map(Users::load)
            .transpose()
        {
            Ok(users) => users,
            Err(e) => {
                self.record(format_args!("SIGHUP: {e}; keeping the current workers"));
                return;
            }
        };
        let secrets = match self
            .settings
            .secrets_file
            .as_deref()
            .map(Secrets::load)
            .transpose()
        {
            Ok(secrets) => secrets,
            Err(e) => {
                self.record(format_args!("SIGHUP: {e}; keeping the current workers"));
                return;
            }
        };
        if let Some(users) = users {
            self.settings.users = users;
        }
        if let Some(secrets) = secrets {
            self.settings.secrets = secrets;
        }
        self.record(format_args!("SIGHUP: reloaded; replacing workers"));
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        notify_systemd(&states);
        self.replace_workers();
        self.wait_workers_ready(Duration::from_secs(10));
        notify_systemd(&[NotifyState::Ready]);
    }

    /// `USR2`: start the binary again with our listening sockets.
    fn start_upgrade(&mut self) {
        if let Some(up) = &self.upgrade {
            let pid = up.child.id();
            self.record(format_args!(
                "SIGUSR2: upgrade to master {pid} already under way"
            ));
            return;
        }
        let listeners: Vec<&OwnedFd> = self
            .positions
            .iter()
            .filter_map(|p| p.listener.as_ref().filter(|_| !p.removing))
            .collect();
        let steering = self.steering.as_ref().map(Steering::parts);
        match Upgrade::start(
            &self.exe,
            &self.args,
            &listeners,
            steering,
            self.pid.as_raw(),
        ) {
            Ok(up) => {
                let pid = up.child.id();
                let exe = self.exe.display().to_string();
                self.record(format_args!("SIGUSR2: started {exe} as master {pid}"));
                self.upgrade = Some(up);
            }
            Err(e) => self.record(format_args!("SIGUSR2: cannot start the new binary: {e}")),
        }
    }

    /// The new master said ready (hand over and stop) or died (keep serving).
    fn check_upgrade(&mut self) {
        let Some(up) = self.upgrade.as_mut() else {
            return;
        };
        match up.poll_ready() {
            None => {}
            Some(true) => {
                let pid = up.child.id();
                self.upgrade = None;
                self.record(format_args!("upgrade: master {pid} is ready; handing over"));
                self.begin_stop(Stop::Handover, Signal::SIGUSR2);
            }
            Some(false) => {
                let pid = up.child.id();
                self.upgrade = None;
                self.record(format_args!(
                    "upgrade: master {pid} gave up before it was ready; this master goes on"
                ));
                self.take_back_steering();
            }
        }
    }

    /// True if `pid` was the new master of an upgrade that has not said ready.
    pub(crate) fn upgrade_exited(&mut self, pid: Pid, how: &str) -> bool {
        if self.upgrade.as_ref().map(|u| u.child.id() as i32) != Some(pid.as_raw()) {
            return false;
        }
        self.upgrade = None;
        self.record(format_args!(
            "upgrade: master {pid} {how} before it was ready; this master goes on"
        ));
        self.take_back_steering();
        true
    }

    /// Waits (bounded) until the active worker of every listening socket shows ready.
    fn wait_workers_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // A worker that died at start is not waited for (its respawn comes later).
            self.reap_children();
            let all = self.positions.iter().filter_map(|p| p.active).all(|i| {
                self.slots[i].child.is_none()
                    || self.board.slot(i).state.load(Relaxed) == SlotState::Ready as u32
            });
            if all {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn begin_stop(&mut self, how: Stop, sig: Signal) {
        if let Some((Stop::Handover, deadline)) = self.stop {
            // The sockets and the scoreboard belong to the new master now: never filter them
            // or mark them stopping; only hurry this master's own workers.
            let (signal, deadline) = match how {
                Stop::Immediate => (
                    Signal::SIGQUIT,
                    deadline.min(Instant::now() + Duration::from_secs(2)),
                ),
                _ => (Signal::SIGTERM, deadline),
            };
            self.stop = Some((Stop::Handover, deadline));
            self.record(format_args!(
                "{sig} during the hand-over: telling this master's workers {signal}"
            ));
            self.signal_workers(signal);
            return;
        }
        match self.stop {
            // A second TERM changes nothing; QUIT hurries a graceful stop.
            Some((Stop::Immediate, _)) => return,
            Some((Stop::Graceful, _)) if how == Stop::Graceful => return,
            _ => {}
        }
        let settings = &self.settings;
        let deadline = match how {
            Stop::Graceful | Stop::Handover => {
                Instant::now() + settings.shutdown_timeout + settings.work + Duration::from_secs(3)
            }
            Stop::Immediate => Instant::now() + Duration::from_secs(2),
        };
        self.stop = Some((how, deadline));
        for life in &mut self.slots {
            life.respawn_at = None;
        }
        let kind = match how {
            Stop::Graceful => "graceful",
            Stop::Immediate => "immediate",
            Stop::Handover => "handover",
        };
        self.record(format_args!("{sig}: {kind} stop"));
        if how != Stop::Handover {
            // In a handover the new master is the service now: it already said MAINPID/READY.
            notify_systemd(&[NotifyState::Stopping]);
        }
        if how == Stop::Handover {
            // The sockets go on in the new master: just stop accepting and finish sessions.
            self.signal_workers(Signal::SIGTERM);
            return;
        }
        self.board
            .header()
            .state
            .store(ServerState::Stopping as u32, Relaxed);
        if how == Stop::Graceful {
            // No new connections; those queued or mid-handshake are drained by the workers.
            let mut failed = None;
            for fd in self.positions.iter().filter_map(|p| p.listener.as_ref()) {
                if let Err(e) = listener::refuse_new_connections(fd) {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                self.record(format_args!("{}", listener::cannot_refuse(&e)));
            }
            self.signal_workers(Signal::SIGTERM);
        } else {
            self.close_listeners();
            self.signal_workers(Signal::SIGQUIT);
        }
    }

    /// Closes the master's copies of every listening socket.
    pub(crate) fn close_listeners(&mut self) {
        for p in &mut self.positions {
            p.listener = None;
        }
    }

    pub(crate) fn signal_workers(&self, sig: Signal) {
        for life in &self.slots {
            if let Some(child) = &life.child {
                let _ = nix::sys::signal::kill(child.pid, sig);
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
        self.close_listeners();
        let total = self.board.total_requests();
        self.record(format_args!("total requests {total}"));
        let pid = self.pid;
        self.record(format_args!(
            "Server exit: master {pid} (total requests {total})"
        ));
        // After a handover the scoreboard belongs to the new master.
        if self.board.header().master_pid.load(Relaxed) == self.pid.as_raw() {
            let _ = self.board.remove();
        }
        if let Some(path) = self.settings.pid_file.clone() {
            remove_pid_file(&path, self.pid);
        }
    }
}

/// Tells systemd (a no-op without `NOTIFY_SOCKET`); a failure changes nothing for clients.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        eprintln!("cserverd master: sd_notify: {e}");
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
fn remove_pid_file(path: &PathBuf, pid: Pid) {
    if fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string()) {
        let _ = fs::remove_file(path);
    }
}
