//! `cserverd`: parse options, run the master (or only check, `--check`), map errors to exit
//! statuses: 2 for a bad option, 1 for a start-up problem (a file it names, the port, ...).
//! A closed stderr never stops the server (`cli::warn`).

use clap::Parser;
use cserver::config::ServerArgs;

fn main() {
    let args = ServerArgs::parse();
    let check = args.check;
    let settings = match args.validate() {
        Ok(s) => s,
        Err(e) => {
            cserver::warnln!("cserverd: {e}");
            std::process::exit(e.status());
        }
    };
    if check {
        match cserver::check::run(&settings) {
            // tests/check.rs relies on this line.
            Ok(()) => cserver::outln!("configuration ok"),
            Err(e) => {
                cserver::warnln!("cserverd: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = cserver::master::run(settings) {
        cserver::warnln!("cserverd: {e}");
        std::process::exit(1);
    }
}
