//! The append-only log: one file opened `O_APPEND` by every process, records formatted into a
//! batch and handed to the kernel with one `write(2)`, so records of different processes never
//! interleave and a record is never torn by another writer.
//!
//! A record is `<ts> -- <event>\n`, the timestamp in the seed's format (local time, nanoseconds):
//! `2026.11.21 16:44:57.270823600`. Text that came from a client is escaped by [`escape_into`] so
//! one record is always one line and cannot forge another, and `--max-log-text` bounds how much
//! of it a record keeps (see [`Batch::with_max_text`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{Local, TimeZone};

use crate::files::{self, Access, Trust};
use crate::record::{COMPLETED_REQ, RECVD_MESSAGE};
use crate::sys::Account;

/// The shared log file. Every process holds its own descriptor on the same path.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
    /// `--user`: the account the workers run as, who owns the log so they can reopen it.
    account: Option<Account>,
}

impl LogFile {
    /// Opens (creating with mode 0640) the log for appending, as [`crate::files`] allows: a
    /// regular file of ours with one link (or a device named under `/dev`, such as
    /// `/dev/null`), never through a symbolic link. Root gives it to `account`.
    pub fn open(path: &Path, account: Option<Account>) -> io::Result<LogFile> {
        let file = files::open(
            path,
            Access::Append { mode: 0o640 },
            &LogFile::trust(account),
        )?;
        files::give(&file, account)?;
        Ok(LogFile {
            file,
            path: path.to_path_buf(),
            account,
        })
    }

    /// Who may own and write the log: root, the operator, the service account; a device
    /// named under `/dev` too.
    pub fn trust(account: Option<Account>) -> Trust {
        Trust {
            devices: true,
            ..Trust::with_account(account)
        }
    }

    /// Opens the same path again (after logrotate renamed it) and swaps the descriptor. On any
    /// refusal the old file stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        *self = LogFile::open(&self.path, self.account)?;
        Ok(())
    }

    /// A second descriptor on the same open file (for a forked worker).
    pub fn try_clone(&self) -> io::Result<LogFile> {
        Ok(LogFile {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            account: self.account,
        })
    }

    /// The descriptor (for the master's list of what a new worker closes).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// The path the log was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes what was written to the file so far durable (`fdatasync`); returns how long it took.
    ///
    /// An error means records written before it may never reach the disk, and the kernel
    /// reports it once per open file description: calling again and succeeding proves nothing
    /// (PostgreSQL's "fsyncgate"). The caller refuses what it covered and must not take a later
    /// success as covering it.
    pub fn sync(&self) -> io::Result<Duration> {
        let started = Instant::now();
        loop {
            // SAFETY: fdatasync on a descriptor this LogFile owns.
            if unsafe { libc::fdatasync(self.file.as_raw_fd()) } == 0 {
                return Ok(started.elapsed());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Replaces the descriptor with one on an open file description of this process's own, on
    /// the same file (`/proc/self/fd/N`, whatever its name is now). The kernel reports a failed
    /// write-back once per open file description: with one description shared by every worker
    /// (inherited at fork), the first worker to sync would take the error and the others would
    /// see success for records that may be lost.
    pub fn own_description(&mut self) -> io::Result<()> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let own = std::fs::OpenOptions::new()
            .append(true)
            // A terminal named under /dev must not become the worker's controlling terminal.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))?;
        let (a, b) = (self.file.metadata()?, own.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(io::Error::other("reopened a different file"));
        }
        self.file = own;
        Ok(())
    }

    /// Appends `bytes` with one `write(2)` (more only if the kernel wrote part of it, which on a
    /// regular file means the disk filled up). Returns how many bytes reached the file and the
    /// error that stopped it, if any: records wholly inside the written prefix are durable.
    pub fn append(&self, bytes: &[u8]) -> (usize, Option<io::Error>) {
        let mut written = 0;
        while written < bytes.len() {
            match (&self.file).write(&bytes[written..]) {
                Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                // EINTR: a signal arrived before anything was written; try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (written, Some(e)),
            }
        }
        (written, None)
    }
}

/// `--sync`: how far a record must have gone before the request it records is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// In the file (the page cache): survives any process crash, not a power loss.
    #[default]
    None,
    /// On stable storage by a `fdatasync` at most this long after the record was written; the
    /// acknowledgement waits for it.
    Batch(Duration),
    /// On stable storage: each turn's records are written, synced, then acknowledged.
    Always,
}

