//! cclient's interactive mode, driven in a real terminal: each test runs the binary in its own
//! tmux server (own socket in a temp dir), types with `send-keys` and polls `capture-pane` with
//! a deadline. The tmux server is killed at the end, also when a test fails (then the pane is
//! printed). Needs tmux (`apt-get install tmux`; `make test` installs it when missing).
//!
//! The pane runs a small non-interactive bash script around cclient that records `stty -g`
//! before and after it. Non-interactive on purpose: an interactive bash with job control puts
//! its own saved terminal mode back after a job killed by a signal, which would hide a cclient
//! that left the terminal raw.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One tmux server with one 120x40 pane running cclient inside a script.
struct Tmux {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Tmux {
    /// Starts `cclient <args>` in a fresh tmux server. The script around it writes
    /// `before.txt`/`after.txt` (`stty -g`), `cclient.pid`, and prints `cclient exited rc=N`.
    fn start(args: &[&str]) -> Tmux {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("tmux.sock");
        let mut cmd = format!("'{CCLIENT}'");
        for a in args {
            assert!(!a.contains('\''), "argument {a:?}");
            cmd.push_str(&format!(" '{a}'"));
        }
        let script = format!(
            "cd '{dir}'\n\
             stty -g > before.txt\n\
             sh -c 'echo $$ > cclient.pid; exec \"$0\" \"$@\"' {cmd}\n\
             echo \"cclient exited rc=$?\"\n\
             stty -g > after.txt\n\
             echo 'script done'\n\
             exec sleep 3600\n",
            dir = dir.path().display()
        );
        fs::write(dir.path().join("run.sh"), script).expect("write script");
        let tmux = Tmux { dir, socket };
        let out = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            &format!(
                "bash --norc --noprofile '{}'",
                tmux.path("run.sh").display()
            ),
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): install it with `apt-get install tmux`")
            })
    }

    /// The pane with its scrollback, wrapped lines joined.
    fn pane(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `cond(pane)` holds; returns that pane.
    fn wait(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pane = self.pane();
            if cond(&pane) {
                return pane;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some pane line, trimmed, equals `line`.
    /// Waits until a line of the pane is `line`, or `line` after a shell prompt (`/bin/sh`
    /// prints its `# ` prompt whenever it is ready, which may be after the echo of a command
    /// typed early, so the command's output can follow the prompt on its line).
    fn wait_line(&self, line: &str) -> String {
        self.wait(&format!("a line {line:?}"), |p| {
            p.lines().map(str::trim_end).any(|l| {
                l == line
                    || ["# ", "$ "]
                        .iter()
                        .any(|prompt| l.strip_prefix(prompt) == Some(line))
            })
        })
    }

    /// Waits until the pane contains `text`.
    fn wait_text(&self, text: &str) -> String {
        self.wait(&format!("{text:?}"), |p| p.contains(text))
    }

    /// Waits until the last non-empty line is the prompt holding `typed`.
    fn wait_prompt(&self, typed: &str) {
        let want = format!("# {typed}");
        self.wait(&format!("the prompt {:?}", want.trim_end()), |p| {
            last_line(p) == want.trim_end()
        });
    }

    /// Types text literally (no Enter).
    fn type_text(&self, text: &str) {
        let out = self.cmd(&["send-keys", "-t", "t", "-l", text]);
        assert!(out.status.success(), "send-keys failed");
    }

    /// Sends keys by name (`Enter`, `Up`, `C-c`, ...).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        let out = self.cmd(&args);
        assert!(out.status.success(), "send-keys failed");
    }

    /// Types a line and presses Enter.
    fn enter(&self, line: &str) {
        self.type_text(line);
        self.keys(&["Enter"]);
    }

    /// Types a line at the prompt and waits until a line after its echo satisfies `cond`.
    fn ask(&self, line: &str, cond: impl Fn(&str) -> bool) -> String {
        let echo = format!("# {line}");
        let before = self.pane().lines().filter(|l| l.trim_end() == echo).count();
        self.enter(line);
        self.wait(&format!("a reply to {line:?}"), |p| {
            let lines: Vec<&str> = p.lines().collect();
            let echoes: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].trim_end() == echo)
                .collect();
            echoes.len() > before
                && lines[echoes[before] + 1..]
                    .iter()
                    .any(|l| cond(l.trim_end()))
        })
    }

    /// The terminal device of the pane (to look at its mode from outside).
    fn tty(&self) -> String {
        let out = self.cmd(&["display-message", "-p", "-t", "t", "#{pane_tty}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `stty -g` of the pane's terminal, now.
    fn stty_now(&self) -> String {
        let out = Command::new("stty")
            .args(["-g", "-F"])
            .arg(self.tty())
            .output()
            .expect("run stty");
        assert!(out.status.success(), "stty -F failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Waits for the script around cclient to finish; returns cclient's exit status line.
    fn wait_script_done(&self) -> String {
        // trim(): a terminal left raw (no CR on output) shifts these lines to the right.
        let pane = self.wait("the script's end", |p| {
            p.lines().any(|l| l.trim() == "script done")
        });
        pane.lines()
            .find(|l| l.contains("cclient exited rc="))
            .unwrap_or("")
            .trim()
            .to_string()
    }

    fn cclient_pid(&self) -> Pid {
        let mut pid = String::new();
        wait_until("cclient.pid", PATIENCE, || {
            pid = self.file("cclient.pid");
            !pid.is_empty()
        });
        Pid::from_raw(pid.parse().expect("pid"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- pane ----\n{}---- end of pane ----", self.pane());
        }
        let _ = self.cmd(&["kill-server"]);
    }
}

fn last_line(pane: &str) -> &str {
    pane.lines()
        .rev()
        .map(str::trim_end)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// A port on which nothing listens (bound a moment ago, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn prompt_connect_commands_history_disconnect_exit() {
    let server = Server::start(&["--workers", "1"]);
    let port = server.port().to_string();
    let dead = closed_port().to_string();
    let t = Tmux::start(&["--port", &dead]);
    // Nothing there: it says so and waits at the prompt.
    t.wait_text(&format!("cannot connect to 127.0.0.1:{dead}"));
    t.wait_prompt("");
    t.ask("PING", |l| l.starts_with("not connected"));

    t.ask(&format!("connect 127.0.0.1 {port}"), |l| {
        l.starts_with("OK cserverd ")
    });
    t.ask("USER ari", |l| l == "OK hello ari");
    t.ask("MSG hi", |l| l == "OK 1 1");
    t.wait_prompt("");

    // History: Up brings back the last line; Enter sends it again.
    t.keys(&["Up"]);
    t.wait_prompt("MSG hi");
    t.keys(&["Enter"]);
    t.wait_line("OK 2 2");
    t.keys(&["Up", "Up"]);
    t.wait_prompt("USER ari");
    // Ctrl-C drops the line being edited.
    t.keys(&["C-c"]);
    t.wait_prompt("");

    t.ask("disconnect", |l| {
        l.starts_with("disconnected from 127.0.0.1:")
    });
    let pane = t.ask("MSG after", |l| l.starts_with("not connected"));
    assert!(!pane.contains("OK 3 3"), "{pane}");
    t.enter("exit");
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
    assert_eq!(t.file("before.txt"), t.file("after.txt"), "terminal mode");
}

#[test]
fn ctrl_d_at_the_prompt_exits() {
    let server = Server::start(&["--workers", "1"]);
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    t.wait_text("OK cserverd ");
    t.wait_prompt("");
    t.keys(&["C-d"]);
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
    assert_eq!(t.file("before.txt"), t.file("after.txt"), "terminal mode");
}

/// Reads lines from a raw client until one satisfies `cond`.
fn read_until(c: &mut Client, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no {what}");
        let line = c.line();
        if cond(&line) {
            return line;
        }
    }
}

/// The worker pid a greeting names: `OK cserverd <version> worker <pid> ready`.
fn greeting_pid(greeting: &str) -> Option<i32> {
    match greeting.split(' ').collect::<Vec<_>>().as_slice() {
        ["OK", "cserverd", _version, "worker", pid, "ready"] => pid.parse().ok(),
        _ => None,
    }
}

#[test]
fn pushed_lines_show_up_without_garbling_the_line_being_typed() {
    // Two workers, ari and bob on different ones: the chat crosses workers both ways.
    let server = Server::start(&["--workers", "2"]);
    let workers = server.ready_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    // Connected at start, without a connect command.
    let pane = t.wait_text("OK cserverd ");
    let greetings: Vec<i32> = pane
        .lines()
        .filter(|l| l.starts_with("OK cserverd "))
        .map(|l| greeting_pid(l.trim_end()).unwrap_or_else(|| panic!("greeting {l:?}")))
        .collect();
    assert_eq!(greetings.len(), 1, "{pane}");
    let ari_worker = greetings[0];
    assert!(
        workers.contains(&ari_worker),
        "{ari_worker} not in {workers:?}"
    );
    t.wait_prompt("");
    t.ask("USER ari", |l| l == "OK hello ari");
    t.ask("JOIN", |l| l.starts_with("OK ") && l.ends_with(" joined"));

    // New connections go to the workers in turn: bob lands on the other one within a few
    // tries (the ones that land on ari's are closed before they log in).
    let mut bob = None;
    for _ in 0..10 {
        let mut c = Client::connect(server.addr);
        let greeting = c.line();
        let pid = greeting_pid(&greeting).unwrap_or_else(|| panic!("greeting {greeting:?}"));
        assert!(workers.contains(&pid), "{pid} not in {workers:?}");
        if pid != ari_worker {
            bob = Some(c);
            break;
        }
    }
    let mut bob = bob.expect("10 connections all went to ari's worker");
    assert_eq!(bob.ask("USER bob"), "OK hello bob");
    let joined = bob.ask("JOIN");
    let n: usize = joined
        .strip_prefix("OK ")
        .and_then(|r| r.strip_suffix(" joined"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("JOIN reply {joined:?}"));
    for _ in 0..n {
        let replayed = bob.line();
        assert!(replayed.starts_with("* "), "{replayed:?}");
    }
    t.wait_line("* bob joined");

    // Typed, not submitted.
    t.type_text("SAY partial input");
    t.wait_prompt("SAY partial input");
    bob.send(b"SAY hello from outside\n");
    read_until(&mut bob, "reply to SAY", |l| l.starts_with("OK "));
    let pane = t.wait_line("* bob: hello from outside");
    assert_eq!(
        last_line(&pane),
        "# SAY partial input",
        "the line being typed is still there, intact"
    );
    // Enter sends exactly what was typed.
    t.keys(&["Enter"]);
    let got = read_until(&mut bob, "ari's message", |l| l.starts_with("* ari"));
    assert_eq!(got, "* ari: partial input");
    t.wait("the reply to SAY", |p| {
        p.lines().any(|l| l.starts_with("OK said "))
    });
    t.ask("LEAVE", |l| l == "OK left");
    t.enter("exit");
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
}

#[test]
fn a_server_going_away_is_a_message_not_a_crash() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-timeout", "0.2"]);
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    t.wait_text("OK cserverd ");
    t.ask("USER ari", |l| l == "OK hello ari");
    t.type_text("MSG typed while it went");
    server.stop();
    let pane = t.wait_line("connection closed by server");
    assert_eq!(last_line(&pane), "# MSG typed while it went");
    t.keys(&["Enter"]);
    t.wait_line("not connected (use: connect <host> <port>)");
    t.wait_prompt("");
    t.enter("exit");
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
    assert_eq!(t.file("before.txt"), t.file("after.txt"), "terminal mode");
}

#[test]
fn a_refused_shell_is_just_printed() {
    let server = Server::start(&["--workers", "1"]);
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    t.wait_text("OK cserverd ");
    t.ask("USER ari", |l| l == "OK hello ari");
    t.ask("SHELL", |l| l.starts_with("ERR "));
    t.ask("MSG still here", |l| l == "OK 1 1");
    t.enter("exit");
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
}

/// A server with the shell enabled for ari (secret `s3cret`).
fn shell_server(dir: &Path) -> Server {
    let secrets = dir.join("secrets");
    fs::write(&secrets, "ari:s3cret\n").expect("write secrets");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).expect("chmod");
    Server::start(&[
        "--workers",
        "1",
        "--allow-shell",
        "--secrets",
        secrets.to_str().expect("path"),
    ])
}

/// Logs in as ari with PASS, opens the shell and waits until the remote shell answers.
fn open_shell(t: &Tmux) {
    t.wait_text("OK cserverd ");
    t.ask("USER ari", |l| l == "OK hello ari");
    t.ask("PASS s3cret", |l| l.starts_with("OK "));
    t.ask("SHELL", |l| l == "OK shell");
    t.enter("echo $((6*7))");
    t.wait_line("42");
}

#[test]
fn shell_runs_in_raw_mode_and_restores_the_terminal() {
    let files = tempfile::tempdir().expect("temp dir");
    let server = shell_server(files.path());
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    open_shell(&t);
    let before = t.file("before.txt");
    assert!(!before.is_empty());
    assert_ne!(t.stty_now(), before, "raw mode during the shell session");
    // The local terminal's size went with SHELL.
    t.enter("stty size");
    t.wait_line("40 120");
    // Ctrl-C is a byte for the remote shell, not the end of cclient.
    t.enter("sleep 31.7");
    // Once it is the terminal's foreground job (before that a ^C would reach the shell only).
    wait_until("sleep 31.7 in the foreground", PATIENCE, || {
        foreground_process("sleep\x0031.7\x00")
    });
    t.keys(&["C-c"]);
    t.enter("echo after-$((1+1))");
    t.wait_line("after-2");
    t.enter("exit");
    t.wait_text("shell session ended");
    t.wait_prompt("");
    // The shell's end closed the connection.
    t.ask("PING", |l| l.starts_with("not connected"));
    t.enter("exit");
    assert_eq!(t.wait_script_done(), "cclient exited rc=0");
    assert_eq!(before, t.file("after.txt"), "terminal mode");
}

/// True if a process with this command line exists and is its terminal's foreground job.
fn foreground_process(cmdline: &str) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let p = e.path();
        fs::read(p.join("cmdline")).is_ok_and(|c| c == cmdline.as_bytes())
            && fs::read_to_string(p.join("stat")).is_ok_and(|s| {
                // pid (comm) state ppid pgrp session tty_nr tpgid ...
                let f: Vec<&str> = s
                    .rsplit_once(')')
                    .map_or(vec![], |(_, r)| r.split_whitespace().collect());
                f.len() > 5 && f[2] == f[5]
            })
    })
}

