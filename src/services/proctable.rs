//! The per-session process table behind `RUN`, `LIST` and `CLOSE`.
//!
//! `RUN <program> [args]` starts a program owned by the session. It is refused unless the server
//! was started with `--allow-run DIR`, and only programs inside DIR may run: DIR is canonicalized
//! once at startup ([`allowed_dir`]); each request is resolved by [`resolve_program`], which
//! canonicalizes `DIR/program` (following every symlink and `..`) and requires the result to lie
//! inside DIR and to be an executable regular file.
//!
//! A started process:
//!
//! - has `/dev/null` as stdin, stdout and stderr: nothing it prints can mix into the protocol;
//! - runs in DIR, in a process group of its own, so `CLOSE` (`SIGTERM`) and the end of the
//!   session (`SIGKILL`) reach whatever it started too;
//! - gets `SIGKILL` from the kernel if the worker that started it dies (`PR_SET_PDEATHSIG`);
//! - starts with an empty signal mask and default dispositions (a worker blocks `TERM` & co. for
//!   its signalfd, and a blocked mask would otherwise be inherited through `exec`), and with
//!   every descriptor above 2 close-on-exec.
//!
//! The table never waits for anything: the worker reaps (`waitpid(-1, WNOHANG)` on `SIGCHLD`) and
//! hands each `(pid, status)` to the table that owns the pid through [`ProcTable::reaped`]. A pid
//! stays "running" here until then, and since an unreaped child's pid cannot be reused, signalling
//! a running entry never reaches a stranger — provided the worker reports every reaped child of a
//! live table before anything signals again (it is single-threaded, so it does).
//!
//! Memory is bounded: at most [`MAX_RUNNING`] running processes per session, and at most
//! [`MAX_ENTRIES`] entries (the oldest ended ones are forgotten first).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::child;

use crate::protocol::ListKind;

/// Running processes one session may have at once.
pub const MAX_RUNNING: usize = 32;
/// Entries (running and ended) one session's table keeps.
pub const MAX_ENTRIES: usize = 128;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl fmt::Display for Ending {
    /// `exited N` or `killed by SIGNAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Ending::Exited(code) => write!(f, "exited {code}"),
            Ending::Signaled(sig) => match Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by {}", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// One process of the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub pid: i32,
    /// The program as the client named it in `RUN`.
    pub name: String,
    pub started: SystemTime,
    /// When the worker reaped it, and how it ended.
    pub ended: Option<(SystemTime, Ending)>,
}

impl Proc {
    pub fn is_running(&self) -> bool {
        self.ended.is_none()
    }

    /// `running`, `exited N` or `killed by SIGNAME`.
    pub fn state(&self) -> String {
        match self.ended {
            None => "running".to_string(),
            Some((_, ending)) => ending.to_string(),
        }
    }
}

/// Why RUN or CLOSE is refused; Display is the human text (the lead prefixes `ERR <code> `).
#[derive(Debug)]
pub enum ProcError {
    /// The server was started without `--allow-run`.
    NotAllowed,
    /// The program escapes DIR, or does not exist there (deliberately the same answer).
    Outside(String),
    /// Inside DIR, but not a regular file with an execute bit.
    NotExecutable(String),
    /// [`MAX_RUNNING`] processes are running already.
    TooMany,
    /// `fork` or `exec` failed (the exec error is reported synchronously by `spawn`).
    Spawn(io::Error),
    /// `CLOSE` named no running process of this session.
    NoSuchProcess(String),
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcError::NotAllowed => {
                f.write_str("running programs is not enabled on this server (no --allow-run)")
            }
            ProcError::Outside(p) => write!(f, "no program {} in the allowed directory", Shown(p)),
            ProcError::NotExecutable(p) => {
                write!(f, "{} is not an executable regular file", Shown(p))
            }
            ProcError::TooMany => write!(
                f,
                "too many running processes (at most {MAX_RUNNING} per session)"
            ),
            ProcError::Spawn(e) => write!(f, "cannot start the program: {e}"),
            ProcError::NoSuchProcess(t) => write!(f, "no running process {}", Shown(t)),
        }
    }
}

