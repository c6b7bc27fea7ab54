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
        // No session times out while the error count is watched.
        "--handshake-timeout",
        "600",
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
    wait_errors(&server, 1);

    // A header cut short by the end of the client's input is no header.
    let mut cut = Client::connect(server.addr);
    cut.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 42");
    cut.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        cut.line(),
        "ERR 400 expected a PROXY protocol header; closing"
    );
    assert_eq!(cut.rest(), "");
    wait_errors(&server, 2);
    // So is a binary header one byte short: the server does not make up the last byte.
    let mut short = Client::connect(server.addr);
    short.send(&v2_header([192, 0, 2, 9], 4242)[..27]);
    short.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        short.line(),
        "ERR 400 expected a PROXY protocol header; closing"
    );
    assert_eq!(short.rest(), "");
    wait_errors(&server, 3);
    // A connect-and-close with nothing said (a health check) just ends: no reply, no error.
    let quiet = Client::connect(server.addr);
    quiet.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let mut quiet = quiet;
    assert_eq!(quiet.rest(), "");
    // A last line without its line end, right after the header, is still a request.
    let mut last = Client::connect(server.addr);
    last.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 31337\r\nPING");
    last.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(last.line().starts_with("OK cserverd "));
    assert_eq!(last.line(), "OK PONG");
    assert_eq!(last.rest(), "");
    // Only the two sessions of the first clients stay open.
    wait_until("the last connections to close", PATIENCE, || {
        server.status()["total"]["open"] == 2
    });
    assert_eq!(server.status()["total"]["errors"], 3);
}

/// A v2 PROXY header naming `client`:`port` (TCP over IPv4, to 10.0.0.1:31337): 28 bytes.
fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&client);
    header.extend_from_slice(&[10, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&31337u16.to_be_bytes());
    header
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
    // Nothing is said to it before it speaks (the refusal comes after its bytes are read, so
    // the close is clean).
    let mut c = Client::connect(server.addr);
    let me = c.stream().local_addr().unwrap();
    wait_until("the worker to take the connection", PATIENCE, || {
        server.status()["total"]["open"] == 1
    });
    c.stream()
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let early = std::io::Read::read(&mut c.stream(), &mut [0u8; 64]);
    assert!(early.is_err(), "the server spoke first: {early:?}");
    c.stream().set_read_timeout(Some(PATIENCE)).unwrap();
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
    wait_errors(&server, 1);

    // One that says nothing and closes its side is refused too, not left waiting.
    let mut mute = Client::connect(server.addr);
    mute.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        mute.line(),
        "ERR 403 PROXY headers are taken only from trusted proxies (--proxy-from); closing"
    );
    assert_eq!(mute.rest(), "");
    wait_errors(&server, 2);
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

#[test]
fn a_wrong_secret_counts_against_the_client_the_header_names_not_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "ari:s3cret\n").unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = Server::start(&[
        "--workers",
        "1",
        "--secrets",
        secrets.to_str().unwrap(),
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
    ]);
    let via = |client: &str| {
        let mut c = Client::connect(server.addr);
        c.send(format!("PROXY TCP4 {client} 10.0.0.1 4242 31337\r\n").as_bytes());
        assert!(c.line().starts_with("OK cserverd "));
        // Requests before PASS: the client stays the one the header named.
        assert_eq!(c.ask("PING"), "OK PONG");
        assert_eq!(c.ask("USER ari"), "OK hello ari");
        c
    };
    assert_eq!(via("192.0.2.7").ask("PASS guess"), "ERR 401 wrong secret");
    // Another client behind the same proxy is not penalised for it.
    assert_eq!(via("192.0.2.8").ask("PASS s3cret"), "OK pass accepted");
    assert!(
        server.log_text().contains("PASS penalty for 192.0.2.7"),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_binary_header_arriving_in_pieces_is_waited_for_never_read_as_lines() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8",
    ]);
    // The v2 signature holds line ends and the word QUIT: read as lines, it would quit.
    let header = v2_header([192, 0, 2, 9], 4242);
    let mut c = Client::connect(server.addr);
    c.send(&header[..13]);
    // The worker has read the first piece before the rest comes.
    let me = c.stream().local_addr().unwrap();
    wait_until("the worker to read the first piece", PATIENCE, || {
        server.status()["total"]["bytes_in"] == 13
            && server_side(server.port(), me).is_some_and(|s| s.unread == 0)
    });
    c.send(&header[13..]);
    c.send(b"PING\n");
    assert!(c.line().starts_with("OK cserverd "));
    assert_eq!(c.line(), "OK PONG");
    assert_eq!(c.ask("USER pieces"), "OK hello pieces");
    assert_eq!(server.status()["slots"][0]["last_client"], "192.0.2.9:4242");
}
