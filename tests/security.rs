//! The trust boundary, played by an attacker: a local user who plants files where root will open
//! them, and a service account that tries to reach root through what root trusts. Each test names
//! the finding it guards.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Runs `cserverd` expecting it to refuse to start: exit status 1 within `limit` (never a hang),
/// with one line on stderr, returned.
fn refuses_within(args: &[&str], limit: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let board = dir.path().join("sb");
    let mut child = Command::new(CSERVERD)
        .args(["--port", "0", "--workers", "1", "--stats-file"])
        .arg(&board)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cserverd {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

fn root_only(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: {why} needs root (CI runs as root)");
    false
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody")
}

#[test]
fn a_symlink_at_the_log_path_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ld.so.preload");
    let link = dir.path().join("myserver.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = refuses_within(&["--log", link.to_str().unwrap()], Duration::from_secs(2));
    assert!(
        err.contains("cannot open log") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!target.exists(), "the server created the link's target");
    // An existing target is not appended to either.
    fs::write(&target, "root's file\n").unwrap();
    refuses_within(&["--log", link.to_str().unwrap()], Duration::from_secs(2));
    assert_eq!(fs::read_to_string(&target).unwrap(), "root's file\n");
}

#[test]
fn a_fifo_at_the_log_path_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("myserver.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let err = refuses_within(&["--log", fifo.to_str().unwrap()], Duration::from_secs(2));
    assert!(err.contains("FIFO"), "{err}");
    // With a reader the open succeeds: the type check refuses it.
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let err = refuses_within(&["--log", fifo.to_str().unwrap()], Duration::from_secs(2));
    assert!(err.contains("not a regular file"), "{err}");
    drop(reader);
}

#[test]
fn a_log_owned_by_another_user_or_linked_twice_is_refused() {
    if !root_only("a file of another owner") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("myserver.log");
    fs::write(&planted, "").unwrap();
    nix::unistd::chown(&planted, Some(nobody().uid), None).unwrap();
    let err = refuses_within(
        &["--log", planted.to_str().unwrap()],
        Duration::from_secs(2),
    );
    assert!(
        err.contains(&format!("owned by uid {}", nobody().uid)),
        "{err}"
    );
    assert_eq!(fs::metadata(&planted).unwrap().len(), 0);

    // A hard link to a file of root's (protected_hardlinks off): two links, refused.
    let precious = dir.path().join("shadow");
    fs::write(&precious, "root:secret\n").unwrap();
    let linked = dir.path().join("linked.log");
    fs::hard_link(&precious, &linked).unwrap();
    let err = refuses_within(&["--log", linked.to_str().unwrap()], Duration::from_secs(2));
    assert!(err.contains("2 hard links"), "{err}");
    assert_eq!(fs::read_to_string(&precious).unwrap(), "root:secret\n");
}

#[test]
fn a_world_readable_secrets_file_and_a_world_writable_users_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    fs::write(&secrets, "ari:s3cret\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    let err = refuses_within(
        &["--log", log, "--secrets", secrets.to_str().unwrap()],
        Duration::from_secs(2),
    );
    assert!(err.contains("readable by others"), "{err}");
    let users = dir.path().join("users");
    fs::write(&users, "ari\n").unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o666)).unwrap();
    let err = refuses_within(
        &["--log", log, "--users", users.to_str().unwrap()],
        Duration::from_secs(2),
    );
    assert!(err.contains("writable by anyone"), "{err}");
    let linked = dir.path().join("users-link");
    std::os::unix::fs::symlink(&users, &linked).unwrap();
    let err = refuses_within(
        &["--log", log, "--users", linked.to_str().unwrap()],
        Duration::from_secs(2),
    );
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn usr1_keeps_the_old_log_when_a_symlink_was_planted_at_its_path() {
    let server = Server::start(&["--workers", "1"]);
    let dir = server.dir.path();
    let target = dir.join("target");
    fs::rename(&server.log, dir.join("server.log.1")).unwrap();
    std::os::unix::fs::symlink(&target, &server.log).unwrap();
    server.expect_stderr("reopen log: ");
    server.signal(Signal::SIGUSR1);
    let old = dir.join("server.log.1");
    wait_until("the refused reopen in the old file", PATIENCE, || {
        fs::read_to_string(&old)
            .is_ok_and(|t| t.contains("SIGUSR1: cannot reopen the log") && t.contains("symbolic"))
    });
    // The worker keeps the old file too, and still serves.
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    assert!(c.ask("MSG after the planted link").starts_with("OK "));
    wait_until("the message in the old file", PATIENCE, || {
        fs::read_to_string(&old).is_ok_and(|t| t.contains("after the planted link"))
    });
    assert!(!target.exists(), "the reopen followed the link");
}

