//! `procman`: the process manager as its users knew it. Its client sends each command as typed,
//! ended by one NUL byte (a newline ends one too, here), and shows each reply line: `run <path>`,
//! `close <pid|name> [all]`, `list [all|details]`, `add|mult|div <n>...`, `disconnect`, `exit`,
//! verbs in any case. There is no login: the client's address is who it is.
//!
//! What differs from the seed, on purpose:
//! - `run` starts only programs inside `--allow-run DIR` (resolved, symlinks and `..` followed;
//!   an absolute path must lie inside it, a relative one is taken inside it), never a shell,
//!   with `/dev/null` for its input and output (the seed's programs inherited the client's
//!   socket); without `--allow-run` it refuses.
//! - Arithmetic is checked: a result beyond 64 bits and a division by zero are error lines, never
//!   a wrapped number; `12abc` is not a number (the seed read it as 12).
//! - `close` of a name that matches nothing says `Process not found.` (the seed said nothing and
//!   its client waited); `list all` and `list details` always answer (the seed answered nothing
//!   to `list details`, or to `list all` before anything ran), `list all` without the seed's NUL
//!   byte inside the line; a process that ended is reaped and listed as ended (the seed kept
//!   "ending" a dead pid).
//! - The session's processes end with it (`disconnect`, `exit`, or the connection closing).

use std::time::SystemTime;

use crate::listen::Protocol;
use crate::output::Output;
use crate::request::{Ctx, Flow, Parts};
use crate::services::proctable::{self, Proc, ProcError};

/// One command; every command is one record.
pub fn line(line: &[u8], parts: Parts<'_>, ctx: &mut Ctx<'_>) -> Flow {
    let client = super::client_of(&parts);
    ctx.batch.from_client(&ctx.pid, "procman", line, &client);
    ctx.count(Protocol::Procman);
    let Parts { out, session, id } = parts;
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace();
    let Some(verb) = words.next() else {
        say(out, "Nothing entered.");
        return Flow::Continue;
    };
    let rest: Vec<&str> = words.collect();
    match verb.to_ascii_lowercase().as_str() {
        "run" => match rest[..] {
            [] => say(out, "Incomplete command."),
            [path] => run(out, session, id, ctx, path),
            _ => say(out, "Too many arguments."),
        },
        "close" => close(out, session, &rest),
        "list" => list(out, session, &rest),
        "add" | "mult" | "div" => {
            // As the seed split them: `add 1+2`, `mult 2*3`, `div 8/2`, and commas.
            let op = verb.to_ascii_lowercase();
            let sign = match op.as_str() {
                "add" => '+',
                "mult" => '*',
                _ => '/',
            };
            let numbers = rest
                .iter()
                .flat_map(|w| w.split([sign, ',']))
                .filter(|w| !w.is_empty());
            match arithmetic(&op, numbers) {
                Ok(n) => say(out, &n.to_string()),
                Err(why) => {
                    say(out, why);
                    ctx.errors += 1;
                }
            }
        }
        "disconnect" => {
            session.quitting = true;
            return Flow::Stop;
        }
        "exit" => {
            say(out, "Goodbye.");
            session.quitting = true;
            return Flow::Stop;
        }
        _ => say(out, "Invalid command."),
    }
    Flow::Continue
}

fn say(out: &mut Output, line: &str) {
    out.buf.extend_from_slice(line.as_bytes());
    out.buf.push(b'\n');
}

/// `add`, `mult` or `div` over the numbers, as 64-bit integers: `add` from 0, the others from the
/// first number; division truncates.
pub fn arithmetic<'a>(
    op: &str,
    numbers: impl Iterator<Item = &'a str>,
) -> Result<i64, &'static str> {
    let mut acc: Option<i64> = None;
    for word in numbers {
        let digits = word.strip_prefix(['+', '-']).unwrap_or(word);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("Input must contain only numbers.");
        }
        let n: i64 = word
            .parse()
            .map_err(|_| "Error: A number in the input is beyond 64-bits.")?;
        acc = Some(match (acc, op) {
            (None, "add") => n,
            (None, _) => n,
            (Some(a), "add") => a.checked_add(n).ok_or(BEYOND)?,
            (Some(a), "mult") => a.checked_mul(n).ok_or(BEYOND)?,
            (Some(_), _) if n == 0 => return Err("Divide by 0 error."),
            (Some(a), _) => a.checked_div(n).ok_or(BEYOND)?,
        });
    }
    acc.ok_or("Incomplete command.")
}

const BEYOND: &str = "Error: The result is beyond 64-bits.";

