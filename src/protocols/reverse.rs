//! `reverse`: the echo-reverse server as its users knew it (`nc localhost 9090`, type a line,
//! get it back reversed). No greeting and no login; every line is answered with its characters
//! in reverse order (UTF-8 kept whole) and the line end it came with.
//!
//! What differs from the seed, on purpose: it reversed whatever one `read` returned, so a line
//! arriving in two pieces came back as two reversed pieces, and its line end was reversed to the
//! front; here a line is a line however it arrives. Its `exit` stopped the whole server for every
//! client; here `exit` closes only the connection that sent it (one user cannot end everyone's
//! service, and stopping the server is the operator's: `cserverctl stop`).

use crate::listen::Protocol;
use crate::request::{Ctx, Flow, Parts};
use crate::services::reverse::reverse_into;

/// One line: `exit` closes the connection; anything else comes back reversed, one record each.
pub fn line(line: &[u8], end: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    if line == b"exit" {
        parts.session.quitting = true;
        return Flow::Stop;
    }
    let out = &mut parts.out.buf;
    reverse_into(out, line);
    out.extend_from_slice(end);
    let client = super::client_of(&parts);
    ctx.batch.from_client(&ctx.pid, "reverse", line, &client);
    ctx.count(Protocol::Reverse);
    Flow::Continue
}
