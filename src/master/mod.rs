//! The master process: binds, creates the log and the scoreboard, forks the workers, then
//! reaps, respawns, reports and handles signals. It serves no client.
//!
//! Its life is one [`Phase`]; what each signal means in each phase is decided in
//! [`crate::phase`], what the pool needs in [`crate::pool`]; this module acts on those decisions.
//! The start is in [`start`], the binary upgrade's transitions in [`handover`], the process
//! mechanics (the one `fork`, reaping, signalling workers) in [`process`], the listening sockets
//! and their steering in [`sockets`].
//!
//! Signals are blocked and read from a signalfd, so nothing runs in a signal handler; workers
//! inherit the mask and read their own signalfd. Workers report "stopped accepting" through the
//! [`crate::notify`] pipe.

mod handover;
mod process;
mod relay;
mod sockets;
mod start;

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use sd_notify::NotifyState;

use crate::auth::Secrets;
use crate::clock;
use crate::config::{Settings, Users};
use crate::files;
use crate::listen::Listen;
use crate::listener;
use crate::log::{Batch, LogFile};
use crate::metrics::Metrics;
use crate::notify::{self, Inbox, Notifier};
use crate::penalty::Penalties;
use crate::phase::{Action, PhaseKind, Stop};
use crate::pool::Pool;
use crate::procfs::Identity;
use crate::record::Event;
use crate::scoreboard::{Scoreboard, ServerState, SlotState};
use crate::services::chat::Hub;
use crate::steering::Steering;
use crate::upgrade::Upgrade;

/// The master's life, with what each phase carries.
pub(crate) enum Phase {
    /// Serving.
    Running,
    /// `USR2`: this new master has not said ready yet.
    Upgrading(Upgrading),
    /// Stopping: no new work; the master exits once every worker has.
    Stopping(Stopping),
    /// The new master serves; this one's workers finish their sessions.
    HandingOver(Stopping),
}

/// An upgrade under way.
pub(crate) struct Upgrading {
    up: Upgrade,
    /// A new master not ready by then is killed, and this one goes on.
    deadline: Instant,
    killed: bool,
}

/// A stop under way.
pub(crate) struct Stopping {
    how: Stop,
    /// When whatever is left is killed.
    deadline: Instant,
    killed: bool,
    /// A new master whose upgrade this stop abandoned: told to stop too, and waited for.
    abandoned: Option<Upgrade>,
}

impl Phase {
    fn kind(&self) -> PhaseKind {
        match self {
            Phase::Running => PhaseKind::Running,
            Phase::Upgrading(_) => PhaseKind::Upgrading,
            Phase::Stopping(s) => PhaseKind::Stopping(s.how),
            Phase::HandingOver(_) => PhaseKind::HandingOver,
        }
    }

    fn stopping(&self) -> Option<&Stopping> {
        match self {
            Phase::Stopping(s) | Phase::HandingOver(s) => Some(s),
            _ => None,
        }
    }

    fn stopping_mut(&mut self) -> Option<&mut Stopping> {
        match self {
            Phase::Stopping(s) | Phase::HandingOver(s) => Some(s),
            _ => None,
        }
    }
}

/// What only the master holds: closed in every worker right after its fork.
pub(crate) struct MasterOnly {
    signals: SignalFd,
    inbox: Inbox,
    /// The write end of the notify pipe; each worker gets its own copy.
    notifier: Notifier,
    /// `--metrics-addr`: scrapes served in this loop.
    metrics: Option<Metrics>,
    /// Each listener's round-robin spreading of new connections over the pool's sockets
    /// (`None`: the kernel's reuseport hash).
    steering: Vec<Option<Steering>>,
    /// After a binary upgrade, until said: the pipe on which the old master waits for "ready".
    ready: Option<fs::File>,
    /// Every worker's hand-over channel, and the sessions moving between workers.
    relay: relay::Relay,
}

