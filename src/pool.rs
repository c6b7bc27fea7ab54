//! The worker pool, seen from the master: pool positions (one listening socket each, served by
//! one active worker) and scoreboard slots (one process each). Spawning, reaping, respawning
//! with backoff, graceful replacement (`HUP`, `--max-requests`), growing and shrinking (`TTIN`,
//! `TTOU`) and the heartbeat check (`--worker-timeout`).
//!
//! A crashed worker is respawned into the same slot, so its counters continue. A worker that is
//! *replaced* keeps its slot while it finishes its sessions, and its successor takes a free slot
//! on the same listening socket: the socket never stops being served, so nobody is refused.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::listener;
use crate::master::{Master, Stop};
use crate::notify::Kind;
use crate::scoreboard::{mono_ms, SlotState};
use crate::steering::Steering;
use crate::sys::{self, Forked};
use crate::worker::{self, WorkerInit};

/// A worker died this soon after it started: count it towards the respawn backoff.
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// Longest respawn backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A listening socket of the reuseport group and who accepts from it.
pub(crate) struct Position {
    /// The master's copy; `None` once closed.
    pub(crate) listener: Option<OwnedFd>,
    /// The slot of the worker accepting from it.
    pub(crate) active: Option<usize>,
    /// Being taken out of the pool (`TTOU`): closed once its worker has drained it.
    pub(crate) removing: bool,
}

impl Position {
    pub(crate) fn new(listener: OwnedFd) -> Position {
        Position {
            listener: Some(listener),
            active: None,
            removing: false,
        }
    }

    fn in_pool(&self) -> bool {
        self.listener.is_some() && !self.removing
    }
}

/// A worker process in a slot.
pub(crate) struct Child {
    pub(crate) pid: Pid,
    started: Instant,
}

/// Per-slot bookkeeping of the master.
#[derive(Default)]
pub(crate) struct SlotLife {
    pub(crate) child: Option<Child>,
    /// The pool position its worker serves.
    position: usize,
    /// When a dead worker's replacement is due (backoff).
    pub(crate) respawn_at: Option<Instant>,
    /// Deaths in a row, each within `QUICK_DEATH` of starting.
    quick_deaths: u32,
    /// Asked (or announced) to stop accepting: not respawned when it exits.
    retiring: bool,
    /// Told us it stopped accepting.
    retired: bool,
}

impl Master {
    /// Sets the header's worker count to the number of positions in the pool, and makes new
    /// connections go to exactly those sockets.
    pub(crate) fn publish_pool_size(&mut self) {
        let n = self.positions.iter().filter(|p| p.in_pool()).count();
        self.board.header().workers.store(n as u32, Relaxed);
        self.steer();
    }

    /// Points the steering program at the pool's sockets. If that fails, it is taken off the
    /// group: the kernel's hash never sends a connection to a socket that is gone.
    fn steer(&mut self) {
        if matches!(self.stop, Some((Stop::Handover, _))) {
            return; // the new master adopted the steering and keeps it now
        }
        let Some(steering) = self.steering.as_mut() else {
            return;
        };
        let listeners: Vec<&OwnedFd> = self
            .positions
            .iter()
            .filter(|p| p.in_pool())
            .filter_map(|p| p.listener.as_ref())
            .collect();
        let Err(e) = steering.set(&listeners) else {
            return;
        };
        let detached = listeners
            .first()
            .map(|fd| Steering::detach(fd).map_err(|e| format!("; detaching it: {e}")));
        self.steering = None;
        self.record(format_args!(
            "cannot update the steering program ({e}); new connections spread by the kernel's hash{}",
            match detached {
                Some(Err(d)) => d,
                _ => String::new(),
            }
        ));
    }

    /// A binary upgrade gave up. Its new master kept our program and maps and may have changed
    /// the maps, or, if we had none, may have attached a program of its own that now steers a
    /// pool it no longer keeps: make the group ours again (or the kernel's hash).
    pub(crate) fn take_back_steering(&mut self) {
        let Some(member) = self.positions.iter().find_map(|p| p.listener.as_ref()) else {
            return;
        };
        let again = match &self.steering {
            Some(s) => s.reattach(member),
            None => {
                let _ = Steering::detach(member);
                return;
            }
        };
        match again {
            Ok(()) => self.steer(),
            Err(e) => {
                let _ = Steering::detach(member);
                self.steering = None;
                self.record(format_args!(
                    "cannot attach the steering program again ({e}); new connections spread by the kernel's hash"
                ));
            }
        }
    }

