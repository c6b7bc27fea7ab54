//! `rembash`: the remote shell as its seed's client speaks it. The server sends `<rembash>\n`;
//! the client answers its secret in angle brackets, `<SECRET>\n`, within five seconds (or is
//! closed without a word); the server answers `<ok>\n` and from then on the connection carries
//! raw bytes both ways between the client's terminal and a login shell on a pseudo-terminal (the
//! same machinery as cserver's `SHELL`), or answers `<error>\n` and closes.
//!
//! What differs from the seed, on purpose: the secret is the operator's, read from a private
//! file (`--rembash-secret`), not compiled into both programs; it is compared in constant time,
//! and wrong guesses from one address are penalised as `PASS` guesses are (see
//! [`crate::penalty`]); the service is off unless `--allow-shell` is given; the shell starts
//! with default signal dispositions, an empty signal mask and a clean environment whatever the
//! server inherited (the seed's shell inherited `SIGCHLD` ignored); the pty has a size
//! (24x80; the seed's had none).

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;

use crate::listen::Protocol;
use crate::output::Output;
use crate::penalty::Source;
use crate::record::Event;
use crate::request::{Ctx, Effect, Flow, Parts, UserName};
use crate::scoreboard::mono_ms;
use crate::services::shell::Shell;

/// The name shells of this protocol are logged under (there is no login).
pub const USER: &str = "rembash";

/// The client's one line: its secret. Right: `<ok>` and a shell. Wrong: `<error>` and closed.
pub fn line(line: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    let client = super::client_of(&parts);
    let Parts { out, session, id } = parts;
    // Not knowing the address (the peer is already gone) must not mean no penalty.
    let ip = session
        .peer
        .map_or(Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
    let source = Source::of(ip);
    let now = mono_ms();
    let pid = &ctx.pid;
    let charge = match ctx.penalties.charge(source, now) {
        Ok(charge) => charge,
        Err(penalised) => {
            let record = format!(
                "server {pid} rembash refused to client {client}: too many wrong secrets from \
                 {source}; retry in {} s",
                penalised.retry_secs()
            );
            ctx.batch.event(format_args!("{record}"));
            ctx.count(Protocol::Rembash);
            return refuse(out, session, ctx);
        }
    };
    let given = line.strip_prefix(b"<").and_then(|l| l.strip_suffix(b">"));
    let right = match (given, &ctx.settings.rembash_secret) {
        (Some(given), Some(secret)) => secret.check(given),
        _ => false,
    };
    if !right {
        let record = format!("server {pid} rembash wrong secret from client {client}");
        ctx.batch.event(format_args!("{record}"));
        ctx.count(Protocol::Rembash);
        let penalty = Event::PassPenalty {
            source,
            strikes: charge.strikes,
            length: charge.length,
        };
        ctx.batch.event(format_args!("{penalty}"));
        return refuse(out, session, ctx);
    }
    ctx.penalties.refund(charge, now);
    if let Err(e) = crate::services::room_for_a_process(ctx) {
        let record = format!("server {pid} rembash refused to client {client}: {e}");
        ctx.batch.event(format_args!("{record}"));
        ctx.count(Protocol::Rembash);
        return refuse(out, session, ctx);
    }
    match Shell::spawn(24, 80) {
        Ok(shell) => {
            out.buf.extend_from_slice(b"<ok>\n");
            ctx.board.slot(ctx.slot).procs.fetch_add(1, Relaxed);
            let record = format!(
                "server {pid} shell start pid {} for user {USER} client {client}",
                shell.pid
            );
            ctx.batch.event(format_args!("{record}"));
            ctx.count(Protocol::Rembash);
            session.user = Some(UserName::new(USER));
            session.shell = Some(Box::new(shell));
            ctx.effects.push(Effect::ShellStarted(id));
            // From now on the connection carries raw bytes.
            Flow::Stop
        }
        Err(e) => {
            let record = format!("server {pid} rembash cannot start a shell for {client}: {e}");
            ctx.batch.event(format_args!("{record}"));
            ctx.count(Protocol::Rembash);
            refuse(out, session, ctx)
        }
    }
}

/// `<error>`, and the connection closes.
fn refuse(out: &mut Output, session: &mut crate::request::Session, ctx: &mut Ctx<'_>) -> Flow {
    out.buf.extend_from_slice(b"<error>\n");
    session.quitting = true;
    ctx.errors += 1;
    Flow::Stop
}
