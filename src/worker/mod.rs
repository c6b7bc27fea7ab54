//! A worker process: one epoll loop, created after fork, serving many connections at once.
//!
//! One turn of the loop: wait for events; accept; read and answer what arrived (replies are
//! provisional); fire due work timers; write the turn's log records with one `write(2)`; settle
//! the provisional replies against what reached the log; then flush replies to the sockets. So no
//! byte of an `OK` for a `MSG` leaves before its records are in the file.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{accept4, SockFlag};
use nix::unistd::Pid;

use crate::clock;
use crate::config::Settings;
use crate::connection::{Conn, ReadOutcome, OUTPUT_HIGH_WATER};
use crate::framing::Frame;
use crate::listen::Protocol;
use crate::log::{LogFile, SyncMode};
use crate::notify::Notifier;
use crate::penalty::Penalties;
use crate::penalty::Source;
use crate::protocol::{self, Command, Refusal};
use crate::protocols;
use crate::scoreboard::{mono_ms, now_ms, Scoreboard, Slot, SlotState};
use crate::services::chat::{self, Hub};
use crate::session::{self, Ctx, Flow, Parts};
use crate::sys;
use crate::title;
use crate::token::{ConnId, Token, GENERATION_MASK};

mod durable;
mod handover;
mod lifecycle;
mod services;

/// Lines one connection may have answered per turn before others get their share.
const LINES_PER_TURN: usize = 256;
/// Connections accepted per listener event.
const ACCEPTS_PER_TURN: usize = 128;
/// Longest sleep without a heartbeat.
const TICK: Duration = Duration::from_millis(500);
/// Pause after `EMFILE`/`ENFILE` before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long an orphaned worker (its master died) may take to finish.
const ORPHAN_GRACE: Duration = Duration::from_millis(500);
/// After being told to stop, keep accepting this long: connections whose handshake was under
/// way when the listener began refusing new ones get into the queue and are served.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

/// What a worker is given by the master.
pub struct WorkerInit<'a> {
    /// Scoreboard slot index.
    pub slot: usize,
    /// Pool position, i.e. which listening sockets.
    pub position: usize,
    /// That position's socket of each listener, and what it speaks.
    pub listeners: Vec<(OwnedFd, Protocol)>,
    /// Where to say "stopped accepting".
    pub notifier: Notifier,
    /// This worker's end of its hand-over channel to the master ([`crate::handoff`]).
    pub channel: Option<OwnedFd>,
    pub log: LogFile,
    pub board: &'a Scoreboard,
    /// The chat hub, mapped by the master before forking.
    pub hub: &'a Hub,
    /// Wrong `PASS` secrets per client address, mapped by the master before forking.
    pub penalties: &'a Penalties,
    pub settings: &'a Settings,
    /// The master; the worker stops if it dies.
    pub master: Pid,
}

/// A member of the chat hub served by this worker.
#[derive(Debug, Clone, Copy)]
struct Member {
    id: ConnId,
    /// The first event it may be sent.
    since: u64,
    /// Where it was before it moved here: its own earlier events carry that origin.
    was: Option<chat::Origin>,
}