fn run(
    out: &mut Output,
    session: &mut crate::request::Session,
    id: crate::token::ConnId,
    ctx: &mut Ctx<'_>,
    path: &str,
) {
    let Some(dir) = ctx.settings.allow_run.clone() else {
        ctx.errors += 1;
        return say(out, "Run is not enabled on this server.");
    };
    if crate::services::room_for_a_process(ctx).is_err() {
        ctx.errors += 1;
        return say(out, "Too many processes are running on this server.");
    }
    // An absolute path names the program itself: it must lie inside the directory.
    let inside = if path.starts_with('/') {
        std::path::Path::new(path)
            .canonicalize()
            .ok()
            .and_then(|p| p.strip_prefix(&dir).ok().map(|r| r.display().to_string()))
    } else {
        Some(path.to_string())
    };
    let Some(program) = inside.filter(|p| !p.is_empty()) else {
        ctx.errors += 1;
        return say(out, "Invalid Directory.");
    };
    match crate::services::start_process(session, id, ctx, &dir, &program, &[]) {
        Ok(_) => say(out, "Successful."),
        Err(e) => {
            ctx.errors += 1;
            match e {
                ProcError::Outside(_) | ProcError::NotAllowed => say(out, "Invalid Directory."),
                ProcError::NotExecutable(_) => say(
                    out,
                    &format!("Error while execing, error code: {}", libc::EACCES),
                ),
                ProcError::TooMany => say(out, "Too many processes are running."),
                ProcError::Spawn(e) => say(
                    out,
                    &format!(
                        "Error while execing, error code: {}",
                        e.raw_os_error().unwrap_or(libc::EIO)
                    ),
                ),
                ProcError::NoSuchProcess(_) => say(out, "Process not found."),
            }
        }
    }
}

fn close(out: &mut Output, session: &mut crate::request::Session, words: &[&str]) {
    let (target, all) = match words {
        [] => return say(out, "Incomplete command."),
        [target] => (*target, false),
        [target, all] if all.eq_ignore_ascii_case("all") => (*target, true),
        _ => return say(out, "Invalid command."),
    };
    let ended = session
        .procs
        .as_mut()
        .map_or(Ok(0), |t| t.close(target, all));
    match ended {
        Ok(n) if n > 0 => {
            for _ in 0..n {
                say(out, "Process sucessfully ended.");
            }
        }
        _ => say(out, "Process not found."),
    }
}

fn list(out: &mut Output, session: &crate::request::Session, words: &[&str]) {
    let procs: &[Proc] = session.procs.as_ref().map_or(&[], |t| t.procs());
    let now = SystemTime::now();
    let which = words.first().map(|w| w.to_ascii_lowercase());
    match (which.as_deref(), words.len()) {
        (None, _) => {
            let running: Vec<&Proc> = procs.iter().filter(|p| p.is_running()).collect();
            if running.is_empty() {
                return say(out, "No processes are running.");
            }
            for p in running {
                say(out, &format!("pid: {} name: {}", p.pid, p.name));
            }
        }
        (Some("all"), 1) => {
            if procs.is_empty() {
                return say(out, "No processes have been run.");
            }
            for p in procs {
                let state = if p.is_running() { "on" } else { "off" };
                say(
                    out,
                    &format!(
                        "pid: {} name: {} State: {state} Time Elapsed: {}",
                        p.pid,
                        p.name,
                        elapsed(p, now)
                    ),
                );
            }
        }
        (Some("details"), 1) => {
            if procs.is_empty() {
                return say(out, "No processes have been run.");
            }
            for p in procs {
                let ended = p
                    .ended
                    .map_or_else(|| "-".to_string(), |(t, _)| proctable::local_time(t));
                say(
                    out,
                    &format!(
                        "pid: {} name: {} State: {} Time Elapsed: {} Started: {} Ended: {ended}",
                        p.pid,
                        p.name,
                        p.state(),
                        elapsed(p, now),
                        proctable::local_time(p.started)
                    ),
                );
            }
        }
        _ => say(out, "Invalid command."),
    }
}

/// How long a process ran (or has been running): `HH:MM:SS`.
fn elapsed(p: &Proc, now: SystemTime) -> String {
    let until = p.ended.map_or(now, |(t, _)| t);
    let secs = until.duration_since(p.started).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(op: &str, words: &[&str]) -> Result<i64, &'static str> {
        arithmetic(op, words.iter().copied())
    }

    #[test]
    fn arithmetic_is_exact_in_64_bits_and_says_when_it_cannot_be() {
        assert_eq!(calc("add", &["1", "2", "39"]), Ok(42));
        assert_eq!(calc("add", &["-5"]), Ok(-5));
        assert_eq!(calc("mult", &["6", "7"]), Ok(42));
        assert_eq!(calc("div", &["85", "2"]), Ok(42));
        assert_eq!(calc("div", &["-7", "2"]), Ok(-3), "truncating, as C");
        assert_eq!(calc("add", &["+3", "0"]), Ok(3));
        assert_eq!(calc("add", &[]), Err("Incomplete command."));
        assert_eq!(calc("div", &["1", "0"]), Err("Divide by 0 error."));
        assert_eq!(
            calc("add", &["12abc"]),
            Err("Input must contain only numbers.")
        );
        assert_eq!(calc("add", &["-"]), Err("Input must contain only numbers."));
        assert_eq!(
            calc("add", &["9223372036854775808"]),
            Err("Error: A number in the input is beyond 64-bits.")
        );
        assert_eq!(calc("add", &["9223372036854775807", "1"]), Err(BEYOND));
        assert_eq!(calc("mult", &["4294967296", "4294967296"]), Err(BEYOND));
        assert_eq!(calc("div", &["-9223372036854775808", "-1"]), Err(BEYOND));
        assert_eq!(calc("add", &["-9223372036854775808"]), Ok(i64::MIN));
    }
}
