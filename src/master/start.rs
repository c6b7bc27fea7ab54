//! The master's start: bind (or adopt an old master's sockets in a binary upgrade), steer,
//! open the log and the scoreboard, write the pid file, drop privileges, fork the pool, and say
//! ready (to systemd, and to the old master of an upgrade).

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

use super::relay::{Peer, Relay};
use super::{notify_systemd, start_error, write_pid_file, Master, MasterOnly, Phase, StartError};
use crate::config::Settings;
use crate::handoff;
use crate::listen::{Listen, Protocol};
use crate::listener;
use crate::log::{Batch, LogFile};
use crate::metrics::Metrics;
use crate::notify;
use crate::penalty::Penalties;
use crate::phase::SIGNALS;
use crate::pool::Pool;
use crate::procfs::{self, Identity};
use crate::scoreboard::{self, Scoreboard, ServerState};
use crate::services::chat::Hub;
use crate::steering::Steering;
use crate::sys;
use crate::upgrade;

/// The steering of new connections over `fds` (see [`crate::steering`]): the old master's
/// (`handed`), kept across a binary upgrade, or a new one; `true` when kept. On failure no
/// program is left attached (one left by an old master would steer a pool that no longer
/// exists).
fn steer_connections(
    handed: Option<crate::steering::Handed>,
    fds: &[OwnedFd],
    max_workers: usize,
) -> io::Result<(Steering, bool)> {
    let adopted = handed.is_some();
    let steering = match handed {
        Some(h) => Ok(Steering::adopt(h)),
        None => Steering::attach(&fds[0], max_workers.max(fds.len())),
    };
    let all: Vec<&OwnedFd> = fds.iter().collect();
    let steering = steering.and_then(|mut s| s.set(&all).map(|()| s));
    if steering.is_err() {
        let _ = Steering::detach(&fds[0]);
    }
    steering.map(|s| (s, adopted))
}

/// A listener's sockets as the master starts with them.
struct Group {
    listen: Listen,
    /// One per position (copies of one socket when `shared`).
    fds: Vec<OwnedFd>,
    /// One socket every worker shares (from systemd), not a reuseport group.
    shared: bool,
}

/// Copies of `socket` for `n` positions (the socket itself the first).
fn shared_copies(socket: OwnedFd, n: usize) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(n);
    for _ in 1..n {
        fds.push(socket.try_clone()?);
    }
    fds.insert(0, socket);
    Ok(fds)
}

/// Each listener's sockets: handed down by an old master in a binary upgrade (as it described
/// them, or checked against what this one is told to listen on), handed by systemd (socket
/// activation), or bound now as configured.
fn listen_groups(
    settings: &Settings,
    inherited: &mut Option<upgrade::Inherited>,
) -> Result<Vec<Group>, StartError> {
    let Some(inh) = inherited else {
        if let Some(sockets) = crate::activation::activated().map_err(start_error("systemd"))? {
            return sockets
                .into_iter()
                .map(|(socket, protocol)| {
                    let addr = listener::local_addr(&socket).map_err(start_error("systemd"))?;
                    let fds = shared_copies(socket, settings.workers)
                        .map_err(start_error("systemd: dup"))?;
                    Ok(Group {
                        listen: Listen { addr, protocol },
                        fds,
                        shared: true,
                    })
                })
                .collect();
        }
        return settings
            .listens
            .iter()
            .map(|l| {
                let (addr, fds) = listener::bind_group(l.addr, settings.workers, settings.backlog)
                    .map_err(start_error(format!("cannot listen on {}", l.addr)))?;
                Ok(Group {
                    listen: Listen { addr, ..*l },
                    fds,
                    shared: false,
                })
            })
            .collect();
    };
    // Taken, not copied: nothing of the old master's is left open for our workers to inherit.
    let groups = std::mem::take(&mut inh.listeners);
    let described = match inh.descriptions.take() {
        Some(d) if d.len() == groups.len() => d,
        Some(d) => {
            return Err(StartError(format!(
                "binary upgrade: {} listeners inherited, {} described",
                groups.len(),
                d.len()
            )))
        }
        // An older master: its listeners are the configured ones.
        None if groups.len() == settings.listens.len() => settings
            .listens
            .iter()
            .map(|l| (l.protocol, false))
            .collect(),
        None => {
            return Err(StartError(format!(
                "binary upgrade: {} listeners inherited, {} configured",
                groups.len(),
                settings.listens.len()
            )))
        }
    };
    groups
        .into_iter()
        .zip(described)
        .map(|(fds, (protocol, shared))| {
            let addr = fds
                .first()
                .ok_or_else(|| StartError("binary upgrade: no listener inherited".into()))
                .and_then(|fd| {
                    listener::local_addr(fd).map_err(start_error("inherited listener"))
                })?;
            Ok(Group {
                listen: Listen { addr, protocol },
                fds,
                shared,
            })
        })
        .collect()
}

