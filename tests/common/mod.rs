//! Test support: start the real `cserverd` on port 0 in a temp dir, talk to it, run `cclient`
//! and `cserverctl`, parse the log, and wait with deadlines. On a failing test the server's log
//! is printed.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

#[allow(unused_imports)] // each test binary uses some of them
pub use cserver::record::{Ended, Event, Then, COMPLETED_REQ, RECVD_MESSAGE};

pub const CSERVERD: &str = env!("CARGO_BIN_EXE_cserverd");
pub const CCLIENT: &str = env!("CARGO_BIN_EXE_cclient");
pub const CSERVERCTL: &str = env!("CARGO_BIN_EXE_cserverctl");

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `cond` until it is true or `limit` passes; panics naming `what` on timeout.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running `cserverd` in its own process group and temp dir.
pub struct Server {
    child: Option<Child>,
    /// Where the server's stderr goes: checked when the test ends (see [`Server::expect_stderr`]).
    stderr: PathBuf,
    /// Fragments of stderr lines this test provokes on purpose.
    expected_stderr: std::sync::Mutex<Vec<String>>,
    /// The process group: the master, its workers, and any master it started (upgrade).
    group: Pid,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The other listeners (`--listen`), as printed: address and protocol.
    pub listening: Vec<(SocketAddr, String)>,
    pub log: PathBuf,
    pub board: PathBuf,
    pub pid_file: PathBuf,
}

