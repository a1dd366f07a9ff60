//! `dbox status`.

use dbox::snapshot::status;
use dbox::worktree::display;

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Show what changed in the working tree since HEAD
///
/// Lists added, modified, deleted and type-changed paths, and says when the
/// version graph has other heads (concurrent lines of work). Only files whose
/// size, times, inode or mode changed are read.
///
/// JSON: {"head": id|null, "changes": [{"path", "change"}], "other_heads": [id],
/// "warnings": [text]}; change is added, modified, deleted or type-changed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let st = status(&repo)?;
    if args.json {
        ui.json(&serde_json::json!({
            "head": st.head.map(|h| h.to_string()),
            "changes": st.changes.iter().map(|(p, c)| serde_json::json!({"path": display(p), "change": c.as_str()})).collect::<Vec<_>>(),
            "other_heads": st.other_heads.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "warnings": st.warnings,
        }))?;
        return Ok(());
    }
    for w in &st.warnings {
        ui.note(format!("warning: {w}"))?;
    }
    match st.head {
        Some(h) => ui.line(format!("On version {}", h.short()))?,
        None => ui.line("No version yet")?,
    }
    if st.changes.is_empty() {
        ui.line("Nothing changed")?;
    }
    for (p, c) in &st.changes {
        let tag = match c {
            dbox::snapshot::Change::Added => "A",
            dbox::snapshot::Change::Modified => "M",
            dbox::snapshot::Change::Deleted => "D",
            dbox::snapshot::Change::TypeChanged => "T",
        };
        ui.line(format!("{tag} {}", display(p)))?;
    }
    if !st.other_heads.is_empty() {
        let list: Vec<String> = st.other_heads.iter().map(|h| h.short()).collect();
        ui.line(format!(
            "{} other head(s): {} (`dbox log --graph` shows them, `dbox checkout` switches)",
            list.len(),
            list.join(", ")
        ))?;
    }
    Ok(())
}
