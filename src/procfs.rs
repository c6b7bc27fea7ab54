//! What cserverd and cserverctl read about a process from `/proc`: its state and start time
//! (`/proc/PID/stat`), its real uid (`/proc/PID/status`) and its arguments
//! (`/proc/PID/cmdline`).
//!
//! A pid names a process only until it exits and the number is reused; the pid and the start
//! time together name one process for as long as the machine is up. A process chooses its own
//! name (`comm`) and arguments, so neither proves anything on its own.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;

/// One process for the machine's uptime: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start_ticks: u64,
}

/// The fields of `/proc/PID/stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, ... (field 3).
    pub state: char,
    /// When the process started, in clock ticks after boot (field 22).
    pub start_ticks: u64,
}

impl Stat {
    /// True once the process has exited: a zombie waiting for its parent, or dead.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid ...`. The comm is chosen by the process and
/// may hold spaces and `)`, so fields are counted from after the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let mut state = fields.next()?.chars();
    let (Some(c), None) = (state.next(), state.next()) else {
        return None;
    };
    // The state is field 3; the start time, field 22, comes 19 fields after it.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(Stat {
        state: c,
        start_ticks,
    })
}

/// `/proc/PID/stat` of `pid` (`NotFound`: no such process).
pub fn stat(pid: i32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

/// True if the process `id` names is still running: same pid, same start time, not a zombie.
pub fn is_running(id: Identity) -> bool {
    id.pid > 0 && stat(id.pid).is_ok_and(|s| !s.exited() && s.start_ticks == id.start_ticks)
}

/// `/proc/PID/comm`, without its newline.
pub fn comm(pid: i32) -> io::Result<String> {
    Ok(fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim_end()
        .to_string())
}

/// This process's identity.
pub fn own_identity() -> io::Result<Identity> {
    let text = fs::read_to_string("/proc/self/stat")?;
    let stat = parse_stat(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/self/stat")
    })?;
    Ok(Identity {
        pid: std::process::id() as i32,
        start_ticks: stat.start_ticks,
    })
}

/// The real uid in `/proc/PID/status`: the first of the four numbers on its `Uid:` line (real,
/// effective, saved, filesystem).
pub fn parse_real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The real uid of `pid` (`NotFound`: no such process).
pub fn real_uid(pid: i32) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_real_uid(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no Uid line in /proc/{pid}/status"),
        )
    })
}

/// The arguments of `pid`, `argv[0]` first.
pub fn cmdline(pid: i32) -> io::Result<Vec<OsString>> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline"))?;
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(bytes
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 19 20";
        for comm in [
            "cserverd",
            "a b",
            "x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99",
            ")",
        ] {
            let text = format!("4242 ({comm}) {tail}\n");
            assert_eq!(
                parse_stat(&text),
                Some(Stat {
                    state: 'S',
                    start_ticks: 424242
                }),
                "{text}"
            );
        }
        let zombie = parse_stat(&format!("7 (z) Z{}", &tail[1..])).unwrap();
        assert!(zombie.exited());
        assert!(!parse_stat(&format!("7 (s) {tail}")).unwrap().exited());
        for bad in [
            "",
            "4242 cserverd S 1",
            "1 (a) S 1 2",
            "1 (a) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 5",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
        let not_a_number = format!("1 (a) {}", tail.replace("424242", "x"));
        assert_eq!(parse_stat(&not_a_number), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = own_identity().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        let s = stat(me.pid).unwrap();
        assert_eq!(s.start_ticks, me.start_ticks);
        assert!(!s.exited());
        assert_eq!(real_uid(me.pid).unwrap(), nix::unistd::getuid().as_raw());
        let args = cmdline(me.pid).unwrap();
        assert_eq!(args.len(), std::env::args_os().count());
        assert_eq!(stat(i32::MAX).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_real_uid_is_the_first_of_four() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_real_uid(status), Some(1000));
        assert_eq!(parse_real_uid("Name:\tx\n"), None);
        assert_eq!(parse_real_uid("Uid:\tx\t0\n"), None);
    }
}
