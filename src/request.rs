//! The context of a request, shared by what requests do ([`crate::session`]) and the services
//! ([`crate::services`]): a session's protocol state, the worker's request-handling state, the
//! provisional outcomes settled after the log write, and the effects a command leaves for the
//! worker. A leaf below both, so neither imports the other's internals.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::Settings;
use crate::listen::Protocol;
use crate::log::Batch;
use crate::output::Output;
use crate::penalty::Penalties;
use crate::protocol::Refusal;
use crate::scoreboard::Scoreboard;
use crate::services::chat::Hub;
use crate::token::ConnId;

/// A user name, stored inline (names are at most 32 bytes): logging in allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserName {
    len: u8,
    bytes: [u8; 32],
}

impl UserName {
    /// The longest name, bytes.
    pub const MAX: usize = 32;

    pub fn new(name: &str) -> UserName {
        let mut bytes = [0; 32];
        let len = name.len().min(32);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        UserName {
            len: len as u8,
            bytes,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

/// Protocol state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    /// Set by `USER` (or a legacy line).
    pub user: Option<UserName>,
    /// A line was read: the one-line form `<name>:<text>` is a command only before that.
    pub(crate) spoke: bool,
    /// `QUIT` was received: close once the reply is out.
    pub quitting: bool,
    /// A `MSG` whose simulated work is under way: its text, kept for the `completed` record.
    pub(crate) work: Option<Vec<u8>>,
    /// Buffer reused for the text of delayed `MSG`s.
    pub(crate) spare: Vec<u8>,
    /// Identifies the timer armed for `work`; stale timers do not match.
    pub(crate) timer: u64,
    /// Proved the name with `PASS`.
    pub passed: bool,
    /// Wrong secrets so far.
    pub(crate) pass_failures: u8,
    /// The client's address, whose wrong secrets are counted against it: the PROXY header's
    /// source, else the peer's (looked up at the first `PASS`).
    pub client: Option<IpAddr>,
    /// Processes started with `RUN` (made on first use).
    pub procs: Option<Box<crate::services::proctable::ProcTable>>,
    /// A member of the chat hub since this event (what came before was replayed at `JOIN`).
    pub chat: Option<u64>,
    /// The shell of a `SHELL` session: the connection now carries raw bytes.
    pub shell: Option<Box<crate::services::shell::Shell>>,
    /// What the connection's listener speaks.
    pub protocol: crate::listen::Protocol,
    /// The client's address and port, for the records of protocols without a login (the
    /// PROXY header's source, else the peer's).
    pub peer: Option<std::net::SocketAddr>,
    /// The `chat` protocol: where its member is in telnet's command syntax.
    pub telnet: crate::protocols::telnet::Telnet,
}

impl Session {
    /// True while a `MSG` waits for its timer: no further line of this session is processed.
    pub fn is_waiting(&self) -> bool {
        self.work.is_some()
    }
}

/// Something the worker must do after a command (it owns the epoll set and the tables that
/// span connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `RUN` started `pid` for this connection: reap it on its behalf.
    Spawned { pid: i32, conn: ConnId },
    /// The connection joined the chat hub.
    Joined(ConnId),
    /// The connection left the chat hub.
    Left(ConnId),
    /// The connection switched to a shell: watch its pty.
    ShellStarted(ConnId),
}

/// Where a provisional `MSG` outcome lives, to be settled after the log write.
#[derive(Debug)]
pub struct Ack {
    /// Connection table index and generation.
    pub conn: ConnId,
    /// End offset of this request's records in the batch.
    pub log_end: usize,
    /// What happens when the records are (or are not) written.
    pub kind: AckKind,
}

/// The two kinds of provisional outcome.
#[derive(Debug)]
pub enum AckKind {
    /// `recvd` and `completed` are in the batch and `OK ...` is at `out` in the output.
    Done { out_start: usize, out_end: usize },
    /// Only `recvd` is in the batch; the work timer is armed.
    Started,
}

/// A work timer: when it expires, `(conn index, timer id)` completes its `MSG`.
pub type Timer = Reverse<(Instant, usize, u64)>;

/// The worker's request-handling state besides the connections themselves: everything a
/// request may touch besides its own connection.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub board: &'a Scoreboard,
    /// The chat hub shared by all workers.
    pub hub: &'a Hub,
    /// Wrong `PASS` secrets per client address, shared by all workers.
    pub penalties: &'a Penalties,
    /// What the worker must do after the commands of this turn.
    pub effects: Vec<Effect>,
    /// This worker's pid, as text for records and greetings.
    pub pid: String,
    /// This worker's scoreboard slot.
    pub slot: usize,
    /// Records of this turn, written with one `write(2)` at its end.
    pub batch: Batch,
    /// Provisional `MSG` outcomes waiting for the batch to be written.
    pub acks: Vec<Ack>,
    /// Armed work timers.
    pub timers: BinaryHeap<Timer>,
    /// Requests already counted in this worker's slot.
    pub committed: u64,
    /// `Done` acks in the current batch (counted once the batch is written).
    pub provisional: u64,
    /// The server total at the start of this batch, read once per batch.
    pub base_total: Option<u64>,
    /// Source of timer ids.
    pub next_timer: u64,
    /// `ERR` replies given and not yet added to the slot.
    pub errors: u64,
    /// The time of this event-loop turn.
    pub now: Instant,
    /// Requests of the other protocols in this batch: where each one's record ends, and its
    /// protocol (counted once the batch is written that far).
    pub counted: Vec<(usize, Protocol)>,
    /// A sync of the log failed (`--sync`): `MSG` is refused until the log is reopened.
    pub sync_failed: bool,
}

impl<'a> Ctx<'a> {
    /// A fresh state for the worker with this pid, continuing `committed` requests.
    pub fn new(
        settings: &'a Settings,
        board: &'a Scoreboard,
        hub: &'a Hub,
        penalties: &'a Penalties,
        pid: String,
        slot: usize,
        committed: u64,
    ) -> Ctx<'a> {
        Ctx {
            settings,
            board,
            hub,
            penalties,
            effects: Vec::new(),
            pid,
            slot,
            batch: Batch::with_max_text(settings.max_log_text),
            acks: Vec::new(),
            timers: BinaryHeap::new(),
            committed,
            provisional: 0,
            base_total: None,
            next_timer: 0,
            errors: 0,
            now: Instant::now(),
            counted: Vec::new(),
            sync_failed: false,
        }
    }

    /// The record just added to the batch is one request of `protocol` (not cserver, whose
    /// requests are its `MSG`s).
    pub fn count(&mut self, protocol: Protocol) {
        self.counted.push((self.batch.len(), protocol));
    }
}

/// The parts of a connection a command works on (its input stays with the caller, which is
/// still reading the line the command borrows).
pub struct Parts<'c> {
    pub out: &'c mut Output,
    pub session: &'c mut Session,
    /// Table index and generation of the connection.
    pub id: ConnId,
}

/// What the caller should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next line.
    Continue,
    /// Stop processing this session's lines (waiting on work, or quitting).
    Stop,
}

/// Answers a refusal, counting it.
pub fn refuse(out: &mut Output, ctx: &mut Ctx<'_>, why: Refusal) {
    out.err(why);
    ctx.errors += 1;
}

/// `fmt::Write` over a byte buffer.
pub struct Text<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
