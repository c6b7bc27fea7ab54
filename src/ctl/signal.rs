//! Signalling the master: the pid checks, sending a signal (`workers ±N` one at a time) and
//! `--wait` for the master to exit.
//!
//! A signal goes only to a process that is alive, is not pid 0 or 1 (nor a negative "pid", which
//! `kill(2)` would take as a process group) and whose `/proc/PID/comm` is `cserverd`: a stale pid
//! file or scoreboard cannot make it signal an unrelated process.

use std::fs;
use std::io::{self, Write};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{find_master, TargetArgs};

/// The process name (`/proc/PID/comm`) a signalled process must have.
pub const SERVER_COMM: &str = "cserverd";

/// How often waits poll.
const POLL: Duration = Duration::from_millis(10);

/// How long `workers ±N` waits for the master to take one signal before sending the next (the
/// kernel keeps at most one pending instance of a standard signal, so two sent back to back can
/// merge into one).
const TAKE_SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// `/proc/PID/comm` without its newline.
fn comm(pid: i32) -> io::Result<String> {
    let mut c = fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if c.ends_with('\n') {
        c.pop();
    }
    Ok(c)
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...).
fn proc_state(pid: i32) -> io::Result<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) S ...": comm may itself hold ')' and spaces, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat"))
}

/// Checks that `pid` may be signalled: > 1, alive (not a zombie) and named `cserverd`.
pub fn check_target(pid: i32, source: &str) -> Result<Pid, String> {
    if pid <= 1 {
        return Err(format!(
            "{source} names pid {pid}: refusing to signal it (not a cserverd master)"
        ));
    }
    let gone = || format!("no process {pid} (from {source}): is cserverd running?");
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Err(gone()),
        Err(Errno::EPERM) => {
            return Err(format!(
                "process {pid} (from {source}) belongs to another user: not permitted to signal it"
            ))
        }
        Err(e) => return Err(format!("cannot check process {pid}: {e}")),
    }
    let name = match comm(pid) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(format!("cannot read /proc/{pid}/comm: {e}")),
    };
    if name != SERVER_COMM {
        return Err(format!(
            "process {pid} (from {source}) is {name:?}, not {SERVER_COMM}: refusing to signal it"
        ));
    }
    if matches!(proc_state(pid), Ok('Z' | 'X')) {
        return Err(format!("cserverd {pid} (from {source}) has already exited"));
    }
    Ok(Pid::from_raw(pid))
}

/// True once `pid` no longer names a running cserverd: no such process, a zombie waiting for
/// its parent, or the pid reused by something else.
fn is_gone(pid: Pid) -> bool {
    is_gone_as(pid, SERVER_COMM)
}

/// [`is_gone`] for a process named `name`.
fn is_gone_as(pid: Pid, name: &str) -> bool {
    if kill(pid, None) == Err(Errno::ESRCH) {
        return true;
    }
    let raw = pid.as_raw();
    match (comm(raw), proc_state(raw)) {
        (Ok(now), Ok(state)) => now != name || matches!(state, 'Z' | 'X'),
        (Err(e), _) | (_, Err(e)) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Waits until `pid` is gone, polling every 10 ms up to `limit`; returns how long it took.
pub fn wait_gone(pid: Pid, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        if is_gone(pid) {
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
fn wait_taken(pid: Pid, sig: Signal, limit: Duration) -> Result<(), String> {
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
    let (raw, source) = find_master(target)?;
    let pid = check_target(raw, &source)?;
    let sig = action.signal();
    // Worker signals are counted: each waits until the master has taken the one before (or one
    // someone else sent), so two never merge into one pending signal.
    let counted = matches!(action, Action::AddWorker | Action::RemoveWorker);
    for i in 0..times {
        if counted {
            wait_taken(pid, sig, TAKE_SIGNAL_TIMEOUT)
                .map_err(|e| format!("{e}; sent {sig} {i} of {times} times"))?;
        }
        kill(pid, sig).map_err(|e| {
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
    if !wait.is_zero() {
        let took = wait_gone(pid, wait)?;
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
    fn only_a_live_cserverd_may_be_signalled() {
        for pid in [-1, 0, 1] {
            let err = check_target(pid, "pid file p").unwrap_err();
            assert!(err.contains("refusing"), "{err}");
        }
        // This test process is alive but is not cserverd.
        let me = std::process::id() as i32;
        let err = check_target(me, "pid file p").unwrap_err();
        assert!(err.contains("not cserverd"), "{err}");
        // No such pid (above any pid_max).
        let err = check_target(i32::MAX, "pid file p").unwrap_err();
        assert!(err.contains("no process"), "{err}");
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

    #[test]
    fn a_zombie_or_reused_pid_counts_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Between fork and exec the child still carries this test's name: wait for the exec.
        let deadline = Instant::now() + Duration::from_secs(20);
        while comm(pid.as_raw()).map_or(true, |c| c != "sleep") {
            assert!(Instant::now() < deadline, "{pid} never became sleep");
            thread::sleep(POLL);
        }
        assert!(!is_gone_as(pid, "sleep"));
        // Named otherwise: the pid was reused by an unrelated process.
        assert!(is_gone_as(pid, SERVER_COMM));
        kill(pid, Signal::SIGKILL).unwrap();
        // Dead but not reaped yet (a zombie): gone.
        wait_gone_as(pid, "sleep");
        child.wait().unwrap();
        assert!(is_gone_as(pid, "sleep"));
        assert!(is_gone(Pid::from_raw(i32::MAX)));
    }

    fn wait_gone_as(pid: Pid, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_gone_as(pid, name) {
            assert!(Instant::now() < deadline, "{pid} not gone");
            thread::sleep(POLL);
        }
        assert_eq!(proc_state(pid.as_raw()).unwrap(), 'Z');
    }
}
