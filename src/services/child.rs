//! What a program started for a client (`RUN`, `SHELL`) gets from the server: a clean
//! environment and no descriptor. The server's own environment may hold what a client must not
//! see or use (`NOTIFY_SOCKET`, with which any child could tell systemd the service stopped;
//! credentials an operator exported); its descriptors are sockets of other clients, the log and
//! the shared segments.

use std::process::Command;

use nix::sys::signal::{self, SigHandler, Signal};

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

/// Signals whose disposition a started program gets back to default, in case the server ignores
/// them (handlers are reset by `exec` anyway; ignored signals are not): `SIGXFSZ` above all,
/// which cserverd ignores so a log at its file-size limit refuses requests instead of killing
/// the writer.
pub const RESET_SIGNALS: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPIPE,
    Signal::SIGCHLD,
    Signal::SIGXFSZ,
];

/// Sets every one of [`RESET_SIGNALS`] to its default disposition. Async-signal-safe
/// (`sigaction` only), for use between fork and exec.
pub fn default_signals() {
    for s in RESET_SIGNALS {
        // SAFETY: setting SIG_DFL installs no handler; sigaction is async-signal-safe.
        let _ = unsafe { signal::signal(s, SigHandler::SigDfl) };
    }
}
