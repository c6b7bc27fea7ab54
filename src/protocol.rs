//! The wire protocol's meaning: a request line becomes a [`Command`], a refusal becomes an
//! `ERR <code> <text>` line. Nothing here touches a socket.

use std::fmt;

use crate::penalty::Source;

/// A parsed request. Borrowed from the line it came from: parsing allocates nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER <name>`
    User(&'a str),
    /// `MSG <text>`
    Msg(&'a [u8]),
    /// `<name>:<message>`, the seed client's one-line form: `USER name` then `MSG message`.
    Legacy { user: &'a str, text: &'a [u8] },
    /// `PASS <secret>`
    Pass(&'a [u8]),
    /// `STATS`
    Stats,
    /// `PING`
    Ping,
    /// `HELP`
    Help,
    /// `QUIT`, `EXIT`, `DISCONNECT`
    Quit,
    /// A service's verb: allowed only to a logged-in (and, where needed, `PASS`-proven) user.
    Service(Service<'a>),
}

/// The services' requests, routed by [`crate::services::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service<'a> {
    /// `REV <text>`
    Rev(&'a [u8]),
    /// `ADD`, `SUB`, `MUL`, `DIV` and the rest of the line (the numbers).
    Arith(Arith, &'a [u8]),
    /// `RUN <program> [args]`
    Run(&'a [u8]),
    /// `LIST`, `LIST ALL`, `LIST DETAILS`
    List(ListKind),
    /// `CLOSE <pid|name>`, `CLOSE <name> ALL`
    Close { target: &'a str, all: bool },
    /// `JOIN`
    Join,
    /// `LEAVE`
    Leave,
    /// `SAY <text>`
    Say(&'a [u8]),
    /// `SHELL [rows cols]`
    Shell { rows: u16, cols: u16 },
}

/// The arithmetic verbs (computed by [`crate::services::arith`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// `ADD`: the sum.
    Add,
    /// `SUB`: the first number minus each of the others.
    Sub,
    /// `MUL`: the product.
    Mul,
    /// `DIV`: the first number divided by each of the others.
    Div,
}

impl Arith {
    /// The operation for a request verb: `ADD`, `SUB`, `MUL` or `DIV`, case-insensitive.
    pub fn from_verb(verb: &[u8]) -> Option<Arith> {
        [
            (b"ADD", Arith::Add),
            (b"SUB", Arith::Sub),
            (b"MUL", Arith::Mul),
            (b"DIV", Arith::Div),
        ]
        .into_iter()
        .find(|(name, _)| verb.eq_ignore_ascii_case(*name))
        .map(|(_, op)| op)
    }
}

/// What `LIST` shows (listed by [`crate::services::proctable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `LIST`: the running processes.
    Running,
    /// `LIST ALL`: running and ended.
    All,
    /// `LIST DETAILS`: all, with start and end times.
    Details,
}

/// Why a request is refused. `Display` is the wire text after `ERR `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An empty line.
    Empty,
    /// A verb this server does not know.
    Unknown,
    /// A known verb with missing arguments: the text is its usage.
    Usage(&'static str),
    /// A user name outside `[A-Za-z0-9._-]{1,32}`.
    BadName,
    /// A service asked for before `USER`.
    NotLoggedIn,
    /// This user must give `PASS <secret>` first (`--secrets`).
    NeedPass,
    /// `PASS` with the wrong secret (or for a user without one).
    WrongPass,
    /// Too many wrong secrets: the session is closed.
    TooManyTries,
    /// `PASS` from an address penalised for wrong secrets: not looked at. Whole seconds left.
    Penalised { source: Source, retry_secs: u64 },
    /// The service is not enabled on this server (`--allow-run`, `--allow-shell`).
    Disabled(&'static str),
    /// `SHELL` (always) and `RUN` (when the server has `--secrets`) need a user who proved
    /// itself with `PASS`: the verb.
    NeedsPass(&'static str),
    /// Not in the chat hub (`SAY`, `LEAVE` before `JOIN`).
    NotJoined,
    /// `USER` with a name the `--users` file does not list.
    NotAllowed,
    /// A line over `--max-line` bytes.
    TooLong(usize),
    /// The log record could not be written: the request was not done.
    LogFailed,
    /// A sync of the log failed (`--sync`): nothing is acknowledged until the log is reopened.
    SyncFailed,
    /// The server is stopping and closes this session.
    ShuttingDown,
    /// The session's worker is being replaced (reload, recycling, resize, upgrade) while the
    /// server goes on: a new connection is served by its successor.
    Replaced,
    /// No `USER` within `--handshake-timeout`; the session is closed.
    HandshakeTimeout,
    /// No complete request within `--idle-timeout`; the session is closed.
    IdleTimeout,
}

impl Refusal {
    /// The numeric code (HTTP-like classes: 4xx the client's fault, 5xx the server's).
    pub fn code(self) -> u16 {
        match self {
            Refusal::Empty | Refusal::Unknown | Refusal::Usage(_) | Refusal::BadName => 400,
            Refusal::NotLoggedIn
            | Refusal::NeedPass
            | Refusal::WrongPass
            | Refusal::TooManyTries
            | Refusal::NeedsPass(_) => 401,
            Refusal::Disabled(_) => 403,
            Refusal::Penalised { .. } => 429,
            Refusal::NotJoined => 409,
            Refusal::NotAllowed => 403,
            Refusal::TooLong(_) => 413,
            Refusal::HandshakeTimeout | Refusal::IdleTimeout => 408,
            Refusal::LogFailed
            | Refusal::SyncFailed
            | Refusal::ShuttingDown
            | Refusal::Replaced => 503,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.code())?;
        match self {
            Refusal::Empty => f.write_str("empty request; try HELP"),
            Refusal::Unknown => f.write_str("unknown command; try HELP"),
            Refusal::Usage(usage) => write!(f, "usage: {usage}"),
            Refusal::BadName => f.write_str("bad user name: 1 to 32 of A-Z a-z 0-9 . _ -"),
            Refusal::NotLoggedIn => f.write_str("log in first: USER <name>"),
            Refusal::NotAllowed => f.write_str("user not allowed"),
            Refusal::NeedPass => f.write_str("this user needs PASS <secret> first"),
            Refusal::WrongPass => f.write_str("wrong secret"),
            Refusal::TooManyTries => f.write_str("too many wrong secrets; closing"),
            Refusal::Penalised { source, retry_secs } => write!(
                f,
                "too many wrong secrets from {source}; retry in {retry_secs} s"
            ),
            Refusal::Disabled(what) => write!(f, "{what} is not enabled on this server"),
            Refusal::NeedsPass(verb) => write!(f, "{verb} needs a user logged in with PASS"),
            Refusal::NotJoined => f.write_str("not in the chat: JOIN first"),
            Refusal::TooLong(max) => write!(f, "line too long (max {max} bytes); discarded"),
            Refusal::LogFailed => f.write_str("cannot write the log; request not done"),
            Refusal::SyncFailed => f.write_str("cannot sync the log to disk; request not done"),
            Refusal::ShuttingDown => f.write_str("server shutting down"),
            Refusal::Replaced => f.write_str("server reloading; reconnect"),
            Refusal::HandshakeTimeout => f.write_str("timeout: no USER in time; closing"),
            Refusal::IdleTimeout => f.write_str("timeout: idle too long; closing"),
        }
    }
}

impl Refusal {
    /// The text without its code, for protocols whose users read plain lines.
    pub fn plain(self) -> String {
        let text = self.to_string();
        match text.split_once(' ') {
            Some((_, rest)) => rest.to_string(),
            None => text,
        }
    }
}

/// The lines `HELP` answers with.
pub const HELP: &[&str] = &[
    "USER <name>            log in",
    "MSG <text>             log a transaction: OK <worker count> <total>",
    "<name>:<text>          USER and MSG in one line",
    "REV <text>             the text reversed",
    "ADD|SUB|MUL|DIV <n> <n>...  arithmetic, exact",
    "RUN <program> [args]   start a process (--allow-run)",
    "LIST [ALL|DETAILS]     this session's processes",
    "CLOSE <pid|name> [ALL] end process(es)",
    "JOIN | LEAVE | SAY <text>  the chat hub",
    "PASS <secret>          prove the name (--secrets)",
    "SHELL [rows cols]      a login shell on a pty (--allow-shell, after PASS)",
    "STATS                  the scoreboard",
    "PING                   OK PONG",
    "QUIT | EXIT | DISCONNECT",
];

/// The greeting's protocol version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `name` if it is a valid user name: 1 to 32 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &[u8]) -> Option<&str> {
    let ok = (1..=32).contains(&name.len())
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        std::str::from_utf8(name).ok()
    } else {
        None
    }
}

/// Parses a session's line after its first: the seed's one-line form `<name>:<text>` is only
/// ever a session's first line (its client sent nothing else), so here it is no command at all
/// (`note: a typo` in `nc` logs nobody in).
pub fn parse_later(line: &[u8]) -> Result<Command<'_>, Refusal> {
    let (verb, _) = split_verb(line.trim_ascii_start());
    if memchr::memchr(b':', verb).is_some() {
        return Err(Refusal::Unknown);
    }
    parse(line)
}

/// The first word of a line (up to a space or tab) and what follows that separator.
fn split_verb(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr2(b' ', b'\t', line) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    }
}

/// Parses one request line (terminator already removed), as the first line of a session.
pub fn parse(line: &[u8]) -> Result<Command<'_>, Refusal> {
    let line = line.trim_ascii_start();
    if line.trim_ascii_end().is_empty() {
        return Err(Refusal::Empty);
    }
    let (verb, rest) = split_verb(line);
    // `<name>:<message>`: a colon before any space.
    if let Some(colon) = memchr::memchr(b':', verb) {
        let user = valid_name(&line[..colon]).ok_or(Refusal::BadName)?;
        return Ok(Command::Legacy {
            user,
            text: &line[colon + 1..],
        });
    }
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    let arg = |usage| match rest {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(Refusal::Usage(usage)),
    };
    if let Some(op) = Arith::from_verb(verb) {
        return Ok(Command::Service(Service::Arith(op, rest.unwrap_or(b""))));
    }
    if is("MSG") {
        Ok(Command::Msg(arg("MSG <text>")?))
    } else if is("PASS") {
        Ok(Command::Pass(arg("PASS <secret>")?))
    } else if is("REV") {
        Ok(Command::Service(Service::Rev(arg("REV <text>")?)))
    } else if is("RUN") {
        Ok(Command::Service(Service::Run(
            arg("RUN <program> [args]")?.trim_ascii(),
        )))
    } else if is("LIST") {
        let what = rest.unwrap_or(b"").trim_ascii();
        if what.is_empty() {
            Ok(Command::Service(Service::List(ListKind::Running)))
        } else if what.eq_ignore_ascii_case(b"ALL") {
            Ok(Command::Service(Service::List(ListKind::All)))
        } else if what.eq_ignore_ascii_case(b"DETAILS") {
            Ok(Command::Service(Service::List(ListKind::Details)))
        } else {
            Err(Refusal::Usage("LIST [ALL|DETAILS]"))
        }
    } else if is("CLOSE") {
        const USAGE: &str = "CLOSE <pid|name> [ALL]";
        let words: Vec<&[u8]> = arg(USAGE)?
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        let (target, all) = match words.as_slice() {
            [t] => (*t, false),
            [t, a] if a.eq_ignore_ascii_case(b"ALL") => (*t, true),
            _ => return Err(Refusal::Usage(USAGE)),
        };
        let target = std::str::from_utf8(target).map_err(|_| Refusal::Usage(USAGE))?;
        Ok(Command::Service(Service::Close { target, all }))
    } else if is("JOIN") {
        Ok(Command::Service(Service::Join))
    } else if is("LEAVE") {
        Ok(Command::Service(Service::Leave))
    } else if is("SAY") {
        Ok(Command::Service(Service::Say(arg("SAY <text>")?)))
    } else if is("SHELL") {
        const USAGE: &str = "SHELL [rows cols]";
        let words: Vec<&[u8]> = rest
            .unwrap_or(b"")
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        let num = |w: &[u8]| {
            std::str::from_utf8(w)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|n| (1..=1000).contains(n))
        };
        match words.as_slice() {
            [] => Ok(Command::Service(Service::Shell { rows: 24, cols: 80 })),
            [r, c] => match (num(r), num(c)) {
                (Some(rows), Some(cols)) => Ok(Command::Service(Service::Shell { rows, cols })),
                _ => Err(Refusal::Usage(USAGE)),
            },
            _ => Err(Refusal::Usage(USAGE)),
        }
    } else if is("USER") {
        let name = arg("USER <name>")?.trim_ascii();
        valid_name(name).map(Command::User).ok_or(Refusal::BadName)
    } else if is("PING") {
        Ok(Command::Ping)
    } else if is("STATS") {
        Ok(Command::Stats)
    } else if is("HELP") {
        Ok(Command::Help)
    } else if is("QUIT") || is("EXIT") || is("DISCONNECT") {
        Ok(Command::Quit)
    } else {
        Err(Refusal::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_verbs_case_insensitively() {
        let table: &[(&[u8], Result<Command, Refusal>)] = &[
            (b"USER arijort", Ok(Command::User("arijort"))),
            (b"user arijort ", Ok(Command::User("arijort"))),
            (b"MSG hello world", Ok(Command::Msg(b"hello world"))),
            (b"msg  two spaces", Ok(Command::Msg(b" two spaces"))),
            (b"MSG a:b", Ok(Command::Msg(b"a:b"))),
            (b"PiNg", Ok(Command::Ping)),
            (b"STATS", Ok(Command::Stats)),
            (b"help", Ok(Command::Help)),
            (b"QUIT", Ok(Command::Quit)),
            (b"exit", Ok(Command::Quit)),
            (b"Disconnect", Ok(Command::Quit)),
            (
                b"arijort:hello there",
                Ok(Command::Legacy {
                    user: "arijort",
                    text: b"hello there",
                }),
            ),
            (
                b"a.b-c_d:",
                Ok(Command::Legacy {
                    user: "a.b-c_d",
                    text: b"",
                }),
            ),
        ];
        for (line, want) in table {
            assert_eq!(&parse(line), want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn parses_the_services_verbs() {
        use Service::*;
        let table: &[(&[u8], Service)] = &[
            (b"REV abc", Rev(b"abc")),
            (b"add 1 2", Arith(super::Arith::Add, b"1 2")),
            (b"SUB", Arith(super::Arith::Sub, b"")),
            (b"Mul 2 3", Arith(super::Arith::Mul, b"2 3")),
            (b"DIV 6 3", Arith(super::Arith::Div, b"6 3")),
            (b"RUN  sleep 1 ", Run(b"sleep 1")),
            (b"LIST", List(ListKind::Running)),
            (b"list all", List(ListKind::All)),
            (b"LIST Details", List(ListKind::Details)),
            (
                b"CLOSE 42",
                Close {
                    target: "42",
                    all: false,
                },
            ),
            (
                b"close sleep all",
                Close {
                    target: "sleep",
                    all: true,
                },
            ),
            (b"JOIN", Join),
            (b"leave", Leave),
            (b"SAY hi there", Say(b"hi there")),
            (b"SHELL", Shell { rows: 24, cols: 80 }),
            (
                b"shell 50 132",
                Shell {
                    rows: 50,
                    cols: 132,
                },
            ),
        ];
        for (line, want) in table {
            assert_eq!(
                parse(line),
                Ok(Command::Service(*want)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let table: &[(&[u8], Refusal)] = &[
            (b"", Refusal::Empty),
            (b"   ", Refusal::Empty),
            (b"FROB x", Refusal::Unknown),
            (b"MSG", Refusal::Usage("MSG <text>")),
            (b"MSG ", Refusal::Usage("MSG <text>")),
            (b"USER", Refusal::Usage("USER <name>")),
            (b"USER bad/name", Refusal::BadName),
            (b"USER aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Refusal::BadName),
            (b"bad!name:hello", Refusal::BadName),
            (b":hello", Refusal::BadName),
            (b"LIST some", Refusal::Usage("LIST [ALL|DETAILS]")),
            (b"CLOSE", Refusal::Usage("CLOSE <pid|name> [ALL]")),
            (b"CLOSE a b c", Refusal::Usage("CLOSE <pid|name> [ALL]")),
            (b"SHELL 0 80", Refusal::Usage("SHELL [rows cols]")),
            (b"SAY", Refusal::Usage("SAY <text>")),
        ];
        for (line, want) in table {
            assert_eq!(parse(line), Err(*want), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn the_one_line_form_is_only_a_first_line() {
        for line in [
            &b"arijort:hello"[..],
            b"note: a typo",
            b"  ari:x",
            b"bad!name:x",
        ] {
            assert_eq!(parse_later(line), Err(Refusal::Unknown));
        }
        assert_eq!(parse_later(b"MSG a:b"), Ok(Command::Msg(b"a:b")));
        assert_eq!(parse_later(b"USER bad/name"), Err(Refusal::BadName));
        assert_eq!(parse_later(b"PING"), Ok(Command::Ping));
    }

    #[test]
    fn refusals_read_as_wire_text() {
        assert_eq!(
            Refusal::Unknown.to_string(),
            "400 unknown command; try HELP"
        );
        assert_eq!(
            Refusal::TooLong(10).to_string(),
            "413 line too long (max 10 bytes); discarded"
        );
        assert_eq!(
            Refusal::NotLoggedIn.to_string(),
            "401 log in first: USER <name>"
        );
    }
}
