//! The worker's side of the services that outlive one request: chat delivery, the raw byte
//! flow of a `SHELL` session, reaping processes started for sessions, and what a closing
//! connection leaves behind.

use std::sync::atomic::Ordering::Relaxed;

use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{conn_in, Member, Worker};
use crate::connection::{read_some, Conn, ReadOutcome, OUTPUT_HIGH_WATER};
use crate::listen::Protocol;
use crate::services::chat::{self, Kind};
use crate::services::proctable::Ending;
use crate::session::{Effect, UserName};
use crate::token::{ConnId, Token};

/// A process started for a session.
pub(super) struct Child {
    /// Whose it is.
    pub(super) conn: ConnId,
    /// For a shell: the user (its end is logged even after the connection is gone).
    pub(super) shell_of: Option<UserName>,
}

/// A chat member whose unread output passes this is dropped from the hub.
const CHAT_HIGH_WATER: usize = 64 * 1024;

/// True when a member's output is more than its socket took: over the high water in bytes it
/// could be sent now. Replies held for a sync (`--sync batch`, with what follows them) are not
/// the member's doing, unless they pile up past the bound of replies a connection may hold.
fn chat_backlog(out: &crate::output::Output) -> bool {
    out.writable() > CHAT_HIGH_WATER
        || out.pending() > CHAT_HIGH_WATER + crate::connection::OUTPUT_HIGH_WATER
}