/// The master's state.
pub(crate) struct Master {
    settings: Settings,
    /// A failed sync of the log was said on stderr (`--sync`); said again after one succeeds.
    sync_error_reported: bool,
    /// Every listener as bound (port 0 resolved): the default one first, then each `--listen`.
    listening: Vec<Listen>,
    /// Per listener: one socket every worker shares (handed by systemd), rather than a reuseport
    /// group of one socket per position.
    shared: Vec<bool>,
    phase: Phase,
    /// Listening sockets (positions) and scoreboard slots: what the master wants running.
    pool: Pool,
    log: LogFile,
    batch: Batch,
    board: Scoreboard,
    /// The chat hub's shared ring, inherited by every worker.
    hub: Hub,
    /// Wrong `PASS` secrets per client address, inherited by every worker.
    penalties: Penalties,
    own: MasterOnly,
    next_report: Instant,
    pid: Pid,
    /// When this process started, in clock ticks after boot (recorded in the scoreboard with
    /// the pid).
    start_ticks: u64,
    /// The master this one took over from by a binary upgrade.
    upgraded_from: Option<Identity>,
    /// The binary and arguments this master was started with (for `USR2`). The master never
    /// rewrites its command line (only workers do, after their fork: [`crate::title`]), so
    /// these are its real arguments, and `cserverctl` reads the same in `/proc/PID/cmdline`.
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// The name last given to this process ([`Master::show_phase`]).
    shown_name: &'static str,
    /// When the master's own loop last ran (to notice that it was stopped itself).
    last_loop: Instant,
    /// No heartbeat verdict before this instant (after the master itself was stalled).
    beat_grace_until: Instant,
}

/// Why the server could not start (exit status 1 with this message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

