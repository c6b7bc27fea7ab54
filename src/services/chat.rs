//! The chat hub (`JOIN`, `SAY`, `LEAVE`) across workers, with no broker process.
//!
//! The master maps a shared ring of recent events before it forks and makes one eventfd. A
//! worker posting an event reserves a sequence number, writes the entry, publishes it (a
//! seqlock: readers check the number before and after copying), then writes the eventfd. Every
//! worker has the eventfd in its epoll set, edge-triggered, so every write wakes every worker;
//! each one delivers the new events to its own members. Nobody ever reads the eventfd: epoll
//! reports an edge only if the counter is non-zero when the waiter collects it, so one worker
//! resetting it would swallow the others' wake-ups. (At one post per nanosecond the 64-bit
//! counter would fill in 580 years.) The ring keeps more than the last 100
//! messages, which a `JOIN` replays.
//!
//! Everything in the shared ring is an atomic word, so copying to and from it is defined
//! behaviour however other processes race with it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::log::{never_raw, push_hex, push_hex_utf8};

/// Messages a `JOIN` replays.
pub const HISTORY: usize = 100;
/// Entries in the ring (more than `HISTORY`: joins and leaves take entries too).
const RING: usize = 256;
/// Longest `SAY` text, bytes.
pub const TEXT_MAX: usize = 1000;
const WORDS: usize = (32 + TEXT_MAX).div_ceil(8);
/// An entry being written.
const WRITING: u64 = u64::MAX;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Say = 1,
    Join = 2,
    Leave = 3,
    /// Left because it would not read (its buffer filled up).
    Dropped = 4,
    /// Took another name (the `chat` protocol's `/nick`): the user is the new name, the text
    /// the old one.
    Nick = 5,
}

/// Who posted an event: a connection of a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub pid: u32,
    pub conn: u32,
    pub generation: u32,
}

#[repr(C)]
struct Entry {
    seq: AtomicU64,
    /// kind (8 bits) | user length (8) | text length (16)
    meta: AtomicU64,
    /// pid (32) | connection index (32)
    origin: AtomicU64,
    generation: AtomicU64,
    /// The user name (32 bytes) then the text.
    words: [AtomicU64; WORDS],
}

/// What the first word of a hub's memory says: this layout (a new master adopts an old one's
/// hub only if it says the same).
const LAYOUT: u64 = u64::from_le_bytes(*b"cschat01");

#[repr(C)]
struct Shared {
    /// [`LAYOUT`].
    layout: AtomicU64,
    /// Tells this hub from any other (sequence numbers mean something in one hub only).
    id: AtomicU64,
    /// The next sequence number to hand out (starts at 1).
    head: AtomicU64,
    /// Guests (members of the `chat` protocol) named so far: each gets the next number.
    guests: AtomicU64,
    entries: [Entry; RING],
}

/// What reading one sequence number of the ring gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The event.
    Event(Event),
    /// Not written yet (its writer is still at it): try again at the next wake-up.
    NotYet,
    /// Overwritten (more than the ring behind): lost for this reader.
    Lost,
}

/// How long an entry may stay unpublished while later ones are handed out before a reader
/// skips it: its writer was killed half-way and never will publish it.
pub const STUCK: Duration = Duration::from_millis(200);

/// How far behind the head an entry still being written moves a join's start back (one whose
/// writer was killed half-way stays unwritten; past this many later posts it is ignored).
const JOIN_WINDOW: u64 = 64;

/// A reader's place in the ring: the next sequence number it has not delivered, and since when
/// that entry has been reserved but not published.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    next: u64,
    stuck_since: Option<(u64, Instant)>,
}

impl Cursor {
    /// A reader that starts with the next event posted.
    pub fn at_head(hub: &Hub) -> Cursor {
        Cursor {
            next: hub.head(),
            stuck_since: None,
        }
    }

    /// The first sequence number not delivered yet.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next event to deliver, if one is published. Skips events the ring overwrote before
    /// this reader got to them, and an entry whose writer has not published it `STUCK` after
    /// this reader first found it reserved; an entry being written is otherwise waited for
    /// (its writer's wake-up brings the reader back).
    pub fn next(&mut self, hub: &Hub, now: Instant) -> Option<Event> {
        loop {
            let seq = self.next;
            match hub.read(seq) {
                Read::Event(e) => {
                    self.next += 1;
                    return Some(e);
                }
                Read::Lost => self.next += 1,
                Read::NotYet if hub.head() <= seq => return None, // nothing posted yet
                Read::NotYet => match self.stuck_since {
                    Some((s, since)) if s == seq && now.duration_since(since) > STUCK => {
                        self.stuck_since = None;
                        self.next += 1;
                    }
                    Some((s, _)) if s == seq => return None,
                    _ => {
                        self.stuck_since = Some((seq, now));
                        return None;
                    }
                },
            }
        }
    }
}

