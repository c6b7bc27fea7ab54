//! The master's life as one state machine: its phase, the signals it takes, and what each signal
//! means in each phase. Pure decisions, no system calls: [`crate::master`] acts on them.
//!
//! | phase \ signal | TERM, INT | QUIT | HUP | USR1 | USR2 | TTIN, TTOU | CHLD |
//! |---|---|---|---|---|---|---|---|
//! | running | graceful stop | immediate stop | reload | reopen | upgrade | grow, shrink | reap |
//! | upgrading | abandon the upgrade, graceful stop of both | abandon it, immediate stop of both | ignored | reopen | ignored | ignored | reap |
//! | stopping (graceful) | ignored | immediate stop | ignored | reopen | ignored | ignored | reap |
//! | stopping (immediate) | ignored | ignored | ignored | reopen | ignored | ignored | reap |
//! | handing over | hurry own workers (TERM) | hurry own workers (QUIT) | ignored | reopen | ignored | ignored | reap |
//!
//! Besides signals: in *upgrading*, the new master saying ready starts the hand-over, and its
//! death before that goes back to *running*; a stop deadline kills what is left; the master
//! exits once every process it waits for has.

use nix::sys::signal::Signal;

/// A signal the master takes: what it is called in one line (as `cserverctl` reports sending
/// it), what it does, and the `cserverctl` command that sends it.
#[derive(Debug, Clone, Copy)]
pub struct SignalUse {
    pub signal: Signal,
    pub short: &'static str,
    pub effect: &'static str,
    pub command: Option<&'static str>,
}

/// Every signal the master takes, the one table behind the master's signal mask, `cserverctl`'s
/// reports and the SIGNALS section of `cserverd(1)`.
pub const SIGNALS: &[SignalUse] = &[
    SignalUse {
        signal: Signal::SIGTERM,
        short: "graceful stop",
        effect: "graceful stop: new connections refused, the queue drained, open sessions finish within --shutdown-timeout; exit 0",
        command: Some("stop"),
    },
    SignalUse {
        signal: Signal::SIGINT,
        short: "graceful stop",
        effect: "as TERM",
        command: None,
    },
    SignalUse {
        signal: Signal::SIGQUIT,
        short: "immediate stop",
        effect: "immediate stop: the sockets closed, the workers exit at once; exit 0",
        command: Some("quit"),
    },
    SignalUse {
        signal: Signal::SIGHUP,
        short: "reload",
        effect: "reload the --users and --secrets files, then replace every worker gracefully; idle sessions move to the new workers",
        command: Some("reload"),
    },
    SignalUse {
        signal: Signal::SIGUSR1,
        short: "reopen log",
        effect: "every process reopens the log (logrotate)",
        command: Some("reopen"),
    },
    SignalUse {
        signal: Signal::SIGUSR2,
        short: "upgrade",
        effect: "binary upgrade: the binary is started again with the listening sockets; once it is ready this master hands over (idle sessions move to its workers) and exits",
        command: Some("upgrade"),
    },
    SignalUse {
        signal: Signal::SIGTTIN,
        short: "add a worker",
        effect: "one worker more (up to --max-workers)",
        command: Some("workers +N"),
    },
    SignalUse {
        signal: Signal::SIGTTOU,
        short: "remove a worker",
        effect: "one worker fewer (never below one); its idle sessions move to the others",
        command: Some("workers -N"),
    },
    SignalUse {
        signal: Signal::SIGCHLD,
        short: "child exited",
        effect: "a worker exited: reaped, and respawned into its slot if it crashed (with backoff if it keeps crashing)",
        command: None,
    },
];

/// The table's entry for `sig`.
pub fn signal_use(sig: Signal) -> Option<&'static SignalUse> {
    SIGNALS.iter().find(|u| u.signal == sig)
}

/// The SIGNALS section of `cserverd(1)`, in roff, with the phase rules.
pub fn man_section() -> String {
    let mut roff = String::from(
        ".SH SIGNALS\nSent to the master (its pid is in the pid file and the scoreboard).\n",
    );
    for u in SIGNALS {
        let name = u.signal.as_str().trim_start_matches("SIG");
        let via = u
            .command
            .map(|c| format!(" (cserverctl {c})"))
            .unwrap_or_default();
        roff.push_str(&format!(".TP\n\\fB{name}\\fR{via}\n{}\n", u.effect));
    }
    roff.push_str(".PP\nDuring a binary upgrade, TERM, INT and QUIT stop both masters; HUP, USR2, TTIN and TTOU are refused and logged. While stopping, only QUIT (to hurry a graceful stop), USR1 and CHLD have an effect. Each signal is logged with its sender.\n");
    roff
}

