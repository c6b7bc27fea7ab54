//! Bytes from a client, as the worker sees them: framed by `LineBuf` (arriving in two reads, cut
//! where the first byte says), each line parsed and escaped for the log.
//!
//! Checked on every input: nothing panics; the two reads give the same frames as one; no line
//! is over the limit and the buffer stays bounded; `MSG` text is the end of its line; the escaped
//! text is one line of valid UTF-8, with no control character or Unicode line separator.
//!
//! Run from the repository root: `cargo fuzz run parse --sanitizer none`.

#![no_main]

use cserver::framing::{Frame, LineBuf};
use cserver::{log, protocol};
use libfuzzer_sys::fuzz_target;

/// Small, so that over-long lines and their discarding are reached with small inputs.
const MAX_LINE: usize = 64;

/// Frames of `chunks` fed one after another, then the end of input; every line parsed and
/// escaped. `None` stands for `Frame::TooLong`.
fn frames(chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut lb = LineBuf::new(MAX_LINE);
    let mut out = Vec::new();
    let mut escaped = Vec::new();
    let mut take = |lb: &mut LineBuf, out: &mut Vec<Option<Vec<u8>>>| {
        while let Some(frame) = lb.next_frame() {
            match frame {
                Frame::Line(line) => {
                    check_line(line, &mut escaped);
                    out.push(Some(line.to_vec()));
                }
                Frame::TooLong => out.push(None),
            }
        }
        assert!(
            lb.pending() <= MAX_LINE + 1,
            "{} bytes buffered",
            lb.pending()
        );
    };
    for chunk in chunks {
        lb.extend(chunk);
        take(&mut lb, &mut out);
    }
    lb.finish();
    take(&mut lb, &mut out);
    assert_eq!(lb.pending(), 0);
    out
}

fn check_line(line: &[u8], escaped: &mut Vec<u8>) {
    assert!(line.len() <= MAX_LINE && !line.contains(&b'\n'));
    match protocol::parse(line) {
        Ok(protocol::Command::Msg(text)) => assert!(!text.is_empty() && line.ends_with(text)),
        Ok(protocol::Command::Legacy { text, .. }) => assert!(line.ends_with(text)),
        _ => {}
    }
    escaped.clear();
    log::escape_into(escaped, line);
    let escaped = std::str::from_utf8(escaped).expect("escaped text is UTF-8");
    assert!(!escaped.chars().any(log::never_raw));
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let cut = input.len() * usize::from(first) / 255;
    let (a, b) = input.split_at(cut);
    assert_eq!(frames(&[a, b]), frames(&[input]), "split at {cut}");
});