fn signal_in_shell_mode_restores_the_terminal(sig: Signal) {
    let files = tempfile::tempdir().expect("temp dir");
    let server = shell_server(files.path());
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    open_shell(&t);
    let before = t.file("before.txt");
    assert_ne!(t.stty_now(), before, "raw mode during the shell session");
    kill(t.cclient_pid(), sig).expect("signal cclient");
    let status = t.wait_script_done();
    assert_eq!(status, format!("cclient exited rc={}", 128 + sig as i32));
    assert_eq!(before, t.file("after.txt"), "terminal mode after {sig}");
}

#[test]
fn sigterm_in_shell_mode_restores_the_terminal() {
    signal_in_shell_mode_restores_the_terminal(Signal::SIGTERM);
}

#[test]
fn sighup_in_shell_mode_restores_the_terminal() {
    signal_in_shell_mode_restores_the_terminal(Signal::SIGHUP);
}

#[test]
fn sigterm_at_the_prompt_restores_the_terminal() {
    let server = Server::start(&["--workers", "1"]);
    let t = Tmux::start(&["--port", &server.port().to_string()]);
    t.wait_text("OK cserverd ");
    t.wait_prompt("");
    t.type_text("half a line");
    t.wait_prompt("half a line");
    kill(t.cclient_pid(), Signal::SIGTERM).expect("signal cclient");
    assert_eq!(t.wait_script_done(), "cclient exited rc=143");
    assert_eq!(t.file("before.txt"), t.file("after.txt"), "terminal mode");
}

