//! The log records operators grep for and tests check, named once. The master and the workers
//! write them through [`Event`]'s `Display`; the tests build the text they look for from the same
//! values, so a reworded record changes both or neither.
//!
//! The two records of every `MSG` are written byte by byte on the hot path by
//! [`crate::log::Batch`]; their fixed words are [`RECVD_MESSAGE`] and [`COMPLETED_REQ`].

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::penalty::Source;

/// The words of a `MSG`'s first record: `server <pid> recvd message "<text>" from user <name>`.
pub const RECVD_MESSAGE: &str = "recvd message";
/// The words of a `MSG`'s second record: `completed req "<text>" on <pid> total reqs <n>`.
pub const COMPLETED_REQ: &str = "completed req";

/// How a child process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(Signal),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Killed(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// What the master does about a worker that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// It died while the server is stopping: nothing.
    Nothing,
    /// It ended cleanly at a stop, as asked.
    Ended,
    /// It was retired on purpose; its slot is free.
    Retired,
    /// A new worker takes its slot now.
    Respawn,
    /// It died `deaths` times in a row soon after starting: the next one starts after `delay`.
    Backoff { deaths: u32, delay: Duration },
}

/// A record of the master's or a worker's life.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `signal 1 (SIGHUP) received from 1234`, as nginx writes it.
    SignalReceived {
        sig: Signal,
        from: u32,
    },
    /// A signal that means nothing in the current phase.
    Ignored {
        sig: Signal,
        why: &'a str,
    },
    /// TERM/INT (graceful) or QUIT (immediate) began the stop.
    Stopping {
        sig: Signal,
        graceful: bool,
    },
    /// The master reopened the log (USR1); each worker then writes [`Event::WorkerReopened`].
    Reopened,
    WorkerReopened {
        pid: i32,
    },
    /// A sync of the log failed (`--sync`): the worker refuses `MSG` until the log is reopened.
    SyncFailed {
        pid: i32,
        error: &'a str,
    },
    /// An idle session handed from a retiring worker to this one (see [`crate::handoff`]):
    /// `session of user arijort moved from worker 123 to worker 456`, or `of client ADDR`
    /// before a login.
    SessionMoved {
        user: Option<&'a str>,
        client: Option<std::net::SocketAddr>,
        from: i32,
        to: i32,
    },
    /// HUP read the configuration again and replaces the workers.
    Reloaded,
    /// A worker was forked into a slot.
    Spawned {
        pid: i32,
        slot: usize,
    },
    /// A worker ended.
    WorkerEnded {
        pid: i32,
        slot: usize,
        ended: Ended,
        then: Then,
    },
    /// `--worker-timeout`: a worker stopped beating and is killed.
    NoHeartbeat {
        pid: i32,
        slot: usize,
        silent: Duration,
        timeout: Duration,
    },
    /// `--max-requests`: a worker retires on its own.
    Retiring {
        pid: i32,
        slot: usize,
        done: u64,
    },
    /// TTIN refused at `--max-workers`.
    AtMaxWorkers {
        size: usize,
    },
    /// TTOU refused with one worker left.
    KeepingLastWorker,
    /// The new master of a USR2 said ready: this one hands over.
    UpgradeReady {
        pid: i32,
    },
    /// The new master ended before it was ready: this one goes on.
    UpgradeFailed {
        pid: i32,
        ended: Ended,
    },
    /// The new master said it cannot serve: this one goes on.
    UpgradeGaveUp {
        pid: i32,
    },
    /// A stop during the upgrade: the new master is told to stop too.
    UpgradeAbandoned {
        sig: Signal,
        pid: i32,
        told: Signal,
    },
    /// The scoreboard's total, written every `--report-interval` and at exit.
    TotalRequests {
        total: u64,
    },
    /// The master's last record.
    ServerExit {
        pid: i32,
        total: u64,
    },
    /// A wrong `PASS` secret penalised its address (see [`crate::penalty`]): `strikes` wrong
    /// secrets counted, the last one included.
    PassPenalty {
        source: Source,
        strikes: u64,
        length: Duration,
    },
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::SignalReceived { sig, from } => {
                write!(f, "signal {} ({sig}) received from {from}", sig as i32)
            }
            Event::Ignored { sig, why } => write!(f, "{sig} ignored: {why}"),
            Event::Stopping { sig, graceful } => {
                let kind = if graceful { "graceful" } else { "immediate" };
                write!(f, "{sig}: {kind} stop")
            }
            Event::Reopened => f.write_str("reopened log on SIGUSR1"),
            Event::WorkerReopened { pid } => write!(f, "worker {pid} reopened log"),
            Event::SyncFailed { pid, error } => write!(
                f,
                "worker {pid} cannot sync the log ({error}); refusing MSG until it is reopened"
            ),
            Event::SessionMoved {
                user,
                client,
                from,
                to,
            } => {
                match (user, client) {
                    (Some(user), _) => write!(f, "session of user {user}")?,
                    (None, Some(client)) => write!(f, "session of client {client}")?,
                    (None, None) => f.write_str("session")?,
                }
                write!(f, " moved from worker {from} to worker {to}")
            }
            Event::Reloaded => f.write_str("SIGHUP: reloaded; replacing workers"),
            Event::Spawned { pid, slot } => write!(f, "have child pid {pid} (slot {slot})"),
            Event::WorkerEnded {
                pid,
                slot,
                ended,
                then,
            } => {
                // Deaths read `died:`, planned ends `retired:` or `ended:`, so a grep for
                // ` died: ` finds every crash, kill and missed heartbeat and nothing else.
                let how = match then {
                    Then::Retired => "retired",
                    Then::Ended => "ended",
                    Then::Nothing | Then::Respawn | Then::Backoff { .. } => "died",
                };
                write!(f, "worker {pid} (slot {slot}) {how}: {ended}")?;
                match then {
                    Then::Nothing | Then::Retired | Then::Ended => Ok(()),
                    Then::Respawn => f.write_str("; respawning"),
                    Then::Backoff { deaths, delay } => write!(
                        f,
                        "; died {deaths} times in a row within {} ms of starting, \
                         respawning in {} ms",
                        crate::pool::QUICK_DEATH.as_millis(),
                        delay.as_millis()
                    ),
                }
            }
            Event::NoHeartbeat {
                pid,
                slot,
                silent,
                timeout,
            } => write!(
                f,
                "worker {pid} (slot {slot}) sent no heartbeat for {:.1} s \
                 (--worker-timeout {} s): killing it",
                silent.as_secs_f64(),
                timeout.as_secs_f64()
            ),
            Event::Retiring { pid, slot, done } => write!(
                f,
                "worker {pid} (slot {slot}) retiring after {done} requests (--max-requests)"
            ),
            Event::AtMaxWorkers { size } => {
                write!(f, "SIGTTIN: already {size} workers (--max-workers)")
            }
            Event::KeepingLastWorker => f.write_str("SIGTTOU: keeping the last worker"),
            Event::UpgradeReady { pid } => {
                write!(f, "upgrade: master {pid} is ready; handing over")
            }
            Event::UpgradeFailed { pid, ended } => write!(
                f,
                "upgrade: master {pid} {ended} before it was ready; this master goes on"
            ),
            Event::UpgradeGaveUp { pid } => write!(
                f,
                "upgrade: master {pid} gave up before it was ready; this master goes on"
            ),
            Event::UpgradeAbandoned { sig, pid, told } => write!(
                f,
                "{sig} during the upgrade: abandoning it (master {pid} told {told} too)"
            ),
            Event::TotalRequests { total } => write!(f, "total requests {total}"),
            Event::ServerExit { pid, total } => {
                write!(f, "Server exit: master {pid} (total requests {total})")
            }
            Event::PassPenalty {
                source,
                strikes,
                length,
            } => {
                let s = if strikes == 1 { "" } else { "s" };
                write!(
                    f,
                    "PASS penalty for {source}: {strikes} wrong secret{s}, {} s",
                    length.as_secs()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_as_documented() {
        let cases: Vec<(Event, &str)> = vec![
            (
                Event::SignalReceived {
                    sig: Signal::SIGHUP,
                    from: 1234,
                },
                "signal 1 (SIGHUP) received from 1234",
            ),
            (
                Event::Stopping {
                    sig: Signal::SIGTERM,
                    graceful: true,
                },
                "SIGTERM: graceful stop",
            ),
            (
                Event::Stopping {
                    sig: Signal::SIGQUIT,
                    graceful: false,
                },
                "SIGQUIT: immediate stop",
            ),
            (
                Event::WorkerEnded {
                    pid: 7,
                    slot: 2,
                    ended: Ended::Killed(Signal::SIGKILL),
                    then: Then::Respawn,
                },
                "worker 7 (slot 2) died: killed by signal SIGKILL; respawning",
            ),
            (
                Event::WorkerEnded {
                    pid: 7,
                    slot: 0,
                    ended: Ended::Exited(3),
                    then: Then::Backoff {
                        deaths: 4,
                        delay: Duration::from_millis(800),
                    },
                },
                "worker 7 (slot 0) died: exited with status 3; died 4 times in a row within 1000 ms \
                 of starting, respawning in 800 ms",
            ),
            (
                Event::WorkerEnded {
                    pid: 8,
                    slot: 1,
                    ended: Ended::Exited(0),
                    then: Then::Retired,
                },
                "worker 8 (slot 1) retired: exited with status 0",
            ),
            (
                Event::UpgradeFailed {
                    pid: 9,
                    ended: Ended::Exited(1),
                },
                "upgrade: master 9 exited with status 1 before it was ready; this master goes on",
            ),
            (
                Event::ServerExit { pid: 5, total: 10 },
                "Server exit: master 5 (total requests 10)",
            ),
            (
                Event::PassPenalty {
                    source: Source::of([127, 0, 0, 1].into()),
                    strikes: 3,
                    length: Duration::from_secs(4),
                },
                "PASS penalty for 127.0.0.1: 3 wrong secrets, 4 s",
            ),
            (
                Event::PassPenalty {
                    source: Source::of("2001:db8::7".parse().unwrap()),
                    strikes: 1,
                    length: Duration::from_secs(1),
                },
                "PASS penalty for 2001:db8::/64: 1 wrong secret, 1 s",
            ),
        ];
        for (event, text) in cases {
            assert_eq!(event.to_string(), text);
        }
    }
}
