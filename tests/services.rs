//! The services over real sockets: reverse, arithmetic, the per-session process table, the chat
//! hub across workers, PASS, and the pty shell.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn login(c: &mut Client, user: &str) {
    assert_eq!(c.ask(&format!("USER {user}")), format!("OK hello {user}"));
}

/// A private secrets file in `dir` holding `lines`; its path.
fn secrets_file(dir: &Path, lines: &str) -> String {
    let secrets = dir.join("secrets");
    fs::write(&secrets, lines).unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    secrets.to_str().unwrap().to_string()
}

/// A server whose `ari` (secret `s3cret`) may start a shell; `extra` options beside.
fn shell_server(dir: &Path, extra: &[&str]) -> Server {
    let secrets = secrets_file(dir, "ari:s3cret\n");
    let mut args = vec!["--secrets", &secrets, "--allow-shell"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Logs `c` in as `ari` with its secret and starts a 24x80 shell: raw bytes from here on.
fn open_shell(c: &mut Client) {
    login(c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("SHELL 24 80"), "OK shell");
}

#[test]
fn rev_is_utf8_safe_and_a_command_split_across_reads_still_works() {
    let server = Server::start(&["--workers", "1"]);
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("REV hello world"), "OK dlrow olleh");
    assert_eq!(c.ask("rev héllo ✓"), "OK ✓ olléh");
    // The seed's bug: a command split across two reads. Send half, wait, send the rest.
    c.stream().set_nodelay(true).unwrap();
    c.send(b"RE");
    std::thread::sleep(Duration::from_millis(50));
    c.send("V ab日本\n".as_bytes());
    assert_eq!(c.line(), "OK 本日ba");
    assert!(server
        .log_text()
        .contains("REV \"hello world\" from user ari"));
}

#[test]
fn arithmetic_is_exact_and_refuses_what_it_cannot_do() {
    let server = Server::start(&["--workers", "1"]);
    let mut c = server.connect();
    assert_eq!(c.ask("ADD 1 2"), "ERR 401 log in first: USER <name>");
    login(&mut c, "ari");
    let table = [
        ("ADD 1 2 3", "OK 6"),
        ("SUB 10 1 2", "OK 7"),
        ("MUL -3 4", "OK -12"),
        ("DIV 7 2", "OK 3.5"),
        ("add 0.1 0.2", "OK 0.3"),
        ("MUL 1.5 1.5", "OK 2.25"),
        (
            "ADD 9223372036854775807 1",
            "ERR 400 overflow: result out of range",
        ),
        ("DIV 1 0", "ERR 400 division by zero"),
        (
            "MUL 0.000000001 0.0000000001",
            "ERR 400 result needs more than 18 decimal places",
        ),
        ("ADD 1 two", "ERR 400 not a number: \"two\""),
        ("ADD 1", "ERR 400 need two or more numbers"),
    ];
    for (ask, want) in table {
        assert_eq!(c.ask(ask), want, "{ask}");
    }
}

#[test]
fn run_list_close_stay_inside_the_directory_and_end_with_the_session() {
    let bin = tempfile::tempdir().unwrap();
    script(bin.path(), "sleeper", "exec sleep 30");
    script(bin.path(), "quick", "exit 3");
    fs::write(bin.path().join("broken"), "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(bin.path().join("broken"), fs::Permissions::from_mode(0o755)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    script(outside.path(), "evil", "exit 0");
    std::os::unix::fs::symlink(outside.path().join("evil"), bin.path().join("link")).unwrap();

    let closed = Server::start(&["--workers", "1"]);
    let mut c = closed.connect();
    login(&mut c, "ari");
    assert_eq!(
        c.ask("RUN sleeper"),
        "ERR 403 RUN is not enabled on this server"
    );

    let server = Server::start(&[
        "--workers",
        "1",
        "--allow-run",
        bin.path().to_str().unwrap(),
    ]);
    let mut c = server.connect();
    login(&mut c, "ari");
    for escape in ["../evil", "/bin/sh", "link", "nosuch", "sub/../../evil"] {
        let reply = c.ask(&format!("RUN {escape}"));
        assert!(reply.starts_with("ERR 403 "), "RUN {escape}: {reply}");
    }
    let broken = c.ask("RUN broken");
    assert!(
        broken.starts_with("ERR 500 "),
        "a failed exec is an error: {broken}"
    );

    let a: i32 = c
        .ask("RUN sleeper")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    let b: i32 = c
        .ask("RUN sleeper 2")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    let q: i32 = c
        .ask("RUN quick")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(alive(a) && alive(b));
    let list = |c: &mut Client, what: &str| -> Vec<String> {
        let head = c.ask(what);
        let n: usize = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (0..n).map(|_| c.line()).collect()
    };
    // Reaped by the worker (not just a zombie): it shows as ended.
    wait_until("quick to be reaped", PATIENCE, || {
        list(&mut c, "LIST").len() == 2
    });
    let running = list(&mut c, "LIST");
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|l| l.contains("sleeper")));
    let all = list(&mut c, "LIST ALL");
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter()
            .any(|l| l.contains(&q.to_string()) && l.contains("exited 3")),
        "{all:?}"
    );
    let details = list(&mut c, "LIST DETAILS");
    assert!(
        details.iter().any(|l| l.starts_with("sleeper pid ")
            && l.contains(" start ")
            && l.contains(" state running")),
        "{details:?}"
    );

    assert_eq!(c.ask(&format!("CLOSE {a}")), "OK closed 1");
    wait_until("the closed one to be reaped", PATIENCE, || {
        list(&mut c, "LIST").len() == 1
    });
    assert!(!alive(a));
    assert!(c.ask("CLOSE nothing").starts_with("ERR 404 "));
    let c2: i32 = c
        .ask("RUN sleeper")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c.ask("CLOSE sleeper ALL"), "OK closed 2");
    wait_until("all sleepers reaped", PATIENCE, || !alive(b) && !alive(c2));

    // Disconnecting ends (and the worker reaps) every process of the session.
    let d: i32 = c
        .ask("RUN sleeper")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(alive(d));
    assert_eq!(c.ask("QUIT"), "OK bye");
    wait_until("the session's process to end with it", PATIENCE, || {
        !alive(d)
    });
}