/// The pid a pid file names, and whether that process is a running cserverd (its name says so;
/// a pid file records no start time to check). `None`: no pid file, or none readable.
/// The relay, joined to the old master of an upgrade if it handed over a session channel.
fn relay_from(inherited: Option<&mut upgrade::Inherited>) -> Relay {
    let mut relay = Relay::default();
    if let Some(inh) = inherited {
        if let Some(fd) = inh.handoff.take() {
            // Without this word the old master keeps its sessions, as with a build that does
            // not take any.
            if handoff::send_hello(fd.as_fd()).is_ok() {
                relay.add(nix::unistd::Pid::from_raw(inh.from), Peer::Older, fd);
            }
        }
    }
    relay
}

fn running_master_in(path: &std::path::Path) -> Option<(i32, bool)> {
    let file = crate::files::open(
        path,
        crate::files::Access::Read,
        &crate::files::Trust::any_owner(),
    );
    let text = std::io::read_to_string(file.ok()?).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let running = pid > 1
        && procfs::stat(pid).is_ok_and(|s| !s.exited())
        && procfs::comm(pid).is_ok_and(|c| c == "cserverd");
    Some((pid, running))
}

impl Master {
    pub(super) fn start(settings: Settings) -> Result<Master, StartError> {
        sys::raise_nofile_limit().map_err(start_error("raise open-files limit"))?;
        sys::ignore_file_size_signal().map_err(start_error("ignore SIGXFSZ"))?;
        let mut inherited = upgrade::inherited().map_err(start_error("binary upgrade"))?;
        let groups = listen_groups(&settings, &mut inherited)?;
        // Checked here too: systemd may hand a rembash socket the options did not name.
        if groups
            .iter()
            .any(|g| g.listen.protocol == Protocol::Rembash)
            && !(settings.allow_shell && settings.rembash_secret.is_some())
        {
            return Err(StartError(
                "a rembash listener runs shells: it needs --allow-shell and --rembash-secret FILE"
                    .into(),
            ));
        }
        // Before privileges are dropped: loading a program needs them, and so may map updates
        // on older kernels.
        let mut handed = inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.steering))
            .unwrap_or_default()
            .into_iter();
        // A shared socket has no group to steer.
        let steering: Vec<_> = groups
            .iter()
            .map(|g| {
                let handed = handed.next().flatten();
                (!g.shared).then(|| steer_connections(handed, &g.fds, settings.max_workers))
            })
            .collect();
        let listening: Vec<Listen> = groups.iter().map(|g| g.listen).collect();
        let shared: Vec<bool> = groups.iter().map(|g| g.shared).collect();
        let addr = listening[0].addr;
        // Position i holds socket i of every listener.
        let mut positions: Vec<Vec<OwnedFd>> = Vec::new();
        for group in groups {
            for (i, fd) in group.fds.into_iter().enumerate() {
                match positions.get_mut(i) {
                    Some(p) => p.push(fd),
                    None => positions.push(vec![fd]),
                }
            }
        }
        // An upgrade's new master serves on the old one's socket (nobody else can bind it).
        let handed = inherited.as_mut().and_then(|i| i.metrics.take());
        let metrics = match (settings.metrics_addr, handed) {
            (Some(a), Some(fd))
                if listener::local_addr(&fd).is_ok_and(|l| l == a || a.port() == 0) =>
            {
                Some(Metrics::adopt(fd))
            }
            (Some(a), _) => Some(
                Metrics::bind(a).map_err(start_error(format!("cannot serve metrics on {a}")))?,
            ),
            (None, _) => None,
        };
        let log = LogFile::open(&settings.log, settings.account).map_err(start_error(format!(
            "cannot open log {}",
            settings.log.display()
        )))?;
        if settings.sync != crate::log::SyncMode::None {
            if let Err(e) = log.sync() {
                // Served anyway, as a log that cannot be written is: every MSG is refused.
                crate::warnln!(
                    "cserverd: --sync {}: cannot sync {}: {e}; every MSG will be refused",
                    settings.sync.name(),
                    settings.log.display()
                );
            }
        }
        let board_path = settings
            .stats_file
            .clone()
            .unwrap_or_else(|| scoreboard::default_path(addr));
        // One owner per name: a scoreboard or pid file of a running cserverd is not taken over
        // (an upgrade's new master takes its predecessor's, on purpose).
        let mut replaced = Vec::new();
        if inherited.is_none() {
            if let Ok(old) = Scoreboard::open_readonly(&board_path) {
                let owner = old.header().master();
                if procfs::is_running(owner) {
                    return Err(StartError(format!(
                        "scoreboard {} belongs to cserverd master {}, still running: stop it, \
                         or give this server --stats-file",
                        board_path.display(),
                        owner.pid
                    )));
                }
                replaced.push(format!(
                    "replaced the stale scoreboard {} (master {} is gone)",
                    board_path.display(),
                    owner.pid
                ));
            }
            if let Some(path) = &settings.pid_file {
                match running_master_in(path) {
                    Some((pid, true)) => {
                        return Err(StartError(format!(
                            "pid file {} names cserverd master {pid}, still running: stop it, \
                             or give this server another --pid-file",
                            path.display()
                        )))
                    }
                    Some((pid, false)) => replaced.push(format!(
                        "replaced the stale pid file {} (process {pid} is not a running cserverd)",
                        path.display()
                    )),
                    None => {}
                }
            }
        }
        let board = match &inherited {
            // The old master's scoreboard, with its workers still counting in it: totals go on.
            Some(_) => Scoreboard::adopt(&board_path).map_err(|e| StartError(e.to_string()))?,
            // Room for a replacement beside every worker (reload, recycling) at full size.
            None => {
                Scoreboard::create(&board_path, settings.max_workers * 2, addr.port()).map_err(
                    start_error(format!("cannot create scoreboard {}", board_path.display())),
                )?
            }
        };
        let capacity = board.capacity();
        let header = board.header();
        // Who the master is, for cserverctl to check before it signals (a new master of an
        // upgrade takes the scoreboard over here).
        let own = procfs::own_identity().map_err(start_error("read /proc/self/stat"))?;
        header.set_master(own);
        let uid = settings
            .account
            .map_or_else(nix::unistd::geteuid, |a| a.uid)
            .as_raw();
        header.server_uid.store(uid, Relaxed);
        header
            .max_workers
            .store(settings.max_workers as u32, Relaxed);
        header.state.store(ServerState::Running as u32, Relaxed);
        let taken: Vec<Signal> = SIGNALS.iter().map(|u| u.signal).collect();
        let mask = sys::block_signals(&taken).map_err(start_error("block signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError(format!("signalfd: {e}")))?;
        let (inbox, notifier) = notify::channel().map_err(start_error("pipe"))?;
        // The old master's hub if it hands one over (both generations' members then share
        // it, and a member moving between them misses nothing); else a new one.
        let (hub, hub_note) = match inherited.as_mut().and_then(|i| i.chat.take()) {
            Some([memory, wake]) => match Hub::adopt(memory, wake) {
                Ok(hub) => (hub, None),
                Err(e) => (
                    Hub::create().map_err(start_error("chat hub"))?,
                    Some(format!(
                        "{e}: a new chat hub; members moving here join it anew"
                    )),
                ),
            },
            None => (Hub::create().map_err(start_error("chat hub"))?, None),
        };
        let penalties = Penalties::create().map_err(start_error("PASS penalty table"))?;
        let pid = nix::unistd::getpid();
        if let Some(path) = &settings.pid_file {
            write_pid_file(path, pid).map_err(start_error(format!(
                "cannot write pid file {}",
                path.display()
            )))?;
        }
        let now = Instant::now();
        let exe = std::env::current_exe().map_err(start_error("current_exe"))?;
        // The old master of an upgrade is our parent and alive: its start time is what the
        // scoreboard must show again if it gets the files back (0, which cserverctl never
        // signals, if it cannot be read).
        let upgraded_from = inherited.as_ref().map(|i| Identity {
            pid: i.from,
            start_ticks: procfs::stat(i.from).map_or(0, |s| s.start_ticks),
        });
        let mut master = Master {
            exe,
            args: std::env::args_os().skip(1).collect(),
            // The name execve gave: the binary's (`cserverd`).
            shown_name: "",
            phase: Phase::Running,
            next_report: crate::clock::after(now, settings.report_interval),
            listening,
            shared,
            pool: Pool::new(positions, capacity),
            log,
            batch: Batch::new(),
            board,
            hub,
            penalties,
            own: MasterOnly {
                signals,
                inbox,
                notifier,
                metrics,
                steering: Vec::new(),
                ready: inherited.as_mut().and_then(|i| i.ready.take()),
                relay: relay_from(inherited.as_mut()),
            },
            pid,
            start_ticks: own.start_ticks,
            upgraded_from,
            last_loop: now,
            beat_grace_until: now,
            settings,
            sync_error_reported: false,
        };
        let metrics_at = match master.own.metrics.as_ref().map(|m| m.local_addr()) {
            Some(Ok(a)) => format!(" metrics http://{a}/metrics"),
            _ => String::new(),
        };
        let from = inherited.as_ref().map_or(String::new(), |i| {
            format!(" (binary upgrade from master {})", i.from)
        });
        let init = format!(
            "Server init: cserverd {} master {} listening on {} workers {} log {} scoreboard {}{metrics_at}{from}",
            env!("CARGO_PKG_VERSION"),
            pid,
            addr,
            master.pool.size(),
            master.settings.log.display(),
            board_path.display()
        );
        master.record(format_args!("{init}"));
        for group in 1..master.listening.len() {
            let l = master.listening[group];
            master.record(format_args!("also listening on {l}"));
        }
        for what in replaced {
            master.record(format_args!("{what}"));
        }
        if let Some(note) = hub_note {
            master.record(format_args!("binary upgrade: {note}"));
        }
        for (group, steered) in steering.into_iter().enumerate() {
            let on = master.listening[group];
            // The default listener's lines say nothing more, as before there were others.
            let of = if group == 0 {
                String::new()
            } else {
                format!(" of {on}")
            };
            match steered {
                None => {
                    master.own.steering.push(None);
                    master.record(format_args!(
                        "{on} is one socket from systemd: every worker accepts from it"
                    ));
                }
                Some(Ok((s, adopted))) => {
                    master.own.steering.push(Some(s));
                    let kept = if adopted {
                        format!(
                            ", kept from master {}",
                            inherited.as_ref().map_or(0, |i| i.from)
                        )
                    } else {
                        String::new()
                    };
                    master.record(format_args!(
                        "new connections{of} go to the listening sockets in turn (reuseport steering{kept})"
                    ));
                }
                Some(Err(e)) => {
                    master.own.steering.push(None);
                    master.record(format_args!(
                        "new connections{of} spread by the kernel's reuseport hash (no steering program: {e})"
                    ));
                }
            }
        }
        let mut out = io::stdout();
        for (group, l) in master.listening.iter().enumerate() {
            // The default listener as always; the others (and what systemd handed) with their
            // protocol.
            if group == 0 && l.protocol == Protocol::Cserver {
                let _ = writeln!(out, "listening on {}", l.addr);
            } else {
                let _ = writeln!(out, "listening on {l}");
            }
        }
        let _ = out.flush();
        for position in 0..master.pool.positions().len() {
            match master.free_slot() {
                Some(slot) => master.pool.plan_start(slot, position, now),
                None => return Err(StartError("no free scoreboard slot".into())),
            }
        }
        master.spawn_missing_workers();
        master.publish_pool_size();
        master.wait_workers_ready(Duration::from_secs(10));
        // A stop that came while starting is taken before saying ready: a new master told to
        // stop (an abandoned upgrade) never claims the service.
        master.handle_signals();
        let ready = master.own.ready.take();
        if master.phase.stopping().is_some() {
            return Ok(master);
        }
        match ready {
            // The old master stops accepting once ours accept, and tells systemd our pid (with
            // NotifyAccess=main systemd hears only the main pid, which is still the old one).
            Some(ready) => upgrade::say_ready(ready),
            None => {
                let status = format!("serving {addr} with {} workers", master.pool.size());
                notify_systemd(&[
                    NotifyState::MainPid(pid.as_raw() as u32),
                    NotifyState::Status(&status),
                    NotifyState::Ready,
                ]);
            }
        }
        Ok(master)
    }
}