/// An event read from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub kind: Kind,
    pub origin: Origin,
    pub user: String,
    pub text: Vec<u8>,
}

impl Event {
    /// The `* ` line members see (delivered as it happens, and replayed by `JOIN`).
    pub fn line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"* ");
        out.extend_from_slice(self.user.as_bytes());
        match self.kind {
            Kind::Say => {
                out.extend_from_slice(b": ");
                push_shown(out, &self.text);
            }
            Kind::Join => out.extend_from_slice(b" joined"),
            Kind::Leave => out.extend_from_slice(b" left"),
            Kind::Dropped => out.extend_from_slice(b" left (dropped: not reading)"),
            Kind::Nick => {
                out.extend_from_slice(b" (was ");
                push_shown(out, &self.text);
                out.push(b')');
            }
        }
        out.push(b'\n');
    }

    /// The line a member of the `chat` protocol sees, as the seed's users saw them:
    /// `<id>: <text>`, `<id> connected!`, `<id> disconnected!`; ended with `end`.
    pub fn plain_line(&self, out: &mut Vec<u8>, end: &[u8]) {
        match self.kind {
            Kind::Nick => {
                push_shown(out, &self.text);
                out.extend_from_slice(b" is now known as ");
                out.extend_from_slice(self.user.as_bytes());
            }
            _ => {
                out.extend_from_slice(self.user.as_bytes());
                match self.kind {
                    Kind::Say => {
                        out.extend_from_slice(b": ");
                        push_shown(out, &self.text);
                    }
                    Kind::Join => out.extend_from_slice(b" connected!"),
                    Kind::Leave | Kind::Dropped | Kind::Nick => {
                        out.extend_from_slice(b" disconnected!")
                    }
                }
            }
        }
        out.extend_from_slice(end);
    }
}

/// Appends a member's text as the other members' terminals receive it: every control character
/// but TAB (C0, DEL, C1), U+2028, U+2029 and every byte that is not UTF-8 as `\xHH`, one per
/// byte, so no member can send another's terminal an escape sequence, a carriage return that
/// overwrites the line, a NUL, or an 8-bit command such as CSI (U+009B). Everything else, a
/// backslash included, is shown as it was typed.
pub fn push_shown(out: &mut Vec<u8>, text: &[u8]) {
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c != '\t' && never_raw(c) {
                push_hex_utf8(out, c);
            } else {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        for &b in chunk.invalid() {
            push_hex(out, b);
        }
    }
}

/// The hub: the shared ring and the wake-up eventfd. Made by the master before forking.
pub struct Hub {
    shared: *mut Shared,
    wake: EventFd,
    /// The memory the ring lives in (a memfd): handed to a new master at a binary upgrade,
    /// so that both generations of workers share one hub.
    memory: OwnedFd,
}

impl Hub {
    /// Maps a new ring (shared: inherited by every worker forked afterwards).
    pub fn create() -> io::Result<Hub> {
        let memory = crate::sys::memfd("cserverd-chat", std::mem::size_of::<Shared>())?;
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        // Zero-filled is a valid `Shared` (all atomics at 0). It is never unmapped while a
        // process uses the Hub (see Drop).
        let hub = Hub::map(memory, wake)?;
        let shared = hub.shared();
        shared.id.store(crate::sys::random_u64(), Ordering::Relaxed);
        shared.head.store(1, Ordering::Relaxed);
        shared.layout.store(LAYOUT, Ordering::Release);
        Ok(hub)
    }

    /// The hub an old master handed over at a binary upgrade (its memory and eventfd), if it
    /// has this build's layout.
    pub fn adopt(memory: OwnedFd, wake: OwnedFd) -> io::Result<Hub> {
        let size = nix::sys::stat::fstat(&memory)?.st_size;
        if size != std::mem::size_of::<Shared>() as i64 {
            return Err(io::Error::other(format!(
                "the old master's chat hub is {size} bytes, this build's {}",
                std::mem::size_of::<Shared>()
            )));
        }
        // SAFETY: handed to us open by the old master: an eventfd, ours to own.
        let wake = unsafe { EventFd::from_owned_fd(wake) };
        let hub = Hub::map(memory, wake)?;
        if hub.shared().layout.load(Ordering::Acquire) != LAYOUT {
            return Err(io::Error::other(
                "the old master's chat hub has another layout",
            ));
        }
        Ok(hub)
    }