/// Opens sessions until one is served by a worker other than `not`.
fn connect_to_other_worker(server: &Server, not: &str) -> (Client, String) {
    connect_where(server, |pid| pid != not)
}

/// Opens sessions until one is served by worker `pid`.
fn connect_to_worker(server: &Server, pid: &str) -> Client {
    connect_where(server, |p| p == pid).0
}

fn connect_where(server: &Server, wanted: impl Fn(&str) -> bool) -> (Client, String) {
    for _ in 0..200 {
        let mut c = Client::connect(server.addr);
        let greeting = c.line();
        let pid = greeting.split_whitespace().nth(4).unwrap().to_string();
        if wanted(&pid) {
            return (c, pid);
        }
    }
    panic!("no connection went to the worker wanted");
}

#[test]
fn chat_members_on_different_workers_see_each_other() {
    let server = Server::start(&["--workers", "2"]);
    let (mut a, pa) = connect_to_other_worker(&server, "none");
    let (mut b, pb) = connect_to_other_worker(&server, &pa);
    assert_ne!(pa, pb, "members on different workers");
    login(&mut a, "alice");
    login(&mut b, "bob");
    assert_eq!(
        a.ask("SAY too early"),
        "ERR 409 not in the chat: JOIN first"
    );
    assert_eq!(a.ask("JOIN"), "OK 0 joined");
    assert_eq!(b.ask("JOIN"), "OK 0 joined");
    assert_eq!(a.line(), "* bob joined");
    assert!(a.ask("SAY hi bob").starts_with("OK said "));
    assert_eq!(b.line(), "* alice: hi bob");
    assert!(b.ask("SAY hi alice").starts_with("OK said "));
    assert_eq!(a.line(), "* bob: hi alice");

    // A late member gets the recent messages replayed in order.
    let mut c = server.connect();
    login(&mut c, "carol");
    assert_eq!(c.ask("JOIN"), "OK 2 joined");
    assert_eq!(c.line(), "* alice: hi bob");
    assert_eq!(c.line(), "* bob: hi alice");
    assert_eq!(a.line(), "* carol joined");
    assert_eq!(b.line(), "* carol joined");

    // Leaving, and just disconnecting, are both announced.
    assert_eq!(c.ask("LEAVE"), "OK left");
    assert_eq!(a.line(), "* carol left");
    drop(b);
    assert_eq!(a.line(), "* bob left");
    assert!(server.log_text().contains("SAY \"hi bob\" from user alice"));
}

