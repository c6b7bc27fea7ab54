//! Worker-to-master messages over a pipe made before the first fork. Each message is 12 bytes
//! (slot, pid, kind), far below `PIPE_BUF`, so writes from many workers never mix; the pid lets
//! the master ignore news from a process it has already replaced.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;

/// The master's end.
pub struct Inbox(std::fs::File);

/// A worker's end.
pub struct Notifier(std::fs::File);

/// What a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It is retiring on its own (`--max-requests`) and has stopped accepting: start its
    /// successor on the same listening socket.
    Retiring = 1,
    /// Told to stop, it has drained its listening socket's queue and closed it: the socket may
    /// be closed without resetting anyone.
    Drained = 2,
}

/// One message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    pub slot: usize,
    pub pid: i32,
    pub kind: Kind,
}

const SIZE: usize = 12;

/// A new pipe, both ends non-blocking and close-on-exec.
pub fn channel() -> io::Result<(Inbox, Notifier)> {
    let (rx, tx): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    Ok((Inbox(rx.into()), Notifier(tx.into())))
}

impl Notifier {
    /// A second handle for a worker about to be forked.
    pub fn try_clone(&self) -> io::Result<Notifier> {
        Ok(Notifier(self.0.try_clone()?))
    }

    /// Tells the master.
    pub fn send(&self, note: Note) {
        let mut buf = [0u8; SIZE];
        buf[0..4].copy_from_slice(&(note.slot as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&note.pid.to_le_bytes());
        buf[8..12].copy_from_slice(&(note.kind as u32).to_le_bytes());
        // A full pipe or a dead master: nothing useful to do; the master also learns when the
        // process exits.
        let _ = (&self.0).write(&buf);
    }
}

impl Inbox {
    /// The messages that arrived since the last call.
    pub fn drain(&self) -> Vec<Note> {
        let mut buf = [0u8; SIZE * 128];
        let mut notes = Vec::new();
        loop {
            match (&self.0).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => notes.extend(buf[..n - n % SIZE].chunks_exact(SIZE).filter_map(decode)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: all read
            }
        }
        notes
    }
}

fn decode(c: &[u8]) -> Option<Note> {
    let word = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
    let kind = match word(8) {
        1 => Kind::Retiring,
        2 => Kind::Drained,
        _ => return None,
    };
    Some(Note {
        slot: word(0) as usize,
        pid: word(4) as i32,
        kind,
    })
}

impl AsFd for Inbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_whole_and_in_order() {
        let (inbox, tx) = channel().unwrap();
        let tx2 = tx.try_clone().unwrap();
        assert!(inbox.drain().is_empty());
        let a = Note {
            slot: 3,
            pid: 42,
            kind: Kind::Retiring,
        };
        let b = Note {
            slot: 70000,
            pid: 7,
            kind: Kind::Drained,
        };
        tx.send(a);
        tx2.send(b);
        assert_eq!(inbox.drain(), vec![a, b]);
    }
}
