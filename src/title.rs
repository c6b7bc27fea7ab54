//! Process titles, so `ps`, `top` and `pgrep` tell cserverd's processes apart: the name the
//! kernel keeps (`comm`, 15 bytes, what `ps -o comm`, `top` and `pgrep` show) and the command
//! line (`/proc/PID/cmdline`, what `ps -o args` shows), as nginx and unicorn do.
//!
//! - [`set_name`] is `prctl(PR_SET_NAME)`: `cserverd-w3` for the worker of slot 3; the master
//!   is `cserverd`, `cserverd-old` while an upgrade's new master takes over from it and
//!   `cserverd-stop` while it stops.
//! - [`set_title`] overwrites the command line: `cserverd: worker 3` for the worker of slot 3.
//!   Only workers do: `cserverctl` reads the master's `/proc/PID/cmdline` for its `--pid-file`,
//!   `--stats-file` and `--port` (see [`crate::ctl`]), and a binary upgrade re-executes the
//!   master with the arguments it captured at start, so the master keeps its real arguments.
//!
//! How the command line is rewritten. The kernel shows `/proc/PID/cmdline` from the process's
//! own memory: the bytes between `arg_start` and `arg_end` (fields 48 and 49 of
//! `/proc/self/stat`), where `execve` copied the argument strings, at the top of the initial
//! stack. Writing the title there, NUL-padded to the end (nginx's `ngx_setproctitle` pads with
//! NUL on Linux too), changes what every reader of that file sees. Unlike nginx, the environment
//! strings that follow are not moved to make room: the title is cut to the argument area
//! (`cserverd --port 0` run from `PATH` has 18 bytes: `cserverd: worker` without the slot),
//! which needs no change to `environ` under a running libc. The short name from [`set_name`] is there whatever the length.

use std::ffi::CString;
use std::fs;
use std::io;

/// The longest name the kernel keeps (`TASK_COMM_LEN` less its NUL).
pub const NAME_MAX: usize = 15;

/// Sets this thread's name (`/proc/PID/comm`; the process's, for its only thread), cut to
/// [`NAME_MAX`] bytes.
pub fn set_name(name: &str) -> io::Result<()> {
    let cut = &name.as_bytes()[..name.len().min(NAME_MAX)];
    let name = CString::new(cut).map_err(|_| io::Error::other("NUL in a process name"))?;
    nix::sys::prctl::set_name(&name)?;
    Ok(())
}

/// The argument area `[arg_start, arg_end)` from `/proc/self/stat`: fields 48 and 49, counted
/// after the last `)` as the command name may hold spaces and parentheses.
pub fn parse_arg_area(stat: &str) -> Option<(usize, usize)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 3 (the state) is the first after the `)`; field 48 is 45 fields after it.
    let mut fields = rest.split_ascii_whitespace().skip(45);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    // Not zero (a kernel thread, or fields hidden from a reader without access) and not
    // absurd: the kernel limits the arguments and environment to a quarter of the stack.
    (start != 0 && start < end && end - start <= 1 << 24).then_some((start, end))
}

/// The bytes written over an argument area of `len` bytes: `title` cut to leave room for a
/// final NUL, then NULs to the end.
pub fn fill(title: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let n = title.len().min(len.saturating_sub(1));
    out[..n].copy_from_slice(&title.as_bytes()[..n]);
    out
}

/// Replaces this process's command line (`/proc/PID/cmdline`, `ps -o args`) with `title`, cut
/// to the space of the original arguments.
///
/// Call it only while the process has one thread (a worker right after its fork): the standard
/// library reads the argument strings in place for `std::env::args`, and no other thread may
/// read them while they change. Afterwards `std::env::args` gives the title, not the arguments.
pub fn set_title(title: &str) -> io::Result<()> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    let (start, end) = parse_arg_area(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no argument area in /proc/self/stat (fields 48-49)",
        )
    })?;
    let bytes = fill(title, end - start);
    // SAFETY: [start, end) is where execve placed this process's argument strings, in its
    // initial stack: mapped readable and writable for the process's whole life, and no Rust
    // allocation or reference covers it (the standard library keeps only the pointers of argv,
    // and reads the strings through them when asked, which the caller's single thread is not
    // doing now). `bytes` has exactly `end - start` bytes and ends with a NUL, so every string
    // argv still points into stays terminated inside the area.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, bytes.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_fields_48_and_49() {
        // Fields 3..=47 are placeholders; 48 and 49 the area; 50..=52 follow.
        let mut fields: Vec<String> = (3..=47).map(|n| n.to_string()).collect();
        fields.extend(["140730000".into(), "140730040".into()]);
        fields.extend(["1".into(), "2".into(), "3".into()]);
        let tail = fields.join(" ");
        for comm in ["cserverd", "a b", "x) (y", ")"] {
            let text = format!("4242 ({comm}) {tail}\n");
            assert_eq!(
                parse_arg_area(&text),
                Some((140730000, 140730040)),
                "{comm}"
            );
        }
        assert_eq!(parse_arg_area("4242 (x) S 1 2"), None);
        let hidden = tail.replace("140730000 140730040", "0 0");
        assert_eq!(parse_arg_area(&format!("1 (x) {hidden}")), None);
    }

    #[test]
    fn a_title_is_cut_and_nul_padded_to_the_area() {
        assert_eq!(fill("abc", 6), b"abc\0\0\0");
        assert_eq!(fill("abcdef", 4), b"abc\0");
        assert_eq!(fill("abc", 4), b"abc\0");
        assert_eq!(fill("abc", 1), b"\0");
        assert!(fill("abc", 0).is_empty());
    }

    #[test]
    fn own_area_is_found() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = parse_arg_area(&stat).expect("argument area");
        let cmdline = fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(end - start, cmdline.len());
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes() {
        // In a thread of its own: the test harness's threads keep their names.
        std::thread::spawn(|| {
            set_name("cserverd-w12345678").unwrap();
            let comm = fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm, "cserverd-w12345\n");
        })
        .join()
        .unwrap();
    }
}
