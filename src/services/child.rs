//! What a program started for a client (`RUN`, `SHELL`) gets from the server: a clean
//! environment and no descriptor. The server's own environment may hold what a client must not
//! see or use (`NOTIFY_SOCKET`, with which any child could tell systemd the service stopped;
//! credentials an operator exported); its descriptors are sockets of other clients, the log and
//! the shared segments.

use std::process::Command;

/// The only variables a child gets.
pub const ENVIRONMENT: [&str; 7] = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG"];

/// Clears `cmd`'s environment and sets [`ENVIRONMENT`]: the account the worker runs as (its
/// name and home), a fixed `PATH`, `shell`, `term`, and the server's `LANG` (or `C.UTF-8`).
pub fn clean_environment(cmd: &mut Command, shell: &str, term: &str) {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten();
    let name = me
        .as_ref()
        .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name.clone());
    let home = me
        .as_ref()
        .map_or_else(|| "/".into(), |u| u.dir.display().to_string());
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("USER", &name)
        .env("LOGNAME", &name)
        .env("SHELL", shell)
        .env("TERM", term)
        .env("LANG", lang);
}

/// The highest descriptor number to look at when `close_range(2)` is missing; read before the
/// fork (sysconf is not async-signal-safe).
pub fn max_fd() -> i32 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_OPEN_MAX) } {
        n if n > 0 => n.min(i32::MAX as libc::c_long) as i32,
        _ => 1024,
    }
}

/// Marks every descriptor from 3 up close-on-exec, so no server socket or file outlives `exec`
/// even if it was opened without `O_CLOEXEC`. Async-signal-safe: raw system calls only, for use
/// between fork and exec.
pub fn cloexec_from_3(max_fd: i32) {
    let first: libc::c_uint = 3;
    // SAFETY: plain system calls on descriptor numbers; no memory is passed.
    unsafe {
        let done = libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0;
        if !done {
            for fd in 3..max_fd {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
}

/// Sets every signal to its default disposition, as sshd does for a session: whatever the
/// server inherited ignored (an `INT` ignored by the shell that started it in the background, a
/// `TSTP`), a user's program gets what a terminal's gets. Async-signal-safe (`sigaction` only),
/// for use between fork and exec.
///
/// Every number up to 64 (Linux's last real-time signal), through the system call itself: the C
/// library's `sigaction` refuses the two real-time signals it keeps for threads, and those too
/// may have been inherited ignored.
pub fn default_signals() {
    for n in 1..=64 {
        if n == libc::SIGKILL || n == libc::SIGSTOP {
            continue; // cannot be changed
        }
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags; the kernel
        // copies it; rt_sigaction is async-signal-safe. Numbers it refuses stay as they are.
        unsafe {
            let act: libc::sigaction = std::mem::zeroed();
            libc::syscall(
                libc::SYS_rt_sigaction,
                n,
                &act as *const libc::sigaction,
                std::ptr::null_mut::<libc::sigaction>(),
                8usize, // the kernel's sigset_t: 64 signals
            );
        }
    }
}