struct Worker<'a> {
    /// Local members of the chat hub.
    members: Vec<Member>,
    /// Where this worker is in the hub's ring: the next event it has to deliver.
    chat: chat::Cursor,
    /// Processes started for sessions (RUN, SHELL), by pid: whose they are.
    children: HashMap<i32, services::Child>,
    slot_index: usize,
    slot: &'a Slot,
    notifier: Notifier,
    /// Sessions come from the master and go to it here ([`crate::handoff`]).
    channel: Option<OwnedFd>,
    /// Retired for a planned reason: idle sessions are handed over.
    handing_over: bool,
    /// The channel is full: watched for room.
    channel_blocked: bool,
    /// Sessions sent to the master that it has not said were taken (or sent back): the
    /// worker does not exit before.
    in_flight: usize,
    /// Recycle after this many requests of this process (`--max-requests` plus jitter).
    max_requests: Option<u64>,
    /// Requests counted in the slot when this process started.
    committed_at_start: u64,
    /// Stopping: accept until then, then drain the queue and close the listener.
    drain_until: Option<Instant>,
    master: Pid,
    epoll: Epoll,
    /// The position's socket of each listener, by listener number; empty once dropped.
    listeners: Vec<(OwnedFd, Protocol)>,
    accept_resume: Option<Instant>,
    /// Whether accepted sockets come with `TCP_NODELAY` from the listener (Linux copies it);
    /// learnt from the first one. If not, it is set on each.
    nodelay_inherited: Option<bool>,
    signals: SignalFd,
    log: LogFile,
    log_error_reported: bool,
    /// `--sync batch`: provisional replies written to the log, waiting for a sync.
    held: Vec<session::Ack>,
    /// When the log was last synced (`--sync`).
    last_sync: Instant,
    /// A failed sync not yet recorded in the log.
    sync_error: Option<String>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u32,
    open: u64,
    /// `--max-conns-per-ip`: connections open in this worker per client address.
    per_source: std::collections::HashMap<Source, u32>,
    /// Connections to flush and re-examine at the end of this turn.
    touched: Vec<usize>,
    /// Connections with complete lines left for the next turn.
    again: Vec<usize>,
    scratch: Vec<u8>,
    ctx: Ctx<'a>,
    accepted: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Graceful stop: until when open sessions may go on.
    stopping: Option<Instant>,
    last_tick: Instant,
}

/// Runs the worker until it is told to stop; returns the process exit status.
pub fn run(init: WorkerInit<'_>) -> i32 {
    let slot_index = init.slot;
    // First, while this process has one thread: `ps` and `pgrep` tell the workers apart. A
    // title that cannot be set changes nothing else.
    let _ = title::set_name(&format!("cserverd-w{slot_index}"));
    let _ = title::set_title(&format!("cserverd: worker {slot_index}"));
    match Worker::new(init).and_then(|mut w| w.serve()) {
        Ok(()) => 0,
        Err(e) => {
            crate::warnln!(
                "cserverd worker {} (slot {slot_index}): {e}",
                std::process::id()
            );
            1
        }
    }
}

/// The connection `id` names, if it is still open (not closed, its slot not reused).
fn conn_in(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.idx)?
        .as_mut()
        .filter(|c| c.generation == id.generation)
}

impl<'a> Worker<'a> {
    fn new(mut init: WorkerInit<'a>) -> io::Result<Worker<'a>> {
        if init.settings.sync != SyncMode::None {
            // A failed sync must reach this worker, not be taken by another one's sync.
            if let Err(e) = init.log.own_description() {
                crate::warnln!(
                    "cserverd worker {}: cannot open the log anew ({e}); sharing the master's \
                     descriptor, whose failed syncs another process may be told of instead",
                    std::process::id()
                );
            }
        }
        // First: changing user clears the parent-death signal set below.
        if let Some(account) = init.settings.account {
            // Room for the programs and shells, and for the account's own workers: the old and
            // new ones of a reload or of an upgrade's two masters.
            let s = init.settings;
            let nproc = (s.max_processes + 4 * s.max_workers + 16) as u64;
            sys::drop_privileges(account, nproc)
                .map_err(|e| io::Error::other(format!("cannot drop privileges: {e}")))?;
        }
        // The master may already be gone, before the request took effect.
        if !sys::die_with_parent(Signal::SIGTERM, init.master)? {
            return Err(io::Error::other("master exited before the worker started"));
        }
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (group, (fd, _)) in init.listeners.iter().enumerate() {
            epoll.add(fd, listener_event(group))?;
        }
        epoll.add(
            signals.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, Token::Signals.raw()),
        )?;
        if let Some(channel) = &init.channel {
            epoll.add(
                channel,
                EpollEvent::new(EpollFlags::EPOLLIN, Token::Handoff.raw()),
            )?;
        }
        // Edge-triggered: every post to the chat hub is an edge for every worker.
        epoll.add(
            init.hub.wake_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, Token::Chat.raw()),
        )?;