impl SyncMode {
    /// The option's value as the command line gives it.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::None => "none",
            SyncMode::Batch(_) => "batch",
            SyncMode::Always => "always",
        }
    }
}

/// Formats timestamps, computing the date-and-second part once a second, not once a record.
///
/// In a worker, whose records of one event-loop turn are written together, the whole stamp is
/// taken once a turn (see [`Batch::new_turn`]): every record of the turn carries the time of its
/// first record, microseconds after the turn's input was read.
#[derive(Debug, Default)]
pub struct Clock {
    second: i64,
    prefix: Vec<u8>,
    /// The stamp of the current turn, once taken (only between `new_turn` calls).
    turn: Vec<u8>,
    per_turn: bool,
}

impl Clock {
    /// Appends `YYYY.MM.DD HH:MM:SS.nnnnnnnnn -- ` for the current time (or the turn's).
    pub fn stamp(&mut self, out: &mut Vec<u8>) {
        if !self.per_turn {
            return self.stamp_now(out);
        }
        if self.turn.is_empty() {
            let mut turn = std::mem::take(&mut self.turn);
            self.stamp_now(&mut turn);
            self.turn = turn;
        }
        out.extend_from_slice(&self.turn);
    }

    fn stamp_now(&mut self, out: &mut Vec<u8>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let second = now.as_secs() as i64;
        if self.prefix.is_empty() || second != self.second {
            self.second = second;
            self.prefix.clear();
            if let Some(local) = Local.timestamp_opt(second, 0).single() {
                // Writing into a Vec cannot fail.
                let _ = write!(self.prefix, "{}", local.format("%Y.%m.%d %H:%M:%S."));
            } else {
                let _ = write!(self.prefix, "@{second}.");
            }
        }
        out.extend_from_slice(&self.prefix);
        push_padded(out, now.subsec_nanos() as u64, 9);
        out.extend_from_slice(b" -- ");
    }
}

