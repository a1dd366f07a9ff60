//! `dbox commit`.

use dbox::identity::{home_dir, Device};
use dbox::snapshot::{commit, summarize, CommitOptions};
use dbox::worktree::display;

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Record the whole working tree as a new signed version
///
/// Without -m the message summarises the change ("3 modified, 1 added").
/// Prints the new version's id. When nothing changed, says so and makes no
/// version. If another dbox command is writing, says so and waits for it
/// (30 s at most). Refuses in a folder that `dbox clone` is still filling,
/// or whose clone was cut off before it had a version: `dbox pull origin`
/// finishes it.
///
/// JSON: {"version": id|null, "parent": id|null, "message", "changes":
/// [{"path", "change"}], "files_read", "bytes_read", "warnings"}.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The message
    #[arg(short, long)]
    pub message: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let device = Device::load_or_create(&home_dir()?)?;
    let out = commit(&repo, &device, &CommitOptions { message: args.message })?;
    if args.json {
        ui.json(&serde_json::json!({
            "version": out.version.map(|v| v.to_string()),
            "parent": out.parent.map(|v| v.to_string()),
            "message": out.message,
            "changes": out.changes.iter().map(|(p, c)| serde_json::json!({"path": display(p), "change": c.as_str()})).collect::<Vec<_>>(),
            "files_read": out.files_read,
            "bytes_read": out.bytes_read,
            "warnings": out.warnings,
        }))?;
        return Ok(());
    }
    for w in &out.warnings {
        ui.note(format!("warning: {w}"))?;
    }
    match out.version {
        Some(v) => {
            ui.note(format!("Committed {} ({})", v.short(), summarize(&out.changes)))?;
            ui.line(v.to_string())?;
        }
        None => ui.line("Nothing changed; no new version")?,
    }
    Ok(())
}
