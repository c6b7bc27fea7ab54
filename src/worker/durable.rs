//! The end of a turn's log work: its records written with one `write(2)`, made durable as
//! `--sync` asks, and the provisional replies settled against what reached the file (and the
//! disk) before any byte of them goes to a client.
//!
//! - `none`: settled against the bytes written.
//! - `always`: written, then `fdatasync`ed, then settled: one sync covers every request of
//!   the turn (group commit). A failed sync refuses the whole turn.
//! - `batch`: the replies whose records were written are held in their connections' output
//!   (with everything after them) until a sync, made at most `--sync-interval` after the
//!   previous one, covers them; then released, or refused if the sync failed.
//!
//! A failed sync is reported once by the kernel and may have dropped records written before
//! it; a later sync that succeeds proves nothing about them. So after one, the worker refuses
//! every `MSG` (`ERR 503`, no record) until the log is reopened (`SIGUSR1`), and says so.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Worker;
use crate::log::SyncMode;
use crate::protocol::Refusal;
use crate::record::Event;
use crate::session::{self, Ack, AckKind};

impl Worker<'_> {
    /// Writes the turn's records and settles the provisional replies against what was written
    /// (and, with `--sync`, synced).
    pub(super) fn commit(&mut self) {
        if self.ctx.batch.is_empty() {
            if self.sync_due(self.ctx.now) {
                self.sync_held();
                self.record_sync_error();
            }
            return;
        }
        let (written, error) = self.log.append(self.ctx.batch.bytes());
        if let Some(e) = &error {
            if !self.log_error_reported {
                crate::warnln!(
                    "cserverd worker {}: cannot write {}: {e}; refusing MSG until it works",
                    self.ctx.pid,
                    self.log.path().display()
                );
                self.log_error_reported = true;
            }
        } else {
            self.log_error_reported = false;
        }
        let mut acks = std::mem::take(&mut self.ctx.acks);
        // Requests whose records reached the file are counted, whatever a sync says next: the
        // slot counts what the log holds (a refused one's record is in the file, maybe not on
        // the disk).
        let written_done = acks
            .iter()
            .filter(|a| a.log_end <= written && matches!(a.kind, AckKind::Done { .. }))
            .count() as u64;
        match self.ctx.settings.sync {
            SyncMode::None => self.settle(&mut acks, written, Refusal::LogFailed),
            SyncMode::Always => {
                if written > 0 && !self.sync_log() {
                    self.settle(&mut acks, 0, Refusal::SyncFailed);
                } else {
                    self.settle(&mut acks, written, Refusal::LogFailed);
                }
            }
            SyncMode::Batch(_) => {
                // Replies whose records are in the file wait for a sync; the rest are settled
                // now (refused if not written; a started request has no reply yet: the sync
                // before its reply covers its first record too).
                let mut now = Vec::new();
                for ack in acks.drain(..) {
                    match ack.kind {
                        AckKind::Done { .. } if ack.log_end <= written => self.held.push(ack),
                        _ => now.push(ack),
                    }
                }
                self.settle(&mut now, written, Refusal::LogFailed);
                acks = now;
            }
        }
        // Each provisional reply was held where it starts since it was made: the settled ones
        // may go, the ones waiting for a sync stay held.
        self.release(&acks);
        if matches!(self.ctx.settings.sync, SyncMode::Batch(_)) && self.sync_due(self.ctx.now) {
            self.sync_held();
        }
        self.ctx.committed += written_done;
        self.slot.requests.store(self.ctx.committed, Relaxed);
        // The other protocols' requests whose records reached the file.
        for &(end, protocol) in &self.ctx.counted {
            if end <= written {
                if let Some(n) = self.slot.served.get(protocol.index().wrapping_sub(1)) {
                    n.fetch_add(1, Relaxed);
                }
            }
        }
        self.ctx.counted.clear();
        self.ctx.provisional = 0;
        self.ctx.base_total = None;
        acks.clear();
        self.ctx.acks = acks;
        self.ctx.batch.clear();
        self.record_sync_error();
    }

    /// The record of a failed sync, into the batch of the next write.
    pub(super) fn record_sync_error(&mut self) {
        if let Some(error) = self.sync_error.take() {
            let event = Event::SyncFailed {
                pid: std::process::id() as i32,
                error: &error,
            };
            self.ctx.batch.event(format_args!("{event}"));
        }
    }

    /// Lets the settled replies of `acks` go: each was held where it starts since it was made.
    /// A connection whose earlier reply waits for a sync (`--sync batch`) is held from there,
    /// so it stays held.
    fn release(&mut self, acks: &[Ack]) {
        for ack in acks {
            if let AckKind::Done { out_start, .. } = ack.kind {
                if let Some(conn) = self.conn_mut(ack.conn) {
                    conn.output.release_from(out_start);
                }
            }
        }
    }

    /// Confirms the provisional replies in `acks` whose records end within `logged` bytes and
    /// refuses the others with `why` (spliced in place of their `OK`), connection by
    /// connection; counts the refusals as errors.
    fn settle(&mut self, acks: &mut [Ack], logged: usize, why: Refusal) {
        if acks.iter().all(|a| a.log_end <= logged) {
            return; // every reply stands as written
        }
        acks.sort_by_key(|a| a.conn); // stable: each connection's acks stay in order
        for group in acks.chunk_by(|a, b| a.conn == b.conn) {
            if let Some(conn) = self.conn_mut(group[0].conn) {
                let (out, session) = (&mut conn.output, &mut conn.session);
                let (_, refused) = session::settle(out, session, group.iter(), logged, why);
                self.ctx.errors += refused;
            }
        }
    }

    /// `fdatasync`s the log and counts it; on failure says so once, and refuses every `MSG`
    /// from now until the log is reopened. Returns true when the sync succeeded.
    pub(super) fn sync_log(&mut self) -> bool {
        self.last_sync = self.ctx.now;
        match self.log.sync() {
            Ok(took) => {
                self.slot.count_sync(Ok(took));
                !self.ctx.sync_failed
            }
            Err(e) => {
                self.slot.count_sync(Err(()));
                if !self.ctx.sync_failed {
                    crate::warnln!(
                        "cserverd worker {}: cannot sync {}: {e}; refusing MSG until the log \
                         is reopened (SIGUSR1)",
                        self.ctx.pid,
                        self.log.path().display()
                    );
                    // Written with the next turn's records (this turn's are written already).
                    self.sync_error = Some(e.to_string());
                }
                self.ctx.sync_failed = true;
                false
            }
        }
    }

    /// `--sync batch`: true when replies wait and the interval since the last sync is over.
    pub(super) fn sync_due(&self, now: Instant) -> bool {
        self.sync_deadline().is_some_and(|at| now >= at)
    }

    /// When the held replies' sync is due, if any are held: after the interval, or at once
    /// while the worker stops (its last moments may come before the interval is over).
    pub(super) fn sync_deadline(&self) -> Option<Instant> {
        match self.ctx.settings.sync {
            SyncMode::Batch(_) if !self.held.is_empty() && self.stopping.is_some() => {
                Some(self.last_sync)
            }
            SyncMode::Batch(interval) if !self.held.is_empty() => {
                Some(crate::clock::after(self.last_sync, interval))
            }
            _ => None,
        }
    }

    /// Syncs the log and lets every held reply go: confirmed if the sync succeeded, refused
    /// otherwise. Their connections are flushed at the end of the turn.
    pub(super) fn sync_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let synced = self.sync_log();
        let mut held = std::mem::take(&mut self.held);
        if !synced {
            self.settle(&mut held, 0, Refusal::SyncFailed);
        }
        for ack in held.drain(..) {
            if let Some(conn) = self.conn_mut(ack.conn) {
                conn.output.release();
                self.touch(ack.conn.idx);
            }
        }
        self.held = held;
    }
}
