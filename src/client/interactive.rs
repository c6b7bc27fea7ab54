//! `cclient`'s interactive mode (no `--threads`): a `# ` prompt with line editing and history
//! (rustyline); local commands `connect [<host> [<port>]]`, `disconnect`, `exit`; every other
//! line goes to the server as it is.
//!
//! Threads: the main thread runs the prompt. Each connection has a reader thread that turns
//! server lines into display lines; one printer thread owns rustyline's `ExternalPrinter`, so a
//! line that arrives while the user types is printed above the prompt and the line being typed
//! is redrawn intact, and the reader never blocks on the display. A signal thread restores the
//! terminal on `SIGTERM`/`SIGHUP` before the process dies.
//!
//! `SHELL`: after the server's `OK shell` the reader thread hands its buffered reader to the main
//! thread, which puts the terminal in raw mode ([`RawGuard`]) and copies bytes both ways until
//! the server closes; the saved mode is restored on every way out.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor, ExternalPrinter};

/// The prompt.
pub const PROMPT: &str = "# ";
/// A server line longer than this is shown in pieces (a server cannot make us grow unbounded).
const MAX_LINE: u64 = 1 << 20;
/// How long the prompt waits for pending server lines to be shown before it is drawn.
const FLUSH_WAIT: Duration = Duration::from_millis(500);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Limit on connecting, on each send, and on waiting for the reply to `SHELL`.
    pub timeout: Duration,
}

/// What one input line means.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// An empty line: nothing is sent.
    Nothing,
    /// `connect [<host> [<port>]]` (missing parts: `--host`/`--port`).
    Connect {
        host: Option<&'a str>,
        port: Option<u16>,
    },
    Disconnect,
    Exit,
    /// `SHELL [args]` (any case): sent, then raw mode if the server says `OK shell`.
    Shell {
        has_args: bool,
    },
    /// Anything else: sent to the server as it is.
    Send,
    /// A local command used wrongly; the text says how to use it.
    Usage(&'static str),
}

const CONNECT_USAGE: &str = "usage: connect <host> <port>";

/// Classifies a line typed at the prompt. Local command words are case-insensitive.
pub fn parse(line: &str) -> Input<'_> {
    if line.is_empty() {
        return Input::Nothing;
    }
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Input::Send;
    };
    let rest: Vec<&str> = words.collect();
    let is = |w: &str| first.eq_ignore_ascii_case(w);
    if is("connect") {
        return match rest[..] {
            [] => Input::Connect {
                host: None,
                port: None,
            },
            [host] => Input::Connect {
                host: Some(host),
                port: None,
            },
            [host, port] => match port.parse() {
                Ok(port) => Input::Connect {
                    host: Some(host),
                    port: Some(port),
                },
                Err(_) => Input::Usage(CONNECT_USAGE),
            },
            _ => Input::Usage(CONNECT_USAGE),
        };
    }
    if is("disconnect") {
        return if rest.is_empty() {
            Input::Disconnect
        } else {
            Input::Usage("usage: disconnect")
        };
    }
    if is("exit") {
        return if rest.is_empty() {
            Input::Exit
        } else {
            Input::Usage("usage: exit")
        };
    }
    if is("shell") {
        return Input::Shell {
            has_args: !rest.is_empty(),
        };
    }
    Input::Send
}

