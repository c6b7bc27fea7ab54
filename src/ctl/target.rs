//! Which process is the master, and the proof, before `cserverctl` signals anything.
//!
//! A file names the master: the scoreboard's header (pid, start time, the server's user) or a
//! pid file (a pid). Neither the file nor the process it names is believed about itself:
//!
//! - the file is opened without following a symlink or blocking, must be a regular file with one
//!   link that no group or other user may write (see [`crate::files`]), and must belong to
//!   root, the caller, or the server's user that the scoreboard header names;
//! - the process must be the one recorded: its start time (field 22 of `/proc/PID/stat`) equal
//!   to the scoreboard's, so a pid reused since is refused;
//! - its real uid must be root's, the caller's or the server's user's, and a file of the server's
//!   user may name only a process of that user ([`may_name`]): no file makes cserverctl signal
//!   what the file's owner could not have signalled itself;
//! - then a pidfd is opened and the start time read again: from there on the pidfd names that
//!   one process and every signal goes through it (`pidfd_send_signal`), never by a pid that
//!   could have been reused in between.
//!
//! A pid file holds only a pid. The process must have been started with `--pid-file` naming
//! that very file (the same device and inode), and the scoreboard its own arguments name
//! (`--stats-file`, else the default path of its `--port`) must record that pid as its master:
//! it gives the start time and the server's user. Without such a scoreboard (a server on
//! `--port 0` without `--stats-file`) the pid file's proof is its owner, the process's uid and
//! its arguments: a process whose arguments name this pid file is that file's cserverd, or one
//! that root or the caller started to look like it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{open_board, TargetArgs};
use crate::config::{DEFAULT_HOST, DEFAULT_PORT};
use crate::files::{self, Access, Trust};
use crate::procfs::{self, Identity, Stat};
use crate::scoreboard::{self, OpenError, Scoreboard};
use crate::sys::PidFd;

/// The most bytes of a pid file read: a pid and some white space.
const PID_FILE_MAX: u64 = 32;

/// How many times the scoreboard's master is read again when it changed while being checked
/// (an upgrade's hand-over writes the new master's pid and start time).
const REREADS: usize = 3;

/// The master, checked. Signals go to this one process only.
pub struct Master {
    pid: Pid,
    start_ticks: u64,
    handle: Handle,
}

/// How signals reach the master.
enum Handle {
    PidFd(PidFd),
    /// `pidfd_open(2)` is missing (Linux before 5.3): signals go by pid with `kill(2)` right
    /// after the checks. Nothing pins the process in between, so a pid reused in that instant
    /// would be hit; only a kernel with pidfds closes that window.
    Pid,
}

impl Master {
    /// The master's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `sig` to the master (`ESRCH` once it has exited).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        match &self.handle {
            Handle::PidFd(fd) => fd.send_signal(sig),
            Handle::Pid => kill(self.pid, sig).map_err(io::Error::from),
        }
    }

    /// True once the master has exited: no such process, a zombie waiting for its parent, or
    /// the pid now another process's.
    pub fn is_gone(&self) -> bool {
        match procfs::stat(self.pid.as_raw()) {
            Ok(s) => s.exited() || s.start_ticks != self.start_ticks,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }
}

/// What a file says about the master, and who vouches for it.
struct Claim {
    pid: i32,
    /// The start time the process must have: the scoreboard's record, or, for a pid file
    /// without one, the one seen when its arguments were checked.
    start_ticks: u64,
    /// The file's owner.
    owner: u32,
    /// The server's user, from a scoreboard header.
    server_uid: Option<u32>,
    /// The file, for messages: `scoreboard PATH` or `pid file PATH`.
    source: String,
}

/// Why a pid file names no master to read or signal.
#[derive(Debug)]
pub enum PidFileError {
    /// The process it names has exited or is another program now: `why` for `status`'s
    /// `not running (why)`, `message` for an error line.
    NotRunning { why: String, message: String },
    /// No pid file, an unreadable or refused one, or a master whose scoreboard cannot be read.
    Unknown(String),
}

impl From<PidFileError> for String {
    fn from(e: PidFileError) -> String {
        match e {
            PidFileError::NotRunning { message, .. } | PidFileError::Unknown(message) => message,
        }
    }
}

/// Finds the master `target` names and checks it (see the module header). The error is one
/// line.
pub fn find_master(target: &TargetArgs) -> Result<Master, String> {
    find_master_and_board(target).map(|(master, _)| master)
}

