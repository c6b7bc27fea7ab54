//! Files opened by path that another local user may have put in the way (the log, the pid file,
//! the users and secrets files; for `cserverctl` the scoreboard in a world-writable `/dev/shm`),
//! opened the way OpenSSH and nginx open what root touches: never through a symbolic link, never
//! a FIFO (opening one could block, writing one could stall every worker), never a file with a
//! second hard link (it could be `/etc/shadow` under another name), never a file another user
//! owns or may write. Every check is made on the open descriptor (`fstat`), so nothing can be
//! swapped between the check and the use; ownership changes use `fchown` on the same descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid};

use crate::sys::Account;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Appending, created with `mode` if missing (the log).
    Append { mode: u32 },
    /// Rewritten from the start, created with `mode` if missing (the pid file). Truncated only
    /// after the checks: opening with `O_TRUNC` would empty a file before it could be refused.
    Replace { mode: u32 },
    /// Reading (the users and secrets files, a scoreboard or pid file `cserverctl` reads).
    Read,
    /// Reading and writing in place (a scoreboard a new master adopts).
    ReadWrite,
}

/// Who may own and write a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Owners accepted: root and the user the server runs as, and for the log the service
    /// account of `--user`. Empty: any owner, for a caller that judges the owner itself (from
    /// the file's metadata) by what the file says.
    pub owners: Vec<Uid>,
    /// Groups that may have write permission on it.
    pub groups: Vec<Gid>,
    /// Nobody but the owner may read it either (secrets).
    pub private: bool,
    /// A character device is accepted when the path names one under `/dev` (`/dev/null` as a
    /// log): the operator asked for a device by its name.
    pub devices: bool,
}

impl Trust {
    /// Root and the user running this process (files the operator wrote for the server).
    pub fn operator() -> Trust {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        Trust {
            owners: dedup(vec![Uid::from_raw(0), uid]),
            groups: dedup(vec![Gid::from_raw(0), gid]),
            private: false,
            devices: false,
        }
    }

    /// Any owner (judged by the caller), no write permission but the owner's.
    pub fn any_owner() -> Trust {
        Trust {
            owners: Vec::new(),
            groups: Vec::new(),
            private: false,
            devices: false,
        }
    }

    /// As [`Trust::operator`], and the service account the workers run as (their log).
    pub fn with_account(account: Option<Account>) -> Trust {
        let mut t = Trust::operator();
        if let Some(a) = account {
            t.owners = dedup([t.owners, vec![a.uid]].concat());
            t.groups = dedup([t.groups, vec![a.gid]].concat());
        }
        t
    }
}

fn dedup<T: PartialEq>(mut v: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Opens `path` as `access` allows and `trust` accepts, or says why not.
pub fn open(path: &Path, access: Access, trust: &Trust) -> io::Result<File> {
    let mut options = OpenOptions::new();
    // O_NONBLOCK: a FIFO at the path must not block the open (it is refused below).
    // O_NOCTTY: a terminal named under /dev (a log on a console) never becomes the opener's
    // controlling terminal, whose hang-up would signal it.
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    match access {
        Access::Append { mode } => options.append(true).create(true).mode(mode),
        Access::Replace { mode } => options.write(true).create(true).mode(mode),
        Access::Read => options.read(true),
        Access::ReadWrite => options.read(true).write(true),
    };
    let file = options.custom_flags(flags).open(path).map_err(open_error)?;
    check(&file, path, trust)?;
    // Back to blocking: the server's writes to a regular file never wait anyway, and a device
    // such as /dev/null behaves as it would for any program.
    set_blocking(&file)?;
    if let Access::Replace { .. } = access {
        file.set_len(0)?;
    }
    Ok(file)
}

/// A symlink or a FIFO at the path, said as a refusal.
fn open_error(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        refused("is a symbolic link (not followed)")
    } else if e.raw_os_error() == Some(libc::ENXIO) {
        refused("is a FIFO without a reader, not a regular file")
    } else {
        e
    }
}

/// What [`open`] for writing (`Append`, `Replace`) would say about `path`, without creating or
/// changing anything (`cserverd --check`): a file that exists is opened for writing without
/// `O_CREAT` or `O_TRUNC` and checked as `open` checks it; a missing one needs a directory this
/// process may write in.
pub fn probe_writable(path: &Path, trust: &Trust) -> io::Result<()> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    match OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(file) => check(&file, path, trust),
        Err(e) if e.kind() == io::ErrorKind::NotFound => can_create(path),
        Err(e) => Err(open_error(e)),
    }
}

/// Whether this process may create `path`: its directory exists and this process may write in
/// it (`access(2)`, by the real uid: root's for a server started as root).
pub fn can_create(path: &Path) -> io::Result<()> {
    use nix::unistd::AccessFlags;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot create it in {}: {e}", dir.display()),
        )
    })
}

