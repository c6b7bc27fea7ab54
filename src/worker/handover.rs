//! A worker's side of moving idle sessions ([`crate::handoff`]): a worker retired for a planned
//! reason sends each session the moment it is idle; every worker adopts what the master sends
//! it, as if the session had always been its own (no greeting, same user and proof, same chat
//! membership, the rest of its idle time).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::{Member, Worker};
use crate::clock;
use crate::connection::Conn;
use crate::handoff::{self, Moved, Received};
use crate::listen::Protocol;
use crate::output::Output;
use crate::penalty::Source;
use crate::protocol::Refusal;
use crate::protocols::telnet::Telnet;
use crate::record::Event;
use crate::request::UserName;
use crate::scoreboard::{ServerState, Slot};
use crate::services::chat::{self, Read};
use crate::services::proctable::ProcTable;
use crate::token::{ConnId, Token};

impl Worker<'_> {
    /// A planned retirement (`HUP`, `TTOU`, `--max-requests`) while the server goes on: from
    /// now on every idle session is handed over. Not at a stop of the whole server (nobody
    /// would take them), and not without a master (an orphan).
    pub(super) fn start_handing_over(&mut self) {
        let running = self.ctx.board.header().state.load(Relaxed) == ServerState::Running as u32;
        if running && self.channel.is_some() {
            self.handing_over = true;
        }
    }

    /// Sends every idle session to the master (end of each turn while retiring). A full
    /// channel waits for the next turn; a broken one (the master is gone) ends the hand-over.
    pub(super) fn hand_over_idle(&mut self) {
        for idx in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get(idx) else {
                continue;
            };
            if !self.movable(conn) {
                continue;
            }
            let state = self.moved_state(idx, conn).encode();
            if state.len() > handoff::MAX_STATE {
                continue;
            }
            let Some(channel) = self.channel.as_ref() else {
                return;
            };
            match handoff::send(channel.as_fd(), conn.stream.as_fd(), &state) {
                Ok(()) => {
                    self.forget_moved(idx);
                    self.in_flight += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_for_channel(true);
                    return;
                }
                Err(e) => {
                    crate::warnln!(
                        "cserverd worker {}: handing a session over: {e}",
                        self.ctx.pid
                    );
                    self.handing_over = false;
                    return;
                }
            }
        }
        self.wait_for_channel(false);
    }

    /// Whether the channel is watched for room too (the master has not taken what was sent).
    fn wait_for_channel(&mut self, out: bool) {
        if out == self.channel_blocked {
            return;
        }
        self.channel_blocked = out;
        let mut flags = EpollFlags::EPOLLIN;
        if out {
            flags |= EpollFlags::EPOLLOUT;
        }
        if let Some(channel) = &self.channel {
            let mut ev = EpollEvent::new(flags, Token::Handoff.raw());
            let _ = self.epoll.modify(channel, &mut ev);
        }
    }

    /// Idle: nothing half-read or waiting to be written, no timer, no shell, no running
    /// program, not ending, and where a chat member is, nothing of the hub left to deliver.
    fn movable(&self, conn: &Conn) -> bool {
        let s = &conn.session;
        let at_rest = !conn.stays
            && !conn.broken
            && !conn.read_closed
            && !conn.awaiting_proxy
            && !s.quitting
            && conn.input.pending() == 0
            && conn.output.pending() == 0
            && !s.is_waiting()
            && s.shell.is_none()
            && s.telnet == Telnet::Data
            && s.procs
                .as_ref()
                .is_none_or(|t| t.running().next().is_none());
        // A rembash session is a handshake (seconds long) or a shell: it stays.
        at_rest && s.protocol != Protocol::Rembash
    }

    fn moved_state(&self, idx: usize, conn: &Conn) -> Moved {
        let s = &conn.session;
        Moved {
            from_pid: std::process::id() as i32,
            from_conn: idx as u32,
            from_generation: conn.generation,
            protocol: s.protocol,
            user: s.user.map(|u| u.as_str().to_string()),
            passed: s.passed,
            spoke: s.spoke,
            pass_failures: s.pass_failures,
            client: s.client,
            peer: s.peer,
            // Everything before this worker's place in the hub was delivered to it.
            chat: s.chat.map(|since| since.max(self.chat.next_seq())),
            hub: self.ctx.hub.id(),
            idle_left: conn.deadline.saturating_duration_since(self.ctx.now),
            procs: s
                .procs
                .as_ref()
                .map_or_else(Vec::new, |t| t.procs().to_vec()),
        }
    }

    /// A session is on its way to another worker: out of this one's tables without a word
    /// to the client or the hub (it is still a member, elsewhere).
    fn forget_moved(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let id = ConnId::new(idx, conn.generation);
        // Before the descriptor closes: the socket lives on in the message, and so would its
        // registration in this epoll set.
        let _ = self.epoll.delete(&conn.stream);
        if let Some(source) = conn.source.take() {
            self.uncount_source(source);
        }
        if conn.session.chat.is_some() {
            self.members.retain(|m| m.id != id);
        }
        // Only ended processes: nothing to stop.
        drop(conn.session.procs.take());
        drop(conn);
        self.free.push(idx);
        self.open -= 1;
        Slot::add(&self.slot.handed_over, 1);
    }

    /// Sessions the master sent: adopt each.
    pub(super) fn adopt_sessions(&mut self) {
        loop {
            let Some(channel) = self.channel.as_ref() else {
                return;
            };
            match handoff::recv(channel.as_fd()) {
                Ok(Some(Received::Session(fd, bytes))) => match Moved::decode(&bytes) {
                    Ok(moved) => self.adopt(fd, moved),
                    Err(why) => self.refuse_moved(fd, &why.to_string()),
                },
                Ok(Some(Received::Passed(counts))) => {
                    let n: u64 = counts.iter().map(|&(_, n)| u64::from(n)).sum();
                    self.in_flight = self.in_flight.saturating_sub(n as usize);
                }
                Ok(Some(Received::Garbled | Received::Hello(_))) => {}
                Ok(Some(Received::Closed)) | Err(_) => {
                    // The master is gone: nothing more will come, nor can anything be sent.
                    if let Some(channel) = self.channel.take() {
                        let _ = self.epoll.delete(&channel);
                    }
                    self.handing_over = false;
                    self.in_flight = 0;
                    return;
                }
                Ok(None) => return,
            }
        }
    }

    /// A state this build cannot read (never from a worker of the same binary): the client
    /// is told to reconnect.
    fn refuse_moved(&mut self, fd: OwnedFd, why: &str) {
        let stream = TcpStream::from(fd);
        let mut out = Output::default();
        out.err(Refusal::Replaced);
        let _ = std::io::Write::write(&mut &stream, &out.buf);
        let pid = &self.ctx.pid;
        let record = format!("server {pid} cannot adopt a session: {why}");
        self.ctx.batch.event(format_args!("{record}"));
        self.ctx.errors += 1;
    }

    fn adopt(&mut self, fd: OwnedFd, moved: Moved) {
        let stream = TcpStream::from(fd);
        self.next_generation = super::next_generation(self.next_generation);
        let generation = self.next_generation;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let id = ConnId::new(idx, generation);
        let settings = self.ctx.settings;
        let deadline = clock::after(self.ctx.now, moved.idle_left);
        let mut conn = Conn::new(stream, generation, settings.max_line, deadline);
        let me = std::process::id() as i32;
        conn.stays = moved.from_pid == me;
        let s = &mut conn.session;
        s.protocol = moved.protocol;
        s.user = moved.user.as_deref().map(UserName::new);
        s.passed = moved.passed;
        s.spoke = moved.spoke;
        s.pass_failures = moved.pass_failures;
        s.client = moved.client;
        s.peer = moved.peer;
        if !moved.procs.is_empty() {
            s.procs = Some(Box::new(ProcTable::of_ended(moved.procs.clone())));
        }
        if moved.protocol == Protocol::Procman {
            conn.input.end_lines_at_nul();
        }
        // Counted by the address it was counted by where it came from; never refused: it is
        // already connected.
        if settings.max_conns_per_ip > 0 {
            let ip = match settings.proxy_protocol {
                true => moved.client,
                false => moved.peer.map(|a| a.ip()),
            };
            if let Some(ip) = ip {
                let source = Source::of(ip);
                *self.per_source.entry(source).or_insert(0) += 1;
                conn.source = Some(source);
            }
        }
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if let Err(e) = self.epoll.add(
            &conn.stream,
            EpollEvent::new(interest, Token::Conn(id).raw()),
        ) {
            crate::warnln!("cserverd worker {}: epoll_ctl add: {e}", self.ctx.pid);
            self.free.push(idx);
            return;
        }
        conn.registered = interest;
        if let Some(since) = moved.chat {
            let was = chat::Origin {
                pid: moved.from_pid as u32,
                conn: moved.from_conn,
                generation: moved.from_generation,
            };
            let since = if moved.hub == self.ctx.hub.id() {
                // What this worker delivered before the member came: sent to it now, from
                // the ring.
                self.catch_up(&mut conn, since, was);
                since
            } else {
                // From another hub (a new master that could not adopt the old one's): a
                // member here from now on.
                self.chat.next_seq()
            };
            conn.session.chat = Some(since);
            self.members.push(Member {
                id,
                since,
                was: Some(was),
            });
        }
        if conn.stays {
            // Back from the master, which found no worker for it: not a move after all.
            self.in_flight = self.in_flight.saturating_sub(1);
            let s = &self.slot.handed_over;
            s.store(s.load(Relaxed).saturating_sub(1), Relaxed);
        } else {
            let client = moved.peer.or_else(|| conn.stream.peer_addr().ok());
            let event = Event::SessionMoved {
                user: moved.user.as_deref(),
                client,
                from: moved.from_pid,
                to: me,
            };
            self.ctx.batch.event(format_args!("{event}"));
            Slot::add(&self.slot.adopted, 1);
        }
        self.conns[idx] = Some(conn);
        self.open += 1;
        // Whatever the client sent meanwhile waits in the socket: the level-triggered
        // registration reports it at the next wait.
        self.touch(idx);
    }

    /// Events from `since` up to this worker's place in the hub, for a member that arrives
    /// behind it; its own earlier events (`was`) left out.
    fn catch_up(&self, conn: &mut Conn, since: u64, was: chat::Origin) {
        let hub = self.ctx.hub;
        for seq in since..self.chat.next_seq() {
            let Read::Event(event) = hub.read(seq) else {
                continue;
            };
            if event.origin == was {
                continue;
            }
            if conn.session.protocol == Protocol::Chat {
                event.plain_line(&mut conn.output.buf, b"\n");
            } else {
                event.line(&mut conn.output.buf);
            }
        }
    }
}
