//! The `procman` protocol as the process manager's users knew it: commands ended by a NUL byte,
//! no login, the seed's reply texts; programs only from `--allow-run`.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A client of the seed's kind: each command sent with one NUL byte after it.
struct Procman(Client);

impl Procman {
    fn connect(server: &Server) -> Procman {
        Procman(Client::connect(server.listener("procman")))
    }

    /// Sends `command` and reads `lines` reply lines.
    fn ask(&mut self, command: &str, lines: usize) -> Vec<String> {
        self.0.send(format!("{command}\0").as_bytes());
        (0..lines).map(|_| self.0.line()).collect()
    }

    fn one(&mut self, command: &str) -> String {
        self.ask(command, 1).remove(0)
    }
}

/// The worker reaped it: no such process at all any more (not even a zombie).
fn reaped(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_in(line: &str) -> i32 {
    line.strip_prefix("pid: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

#[test]
fn every_command_of_the_seed_answers_as_its_client_expects() {
    let bin = tempfile::tempdir().unwrap();
    script(bin.path(), "sleeper", "exec sleep 30");
    let outside = tempfile::tempdir().unwrap();
    script(outside.path(), "evil", "exit 0");
    let bin_dir = fs::canonicalize(bin.path()).unwrap();
    let server = Server::start(&[
        "--workers",
        "1",
        "--listen",
        "0=procman",
        "--allow-run",
        bin_dir.to_str().unwrap(),
    ]);
    let mut c = Procman::connect(&server);
    assert_eq!(c.one("list"), "No processes are running.");
    assert_eq!(c.one("list all"), "No processes have been run.");
    assert_eq!(c.one("run sleeper"), "Successful.");
    let absolute = bin_dir.join("sleeper");
    assert_eq!(c.one(&format!("RUN {}", absolute.display())), "Successful.");
    for outside in [
        "../evil".to_string(),
        "/bin/sh".to_string(),
        "nosuch".to_string(),
        outside.path().join("evil").display().to_string(),
    ] {
        assert_eq!(
            c.one(&format!("run {outside}")),
            "Invalid Directory.",
            "{outside}"
        );
    }
    assert_eq!(c.one("run"), "Incomplete command.");
    assert_eq!(c.one("run sleeper now"), "Too many arguments.");

    let running = c.ask("list", 2);
    for line in &running {
        assert!(line.ends_with(" name: sleeper"), "{running:?}");
    }
    let pids: Vec<i32> = running.iter().map(|l| pid_in(l)).collect();
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    for line in c.ask("LIST ALL", 2) {
        assert!(
            line.contains(" name: sleeper State: on Time Elapsed: 00:00:"),
            "{line}"
        );
    }
    for line in c.ask("list details", 2) {
        assert!(
            line.contains(" State: running Time Elapsed: 00:00:"),
            "{line}"
        );
        assert!(
            line.contains(" Started: 20") && line.ends_with(" Ended: -"),
            "{line}"
        );
    }
    assert_eq!(c.one("list everything"), "Invalid command.");

    // close by pid, then by name; what is gone is not found.
    assert_eq!(
        c.one(&format!("close {}", pids[0])),
        "Process sucessfully ended."
    );
    wait_until("the first sleeper to be reaped", PATIENCE, || {
        reaped(pids[0])
    });
    assert_eq!(
        c.ask("list", 1),
        [format!("pid: {} name: sleeper", pids[1])]
    );
    let ended = c.ask("list all", 2);
    assert!(ended[0].contains(" State: off Time Elapsed: "), "{ended:?}");
    assert!(!ended[0].contains('\0'), "{ended:?}");
    assert_eq!(c.one(&format!("close {}", pids[0])), "Process not found.");
    assert_eq!(c.one("close nosuch"), "Process not found.");
    assert_eq!(c.one("close nosuch all"), "Process not found.");
    assert_eq!(c.one("close sleeper sometimes"), "Invalid command.");
    assert_eq!(c.one("close"), "Incomplete command.");
    assert_eq!(c.one("run sleeper"), "Successful.");
    assert_eq!(
        c.ask("close sleeper all", 2),
        ["Process sucessfully ended.", "Process sucessfully ended."]
    );
    wait_until("every sleeper to be reaped", PATIENCE, || reaped(pids[1]));
    let left: Vec<i32> = c.ask("list all", 3)[2..]
        .iter()
        .map(|l| pid_in(l))
        .collect();
    wait_until("every sleeper to be reaped", PATIENCE, || {
        left.iter().all(|&p| reaped(p))
    });
    assert_eq!(c.one("list"), "No processes are running.");

    // Arithmetic as the seed's client expects it, checked.
    assert_eq!(c.one("add 1 2 39"), "42");
    assert_eq!(c.one("ADD 1+2,3"), "6");
    assert_eq!(c.one("mult 6*7"), "42");
    assert_eq!(c.one("div 85 2"), "42");
    assert_eq!(c.one("div -7 2"), "-3");
    assert_eq!(c.one("div 1 0"), "Divide by 0 error.");
    assert_eq!(
        c.one("add 9223372036854775807 1"),
        "Error: The result is beyond 64-bits."
    );
    assert_eq!(
        c.one("mult 99999999999999999999"),
        "Error: A number in the input is beyond 64-bits."
    );
    assert_eq!(c.one("add 12abc"), "Input must contain only numbers.");
    assert_eq!(c.one("mult"), "Incomplete command.");
    assert_eq!(c.one(""), "Nothing entered.");
    assert_eq!(c.one("frobnicate"), "Invalid command.");
    // A newline ends a command too (and a newline with its NUL is one end).
    c.0.send(b"add 2 2\nadd 3 3\n\0add 4 4\0");
    assert_eq!([c.0.line(), c.0.line(), c.0.line()], ["4", "6", "8"]);

    // exit: Goodbye, and the session's processes end with it.
    assert_eq!(c.one("run sleeper"), "Successful.");
    let pid = pid_in(&c.one("list"));
    assert_eq!(c.one("exit"), "Goodbye.");
    assert_eq!(c.0.rest(), "");
    wait_until("the process to end with its session", PATIENCE, || {
        reaped(pid)
    });
    // disconnect: closed without a word, the same.
    let mut d = Procman::connect(&server);
    assert_eq!(d.one("run sleeper"), "Successful.");
    let pid = pid_in(&d.one("list"));
    d.0.send(b"disconnect\0");
    assert_eq!(d.0.rest(), "");
    wait_until("the process to end with its session", PATIENCE, || {
        reaped(pid)
    });

    // Every command is a record naming the client.
    let log = server.log_text();
    for command in [
        "add 1 2 39",
        "run sleeper",
        "list all",
        "exit",
        "disconnect",
    ] {
        let record = format!(" procman \"{command}\" from client 127.0.0.1:");
        assert!(log.contains(&record), "no {record:?} in:\n{log}");
    }
}

#[test]
fn without_allow_run_nothing_runs() {
    let server = Server::start(&["--workers", "1", "--listen", "0=procman"]);
    let mut c = Procman::connect(&server);
    assert_eq!(c.one("run /bin/sh"), "Run is not enabled on this server.");
    assert_eq!(c.one("list"), "No processes are running.");
}
