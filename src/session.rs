//! What a request does: a session's protocol state and [`apply`], which turns a [`Command`] into
//! log records, counters and a reply.
//!
//! The promise kept here: a `MSG` is acknowledged only after its records are in the log. Replies
//! to `MSG` are therefore written into the connection's output *provisionally*, with an [`Ack`]
//! naming where the records end in this turn's log batch and where the reply sits in the output.
//! When the worker has written the batch, [`settle`] keeps the replies whose records reached the
//! file and turns the others into `ERR 503`, before any byte goes to a client.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::connection::{Conn, Output};
use crate::log::{push_u64, Batch};
use crate::protocol::{Command, Refusal, HELP, VERSION};
use crate::scoreboard::Scoreboard;
use crate::services::{self, chat::Hub};
use crate::token::ConnId;

/// A user name, stored inline (names are at most 32 bytes): logging in allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserName {
    len: u8,
    bytes: [u8; 32],
}

impl UserName {
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
    /// `QUIT` was received: close once the reply is out.
    pub quitting: bool,
    /// A `MSG` whose simulated work is under way: its text, kept for the `completed` record.
    work: Option<Vec<u8>>,
    /// Buffer reused for the text of delayed `MSG`s.
    spare: Vec<u8>,
    /// Identifies the timer armed for `work`; stale timers do not match.
    timer: u64,
    /// Proved the name with `PASS`.
    pub passed: bool,
    /// Wrong secrets so far.
    pass_failures: u8,
    /// Processes started with `RUN` (made on first use).
    pub procs: Option<Box<crate::services::proctable::ProcTable>>,
    /// A member of the chat hub since this event (what came before was replayed at `JOIN`).
    pub chat: Option<u64>,
    /// The shell of a `SHELL` session: the connection now carries raw bytes.
    pub shell: Option<Box<crate::services::shell::Shell>>,
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
    /// What the worker must do after the commands of this turn.
    pub effects: Vec<Effect>,
    /// This worker's pid, as text for records and greetings.
    pub pid: String,
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
}

