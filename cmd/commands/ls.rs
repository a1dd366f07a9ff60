//! `dbox ls`.

use std::path::PathBuf;

use dbox::cache::Content;
use dbox::snapshot::flatten;
use dbox::worktree::display;

use super::{open_repo, repo_path, resolve};
use crate::error::CommandError;
use crate::ui::Ui;

/// List the files of a version
///
/// Lists every path under PATH (default: everything) in VERSION (default
/// HEAD), with its kind and size.
///
/// JSON: [{"path", "kind" (file, dir, symlink), "size", "executable",
/// "target"}].
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version
    #[arg(value_name = "VERSION", default_value = "HEAD")]
    pub reference: String,
    /// Only this file or folder
    pub path: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let id = resolve(&repo, &args.reference)?;
    let v = repo.store().get_version(&id)?;
    let all = flatten(repo.store(), &v.body().root)?;
    let prefix = match &args.path {
        Some(p) => Some(repo_path(&repo, p)?),
        None => None,
    };
    let selected: Vec<_> = all
        .iter()
        .filter(|(p, _)| match &prefix {
            None => true,
            Some(q) => *p == q || (p.starts_with(q) && p.get(q.len()) == Some(&b'/')),
        })
        .collect();
    if let Some(q) = &prefix {
        if selected.is_empty() {
            return Err(dbox::RepoError::PathNotInVersion { path: display(q), version: id.short() }.into());
        }
    }
    if args.json {
        let list: Vec<_> = selected
            .iter()
            .map(|(p, e)| match &e.content {
                Content::File { size, executable, .. } => {
                    serde_json::json!({"path": display(p), "kind": "file", "size": size, "executable": executable})
                }
                Content::Dir => serde_json::json!({"path": display(p), "kind": "dir"}),
                Content::Symlink(t) => serde_json::json!({"path": display(p), "kind": "symlink", "target": display(t)}),
            })
            .collect();
        ui.json(&serde_json::Value::Array(list))?;
        return Ok(());
    }
    for (p, e) in selected {
        let line = match &e.content {
            Content::File { size, executable, .. } => {
                format!("{} {:>12} {}", if *executable { "x" } else { "f" }, size, display(p))
            }
            Content::Dir => format!("d {:>12} {}/", "-", display(p)),
            Content::Symlink(t) => format!("l {:>12} {} -> {}", "-", display(p), display(t)),
        };
        ui.line(line)?;
    }
    Ok(())
}
