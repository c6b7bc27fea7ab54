//! Property tests for the pure parts of the request path: framing, parsing and log escaping.
//!
//! - `framing::LineBuf`: any split of any bytes gives the same frames as the bytes in one piece,
//!   and those are the frames of a tiny reference model; buffered bytes stay bounded by the limit.
//! - `protocol::parse`: never panics, verbs are case-insensitive, `MSG <t>` carries `t` unchanged.
//! - `log::escape_into`: one line of valid UTF-8 (no control character, no Unicode line
//!   separator) that cannot close its quotes, and reversible.
//!
//! Case counts are modest so that `cargo test --test properties` takes seconds in debug mode;
//! `PROPTEST_CASES=10000 cargo test --release --test properties` runs more.

use cserver::framing::{Frame, LineBuf};
use cserver::log::{escape_into, never_raw};
use cserver::protocol::{parse, Command, Refusal};
use proptest::prelude::*;
use proptest::sample::Index;

/// A frame as an owned value: `Some(line)` or `None` for [`Frame::TooLong`].
type Owned = Option<Vec<u8>>;

fn owned(frame: Frame<'_>) -> Owned {
    match frame {
        Frame::Line(line) => Some(line.to_vec()),
        Frame::TooLong => None,
    }
}

/// What one run of a [`LineBuf`] produced.
#[derive(Debug, PartialEq)]
struct Run {
    /// Frames while the input was arriving.
    fed: Vec<Owned>,
    /// Frames after `finish()` (the input ended).
    finished: Vec<Owned>,
}

/// Feeds `chunks` one after another, taking every frame after each, and checks the memory bound
/// on the way: after a chunk is appended at most `max_line + 1` old bytes plus that chunk are
/// buffered, and once the frames are taken at most `max_line + 1` bytes (a partial line of
/// `max_line` bytes and a `\r` that may still turn out to be its CRLF) remain.
fn run(max_line: usize, chunks: &[&[u8]]) -> Result<Run, TestCaseError> {
    let mut lb = LineBuf::new(max_line);
    let mut fed = Vec::new();
    for chunk in chunks {
        lb.extend(chunk);
        prop_assert!(
            lb.pending() <= max_line + 1 + chunk.len(),
            "pending {} after a chunk of {} (max_line {})",
            lb.pending(),
            chunk.len(),
            max_line
        );
        while let Some(frame) = lb.next_frame() {
            fed.push(owned(frame));
        }
        prop_assert!(
            lb.pending() <= max_line + 1,
            "pending {} after taking the frames (max_line {})",
            lb.pending(),
            max_line
        );
    }
    lb.finish();
    let mut finished = Vec::new();
    while let Some(frame) = lb.next_frame() {
        finished.push(owned(frame));
    }
    prop_assert_eq!(lb.pending(), 0, "bytes left after finish");
    Ok(Run { fed, finished })
}

/// The reference model: split at `\n`, drop one `\r` before it, a line over `max_line` is
/// `TooLong`; an unterminated last line counts when the input ends.
fn model(max_line: usize, input: &[u8]) -> Vec<Owned> {
    let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .map(|p| {
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            (p.len() <= max_line).then(|| p.to_vec())
        })
        .collect()
}

/// Bytes that stress a line splitter: random bytes, CR, LF, CRLF, NUL, invalid UTF-8, long runs,
/// and lines right at the limit (`max_line - 2 ..= max_line + 2` bytes, with or without `\r`).
fn framing_input(max_line: usize) -> impl Strategy<Value = Vec<u8>> {
    let special = prop::sample::select(vec![b'\n', b'\r', 0u8, 0xff, 0xc3, 0x80, b' ', b'x']);
    let piece = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..40),
        3 => special.prop_map(|b| vec![b]),
        2 => Just(b"\r\n".to_vec()),
        2 => prop::collection::vec(prop::sample::select(b"ab\r\n".to_vec()), 0..20),
        1 => (prop::sample::select(vec![b'x', b'\r', 0u8, 0xff]), 0..4 * max_line)
            .prop_map(|(b, n)| vec![b; n]),
        2 => (max_line - 2..=max_line + 2, any::<bool>()).prop_map(|(n, cr)| {
            let mut line = vec![b'a'; n];
            if cr {
                line.push(b'\r');
            }
            line.push(b'\n');
            line
        }),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// A limit, bytes for it, and cut points (turned into offsets by [`cut`]).
fn framing_case() -> impl Strategy<Value = (usize, Vec<u8>, Vec<Index>)> {
    (16usize..200).prop_flat_map(|max_line| {
        (
            Just(max_line),
            framing_input(max_line),
            prop::collection::vec(any::<Index>(), 0..16),
        )
    })
}

/// `input` split at the offsets `cuts` pick in `0..=input.len()`.
fn cut<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut prev = 0;
    for &a in &at {
        chunks.push(&input[prev..a]);
        prev = a;
    }
    chunks.push(&input[prev..]);
    chunks
}

/// `verb` with each letter's case taken from `upper` (cycled).
fn recase(verb: &str, upper: &[bool]) -> Vec<u8> {
    verb.bytes()
        .enumerate()
        .map(|(i, b)| {
            if upper.get(i % upper.len().max(1)).copied().unwrap_or(false) {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Undoes [`escape_into`]: `\\` `\"` `\n` `\r` `\t` `\xHH`; `None` for any other escape.
fn unescape(escaped: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b'"' => b'"',
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'x' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                (hi * 16 + lo) as u8
            }
            _ => return None,
        });
    }
    Some(out)
}

