//! Listening sockets: one `SO_REUSEPORT` socket per worker slot, all bound to the same address.
//!
//! The kernel spreads new connections evenly across a reuseport group (a shared listener with
//! `EPOLLEXCLUSIVE` measured very uneven here). The master keeps every socket open, so a
//! respawned worker inherits its slot's queue and connections waiting in it are not lost.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    Ok(fd)
}

fn bound_port(fd: &OwnedFd) -> io::Result<u16> {
    let local: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    local
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| local.as_sockaddr_in6().map(|a| a.port()))
        .ok_or_else(|| io::Error::other("getsockname: not an IP socket"))
}

/// Checks that nobody listens on `addr` and, for port 0, reserves a free port: a plain bind
/// (no `SO_REUSEPORT`) fails with `EADDRINUSE` if any listener holds the port, including another
/// cserverd's reuseport group, which would otherwise silently share our traffic.
pub fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let fd = new_socket(&addr)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("bind {addr}: {e}")))?;
    let mut bound = addr;
    bound.set_port(bound_port(&fd)?);
    Ok(bound)
}

/// One listening socket of the reuseport group on `addr` (whose port must not be 0).
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = new_socket(&addr)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("bind {addr}: {e}")))?;
    listen(&fd, Backlog::new(backlog)?)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("listen {addr}: {e}")))?;
    Ok(fd)
}

/// Binds `count` reuseport listeners on `addr` (port 0 picks one), returning the bound address.
pub fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    let addr = probe(addr)?;
    let fds = (0..count)
        .map(|_| bind_reuseport(addr, backlog))
        .collect::<io::Result<Vec<_>>>()?;
    Ok((addr, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_a_second_server_is_refused() {
        let (addr, fds) = bind_group("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(fds.len(), 3);
        for fd in &fds {
            assert_eq!(bound_port(fd).unwrap(), addr.port());
        }
        let err = probe(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // A client can connect.
        std::net::TcpStream::connect(addr).unwrap();
    }
}
