//! `dbox completions`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CommandError;
use crate::ui::Ui;

/// Print a shell completion script
///
///     dbox completions bash > ~/.local/share/bash-completion/completions/dbox
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    clap_complete::generate(args.shell, &mut Cli::command(), "dbox", ui.out());
    Ok(())
}
