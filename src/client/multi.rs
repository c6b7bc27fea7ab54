//! Load mode with `--conns-per-thread N` (N > 1): each load thread drives N sessions itself,
//! over non-blocking sockets with its own epoll loop (level-triggered), so that a few threads
//! hold thousands of sessions. Every session does exactly what a blocking load thread does
//! (see [`super::load`]): connect (with the `--timeout` deadline), read the greeting, `USER`,
//! then its `MSG`s one at a time, then `QUIT`; `%t` is the session number `thread * N + i`.
//!
//! Memory per session is one fixed record (phase, clocks, deadline and the start of the reply
//! line being read: at most [`LINE_KEEP`] bytes, the rest of a longer line is dropped). Socket
//! reads go through one buffer of the thread and request lines are formatted, when they are
//! written, into another, so a request allocates nothing (beyond the latency vector, and the
//! texts kept for `--acks`).
//!
//! Deadlines are not kept in a timer structure: every deadline is set to "now + timeout", so
//! after checking all sessions the earliest deadline found is also the earliest one that can
//! exist until then, and the sessions are checked again only at that time (at most every
//! [`TIMER_SLACK`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{connect, getsockopt, sockopt, SockaddrStorage};

use super::plan::{expand, Outcome, Plan, Shared};

/// Bytes of a reply line kept: enough for every reply cclient looks at and for an `ERR` text
/// in the error summary.
const LINE_KEEP: usize = 120;
/// The thread's read buffer.
const READ_BUF: usize = 4096;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// Deadlines are checked at most this often: a timeout fires up to this much late.
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: its next request starts from the run queue.
    Idle,
    /// Non-blocking connect under way (interest: writable).
    Connecting,
    /// Connected, waiting for the `OK ...` greeting.
    Greeting,
    /// `USER` being sent, or sent and waiting for `OK`.
    User,
    /// `MSG` being sent, or sent and waiting for its reply.
    Msg,
    /// Finished: `QUIT` sent and closed, or stopped by a failed connect.
    Done,
}

impl Phase {
    /// Something is under way with a deadline.
    fn waiting(self) -> bool {
        matches!(
            self,
            Phase::Connecting | Phase::Greeting | Phase::User | Phase::Msg
        )
    }

    /// A reply line is expected.
    fn reading(self) -> bool {
        matches!(self, Phase::Greeting | Phase::User | Phase::Msg)
    }
}

/// One session's state.
struct Session {
    stream: Option<TcpStream>,
    /// Bumped with every new socket; part of the epoll key, so a stale event is ignored.
    generation: u32,
    phase: Phase,
    /// Requests begun; the one under way is number `begun - 1`.
    begun: u64,
    /// Start of the latency clock: `MSG` sent (keep-alive), or connect begun (a connection
    /// per request).
    t0: Instant,
    /// Deadline of the connect, or of the current request line's send and its reply.
    deadline: Instant,
    /// The current request line is not all written (waiting for writable).
    writing: bool,
    /// Bytes of it written so far.
    written: u32,
    /// Writable is in the epoll interest set.
    want_out: bool,
    /// The reply line read so far; bytes beyond `LINE_KEEP` are dropped (`line_cut`).
    line: [u8; LINE_KEEP],
    line_len: u8,
    line_cut: bool,
}

impl Session {
    fn new(now: Instant) -> Session {
        Session {
            stream: None,
            generation: 0,
            phase: Phase::Idle,
            begun: 0,
            t0: now,
            deadline: now,
            writing: false,
            written: 0,
            want_out: false,
            line: [0; LINE_KEEP],
            line_len: 0,
            line_cut: false,
        }
    }

    /// Appends bytes of the current reply line (keeping at most `LINE_KEEP`).
    fn keep(&mut self, bytes: &[u8]) {
        let len = self.line_len as usize;
        let take = bytes.len().min(LINE_KEEP - len);
        self.line[len..len + take].copy_from_slice(&bytes[..take]);
        self.line_len = (len + take) as u8;
        self.line_cut |= take < bytes.len();
    }

    /// Closes the socket (without `QUIT`) and forgets the partial line and pending write.
    fn close(&mut self) {
        self.stream = None;
        self.writing = false;
        self.written = 0;
        self.want_out = false;
        self.line_len = 0;
        self.line_cut = false;
    }