        let slot = init.board.slot(init.slot);
        let pid = std::process::id();
        slot.pid.store(pid as i32, Relaxed);
        slot.listener.store(init.position as u32, Relaxed);
        slot.started_ms.store(now_ms(), Relaxed);
        slot.heartbeat_ms.store(now_ms(), Relaxed);
        // Connections counted as open died with the previous process.
        slot.open.store(0, Relaxed);
        let committed = slot.requests.load(Relaxed);
        slot.beat_mono_ms.store(mono_ms(), Relaxed);
        slot.set_state(SlotState::Ready);
        let settings = init.settings;
        let max_requests = (settings.max_requests > 0)
            .then(|| settings.max_requests + random_below(settings.max_requests_jitter + 1));
        Ok(Worker {
            slot_index: init.slot,
            notifier: init.notifier,
            channel: init.channel,
            handing_over: false,
            channel_blocked: false,
            in_flight: 0,
            max_requests,
            committed_at_start: committed,
            drain_until: None,
            slot,
            master: init.master,
            epoll,
            listeners: init.listeners,
            accept_resume: None,
            nodelay_inherited: None,
            signals,
            log: init.log,
            log_error_reported: false,
            held: Vec::new(),
            last_sync: Instant::now(),
            sync_error: None,
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            open: 0,
            per_source: Default::default(),
            touched: Vec::new(),
            again: Vec::new(),
            scratch: vec![0; 64 * 1024],
            ctx: Ctx::new(
                init.settings,
                init.board,
                init.hub,
                init.penalties,
                pid.to_string(),
                init.slot,
                committed,
            ),
            members: Vec::new(),
            chat: chat::Cursor::at_head(init.hub),
            children: HashMap::new(),
            accepted: 0,
            bytes_in: 0,
            bytes_out: 0,
            stopping: None,
            last_tick: Instant::now(),
        })
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut events = vec![EpollEvent::empty(); 1024];
        loop {
            let now = Instant::now();
            if self.drain_until.is_some_and(|at| now >= at) {
                self.finish_drain();
            }
            if let Some(deadline) = self.stopping {
                if self.open == 0 && self.listeners.is_empty() && self.in_flight == 0 {
                    // The records of the last turn (its sessions handed over in it).
                    self.commit();
                    return Ok(());
                }
                let last_replies = Duration::from_secs(1).saturating_add(self.ctx.settings.work);
                if now >= clock::after(deadline, last_replies) {
                    return Ok(()); // clients that will not read their last replies
                }
                if now >= deadline {
                    self.close_sessions();
                }
            }
            let timeout = self.timeout(now);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(io::Error::other(format!("epoll_wait: {e}"))),
            };
            self.ctx.now = Instant::now();
            self.ctx.batch.new_turn();
            for ev in &events[..n] {
                match Token::from_raw(ev.data()) {
                    Token::Listener(group) => {
                        self.accept_ready(group as usize);
                    }
                    Token::Signals => {
                        if self.handle_signals()? {
                            return Ok(());
                        }
                    }
                    Token::Chat => self.deliver_chat(),
                    Token::Handoff => self.adopt_sessions(),
                    Token::Pty(id) => self.pty_ready(id, ev.events()),
                    Token::Conn(id) => self.conn_ready(id, ev.events()),
                }
            }
            // Only finish_turn adds to `again`: reuse its buffer rather than free it each turn.
            let mut again = std::mem::take(&mut self.again);
            for &idx in &again {
                self.serve_lines(idx);
                self.touch(idx);
            }
            again.clear();
            self.again = again;
            self.fire_timers();
            self.commit();
            self.recycle_if_due();
            self.finish_turn();
            if self.handing_over {
                self.hand_over_idle();
            }
            self.tick();
        }
    }

    fn timeout(&self, now: Instant) -> u16 {
        sleep_ms(
            Wakeups {
                answer_now: !self.again.is_empty(),
                timer: session::next_timeout(&self.ctx.timers, now, TICK),
                accept_resume: self.accept_resume,
                stopping: self.stopping,
                drain_until: self.drain_until,
                sync_due: self.sync_deadline(),
                work: self.ctx.settings.work,
            },
            now,
        )
    }

    /// Accepts up to a turn's share from listener `group`; returns true when its queue was
    /// found empty.
    fn accept_ready(&mut self, group: usize) -> bool {
        let Some((fd, protocol)) = self.listeners.get(group).map(|(l, p)| (l.as_raw_fd(), *p))
        else {
            return true;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            match accept4(fd, flags) {
                Ok(fd) => {
                    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    self.add_conn(stream, protocol);
                }
                Err(Errno::EAGAIN) => return true,
                // The client gave up while queued, or a signal: try the next one.
                Err(Errno::ECONNABORTED | Errno::EINTR | Errno::EPROTO) => {}
                Err(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
                    // Out of descriptors or memory: stop accepting for a moment rather than
                    // spin on a listener that stays readable.
                    for (l, _) in &self.listeners {
                        let _ = self.epoll.delete(l);
                    }
                    self.accept_resume = Some(clock::after(self.ctx.now, ACCEPT_BACKOFF));
                    return true;
                }
                Err(e) => {
                    crate::warnln!("cserverd worker {}: accept4: {e}", self.ctx.pid);
                    return true;
                }
            }
        }
        false
    }

    fn add_conn(&mut self, stream: TcpStream, protocol: Protocol) {
        let max = self.ctx.settings.max_conns;
        if self.open >= max as u64 {
            let why = format!("{max} connections open (--max-conns)");
            return self.refuse_conn(stream, &why);
        }
        let proxied = self.ctx.settings.proxy_protocol;
        // Only looked up when something needs it: a limit per address, or a protocol other than
        // cserver (their records name the client; rembash's wrong secrets count against it).
        let wants_peer =
            !proxied && (self.ctx.settings.max_conns_per_ip > 0 || protocol != Protocol::Cserver);
        let peer = if wants_peer {
            stream.peer_addr().ok()
        } else {
            None
        };
        // Counted by the peer now, or by the client a PROXY header names once it is read.
        let source = match peer {
            Some(peer) => match self.count_source(peer.ip()) {
                Ok(source) => source,
                Err(why) => return self.refuse_conn(stream, &why),
            },
            None => None,
        };
        // Replies are written whole; Nagle would only delay them.
        let inherited = *self
            .nodelay_inherited
            .get_or_insert_with(|| stream.nodelay().unwrap_or(false));
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        self.next_generation = next_generation(self.next_generation);
        let generation = self.next_generation;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let settings = self.ctx.settings;
        let deadline = clock::after(self.ctx.now, protocols::first_deadline(protocol, settings));
        let mut conn = Conn::new(stream, generation, settings.max_line, deadline);
        conn.source = source;
        conn.session.protocol = protocol;
        conn.session.peer = peer;
        if protocol == Protocol::Procman {
            conn.input.end_lines_at_nul();
        }
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if let Err(e) = self.epoll.add(
            &conn.stream,
            EpollEvent::new(interest, Token::Conn(ConnId::new(idx, generation)).raw()),
        ) {
            crate::warnln!("cserverd worker {}: epoll_ctl add: {e}", self.ctx.pid);
            self.free.push(idx);
            return;
        }
        conn.registered = interest;
        if settings.proxy_protocol {
            // The greeting waits for the PROXY header: the client is the one it names.
            conn.awaiting_proxy = true;
        } else {
            let parts = Parts {
                out: &mut conn.output,
                session: &mut conn.session,
                id: ConnId::new(idx, generation),
            };
            protocols::open(parts, &mut self.ctx);
        }
        self.conns[idx] = Some(conn);
        self.accepted += 1;
        self.open += 1;
        self.touch(idx);
        if !self.ctx.effects.is_empty() {
            self.apply_effects();
        }
    }

    /// `--max-conns-per-ip`: counts one more connection from `ip` in this worker, or says why
    /// not. `None` when there is no limit (nothing is counted).
    fn count_source(&mut self, ip: std::net::IpAddr) -> Result<Option<Source>, String> {
        let max = self.ctx.settings.max_conns_per_ip;
        if max == 0 {
            return Ok(None);
        }
        let source = Source::of(ip);
        let n = self.per_source.entry(source).or_insert(0);
        if *n as usize >= max {
            return Err(format!(
                "{max} connections open from {source} (--max-conns-per-ip)"
            ));
        }
        *n += 1;
        Ok(Some(source))
    }

    /// A connection counted under `source` is gone.
    pub(super) fn uncount_source(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// `--max-conns`, `--max-conns-per-ip`: no room for this connection. The refusal is written
    /// straight to the new socket (best effort: it is empty) and the connection closed; nothing
    /// is kept for it.
    fn refuse_conn(&mut self, stream: TcpStream, why: &str) {
        let _ = (&stream).write(b"ERR 503 server busy: too many connections; try again later\n");
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |p| p.to_string());
        let pid = &self.ctx.pid;
        let record = format!("server {pid} refused connection from {peer}: {why}");
        self.ctx.batch.event(format_args!("{record}"));
        self.ctx.errors += 1;
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_in(&mut self.conns, id)
    }

    fn conn_ready(&mut self, id: ConnId, flags: EpollFlags) {
        let idx = id.idx;
        if self.conn_mut(id).is_some_and(|c| c.session.shell.is_some()) {
            return self.raw_input(id, flags);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let Some(conn) = self.conn_mut(id) else {
            self.scratch = scratch;
            return;
        };
        let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        let mut got = 0;
        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            // Reset, or closed both ways: nothing more can be written. Reported even without
            // interest, so it must end the connection or the loop would spin on it.
            conn.broken = true;
        } else if flags.intersects(readable) && !conn.read_closed && !conn.read_paused() {
            match conn.read_once(&mut scratch) {
                Ok(ReadOutcome::Data(n)) => got = n,
                Ok(ReadOutcome::Closed | ReadOutcome::WouldBlock) => {}
                Err(_) => conn.broken = true,
            }
        }
        self.scratch = scratch;
        self.bytes_in += got as u64;
        if self.ctx.settings.proxy_protocol && !self.proxy_header(id) {
            self.touch(idx);
            return;
        }
        self.serve_lines(idx);
        self.touch(idx);
    }

    /// Answers the complete lines waiting in a connection, up to this turn's share.
    fn serve_lines(&mut self, idx: usize) {
        let Some(Some(conn)) = self.conns.get_mut(idx) else {
            return;
        };
        // A shell session has no lines any more. (A client that does not read its replies gets
        // no more answers until it does: checked before every line, below.)
        if conn.broken || conn.session.shell.is_some() {
            return;
        }
        let ctx = &mut self.ctx;
        let max_line = ctx.settings.max_line;
        let Conn {
            stream,
            input,
            output,
            session,
            generation,
            deadline,
            ..
        } = conn;
        let mut served = 0;
        for _ in 0..LINES_PER_TURN {
            // Checked before every line, not once a turn: a client that does not read gets at
            // most one reply beyond the high water, however much each line asks for.
            if session.is_waiting() || session.quitting || output.pending() > OUTPUT_HIGH_WATER {
                break;
            }
            let Some(frame) = input.next_frame_ended() else {
                break;
            };
            served += 1;
            let id = ConnId::new(idx, *generation);
            if session.protocol != Protocol::Cserver {
                let (frame, end) = frame;
                let parts = Parts {
                    out: output,
                    session,
                    id,
                };
                if protocols::line(frame, end, parts, ctx) == Flow::Stop {
                    break;
                }
                continue;
            }
            let frame = frame.0;
            let parse = if session.spoke {
                protocol::parse_later
            } else {
                protocol::parse
            };
            session.spoke = true;
            let parts = Parts {
                out: output,
                session,
                id,
            };
            let flow = match frame {
                Frame::TooLong => {
                    session::refuse(parts.out, ctx, Refusal::TooLong(max_line));
                    Flow::Continue
                }
                Frame::Line(line) => match parse(line) {
                    Ok(cmd) => {
                        if matches!(cmd, Command::Pass(_)) && parts.session.client.is_none() {
                            // Wrong secrets are counted against the address: one lookup, only
                            // for sessions that try a secret.
                            parts.session.client = stream.peer_addr().ok().map(|a| a.ip());
                        }
                        session::apply(cmd, parts, ctx)
                    }
                    Err(why) => {
                        session::refuse(parts.out, ctx, why);
                        Flow::Continue
                    }
                },
            };
            if flow == Flow::Stop {
                break;
            }
        }
        // Only complete requests of a logged-in session move the idle deadline: a byte at a
        // time holds nothing, and the handshake deadline never moves.
        if served > 0 && (session.user.is_some() || protocols::without_login(session.protocol)) {
            *deadline = clock::after(ctx.now, ctx.settings.idle_timeout);
        }
        input.compact();
        if !self.ctx.effects.is_empty() {
            self.apply_effects();
        }
    }

    fn touch(&mut self, idx: usize) {
        if let Some(Some(conn)) = self.conns.get_mut(idx) {
            if !conn.touched {
                conn.touched = true;
                self.touched.push(idx);
            }
        }
    }

    fn fire_timers(&mut self) {
        while let Some(std::cmp::Reverse((at, idx, timer))) = self.ctx.timers.peek().copied() {
            if at > self.ctx.now {
                break;
            }
            self.ctx.timers.pop();
            if let Some(Some(conn)) = self.conns.get_mut(idx) {
                let id = ConnId::new(idx, conn.generation);
                let (out, session) = (&mut conn.output, &mut conn.session);
                if session::work_done(out, session, id, timer, &mut self.ctx) {
                    self.touch(idx);
                }
            }
        }
    }

    /// Flushes replies, closes finished connections, updates epoll interest.
    fn finish_turn(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for &idx in &touched {
            let Some(Some(conn)) = self.conns.get_mut(idx) else {
                continue;
            };
            conn.touched = false;
            if !conn.broken && conn.output.writable() > 0 {
                flush_counted(conn, &mut self.bytes_out);
            }
            if conn.finished() {
                // Closing removes it from the epoll set: no interest change first.
                self.close_conn(idx);
                continue;
            }
            if !conn.broken {
                let wanted = conn.wanted_interest();
                if wanted != conn.registered {
                    let id = ConnId::new(idx, conn.generation);
                    let mut ev = EpollEvent::new(wanted, Token::Conn(id).raw());
                    match self.epoll.modify(&conn.stream, &mut ev) {
                        Ok(()) => conn.registered = wanted,
                        Err(_) => conn.broken = true,
                    }
                }
            }
            if conn.finished() {
                self.close_conn(idx);
            } else if conn.can_answer() && conn.has_lines() {
                self.again.push(idx);
            }
        }
        let mut touched = touched;
        touched.clear();
        self.touched = touched;
    }
}

