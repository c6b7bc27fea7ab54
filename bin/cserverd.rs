//! `cserverd`: parse options, run the master, map errors to exit statuses: 2 for a bad option,
//! 1 for a start-up problem (a file it names, the port, ...).

use clap::Parser;
use cserver::config::ServerArgs;

fn main() {
    let settings = match ServerArgs::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cserverd: {e}");
            std::process::exit(e.status());
        }
    };
    if let Err(e) = cserver::master::run(settings) {
        eprintln!("cserverd: {e}");
        std::process::exit(1);
    }
}