/// As [`find_master`], with the master's scoreboard when there is one (a pid file's master on
/// `--port 0` without `--stats-file` has none that can be found).
pub fn find_master_and_board(target: &TargetArgs) -> Result<(Master, Option<Scoreboard>), String> {
    let caller = nix::unistd::getuid().as_raw();
    match &target.pid_file {
        Some(path) => {
            let (claim, board) = pid_file_claim(path)?;
            Ok((check(&claim, caller)?, board))
        }
        None => {
            let addr = std::net::SocketAddr::new(target.host, target.port);
            let board = open_board(target.stats_file.as_deref(), addr)?;
            Ok((from_board(&board, caller)?, Some(board)))
        }
    }
}

/// The scoreboard of the master a pid file names, checked as for a signal except for the
/// owner and uid rules (nothing is signalled; the scoreboard's own checks still apply).
pub fn pid_file_board(path: &Path) -> Result<Scoreboard, PidFileError> {
    let (claim, board) = pid_file_claim(path)?;
    board.ok_or_else(|| {
        PidFileError::Unknown(format!(
            "cserverd {} (from {}) has no scoreboard that can be found: it names neither \
             --stats-file nor a --port other than 0",
            claim.pid, claim.source
        ))
    })
}

/// The master the scoreboard records, read again if it changed while being checked.
fn from_board(board: &Scoreboard, caller: u32) -> Result<Master, String> {
    let mut recorded = board.header().master();
    let mut rereads = 0;
    loop {
        match check(&board_claim(board, recorded), caller) {
            Ok(master) => return Ok(master),
            Err(e) => {
                let now = board.header().master();
                if now == recorded || rereads == REREADS {
                    return Err(e);
                }
                recorded = now;
                rereads += 1;
            }
        }
    }
}

fn board_claim(board: &Scoreboard, master: Identity) -> Claim {
    Claim {
        pid: master.pid,
        start_ticks: master.start_ticks,
        owner: board.owner(),
        server_uid: Some(board.header().server_uid.load(Relaxed)),
        source: format!("scoreboard {}", board.path().display()),
    }
}

/// Reads the pid file and checks what only a pid file needs: that the process was started with
/// `--pid-file` naming it, and that its scoreboard, if it has one, records that pid. Returns
/// that scoreboard too.
fn pid_file_claim(path: &Path) -> Result<(Claim, Option<Scoreboard>), PidFileError> {
    use PidFileError::{NotRunning, Unknown};
    let source = format!("pid file {}", path.display());
    let opened = files::open(path, Access::Read, &Trust::any_owner())
        .and_then(|file| file.metadata().map(|meta| (file, meta)));
    let (file, meta) = opened.map_err(|e| {
        Unknown(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no pid file at {}: is cserverd running with --pid-file?",
                path.display()
            )
        } else {
            format!("refusing pid file {}: {e}", path.display())
        })
    })?;
    let pid = read_pid(file, path).map_err(Unknown)?;
    if pid <= 1 {
        return Err(Unknown(not_a_master(pid, &source)));
    }
    let exited = || NotRunning {
        why: format!("stale pid file: process {pid} exited"),
        message: gone(pid, &source),
    };
    // The start time before the arguments are read: the process they belong to.
    let seen = match procfs::stat(pid) {
        Ok(s) if s.exited() => return Err(exited()),
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(exited()),
        Err(e) => return Err(Unknown(proc_error(e, pid, &source))),
    };
    let args = procfs::cmdline(pid).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => exited(),
        _ => Unknown(proc_error(e, pid, &source)),
    })?;
    if !started_with(pid, &args, "--pid-file", &meta).map_err(Unknown)? {
        return Err(NotRunning {
            why: format!("stale pid file: process {pid} is not cserverd started with it"),
            message: format!(
                "process {pid} (from {source}) is not cserverd started with --pid-file {}: \
                 refusing to signal it",
                path.display()
            ),
        });
    }
    let mut claim = Claim {
        pid,
        start_ticks: seen.start_ticks,
        owner: meta.uid(),
        server_uid: None,
        source,
    };
    let board = master_board(pid, &args).map_err(Unknown)?;
    if let Some(board) = &board {
        let recorded = board.header().master();
        if recorded.pid != pid || recorded.start_ticks != seen.start_ticks {
            return Err(Unknown(format!(
                "{} names process {pid}, but its scoreboard {} records master {}: refusing to \
                 signal it",
                claim.source,
                board.path().display(),
                recorded.pid
            )));
        }
        claim.server_uid = Some(board.header().server_uid.load(Relaxed));
    }
    Ok((claim, board))
}

