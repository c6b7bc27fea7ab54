//! Man pages and shell completions, generated from the same clap definitions the programs parse
//! with, so they cannot drift from the real options. `make docs` writes them under
//! `target/man/` and `target/completions/`.

use std::fs;
use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::client::ClientArgs;
use crate::config::ServerArgs;
use crate::ctl::CtlArgs;

/// The three programs' command definitions.
pub fn commands() -> Vec<clap::Command> {
    vec![
        ServerArgs::command(),
        ClientArgs::command(),
        CtlArgs::command(),
    ]
}

/// Writes `<man_dir>/<program>.1` for each program (and one page per cserverctl subcommand),
/// and bash, zsh and fish completions into `completion_dir`. Returns the files written.
pub fn write_all(man_dir: &Path, completion_dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    fs::create_dir_all(man_dir)?;
    fs::create_dir_all(completion_dir)?;
    let mut written = Vec::new();
    for cmd in commands() {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        let name = cmd.get_name().to_string();
        let path = man_dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        page.extend_from_slice(sections(&name).as_bytes());
        fs::write(&path, page)?;
        written.push(path);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_name = format!("{name}-{}", sub.get_name());
            let path = man_dir.join(format!("{sub_name}.1"));
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone())
                .title(sub_name)
                .render(&mut page)?;
            fs::write(&path, page)?;
            written.push(path);
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            written.push(clap_complete::generate_to(
                shell,
                &mut cmd,
                &name,
                completion_dir,
            )?);
        }
    }
    Ok(written)
}

/// Roff for `.TP` items: (term, text).
fn items(title: &str, intro: &str, rows: &[(&str, &str)]) -> String {
    let mut roff = format!(".SH {title}\n");
    if !intro.is_empty() {
        roff.push_str(&format!("{intro}\n"));
    }
    for (term, text) in rows {
        roff.push_str(&format!(".TP\n\\fB{term}\\fR\n{text}\n"));
    }
    roff
}

/// Examples: (what, command).
fn examples(rows: &[(&str, &str)]) -> String {
    let mut roff = String::from(".SH EXAMPLES\n");
    for (what, command) in rows {
        roff.push_str(&format!(
            ".PP\n{what}\n.PP\n.RS 4\n.nf\n{command}\n.fi\n.RE\n"
        ));
    }
    roff
}

fn see_also(others: &[&str]) -> String {
    let list: Vec<String> = others.iter().map(|o| format!("\\fB{o}\\fR(1)")).collect();
    format!(
        ".SH SEE ALSO\n{}\n.PP\nThe README of the source tree: the protocol, the log records, the security model.\n",
        list.join(", ")
    )
}

