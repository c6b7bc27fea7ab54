//! A blocking line-protocol connection for `cclient`: connect with a deadline, read the greeting,
//! log in, send a request and read its one-line reply.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::plan::Login;

/// One client connection.
pub struct LineConn {
    reader: BufReader<TcpStream>,
    line: String,
}

impl LineConn {
    /// Connects (sending the PROXY header first if `login` has one), waits for the `OK`
    /// greeting and logs in: `USER`, then `PASS` if `login` has a secret.
    pub fn open(addr: SocketAddr, login: &Login, timeout: Duration) -> io::Result<LineConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| tag("connect", e))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let header = match &login.proxy {
            Some(proxy) => Some(proxy.header(stream.local_addr()?, addr)),
            None => None,
        };
        let mut conn = LineConn {
            reader: BufReader::with_capacity(4096, stream),
            line: String::with_capacity(128),
        };
        if let Some(header) = header {
            conn.send_raw(&header)?;
        }
        conn.expect_ok("greeting")?;
        conn.request(format_args!("USER {}", login.user))?;
        conn.expect_ok("USER")?;
        if let Some(secret) = &login.pass {
            conn.request(format_args!("PASS {secret}"))?;
            conn.expect_ok("PASS")?;
        }
        Ok(conn)
    }

    /// Sends one request line (the `\n` is added).
    pub fn request(&mut self, args: std::fmt::Arguments<'_>) -> io::Result<()> {
        let mut buf = Vec::with_capacity(128);
        buf.write_fmt(args)?;
        buf.push(b'\n');
        self.send_raw(&buf)
    }

    /// Sends bytes as they are (one `write` for the whole request).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| tag("send", e))
    }

    /// Reads one reply line (without its terminator).
    pub fn reply(&mut self) -> io::Result<&str> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            Ok(_) => Ok(self.line.trim_end_matches(['\r', '\n'])),
            Err(e) => Err(tag("receive", e)),
        }
    }

    /// Reads a reply and fails unless it starts with `OK`.
    pub fn expect_ok(&mut self, what: &str) -> io::Result<&str> {
        let line = self.reply()?;
        if line == "OK" || line.starts_with("OK ") {
            Ok(line)
        } else {
            Err(io::Error::other(format!("{what}: {line}")))
        }
    }

    /// Says goodbye and closes without waiting for the `OK bye` (best effort).
    pub fn quit(mut self) {
        let _ = self.send_raw(b"QUIT\n");
    }
}

fn tag(what: &str, e: io::Error) -> io::Error {
    let kind = match e.kind() {
        // Timeouts on sockets are reported as WouldBlock on Linux.
        io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut,
        k => k,
    };
    io::Error::new(
        kind,
        format!(
            "{what}: {}",
            if kind == io::ErrorKind::TimedOut {
                "timed out".to_string()
            } else {
                e.to_string()
            }
        ),
    )
}

/// Asks the server for its total (`STATS`, the `total requests N` line).
pub fn server_total(addr: SocketAddr, login: &Login, timeout: Duration) -> io::Result<u64> {
    let mut conn = LineConn::open(addr, login, timeout)?;
    conn.request(format_args!("STATS"))?;
    let head = conn.expect_ok("STATS")?;
    let lines: usize = head
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("STATS: unexpected reply {head:?}")))?;
    let mut total = None;
    for _ in 0..lines {
        let line = conn.reply()?;
        if let Some(rest) = line.strip_prefix("total requests ") {
            total = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    conn.quit();
    total.ok_or_else(|| io::Error::other("STATS: no total line"))
}