/// `id -u` of a process, real and effective, from /proc.
fn uids(pid: i32) -> (u32, u32) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let v: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

#[test]
fn with_user_only_the_workers_drop_root_and_root_keeps_the_pid_file() {
    if !root_only("--user") {
        return;
    }
    let nobody = nobody();
    let server =
        Server::start_in_open_dir(&["--workers", "2", "--user", "nobody", "--group", "nogroup"]);
    assert_eq!(uids(server.pid().as_raw()), (0, 0), "the master keeps root");
    for pid in server.ready_pids() {
        assert_eq!(uids(pid), (nobody.uid.as_raw(), nobody.uid.as_raw()));
        // Not dumpable: what /proc shows of it is root's, so the service account cannot read
        // its descriptors or memory, nor ptrace it.
        for what in ["fd", "environ", "mem"] {
            let owner = fs::metadata(format!("/proc/{pid}/{what}")).unwrap().uid();
            assert_eq!(owner, 0, "worker {pid} is dumpable ({what})");
        }
    }
    let pid_meta = fs::metadata(&server.pid_file).unwrap();
    assert_eq!((pid_meta.uid(), pid_meta.mode() & 0o777), (0, 0o644));
    assert_eq!(fs::metadata(&server.board).unwrap().uid(), 0);
    // The log is the workers' so they can reopen it after a rotation.
    assert_eq!(
        fs::metadata(&server.log).unwrap().uid(),
        nobody.uid.as_raw()
    );
    // The service account cannot write `-1` into the pid file that root's logrotate trusts.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!("echo -1 > {}", server.pid_file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody wrote the pid file");
    assert_eq!(
        fs::read_to_string(&server.pid_file).unwrap().trim(),
        server.pid().to_string()
    );
}

#[test]
fn with_user_hup_rereads_a_root_only_secrets_file() {
    if !root_only("--user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    fs::write(&secrets, "ari:first\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_in_open_dir(&[
        "--workers",
        "1",
        "--user",
        "nobody",
        "--secrets",
        secrets.to_str().unwrap(),
    ]);
    fs::write(&secrets, "ari:second\n").unwrap();
    let old = server.ready_pids();
    server.signal(Signal::SIGHUP);
    wait_until("the reload", PATIENCE, || {
        server.log_text().contains(&Event::Reloaded.to_string())
    });
    // The old worker drains its queue for a moment after the HUP: wait until it is gone.
    wait_until("the new worker, alone", PATIENCE, || {
        let now = server.ready_pids();
        now.len() == 1 && !old.contains(&now[0]) && old.iter().all(|&p| !alive(p))
    });
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    let pass = c.ask("PASS second");
    assert!(pass.starts_with("OK "), "{pass}");
}

fn secrets_file(dir: &Path) -> String {
    let secrets = dir.join("secrets");
    fs::write(&secrets, "ari:s3cret\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    secrets.to_str().unwrap().to_string()
}

/// Variables a planted environment holds that no client's program may see.
const PLANTED: [(&str, &str); 2] = [("CSERVER_TEST_SECRET", "hunter2"), ("AWS_SECRET", "x")];

/// What a child may see of the server: names of its environment, and its descriptors' targets.
fn assert_clean(env: &str, fds: &str, what: &str) {
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            cserver::services::child::ENVIRONMENT.contains(name),
            "{what} sees {name}: {env}"
        );
    }
    assert!(names.contains(&"PATH") && names.contains(&"HOME"), "{env}");
    for bad in ["NOTIFY_SOCKET", "hunter2", "LISTEN_FDS"] {
        assert!(!env.contains(bad), "{what}: {env}");
    }
    for bad in [
        "socket:",
        "server.log",
        "memfd:",
        "/dev/shm",
        "pipe:",
        "anon_inode:",
    ] {
        assert!(
            !fds.contains(bad),
            "{what} holds a server descriptor: {fds}"
        );
    }
}

