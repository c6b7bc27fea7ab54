//! `cserverctl`: the operator's tool. Exit status 1 with a clear message when the scoreboard is
//! missing or not a cserverd scoreboard.

use clap::Parser;
use cserver::ctl::{self, Command, CtlArgs};

fn main() {
    let args = CtlArgs::parse();
    let result = match &args.command {
        Command::Status(status) => ctl::status(status),
    };
    match result {
        Ok(text) => print!(
            "{}",
            if text.ends_with('\n') {
                text
            } else {
                text + "\n"
            }
        ),
        Err(e) => {
            eprintln!("cserverctl: {e}");
            std::process::exit(1);
        }
    }
}