fn chat_max() -> usize {
    cserver::services::chat::TEXT_MAX
}

#[test]
fn a_chat_member_that_does_not_read_is_dropped_and_stalls_nobody() {
    let server = Server::start(&["--workers", "2"]);
    let (mut lazy, lazy_worker) = connect_to_other_worker(&server, "none");
    login(&mut lazy, "lazy");
    assert!(lazy.ask("JOIN").starts_with("OK "));
    let mut loud = server.connect();
    login(&mut loud, "loud");
    assert!(loud.ask("JOIN").starts_with("OK "));
    // A member beside the lazy one, in the same worker, that reads everything: it stays.
    let mut keen = connect_to_worker(&server, &lazy_worker);
    login(&mut keen, "keen");
    assert!(keen.ask("JOIN").starts_with("OK "));
    let keen = std::thread::spawn(move || {
        // Raw reads in big chunks: it keeps up with everything the others say.
        let mut buf = vec![0u8; 1 << 20];
        let mut tail = String::new();
        loop {
            let n = keen.stream().read(&mut buf).expect("keen reads");
            assert!(n > 0, "keen's session was closed");
            tail = tail[tail.len().saturating_sub(100)..].to_string()
                + &String::from_utf8_lossy(&buf[..n]);
            assert!(
                !tail.contains("* you were dropped from the chat"),
                "keen was dropped"
            );
            if tail.contains("* loud: after the drop\n") {
                return;
            }
        }
    });
    let text = "x".repeat(chat_max());
    // Far more than the member's buffer and socket buffers can hold (20 MB); every SAY is
    // answered at once.
    let start = Instant::now();
    let mut dropped_notice = false;
    for _ in 0..20_000 {
        loud.send(format!("SAY {text}\n").as_bytes());
        // Pushed lines may come before the reply: the lazy one leaving, at some point.
        let mut reply = loud.line();
        while let Some(pushed) = reply.strip_prefix("* ") {
            dropped_notice |= pushed == "lazy left (dropped: not reading)";
            reply = loud.line();
        }
        assert!(reply.starts_with("OK said "), "{reply}");
    }
    assert!(dropped_notice, "the others were told");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(loud.ask("SAY after the drop").starts_with("OK said "));
    keen.join()
        .expect("the member beside the dropped one is still served");
    // The lazy member was dropped, and says so once it reads.
    lazy.stream().set_read_timeout(Some(PATIENCE)).unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 1 << 16];
    while !seen.contains("* you were dropped from the chat: not reading") {
        assert!(Instant::now() < deadline, "no drop notice");
        let n = lazy.stream().read(&mut buf).unwrap();
        assert!(n > 0, "closed without a notice");
        seen = String::from_utf8_lossy(&buf[..n]).into_owned()
            + &seen[seen.len().saturating_sub(200)..];
    }
}

