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
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::log::push_u64;
use crate::output::Output;
use crate::penalty::Source;
use crate::protocol::{Command, Refusal, HELP, VERSION};
use crate::record::Event;
use crate::scoreboard::{mono_ms, Scoreboard, SyncStats};
use crate::services;
use crate::token::ConnId;

pub use crate::request::{
    refuse, Ack, AckKind, Ctx, Effect, Flow, Parts, Session, Text, Timer, UserName,
};

/// Sends the greeting.
pub fn greet(out: &mut Output, pid: &str) {
    out.buf.extend_from_slice(b"OK cserverd ");
    out.buf.extend_from_slice(VERSION.as_bytes());
    out.buf.extend_from_slice(b" worker ");
    out.buf.extend_from_slice(pid.as_bytes());
    out.buf.extend_from_slice(b" ready\n");
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
        Command::Service(service) => match authorised(session, ctx) {
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

/// `PASS <secret>`: refused unlooked-at while the client's address is penalised for wrong
/// secrets (see [`crate::penalty`]); otherwise charged, then compared in constant time. A wrong
/// one keeps the charge (one record) and three close the session; a right one is refunded.
fn pass(out: &mut Output, session: &mut Session, ctx: &mut Ctx<'_>, secret: &[u8]) -> Flow {
    let Some(user) = session.user else {
        refuse(out, ctx, Refusal::NotLoggedIn);
        return Flow::Continue;
    };
    // Not knowing the address (the peer is already gone) must not mean no penalty.
    let source = Source::of(session.client.unwrap_or(Ipv4Addr::UNSPECIFIED.into()));
    let now = mono_ms();
    let charge = match ctx.penalties.charge(source, now) {
        Ok(charge) => charge,
        Err(penalised) => {
            let retry_secs = penalised.retry_secs();
            refuse(out, ctx, Refusal::Penalised { source, retry_secs });
            return Flow::Continue;
        }
    };
    if ctx.settings.secrets.check(user.as_str(), secret) {
        ctx.penalties.refund(charge, now);
        session.passed = true;
        out.ok(b"pass accepted");
        return Flow::Continue;
    }
    session.pass_failures += 1;
    let pid = &ctx.pid;
    let record = format!("server {pid} wrong secret for user {}", user.as_str());
    ctx.batch.event(format_args!("{record}"));
    let penalty = Event::PassPenalty {
        source,
        strikes: charge.strikes,
        length: charge.length,
    };
    ctx.batch.event(format_args!("{penalty}"));
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
    if ctx.sync_failed {
        // Records written since a failed sync may never reach the disk, and a later sync that
        // succeeds does not prove otherwise: no new record until the log is reopened.
        refuse(out, ctx, Refusal::SyncFailed);
        return Flow::Continue;
    }
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
        crate::clock::after(ctx.now, ctx.settings.work),
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
    let out_end = buf.len();
    // Nothing from here on leaves before the worker has settled it (a chat delivery may flush
    // this connection in the middle of the turn).
    out.hold(out_start);
    ctx.acks.push(Ack {
        conn: id,
        log_end: ctx.batch.len(),
        kind: AckKind::Done { out_start, out_end },
    });
}

/// A work timer fired for connection `id`: finish its `MSG` if the timer is still current.
pub fn work_done(
    out: &mut Output,
    session: &mut Session,
    id: ConnId,
    timer: u64,
    ctx: &mut Ctx<'_>,
) -> bool {
    if session.timer != timer {
        return false;
    }
    let Some(text) = session.work.take() else {
        return false;
    };
    complete(out, id, ctx, &text);
    session.spare = text;
    true
}

/// After the batch was written up to `written` bytes: confirm or refuse (with `why`) each provisional
/// outcome of one connection (its output and session). `acks` are this connection's, in the
/// order they were made. Returns how many `MSG`s were confirmed and how many refused.
pub fn settle<'a>(
    out: &mut Output,
    session: &mut Session,
    acks: impl DoubleEndedIterator<Item = &'a Ack>,
    written: usize,
    why: Refusal,
) -> (u64, u64) {
    let (mut done, mut refused) = (0, 0);
    // Last to first, so splicing a reply does not move the ones before it.
    for ack in acks.rev() {
        let logged = ack.log_end <= written;
        match (&ack.kind, logged) {
            (AckKind::Done { .. }, true) => done += 1,
            (AckKind::Done { out_start, out_end }, false) => {
                let mut err = Output::default();
                err.err(why);
                out.buf.splice(*out_start..*out_end, err.buf);
                refused += 1;
            }
            (AckKind::Started, true) => {}
            (AckKind::Started, false) => {
                // The work never officially started: no timer will complete it.
                if let Some(text) = session.work.take() {
                    session.spare = text;
                }
                session.timer = 0;
                out.err(why);
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
    let _ = write!(
        text,
        "total requests {} accepted {} open {} bytes_in {} bytes_out {} errors {} restarts {} \
         retired {} workers {} chat {} reverse {} procman {} rembash {}",
        t.requests,
        t.accepted,
        t.open,
        t.bytes_in,
        t.bytes_out,
        t.errors,
        t.restarts,
        t.retired,
        snap.workers,
        t.by_protocol.chat,
        t.by_protocol.reverse,
        t.by_protocol.procman,
        t.by_protocol.rembash
    );
    sync_fields(&mut text, &t.sync);
    for s in &snap.slots {
        let _ = write!(
            text,
            "worker {} pid {} state {} requests {} accepted {} open {} errors {} restarts {} \
             retired {}",
            s.slot,
            s.pid,
            s.state.name(),
            s.requests,
            s.accepted,
            s.open,
            s.errors,
            s.restarts,
            s.retired
        );
        sync_fields(&mut text, &s.sync);
    }
}

/// Ends a `STATS` line: with the log's syncs (`--sync`) once any was made.
fn sync_fields(text: &mut Text<'_>, sync: &SyncStats) {
    if sync.syncs > 0 {
        let _ = write!(
            text,
            " syncs {} sync_failures {} sync_mean_us {} sync_max_us {}",
            sync.syncs,
            sync.failures,
            sync.mean_us(),
            sync.max_ns / 1000
        );
    }
    let _ = writeln!(text);
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
    use crate::connection::Conn;
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
        assert_eq!(
            settle(
                &mut c.output,
                &mut c.session,
                acks.iter(),
                200,
                Refusal::LogFailed
            ),
            (2, 2)
        );
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
        assert_eq!(
            settle(
                &mut c.output,
                &mut c.session,
                acks.iter(),
                200,
                Refusal::LogFailed
            ),
            (2, 0)
        );
        assert_eq!(c.output.buf, b"OK 1 1\nOK 2 2\n");
        // Nothing written.
        let mut c = conn();
        let acks = [done(&mut c, b"1 1", 100)];
        assert_eq!(
            settle(
                &mut c.output,
                &mut c.session,
                acks.iter(),
                99,
                Refusal::LogFailed
            ),
            (0, 1)
        );
        assert!(c.output.buf.starts_with(b"ERR 503 "));
    }
}
