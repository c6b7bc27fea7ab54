//! `make docs`: writes the man pages and shell completions generated from the clap definitions.
//! Usage: `cargo run --example gendocs -- MAN_DIR COMPLETION_DIR`

fn main() {
    let mut args = std::env::args().skip(1);
    let man = args.next().unwrap_or_else(|| "target/man".into());
    let completions = args.next().unwrap_or_else(|| "target/completions".into());
    match cserver::docs::write_all(man.as_ref(), completions.as_ref()) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("gendocs: {e}");
            std::process::exit(1);
        }
    }
}