impl Server {
    /// Starts `cserverd --port 0` with test paths and `extra` options; waits for
    /// `listening on ...`.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_log(None, extra)
    }

    /// As [`Server::start`], in a temp dir anyone may write (for a server that drops root).
    pub fn start_in_open_dir(extra: &[&str]) -> Server {
        Server::start_inner(None, extra, true, &[])
    }

    /// As [`Server::start`], with the log at `log` instead of in the temp dir.
    pub fn start_with_log(log: Option<&str>, extra: &[&str]) -> Server {
        Server::start_inner(log, extra, false, &[])
    }

    /// As [`Server::start`], with these variables added to the server's environment.
    pub fn start_with_env(env: &[(&str, &str)], extra: &[&str]) -> Server {
        Server::start_inner(None, extra, false, env)
    }

    /// As [`Server::start`], running `binary` (a copy of cserverd that a test may replace
    /// before an upgrade).
    pub fn start_binary(binary: &Path, extra: &[&str]) -> Server {
        Server::start_from(binary, None, extra, false, &[])
    }

    fn start_inner(
        log: Option<&str>,
        extra: &[&str],
        open_dir: bool,
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_from(Path::new(CSERVERD), log, extra, open_dir, env)
    }

    fn start_from(
        binary: &Path,
        log: Option<&str>,
        extra: &[&str],
        open_dir: bool,
        env: &[(&str, &str)],
    ) -> Server {
        remember_panic_messages();
        let dir = tempfile::tempdir().expect("temp dir");
        if open_dir {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        }
        let log = log.map_or_else(|| dir.path().join("server.log"), PathBuf::from);
        let board = dir.path().join("scoreboard");
        let pid_file = dir.path().join("cserverd.pid");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(binary);
        cmd.args(["--port", "0", "--report-interval", "0.5"])
            .arg("--log")
            .arg(&log)
            .arg("--stats-file")
            .arg(&board)
            .arg("--pid-file")
            .arg(&pid_file)
            .args(extra)
            // SHELL sessions start /bin/sh: no test depends on the login profile of the account
            // running the tests (a profile's `pyenv rehash` waits a minute on a lock a killed
            // shell left behind).
            .env("SHELL", "/bin/sh")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&stderr).expect("stderr file")))
            // Its own group: the test can clean up every process of it.
            .process_group(0);
        // And if the test process is killed before it can (a test runner's timeout, Ctrl-C),
        // the master dies with it (its workers follow their master).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("spawn cserverd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "cserverd did not print its address; stderr:\n{}log:\n{}",
                read(&stderr),
                read(&log)
            )
        });
        let addr: SocketAddr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        // One more line per `--listen`: `listening on ADDR (PROTOCOL)`.
        let others = extra.iter().filter(|a| **a == "--listen").count();
        let listening = (0..others)
            .map(|_| {
                let line = rx
                    .recv_timeout(PATIENCE)
                    .expect("a listening line per --listen");
                line.strip_prefix("listening on ")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|rest| rest.split_once(" ("))
                    .and_then(|(a, p)| Some((a.parse().ok()?, p.to_string())))
                    .unwrap_or_else(|| panic!("unexpected listening line {line:?}"))
            })
            .collect();
        let server = Server {
            group: Pid::from_raw(child.id() as i32),
            child: Some(child),
            stderr,
            expected_stderr: Default::default(),
            dir,
            addr,
            listening,
            log,
            board,
            pid_file,
        };
        server.wait_workers_ready(extra_workers(extra));
        server
    }

    /// Lets stderr lines containing `fragment` pass the end-of-test check: the test provokes
    /// them on purpose (a full disk, no descriptors left).
    pub fn expect_stderr(&self, fragment: &str) {
        let mut expected = self
            .expected_stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        expected.push(fragment.to_string());
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        read(&self.stderr)
    }

    /// The master's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// The address of the first `--listen` listener speaking `protocol`.
    pub fn listener(&self, protocol: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(_, p)| p == protocol)
            .map(|(a, _)| *a)
            .unwrap_or_else(|| panic!("no {protocol} listener in {:?}", self.listening))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The log's contents.
    pub fn log_text(&self) -> String {
        read(&self.log)
    }

    /// `cserverctl status --json` for this server.
    pub fn status(&self) -> Value {
        let out = Command::new(CSERVERCTL)
            .arg("status")
            .arg("--stats-file")
            .arg(&self.board)
            .arg("--json")
            .output()
            .expect("run cserverctl");
        assert!(
            out.status.success(),
            "cserverctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cserverctl JSON")
    }

    /// The pid the pid file names now (an upgrade's new master writes its own).
    pub fn pid_file_names(&self) -> Option<i32> {
        fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Worker pids by slot, as the scoreboard shows them (0 for none).
    pub fn worker_pids(&self) -> Vec<i32> {
        let status = self.status();
        status["slots"]
            .as_array()
            .expect("slots")
            .iter()
            .map(|s| s["pid"].as_i64().unwrap_or(0) as i32)
            .collect()
    }

    /// Waits until `n` slots show a ready worker.
    pub fn wait_workers_ready(&self, n: usize) {
        wait_until(&format!("{n} ready workers"), PATIENCE, || {
            let Ok(out) = Command::new(CSERVERCTL)
                .arg("status")
                .arg("--stats-file")
                .arg(&self.board)
                .arg("--json")
                .output()
            else {
                return false;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                return false;
            };
            v["slots"]
                .as_array()
                .map(|s| s.iter().filter(|w| w["state"] == "ready").count() >= n)
                .unwrap_or(false)
        });
    }

    /// `cclient --json` aimed at this server.
    pub fn cclient_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CCLIENT);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port().to_string()])
            .args(["--json", "--timeout", "60"])
            .args(args);
        cmd
    }

    /// Runs `cclient --json` against this server; returns its exit status and summary.
    pub fn cclient(&self, args: &[&str]) -> (ExitStatus, Value) {
        let out = self.cclient_command(args).output().expect("run cclient");
        summary_of(out)
    }

    /// Starts `cclient --json` in the background (see [`finish_cclient`]).
    pub fn cclient_spawn(&self, args: &[&str]) -> Child {
        self.cclient_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cclient")
    }

    /// After the log was moved to `rotated` and `USR1` sent under `load`: waits until every
    /// process reopened, checks nobody writes the old file afterwards and that every record is
    /// in one file or the other, whole. Returns cclient's summary.
    pub fn check_rotation(&self, rotated: &Path, load: Child) -> Value {
        let workers = self.ready_pids();
        wait_until("every process to reopen", PATIENCE, || {
            let text = self.log_text();
            text.contains(&Event::Reopened.to_string())
                && workers
                    .iter()
                    .all(|&pid| text.contains(&Event::WorkerReopened { pid }.to_string()))
        });
        let frozen = fs::read(rotated).unwrap();
        let (status, summary) = finish_cclient(load);
        assert!(status.success(), "{summary}");
        assert_eq!(
            fs::read(rotated).unwrap(),
            frozen,
            "a process still wrote to the rotated log"
        );
        let (r1, c1) = message_counts(&parse_log(&String::from_utf8(frozen).unwrap()));
        let (r2, c2) = message_counts(&parse_log(&self.log_text()));
        assert!(
            c1 > 0 && c2 > 0,
            "load on both sides of the rotation: {c1} {c2}"
        );
        assert_eq!(r1 + r2, c1 + c2);
        assert_eq!((c1 + c2) as u64, summary["acknowledged"].as_u64().unwrap());
        summary
    }

    /// Number of `completed req` records in the log so far.
    pub fn completed_count(&self) -> usize {
        self.log_text()
            .matches(&format!(" -- {COMPLETED_REQ} \""))
            .count()
    }

    /// Waits until the log holds at least `n` more `completed req` records than `since`: the
    /// evidence that a load has started, to wait for instead of sleeping before a signal.
    pub fn wait_for_load(&self, since: usize, n: usize) {
        wait_until(
            &format!("{n} completed requests in the log"),
            PATIENCE,
            || self.completed_count() >= since + n,
        );
    }

    /// Worker pids of the slots that are ready.
    pub fn ready_pids(&self) -> Vec<i32> {
        self.status()["slots"]
            .as_array()
            .expect("slots")
            .iter()
            .filter(|s| s["state"] == "ready")
            .map(|s| s["pid"].as_i64().unwrap_or(0) as i32)
            .collect()
    }

    /// A raw client session (greeting already read and checked).
    pub fn connect(&self) -> Client {
        let mut c = Client::connect(self.addr);
        let greeting = c.line();
        assert!(
            greeting.starts_with("OK cserverd "),
            "greeting {greeting:?}"
        );
        c
    }

    /// A client on the worker whose pid is `want` (`None`: any; connections go to the workers
    /// in turn), greeted, and that worker's pid.
    pub fn client_on(&self, want: Option<i32>) -> (Client, i32) {
        for _ in 0..64 {
            let mut c = Client::connect(self.addr);
            let greeting = c.line();
            let pid: i32 = greeting
                .split_whitespace()
                .nth(4)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("greeting {greeting:?}"));
            if want.is_none_or(|w| w == pid) {
                return (c, pid);
            }
        }
        panic!("no connection reached worker {want:?}");
    }

    /// As [`Server::connect`], from `local`, another loopback address (`127.0.0.2`).
    pub fn connect_from(&self, local: IpAddr) -> Client {
        let mut c = Client::connect_from(self.addr, local);
        let greeting = c.line();
        assert!(
            greeting.starts_with("OK cserverd "),
            "greeting {greeting:?}"
        );
        c
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal master");
    }

    /// Waits for the master to exit (deadline `limit`) and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cserverd did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `SIGTERM` and wait: the graceful stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(PATIENCE)
    }
}