#[test]
fn run_needs_pass_when_secrets_exist_and_gets_a_clean_environment() {
    let bin = tempfile::tempdir().unwrap();
    // `ls` opens the directory it lists as descriptor 3: everything else would be inherited.
    script(
        bin.path(),
        "probe",
        "tr '\\0' '\\n' < /proc/$$/environ > env.out; exec ls -l /proc/self/fd > fds.out",
    );
    let secrets = secrets_file(bin.path());
    let notify = bin.path().join("notify.sock");
    let _systemd = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut env = PLANTED.to_vec();
    env.push(("NOTIFY_SOCKET", notify.to_str().unwrap()));
    let server = Server::start_with_env(
        &env,
        &[
            "--workers",
            "1",
            "--allow-run",
            bin.path().to_str().unwrap(),
            "--secrets",
            &secrets,
        ],
    );
    let mut c = server.connect();
    assert!(c.ask("USER mallory").starts_with("OK "));
    assert_eq!(
        c.ask("RUN probe"),
        "ERR 401 RUN needs a user logged in with PASS"
    );
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    assert_eq!(
        c.ask("RUN probe"),
        "ERR 401 this user needs PASS <secret> first"
    );
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert!(c.ask("RUN probe").starts_with("OK "));
    let fds = bin.path().join("fds.out");
    wait_until("the probe's output", PATIENCE, || {
        fs::read_to_string(&fds).is_ok_and(|t| t.contains(" 2 -> "))
    });
    let env = fs::read_to_string(bin.path().join("env.out")).unwrap();
    assert_clean(&env, &fs::read_to_string(&fds).unwrap(), "a RUN program");
}

#[test]
fn a_shell_gets_a_clean_environment_and_no_descriptor_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let notify = dir.path().join("notify.sock");
    let _systemd = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut env = PLANTED.to_vec();
    env.push(("NOTIFY_SOCKET", notify.to_str().unwrap()));
    // A descriptor the server inherited without close-on-exec, as from the shell that started
    // it: the shell it runs for a client must not get it.
    let (leak_r, leak_w) = nix::unistd::pipe2(nix::fcntl::OFlag::empty()).unwrap();
    let server = Server::start_with_env(
        &env,
        &["--workers", "1", "--allow-shell", "--secrets", &secrets],
    );
    drop((leak_r, leak_w));
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("SHELL"), "OK shell");
    let out = dir.path().join("shell");
    let mut stream = c.stream().try_clone().unwrap();
    use std::io::Write;
    writeln!(
        stream,
        // What the server handed over at exec, not what the login scripts added since.
        "tr '\\0' '\\n' < /proc/$$/environ > {0}.env; ls -l /proc/$$/fd > {0}.fds; \
         echo done > {0}.end",
        out.display()
    )
    .unwrap();
    wait_until("the shell's output", PATIENCE, || {
        dir.path().join("shell.end").exists()
    });
    let env = fs::read_to_string(dir.path().join("shell.env")).unwrap();
    let fds = fs::read_to_string(dir.path().join("shell.fds")).unwrap();
    assert_clean(&env, &fds, "a SHELL");
}

#[test]
fn max_processes_caps_programs_server_wide() {
    let bin = tempfile::tempdir().unwrap();
    script(bin.path(), "sleeper", "exec sleep 30");
    let server = Server::start(&[
        "--workers",
        "2",
        "--allow-run",
        bin.path().to_str().unwrap(),
        "--max-processes",
        "3",
    ]);
    let mut sessions = Vec::new();
    let mut started = 0;
    // Sessions spread over both workers; the cap counts them all.
    for i in 0..4 {
        let mut c = server.connect();
        assert!(c.ask(&format!("USER u{i}")).starts_with("OK "));
        let reply = c.ask("RUN sleeper");
        if reply.starts_with("OK ") {
            started += 1;
        } else {
            assert_eq!(
                reply,
                "ERR 429 too many processes running on this server (--max-processes 3)"
            );
        }
        sessions.push(c);
    }
    assert_eq!(started, 3);
    // A session that ends frees its processes' places.
    drop(sessions.remove(0));
    let mut c = server.connect();
    assert!(c.ask("USER again").starts_with("OK "));
    wait_until("a place to free up", PATIENCE, || {
        c.ask("RUN sleeper").starts_with("OK ")
    });
}