/// Reads one decimal pid (white space around it allowed) from at most [`PID_FILE_MAX`] bytes.
fn read_pid(file: File, path: &Path) -> Result<i32, String> {
    let mut bytes = Vec::new();
    file.take(PID_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let t = text.trim();
    if bytes.len() as u64 > PID_FILE_MAX || t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "pid file {} does not hold a pid: {:?}",
            path.display(),
            t.chars().take(40).collect::<String>()
        ));
    }
    t.parse()
        .map_err(|_| format!("pid file {} holds an impossible pid {t}", path.display()))
}

/// The value of `name` in a cserverd's arguments (`--name VALUE` or `--name=VALUE`), `argv[0]`
/// first.
pub(super) fn option_value<'a>(args: &'a [OsString], name: &str) -> Option<&'a OsStr> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            return None;
        }
        if bytes == name.as_bytes() {
            return rest.next().map(OsString::as_os_str);
        }
        if let Some(value) = bytes
            .strip_prefix(name.as_bytes())
            .and_then(|v| v.strip_prefix(b"="))
        {
            return Some(OsStr::from_bytes(value));
        }
    }
    None
}

/// A path from process `pid`'s arguments as that process sees it: relative ones from its
/// working directory.
fn as_seen_by(pid: i32, path: &OsStr) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(&format!("/proc/{pid}/cwd")).join(path)
    }
}

/// True if process `pid` was started with option `name` naming the file `meta` describes.
fn started_with(pid: i32, args: &[OsString], name: &str, meta: &Metadata) -> Result<bool, String> {
    let Some(value) = option_value(args, name) else {
        return Ok(false);
    };
    match fs::symlink_metadata(as_seen_by(pid, value)) {
        Ok(m) => Ok(m.dev() == meta.dev() && m.ino() == meta.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!(
            "cannot check process {pid}'s {name} {}: {e}",
            Path::new(value).display()
        )),
    }
}