    /// Sends `QUIT` (best effort, like [`super::line::LineConn::quit`]) and closes.
    fn quit(&mut self) {
        if let Some(stream) = &self.stream {
            let _ = (&*stream).write(b"QUIT\n");
        }
        self.close();
    }
}

/// The epoll key of a session's current socket.
fn key(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

/// `now + d`, or far in the future if that does not fit.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// The blocking client's error text: `<what>: <error>`, timeouts as `<what>: timed out`.
fn tag(what: &str, e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(what),
        kind => io::Error::new(kind, format!("{what}: {e}")),
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: timed out"))
}

/// Starts a non-blocking connect; true if it is still under way.
fn open(addr: SocketAddr) -> io::Result<(TcpStream, bool)> {
    let fd = crate::listener::tcp_socket(&addr).map_err(|e| tag("connect", e))?;
    let in_progress = match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => false,
        // EINTR: the connect goes on asynchronously, as with EINPROGRESS.
        Err(Errno::EINPROGRESS | Errno::EINTR) => true,
        Err(e) => return Err(tag("connect", e.into())),
    };
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true).map_err(|e| tag("connect", e))?;
    Ok((stream, in_progress))
}

/// Formats the request line of `phase` (`USER`, `MSG`) into `out`.
fn request_line(
    plan: &Plan,
    session: usize,
    phase: Phase,
    request: u64,
    text: &mut String,
    out: &mut Vec<u8>,
) {
    out.clear();
    match phase {
        Phase::User => {
            out.extend_from_slice(b"USER ");
            out.extend_from_slice(plan.login.user.as_bytes());
        }
        _ => {
            expand(&plan.message, session, request, &plan.login.user, text);
            out.extend_from_slice(b"MSG ");
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.push(b'\n');
}

/// One load thread driving `plan.conns_per_thread` sessions; `id` is the thread number.
pub(super) fn drive(id: usize, shared: &Shared) -> Outcome {
    let plan = &shared.plan;
    let n = plan.conns_per_thread;
    let now = Instant::now();
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC);
    let mut driver = Driver {
        shared,
        first_session: id * n,
        sessions: (0..n).map(|_| Session::new(now)).collect(),
        runq: Vec::with_capacity(n),
        spare: Vec::with_capacity(n),
        active: n,
        out: Outcome::new(),
        progress: 0,
        stop_at: None,
        text: String::with_capacity(plan.message.len() + 16),
        wbuf: Vec::with_capacity(plan.message.len() + 64),
        rbuf: vec![0; READ_BUF].into_boxed_slice(),
    };
    shared.barrier.wait();
    let began = Instant::now();
    driver.out.began = Some(began);
    driver.stop_at = plan.duration.map(|d| after(began, d));
    match epoll {
        Ok(epoll) => driver.run(&epoll),
        Err(e) => driver.abort(&io::Error::other(format!("epoll: {e}"))),
    }
    driver.publish_progress();
    let mut out = driver.out;
    out.finished.get_or_insert_with(Instant::now);
    shared.done.fetch_add(1, Relaxed);
    out
}

struct Driver<'a> {
    shared: &'a Shared,
    /// Session number (`%t`) of `sessions[0]`.
    first_session: usize,
    sessions: Vec<Session>,
    /// Sessions whose next request is to start (after a failure, or at the start).
    runq: Vec<usize>,
    spare: Vec<usize>,
    /// Sessions not done.
    active: usize,
    out: Outcome,
    /// Acknowledged since the shared progress counter was last updated.
    progress: u64,
    /// End of `--duration`.
    stop_at: Option<Instant>,
    /// Scratch: a message text, a request line, what a read returned.
    text: String,
    wbuf: Vec<u8>,
    rbuf: Box<[u8]>,
}

