//! The few process-level OS calls, each behind a safe function: fork, the parent-death signal,
//! the open-files limit, the signal mask, and pidfds (a descriptor that names one process).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use nix::unistd::{ForkResult, Gid, Group, Pid, Uid, User};

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

/// A write past `RLIMIT_FSIZE` fails with `EFBIG` instead of killing the writer (`SIGXFSZ`, as
/// Apache does): a log at its size limit is a log that cannot be written, refused like a full
/// disk. Children get the default back (`services::child::default_signals`).
pub fn ignore_file_size_signal() -> io::Result<()> {
    // SAFETY: ignoring a signal installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }
        .map(drop)
        .map_err(io::Error::from)
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

/// Closes descriptors this process inherited but must not hold (a new worker closes the
/// master's own right after its fork).
///
/// The objects that own them in the inherited copy of the master's state are never used or
/// dropped afterwards: the worker runs and exits without returning to them.
pub fn close_fds(fds: Vec<std::os::fd::RawFd>) {
    for fd in fds {
        // SAFETY: closing a descriptor number has no memory effect; the owners of these
        // descriptors are never touched again in this process (see above), so none of them
        // is used or closed a second time after this.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Maps `bytes` of zero-filled memory shared with every process forked afterwards (the chat
/// hub's ring, the PASS penalty table). Zero is a valid value of every type placed there (all
/// atomics). Give it back with [`unmap_shared`].
pub fn map_shared(bytes: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping: no file, no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)
}

/// A memory file of `bytes` zero bytes (close-on-exec), to map with [`map_shared_fd`] and
/// hand to another process.
pub fn memfd(name: &str, bytes: usize) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid C string; the call returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::ftruncate(&fd, bytes as i64)?;
    Ok(fd)
}

/// Maps `bytes` of the file `fd` shared (what other processes mapping it see).
pub fn map_shared_fd(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a new mapping of a file we hold open; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)
}

/// A random number from the kernel (identities, jitter; no generator crate needed). If the
/// kernel has none to give, the time and pid stand in.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == bytes.len() as isize {
        return u64::from_le_bytes(bytes);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ u64::from(std::process::id()) << 32
}

/// Unmaps what [`map_shared`] returned.
///
/// # Safety
/// `ptr` and `bytes` are one mapping from [`map_shared`], and nothing uses it afterwards.
pub unsafe fn unmap_shared(ptr: std::ptr::NonNull<u8>, bytes: usize) {
    // SAFETY: the caller's promise above.
    unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
}

/// Who the server runs as after binding (`--user`, `--group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: Uid,
    pub gid: Gid,
}

/// Looks up `user` (and `group`, else the user's primary group).
pub fn lookup_account(user: &str, group: Option<&str>) -> Result<Account, String> {
    let u = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user}: {e}"))?
        .ok_or_else(|| format!("no user {user}"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("cannot look up group {g}: {e}"))?
                .ok_or_else(|| format!("no group {g}"))?
                .gid
        }
        None => u.gid,
    };
    Ok(Account { uid: u.uid, gid })
}

/// A worker becomes `account` for good (nginx's model: the master keeps root to reread root-only
/// files on HUP, reopen logs and re-execute on USR2; what serves clients never has it):
/// supplementary groups, group, user, then no way back, no capabilities (setuid from root clears
/// them) and not dumpable (no core with clients' data, no ptrace by the service account).
/// Already running as `account`: nothing to do (a server started unprivileged).
///
/// `nproc` becomes the process limit (RLIMIT_NPROC, soft and hard): the kernel's own cap on the
/// processes of the service account, whatever a `RUN` program or a shell forks.
pub fn drop_privileges(account: Account, nproc: u64) -> io::Result<()> {
    if nix::unistd::geteuid() == account.uid && nix::unistd::getegid() == account.gid {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NPROC, nproc, nproc)?;
    nix::unistd::setgroups(&[account.gid])?;
    nix::unistd::setgid(account.gid)?;
    nix::unistd::setuid(account.uid)?;
    // There must be no way back.
    if account.uid.as_raw() != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other(
            "could regain root after dropping privileges",
        ));
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd: a descriptor naming one process, which stays that process even if it exits and its
/// pid is reused (Linux 5.3 and later).
pub struct PidFd(OwnedFd);

impl PidFd {
    /// `pidfd_open(2)` for `pid` (`ESRCH`: no such process; `ENOSYS`: a kernel without pidfds).
    pub fn open(pid: Pid) -> io::Result<PidFd> {
        // SAFETY: the system call takes two integers and returns a new descriptor or -1; no
        // memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor the kernel just made for us (close-on-exec), owned by
        // nothing else.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// `pidfd_send_signal(2)`: `sig` to this process (`ESRCH` once it has exited).
    pub fn send_signal(&self, sig: Signal) -> io::Result<()> {
        // SAFETY: a null siginfo is allowed (the kernel fills it in as kill(2) does), flags are
        // 0, and the descriptor is open for as long as `self` lives.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_signals_its_process_and_only_while_it_lives() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = PidFd::open(Pid::from_raw(child.id() as i32)).unwrap();
        fd.send_signal(Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd still names that process, which is gone, whatever now has its pid.
        let err = fd.send_signal(Signal::SIGTERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        let err = PidFd::open(Pid::from_raw(i32::MAX)).err().unwrap();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)),
            "{err}"
        );
    }
}
