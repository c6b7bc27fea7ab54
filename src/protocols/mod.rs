//! The listeners' protocols other than cserverd's own (see [`crate::listen`]): each seed system's
//! wire protocol, as its own users speak it, on the engine every protocol shares (the worker's
//! event loop, the log, the scoreboard, the chat hub, the pty shell).
//!
//! The worker frames lines for all of them and hands each line here with the connection's
//! session; what a protocol keeps of a connection lives in that session.

pub mod chat;
pub mod procman;
pub mod rembash;
pub mod reverse;
pub mod telnet;

use std::time::Duration;

use crate::config::Settings;
use crate::framing::Frame;
use crate::listen::Protocol;
use crate::output::Output;
use crate::protocol::Refusal;
use crate::request::{Ctx, Flow, Parts};

/// What a new connection is told first (after its PROXY header, if any), and what it starts
/// as: a chat member joins the hub.
pub fn open(parts: Parts<'_>, ctx: &mut Ctx<'_>) {
    match parts.session.protocol {
        Protocol::Cserver => crate::session::greet(parts.out, &ctx.pid),
        Protocol::Chat => chat::open(parts, ctx),
        Protocol::Rembash => parts.out.buf.extend_from_slice(b"<rembash>\n"),
        Protocol::Reverse | Protocol::Procman => {}
    }
}

/// True for the protocols whose sessions need no login: their idle timeout runs from the start.
pub fn without_login(protocol: Protocol) -> bool {
    matches!(
        protocol,
        Protocol::Chat | Protocol::Reverse | Protocol::Procman
    )
}

/// How long a new connection may take before it is closed: until `USER` for cserver (the
/// handshake timeout), the seed's five seconds for rembash's secret, the idle timeout for the
/// others (they have no login: every line is a request).
pub fn first_deadline(protocol: Protocol, settings: &Settings) -> Duration {
    match protocol {
        Protocol::Cserver => settings.handshake_timeout,
        Protocol::Rembash => REMBASH_HANDSHAKE,
        Protocol::Chat | Protocol::Reverse | Protocol::Procman => settings.idle_timeout,
    }
}

/// A rembash client must send its secret this soon, as the seed's server required.
pub const REMBASH_HANDSHAKE: Duration = Duration::from_secs(5);

/// Tells a connection why it is refused or closed, in its protocol's words: `ERR <code> <text>`
/// for cserver's clients, the plain text for the others.
pub fn notice(out: &mut Output, protocol: Protocol, why: Refusal) {
    match protocol {
        Protocol::Cserver => out.err(why),
        Protocol::Chat | Protocol::Reverse | Protocol::Procman | Protocol::Rembash => {
            out.buf.extend_from_slice(why.plain().as_bytes());
            out.buf.push(b'\n');
        }
    }
}

/// Answers one framed line of a connection whose listener speaks `protocol` (not cserver);
/// `end` is the line end it came with.
pub fn line(frame: Frame<'_>, end: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    let protocol = parts.session.protocol;
    let line = match frame {
        Frame::Line(line) => line,
        Frame::TooLong => {
            notice(parts.out, protocol, Refusal::TooLong(ctx.settings.max_line));
            ctx.errors += 1;
            return Flow::Continue;
        }
    };
    match protocol {
        Protocol::Reverse => reverse::line(line, end, parts, ctx),
        Protocol::Procman => procman::line(line, parts, ctx),
        Protocol::Chat => chat::line(line, parts, ctx),
        Protocol::Rembash => rembash::line(line, parts, ctx),
        // Not reached: cserver's lines are served by the worker itself.
        Protocol::Cserver => Flow::Continue,
    }
}

/// The client's address as records name it.
pub fn client_of(parts: &Parts<'_>) -> String {
    parts
        .session
        .peer
        .map_or_else(|| "?".to_string(), |a| a.to_string())
}
