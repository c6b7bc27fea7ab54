//! Line framing: bytes in, lines out, the same lines for any split of the same bytes.
//!
//! A line ends at `\n`; one `\r` before it is dropped (CRLF). A line longer than the limit is
//! reported once as [`Frame::TooLong`] as soon as the limit is passed, and the rest of it, up to
//! and including its `\n`, is discarded without being buffered: memory stays bounded by the limit
//! whatever the client sends.

/// One framed unit.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its terminator.
    Line(&'a [u8]),
    /// A line passed the limit; its bytes are being discarded.
    TooLong,
}

/// Buffered input of one connection.
#[derive(Debug)]
pub struct LineBuf {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes before this offset (from `start`) are known to hold no `\n`.
    scanned: usize,
    /// Discarding the rest of an over-long line.
    discarding: bool,
    max_line: usize,
    /// The last line framed ended with `\r\n`.
    crlf: bool,
    /// A NUL byte ends a line too (the process manager's commands); `\n` then `\0` is one end.
    nul_ends: bool,
}

impl LineBuf {
    /// A buffer for lines of at most `max_line` bytes (terminator not counted).
    pub fn new(max_line: usize) -> LineBuf {
        LineBuf {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            discarding: false,
            max_line,
            crlf: false,
            nul_ends: false,
        }
    }

    /// From now on a NUL byte ends a line too, and a NUL right after a `\n` adds no empty line.
    pub fn end_lines_at_nul(&mut self) {
        self.nul_ends = true;
    }

    /// Where the first line end lies in `bytes`.
    fn line_end_in(&self, bytes: &[u8]) -> Option<usize> {
        if self.nul_ends {
            memchr::memchr2(b'\n', 0, bytes)
        } else {
            memchr::memchr(b'\n', bytes)
        }
    }