impl std::error::Error for ProcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProcError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Client text echoed in a reply line: control characters become `?` so that nothing the client
/// sent can end or forge a line.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            fmt::Write::write_char(f, if c.is_control() { '?' } else { c })?;
        }
        Ok(())
    }
}

/// One session's processes, oldest first.
///
/// Dropping the table ends its running processes like [`ProcTable::end_all`], so a session that
/// goes away for any reason leaves nothing behind.
#[derive(Debug, Default)]
pub struct ProcTable {
    procs: Vec<Proc>,
}

impl ProcTable {
    /// A table of processes that all ended (a session moved from another worker).
    pub fn of_ended(procs: Vec<Proc>) -> ProcTable {
        let procs = procs.into_iter().filter(|p| !p.is_running()).collect();
        ProcTable { procs }
    }

    /// Starts `program` (a name inside `dir`, already canonical) with `args`.
    pub fn run(
        &mut self,
        dir: Option<&Path>,
        program: &str,
        args: &[&str],
    ) -> Result<i32, ProcError> {
        let dir = dir.ok_or(ProcError::NotAllowed)?;
        let path = resolve_program(dir, program)?;
        if self.running().count() >= MAX_RUNNING {
            return Err(ProcError::TooMany);
        }
        check_format(&path).map_err(ProcError::Spawn)?;
        let child = spawn(&path, dir, args).map_err(ProcError::Spawn)?;
        // The `Child` handle is dropped without waiting: the worker reaps by pid.
        let pid = child.id() as i32;
        drop(child);
        self.make_room();
        // The file's own name in the directory, not the client's spelling of it (`././x` or a
        // 30 KB detour through `sub/../` would otherwise be stored and listed as typed).
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        self.procs.push(Proc {
            pid,
            name,
            started: SystemTime::now(),
            ended: None,
        });
        Ok(pid)
    }

    /// Records that `pid` ended; false if it is not one of ours.
    pub fn reaped(&mut self, pid: i32, ending: Ending) -> bool {
        match self
            .procs
            .iter_mut()
            .find(|p| p.pid == pid && p.is_running())
        {
            Some(p) => {
                p.ended = Some((SystemTime::now(), ending));
                true
            }
            None => false,
        }
    }

    /// The lines of a LIST reply (without the `OK <n>` head line); formats: Running/All:
    /// `<pid> <name> <running|exited N|killed by SIGNAME>`; Details: `<name> pid <pid> start
    /// <YYYY-MM-DD HH:MM:SS> end <... or -> state <running|exited N|killed by SIGNAME>` (local
    /// time).
    pub fn list(&self, which: ListKind) -> Vec<String> {
        let shown = self
            .procs
            .iter()
            .filter(|p| which != ListKind::Running || p.is_running());
        match which {
            ListKind::Running | ListKind::All => shown
                .map(|p| format!("{} {} {}", p.pid, p.name, p.state()))
                .collect(),
            ListKind::Details => shown
                .map(|p| {
                    let end = p
                        .ended
                        .map_or_else(|| "-".to_string(), |(t, _)| local_time(t));
                    format!(
                        "{} pid {} start {} end {} state {}",
                        p.name,
                        p.pid,
                        local_time(p.started),
                        end,
                        p.state()
                    )
                })
                .collect(),
        }
    }

    /// CLOSE: `target` is a pid or a name; `all` = `CLOSE <name> ALL`. Returns how many were
    /// signalled.
    ///
    /// A target that is the pid of one of our running processes means that process; otherwise it
    /// is a name: the oldest running process of that name, or all of them with `all`. Each gets
    /// `SIGTERM` to its process group. The entries stay "running" until the worker reaps them.
    pub fn close(&mut self, target: &str, all: bool) -> Result<usize, ProcError> {
        let by_pid = target
            .parse::<i32>()
            .ok()
            .filter(|&pid| pid > 0)
            .and_then(|pid| self.procs.iter().find(|p| p.pid == pid && p.is_running()));
        let victims: Vec<i32> = match by_pid {
            Some(p) => vec![p.pid],
            None => {
                let named = self
                    .procs
                    .iter()
                    .filter(|p| p.is_running() && p.name == target)
                    .map(|p| p.pid);
                if all {
                    named.collect()
                } else {
                    named.take(1).collect()
                }
            }
        };
        if victims.is_empty() {
            return Err(ProcError::NoSuchProcess(target.to_string()));
        }
        Ok(victims
            .into_iter()
            .filter(|&pid| signal_group(pid, Signal::SIGTERM))
            .count())
    }

