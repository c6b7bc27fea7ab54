//! cclient as a load tool whose numbers and exit status can be trusted: closed pipes end every
//! program quietly, shared servers and dead servers are told apart from miscounting ones, an
//! interrupted run says so, open-loop latency counts from the intended send times, memory stays
//! flat however long the run, and every server configuration can be load-tested.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Runs `cmd` with its stdout a pipe whose reader is gone.
fn with_closed_stdout(cmd: &mut Command) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    cmd.stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Ended as a filter does when nobody reads it: by SIGPIPE, without a panic or a message.
fn assert_quiet_sigpipe(out: &std::process::Output) {
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn a_closed_stdout_ends_cclient_and_cserverctl_quietly() {
    let server = Server::start(&["--workers", "1"]);
    let port = server.port().to_string();
    let out = with_closed_stdout(Command::new(CCLIENT).args([
        "--port",
        &port,
        "--threads",
        "2",
        "--requests",
        "3",
    ]));
    assert_quiet_sigpipe(&out);
    let out = with_closed_stdout(Command::new(CSERVERCTL).args([
        "status",
        "--stats-file",
        server.board.to_str().unwrap(),
    ]));
    assert_quiet_sigpipe(&out);
    // Piped interactive mode too.
    let out = with_closed_stdout(
        Command::new(CCLIENT)
            .args(["--port", &port])
            .stdin(Stdio::from(std::fs::File::open("/dev/null").unwrap())),
    );
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.code() == Some(0),
        "{out:?}"
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cserverd_goes_on_serving_when_its_stderr_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    // /dev/full as the log: every process has something to say on stderr at once.
    let mut child = Command::new(CSERVERD)
        .args(["--port", "0", "--workers", "1", "--log", "/dev/full"])
        .arg("--stats-file")
        .arg(dir.path().join("sb"))
        .arg("--pid-file")
        .arg(dir.path().join("pid"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(write))
        .process_group(0)
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    let mut c = Client::connect(addr);
    assert!(c.line().starts_with("OK cserverd "));
    assert_eq!(c.ask("USER closed"), "OK hello closed");
    // The worker tries to say it cannot write the log: refused, and still serving.
    assert_eq!(
        c.ask("MSG lost"),
        "ERR 503 cannot write the log; request not done"
    );
    assert_eq!(c.ask("PING"), "OK PONG");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    drop(c);
    let status = child.wait().unwrap();
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn overlapping_runs_pass_with_verify_at_least_and_mismatch_with_exact() {
    let server = Server::start(&["--workers", "2"]);
    for (verify, want_status, want_check) in [("at-least", 0, "match"), ("exact", 1, "mismatch")] {
        let args = ["--threads", "4", "--duration", "2", "--verify", verify];
        let a = server.cclient_spawn(&args);
        let b = server.cclient_spawn(&args);
        for (status, summary) in [finish_cclient(a), finish_cclient(b)] {
            assert_eq!(status.code(), Some(want_status), "{verify}: {summary}");
            assert_eq!(summary["check"], want_check, "{summary}");
            assert_eq!(summary["failed"], 0, "{summary}");
            // Each saw the other's requests counted too.
            let delta = summary["server_delta"].as_u64().unwrap();
            assert!(
                delta > summary["acknowledged"].as_u64().unwrap(),
                "{summary}"
            );
        }
    }
}

#[test]
fn a_server_killed_mid_run_is_unverifiable_not_a_mismatch() {
    let mut server = Server::start(&["--workers", "2"]);
    let since = server.completed_count();
    let run = server.cclient_spawn(&["--threads", "4", "--duration", "10"]);
    server.wait_for_load(since, 200);
    killpg(server.pid(), Signal::SIGKILL).unwrap();
    let _ = server.wait_exit(PATIENCE);
    let (status, summary) = finish_cclient(run);
    assert_eq!(status.code(), Some(3), "{summary}");
    assert_eq!(summary["check"], "unverifiable", "{summary}");
    assert!(
        summary["check_reason"]
            .as_str()
            .unwrap()
            .starts_with("STATS after the run: "),
        "{summary}"
    );
    assert_eq!(summary["accounting_ok"], false);
}

#[test]
fn an_interrupted_run_says_so_and_exits_130() {
    let server = Server::start(&["--workers", "1"]);
    let since = server.completed_count();
    let run = server.cclient_spawn(&["--threads", "3", "--duration", "60"]);
    server.wait_for_load(since, 100);
    kill(Pid::from_raw(run.id() as i32), Signal::SIGINT).unwrap();
    let started = Instant::now();
    let (status, summary) = finish_cclient(run);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{summary}");
    assert_eq!(summary["interrupted"], true, "{summary}");
    // What it did send is still checked: the server has exactly that.
    assert_eq!(summary["check"], "match", "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
}

/// Stops every worker for `stall` once the load is under way.
fn stall_workers(server: &Server, stall: Duration) {
    let since = server.completed_count();
    server.wait_for_load(since, 500);
    let workers = server.worker_pids();
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGSTOP).unwrap();
    }
    // The stall itself: the workers stay stopped this long.
    std::thread::sleep(stall);
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGCONT).unwrap();
    }
}