/// A server line made safe to show: invalid UTF-8 replaced, control characters (escape
/// sequences a peer could use to redraw the screen) shown as `\xHH`.
pub fn display(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs the interactive client until `exit` or end of input; returns the exit status.
pub fn run(opts: Options) -> i32 {
    term_init();
    let config = Config::builder().auto_add_history(false).build();
    let mut editor: Editor<(), DefaultHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            crate::errln!("cclient: cannot start the line editor: {e}");
            return 1;
        }
    };
    let tty = io::stdin().is_terminal();
    let out = Printer::spawn(editor.create_external_printer().ok());
    let mut session = Session {
        out: out.clone(),
        conn: None,
        opts: opts.clone(),
        tty,
        failed: false,
    };
    if tty {
        out.line(
            "cclient interactive: connect <host> <port> | disconnect | exit; \
             other lines go to the server"
                .into(),
        );
    }
    if let Err(e) = session.connect(&opts.host, opts.port) {
        session.failed = true;
        out.err(format!(
            "cannot connect to {}:{}: {e}; use: connect <host> <port>",
            opts.host, opts.port
        ));
    }
    let mut status = 0;
    loop {
        session.reap();
        out.flush(FLUSH_WAIT);
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            // Ctrl-C: the line is dropped, a new prompt.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                out.err(format!("cclient: input: {e}"));
                status = 1;
                break;
            }
        };
        if !line.trim().is_empty() && !is_secret(&line) {
            let _ = editor.add_history_entry(line.as_str());
        }
        match parse(&line) {
            Input::Nothing => {}
            Input::Usage(text) => out.err(text.into()),
            Input::Exit => break,
            Input::Disconnect => match session.conn.take() {
                Some(conn) => {
                    let addr = conn.addr;
                    drop(conn);
                    out.err(format!("disconnected from {addr}"));
                }
                None => out.err("not connected".into()),
            },
            Input::Connect { host, port } => {
                let host = host.unwrap_or(&opts.host).to_string();
                let port = port.unwrap_or(opts.port);
                if let Some(old) = session.conn.take() {
                    let addr = old.addr;
                    drop(old);
                    out.err(format!("disconnected from {addr}"));
                }
                if let Err(e) = session.connect(&host, port) {
                    session.failed = true;
                    out.err(format!("cannot connect to {host}:{port}: {e}"));
                }
            }
            Input::Shell { has_args } => session.shell(&line, has_args),
            Input::Send => {
                session.send(&line);
            }
        }
    }
    // End of piped input: let the server answer what was sent before closing.
    session.finish(!tty);
    out.flush(FLUSH_WAIT);
    // Piped: not connected when lines were to be sent, or a server that went away before
    // answering them, and a script must not take that for success. (At a terminal the person
    // typing saw it; `exit` is 0.)
    if session.failed && !tty {
        status = 1;
    }
    status
}

/// `PASS ...` lines are not kept in the history.
fn is_secret(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("pass"))
}

// ---------------------------------------------------------------------------------------------
// Output

enum Out {
    Line(String),
    /// A message about the client itself (not connected, connection lost): on stderr when
    /// there is no terminal, so piped output holds only what the server said.
    Err(String),
    Flush(mpsc::Sender<()>),
}

/// Shows lines in order from any thread without blocking the sender: one thread owns the
/// rustyline printer (or plain stdout when there is no terminal).
#[derive(Clone)]
struct Printer {
    tx: mpsc::Sender<Out>,
}

