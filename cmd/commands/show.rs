//! `dbox show`.

use dbox::snapshot::{compare, flatten, Change};
use dbox::worktree::display;

use super::{format_time, open_repo, resolve, version_json};
use crate::error::CommandError;
use crate::ui::Ui;

/// Show one version: who, when, why, and what it changed
///
/// VERSION is a full id, a unique prefix of at least 4 hex digits, HEAD or
/// HEAD~N. The changes are against the first parent.
///
/// JSON: {"id", "parents", "author", "seq", "time", "time_ms", "host",
/// "message", "root", "changes": [{"path", "change", "old_size", "new_size"}]}.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version
    #[arg(value_name = "VERSION", default_value = "HEAD")]
    pub reference: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let id = resolve(&repo, &args.reference)?;
    let (v, info) = repo.version(&id)?;
    let store = repo.store();
    let new = flatten(store, &v.body().root)?;
    let old = match v.body().parents.first() {
        Some(p) => flatten(store, &store.get_version(p)?.body().root)?,
        None => Default::default(),
    };
    let changes = compare(&old, &new);
    if args.json {
        let mut m = version_json(&id, &v, &info);
        m.insert("root".into(), v.body().root.to_string().into());
        m.insert(
            "changes".into(),
            changes
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "path": display(&d.path), "change": d.change.as_str(),
                        "old_size": d.old_size, "new_size": d.new_size,
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
        ui.json(&serde_json::Value::Object(m))?;
        return Ok(());
    }
    ui.line(format!("version {id}"))?;
    for p in &v.body().parents {
        ui.line(format!("parent  {p}"))?;
    }
    ui.line(format!("author  {} (version {} of this device)", v.body().author, v.body().seq))?;
    ui.line(format!(
        "date    {}{}",
        format_time(info.time_ms),
        if info.host.is_empty() { String::new() } else { format!(" on {}", info.host) }
    ))?;
    ui.line("")?;
    for l in info.message.lines() {
        ui.line(format!("    {l}"))?;
    }
    ui.line("")?;
    for d in &changes {
        let tag = match d.change {
            Change::Added => "A",
            Change::Modified => "M",
            Change::Deleted => "D",
            Change::TypeChanged => "T",
        };
        ui.line(format!("{tag} {}", display(&d.path)))?;
    }
    Ok(())
}