/// Records waiting for the end of an event-loop turn, then written with one `write(2)`.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    clock: Clock,
    /// `--max-log-text`: bytes of a client's text a record keeps (`None`: all of it).
    max_text: Option<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch whose records keep at most `max_text` bytes of a client's text.
    pub fn with_max_text(max_text: Option<usize>) -> Batch {
        Batch {
            max_text,
            ..Batch::default()
        }
    }

    /// Bytes buffered so far; a record's end offset tells whether a partial write covered it.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The buffered records.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// A new event-loop turn: records from now on carry one stamp, taken at the first of them,
    /// until the next turn.
    pub fn new_turn(&mut self) {
        self.clock.per_turn = true;
        self.clock.turn.clear();
    }

    /// Forgets the buffered records (after they were written, or failed to be).
    pub fn clear(&mut self) {
        self.buf.clear();
        // A burst can leave a large buffer behind; do not keep more than 1 MiB of it.
        if self.buf.capacity() > 1 << 20 {
            self.buf.shrink_to(1 << 16);
        }
    }

    /// `server <pid> recvd message "<text>" from user <name>`
    pub fn recvd(&mut self, pid: &str, text: &[u8], user: &str) {
        self.service(pid, RECVD_MESSAGE, text, user);
    }

    /// `server <pid> <what> "<text>" from user <name>`: a `MSG`'s `recvd` record, and the
    /// record of every service request (`REV`, `SAY`, ...).
    pub fn service(&mut self, pid: &str, what: &str, text: &[u8], user: &str) {
        self.request(pid, what, text, "user", user);
    }

    /// `server <pid> <what> "<text>" from client <address>`: a request of a protocol without a
    /// login (`reverse`, `chat`, `procman`), named by where it came from.
    pub fn from_client(&mut self, pid: &str, what: &str, text: &[u8], client: &str) {
        self.request(pid, what, text, "client", client);
    }

    /// `server <pid> <what> "<text>" from <kind> <who>`.
    fn request(&mut self, pid: &str, what: &str, text: &[u8], kind: &str, who: &str) {
        self.clock.stamp(&mut self.buf);
        self.buf.extend_from_slice(b"server ");
        self.buf.extend_from_slice(pid.as_bytes());
        self.buf.push(b' ');
        self.buf.extend_from_slice(what.as_bytes());
        self.buf.push(b' ');
        self.quoted(text);
        self.buf.extend_from_slice(b" from ");
        self.buf.extend_from_slice(kind.as_bytes());
        self.buf.push(b' ');
        escape_into(&mut self.buf, who.as_bytes());
        self.buf.push(b'\n');
    }

    /// `completed req "<text>" on <pid> total reqs <count>`
    pub fn completed(&mut self, text: &[u8], pid: &str, count: u64) {
        self.clock.stamp(&mut self.buf);
        self.buf.extend_from_slice(COMPLETED_REQ.as_bytes());
        self.buf.push(b' ');
        self.quoted(text);
        self.buf.extend_from_slice(b" on ");
        self.buf.extend_from_slice(pid.as_bytes());
        self.buf.extend_from_slice(b" total reqs ");
        push_u64(&mut self.buf, count);
        self.buf.push(b'\n');
    }

    /// A client's text, escaped, in quotes: `"<text>"`. Over `--max-log-text` N bytes, only its
    /// first N bytes and its length: `"<first N bytes>"... (<length> bytes)`. Inside the quotes
    /// every `"` is escaped, so the quote that ends the text is the first bare one, and what
    /// follows it tells the two forms apart: a space (whole), or `...` (cut).
    fn quoted(&mut self, text: &[u8]) {
        self.buf.push(b'"');
        match self.max_text {
            Some(max) if text.len() > max => {
                escape_into(&mut self.buf, &text[..max]);
                self.buf.extend_from_slice(b"\"... (");
                push_u64(&mut self.buf, text.len() as u64);
                self.buf.extend_from_slice(b" bytes)");
            }
            _ => {
                escape_into(&mut self.buf, text);
                self.buf.push(b'"');
            }
        }
    }

    /// A free-form event from server code (never from client text: use [`escape_into`] for that).
    pub fn event(&mut self, args: std::fmt::Arguments<'_>) {
        self.clock.stamp(&mut self.buf);
        let start = self.buf.len();
        let _ = self.buf.write_fmt(args);
        // Even server-made text must stay on one line.
        for b in &mut self.buf[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        self.buf.push(b'\n');
    }
}

/// Appends `text` with `\`, `"`, control characters, line separators and bytes that are not
/// UTF-8 escaped, so that the result is one line of valid UTF-8 that cannot close the
/// surrounding quotes, whichever tool splits it into lines.
///
/// `\\`, `\"`, `\n`, `\r`, `\t`, and `\xHH` for every byte of anything else that
/// [`never_raw`] (so U+2028 is `\xe2\x80\xa8`) and for each byte that is not UTF-8: every
/// escape stands for bytes, and unescaping gives back the original bytes.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    // The common case, printable ASCII with nothing to escape, is copied whole.
    if text
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"')
    {
        out.extend_from_slice(text);
        return;
    }
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '"' => out.extend_from_slice(b"\\\""),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if never_raw(c) => push_hex_utf8(out, c),
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        for &b in chunk.invalid() {
            push_hex(out, b);
        }
    }
}