/// Without a terminal (piped input) the same commands work, and every reply to what was sent
/// is printed before cclient exits at the end of its input.
#[test]
fn piped_input_gets_every_reply() {
    let server = Server::start(&["--workers", "1"]);
    let mut child = Command::new(CCLIENT)
        .args(["--port", &server.port().to_string(), "--timeout", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cclient");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"USER ari\nMSG one\nMSG two\nPING\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| l.expect("line"))
        .collect();
    let want = ["OK hello ari", "OK 1 1", "OK 2 2", "OK PONG"];
    let got: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("OK ") && !l.starts_with("OK cserverd"))
        .collect();
    assert_eq!(got, want, "{lines:?}");
    // Only the server's lines on stdout: cclient's own messages are on stderr.
    assert!(lines.iter().all(|l| l.starts_with("OK ")), "{lines:?}");
    assert!(
        text(&out.stderr).contains("connected to 127.0.0.1:"),
        "{out:?}"
    );
}

/// Runs piped cclient against `port` with `input`; returns its output.
fn piped(port: u16, input: &[u8]) -> std::process::Output {
    let mut child = Command::new(CCLIENT)
        .args(["--port", &port.to_string(), "--timeout", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cclient");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[test]
fn piped_input_that_could_not_be_delivered_or_answered_exits_1() {
    // Nothing listening: said on stderr, status 1.
    let out = piped(closed_port(), b"PING\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("cannot connect to 127.0.0.1:"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // A server that greets, reads the requests and closes without answering them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mute = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"OK cserverd test ready\n").unwrap();
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut buf);
    });
    let out = piped(port, b"USER ari\nMSG lost\n");
    mute.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Every request answered, the server closing after QUIT: status 0.
    let server = Server::start(&["--workers", "1"]);
    let out = piped(server.port(), b"USER ari\nQUIT\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
