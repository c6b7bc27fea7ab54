//! Signalling the master: sending a signal (`workers ±N` one at a time) to the master that
//! [`super::target`] found and checked, and `--wait` for it to exit.

use std::fs;
use std::io::{self, Write};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::target::{find_master_and_board, Master};
use super::TargetArgs;
use crate::scoreboard::Scoreboard;
use std::sync::atomic::Ordering::{Acquire, Relaxed};

/// How often waits poll.
const POLL: Duration = Duration::from_millis(10);

/// How long `workers ±N` waits for the master to take one signal before sending the next (the
/// kernel keeps at most one pending instance of a standard signal, so two sent back to back can
/// merge into one).
const TAKE_SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `reload` waits for the master to finish one (reading files, then forking).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A signal `cserverctl` sends to the master, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Quit,
    Reload,
    Reopen,
    Upgrade,
    AddWorker,
    RemoveWorker,
}

impl Action {
    /// The signal for this action.
    pub fn signal(self) -> Signal {
        match self {
            Action::Stop => Signal::SIGTERM,
            Action::Quit => Signal::SIGQUIT,
            Action::Reload => Signal::SIGHUP,
            Action::Reopen => Signal::SIGUSR1,
            Action::Upgrade => Signal::SIGUSR2,
            Action::AddWorker => Signal::SIGTTIN,
            Action::RemoveWorker => Signal::SIGTTOU,
        }
    }

    /// What the signal asks for, for the one-line report (the master's own signal table).
    pub fn meaning(self) -> &'static str {
        crate::phase::signal_use(self.signal()).map_or("", |u| u.short)
    }
}

