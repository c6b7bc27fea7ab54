//! The worker pool as the master wants it: pool positions (one listening socket each, served by
//! one active worker) and scoreboard slots (one process each). The pool only decides: which slot
//! is free, who is due to start and when (respawn backoff, successors, new positions), what a
//! reaped exit means, who retires. The master makes the system calls, and forks only the starts
//! the pool says are due ([`Pool::due`]).
//!
//! A crashed worker is respawned into the same slot, so its counters continue. A worker that is
//! *replaced* (`HUP`, `--max-requests`) keeps its slot while it finishes its sessions, and its
//! successor takes a free slot on the same listening socket: the socket never stops being served,
//! so nobody is refused.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// A worker died this soon after it started: count it towards the respawn backoff.
pub const QUICK_DEATH: Duration = Duration::from_secs(1);
/// Longest respawn backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A place in the pool: one listening socket of each listener's reuseport group (the default
/// listener's first, then each `--listen`'s), served by one active worker.
pub struct Position {
    /// The master's copies, one per listener; empty once closed.
    pub listeners: Vec<OwnedFd>,
    /// Being taken out of the pool (`TTOU`): closed once its worker has drained it.
    pub removing: bool,
}

impl Position {
    fn in_pool(&self) -> bool {
        !self.listeners.is_empty() && !self.removing
    }
}

/// What a scoreboard slot holds, as the master sees it: the one picture of a slot's life (the
/// scoreboard's state is what the master and the worker publish of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// No process and nothing due.
    Free,
    /// A worker is due to start here at `at` (a respawn after its backoff, a successor, a new
    /// position), accepting from `position`.
    Due { position: usize, at: Instant },
    /// A worker runs here.
    Running {
        pid: Pid,
        position: usize,
        started: Instant,
        /// Asked (or announced) to stop accepting: it is not its position's worker any more
        /// and is not respawned when it exits.
        retiring: bool,
        /// It told the master it stopped accepting.
        drained: bool,
    },
}

/// A slot: its life and its record of quick deaths.
#[derive(Debug, Clone, Copy)]
struct Slot {
    life: Life,
    /// Deaths in a row, each within [`QUICK_DEATH`] of starting.
    quick_deaths: u32,
}

/// What a reaped exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Not a worker of this pool (the new master of an upgrade, or a stale pid).
    Unknown,
    /// During a stop, or a worker already replaced: nothing follows.
    Gone { slot: usize },
    /// A retiring worker ended; `closed` is its position if that was being removed and is now
    /// out of the pool.
    Retired { slot: usize, closed: Option<usize> },
    /// The active worker of its position died: it is due again in the same slot after `delay`
    /// (`deaths` quick deaths in a row).
    Respawn {
        slot: usize,
        delay: Duration,
        deaths: u32,
    },
}

/// What a worker's "retiring" note (`--max-requests`) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Successor {
    /// Nothing to do (a stale note, a stop, or it was not active).
    None,
    /// A successor is due in `slot`.
    Due { slot: usize },
    /// No free slot: the worker stays its position's and is respawned in place when it exits.
    InPlace,
}

/// The pool: positions and slots.
pub struct Pool {
    positions: Vec<Position>,
    slots: Vec<Slot>,
}

impl Pool {
    /// A pool of positions (each given its sockets, one per listener) over `capacity` slots,
    /// nothing started yet.
    pub fn new(positions: Vec<Vec<OwnedFd>>, capacity: usize) -> Pool {
        Pool {
            positions: positions
                .into_iter()
                .map(|listeners| Position {
                    listeners,
                    removing: false,
                })
                .collect(),
            slots: vec![
                Slot {
                    life: Life::Free,
                    quick_deaths: 0,
                };
                capacity
            ],
        }
    }

    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    pub fn position(&self, position: usize) -> &Position {
        &self.positions[position]
    }

    pub fn life(&self, slot: usize) -> Life {
        self.slots[slot].life
    }

