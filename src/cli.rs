//! The three programs' own output: results on stdout, messages on stderr, and what happens when
//! either is closed under them (`cclient ... | head -1`, a log collector that went away).
//!
//! `println!` and `eprintln!` panic when the write fails (exit 101 and a backtrace hint). Here:
//! - the tools (`cclient`, `cserverctl`) write through [`out`] and [`err`]: a closed pipe ends
//!   them as it ends `cat` or `ls`, by `SIGPIPE` (status 141 in a shell, no message), and any
//!   other write error is reported on stderr once with status 1;
//! - the server writes its few stderr lines through [`warn`], which never fails: a server whose
//!   stderr went away goes on serving (its records are in the log).
//!
//! Sockets are unaffected: the standard library sends with `MSG_NOSIGNAL`, so a client that hung
//! up is an `EPIPE` error on that connection, never a signal.

use std::fmt;
use std::io::{self, Write};

/// Writes a line to stdout (results). See the module text for a failed write.
pub fn out(args: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        failed_write("stdout", &e);
    }
}

/// Writes a line to stderr (messages).
pub fn err(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    if let Err(e) = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"))
    {
        failed_write("stderr", &e);
    }
}

/// The server's stderr line: written if it can be, never a reason to stop.
pub fn warn(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Stdout as a writer for code that takes one (`cserverctl`'s commands): a closed pipe ends
/// the program as [`out`] does; other errors are returned to the caller.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).inspect_err(broken_pipe_ends)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().inspect_err(broken_pipe_ends)
    }
}

fn broken_pipe_ends(e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        die_of_sigpipe();
    }
}

/// A write to `stream` failed: a closed pipe ends the program by `SIGPIPE`, as it would end
/// any filter; anything else is said on stderr (if it can be) with status 1.
pub fn failed_write(stream: &str, e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        die_of_sigpipe();
    }
    let _ = writeln!(io::stderr(), "cannot write to {stream}: {e}");
    std::process::exit(1);
}

/// Ends this process by `SIGPIPE` with the default action, so its parent sees what it sees for
/// any program writing to a pipe nobody reads (the standard library ignores `SIGPIPE`).
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring the default action and raising a signal at ourselves; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Blocked in this thread (cannot happen in the tools, which block nothing): the status a
    // shell would have shown.
    std::process::exit(128 + libc::SIGPIPE);
}

/// `println!` that ends the program cleanly when stdout is closed (see [`out`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::out(format_args!($($arg)*)) };
}

/// `eprintln!` that ends the program cleanly when stderr is closed (see [`err`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::err(format_args!($($arg)*)) };
}

/// The server's `eprintln!`: never fails, never stops the server (see [`warn`]).
#[macro_export]
macro_rules! warnln {
    ($($arg:tt)*) => { $crate::cli::warn(format_args!($($arg)*)) };
}
