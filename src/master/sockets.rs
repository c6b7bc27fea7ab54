//! The listening sockets seen from the master: the pool size published in the scoreboard, the
//! steering program kept pointing at exactly the pool's sockets, and the filter that refuses
//! new connections before a stop closes them.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;

use super::{Master, Phase};
use crate::listener;
use crate::steering::Steering;

impl Master {
    /// Sets the header's worker count to the number of positions in the pool, and makes new
    /// connections go to exactly those sockets.
    pub(super) fn publish_pool_size(&mut self) {
        let n = self.pool.size();
        self.board.header().workers.store(n as u32, Relaxed);
        for group in 0..self.listening.len() {
            self.steer(group);
        }
    }

    /// Points a listener's steering program at the pool's sockets. If that fails, it is taken
    /// off the group: the kernel's hash never sends a connection to a socket that is gone.
    fn steer(&mut self, group: usize) {
        if matches!(self.phase, Phase::HandingOver(_)) {
            return; // the new master adopted the steering and keeps it now
        }
        let Some(steering) = self.own.steering.get_mut(group).and_then(Option::as_mut) else {
            return;
        };
        let listeners = self.pool.listeners(group);
        let Err(e) = steering.set(&listeners) else {
            return;
        };
        let detached = listeners
            .first()
            .map(|fd| Steering::detach(fd).map_err(|e| format!("; detaching it: {e}")));
        self.own.steering[group] = None;
        let on = self.listening[group];
        self.record(format_args!(
            "cannot update the steering program of {on} ({e}); new connections spread by the kernel's hash{}",
            match detached {
                Some(Err(d)) => d,
                _ => String::new(),
            }
        ));
    }

    /// A binary upgrade gave up. Its new master kept our programs and maps and may have changed
    /// the maps, or, if we had none, may have attached programs of its own that now steer a
    /// pool it no longer keeps: make each group ours again (or the kernel's hash).
    pub(super) fn take_back_steering(&mut self) {
        for group in 0..self.listening.len() {
            let Some(member) = self.pool.open_listeners_of(group).next() else {
                continue;
            };
            let again = match self.own.steering.get(group).and_then(Option::as_ref) {
                Some(s) => s.reattach(member),
                None => {
                    let _ = Steering::detach(member);
                    continue;
                }
            };
            match again {
                Ok(()) => self.steer(group),
                Err(e) => {
                    let _ = Steering::detach(member);
                    self.own.steering[group] = None;
                    let on = self.listening[group];
                    self.record(format_args!(
                        "cannot attach the steering program of {on} again ({e}); new connections spread by the kernel's hash"
                    ));
                }
            }
        }
    }

    /// A graceful stop: every open socket refuses new connections; those queued or in the
    /// middle of their handshake are drained by the workers.
    pub(super) fn refuse_new_connections(&mut self) {
        let failed = self
            .pool
            .open_listeners()
            .filter_map(|fd: &OwnedFd| listener::refuse_new_connections(fd).err())
            .last();
        if let Some(e) = failed {
            self.record(format_args!("{}", listener::cannot_refuse(&e)));
        }
    }
}