/// Waits until `master` is gone, polling every 10 ms up to `limit`; returns how long it took.
pub fn wait_gone(master: &Master, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + limit;
    let pid = master.pid();
    loop {
        if master.is_gone() {
            return Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cserverd {pid} is still running after {}s",
                limit.as_secs_f64()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Whether `sig` is pending (sent, not yet taken) for `pid`, from `/proc/PID/status`.
fn signal_pending(pid: Pid, sig: Signal) -> io::Result<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bit = 1u64 << (sig as i32 - 1);
    Ok(status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .any(|mask| mask & bit != 0))
}

/// Waits until `sig` is no longer pending for `pid`, so the next one is not merged with it.
pub(super) fn wait_taken(pid: Pid, sig: Signal, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match signal_pending(pid, sig) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("cserverd {pid} exited"))
            }
            Err(e) => return Err(format!("cannot read /proc/{pid}/status: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cserverd {pid} did not take a pending {sig} within {}s",
                limit.as_secs_f64()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Waits until the master has handled the `HUP` sent after it had handled `before`, and says
/// whether it reloaded; a refusal is an error carrying the master's reason from its log.
fn reload_outcome(
    pid: i32,
    board: &Scoreboard,
    before: u32,
    out: &mut dyn Write,
) -> Result<(), String> {
    let header = board.header();
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    let handled = loop {
        let now = header.reloads.load(Acquire);
        if now != before {
            break now;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cserverd master {pid} did not finish the reload within {}s",
                RELOAD_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(POLL);
    };
    let refused = header.reload_refused.load(Relaxed);
    // Another HUP may have been handled with ours; ours was refused if any handled since
    // `before` was (a refusal at `before` or earlier is an older one).
    let since = refused.wrapping_sub(before);
    if refused != 0 && (1..=handled.wrapping_sub(before)).contains(&since) {
        let why = last_reload_record(pid).unwrap_or_else(|| "see its log".to_string());
        return Err(format!("cserverd master {pid} refused the reload: {why}"));
    }
    writeln!(out, "cserverd master {pid} reloaded; replacing its workers")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write output: {e}"))
}

/// The master's last `SIGHUP` record, from the log its own arguments name (`--log`, else the
/// default), read with the same care as any file another user could have placed.
fn last_reload_record(pid: i32) -> Option<String> {
    let args = crate::procfs::cmdline(pid).ok()?;
    let log = super::target::option_value(&args, "--log")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_LOG));
    let file = crate::files::open(
        &log,
        crate::files::Access::Read,
        &crate::files::Trust::any_owner(),
    )
    .ok()?;
    // The end of the log is enough: the record was written just now.
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .filter_map(|l| l.split_once(" -- ").map(|(_, r)| r))
        .find(|r| r.starts_with("SIGHUP: ") || r.starts_with("SIGHUP ignored: "))
        .map(str::to_string)
}

/// Finds and checks the master, sends `action`'s signal `times` times (a worker signal only once
/// the master has taken the previous one), reports one line on `out`, then waits up to `wait` for
/// the master to exit (`wait` zero: no waiting).
pub fn signal_master(
    target: &TargetArgs,
    action: Action,
    times: u32,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (master, board) = find_master_and_board(target)?;
    let pid = master.pid();
    let sig = action.signal();
    // A reload reports its outcome: the count of HUPs the master handled, before ours.
    let reloads_before = board
        .as_ref()
        .filter(|_| action == Action::Reload)
        .map(|b| b.header().reloads.load(Acquire));
    // Worker signals are counted: each waits until the master has taken the one before (or one
    // someone else sent), so two never merge into one pending signal.
    let counted = matches!(action, Action::AddWorker | Action::RemoveWorker);
    for i in 0..times {
        if counted {
            wait_taken(pid, sig, TAKE_SIGNAL_TIMEOUT)
                .map_err(|e| format!("{e}; sent {sig} {i} of {times} times"))?;
        }
        master.signal(sig).map_err(|e| {
            format!(
                "cannot send {sig} to cserverd {pid}: {e}{}",
                if i > 0 {
                    format!(" (after {i} of {times})")
                } else {
                    String::new()
                }
            )
        })?;
    }
    let write_err = |e: io::Error| format!("cannot write output: {e}");
    let count = if times > 1 {
        format!(" x{times}")
    } else {
        String::new()
    };
    writeln!(
        out,
        "sent {sig}{count} ({}) to cserverd master {pid}",
        action.meaning()
    )
    .and_then(|()| out.flush())
    .map_err(write_err)?;
    if let (Some(before), Some(board)) = (reloads_before, &board) {
        reload_outcome(pid.as_raw(), board, before, out)?;
    }
    if !wait.is_zero() {
        let took = wait_gone(&master, wait)?;
        writeln!(
            out,
            "cserverd master {pid} exited after {:.1}s",
            took.as_secs_f64()
        )
        .and_then(|()| out.flush())
        .map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::kill;

    #[test]
    fn actions_map_to_their_signals() {
        assert_eq!(Action::Stop.signal(), Signal::SIGTERM);
        assert_eq!(Action::Quit.signal(), Signal::SIGQUIT);
        assert_eq!(Action::Reload.signal(), Signal::SIGHUP);
        assert_eq!(Action::Reopen.signal(), Signal::SIGUSR1);
        assert_eq!(Action::Upgrade.signal(), Signal::SIGUSR2);
        assert_eq!(Action::AddWorker.signal(), Signal::SIGTTIN);
        assert_eq!(Action::RemoveWorker.signal(), Signal::SIGTTOU);
    }
    #[test]
    fn nothing_is_pending_for_an_idle_process() {
        let me = Pid::this();
        assert!(!signal_pending(me, Signal::SIGTTIN).unwrap());
        wait_taken(me, Signal::SIGTTIN, Duration::from_millis(100)).unwrap();
    }

    /// A child process, killed and reaped when dropped (also when a test fails).
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A `sleep 30` that blocks `sig`: a `sig` sent to it stays pending. (The mask is set in
    /// the child between fork and exec and survives the exec.)
    fn sleeper_blocking(sig: Signal) -> Reaped {
        use std::os::unix::process::CommandExt;
        let signo = sig as libc::c_int;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: sigemptyset, sigaddset and sigprocmask are async-signal-safe and allocate
        // nothing; the child runs only this between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                if libc::sigemptyset(set.as_mut_ptr()) != 0
                    || libc::sigaddset(set.as_mut_ptr(), signo) != 0
                    || libc::sigprocmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Reaped(cmd.spawn().unwrap());
        let pid = child.0.id();
        // spawn() returns once the exec happened; the mask must be the one set above.
        let blocked = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap();
        assert_ne!(
            blocked & (1 << (signo - 1)),
            0,
            "{sig} not blocked in {pid}"
        );
        child
    }

    #[test]
    fn a_signal_sent_and_not_taken_is_pending() {
        // SIGTTIN only ever goes to the child: its default action would stop this process.
        let mut child = sleeper_blocking(Signal::SIGTTIN);
        let pid = Pid::from_raw(child.0.id() as i32);
        assert!(!signal_pending(pid, Signal::SIGTTIN).unwrap());
        wait_taken(pid, Signal::SIGTTIN, Duration::from_millis(100)).unwrap();
        kill(pid, Signal::SIGTTIN).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !signal_pending(pid, Signal::SIGTTIN).unwrap() {
            assert!(Instant::now() < deadline, "SIGTTIN never pending for {pid}");
            thread::sleep(POLL);
        }
        // Only that signal: not its neighbours (the bit for a signal is its number - 1).
        for other in [Signal::SIGTTOU, Signal::SIGCHLD, Signal::SIGTERM] {
            assert!(!signal_pending(pid, other).unwrap(), "{other} pending");
        }
        // Blocked, it is never taken: the wait gives up at its limit, saying so.
        let start = Instant::now();
        let err = wait_taken(pid, Signal::SIGTTIN, Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200), "{err}");
        assert!(err.contains("did not take a pending SIGTTIN"), "{err}");
        kill(pid, Signal::SIGKILL).unwrap();
        child.0.wait().unwrap();
        // Reaped: gone, which the wait reports as an exit, not as a signal taken.
        let err = wait_taken(pid, Signal::SIGTTIN, Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("exited"), "{err}");
    }
}
