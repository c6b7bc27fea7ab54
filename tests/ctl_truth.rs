//! `cserverctl` tells the truth about the master (issue 12): `status` says `running` only while
//! the master the scoreboard records (pid and start time) runs, with the LSB exit statuses an
//! init script's `status` uses (0 running, 3 not running, 4 unknown); `--pid-file` finds it too;
//! `workers +N/-N` reports the pool size the header shows, not the signals it sent.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use nix::sys::signal::Signal;
use serde_json::Value;

/// Where the header keeps the master's start time (clock ticks after boot, a `u64`).
const MASTER_START_AT: usize = 48;

/// Runs `cserverctl args`.
fn ctl(args: &[&str]) -> Output {
    Command::new(CSERVERCTL)
        .args(args)
        .output()
        .expect("run cserverctl")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// Asserts exit status `code`, showing both outputs otherwise; returns stdout.
fn expect_code(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `status` in all three forms for `--stats-file board`: each exits 3 and says why.
fn assert_not_running(board: &Path, why: &str) {
    let board = path(board);
    let table = expect_code(&ctl(&["status", "--stats-file", board]), 3);
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!("not running ({why})")),
        "first line {first:?}"
    );
    assert!(!first.contains(" up "), "{first:?}");
    let prom = expect_code(&ctl(&["status", "--prometheus", "--stats-file", board]), 3);
    assert!(prom.lines().any(|l| l == "cserverd_up 0"), "{prom}");
    assert!(!prom.lines().any(|l| l == "cserverd_up 1"), "{prom}");
    let json: Value = serde_json::from_str(&expect_code(
        &ctl(&["status", "--json", "--stats-file", board]),
        3,
    ))
    .expect("JSON");
    assert_eq!(json["running"], false, "{json}");
    assert_eq!(json["status"], format!("not running ({why})"), "{json}");
}

#[test]
fn a_sigkilled_masters_scoreboard_is_not_running() {
    let mut server = Server::start(&["--workers", "2"]);
    let pid = server.pid().as_raw();
    let json: Value = serde_json::from_str(&expect_code(
        &ctl(&["status", "--json", "--stats-file", path(&server.board)]),
        0,
    ))
    .expect("JSON");
    assert_eq!(json["running"], true, "{json}");
    assert_eq!(json["status"], "running", "{json}");

    server.signal(Signal::SIGKILL);
    // Killed, not yet reaped (a zombie): already not running. The scoreboard stays behind.
    wait_until("the master to die", PATIENCE, || !alive(pid));
    assert!(server.board.exists());
    let why = format!("stale scoreboard: master {pid} exited");
    assert_not_running(&server.board, &why);
    // Its pid file names a process that is gone as well.
    let out = ctl(&["status", "--pid-file", path(&server.pid_file)]);
    let first = expect_code(&out, 3);
    assert!(
        first.starts_with("cserverd not running (stale pid file"),
        "{first:?}"
    );
    // Reaped: no such process at all.
    server.wait_exit(PATIENCE);
    assert_not_running(&server.board, &why);
    // Signals are refused, as an error (exit 1).
    let out = ctl(&["reload", "--stats-file", path(&server.board)]);
    expect_code(&out, 1);
    assert!(text(&out.stderr).contains(&format!("no process {pid}")));
}

#[test]
fn a_scoreboard_whose_pid_is_another_process_is_not_running() {
    let server = Server::start(&["--workers", "1"]);
    let pid = server.pid().as_raw();
    // The live master's scoreboard with another start time: as if the master had died and its
    // pid been given to a process started later.
    let copy = server.dir.path().join("reused");
    let mut bytes = fs::read(&server.board).expect("read the scoreboard");
    let at = MASTER_START_AT..MASTER_START_AT + 8;
    let start = u64::from_ne_bytes(bytes[at.clone()].try_into().expect("8 bytes"));
    assert_ne!(start, 0);
    bytes[at].copy_from_slice(&(start + 1).to_ne_bytes());
    fs::write(&copy, &bytes).expect("write the copy");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_not_running(
        &copy,
        &format!("stale scoreboard: master {pid} is another process now"),
    );
    // The real one is running.
    let out = expect_code(&ctl(&["status", "--stats-file", path(&server.board)]), 0);
    assert!(
        out.starts_with(&format!("cserverd master {pid} port ")),
        "{out}"
    );
}

#[test]
fn no_scoreboard_or_pid_file_is_unknown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    for extra in [&[][..], &["--json"], &["--prometheus"]] {
        for option in ["--stats-file", "--pid-file"] {
            let mut args = vec!["status", option, path(&missing)];
            args.extend(extra);
            let out = ctl(&args);
            expect_code(&out, 4);
            assert!(text(&out.stdout).is_empty());
            assert!(text(&out.stderr).starts_with("cserverctl: no "), "{out:?}");
        }
    }
}

