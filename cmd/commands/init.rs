//! `dbox init`.

use std::path::PathBuf;

use dbox::identity::{home_dir, Device};
use dbox::Repo;

use crate::error::CommandError;
use crate::ui::Ui;

/// Create a repository in a folder
///
/// Makes `.dbox/` in DIR (default: the current folder) with a new repository
/// id and repo key, and creates this device's key in $DBOX_HOME if there is
/// none. Refuses inside an existing repository.
///
///     dbox init ~/Documents
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder (created if missing)
    pub dir: Option<PathBuf>,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let device = Device::load_or_create(&home_dir()?)?;
    let repo = Repo::init(&dir)?;
    dbox::members::Members::load_or_found(&repo, &device)?;
    ui.line(format!("Initialized an empty dbox repository in {}", repo.root().display()))?;
    ui.note(format!("This device is {}", device.peer_id().short()))?;
    Ok(())
}