    /// A slot with no process and no pending respawn.
    pub(crate) fn free_slot(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| {
            let life = &self.slots[i];
            let state = self.board.slot(i).state.load(Relaxed);
            life.child.is_none()
                && life.respawn_at.is_none()
                && (state == SlotState::Empty as u32 || state == SlotState::Dead as u32)
        })
    }

    /// Forks a worker into `slot`, accepting from `position`'s socket.
    pub(crate) fn spawn_worker(&mut self, slot: usize, position: usize) {
        let Some(listener) = self.positions[position].listener.as_ref() else {
            return;
        };
        // The child gets its own descriptors for the listener, the log and the notify pipe.
        let dups = (
            listener.try_clone(),
            self.log.try_clone(),
            self.notifier.as_ref().map(|n| n.try_clone()),
        );
        let (listener, log, notifier) = match dups {
            (Ok(l), Ok(g), Some(Ok(n))) => (l, g, n),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Some(Err(e))) => {
                self.record(format_args!(
                    "cannot start a worker for slot {slot}: dup: {e}"
                ));
                self.slots[slot].respawn_at = Some(Instant::now() + MAX_BACKOFF);
                return;
            }
            (_, _, None) => return,
        };
        let s = self.board.slot(slot);
        let respawned = s.state.load(Relaxed) != SlotState::Empty as u32;
        s.set_state(SlotState::Starting);
        s.listener.store(position as u32, Relaxed);
        s.beat_mono_ms.store(mono_ms(), Relaxed);
        match sys::fork_process() {
            Ok(Forked::Child) => {
                // Only the worker's own descriptors stay open in it.
                self.signals = None;
                self.metrics = None;
                self.steering = None;
                self.inbox = None;
                self.notifier = None;
                self.close_listeners();
                let code = worker::run(WorkerInit {
                    slot,
                    position,
                    listener,
                    log,
                    notifier,
                    board: &self.board,
                    hub: &self.hub,
                    settings: &self.settings,
                    master: self.pid,
                    respawned,
                });
                // Exit without running the master's cleanup (it owns the scoreboard file).
                std::process::exit(code);
            }
            Ok(Forked::Parent(pid)) => {
                s.pid.store(pid.as_raw(), Relaxed);
                let life = &mut self.slots[slot];
                life.child = Some(Child {
                    pid,
                    started: Instant::now(),
                });
                life.position = position;
                life.respawn_at = None;
                life.retiring = false;
                life.retired = false;
                self.positions[position].active = Some(slot);
                self.record(format_args!("have child pid {pid} (slot {slot})"));
            }
            Err(e) => {
                s.set_state(SlotState::Respawning);
                self.record(format_args!(
                    "fork for slot {slot} failed: {e}; retrying in 1 s"
                ));
                self.slots[slot].position = position;
                self.slots[slot].respawn_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Collects every exited child, logs how it ended and schedules its replacement.
    pub(crate) fn reap_children(&mut self) {
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
            if self.upgrade_exited(pid, &how) {
                continue;
            }
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
            s.open.store(0, Relaxed);
            let position = self.slots[slot].position;
            if self.stop.is_some() {
                self.record(format_args!("worker {pid} (slot {slot}) {how}"));
                continue;
            }
            if self.slots[slot].retiring {
                self.record(format_args!("worker {pid} (slot {slot}) {how} (retired)"));
                // Died before saying it had drained its listener: finish the removal now.
                if self.positions[position].removing
                    && self.positions[position].active == Some(slot)
                {
                    self.finish_removal(position);
                }
                continue;
            }
            if self.positions[position].active != Some(slot) {
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
            // Reserved for its respawn: nobody else may take it meanwhile.
            s.set_state(SlotState::Respawning);
            if delay.is_zero() {
                self.record(format_args!("worker {pid} (slot {slot}) {how}; respawning"));
            } else {
                self.record(format_args!(
                    "worker {pid} (slot {slot}) {how}; died {deaths} times in a row within {} ms of starting, respawning in {} ms",
                    QUICK_DEATH.as_millis(),
                    delay.as_millis()
                ));
            }
        }
    }

    /// Respawns the workers whose backoff has passed, into their own slots.
    pub(crate) fn respawn_due(&mut self) {
        if self.stop.is_some() {
            return;
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].respawn_at.is_some_and(|at| at <= now) {
                self.slots[slot].respawn_at = None;
                let position = self.slots[slot].position;
                self.spawn_worker(slot, position);
            }
        }
    }

    /// News from workers: start the successor of one retiring on its own (`--max-requests`);
    /// close a listening socket its worker has drained (`TTOU`, graceful stop).
    pub(crate) fn handle_notifications(&mut self) {
        let Some(inbox) = &self.inbox else { return };
        for note in inbox.drain() {
            let Some(life) = self.slots.get_mut(note.slot) else {
                continue;
            };
            // From a process already reaped (and maybe respawned): stale.
            if life.child.as_ref().map(|c| c.pid.as_raw()) != Some(note.pid) {
                continue;
            }
            let position = life.position;
            match note.kind {
                Kind::Retiring => {
                    life.retiring = true;
                    // It no longer holds a listener: nothing of it to drain at a stop.
                    life.retired = true;
                    if self.stop.is_some() || self.positions[position].active != Some(note.slot) {
                        continue;
                    }
                    match self.free_slot() {
                        Some(new) => self.spawn_worker(new, position),
                        None => {
                            // No free slot: it respawns in place when it exits.
                            self.slots[note.slot].retiring = false;
                            self.record(format_args!(
                                "no free scoreboard slot to replace slot {}; it respawns when it exits",
                                note.slot
                            ));
                        }
                    }
                }
                Kind::Drained => {
                    life.retired = true;
                    if self.stop.is_none() && self.positions[position].removing {
                        self.finish_removal(position);
                    }
                }
            }
        }
        if matches!(self.stop, Some((Stop::Graceful, _))) {
            let draining = self.slots.iter().any(|l| l.child.is_some() && !l.retired);
            if !draining {
                // Every worker drained its queue: nothing is left to reset.
                self.close_listeners();
            }
        }
    }

    /// Closes a drained position's listener and takes it out of the pool.
    fn finish_removal(&mut self, position: usize) {
        let p = &mut self.positions[position];
        p.listener = None;
        p.active = None;
        p.removing = false;
        self.publish_pool_size();
        self.record(format_args!("listener {position} closed; pool shrunk"));
    }

    /// `HUP`: a new worker for every position, then the old ones retire gracefully.
    pub(crate) fn replace_workers(&mut self) {
        for position in 0..self.positions.len() {
            if !self.positions[position].in_pool() {
                continue;
            }
            let Some(old) = self.positions[position].active else {
                continue;
            };
            let Some(new) = self.free_slot() else {
                self.record(format_args!(
                    "no free scoreboard slot to replace slot {old}; it keeps running"
                ));
                continue;
            };
            self.spawn_worker(new, position);
            self.retire(old);
        }
    }

    /// Asks the worker in `slot` to stop accepting and finish its sessions.
    fn retire(&mut self, slot: usize) {
        let life = &mut self.slots[slot];
        life.retiring = true;
        life.respawn_at = None;
        if let Some(child) = &life.child {
            let _ = kill(child.pid, Signal::SIGTERM);
        }
    }

    /// `TTIN`: one more listening socket and a worker for it.
    pub(crate) fn grow(&mut self) {
        let in_pool = self.positions.iter().filter(|p| p.in_pool()).count();
        if in_pool >= self.settings.max_workers {
            self.record(format_args!(
                "SIGTTIN: already {in_pool} workers (--max-workers)"
            ));
            return;
        }
        let Some(slot) = self.free_slot() else {
            self.record(format_args!("SIGTTIN: no free scoreboard slot"));
            return;
        };
        let fd = match listener::bind_reuseport(self.addr, self.settings.backlog) {
            Ok(fd) => fd,
            Err(e) => {
                self.record(format_args!("SIGTTIN: {e}"));
                return;
            }
        };
        // Reuse a closed position, so positions stay few.
        let position = match self
            .positions
            .iter()
            .position(|p| p.listener.is_none() && !p.removing)
        {
            Some(i) => {
                self.positions[i] = Position::new(fd);
                i
            }
            None => {
                self.positions.push(Position::new(fd));
                self.positions.len() - 1
            }
        };
        self.spawn_worker(slot, position);
        self.publish_pool_size();
        self.record(format_args!("SIGTTIN: {} workers", in_pool + 1));
    }

    /// `TTOU`: one worker fewer. Its socket stops taking new connections, the worker drains
    /// the queue and says so, then the socket is closed with nothing left in it to reset.
    pub(crate) fn shrink(&mut self) {
        let in_pool: Vec<usize> = (0..self.positions.len())
            .filter(|&i| self.positions[i].in_pool())
            .collect();
        let Some(&position) = in_pool.last().filter(|_| in_pool.len() > 1) else {
            self.record(format_args!("SIGTTOU: keeping the last worker"));
            return;
        };
        // Out of the steering first, so new connections stop being sent to it, then refusing
        // any the kernel's hash might still send.
        self.positions[position].removing = true;
        self.publish_pool_size();
        if let Some(fd) = &self.positions[position].listener {
            if let Err(e) = listener::refuse_new_connections(fd) {
                self.record(format_args!("SIGTTOU: {}", listener::cannot_refuse(&e)));
            }
        }
        self.record(format_args!("SIGTTOU: {} workers", in_pool.len() - 1));
        match self.positions[position].active {
            Some(slot) if self.slots[slot].child.is_some() => self.retire(slot),
            _ => self.finish_removal(position),
        }
    }

    /// `--worker-timeout`: kill a worker whose heartbeat stopped (it is then respawned).
    pub(crate) fn check_heartbeats(&mut self) {
        let timeout = self.settings.worker_timeout;
        if timeout.is_zero() || self.stop.is_some() || Instant::now() < self.beat_grace_until {
            return;
        }
        let now = mono_ms();
        for slot in 0..self.slots.len() {
            let Some(pid) = self.slots[slot].child.as_ref().map(|c| c.pid) else {
                continue;
            };
            let beat = self.board.slot(slot).beat_mono_ms.load(Relaxed);
            let silent = Duration::from_millis(now.saturating_sub(beat));
            if silent > timeout {
                self.record(format_args!(
                    "worker {pid} (slot {slot}) sent no heartbeat for {:.1} s (--worker-timeout {} s): killing it",
                    silent.as_secs_f64(),
                    timeout.as_secs_f64()
                ));
                let _ = kill(pid, Signal::SIGKILL);
                // Its next heartbeat check waits for the replacement.
                self.board.slot(slot).beat_mono_ms.store(now, Relaxed);
            }
        }
    }
}
