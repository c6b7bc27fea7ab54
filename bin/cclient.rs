//! `cclient`: the load generator (with `--threads`; exit status 0 only if every request was
//! acknowledged and the server's total moved by exactly that many), or without `--threads` the
//! interactive client.

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use cserver::client::{interactive, load, ClientArgs};
use indicatif::{ProgressBar, ProgressStyle};

fn main() {
    let args = ClientArgs::parse();
    // Without --threads: the interactive client.
    match args.interactive() {
        Ok(Some(opts)) => std::process::exit(interactive::run(opts)),
        Ok(None) => {}
        Err(e) => {
            eprintln!("cclient: {e}");
            std::process::exit(2);
        }
    }
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cclient: {e}");
            std::process::exit(2);
        }
    };
    // Ctrl-C ends the run early with a summary instead of killing it.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));

    let bar = if std::io::stderr().is_terminal() && plan.duration.is_none() {
        let sessions = plan.threads as u64 * plan.conns_per_thread as u64;
        let bar = ProgressBar::new(sessions * plan.requests);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} acknowledged {elapsed}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let summary = load::run(plan, interrupted, |n| bar.set_position(n));
    bar.finish_and_clear();
    let summary = match summary {
        Ok((s, acked)) => {
            if let Some(path) = &args.acks {
                let mut text = acked.join("\n");
                text.push('\n');
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("cclient: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            s
        }
        Err(e) => {
            eprintln!("cclient: {e}");
            std::process::exit(1);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cclient: {e}"),
        }
    } else {
        println!("{summary}");
    }
    std::process::exit(if summary.success() { 0 } else { 1 });
}