#[test]
fn a_client_that_never_reads_holds_at_most_one_reply_beyond_the_high_water() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    // A full chat history of the longest texts: every JOIN would replay ~100 KB.
    let mut talker = server.connect();
    assert!(talker.ask("USER talker").starts_with("OK "));
    assert!(talker.ask("JOIN").starts_with("OK "));
    let text = "x".repeat(cserver::services::chat::TEXT_MAX);
    for _ in 0..cserver::services::chat::HISTORY {
        assert!(talker.ask(&format!("SAY {text}")).starts_with("OK said"));
    }
    assert_eq!(talker.ask("LEAVE"), "OK left");
    let before = rss_kib(worker);
    // Three clients ask for 128 replays each (1.4 KB sent) and never read.
    let attack = format!("USER mallory\n{}", "JOIN\nLEAVE\n".repeat(128));
    let mut attackers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(server.addr);
        c.send(attack.as_bytes());
        attackers.push(c);
    }
    // Their turns are over once a later request on the same worker is answered.
    wait_until("the attackers' first JOINs", PATIENCE, || {
        server
            .log_text()
            .matches(" JOIN \"\" from user mallory")
            .count()
            >= 3
    });
    assert_eq!(talker.ask("PING"), "OK PONG");
    let grown = rss_kib(worker).saturating_sub(before);
    eprintln!("worker grew by {grown} KiB");
    // Each may hold the high water (256 KiB) and one reply; 128 replays each would be 38 MB.
    let bound = 3 * (cserver::connection::OUTPUT_HIGH_WATER / 1024) as u64 * 3;
    assert!(
        grown < bound,
        "worker grew by {grown} KiB for three clients that never read (bound {bound} KiB)"
    );
    // More JOINs are answered than the high water holds: the kernel's socket buffers take
    // megabytes first. Those are the kernel's (bounded by tcp_wmem), not this process's.
    drop(attackers);
}

#[test]
fn a_replay_is_sized_to_what_the_connection_may_still_hold() {
    let server = Server::start(&["--workers", "1"]);
    let mut talker = server.connect();
    assert!(talker.ask("USER talker").starts_with("OK "));
    assert!(talker.ask("JOIN").starts_with("OK "));
    let text = "y".repeat(cserver::services::chat::TEXT_MAX);
    for _ in 0..cserver::services::chat::HISTORY {
        assert!(talker.ask(&format!("SAY {text}")).starts_with("OK said"));
    }
    let mut c = server.connect();
    assert!(c.ask("USER reader").starts_with("OK "));
    let head = c.ask("JOIN");
    let shown: usize = head
        .strip_prefix("OK ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let want = cserver::services::REPLAY_BUDGET / (text.len() + "* talker: \n".len());
    assert_eq!(shown, want, "{head}");
    assert_eq!(
        head,
        format!("OK {shown} joined (100 in the history, the latest {shown} shown)")
    );
    for _ in 0..shown {
        assert_eq!(c.line(), format!("* talker: {text}"));
    }
    assert_eq!(c.ask("PING"), "OK PONG");
}

#[test]
fn list_shows_the_programs_own_name_not_the_clients_spelling() {
    let bin = tempfile::tempdir().unwrap();
    script(bin.path(), "sleeper", "exec sleep 30");
    let server = Server::start(&[
        "--workers",
        "1",
        "--allow-run",
        bin.path().to_str().unwrap(),
    ]);
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    let detour = format!("{}sleeper", "./".repeat(15_000));
    let pid = c.ask(&format!("RUN {detour}"));
    let pid = pid.strip_prefix("OK ").expect(&pid).to_string();
    assert_eq!(c.ask("LIST"), "OK 1 processes");
    assert_eq!(c.line(), format!("{pid} sleeper running"));
    assert_eq!(c.ask("CLOSE sleeper"), "OK closed 1");
}

#[test]
fn max_conns_refuses_what_a_worker_cannot_take() {
    let server = Server::start(&["--workers", "1", "--max-conns", "3"]);
    let held: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    let mut extra = Client::connect(server.addr);
    assert_eq!(
        extra.line(),
        "ERR 503 server busy: too many connections; try again later"
    );
    assert_eq!(extra.rest(), "");
    wait_until("the refusal's record", PATIENCE, || {
        server.log_text().contains("connections open (--max-conns)")
    });
    drop(held);
    wait_until("room again", PATIENCE, || {
        let mut c = Client::connect(server.addr);
        c.line().starts_with("OK cserverd ")
    });
}

#[test]
fn max_conns_per_ip_refuses_a_flood_from_one_address_only() {
    let server = Server::start(&["--workers", "1", "--max-conns-per-ip", "2"]);
    let flood: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let held: Vec<Client> = (0..2).map(|_| server.connect_from(flood)).collect();
    let mut third = Client::connect_from(server.addr, flood);
    assert_eq!(
        third.line(),
        "ERR 503 server busy: too many connections; try again later"
    );
    assert_eq!(third.rest(), "");
    // Another address is served as usual.
    let mut c = server.connect_from(other);
    assert_eq!(c.ask("PING"), "OK PONG");
    wait_until("the refusal's record", PATIENCE, || {
        server
            .log_text()
            .contains("2 connections open from 127.0.0.1 (--max-conns-per-ip)")
    });
    // The refusal is counted as an error, once.
    wait_until("the refusal counted", PATIENCE, || {
        server.status()["total"]["errors"] == 1
    });
    // A closed connection gives its place back, one place: with one of the two closed, one
    // more fits and the next is refused again.
    let mut held = held;
    drop(held.remove(0));
    let mut back = None;
    wait_until("room for the address again", PATIENCE, || {
        let mut c = Client::connect_from(server.addr, flood);
        let ok = c.line().starts_with("OK cserverd ");
        if ok {
            back = Some(c);
        }
        ok
    });
    let mut over = Client::connect_from(server.addr, flood);
    assert_eq!(
        over.line(),
        "ERR 503 server busy: too many connections; try again later"
    );
    drop((held, back));
}

#[test]
fn max_conns_per_ip_counts_the_client_a_trusted_proxy_names() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-conns-per-ip",
        "1",
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
        // No session times out while the error count is watched.
        "--handshake-timeout",
        "600",
    ]);
    let proxied = |client: &str| {
        let mut c = Client::connect(server.addr);
        c.send(format!("PROXY TCP4 {client} 10.0.0.1 4242 31337\r\n").as_bytes());
        c
    };
    let mut first = proxied("192.0.2.1");
    assert!(first.line().starts_with("OK cserverd "));
    let mut second = proxied("192.0.2.1");
    assert_eq!(
        second.line(),
        "ERR 503 server busy: too many connections; try again later"
    );
    wait_errors(&server, 1);
    // The proxy's own address is not what counts: another client through it is served.
    let mut other = proxied("192.0.2.2");
    assert!(other.line().starts_with("OK cserverd "));
}

