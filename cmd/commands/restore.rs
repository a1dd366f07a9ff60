//! `dbox restore`.

use std::path::PathBuf;

use dbox::materialize::{restore, RestoreOptions};
use dbox::worktree::display;

use super::{open_repo, repo_path, resolve};
use crate::error::CommandError;
use crate::ui::Ui;

/// Restore files from a version
///
/// Writes the files of VERSION (default HEAD) back into the working tree,
/// or into DIR with --to. With PATHs, only those files or folders. Restores
/// contents, executable bits, symbolic links (as links), empty folders and
/// modification times. HEAD does not move.
///
/// Never overwrites or deletes a file whose current content is in no version:
/// it lists such files and fails, unless --force.
///
///     dbox restore --from HEAD~2 notes/plan.md
///     dbox restore --from 3fa9c2 --to /tmp/old-copy
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version to restore from
    #[arg(long, value_name = "VERSION", default_value = "HEAD")]
    pub from: String,
    /// Write into this folder instead of the working tree
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Overwrite and delete even changes that are in no version
    #[arg(long)]
    pub force: bool,
    /// Only these files or folders
    pub paths: Vec<PathBuf>,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let id = resolve(&repo, &args.from)?;
    let mut paths = Vec::new();
    for p in &args.paths {
        let rel = repo_path(&repo, p)?;
        if rel.is_empty() {
            paths.clear();
            break;
        }
        paths.push(rel);
    }
    let out = restore(&repo, &id, &RestoreOptions { paths, to: args.to.clone(), force: args.force })?;
    for w in &out.warnings {
        ui.note(format!("warning: {w}"))?;
    }
    for p in &out.deleted {
        ui.line(format!("deleted {}", display(p)))?;
    }
    for p in &out.written {
        ui.line(format!("restored {}", display(p)))?;
    }
    ui.note(format!(
        "Restored {} path(s) from {}, deleted {}, {} already as in that version{}",
        out.written.len(),
        id.short(),
        out.deleted.len(),
        out.unchanged,
        args.to.map(|d| format!(", into {}", d.display())).unwrap_or_default()
    ))?;
    Ok(())
}