/// The checks on an open descriptor.
pub fn check(file: &File, path: &Path, trust: &Trust) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    let t = meta.file_type();
    if t.is_char_device() && trust.devices && path.starts_with("/dev") {
        return Ok(());
    }
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "FIFO"
        } else if t.is_dir() {
            "directory"
        } else if t.is_char_device() {
            "character device"
        } else if t.is_block_device() {
            "block device"
        } else if t.is_socket() {
            "socket"
        } else {
            "special file"
        };
        let only_dev = if t.is_char_device() && trust.devices {
            " (only a path under /dev may name a device)"
        } else {
            ""
        };
        return Err(refused(&format!(
            "is a {kind}, not a regular file{only_dev}"
        )));
    }
    if meta.nlink() != 1 {
        return Err(refused(&format!(
            "has {} hard links, not one",
            meta.nlink()
        )));
    }
    if !trust.owners.is_empty() && !trust.owners.iter().any(|u| u.as_raw() == meta.uid()) {
        let who: Vec<String> = trust.owners.iter().map(|u| u.to_string()).collect();
        return Err(refused(&format!(
            "is owned by uid {}, not by uid {}",
            meta.uid(),
            who.join(" or ")
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(refused(&format!("is writable by anyone (mode {mode:04o})")));
    }
    if mode & 0o020 != 0 && !trust.groups.iter().any(|g| g.as_raw() == meta.gid()) {
        return Err(refused(&format!(
            "is writable by group {} (mode {mode:04o})",
            meta.gid()
        )));
    }
    if trust.private && mode & 0o077 != 0 {
        return Err(refused(&format!(
            "is readable by others (mode {mode:04o}): chmod 600 it"
        )));
    }
    Ok(())
}

/// Gives the open `file` to `account` (the workers reopen the log as that user), if this
/// process may and it is a regular file not already theirs.
pub fn give(file: &File, account: Option<Account>) -> io::Result<()> {
    let Some(a) = account else { return Ok(()) };
    let meta = file.metadata()?;
    if !meta.file_type().is_file()
        || !nix::unistd::geteuid().is_root()
        || meta.uid() == a.uid.as_raw()
    {
        return Ok(());
    }
    nix::unistd::fchown(file, Some(a.uid), Some(a.gid))?;
    Ok(())
}

fn set_blocking(file: &File) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    fcntl(file, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Why a file that exists and could be opened was not used (inside an `io::Error` of kind
/// `PermissionDenied`; see [`is_refusal`]).
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// True if `e` is one of this module's refusals, not an error of the system's.
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opened(path: &Path, access: Access) -> Result<File, String> {
        open(path, access, &Trust::operator()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = opened(&link, Access::Append { mode: 0o640 }).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = opened(&fifo, Access::Append { mode: 0o640 }).unwrap_err();
        assert!(err.contains("FIFO"), "{err}");
        let start = std::time::Instant::now();
        let err = opened(&fifo, Access::Read).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(err, "is a FIFO, not a regular file");
        let err = open(&fifo, Access::Read, &Trust::operator()).unwrap_err();
        assert!(is_refusal(&err));
        let missing = open(
            &dir.path().join("missing"),
            Access::Read,
            &Trust::operator(),
        );
        let missing = missing.unwrap_err();
        assert!(!is_refusal(&missing) && missing.kind() == io::ErrorKind::NotFound);
        assert!(opened(dir.path(), Access::Read)
            .unwrap_err()
            .contains("is a directory"));
    }

    #[test]
    fn a_second_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "x").unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        let err = opened(&a, Access::Replace { mode: 0o644 }).unwrap_err();
        assert_eq!(err, "has 2 hard links, not one");
        // Refused before truncating.
        assert_eq!(std::fs::read(&a).unwrap(), b"x");
    }

    #[test]
    fn writable_by_anyone_or_readable_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = opened(&f, Access::Read).unwrap_err();
        assert!(err.contains("writable by anyone (mode 0666)"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(opened(&f, Access::Read).is_ok());
        let private = Trust {
            private: true,
            ..Trust::operator()
        };
        let err = open(&f, Access::Read, &private).unwrap_err().to_string();
        assert!(err.contains("readable by others (mode 0640)"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open(&f, Access::Read, &private).is_ok());
    }

    #[test]
    fn a_file_of_another_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let me = nix::unistd::geteuid();
        let other = Trust {
            owners: vec![Uid::from_raw(me.as_raw() + 1)],
            ..Trust::operator()
        };
        let err = open(&f, Access::Read, &other).unwrap_err().to_string();
        assert!(err.contains(&format!("owned by uid {me}")), "{err}");
        // Any owner, for a caller that judges it; but no group write.
        assert!(open(&f, Access::ReadWrite, &Trust::any_owner()).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = open(&f, Access::Read, &Trust::any_owner()).unwrap_err();
        assert!(err.to_string().starts_with("is writable by group"), "{err}");
    }

    #[test]
    fn replace_truncates_after_the_checks_and_append_appends() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "old contents\n").unwrap();
        use std::io::Write;
        writeln!(opened(&f, Access::Replace { mode: 0o644 }).unwrap(), "1").unwrap();
        writeln!(opened(&f, Access::Append { mode: 0o640 }).unwrap(), "2").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1\n2\n");
    }

    #[test]
    fn devices_only_by_a_path_under_dev() {
        let with_devices = Trust {
            devices: true,
            ..Trust::operator()
        };
        let null = Path::new("/dev/null");
        assert!(open(null, Access::Append { mode: 0o640 }, &with_devices).is_ok());
        let err = opened(null, Access::Append { mode: 0o640 }).unwrap_err();
        assert!(
            err.contains("is a character device, not a regular file"),
            "{err}"
        );
    }
}
