//! `cserverctl` at the trust boundary (issue 11): what a local user who is not trusted can put
//! where it looks. A FIFO or a forged sparse scoreboard must be an error within a second, a
//! symlink or another user's copy is refused, and no stop ever reaches a process that merely
//! calls itself `cserverd`; the real master is still found, also after a binary upgrade.
//!
//! Every cserverctl run here must finish within a second: it is killed and the test fails if it
//! does not.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use cserver::scoreboard::{MAGIC, VERSION};

/// How long a refusal may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Offsets in the scoreboard header (`src/scoreboard.rs`, native endian): the slot count, the
/// master's pid, the server's user.
const CAPACITY_AT: usize = 20;
const MASTER_PID_AT: usize = 24;
const SERVER_UID_AT: usize = 56;

/// Runs `cserverctl args`, killing it and failing the test if it runs for more than a second.
fn ctl_quick(args: &[&OsStr]) -> Output {
    let mut child = Command::new(CSERVERCTL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cserverctl");
    let deadline = Instant::now() + REFUSAL_TIME;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cserverctl {args:?} still running after {REFUSAL_TIME:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("cserverctl output")
}

/// `cserverctl <command...> <option> <path>`, within a second.
fn ctl_at(command: &[&str], option: &str, path: &Path) -> Output {
    let mut args: Vec<&OsStr> = command.iter().map(OsStr::new).collect();
    args.push(OsStr::new(option));
    args.push(path.as_os_str());
    ctl_quick(&args)
}

/// A copy of `board` at `to` (same owner and mode 0600) with `patch` applied to its bytes.
fn patched_copy(board: &Path, to: &Path, patch: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(board).expect("read the scoreboard");
    patch(&mut bytes);
    fs::write(to, &bytes).expect("write the copy");
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A pid file naming `pid`, mode 0644 whatever the umask (group- or world-writable ones are
/// refused).
fn write_pid_file(path: &Path, pid: i32) {
    fs::write(path, format!("{pid}\n")).expect("write pid file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// When `pid` started, in clock ticks after boot: field 22 of `/proc/PID/stat`, counted after
/// the comm's last `)`.
fn start_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, fields) = stat.rsplit_once(')').expect("stat");
    fields
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|t| t.parse().ok())
        .expect("start time")
}

/// A process the test controls, killed and reaped when dropped.
struct Decoy(Child);

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Decoy {
    /// `sleep 60` copied to `dir/cserverd` and run from there: its comm is `cserverd`. Started
    /// in another clock tick than `master` (a process started in the same 10 ms has the same
    /// start time; a pid and a start time name one process because a pid is not reused that
    /// fast, but a decoy can be started beside the master that fast).
    fn start(dir: &Path, master: i32) -> Decoy {
        let exe = dir.join("cserverd");
        fs::copy("/bin/sleep", &exe).expect("copy /bin/sleep");
        let mut decoy = None;
        wait_until(
            "a decoy started in another tick than the master",
            PATIENCE,
            || {
                let d = Decoy(
                    Command::new(&exe)
                        .arg("60")
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("start the decoy"),
                );
                let other_tick = start_ticks(d.pid()) != start_ticks(master);
                decoy = Some(d);
                other_tick
            },
        );
        let decoy = decoy.expect("a decoy");
        // spawn() returns after the exec.
        let comm = fs::read_to_string(format!("/proc/{}/comm", decoy.pid())).expect("comm");
        assert_eq!(comm, "cserverd\n");
        decoy
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Still running and not stopped (a TTIN or TTOU would stop it, a TERM end it).
    fn assert_untouched(&mut self) {
        assert!(
            self.0.try_wait().expect("try_wait").is_none(),
            "the decoy was killed"
        );
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let state = stat.rsplit_once(") ").expect("stat").1.chars().next();
        assert_eq!(state, Some('S'), "{stat}");
    }
}

#[test]
fn a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    assert_unknown(&ctl_at(&["status"], "--stats-file", &fifo), "a FIFO");
    assert_unknown(
        &ctl_at(&["status", "--json"], "--stats-file", &fifo),
        "a FIFO",
    );
    assert_refused(&ctl_at(&["stop"], "--stats-file", &fifo), "a FIFO");
    assert_refused(&ctl_at(&["stop"], "--pid-file", &fifo), "a FIFO");
}

#[test]
fn a_forged_sparse_scoreboard_of_sixteen_million_slots_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let forged = dir.path().join("forged");
    // A header as a cserverd writes it, declaring 16,000,000 slots of 256 bytes, in a sparse
    // file long enough to hold them (about 4 GB, no block of it written).
    let mut header = vec![0u8; 128];
    header[..8].copy_from_slice(&MAGIC);
    put_u32(&mut header, 8, VERSION);
    put_u32(&mut header, 12, 128);
    put_u32(&mut header, 16, 256);
    put_u32(&mut header, CAPACITY_AT, 16_000_000);
    put_u32(&mut header, SERVER_UID_AT, nix::unistd::getuid().as_raw());
    fs::write(&forged, &header).expect("write the header");
    fs::set_permissions(&forged, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::File::options()
        .write(true)
        .open(&forged)
        .and_then(|f| f.set_len(128 + 16_000_000 * 256))
        .expect("make it sparse");
    for command in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--prometheus"],
    ] {
        assert_unknown(
            &ctl_at(command, "--stats-file", &forged),
            "declares 16000000 slots",
        );
    }
    assert_refused(
        &ctl_at(&["stop"], "--stats-file", &forged),
        "declares 16000000 slots",
    );
}

#[test]
fn a_symlink_at_the_scoreboard_path_is_refused() {
    let server = Server::start(&["--workers", "1"]);
    let link = server.dir.path().join("link");
    std::os::unix::fs::symlink(&server.board, &link).expect("symlink");
    assert_unknown(
        &ctl_at(&["status"], "--stats-file", &link),
        "a symbolic link (not followed)",
    );
    assert_refused(
        &ctl_at(&["stop"], "--stats-file", &link),
        "a symbolic link (not followed)",
    );
    // The same for a pid file.
    let pid_link = server.dir.path().join("pid-link");
    std::os::unix::fs::symlink(&server.pid_file, &pid_link).expect("symlink");
    assert_refused(
        &ctl_at(&["stop"], "--pid-file", &pid_link),
        "a symbolic link (not followed)",
    );
    assert!(alive(server.pid().as_raw()));
    assert_eq!(server.status()["master_pid"], server.pid().as_raw());
}

#[test]
fn stop_never_signals_a_process_that_merely_calls_itself_cserverd() {
    let server = Server::start(&["--workers", "1"]);
    let dir = server.dir.path();
    let mut decoy = Decoy::start(dir, server.pid().as_raw());

    // A pid file naming the decoy: it was not started with --pid-file naming that file.
    let pid_file = dir.join("decoy.pid");
    write_pid_file(&pid_file, decoy.pid());
    for command in [&["stop"][..], &["quit"], &["reload"], &["workers", "+1"]] {
        assert_refused(
            &ctl_at(command, "--pid-file", &pid_file),
            "is not cserverd started with --pid-file",
        );
    }

    // The live server's scoreboard, copied with the decoy's pid as the master's: the start
    // time recorded is the real master's, not the decoy's.
    let board = dir.join("decoy-board");
    patched_copy(&server.board, &board, |b| {
        put_u32(b, MASTER_PID_AT, decoy.pid() as u32)
    });
    for command in [&["stop"][..], &["quit"], &["workers", "-1"]] {
        assert_refused(
            &ctl_at(command, "--stats-file", &board),
            "is not the master recorded there",
        );
    }

    // The real server's pid file with the decoy's pid: its scoreboard names another master.
    write_pid_file(&server.pid_file, decoy.pid());
    assert_refused(
        &ctl_at(&["stop"], "--pid-file", &server.pid_file),
        "is not cserverd started with --pid-file",
    );

    decoy.assert_untouched();
    assert!(alive(server.pid().as_raw()));
}

#[test]
fn a_scoreboard_of_another_user_is_refused() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: giving a file to another user needs root (CI runs as root)");
        return;
    }
    // The rule: a scoreboard is read only if root, the caller or the server's user its header
    // names owns it; and a file of the server's user names only that user's processes.
    let server = Server::start(&["--workers", "1"]);
    let dir = server.dir.path();
    let nobody = 65534;

    // A copy of root's live board given to another user, readable by all.
    let theirs = dir.join("theirs");
    patched_copy(&server.board, &theirs, |_| {});
    std::os::unix::fs::chown(&theirs, Some(nobody), Some(nobody)).expect("chown");
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_unknown(
        &ctl_at(&["status"], "--stats-file", &theirs),
        "owned by uid 65534, not by root, you (uid 0) or the server's user (uid 0)",
    );
    assert_refused(
        &ctl_at(&["stop"], "--stats-file", &theirs),
        "owned by uid 65534",
    );

    // The same copy claiming that user as the server's: it may be read, but names the root
    // master, which a file of uid 65534 may not.
    let claims = dir.join("claims");
    patched_copy(&server.board, &claims, |b| {
        put_u32(b, SERVER_UID_AT, nobody)
    });
    std::os::unix::fs::chown(&claims, Some(nobody), Some(nobody)).expect("chown");
    let out = ctl_at(&["status", "--json"], "--stats-file", &claims);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_refused(
        &ctl_at(&["stop"], "--stats-file", &claims),
        "which may name only its own processes",
    );

    // The server's own pid file given to that user: refused; given back, believed again.
    std::os::unix::fs::chown(&server.pid_file, Some(nobody), Some(nobody)).expect("chown");
    assert_refused(
        &ctl_at(&["stop"], "--pid-file", &server.pid_file),
        "owned by uid 65534, not by root or you (uid 0)",
    );
    std::os::unix::fs::chown(&server.pid_file, Some(0), Some(0)).expect("chown");
    let out = ctl_at(&["reopen"], "--pid-file", &server.pid_file);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert!(alive(server.pid().as_raw()));
    assert_eq!(server.status()["master_pid"], server.pid().as_raw());
}

#[test]
fn the_real_master_is_found_before_and_after_an_upgrade() {
    let mut server = Server::start(&["--workers", "1"]);
    let old = server.pid().as_raw();
    let out = ctl_at(&["status"], "--stats-file", &server.board);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("cserverd master {old} ")),
        "{}",
        text(&out.stdout)
    );
    let out = ctl_at(&["reopen"], "--pid-file", &server.pid_file);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // USR2: the new master records itself (pid and start time) in the scoreboard and the pid
    // file, and the old one exits.
    let out = ctl_at(&["upgrade"], "--stats-file", &server.board);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut new = 0;
    wait_until("the new master to take over", PATIENCE, || {
        new = server.status()["master_pid"].as_i64().unwrap_or(0) as i32;
        new != old && !alive(old)
    });
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let out = ctl_at(&["reopen"], "--pid-file", &server.pid_file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("sent SIGUSR1 (reopen log) to cserverd master {new}\n")
    );
    let out = ctl_at(&["stop"], "--stats-file", &server.board);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the new master to exit", PATIENCE, || !alive(new));
}