/// Waits (with a deadline) for a background cclient and parses its summary.
pub fn finish_cclient(child: Child) -> (ExitStatus, Value) {
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("cclient did not finish within 120 s");
    let out = waiter.join().expect("waiter").expect("cclient output");
    summary_of(out)
}

/// cclient's exit status and parsed `--json` summary.
fn summary_of(out: std::process::Output) -> (ExitStatus, Value) {
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cclient printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status, summary)
}

fn extra_workers(extra: &[&str]) -> usize {
    extra
        .iter()
        .position(|a| *a == "--workers")
        .and_then(|i| extra.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

impl Drop for Server {
    fn drop(&mut self) {
        if thread::panicking() {
            // The log's end (a load test's log runs to megabytes), then the failure once more:
            // a CI page that shows only the output's tail still shows why the test failed.
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let shown = lines.len().saturating_sub(LOG_LINES_SHOWN);
            eprintln!(
                "---- server log {} ({} lines, the last {} shown) ----\n{}\n\
                 ---- server stderr ----\n{}---- end of log ----\n\
                 ---- the failure: {} ----",
                self.log.display(),
                lines.len(),
                lines.len() - shown,
                lines[shown..].join("\n"),
                self.stderr_text(),
                LAST_PANIC.with(|m| m.borrow().clone()).unwrap_or_default()
            );
        }
        // Everything of the group, even after the master itself was reaped.
        let _ = killpg(self.group, Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        // Like unicorn's check_stderr: a server that complained about something the test did
        // not provoke fails the test, even if every assertion held.
        if !thread::panicking() {
            let expected = self
                .expected_stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let unexpected: Vec<String> = self
                .stderr_text()
                .lines()
                .filter(|l| !l.trim().is_empty() && !expected.iter().any(|e| l.contains(e)))
                .map(str::to_string)
                .collect();
            assert!(
                unexpected.is_empty(),
                "cserverd wrote to stderr:\n{}\n---- server log ----\n{}",
                unexpected.join("\n"),
                self.log_text()
            );
        }
    }
}

/// The record of a `TERM`'s graceful stop.
pub fn graceful_stop() -> String {
    Event::Stopping {
        sig: Signal::SIGTERM,
        graceful: true,
    }
    .to_string()
}

/// The record of `sig` ignored for `why` (one of [`cserver::phase`]'s reasons).
pub fn ignored(sig: Signal, why: &str) -> String {
    Event::Ignored { sig, why }.to_string()
}

/// An executable `#!/bin/sh` script `name` in `dir` (a program for `--allow-run`).
/// A private (0600) file `name` in `dir` holding `text`; its path (a secrets file).
pub fn private_file(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, text).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_str().expect("UTF-8 path").to_string()
}

pub fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Connections each ready worker accepted, by slot.
pub fn accepted_by_slot(server: &Server) -> std::collections::BTreeMap<u64, u64> {
    let status = server.status();
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "ready")
        .map(|s| (s["slot"].as_u64().unwrap(), s["accepted"].as_u64().unwrap()))
        .collect()
}

/// Waits until the server's error counter (all workers, published each tick) is `n`.
pub fn wait_errors(server: &Server, n: u64) {
    wait_until(&format!("the error count to be {n}"), PATIENCE, || {
        server.status()["total"]["errors"] == n
    });
}

/// Bytes a program printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a cserverctl refusal: exit status 1, nothing on stdout, one line on stderr
/// containing `want`.
pub fn assert_refused(out: &std::process::Output, want: &str) {
    assert_fails(out, 1, want);
}

/// Asserts `cserverctl status`'s refusal: exit status 4 (the LSB "unknown"), as
/// [`assert_refused`].
pub fn assert_unknown(out: &std::process::Output, want: &str) {
    assert_fails(out, 4, want);
}

/// Asserts a cserverctl failure: exit status `code`, nothing on stdout, one line on stderr
/// containing `want`.
pub fn assert_fails(out: &std::process::Output, code: i32, want: &str) {
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

/// How many of the log's last lines a failing test prints.
const LOG_LINES_SHOWN: usize = 300;

thread_local! {
    /// The message of the panic this thread is unwinding from, for [`Server`]'s drop.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per test binary) a panic hook that keeps the message for the log dump, then
/// prints it as usual.
fn remember_panic_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LAST_PANIC.with(|m| *m.borrow_mut() = Some(info.to_string()));
            default(info);
        }));
    });
}