#[test]
fn pass_guards_the_users_named_in_the_secrets_file() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), "ari:s3cret\n");
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(
        c.ask("MSG hi"),
        "ERR 401 this user needs PASS <secret> first"
    );
    let mut legacy = server.connect();
    assert_eq!(
        legacy.ask("ari:legacy"),
        "ERR 401 this user needs PASS <secret> first"
    );
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("MSG hi"), "OK 1 1");
    // Others need no PASS.
    let mut d = server.connect();
    login(&mut d, "bob");
    assert_eq!(d.ask("MSG hi"), "OK 2 2");
    // A wrong secret proves nothing. (Each one also penalises its address, and three close
    // the session: tests/security_pass.rs.)
    let mut e = server.connect_from([127, 0, 0, 2].into());
    login(&mut e, "ari");
    assert_eq!(e.ask("PASS nope"), "ERR 401 wrong secret");
    assert_eq!(
        e.ask("MSG hi"),
        "ERR 401 this user needs PASS <secret> first"
    );
    let log = server.log_text();
    assert!(!log.contains("s3cret"), "a secret reached the log");
}

#[test]
fn pass_compares_the_whole_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), "ari:s3cret\n");
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    // Each wrong one has the right length, or shares all but its end with the right one. A
    // wrong secret penalises its address (tests/security_pass.rs), so each comes from an
    // address of its own.
    let wrongs = [
        "s3creT",
        "x3cret",
        "s3Cret",
        "s3cre",
        "s3crett",
        "s3cret s3cret",
    ];
    for (i, wrong) in wrongs.into_iter().enumerate() {
        let mut c = server.connect_from([127, 0, 0, 10 + i as u8].into());
        login(&mut c, "ari");
        assert_eq!(
            c.ask(&format!("PASS {wrong}")),
            "ERR 401 wrong secret",
            "{wrong:?} was taken for s3cret"
        );
        assert_eq!(
            c.ask("MSG not yet"),
            "ERR 401 this user needs PASS <secret> first"
        );
    }
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("QUIT"), "OK bye");
    assert_eq!(message_counts(&parse_log(&server.log_text())), (0, 0));
}

#[test]
fn a_new_name_must_prove_itself_again_and_the_same_name_need_not() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), "ari:s3cret\nbob:b0b\n");
    let server = Server::start(&["--workers", "1", "--secrets", &secrets]);
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("MSG as ari"), "OK 1 1");
    // ari's proof is not bob's.
    login(&mut c, "bob");
    assert_eq!(
        c.ask("MSG as bob"),
        "ERR 401 this user needs PASS <secret> first"
    );
    assert_eq!(c.ask("PASS b0b"), "OK pass accepted");
    assert_eq!(c.ask("MSG as bob"), "OK 2 2");
    // Saying the same name again keeps the proof.
    login(&mut c, "bob");
    assert_eq!(c.ask("MSG still bob"), "OK 3 3");
    // Back to ari: proven again from scratch.
    login(&mut c, "ari");
    assert_eq!(
        c.ask("MSG as ari"),
        "ERR 401 this user needs PASS <secret> first"
    );
}

#[test]
fn shell_runs_a_login_shell_on_a_pty_for_a_proven_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path(), "ari:s3cret\n");

    let off = Server::start(&["--workers", "1", "--secrets", &secrets]);
    let mut c = off.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(
        c.ask("SHELL"),
        "ERR 403 SHELL is not enabled on this server"
    );

    // A shell is not a request: the idle timeout does not apply to it.
    let server = shell_server(dir.path(), &["--workers", "1", "--idle-timeout", "1"]);
    let mut nopass = server.connect();
    login(&mut nopass, "bob");
    assert_eq!(
        nopass.ask("SHELL"),
        "ERR 401 SHELL needs a user logged in with PASS"
    );
    let mut wrong = server.connect_from([127, 0, 0, 2].into());
    login(&mut wrong, "ari");
    assert_eq!(wrong.ask("PASS wrong"), "ERR 401 wrong secret");
    assert_eq!(
        wrong.ask("SHELL"),
        "ERR 401 this user needs PASS <secret> first"
    );
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    assert_eq!(c.ask("SHELL 30 100"), "OK shell");
    // Raw bytes from here on.
    let mut stream = c.stream().try_clone().unwrap();
    stream.write_all(b"stty size; echo $((6*7))\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&seen).contains("\n42") {
        assert!(
            Instant::now() < deadline,
            "no 42 in {:?}",
            String::from_utf8_lossy(&seen)
        );
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("30 100"),
        "window size passed"
    );
    // Past the idle timeout, still a shell (no ERR 408 in the stream).
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < quiet_until {
        stream.write_all(b"echo tick\n").unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    stream.write_all(b"echo $((7*6))-done\n").unwrap();
    let mut later = Vec::new();
    let later_deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&later).contains("42-done") {
        assert!(
            Instant::now() < later_deadline,
            "{:?}",
            String::from_utf8_lossy(&later)
        );
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&later));
        later.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&later).contains("ERR 408"));
    stream.write_all(b"exit\n").unwrap();
    // The session ends when the shell exits.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let log = server.log_text();
    assert!(log.contains("shell start pid"), "{log}");
    wait_until("the shell end record", PATIENCE, || {
        server.log_text().contains("shell end pid")
    });
}

