//! `--proxy-protocol`: the header a load balancer sends first names the real client, which the
//! log and the scoreboard keep; a connection without a valid header is refused.

mod common;

use common::*;

#[test]
fn the_proxy_header_names_the_client_and_is_required() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--proxy-protocol",
        "--proxy-from",
        "10.9.9.9,127.0.0.0/8",
    ]);
    // v1, then the session as usual (the greeting comes once the header is read).
    let mut c = Client::connect(server.addr);
    c.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 31337\r\nUSER real\n");
    assert!(c.line().starts_with("OK cserverd "));
    assert_eq!(c.line(), "OK hello real");
    assert_eq!(c.ask("MSG via a proxy"), "OK 1 1");
    let log = server.log_text();
    assert!(
        log.contains("connection from 192.0.2.7:4242 via 127.0.0.1:"),
        "{log}"
    );
    assert_eq!(server.status()["slots"][0]["last_client"], "192.0.2.7:4242");

    // v2 with an IPv6 client.
    let mut v2 = b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&[0x1f, 0x90, 0x7a, 0x69]);
    v2.extend_from_slice(b"PING\n");
    let mut c = Client::connect(server.addr);
    c.send(&v2);
    assert!(c.line().starts_with("OK cserverd "));
    assert_eq!(c.line(), "OK PONG");
    assert_eq!(
        server.status()["slots"][0]["last_client"],
        "[2001:db8::5]:8080"
    );

    // A plain client (no header) is refused and closed.
    let mut plain = Client::connect(server.addr);
    plain.send(b"USER sneaky\n");
    assert_eq!(
        plain.line(),
        "ERR 400 expected a PROXY protocol header; closing"
    );
    assert_eq!(plain.rest(), "");
    assert_eq!(message_counts(&parse_log(&server.log_text())), (1, 1));
}

#[test]
fn a_proxy_header_from_an_untrusted_peer_is_refused_and_the_real_peer_logged() {
    // Only 10.0.0.0/8 may send headers: this test's client (127.0.0.1) may not.
    let server = Server::start(&[
        "--workers",
        "1",
        "--proxy-protocol",
        "--proxy-from",
        "10.0.0.0/8",
    ]);
    let mut c = Client::connect(server.addr);
    let me = c.stream().local_addr().unwrap();
    c.send(b"PROXY TCP4 6.6.6.6 10.0.0.1 4242 31337\r\nUSER forged\nMSG as 6.6.6.6\n");
    assert_eq!(
        c.line(),
        "ERR 403 PROXY headers are taken only from trusted proxies (--proxy-from); closing"
    );
    assert_eq!(c.rest(), "");
    wait_until("the refusal's record", PATIENCE, || {
        server.log_text().contains(&format!(
            "connection from {me} refused: not a trusted proxy"
        ))
    });
    let log = server.log_text();
    assert!(!log.contains("6.6.6.6"), "{log}");
    assert_eq!(message_counts(&parse_log(&log)), (0, 0));
    assert_ne!(server.status()["slots"][0]["last_client"], "6.6.6.6:4242");
}

#[test]
fn proxy_protocol_needs_the_trusted_proxies_named() {
    let out = std::process::Command::new(CSERVERD)
        .args(["--port", "0", "--proxy-protocol"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--proxy-from"), "{err}");
    let out = std::process::Command::new(CSERVERD)
        .args([
            "--port",
            "0",
            "--proxy-protocol",
            "--proxy-from",
            "10.0.0.0/33",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an address or a network"), "{err}");
}
