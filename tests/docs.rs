//! Man pages and completions come from the clap definitions, and `man -l` renders them.

use std::process::Command;

use clap::CommandFactory;

#[test]
fn man_pages_and_completions_cover_every_option_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let (man, comp) = (dir.path().join("man"), dir.path().join("completions"));
    let files = cserver::docs::write_all(&man, &comp).unwrap();
    for name in [
        "cserverd.1",
        "cclient.1",
        "cserverctl.1",
        "cserverctl-status.1",
        "cserverctl-workers.1",
    ] {
        assert!(
            files.contains(&man.join(name)),
            "{name} not written: {files:?}"
        );
    }
    for name in [
        "cserverd.bash",
        "_cserverd",
        "cserverd.fish",
        "cclient.bash",
        "cserverctl.bash",
    ] {
        assert!(comp.join(name).is_file(), "{name}");
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(man.join("cserverd.1"))
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .expect("man (Debian package man-db; make test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8_lossy(&out.stdout);
    // The SIGNALS section, from the master's own signal table.
    assert!(page.contains("SIGNALS"), "{page}");
    for u in cserver::phase::SIGNALS {
        let name = u.signal.as_str().trim_start_matches("SIG");
        let line = page
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from SIGNALS: {page}"));
        if let Some(command) = u.command {
            assert!(line.contains(&format!("cserverctl {command}")), "{line}");
        }
    }
    let bash = std::fs::read_to_string(comp.join("cserverd.bash")).unwrap();
    // Every long option of cserverd is in its page and its completion.
    for arg in cserver::config::ServerArgs::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                page.contains(&format!("--{long}")),
                "--{long} missing from the man page"
            );
            assert!(
                bash.contains(&format!("--{long}")),
                "--{long} missing from the completion"
            );
        }
    }
}

/// `man -l` output of a page.
fn rendered(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .expect("man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_page_answers_an_operators_questions() {
    let dir = tempfile::tempdir().unwrap();
    let (man, comp) = (dir.path().join("man"), dir.path().join("completions"));
    cserver::docs::write_all(&man, &comp).unwrap();
    for (program, extra) in [
        ("cserverd", &["SIGNALS"][..]),
        ("cclient", &["INTERACTIVE MODE", "SIGNALS"][..]),
        ("cserverctl", &["SIGNALS"][..]),
    ] {
        let page = rendered(&man.join(format!("{program}.1")));
        for section in [
            "NAME",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "FILES",
            "EXAMPLES",
            "SEE ALSO",
        ]
        .iter()
        .chain(extra)
        {
            assert!(
                page.lines().any(|l| l.trim_end() == *section),
                "{program}.1 has no {section} section:\n{page}"
            );
        }
        // NAME: "cclient - what it is", not "cclient - cclient: what it is".
        let name = page
            .lines()
            .skip_while(|l| l.trim() != "NAME")
            .nth(1)
            .unwrap_or_default();
        assert!(
            !name.contains(&format!("{program}:")),
            "{program}.1 NAME repeats itself: {name}"
        );
    }
    // cclient --help tells of the interactive mode and the exit statuses.
    let help = Command::new(env!("CARGO_BIN_EXE_cclient"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("interactive client"), "{help}");
    assert!(help.contains("Exit status: 0"), "{help}");
}

#[test]
fn the_readme_lists_every_cclient_option_and_exit_status() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## cclient\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a cclient section");
    for arg in cserver::client::ClientArgs::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            if ["help", "version"].contains(&long) {
                continue;
            }
            assert!(
                section.contains(&format!("--{long}")),
                "--{long} missing from the README's cclient section"
            );
        }
    }
    for status in cserver::client::report::status::ALL {
        assert!(
            section.contains(&format!("| {status} |")),
            "exit status {status} missing from the README's cclient table"
        );
    }
}