#[test]
fn a_member_that_joins_while_its_worker_catches_up_sees_each_message_once() {
    let server = Server::start(&["--workers", "2"]);
    let (mut late, late_worker) = connect_to_other_worker(&server, "none");
    let (mut talker, _) = connect_to_other_worker(&server, &late_worker);
    login(&mut late, "late");
    login(&mut talker, "talker");
    assert_eq!(talker.ask("JOIN"), "OK 0 joined");
    // The late member's worker, stopped, has its JOIN waiting and then a message to deliver
    // that the ring already holds when the JOIN is served (so the JOIN replays it).
    let worker = nix::unistd::Pid::from_raw(late_worker.parse().unwrap());
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGSTOP).unwrap();
    late.send(b"JOIN\n");
    let me = late.stream().local_addr().unwrap();
    wait_until("the JOIN to wait in the stopped worker", PATIENCE, || {
        server_side(server.port(), me).is_some_and(|s| s.unread > 0)
    });
    assert!(talker.ask("SAY before you came").starts_with("OK said "));
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(late.line(), "OK 1 joined");
    assert_eq!(late.line(), "* talker: before you came");
    assert_eq!(talker.line(), "* late joined");
    assert!(talker.ask("SAY and after").starts_with("OK said "));
    // Replayed once, not delivered again as news.
    assert_eq!(late.line(), "* talker: and after");
}

#[test]
fn a_member_is_dropped_once_64_kib_wait_beyond_what_its_socket_holds() {
    let server = Server::start(&["--workers", "1"]);
    let mut lazy = server.connect();
    login(&mut lazy, "lazy");
    assert!(lazy.ask("JOIN").starts_with("OK "));
    let mut loud = server.connect();
    login(&mut loud, "loud");
    assert!(loud.ask("JOIN").starts_with("OK "));
    let text = "x".repeat(chat_max());
    let mut dropped = false;
    for _ in 0..20_000 {
        let mut reply = loud.ask(&format!("SAY {text}"));
        while let Some(pushed) = reply.strip_prefix("* ") {
            dropped |= pushed == "lazy left (dropped: not reading)";
            reply = loud.line();
        }
        assert!(reply.starts_with("OK said "), "{reply}");
        if dropped {
            break;
        }
    }
    assert!(dropped, "the member that never reads was not dropped");
    // What the kernel holds for it now (the server's send queue, its receive queue): the socket
    // was full when the worker dropped it, holding the rest itself.
    let me = lazy.stream().local_addr().unwrap();
    let kernel = server_side(server.port(), me).unwrap().unsent
        + client_side(me, server.port()).unwrap().unread;
    let notice = b"* you were dropped from the chat: not reading\n";
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    lazy.stream().set_read_timeout(Some(PATIENCE)).unwrap();
    while !got.ends_with(notice) {
        let n = lazy.stream().read(&mut buf).unwrap();
        assert!(n > 0, "closed before the notice");
        got.extend_from_slice(&buf[..n]);
    }
    let before_notice = (got.len() - notice.len()) as u64;
    let held_by_worker = before_notice - kernel;
    // Just past 64 KiB (the high water, then one more line at most): not a few bytes, and not
    // everything it was sent.
    assert!(
        (48 * 1024..68 * 1024).contains(&held_by_worker),
        "the worker held {held_by_worker} bytes for it (kernel {kernel}, all {before_notice})"
    );
}