    fn map(memory: OwnedFd, wake: EventFd) -> io::Result<Hub> {
        let shared = crate::sys::map_shared_fd(memory.as_fd(), std::mem::size_of::<Shared>())?
            .cast::<Shared>()
            .as_ptr();
        Ok(Hub {
            shared,
            wake,
            memory,
        })
    }

    /// Its memory and eventfd, for a new master.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.memory.as_fd(), self.wake.as_fd()]
    }

    /// This hub's identity.
    pub fn id(&self) -> u64 {
        self.shared().id.load(Ordering::Relaxed)
    }

    fn shared(&self) -> &Shared {
        // SAFETY: `shared` points at a live mapping of a `Shared` for the Hub's lifetime.
        unsafe { &*self.shared }
    }

    /// The eventfd to register (edge-triggered) in a worker's epoll set.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The sequence number the next event will get: a new member starts reading there.
    pub fn head(&self) -> u64 {
        self.shared().head.load(Ordering::Acquire)
    }

    /// Where a member joining now starts: the first entry another worker is still writing
    /// (among the last `JOIN_WINDOW`), else the head. What comes before is its history; from
    /// there on events are delivered to it live. With the head alone, an event reserved just
    /// before the join and published just after was in neither: skipped by the history as
    /// unwritten, then by the delivery as older than the join.
    pub fn joined_at(&self) -> u64 {
        let head = self.head();
        let from = head.saturating_sub(JOIN_WINDOW).max(1);
        (from..head)
            .find(|&s| self.read(s) == Read::NotYet)
            .unwrap_or(head)
    }

    /// Appends an event and wakes every worker. `text` longer than `TEXT_MAX` is cut.
    pub fn post(&self, kind: Kind, origin: Origin, user: &str, text: &[u8]) -> u64 {
        let shared = self.shared();
        let seq = shared.head.fetch_add(1, Ordering::AcqRel);
        let e = &shared.entries[(seq as usize) % RING];
        e.seq.store(WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        let user = &user.as_bytes()[..user.len().min(32)];
        let text = &text[..text.len().min(TEXT_MAX)];
        e.meta.store(
            (kind as u64) << 24 | (user.len() as u64) << 16 | text.len() as u64,
            Ordering::Relaxed,
        );
        e.origin.store(
            (origin.pid as u64) << 32 | origin.conn as u64,
            Ordering::Relaxed,
        );
        e.generation
            .store(origin.generation as u64, Ordering::Relaxed);
        let mut bytes = [0u8; WORDS * 8];
        bytes[..user.len()].copy_from_slice(user);
        bytes[32..32 + text.len()].copy_from_slice(text);
        for (w, chunk) in e.words.iter().zip(bytes.chunks_exact(8)) {
            w.store(
                u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])),
                Ordering::Relaxed,
            );
        }
        e.seq.store(seq, Ordering::Release);
        // Wakes every epoll set the eventfd is in (each write is an edge).
        let _ = self.wake.write(1);
        seq
    }

    /// Reads event `seq`.
    pub fn read(&self, seq: u64) -> Read {
        let e = &self.shared().entries[(seq as usize) % RING];
        let before = e.seq.load(Ordering::Acquire);
        if before == WRITING || before < seq {
            // Not yet written; or, if the writer died, skipped once it is far behind.
            return if self.head() > seq + RING as u64 / 2 {
                Read::Lost
            } else {
                Read::NotYet
            };
        }
        if before != seq {
            return Read::Lost;
        }
        let meta = e.meta.load(Ordering::Relaxed);
        let origin = e.origin.load(Ordering::Relaxed);
        let generation = e.generation.load(Ordering::Relaxed);
        let mut bytes = [0u8; WORDS * 8];
        for (w, chunk) in e.words.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != seq {
            return Read::Lost; // overwritten while copying
        }
        let kind = match meta >> 24 & 0xff {
            1 => Kind::Say,
            2 => Kind::Join,
            3 => Kind::Leave,
            5 => Kind::Nick,
            _ => Kind::Dropped,
        };
        let ulen = ((meta >> 16) & 0xff) as usize;
        let tlen = ((meta & 0xffff) as usize).min(TEXT_MAX);
        Read::Event(Event {
            seq,
            kind,
            origin: Origin {
                pid: (origin >> 32) as u32,
                conn: origin as u32,
                generation: generation as u32,
            },
            user: String::from_utf8_lossy(&bytes[..ulen.min(32)]).into_owned(),
            text: bytes[32..32 + tlen].to_vec(),
        })
    }

    /// The last `HISTORY` `SAY` messages before `until`, oldest first (for a `JOIN`).
    pub fn recent(&self, until: u64) -> Vec<Event> {
        self.last_events(until, |e| e.kind == Kind::Say)
    }

    /// The last `HISTORY` events of every kind before `until`, oldest first (what a newcomer of
    /// the `chat` protocol is shown, as the seed showed its history: notices included).
    pub fn recent_all(&self, until: u64) -> Vec<Event> {
        self.last_events(until, |_| true)
    }

    fn last_events(&self, until: u64, wanted: impl Fn(&Event) -> bool) -> Vec<Event> {
        let from = until.saturating_sub(RING as u64).max(1);
        let mut events: Vec<Event> = (from..until)
            .filter_map(|s| match self.read(s) {
                Read::Event(e) => Some(e),
                _ => None,
            })
            .filter(|e| wanted(e))
            .collect();
        let skip = events.len().saturating_sub(HISTORY);
        events.drain(..skip);
        events
    }

    /// A new guest's number (1, 2, ...), unique across the workers of this master.
    pub fn next_guest(&self) -> u64 {
        self.shared().guests.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `create` with this length and is not used after.
        unsafe {
            if let Some(ptr) = std::ptr::NonNull::new(self.shared.cast::<u8>()) {
                crate::sys::unmap_shared(ptr, std::mem::size_of::<Shared>());
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(pid: u32) -> Origin {
        Origin {
            pid,
            conn: 7,
            generation: 3,
        }
    }

    #[test]
    fn events_round_trip_and_recent_keeps_the_last_hundred_messages() {
        let hub = Hub::create().unwrap();
        let first = hub.head();
        let s = hub.post(Kind::Join, origin(1), "ari", b"");
        assert_eq!(s, first);
        for i in 0..150 {
            hub.post(
                Kind::Say,
                origin(2),
                "bob",
                format!("message {i}").as_bytes(),
            );
        }
        let Read::Event(e) = hub.read(s) else {
            panic!("no event")
        };
        assert_eq!(
            (e.kind, e.user.as_str(), e.origin),
            (Kind::Join, "ari", origin(1))
        );
        let recent = hub.recent(hub.head());
        assert_eq!(recent.len(), HISTORY);
        assert_eq!(recent[0].text, b"message 50");
        assert_eq!(recent[99].text, b"message 149");
        let mut line = Vec::new();
        recent[99].line(&mut line);
        assert_eq!(line, b"* bob: message 149\n");
        assert_eq!(hub.read(hub.head()), Read::NotYet, "not written yet");
    }

    /// A writer killed after reserving its entry and before publishing it.
    fn reserve_and_die(hub: &Hub) -> u64 {
        hub.shared().head.fetch_add(1, Ordering::AcqRel)
    }

    #[test]
    fn a_cursor_delivers_in_order_and_waits_for_what_is_not_posted() {
        let hub = Hub::create().unwrap();
        let mut c = Cursor::at_head(&hub);
        let t = Instant::now();
        assert!(c.next(&hub, t).is_none());
        let a = hub.post(Kind::Say, origin(1), "ari", b"one");
        let b = hub.post(Kind::Say, origin(1), "ari", b"two");
        // Long after the last look: an entry not posted yet is never taken for a stuck one.
        let later = t + STUCK * 10;
        assert_eq!(c.next(&hub, later).map(|e| e.seq), Some(a));
        assert_eq!(c.next(&hub, later).map(|e| e.seq), Some(b));
        assert!(c.next(&hub, later).is_none());
        assert_eq!(c.next_seq(), b + 1);
        let d = hub.post(Kind::Say, origin(1), "ari", b"three");
        assert_eq!(c.next(&hub, later + STUCK * 10).map(|e| e.seq), Some(d));
    }

    #[test]
    fn a_cursor_waits_for_an_entry_being_written_then_skips_it_once_stuck() {
        let hub = Hub::create().unwrap();
        let mut c = Cursor::at_head(&hub);
        let t = Instant::now();
        let dead = reserve_and_die(&hub);
        let after = hub.post(Kind::Say, origin(2), "bob", b"after");
        // Reserved, not published: waited for, up to STUCK from when this reader first saw it.
        assert!(c.next(&hub, t).is_none());
        assert!(c.next(&hub, t + STUCK / 2).is_none());
        assert!(c.next(&hub, t + STUCK).is_none());
        assert_eq!(c.next_seq(), dead);
        // Past it: skipped, and the later event delivered.
        assert_eq!(c.next(&hub, t + STUCK * 2).map(|e| e.seq), Some(after));
        assert_eq!(c.next_seq(), after + 1);
        // The clock starts again for the next stuck entry.
        let t2 = t + STUCK * 3;
        let dead2 = reserve_and_die(&hub);
        let last = hub.post(Kind::Say, origin(2), "bob", b"last");
        assert!(c.next(&hub, t2).is_none());
        assert!(c.next(&hub, t2 + STUCK / 2).is_none());
        assert_eq!(c.next_seq(), dead2);
        assert_eq!(c.next(&hub, t2 + STUCK * 2).map(|e| e.seq), Some(last));
    }

    #[test]
    fn a_join_starts_at_an_entry_still_being_written() {
        let hub = Hub::create().unwrap();
        hub.post(Kind::Say, origin(1), "ari", b"before");
        assert_eq!(
            hub.joined_at(),
            hub.head(),
            "nothing being written: the head"
        );
        // Another worker has reserved an entry and not yet published it; a later one is out.
        let writing = reserve_and_die(&hub);
        hub.post(Kind::Say, origin(2), "bob", b"after");
        assert_eq!(hub.joined_at(), writing);
        // The history stops before it; the live delivery takes it and what follows.
        let history = hub.recent(hub.joined_at());
        assert_eq!(history.last().unwrap().text, b"before");
        // A writer that died: once far enough behind, it no longer holds joins back.
        for i in 0..JOIN_WINDOW {
            hub.post(Kind::Say, origin(2), "bob", format!("{i}").as_bytes());
        }
        assert_eq!(hub.joined_at(), hub.head());
    }

    #[test]
    fn a_cursor_skips_what_the_ring_overwrote() {
        let hub = Hub::create().unwrap();
        let mut c = Cursor::at_head(&hub);
        let first = hub.head();
        for i in 0..RING + 10 {
            hub.post(Kind::Say, origin(1), "ari", format!("m{i}").as_bytes());
        }
        // The first ten were overwritten: the reader goes on from the oldest still there.
        let e = c.next(&hub, Instant::now()).unwrap();
        assert_eq!(e.seq, first + 10);
        assert_eq!(e.text, b"m10");
    }

    #[test]
    fn members_see_control_characters_as_hex() {
        let shown = |text: &[u8]| {
            let mut out = Vec::new();
            push_shown(&mut out, text);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            shown(b"a\x1b[2Jb\rc\x00d\x7f"),
            "a\\x1b[2Jb\\x0dc\\x00d\\x7f"
        );
        assert_eq!(
            shown("x\u{9b}31m\u{85}\u{2028}\u{2029}y".as_bytes()),
            "x\\xc2\\x9b31m\\xc2\\x85\\xe2\\x80\\xa8\\xe2\\x80\\xa9y"
        );
        assert_eq!(shown(b"bad \xff\x9b utf-8"), "bad \\xff\\x9b utf-8");
        // Tabs, backslashes, quotes and the rest of Unicode as typed.
        assert_eq!(
            shown("a\tb \\x1b \"c\" caf\u{e9} \u{a0}\u{2027}".as_bytes()),
            "a\tb \\x1b \"c\" caf\u{e9} \u{a0}\u{2027}"
        );

        let hub = Hub::create().unwrap();
        let s = hub.post(Kind::Say, origin(1), "eve", b"\x1b]0;owned\x07\r");
        let Read::Event(e) = hub.read(s) else {
            panic!("no event")
        };
        let mut line = Vec::new();
        e.line(&mut line);
        assert_eq!(line, b"* eve: \\x1b]0;owned\\x07\\x0d\n");
    }

    #[test]
    fn a_lapped_entry_is_reported_lost_and_text_is_cut() {
        let hub = Hub::create().unwrap();
        let s = hub.post(Kind::Say, origin(1), "ari", &[b'x'; 5000]);
        let Read::Event(e) = hub.read(s) else {
            panic!("no event")
        };
        assert_eq!(e.text.len(), TEXT_MAX);
        for _ in 0..RING {
            hub.post(Kind::Say, origin(1), "ari", b"y");
        }
        assert_eq!(hub.read(s), Read::Lost);
    }
}