impl Worker<'_> {
    /// Carries out what this turn's commands asked for.
    pub(super) fn apply_effects(&mut self) {
        for effect in std::mem::take(&mut self.ctx.effects) {
            match effect {
                Effect::Spawned { pid, conn } => {
                    self.children.insert(
                        pid,
                        Child {
                            conn,
                            shell_of: None,
                        },
                    );
                }
                Effect::Joined(id) => {
                    let since = self
                        .conn_mut(id)
                        .and_then(|c| c.session.chat)
                        .unwrap_or(self.chat.next_seq());
                    self.members.push(Member {
                        id,
                        since,
                        was: None,
                    });
                }
                Effect::Left(id) => self.members.retain(|m| m.id != id),
                Effect::ShellStarted(id) => self.start_raw(id),
            }
        }
    }

    /// New chat events: deliver them to this worker's members.
    pub(super) fn deliver_chat(&mut self) {
        let hub = self.ctx.hub;
        let me = std::process::id();
        while let Some(event) = self.chat.next(hub, self.ctx.now) {
            if self.members.is_empty() {
                continue;
            }
            let mut dropped = Vec::new();
            for &Member { id, since, was } in &self.members {
                let own = event.origin.pid == me
                    && event.origin.conn as usize == id.idx
                    && event.origin.generation == id.generation;
                if own || was == Some(event.origin) || event.seq < since {
                    continue;
                }
                let Some(conn) = conn_in(&mut self.conns, id) else {
                    continue;
                };
                if chat_backlog(&conn.output) {
                    // Many events at once (this worker fell behind, not the member): what its
                    // socket takes now is not held against it. Only a full socket is.
                    // A failed write breaks it: closed at the end of the turn, which takes it
                    // out of the chat.
                    super::flush_counted(conn, &mut self.bytes_out);
                    if !conn.broken && chat_backlog(&conn.output) {
                        dropped.push(id);
                        continue;
                    }
                }
                if conn.session.protocol == Protocol::Chat {
                    event.plain_line(&mut conn.output.buf, b"\n");
                } else {
                    event.line(&mut conn.output.buf);
                }
                if !conn.touched {
                    conn.touched = true;
                    self.touched.push(id.idx);
                }
            }
            for id in dropped {
                self.drop_member(id);
            }
        }
    }

    /// A member that does not read: out of the hub, with a notice to it and to the others.
    fn drop_member(&mut self, id: ConnId) {
        self.members.retain(|m| m.id != id);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.session.chat = None;
        if conn.session.protocol == Protocol::Chat {
            // Only a member: nothing is left for the connection to do.
            conn.output
                .buf
                .extend_from_slice(b"you were dropped from the chat: not reading\n");
            conn.session.quitting = true;
        } else {
            conn.output
                .buf
                .extend_from_slice(b"* you were dropped from the chat: not reading\n");
        }
        let user = conn.session.user.unwrap_or_default();
        let origin = chat::Origin {
            pid: std::process::id(),
            conn: id.idx as u32,
            generation: id.generation,
        };
        self.ctx.hub.post(Kind::Dropped, origin, user.as_str(), b"");
        self.touch(id.idx);
    }

    /// `SHELL` succeeded: watch the pty; bytes already received after the `SHELL` line are the
    /// first input of the shell.
    fn start_raw(&mut self, id: ConnId) {
        let Some(conn) = conn_in(&mut self.conns, id) else {
            return;
        };
        let Some(shell) = conn.session.shell.as_mut() else {
            return;
        };
        let early = conn.input.take_pending();
        shell.to_shell.extend_from_slice(&early);
        let pid = shell.pid;
        let user = conn.session.user.unwrap_or_default();
        let interest = EpollFlags::EPOLLIN;
        let registered = self
            .epoll
            .add(shell.fd(), EpollEvent::new(interest, Token::Pty(id).raw()));
        match registered {
            Ok(()) => conn.pty_registered = interest,
            Err(_) => conn.broken = true,
        }
        self.children.insert(
            pid,
            Child {
                conn: id,
                shell_of: Some(user),
            },
        );
        self.touch(id.idx);
    }

    /// Bytes from a client in shell mode: straight to the pty.
    pub(super) fn raw_input(&mut self, id: ConnId, flags: EpollFlags) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Some(conn) = conn_in(&mut self.conns, id) {
            let readable = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                conn.broken = true;
            } else if flags.intersects(readable) && !conn.read_closed && !conn.read_paused() {
                // Only on readiness (as for lines): a wake-up to write to the client must not
                // read past the pty's input high water.
                match read_some(&conn.stream, &mut scratch) {
                    Ok(ReadOutcome::Closed) => conn.read_closed = true,
                    Ok(ReadOutcome::Data(n)) => {
                        self.bytes_in += n as u64;
                        if let Some(shell) = conn.session.shell.as_mut() {
                            shell.to_shell.extend_from_slice(&scratch[..n]);
                            if shell.write_pending().is_err() {
                                shell.ended = true;
                            }
                        }
                    }
                    Ok(ReadOutcome::WouldBlock) => {}
                    Err(_) => conn.broken = true,
                }
            }
        }
        self.scratch = scratch;
        self.update_pty_interest(id);
        self.touch(id.idx);
    }

    /// The pty is readable (the shell wrote) or writable (it can take more input).
    pub(super) fn pty_ready(&mut self, id: ConnId, flags: EpollFlags) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if let Some(conn) = conn_in(&mut self.conns, id) {
            let Conn {
                session, output, ..
            } = conn;
            if let Some(shell) = session.shell.as_mut() {
                if flags.contains(EpollFlags::EPOLLOUT) && shell.write_pending().is_err() {
                    shell.ended = true;
                }
                if flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                    && output.pending() <= OUTPUT_HIGH_WATER
                {
                    match shell.read_into(&mut scratch, &mut output.buf) {
                        Ok(_) => {}
                        Err(_) => shell.ended = true,
                    }
                }
            }
        }
        self.scratch = scratch;
        self.update_pty_interest(id);
        self.touch(id.idx);
    }

    /// Reads from the pty only while the client keeps up; writes only while input waits.
    pub(super) fn update_pty_interest(&mut self, id: ConnId) {
        let Some(conn) = conn_in(&mut self.conns, id) else {
            return;
        };
        let Some(shell) = conn.session.shell.as_ref() else {
            return;
        };
        if shell.ended {
            return;
        }
        let mut wanted = EpollFlags::empty();
        if conn.output.pending() <= OUTPUT_HIGH_WATER {
            wanted |= EpollFlags::EPOLLIN;
        }
        if !shell.to_shell.is_empty() {
            wanted |= EpollFlags::EPOLLOUT;
        }
        if wanted != conn.pty_registered {
            let mut ev = EpollEvent::new(wanted, Token::Pty(id).raw());
            match self.epoll.modify(shell.fd(), &mut ev) {
                Ok(()) => conn.pty_registered = wanted,
                Err(_) => conn.broken = true,
            }
        }
    }

    /// `--proxy-protocol`: reads the header a load balancer sends first. Returns true once the
    /// connection may go on to its lines; a connection without a valid header is refused.
    pub(super) fn proxy_header(&mut self, id: ConnId) -> bool {
        let Some(conn) = conn_in(&mut self.conns, id) else {
            return false;
        };
        if !conn.awaiting_proxy {
            return true;
        }
        if conn.session.quitting {
            // Refused already: nothing it sends is read as a request or answered again.
            return false;
        }
        let via = conn.stream.peer_addr().ok();
        let proxies = &self.ctx.settings.proxy_from;
        if !via.is_some_and(|p| proxies.iter().any(|n| n.contains(p.ip()))) {
            // Whatever it claims, this peer is the client: refused once it speaks (its bytes
            // read, so the close is clean), and logged as what it is.
            if conn.input.peek().is_empty() && !conn.read_closed {
                return false;
            }
            conn.output.buf.extend_from_slice(
                b"ERR 403 PROXY headers are taken only from trusted proxies (--proxy-from); closing\n",
            );
            conn.session.quitting = true;
            self.ctx.errors += 1;
            let peer = via.map_or_else(|| "?".to_string(), |p| p.to_string());
            let pid = &self.ctx.pid;
            let record =
                format!("server {pid} connection from {peer} refused: not a trusted proxy");
            self.ctx.batch.event(format_args!("{record}"));
            return false;
        }
        let parsed = crate::proxy::parse(conn.input.peek());
        let (origin, used) = match parsed {
            Ok(crate::proxy::Parsed::Done(origin, used)) => (origin, used),
            // Still coming; or nothing at all came before the close (a health check's
            // connect-and-close is no error: the connection just ends).
            Ok(crate::proxy::Parsed::Incomplete)
                if !conn.read_closed || conn.input.peek().is_empty() =>
            {
                return false
            }
            Ok(crate::proxy::Parsed::Incomplete) | Err(_) => {
                conn.output
                    .buf
                    .extend_from_slice(b"ERR 400 expected a PROXY protocol header; closing\n");
                conn.session.quitting = true;
                self.ctx.errors += 1;
                return false;
            }
        };
        conn.input.consume(used);
        conn.awaiting_proxy = false;
        if conn.read_closed {
            conn.input.finish();
        }
        let client = match origin {
            crate::proxy::Origin::Proxied { source, .. } => Some(source),
            crate::proxy::Origin::Local => via,
        };
        if let Some(ip) = client.map(|a| a.ip()) {
            match self.count_source(ip) {
                Ok(source) => {
                    if let Some(conn) = conn_in(&mut self.conns, id) {
                        conn.source = source;
                    }
                }
                Err(why) => {
                    let Some(conn) = conn_in(&mut self.conns, id) else {
                        return false;
                    };
                    conn.output.buf.extend_from_slice(
                        b"ERR 503 server busy: too many connections; try again later\n",
                    );
                    conn.session.quitting = true;
                    conn.awaiting_proxy = true; // nothing more of it is read as requests
                    self.ctx.errors += 1;
                    let pid = &self.ctx.pid;
                    let record = format!("server {pid} refused connection from {ip}: {why}");
                    self.ctx.batch.event(format_args!("{record}"));
                    return false;
                }
            }
        }
        let Some(conn) = conn_in(&mut self.conns, id) else {
            return false;
        };
        conn.session.client = client.map(|a| a.ip());
        conn.session.peer = client;
        let parts = crate::session::Parts {
            out: &mut conn.output,
            session: &mut conn.session,
            id,
        };
        // Its effects (a chat member's join) are applied by `serve_lines`, which follows.
        crate::protocols::open(parts, &mut self.ctx);
        if let Some(client) = client {
            self.slot.set_last_client(client);
            let via = via.map_or_else(|| "?".to_string(), |a| a.to_string());
            let pid = &self.ctx.pid;
            let record = format!("server {pid} connection from {client} via {via}");
            self.ctx.batch.event(format_args!("{record}"));
        }
        true
    }

    /// Reaps every exited child (RUN processes, shells) and tells its session.
    pub(super) fn reap_children(&mut self) {
        loop {
            let (pid, ending) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Ending::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid.as_raw(), Ending::Signaled(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(child) = self.children.remove(&pid) else {
                continue;
            };
            let procs = &self.slot.procs;
            let _ = procs.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            if let Some(conn) = self.conn_mut(child.conn) {
                if let Some(shell) = conn.session.shell.as_mut().filter(|s| s.pid == pid) {
                    shell.reaped = true;
                }
            }
            if let Some(user) = child.shell_of {
                // Logged even if the connection is already gone.
                let me = &self.ctx.pid;
                let record = format!(
                    "server {me} shell end pid {pid} for user {} ({ending})",
                    user.as_str()
                );
                self.ctx.batch.event(format_args!("{record}"));
            } else if let Some(conn) = self.conn_mut(child.conn) {
                if let Some(table) = conn.session.procs.as_mut() {
                    table.reaped(pid, ending);
                }
            }
        }
    }

    /// Ends what a closing connection started, then drops it (closing the socket removes it
    /// from the epoll set; the pty is closed with its shell).
    pub(super) fn close_conn(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let id = ConnId::new(idx, conn.generation);
        if let Some(source) = conn.source.take() {
            self.uncount_source(source);
        }
        if let Some(procs) = conn.session.procs.as_mut() {
            procs.end_all();
        }
        if conn.session.chat.take().is_some() {
            self.members.retain(|m| m.id != id);
            let origin = chat::Origin {
                pid: std::process::id(),
                conn: idx as u32,
                generation: conn.generation,
            };
            let user = conn.session.user.unwrap_or_default();
            self.ctx.hub.post(Kind::Leave, origin, user.as_str(), b"");
            if conn.session.protocol == Protocol::Chat {
                let client = conn
                    .session
                    .peer
                    .map_or_else(|| "?".to_string(), |a| a.to_string());
                let name = user.as_str().as_bytes();
                self.ctx
                    .batch
                    .from_client(&self.ctx.pid, "chat leave", name, &client);
                self.ctx.count(Protocol::Chat);
            }
        }
        if let Some(shell) = conn.session.shell.take() {
            let _ = self.epoll.delete(shell.fd());
            // Dropping it hangs up on the shell if it still runs.
        }
        drop(conn);
        self.free.push(idx);
        self.open -= 1;
    }
}
