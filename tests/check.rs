//! `cserverd --check` / `-t`: a configuration that would start says `configuration ok` and exit
//! status 0 having created nothing; one that would not says its first problem and exits 1 (a bad
//! option stays exit status 2).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `cserverd --check` with paths in `dir` and port 0, unless `extra` names its own.
fn check(dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(CSERVERD);
    cmd.arg("--check");
    let defaults = [
        ("--port", "0".into()),
        ("--log", dir.join("server.log")),
        ("--stats-file", dir.join("scoreboard")),
        ("--pid-file", dir.join("cserverd.pid")),
    ];
    for (option, value) in defaults {
        if !extra.contains(&option) {
            cmd.arg(option).arg(value);
        }
    }
    cmd.args(extra).output().expect("cserverd --check")
}

fn fails(out: &Output, fragments: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = text(&out.stderr);
    for f in fragments {
        assert!(err.contains(f), "{f:?} not in {err:?}");
    }
}

#[test]
fn a_good_configuration_is_ok_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    fs::write(&users, "arijort\n").unwrap();
    let secrets = dir.path().join("secrets");
    fs::write(&secrets, "arijort:sesame\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    for flag in ["--check", "-t"] {
        let out = Command::new(CSERVERD)
            .args([flag, "--port", "0", "--workers", "2"])
            .arg("--log")
            .arg(dir.path().join("server.log"))
            .arg("--stats-file")
            .arg(dir.path().join("scoreboard"))
            .arg("--pid-file")
            .arg(dir.path().join("cserverd.pid"))
            .arg("--users")
            .arg(&users)
            .arg("--secrets")
            .arg(&secrets)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert_eq!(text(&out.stdout), "configuration ok\n", "{flag}");
        assert!(out.stderr.is_empty(), "{flag}: {out:?}");
    }
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["secrets", "users"], "no log, scoreboard or pid file");

    // An existing log and pid file are checked, not truncated or changed.
    let log = dir.path().join("server.log");
    fs::write(&log, "kept\n").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o640)).unwrap();
    let pid = dir.path().join("cserverd.pid");
    fs::write(&pid, "4242\n").unwrap();
    let out = check(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "kept\n");
    assert_eq!(fs::read_to_string(&pid).unwrap(), "4242\n");
}

#[test]
fn a_world_readable_secrets_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    fs::write(&secrets, "arijort:sesame\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(dir.path(), &["--secrets", secrets.to_str().unwrap()]);
    fails(&out, &[secrets.to_str().unwrap(), "readable by others"]);
}

#[test]
fn a_symlink_at_the_log_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("server.log")).unwrap();
    let out = check(dir.path(), &[]);
    fails(&out, &["cannot open log", "symbolic link"]);
}

#[test]
fn a_missing_log_directory_and_a_symlinked_pid_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad_log = dir.path().join("no/such/dir/log");
    let out = check(dir.path(), &["--log", bad_log.to_str().unwrap()]);
    fails(&out, &["cannot open log", "No such file"]);

    let pid = dir.path().join("cserverd.pid");
    std::os::unix::fs::symlink("/etc/passwd", &pid).unwrap();
    let out = check(dir.path(), &[]);
    fails(&out, &["cannot write pid file", "symbolic link"]);
}

#[test]
fn a_port_in_use_is_refused() {
    let server = Server::start(&["--workers", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let port = server.port().to_string();
    let out = check(dir.path(), &["--port", &port]);
    fails(&out, &["cannot listen on", "in use"]);
    // Another listener's address is checked too.
    let out = check(
        dir.path(),
        &["--port", "0", "--listen", &format!("{port}=chat")],
    );
    fails(
        &out,
        &[&format!("cannot listen on 127.0.0.1:{port}"), "in use"],
    );
}

#[test]
fn a_bad_option_is_still_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &["--workers", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// CSERVERD_<OPTION> variables give defaults: a bad one is a bad option (exit status 2, named
/// as the option), and the command line beats them.
#[test]
fn environment_variables_are_defaults_the_command_line_beats() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = Command::new(CSERVERD);
        cmd.args(["--check", "--port", "0"])
            .arg("--log")
            .arg(dir.path().join("server.log"))
            .arg("--stats-file")
            .arg(dir.path().join("scoreboard"))
            .args(extra)
            .envs(env.iter().copied());
        cmd.output().expect("cserverd --check")
    };
    let env = [("CSERVERD_WORKERS", "3"), ("CSERVERD_MAX_WORKERS", "2")];
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("--max-workers 2 is below --workers 3"),
        "{err}"
    );
    let out = run(&env, &["--workers", "2"]);
    assert_eq!(text(&out.stdout), "configuration ok\n", "{out:?}");
    let out = run(&[("CSERVERD_IDLE_TIMEOUT", "0")], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--idle-timeout 0 would close every session at once"));
    let out = run(&[("CSERVERD_HOST", "localhost")], &[]);
    assert_eq!(text(&out.stdout), "configuration ok\n", "{out:?}");
    let out = run(&[("CSERVERD_HOST", "no-such-host.invalid")], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("no-such-host.invalid"),
        "{out:?}"
    );
}

/// A started server takes its worker count from CSERVERD_WORKERS.
#[test]
fn a_server_started_with_cserverd_workers_runs_that_many() {
    let server = Server::start_with_env(&[("CSERVERD_WORKERS", "3")], &[]);
    server.wait_workers_ready(3);
    let running = server.worker_pids().iter().filter(|p| **p > 0).count();
    assert_eq!(running, 3, "{}", server.status());
}