impl<'a> Ctx<'a> {
    /// A fresh state for the worker with this pid, continuing `committed` requests.
    pub fn new(
        settings: &'a Settings,
        board: &'a Scoreboard,
        hub: &'a Hub,
        pid: String,
        committed: u64,
    ) -> Ctx<'a> {
        Ctx {
            settings,
            board,
            hub,
            effects: Vec::new(),
            pid,
            batch: Batch::new(),
            acks: Vec::new(),
            timers: BinaryHeap::new(),
            committed,
            provisional: 0,
            base_total: None,
            next_timer: 0,
            errors: 0,
            now: Instant::now(),
        }
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

/// Sends the greeting.
pub fn greet(out: &mut Output, pid: &str) {
    out.buf.extend_from_slice(b"OK cserverd ");
    out.buf.extend_from_slice(VERSION.as_bytes());
    out.buf.extend_from_slice(b" worker ");
    out.buf.extend_from_slice(pid.as_bytes());
    out.buf.extend_from_slice(b" ready\n");
}

/// Answers a refusal, counting it.
pub fn refuse(out: &mut Output, ctx: &mut Ctx<'_>, why: Refusal) {
    out.err(why);
    ctx.errors += 1;
}

/// Applies one command.
pub fn apply(cmd: Command<'_>, conn: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    let Parts { out, session, id } = conn;
    match cmd {
        Command::Ping => out.ok(b"PONG"),
        Command::Help => {
            let _ = writeln!(Text(&mut out.buf), "OK {} commands", HELP.len());
            for line in HELP {
                out.buf.extend_from_slice(line.as_bytes());
                out.buf.push(b'\n');
            }
        }
        Command::Quit => {
            out.ok(b"bye");
            session.quitting = true;
            return Flow::Stop;
        }
        Command::User(name) => login(out, session, ctx, name),
        Command::Pass(secret) => return pass(out, session, ctx, secret),
        Command::Legacy { user, text } => match login_quiet(session, ctx, user) {
            Ok(()) => match authorised(session, ctx) {
                Ok(_) => return message(out, session, id, ctx, text),
                Err(why) => refuse(out, ctx, why),
            },
            Err(why) => refuse(out, ctx, why),
        },
        Command::Msg(text) => match authorised(session, ctx) {
            Ok(_) => return message(out, session, id, ctx, text),
            Err(why) => refuse(out, ctx, why),
        },
        Command::Stats => match authorised(session, ctx) {
            Ok(_) => stats(out, ctx.board),
            Err(why) => refuse(out, ctx, why),
        },
        service => match authorised(session, ctx) {
            Ok(user) => return services::apply(service, out, session, id, user, ctx),
            Err(why) => refuse(out, ctx, why),
        },
    }
    Flow::Continue
}

fn login_quiet(session: &mut Session, ctx: &Ctx<'_>, name: &str) -> Result<(), Refusal> {
    if !ctx.settings.users.allows(name) {
        return Err(Refusal::NotAllowed);
    }
    let same = session.user.is_some_and(|u| u.as_str() == name);
    if !same {
        // A new name must prove itself again; the count of wrong secrets stays with the
        // connection, so switching names does not buy more guesses.
        session.passed = false;
    }
    session.user = Some(UserName::new(name));
    Ok(())
}

/// The user, if logged in and (when `--secrets` names it) proven with `PASS`.
fn authorised(session: &Session, ctx: &Ctx<'_>) -> Result<UserName, Refusal> {
    let user = session.user.ok_or(Refusal::NotLoggedIn)?;
    if !session.passed && ctx.settings.secrets.required(user.as_str()) {
        return Err(Refusal::NeedPass);
    }
    Ok(user)
}

/// Wrong secrets allowed before the session is closed.
const PASS_TRIES: u8 = 3;

/// `PASS <secret>`: compared in constant time; three wrong ones close the session.
fn pass(out: &mut Output, session: &mut Session, ctx: &mut Ctx<'_>, secret: &[u8]) -> Flow {
    let Some(user) = session.user else {
        refuse(out, ctx, Refusal::NotLoggedIn);
        return Flow::Continue;
    };
    if ctx.settings.secrets.check(user.as_str(), secret) {
        session.passed = true;
        out.ok(b"pass accepted");
        return Flow::Continue;
    }
    session.pass_failures += 1;
    let pid = &ctx.pid;
    let record = format!("server {pid} wrong secret for user {}", user.as_str());
    ctx.batch.event(format_args!("{record}"));
    if session.pass_failures >= PASS_TRIES {
        refuse(out, ctx, Refusal::TooManyTries);
        session.quitting = true;
        return Flow::Stop;
    }
    refuse(out, ctx, Refusal::WrongPass);
    Flow::Continue
}

fn login(out: &mut Output, session: &mut Session, ctx: &mut Ctx<'_>, name: &str) {
    match login_quiet(session, ctx, name) {
        Ok(()) => {
            out.buf.extend_from_slice(b"OK hello ");
            out.buf.extend_from_slice(name.as_bytes());
            out.buf.push(b'\n');
        }
        Err(why) => refuse(out, ctx, why),
    }
}

/// `MSG`: log `recvd`, do the work (now, or by a timer), log `completed`, reply.
fn message(
    out: &mut Output,
    session: &mut Session,
    id: ConnId,
    ctx: &mut Ctx<'_>,
    text: &[u8],
) -> Flow {
    let user = session.user.unwrap_or_default();
    ctx.batch.recvd(&ctx.pid, text, user.as_str());
    if ctx.settings.work.is_zero() {
        complete(out, id, ctx, text);
        return Flow::Continue;
    }
    ctx.acks.push(Ack {
        conn: id,
        log_end: ctx.batch.len(),
        kind: AckKind::Started,
    });
    let mut saved = std::mem::take(&mut session.spare);
    saved.clear();
    saved.extend_from_slice(text);
    session.work = Some(saved);
    ctx.next_timer += 1;
    session.timer = ctx.next_timer;
    ctx.timers.push(Reverse((
        ctx.now + ctx.settings.work,
        id.idx,
        session.timer,
    )));
    Flow::Stop
}

/// The work of a `MSG` is done: log `completed` and reply `OK <worker count> <total>`,
/// provisionally until the batch is written.
fn complete(out: &mut Output, id: ConnId, ctx: &mut Ctx<'_>, text: &[u8]) {
    ctx.provisional += 1;
    let count = ctx.committed + ctx.provisional;
    ctx.batch.completed(text, &ctx.pid, count);
    let base = *ctx
        .base_total
        .get_or_insert_with(|| ctx.board.total_requests());
    let buf = &mut out.buf;
    let out_start = buf.len();
    buf.extend_from_slice(b"OK ");
    push_u64(buf, count);
    buf.push(b' ');
    push_u64(buf, base + ctx.provisional);
    buf.push(b'\n');
    ctx.acks.push(Ack {
        conn: id,
        log_end: ctx.batch.len(),
        kind: AckKind::Done {
            out_start,
            out_end: buf.len(),
        },
    });
}

/// A work timer fired for this connection: finish its `MSG` if the timer is still current.
pub fn work_done(conn: &mut Conn, idx: usize, timer: u64, ctx: &mut Ctx<'_>) -> bool {
    if conn.session.timer != timer {
        return false;
    }
    let Some(text) = conn.session.work.take() else {
        return false;
    };
    complete(
        &mut conn.output,
        ConnId::new(idx, conn.generation),
        ctx,
        &text,
    );
    conn.session.spare = text;
    true
}

/// After the batch was written up to `written` bytes: confirm or refuse each provisional
/// outcome of `conn`. `acks` are this connection's, in the order they were made. Returns how
/// many `MSG`s were confirmed and how many refused.
pub fn settle<'a>(
    conn: &mut Conn,
    acks: impl DoubleEndedIterator<Item = &'a Ack>,
    written: usize,
) -> (u64, u64) {
    let (mut done, mut refused) = (0, 0);
    // Last to first, so splicing a reply does not move the ones before it.
    for ack in acks.rev() {
        let logged = ack.log_end <= written;
        match (&ack.kind, logged) {
            (AckKind::Done { .. }, true) => done += 1,
            (AckKind::Done { out_start, out_end }, false) => {
                let mut err = Output::default();
                err.err(Refusal::LogFailed);
                conn.output.buf.splice(*out_start..*out_end, err.buf);
                refused += 1;
            }
            (AckKind::Started, true) => {}
            (AckKind::Started, false) => {
                // The work never officially started: no timer will complete it.
                if let Some(text) = conn.session.work.take() {
                    conn.session.spare = text;
                }
                conn.session.timer = 0;
                conn.output.err(Refusal::LogFailed);
                refused += 1;
            }
        }
    }
    (done, refused)
}

