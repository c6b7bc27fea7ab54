//! Man pages and shell completions, generated from the same clap definitions the programs parse
//! with, so they cannot drift from the real options. `make docs` writes them under
//! `target/man/` and `target/completions/`.

use std::fs;
use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::client::ClientArgs;
use crate::config::ServerArgs;
use crate::ctl::CtlArgs;

/// The three programs' command definitions.
pub fn commands() -> Vec<clap::Command> {
    vec![
        ServerArgs::command(),
        ClientArgs::command(),
        CtlArgs::command(),
    ]
}

/// Writes `<man_dir>/<program>.1` for each program (and one page per cserverctl subcommand),
/// and bash, zsh and fish completions into `completion_dir`. Returns the files written.
pub fn write_all(man_dir: &Path, completion_dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    fs::create_dir_all(man_dir)?;
    fs::create_dir_all(completion_dir)?;
    let mut written = Vec::new();
    for cmd in commands() {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        let name = cmd.get_name().to_string();
        let path = man_dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        if name == "cserverd" {
            page.extend_from_slice(crate::phase::man_section().as_bytes());
        }
        fs::write(&path, page)?;
        written.push(path);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_name = format!("{name}-{}", sub.get_name());
            let path = man_dir.join(format!("{sub_name}.1"));
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone())
                .title(sub_name)
                .render(&mut page)?;
            fs::write(&path, page)?;
            written.push(path);
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            written.push(clap_complete::generate_to(
                shell,
                &mut cmd,
                &name,
                completion_dir,
            )?);
        }
    }
    Ok(written)
}