fn read(path: &Path) -> String {
    // Not /dev/full and the like: they never end.
    if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Logs `member` and `sayer` in under those names and JOINs both to the chat (member first,
/// so it is told of the sayer's arrival, read here).
pub fn join_as_member_and_sayer(member: &mut Client, sayer: &mut Client) {
    for (c, name) in [(&mut *member, "member"), (&mut *sayer, "sayer")] {
        assert_eq!(c.ask(&format!("USER {name}")), format!("OK hello {name}"));
        assert!(c.ask("JOIN").ends_with(" joined"));
    }
    assert_eq!(member.line(), "* sayer joined");
}

/// A raw line client with a read deadline.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from `local`, another loopback address (`127.0.0.2`): to the server, another
    /// client.
    pub fn connect_from(addr: SocketAddr, local: IpAddr) -> Client {
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType};
        use nix::sys::socket::{SockaddrIn, SockaddrIn6};
        use std::os::fd::AsRawFd;
        let family = match local {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        let (from, to) = (SocketAddr::new(local, 0), addr);
        match (from, to) {
            (SocketAddr::V4(from), SocketAddr::V4(to)) => {
                bind(fd.as_raw_fd(), &SockaddrIn::from(from)).expect("bind");
                connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
            }
            (SocketAddr::V6(from), SocketAddr::V6(to)) => {
                bind(fd.as_raw_fd(), &SockaddrIn6::from(from)).expect("bind");
                connect(fd.as_raw_fd(), &SockaddrIn6::from(to)).expect("connect");
            }
            _ => panic!("{local} and {addr} are of different families"),
        }
        Client::over(TcpStream::from(fd))
    }

    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// Reads one line, without the `\n`.
    pub fn line(&mut self) -> String {
        String::from_utf8(self.line_bytes()).expect("reply is UTF-8")
    }

    /// Reads one line as the bytes that came, without the `\n`.
    pub fn line_bytes(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).expect("read reply");
        assert!(
            buf.ends_with(b"\n"),
            "connection closed mid-line: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.pop();
        buf
    }

    /// Sends `line` + `\n` and reads one reply line.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }

    /// Reads raw bytes until what came holds `needle`; returns all of it as text. Fails at the
    /// read deadline or if the server closes first.
    pub fn until(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        while !text(&seen).contains(needle) {
            let got = self.reader.fill_buf().expect("read");
            assert!(
                !got.is_empty(),
                "closed before {needle:?}: {:?}",
                text(&seen)
            );
            seen.extend_from_slice(got);
            let n = got.len();
            self.reader.consume(n);
        }
        text(&seen)
    }

    /// Reads until the server closes; returns what came.
    pub fn rest(&mut self) -> String {
        let mut s = String::new();
        self.reader.read_to_string(&mut s).expect("read to end");
        s
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}

/// One parsed log record. `text` is as the log has it (escaped); `cut` is the message's whole
/// length when the record keeps only its first `--max-log-text` bytes.
#[derive(Debug, PartialEq)]
pub enum Record {
    Recvd {
        pid: u32,
        text: String,
        user: String,
        cut: Option<u64>,
    },
    Completed {
        text: String,
        pid: u32,
        count: u64,
        cut: Option<u64>,
    },
    Other(String),
}

/// Parses `<ts> -- <event>` strictly: the seed's timestamp format and, for message records,
/// their exact shape. Err names what is wrong.
pub fn parse_record(line: &str) -> Result<Record, String> {
    let (ts, event) = line.split_once(" -- ").ok_or("no ' -- '")?;
    let b = ts.as_bytes();
    let shape_ok = b.len() == 29
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 19 => *c == b'.',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(format!("bad timestamp {ts:?}"));
    }
    // `server <pid> recvd message "..." from user <name>`; other `server <pid> ...` events
    // (services, connections) are not message records.
    let recvd = event
        .strip_prefix("server ")
        .and_then(|r| r.split_once(' '))
        .filter(|(pid, rest)| {
            pid.bytes().all(|b| b.is_ascii_digit())
                && rest.starts_with(&format!("{RECVD_MESSAGE} \""))
        });
    if let Some((pid, rest)) = recvd {
        let rest = rest
            .strip_prefix(&format!("{RECVD_MESSAGE} \""))
            .ok_or("bad recvd")?;
        let (text, rest) = quoted(rest)?;
        let (cut, rest) = cut_mark(rest)?;
        let user = rest.strip_prefix(" from user ").ok_or("bad recvd tail")?;
        return Ok(Record::Recvd {
            pid: pid.parse().map_err(|_| "bad pid")?,
            text,
            user: user.to_string(),
            cut,
        });
    }
    if let Some(rest) = event.strip_prefix(&format!("{COMPLETED_REQ} \"")) {
        let (text, rest) = quoted(rest)?;
        let (cut, rest) = cut_mark(rest)?;
        let rest = rest.strip_prefix(" on ").ok_or("bad completed")?;
        let (pid, count) = rest
            .split_once(" total reqs ")
            .ok_or("bad completed tail")?;
        return Ok(Record::Completed {
            text,
            pid: pid.parse().map_err(|_| "bad pid")?,
            count: count.parse().map_err(|_| "bad count")?,
            cut,
        });
    }
    Ok(Record::Other(event.to_string()))
}

/// Splits an escaped quoted string (opening quote already consumed) from what follows it.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Ok((s[..i].to_string(), &s[i + 1..])),
            c if cserver::log::never_raw(c) => {
                return Err(format!(
                    "raw control character or line separator {c:?} in record"
                ))
            }
            _ => {}
        }
    }
    Err("unterminated quote".into())
}