/// How a stop goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `TERM`/`INT`: new connections refused, the backlog drained, sessions finish.
    Graceful,
    /// `QUIT`: now.
    Immediate,
}

/// Where the master is in its life (without the data each phase carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Serving; the pool follows TTIN, TTOU and HUP.
    Running,
    /// `USR2`: a new master was started and has not said ready yet.
    Upgrading,
    /// Stopping; exits once every worker (and an abandoned new master) has.
    Stopping(Stop),
    /// The new master is ready and serves the sockets; this one lets its workers finish their
    /// sessions, then exits. The sockets, the scoreboard and the pid file are the new one's.
    HandingOver,
}

/// What the master does about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `CHLD`: reap (and respawn what crashed).
    Reap,
    /// `USR1`: reopen the log and tell every worker to.
    Reopen,
    /// Start a graceful stop.
    StopGracefully,
    /// Stop now (also hurries a graceful stop).
    StopNow,
    /// During an upgrade: tell the new master to stop the same way, then stop.
    AbandonUpgrade(Stop),
    /// During a hand-over: the sockets are the new master's; only hurry this one's workers.
    HurryHandover(Stop),
    /// `HUP`: reload the files and replace the workers.
    Reload,
    /// `USR2`: start the new binary.
    Upgrade,
    /// `TTIN`.
    Grow,
    /// `TTOU`.
    Shrink,
    /// Nothing, with the reason for the log.
    Ignore(&'static str),
}

// Why a signal is ignored, as its record says (`SIGHUP ignored: <why>`).
/// Ignored while stopping.
pub const STOPPING: &str = "the server is stopping";
/// Ignored while a new master starts (USR2).
pub const UPGRADING: &str =
    "an upgrade is under way (the new master reads its files and sizes its pool itself)";
/// Ignored while handing over to the new master.
pub const HANDING_OVER: &str = "this master is handing over to the new one";

impl PhaseKind {
    /// What `sig` means in this phase. Every pair has an answer; signals the master does not
    /// take are ignored.
    pub fn on_signal(self, sig: Signal) -> Action {
        use Action::*;
        use PhaseKind::*;
        match sig {
            Signal::SIGCHLD => return Reap,
            Signal::SIGUSR1 => return Reopen,
            _ => {}
        }
        let stop = match sig {
            Signal::SIGTERM | Signal::SIGINT => Some(Stop::Graceful),
            Signal::SIGQUIT => Some(Stop::Immediate),
            _ => None,
        };
        match (self, stop) {
            (Running, Some(Stop::Graceful)) => StopGracefully,
            (Running, Some(Stop::Immediate)) => StopNow,
            (Upgrading, Some(how)) => AbandonUpgrade(how),
            (Stopping(Stop::Graceful), Some(Stop::Immediate)) => StopNow,
            (Stopping(_), Some(_)) => Ignore("already stopping"),
            (HandingOver, Some(how)) => HurryHandover(how),
            (Running, None) => match sig {
                Signal::SIGHUP => Reload,
                Signal::SIGUSR2 => Upgrade,
                Signal::SIGTTIN => Grow,
                Signal::SIGTTOU => Shrink,
                _ => Ignore("not a signal cserverd takes"),
            },
            (Upgrading, None) => Ignore(UPGRADING),
            (Stopping(_), None) => Ignore(STOPPING),
            (HandingOver, None) => Ignore(HANDING_OVER),
        }
    }