pub(super) fn start_error(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StartError {
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
    /// Writes one record of the master's own.
    /// Writes one of the named records (see [`crate::record`]).
    fn event(&mut self, event: Event<'_>) {
        self.record(format_args!("{event}"));
    }

    fn record(&mut self, args: std::fmt::Arguments<'_>) {
        self.batch.event(args);
        let (_, error) = self.log.append(self.batch.bytes());
        if let Some(e) = error {
            crate::warnln!(
                "cserverd master: cannot write {}: {e}",
                self.log.path().display()
            );
        } else if self.settings.sync != crate::log::SyncMode::None {
            // The master's records are as durable as the workers' (it acknowledges nothing:
            // a failed sync is said once, until one succeeds).
            match self.log.sync() {
                Ok(_) => self.sync_error_reported = false,
                Err(e) if !self.sync_error_reported => {
                    crate::warnln!(
                        "cserverd master: cannot sync {}: {e}",
                        self.log.path().display()
                    );
                    self.sync_error_reported = true;
                }
                Err(_) => {}
            }
        }
        self.batch.clear();
    }

    /// The master's loop, until its phase is over: a stop (or a hand-over) with nobody left.
    fn supervise(&mut self) {
        while !self.finished() {
            self.wait_for_news();
            // Before any verdict: were we ourselves stopped while waiting?
            self.notice_own_stall(Instant::now());
            self.handle_signals();
            if let Some(m) = self.own.metrics.as_mut() {
                m.serve(&self.board);
            }
            self.check_upgrade();
            // News first: a worker that retired on its own says so before it can be reaped, so
            // its exit is not mistaken for a crash.
            self.handle_notifications();
            self.reap_children();
            self.spawn_missing_workers();
            self.relay_sessions();
            self.check_heartbeats();
            self.report_if_due();
            self.enforce_stop_deadline();
            self.show_phase();
        }
    }

    /// The master's name as `ps -o comm`, `top` and `pgrep` show it: `cserverd` serving,
    /// `cserverd-old` while an upgrade's new master starts and takes over, `cserverd-stop`
    /// while stopping. Its command line stays its real arguments (see [`crate::title`]).
    fn show_phase(&mut self) {
        let name = match self.phase.kind() {
            PhaseKind::Running => "cserverd",
            PhaseKind::Upgrading | PhaseKind::HandingOver => "cserverd-old",
            PhaseKind::Stopping(_) => "cserverd-stop",
        };
        if name != self.shown_name {
            // Only a name: nothing else depends on it.
            let _ = crate::title::set_name(name);
            self.shown_name = name;
        }
    }

    /// Stopping or handing over, with no worker, no abandoned new master and no session in
    /// transit left.
    fn finished(&self) -> bool {
        self.phase.stopping().is_some_and(|s| {
            s.abandoned.is_none()
                && self.pool.children().next().is_none()
                && self.own.relay.is_idle()
        })
    }

    /// Sleeps until a signal, a note from a worker, the new master's word, a scrape, or the
    /// next thing due.
    fn wait_for_news(&self) {
        let now = Instant::now();
        let wait = self.next_wakeup(now).saturating_duration_since(now);
        let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as u64 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = vec![
            PollFd::new(self.own.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.own.inbox.as_fd(), PollFlags::POLLIN),
        ];
        if let Phase::Upgrading(u) = &self.phase {
            fds.push(PollFd::new(u.up.ready_fd(), PollFlags::POLLIN));
        }
        for (fd, full) in self.own.relay.poll_fds() {
            let want = match full {
                true => PollFlags::POLLIN | PollFlags::POLLOUT,
                false => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(fd, want));
        }
        if let Some(m) = &self.own.metrics {
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

    /// If the master itself did not run for a while (SIGSTOP, a suspended machine), workers
    /// had no chance to be judged fairly: give them a full timeout from now.
    fn notice_own_stall(&mut self, now: Instant) {
        let timeout = self.settings.worker_timeout;
        if !timeout.is_zero() && now.duration_since(self.last_loop) > timeout / 2 {
            self.beat_grace_until = clock::after(now, timeout);
        }
        self.last_loop = now;
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = self.next_report;
        if let Some(due) = self.pool.next_due() {
            at = at.min(due);
        }
        if let Some(s) = self.phase.stopping() {
            at = at.min(s.deadline.max(now));
        }
        if let Phase::Upgrading(u) = &self.phase {
            at = at.min(u.deadline.max(now));
        }
        if let Some(due) = self.own.relay.next_due() {
            at = at.min(due);
        }
        if !self.settings.worker_timeout.is_zero() || self.own.metrics.is_some() {
            // Heartbeat verdicts, and scrape deadlines.
            at = at.min(clock::after(now, Duration::from_millis(500)));
        }
        at
    }

    /// Takes every pending signal and does what it means in the current phase.
    fn handle_signals(&mut self) {
        let mut got = Vec::new();
        while let Ok(Some(info)) = self.own.signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                got.push((sig, info.ssi_pid));
            }
        }
        for (sig, from) in got {
            if sig != Signal::SIGCHLD {
                self.event(Event::SignalReceived { sig, from });
            }
            match self.phase.kind().on_signal(sig) {
                Action::Reap => {} // reaped right after
                Action::Reopen => self.reopen_log(),
                Action::StopGracefully => self.stop(Stop::Graceful, sig),
                Action::StopNow => self.stop(Stop::Immediate, sig),
                Action::AbandonUpgrade(how) => self.abandon_upgrade(how, sig),
                Action::HurryHandover(how) => self.hurry_handover(how, sig),
                Action::Reload => self.reload(),
                Action::Upgrade => self.start_upgrade(),
                Action::Grow => self.grow(),
                Action::Shrink => self.shrink(),
                Action::Ignore(why) => {
                    self.event(Event::Ignored { sig, why });
                    if sig == Signal::SIGHUP {
                        self.board.header().count_reload(false);
                    }
                }
            }
        }
    }

    fn reopen_log(&mut self) {
        match self.log.reopen() {
            Ok(()) => self.event(Event::Reopened),
            Err(e) => {
                // Still the old file: say so there and on stderr.
                crate::warnln!("cserverd master: reopen log: {e}");
                self.record(format_args!(
                    "SIGUSR1: cannot reopen the log ({e}); still writing the old file"
                ));
            }
        }
        self.signal_workers(Signal::SIGUSR1);
    }

    /// When a graceful stop (or a hand-over) kills what is left: sessions get
    /// `--shutdown-timeout`, a `MSG` under way its `--work-ms`, and replies a few seconds more.
    fn graceful_deadline(&self) -> Instant {
        let grace = (self.settings.shutdown_timeout)
            .saturating_add(self.settings.work)
            .saturating_add(Duration::from_secs(3));
        clock::after(Instant::now(), grace)
    }

    /// `TERM`/`INT` (graceful) or `QUIT` (immediate), from running or to hurry a graceful stop.
    fn stop(&mut self, how: Stop, sig: Signal) {
        let abandoned = self.phase.stopping_mut().and_then(|s| s.abandoned.take());
        if let (Some(up), Stop::Immediate) = (&abandoned, how) {
            // Hurried: the abandoned new master is hurried the same way.
            let _ = kill(Pid::from_raw(up.child.id() as i32), Signal::SIGQUIT);
        }
        self.begin_stopping(how, sig, abandoned);
    }

    fn begin_stopping(&mut self, how: Stop, sig: Signal, abandoned: Option<Upgrade>) {
        let deadline = match how {
            Stop::Graceful => self.graceful_deadline(),
            Stop::Immediate => clock::after(Instant::now(), Duration::from_secs(2)),
        };
        self.phase = Phase::Stopping(Stopping {
            how,
            deadline,
            killed: false,
            abandoned,
        });
        self.cancel_starts();
        let graceful = how == Stop::Graceful;
        self.event(Event::Stopping { sig, graceful });
        notify_systemd(&[NotifyState::Stopping]);
        self.board
            .header()
            .state
            .store(ServerState::Stopping as u32, Relaxed);
        match how {
            Stop::Graceful => {
                // No new connections; those queued or mid-handshake are drained by the workers.
                self.refuse_new_connections();
                self.signal_workers(Signal::SIGTERM);
            }
            Stop::Immediate => {
                self.pool.close_all();
                self.signal_workers(Signal::SIGQUIT);
            }
        }
    }

    /// A stop signal during the hand-over: the sockets and the scoreboard belong to the new
    /// master now; never filter them or mark them stopping, only hurry this master's workers.
    fn hurry_handover(&mut self, how: Stop, sig: Signal) {
        let signal = match how {
            Stop::Immediate => Signal::SIGQUIT,
            Stop::Graceful => Signal::SIGTERM,
        };
        if let Phase::HandingOver(s) = &mut self.phase {
            if how == Stop::Immediate {
                let soon = clock::after(Instant::now(), Duration::from_secs(2));
                s.deadline = s.deadline.min(soon);
            }
        }
        self.record(format_args!(
            "{sig} during the hand-over: telling this master's workers {signal}"
        ));
        self.signal_workers(signal);
    }

    /// `HUP`: reread the users file, then replace every worker gracefully.
    fn reload(&mut self) {
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
                self.board.header().count_reload(false);
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
                self.board.header().count_reload(false);
                return;
            }
        };
        let rembash_secret = match self
            .settings
            .rembash_secret_file
            .as_deref()
            .map(crate::auth::Secret::load)
            .transpose()
        {
            Ok(secret) => secret,
            Err(e) => {
                self.record(format_args!("SIGHUP: {e}; keeping the current workers"));
                self.board.header().count_reload(false);
                return;
            }
        };
        if let Some(users) = users {
            self.settings.users = users;
        }
        if let Some(secret) = rembash_secret {
            self.settings.rembash_secret = Some(secret);
        }
        if let Some(secrets) = secrets {
            self.settings.secrets = secrets;
        }
        self.event(Event::Reloaded);
        self.board.header().count_reload(true);
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        notify_systemd(&states);
        let board = &self.board;
        let (old, kept) = self
            .pool
            .replace_all(Instant::now(), |i| slot_unused(board, i));
        for slot in kept {
            self.record(format_args!(
                "no free scoreboard slot to replace slot {slot}; it keeps running"
            ));
        }
        // The successors first, so that every socket is always served; then the old ones stop
        // accepting and finish their sessions.
        self.spawn_missing_workers();
        for pid in old {
            let _ = kill(pid, Signal::SIGTERM);
        }
        self.wait_workers_ready(Duration::from_secs(10));
        notify_systemd(&[NotifyState::Ready]);
    }

    /// Sessions retiring workers handed over: on to the serving workers (none while the
    /// server stops or hands over to a new master: they go back and drain as before).
    fn relay_sessions(&mut self) {
        let now = Instant::now();
        self.own.relay.collect(now);
        let (serving, wait): (Vec<Pid>, bool) = match self.phase.kind() {
            PhaseKind::Running | PhaseKind::Upgrading => (self.pool.serving().collect(), true),
            // The new master's workers serve now: theirs, if it takes sessions (else they
            // drain here, as before session hand-over).
            PhaseKind::HandingOver => match self.own.relay.newer_master() {
                Some(new) => (vec![new], true),
                None => (Vec::new(), false),
            },
            PhaseKind::Stopping(_) => (Vec::new(), false),
        };
        let passed = self.own.relay.deliver(&serving, wait, now);
        if passed.dropped > 0 {
            self.record(format_args!(
                "{} session(s) could not be handed over and their worker is gone: told to reconnect",
                passed.dropped
            ));
        }
    }

    /// News from workers: start the successor of one retiring on its own (`--max-requests`);
    /// close a listening socket its worker has drained (`TTOU`, graceful stop).
    fn handle_notifications(&mut self) {
        let keeps_pool = self.phase.kind().keeps_pool();
        for note in self.own.inbox.drain() {
            let pid = Pid::from_raw(note.pid);
            match note.kind {
                notify::Kind::Retiring => {
                    let free = self.free_slot();
                    let now = Instant::now();
                    let next = self.pool.retiring(note.slot, pid, keeps_pool, now, free);
                    if next == crate::pool::Successor::InPlace {
                        self.record(format_args!(
                            "no free scoreboard slot to replace slot {}; it respawns when it exits",
                            note.slot
                        ));
                    }
                }
                notify::Kind::Drained => {
                    if let Some(position) = self.pool.drained(note.slot, pid, keeps_pool) {
                        self.position_closed(position);
                    }
                }
            }
        }
        if matches!(self.phase.kind(), PhaseKind::Stopping(Stop::Graceful))
            && self.pool.all_drained()
        {
            // Every worker drained its queue: nothing is left to reset.
            self.pool.close_all();
        }
    }

    /// `TTIN`: one more listening socket and a worker for it.
    fn grow(&mut self) {
        let size = self.pool.size();
        if size >= self.settings.max_workers {
            self.event(Event::AtMaxWorkers { size });
            return;
        }
        let Some(slot) = self.free_slot() else {
            self.record(format_args!("SIGTTIN: no free scoreboard slot"));
            return;
        };
        // A socket of its own in each reuseport group; a copy of each shared one.
        let bound = (0..self.listening.len())
            .map(|group| match self.shared[group] {
                true => self
                    .pool
                    .open_listeners_of(group)
                    .next()
                    .ok_or_else(|| std::io::Error::other("no socket left to share"))
                    .and_then(|fd| fd.try_clone()),
                false => {
                    listener::bind_reuseport(self.listening[group].addr, self.settings.backlog)
                }
            })
            .collect::<std::io::Result<Vec<_>>>();
        let fds = match bound {
            Ok(fds) => fds,
            Err(e) => {
                self.record(format_args!("SIGTTIN: {e}"));
                return;
            }
        };
        self.pool.grow(fds, slot, Instant::now());
        // Its worker before the steering sends it anything.
        self.spawn_missing_workers();
        self.publish_pool_size();
        self.record(format_args!("SIGTTIN: {} workers", size + 1));
    }

    /// `TTOU`: one worker fewer. Its socket stops taking new connections, the worker drains
    /// the queue and says so, then the socket is closed with nothing left in it to reset.
    fn shrink(&mut self) {
        let Some((position, worker, dropped)) = self.pool.shrink() else {
            self.event(Event::KeepingLastWorker);
            return;
        };
        if let Some(slot) = dropped {
            // Its respawn was due: the slot is free again.
            self.board.slot(slot).set_state(SlotState::Free);
        }
        // Out of the steering first, so new connections stop being sent to it, then refusing
        // any the kernel's hash might still send.
        self.publish_pool_size();
        // Every socket of the position, whatever fails on one of them; not a shared one, which
        // the other workers go on serving.
        let mut failed = None;
        let sockets = self.pool.position(position).listeners.iter();
        for (fd, _) in sockets.zip(&self.shared).filter(|(_, &shared)| !shared) {
            if let Err(e) = listener::refuse_new_connections(fd) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            let why = listener::cannot_refuse(&e);
            self.record(format_args!("SIGTTOU: {why}"));
        }
        self.record(format_args!("SIGTTOU: {} workers", self.pool.size()));
        match worker {
            Some(pid) => {
                let _ = kill(pid, Signal::SIGTERM);
            }
            None => self.position_closed(position),
        }
    }

    /// A position left the pool: its socket is closed.
    fn position_closed(&mut self, position: usize) {
        self.publish_pool_size();
        self.record(format_args!("listener {position} closed; pool shrunk"));
    }

    /// A stop: no start that was due happens; their slots are free again.
    fn cancel_starts(&mut self) {
        for slot in self.pool.cancel_starts() {
            self.board.slot(slot).set_state(SlotState::Free);
        }
    }

    /// A slot nobody uses, by the pool and by the scoreboard.
    fn free_slot(&self) -> Option<usize> {
        let board = &self.board;
        self.pool.free_slot(|i| slot_unused(board, i))
    }

    fn report_if_due(&mut self) {
        let now = Instant::now();
        if now < self.next_report {
            return;
        }
        // The next one in step with the last; after a stall, one interval from now (not a
        // loop over every report missed).
        let interval = self.settings.report_interval;
        self.next_report = clock::after(self.next_report, interval);
        if self.next_report <= now {
            self.next_report = clock::after(now, interval);
        }
        let total = self.board.total_requests();
        self.event(Event::TotalRequests { total });
    }

    /// Past a stop's deadline: kill whatever is left (once), an abandoned new master included.
    fn enforce_stop_deadline(&mut self) {
        let left = self.pool.children().count();
        let Some(s) = self.phase.stopping_mut() else {
            return;
        };
        if Instant::now() < s.deadline || s.killed {
            return;
        }
        s.killed = true;
        if let Some(up) = &s.abandoned {
            let _ = kill(Pid::from_raw(up.child.id() as i32), Signal::SIGKILL);
        }
        self.record(format_args!(
            "stop deadline passed: killing {left} worker(s)"
        ));
        self.signal_workers(Signal::SIGKILL);
    }

    /// Final records and cleanup, after every worker has exited.
    fn exit(&mut self) {
        self.pool.close_all();
        let total = self.board.total_requests();
        self.event(Event::TotalRequests { total });
        let pid = self.pid.as_raw();
        self.event(Event::ServerExit { pid, total });
        // The scoreboard and the pid file are removed by the master they name, unless the
        // master this one took over from still runs (an upgrade abandoned by a stop, or this
        // master stopped during its predecessor's hand-over): that one gets them back, with
        // systemd's main pid, and removes them when it exits.
        let header = self.board.header();
        let ours = header.master().pid == self.pid.as_raw();
        let predecessor = self
            .upgraded_from
            .filter(|from| nix::unistd::getppid().as_raw() == from.pid);
        match predecessor {
            Some(from) => {
                if ours {
                    header.set_master(from);
                    notify_systemd(&[NotifyState::MainPid(from.pid as u32)]);
                }
                if let Some(path) = self.settings.pid_file.clone() {
                    if names(&path, self.pid) {
                        let _ = write_pid_file(&path, Pid::from_raw(from.pid));
                    }
                }
            }
            None => {
                if ours {
                    let _ = self.board.remove();
                }
                if let Some(path) = self.settings.pid_file.clone() {
                    if names(&path, self.pid) {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
    }
}

/// True if the scoreboard shows slot `i` unused (a worker of an old master may still count in
/// a slot after a binary upgrade).
fn slot_unused(board: &Scoreboard, i: usize) -> bool {
    let state = board.slot(i).state.load(Relaxed);
    [SlotState::Empty, SlotState::Dead, SlotState::Free]
        .iter()
        .any(|&s| state == s as u32)
}

/// Tells systemd (a no-op without `NOTIFY_SOCKET`); a failure changes nothing for clients.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        crate::warnln!("cserverd master: sd_notify: {e}");
    }
}

/// Writes the pid file (mode 0644, never through a symlink someone planted).
/// Writes the pid file: root's (or the operator's) own file, never the service account's, so
/// nothing running as that account can make root's log rotation signal another process.
fn write_pid_file(path: &Path, pid: Pid) -> io::Result<()> {
    let access = files::Access::Replace { mode: 0o644 };
    let mut f = files::open(path, access, &files::Trust::operator())?;
    writeln!(f, "{pid}")
}

/// True if the pid file names `pid` (a newer master may have replaced it).
fn names(path: &Path, pid: Pid) -> bool {
    fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string())
}
