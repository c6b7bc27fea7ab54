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