/// `STATS`: `OK <n> stats`, then the totals line and one line per used slot.
fn stats(out: &mut Output, board: &Scoreboard) {
    let snap = board.snapshot();
    let mut text = Text(&mut out.buf);
    let t = &snap.total;
    let _ = writeln!(text, "OK {} stats", snap.slots.len() + 1);
    let _ = writeln!(
        text,
        "total requests {} accepted {} open {} bytes_in {} bytes_out {} errors {} restarts {} workers {}",
        t.requests, t.accepted, t.open, t.bytes_in, t.bytes_out, t.errors, t.restarts, snap.workers
    );
    for s in &snap.slots {
        let _ = writeln!(
            text,
            "worker {} pid {} state {} requests {} accepted {} open {} errors {} restarts {}",
            s.slot,
            s.pid,
            s.state.name(),
            s.requests,
            s.accepted,
            s.open,
            s.errors,
            s.restarts
        );
    }
}

/// `fmt::Write` over a byte buffer.
pub struct Text<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// How long until the earliest timer, capped at `max`.
pub fn next_timeout(timers: &BinaryHeap<Timer>, now: Instant, max: Duration) -> Duration {
    timers.peek().map_or(max, |Reverse((at, _, _))| {
        at.saturating_duration_since(now).min(max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn conn() -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        Conn::new(stream, 1, 1024, Instant::now())
    }

    /// A provisional `OK` in `conn`'s output, its records ending at `log_end` in the batch.
    fn done(conn: &mut Conn, reply: &[u8], log_end: usize) -> Ack {
        let out_start = conn.output.buf.len();
        conn.output.ok(reply);
        Ack {
            conn: ConnId::new(0, 1),
            log_end,
            kind: AckKind::Done {
                out_start,
                out_end: conn.output.buf.len(),
            },
        }
    }

    #[test]
    fn the_loop_sleeps_until_the_first_work_timer_or_at_most_its_tick() {
        let now = Instant::now();
        let tick = Duration::from_millis(500);
        let mut timers = BinaryHeap::new();
        assert_eq!(next_timeout(&timers, now, tick), tick);
        timers.push(Reverse((now + Duration::from_millis(300), 0, 1)));
        timers.push(Reverse((now + Duration::from_millis(120), 1, 2)));
        assert_eq!(next_timeout(&timers, now, tick), Duration::from_millis(120));
        timers.push(Reverse((now + Duration::from_secs(9), 2, 3)));
        assert_eq!(next_timeout(&timers, now, tick), Duration::from_millis(120));
        // Due already: no sleep; far away: the tick.
        let later = now + Duration::from_millis(200);
        assert_eq!(next_timeout(&timers, later, tick), Duration::ZERO);
        let far = BinaryHeap::from([Reverse((now + Duration::from_secs(60), 0, 1))]);
        assert_eq!(next_timeout(&far, now, tick), tick);
    }

    #[test]
    fn settling_confirms_what_reached_the_log_and_refuses_the_rest() {
        let mut c = conn();
        // Three MSGs whose records end at 100, 200 and 300 bytes of the batch; a fourth has
        // started its work (only `recvd` written, at 350).
        let mut acks = vec![
            done(&mut c, b"1 1", 100),
            done(&mut c, b"2 2", 200),
            done(&mut c, b"3 3", 300),
        ];
        c.session.work = Some(b"slow".to_vec());
        c.session.timer = 7;
        acks.push(Ack {
            conn: ConnId::new(0, 1),
            log_end: 350,
            kind: AckKind::Started,
        });
        // The write stopped after 200 bytes (a full disk): two confirmed, two refused.
        assert_eq!(settle(&mut c, acks.iter(), 200), (2, 2));
        let out = String::from_utf8(c.output.buf.clone()).unwrap();
        assert_eq!(
            out,
            "OK 1 1\nOK 2 2\nERR 503 cannot write the log; request not done\n\
             ERR 503 cannot write the log; request not done\n"
        );
        // The started work will never complete: no timer may finish it.
        assert!(c.session.work.is_none() && c.session.timer == 0);

        // Everything written: all confirmed, the output untouched.
        let mut c = conn();
        let acks = [done(&mut c, b"1 1", 100), done(&mut c, b"2 2", 200)];
        assert_eq!(settle(&mut c, acks.iter(), 200), (2, 0));
        assert_eq!(c.output.buf, b"OK 1 1\nOK 2 2\n");
        // Nothing written.
        let mut c = conn();
        let acks = [done(&mut c, b"1 1", 100)];
        assert_eq!(settle(&mut c, acks.iter(), 99), (0, 1));
        assert!(c.output.buf.starts_with(b"ERR 503 "));
    }
}