/// What a page adds after the options: the sections an operator looks for.
fn sections(program: &str) -> String {
    let board = "/dev/shm/cserverd-HOST-PORT.scoreboard";
    match program {
        "cserverd" => [
            crate::phase::man_section(),
            items(
                "EXIT STATUS",
                "",
                &[
                    ("0", "Stopped by a signal (TERM, INT, QUIT), or --check found the configuration good."),
                    ("1", "A start-up problem: a file it names (log, pid file, users, secrets) refused or unwritable, the port in use, a live server's pid file or scoreboard."),
                    ("2", "A bad option or CSERVERD_ variable."),
                ],
            ),
            items(
                "FILES",
                "",
                &[
                    ("/tmp/myserver.log", "The log (--log): one O_APPEND file every process writes whole records to; reopened on USR1."),
                    (board, "The scoreboard (--stats-file): one slot of counters per worker, read by cserverctl status."),
                    ("--pid-file PATH", "The master's pid, for cserverctl and init systems; removed at a clean stop."),
                    ("--users, --secrets", "Who may log in, and the secrets PASS compares (owner-only)."),
                ],
            ),
            items(
                "ENVIRONMENT",
                "",
                &[
                    ("CSERVERD_<OPTION>", "Any option but --check (upper case, - as _); the command line beats it."),
                    ("NOTIFY_SOCKET", "Under systemd (Type=notify): READY, RELOADING, STOPPING and the status line are sent there; children never see it."),
                    ("SHELL", "The shell SHELL and rembash sessions start (default /bin/bash)."),
                    ("LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES", "systemd socket activation: the sockets handed as descriptors 3... are served instead of binding; each name is the protocol it speaks (cserver, chat, reverse, procman, rembash; none: cserver)."),
                ],
            ),
            examples(&[
                ("Eight workers, the log in /tmp:", "cserverd --workers 8 --log /tmp/myserver.log"),
                ("The seeds' protocols on their own ports:", "cserverd --listen 9090=reverse --listen 6969=chat --listen '[::1]:6969=chat'"),
                ("Check a configuration without starting:", "cserverd --check --users /etc/cserverd/users"),
                ("Count the messages received and completed:", "grep -c ' recvd message \"' /tmp/myserver.log\ngrep -c ' -- completed req \"' /tmp/myserver.log"),
            ]),
            see_also(&["cclient", "cserverctl", "cserverctl-status"]),
        ]
        .concat(),
        "cclient" => [
            items(
                "INTERACTIVE MODE",
                "Without --threads, cclient connects to --host/--port and reads lines, with line editing and history on a terminal (PASS lines are not kept). Local commands:",
                &[
                    ("connect [host [port]]", "Close the connection and open one."),
                    ("disconnect", "Close the connection."),
                    ("exit, Ctrl-D", "Quit; piped input ends the same way, after the replies to what was sent."),
                    ("SHELL", "After USER and PASS on a server with --allow-shell: a remote login shell, the terminal in raw mode until it ends."),
                    ("other lines", "Sent to the server as typed; <name>:<text> as a session's first line is the seed client's one-line MSG."),
                ],
            ),
            items(
                "SIGNALS",
                "",
                &[
                    ("INT", "A load run stops sending, lets the requests under way finish, prints the summary with interrupted, exits 130. At the interactive prompt Ctrl-C drops the line being typed."),
                    ("TERM, HUP", "End cclient (143, 129); in a SHELL session the terminal mode is restored first."),
                    ("PIPE", "A closed stdout or stderr ends cclient quietly, as any filter."),
                ],
            ),
            items(
                "EXIT STATUS",
                "",
                &[
                    ("0", "Every request planned was sent and acknowledged and the server's total agrees (piped interactive input: every line sent was answered)."),
                    ("1", "Requests failed or were not sent, the total disagrees (mismatch), or the run could not start; piped interactive input: could not connect, or the server closed with requests unanswered."),
                    ("2", "A bad option."),
                    ("3", "The server's total could not be read after the run (unverifiable)."),
                    ("130", "Interrupted by SIGINT."),
                ],
            ),
            items(
                "FILES",
                "",
                &[
                    ("--acks FILE", "The text of every acknowledged message, one a line."),
                    ("--histogram FILE", "The latency distribution, HdrHistogram percentile format (.hgrm, ms)."),
                    ("--pass-file FILE", "The PASS secret, on its first line."),
                ],
            ),
            examples(&[
                ("The seed workload, checked against the server's count:", "cclient --threads 1000 --user arijort"),
                ("Ten seconds open loop at 20,000 requests a second, the distribution kept:", "cclient --threads 100 --rate 20000 --duration 10 --histogram run.hgrm"),
                ("Against a server shared with other clients:", "cclient --threads 50 --requests 100 --verify at-least"),
                ("Behind a PROXY-protocol server with secrets:", "cclient --threads 10 --proxy-protocol v2 --pass-file ~/.cserver-secret"),
                ("One request from a script:", "printf 'USER ari\\nMSG hello\\n' | cclient --port 31337"),
            ]),
            see_also(&["cserverd", "cserverctl"]),
        ]
        .concat(),
        "cserverctl" => {
            let rows: Vec<(String, String)> = crate::phase::SIGNALS
                .iter()
                .filter_map(|u| {
                    u.command.map(|c| {
                        let name = u.signal.as_str().trim_start_matches("SIG");
                        (format!("cserverctl {c}"), format!("Sends {name}: {}", u.effect))
                    })
                })
                .collect();
            let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            [
                items("SIGNALS", "What each command sends to the master (after checking the scoreboard names a live cserverd):", &rows),
                items(
                    "EXIT STATUS",
                    "",
                    &[
                        ("0", "Done; status: the master runs."),
                        ("1", "The command failed (reload refused, a wait timed out, no permission)."),
                        ("2", "A bad option."),
                        ("3", "status: not running (a stale scoreboard or pid file)."),
                        ("4", "status: unknown (no scoreboard or pid file, or one refused)."),
                    ],
                ),
                items(
                    "FILES",
                    "",
                    &[
                        (board, "Read with --host/--port (or --stats-file)."),
                        ("--pid-file PATH", "The master's pid file, instead of the scoreboard."),
                    ],
                ),
                examples(&[
                    ("Is it up (for scripts and monitoring):", "cserverctl status --port 31337 --json"),
                    ("Reread the users file and replace every worker:", "cserverctl reload --port 31337"),
                    ("Two more workers:", "cserverctl workers +2 --port 31337"),
                    ("Stop, waiting until it is gone:", "cserverctl stop --port 31337 --wait 30"),
                ]),
                see_also(&["cserverd", "cclient"]),
            ]
            .concat()
        }
        _ => String::new(),
    }
}
