//! The master's part in moving idle sessions ([`crate::handoff`]): it holds its end of every
//! worker's channel, takes the sessions retiring workers send, and passes each to a serving
//! worker, round-robin (the rule new connections follow), so moved sessions spread over the
//! successors rather than pile on one. At a binary upgrade the two masters are joined by one
//! more channel: the old one passes its workers' sessions to the new one, which passes them
//! to its workers, or sends back those whose state its build cannot read.
//!
//! Every session sent is answered to the worker that sent it: a "passed" notice, or the
//! session itself, sent back because nobody could take it (the server is stopping, or no
//! worker serves within [`HOLD`]); the worker keeps that one until it ends or the stop
//! deadline. A worker does not exit while it waits for an answer, so no session is stranded;
//! one whose worker is gone all the same is told to reconnect. The master never reads or
//! writes a session otherwise, and reads of its state only the header (layout and sender).

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::handoff::{self, Received};
use crate::output::Output;
use crate::protocol::Refusal;

/// How long a session waits in the master for a serving worker (a successor being forked).
pub const HOLD: Duration = Duration::from_secs(2);

/// Who is at the other end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// One of this master's workers.
    Worker,
    /// The master this one took over from (a binary upgrade): its workers' sessions come
    /// from there, and go back there when this build cannot read them.
    Older,
    /// The master this one hands over to: this one's sessions go there.
    Newer,
}

/// A channel, the master's end.
struct End {
    /// The worker, or the other master.
    pid: Pid,
    peer: Peer,
    fd: OwnedFd,
    /// The other side has not taken what was sent: watched for room.
    full: bool,
    /// Sessions that came through this end and were passed on, by the worker they came from:
    /// the notice owed (sent as soon as there is room).
    owed: Vec<(i32, u32)>,
    /// The newer master said it takes sessions of this layout.
    hello: Option<u16>,
}

/// A session in transit.
struct Parcel {
    /// The end it came through.
    via: Pid,
    /// The layout of its state and the worker it came from (from the state's header).
    version: u16,
    origin: i32,
    fd: OwnedFd,
    state: Vec<u8>,
    since: Instant,
}

/// Every channel and the sessions between two workers.
#[derive(Default)]
pub(crate) struct Relay {
    ends: Vec<End>,
    queue: VecDeque<Parcel>,
    /// Where the round-robin goes on.
    next: usize,
}

/// What became of the sessions the master passed on in one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Passed {
    pub moved: usize,
    /// Sent back to the worker (or master) they came from.
    pub returned: usize,
    /// Their worker was gone: told to reconnect and closed.
    pub dropped: usize,
}

impl Relay {
    /// The channel of a worker just forked, or of the other master of an upgrade.
    pub fn add(&mut self, pid: Pid, peer: Peer, fd: OwnedFd) {
        self.ends.push(End {
            pid,
            peer,
            fd,
            full: false,
            owed: Vec::new(),
            hello: None,
        });
    }

    /// A worker exited (or the other master is gone): what it sent last is taken, then its
    /// end is closed (a session sent to it and not taken is closed by the kernel with the
    /// channel, as it would have been with the worker).
    pub fn remove(&mut self, pid: Pid, now: Instant) {
        if let Some(i) = self.ends.iter().position(|e| e.pid == pid) {
            let mut end = self.ends.remove(i);
            let mut taken = Vec::new();
            take_all(&mut end, &mut self.queue, &mut taken, now);
            self.credit(taken);
        }
    }

