//! `cclient`: the load generator (with `--threads`), or without `--threads` the interactive
//! client. Results on stdout, messages on stderr; the exit status says how the run went
//! (`cclient --help`, the man page's EXIT STATUS, `report::status`).

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cserver::client::report::{self, status, Header};
use cserver::client::{interactive, load, ClientArgs};
use cserver::{errln, outln};
use indicatif::{ProgressBar, ProgressStyle};

fn main() {
    let args = ClientArgs::parse();
    // Without --threads: the interactive client.
    match args.interactive() {
        Ok(Some(opts)) => std::process::exit(interactive::run(opts)),
        Ok(None) => {}
        Err(e) => {
            errln!("cclient: {e}");
            std::process::exit(status::USAGE);
        }
    }
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            errln!("cclient: {e}");
            std::process::exit(status::USAGE);
        }
    };
    // Ctrl-C ends the run early: the requests under way finish, the summary says it was
    // interrupted, and the status is 130.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));

    if !args.json {
        outln!("{}", Header(&plan));
    }
    let bar = progress_bar(&plan);
    let duration = plan.duration;
    let summary = load::run(plan, interrupted, |acked, elapsed| match duration {
        Some(d) => {
            bar.set_position(elapsed.min(d).as_millis() as u64);
            bar.set_message(format!("{acked} acknowledged"));
        }
        None => bar.set_position(acked),
    });
    bar.finish_and_clear();
    let (summary, acked) = match summary {
        Ok(done) => done,
        Err(e) => {
            errln!("cclient: {e}");
            std::process::exit(status::FAILED);
        }
    };
    if let Some(path) = &args.acks {
        let mut text = acked.join("\n");
        text.push('\n');
        if let Err(e) = std::fs::write(path, text) {
            errln!("cclient: cannot write {}: {e}", path.display());
            std::process::exit(status::FAILED);
        }
    }
    if let (Some(path), Some(h)) = (&args.histogram, &summary.histogram) {
        let written = std::fs::File::create(path)
            .map(std::io::BufWriter::new)
            .and_then(|mut f| {
                report::write_hgrm(h, &mut f)?;
                std::io::Write::flush(&mut f)
            });
        if let Err(e) = written {
            errln!("cclient: cannot write {}: {e}", path.display());
            std::process::exit(status::FAILED);
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(text) => outln!("{text}"),
            Err(e) => errln!("cclient: {e}"),
        }
    } else {
        outln!("{summary}");
    }
    std::process::exit(summary.exit_status());
}

/// On a terminal: requests acknowledged out of those planned, or for a `--duration` run the
/// time gone with the count so far. Nothing when stderr is not a terminal.
fn progress_bar(plan: &load::Plan) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (len, template) = match (plan.duration, plan.planned()) {
        (Some(d), _) => (
            d.as_millis() as u64,
            "{bar:40} {elapsed}/{duration_total} {msg}",
        ),
        (None, Some(n)) => (n, "{bar:40} {pos}/{len} acknowledged {elapsed}"),
        (None, None) => return ProgressBar::hidden(),
    };
    let bar = ProgressBar::new(len);
    let total = plan.duration.unwrap_or(Duration::ZERO);
    let template = template.replace("{duration_total}", &format!("{}s", total.as_secs()));
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
