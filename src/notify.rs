//! Worker-to-master messages over a pipe made before the first fork: a worker says "slot N has
//! stopped accepting" (retiring after `--max-requests`, or done draining its listener after a
//! stop). Each message is 4 bytes, far below `PIPE_BUF`, so writes from many workers never mix.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;

/// The master's end.
pub struct Inbox(std::fs::File);

/// A worker's end.
pub struct Notifier(std::fs::File);

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

    /// Tells the master that `slot` no longer accepts connections.
    pub fn stopped_accepting(&self, slot: usize) {
        // A full pipe (the master is not reading) or a dead master: nothing useful to do; the
        // master also learns when the process exits.
        let _ = (&self.0).write(&(slot as u32).to_le_bytes());
    }
}

impl Inbox {
    /// The slots that reported since the last call.
    pub fn drain(&self) -> Vec<usize> {
        let mut buf = [0u8; 4 * 256];
        let mut slots = Vec::new();
        loop {
            match (&self.0).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => slots.extend(
                    buf[..n - n % 4]
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize),
                ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: all read
            }
        }
        slots
    }
}

impl AsFd for Inbox {
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
        tx.stopped_accepting(3);
        tx2.stopped_accepting(70000);
        assert_eq!(inbox.drain(), vec![3, 70000]);
    }
}