    /// Every end, to close in a new worker.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.ends.iter().map(|e| e.fd.as_raw_fd())
    }

    /// What to wait for: each end's messages, and room in the full ones.
    pub fn poll_fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, bool)> + '_ {
        self.ends.iter().map(|e| (e.fd.as_fd(), e.full))
    }

    /// The newer master, once it said it takes sessions of this build's layout.
    pub fn newer_master(&self) -> Option<Pid> {
        self.ends
            .iter()
            .find(|e| e.peer == Peer::Newer && e.hello == Some(handoff::VERSION))
            .map(|e| e.pid)
    }

    /// Nothing in transit: no session waiting and no notice owed.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.ends.iter().all(|e| e.owed.is_empty())
    }

    /// When the oldest session waiting for a worker is given up on.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue
            .front()
            .map(|p| crate::clock::after(p.since, HOLD))
    }

    /// Takes every message the workers and the other master sent.
    pub fn collect(&mut self, now: Instant) {
        let mut taken = Vec::new();
        let mut gone = Vec::new();
        for end in &mut self.ends {
            if take_all(end, &mut self.queue, &mut taken, now) && end.peer != Peer::Worker {
                // The other master exited (a worker's end goes when it is reaped).
                gone.push(end.pid);
            }
        }
        self.ends.retain(|e| !gone.contains(&e.pid));
        self.credit(taken);
    }

    /// Notices from the newer master: owed to the workers the sessions came from.
    fn credit(&mut self, taken: Vec<(i32, u32)>) {
        for (pid, n) in taken {
            if let Some(end) = self.ends.iter_mut().find(|e| e.pid.as_raw() == pid) {
                owe(&mut end.owed, pid, n);
            }
        }
    }

    /// Passes the waiting sessions to `serving` (the workers that take new connections, or the
    /// newer master during a hand-over; none while the server stops), round-robin, never back
    /// where they came from. Sessions the newer master sent back, or whose state this build
    /// cannot read, go back at once; one that finds no room anywhere waits; one that waited
    /// [`HOLD`], or finds nobody when `wait` is false, goes back. Then the notices owed.
    pub fn deliver(&mut self, serving: &[Pid], wait: bool, now: Instant) -> Passed {
        let mut passed = Passed::default();
        for end in &mut self.ends {
            end.full = false;
        }
        let mut kept = VecDeque::new();
        while let Some(parcel) = self.queue.pop_front() {
            let via = self.peer_of(parcel.via);
            let returned = via == Some(Peer::Newer);
            // From the older master: its build may write a layout this one's workers cannot
            // read. (This master's own workers write its own.)
            let unreadable = via == Some(Peer::Older) && parcel.version != handoff::VERSION;
            let attempt = match returned || unreadable {
                true => Err(parcel),
                false => self.pass(parcel, serving),
            };
            match attempt {
                Ok(()) => passed.moved += 1,
                Err(parcel)
                    if wait
                        && !returned
                        && !unreadable
                        && now < crate::clock::after(parcel.since, HOLD) =>
                {
                    kept.push_back(parcel)
                }
                Err(parcel) => match self.give_back(parcel) {
                    true => passed.returned += 1,
                    false => passed.dropped += 1,
                },
            }
        }
        self.queue = kept;
        self.send_notices();
        passed
    }

    fn peer_of(&self, pid: Pid) -> Option<Peer> {
        self.ends.iter().find(|e| e.pid == pid).map(|e| e.peer)
    }

    /// Sends `parcel` to the next of `serving` with room.
    fn pass(&mut self, parcel: Parcel, serving: &[Pid]) -> Result<(), Parcel> {
        let n = self.ends.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let end = &mut self.ends[i];
            if end.full || end.pid == parcel.via || !serving.contains(&end.pid) {
                continue;
            }
            match handoff::send(end.fd.as_fd(), parcel.fd.as_fd(), &parcel.state) {
                Ok(()) => {
                    // Taken modulo the number of ends where it is used.
                    self.next = i + 1;
                    // Taken by a worker: the sender is told. (Passed to the newer master, it
                    // is told when that one's worker has it, or gets it back.)
                    let taken = end.peer != Peer::Newer;
                    if let Some(home) = self.ends.iter_mut().find(|e| e.pid == parcel.via) {
                        if taken {
                            owe(&mut home.owed, parcel.origin, 1);
                        }
                    }
                    return Ok(());
                }
                // Full, or the worker is exiting: try another.
                Err(_) => end.full = true,
            }
        }
        Err(parcel)
    }

    /// Back where it came from: to its worker, or (from the older master, or returned by the
    /// newer one) towards its worker. If that is gone, the client is told to reconnect.
    fn give_back(&mut self, parcel: Parcel) -> bool {
        let home = match self.peer_of(parcel.via) {
            Some(Peer::Newer) | None => Pid::from_raw(parcel.origin),
            Some(_) => parcel.via,
        };
        if let Some(end) = self.ends.iter().find(|e| e.pid == home) {
            if handoff::send(end.fd.as_fd(), parcel.fd.as_fd(), &parcel.state).is_ok() {
                return true;
            }
        }
        let stream = TcpStream::from(parcel.fd);
        let mut out = Output::default();
        out.err(Refusal::Replaced);
        let _ = (&stream).write(&out.buf);
        false
    }

    /// The "passed" notices owed, where there is room (the rest at the next round; an end
    /// whose other side is gone goes with its owed notices when it is removed).
    fn send_notices(&mut self) {
        for end in &mut self.ends {
            if end.owed.is_empty() {
                continue;
            }
            match handoff::send_passed(end.fd.as_fd(), &end.owed) {
                Ok(()) => end.owed.clear(),
                Err(_) => end.full = true,
            }
        }
    }
}