/// After a quoted text: `... (<length> bytes)` if `--max-log-text` cut it (its whole length),
/// and what follows.
fn cut_mark(s: &str) -> Result<(Option<u64>, &str), String> {
    let Some(rest) = s.strip_prefix("... (") else {
        return Ok((None, s));
    };
    let (len, rest) = rest.split_once(" bytes)").ok_or("bad cut mark")?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad cut length {len:?}"));
    }
    Ok((Some(len.parse().map_err(|_| "bad cut length")?), rest))
}

/// Parses every line of a log; panics on the first bad one.
pub fn parse_log(text: &str) -> Vec<Record> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "log does not end with a newline"
    );
    text.lines()
        .enumerate()
        .map(|(n, l)| parse_record(l).unwrap_or_else(|e| panic!("log line {}: {e}: {l:?}", n + 1)))
        .collect()
}

/// Parses a log in which a worker killed by SIGKILL in the middle of its `write(2)` may have
/// left a partial last record without its newline, so that the next record (of another
/// process) starts on the same line. Returns the records and the number of such fragments.
pub fn parse_log_after_kills(text: &str) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut fragments = 0;
    for (n, line) in text.lines().enumerate() {
        match parse_record(line) {
            Ok(r) => records.push(r),
            Err(e) => {
                // A fragment, then a whole record starting at its timestamp.
                let start = find_timestamp(line, 1)
                    .unwrap_or_else(|| panic!("log line {}: {e}: {line:?}", n + 1));
                fragments += 1;
                let rest = &line[start..];
                records.push(
                    parse_record(rest)
                        .unwrap_or_else(|e| panic!("log line {}: {e}: {rest:?}", n + 1)),
                );
            }
        }
    }
    (records, fragments)
}

