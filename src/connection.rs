//! One client connection: the socket, its framed input, its pending output and what the event
//! loop needs to know about it. Knows bytes, not meaning.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

use nix::sys::epoll::EpollFlags;

use crate::framing::LineBuf;
use crate::listen::Protocol;
pub use crate::output::Output;
use crate::request::Session;

/// Stop reading from a client whose unsent replies pass this many bytes (it sends without
/// reading); resume when they drain.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// Unanswered input (beyond one partial line) above which a client is not read.
pub const INPUT_HIGH_WATER: usize = 64 * 1024;

/// A client connection owned by one worker.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub input: LineBuf,
    pub output: Output,
    pub session: Session,
    /// Distinguishes this connection from an earlier one in the same table index.
    pub generation: u32,
    /// What epoll is currently told about this socket.
    pub registered: EpollFlags,
    /// The client shut down its side (read returned 0); replies may still be written.
    pub read_closed: bool,
    /// The socket failed; close without writing more.
    pub broken: bool,
    /// Already in this turn's list of connections to flush and re-examine.
    pub touched: bool,
    /// When the session times out: handshake deadline until `USER`, then idle deadline.
    pub deadline: Instant,
    /// What epoll is told about the session's shell pty, if any.
    pub pty_registered: EpollFlags,
    /// `--proxy-protocol`: the header has not been read yet.
    pub awaiting_proxy: bool,
    /// `--max-conns-per-ip`: the client address this connection is counted under.
    pub source: Option<crate::penalty::Source>,
    /// Handed to another worker and sent back (none could take it): it stays here.
    pub stays: bool,
}

/// Result of one read.
pub enum ReadOutcome {
    /// This many bytes were appended to the input.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The client closed its sending side.
    Closed,
}

/// One `read(2)` of a non-blocking socket into `buf` (`Data(n)`: the first `n` bytes), again
/// if a signal interrupted it.
pub fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    loop {
        match (&*stream).read(buf) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(n) => return Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Conn {
    /// Wraps an accepted, non-blocking socket.
    pub fn new(stream: TcpStream, generation: u32, max_line: usize, deadline: Instant) -> Conn {
        Conn {
            stream,
            input: LineBuf::new(max_line),
            output: Output::default(),
            session: Session::default(),
            generation,
            registered: EpollFlags::empty(),
            read_closed: false,
            broken: false,
            touched: false,
            deadline,
            pty_registered: EpollFlags::empty(),
            awaiting_proxy: false,
            source: None,
            stays: false,
        }
    }

    /// One `read(2)` into `scratch`, appended to the framed input.
    pub fn read_once(&mut self, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
        let got = read_some(&self.stream, scratch)?;
        match got {
            ReadOutcome::Closed => {
                self.read_closed = true;
                // A last line without its '\n' is still a request. (Not while a PROXY header
                // is awaited: its bytes are not lines, and a made-up byte could complete a
                // binary header that was cut short. The header's reader finishes the input.)
                if !self.awaiting_proxy {
                    self.input.finish();
                }
            }
            ReadOutcome::Data(n)
                if self.session.protocol == Protocol::Chat && !self.awaiting_proxy =>
            {
                // A telnet user's commands are answered and never reach the chat.
                let telnet = &mut self.session.telnet;
                crate::protocols::telnet::feed(
                    telnet,
                    &scratch[..n],
                    &mut self.input,
                    &mut self.output.buf,
                );
            }
            ReadOutcome::Data(n) => self.input.extend(&scratch[..n]),
            ReadOutcome::WouldBlock => {}
        }
        Ok(got)
    }

    /// Writes pending output; returns the bytes written.
    pub fn flush(&mut self) -> io::Result<usize> {
        self.output.write_to(&self.stream)
    }

    /// True when reading more now would only pile up input or output.
    pub fn read_paused(&self) -> bool {
        if let Some(shell) = &self.session.shell {
            // Raw mode: the client is read as fast as the pty takes its bytes.
            return shell.to_shell.len() > crate::services::shell::INPUT_HIGH_WATER;
        }
        // Lines read but not answered yet are bounded too: a client that pipelines faster than
        // its lines are answered (256 a turn) is not read until they are.
        self.session.is_waiting()
            || self.output.pending() > OUTPUT_HIGH_WATER
            || self.input.pending() > self.input.max_line() + INPUT_HIGH_WATER
    }

    /// True when waiting lines may be answered now (not waiting on work, replies not piling up).
    pub fn can_answer(&self) -> bool {
        !self.session.is_waiting() && self.output.pending() <= OUTPUT_HIGH_WATER
    }

    /// The epoll interest this connection needs now.
    pub fn wanted_interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if !self.read_closed && !self.read_paused() {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        // Held replies (`--sync batch`) wait for the sync, not for the socket.
        if self.output.writable() > 0 {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    /// True when nothing more can or will happen on this connection: close it.
    pub fn finished(&self) -> bool {
        if self.broken {
            return true;
        }
        if let Some(shell) = &self.session.shell {
            // The shell is gone and everything it wrote was sent, or the client hung up.
            return (shell.ended && self.output.pending() == 0) || self.read_closed;
        }
        let idle = self.output.pending() == 0 && !self.session.is_waiting();
        idle && (self.session.quitting || (self.read_closed && !self.has_lines()))
    }

    /// True when a complete line waits in the input.
    pub fn has_lines(&self) -> bool {
        !self.awaiting_proxy
            && !self.session.quitting
            && self.session.shell.is_none()
            && self.input.has_complete_line()
    }
}
