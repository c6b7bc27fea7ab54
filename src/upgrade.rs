//! Binary upgrade without refusing anyone (`USR2`), as nginx and unicorn do it: the old master
//! starts the binary again (the file may have been replaced) and hands it the listening sockets
//! through the environment; the new master adopts them and the scoreboard, starts its workers
//! and says "ready" through a pipe; only then do the old workers stop accepting and drain. The
//! sockets are never closed, so connections queue in them throughout and nobody is refused.
//!
//! If the new master dies before saying ready, the old one logs it and goes on serving.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getsockopt, sockopt};

use crate::steering::Handed;

/// Descriptors of the listening sockets: each listener's comma-separated, in pool-position
/// order, the listeners separated by `;` (the default listener first).
pub const ENV_LISTEN_FDS: &str = "CSERVERD_LISTEN_FDS";
/// What each listener handed down speaks, `,`-separated in the order of `ENV_LISTEN_FDS`:
/// `PROTOCOL` or `PROTOCOL:shared` (one socket all workers share, from systemd).
pub const ENV_LISTENERS: &str = "CSERVERD_LISTENERS";
/// Descriptor of the pipe on which the new master says it is ready.
pub const ENV_READY_FD: &str = "CSERVERD_READY_FD";
/// Pid of the master being replaced.
pub const ENV_FROM: &str = "CSERVERD_UPGRADE_FROM";
/// Each listener's connection steering program, its two maps and the map's size,
/// `prog,state,socks,n`, the listeners separated by `;` (empty for one without).
pub const ENV_STEERING: &str = "CSERVERD_STEERING";
/// Descriptor of the metrics listener (`--metrics-addr`), which only one process may bind.
pub const ENV_METRICS_FD: &str = "CSERVERD_METRICS_FD";
/// Descriptor of the channel on which the old master passes its workers' idle sessions
/// ([`crate::handoff`]).
pub const ENV_HANDOFF_FD: &str = "CSERVERD_HANDOFF_FD";
/// The chat hub's memory and eventfd, `memfd,eventfd`: both generations share one hub.
pub const ENV_CHAT_FDS: &str = "CSERVERD_CHAT_FDS";

/// What a new master received from the old one.
pub struct Inherited {
    /// Each listener's sockets, in pool-position order.
    pub listeners: Vec<Vec<OwnedFd>>,
    /// What each listener speaks, and whether its workers share one socket (`None` from an
    /// older master, which had only reuseport groups as configured).
    pub descriptions: Option<Vec<(crate::listen::Protocol, bool)>>,
    /// Write "ready" here once the workers are up.
    pub ready: Option<File>,
    /// The old master's pid.
    pub from: i32,
    /// The old master's connection steering of each listener, still attached to its group.
    pub steering: Vec<Option<Handed>>,
    /// The old master's metrics listener.
    pub metrics: Option<OwnedFd>,
    /// The channel to the old master for its workers' sessions.
    pub handoff: Option<OwnedFd>,
    /// The old master's chat hub: memory and eventfd.
    pub chat: Option<[OwnedFd; 2]>,
}

