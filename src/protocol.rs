//! The wire protocol's meaning: a request line becomes a [`Command`], a refusal becomes an
//! `ERR <code> <text>` line. Nothing here touches a socket.

use std::fmt;

/// A parsed request. Borrowed from the line it came from: parsing allocates nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER <name>`
    User(&'a str),
    /// `MSG <text>`
    Msg(&'a [u8]),
    /// `<name>:<message>`, the seed client's one-line form: `USER name` then `MSG message`.
    Legacy { user: &'a str, text: &'a [u8] },
    /// `STATS`
    Stats,
    /// `PING`
    Ping,
    /// `HELP`
    Help,
    /// `QUIT`, `EXIT`, `DISCONNECT`
    Quit,
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
    /// `USER` with a name the `--users` file does not list.
    NotAllowed,
    /// A line over `--max-line` bytes.
    TooLong(usize),
    /// The log record could not be written: the request was not done.
    LogFailed,
    /// The server is stopping and closes this session.
    ShuttingDown,
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
            Refusal::NotLoggedIn => 401,
            Refusal::NotAllowed => 403,
            Refusal::TooLong(_) => 413,
            Refusal::HandshakeTimeout | Refusal::IdleTimeout => 408,
            Refusal::LogFailed | Refusal::ShuttingDown => 503,
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
            Refusal::TooLong(max) => write!(f, "line too long (max {max} bytes); discarded"),
            Refusal::LogFailed => f.write_str("cannot write the log; request not done"),
            Refusal::ShuttingDown => f.write_str("server shutting down"),
            Refusal::HandshakeTimeout => f.write_str("timeout: no USER in time; closing"),
            Refusal::IdleTimeout => f.write_str("timeout: idle too long; closing"),
        }
    }
}

/// The lines `HELP` answers with.
pub const HELP: &[&str] = &[
    "USER <name>            log in",
    "MSG <text>             log a transaction: OK <worker count> <total>",
    "<name>:<text>          USER and MSG in one line",
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

/// Parses one request line (terminator already removed).
pub fn parse(line: &[u8]) -> Result<Command<'_>, Refusal> {
    let line = line.trim_ascii_start();
    if line.trim_ascii_end().is_empty() {
        return Err(Refusal::Empty);
    }
    let space = memchr::memchr2(b' ', b'\t', line);
    let (verb, rest) = match space {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
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
    if is("MSG") {
        Ok(Command::Msg(arg("MSG <text>")?))
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
        ];
        for (line, want) in table {
            assert_eq!(parse(line), Err(*want), "{}", String::from_utf8_lossy(line));
        }
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
