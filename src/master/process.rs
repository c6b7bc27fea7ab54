//! The master's process table at work: the one place that forks ([`Master::spawn_worker`], only
//! ever called by [`Master::spawn_missing_workers`] for the starts the pool says are due),
//! reaping, signalling the workers, and the heartbeat check.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{relay, Master, Phase};
use crate::handoff;
use crate::pool::{Exit, Life, MAX_BACKOFF};
use crate::record::{Ended, Event, Then};
use crate::scoreboard::{mono_ms, Slot, SlotState};
use crate::sys::{self, Forked};
use crate::worker::{self, WorkerInit};

impl Master {
    /// Forks every worker the pool wants started by now (none once stopping).
    pub(super) fn spawn_missing_workers(&mut self) {
        if !self.phase.kind().keeps_pool() {
            return;
        }
        for (slot, position) in self.pool.due(Instant::now()) {
            self.spawn_worker(slot, position);
        }
    }

    /// Forks a worker into `slot`, accepting from `position`'s socket.
    fn spawn_worker(&mut self, slot: usize, position: usize) {
        let sockets = &self.pool.position(position).listeners;
        if sockets.is_empty() {
            // Its sockets were closed meanwhile: nothing to start.
            self.pool.forget_start(slot);
            return;
        }
        // The child gets its own descriptors for the listeners, the log and the notify pipe.
        let listeners = sockets
            .iter()
            .zip(&self.listening)
            .map(|(fd, l)| fd.try_clone().map(|fd| (fd, l.protocol)))
            .collect::<std::io::Result<Vec<_>>>();
        let dups = (
            listeners,
            self.log.try_clone(),
            self.own.notifier.try_clone(),
        );
        let (listeners, log, notifier) = match dups {
            (Ok(l), Ok(g), Ok(n)) => (l, g, n),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                self.record(format_args!(
                    "cannot start a worker for slot {slot}: dup: {e}"
                ));
                let at = crate::clock::after(Instant::now(), MAX_BACKOFF);
                self.pool.start_failed(slot, position, at);
                return;
            }
        };
        // Its hand-over channel; without one it serves as well, only its sessions cannot move.
        let (master_end, worker_end) = match handoff::channel() {
            Ok((m, w)) => (Some(m), Some(w)),
            Err(e) => {
                self.record(format_args!(
                    "no hand-over channel for slot {slot}: {e}; its sessions will not move"
                ));
                (None, None)
            }
        };
        let s = self.board.slot(slot);
        s.set_state(SlotState::Starting);
        s.listener.store(position as u32, Relaxed);
        s.beat_mono_ms.store(mono_ms(), Relaxed);
        match sys::fork_process() {
            Ok(Forked::Child) => {
                // Only the worker's own descriptors stay open in it.
                sys::close_fds(self.master_only_fds());
                drop(master_end);
                let init = WorkerInit {
                    slot,
                    position,
                    listeners,
                    log,
                    notifier,
                    channel: worker_end,
                    board: &self.board,
                    hub: &self.hub,
                    penalties: &self.penalties,
                    settings: &self.settings,
                    master: self.pid,
                };
                // A panic must not unwind into the master's state (its descriptors are closed
                // here already): it ends the worker, which the master respawns.
                let run = std::panic::AssertUnwindSafe(|| worker::run(init));
                let code = std::panic::catch_unwind(run).unwrap_or(101);
                // The worker's exit status is decided here, not by main: returning would unwind
                // into the master's loop and run its cleanup (it owns the scoreboard file and
                // the pid file). Nothing is buffered: the worker wrote its log records itself.
                std::process::exit(code);
            }
            Ok(Forked::Parent(pid)) => {
                drop(worker_end);
                if let Some(end) = master_end {
                    self.own.relay.add(pid, relay::Peer::Worker, end);
                }
                s.pid.store(pid.as_raw(), Relaxed);
                self.pool.started(slot, position, pid, Instant::now());
                self.event(Event::Spawned {
                    pid: pid.as_raw(),
                    slot,
                });
            }
            Err(e) => {
                s.set_state(SlotState::Respawning);
                self.record(format_args!(
                    "fork for slot {slot} failed: {e}; retrying in 1 s"
                ));
                let at = crate::clock::after(Instant::now(), Duration::from_secs(1));
                self.pool.start_failed(slot, position, at);
            }
        }
    }

    /// The descriptors only the master may hold (unicorn's `after_fork_internal` closes the
    /// same kind): its signalfd, the notify pipe's ends, its own log descriptor, the metrics
    /// listener and scrapes, the steering program and maps, the readiness pipes of an upgrade
    /// (to its old master, from its new one), the listening sockets, the other workers'
    /// hand-over channels.
    fn master_only_fds(&self) -> Vec<RawFd> {
        let own = &self.own;
        let mut fds = vec![
            own.signals.as_raw_fd(),
            own.inbox.as_fd().as_raw_fd(),
            own.notifier.as_fd().as_raw_fd(),
            self.log.as_raw_fd(),
        ];
        if let Some(m) = &own.metrics {
            fds.extend(m.fds());
        }
        for s in own.steering.iter().flatten() {
            fds.extend(s.parts().0.iter().map(|fd| fd.as_raw_fd()));
        }
        if let Some(ready) = &own.ready {
            fds.push(ready.as_raw_fd());
        }
        if let Phase::Upgrading(u) = &self.phase {
            fds.push(u.up.ready_fd().as_raw_fd());
        }
        fds.extend(self.pool.open_listeners().map(|fd| fd.as_raw_fd()));
        fds.extend(self.own.relay.fds());
        fds
    }

    /// Collects every exited child and does what the pool says its exit means.
    pub(super) fn reap_children(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, ended) = match status {
                WaitStatus::Exited(pid, code) => (pid, Ended::Exited(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Ended::Killed(sig)),
                _ => continue,
            };
            if self.upgrade_exited(pid, ended) {
                continue;
            }
            self.own.relay.remove(pid, Instant::now());
            let keeps_pool = self.phase.kind().keeps_pool();
            let exit = self.pool.exited(pid, Instant::now(), keeps_pool);
            let slot = match exit {
                Exit::Unknown => continue,
                Exit::Gone { slot } | Exit::Retired { slot, .. } | Exit::Respawn { slot, .. } => {
                    slot
                }
            };
            let s = self.board.slot(slot);
            s.pid.store(0, Relaxed);
            s.open.store(0, Relaxed);
            s.procs.store(0, Relaxed);
            // A clean exit at a stop was planned; anything else is a death.
            let clean = ended == Ended::Exited(0);
            let then = match exit {
                Exit::Unknown | Exit::Gone { .. } => {
                    s.set_state(if clean {
                        SlotState::Free
                    } else {
                        SlotState::Dead
                    });
                    if !clean {
                        Slot::add(&s.restarts, 1);
                    }
                    if clean {
                        Then::Ended
                    } else {
                        Then::Nothing
                    }
                }
                Exit::Retired { .. } => {
                    s.set_state(SlotState::Free);
                    s.retired.fetch_add(1, Relaxed);
                    Then::Retired
                }
                // Reserved for its respawn: nobody else may take it meanwhile.
                Exit::Respawn { delay, deaths, .. } => {
                    Slot::add(&s.restarts, 1);
                    s.set_state(SlotState::Respawning);
                    if delay.is_zero() {
                        Then::Respawn
                    } else {
                        Then::Backoff { deaths, delay }
                    }
                }
            };
            let pid = pid.as_raw();
            self.event(Event::WorkerEnded {
                pid,
                slot,
                ended,
                then,
            });
            if let Exit::Retired {
                closed: Some(position),
                ..
            } = exit
            {
                self.position_closed(position);
            }
        }
    }

    /// Sends `sig` to every running worker.
    pub(super) fn signal_workers(&self, sig: Signal) {
        for (_, pid) in self.pool.children() {
            let _ = kill(pid, sig);
        }
    }

    /// Waits (bounded) until the worker of every position of the pool shows ready.
    pub(super) fn wait_workers_ready(&mut self, limit: Duration) {
        let deadline = crate::clock::after(Instant::now(), limit);
        while Instant::now() < deadline {
            // A worker that died at start is not waited for (its respawn comes later).
            self.reap_children();
            let positions = self.pool.positions().len();
            let all = (0..positions)
                .filter_map(|p| self.pool.active(p))
                .all(|slot| {
                    !matches!(self.pool.life(slot), Life::Running { .. })
                        || self.board.slot(slot).state.load(Relaxed) == SlotState::Ready as u32
                });
            if all {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `--worker-timeout`: kill a worker whose heartbeat stopped (it is then respawned).
    pub(super) fn check_heartbeats(&mut self) {
        let timeout = self.settings.worker_timeout;
        if timeout.is_zero()
            || !self.phase.kind().keeps_pool()
            || Instant::now() < self.beat_grace_until
        {
            return;
        }
        let now = mono_ms();
        let children: Vec<(usize, Pid)> = self.pool.children().collect();
        for (slot, pid) in children {
            let beat = self.board.slot(slot).beat_mono_ms.load(Relaxed);
            let silent = Duration::from_millis(now.saturating_sub(beat));
            if silent > timeout {
                self.event(Event::NoHeartbeat {
                    pid: pid.as_raw(),
                    slot,
                    silent,
                    timeout,
                });
                let _ = kill(pid, Signal::SIGKILL);
                // Its next heartbeat check waits for the replacement.
                self.board.slot(slot).beat_mono_ms.store(now, Relaxed);
            }
        }
    }
}
