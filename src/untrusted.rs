//! Opening a file that another local user may have put in our way (the scoreboard in a
//! world-writable `/dev/shm`, a pid file), as nginx and OpenSSH open theirs: never through a
//! symlink, never blocking (a FIFO opens at once and is then refused), and only a regular file
//! with one link that no group or other user may write. Whose file it may be depends on who
//! asks, so the owner is returned for the caller to judge.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not used.
#[derive(Debug, thiserror::Error)]
pub enum Unfit {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a symbolic link (not followed)")]
    Symlink,
    #[error("a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("{0} links to it, not one")]
    Links(u64),
    #[error("writable by group or others (mode {0:04o})")]
    Writable(u32),
}

impl Unfit {
    /// True if the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Unfit::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// Opens `path` (read-only, or read-write with `write`) with `O_NOFOLLOW | O_NONBLOCK |
/// O_CLOEXEC` and checks the descriptor itself with `fstat`, so what is checked is what is read.
/// Returns the file and its metadata (owner, length).
pub fn open(path: &Path, write: bool) -> Result<(File, Metadata), Unfit> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW's refusal of a symlink in the last component.
            Some(libc::ELOOP) => Unfit::Symlink,
            _ => Unfit::Io(e),
        })?;
    let meta = file.metadata()?;
    check(&meta)?;
    Ok((file, meta))
}

/// The checks on an open file's metadata.
fn check(meta: &Metadata) -> Result<(), Unfit> {
    let t = meta.file_type();
    if !t.is_file() {
        return Err(Unfit::NotRegular(if t.is_fifo() {
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
        }));
    }
    if meta.nlink() != 1 {
        return Err(Unfit::Links(meta.nlink()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Unfit::Writable(mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    #[test]
    fn only_a_plain_private_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let plain = d.join("plain");
        fs::write(&plain, b"42\n").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, meta) = open(&plain, false).unwrap();
        assert_eq!(meta.len(), 3);
        assert!(open(&plain, true).is_ok());

        let link = d.join("link");
        std::os::unix::fs::symlink(&plain, &link).unwrap();
        assert!(matches!(open(&link, false), Err(Unfit::Symlink)));

        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let start = Instant::now();
        let err = open(&fifo, false).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(err.to_string(), "a FIFO, not a regular file");

        assert!(matches!(
            open(d, false),
            Err(Unfit::NotRegular("directory"))
        ));
        assert!(matches!(
            open(Path::new("/dev/null"), false),
            Err(Unfit::NotRegular("character device"))
        ));

        let hard = d.join("hard");
        fs::hard_link(&plain, &hard).unwrap();
        assert_eq!(
            open(&hard, false).unwrap_err().to_string(),
            "2 links to it, not one"
        );
        fs::remove_file(&hard).unwrap();

        for mode in [0o664, 0o646, 0o666] {
            fs::set_permissions(&plain, fs::Permissions::from_mode(mode)).unwrap();
            let err = open(&plain, false).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("writable by group or others (mode {mode:04o})")
            );
        }

        let missing = open(&d.join("missing"), false).unwrap_err();
        assert!(missing.is_not_found());
        assert!(!Unfit::Symlink.is_not_found());
    }
}