    /// The session is over: SIGKILL every running process group. Returns their pids.
    pub fn end_all(&mut self) -> Vec<i32> {
        let pids: Vec<i32> = self.running().collect();
        for &pid in &pids {
            signal_group(pid, Signal::SIGKILL);
        }
        pids
    }

    /// Every entry, oldest first.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Pids still running.
    pub fn running(&self) -> impl Iterator<Item = i32> + '_ {
        self.procs.iter().filter(|p| p.is_running()).map(|p| p.pid)
    }

    /// Forgets the oldest ended entries until one more fits in [`MAX_ENTRIES`]. There is always
    /// one to forget: at most [`MAX_RUNNING`] < [`MAX_ENTRIES`] are running.
    fn make_room(&mut self) {
        while self.procs.len() >= MAX_ENTRIES {
            match self.procs.iter().position(|p| !p.is_running()) {
                Some(i) => {
                    self.procs.remove(i);
                }
                None => break,
            }
        }
    }
}

impl Drop for ProcTable {
    fn drop(&mut self) {
        self.end_all();
    }
}

/// Resolves `program` inside `dir` (canonical), refusing escapes through `..`, symlinks or
/// absolute paths.
///
/// Returns the canonical path, which is what gets executed: it contains no symlink and no `..`.
/// A program that does not exist gets the same answer as one outside `dir`
/// ([`ProcError::Outside`]), so requests learn nothing about the rest of the file system.
pub fn resolve_program(dir: &Path, program: &str) -> Result<PathBuf, ProcError> {
    let outside = || ProcError::Outside(program.to_string());
    if program.is_empty()
        || program.chars().any(char::is_control) // NUL included
        || Path::new(program).is_absolute()
    {
        return Err(outside());
    }
    let path = dir.join(program).canonicalize().map_err(|_| outside())?;
    // Component-wise: `/srv/bin2/x` does not start with `/srv/bin`.
    if !path.starts_with(dir) {
        return Err(outside());
    }
    let meta = std::fs::metadata(&path).map_err(|_| outside())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ProcError::NotExecutable(program.to_string()));
    }
    Ok(path)
}

/// Canonicalizes the --allow-run directory at startup (error text for the operator if missing /
/// not a dir).
pub fn allowed_dir(dir: &Path) -> Result<PathBuf, String> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("--allow-run {}: {e}", dir.display()))?;
    if !canonical.is_dir() {
        return Err(format!("--allow-run {}: not a directory", dir.display()));
    }
    Ok(canonical)
}

/// Refuses a file that is neither an ELF binary nor a `#!` script with `ENOEXEC`, as `execve`
/// would. Without this, glibc's `execvp` (used by `Command`) answers `ENOEXEC` by running the file
/// with `/bin/sh`, so any data file with an execute bit would "start" and run as a shell script.
fn check_format(path: &Path) -> io::Result<()> {
    let mut head = [0u8; 4];
    let mut len = 0;
    let mut file = File::open(path)?;
    while len < head.len() {
        match file.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..len];
    if head.starts_with(b"#!") || head == b"\x7fELF" {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOEXEC))
    }
}

