//! Whether the master a scoreboard records is running: the process with that pid *and* start
//! time, not a zombie. A scoreboard outlives a master killed with `SIGKILL` (only a master that
//! exits removes it), and its pid may be reused since, so the file alone proves nothing.

use std::io;

use crate::procfs::{self, Identity};
use crate::scoreboard::Scoreboard;

/// How many times the header's master is read again when it changed while being checked (an
/// upgrade's hand-over writes the new master's pid and start time).
const REREADS: usize = 3;

/// What `status` found out about the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Not running, and why (`stale scoreboard: master 1234 exited`).
    NotRunning(String),
}

impl Liveness {
    pub fn is_running(&self) -> bool {
        matches!(self, Liveness::Running)
    }

    /// `running`, or `not running (why)`: the phrase `status` prints.
    pub fn phrase(&self) -> String {
        match self {
            Liveness::Running => "running".into(),
            Liveness::NotRunning(why) => format!("not running ({why})"),
        }
    }
}

/// Whether `master` (as a scoreboard records it) is running. The error is one line: `/proc`
/// could not tell.
pub fn liveness(master: Identity) -> Result<Liveness, String> {
    let pid = master.pid;
    match procfs::stat(pid) {
        Ok(s) if s.exited() => Ok(Liveness::NotRunning(format!(
            "stale scoreboard: master {pid} exited"
        ))),
        Ok(s) if s.start_ticks != master.start_ticks => Ok(Liveness::NotRunning(format!(
            "stale scoreboard: master {pid} is another process now"
        ))),
        Ok(_) => Ok(Liveness::Running),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Liveness::NotRunning(format!(
            "stale scoreboard: master {pid} exited"
        ))),
        Err(e) => Err(format!("cannot read /proc/{pid}/stat: {e}")),
    }
}

/// Whether the master `board` records is running, read again if the record changed while it
/// was checked. The error: the header records no master, or `/proc` could not tell.
pub fn board_liveness(board: &Scoreboard) -> Result<Liveness, String> {
    let mut recorded = board.header().master();
    let mut rereads = 0;
    loop {
        if recorded.pid <= 1 || recorded.start_ticks == 0 {
            return Err(format!(
                "scoreboard {} records no master (pid {}, start time {})",
                board.path().display(),
                recorded.pid,
                recorded.start_ticks
            ));
        }
        let found = liveness(recorded)?;
        let now = board.header().master();
        if found.is_running() || now == recorded || rereads == REREADS {
            return Ok(found);
        }
        recorded = now;
        rereads += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn only_the_recorded_live_process_runs() {
        let own = procfs::own_identity().unwrap();
        assert_eq!(liveness(own).unwrap(), Liveness::Running);
        let reused = Identity {
            start_ticks: own.start_ticks + 1,
            ..own
        };
        assert_eq!(
            liveness(reused).unwrap().phrase(),
            format!(
                "not running (stale scoreboard: master {} is another process now)",
                own.pid
            )
        );
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let start_ticks = procfs::stat(pid).unwrap().start_ticks;
        let it = Identity { pid, start_ticks };
        assert!(liveness(it).unwrap().is_running());
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie is not running either.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while liveness(it).unwrap().is_running() {
            assert!(std::time::Instant::now() < deadline, "{pid} still running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert_eq!(
            liveness(it).unwrap(),
            Liveness::NotRunning(format!("stale scoreboard: master {pid} exited"))
        );
    }
}
