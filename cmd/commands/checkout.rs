//! `dbox checkout`.

use dbox::materialize::checkout;

use super::{open_repo, resolve};
use crate::error::CommandError;
use crate::ui::Ui;

/// Move HEAD and the working tree to another version
///
/// Typically used to switch to another head. Files that are not in HEAD and
/// not in VERSION (never committed) are left alone. Never overwrites or
/// deletes content that is in no version, unless --force. If another dbox
/// command is writing, says so and waits for it (30 s at most).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version
    #[arg(value_name = "VERSION")]
    pub reference: String,
    /// Overwrite and delete even changes that are in no version
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let id = resolve(&repo, &args.reference)?;
    let out = checkout(&repo, &id, args.force)?;
    for w in &out.warnings {
        ui.note(format!("warning: {w}"))?;
    }
    ui.line(format!(
        "HEAD is now {} ({} written, {} deleted, {} unchanged)",
        id.short(),
        out.written.len(),
        out.deleted.len(),
        out.unchanged
    ))?;
    Ok(())
}