#[test]
fn a_shell_client_that_resets_while_its_input_waits_costs_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let server = shell_server(dir.path(), &["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let mut c = server.connect();
    open_shell(&mut c);
    // A shell that reads nothing, then more input than the pty and the worker take: the worker
    // stops reading the client (its input high water).
    c.send(b"exec sleep 60\n");
    let flood = vec![b'x'; 512 * 1024];
    c.stream()
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = c.stream().write_all(&flood);
    // Reset, not closed: the worker is told by a hang-up event while it is not reading.
    reset_on_close(c.stream());
    drop(c);
    let used = cpu_ticks_over_a_second(worker);
    assert!(
        used < 30,
        "worker used {used} ticks of CPU in 1 s after a reset"
    );
    wait_until("the session to end", PATIENCE, || {
        server.status()["slots"][0]["open"] == 0
    });
}

/// Every byte sent so far on a fresh one-worker server, as its counters must show.
fn wait_bytes_in(server: &Server, sent: usize) {
    wait_until(&format!("bytes_in to reach {sent}"), PATIENCE, || {
        server.status()["total"]["bytes_in"] == sent as u64
    });
}

#[test]
fn a_shell_gets_every_byte_typed_faster_than_it_reads_and_each_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = shell_server(dir.path(), &["--workers", "1"]);
    let mut c = server.connect();
    open_shell(&mut c);
    let mut sent = "USER ari\nPASS s3cret\nSHELL 24 80\n".len();
    let quiet = "stty -echo; echo ready-$((1+1))\n";
    c.send(quiet.as_bytes());
    sent += quiet.len();
    c.until("ready-2");
    // The shell reads nothing until told, then counts what it was typed.
    let go = dir.path().join("go");
    let command = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; wc -c; echo end-$((2+3))\n",
        go.display()
    );
    c.send(command.as_bytes());
    sent += command.len();
    let flood = format!("{}\n", "x".repeat(63)).repeat(8192);
    let mut writer = c.stream().try_clone().unwrap();
    writer.set_write_timeout(Some(PATIENCE)).unwrap();
    let typing = std::thread::spawn(move || writer.write_all(flood.as_bytes()).map(|()| writer));
    // More than the pty and the worker's input buffer take: the worker stops reading the client.
    let me = c.stream().local_addr().unwrap();
    wait_until("the worker to stop reading the client", PATIENCE, || {
        server_side(server.port(), me).is_some_and(|s| s.unread > 64 * 1024)
    });
    fs::write(&go, "").unwrap();
    let mut writer = typing.join().unwrap().expect("the flood was taken");
    sent += 8192 * 64;
    writer.write_all(b"\x04").unwrap(); // end of input, at the start of a line
    sent += 1;
    let out = c.until("end-5");
    assert!(out.contains(&(8192 * 64).to_string()), "{out:?}");
    wait_bytes_in(&server, sent);
}