/// Starts `path` in `dir` with `args`: `/dev/null` for stdio, its own process group, killed if
/// the calling worker dies.
fn spawn(path: &Path, dir: &Path, args: &[&str]) -> io::Result<std::process::Child> {
    let parent = nix::unistd::getpid();
    let empty = SigSet::empty();
    // For the fallback when close_range(2) is missing (Linux < 5.11); read before the fork.
    let max_fd = child::max_fd();
    let mut cmd = Command::new(path);
    child::clean_environment(&mut cmd, "/bin/sh", "dumb");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes raw system calls only (prctl, getppid, sigaction, close_range
    // or fcntl, sigprocmask) and allocates nothing (errors are raw OS errors).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The worker may have died before the request took effect: then nobody would kill
            // this process, so it does not start.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            child::default_signals();
            // std's own exec-error pipe is close-on-exec already, so it keeps working.
            child::cloexec_from_3(max_fd);
            // Last: with default dispositions in place, nothing of the server runs if a signal
            // is delivered from here on.
            signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)?;
            Ok(())
        });
    }
    // `spawn` reports a failed exec synchronously: std's fork path passes the child's exec
    // errno back through a close-on-exec pipe and waits for EOF (exec happened) or the error,
    // as the seed did by hand. So `Ok` means the program is running, and errors from the
    // closure above arrive the same way.
    cmd.spawn()
}

