//! `chat`: the chat hub as the seed's users knew it (`nc` or `telnet` to the port, and type).
//! No login: each connection is a member from the start, under a short id of its own (a hex
//! number, as the seed's ids were; `/nick NAME` takes a name instead). Every line goes to every
//! other member on every worker as `<id>: <text>`; others see `<id> connected!` and
//! `<id> disconnected!`; a newcomer is shown the last 100 events first. It is the same hub as
//! the cserver protocol's `JOIN`/`SAY`: members of either see each other.
//!
//! What differs from the seed, on purpose:
//! - A line is a line however it arrives (the seed sent each `recv` as one message, and cut the
//!   last character of text that came without a newline).
//! - Ids are short numbers from one counter (the seed's were 48 bits of the client's address
//!   and port mixed with a random number: long, and two clients could meet); `/nick` is new.
//! - Text reaches others as printable UTF-8 only: control bytes, escape sequences and telnet
//!   commands are dropped (the seed kept only ASCII letters, digits and some punctuation, and
//!   passed `\r`); Ctrl-C in telnet discards the line being typed and is answered, so telnet
//!   does not hang waiting for its timing mark.
//! - A member that does not read is dropped when 64 KiB wait for it, and told so, instead of
//!   slowing the server; members are not closed for being quiet (they may only listen).

use crate::listen::Protocol;
use crate::output::Output;
use crate::request::{Ctx, Effect, Flow, Parts, UserName};
use crate::services::chat::{Kind, TEXT_MAX};
use crate::services::{origin, REPLAY_BUDGET};

/// A new member: named, shown the recent history, announced to the others.
pub fn open(parts: Parts<'_>, ctx: &mut Ctx<'_>) {
    let client = super::client_of(&parts);
    let Parts { out, session, id } = parts;
    let name = format!("{:x}", ctx.hub.next_guest());
    session.user = Some(UserName::new(&name));
    let head = ctx.hub.joined_at();
    let recent = ctx.hub.recent_all(head);
    // The latest events that fit the replay budget, oldest first.
    let mut lines = Vec::new();
    let mut size = 0;
    for e in recent.iter().rev() {
        let mut line = Vec::new();
        e.plain_line(&mut line, b"\n");
        size += line.len();
        if size > REPLAY_BUDGET {
            break;
        }
        lines.push(line);
    }
    for line in lines.iter().rev() {
        out.buf.extend_from_slice(line);
    }
    session.chat = Some(head);
    ctx.hub.post(Kind::Join, origin(id), &name, b"");
    ctx.effects.push(Effect::Joined(id));
    ctx.batch
        .from_client(&ctx.pid, "chat join", name.as_bytes(), &client);
    ctx.count(Protocol::Chat);
}

/// One line a member typed.
pub fn line(line: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    if parts.session.chat.is_none() {
        return Flow::Continue; // dropped: its connection closes
    }
    if let Some(rest) = line.strip_prefix(b"/nick") {
        if rest.is_empty() || rest[0] == b' ' {
            nick(rest.trim_ascii(), parts, ctx);
            return Flow::Continue;
        }
    }
    let text = shown_text(line);
    if text.trim_ascii().is_empty() {
        return Flow::Continue;
    }
    let client = super::client_of(&parts);
    let Parts { out, session, id } = parts;
    if text.len() > TEXT_MAX {
        say(
            out,
            &format!("line too long (max {TEXT_MAX} bytes); not sent"),
        );
        ctx.errors += 1;
        return Flow::Continue;
    }
    let user = session.user.unwrap_or_default();
    ctx.hub.post(Kind::Say, origin(id), user.as_str(), &text);
    ctx.batch.from_client(&ctx.pid, "chat", &text, &client);
    ctx.count(Protocol::Chat);
    Flow::Continue
}

/// `/nick NAME`: the member goes by NAME from now on; the others are told.
fn nick(name: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) {
    let client = super::client_of(&parts);
    let Parts { out, session, id } = parts;
    let Some(name) = crate::protocol::valid_name(name) else {
        ctx.errors += 1;
        return say(out, "usage: /nick NAME (1 to 32 of A-Z a-z 0-9 . _ -)");
    };
    let old = session.user.unwrap_or_default();
    if old.as_str() == name {
        return;
    }
    // Not a guest's id (hex digits), nor a name that needs a secret to log in with: no guest
    // speaks as another guest or as a proven user.
    if name.bytes().all(|b| b.is_ascii_hexdigit()) || ctx.settings.secrets.required(name) {
        ctx.errors += 1;
        return say(out, &format!("/nick: {name} is not yours to take"));
    }
    session.user = Some(UserName::new(name));
    ctx.hub
        .post(Kind::Nick, origin(id), name, old.as_str().as_bytes());
    say(out, &format!("you are now known as {name}"));
    ctx.batch
        .from_client(&ctx.pid, "chat nick", name.as_bytes(), &client);
    ctx.count(Protocol::Chat);
}

fn say(out: &mut Output, line: &str) {
    out.buf.extend_from_slice(line.as_bytes());
    out.buf.push(b'\n');
}

/// What of a member's line others may see: printable UTF-8 (a tab becomes a space); control
/// characters (C0, DEL, C1), line and paragraph separators and bytes that are not UTF-8 are
/// dropped.
pub fn shown_text(line: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => text.push(b' '),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {}
                c => text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_text_reaches_the_others() {
        assert_eq!(shown_text(b"hello"), b"hello");
        assert_eq!(shown_text("héllo ✓".as_bytes()), "héllo ✓".as_bytes());
        assert_eq!(shown_text(b"\x1b[31mred\x1b[0m\r\x07"), b"[31mred[0m");
        assert_eq!(shown_text(b"a\tb\x00c\x7f\xff"), b"a bc");
        assert_eq!(shown_text("x\u{9b}y\u{2028}z".as_bytes()), b"xyz");
    }
}