/// How a listening socket is watched: readable, and, for a socket every worker shares (from
/// systemd), only one waiting worker woken per connection (`EPOLLEXCLUSIVE`; a socket of a
/// worker's own has no other waiter, so it changes nothing there).
fn listener_event(group: usize) -> EpollEvent {
    let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
    EpollEvent::new(flags, Token::Listener(group as u32).raw())
}

/// What the loop may wake up for.
struct Wakeups {
    /// Lines are waiting to be answered: no sleep at all.
    answer_now: bool,
    /// Until the first work timer (at most a tick).
    timer: Duration,
    /// The end of a pause in accepting (out of descriptors).
    accept_resume: Option<Instant>,
    /// The stop deadline.
    stopping: Option<Instant>,
    /// The end of the drain linger.
    drain_until: Option<Instant>,
    /// `--sync batch`: when the sync the held replies wait for is due.
    sync_due: Option<Instant>,
    /// `--work-ms`: past the stop deadline, replies under way get this long (and a second).
    work: Duration,
}

/// How long the loop may sleep in `epoll_wait`, in milliseconds (rounded up, so a timer is
/// never polled for just before it is due).
fn sleep_ms(w: Wakeups, now: Instant) -> u16 {
    if w.answer_now {
        return 0;
    }
    let mut wait = w.timer;
    // Past the stop deadline the next moment that matters is the hard exit, not the deadline
    // itself (which would make every wait zero).
    let stop = w.stopping.map(|at| {
        if now < at {
            at
        } else {
            clock::after(at, w.work.saturating_add(Duration::from_secs(1)))
        }
    });
    for at in [w.accept_resume, stop, w.drain_until, w.sync_due]
        .into_iter()
        .flatten()
    {
        wait = wait.min(at.saturating_duration_since(now));
    }
    (wait.as_micros().div_ceil(1000)).min(u16::MAX as u128) as u16
}

