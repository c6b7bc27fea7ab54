//! The trust boundary of the log (issue 11): whatever a client sends, it cannot forge a record
//! or fool the commands people count records with.
//!
//! - Unicode line breaks and C1 controls are escaped in the log.

mod common;
use common::*;

use cserver::log::never_raw;

#[test]
fn unicode_line_breaks_and_c1_controls_are_escaped_in_the_log() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.ask("USER eve"), "OK hello eve");
    let forged =
        "x\u{2028}2026.01.01 00:00:00.000000000 -- completed req \"y\u{2029}z\u{85}w\u{9b}2J\u{80}";
    assert_eq!(c.ask(&format!("MSG {forged}")), "OK 1 1");
    assert!(c.ask(&format!("REV {forged}")).starts_with("OK "));
    assert_eq!(c.ask("PING"), "OK PONG");

    let log = server.log_text();
    let raw: Vec<char> = log.chars().filter(|&c| c != '\n' && never_raw(c)).collect();
    assert!(raw.is_empty(), "raw {raw:?} in the log:\n{log}");
    // Lines as Python's str.splitlines() cuts them: as many as the records.
    let unicode_breaks = [
        '\n', '\r', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\u{85}', '\u{2028}', '\u{2029}',
    ];
    assert_eq!(
        log.matches(|c| unicode_breaks.contains(&c)).count(),
        log.matches('\n').count()
    );
    let escaped =
        "x\\xe2\\x80\\xa82026.01.01 00:00:00.000000000 -- completed req \\\"y\\xe2\\x80\\xa9z\
                   \\xc2\\x85w\\xc2\\x9b2J\\xc2\\x80";
    assert!(
        log.contains(&format!(" recvd message \"{escaped}\" from user eve\n")),
        "{log}"
    );
    assert!(
        log.contains(&format!(" -- completed req \"{escaped}\" on ")),
        "{log}"
    );
    assert!(
        log.contains(&format!(" REV \"{escaped}\" from user eve\n")),
        "{log}"
    );
    assert_eq!(message_counts(&parse_log(&log)), (1, 1));
}