/// The scoreboard the master's own arguments name: `--stats-file`, else the default path of
/// its `--port`. None when that does not exist or the arguments cannot tell (`--port 0`).
fn master_board(pid: i32, args: &[OsString]) -> Result<Option<Scoreboard>, String> {
    let path = match option_value(args, "--stats-file") {
        Some(p) => as_seen_by(pid, p),
        None => {
            let port = match option_value(args, "--port") {
                Some(p) => p.to_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                None => DEFAULT_PORT,
            };
            // cserverd takes a name too (the first address it resolves to).
            let resolve = |s: &str| {
                s.parse().ok().or_else(|| {
                    use std::net::ToSocketAddrs;
                    (s, 0).to_socket_addrs().ok()?.next().map(|a| a.ip())
                })
            };
            let host = match option_value(args, "--host") {
                Some(h) => h.to_str().and_then(resolve),
                None => resolve(DEFAULT_HOST),
            };
            let Some(host) = host.filter(|_| port != 0) else {
                return Ok(None);
            };
            scoreboard::default_path(std::net::SocketAddr::new(host, port))
        }
    };
    match Scoreboard::open_readonly(&path) {
        Ok(board) => Ok(Some(board)),
        Err(OpenError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a file owned by `owner` is believed about the master at all: root's, the caller's,
/// or the server's user's (as a scoreboard header names it).
fn trusted_owner(owner: u32, caller: u32, server_uid: Option<u32>) -> bool {
    owner == 0 || owner == caller || Some(owner) == server_uid
}

/// Whether a file owned by `owner` may name a master whose real uid is `uid`. Root's and the
/// caller's files may name a master of root, the caller or the server's user; a file of the
/// server's user only a process of that user. So no file makes cserverctl signal a process its
/// owner could not signal itself.
fn may_name(owner: u32, uid: u32, caller: u32, server_uid: Option<u32>) -> bool {
    if owner == 0 || owner == caller {
        uid == 0 || uid == caller || Some(uid) == server_uid
    } else {
        Some(owner) == server_uid && uid == owner
    }
}

fn not_a_master(pid: i32, source: &str) -> String {
    format!("{source} names pid {pid}: refusing to signal it (not a cserverd master)")
}

fn gone(pid: i32, source: &str) -> String {
    format!("no process {pid} (from {source}): is cserverd running?")
}

fn proc_error(e: io::Error, pid: i32, source: &str) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        gone(pid, source)
    } else {
        format!("cannot read /proc/{pid}: {e}")
    }
}

/// `/proc/PID/stat` of a process that must be alive.
fn live_stat(pid: i32, source: &str) -> Result<Stat, String> {
    let stat = procfs::stat(pid).map_err(|e| proc_error(e, pid, source))?;
    if stat.exited() {
        return Err(format!("cserverd {pid} (from {source}) has already exited"));
    }
    Ok(stat)
}

/// Checks the claimed master (owner, start time, uid), pins it with a pidfd and checks that the
/// pinned process is the one checked.
fn check(claim: &Claim, caller: u32) -> Result<Master, String> {
    let Claim {
        pid,
        start_ticks,
        owner,
        server_uid,
        ref source,
    } = *claim;
    if pid <= 1 {
        return Err(not_a_master(pid, source));
    }
    if !trusted_owner(owner, caller, server_uid) {
        return Err(format!(
            "refusing {source}: owned by uid {owner}, not by root or you (uid {caller})"
        ));
    }
    if start_ticks == 0 {
        return Err(format!(
            "{source} records no start time for master {pid}: refusing to signal it"
        ));
    }
    let first = live_stat(pid, source)?;
    if first.start_ticks != start_ticks {
        return Err(format!(
            "process {pid} (from {source}) is not the master recorded there: it started at \
             tick {}, the master at tick {start_ticks}; refusing to signal it",
            first.start_ticks
        ));
    }
    let uid = procfs::real_uid(pid).map_err(|e| proc_error(e, pid, source))?;
    if !may_name(owner, uid, caller, server_uid) {
        return Err(if owner == 0 || owner == caller {
            format!(
                "process {pid} (from {source}) runs as uid {uid}, not as root, you (uid \
                 {caller}) or the server's user: refusing to signal it"
            )
        } else {
            format!(
                "process {pid} (from {source}) runs as uid {uid}, but the file belongs to uid \
                 {owner}, which may name only its own processes: refusing to signal it"
            )
        });
    }
    let handle = match PidFd::open(Pid::from_raw(pid)) {
        Ok(fd) => Handle::PidFd(fd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(gone(pid, source)),
        // Linux before 5.3: see Handle::Pid.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Handle::Pid,
        Err(e) => return Err(format!("cannot open a pidfd for process {pid}: {e}")),
    };
    // The pidfd names the process that had the pid when it was opened: the one checked above
    // only if the start time is still the same.
    let pinned = live_stat(pid, source)?;
    if pinned.start_ticks != first.start_ticks {
        return Err(format!(
            "process {pid} (from {source}) was replaced while being checked: refusing to signal it"
        ));
    }
    Ok(Master {
        pid: Pid::from_raw(pid),
        start_ticks: first.start_ticks,
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// A child process, killed and reaped when dropped (also when a test fails).
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn claim(pid: i32, start_ticks: u64) -> Claim {
        Claim {
            pid,
            start_ticks,
            owner: me(),
            server_uid: None,
            source: "scoreboard b".into(),
        }
    }

    #[test]
    fn owners_and_uids_a_file_may_name() {
        let (root, caller, server, other) = (0, 1000, 65534, 4242);
        // Root's and the caller's own files: root, the caller, the server's user.
        for owner in [root, caller] {
            assert!(trusted_owner(owner, caller, None));
            for uid in [root, caller] {
                assert!(may_name(owner, uid, caller, None));
                assert!(may_name(owner, uid, caller, Some(server)));
            }
            assert!(may_name(owner, server, caller, Some(server)));
            assert!(!may_name(owner, server, caller, None));
            assert!(!may_name(owner, other, caller, Some(server)));
        }
        // The server's user's file: only that user's processes.
        assert!(trusted_owner(server, caller, Some(server)));
        assert!(may_name(server, server, caller, Some(server)));
        for uid in [root, caller, other] {
            assert!(!may_name(server, uid, caller, Some(server)), "{uid}");
        }
        // Anyone else's file: nothing.
        assert!(!trusted_owner(other, caller, Some(server)));
        assert!(!trusted_owner(other, caller, None));
        for uid in [root, caller, server, other] {
            assert!(!may_name(other, uid, caller, Some(server)), "{uid}");
        }
        // Root as the caller: a file of another user names nothing of root's.
        assert!(!trusted_owner(server, root, None));
        assert!(!may_name(server, root, root, Some(server)));
    }

    #[test]
    fn only_the_recorded_live_process_is_a_master() {
        for pid in [-1, 0, 1] {
            let err = check(&claim(pid, 1), me()).err().unwrap();
            assert!(err.contains("refusing"), "{err}");
        }
        let own = procfs::own_identity().unwrap();
        // The right start time: this very process passes (its uid is the caller's).
        let master = check(&claim(own.pid, own.start_ticks), me()).unwrap();
        assert_eq!(master.pid().as_raw(), own.pid);
        assert!(!master.is_gone());
        // Another start time: the pid is someone else's now.
        let err = check(&claim(own.pid, own.start_ticks + 1), me())
            .err()
            .unwrap();
        assert!(err.contains("is not the master recorded there"), "{err}");
        let err = check(&claim(own.pid, 0), me()).err().unwrap();
        assert!(err.contains("records no start time"), "{err}");
        let err = check(&claim(i32::MAX, 5), me()).err().unwrap();
        assert!(err.contains("no process"), "{err}");
        // A file nobody vouches for, and a process its owner may not name.
        let mut foreign = claim(own.pid, own.start_ticks);
        foreign.owner = me() + 1;
        let err = check(&foreign, me()).err().unwrap();
        assert!(err.contains("owned by uid"), "{err}");
        foreign.server_uid = Some(me() + 1);
        let err = check(&foreign, me()).err().unwrap();
        assert!(err.contains("may name only its own processes"), "{err}");
    }

    #[test]
    fn a_checked_master_is_gone_once_it_exits() {
        let mut child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = child.0.id() as i32;
        let start = procfs::stat(pid).unwrap().start_ticks;
        let master = check(&claim(pid, start), me()).unwrap();
        assert!(!master.is_gone());
        master.signal(Signal::SIGKILL).unwrap();
        // Dead but not reaped (a zombie): gone, and refused from then on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !master.is_gone() {
            assert!(std::time::Instant::now() < deadline, "{pid} not gone");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(procfs::stat(pid).unwrap().state, 'Z');
        let err = check(&claim(pid, start), me()).err().unwrap();
        assert!(err.contains("has already exited"), "{err}");
        child.0.wait().unwrap();
        assert!(master.is_gone());
        // The pidfd still names the process that exited, never whatever gets its pid.
        assert_eq!(
            master.signal(Signal::SIGTERM).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
    }

    #[test]
    fn pid_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        let read = |bytes: &[u8]| {
            fs::write(&p, bytes).unwrap();
            read_pid(File::open(&p).unwrap(), &p)
        };
        assert_eq!(read(b" 1234\n").unwrap(), 1234);
        for bad in [
            &b""[..],
            b"\n",
            b"-1",
            b"12x",
            b"1 2",
            b"99999999999",
            b"\xff1",
        ] {
            assert!(read(bad).is_err(), "{bad:?} accepted");
        }
        // A pid padded past the limit is refused, however much more there is.
        let long = format!("{:>40}\n", 1234);
        assert!(read(long.as_bytes())
            .unwrap_err()
            .contains("does not hold a pid"));
        let err = String::from(pid_file_claim(&dir.path().join("missing")).err().unwrap());
        assert!(err.contains("no pid file"), "{err}");
    }

    #[test]
    fn options_are_found_in_a_servers_arguments() {
        let args: Vec<OsString> = [
            "cserverd",
            "--port",
            "0",
            "--pid-file=/run/c.pid",
            "--stats-file",
            "rel/sb",
            "--",
            "--log",
            "x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let get = |name| option_value(&args, name).map(|v| v.to_str().unwrap());
        assert_eq!(get("--port"), Some("0"));
        assert_eq!(get("--pid-file"), Some("/run/c.pid"));
        assert_eq!(get("--stats-file"), Some("rel/sb"));
        assert_eq!(get("--log"), None);
        assert_eq!(get("--pid"), None);
        // argv[0] is not an option; a trailing name without a value has none.
        let odd: Vec<OsString> = ["--port", "1", "--port"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(option_value(&odd, "--port"), None);
        assert_eq!(
            as_seen_by(7, OsStr::new("rel/sb")),
            Path::new("/proc/7/cwd/rel/sb")
        );
        assert_eq!(as_seen_by(7, OsStr::new("/abs")), Path::new("/abs"));
    }
}