    /// Forgets the line being received (bytes after the last complete line): a telnet user's
    /// Ctrl-C or erase-line.
    pub fn drop_partial(&mut self) {
        let pending = &self.buf[self.start..];
        let keep = match (0..pending.len())
            .rev()
            .find(|&i| pending[i] == b'\n' || (self.nul_ends && pending[i] == 0))
        {
            Some(i) => self.start + i + 1,
            None => self.start,
        };
        self.buf.truncate(keep);
        self.scanned = self.scanned.min(keep - self.start);
        self.discarding = false;
    }

    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// The longest line allowed.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes buffered and not yet consumed.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Next frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        Some(match self.next_range()? {
            Some((start, end)) => Frame::Line(&self.buf[start..end]),
            None => Frame::TooLong,
        })
    }

    /// Next frame and the line end it came with (`\r\n` or `\n`, as the client sent it).
    pub fn next_frame_ended(&mut self) -> Option<(Frame<'_>, &'static [u8])> {
        let range = self.next_range()?;
        let end: &'static [u8] = if self.crlf { b"\r\n" } else { b"\n" };
        Some(match range {
            Some((start, stop)) => (Frame::Line(&self.buf[start..stop]), end),
            None => (Frame::TooLong, end),
        })
    }

    /// Where the next line lies in the buffer (`Some(None)` for one over the limit), or `None`
    /// when more bytes are needed.
    fn next_range(&mut self) -> Option<Option<(usize, usize)>> {
        loop {
            let unscanned = &self.buf[self.start + self.scanned..];
            match self.line_end_in(unscanned) {
                Some(pos) => {
                    let mut end = self.start + self.scanned + pos;
                    let line_start = self.start;
                    self.start = end + 1;
                    if self.nul_ends && self.buf[end] == b'\n' && self.buf.get(end + 1) == Some(&0)
                    {
                        self.start += 1;
                    }
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    self.crlf = false;
                    if end > line_start && self.buf[end - 1] == b'\r' {
                        end -= 1;
                        self.crlf = true;
                    }
                    if end - line_start > self.max_line {
                        return Some(None);
                    }
                    return Some(Some((line_start, end)));
                }
                None => {
                    self.scanned = self.buf.len() - self.start;
                    if self.discarding {
                        self.start = self.buf.len();
                        self.scanned = 0;
                        return None;
                    }
                    // Without a '\n' the line is at least this long; allow one byte for a '\r'.
                    if self.scanned > self.max_line + 1 {
                        self.discarding = true;
                        self.start = self.buf.len();
                        self.scanned = 0;
                        return Some(None);
                    }
                    return None;
                }
            }
        }
    }

    /// The bytes not yet framed (for a header that precedes the lines).
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drops `n` bytes from the front of what [`LineBuf::peek`] shows.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        self.scanned = 0;
    }

    /// Takes every byte not yet framed (the connection switches to raw bytes).
    pub fn take_pending(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.discarding = false;
        rest
    }

    /// True when a complete line (or the end of an over-long one) is buffered.
    pub fn has_complete_line(&self) -> bool {
        self.line_end_in(&self.buf[self.start..]).is_some()
    }

    /// The input ended: a last unterminated line becomes a complete one. Input that already
    /// ends in a complete line (lines not yet answered) gains nothing: no empty request.
    pub fn finish(&mut self) {
        let ended = match self.buf.last() {
            Some(&b'\n') => true,
            Some(&0) => self.nul_ends,
            _ => false,
        };
        if self.pending() > 0 && !self.discarding && !ended {
            self.buf.push(b'\n');
        }
    }

    /// Drops consumed bytes; frees a large buffer once it is empty.
    pub fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `chunks` fed one after another, as owned lines (`None` for TooLong).
    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        let mut lb = LineBuf::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lb.extend(c);
            while let Some(f) = lb.next_frame() {
                out.push(match f {
                    Frame::Line(l) => Some(l.to_vec()),
                    Frame::TooLong => None,
                });
            }
        }
        out
    }

    fn line(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn each_line_comes_with_the_end_it_was_sent_with() {
        let mut b = LineBuf::new(8);
        b.extend(b"crlf\r\nlf\n\r\n\n");
        let mut got = Vec::new();
        while let Some((frame, end)) = b.next_frame_ended() {
            match frame {
                Frame::Line(l) => got.push((l.to_vec(), end.to_vec())),
                Frame::TooLong => panic!("not too long"),
            }
        }
        assert_eq!(
            got,
            [
                (b"crlf".to_vec(), b"\r\n".to_vec()),
                (b"lf".to_vec(), b"\n".to_vec()),
                (b"".to_vec(), b"\r\n".to_vec()),
                (b"".to_vec(), b"\n".to_vec()),
            ]
        );
        // Over the limit: reported once, and the next line is whole again.
        b.extend(b"0123456789\nok\n");
        assert!(matches!(b.next_frame_ended(), Some((Frame::TooLong, _))));
        assert!(matches!(
            b.next_frame_ended(),
            Some((Frame::Line(b"ok"), b"\n"))
        ));
    }

    #[test]
    fn a_lost_line_is_dropped_whole_and_the_lines_before_it_stay() {
        let mut b = LineBuf::new(64);
        b.extend(b"kept\nhalf a li");
        b.drop_partial();
        b.extend(b"new\n");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"kept")));
        assert_eq!(b.next_frame(), Some(Frame::Line(b"new")));
        assert_eq!(b.next_frame(), None);
        // Dropped after it was looked at for a line end: the next bytes are looked at anew.
        let mut b = LineBuf::new(64);
        b.extend(b"a\nbcd");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"a")));
        assert_eq!(b.next_frame(), None);
        b.drop_partial();
        b.extend(b"ok\n");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"ok")));
        // Nothing complete: everything goes; an over-long line being discarded ends there too.
        let mut b = LineBuf::new(4);
        b.extend(b"far too long");
        assert_eq!(b.next_frame(), Some(Frame::TooLong));
        b.drop_partial();
        b.extend(b"ok\n");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"ok")));
        // With NUL ends, a NUL is the end of the last complete command.
        let mut b = LineBuf::new(64);
        b.end_lines_at_nul();
        b.extend(b"list\0ru");
        b.drop_partial();
        b.extend(b"add 1\0");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"list")));
        assert_eq!(b.next_frame(), Some(Frame::Line(b"add 1")));
    }

    #[test]
    fn a_nul_ends_a_line_when_asked_and_a_newline_then_nul_is_one_end() {
        let mut b = LineBuf::new(64);
        b.end_lines_at_nul();
        b.extend(b"list\0add 1 2\n\0exit\n");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"list")));
        assert_eq!(b.next_frame(), Some(Frame::Line(b"add 1 2")));
        assert_eq!(b.next_frame(), Some(Frame::Line(b"exit")));
        assert_eq!(b.next_frame(), None);
        // A NUL alone is an empty command; split reads change nothing.
        for split in 0..6 {
            let bytes = b"\0run x\0";
            let mut b = LineBuf::new(64);
            b.end_lines_at_nul();
            b.extend(&bytes[..split]);
            let mut frames = Vec::new();
            while let Some(Frame::Line(l)) = b.next_frame() {
                frames.push(l.to_vec());
            }
            b.extend(&bytes[split..]);
            while let Some(Frame::Line(l)) = b.next_frame() {
                frames.push(l.to_vec());
            }
            assert_eq!(
                frames,
                vec![b"".to_vec(), b"run x".to_vec()],
                "split at {split}"
            );
        }
        // Without it, a NUL is a byte of the line.
        let mut b = LineBuf::new(64);
        b.extend(b"a\0b\n");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"a\0b")));
        // The last command without its end still counts when the input ends.
        let mut b = LineBuf::new(64);
        b.end_lines_at_nul();
        b.extend(b"list\0exit");
        assert_eq!(b.next_frame(), Some(Frame::Line(b"list")));
        b.finish();
        assert!(b.has_complete_line());
        assert_eq!(b.next_frame(), Some(Frame::Line(b"exit")));
        let mut b = LineBuf::new(64);
        b.end_lines_at_nul();
        b.extend(b"list\0");
        b.finish();
        assert_eq!(b.next_frame(), Some(Frame::Line(b"list")));
        assert_eq!(b.next_frame(), None);
    }

    #[test]
    fn many_lines_in_one_read_and_crlf() {
        let got = frames(64, &[b"USER a\r\nMSG hi\nPING\r\n\npartial"]);
        assert_eq!(
            got,
            vec![line("USER a"), line("MSG hi"), line("PING"), line("")]
        );
    }

    #[test]
    fn every_split_gives_the_same_lines() {
        let input: &[u8] = b"USER arijort\r\nMSG hello world\nREV abc\r\r\nx\n";
        let whole = frames(64, &[input]);
        for cut in 0..=input.len() {
            for cut2 in cut..=input.len() {
                let got = frames(64, &[&input[..cut], &input[cut..cut2], &input[cut2..]]);
                assert_eq!(got, whole, "split at {cut},{cut2}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(frames(64, &bytes), whole);
    }

    #[test]
    fn over_long_line_is_reported_once_and_discarded() {
        let long = vec![b'x'; 100];
        let mut input = long.clone();
        input.extend_from_slice(b"\nPING\n");
        let whole = frames(10, &[&input]);
        assert_eq!(whole, vec![None, line("PING")]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(frames(10, &bytes), whole);
        // Exactly at the limit is fine, with or without CR.
        assert_eq!(
            frames(4, &[b"abcd\nabcd\r\nabcde\n"]),
            vec![line("abcd"), line("abcd"), None]
        );
    }

    /// Frames what is buffered after the input ended.
    fn after_finish(max: usize, input: &[u8], take_before: usize) -> Vec<Vec<u8>> {
        let mut lb = LineBuf::new(max);
        lb.extend(input);
        for _ in 0..take_before {
            assert!(lb.next_frame().is_some());
        }
        lb.finish();
        lb.finish(); // twice is once
        let mut out = Vec::new();
        while let Some(f) = lb.next_frame() {
            match f {
                Frame::Line(l) => out.push(l.to_vec()),
                Frame::TooLong => out.push(b"<too long>".to_vec()),
            }
        }
        out
    }

    #[test]
    fn the_end_of_input_completes_a_last_line_and_adds_nothing_else() {
        assert_eq!(after_finish(64, b"PING\nMSG x", 1), [b"MSG x".to_vec()]);
        assert_eq!(
            after_finish(64, b"PING\nMSG x", 0),
            [b"PING".to_vec(), b"MSG x".to_vec()]
        );
        // Complete lines still waiting to be answered: no empty request after them.
        assert_eq!(
            after_finish(64, b"PING\nPING\n", 0),
            [b"PING".to_vec(), b"PING".to_vec()]
        );
        assert_eq!(after_finish(64, b"PING\r\n", 0), [b"PING".to_vec()]);
        assert!(after_finish(64, b"PING\n", 1).is_empty());
        assert!(after_finish(64, b"", 0).is_empty());
        // The rest of an over-long line being discarded is not a request.
        assert_eq!(after_finish(4, b"abcdefgh", 0), [b"<too long>".to_vec()]);
    }

    #[test]
    fn a_header_before_the_lines_is_peeked_and_consumed() {
        // A PROXY header, then lines: the header is read as bytes, the rest framed as usual.
        let mut lb = LineBuf::new(64);
        lb.extend(b"HDR12USER a\nPING\n");
        assert_eq!(lb.peek(), b"HDR12USER a\nPING\n");
        lb.consume(5);
        assert_eq!(lb.peek(), b"USER a\nPING\n");
        assert_eq!(lb.pending(), 12);
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"USER a")));
        // Consuming past the end stops at the end.
        lb.consume(100);
        assert_eq!(lb.peek(), b"");
        assert_eq!(lb.next_frame(), None);
        // A scan that found no newline yet starts again after a consume.
        let mut lb = LineBuf::new(64);
        lb.extend(b"ab");
        assert_eq!(lb.next_frame(), None);
        lb.consume(1);
        lb.extend(b"c\n");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"bc")));
    }

    #[test]
    fn switching_to_raw_bytes_takes_everything_not_framed() {
        let mut lb = LineBuf::new(4);
        lb.extend(b"SHELL\nls -l\r\nxyz");
        assert_eq!(lb.next_frame(), Some(Frame::TooLong));
        let mut lb = LineBuf::new(64);
        lb.extend(b"SHELL\nls -l\r\nxyz");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"SHELL")));
        assert_eq!(lb.take_pending(), b"ls -l\r\nxyz");
        assert_eq!(lb.pending(), 0);
        assert_eq!(lb.take_pending(), b"");
        // Discarding an over-long line ends with the switch: later lines are framed again.
        let mut lb = LineBuf::new(4);
        lb.extend(b"abcdefgh");
        assert_eq!(lb.next_frame(), Some(Frame::TooLong));
        assert_eq!(lb.take_pending(), b"");
        lb.extend(b"ok\n");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"ok")));
    }

    #[test]
    fn compaction_drops_what_was_consumed_and_frees_a_large_empty_buffer() {
        let mut lb = LineBuf::new(64);
        lb.extend(b"one\ntwo\nthr");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"one")));
        lb.compact();
        assert_eq!((lb.start, lb.buf.as_slice()), (0, &b"two\nthr"[..]));
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"two")));
        lb.extend(b"ee\n"); // compacts first
        assert_eq!(lb.buf, b"three\n");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"three")));
        // Everything consumed: emptied, and freed only if larger than 16 KiB.
        for (capacity, kept) in [(16 * 1024, true), (16 * 1024 + 1, false)] {
            let mut lb = LineBuf::new(1 << 20);
            lb.buf = Vec::with_capacity(capacity);
            lb.buf.extend_from_slice(b"x\n");
            assert_eq!(lb.next_frame(), Some(Frame::Line(b"x")));
            lb.compact();
            assert_eq!((lb.start, lb.buf.len()), (0, 0));
            assert_eq!(lb.buf.capacity() >= capacity, kept, "capacity {capacity}");
        }
    }

    #[test]
    fn discarding_keeps_memory_bounded() {
        let mut lb = LineBuf::new(16);
        let mut too_long = 0;
        for _ in 0..1000 {
            lb.extend(&[b'y'; 1000]);
            while let Some(f) = lb.next_frame() {
                assert_eq!(f, Frame::TooLong);
                too_long += 1;
            }
            assert!(lb.pending() <= 1000);
        }
        assert_eq!(too_long, 1);
        lb.extend(b"tail\nok\n");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"ok")));
    }
}
