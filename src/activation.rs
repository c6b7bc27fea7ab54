//! systemd socket activation: a service started by a `.socket` unit gets its listening sockets
//! as descriptors 3, 4, ... with `LISTEN_PID` (ours), `LISTEN_FDS` (how many) and
//! `LISTEN_FDNAMES` (their names, `:`-separated: `FileDescriptorName=` in the unit). Here a
//! socket's name is the protocol it speaks (`cserver`, `chat`, `reverse`, `procman`,
//! `rembash`); a socket without a name (systemd calls it `unknown`) speaks cserver. The master
//! adopts these sockets instead of binding any: `--host`, `--port` and `--listen` are then not
//! used. Each is one socket that every worker accepts from (not a reuseport group of one socket
//! per worker), as inetd and nginx do with sockets they are given.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getsockopt, sockopt};

use crate::listen::Protocol;

/// The first descriptor systemd passes.
const FIRST_FD: i32 = 3;
/// More than any unit would pass; a larger count is refused as a mistake.
const MOST: usize = 64;

/// The sockets systemd passed to this process, each with its protocol, or `None` when this
/// process was not socket-activated. Unsets the variables, so nothing started later sees them.
pub fn activated() -> io::Result<Option<Vec<(OwnedFd, Protocol)>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // The master is single-threaded: nothing reads the environment concurrently.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    // Meant for another process (a shell that exported them): not ours to take.
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let Some(count) = count else {
        return Ok(None);
    };
    let count: usize = count
        .parse()
        .ok()
        .filter(|n| (1..=MOST).contains(n))
        .ok_or_else(|| io::Error::other(format!("LISTEN_FDS={count:?}: not 1 to {MOST}")))?;
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let fd = FIRST_FD + i as i32;
        // Refuse a number that is not open rather than own it.
        // SAFETY: only borrowed for this one fcntl, which fails harmlessly on a closed number.
        if fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD).is_err() {
            return Err(io::Error::other(format!(
                "LISTEN_FDS={count}: descriptor {fd} is not open"
            )));
        }
        // SAFETY: systemd passed descriptors FIRST_FD.. open (checked above), for this process
        // to own; each is checked to be a listening socket before it is used.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        if !getsockopt(&socket, sockopt::AcceptConn).unwrap_or(false) {
            return Err(io::Error::other(format!(
                "LISTEN_FDS: descriptor {fd} is not a listening socket"
            )));
        }
        crate::listener::local_addr(&socket).map_err(|e| {
            io::Error::other(format!("LISTEN_FDS: descriptor {fd}: {e} (TCP only)"))
        })?;
        // Accepting must never block a worker's loop; nothing of it is left to a child.
        fcntl(socket.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(socket.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let protocol = match names.get(i).copied() {
            None | Some("" | "unknown") => Protocol::Cserver,
            Some(name) => name.parse().map_err(|e: String| {
                io::Error::other(format!("LISTEN_FDNAMES: descriptor {fd}: {e}"))
            })?,
        };
        sockets.push((socket, protocol));
    }
    Ok(Some(sockets))
}
