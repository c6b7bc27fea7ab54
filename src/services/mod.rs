//! The services beyond `MSG`, one module each; [`apply`] routes a command to its service after
//! the session is known to be authorised. The worker loop never looks inside them.

pub mod arith;
pub mod chat;
pub mod child;
pub mod proctable;
pub mod reverse;
pub mod shell;

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::log::push_u64;
use crate::output::Output;
use crate::protocol::{Refusal, Service};
use crate::request::{refuse, Ctx, Effect, Flow, Session, Text, UserName};
use crate::token::ConnId;

/// The most bytes a `JOIN`'s replay of the chat history adds to a connection's output (less
/// when replies are already waiting: see [`crate::connection::OUTPUT_HIGH_WATER`]).
pub const REPLAY_BUDGET: usize = 64 * 1024;

/// Runs a service command for a logged-in (and, where needed, `PASS`-proven) user.
pub fn apply(
    cmd: Service<'_>,
    out: &mut Output,
    session: &mut Session,
    id: ConnId,
    user: UserName,
    ctx: &mut Ctx<'_>,
) -> Flow {
    match cmd {
        Service::Rev(text) => {
            let buf = &mut out.buf;
            buf.extend_from_slice(b"OK ");
            reverse::reverse_into(buf, text);
            buf.push(b'\n');
            service_record(ctx, "REV", user, text);
        }
        Service::Arith(op, args) => {
            let words: Vec<&[u8]> = args
                .split(u8::is_ascii_whitespace)
                .filter(|w| !w.is_empty())
                .collect();
            match arith::compute(op, &words) {
                Ok(result) => out.ok(result.as_bytes()),
                Err(e) => error(out, ctx, 400, &e),
            }
            service_record(ctx, "arithmetic", user, args);
        }
        Service::Run(line) => run(out, session, id, user, ctx, line),
        Service::List(kind) => {
            let lines = session
                .procs
                .as_ref()
                .map(|t| t.list(kind))
                .unwrap_or_default();
            let _ = writeln!(Text(&mut out.buf), "OK {} processes", lines.len());
            for line in lines {
                out.buf.extend_from_slice(line.as_bytes());
                out.buf.push(b'\n');
            }
        }
        Service::Close { target, all } => {
            let result = match session.procs.as_mut() {
                Some(t) => t.close(target, all),
                None => Err(proctable::ProcError::NoSuchProcess(target.to_string())),
            };
            match result {
                Ok(n) => {
                    let _ = writeln!(Text(&mut out.buf), "OK closed {n}");
                    service_record(ctx, "CLOSE", user, target.as_bytes());
                }
                Err(e) => error(out, ctx, 404, &e),
            }
        }
        Service::Join => {
            if session.chat.is_some() {
                let _ = writeln!(Text(&mut out.buf), "OK 0 already joined");
            } else {
                let head = ctx.hub.joined_at();
                let recent = ctx.hub.recent(head);
                // The latest events that fit the connection's output budget, oldest first.
                let budget = crate::connection::OUTPUT_HIGH_WATER.saturating_sub(out.pending());
                let budget = budget.min(REPLAY_BUDGET);
                let mut lines = Vec::new();
                let mut shown = 0;
                for e in recent.iter().rev() {
                    let mark = lines.len();
                    e.line(&mut lines);
                    if lines.len() > budget {
                        lines.truncate(mark);
                        break;
                    }
                    shown += 1;
                }
                let _ = if shown == recent.len() {
                    writeln!(Text(&mut out.buf), "OK {shown} joined")
                } else {
                    writeln!(
                        Text(&mut out.buf),
                        "OK {shown} joined ({} in the history, the latest {shown} shown)",
                        recent.len()
                    )
                };
                // Built newest first: put them back in order.
                let mut rows: Vec<&[u8]> = lines.split_inclusive(|&b| b == b'\n').collect();
                rows.reverse();
                for row in rows {
                    out.buf.extend_from_slice(row);
                }
                session.chat = Some(head);
                ctx.hub
                    .post(chat::Kind::Join, origin(id), user.as_str(), b"");
                ctx.effects.push(Effect::Joined(id));
                service_record(ctx, "JOIN", user, b"");
            }
        }
        Service::Leave => {
            if session.chat.is_none() {
                refuse(out, ctx, Refusal::NotJoined);
            } else {
                session.chat = None;
                ctx.hub
                    .post(chat::Kind::Leave, origin(id), user.as_str(), b"");
                ctx.effects.push(Effect::Left(id));
                out.ok(b"left");
                service_record(ctx, "LEAVE", user, b"");
            }
        }
        Service::Say(text) => {
            if session.chat.is_none() {
                refuse(out, ctx, Refusal::NotJoined);
            } else if text.len() > chat::TEXT_MAX {
                let why = format!("chat message too long (max {} bytes)", chat::TEXT_MAX);
                error(out, ctx, 413, &why);
            } else {
                let seq = ctx
                    .hub
                    .post(chat::Kind::Say, origin(id), user.as_str(), text);
                out.buf.extend_from_slice(b"OK said ");
                push_u64(&mut out.buf, seq);
                out.buf.push(b'\n');
                service_record(ctx, "SAY", user, text);
            }
        }
        Service::Shell { rows, cols } => return shell(out, session, id, user, ctx, rows, cols),
    }
    Flow::Continue
}