impl Driver<'_> {
    fn run(&mut self, epoll: &Epoll) {
        let timeout = self.shared.plan.timeout;
        self.runq.extend(0..self.sessions.len());
        let mut events = vec![EpollEvent::empty(); EVENTS.min(self.sessions.len()).max(1)];
        let mut next_check = after(Instant::now(), timeout);
        loop {
            // Start the next requests of the queued sessions (a failure may queue one again).
            std::mem::swap(&mut self.runq, &mut self.spare);
            for k in 0..self.spare.len() {
                let i = self.spare[k];
                self.start(epoll, i);
            }
            self.spare.clear();
            if self.active == 0 {
                break;
            }
            let wait = if self.runq.is_empty() {
                let ms = next_check
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            } else {
                EpollTimeout::ZERO
            };
            let ready = match epoll.wait(&mut events, wait) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    self.abort(&io::Error::other(format!("epoll_wait: {e}")));
                    break;
                }
            };
            for ev in &events[..ready] {
                self.event(epoll, ev.data(), ev.events());
            }
            let now = Instant::now();
            if now >= next_check {
                next_check = self.expire(now);
            }
            self.publish_progress();
        }
    }

    fn publish_progress(&mut self) {
        if self.progress > 0 {
            self.shared.progress.fetch_add(self.progress, Relaxed);
            self.progress = 0;
        }
    }

    /// Starts session `i`'s next request, or finishes it.
    fn start(&mut self, epoll: &Epoll, i: usize) {
        let shared = self.shared;
        let s = &mut self.sessions[i];
        if s.phase != Phase::Idle {
            return;
        }
        let more = match self.stop_at {
            Some(at) => Instant::now() < at,
            None => s.begun < shared.plan.requests,
        };
        if !more || shared.interrupted.load(Relaxed) {
            self.finish(i);
            return;
        }
        s.begun += 1;
        s.t0 = Instant::now();
        if s.stream.is_some() {
            self.send(epoll, i, Phase::Msg);
        } else {
            self.connect(epoll, i);
        }
    }

    /// Sends `QUIT` if connected, closes, and counts the session done.
    fn finish(&mut self, i: usize) {
        let s = &mut self.sessions[i];
        if s.phase == Phase::Done {
            return;
        }
        s.quit();
        s.phase = Phase::Done;
        self.active -= 1;
        if self.active == 0 {
            self.out.finished = Some(Instant::now());
        }
    }

    fn connect(&mut self, epoll: &Epoll, i: usize) {
        let (stream, in_progress) = match open(self.shared.plan.addr) {
            Ok(opened) => opened,
            Err(e) => return self.connect_failed(i, &e),
        };
        let s = &mut self.sessions[i];
        s.generation = s.generation.wrapping_add(1);
        let interest = if in_progress {
            EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        if let Err(e) = epoll.add(&stream, EpollEvent::new(interest, key(i, s.generation))) {
            return self.connect_failed(i, &io::Error::other(format!("epoll: {e}")));
        }
        s.stream = Some(stream);
        s.want_out = in_progress;
        s.deadline = after(Instant::now(), self.shared.plan.timeout);
        s.phase = if in_progress {
            Phase::Connecting
        } else {
            Phase::Greeting
        };
    }

    /// The connect finished (or failed): check how.
    fn connected(&mut self, epoll: &Epoll, i: usize, flags: EpollFlags) {
        let s = &mut self.sessions[i];
        let Some(stream) = &s.stream else { return };
        let error = match getsockopt(stream, sockopt::SocketError) {
            Ok(0) => None,
            Ok(errno) => Some(io::Error::from_raw_os_error(errno)),
            Err(e) => Some(e.into()),
        };
        if let Some(e) = error {
            return self.connect_failed(i, &tag("connect", e));
        }
        if !flags.contains(EpollFlags::EPOLLOUT) {
            return;
        }
        s.phase = Phase::Greeting;
        s.deadline = after(Instant::now(), self.shared.plan.timeout);
        self.interest(epoll, i, false);
    }

    /// The connect, greeting or `USER` failed: like a failed `LineConn::open`, the request is
    /// not sent, and without `--duration` neither are the rest of this session's requests
    /// (counted against the plan at the end).
    fn connect_failed(&mut self, i: usize, e: &io::Error) {
        self.out.error(e);
        let s = &mut self.sessions[i];
        s.close();
        s.phase = Phase::Idle;
        if self.stop_at.is_none() {
            self.finish(i);
        } else {
            self.runq.push(i);
        }
    }

    /// What is under way on session `i` failed.
    fn fail(&mut self, i: usize, e: &io::Error) {
        match self.sessions[i].phase {
            Phase::Connecting | Phase::Greeting | Phase::User => self.connect_failed(i, e),
            Phase::Msg => {
                self.out.error(e);
                self.out.failed += 1;
                // The session may be unusable now: a new one for the next request.
                let s = &mut self.sessions[i];
                s.close();
                s.phase = Phase::Idle;
                self.runq.push(i);
            }
            Phase::Idle | Phase::Done => {}
        }
    }

    /// Sets whether writable is in session `i`'s interest set (readable always is).
    fn interest(&mut self, epoll: &Epoll, i: usize, out: bool) {
        let s = &mut self.sessions[i];
        let Some(stream) = &s.stream else { return };
        if s.want_out == out {
            return;
        }
        let mut flags = EpollFlags::EPOLLIN;
        if out {
            flags |= EpollFlags::EPOLLOUT;
        }
        let mut ev = EpollEvent::new(flags, key(i, s.generation));
        match epoll.modify(stream, &mut ev) {
            Ok(()) => s.want_out = out,
            Err(e) => self.fail(i, &io::Error::other(format!("epoll: {e}"))),
        }
    }

    /// Begins sending the request line of `phase` (`User` or `Msg`) on session `i`.
    fn send(&mut self, epoll: &Epoll, i: usize, phase: Phase) {
        let now = Instant::now();
        let cpr = self.shared.plan.connect_per_request;
        let s = &mut self.sessions[i];
        s.phase = phase;
        s.deadline = after(now, self.shared.plan.timeout);
        if phase == Phase::Msg {
            self.out.sent += 1;
            if !cpr {
                s.t0 = now;
            }
        }
        s.writing = true;
        s.written = 0;
        self.write(epoll, i);
    }

    /// Writes what is left of session `i`'s request line.
    fn write(&mut self, epoll: &Epoll, i: usize) {
        let s = &mut self.sessions[i];
        request_line(
            &self.shared.plan,
            self.first_session + i,
            s.phase,
            s.begun.saturating_sub(1),
            &mut self.text,
            &mut self.wbuf,
        );
        let Some(stream) = &s.stream else { return };
        let result = loop {
            match (&*stream).write(&self.wbuf[s.written as usize..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    s.written += n as u32;
                    if s.written as usize == self.wbuf.len() {
                        break Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(all) => {
                s.writing = !all;
                let out = s.writing;
                self.interest(epoll, i, out);
            }
            Err(e) => self.fail(i, &tag("send", e)),
        }
    }

    fn event(&mut self, epoll: &Epoll, key: u64, flags: EpollFlags) {
        let i = (key & 0xffff_ffff) as usize;
        let generation = (key >> 32) as u32;
        let current = |d: &Driver<'_>| {
            d.sessions
                .get(i)
                .is_some_and(|s| s.generation == generation && s.stream.is_some())
        };
        if !current(self) {
            return;
        }
        if self.sessions[i].phase == Phase::Connecting {
            self.connected(epoll, i, flags);
            return;
        }
        let trouble = EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP;
        if self.sessions[i].writing && flags.intersects(EpollFlags::EPOLLOUT | trouble) {
            self.write(epoll, i);
        }
        if current(self)
            && self.sessions[i].phase.reading()
            && flags.intersects(EpollFlags::EPOLLIN | trouble)
        {
            self.read(epoll, i);
        }
    }

    /// Reads what arrived on session `i` and handles every complete line.
    fn read(&mut self, epoll: &Epoll, i: usize) {
        let s = &mut self.sessions[i];
        let Some(stream) = &s.stream else { return };
        let n = match (&*stream).read(&mut self.rbuf) {
            Ok(0) => {
                let e =
                    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection");
                return self.fail(i, &e);
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => return self.fail(i, &tag("receive", e)),
        };
        let generation = s.generation;
        let mut at = 0;
        while at < n {
            let s = &mut self.sessions[i];
            // Bytes nobody waits for (after the session closed or went on) are dropped.
            if s.generation != generation || s.stream.is_none() || !s.phase.reading() {
                break;
            }
            let chunk = &self.rbuf[at..n];
            match memchr::memchr(b'\n', chunk) {
                Some(end) => {
                    s.keep(&chunk[..end]);
                    at += end + 1;
                    self.line(epoll, i);
                }
                None => {
                    s.keep(chunk);
                    at = n;
                }
            }
        }
    }

    /// A complete reply line arrived on session `i`.
    fn line(&mut self, epoll: &Epoll, i: usize) {
        let s = &mut self.sessions[i];
        let mut line = &s.line[..s.line_len as usize];
        while let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let cut = s.line_cut;
        s.line_len = 0;
        s.line_cut = false;
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            // Cut inside a character: the part before it.
            Err(e) if cut && e.error_len().is_none() => {
                std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                );
                return self.fail(i, &tag("receive", e));
            }
        };
        if text == "OK" || text.starts_with("OK ") {
            match s.phase {
                Phase::Greeting => self.send(epoll, i, Phase::User),
                Phase::User => self.send(epoll, i, Phase::Msg),
                Phase::Msg => self.acknowledged(epoll, i),
                _ => {}
            }
            return;
        }
        let what = match s.phase {
            Phase::Greeting => "greeting",
            Phase::User => "USER",
            _ => "MSG",
        };
        let e = io::Error::other(format!("{what}: {text}"));
        self.fail(i, &e);
    }

    /// Session `i`'s `MSG` was acknowledged: count it and start the next request.
    fn acknowledged(&mut self, epoll: &Epoll, i: usize) {
        let shared = self.shared;
        let plan = &shared.plan;
        let s = &mut self.sessions[i];
        self.out.acked(s.t0);
        self.progress += 1;
        if plan.record_acks {
            expand(
                &plan.message,
                self.first_session + i,
                s.begun - 1,
                &plan.login.user,
                &mut self.text,
            );
            self.out.acked_texts.push(self.text.clone());
        }
        s.phase = Phase::Idle;
        if plan.connect_per_request {
            s.quit();
        }
        self.start(epoll, i);
    }

    /// Fails what passed its deadline; returns when to check again.
    fn expire(&mut self, now: Instant) -> Instant {
        let mut earliest = after(now, self.shared.plan.timeout);
        for i in 0..self.sessions.len() {
            let s = &self.sessions[i];
            if !s.phase.waiting() {
                continue;
            }
            if s.deadline > now {
                earliest = earliest.min(s.deadline);
                continue;
            }
            let what = match s.phase {
                Phase::Connecting => "connect",
                _ if s.writing => "send",
                _ => "receive",
            };
            self.fail(i, &timed_out(what));
        }
        earliest.max(now + TIMER_SLACK)
    }

    /// The loop cannot go on: every request under way or still to come fails.
    fn abort(&mut self, e: &io::Error) {
        for i in 0..self.sessions.len() {
            let s = &mut self.sessions[i];
            if s.phase == Phase::Done {
                continue;
            }
            // Only a MSG under way was sent; what was still to come is not sent.
            if s.phase == Phase::Msg {
                self.out.failed += 1;
            }
            self.out.error(e);
            s.close();
            s.phase = Phase::Idle;
            self.finish(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_small() {
        assert!(
            std::mem::size_of::<Session>() <= 192,
            "{}",
            std::mem::size_of::<Session>()
        );
    }

    #[test]
    fn a_long_reply_line_keeps_its_start() {
        let mut s = Session::new(Instant::now());
        s.keep(b"ERR 503 ");
        s.keep(&[b'x'; 200]);
        assert_eq!(s.line_len as usize, LINE_KEEP);
        assert!(s.line_cut);
        assert!(s.line.starts_with(b"ERR 503 xxx"));
    }

    #[test]
    fn request_lines() {
        let plan = Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            threads: 2,
            conns_per_thread: 3,
            login: crate::client::plan::Login {
                user: "ari".into(),
                ..Default::default()
            },
            requests: 1,
            message: "m %t.%r %u".into(),
            connect_per_request: false,
            duration: None,
            rate: None,
            timeout: Duration::from_secs(1),
            record_acks: false,
            verify: crate::client::plan::Verify::Exact,
        };
        let (mut text, mut out) = (String::new(), Vec::new());
        request_line(&plan, 5, Phase::User, 0, &mut text, &mut out);
        assert_eq!(out, b"USER ari\n");
        request_line(&plan, 5, Phase::Msg, 7, &mut text, &mut out);
        assert_eq!(out, b"MSG m 5.7 ari\n");
    }
}