fn owe(owed: &mut Vec<(i32, u32)>, origin: i32, n: u32) {
    match owed.iter_mut().find(|(pid, _)| *pid == origin) {
        Some((_, count)) => *count += n,
        None => owed.push((origin, n)),
    }
}

/// Queues every session waiting in `end`; notices go to `taken`. True if the other side
/// is gone.
fn take_all(
    end: &mut End,
    queue: &mut VecDeque<Parcel>,
    taken: &mut Vec<(i32, u32)>,
    now: Instant,
) -> bool {
    loop {
        match handoff::recv(end.fd.as_fd()) {
            Ok(Some(Received::Session(fd, state))) => {
                // A state without a header cannot be routed or read: it goes back (version 0).
                let (version, origin) = handoff::header(&state).unwrap_or((0, end.pid.as_raw()));
                queue.push_back(Parcel {
                    via: end.pid,
                    version,
                    origin,
                    fd,
                    state,
                    since: now,
                })
            }
            // Only the newer master answers this master with notices (a worker's would be
            // about other workers' sessions).
            Ok(Some(Received::Passed(counts))) if end.peer == Peer::Newer => taken.extend(counts),
            // What it says matters only from the newer master (see `newer_master`).
            Ok(Some(Received::Hello(version))) => end.hello = Some(version),
            Ok(Some(Received::Garbled | Received::Passed(_))) => {}
            Ok(Some(Received::Closed)) | Err(_) => return true,
            Ok(None) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::Moved;
    use crate::listen::Protocol;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// A worker's (or the other master's) end of a channel the relay holds the other end of.
    fn joined(relay: &mut Relay, pid: i32, peer: Peer) -> OwnedFd {
        let (master, other) = handoff::channel().unwrap();
        relay.add(Pid::from_raw(pid), peer, master);
        other
    }

    fn worker(relay: &mut Relay, pid: i32) -> OwnedFd {
        joined(relay, pid, Peer::Worker)
    }

    /// A state from worker `from`, told apart by its idle time (`tag` ms).
    fn state(from: i32, tag: u8) -> Vec<u8> {
        Moved {
            from_pid: from,
            from_conn: 0,
            from_generation: 0,
            protocol: Protocol::Cserver,
            user: None,
            passed: false,
            spoke: false,
            pass_failures: 0,
            client: None,
            peer: None,
            chat: None,
            hub: 0,
            idle_left: Duration::from_millis(tag.into()),
            procs: Vec::new(),
        }
        .encode()
    }

    /// Sends a session (one end of a socket pair) through `via`; returns the client's end.
    fn send_session(via: &OwnedFd, from: i32, tag: u8) -> UnixStream {
        send_state(via, &state(from, tag))
    }

    fn send_state(via: &OwnedFd, state: &[u8]) -> UnixStream {
        let (client, server) = UnixStream::pair().unwrap();
        handoff::send(via.as_fd(), server.as_fd(), state).unwrap();
        client
    }

    /// The sessions waiting at an end (tags), and the notices' counts by worker.
    fn received_and_passed(at: &OwnedFd) -> (Vec<u8>, Vec<(i32, u32)>) {
        let mut tags = Vec::new();
        let mut passed = Vec::new();
        loop {
            match handoff::recv(at.as_fd()).unwrap() {
                Some(Received::Session(_, state)) => {
                    let moved = Moved::decode(&state).unwrap();
                    tags.push(moved.idle_left.as_millis() as u8);
                }
                Some(Received::Passed(counts)) => passed.extend(counts),
                _ => return (tags, passed),
            }
        }
    }

    /// Carries the session waiting at `from` on through `to` (one master to the other).
    fn forward(from: &OwnedFd, to: &OwnedFd, missing: &str) {
        let Some(Received::Session(fd, bytes)) = handoff::recv(from.as_fd()).unwrap() else {
            panic!("{missing}");
        };
        handoff::send(to.as_fd(), fd.as_fd(), &bytes).unwrap();
    }

    fn received(at: &OwnedFd) -> Vec<u8> {
        received_and_passed(at).0
    }

    #[test]
    fn sessions_spread_round_robin_never_back_to_the_sender() {
        let mut relay = Relay::default();
        let old = worker(&mut relay, 10);
        let a = worker(&mut relay, 11);
        let b = worker(&mut relay, 12);
        let _clients: Vec<_> = (0..6).map(|t| send_session(&old, 10, t)).collect();
        let now = Instant::now();
        relay.collect(now);
        // The sender among the serving ones too (its "retiring" note not read yet): never
        // back to it.
        let serving = [Pid::from_raw(10), Pid::from_raw(11), Pid::from_raw(12)];
        let passed = relay.deliver(&serving, true, now);
        assert_eq!(passed.moved, 6);
        assert_eq!(received(&a), vec![0, 2, 4]);
        assert_eq!(received(&b), vec![1, 3, 5]);
        // A worker cannot say another worker's sessions were passed on.
        handoff::send_passed(a.as_fd(), &[(12, 1)]).unwrap();
        relay.collect(now);
        relay.deliver(&serving, true, now);
        assert_eq!(received_and_passed(&b), (vec![], vec![]));
        assert_eq!(
            received_and_passed(&old),
            (vec![], vec![(10, 6)]),
            "one notice for the six"
        );
        assert_eq!(relay.next_due(), None, "nothing waits");
        assert!(relay.is_idle());
    }

    #[test]
    fn with_nobody_serving_a_session_waits_then_goes_back() {
        let mut relay = Relay::default();
        let old = worker(&mut relay, 10);
        let _client = send_session(&old, 10, 7);
        let now = Instant::now();
        relay.collect(now);
        let passed = relay.deliver(&[], true, now);
        assert_eq!(passed, Passed::default(), "waits for a successor");
        assert_eq!(relay.next_due(), Some(crate::clock::after(now, HOLD)));
        assert!(!relay.is_idle());
        // A successor appears in time: it gets the session.
        let new = worker(&mut relay, 20);
        let passed = relay.deliver(&[Pid::from_raw(20)], true, now);
        assert_eq!(passed.moved, 1);
        assert_eq!(received(&new), vec![7]);
        // Another one finds nobody for HOLD: back where it came from.
        let _client = send_session(&old, 10, 8);
        relay.collect(now);
        let later = crate::clock::after(now, HOLD);
        let passed = relay.deliver(&[], true, later);
        assert_eq!(passed.returned, 1);
        assert_eq!(
            received_and_passed(&old),
            (vec![8], vec![(10, 1)]),
            "7 was passed on, 8 came back"
        );
        // At a stop nothing waits.
        let _client = send_session(&old, 10, 9);
        relay.collect(now);
        assert_eq!(relay.deliver(&[Pid::from_raw(20)], false, now).moved, 1);
        let _client = send_session(&old, 10, 10);
        relay.collect(now);
        assert_eq!(relay.deliver(&[], false, now).returned, 1);
        assert_eq!(received(&old), vec![10]);
    }

    #[test]
    fn a_session_whose_worker_is_gone_is_told_to_reconnect() {
        let mut relay = Relay::default();
        let old = worker(&mut relay, 10);
        let mut client = send_session(&old, 10, 1);
        let now = Instant::now();
        // Sent just before it exited: taken as its end is closed.
        relay.remove(Pid::from_raw(10), now);
        assert_eq!(relay.deliver(&[], false, now).dropped, 1);
        let mut said = String::new();
        client.read_to_string(&mut said).unwrap();
        assert_eq!(said, "ERR 503 server reloading; reconnect\n");
    }

    #[test]
    fn at_an_upgrade_sessions_go_to_the_newer_master_and_come_back_if_refused() {
        // The old master: its worker 10, the new master 50.
        let mut old = Relay::default();
        let w10 = worker(&mut old, 10);
        let to_new = joined(&mut old, 50, Peer::Newer);
        // The new master: the old one 40 on one side, its worker 51.
        let mut new = Relay::default();
        let from_old = joined(&mut new, 40, Peer::Older);
        let w51 = worker(&mut new, 51);
        let now = Instant::now();
        // Not before the new master says it takes sessions of this layout.
        old.collect(now);
        assert_eq!(old.newer_master(), None);
        handoff::send_hello(to_new.as_fd()).unwrap();
        old.collect(now);
        assert_eq!(old.newer_master(), Some(Pid::from_raw(50)));

        let _a = send_session(&w10, 10, 1);
        old.collect(now);
        assert_eq!(old.deliver(&[Pid::from_raw(50)], true, now).moved, 1);
        // The new master reads it from the old one (as its end sees it) and passes it on.
        forward(&to_new, &from_old, "nothing reached the new master");
        new.collect(now);
        assert_eq!(new.deliver(&[Pid::from_raw(51)], true, now).moved, 1);
        assert_eq!(received(&w51), vec![1]);
        // Its notice names the old worker; the old master passes it on to it.
        let Some(Received::Passed(counts)) = handoff::recv(from_old.as_fd()).unwrap() else {
            panic!("no notice for the old master");
        };
        assert_eq!(counts, vec![(10, 1)]);
        handoff::send_passed(to_new.as_fd(), &counts).unwrap();
        old.collect(now);
        old.deliver(&[Pid::from_raw(50)], true, now);
        assert_eq!(received_and_passed(&w10), (vec![], vec![(10, 1)]));

        // A state of another layout: the new master sends it straight back, and the old one
        // back to its worker, which keeps the session.
        let mut other = state(10, 2);
        other[4..6].copy_from_slice(&(handoff::VERSION + 1).to_le_bytes());
        let _b = send_state(&w10, &other);
        old.collect(now);
        assert_eq!(old.deliver(&[Pid::from_raw(50)], true, now).moved, 1);
        forward(&to_new, &from_old, "nothing reached the new master");
        new.collect(now);
        assert_eq!(new.deliver(&[Pid::from_raw(51)], true, now).returned, 1);
        assert!(received(&w51).is_empty());
        forward(&from_old, &to_new, "the new master did not send it back");
        old.collect(now);
        assert_eq!(old.deliver(&[Pid::from_raw(50)], true, now).returned, 1);
        let Some(Received::Session(_, back)) = handoff::recv(w10.as_fd()).unwrap() else {
            panic!("the old worker did not get it back");
        };
        assert_eq!(back, other);

        // The new master gone: nothing more goes there; a worker's end stays until its reaping.
        drop(to_new);
        drop(w10);
        old.collect(now);
        assert_eq!(old.newer_master(), None);
        assert_eq!(old.fds().count(), 1, "the worker's end only");
    }
}