#[test]
fn open_loop_latency_counts_a_stall_in_every_request_it_delayed() {
    let server = Server::start(&["--workers", "2"]);
    let stall = Duration::from_millis(500);
    let ms =
        |summary: &serde_json::Value, p: &str| summary["latency"][p].as_f64().unwrap() / 1000.0;

    // Open loop, 2000 requests a second for 3 s: the requests due during the stall wait for
    // it, and their latency counts from when they were due.
    let run = server.cclient_spawn(&["--threads", "20", "--rate", "2000", "--duration", "3"]);
    stall_workers(&server, stall);
    let (status, open) = finish_cclient(run);
    assert!(status.success(), "{open}");
    assert_eq!(open["not_sent"], 0, "{open}");
    assert_eq!(open["sent"], 6000, "{open}");
    assert!(
        ms(&open, "p99_us") >= 250.0,
        "open loop p99 {} ms: {open}",
        ms(&open, "p99_us")
    );
    assert!(open["behind_max_ms"].as_f64().unwrap() >= 250.0, "{open}");

    // Closed loop for as long: each user waits out the stall once, so it shows in the max only.
    let run = server.cclient_spawn(&["--threads", "20", "--duration", "3"]);
    stall_workers(&server, stall);
    let (status, closed) = finish_cclient(run);
    assert!(status.success(), "{closed}");
    assert!(ms(&closed, "max_us") >= 400.0, "{closed}");
    assert!(
        ms(&closed, "p99_us") < 250.0,
        "closed loop p99 {} ms: {closed}",
        ms(&closed, "p99_us")
    );
}

/// Resident memory of a process in KiB.
fn rss(pid: u32) -> u64 {
    rss_kib(pid as i32)
}

#[test]
fn a_long_run_keeps_its_memory_flat() {
    let server = Server::start(&["--workers", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("latency.hgrm");
    let run = server.cclient_spawn(&[
        "--threads",
        "4",
        "--duration",
        "20",
        "--histogram",
        hgrm.to_str().unwrap(),
    ]);
    let pid = run.id();
    let started = Instant::now();
    let sample_at = |s: u64| {
        wait_until(
            &format!("{s} s into the run"),
            Duration::from_secs(30),
            || started.elapsed() >= Duration::from_secs(s),
        );
        rss(pid)
    };
    let early = sample_at(4);
    let late = sample_at(18);
    let (status, summary) = finish_cclient(run);
    assert!(status.success(), "{summary}");
    let acked = summary["acknowledged"].as_u64().unwrap();
    // Every latency kept in a vector would be 8 bytes a request.
    eprintln!("cclient RSS {early} KiB at 4 s, {late} KiB at 18 s, {acked} requests");
    assert!(
        late < early + 1024,
        "grew from {early} to {late} KiB over {acked} requests"
    );
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(
        text.contains(&format!("Total count    = {acked:>12}]")),
        "{text}"
    );
}

#[test]
fn servers_behind_a_proxy_or_with_secrets_can_be_load_tested() {
    let proxied = Server::start(&[
        "--workers",
        "1",
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
    ]);
    for version in ["v1", "v2"] {
        let (status, summary) = proxied.cclient(&[
            "--threads",
            "3",
            "--requests",
            "4",
            "--proxy-protocol",
            version,
            "--proxy-source",
            "192.0.2.44",
        ]);
        assert!(status.success(), "{version}: {summary}");
        assert_eq!(summary["acknowledged"], 12);
    }
    assert!(
        proxied.log_text().contains("connection from 192.0.2.44:"),
        "the header named the client"
    );

    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let pass = dir.path().join("pass");
    std::fs::write(&secrets, "arijort:s3cret\n").unwrap();
    std::fs::write(&pass, "s3cret\n").unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let guarded = Server::start(&["--workers", "1", "--secrets", secrets.to_str().unwrap()]);
    let (status, summary) = guarded.cclient(&[
        "--threads",
        "3",
        "--requests",
        "4",
        "--pass-file",
        pass.to_str().unwrap(),
    ]);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["acknowledged"], 12);
    // Without it the run cannot even start: the server's count needs a proven user.
    let out = guarded
        .cclient_command(&["--threads", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("needs PASS"),
        "{}",
        text(&out.stderr)
    );
}
