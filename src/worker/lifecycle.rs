//! A worker's life besides serving: heartbeat and counters, signals, recycling after
//! `--max-requests`, the graceful stop (linger, drain, tell the master), session timeouts.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Worker, DRAIN_LINGER, ORPHAN_GRACE, TICK};
use crate::clock;
use crate::listen::Protocol;
use crate::notify::{Kind, Note};
use crate::protocol::Refusal;
use crate::protocols;
use crate::record::Event;
use crate::scoreboard::{mono_ms, now_ms, ServerState, Slot, SlotState};

impl Worker<'_> {
    /// `--max-requests`: retire gracefully once this process has handled its share.
    pub(super) fn recycle_if_due(&mut self) {
        let Some(max) = self.max_requests else { return };
        let done = self.ctx.committed - self.committed_at_start;
        if self.stopping.is_none() && done >= max {
            let event = Event::Retiring {
                pid: std::process::id() as i32,
                slot: self.slot_index,
                done,
            };
            self.ctx.batch.event(format_args!("{event}"));
            self.retire();
        }
    }

    /// Publishes counters and the heartbeat; checks on the master now and then.
    pub(super) fn tick(&mut self) {
        let s = self.slot;
        Slot::add(&s.accepted, std::mem::take(&mut self.accepted));
        Slot::add(&s.bytes_in, std::mem::take(&mut self.bytes_in));
        Slot::add(&s.bytes_out, std::mem::take(&mut self.bytes_out));
        Slot::add(&s.errors, std::mem::take(&mut self.ctx.errors));
        s.open.store(self.open, Relaxed);
        let now = self.ctx.now;
        if let Some(at) = self.accept_resume {
            if now >= at {
                self.accept_resume = None;
                for (group, (l, _)) in self.listeners.iter().enumerate() {
                    let _ = self.epoll.add(l, super::listener_event(group));
                }
            }
        }
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            s.heartbeat_ms.store(now_ms(), Relaxed);
            s.beat_mono_ms.store(mono_ms(), Relaxed);
            self.expire_sessions();
            if nix::unistd::getppid() != self.master {
                self.begin_stop(clock::after(now, ORPHAN_GRACE));
            }
        }
    }

    /// Reads pending signals; returns true to exit now.
    pub(super) fn handle_signals(&mut self) -> io::Result<bool> {
        while let Some(info) = self.signals.read_signal()? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    let orphaned = nix::unistd::getppid() != self.master;
                    let grace = if orphaned {
                        ORPHAN_GRACE
                    } else {
                        self.start_handing_over();
                        self.ctx.settings.shutdown_timeout
                    };
                    self.begin_stop(clock::after(self.ctx.now, grace));
                }
                Ok(Signal::SIGQUIT) => return Ok(true),
                Ok(Signal::SIGCHLD) => self.reap_children(),
                Ok(Signal::SIGUSR1) => {
                    self.commit();
                    // Replies held for a sync: synced on the file they were written to (and
                    // a failure of that sync recorded there, before the reopen's record).
                    self.sync_held();
                    self.record_sync_error();
                    self.commit();
                    match self.log.reopen() {
                        Ok(()) => {
                            // A new file description: a failed sync of the old one is behind.
                            self.ctx.sync_failed = false;
                            let event = Event::WorkerReopened {
                                pid: std::process::id() as i32,
                            };
                            self.ctx.batch.event(format_args!("{event}"));
                        }
                        Err(e) => {
                            crate::warnln!("cserverd worker {}: reopen log: {e}", self.ctx.pid)
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Stops accepting (after a short linger that drains the queue); open sessions go on until
    /// `deadline`.
    pub(super) fn begin_stop(&mut self, deadline: Instant) {
        self.stopping = Some(self.stopping.map_or(deadline, |d| d.min(deadline)));
        if !self.listeners.is_empty() && self.drain_until.is_none() {
            self.drain_until = Some(clock::after(self.ctx.now, DRAIN_LINGER));
        }
        self.slot.set_state(SlotState::Stopping);
    }

    /// The linger is over: take everything still queued, close the listeners, tell the master.
    pub(super) fn finish_drain(&mut self) {
        self.drain_until = None;
        self.accept_resume = None;
        for group in 0..self.listeners.len() {
            while !self.accept_ready(group) {}
        }
        self.drop_listeners();
        self.notify(Kind::Drained);
    }

    /// Retiring on our own (`--max-requests`): the socket goes on being served by a successor,
    /// so stop accepting at once and leave the queue to it.
    pub(super) fn retire(&mut self) {
        self.drop_listeners();
        self.notify(Kind::Retiring);
        self.start_handing_over();
        let deadline = clock::after(self.ctx.now, self.ctx.settings.shutdown_timeout);
        self.stopping = Some(deadline);
        self.slot.set_state(SlotState::Stopping);
    }

    pub(super) fn drop_listeners(&mut self) {
        for (l, _) in std::mem::take(&mut self.listeners) {
            let _ = self.epoll.delete(&l);
        }
    }

    pub(super) fn notify(&self, kind: Kind) {
        self.notifier.send(Note {
            slot: self.slot_index,
            pid: std::process::id() as i32,
            kind,
        });
    }

    /// Sessions past their handshake or idle deadline get a last `ERR 408` and are closed; one
    /// that will not even take that line is dropped a little later.
    pub(super) fn expire_sessions(&mut self) {
        let now = self.ctx.now;
        for idx in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get_mut(idx) else {
                continue;
            };
            // A shell session lives as long as its shell (its bytes are not requests); a member
            // of the chat protocol may only listen.
            let listening = conn.session.protocol == Protocol::Chat && conn.session.chat.is_some();
            if conn.session.is_waiting()
                || conn.session.shell.is_some()
                || listening
                || now < conn.deadline
            {
                continue;
            }
            if conn.session.quitting {
                conn.broken = true;
            } else {
                let protocol = conn.session.protocol;
                match protocol {
                    Protocol::Cserver if conn.session.user.is_none() => {
                        conn.output.err(Refusal::HandshakeTimeout);
                    }
                    // As the seed's server did: no secret in time, closed without a word.
                    Protocol::Rembash => {}
                    _ => protocols::notice(&mut conn.output, protocol, Refusal::IdleTimeout),
                }
                self.ctx.errors += 1;
                conn.session.quitting = true;
                conn.deadline = clock::after(now, Duration::from_secs(5));
            }
            self.touch(idx);
        }
    }

    /// The stop deadline passed: tell every session and close it once its reply is out (a
    /// `MSG` under way still gets its answer first). Told the truth: the server is stopping, or
    /// only this worker is being replaced and a new connection will be served.
    pub(super) fn close_sessions(&mut self) {
        let header = self.ctx.board.header();
        let stopping = header.state.load(Relaxed) == ServerState::Stopping as u32;
        let why = if stopping {
            Refusal::ShuttingDown
        } else {
            Refusal::Replaced
        };
        for idx in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get_mut(idx) else {
                continue;
            };
            if conn.session.quitting {
                continue;
            }
            if !conn.session.is_waiting() {
                protocols::notice(&mut conn.output, conn.session.protocol, why);
                self.ctx.errors += 1;
            }
            conn.session.quitting = true;
            self.touch(idx);
        }
    }
}
