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
    assert_eq!(sample(&body, "cserverd_requests_total"), 300);
    assert_eq!(
        sample(&body, "cserverd_requests_total"),
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
