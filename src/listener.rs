//! Listening sockets: one `SO_REUSEPORT` socket per worker slot, all bound to the same address.
//!
//! New connections are spread across the group in turn by a small eBPF program (see
//! [`crate::steering`]), or by the kernel's hash of the addresses when it cannot be loaded; a
//! shared listener with `EPOLLEXCLUSIVE` measured very uneven here. The master keeps every socket
//! open, so a respawned worker inherits its slot's queue and connections waiting in it are not
//! lost.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};

/// A non-blocking, close-on-exec TCP socket of `addr`'s family (for listening or connecting).
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fd = tcp_socket(addr)?;
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

/// The address a socket is bound to.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let local: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    if let Some(a) = local.as_sockaddr_in() {
        return Ok(SocketAddr::from((a.ip(), a.port())));
    }
    if let Some(a) = local.as_sockaddr_in6() {
        return Ok(SocketAddr::from((a.ip(), a.port())));
    }
    Err(io::Error::other("getsockname: not an IP socket"))
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

/// Checks that a reuseport listener could be bound on `addr` (`cserverd --check` for
/// `--metrics-addr`): bound, not listening, and closed at once.
pub fn probe_reuseport(addr: SocketAddr) -> io::Result<()> {
    let fd = new_socket(&addr)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("bind {addr}: {e}")))
}

/// One listening socket of the reuseport group on `addr` (whose port must not be 0).
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = new_socket(&addr)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    // Accepted sockets inherit it: replies are written whole, Nagle would only delay them.
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
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

/// Makes a listening socket drop new connection attempts (pure SYNs) while handshakes already
/// under way still complete and queued connections stay acceptable. A socket filter sees the TCP
/// header at offset 0 on a listener; byte 13 holds the flags.
///
/// Used before a listener is closed (graceful stop, pool shrinking): the worker drains the queue,
/// then the socket closes with nothing queued to reset. A client whose SYN was dropped retries
/// after a second and, the socket gone, reaches another listener of the group (or is refused
/// when the whole server stopped), instead of being accepted and then reset.
pub fn refuse_new_connections(fd: &OwnedFd) -> io::Result<()> {
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let code = [
        // A = tcp flags byte
        bpf(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        // A &= SYN|ACK
        bpf(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, SYN | ACK),
        // a pure SYN: drop (skip to the last instruction); anything else: keep
        bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, 0, SYN),
        bpf(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
        bpf(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `code`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The record logged when [`refuse_new_connections`] fails (unprivileged processes may not be
/// allowed to attach socket filters, e.g. after `--user`).
pub fn cannot_refuse(e: &io::Error) -> String {
    format!(
        "cannot make the listener refuse new connections (SO_ATTACH_FILTER: {e}); \
         connections arriving while it closes may be reset"
    )
}

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
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

    #[test]
    fn a_refusing_listener_keeps_its_queue_but_takes_no_new_connections() {
        use std::net::TcpStream;
        use std::time::Duration;
        let (addr, fds) = bind_group("127.0.0.1:0".parse().unwrap(), 1, 128).unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        refuse_new_connections(&fds[0]).unwrap();
        // The SYN is dropped: the connect neither succeeds nor is refused before the timeout.
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // The connection queued before is still there to accept, and works.
        let listener = std::net::TcpListener::from(fds[0].try_clone().unwrap());
        listener.set_nonblocking(false).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        served.write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        (&queued).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
}