    /// Positions taking new connections.
    pub fn size(&self) -> usize {
        self.positions.iter().filter(|p| p.in_pool()).count()
    }

    /// Listening sockets of listener `group` in the positions of the pool, in position order.
    pub fn listeners(&self, group: usize) -> Vec<&OwnedFd> {
        self.positions
            .iter()
            .filter(|p| p.in_pool())
            .filter_map(|p| p.listeners.get(group))
            .collect()
    }

    /// Listener `group`'s sockets still open (the pool's and those being drained).
    pub fn open_listeners_of(&self, group: usize) -> impl Iterator<Item = &OwnedFd> {
        self.positions
            .iter()
            .filter_map(move |p| p.listeners.get(group))
    }

    /// Every listening socket still open (the pool's and those being drained).
    pub fn open_listeners(&self) -> impl Iterator<Item = &OwnedFd> {
        self.positions.iter().flat_map(|p| &p.listeners)
    }

    /// Running workers: slot and pid.
    pub fn children(&self) -> impl Iterator<Item = (usize, Pid)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.life {
                Life::Running { pid, .. } => Some((i, pid)),
                _ => None,
            })
    }

    /// Workers that take new connections (running, not retiring).
    pub fn serving(&self) -> impl Iterator<Item = Pid> + '_ {
        self.slots.iter().filter_map(|s| match s.life {
            Life::Running {
                pid,
                retiring: false,
                ..
            } => Some(pid),
            _ => None,
        })
    }

    /// The slot serving (or due to serve) `position`: its one non-retiring worker.
    pub fn active(&self, position: usize) -> Option<usize> {
        self.slots.iter().position(|s| match s.life {
            Life::Due { position: p, .. } => p == position,
            Life::Running {
                position: p,
                retiring,
                ..
            } => p == position && !retiring,
            Life::Free => false,
        })
    }

    /// A slot with no process and nothing due, that the scoreboard also shows unused
    /// (`unused(slot)`: a worker of an old master may still be counting in a slot after a binary
    /// upgrade).
    pub fn free_slot(&self, unused: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.slots.len()).find(|&i| self.slots[i].life == Life::Free && unused(i))
    }

    /// Marks a start due now in `slot` for `position`.
    pub fn plan_start(&mut self, slot: usize, position: usize, now: Instant) {
        self.slots[slot].life = Life::Due { position, at: now };
    }

    /// Starts due by `now`: (slot, position).
    pub fn due(&self, now: Instant) -> Vec<(usize, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.life {
                Life::Due { position, at } if at <= now => Some((i, position)),
                _ => None,
            })
            .collect()
    }

    /// The earliest start still to come.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.life {
                Life::Due { at, .. } => Some(at),
                _ => None,
            })
            .min()
    }

    /// A stop: nothing more starts. Returns the slots that had a start due.
    pub fn cancel_starts(&mut self) -> Vec<usize> {
        let mut dropped = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if matches!(s.life, Life::Due { .. }) {
                s.life = Life::Free;
                dropped.push(i);
            }
        }
        dropped
    }

    /// A start that cannot be made at all (its position is gone): the slot is free.
    pub fn forget_start(&mut self, slot: usize) {
        if matches!(self.slots[slot].life, Life::Due { .. }) {
            self.slots[slot].life = Life::Free;
        }
    }

    /// The fork for `slot` succeeded.
    pub fn started(&mut self, slot: usize, position: usize, pid: Pid, now: Instant) {
        self.slots[slot].life = Life::Running {
            pid,
            position,
            started: now,
            retiring: false,
            drained: false,
        };
    }

    /// The start in `slot` could not be made: try again at `at`.
    pub fn start_failed(&mut self, slot: usize, position: usize, at: Instant) {
        self.slots[slot].life = Life::Due { position, at };
    }

    /// The running worker with this pid.
    fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s.life, Life::Running { pid: p, .. } if p == pid))
    }

    /// Slot of the running worker `pid` sent its note from, if it still runs there.
    pub fn running_slot(&self, slot: usize, pid: Pid) -> bool {
        matches!(self.slots.get(slot), Some(s) if matches!(s.life, Life::Running { pid: p, .. } if p == pid))
    }

    /// The process `pid` exited at `now`; `keeps_pool` is false during a stop or a hand-over.
    pub fn exited(&mut self, pid: Pid, now: Instant, keeps_pool: bool) -> Exit {
        let Some(slot) = self.slot_of(pid) else {
            return Exit::Unknown;
        };
        let Life::Running {
            position,
            started,
            retiring,
            ..
        } = self.slots[slot].life
        else {
            return Exit::Unknown;
        };
        self.slots[slot].life = Life::Free;
        if !keeps_pool {
            return Exit::Gone { slot };
        }
        if retiring {
            // Died before saying it had drained a position being removed: finish that now.
            let p = &self.positions[position];
            let closed = (p.removing && self.active(position).is_none()).then(|| {
                self.close(position);
                position
            });
            return Exit::Retired { slot, closed };
        }
        if self.active(position).is_some() {
            // Someone else already serves its position.
            return Exit::Gone { slot };
        }
        let s = &mut self.slots[slot];
        if now.duration_since(started) < QUICK_DEATH {
            s.quick_deaths += 1;
        } else {
            s.quick_deaths = 0;
        }
        let delay = backoff(s.quick_deaths);
        s.life = Life::Due {
            position,
            at: crate::clock::after(now, delay),
        };
        Exit::Respawn {
            slot,
            delay,
            deaths: s.quick_deaths,
        }
    }

    /// The worker in `slot` said it is retiring on its own (`--max-requests`): it stopped
    /// accepting. Its position needs a successor in a free slot (`free`).
    pub fn retiring(
        &mut self,
        slot: usize,
        pid: Pid,
        keeps_pool: bool,
        now: Instant,
        free: Option<usize>,
    ) -> Successor {
        if !self.running_slot(slot, pid) {
            return Successor::None;
        }
        let Life::Running {
            position, retiring, ..
        } = self.slots[slot].life
        else {
            return Successor::None;
        };
        self.mark_retiring(slot, true, true);
        if !keeps_pool || retiring {
            return Successor::None;
        }
        match free {
            Some(new) => {
                self.plan_start(new, position, now);
                Successor::Due { slot: new }
            }
            None => {
                // It stays its position's worker, and comes back in place when it exits.
                self.mark_retiring(slot, false, false);
                Successor::InPlace
            }
        }
    }

    /// The worker in `slot` drained its listener (stop or `TTOU`). Returns the position closed
    /// by it, if that was being removed.
    pub fn drained(&mut self, slot: usize, pid: Pid, keeps_pool: bool) -> Option<usize> {
        if !self.running_slot(slot, pid) {
            return None;
        }
        let Life::Running {
            position, drained, ..
        } = &mut self.slots[slot].life
        else {
            return None;
        };
        *drained = true;
        let position = *position;
        if keeps_pool && self.positions[position].removing {
            self.close(position);
            return Some(position);
        }
        None
    }

    /// True when no running worker still holds a listener (each drained, retired on its own,
    /// or gone).
    pub fn all_drained(&self) -> bool {
        self.slots.iter().all(|s| match s.life {
            Life::Running { drained, .. } => drained,
            _ => true,
        })
    }

    /// Marks the worker in `slot` retiring (or, with no successor for it, not). One that
    /// retires `on_its_own` (`--max-requests`) has already dropped its listener: nothing to
    /// drain. One told to retire (`HUP`, `TTOU`) holds it until it says it drained it.
    fn mark_retiring(&mut self, slot: usize, value: bool, on_its_own: bool) {
        if let Life::Running {
            retiring, drained, ..
        } = &mut self.slots[slot].life
        {
            *retiring = value;
            *drained |= on_its_own;
        }
    }

    /// `HUP`: a successor due now in a free slot for every position of the pool, the current
    /// workers marked retiring. Returns the pids to tell to retire (once the successors run),
    /// and the slots that keep running for want of a free slot.
    pub fn replace_all(
        &mut self,
        now: Instant,
        unused: impl Fn(usize) -> bool,
    ) -> (Vec<Pid>, Vec<usize>) {
        let mut old = Vec::new();
        let mut kept = Vec::new();
        for position in 0..self.positions.len() {
            if !self.positions[position].in_pool() {
                continue;
            }
            let Some(slot) = self.active(position) else {
                continue;
            };
            let Life::Running { pid, .. } = self.slots[slot].life else {
                continue; // due to start anyway
            };
            let Some(new) = self.free_slot(&unused) else {
                kept.push(slot);
                continue;
            };
            self.plan_start(new, position, now);
            self.mark_retiring(slot, true, false);
            old.push(pid);
        }
        (old, kept)
    }

    /// `TTIN`: one position more (reusing a closed one) with its sockets, its worker due now in
    /// `slot`.
    pub fn grow(&mut self, listeners: Vec<OwnedFd>, slot: usize, now: Instant) -> usize {
        let position = match self
            .positions
            .iter()
            .position(|p| p.listeners.is_empty() && !p.removing)
        {
            Some(i) => i,
            None => {
                self.positions.push(Position {
                    listeners: Vec::new(),
                    removing: false,
                });
                self.positions.len() - 1
            }
        };
        self.positions[position] = Position {
            listeners,
            removing: false,
        };
        self.plan_start(slot, position, now);
        position
    }

    /// `TTOU`: the last position of the pool is taken out (never the last one). Returns it, the
    /// pid of its worker, which must drain it (with no worker, it is closed at once), and the
    /// slot whose start was due for it, now free.
    pub fn shrink(&mut self) -> Option<(usize, Option<Pid>, Option<usize>)> {
        let in_pool: Vec<usize> = (0..self.positions.len())
            .filter(|&i| self.positions[i].in_pool())
            .collect();
        let &position = in_pool.last().filter(|_| in_pool.len() > 1)?;
        self.positions[position].removing = true;
        let (mut worker, mut dropped) = (None, None);
        if let Some(slot) = self.active(position) {
            match self.slots[slot].life {
                Life::Running { pid, .. } => {
                    self.mark_retiring(slot, true, false);
                    worker = Some(pid);
                }
                Life::Due { .. } => {
                    self.slots[slot].life = Life::Free;
                    dropped = Some(slot);
                }
                Life::Free => {}
            }
        }
        if worker.is_none() {
            self.close(position);
        }
        Some((position, worker, dropped))
    }

    /// Closes a position's sockets: out of the pool.
    fn close(&mut self, position: usize) {
        let p = &mut self.positions[position];
        p.listeners.clear();
        p.removing = false;
    }

    /// Closes every listener (the master's copies).
    pub fn close_all(&mut self) {
        for p in &mut self.positions {
            p.listeners.clear();
        }
    }
}