/// Client text for the escaper: raw bytes, valid UTF-8 (multi-byte too) and the bytes it must
/// escape, mixed.
fn escape_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(
            prop::sample::select(b"\\\"\n\r\t\x00\x1b\x7f\xff\xc3\xa9x".to_vec()),
            0..16
        ),
        // Unicode line breaks and C1 controls (NEL, CSI), and neighbours that stay raw.
        prop::collection::vec(
            prop::sample::select(vec![
                '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}', '\u{a0}', 'x'
            ]),
            0..8
        )
        .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes()),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// 256 cases a property, unless `PROPTEST_CASES` asks for another number.
fn config() -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(256)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_split_gives_the_frames_of_the_whole((max_line, input, cuts) in framing_case()) {
        let whole = run(max_line, &[&input])?;
        let mut all = whole.fed.clone();
        all.extend(whole.finished.iter().cloned());
        prop_assert_eq!(&all, &model(max_line, &input), "whole input vs model");

        let chunks = cut(&input, &cuts);
        prop_assert_eq!(&run(max_line, &chunks)?, &whole, "cut into {} chunks", chunks.len());

        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run(max_line, &bytes)?, &whole, "one byte at a time");
    }

    #[test]
    fn discarding_keeps_a_long_line_out_of_memory(
        max_line in 16usize..200,
        chunk in 1usize..5000,
        chunks in 1usize..40,
    ) {
        // One line far over the limit, then a good one: one TooLong, nothing of it kept.
        let mut lb = LineBuf::new(max_line);
        let mut too_long = 0;
        for _ in 0..chunks {
            lb.extend(&vec![b'y'; chunk]);
            while let Some(frame) = lb.next_frame() {
                prop_assert_eq!(frame, Frame::TooLong);
                too_long += 1;
            }
            prop_assert!(lb.pending() <= max_line + 1);
        }
        prop_assert_eq!(too_long, usize::from(chunk * chunks > max_line + 1));
        lb.extend(b"\nPING\r\n");
        let mut rest = Vec::new();
        while let Some(frame) = lb.next_frame() {
            rest.push(owned(frame));
        }
        let mut want = Vec::new();
        if too_long == 0 {
            want.push((chunk * chunks <= max_line).then(|| vec![b'y'; chunk * chunks]));
        }
        want.push(Some(b"PING".to_vec()));
        prop_assert_eq!(rest, want);
    }

    #[test]
    fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&line);
    }

    #[test]
    fn parse_never_panics_on_near_commands(
        verb in prop::sample::select(vec!["MSG", "USER", "PING", "QUIT", "STATS", "a:", ":", ""]),
        sep in prop::sample::select(vec!["", " ", "\t", "  ", ":"]),
        tail in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let line = [verb.as_bytes(), sep.as_bytes(), &tail].concat();
        let _ = parse(&line);
    }

    #[test]
    fn verbs_are_case_insensitive(
        verb in prop::sample::select(
            vec!["msg", "user", "ping", "quit", "stats", "help", "exit", "disconnect"],
        ),
        upper in prop::collection::vec(any::<bool>(), 1..12),
        lead in prop::sample::select(vec!["", " ", "\t "]),
        arg in prop::option::of((
            prop::sample::select(vec![" ", "\t"]),
            prop_oneof![
                "[A-Za-z0-9._-]{1,32}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..40),
            ],
        )),
    ) {
        let (sep, arg): (&[u8], Vec<u8>) = match &arg {
            Some((sep, arg)) => (sep.as_bytes(), arg.clone()),
            None => (b"", Vec::new()),
        };
        let line = [lead.as_bytes(), &recase(verb, &upper), sep, &arg].concat();
        let canonical = [lead.as_bytes(), verb.to_ascii_uppercase().as_bytes(), sep, &arg].concat();
        let got = parse(&line);
        prop_assert_eq!(&got, &parse(&canonical));
        match verb {
            "ping" => prop_assert_eq!(got, Ok(Command::Ping)),
            "quit" | "exit" | "disconnect" => prop_assert_eq!(got, Ok(Command::Quit)),
            "msg" if arg.is_empty() => prop_assert_eq!(got, Err(Refusal::Usage("MSG <text>"))),
            "msg" => prop_assert_eq!(got, Ok(Command::Msg(&arg))),
            "user" if arg.is_empty() => {
                prop_assert_eq!(got, Err(Refusal::Usage("USER <name>")))
            }
            _ => prop_assert!(got.is_ok() || got == Err(Refusal::BadName), "{:?}", got),
        }
    }

    #[test]
    fn msg_carries_its_text_unchanged(
        upper in prop::collection::vec(any::<bool>(), 3),
        sep in prop::sample::select(vec![" ", "\t"]),
        text in prop::collection::vec(any::<u8>().prop_filter("no LF", |&b| b != b'\n'), 1..200),
    ) {
        let line = [&recase("msg", &upper), sep.as_bytes(), &text].concat();
        prop_assert_eq!(parse(&line), Ok(Command::Msg(&text)));
    }

    #[test]
    fn escaped_text_is_one_quoted_utf8_line_and_reversible(text in escape_input()) {
        let mut out = b"prefix ".to_vec();
        escape_into(&mut out, &text);
        let escaped = &out[b"prefix ".len()..];

        prop_assert!(std::str::from_utf8(escaped).is_ok(), "not UTF-8: {:?}", escaped);
        prop_assert!(
            !String::from_utf8_lossy(escaped).chars().any(never_raw),
            "control character or line separator in {:?}",
            String::from_utf8_lossy(escaped)
        );
        for (i, _) in escaped.iter().enumerate().filter(|&(_, &b)| b == b'"') {
            let backslashes = escaped[..i].iter().rev().take_while(|&&b| b == b'\\').count();
            prop_assert!(
                backslashes % 2 == 1,
                "unescaped quote at {} in {:?}",
                i,
                String::from_utf8_lossy(escaped)
            );
        }
        prop_assert_eq!(unescape(escaped), Some(text));
    }
}
