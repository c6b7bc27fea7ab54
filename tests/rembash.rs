//! The `rembash` protocol as its seed's client speaks it: `<rembash>`, `<SECRET>`, `<ok>`, then
//! a shell on a pseudo-terminal, raw bytes both ways; `<error>` and closed for a wrong secret,
//! closed without a word after five silent seconds.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn secret_file(dir: &Path, mode: u32) -> String {
    let path = dir.join("rembash.secret");
    fs::write(&path, "cs407rembash\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Reads exactly `want` from `stream` (the seed's client compares the lines exactly).
fn expect_exactly(stream: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(text(&got), text(want));
}

/// Reads until `needle` has come; returns everything read.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&seen).contains(needle) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before {needle:?}: {:?}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    text(&seen)
}

/// Signals blocked and ignored by `pid` (`/proc/PID/status`).
fn sig_masks(pid: i32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    (field("SigBlk:"), field("SigIgn:"))
}

#[test]
fn the_right_secret_gets_a_shell_a_wrong_one_error_and_silence_is_closed() {
    // The server starts with SIGINT ignored (as from a shell's background job): the remote
    // shell must not inherit that, or Ctrl-C would not reach its jobs.
    // SAFETY: no handler is installed; this test binary does not use SIGINT otherwise.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o600);
    let server = Server::start(&[
        "--workers",
        "1",
        "--listen",
        "0=rembash",
        "--allow-shell",
        "--rembash-secret",
        &secret,
    ]);
    let addr = server.listener("rembash");

    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    expect_exactly(&mut c, b"<rembash>\n");
    c.write_all(b"<cs407rembash>\n").unwrap();
    expect_exactly(&mut c, b"<ok>\n");
    // Raw bytes both ways: the client's terminal is in raw mode, the shell echoes.
    c.write_all(b"echo $((6*7))-answer\n").unwrap();
    read_until(&mut c, "42-answer");
    let log = server.log_text();
    let shell: i32 = log
        .lines()
        .find_map(|l| l.split(" shell start pid ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no shell start record in:\n{log}"));
    assert!(
        log.contains(&format!(
            "shell start pid {shell} for user rembash client 127.0.0.1:"
        )),
        "{log}"
    );
    // The shell blocks nothing and does not ignore INT (an interactive shell ignores QUIT,
    // TERM and the job-control signals itself); its jobs get every signal's default.
    let (blocked, ignored) = sig_masks(shell);
    assert_eq!(
        (blocked, ignored & 1 << (libc::SIGINT - 1)),
        (0, 0),
        "{ignored:x}"
    );
    // Ctrl-C reaches the job in the foreground.
    c.write_all(b"sleep 100\n").unwrap();
    let mut job = 0;
    wait_until("the sleep to run", PATIENCE, || {
        let out = Command::new("pgrep")
            .args(["-P", &shell.to_string(), "sleep"])
            .output();
        job = out.map_or(0, |o| text(&o.stdout).trim().parse().unwrap_or(0));
        job > 0
    });
    assert_eq!(
        sig_masks(job),
        (0, 0),
        "the job's blocked and ignored signals"
    );
    c.write_all(b"\x03").unwrap();
    c.write_all(b"echo after-$((1+1))\n").unwrap();
    read_until(&mut c, "after-2");
    c.write_all(b"exit\n").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    wait_until("the shell end record", PATIENCE, || {
        server
            .log_text()
            .contains(&format!("shell end pid {shell} for user rembash"))
    });

    // A wrong secret, or the right one without its brackets: <error>, then closed.
    for wrong in [&b"<cs407rembasH>\n"[..], b"cs407rembash\n", b"<>\n"] {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        expect_exactly(&mut c, b"<rembash>\n");
        c.write_all(wrong).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(text(&rest), "<error>\n", "{:?}", text(wrong));
    }
    assert!(
        server
            .log_text()
            .contains("rembash wrong secret from client 127.0.0.1:"),
        "{}",
        server.log_text()
    );

    // Silence: closed after the seed's five seconds, without a word.
    let mut quiet = TcpStream::connect(addr).unwrap();
    quiet.set_read_timeout(Some(PATIENCE)).unwrap();
    let start = Instant::now();
    expect_exactly(&mut quiet, b"<rembash>\n");
    let mut rest = Vec::new();
    quiet.read_to_end(&mut rest).unwrap();
    assert_eq!(text(&rest), "");
    assert!(
        start.elapsed() >= Duration::from_millis(4500),
        "closed after {:?}",
        start.elapsed()
    );
}

#[test]
fn rembash_needs_allow_shell_and_a_private_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o600);
    let run = |args: &[&str]| {
        Command::new(CSERVERD)
            .args(["--port", "0", "--listen", "0=rembash"])
            .args(args)
            .output()
            .unwrap()
    };
    let refused = |out: std::process::Output, code: i32, want: &str| {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(want), "{stderr:?} lacks {want:?}");
    };
    refused(
        run(&["--rembash-secret", &secret]),
        2,
        "needs --allow-shell",
    );
    refused(run(&["--allow-shell"]), 2, "needs --rembash-secret FILE");
    // A secret others may read is no secret: refused like a world-readable --secrets file.
    let open = secret_file(dir.path(), 0o644);
    refused(
        run(&["--allow-shell", "--rembash-secret", &open]),
        1,
        "rembash.secret",
    );
}
