//! The shipped logrotate configuration, run for real (`logrotate -f`) under load: every record
//! is in the old file or the new one, none lost or torn, and afterwards nobody writes the old one.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn logrotate_rotates_under_load_without_losing_a_record() {
    let server = Server::start(&["--workers", "2"]);
    let dir = server.dir.path();
    // contrib/cserverd.logrotate with this test's paths, no compression, root as the owner.
    let shipped = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/cserverd.logrotate"
    ))
    .unwrap();
    let conf = shipped
        .replace(
            "/var/log/cserverd/cserverd.log",
            server.log.to_str().unwrap(),
        )
        .replace(
            "/run/cserverd/cserverd.pid",
            server.pid_file.to_str().unwrap(),
        )
        .replace("create 0640 cserverd cserverd", "create 0640 root root")
        .replace("    compress\n", "    nocompress\n");
    assert!(
        conf.contains("postrotate") && conf.contains("kill -USR1"),
        "{conf}"
    );
    let conf_path = dir.join("logrotate.conf");
    fs::write(&conf_path, conf).unwrap();

    let since = server.completed_count();
    let load = server.cclient_spawn(&["--threads", "40", "--duration", "3"]);
    server.wait_for_load(since, 50); // mid-run: check_rotation wants records on both sides
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(&conf_path)
        .output()
        .expect("logrotate (Debian package logrotate; make test installs it)");
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.check_rotation(&dir.join("server.log.1"), load);
}
