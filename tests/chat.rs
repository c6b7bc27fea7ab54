//! The `chat` protocol as the chat hub seed's users knew it: `nc` or `telnet` to the port and
//! type. Every line goes to every other member on every worker, members of the cserver
//! protocol's `JOIN` included; newcomers see the history; telnet's Ctrl-C works.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use common::*;

/// A member typing in `nc`, as the seed's README shows.
struct Nc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Nc {
    fn connect(addr: SocketAddr) -> Nc {
        let mut child = Command::new("nc")
            .args([&addr.ip().to_string(), &addr.port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("nc (netcat-openbsd) is installed by make test");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Nc {
            child,
            stdin,
            lines,
        }
    }

    fn type_line(&mut self, line: &[u8]) {
        self.stdin.write_all(line).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("a line from the chat within the patience")
    }
}

impl Drop for Nc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the worker that recorded `<id>` joining.
fn worker_of(server: &Server, id: &str) -> String {
    let log = server.log_text();
    let record = log
        .lines()
        .find(|l| l.contains(&format!(" chat join \"{id}\" from client ")))
        .unwrap_or_else(|| panic!("no join record of {id} in:\n{log}"));
    record
        .split("-- server ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string()
}

#[test]
fn nc_members_and_a_join_member_see_each_other_across_workers() {
    let server = Server::start(&["--workers", "2", "--listen", "0=chat"]);
    let chat = server.listener("chat");
    let mut ann = server.connect();
    assert_eq!(ann.ask("USER ann"), "OK hello ann");
    assert_eq!(ann.ask("JOIN"), "OK 0 joined");

    // No login: a member from the first byte, shown the history (ann's arrival).
    let mut one = Nc::connect(chat);
    assert_eq!(one.line(), "ann connected!");
    assert_eq!(ann.line(), "* 1 joined");
    let mut two = Nc::connect(chat);
    assert_eq!(two.line(), "ann connected!");
    assert_eq!(two.line(), "1 connected!");
    assert_eq!(one.line(), "2 connected!");
    assert_eq!(ann.line(), "* 2 joined");
    // New connections go to the workers in turn: the two members are on different ones.
    if server.log_text().contains(&format!(
        "new connections of {chat} (chat) go to the listening sockets in turn"
    )) {
        assert_ne!(worker_of(&server, "1"), worker_of(&server, "2"));
    }

    one.type_line(b"hello");
    assert_eq!(two.line(), "1: hello");
    assert_eq!(ann.line(), "* 1: hello");
    assert!(ann.ask("SAY hi all").starts_with("OK said "));
    assert_eq!(one.line(), "ann: hi all");
    assert_eq!(two.line(), "ann: hi all");
    // Only printable text reaches the others: no escape sequence, no bell, no carriage return.
    two.type_line(b"\x1b[31mred\x07\r");
    assert_eq!(one.line(), "2: [31mred");
    assert_eq!(ann.line(), "* 2: [31mred");
    two.type_line(b"/nick bob");
    assert_eq!(two.line(), "you are now known as bob");
    assert_eq!(one.line(), "2 is now known as bob");
    assert_eq!(ann.line(), "* bob (was 2)");
    two.type_line(b"/nick not a name");
    assert_eq!(
        two.line(),
        "usage: /nick NAME (1 to 32 of A-Z a-z 0-9 . _ -)"
    );
    two.type_line(b"as bob");
    assert_eq!(one.line(), "bob: as bob");
    assert_eq!(ann.line(), "* bob: as bob");
    // The sender never got its own lines back: its next line is someone else's.
    drop(two);
    assert_eq!(one.line(), "bob disconnected!");
    assert_eq!(ann.line(), "* bob left");

    // A newcomer is shown the history, notices included, oldest first.
    let three = Nc::connect(chat);
    let history: Vec<String> = (0..9).map(|_| three.line()).collect();
    assert_eq!(
        history,
        [
            "ann connected!",
            "1 connected!",
            "2 connected!",
            "1: hello",
            "ann: hi all",
            "2: [31mred",
            "2 is now known as bob",
            "bob: as bob",
            "bob disconnected!",
        ]
    );
    assert_eq!(one.line(), "3 connected!");

    let log = server.log_text();
    for record in [
        "chat join \"1\" from client 127.0.0.1:",
        "chat \"hello\" from client 127.0.0.1:",
        "chat nick \"bob\" from client 127.0.0.1:",
        "chat leave \"bob\" from client 127.0.0.1:",
    ] {
        assert!(log.contains(record), "no {record:?} in:\n{log}");
    }
}

#[test]
fn a_newcomer_sees_the_last_100_events() {
    let server = Server::start(&["--workers", "1", "--listen", "0=chat"]);
    let chat = server.listener("chat");
    let mut talker = Client::connect(chat);
    for i in 0..120 {
        talker.send(format!("message {i}\n").as_bytes());
    }
    // Every one of them is in the hub before the newcomer comes.
    wait_until("120 messages recorded", PATIENCE, || {
        server.log_text().contains("chat \"message 119\"")
    });
    let mut newcomer = Client::connect(chat);
    let history: Vec<String> = (0..100).map(|_| newcomer.line()).collect();
    let expected: Vec<String> = (20..120).map(|i| format!("1: message {i}")).collect();
    assert_eq!(history, expected);
    // Nothing more was replayed: the next line is news.
    talker.send(b"news\n");
    assert_eq!(newcomer.line(), "1: news");
}

#[test]
fn telnet_users_chat_and_ctrl_c_discards_the_line_being_typed() {
    let server = Server::start(&["--workers", "1", "--listen", "0=chat"]);
    let chat = server.listener("chat");
    let mut watcher = Client::connect(chat);
    let session = format!("cserver-chat-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux").args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        text(&out.stdout)
    };
    let telnet = format!("telnet {} {}", chat.ip(), chat.port());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &telnet,
    ]);
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _kill = Kill(session.clone());
    assert_eq!(watcher.line(), "2 connected!");
    tmux(&["send-keys", "-t", &session, "hello from telnet", "Enter"]);
    assert_eq!(watcher.line(), "2: hello from telnet");
    // Typed, then Ctrl-C: telnet sends IAC IP and IAC DO TIMING-MARK and waits for the answer.
    tmux(&["send-keys", "-t", &session, "abandoned"]);
    tmux(&["send-keys", "-t", &session, "C-c"]);
    tmux(&["send-keys", "-t", &session, "after", "Enter"]);
    assert_eq!(watcher.line(), "2: after");
    // And the telnet user reads the others.
    watcher.send(b"to the telnet user\n");
    wait_until("the telnet user to see it", PATIENCE, || {
        tmux(&["capture-pane", "-p", "-t", &session]).contains("1: to the telnet user")
    });
}

