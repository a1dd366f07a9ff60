//! Command-line definitions and dispatch.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::error::CommandError;
use crate::ui::Ui;

/// Version control for whole folders whose remotes are peers
///
/// dbox keeps every version of a folder — documents, photos, source code,
/// large binaries — as content-defined chunks, encrypted and signed, in
/// `.dbox/` at the folder's root.
///
/// Exit status: 0 success; 1 the command could not do what was asked (no
/// repository, unknown version, files that would be lost, damage found);
/// 2 bad arguments; 255 internal error.
#[derive(Debug, Parser)]
#[command(name = "dbox", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Run as if started in DIR
    #[arg(short = 'C', global = true, value_name = "DIR", id = "chdir")]
    pub chdir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    Init(commands::init::Args),
    Status(commands::status::Args),
    Commit(commands::commit::Args),
    Log(commands::log::Args),
    Show(commands::show::Args),
    Ls(commands::ls::Args),
    Diff(commands::diff::Args),
    Restore(commands::restore::Args),
    Checkout(commands::checkout::Args),
    Merge(commands::merge::Args),
    Fsck(commands::fsck::Args),
    Id(commands::id::Args),
    Peer(commands::peer::Args),
    Invite(commands::invite::Args),
    Clone(commands::clone::Args),
    Serve(commands::serve::Args),
    /// Send versions a peer lacks
    ///
    /// Tells the peer (which runs `dbox serve`) about this repository's
    /// heads; it fetches what it lacks. PEER is a name from `dbox peer
    /// list` or a peer id; ADDR (HOST:PORT) defaults to the address book's.
    ///
    ///     dbox push laptop
    Push(commands::sync::Args),
    /// Fetch versions this repository lacks from a peer
    ///
    /// Takes every version the peer (which runs `dbox serve`) has and this
    /// repository lacks, verifying every object. A clean working tree whose
    /// HEAD is an ancestor of the single new head moves forward; one with
    /// uncommitted changes is never touched.
    ///
    ///     dbox pull laptop
    Pull(commands::sync::Args),
    Sync(commands::sync::Args),
    Demo(commands::demo::Args),
    Completions(commands::completions::Args),
    #[command(hide = true, name = "generate-manpages")]
    Manpages(commands::manpages::Args),
}

fn dispatch(cli: Cli, ui: &mut Ui) -> Result<(), CommandError> {
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(home) = dbox::identity::absolute_home_from(&cwd) {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var("DBOX_HOME", home);
        }
    }
    if let Some(dir) = &cli.chdir {
        std::env::set_current_dir(dir).map_err(|e| {
            CommandError::Failed(format!("cannot change to directory {}: {e}", dir.display()))
        })?;
    }
    match cli.command {
        Command::Init(a) => commands::init::run(a, ui),
        Command::Status(a) => commands::status::run(a, ui),
        Command::Commit(a) => commands::commit::run(a, ui),
        Command::Log(a) => commands::log::run(a, ui),
        Command::Show(a) => commands::show::run(a, ui),
        Command::Ls(a) => commands::ls::run(a, ui),
        Command::Diff(a) => commands::diff::run(a, ui),
        Command::Restore(a) => commands::restore::run(a, ui),
        Command::Checkout(a) => commands::checkout::run(a, ui),
        Command::Merge(a) => commands::merge::run(a, ui),
        Command::Fsck(a) => commands::fsck::run(a, ui),
        Command::Id(a) => commands::id::run(a, ui),
        Command::Peer(a) => commands::peer::run(a, ui),
        Command::Invite(a) => commands::invite::run(a, ui),
        Command::Clone(a) => commands::clone::run(a, ui),
        Command::Serve(a) => commands::serve::run(a, ui),
        Command::Push(a) => commands::sync::run(a, dbox::net::ops::Direction::Push, ui),
        Command::Pull(a) => commands::sync::run(a, dbox::net::ops::Direction::Pull, ui),
        Command::Sync(a) => commands::sync::run(a, dbox::net::ops::Direction::Both, ui),
        Command::Demo(a) => commands::demo::run(a, ui),
        Command::Completions(a) => commands::completions::run(a, ui),
        Command::Manpages(a) => commands::manpages::run(a, ui),
    }
}

/// Parses the command line and runs it.
pub fn run() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let mut ui = Ui::terminal();
    dbox::repo::set_lock_notice(crate::ui::lock_notice);
    let result = dispatch(cli, &mut ui);
    let flushed = ui.flush();
    let result = result.and(flushed.map_err(CommandError::from));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let (code, message, hint) = e.describe();
            if let Some(m) = message {
                let _ = ui.note(format!("error: {m}"));
            }
            if let Some(h) = hint {
                let _ = ui.note(format!("hint: {h}"));
            }
            std::process::ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definitions_are_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
