//! `dbox log`.

use std::path::PathBuf;

use dbox::graph::render;
use dbox::snapshot::path_changed;
use dbox::store::VersionId;

use super::{format_time, open_repo, repo_path, version_json};
use crate::error::CommandError;
use crate::ui::Ui;

/// Show versions, newest first
///
/// Lists every version reachable from every head. --graph draws the version
/// graph with lanes, forks and merges as `git log --graph` does. With a PATH,
/// lists only versions that changed that file or folder: its own history.
///
///     dbox log --graph -n 20
///     dbox log notes/plan.md
///
/// JSON: [{"id", "parents": [id], "author", "seq", "time" (RFC 3339),
/// "time_ms", "host", "message", "head": bool}].
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Draw the version graph
    #[arg(long)]
    pub graph: bool,
    /// Show at most N versions
    #[arg(short = 'n', long = "max-count", value_name = "N")]
    pub max_count: Option<usize>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Only versions that changed this file or folder
    pub path: Option<PathBuf>,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let graph = repo.graph()?;
    let head = repo.head()?;
    let mut order = graph.log_order(&graph.heads());
    if let Some(p) = &args.path {
        let rel = repo_path(&repo, p)?;
        let store = repo.store();
        let mut kept = Vec::new();
        for id in order {
            let v = store.get_version(&id)?;
            let parent_root = match v.body().parents.first() {
                Some(p) => Some(store.get_version(p)?.body().root),
                None => None,
            };
            if path_changed(store, parent_root.as_ref(), &v.body().root, &rel)? {
                kept.push(id);
            }
        }
        order = kept;
    }
    if let Some(n) = args.max_count {
        order.truncate(n);
    }
    let mut details = Vec::with_capacity(order.len());
    for id in &order {
        let (v, info) = repo.version(id)?;
        details.push((*id, v, info));
    }
    if args.json {
        let list: Vec<_> = details
            .iter()
            .map(|(id, v, info)| {
                let mut m = version_json(id, v, info);
                m.insert("head".into(), (Some(*id) == head).into());
                serde_json::Value::Object(m)
            })
            .collect();
        ui.json(&serde_json::Value::Array(list))?;
        return Ok(());
    }
    if details.is_empty() {
        match &args.path {
            Some(p) if !graph.is_empty() => ui.note(format!("No version changed {}", p.display()))?,
            _ => ui.note("No versions yet")?,
        }
        return Ok(());
    }
    let label = |id: &VersionId| -> String {
        let Some((_, v, info)) = details.iter().find(|d| d.0 == *id) else { return id.short() };
        let first = info.message.lines().next().unwrap_or("");
        let mark = if Some(*id) == head { " (HEAD)" } else { "" };
        format!("{}{mark} {} {} {first}", id.short(), format_time(info.time_ms), v.body().author.short())
    };
    if args.graph {
        for line in render(&graph, &order, label) {
            ui.line(line)?;
        }
    } else {
        for id in &order {
            ui.line(label(id))?;
        }
    }
    Ok(())
}
