//! The few process-level OS calls, each behind a safe function: fork, the parent-death signal,
//! the open-files limit and the signal mask.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid};

/// Where a fork left us.
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(Pid),
    /// In the new child.
    Child,
}

/// Forks the calling process.
///
/// Callers must be single-threaded (the master spawns no thread, ever), so the child may run
/// any code, not only async-signal-safe calls.
pub fn fork_process() -> io::Result<Forked> {
    // Text buffered in stdout would otherwise be printed by both processes.
    let _ = io::Write::flush(&mut io::stdout());
    // SAFETY: the master is single-threaded (checked in debug builds below), so the child
    // inherits no lock held by another thread.
    debug_assert!(
        thread_count().is_none_or(|n| n == 1),
        "fork with threads running"
    );
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Asks the kernel to send `signal` to this process when its parent dies, and reports whether
/// the parent `expected` is still the parent (it may have died before the request).
pub fn die_with_parent(signal: Signal, expected: Pid) -> io::Result<bool> {
    nix::sys::prctl::set_pdeathsig(signal)?;
    Ok(nix::unistd::getppid() == expected)
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// Blocks `signals` for this (single-threaded) process so they can be read from a signalfd;
/// children inherit the mask.
pub fn block_signals(signals: &[Signal]) -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}
