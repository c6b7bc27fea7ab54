//! Moving an idle session to another worker: its state as bytes ([`Moved`]) and the channel
//! that carries them with the connection's descriptor (`SCM_RIGHTS` over a `SOCK_SEQPACKET`
//! socket pair, one message per session).
//!
//! Every worker has a channel to the master, made before its fork, and nothing else can reach
//! it: no name in any file system or in the abstract namespace, so no other local process (not
//! even a program a session started, which inherits no descriptor) can hand a worker a
//! "session" with a user already proven. A worker retired for a planned reason (`HUP`,
//! `--max-requests`, `TTOU`) sends each idle session to the master; the master passes it on
//! to a serving worker of the current generation, round-robin, or sends it back when none is
//! there. The socket buffers keep whatever the client sent meanwhile: the receiver reads it
//! after registering the socket.
//!
//! The state starts with a magic and a layout version, so a worker reading a state another
//! build wrote refuses what it cannot read rather than guess; the session then stays where it
//! was.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::listen::Protocol;
use crate::request::UserName;
use crate::services::proctable::{Ending, Proc};

/// Layout of the state this build writes and reads.
pub const VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"CSHO";
/// Largest state sent (a session with a long process history stays where it is).
pub const MAX_STATE: usize = 60 * 1024;

/// What a session is, apart from its socket: everything the receiving worker needs to go on
/// as if nothing happened. Only idle sessions move, so there is no half-read line, no reply
/// waiting, no timer and no running process in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// The worker it comes from, and the connection it was there (a chat member's own
    /// earlier events carry that origin: the receiver does not echo them back to it).
    pub from_pid: i32,
    pub from_conn: u32,
    pub from_generation: u32,
    pub protocol: Protocol,
    pub user: Option<String>,
    pub passed: bool,
    /// A line was read (the one-line `name:text` form is over).
    pub spoke: bool,
    pub pass_failures: u8,
    /// The client's address for penalties (the PROXY header's source, or the peer's).
    pub client: Option<IpAddr>,
    /// The client's address and port as the records name it.
    pub peer: Option<SocketAddr>,
    /// A chat member: the first event it has not been sent, in the hub named by `hub`.
    pub chat: Option<u64>,
    pub hub: u64,
    /// Time left before the handshake or idle timeout.
    pub idle_left: Duration,
    /// Processes the session ran, all of them ended (`LIST` still shows them).
    pub procs: Vec<Proc>,
}

/// Why a state was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a session state")]
    NotAState,
    #[error("session state layout {0}; this build reads layout {VERSION}")]
    Version(u16),
    #[error("session state cut short or malformed")]
    Malformed,
}

