//! `USR2`, seen from both masters: start the new binary with the sockets, hand over when it is
//! ready, take everything back when it gives up, and abandon it when a stop comes first.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sd_notify::NotifyState;

use super::relay::Peer;
use super::{notify_systemd, write_pid_file, Master, Phase, Stopping, Upgrading};
use crate::handoff;
use crate::phase::Stop;
use crate::procfs::Identity;
use crate::record::{Ended, Event};
use crate::steering::Steering;
use crate::upgrade::{Handing, Upgrade};

/// How long a new master may take to say ready.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

impl Master {
    /// A stop while the new master of an upgrade is still starting: the operator wants the
    /// server stopped, so the new master is told to stop the same way, and this one stops and
    /// waits for it. The scoreboard and pid file are this master's again.
    pub(super) fn abandon_upgrade(&mut self, how: Stop, sig: Signal) {
        let Phase::Upgrading(Upgrading { up, .. }) =
            std::mem::replace(&mut self.phase, Phase::Running)
        else {
            return;
        };
        let new = Pid::from_raw(up.child.id() as i32);
        let tell = match how {
            Stop::Graceful => Signal::SIGTERM,
            Stop::Immediate => Signal::SIGQUIT,
        };
        self.event(Event::UpgradeAbandoned {
            sig,
            pid: new.as_raw(),
            told: tell,
        });
        let _ = kill(new, tell);
        self.reclaim_files();
        self.begin_stopping(how, sig, Some(up));
    }

    /// The scoreboard header, the pid file and systemd's main pid name this master again (after
    /// an upgrade that did not take over, whose new master wrote its own pid in them).
    pub(super) fn reclaim_files(&mut self) {
        notify_systemd(&[NotifyState::MainPid(self.pid.as_raw() as u32)]);
        self.board.header().set_master(Identity {
            pid: self.pid.as_raw(),
            start_ticks: self.start_ticks,
        });
        if let Some(path) = self.settings.pid_file.clone() {
            if let Err(e) = write_pid_file(&path, self.pid) {
                self.record(format_args!(
                    "cannot write pid file {}: {e}",
                    path.display()
                ));
            }
        }
    }

    /// `USR2`: start the binary again with our listening sockets.
    pub(super) fn start_upgrade(&mut self) {
        // The channel on which this master's workers' idle sessions go to the new one.
        let channel = match handoff::channel() {
            Ok(pair) => Some(pair),
            Err(e) => {
                self.record(format_args!(
                    "SIGUSR2: no session channel ({e}): sessions will drain here"
                ));
                None
            }
        };
        let steering: Vec<_> = self
            .own
            .steering
            .iter()
            .map(|s| s.as_ref().map(Steering::parts))
            .collect();
        let listeners: Vec<_> = (0..self.listening.len())
            .map(|group| self.pool.listeners(group))
            .collect();
        let descriptions: Vec<String> = self
            .listening
            .iter()
            .zip(&self.shared)
            .map(|(l, &shared)| {
                let suffix = if shared { ":shared" } else { "" };
                format!("{}{suffix}", l.protocol)
            })
            .collect();
        let handing = Handing {
            listeners,
            descriptions: descriptions.join(","),
            steering,
            metrics: self.own.metrics.as_ref().map(|m| m.listener()),
            handoff: channel.as_ref().map(|(_, theirs)| theirs.as_fd()),
            chat: self.hub.fds(),
            from: self.pid.as_raw(),
        };
        match Upgrade::start(&self.exe, &self.args, handing) {
            Ok(up) => {
                let pid = up.child.id();
                if let Some((ours, _)) = channel {
                    self.own
                        .relay
                        .add(Pid::from_raw(pid as i32), Peer::Newer, ours);
                }
                let exe = self.exe.display().to_string();
                self.record(format_args!("SIGUSR2: started {exe} as master {pid}"));
                self.phase = Phase::Upgrading(Upgrading {
                    up,
                    deadline: crate::clock::after(Instant::now(), UPGRADE_TIMEOUT),
                    killed: false,
                });
            }
            Err(e) => self.record(format_args!("SIGUSR2: cannot start the new binary: {e}")),
        }
    }

    /// Upgrading: the new master said ready (hand over and stop), died (go on serving), or is
    /// too slow (killed; its reaping goes back to serving).
    pub(super) fn check_upgrade(&mut self) {
        let Phase::Upgrading(u) = &mut self.phase else {
            return;
        };
        let pid = u.up.child.id();
        match u.up.poll_ready() {
            None => {
                if Instant::now() >= u.deadline && !u.killed {
                    u.killed = true;
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    self.record(format_args!(
                        "upgrade: master {pid} not ready after {} s: killing it",
                        UPGRADE_TIMEOUT.as_secs()
                    ));
                }
            }
            Some(true) => {
                self.event(Event::UpgradeReady { pid: pid as i32 });
                // With NotifyAccess=main only the main pid may notify systemd: this master, the
                // main one until now, names its successor.
                let status = format!("upgraded: master {pid} serves");
                notify_systemd(&[
                    NotifyState::MainPid(pid),
                    NotifyState::Status(&status),
                    NotifyState::Ready,
                ]);
                self.hand_over();
            }
            Some(false) => {
                self.phase = Phase::Running;
                // The files first: whoever reads the record finds them this master's again.
                self.take_back_upgrade(Pid::from_raw(pid as i32));
                self.event(Event::UpgradeGaveUp { pid: pid as i32 });
            }
        }
    }

    /// The new master is gone without taking over: the steering, the scoreboard header, the
    /// pid file and systemd's main pid are this master's again.
    pub(super) fn take_back_upgrade(&mut self, pid: Pid) {
        self.own.relay.remove(pid, Instant::now());
        self.take_back_steering();
        self.reclaim_files();
    }

    /// The new master is ready: it serves the sockets now. Stop accepting (the sockets stay
    /// open in the new master), finish sessions, exit.
    pub(super) fn hand_over(&mut self) {
        let deadline = self.graceful_deadline();
        self.phase = Phase::HandingOver(Stopping {
            how: Stop::Graceful,
            deadline,
            killed: false,
            abandoned: None,
        });
        self.cancel_starts();
        self.record(format_args!("SIGUSR2: handover stop"));
        // Its word that it takes sessions came before its "ready".
        self.own.relay.collect(Instant::now());
        if self.own.relay.newer_master().is_none() {
            self.record(format_args!(
                "SIGUSR2: the new master takes no sessions: open sessions finish here"
            ));
        }
        self.signal_workers(Signal::SIGTERM);
    }

    /// True if `pid` was a new master this one started (and is waiting for): it is gone now.
    pub(super) fn upgrade_exited(&mut self, pid: Pid, ended: Ended) -> bool {
        let is = |up: &Upgrade| up.child.id() as i32 == pid.as_raw();
        match &mut self.phase {
            Phase::Upgrading(u) if is(&u.up) => {
                self.phase = Phase::Running;
                self.take_back_upgrade(pid);
                self.event(Event::UpgradeFailed {
                    pid: pid.as_raw(),
                    ended,
                });
                true
            }
            Phase::Stopping(s) if s.abandoned.as_ref().is_some_and(is) => {
                s.abandoned = None;
                self.own.relay.remove(pid, Instant::now());
                self.record(format_args!("abandoned master {pid} {ended}"));
                self.reclaim_files();
                true
            }
            _ => false,
        }
    }
}