/// Takes over what an old master handed down, if this process was started by an upgrade.
/// Removes the variables so they are not passed further by accident.
pub fn inherited() -> io::Result<Option<Inherited>> {
    let Some(fds) = std::env::var_os(ENV_LISTEN_FDS) else {
        return Ok(None);
    };
    let ready = std::env::var_os(ENV_READY_FD);
    let from = std::env::var_os(ENV_FROM);
    let steering = std::env::var_os(ENV_STEERING);
    let metrics = std::env::var_os(ENV_METRICS_FD);
    let descriptions = std::env::var_os(ENV_LISTENERS);
    let handoff = std::env::var_os(ENV_HANDOFF_FD);
    let chat = std::env::var_os(ENV_CHAT_FDS);
    std::env::remove_var(ENV_LISTENERS);
    std::env::remove_var(ENV_HANDOFF_FD);
    std::env::remove_var(ENV_CHAT_FDS);
    let descriptions = match descriptions {
        Some(v) => Some(
            v.to_string_lossy()
                .split(',')
                .map(|d| {
                    let (name, shared) = match d.strip_suffix(":shared") {
                        Some(name) => (name, true),
                        None => (d, false),
                    };
                    name.parse()
                        .map(|p| (p, shared))
                        .map_err(|e: String| io::Error::other(format!("{ENV_LISTENERS}: {e}")))
                })
                .collect::<io::Result<Vec<_>>>()?,
        ),
        None => None,
    };
    // The master is single-threaded: nothing reads the environment concurrently.
    std::env::remove_var(ENV_LISTEN_FDS);
    std::env::remove_var(ENV_READY_FD);
    std::env::remove_var(ENV_FROM);
    std::env::remove_var(ENV_STEERING);
    std::env::remove_var(ENV_METRICS_FD);
    let metrics = match metrics {
        Some(v) => Some(inherited_listener(&v.to_string_lossy(), ENV_METRICS_FD)?),
        None => None,
    };
    let mut listeners = Vec::new();
    for group in fds.to_string_lossy().split(';') {
        let fds = group
            .split(',')
            .map(|part| inherited_listener(part, ENV_LISTEN_FDS))
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        listeners.push(fds);
    }
    let ready = match ready {
        Some(v) => {
            let fd = parse_fd(&v.to_string_lossy())?;
            // SAFETY: as above: handed to us open, ours alone.
            let file = unsafe { File::from_raw_fd(fd) };
            set_cloexec(file.as_fd())?;
            Some(file)
        }
        None => None,
    };
    let from = from
        .and_then(|v| v.to_string_lossy().parse().ok())
        .unwrap_or(0);
    let steering = match steering {
        Some(v) => v
            .to_string_lossy()
            .split(';')
            .map(|group| match group {
                "" => Ok(None),
                _ => handed_steering(group).map(Some),
            })
            .collect::<io::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let handoff = match handoff {
        Some(v) => Some(inherited_fd(&v.to_string_lossy())?),
        None => None,
    };
    let chat = match chat {
        Some(v) => {
            let v = v.to_string_lossy();
            let Some((memory, wake)) = v.split_once(',') else {
                return Err(io::Error::other(format!("{ENV_CHAT_FDS}: bad value {v:?}")));
            };
            Some([inherited_fd(memory)?, inherited_fd(wake)?])
        }
        None => None,
    };
    Ok(Some(Inherited {
        listeners,
        descriptions,
        ready,
        from,
        steering,
        metrics,
        handoff,
        chat,
    }))
}

/// A listening socket handed down as descriptor `text` (named by the variable `var`).
fn inherited_listener(text: &str, var: &str) -> io::Result<OwnedFd> {
    let fd = parse_fd(text)?;
    // SAFETY: the old master passed this descriptor to us open, for us alone to own; it was
    // checked to be valid by parse_fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if !getsockopt(&owned, sockopt::AcceptConn)? {
        return Err(io::Error::other(format!(
            "{var}: descriptor {fd} is not listening"
        )));
    }
    set_cloexec(owned.as_fd())?;
    Ok(owned)
}

/// A descriptor handed down as `text`, now ours (and closed at our exec).
fn inherited_fd(text: &str) -> io::Result<OwnedFd> {
    let fd = parse_fd(text)?;
    // SAFETY: handed to us open, ours alone (checked open by parse_fd).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd())?;
    Ok(owned)
}

fn handed_steering(text: &str) -> io::Result<Handed> {
    let parts: Vec<&str> = text.split(',').collect();
    let [prog, state, socks, capacity] = parts[..] else {
        return Err(io::Error::other(format!(
            "{ENV_STEERING}: bad value {text:?}"
        )));
    };
    let capacity = capacity
        .parse()
        .map_err(|_| io::Error::other(format!("{ENV_STEERING}: bad size {capacity:?}")))?;
    let mut fds = Vec::new();
    for part in [prog, state, socks] {
        let fd = parse_fd(part)?;
        // SAFETY: handed to us open, ours alone (checked open by parse_fd).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(owned.as_fd())?;
        fds.push(owned);
    }
    let socks = fds.pop().expect("three descriptors");
    let state = fds.pop().expect("three descriptors");
    let prog = fds.pop().expect("three descriptors");
    Ok(Handed {
        prog,
        state,
        socks,
        capacity,
    })
}

fn parse_fd(text: &str) -> io::Result<RawFd> {
    let fd: RawFd = text
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad inherited descriptor {text:?}")))?;
    // Refuse a descriptor that is not open rather than adopt a number.
    // SAFETY: only borrowed for this one fcntl, which fails harmlessly on a closed number.
    if fd < 3 || fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD).is_err() {
        return Err(io::Error::other(format!(
            "inherited descriptor {fd} is not open"
        )));
    }
    Ok(fd)
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// An upgrade under way, seen from the old master.
pub struct Upgrade {
    pub child: Child,
    /// Read end of the ready pipe.
    ready: File,
}