#[test]
fn with_user_an_upgrade_rereads_a_root_only_secrets_file() {
    if !root_only("--user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let server =
        Server::start_in_open_dir(&["--workers", "1", "--user", "nobody", "--secrets", &secrets]);
    let old = server.pid().as_raw();
    server.signal(Signal::SIGUSR2);
    let names = || server.pid_file_names().unwrap_or(0);
    wait_until("the new master's hand-over", PATIENCE, || {
        let new = names();
        new != old
            && new != 0
            && server
                .log_text()
                .contains(&Event::UpgradeReady { pid: new }.to_string())
    });
    let new = names();
    assert_eq!(uids(new), (0, 0), "the new master keeps root");
    wait_until("the old master to exit", PATIENCE, || !alive(old));
    let mut c = server.connect();
    assert!(c.ask("USER ari").starts_with("OK "));
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    for worker in server.ready_pids() {
        assert_eq!(uids(worker).0, nobody().uid.as_raw(), "worker {worker}");
    }
}

#[test]
fn a_client_that_never_reads_does_not_stall_its_worker() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let before = rss_kib(worker);
    // Lines whose replies are as long: far more than the kernel's socket buffers hold.
    let line = format!("REV {}\n", "r".repeat(60_000));
    let mut hog = Client::connect(server.addr);
    assert!(hog.line().starts_with("OK cserverd "));
    hog.send(b"USER hog\n");
    let hog_stream = hog.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = hog_stream;
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        for _ in 0..400 {
            if s.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    // Everyone else is still answered: the worker never blocks writing to the hog.
    wait_until("the hog's replies to pile up", PATIENCE, || {
        server.log_text().matches(" REV \"").count() >= 20
    });
    let mut other = server.connect();
    other
        .stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(other.ask("PING"), "OK PONG");
    assert_eq!(other.ask("USER other"), "OK hello other");
    // Once the hog's sending stalls (the worker stopped reading it), what the worker holds for
    // it is bounded: a line and 64 KiB read ahead, the high water and one reply; not the 24 MB
    // it sent or the replies it asked for.
    writer.join().unwrap();
    assert_eq!(other.ask("PING"), "OK PONG");
    // Nor does it spin on the stalled client: with nothing to read or write there is no event.
    let used = cpu_ticks_over_a_second(worker);
    assert!(
        used < 30,
        "worker used {used} ticks of CPU in 1 s beside a stalled client"
    );
    let grown = rss_kib(worker).saturating_sub(before);
    eprintln!("worker grew by {grown} KiB for a client that sent 24 MB and never read");
    assert!(
        grown < 4096,
        "worker grew by {grown} KiB for one client that never reads"
    );
    drop(hog);
}
