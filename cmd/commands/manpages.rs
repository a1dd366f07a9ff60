//! `dbox generate-manpages` (hidden): writes the man pages in `man/` from
//! the clap definitions. Run `cargo run -- generate-manpages man` after
//! changing any command; a test fails when `man/` is stale.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CommandError;
use crate::ui::Ui;

/// Write man pages for every command into DIR
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder
    pub dir: PathBuf,
}

/// Every man page: file name and contents.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    out.push(("dbox.1".to_string(), buf));
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let name = format!("dbox-{}", sub.get_name());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut buf)?;
        out.push((format!("{name}.1"), buf));
    }
    Ok(out)
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    std::fs::create_dir_all(&args.dir)?;
    for (name, bytes) in pages()? {
        std::fs::write(args.dir.join(&name), bytes)?;
        ui.line(name)?;
    }
    Ok(())
}