/// Who posts to the hub: this worker process and the connection.
pub fn origin(id: ConnId) -> chat::Origin {
    chat::Origin {
        pid: std::process::id(),
        conn: id.idx as u32,
        generation: id.generation,
    }
}

/// `ERR <code> <text>` for a service's own error.
fn error(out: &mut Output, ctx: &mut Ctx<'_>, code: u16, why: &dyn std::fmt::Display) {
    let _ = writeln!(Text(&mut out.buf), "ERR {code} {why}");
    ctx.errors += 1;
}

/// One log record per service request: `server <pid> <SERVICE> "<text>" from user <name>`, the
/// text escaped and kept to `--max-log-text` like a `MSG`'s.
fn service_record(ctx: &mut Ctx<'_>, service: &str, user: UserName, text: &[u8]) {
    ctx.batch.service(&ctx.pid, service, text, user.as_str());
}

/// `--max-processes`: the programs and shells running for clients, counted server-wide in the
/// scoreboard. Workers count their own exactly; two workers starting one at the same moment may
/// pass the check together, so the total can exceed the cap by at most one per other worker
/// (with `--user`, the kernel's RLIMIT_NPROC is the hard stop).
pub fn room_for_a_process(ctx: &Ctx<'_>) -> Result<(), String> {
    let max = ctx.settings.max_processes;
    if ctx.board.processes() >= max as u64 {
        return Err(format!(
            "too many processes running on this server (--max-processes {max})"
        ));
    }
    Ok(())
}

fn run(
    out: &mut Output,
    session: &mut Session,
    id: ConnId,
    user: UserName,
    ctx: &mut Ctx<'_>,
    line: &[u8],
) {
    let Some(dir) = ctx.settings.allow_run.as_deref() else {
        return refuse(out, ctx, Refusal::Disabled("RUN"));
    };
    // With secrets, a name is a claim until PASS proves it: programs run only for proven users.
    // (Without --secrets any logged-in name may RUN: the README says what that means.)
    if ctx.settings.secrets_file.is_some() && !session.passed {
        return refuse(out, ctx, Refusal::NeedsPass("RUN"));
    }
    if let Err(e) = room_for_a_process(ctx) {
        error(out, ctx, 429, &e);
        return service_record(ctx, "RUN refused", user, line);
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return error(out, ctx, 400, &"program and arguments must be UTF-8");
    };
    let mut words = line.split_ascii_whitespace();
    let Some(program) = words.next() else {
        return refuse(out, ctx, Refusal::Usage("RUN <program> [args]"));
    };
    let args: Vec<&str> = words.collect();
    match start_process(session, id, ctx, dir, program, &args) {
        Ok(pid) => {
            let _ = writeln!(Text(&mut out.buf), "OK {pid}");
            service_record(ctx, "RUN", user, line.as_bytes());
        }
        Err(e) => {
            let code = match e {
                proctable::ProcError::NotAllowed => 403,
                proctable::ProcError::Outside(_) | proctable::ProcError::NotExecutable(_) => 403,
                proctable::ProcError::TooMany => 429,
                proctable::ProcError::Spawn(_) => 500,
                proctable::ProcError::NoSuchProcess(_) => 404,
            };
            error(out, ctx, code, &e);
            service_record(ctx, "RUN refused", user, line.as_bytes());
        }
    }
}

/// Starts `program` (inside `dir`) for the session of connection `id`, counted in the
/// scoreboard and reaped by the worker. (The caller checked `--max-processes`.)
pub fn start_process(
    session: &mut Session,
    id: ConnId,
    ctx: &mut Ctx<'_>,
    dir: &std::path::Path,
    program: &str,
    args: &[&str],
) -> Result<i32, proctable::ProcError> {
    let table = session.procs.get_or_insert_with(Default::default);
    let pid = table.run(Some(dir), program, args)?;
    ctx.board.slot(ctx.slot).procs.fetch_add(1, Relaxed);
    ctx.effects.push(Effect::Spawned { pid, conn: id });
    Ok(pid)
}

fn shell(
    out: &mut Output,
    session: &mut Session,
    id: ConnId,
    user: UserName,
    ctx: &mut Ctx<'_>,
    rows: u16,
    cols: u16,
) -> Flow {
    if !ctx.settings.allow_shell {
        refuse(out, ctx, Refusal::Disabled("SHELL"));
        return Flow::Continue;
    }
    // Only a user who proved itself with a secret.
    if !(session.passed && ctx.settings.secrets.required(user.as_str())) {
        refuse(out, ctx, Refusal::NeedsPass("SHELL"));
        return Flow::Continue;
    }
    if let Err(e) = room_for_a_process(ctx) {
        error(out, ctx, 429, &e);
        return Flow::Continue;
    }
    match shell::Shell::spawn(rows, cols) {
        Ok(sh) => {
            out.ok(b"shell");
            ctx.board.slot(ctx.slot).procs.fetch_add(1, Relaxed);
            let pid = sh.pid;
            let me = &ctx.pid;
            let record = format!(
                "server {me} shell start pid {pid} for user {}",
                user.as_str()
            );
            ctx.batch.event(format_args!("{record}"));
            session.shell = Some(Box::new(sh));
            ctx.effects.push(Effect::ShellStarted(id));
            // No more lines: from now on the connection carries raw bytes.
            Flow::Stop
        }
        Err(e) => {
            error(out, ctx, 500, &format!("cannot start a shell: {e}"));
            Flow::Continue
        }
    }
}
