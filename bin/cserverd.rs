//! `cserverd`: parse options, run the master (or only check, `--check`), map errors to exit
//! statuses: 2 for a bad option, 1 for a start-up problem (a file it names, the port, ...).

use clap::Parser;
use cserver::config::ServerArgs;

fn main() {
    let args = ServerArgs::parse();
    let check = args.check;
    let settings = match args.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cserverd: {e}");
            std::process::exit(e.status());
        }
    };
    if check {
        match cserver::check::run(&settings) {
            // tests/check.rs relies on this line.
            Ok(()) => println!("configuration ok"),
            Err(e) => {
                eprintln!("cserverd: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = cserver::master::run(settings) {
        eprintln!("cserverd: {e}");
        std::process::exit(1);
    }
}