impl Moved {
    /// The state as bytes: magic, version, then the fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(128);
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&VERSION.to_le_bytes());
        w.extend_from_slice(&self.from_pid.to_le_bytes());
        w.extend_from_slice(&self.from_conn.to_le_bytes());
        w.extend_from_slice(&self.from_generation.to_le_bytes());
        w.push(self.protocol.index() as u8);
        put_bytes(&mut w, self.user.as_deref().map(str::as_bytes));
        let flags = u8::from(self.passed) | u8::from(self.spoke) << 1;
        w.push(flags);
        w.push(self.pass_failures);
        put_ip(&mut w, self.client);
        put_ip(&mut w, self.peer.map(|a| a.ip()));
        w.extend_from_slice(&self.peer.map_or(0, |a| a.port()).to_le_bytes());
        match self.chat {
            Some(seq) => {
                w.push(1);
                w.extend_from_slice(&seq.to_le_bytes());
            }
            None => w.push(0),
        }
        w.extend_from_slice(&self.hub.to_le_bytes());
        let left = self.idle_left.as_millis().min(u64::MAX as u128) as u64;
        w.extend_from_slice(&left.to_le_bytes());
        w.extend_from_slice(&(self.procs.len() as u32).to_le_bytes());
        for p in &self.procs {
            w.extend_from_slice(&p.pid.to_le_bytes());
            put_bytes(&mut w, Some(p.name.as_bytes()));
            w.extend_from_slice(&unix_ms(p.started).to_le_bytes());
            let (at, ending) = p.ended.unwrap_or((p.started, Ending::Exited(0)));
            w.extend_from_slice(&unix_ms(at).to_le_bytes());
            let (kind, code) = match ending {
                Ending::Exited(c) => (0u8, c),
                Ending::Signaled(s) => (1u8, s),
            };
            w.push(kind);
            w.extend_from_slice(&code.to_le_bytes());
        }
        w
    }

    /// Reads a state [`Moved::encode`] wrote; refuses another layout or anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Moved, Refused> {
        let mut r = Reader(bytes);
        if r.take(4).ok() != Some(&MAGIC[..]) {
            return Err(Refused::NotAState);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(Refused::Version(version));
        }
        let from_pid = r.u32()? as i32;
        let from_conn = r.u32()?;
        let from_generation = r.u32()?;
        let protocol = *Protocol::ALL
            .get(r.u8()? as usize)
            .ok_or(Refused::Malformed)?;
        let user = match r.bytes()? {
            Some(b) => Some(valid_user(b)?),
            None => None,
        };
        let flags = r.u8()?;
        let pass_failures = r.u8()?;
        let client = r.ip()?;
        let peer_ip = r.ip()?;
        let port = r.u16()?;
        let chat = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            _ => return Err(Refused::Malformed),
        };
        let hub = r.u64()?;
        let idle_left = Duration::from_millis(r.u64()?);
        let count = r.u32()? as usize;
        if count > crate::services::proctable::MAX_ENTRIES {
            return Err(Refused::Malformed);
        }
        let mut procs = Vec::with_capacity(count);
        for _ in 0..count {
            let pid = r.u32()? as i32;
            let name = r.bytes()?.ok_or(Refused::Malformed)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| Refused::Malformed)?;
            let started = from_unix_ms(r.u64()?);
            let at = from_unix_ms(r.u64()?);
            let ending = match (r.u8()?, r.u32()? as i32) {
                (0, c) => Ending::Exited(c),
                (1, s) => Ending::Signaled(s),
                _ => return Err(Refused::Malformed),
            };
            procs.push(Proc {
                pid,
                name,
                started,
                ended: Some((at, ending)),
            });
        }
        if !r.0.is_empty() || flags > 3 {
            return Err(Refused::Malformed);
        }
        Ok(Moved {
            from_pid,
            from_conn,
            from_generation,
            protocol,
            user,
            passed: flags & 1 != 0,
            spoke: flags & 2 != 0,
            pass_failures,
            client,
            peer: peer_ip.map(|ip| SocketAddr::new(ip, port)),
            chat,
            hub,
            idle_left,
            procs,
        })
    }
}

/// A user name as a session holds it: at most 32 bytes of UTF-8.
fn valid_user(b: &[u8]) -> Result<String, Refused> {
    let name = std::str::from_utf8(b).map_err(|_| Refused::Malformed)?;
    if name.is_empty() || name.len() > UserName::MAX {
        return Err(Refused::Malformed);
    }
    Ok(name.to_string())
}

fn put_bytes(w: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            w.extend_from_slice(&(b.len() as u32 + 1).to_le_bytes());
            w.extend_from_slice(b);
        }
        None => w.extend_from_slice(&0u32.to_le_bytes()),
    }
}

