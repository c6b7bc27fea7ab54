//! Replies waiting to be written to a client: appended whole by the request handlers, written
//! to the socket as it takes them. A leaf: it knows bytes and refusals, not sessions.

use std::io::{self, Write};
use std::net::TcpStream;

use crate::protocol::Refusal;

/// Replies waiting to be written.
#[derive(Debug, Default)]
pub struct Output {
    /// Bytes; everything before `pos` has been written.
    pub buf: Vec<u8>,
    pos: usize,
    /// `--sync batch`: nothing from here on is written until [`Output::release`] (a reply that
    /// waits for the sync of its record, and every reply after it). The buffer is never
    /// compacted while a hold stands, so positions in it stay valid.
    held: Option<usize>,
}

impl Output {
    /// Bytes not yet written (held ones included).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes that may be written now.
    pub fn writable(&self) -> usize {
        self.held.unwrap_or(self.buf.len()).saturating_sub(self.pos)
    }

    /// Writes nothing from `at` on until [`Output::release`].
    pub fn hold(&mut self, at: usize) {
        self.held = Some(self.held.map_or(at, |h| h.min(at)));
    }

    /// Lets every held byte go.
    pub fn release(&mut self) {
        self.held = None;
    }

    /// Lets the held bytes go if the hold starts at `at` (a hold from earlier stays).
    pub fn release_from(&mut self, at: usize) {
        if self.held == Some(at) {
            self.held = None;
        }
    }

    /// True while replies wait for a sync.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Appends `OK <text>\n`.
    pub fn ok(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(b"OK ");
        self.buf.extend_from_slice(text);
        self.buf.push(b'\n');
    }

    /// Appends `ERR <code> <text>\n`.
    pub fn err(&mut self, why: Refusal) {
        self.buf.extend_from_slice(b"ERR ");
        // Writing into a Vec cannot fail.
        let _ = write!(self.buf, "{why}");
        self.buf.push(b'\n');
    }

    /// Writes as much as the socket takes. `Ok(n)` with bytes left means the socket is full.
    pub fn write_to(&mut self, mut stream: &TcpStream) -> io::Result<usize> {
        let mut written = 0;
        let end = self.held.unwrap_or(self.buf.len());
        while self.pos < end {
            match stream.write(&self.buf[self.pos..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pos += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // Keep a small buffer for the next reply; give a burst's memory back.
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn held_bytes_wait_for_release_and_keep_their_positions() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut out = Output::default();
        out.buf.extend_from_slice(b"first\n");
        let start = out.buf.len();
        out.ok(b"1 1");
        out.ok(b"PONG");
        out.hold(start + 3);
        out.hold(start); // the earlier of two holds stands
        assert!(out.is_held());
        assert_eq!((out.pending(), out.writable()), (out.buf.len(), start));
        assert_eq!(out.write_to(&server).unwrap(), start);
        assert_eq!((out.writable(), out.pending()), (0, out.buf.len() - start));
        // Nothing more goes while held, and the held reply is where it was.
        assert_eq!(out.write_to(&server).unwrap(), 0);
        assert_eq!(&out.buf[start..start + 7], b"OK 1 1\n");
        out.release_from(start + 3); // not where the hold starts: it stays
        assert!(out.is_held());
        out.release_from(start);
        assert!(!out.is_held());
        assert_eq!(out.writable(), out.pending());
        assert_eq!(out.write_to(&server).unwrap(), 15);
        assert_eq!(out.pending(), 0);
        drop(server);
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "first\nOK 1 1\nOK PONG\n");
    }
}
