//! `cserverd --check` (`-t`, as `nginx -t`): what a start would refuse, found without starting
//! anything. The options and the files they read (users, secrets, `--allow-run`) were checked by
//! [`crate::config`] already, by the same code a start runs; here, in the start's order, the
//! rest of what [`crate::master`] does first: the address can be bound (a plain bind, closed at
//! once, as the start's own probe), the metrics address too, and the log, the scoreboard and the
//! pid file could be opened by the same rules ([`crate::files`]), without creating, truncating
//! or removing any of them: a file that exists is opened without `O_CREAT`/`O_TRUNC` and
//! checked, a missing one needs a directory this process may write in.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Settings;
use crate::files::{self, Trust};
use crate::listener;
use crate::log::LogFile;
use crate::scoreboard;

/// The first problem a start with `settings` would meet, in the words the start would use.
pub fn run(settings: &Settings) -> Result<(), String> {
    let addr = settings.addr;
    // Every listener, as the start binds them (the default one first).
    for l in &settings.listens {
        let at = l.addr;
        listener::probe(at).map_err(|e| format!("cannot listen on {at}: {e}"))?;
    }
    if let Some(a) = settings.metrics_addr {
        listener::probe(a)
            .map(|_| ())
            .map_err(|e| format!("cannot serve metrics on {a}: {e}"))?;
    }
    let log = &settings.log;
    files::probe_writable(log, &LogFile::trust(settings.account))
        .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    // With --port 0 and no --stats-file the path depends on the port a start would get.
    let board = match (&settings.stats_file, addr.port()) {
        (Some(path), _) => Some(path.clone()),
        (None, 0) => None,
        (None, _) => Some(scoreboard::default_path(addr)),
    };
    if let Some(path) = board {
        probe_scoreboard(&path)
            .map_err(|e| format!("cannot create scoreboard {}: {e}", path.display()))?;
    }
    if let Some(path) = &settings.pid_file {
        files::probe_writable(path, &Trust::operator())
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What the start's scoreboard creation would say: a file there is replaced only if it is a
/// regular file of this user (never followed if a symlink); a new one needs a writable directory.
fn probe_scoreboard(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.uid() == nix::unistd::geteuid().as_raw() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a scoreboard file of this user",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => files::can_create(path),
        Err(e) => Err(e),
    }
}