/// True for what must never reach a log line or another member's terminal raw: the C0
/// controls, DEL, the C1 controls U+0080–U+009F (U+0085 NEL among them: a line break to
/// Unicode-aware tools, and 8-bit terminal commands such as CSI), and the Unicode line and
/// paragraph separators U+2028 and U+2029.
pub fn never_raw(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `\xHH` for each byte of `c`'s UTF-8 form.
pub(crate) fn push_hex_utf8(out: &mut Vec<u8>, c: char) {
    for &b in c.encode_utf8(&mut [0; 4]).as_bytes() {
        push_hex(out, b);
    }
}

/// The escaped form of `text` as a `String` (for replies and tests; the hot path uses
/// [`escape_into`]).
pub fn escape(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    escape_into(&mut out, text);
    // escape_into emits only ASCII escapes and valid UTF-8 runs.
    String::from_utf8(out).unwrap_or_default()
}

/// `\xHH` for one byte.
pub(crate) fn push_hex(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// Appends the decimal form of `n` without allocating.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_padded(out, n, 1);
}

fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_after_a_rename_reopens_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        std::fs::write(&path, "before\n").unwrap();
        let mut log = LogFile::open(&path, None).unwrap();
        assert_eq!(log.append(b"one\n").0, 4);
        let clone = log.try_clone().unwrap();
        assert_eq!(clone.path(), path);
        // logrotate renames the file; until the reopen every write goes to the renamed one.
        let rotated = dir.path().join("server.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        assert!(log.append(b"two\n").1.is_none());
        log.reopen().unwrap();
        assert!(log.append(b"three\n").1.is_none());
        assert!(clone.append(b"four\n").1.is_none()); // a copy not reopened stays on the old
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\none\ntwo\nfour\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        // A write that cannot be made says so, with how much reached the file.
        let full = LogFile::open(Path::new("/dev/full"), None).unwrap();
        let (written, error) = full.append(b"lost\n");
        assert_eq!(written, 0);
        assert!(error.is_some());
    }

    #[test]
    fn syncs_a_file_and_says_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(&dir.path().join("server.log"), None).unwrap();
        assert!(log.append(b"one\n").1.is_none());
        assert!(log.sync().is_ok());
        // /dev/null takes writes but no sync.
        let null = LogFile::open(Path::new("/dev/null"), None).unwrap();
        let e = null.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }

    #[test]
    fn an_own_description_is_of_the_same_file_whatever_its_name_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let log = LogFile::open(&path, None).unwrap();
        let mut own = log.try_clone().unwrap();
        std::fs::rename(&path, dir.path().join("server.log.1")).unwrap();
        own.own_description().unwrap();
        assert!(own.append(b"own\n").1.is_none());
        assert!(log.append(b"shared\n").1.is_none());
        let text = std::fs::read_to_string(dir.path().join("server.log.1")).unwrap();
        assert_eq!(text, "own\nshared\n");
        // Another open file description: its status flags are its own (a clone's are shared).
        let flags = |l: &LogFile| unsafe { libc::fcntl(l.as_raw_fd(), libc::F_GETFL) };
        let before = flags(&own);
        let clone = log.try_clone().unwrap();
        unsafe {
            libc::fcntl(
                log.as_raw_fd(),
                libc::F_SETFL,
                libc::O_NONBLOCK | libc::O_APPEND,
            )
        };
        assert_ne!(
            flags(&clone) & libc::O_NONBLOCK,
            0,
            "a clone shares the description"
        );
        assert_eq!(flags(&own), before, "the own description does not");
    }

    #[test]
    fn escapes_quotes_backslashes_controls_and_bad_utf8() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert_eq!(
            escape(b"x\ny\r\tz\x00\x1b\x7f"),
            "x\\ny\\r\\tz\\x00\\x1b\\x7f"
        );
        assert_eq!(escape("héllo ✓".as_bytes()), "héllo ✓");
        assert_eq!(escape(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
        // Texts of nothing but the characters to escape (a shortcut copies plain text whole).
        assert_eq!(escape(b"\\\\"), "\\\\\\\\");
        assert_eq!(escape(b"\"\""), "\\\"\\\"");
    }

    #[test]
    fn escapes_unicode_line_breaks_and_c1_controls_byte_by_byte() {
        // NEL, LS, PS: line breaks to tools that follow Unicode (Python's splitlines, editors).
        assert_eq!(escape("a\u{85}b".as_bytes()), "a\\xc2\\x85b");
        assert_eq!(escape("a\u{2028}b".as_bytes()), "a\\xe2\\x80\\xa8b");
        assert_eq!(escape("a\u{2029}b".as_bytes()), "a\\xe2\\x80\\xa9b");
        // Every C1 control, U+0080 to U+009F (CSI U+009B among them).
        for c in '\u{80}'..='\u{9f}' {
            let escaped = escape(c.to_string().as_bytes());
            assert_eq!(escaped, format!("\\xc2\\x{:02x}", c as u32));
        }
        // Their neighbours stay as they are.
        for c in ['\u{a0}', 'é', '\u{2027}', '\u{202a}', '✓'] {
            assert_eq!(escape(c.to_string().as_bytes()), c.to_string());
        }
        let forged = "x\u{2028}2026.01.01 00:00:00.000000000 -- completed req \"y";
        let escaped = escape(forged.as_bytes());
        assert_eq!(escaped.lines().count(), 1);
        assert!(!escaped.chars().any(never_raw), "{escaped:?}");
    }

    /// The record lines of a batch, without their timestamps.
    fn events(batch: &Batch) -> Vec<String> {
        String::from_utf8(batch.bytes().to_vec())
            .unwrap()
            .lines()
            .map(|l| l.split_once(" -- ").unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn max_text_keeps_the_first_bytes_and_says_the_length() {
        let mut batch = Batch::with_max_text(Some(4));
        batch.recvd("7", b"abcd", "u"); // exactly the cap: whole
        batch.recvd("7", b"ab\"cdef", "u");
        batch.completed(b"ab\"cdef", "7", 2);
        batch.service("7", "REV", b"\x01\x02\x03\x04\x05", "u");
        batch.recvd("7", "abc\u{e9}".as_bytes(), "u"); // the cap cuts a character in two
        assert_eq!(
            events(&batch),
            [
                "server 7 recvd message \"abcd\" from user u",
                "server 7 recvd message \"ab\\\"c\"... (7 bytes) from user u",
                "completed req \"ab\\\"c\"... (7 bytes) on 7 total reqs 2",
                "server 7 REV \"\\x01\\x02\\x03\\x04\"... (5 bytes) from user u",
                "server 7 recvd message \"abc\\xc3\"... (5 bytes) from user u",
            ]
        );
        let mut batch = Batch::with_max_text(Some(0));
        batch.recvd("7", b"x", "u");
        batch.recvd("7", b"", "u");
        assert_eq!(
            events(&batch),
            [
                "server 7 recvd message \"\"... (1 bytes) from user u",
                "server 7 recvd message \"\" from user u",
            ]
        );
    }

    /// The README's worst cases: a `MSG`'s two records take 8 bytes per byte of text (each byte
    /// escaped to 4, in both records) plus 201 bytes, or with `--max-log-text N` at most
    /// 8 N + 241 bytes whatever the length (the cut marks carry up to 8 digits: `--max-line` is
    /// at most 64 MiB); a service request's one record 4 bytes per byte plus 100.
    #[test]
    fn worst_case_growth_per_message_is_as_documented() {
        let pid = "4194304"; // pid_max's largest
        let user = "u".repeat(32);
        let pair = |max: Option<usize>, len: usize| {
            let mut batch = Batch::with_max_text(max);
            batch.recvd(pid, &vec![1; len], &user);
            batch.completed(&vec![1; len], pid, u64::MAX);
            batch.len()
        };
        for len in [0, 1, 1000, 65532] {
            assert_eq!(pair(None, len), 8 * len + 201);
        }
        assert_eq!(pair(None, 60_000), 480_201);
        assert_eq!(pair(None, 65_534), 524_473); // `a:<text>` on a line of --max-line 65536
        for n in [0, 100, 4096] {
            // As many digits as the longest line --max-line allows (64 MiB: 67108864).
            assert_eq!(pair(Some(n), 10_000_000), 8 * n + 241);
            assert!(pair(Some(n), 60_000) <= 8 * n + 241);
        }
        // A service request: one record, 4 bytes per byte of text plus 100.
        for len in [0, 1000] {
            let mut batch = Batch::new();
            batch.service(pid, "CLOSE", &vec![1; len], &user);
            assert_eq!(batch.len(), 4 * len + 100);
        }
    }

    #[test]
    fn a_forged_record_stays_inside_one_line() {
        let mut batch = Batch::new();
        batch.recvd(
            "42",
            b"x\" from user root\n2026.01.01 -- completed req \"y",
            "eve",
        );
        let text = String::from_utf8(batch.bytes().to_vec()).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with("from user eve\n"));
    }

    #[test]
    fn numbers_and_timestamps_have_the_seed_format() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, 18446744073709551615);
        assert_eq!(out, b"0 18446744073709551615");

        let mut batch = Batch::new();
        batch.completed(b"hi", "7", 3);
        let line = String::from_utf8(batch.bytes().to_vec()).unwrap();
        // 2026.11.21 16:44:57.270823600 -- completed req "hi" on 7 total reqs 3
        let (ts, rest) = line.split_once(" -- ").unwrap();
        assert_eq!(rest, "completed req \"hi\" on 7 total reqs 3\n");
        assert_eq!(ts.len(), "2026.11.21 16:44:57.270823600".len());
        let b = ts.as_bytes();
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16], b[19]),
            (b'.', b'.', b' ', b':', b':', b'.')
        );
        assert!(ts[20..].bytes().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn a_turn_stamps_its_records_once_and_the_next_turn_again() {
        let stamps = |batch: &Batch| -> Vec<String> {
            let text = String::from_utf8(batch.bytes().to_vec()).unwrap();
            text.lines()
                .map(|l| l.split_once(" -- ").unwrap().0.to_string())
                .collect()
        };
        // Outside turns (the master): a stamp per record.
        let mut batch = Batch::new();
        batch.recvd("7", b"a", "u");
        std::thread::sleep(std::time::Duration::from_millis(2));
        batch.completed(b"a", "7", 1);
        let s = stamps(&batch);
        assert_ne!(s[0], s[1]);
        // In a turn: one stamp for all its records; a new one in the next turn.
        batch.clear();
        batch.new_turn();
        batch.recvd("7", b"a", "u");
        std::thread::sleep(std::time::Duration::from_millis(2));
        batch.completed(b"a", "7", 1);
        batch.new_turn();
        batch.event(format_args!("next"));
        let s = stamps(&batch);
        assert_eq!(s[0], s[1]);
        assert!(s[2] > s[1], "{s:?}");
    }

    #[test]
    fn the_seconds_of_a_stamp_follow_the_clock() {
        // Stamps cache the date and time to the second: a new second is written anew.
        let mut batch = Batch::new();
        batch.new_turn();
        batch.event(format_args!("before"));
        let first = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            == first
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        batch.new_turn();
        batch.event(format_args!("after"));
        let text = String::from_utf8(batch.bytes().to_vec()).unwrap();
        let seconds: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(" -- ").unwrap().0.rsplit_once('.').unwrap().0)
            .collect();
        assert_ne!(seconds[0], seconds[1], "{text}");
    }

    #[test]
    fn clearing_keeps_a_usual_buffer_and_gives_back_a_burst() {
        let mut batch = Batch::new();
        // Up to 1 MiB is kept for the next turns.
        for kept in [200 * 1024, 1 << 20] {
            batch.buf = Vec::with_capacity(kept);
            batch.clear();
            assert!(
                batch.buf.capacity() >= kept,
                "{kept}: {}",
                batch.buf.capacity()
            );
        }
        // A burst's buffer goes back to 64 KiB.
        batch.buf = Vec::with_capacity(3 << 20);
        batch.event(format_args!("{}", "x".repeat(100)));
        batch.clear();
        let left = batch.buf.capacity();
        assert!((64 * 1024..1 << 20).contains(&left), "{left}");
        assert!(batch.is_empty());
    }

    #[test]
    fn server_events_cannot_break_lines() {
        let mut batch = Batch::new();
        batch.event(format_args!("bad\nname"));
        assert!(batch.bytes().ends_with(b"bad name\n"));
    }
}