fn put_ip(w: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => w.push(0),
        Some(IpAddr::V4(a)) => {
            w.push(4);
            w.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            w.push(6);
            w.extend_from_slice(&a.octets());
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refused> {
        if self.0.len() < n {
            return Err(Refused::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Refused> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Refused> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Refused> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        self.take(N)?.try_into().map_err(|_| Refused::Malformed)
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, Refused> {
        match self.u32()? {
            0 => Ok(None),
            n => self.take(n as usize - 1).map(Some),
        }
    }

    fn ip(&mut self) -> Result<Option<IpAddr>, Refused> {
        match self.u8()? {
            0 => Ok(None),
            4 => Ok(Some(Ipv4Addr::from(self.array::<4>()?).into())),
            6 => Ok(Some(Ipv6Addr::from(self.array::<16>()?).into())),
            _ => Err(Refused::Malformed),
        }
    }
}

/// A channel's two ends: non-blocking, close-on-exec, one message per session.
pub fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        flags,
    )?)
}

/// Sends `bytes` with a copy of `fd`; `WouldBlock` when the channel is full (nothing sent).
pub fn send(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(bytes)];
    // Non-blocking already (the channel is made so); no SIGPIPE if the other side is gone.
    let flags = MsgFlags::MSG_NOSIGNAL;
    loop {
        match sendmsg::<()>(channel.as_raw_fd(), &iov, &cmsg, flags, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The master's word that sessions were taken by another worker (one that comes back
/// instead is the session itself): a worker does not exit while it waits for either. The
/// message names, for each worker the sessions came from, how many: `passed` then pairs of
/// pid and count (a master passes it on to the old master's workers at a binary upgrade).
const PASSED: &[u8] = b"passed";

/// Tells that sessions of these workers (pid, count) were passed on; `WouldBlock` when the
/// channel is full (nothing sent).
pub fn send_passed(channel: BorrowedFd<'_>, counts: &[(i32, u32)]) -> io::Result<()> {
    let mut msg = PASSED.to_vec();
    for (pid, n) in counts {
        msg.extend_from_slice(&pid.to_le_bytes());
        msg.extend_from_slice(&n.to_le_bytes());
    }
    let flags = MsgFlags::MSG_NOSIGNAL;
    loop {
        match nix::sys::socket::send(channel.as_raw_fd(), &msg, flags) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A new master's first word to the old one: it takes sessions, of this layout. Without it
/// (a build that does not take sessions) the old master's sessions drain where they are.
const HELLO: &[u8] = b"hello";

/// Says [`HELLO`] with this build's layout.
pub fn send_hello(channel: BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = HELLO.to_vec();
    msg.extend_from_slice(&VERSION.to_le_bytes());
    nix::sys::socket::send(channel.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL)?;
    Ok(())
}

/// The first fields of every layout's state, which a master reads to route a session it
/// cannot otherwise read: the layout version and the worker it came from.
pub fn header(state: &[u8]) -> Option<(u16, i32)> {
    let mut r = Reader(state);
    if r.take(4).ok()? != &MAGIC[..] {
        return None;
    }
    let version = r.u16().ok()?;
    let from = r.u32().ok()? as i32;
    Some((version, from))
}

fn passed_counts(bytes: &[u8]) -> Option<Vec<(i32, u32)>> {
    let pairs = bytes.strip_prefix(PASSED)?;
    if pairs.len() % 8 != 0 {
        return None;
    }
    let mut r = Reader(pairs);
    let mut counts = Vec::new();
    while !r.0.is_empty() {
        counts.push((r.u32().ok()? as i32, r.u32().ok()?));
    }
    Some(counts)
}

/// One message received.
#[derive(Debug)]
pub enum Received {
    /// A session's socket and state.
    Session(OwnedFd, Vec<u8>),
    /// Sessions this end sent were taken by other workers: how many, by the worker they came
    /// from.
    Passed(Vec<(i32, u32)>),
    /// A new master takes sessions of this layout.
    Hello(u16),
    /// A message that came without a descriptor, or cut short: nothing to adopt.
    Garbled,
    /// The other end is closed.
    Closed,
}

/// Receives the next message, if one is waiting (`Ok(None)`: none now).
pub fn recv(channel: BorrowedFd<'_>) -> io::Result<Option<Received>> {
    // A message longer than any state is cut (MSG_TRUNC) and refused below.
    let mut buf = vec![0u8; MAX_STATE];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC;
    let (len, cut, fd) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(msg) => {
                let mut fd = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: the kernel just installed this descriptor in this
                                // process for us; nothing else owns it.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                // One descriptor per message; any other is closed here.
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                }
                let cut = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (msg.bytes, cut, fd);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 && fd.is_none() {
        return Ok(Some(Received::Closed));
    }
    if cut {
        // Dropping a descriptor that came with a garbled message closes it.
        return Ok(Some(Received::Garbled));
    }
    if let Some(fd) = fd {
        buf.truncate(len);
        return Ok(Some(Received::Session(fd, buf)));
    }
    let bytes = &buf[..len];
    if let Some(counts) = passed_counts(bytes) {
        return Ok(Some(Received::Passed(counts)));
    }
    match bytes.strip_prefix(HELLO).map(<[u8; 2]>::try_from) {
        Some(Ok(v)) => Ok(Some(Received::Hello(u16::from_le_bytes(v)))),
        _ => Ok(Some(Received::Garbled)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn sample() -> Moved {
        let started = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Moved {
            from_pid: 4242,
            from_conn: 7,
            from_generation: 12,
            protocol: Protocol::Chat,
            user: Some("arijort".into()),
            passed: true,
            spoke: true,
            pass_failures: 2,
            client: Some("10.1.2.3".parse().unwrap()),
            peer: Some("[::1]:40000".parse().unwrap()),
            chat: Some(77),
            hub: 0x0123_4567_89ab_cdef,
            idle_left: Duration::from_millis(12_345),
            procs: vec![
                Proc {
                    pid: 99,
                    name: "echo".into(),
                    started,
                    ended: Some((started + Duration::from_secs(1), Ending::Exited(3))),
                },
                Proc {
                    pid: 100,
                    name: "sleep".into(),
                    started,
                    ended: Some((started, Ending::Signaled(15))),
                },
            ],
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let m = sample();
        assert_eq!(Moved::decode(&m.encode()), Ok(m));
        let bare = Moved {
            protocol: Protocol::Cserver,
            user: None,
            passed: false,
            spoke: false,
            pass_failures: 0,
            client: None,
            peer: None,
            chat: None,
            procs: Vec::new(),
            ..sample()
        };
        assert_eq!(Moved::decode(&bare.encode()), Ok(bare));
        for protocol in Protocol::ALL {
            let m = Moved {
                protocol,
                ..sample()
            };
            assert_eq!(Moved::decode(&m.encode()).unwrap().protocol, protocol);
        }
    }

    #[test]
    fn another_layout_or_a_cut_state_is_refused() {
        let bytes = sample().encode();
        let mut newer = bytes.clone();
        newer[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(Moved::decode(&newer), Err(Refused::Version(VERSION + 1)));
        assert_eq!(Moved::decode(b"HTTP/1.1"), Err(Refused::NotAState));
        for len in 6..bytes.len() {
            assert_eq!(
                Moved::decode(&bytes[..len]),
                Err(Refused::Malformed),
                "{len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Moved::decode(&longer), Err(Refused::Malformed));
        // A protocol number, a user name or flags no build writes.
        let mut protocol = bytes.clone();
        protocol[18] = 9;
        assert_eq!(Moved::decode(&protocol), Err(Refused::Malformed));
        let long_name = Moved {
            user: Some("x".repeat(33)),
            ..sample()
        };
        assert_eq!(Moved::decode(&long_name.encode()), Err(Refused::Malformed));
        let mut flags = bytes.clone();
        let at = 19 + 4 + "arijort".len();
        assert_eq!(flags[at], 3);
        flags[at] = 4;
        assert_eq!(Moved::decode(&flags), Err(Refused::Malformed));
    }

    #[test]
    fn the_limits_of_a_state_are_its_fields_own() {
        // The longest name a session holds, and a table of the most entries, read back.
        let most = Moved {
            user: Some("n".repeat(UserName::MAX)),
            procs: vec![sample().procs[0].clone(); crate::services::proctable::MAX_ENTRIES],
            ..sample()
        };
        assert_eq!(Moved::decode(&most.encode()), Ok(most.clone()));
        // One entry more, or an empty name, is no state a worker writes.
        let mut more = most.clone();
        more.procs.push(sample().procs[1].clone());
        assert_eq!(Moved::decode(&more.encode()), Err(Refused::Malformed));
        let empty = Moved {
            user: Some(String::new()),
            ..sample()
        };
        assert_eq!(Moved::decode(&empty.encode()), Err(Refused::Malformed));
        // Such a state (4 KiB and more) crosses the channel whole.
        let bytes = most.encode();
        assert!(
            bytes.len() > 4096 && bytes.len() <= MAX_STATE,
            "{}",
            bytes.len()
        );
        let (a, b) = channel().unwrap();
        let (_client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        send(a.as_fd(), server.as_fd(), &bytes).unwrap();
        let Some(Received::Session(_, got)) = recv(b.as_fd()).unwrap() else {
            panic!("the state did not arrive whole");
        };
        assert_eq!(got, bytes);
        // Longer than any state: refused, and the socket that came with it closed.
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        send(a.as_fd(), server.as_fd(), &vec![0u8; MAX_STATE + 1]).unwrap();
        drop(server);
        assert!(matches!(recv(b.as_fd()).unwrap(), Some(Received::Garbled)));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "closed without a word");
    }

    #[test]
    fn a_descriptor_crosses_the_channel_with_its_state() {
        let (a, b) = channel().unwrap();
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        let state = sample().encode();
        send(a.as_fd(), right.as_fd(), &state).unwrap();
        drop(right);
        let Some(Received::Session(fd, bytes)) = recv(b.as_fd()).unwrap() else {
            panic!("no session received");
        };
        assert_eq!(Moved::decode(&bytes), Ok(sample()));
        // The same socket: what one end writes, the other reads.
        let mut moved = std::os::unix::net::UnixStream::from(fd);
        moved.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        left.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert!(recv(b.as_fd()).unwrap().is_none(), "one message per send");
        drop(a);
        assert!(matches!(recv(b.as_fd()).unwrap(), Some(Received::Closed)));
    }

    #[test]
    fn a_message_without_a_descriptor_is_a_notice_or_garbled() {
        let (a, b) = channel().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), b"CSHO", MsgFlags::empty()).unwrap();
        assert!(matches!(recv(b.as_fd()).unwrap(), Some(Received::Garbled)));
        send_passed(a.as_fd(), &[(12, 3), (-1, 1)]).unwrap();
        let Some(Received::Passed(counts)) = recv(b.as_fd()).unwrap() else {
            panic!("no notice");
        };
        assert_eq!(counts, vec![(12, 3), (-1, 1)]);
        nix::sys::socket::send(a.as_raw_fd(), b"passed!", MsgFlags::empty()).unwrap();
        assert!(matches!(recv(b.as_fd()).unwrap(), Some(Received::Garbled)));
        send_hello(a.as_fd()).unwrap();
        assert!(matches!(
            recv(b.as_fd()).unwrap(),
            Some(Received::Hello(VERSION))
        ));
        nix::sys::socket::send(a.as_raw_fd(), b"hello", MsgFlags::empty()).unwrap();
        assert!(matches!(recv(b.as_fd()).unwrap(), Some(Received::Garbled)));
    }

    #[test]
    fn the_header_names_the_layout_and_the_sender_whatever_follows() {
        let bytes = sample().encode();
        assert_eq!(header(&bytes), Some((VERSION, 4242)));
        let mut other = bytes[..10].to_vec();
        other[4..6].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(header(&other), Some((7, 4242)));
        assert_eq!(header(&bytes[..9]), None);
        assert_eq!(header(b"HTTP/1.1 200"), None);
    }
}