impl Printer {
    fn spawn<P: ExternalPrinter + Send + 'static>(external: Option<P>) -> Printer {
        let (tx, rx) = mpsc::channel::<Out>();
        let _ = thread::Builder::new()
            .name("printer".into())
            .spawn(move || {
                let mut external = external;
                for msg in rx {
                    match msg {
                        Out::Line(mut text) | Out::Err(mut text) if external.is_some() => {
                            text.push('\n');
                            if let Some(p) = external.as_mut() {
                                if p.print(text.clone()).is_err() {
                                    crate::outln!("{}", text.trim_end_matches('\n'));
                                }
                            }
                        }
                        Out::Line(text) => crate::outln!("{text}"),
                        Out::Err(text) => crate::errln!("{text}"),
                        Out::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        Printer { tx }
    }

    fn line(&self, text: String) {
        let _ = self.tx.send(Out::Line(text));
    }

    fn err(&self, text: String) {
        let _ = self.tx.send(Out::Err(text));
    }

    /// Waits (at most `limit`) until every line sent so far has been shown.
    fn flush(&self, limit: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Out::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(limit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection

/// What the reader thread says about a `SHELL` request.
enum ShellReply {
    /// `OK shell`: from here on the connection carries raw bytes; the reader (with whatever it
    /// buffered past the `OK shell` line) is the main thread's now.
    Granted(BufReader<TcpStream>),
    /// `ERR ...` (already shown).
    Refused,
}

#[derive(Default)]
struct ConnState {
    /// We are closing it: the reader's end is not news.
    closing: AtomicBool,
    /// The connection is over (EOF, error).
    dead: AtomicBool,
    /// The loss has been reported (once, by whoever saw it first).
    reported: AtomicBool,
    /// `SHELL` requests sent and not yet answered.
    shell_wanted: AtomicUsize,
    /// Request lines sent, and replies read (lines starting `OK` or `ERR` after the greeting;
    /// pushed chat lines and the rest of a multi-line reply are not replies).
    sent: AtomicU64,
    answered: AtomicU64,
    greeted: AtomicBool,
}

impl ConnState {
    /// Requests sent that the server never answered.
    fn unanswered(&self) -> bool {
        self.sent.load(SeqCst) > self.answered.load(SeqCst)
    }

    fn gone(&self, out: &Printer, why: String) {
        self.dead.store(true, SeqCst);
        if !self.closing.load(SeqCst) && !self.reported.swap(true, SeqCst) {
            out.err(why);
        }
    }
}

struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    state: Arc<ConnState>,
    shell_rx: mpsc::Receiver<ShellReply>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.state.closing.store(true, SeqCst);
        // Wakes the reader thread, which then ends on its own.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn reader_thread(
    mut reader: BufReader<TcpStream>,
    state: Arc<ConnState>,
    out: Printer,
    shell_tx: mpsc::Sender<ShellReply>,
) {
    let mut buf = Vec::with_capacity(256);
    let why = loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) => break "connection closed by server".to_string(),
            Ok(_) => {
                let mut line = &buf[..];
                line = line.strip_suffix(b"\n").unwrap_or(line);
                line = line.strip_suffix(b"\r").unwrap_or(line);
                out.line(display(line));
                // The first status line is the greeting, answering nothing.
                let status = line.starts_with(b"OK") || line.starts_with(b"ERR");
                if status && state.greeted.swap(true, SeqCst) {
                    state.answered.fetch_add(1, SeqCst);
                }
                if state.shell_wanted.load(SeqCst) > 0 {
                    if line == b"OK shell" || line.starts_with(b"OK shell ") {
                        state.shell_wanted.fetch_sub(1, SeqCst);
                        let _ = shell_tx.send(ShellReply::Granted(reader));
                        return;
                    }
                    if line.starts_with(b"ERR") {
                        state.shell_wanted.fetch_sub(1, SeqCst);
                        let _ = shell_tx.send(ShellReply::Refused);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                break "connection closed by server (reset)".to_string()
            }
            Err(e) => break format!("connection lost: {e}"),
        }
    };
    // Dropping `shell_tx` tells a main thread waiting for a `SHELL` reply.
    state.gone(&out, why);
}

fn open(host: &str, port: u16, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

struct Session {
    out: Printer,
    conn: Option<Conn>,
    opts: Options,
    tty: bool,
    /// A connect failed, a line found no connection, or the server closed with requests
    /// unanswered: the exit status is 1.
    failed: bool,
}

impl Session {
    fn connect(&mut self, host: &str, port: u16) -> io::Result<()> {
        let (stream, addr) = open(host, port, self.opts.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(self.opts.timeout))?;
        let reader = BufReader::with_capacity(16 * 1024, stream.try_clone()?);
        let state = Arc::new(ConnState::default());
        let (shell_tx, shell_rx) = mpsc::channel();
        self.out.err(format!("connected to {addr}"));
        let (s, o) = (Arc::clone(&state), self.out.clone());
        thread::Builder::new()
            .name("reader".into())
            .spawn(move || reader_thread(reader, s, o, shell_tx))?;
        self.conn = Some(Conn {
            addr,
            stream,
            state,
            shell_rx,
        });
        Ok(())
    }

    /// Forgets a connection that is over (its end was reported by whoever saw it).
    fn reap(&mut self) {
        if let Some(state) = self.conn.as_ref().map(|c| &c.state) {
            if state.dead.load(SeqCst) {
                self.failed |= state.unanswered();
                self.conn = None;
            }
        }
    }

    /// Sends one line; false if there is no connection or it failed.
    fn send(&mut self, line: &str) -> bool {
        self.reap();
        let Some(conn) = self.conn.as_mut() else {
            self.out
                .err("not connected (use: connect <host> <port>)".into());
            self.failed = true;
            return false;
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        match conn.stream.write_all(&bytes) {
            Ok(()) => {
                conn.state.sent.fetch_add(1, SeqCst);
                true
            }
            Err(e) => {
                let why = match e.kind() {
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        "connection closed by server".to_string()
                    }
                    _ => format!("connection lost: send: {e}"),
                };
                conn.state.gone(&self.out, why);
                self.conn = None;
                self.failed = true;
                false
            }
        }
    }

    /// `SHELL`: send it (with the terminal's size when the user gave no arguments), wait for
    /// the reply, and on `OK shell` run the raw session.
    fn shell(&mut self, line: &str, has_args: bool) {
        if !self.tty {
            self.out.err("SHELL needs a terminal on stdin".into());
            return;
        }
        self.reap();
        let Some(conn) = self.conn.as_ref() else {
            self.out
                .err("not connected (use: connect <host> <port>)".into());
            return;
        };
        let state = Arc::clone(&conn.state);
        let request = match (has_args, terminal_size()) {
            (false, Some((rows, cols))) => format!("{} {rows} {cols}", line.trim_end()),
            _ => line.to_string(),
        };
        state.shell_wanted.fetch_add(1, SeqCst);
        if !self.send(&request) {
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let reply = conn.shell_rx.recv_timeout(self.opts.timeout);
        match reply {
            Ok(ShellReply::Refused) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => self.conn = None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.conn = None;
                self.out.err(format!(
                    "no reply to SHELL within {:?}; disconnected",
                    self.opts.timeout
                ));
            }
            Ok(ShellReply::Granted(reader)) => {
                // The reader thread has ended; this connection is the shell's now.
                state.closing.store(true, SeqCst);
                let conn = self.conn.take();
                // Lines shown so far must not land in the raw session.
                self.out.flush(FLUSH_WAIT);
                let result = shell_session(reader);
                drop(conn);
                match result {
                    Ok(()) => self.out.err("shell session ended".into()),
                    Err(e) => self.out.err(format!("shell session ended: {e}")),
                }
            }
        }
    }

    /// Closes the connection; with `drain`, first lets the server answer what was sent (half
    /// close, then wait for its end up to the timeout).
    fn finish(&mut self, drain: bool) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if drain {
            conn.state.closing.store(true, SeqCst);
            let _ = conn.stream.shutdown(Shutdown::Write);
            let deadline = Instant::now() + self.opts.timeout;
            while !conn.state.dead.load(SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            self.failed |= conn.state.unanswered();
        }
    }
}

/// The local terminal's size as (rows, columns), from stdout or else stdin.
fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_row > 0
            && ws.ws_col > 0
        {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The raw shell session

/// Copies stdin to the socket and the socket to stdout, in raw mode, until the server closes.
fn shell_session(reader: BufReader<TcpStream>) -> io::Result<()> {
    let pending = reader.buffer().to_vec();
    let sock = reader.into_inner();
    let _raw = RawGuard::enter()?;
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd();
    let mut stdout = io::stdout().lock();
    stdout.write_all(&pending)?;
    stdout.flush()?;
    let mut stdin_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    let ready = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    loop {
        let (sock_ready, stdin_ready) = {
            let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            if stdin_open {
                fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let is_ready = |f: &PollFd| f.revents().is_some_and(|r| r.intersects(ready));
            (is_ready(&fds[0]), fds.get(1).is_some_and(is_ready))
        };
        if sock_ready {
            match (&sock).read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    stdout.write_all(&buf[..n])?;
                    stdout.flush()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if stdin_ready {
            match nix::unistd::read(stdin_fd, &mut buf) {
                // The terminal is gone: nothing more to send; wait for the server's end.
                Ok(0) | Err(Errno::EIO) => {
                    stdin_open = false;
                    let _ = sock.shutdown(Shutdown::Write);
                }
                Ok(n) => match (&sock).write_all(&buf[..n]) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                },
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The terminal

/// stdin's terminal mode when cclient started (None if stdin is not a terminal). Its lock is
/// also held while the mode is changed, so a signal cannot come between.
static STARTUP_MODE: Mutex<Option<Termios>> = Mutex::new(None);

fn startup_mode() -> MutexGuard<'static, Option<Termios>> {
    STARTUP_MODE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the terminal mode and starts the thread that restores it on `SIGTERM`/`SIGHUP`
/// (whether rustyline or the shell session has it in raw mode), then dies of the signal.
fn term_init() {
    if let Ok(mode) = tcgetattr(io::stdin().as_fd()) {
        *startup_mode() = Some(mode);
    }
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("cclient: cannot watch signals: {e}");
            return;
        }
    };
    let _ = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Keep the lock: nobody may set raw mode again before we are gone.
                let mode = startup_mode();
                if let Some(mode) = mode.as_ref() {
                    let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, mode);
                }
                let name = signal_hook::low_level::signal_name(sig).unwrap_or("signal");
                crate::warnln!("\ncclient: {name}: terminal restored, exiting");
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                // Only if the default action did not end the process: die as a shell reports a
                // signal's death. The one exit under src/ besides the forked worker's: this
                // thread is the signal's handler, there is no caller to return to.
                std::process::exit(128 + sig);
            }
        });
}

/// Raw mode on stdin for as long as it lives; dropping it restores the mode it found.
pub struct RawGuard {
    saved: Termios,
}

impl RawGuard {
    pub fn enter() -> io::Result<RawGuard> {
        let _lock = startup_mode();
        let fd = io::stdin();
        let saved = tcgetattr(fd.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawGuard { saved })
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _lock = startup_mode();
        let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_commands() {
        assert_eq!(parse(""), Input::Nothing);
        assert_eq!(
            parse("connect 127.0.0.1 4242"),
            Input::Connect {
                host: Some("127.0.0.1"),
                port: Some(4242)
            }
        );
        assert_eq!(
            parse("CONNECT"),
            Input::Connect {
                host: None,
                port: None
            }
        );
        assert_eq!(parse("connect h x"), Input::Usage(CONNECT_USAGE));
        assert_eq!(parse("connect h 1 2"), Input::Usage(CONNECT_USAGE));
        assert_eq!(parse("disconnect"), Input::Disconnect);
        assert_eq!(parse(" exit "), Input::Exit);
        assert_eq!(parse("shell"), Input::Shell { has_args: false });
        assert_eq!(parse("SHELL 24 80"), Input::Shell { has_args: true });
        assert_eq!(parse("MSG exit"), Input::Send);
        assert_eq!(parse("   "), Input::Send);
        assert_eq!(parse("connected"), Input::Send);
    }

    #[test]
    fn display_escapes_control_bytes() {
        assert_eq!(display(b"* bob: hi\tthere"), "* bob: hi\tthere");
        assert_eq!(display(b"\x1b[2Jx\x07"), "\\x1b[2Jx\\x07");
        assert_eq!(display(b"caf\xc3\xa9 \xff"), "café \u{fffd}");
    }

    #[test]
    fn secrets_stay_out_of_history() {
        assert!(is_secret("PASS s3cret"));
        assert!(is_secret("pass x"));
        assert!(!is_secret("MSG pass"));
    }
}