/// A `JOIN` handled while its worker has not yet read a line another worker posted: the line
/// is in the history the `JOIN` replays, and is not delivered a second time after it.
#[test]
fn a_join_behind_its_workers_reading_of_the_hub_gets_each_line_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let server = Server::start(&["--workers", "2"]);
    let (mut member, worker) = server.client_on(None);
    let other = server
        .ready_pids()
        .into_iter()
        .find(|&p| p != worker)
        .unwrap();
    let (mut sayer, _) = server.client_on(Some(other));
    assert_eq!(sayer.ask("USER sayer"), "OK hello sayer");
    assert_eq!(sayer.ask("JOIN"), "OK 0 joined");
    assert_eq!(member.ask("USER member"), "OK hello member");
    // The member's JOIN waits in its stopped worker; the line is posted after it arrived.
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    member.send(b"JOIN\n");
    let me = member.stream().local_addr().unwrap();
    wait_until(
        "the JOIN to wait in the stopped worker's socket",
        PATIENCE,
        || server_side(server.port(), me).is_some_and(|s| s.unread > 0),
    );
    assert!(sayer.ask("SAY posted meanwhile").starts_with("OK said "));
    kill(Pid::from_raw(worker), Signal::SIGCONT).unwrap();
    let joined = member.line();
    let replayed: usize = joined.split(' ').nth(1).unwrap().parse().unwrap();
    let history: Vec<String> = (0..replayed).map(|_| member.line()).collect();
    assert!(
        history.iter().any(|l| l.contains("posted meanwhile")),
        "{joined} {history:?}"
    );
    // Nothing more before the reply to the next request: the line is not delivered again.
    assert_eq!(member.ask("PING"), "OK PONG");
}

/// Members of the chat listener behind a PROXY header (their join made once the header is
/// read) on two workers hear each other.
#[test]
fn members_behind_a_proxy_header_hear_each_other_across_workers() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--listen",
        "0=chat",
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
    ]);
    let chat = server.listener("chat");
    let join = |n: u8| {
        let mut c = Client::connect(chat);
        c.send(format!("PROXY TCP4 192.0.2.{n} 10.0.0.1 4242 80\r\n").as_bytes());
        wait_until("the member's join record", PATIENCE, || {
            server
                .log_text()
                .contains(&format!(" chat join \"{n}\" from client 192.0.2.{n}:4242"))
        });
        c
    };
    let mut first = join(1);
    let worker = worker_of(&server, "1");
    // Connections go to the workers in turn: one of the next few is on the other worker.
    let (n, mut other) = (2..=5)
        .map(|n| (n, join(n)))
        .find(|(n, _)| worker_of(&server, &n.to_string()) != worker)
        .expect("a member on the other worker");
    other.send(b"hello across\n");
    let heard = first.until(&format!("{n}: hello across"));
    assert!(heard.contains(&format!("{n} connected!")), "{heard}");
}

/// `--sync batch`: a member's replies held for a sync do not count against it, but what piles
/// up behind them is bounded: a chat flood past the bound while they wait drops the member.
#[test]
fn held_replies_and_a_chat_flood_behind_them_are_bounded() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--sync",
        "batch",
        "--sync-interval",
        "5000",
    ]);
    let mut member = server.connect();
    let mut sayer = server.connect();
    join_as_member_and_sayer(&mut member, &mut sayer);
    member.send(b"MSG held\n");
    wait_until("the MSG to be written", PATIENCE, || {
        server.status()["total"]["requests"] == 1
    });
    // 400 KiB of chat behind the held reply: more than the 64 KiB a member may have unsent
    // plus the 256 KiB of replies a connection may hold.
    let text = "x".repeat(1000);
    let mut said = 0;
    let mut notice = false;
    while said < 400 {
        sayer.send(format!("SAY {text}\n").as_bytes());
        let mut line = sayer.line();
        if line == "* member left (dropped: not reading)" {
            notice = true;
            line = sayer.line();
        }
        assert!(line.starts_with("OK said "), "{line}");
        said += 1;
    }
    let got = member.until("you were dropped from the chat: not reading");
    assert!(got.starts_with("OK 1 1\n"), "{}", &got[..40.min(got.len())]);
    assert!(notice, "the others were told");
}