#[test]
fn a_shell_that_writes_faster_than_its_client_reads_is_paused_not_spun() {
    let dir = tempfile::tempdir().unwrap();
    let server = shell_server(dir.path(), &["--workers", "1"]);
    let worker = server.ready_pids()[0];
    let mut c = server.connect();
    open_shell(&mut c);
    c.send(b"PS1=''; stty -echo; echo quiet-$((2*2))\n");
    c.until("quiet-4\r\n");
    c.send(b"yes\n");
    // The client reads nothing: its socket fills, then the worker's output high water.
    let me = c.stream().local_addr().unwrap();
    wait_until("the client's socket to fill", PATIENCE, || {
        let full = client_side(me, server.port()).is_some_and(|s| s.unread > 64 * 1024);
        full && server_side(server.port(), me).is_some_and(|s| s.unsent > 0)
    });
    // Loopback buffers grow as they fill: until both ends' queues stand still for a while,
    // the worker is still relaying the shell's output, which is work, not spinning.
    let (mut last, mut since) = ((0, 0), std::time::Instant::now());
    wait_until("the flow to stop", PATIENCE, || {
        let now = (
            client_side(me, server.port()).map_or(0, |s| s.unread),
            server_side(server.port(), me).map_or(0, |s| s.unsent),
        );
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
        since.elapsed() >= Duration::from_millis(300)
    });
    let used = cpu_ticks_over_a_second(worker);
    assert!(used < 30, "worker used {used} ticks of CPU in 1 s");
    let rss = rss_kib(worker);
    assert!(rss < 16 * 1024, "worker holds {rss} KiB");
    // Reading again lets the shell go on: a few MiB of its output, then it stops when told.
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < 4 << 20 {
        let n = c.stream().read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        let odd = buf[..n].iter().position(|b| !b"y\r\n".contains(b));
        assert!(odd.is_none(), "not yes: {:?}", text(&buf[..n.min(80)]));
        got += n;
    }
    c.send(b"\x03");
    c.send(b"echo stopped-$((3*3))\n");
    c.until("stopped-9");
}

#[test]
fn a_shell_that_ignores_hangups_is_ended_with_its_client_though_a_run_ended_before() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    script(
        bin.path(),
        "waiter",
        &format!("while [ ! -e {} ]; do sleep 0.05; done", go.display()),
    );
    let server = shell_server(
        dir.path(),
        &[
            "--workers",
            "1",
            "--allow-run",
            bin.path().to_str().unwrap(),
        ],
    );
    let mut c = server.connect();
    login(&mut c, "ari");
    assert_eq!(c.ask("PASS s3cret"), "OK pass accepted");
    let run: i32 = c
        .ask("RUN waiter")
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c.ask("SHELL 24 80"), "OK shell");
    // The shell becomes a program that ignores the hang-up of its terminal.
    c.send(b"trap '' HUP; echo $$ is-me; exec sleep 120\n");
    let out = c.until(" is-me\r\n");
    let shell: i32 = out
        .split(" is-me\r\n")
        .next()
        .and_then(|s| s.rsplit(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    wait_until("the shell to become sleep", PATIENCE, || {
        fs::read_to_string(format!("/proc/{shell}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    // The session's RUN process ends and is reaped while the shell runs.
    fs::write(&go, "").unwrap();
    wait_until("the RUN process to be reaped", PATIENCE, || {
        !Path::new(&format!("/proc/{run}")).exists()
    });
    drop(c);
    wait_until("the shell to be ended and reaped", PATIENCE, || {
        !Path::new(&format!("/proc/{shell}")).exists()
    });
    let log = server.log_text();
    assert!(
        log.contains(&format!(
            "shell end pid {shell} for user ari (killed by SIGKILL)"
        )),
        "{log}"
    );
}

#[test]
fn a_chat_member_that_goes_away_takes_nobody_else_with_it() {
    let server = Server::start(&["--workers", "1"]);
    let mut members: Vec<Client> = ["ann", "bob", "cy"]
        .iter()
        .map(|name| {
            let mut c = server.connect();
            login(&mut c, name);
            assert!(c.ask("JOIN").starts_with("OK "));
            c
        })
        .collect();
    let cy = members.pop().unwrap();
    let [ann, bob] = &mut members[..] else {
        unreachable!()
    };
    assert_eq!(ann.line(), "* bob joined");
    assert_eq!(ann.line(), "* cy joined");
    assert_eq!(bob.line(), "* cy joined");
    drop(cy);
    assert_eq!(ann.line(), "* cy left");
    assert_eq!(bob.line(), "* cy left");
    assert!(ann.ask("SAY still here").starts_with("OK said "));
    assert_eq!(bob.line(), "* ann: still here");
    assert!(bob.ask("SAY me too").starts_with("OK said "));
    assert_eq!(ann.line(), "* bob: me too");
}
