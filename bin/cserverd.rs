//! `cserverd`: parse options, run the master, map errors to exit status 1.

use clap::Parser;
use cserver::config::ServerArgs;

fn main() {
    let settings = match ServerArgs::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cserverd: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = cserver::master::run(settings) {
        eprintln!("cserverd: {e}");
        std::process::exit(1);
    }
}
