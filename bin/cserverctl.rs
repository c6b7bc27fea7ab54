//! `cserverctl`: the operator's tool. Reads the scoreboard (`status`) and signals the master
//! (`stop`, `quit`, `reload`, `reopen`, `upgrade`, `workers +N/-N`). Any error is one line on
//! stderr and exit status 1 (a bad option: clap's message, exit status 2).

use clap::Parser;
use cserver::ctl::{self, CtlArgs};

fn main() {
    let args = CtlArgs::parse();
    let stdout = std::io::stdout();
    if let Err(e) = ctl::run(&args.command, &mut stdout.lock()) {
        eprintln!("cserverctl: {e}");
        std::process::exit(1);
    }
}