#[test]
fn status_finds_a_live_master_by_its_pid_file() {
    let server = Server::start(&["--workers", "2"]);
    let pid = server.pid().as_raw();
    let pid_file = path(&server.pid_file);
    let out = expect_code(&ctl(&["status", "--pid-file", pid_file]), 0);
    assert!(
        out.starts_with(&format!(
            "cserverd master {pid} port {} running up ",
            server.port()
        )),
        "{out}"
    );
    let json: Value = serde_json::from_str(&expect_code(
        &ctl(&["status", "--json", "--pid-file", pid_file]),
        0,
    ))
    .expect("JSON");
    assert_eq!(json["running"], true, "{json}");
    assert_eq!(json["master_pid"], pid, "{json}");
    let prom = expect_code(&ctl(&["status", "--prometheus", "--pid-file", pid_file]), 0);
    assert!(prom.lines().any(|l| l == "cserverd_up 1"), "{prom}");
}

#[test]
fn workers_reports_the_pool_the_master_really_has() {
    let server = Server::start(&["--workers", "2", "--max-workers", "4"]);
    let board = path(&server.board);
    let out = ctl(&["workers", "+1", "--stats-file", board]);
    let stdout = expect_code(&out, 0);
    assert!(stdout.contains("workers: 2 -> 3 (asked +1)"), "{stdout}");

    // Past --max-workers: the pool stops at 4, and the command says so and fails.
    let out = ctl(&["workers", "+100", "--stats-file", board]);
    expect_code(&out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("workers: 3 -> 4 (asked +100; the master's --max-workers 4 stopped it)"),
        "{stderr}"
    );
    // Exactly as many TTINs as fit: the header records --max-workers.
    assert!(text(&out.stdout).contains("sent SIGTTIN x1 "), "{out:?}");
    assert_eq!(server.status()["workers"], 4);
    // At the cap: none is sent at all, and the log has no refusal to show for it.
    let out = ctl(&["workers", "+1", "--stats-file", board]);
    expect_code(&out, 1);
    assert!(!text(&out.stdout).contains("sent SIGTTIN"), "{out:?}");
    assert!(
        !server.log_text().contains("already 4 workers"),
        "{}",
        server.log_text()
    );
    server.wait_workers_ready(4);

    // Below one: the master keeps its last worker.
    let out = ctl(&["workers", "-10", "--pid-file", path(&server.pid_file)]);
    expect_code(&out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("workers: 4 -> 1 (asked -10; the master keeps at least one)"),
        "{stderr}"
    );
    assert_eq!(server.status()["workers"], 1);
}

/// Kills a server this test started itself, however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_servers_on_one_port_of_two_addresses_keep_two_scoreboards() {
    // The default scoreboard path (no --stats-file): named by address and port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let start = |host: &str| {
        let mut child = std::process::Command::new(CSERVERD)
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--log")
            .arg(dir.path().join(format!("{host}.log")))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("listening on "), "{line:?}");
        Reaped(child)
    };
    let mut a = start("127.0.0.1");
    let mut b = start("127.0.0.2");
    let status = |host: &str| {
        std::process::Command::new(CSERVERCTL)
            .args([
                "status",
                "--json",
                "--host",
                host,
                "--port",
                &port.to_string(),
            ])
            .output()
            .unwrap()
    };
    let (sa, sb) = (status("127.0.0.1"), status("127.0.0.2"));
    let master = |out: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["master_pid"].as_i64().unwrap() as u32
    };
    let (ma, mb) = (master(&sa), master(&sb));
    let (a_pid, b_pid) = (a.0.id(), b.0.id());
    // Each status names its own server; stopping one leaves the other's scoreboard alone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(b.0.wait().unwrap().success());
    let after = status("127.0.0.1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(a.0.wait().unwrap().success());
    assert_eq!((ma, mb), (a_pid, b_pid));
    assert_eq!(after.status.code(), Some(0), "{after:?}");
    assert_eq!(master(&after), a_pid);
}

#[test]
fn reload_reports_whether_the_master_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    fs::write(&users, "ari\n").unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(&["--workers", "1", "--users", path(&users)]);
    let board = path(&server.board);
    let done = expect_code(&ctl(&["reload", "--stats-file", board]), 0);
    assert!(done.contains("reloaded; replacing its workers"), "{done}");
    // A users file the master cannot use: the reload is refused and cserverctl says why.
    fs::write(&users, "ari\nnot a name!\n").unwrap();
    let out = ctl(&["reload", "--stats-file", board]);
    expect_code(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cserverd master {} refused the reload: SIGHUP: ",
            server.pid()
        )) && err.contains("bad user name"),
        "{err}"
    );
    // The same through the pid file.
    let out = ctl(&["reload", "--pid-file", path(&server.pid_file)]);
    expect_code(&out, 1);
    fs::write(&users, "ari\nbob\n").unwrap();
    let done = expect_code(&ctl(&["reload", "--pid-file", path(&server.pid_file)]), 0);
    assert!(done.contains("reloaded"), "{done}");
}