    /// True while crashed workers are respawned and the pool may grow (not once stopping or
    /// handing over).
    pub fn keeps_pool(self) -> bool {
        matches!(self, PhaseKind::Running | PhaseKind::Upgrading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use PhaseKind::*;

    const PHASES: [PhaseKind; 5] = [
        Running,
        Upgrading,
        Stopping(Stop::Graceful),
        Stopping(Stop::Immediate),
        HandingOver,
    ];

    /// The whole table, row by row, in the order of the module's table.
    #[test]
    fn every_phase_and_signal_has_a_defined_outcome() {
        let columns = [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGCHLD,
        ];
        let ignored = |why| Ignore(why);
        let rows: [(PhaseKind, [Action; 9]); 5] = [
            (
                Running,
                [
                    StopGracefully,
                    StopGracefully,
                    StopNow,
                    Reload,
                    Reopen,
                    Upgrade,
                    Grow,
                    Shrink,
                    Reap,
                ],
            ),
            (
                Upgrading,
                [
                    AbandonUpgrade(Stop::Graceful),
                    AbandonUpgrade(Stop::Graceful),
                    AbandonUpgrade(Stop::Immediate),
                    ignored(UPGRADING),
                    Reopen,
                    ignored(UPGRADING),
                    ignored(UPGRADING),
                    ignored(UPGRADING),
                    Reap,
                ],
            ),
            (
                Stopping(Stop::Graceful),
                [
                    ignored("already stopping"),
                    ignored("already stopping"),
                    StopNow,
                    ignored(STOPPING),
                    Reopen,
                    ignored(STOPPING),
                    ignored(STOPPING),
                    ignored(STOPPING),
                    Reap,
                ],
            ),
            (
                Stopping(Stop::Immediate),
                [
                    ignored("already stopping"),
                    ignored("already stopping"),
                    ignored("already stopping"),
                    ignored(STOPPING),
                    Reopen,
                    ignored(STOPPING),
                    ignored(STOPPING),
                    ignored(STOPPING),
                    Reap,
                ],
            ),
            (
                HandingOver,
                [
                    HurryHandover(Stop::Graceful),
                    HurryHandover(Stop::Graceful),
                    HurryHandover(Stop::Immediate),
                    ignored(HANDING_OVER),
                    Reopen,
                    ignored(HANDING_OVER),
                    ignored(HANDING_OVER),
                    ignored(HANDING_OVER),
                    Reap,
                ],
            ),
        ];
        for (phase, row) in rows {
            for (sig, want) in columns.iter().zip(row) {
                assert_eq!(phase.on_signal(*sig), want, "{phase:?} + {sig}");
            }
        }
    }

    #[test]
    fn a_signal_the_master_does_not_take_changes_nothing() {
        for phase in PHASES {
            assert!(matches!(phase.on_signal(Signal::SIGWINCH), Ignore(_)));
        }
    }

    #[test]
    fn usr2_then_term_abandons_and_term_then_usr2_starts_nothing() {
        // USR2 first: the upgrade is under way when TERM comes, and TERM ends both masters.
        assert_eq!(Running.on_signal(Signal::SIGUSR2), Upgrade);
        assert_eq!(
            Upgrading.on_signal(Signal::SIGTERM),
            AbandonUpgrade(Stop::Graceful)
        );
        // TERM first: no upgrade is started while stopping.
        assert_eq!(Running.on_signal(Signal::SIGTERM), StopGracefully);
        assert!(matches!(
            Stopping(Stop::Graceful).on_signal(Signal::SIGUSR2),
            Ignore(STOPPING)
        ));
    }

    #[test]
    fn only_a_running_or_upgrading_master_keeps_its_pool() {
        let kept: Vec<bool> = PHASES.iter().map(|p| p.keeps_pool()).collect();
        assert_eq!(kept, [true, true, false, false, false]);
    }

    #[test]
    fn the_signal_table_is_what_the_master_takes() {
        let names: Vec<Signal> = SIGNALS.iter().map(|u| u.signal).collect();
        for sig in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGCHLD,
        ] {
            assert_eq!(names.iter().filter(|s| **s == sig).count(), 1, "{sig}");
            assert!(!matches!(Running.on_signal(sig), Ignore(_)), "{sig}");
        }
        assert_eq!(names.len(), 9);
        let page = man_section();
        for u in SIGNALS {
            assert!(page.contains(u.effect), "{page}");
            assert_eq!(signal_use(u.signal).map(|v| v.short), Some(u.short));
        }
        assert!(
            page.contains("\\fBTTIN\\fR (cserverctl workers +N)"),
            "{page}"
        );
    }
}