/// Respawn delay after `quick_deaths` quick deaths in a row: at once for the first, then 100 ms
/// doubling up to [`MAX_BACKOFF`].
pub fn backoff(quick_deaths: u32) -> Duration {
    match quick_deaths {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(100) * 2u32.pow((n - 2).min(10))).min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A position's sockets: two listeners' (stand-ins).
    fn fd() -> Vec<OwnedFd> {
        let one = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        vec![one(), one()]
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    /// A pool of `n` positions over `capacity` slots with a worker running in slot i for
    /// position i (pid 100 + i).
    fn running(n: usize, capacity: usize, t: Instant) -> Pool {
        let mut pool = Pool::new((0..n).map(|_| fd()).collect(), capacity);
        for i in 0..n {
            let slot = pool.free_slot(|_| true).unwrap();
            pool.plan_start(slot, i, t);
        }
        for (slot, position) in pool.due(t) {
            pool.started(slot, position, pid(100 + slot as i32), t);
        }
        pool
    }

    #[test]
    fn backoff_doubles_from_the_second_quick_death_and_stops_at_ten_seconds() {
        let ms: Vec<u128> = (0..9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [0, 0, 100, 200, 400, 800, 1600, 3200, 6400]);
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_crash_is_respawned_into_its_own_slot_with_backoff_after_quick_deaths() {
        let t = Instant::now();
        let mut pool = running(2, 4, t);
        // Lived long: respawned at once, quick deaths reset.
        let late = t + Duration::from_secs(5);
        assert_eq!(
            pool.exited(pid(100), late, true),
            Exit::Respawn {
                slot: 0,
                delay: Duration::ZERO,
                deaths: 0
            }
        );
        assert_eq!(pool.active(0), Some(0));
        assert_eq!(pool.due(late), [(0, 0)]);
        // Dies again and again right after starting: 0, 100, 200 ms...
        let mut now = late;
        for (deaths, delay) in [(1, 0), (2, 100), (3, 200), (4, 400)] {
            pool.started(0, 0, pid(200 + deaths), now);
            now += Duration::from_millis(10);
            let exit = pool.exited(pid(200 + deaths), now, true);
            assert_eq!(
                exit,
                Exit::Respawn {
                    slot: 0,
                    delay: Duration::from_millis(delay),
                    deaths: deaths as u32
                }
            );
            assert_eq!(pool.due(now).is_empty(), delay > 0);
            assert_eq!(pool.next_due(), Some(now + Duration::from_millis(delay)));
            now += Duration::from_millis(delay);
        }
        // The other slot was never touched.
        assert!(matches!(pool.life(1), Life::Running { pid: p, .. } if p == pid(101)));
    }

    #[test]
    fn during_a_stop_nothing_is_respawned_and_nothing_starts() {
        let t = Instant::now();
        let mut pool = running(2, 4, t);
        pool.plan_start(3, 1, t + Duration::from_secs(1));
        assert_eq!(pool.cancel_starts(), [3]);
        assert_eq!(pool.next_due(), None);
        assert_eq!(pool.exited(pid(100), t, false), Exit::Gone { slot: 0 });
        assert_eq!(pool.life(0), Life::Free);
        assert!(pool.due(t + Duration::from_secs(60)).is_empty());
        assert_eq!(pool.exited(pid(999), t, false), Exit::Unknown);
    }

    #[test]
    fn hup_plans_a_successor_for_every_position_and_retires_the_old_workers() {
        let t = Instant::now();
        let mut pool = running(2, 4, t);
        let (old, kept) = pool.replace_all(t, |_| true);
        assert_eq!(old, [pid(100), pid(101)]);
        assert!(kept.is_empty());
        assert_eq!(pool.due(t), [(2, 0), (3, 1)]);
        assert_eq!(pool.active(0), Some(2));
        assert_eq!(pool.active(1), Some(3));
        pool.started(2, 0, pid(102), t);
        pool.started(3, 1, pid(103), t);
        // The old ones end as retired, not respawned.
        assert_eq!(
            pool.exited(pid(100), t, true),
            Exit::Retired {
                slot: 0,
                closed: None
            }
        );
        assert!(pool.due(t + MAX_BACKOFF).is_empty());
        // With no free slot, a worker keeps running.
        let mut full = running(2, 2, t);
        let (old, kept) = full.replace_all(t, |_| true);
        assert!(old.is_empty());
        assert_eq!(kept, [0, 1]);
    }

    #[test]
    fn slots_an_old_master_still_uses_are_not_free() {
        let pool = Pool::new(vec![fd()], 4);
        assert_eq!(pool.free_slot(|i| i >= 2), Some(2));
        assert_eq!(pool.free_slot(|_| false), None);
    }

    #[test]
    fn max_requests_retirement_gets_a_successor_or_comes_back_in_place() {
        let t = Instant::now();
        let mut pool = running(1, 2, t);
        assert_eq!(
            pool.retiring(0, pid(100), true, t, Some(1)),
            Successor::Due { slot: 1 }
        );
        assert_eq!(pool.active(0), Some(1));
        // A second note from the same worker changes nothing.
        assert_eq!(pool.retiring(0, pid(100), true, t, None), Successor::None);
        pool.started(1, 0, pid(101), t);
        assert_eq!(
            pool.exited(pid(100), t, true),
            Exit::Retired {
                slot: 0,
                closed: None
            }
        );
        // No free slot: it stays, and is respawned when it exits.
        assert_eq!(
            pool.retiring(1, pid(101), true, t, None),
            Successor::InPlace
        );
        assert_eq!(pool.active(0), Some(1));
        assert!(matches!(
            pool.exited(pid(101), t, true),
            Exit::Respawn { slot: 1, .. }
        ));
        // A note from a pid no longer in its slot is stale.
        assert_eq!(
            pool.retiring(1, pid(101), true, t, Some(0)),
            Successor::None
        );
    }

    #[test]
    fn ttin_adds_a_position_reusing_a_closed_one_and_ttou_never_removes_the_last() {
        let t = Instant::now();
        let mut pool = running(2, 8, t);
        let slot = pool.free_slot(|_| true).unwrap();
        assert_eq!(pool.grow(fd(), slot, t), 2);
        pool.started(slot, 2, pid(102), t);
        assert_eq!(pool.size(), 3);
        // TTOU: the last position, drained by its worker, then closed.
        assert_eq!(pool.shrink(), Some((2, Some(pid(102)), None)));
        assert_eq!(pool.size(), 2);
        assert!(!pool.all_drained());
        assert_eq!(pool.drained(slot, pid(102), true), Some(2));
        assert!(pool.position(2).listeners.is_empty());
        assert_eq!(
            pool.exited(pid(102), t, true),
            Exit::Retired { slot, closed: None }
        );
        // The closed position is reused by the next TTIN.
        let slot = pool.free_slot(|_| true).unwrap();
        assert_eq!(pool.grow(fd(), slot, t), 2);
        // Down to one, and no further.
        pool.started(slot, 2, pid(103), t);
        assert!(pool.shrink().is_some());
        assert!(matches!(
            pool.exited(pid(103), t, true),
            Exit::Retired {
                closed: Some(2),
                ..
            }
        ));
        assert!(pool.shrink().is_some());
        assert_eq!(pool.shrink(), None);
        assert_eq!(pool.size(), 1);
    }

    #[test]
    fn a_position_without_a_worker_is_closed_at_once_by_ttou() {
        let t = Instant::now();
        let mut pool = running(2, 4, t);
        assert!(matches!(
            pool.exited(pid(101), t, true),
            Exit::Respawn { slot: 1, .. }
        ));
        // Its respawn is due, not running: the position goes now, and the respawn with it.
        assert_eq!(pool.shrink(), Some((1, None, Some(1))));
        assert!(pool.position(1).listeners.is_empty());
        assert!(pool.due(t + MAX_BACKOFF).is_empty());
    }

    #[test]
    fn a_graceful_stop_waits_for_every_worker_to_drain() {
        let t = Instant::now();
        let mut pool = running(2, 4, t);
        assert!(!pool.all_drained());
        assert_eq!(pool.drained(0, pid(100), false), None);
        assert!(!pool.all_drained());
        assert_eq!(pool.drained(1, pid(101), false), None);
        assert!(pool.all_drained());
        // A worker dying during the stop is simply gone.
        assert_eq!(pool.exited(pid(100), t, false), Exit::Gone { slot: 0 });
        assert_eq!(pool.children().count(), 1);
    }
}