/// Byte offset of the first `YYYY.MM.DD HH:MM:SS.nnnnnnnnn -- ` at or after `from`.
fn find_timestamp(line: &str, from: usize) -> Option<usize> {
    (from..line.len()).find(|&i| {
        line.is_char_boundary(i)
            && line.len() >= i + 33
            && line.is_char_boundary(i + 33)
            && parse_record(&line[i..]).is_ok()
            && line.as_bytes()[i + 4] == b'.'
    })
}

/// Counts of `recvd` and `completed` records.
pub fn message_counts(records: &[Record]) -> (usize, usize) {
    let recvd = records
        .iter()
        .filter(|r| matches!(r, Record::Recvd { .. }))
        .count();
    let completed = records
        .iter()
        .filter(|r| matches!(r, Record::Completed { .. }))
        .count();
    (recvd, completed)
}

/// True if a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// CPU time (user + system) of a process in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One end of a TCP connection, from `/proc/net/tcp{,6}`.
pub struct ServerSide {
    pub inode: u64,
    /// Bytes received and not read yet.
    pub unread: u64,
    /// Bytes written and not yet acknowledged by the other end.
    pub unsent: u64,
}

/// The server's end of the connection from `client` to `server_port`, if the kernel lists it.
pub fn server_side(server_port: u16, client: SocketAddr) -> Option<ServerSide> {
    tcp_end(server_port, client.port())
}