/// Writes what `conn` has pending and counts it in `bytes_out`; a failed write breaks the
/// connection (it is closed at the end of the turn).
fn flush_counted(conn: &mut Conn, bytes_out: &mut u64) {
    match conn.flush() {
        Ok(n) => *bytes_out += n as u64,
        Err(_) => conn.broken = true,
    }
}

/// The generation after `g`: counts up within `GENERATION_MASK` and wraps to 0, so the id of a
/// slot's next connection differs from the last one's for 2^30 connections.
fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & GENERATION_MASK
}

/// A random number in `0..n` (jitter).
fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    crate::sys::random_u64() % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(timer_ms: u64) -> Wakeups {
        Wakeups {
            answer_now: false,
            timer: Duration::from_millis(timer_ms),
            accept_resume: None,
            stopping: None,
            drain_until: None,
            sync_due: None,
            work: Duration::from_millis(200),
        }
    }

    #[test]
    fn generations_count_up_and_wrap_within_the_mask() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(GENERATION_MASK - 1), GENERATION_MASK);
        assert_eq!(next_generation(GENERATION_MASK), 0);
        let mut g = 0;
        let seen: std::collections::HashSet<u32> = (0..1000)
            .map(|_| {
                g = next_generation(g);
                g
            })
            .collect();
        assert_eq!(
            seen.len(),
            1000,
            "a generation came back within 1000 connections"
        );
    }

    #[test]
    fn random_below_stays_below_and_varies() {
        assert_eq!(random_below(0), 0);
        assert_eq!(random_below(1), 0);
        let draws: Vec<u64> = (0..2000).map(|_| random_below(1000)).collect();
        assert!(draws.iter().all(|&d| d < 1000), "{draws:?}");
        let distinct: std::collections::HashSet<u64> = draws.iter().copied().collect();
        // 2000 draws of 1000 values: about 865 distinct; fewer than 500 is not random.
        assert!(distinct.len() > 500, "{} distinct values", distinct.len());
        assert!(draws.iter().any(|&d| d >= 500), "never in the upper half");
    }

    #[test]
    fn the_loop_sleeps_until_the_first_thing_due() {
        let now = Instant::now();
        let ms = |n| now + Duration::from_millis(n);
        assert_eq!(sleep_ms(idle(500), now), 500);
        assert_eq!(
            sleep_ms(
                Wakeups {
                    answer_now: true,
                    ..idle(500)
                },
                now
            ),
            0
        );
        // Rounded up: 2.1 ms is 3.
        assert_eq!(sleep_ms(idle(0), now), 0);
        let t = Wakeups {
            timer: Duration::from_micros(2100),
            ..idle(0)
        };
        assert_eq!(sleep_ms(t, now), 3);
        // Each deadline alone shortens the sleep.
        let resume = Wakeups {
            accept_resume: Some(ms(100)),
            ..idle(500)
        };
        assert_eq!(sleep_ms(resume, now), 100);
        let drain = Wakeups {
            drain_until: Some(ms(40)),
            ..idle(500)
        };
        assert_eq!(sleep_ms(drain, now), 40);
        let stop = Wakeups {
            stopping: Some(ms(70)),
            ..idle(500)
        };
        assert_eq!(sleep_ms(stop, now), 70);
        let sync = Wakeups {
            sync_due: Some(ms(9)),
            ..idle(500)
        };
        assert_eq!(sleep_ms(sync, now), 9);
        // Past the stop deadline: until the hard exit, work time and a second later.
        let past = Wakeups {
            stopping: Some(now),
            ..idle(5000)
        };
        assert_eq!(sleep_ms(past, ms(100)), 1100);
        // At the deadline itself it has passed: the hard exit, not a zero wait.
        let at_deadline = Wakeups {
            stopping: Some(now),
            ..idle(5000)
        };
        assert_eq!(sleep_ms(at_deadline, now), 1200);
        // A deadline already passed: no sleep; a far one: the timer's.
        let late = Wakeups {
            drain_until: Some(now),
            ..idle(500)
        };
        assert_eq!(sleep_ms(late, ms(5)), 0);
        let far = Wakeups {
            accept_resume: Some(ms(9000)),
            ..idle(500)
        };
        assert_eq!(sleep_ms(far, now), 500);
    }
}