/// What an old master hands the new one.
pub struct Handing<'a> {
    /// Each listener's sockets, in pool-position order.
    pub listeners: Vec<Vec<&'a OwnedFd>>,
    /// What each listener speaks ([`ENV_LISTENERS`]).
    pub descriptions: String,
    /// Each listener's connection steering: its program and maps, and the maps' size.
    pub steering: Vec<Option<([&'a OwnedFd; 3], u32)>>,
    pub metrics: Option<BorrowedFd<'a>>,
    /// The new master's end of the session channel.
    pub handoff: Option<BorrowedFd<'a>>,
    /// The chat hub's memory and eventfd.
    pub chat: [BorrowedFd<'a>; 2],
    /// The old master's pid.
    pub from: i32,
}

impl Upgrade {
    /// Starts `exe` with the original arguments, handing it what `handing` holds.
    pub fn start(exe: &Path, args: &[OsString], handing: Handing<'_>) -> io::Result<Upgrade> {
        let Handing {
            listeners,
            descriptions,
            steering,
            metrics,
            handoff,
            chat,
            from,
        } = handing;
        // Copies without close-on-exec for the new program; closed here once it runs.
        let mut passed: Vec<OwnedFd> = Vec::new();
        let mut pass = |fds: &[&OwnedFd]| -> io::Result<String> {
            let mut numbers = Vec::new();
            for fd in fds {
                let copy = fd.try_clone().and_then(clear_cloexec)?;
                numbers.push(copy.as_raw_fd().to_string());
                passed.push(copy);
            }
            Ok(numbers.join(","))
        };
        let list = listeners
            .iter()
            .map(|group| pass(group))
            .collect::<io::Result<Vec<_>>>()?
            .join(";");
        let mut others = Vec::new();
        if let Some(fd) = handoff {
            others.push((
                ENV_HANDOFF_FD,
                fd.try_clone_to_owned().and_then(clear_cloexec)?,
            ));
        }
        let [memory, wake] = chat;
        let memory = memory.try_clone_to_owned().and_then(clear_cloexec)?;
        let wake = wake.try_clone_to_owned().and_then(clear_cloexec)?;
        let steered = steering
            .iter()
            .map(|s| match s {
                Some((fds, capacity)) => Ok(format!("{},{capacity}", pass(fds)?)),
                None => Ok(String::new()),
            })
            .collect::<io::Result<Vec<_>>>()?;
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let tx = clear_cloexec(tx)?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .env(ENV_LISTEN_FDS, list)
            .env(ENV_LISTENERS, descriptions)
            .env(ENV_READY_FD, tx.as_raw_fd().to_string())
            .env(ENV_FROM, from.to_string());
        if steered.iter().any(|s| !s.is_empty()) {
            command.env(ENV_STEERING, steered.join(";"));
        }
        let metrics = match metrics {
            Some(fd) => Some(fd.try_clone_to_owned().and_then(clear_cloexec)?),
            None => None,
        };
        if let Some(fd) = &metrics {
            command.env(ENV_METRICS_FD, fd.as_raw_fd().to_string());
        }
        for (name, fd) in &others {
            command.env(name, fd.as_raw_fd().to_string());
        }
        let chat_fds = format!("{},{}", memory.as_raw_fd(), wake.as_raw_fd());
        command.env(ENV_CHAT_FDS, chat_fds);
        let child = command.spawn()?;
        drop((others, memory, wake));
        drop(metrics);
        drop(passed);
        drop(tx);
        let ready = File::from(rx);
        fcntl(ready.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Upgrade { child, ready })
    }

    /// The pipe to watch.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    /// `Some(true)` once the new master said ready, `Some(false)` if it closed the pipe without
    /// saying so (it died), `None` while nothing was said yet.
    pub fn poll_ready(&mut self) -> Option<bool> {
        let mut buf = [0u8; 16];
        match self.ready.read(&mut buf) {
            Ok(0) => Some(false),
            Ok(n) => Some(buf[..n].starts_with(b"ready")),
            Err(_) => None,
        }
    }
}

fn clear_cloexec(fd: OwnedFd) -> io::Result<OwnedFd> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(fd)
}

/// The new master's side: says ready and closes the pipe.
pub fn say_ready(mut ready: File) {
    let _ = ready.write_all(b"ready\n");
}