/// The client's end (`client` is its local address) of its connection to `server_port`.
pub fn client_side(client: SocketAddr, server_port: u16) -> Option<ServerSide> {
    tcp_end(client.port(), server_port)
}

/// The end of a loopback TCP connection whose local port is `local` and remote port `remote`.
fn tcp_end(local: u16, remote: u16) -> Option<ServerSide> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && port(f[1]) == Some(local) && port(f[2]) == Some(remote) {
                let (tx, rx) = f[4].split_once(':')?;
                return Some(ServerSide {
                    inode: f[9].parse().ok()?,
                    unread: u64::from_str_radix(rx, 16).ok()?,
                    unsent: u64::from_str_radix(tx, 16).ok()?,
                });
            }
        }
    }
    None
}

/// Makes closing `stream` send a reset (RST) instead of a FIN: SO_LINGER with no time.
pub fn reset_on_close(stream: &TcpStream) {
    nix::sys::socket::setsockopt(
        stream,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("SO_LINGER");
}

/// Hundredths of the next second that `pid` used a CPU or waited for one: 100 for a process
/// that spins, whatever else runs beside it.
///
/// The time waited counts only for a process that was put on a CPU many times in the second
/// (a spinning one, taking turns with the others): a process that sleeps and wakes a few times
/// may wait long for each turn on a loaded machine, and that wait is not its doing.
pub fn cpu_ticks_over_a_second(pid: i32) -> u64 {
    let (before, started) = (schedstat(pid), Instant::now());
    wait_until("a second to pass", PATIENCE, || {
        started.elapsed() >= Duration::from_secs(1)
    });
    let after = schedstat(pid);
    let (ran, waited, turns) = (
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    );
    // An idle worker is put on a CPU a few times a second (its tick); a spinning one, taking
    // turns with others, dozens of times at least.
    let wanted = if turns >= 20 { ran + waited } else { ran };
    wanted / 10_000_000
}

/// `/proc/PID/schedstat` (its main thread: a worker has no other): ns on a CPU, ns ready to
/// run and waiting for one, and how many times it was put on a CPU.
fn schedstat(pid: i32) -> [u64; 3] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    [(); 3].map(|()| fields.next().unwrap())
}

/// The address a `cserverd` started by hand prints first (`listening on ADDR`), read from its
/// stdout byte by byte (nothing after that line is taken from the pipe).
pub fn listening_addr(child: &mut Child) -> SocketAddr {
    use std::io::Read;
    let mut out = child.stdout.take().expect("cserverd's stdout piped");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\n") {
        assert_eq!(out.read(&mut byte).unwrap(), 1, "no address printed");
        first.push(byte[0]);
    }
    let first = String::from_utf8_lossy(&first);
    first
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
}
