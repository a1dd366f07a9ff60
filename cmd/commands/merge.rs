//! `dbox merge`.

use dbox::identity::{home_dir, Device};
use dbox::merge::{merge, MergeKind, MergeOptions, Side};
use dbox::snapshot::summarize;
use dbox::worktree::display;

use super::{open_repo, resolve};
use crate::error::CommandError;
use crate::ui::Ui;

/// Join HEAD with another head
///
/// Without VERSION, merges the only head other than HEAD (several other
/// heads are listed and one must be named). Paths changed on one side since
/// the common ancestor are taken; a file changed on both sides is merged
/// line by line when it is text and the edits do not touch, otherwise HEAD's
/// content stays and the other's is kept beside it as
/// NAME.conflict-<ID>.EXT. A file deleted on one side and edited on the
/// other keeps the edit. The result is a new version with two parents,
/// checked out into the working tree. When HEAD is an ancestor of VERSION
/// the merge is a fast-forward (a checkout); when VERSION is already in
/// HEAD's history there is nothing to do. The working tree must have no
/// uncommitted changes.
///
/// JSON: {"result": "merged"|"fast-forward"|"up-to-date", "head", "other",
/// "base": id|null, "version", "message": text|null, "changes": [{"path",
/// "change"}], "merged_lines": [path], "conflicts": [{"path", "copy",
/// "from"}], "kept_edits": [{"path", "deleted_in": "head"|"other"}],
/// "written", "deleted", "warnings"}.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version to merge (default: the only other head)
    #[arg(value_name = "VERSION")]
    pub reference: Option<String>,
    /// The message of the merge version
    #[arg(short, long)]
    pub message: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let other = args.reference.as_deref().map(|r| resolve(&repo, r)).transpose()?;
    let device = Device::load_or_create(&home_dir()?)?;
    let out = merge(&repo, &device, other, &MergeOptions { message: args.message })?;
    if args.json {
        ui.json(&serde_json::json!({
            "result": out.kind.as_str(),
            "head": out.head.to_string(),
            "other": out.other.to_string(),
            "base": out.base.map(|b| b.to_string()),
            "version": out.version.to_string(),
            "message": out.message,
            "changes": out.changes.iter().map(|(p, c)| serde_json::json!({"path": display(p), "change": c.as_str()})).collect::<Vec<_>>(),
            "merged_lines": out.line_merged.iter().map(|p| display(p)).collect::<Vec<_>>(),
            "conflicts": out.conflicts.iter().map(|c| serde_json::json!({
                "path": display(&c.path),
                "copy": display(&c.copy),
                "from": c.from.to_string(),
            })).collect::<Vec<_>>(),
            "kept_edits": out.kept_edits.iter().map(|k| serde_json::json!({
                "path": display(&k.path),
                "deleted_in": k.deleted_in.as_str(),
            })).collect::<Vec<_>>(),
            "written": out.checkout.written.len(),
            "deleted": out.checkout.deleted.len(),
            "warnings": out.checkout.warnings,
        }))?;
        return Ok(());
    }
    for w in &out.checkout.warnings {
        ui.note(format!("warning: {w}"))?;
    }
    let (head, other) = (out.head.short(), out.other.short());
    match out.kind {
        MergeKind::UpToDate => {
            ui.line(format!("Already up to date: {other} is in the history of HEAD {head}"))?;
            return Ok(());
        }
        MergeKind::FastForward => {
            ui.line(format!("Fast-forward from {head} to {other} ({})", summarize(&out.changes)))?;
            return Ok(());
        }
        MergeKind::Merged => {}
    }
    let base = out.base.map_or_else(|| "no common ancestor".to_string(), |b| format!("base {}", b.short()));
    ui.line(format!("Merged {other} into {head} ({base}): {}", summarize(&out.changes)))?;
    for p in &out.line_merged {
        ui.line(format!("merged line by line: {}", display(p)))?;
    }
    for c in &out.conflicts {
        let whose = if c.from == out.other {
            "the other head's".to_string()
        } else {
            format!("{}'s", c.from.short())
        };
        ui.line(format!("conflict: {} kept; {whose} version is in {}", display(&c.path), display(&c.copy)))?;
    }
    for k in &out.kept_edits {
        let (deleted, edited) = match k.deleted_in {
            Side::Head => ("HEAD", "the other head"),
            Side::Other => ("the other head", "HEAD"),
        };
        ui.line(format!("kept edit: {} (deleted in {deleted}, edited in {edited})", display(&k.path)))?;
    }
    ui.line(format!("HEAD is now {}", out.version))?;
    Ok(())
}
