//! `--metrics-addr`: a real HTTP client (curl) scrapes /metrics from the master, and the
//! counters match `cserverctl status`.

mod common;

use std::process::Command;

use common::*;

fn curl(url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", url])
        .output()
        .expect("curl (Debian package curl; make test installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn sample(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}")) as u64
}

#[test]
fn curl_scrapes_counters_that_match_the_scoreboard() {
    let server = Server::start(&["--workers", "2", "--metrics-addr", "127.0.0.1:0"]);
    let log = server.log_text();
    let url = log
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let (ok, summary) = server.cclient(&["--threads", "100", "--requests", "3"]);
    assert!(ok.success(), "{summary}");

    let (head, body) = curl(&url);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let status = server.status();
    assert_eq!(
        sample(&body, r#"cserverd_requests_total{protocol="cserver"}"#),
        300
    );
    assert_eq!(
        sample(&body, r#"cserverd_requests_total{protocol="cserver"}"#),
        status["total"]["requests"].as_u64().unwrap()
    );
    assert_eq!(
        sample(&body, "cserverd_accepted_connections_total"),
        status["total"]["accepted"].as_u64().unwrap()
    );
    assert_eq!(sample(&body, "cserverd_workers"), 2);
    assert!(body.contains("# TYPE cserverd_requests_total counter"));

    let (head, _) = curl(&url.replace("/metrics", "/other"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A scraper that connects and says nothing holds nothing: the next scrape works.
    let idle = std::net::TcpStream::connect(
        url.trim_start_matches("http://")
            .trim_end_matches("/metrics"),
    )
    .unwrap();
    let (head, _) = curl(&url);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(idle);
}

/// The metrics URL the master's `Server init` record names.
fn metrics_url(server: &Server) -> String {
    let log = server.log_text();
    log.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string()
}

#[test]
fn one_metrics_address_per_server_kept_across_an_upgrade() {
    let server = Server::start(&["--workers", "1", "--metrics-addr", "127.0.0.1:0"]);
    let url = metrics_url(&server);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    // A second server given the same address does not start (no SO_REUSEPORT sharing).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CSERVERD)
        .args(["--port", "0", "--metrics-addr", &addr, "--log"])
        .arg(dir.path().join("log"))
        .arg("--stats-file")
        .arg(dir.path().join("sb"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")) && err.contains("in use"),
        "{err}"
    );
    // An upgrade's new master serves the same address: the old one hands its socket down.
    let old = server.pid().as_raw();
    server.signal(nix::sys::signal::Signal::SIGUSR2);
    wait_until("the old master to hand over and exit", PATIENCE, || {
        !alive(old)
    });
    let (head, body) = curl(&url);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let master = body
        .lines()
        .find_map(|l| l.strip_prefix("cserverd_info{master_pid=\""))
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no cserverd_info in\n{body}"))
        .to_string();
    assert_ne!(master, old.to_string(), "{body}");
}
