//! `cserverctl` against the real `cserverd`: `status --prometheus`, the signal commands through a
//! pid file and through the scoreboard, and the refusals (a pid file naming a process that is not
//! cserverd, a missing pid file or scoreboard).
//!
//! Self-contained on purpose (no `tests/common`): every server runs on port 0 in its own temp dir
//! and process group; the group is SIGKILLed when the test ends, and the server log is printed if
//! the test failed. Every wait polls every 10 ms up to 20 s.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const CSERVERD: &str = env!("CARGO_BIN_EXE_cserverd");
const CSERVERCTL: &str = env!("CARGO_BIN_EXE_cserverctl");

/// The longest any single wait may take.
const PATIENCE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every 10 ms until it holds; panics naming `what` after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

/// Waits for `child` to exit (polling, with the deadline) and returns its status.
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let mut status = None;
    wait_until(what, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

/// Runs `cserverctl` with `args`.
fn ctl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(CSERVERCTL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cserverctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a refusal: exit status 1, nothing on stdout, one line on stderr containing `want`.
fn assert_refused(out: &Output, want: &str) {
    assert_fails(out, 1, want);
}

/// Asserts `status`'s refusal: exit status 4 (the LSB "unknown"), as [`assert_refused`].
fn assert_unknown(out: &Output, want: &str) {
    assert_fails(out, 4, want);
}

/// Asserts a failure: exit status `code`, nothing on stdout, one line on stderr containing
/// `want`.
fn assert_fails(out: &Output, code: i32, want: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stdout.is_empty(), "stdout {stdout:?}");
    assert!(
        stderr.starts_with("cserverctl: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "not one error line: {stderr:?}"
    );
    assert!(stderr.contains(want), "{stderr:?} lacks {want:?}");
}

/// A `cserverd --port 0 --workers 2` in a temp dir and its own process group.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    log: PathBuf,
    board: PathBuf,
    pid_file: PathBuf,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let board = dir.path().join("sb");
        let pid_file = dir.path().join("pid");
        let mut child = Command::new(CSERVERD)
            .args(["--port", "0", "--workers", "2"])
            .arg("--log")
            .arg(&log)
            .arg("--stats-file")
            .arg(&board)
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn cserverd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the first line for us and keeps draining the pipe afterwards.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // From here on the guard cleans up, even if the start fails.
        let mut server = Server {
            child,
            _dir: dir,
            addr: "127.0.0.1:0".parse().expect("addr"),
            log,
            board,
            pid_file,
        };
        let first = rx
            .recv_timeout(PATIENCE)
            .expect("cserverd printed no `listening on` line");
        server.addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        wait_until("2 ready workers in the scoreboard", || {
            server.ready_workers() == Some(2)
        });
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `cserverctl status --json`, or None while it fails.
    fn status_json(&self) -> Option<Value> {
        let out = ctl([
            OsStr::new("status"),
            OsStr::new("--json"),
            OsStr::new("--stats-file"),
            self.board.as_os_str(),
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn ready_workers(&self) -> Option<usize> {
        let status = self.status_json()?;
        let slots = status["slots"].as_array()?;
        Some(slots.iter().filter(|s| s["state"] == "ready").count())
    }

    /// `cserverctl status --prometheus` (asserting success).
    fn prometheus(&self) -> String {
        let out = ctl([
            OsStr::new("status"),
            OsStr::new("--prometheus"),
            OsStr::new("--stats-file"),
            self.board.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `cserverctl <command> --pid-file <ours> <extra>`.
    fn ctl_pid_file(&self, command: &str, extra: &[&str]) -> Output {
        let mut args = vec![OsStr::new(command), OsStr::new("--pid-file")];
        args.push(self.pid_file.as_os_str());
        args.extend(extra.iter().map(OsStr::new));
        ctl(args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- server log {} ---\n{}--- end of log ---",
                self.log.display(),
                self.log_text()
            );
        }
        // The whole group: the master and any worker it left behind.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A child the test controls (not cserverd), killed when dropped.
struct Bystander(Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the unlabelled sample `name` in a Prometheus exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every labelled sample of `name`.
fn labelled_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .map(|l| {
            let (_, v) = l.rsplit_once("} ").expect("labels close");
            v.parse::<f64>().expect("value")
        })
        .sum()
}

/// Connects, logs in as `a`, sends `MSG x`, and checks the replies.
fn one_request(addr: SocketAddr) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    let mut reply = |reader: &mut BufReader<TcpStream>| {
        line.clear();
        reader.read_line(&mut line).expect("read reply");
        line.trim_end().to_string()
    };
    let greeting = reply(&mut reader);
    assert!(greeting.starts_with("OK cserverd"), "{greeting:?}");
    writer.write_all(b"USER a\n").expect("send USER");
    assert_eq!(reply(&mut reader), "OK hello a");
    writer.write_all(b"MSG x\n").expect("send MSG");
    let ok = reply(&mut reader);
    assert!(ok.starts_with("OK "), "{ok:?}");
    writer.write_all(b"QUIT\n").expect("send QUIT");
    assert_eq!(reply(&mut reader), "OK bye");
}

#[test]
fn prometheus_counts_a_request_like_json() {
    let server = Server::start();
    let before = server.prometheus();
    for name in [
        "cserverd_requests_total",
        "cserverd_accepted_connections_total",
        "cserverd_open_connections",
        "cserverd_received_bytes_total",
        "cserverd_sent_bytes_total",
        "cserverd_errors_total",
        "cserverd_restarts_total",
        "cserverd_workers",
        "cserverd_up",
        "cserverd_uptime_seconds",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "no {name} in\n{before}"
        );
    }
    assert_eq!(
        sample(&before, r#"cserverd_requests_total{protocol="cserver"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&before, "cserverd_up"), Some(1.0));
    let pid = server.pid();
    assert!(
        before.contains(&format!("cserverd_info{{master_pid=\"{pid}\",")),
        "{before}"
    );
    assert_eq!(
        before
            .lines()
            .filter(|l| l.starts_with("cserverd_worker_requests_total{slot=\"")
                && l.contains("state=\"ready\""))
            .count(),
        2,
        "{before}"
    );

    one_request(server.addr);

    let mut after = String::new();
    wait_until("the request in cserverd_requests_total", || {
        after = server.prometheus();
        sample(&after, r#"cserverd_requests_total{protocol="cserver"}"#) == Some(1.0)
    });
    assert_eq!(labelled_sum(&after, "cserverd_worker_requests_total"), 1.0);
    let json = server.status_json().expect("status --json");
    assert_eq!(json["total"]["requests"], 1, "{json}");
    assert_eq!(
        sample(&after, "cserverd_accepted_connections_total"),
        json["total"]["accepted"].as_f64(),
        "{after}"
    );
}

/// Ready workers' pids, from `status --json`.
fn ready_pids(server: &Server) -> Vec<i64> {
    let status = server.status_json().expect("status --json");
    status["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .filter(|s| s["state"] == "ready")
        .map(|s| s["pid"].as_i64().expect("pid"))
        .collect()
}

/// Renames the log to `rotated` (like logrotate), runs `reopen` (the command's output is
/// returned) and waits until the master and every worker wrote their `reopened log` record into
/// the new file at the original path, and none into the renamed one.
fn rotate_and_reopen(server: &Server, rotated: &Path, reopen: impl FnOnce() -> Output) -> Output {
    let workers = ready_pids(server);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let earlier = server.log_text().matches("reopened log").count();
    fs::rename(&server.log, rotated).expect("rename the log");
    let out = reopen();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records: Vec<String> = workers
        .iter()
        .map(|p| format!(" -- worker {p} reopened log\n"))
        .chain([" -- reopened log on SIGUSR1\n".to_string()])
        .collect();
    wait_until(
        "the master and every worker to reopen into the new file",
        || {
            let new = server.log_text();
            records.iter().all(|r| new.contains(r.as_str()))
        },
    );
    let old = fs::read_to_string(rotated).expect("the rotated log");
    assert_eq!(
        old.matches("reopened log").count(),
        earlier,
        "a `reopened log` record went to the renamed file:\n{old}"
    );
    out
}

#[test]
fn reopen_by_pid_file_and_by_scoreboard() {
    let server = Server::start();
    let pid = server.pid();
    let dir = server.log.parent().expect("log dir");
    let (first, second) = (dir.join("log.1"), dir.join("log.2"));

    let out = rotate_and_reopen(&server, &first, || server.ctl_pid_file("reopen", &[]));
    assert_eq!(
        text(&out.stdout),
        format!("sent SIGUSR1 (reopen log) to cserverd master {pid}\n")
    );
    let first_frozen = fs::read(&first).expect("log.1");
    one_request(server.addr);

    // Without --pid-file: the master's pid comes from the scoreboard header.
    let out = rotate_and_reopen(&server, &second, || {
        ctl([
            OsStr::new("reopen"),
            OsStr::new("--stats-file"),
            server.board.as_os_str(),
        ])
    });
    assert!(text(&out.stdout).contains(&format!("master {pid}")));
    let second_frozen = fs::read(&second).expect("log.2");

    // After the reopen everyone writes the new file, never a renamed one: a worker its request's
    // records, the master its next periodic `total requests` (every 2 s by default).
    let reopened = server.log_text().len();
    one_request(server.addr);
    let unchanged = |path: &Path, frozen: &[u8]| fs::read(path).expect("renamed log") == frozen;
    wait_until(
        "a request's records and the master's next total, in one file or another",
        || {
            let new = server.log_text();
            let after = new.get(reopened..).unwrap_or("");
            !unchanged(&first, &first_frozen)
                || !unchanged(&second, &second_frozen)
                || (after.contains(" -- completed req \"x\" on ")
                    && after.contains(" -- total requests 2\n"))
        },
    );
    assert!(
        unchanged(&first, &first_frozen),
        "a process wrote log.1 after the first reopen"
    );
    assert!(
        unchanged(&second, &second_frozen),
        "a process wrote log.2 after the second reopen"
    );
}

#[test]
fn stop_waits_for_a_clean_exit() {
    let mut server = Server::start();
    let pid = server.pid();
    let out = server.ctl_pid_file("stop", &["--wait", "20"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout {stdout:?} stderr {:?}",
        text(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("sent SIGTERM (graceful stop) to cserverd master {pid}").as_str())
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with(&format!("cserverd master {pid} exited"))),
        "{stdout:?}"
    );
    let status = wait_exit(&mut server.child, "cserverd to exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!server.pid_file.exists(), "pid file left behind");
    // A second stop finds no pid file.
    assert_refused(&server.ctl_pid_file("stop", &[]), "no pid file");
}

#[test]
fn quit_waits_for_the_exit() {
    let mut server = Server::start();
    let out = server.ctl_pid_file("quit", &["--wait", "20"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("sent SIGQUIT (immediate stop)"));
    let status = wait_exit(&mut server.child, "cserverd to exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_pid_file_naming_another_program_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sleeper = Bystander(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = sleeper.0.id();
    let pid_file = dir.path().join("pid");
    fs::write(&pid_file, format!("{pid}\n")).expect("write pid file");
    for command in [
        &["stop"][..],
        &["stop", "--wait", "1"],
        &["quit"],
        &["reload"],
        &["reopen"],
        &["upgrade"],
        &["workers", "+1"],
        &["workers", "-1"],
    ] {
        let mut args: Vec<&OsStr> = command.iter().map(OsStr::new).collect();
        args.push(OsStr::new("--pid-file"));
        args.push(pid_file.as_os_str());
        let out = ctl(args);
        assert_refused(&out, "not cserverd");
        assert!(text(&out.stderr).contains(&pid.to_string()));
    }
    // Not signalled: still running, not stopped (SIGTTIN/SIGTTOU would stop it).
    assert!(sleeper.0.try_wait().expect("try_wait").is_none());
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let state = stat.rsplit_once(") ").expect("stat").1.chars().next();
    assert_eq!(state, Some('S'), "{stat}");

    for bad in ["1\n", "0\n", "-1\n"] {
        fs::write(&pid_file, bad).expect("write pid file");
        let out = ctl([
            OsStr::new("stop"),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(text(&out.stdout).is_empty());
    }
}

#[test]
fn missing_or_stale_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing: &Path = &dir.path().join("missing");
    let m = missing.as_os_str();
    let s = OsStr::new;

    assert_refused(&ctl([s("stop"), s("--pid-file"), m]), "no pid file at");
    assert_refused(&ctl([s("reopen"), s("--pid-file"), m]), "no pid file at");
    assert_refused(
        &ctl([s("reload"), s("--stats-file"), m]),
        "no scoreboard at",
    );
    assert_unknown(
        &ctl([s("status"), s("--stats-file"), m]),
        "no scoreboard at",
    );
    assert_unknown(
        &ctl([s("status"), s("--prometheus"), s("--stats-file"), m]),
        "no scoreboard at",
    );

    let garbage = dir.path().join("garbage");
    fs::write(&garbage, "hello\n").expect("write");
    let g = garbage.as_os_str();
    assert_refused(&ctl([s("stop"), s("--pid-file"), g]), "does not hold a pid");
    assert_refused(
        &ctl([s("workers"), s("+1"), s("--stats-file"), g]),
        "not a cserverd scoreboard",
    );

    // The pid of a process that has exited and been reaped.
    let mut done = Command::new("true").spawn().expect("spawn true");
    let gone = done.id();
    done.wait().expect("wait true");
    let stale = dir.path().join("stale");
    fs::write(&stale, format!("{gone}\n")).expect("write");
    assert_refused(
        &ctl([s("stop"), s("--pid-file"), stale.as_os_str()]),
        "no process",
    );
}
