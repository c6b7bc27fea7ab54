//! `SHELL`: a login shell on a pseudo-terminal. After `OK shell` the connection carries raw bytes
//! both ways until the shell exits. The worker moves the bytes (see `worker::raw`); this module
//! starts the shell, holds the pty master and the bytes waiting to go into it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::child;

/// Bytes from the client not yet taken by the pty beyond which the client is not read.
pub const INPUT_HIGH_WATER: usize = 64 * 1024;

/// A running shell.
#[derive(Debug)]
pub struct Shell {
    master: File,
    /// The shell's pid (also its process group and session).
    pub pid: i32,
    /// Client bytes waiting for the pty to take them.
    pub to_shell: Vec<u8>,
    /// The pty reported the end (the shell and everything on the terminal are gone).
    pub ended: bool,
    /// The shell process itself was reaped: its pid may be reused, never signal it.
    pub reaped: bool,
}

/// The shell program: `$SHELL` if set and present, else bash, else sh.
fn shell_program() -> String {
    std::env::var("SHELL")
        .ok()
        .filter(|s| Path::new(s).is_file())
        .or_else(|| {
            Path::new("/bin/bash")
                .is_file()
                .then(|| "/bin/bash".to_string())
        })
        .unwrap_or_else(|| "/bin/sh".to_string())
}

impl Shell {
    /// Starts a login shell on a new pty of `rows` x `cols`.
    pub fn spawn(rows: u16, cols: u16) -> io::Result<Shell> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None)?;
        let master = pty.master;
        fcntl(master.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let slave: OwnedFd = pty.slave;
        let program = shell_program();
        let mut cmd = Command::new(&program);
        child::clean_environment(&mut cmd, &program, "xterm");
        cmd.arg("-l")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let max_fd = child::max_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: sigprocmask, setsid, ioctl,
        // prctl, close_range or fcntl.
        unsafe {
            cmd.pre_exec(move || {
                // The worker blocks the signals it reads from its signalfd; the shell must not
                // inherit that mask (exec keeps it).
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                )?;
                child::default_signals();
                nix::unistd::setsid()?;
                // The pty (our stdin) becomes the controlling terminal of the new session.
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // Nothing of the server's outlives the exec: other clients' sockets, the log.
                child::cloexec_from_3(max_fd);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Shell {
            master: File::from(master),
            pid: child.id() as i32,
            to_shell: Vec::new(),
            ended: false,
            reaped: false,
        })
    }

    /// The pty master, for epoll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// Writes what the pty takes of `to_shell`; partial writes keep the rest for later.
    pub fn write_pending(&mut self) -> io::Result<()> {
        while !self.to_shell.is_empty() {
            match (&self.master).write(&self.to_shell) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_shell.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the shell wrote into `out`; `Ok(0)` when nothing is there now. A pty whose
    /// last process is gone reads as `EIO`, not end of file: that sets `ended`.
    pub fn read_into(&mut self, scratch: &mut [u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match (&self.master).read(scratch) {
            Ok(0) => {
                self.ended = true;
                Ok(0)
            }
            Ok(n) => {
                out.extend_from_slice(&scratch[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                self.ended = true;
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.ended || self.reaped {
            // Nothing left on the terminal, or its pid may be reused: closing the pty master
            // (right after this) hangs up whatever still holds the terminal.
            return;
        }
        // The client went away: hang up on the whole terminal session.
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGHUP);
        let _ = killpg(group, Signal::SIGKILL);
    }
}