/// Sends `sig` to the process group of `pid` (which it leads); if the group is gone (the process
/// left it with `setsid`/`setpgid`), to the process itself. True if a signal was sent.
fn signal_group(pid: i32, sig: Signal) -> bool {
    let pid = Pid::from_raw(pid);
    match signal::killpg(pid, sig) {
        Ok(()) => true,
        Err(Errno::ESRCH) => signal::kill(pid, sig).is_ok(),
        Err(_) => false,
    }
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn local_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use tempfile::TempDir;

    /// A temporary root with `allowed/` (canonical) inside it.
    struct Fixture {
        _root: TempDir,
        root: PathBuf,
        dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("allowed")).unwrap();
        let dir = allowed_dir(&root.join("allowed")).unwrap();
        Fixture {
            _root: tmp,
            root,
            dir,
        }
    }

    /// Held while a file is open for writing and while spawning. Tests run in parallel threads:
    /// a child forked by one test holds copies of every descriptor open in the process until its
    /// exec, so a script another test is writing at that moment would fail to exec with
    /// `ETXTBSY`.
    static FORK_LOCK: Mutex<()> = Mutex::new(());

    fn fork_lock() -> MutexGuard<'static, ()> {
        FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(t: &mut ProcTable, dir: &Path, program: &str, args: &[&str]) -> Result<i32, ProcError> {
        let _lock = fork_lock();
        t.run(Some(dir), program, args)
    }

    fn write(path: &Path, text: &str, mode: u32) {
        let _lock = fork_lock();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn script(dir: &Path, name: &str, body: &str) {
        write(&dir.join(name), &format!("#!/bin/sh\n{body}\n"), 0o755);
    }

    /// Waits for our child `pid` (never `-1`: tests run in parallel threads) and converts.
    fn reap(pid: i32) -> Ending {
        match waitpid(Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => Ending::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Ending::Signaled(sig as i32),
            other => panic!("unexpected wait status {other:?}"),
        }
    }

    fn still_alive(pid: i32) -> bool {
        waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).unwrap() == WaitStatus::StillAlive
    }

    #[test]
    fn escapes_are_refused() {
        let f = fixture();
        write(&f.root.join("x"), "#!/bin/sh\n", 0o755);
        std::fs::create_dir(f.root.join("allowed2")).unwrap();
        write(&f.root.join("allowed2/y"), "#!/bin/sh\n", 0o755);
        std::fs::create_dir(f.dir.join("sub")).unwrap();
        symlink(f.root.join("x"), f.dir.join("link-out")).unwrap();
        symlink("../x", f.dir.join("rel-link-out")).unwrap();
        symlink(&f.root, f.dir.join("dir-link-out")).unwrap();
        for program in [
            "../x",
            "/bin/sh",
            "link-out",
            "rel-link-out",
            "dir-link-out/x",
            "sub/../../x",
            "../allowed2/y",
            "missing",
            "",
            "a\0b",
            "a\nb",
        ] {
            match resolve_program(&f.dir, program) {
                Err(ProcError::Outside(p)) => assert_eq!(p, program),
                other => panic!("{program:?}: {other:?}"),
            }
        }
        write(&f.dir.join("data"), "#!/bin/sh\n", 0o644);
        for program in ["data", "sub", "."] {
            match resolve_program(&f.dir, program) {
                Err(ProcError::NotExecutable(p)) => assert_eq!(p, program),
                other => panic!("{program:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn programs_inside_are_accepted() {
        let f = fixture();
        script(&f.dir, "ok", "exit 0");
        std::fs::create_dir(f.dir.join("sub")).unwrap();
        symlink(f.dir.join("ok"), f.dir.join("link-in")).unwrap();
        symlink("../ok", f.dir.join("sub/rel-link-in")).unwrap();
        let ok = f.dir.join("ok");
        for program in ["ok", "./ok", "link-in", "sub/rel-link-in", "sub/../ok"] {
            assert_eq!(resolve_program(&f.dir, program).unwrap(), ok, "{program}");
        }
    }

    #[test]
    fn allowed_dir_is_canonical_and_checked() {
        let f = fixture();
        symlink(&f.dir, f.root.join("via-link")).unwrap();
        assert_eq!(allowed_dir(&f.root.join("via-link")).unwrap(), f.dir);
        assert!(
            allowed_dir(&f.dir.join("sub/..")).is_err(),
            "sub does not exist"
        );
        let missing = allowed_dir(&f.root.join("missing")).unwrap_err();
        assert!(missing.starts_with("--allow-run "), "{missing}");
        write(&f.root.join("file"), "", 0o755);
        let file = allowed_dir(&f.root.join("file")).unwrap_err();
        assert!(file.ends_with("not a directory"), "{file}");
    }

    #[test]
    fn run_needs_allow_run() {
        let mut t = ProcTable::default();
        assert!(matches!(t.run(None, "x", &[]), Err(ProcError::NotAllowed)));
        assert_eq!(t.list(ListKind::All).len(), 0);
    }

    #[test]
    fn run_reap_list() {
        let f = fixture();
        script(&f.dir, "three", "exit 3");
        script(&f.dir, "sleeper", "sleep 30");
        let mut t = ProcTable::default();
        let a = run(&mut t, &f.dir, "three", &[]).unwrap();
        let b = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        assert_eq!(reap(a), Ending::Exited(3));
        assert!(t.reaped(a, Ending::Exited(3)));
        assert!(!t.reaped(a, Ending::Exited(3)), "reaped twice");
        assert!(!t.reaped(1, Ending::Exited(0)), "not ours");
        assert_eq!(t.running().collect::<Vec<_>>(), vec![b]);

        assert_eq!(
            t.list(ListKind::Running),
            vec![format!("{b} sleeper running")]
        );
        assert_eq!(
            t.list(ListKind::All),
            vec![
                format!("{a} three exited 3"),
                format!("{b} sleeper running")
            ]
        );
        let details = t.list(ListKind::Details);
        assert_eq!(details.len(), 2);
        let stamp = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}";
        let words: Vec<&str> = details[0].split(' ').collect();
        assert_eq!(words[..3], ["three", "pid", a.to_string().as_str()]);
        assert_eq!(words[3], "start");
        assert_eq!(words[6], "end");
        assert_eq!(words[9..], ["state", "exited", "3"]);
        for w in [&words[4..6], &words[7..9]] {
            assert!(is_stamp(&w.join(" ")), "{} is not {stamp}", w.join(" "));
        }
        let words: Vec<&str> = details[1].split(' ').collect();
        assert_eq!(
            words[..4],
            ["sleeper", "pid", b.to_string().as_str(), "start"]
        );
        assert_eq!(words[6..], ["end", "-", "state", "running"]);

        assert_eq!(t.end_all(), vec![b]);
        assert_eq!(reap(b), Ending::Signaled(libc::SIGKILL));
        assert!(t.reaped(b, Ending::Signaled(libc::SIGKILL)));
        assert_eq!(
            t.list(ListKind::All)[1],
            format!("{b} sleeper killed by SIGKILL")
        );
        assert!(t.list(ListKind::Running).is_empty());
        assert!(t.end_all().is_empty());
    }

    fn is_stamp(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 19
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn close_by_pid_and_name() {
        let f = fixture();
        script(&f.dir, "sleeper", "sleep 30");
        let mut t = ProcTable::default();
        let s1 = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        let s2 = run(&mut t, &f.dir, "sleeper", &["x"]).unwrap();
        let s3 = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        let s4 = run(&mut t, &f.dir, "sleeper", &[]).unwrap();

        // By name: the oldest running one only.
        assert_eq!(t.close("sleeper", false).unwrap(), 1);
        assert_eq!(reap(s1), Ending::Signaled(libc::SIGTERM));
        assert!(t.reaped(s1, Ending::Signaled(libc::SIGTERM)));
        assert!(still_alive(s2) && still_alive(s3) && still_alive(s4));

        // By pid.
        assert_eq!(t.close(&s3.to_string(), false).unwrap(), 1);
        assert_eq!(reap(s3), Ending::Signaled(libc::SIGTERM));
        assert!(t.reaped(s3, Ending::Signaled(libc::SIGTERM)));
        assert!(still_alive(s2) && still_alive(s4));

        // Ended, unknown, foreign.
        for target in [s1.to_string(), "nothing".to_string(), "1".to_string()] {
            match t.close(&target, false) {
                Err(ProcError::NoSuchProcess(p)) => assert_eq!(p, target),
                other => panic!("{target}: {other:?}"),
            }
        }

        // By name, all of them.
        assert_eq!(t.close("sleeper", true).unwrap(), 2);
        for pid in [s2, s4] {
            assert_eq!(reap(pid), Ending::Signaled(libc::SIGTERM));
            assert!(t.reaped(pid, Ending::Signaled(libc::SIGTERM)));
        }
        assert!(matches!(
            t.close("sleeper", true),
            Err(ProcError::NoSuchProcess(_))
        ));
        assert_eq!(t.running().count(), 0);
        assert_eq!(t.list(ListKind::All).len(), 4);
    }

    /// CLOSE and end_all signal the whole group: a grandchild dies with the program.
    #[test]
    fn the_whole_group_is_signalled() {
        let f = fixture();
        let pidfile = f.root.join("grandchild");
        script(
            &f.dir,
            "parent",
            "sleep 30 &\necho $! > \"$1.tmp\"\nmv \"$1.tmp\" \"$1\"\nwait",
        );
        for close in [true, false] {
            let _ = std::fs::remove_file(&pidfile);
            let mut t = ProcTable::default();
            let pid = run(&mut t, &f.dir, "parent", &[pidfile.to_str().unwrap()]).unwrap();
            let grandchild: i32 = wait_for_file(&pidfile).trim().parse().unwrap();
            let want = if close {
                assert_eq!(t.close("parent", false).unwrap(), 1);
                Ending::Signaled(libc::SIGTERM)
            } else {
                assert_eq!(t.end_all(), vec![pid]);
                Ending::Signaled(libc::SIGKILL)
            };
            assert_eq!(reap(pid), want);
            assert!(t.reaped(pid, want));
            // The grandchild is reparented and reaped by init (or a subreaper).
            let deadline = Instant::now() + Duration::from_secs(5);
            while signal::kill(Pid::from_raw(grandchild), None).is_ok() && !is_zombie(grandchild) {
                assert!(
                    Instant::now() < deadline,
                    "grandchild {grandchild} survived"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// stdio is /dev/null, cwd is DIR, args arrive, no descriptor leaks, and the mask the worker
    /// blocks for its signalfd is not inherited: CLOSE's SIGTERM works.
    #[test]
    fn the_child_starts_clean() {
        let f = fixture();
        let out = f.root.join("probe.out");
        script(
            &f.dir,
            "probe",
            "out=$1; leak=$2; shift 2\n\
             sig=\n\
             while read -r k v; do\n\
               case $k in SigBlk:|SigIgn:) sig=\"$sig$k $v \";; esac\n\
             done < /proc/$$/status\n\
             fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2)\n\
             if [ -e /proc/$$/fd/$leak ]; then leaked=leaked; else leaked=no-leak; fi\n\
             {\n\
               echo \"$fds\"\n\
               pwd\n\
               echo \"$@\"\n\
               echo $leaked\n\
               echo \"$sig\"\n\
             } > \"$out.tmp\"\n\
             mv \"$out.tmp\" \"$out\"\n\
             echo noise; echo noise >&2\n\
             sleep 30",
        );
        // A descriptor without close-on-exec, an ignored signal, and the signals a worker
        // blocks for its signalfd.
        // SAFETY: dup of a valid descriptor; closed below.
        let leak = unsafe { libc::dup(2) };
        assert!(leak > 2);
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGTERM);
        blocked.add(Signal::SIGINT);
        let mut old = SigSet::empty();
        signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old)).unwrap();
        // SAFETY: SIG_IGN installs no handler; restored below (no other test uses SIGHUP).
        let hup = unsafe { signal::signal(Signal::SIGHUP, signal::SigHandler::SigIgn) }.unwrap();

        let mut t = ProcTable::default();
        let ran = run(
            &mut t,
            &f.dir,
            "probe",
            &[out.to_str().unwrap(), &leak.to_string(), "a b", "c"],
        );
        signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
        // SAFETY: the disposition saved above.
        unsafe { signal::signal(Signal::SIGHUP, hup) }.unwrap();
        // SAFETY: our own descriptor from dup above.
        unsafe { libc::close(leak) };
        let pid = ran.unwrap();

        let text = wait_for_file(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            ["/dev/null", "/dev/null", "/dev/null"],
            "{text}"
        );
        assert_eq!(lines[3], f.dir.to_str().unwrap());
        assert_eq!(lines[4], "a b c");
        assert_eq!(lines[5], "no-leak");
        // Read by the shell's builtin `read` before it forked anything (dash blocks every
        // signal while it waits for a child).
        let sig: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(sig[..2], ["SigBlk:", "0000000000000000"], "{text}");
        assert_eq!(sig[2], "SigIgn:", "{text}");
        let ignored = sig[3];
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        // None ignored, whatever this process ignores (SIGXFSZ above all, which cserverd
        // ignores so that a log at its size limit refuses requests instead of killing).
        assert_eq!(ignored, 0, "signals ignored: {text}");
        assert_eq!(t.close(&pid.to_string(), false).unwrap(), 1);
        assert_eq!(reap(pid), Ending::Signaled(libc::SIGTERM));
        assert!(t.reaped(pid, Ending::Signaled(libc::SIGTERM)));
    }

    #[test]
    fn exec_failure_is_an_error() {
        let f = fixture();
        write(
            &f.dir.join("bad-interp"),
            "#!/nonexistent/interpreter\n",
            0o755,
        );
        write(&f.dir.join("garbage"), "\x01\x02garbage\n", 0o755);
        write(&f.dir.join("empty"), "", 0o755);
        let mut t = ProcTable::default();
        for program in ["bad-interp", "garbage", "empty"] {
            match run(&mut t, &f.dir, program, &[]) {
                Err(ProcError::Spawn(e)) => {
                    let want = if program == "bad-interp" {
                        libc::ENOENT
                    } else {
                        libc::ENOEXEC
                    };
                    assert_eq!(e.raw_os_error(), Some(want), "{program}: {e}");
                }
                other => panic!("{program}: {other:?}"),
            }
        }
        assert!(t.list(ListKind::All).is_empty());
        let msg = run(&mut t, &f.dir, "bad-interp", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("cannot start the program: "), "{msg}");
    }

    #[test]
    fn at_most_32_running() {
        let f = fixture();
        script(&f.dir, "sleeper", "sleep 30");
        let mut t = ProcTable::default();
        let pids: Vec<i32> = (0..MAX_RUNNING)
            .map(|_| run(&mut t, &f.dir, "sleeper", &[]).unwrap())
            .collect();
        assert!(matches!(
            run(&mut t, &f.dir, "sleeper", &[]),
            Err(ProcError::TooMany)
        ));
        assert_eq!(t.running().count(), MAX_RUNNING);
        // One ends: one more may start.
        assert_eq!(t.close(&pids[0].to_string(), false).unwrap(), 1);
        assert!(matches!(
            run(&mut t, &f.dir, "sleeper", &[]),
            Err(ProcError::TooMany)
        ));
        let ending = reap(pids[0]);
        assert!(t.reaped(pids[0], ending));
        let last = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        let mut killed = t.end_all();
        killed.sort_unstable();
        let mut want: Vec<i32> = pids[1..].iter().copied().chain([last]).collect();
        want.sort_unstable();
        assert_eq!(killed, want);
        for pid in want {
            assert_eq!(reap(pid), Ending::Signaled(libc::SIGKILL));
            assert!(t.reaped(pid, Ending::Signaled(libc::SIGKILL)));
        }
    }

    #[test]
    fn oldest_ended_entries_are_forgotten() {
        let f = fixture();
        script(&f.dir, "sleeper", "sleep 30");
        script(&f.dir, "quick", "exit 0");
        let mut t = ProcTable::default();
        let quick: Vec<i32> = (0..3)
            .map(|_| {
                let pid = run(&mut t, &f.dir, "quick", &[]).unwrap();
                assert!(t.reaped(pid, reap(pid)));
                pid
            })
            .collect();
        let sleeper = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        for _ in 0..MAX_ENTRIES {
            let pid = run(&mut t, &f.dir, "quick", &[]).unwrap();
            assert!(t.reaped(pid, reap(pid)));
        }
        let all = t.list(ListKind::All);
        assert_eq!(all.len(), MAX_ENTRIES);
        // The running one (older than most) stays; the oldest ended ones went first.
        assert!(all.contains(&format!("{sleeper} sleeper running")));
        for pid in quick {
            assert!(!all.iter().any(|l| l.starts_with(&format!("{pid} "))));
        }
        assert_eq!(all[0], format!("{sleeper} sleeper running"));
        assert_eq!(t.end_all(), vec![sleeper]);
        assert!(t.reaped(sleeper, reap(sleeper)));
    }

    #[test]
    fn dropping_the_table_kills() {
        let f = fixture();
        script(&f.dir, "sleeper", "sleep 30");
        let mut t = ProcTable::default();
        let pid = run(&mut t, &f.dir, "sleeper", &[]).unwrap();
        drop(t);
        assert_eq!(reap(pid), Ending::Signaled(libc::SIGKILL));
    }

    /// PR_SET_PDEATHSIG: when the spawning thread (the worker, single-threaded) dies, so does the
    /// program.
    #[test]
    fn the_program_dies_with_its_worker() {
        let f = fixture();
        script(&f.dir, "sleeper", "sleep 30");
        let dir = f.dir.clone();
        let pid = std::thread::spawn(move || {
            let mut t = ProcTable::default();
            let pid = run(&mut t, &dir, "sleeper", &[]).unwrap();
            std::mem::forget(t); // no Drop: only the kernel may kill it
            pid
        })
        .join()
        .unwrap();
        assert_eq!(reap(pid), Ending::Signaled(libc::SIGKILL));
    }

    #[test]
    fn texts() {
        assert_eq!(Ending::Exited(0).to_string(), "exited 0");
        assert_eq!(
            Ending::Signaled(libc::SIGTERM).to_string(),
            "killed by SIGTERM"
        );
        assert_eq!(Ending::Signaled(40).to_string(), "killed by signal 40");
        assert_eq!(
            ProcError::NoSuchProcess("a\rb".into()).to_string(),
            "no running process a?b"
        );
        assert_eq!(
            ProcError::Outside("../x".into()).to_string(),
            "no program ../x in the allowed directory"
        );
        assert_eq!(
            ProcError::TooMany.to_string(),
            "too many running processes (at most 32 per session)"
        );
    }
}
