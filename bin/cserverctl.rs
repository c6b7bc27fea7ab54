//! `cserverctl`: the operator's tool. Reads the scoreboard (`status`) and signals the master
//! (`stop`, `quit`, `reload`, `reopen`, `upgrade`, `workers +N/-N`). Any error is one line on
//! stderr.
//!
//! Exit status: 0 done; 1 an error (a bad option: clap's message, 2). `status` follows the LSB
//! init script convention (as `systemctl status` does): 0 the master runs, 3 it does not (a
//! stale scoreboard or pid file), 4 unknown (no scoreboard or pid file, or one that cannot be
//! read or is refused). A closed stdout or stderr ends it by `SIGPIPE`, as any filter.

use clap::Parser;
use cserver::ctl::{self, CtlArgs, Failure, Outcome};

fn main() {
    let args = CtlArgs::parse();
    let code = match ctl::run(&args.command, &mut cserver::cli::Stdout) {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::NotRunning) => 3,
        Err(e) => {
            cserver::errln!("cserverctl: {e}");
            match e {
                Failure::Failed(_) => 1,
                Failure::Unknown(_) => 4,
            }
        }
    };
    std::process::exit(code);
}
