//! `dbox diff`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dbox::cache::Content;
use dbox::snapshot::{compare, flatten, worktree_flat, Change, FlatEntry};
use dbox::worktree::{abs_path, display};
use dbox::Repo;

use super::{open_repo, repo_path, resolve};
use crate::error::CommandError;
use crate::ui::Ui;

/// Largest file shown as a text diff.
const MAX_TEXT_DIFF: u64 = 8 * 1024 * 1024;

/// Show changed paths between versions, or a version and the working tree
///
/// With no version: HEAD against the working tree. With one: that version
/// against the working tree. With two: the first against the second. Lists
/// changed paths with their sizes; --stat adds totals. Paths after `--` get a
/// unified diff when both sides are text.
///
///     dbox diff
///     dbox diff HEAD~3 HEAD --stat
///     dbox diff HEAD~1 -- notes/plan.md
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Versions to compare (zero, one or two)
    #[arg(num_args = 0..=2)]
    pub versions: Vec<String>,
    /// Show totals of changed files and bytes
    #[arg(long)]
    pub stat: bool,
    /// Show a unified diff of these files
    #[arg(last = true)]
    pub paths: Vec<PathBuf>,
}

enum Side {
    Version(BTreeMap<Vec<u8>, FlatEntry>),
    Worktree(BTreeMap<Vec<u8>, FlatEntry>),
}

impl Side {
    fn map(&self) -> &BTreeMap<Vec<u8>, FlatEntry> {
        match self {
            Side::Version(m) | Side::Worktree(m) => m,
        }
    }

    fn read(&self, repo: &Repo, path: &[u8]) -> Result<Option<Vec<u8>>, CommandError> {
        let Some(e) = self.map().get(path) else { return Ok(None) };
        let Content::File { size, chunks, .. } = &e.content else { return Ok(None) };
        if *size > MAX_TEXT_DIFF {
            return Ok(None);
        }
        match self {
            Side::Version(_) => {
                let mut buf = Vec::new();
                for id in chunks {
                    buf.extend_from_slice(&repo.store().get_chunk(id)?);
                    // A lying size must not make diff read without bound.
                    if buf.len() as u64 > *size {
                        return Err(CommandError::Failed(format!(
                            "{}: the version's chunks hold more than the {size} bytes it says",
                            display(path)
                        )));
                    }
                }
                Ok(Some(buf))
            }
            Side::Worktree(_) => {
                let p = abs_path(repo.root(), path);
                Ok(Some(std::fs::read(&p).map_err(|e| dbox::RepoError::Io {
                    op: "read",
                    path: p,
                    source: e,
                })?))
            }
        }
    }
}

fn version_side(repo: &Repo, reference: &str) -> Result<Side, CommandError> {
    let id = resolve(repo, reference)?;
    let v = repo.store().get_version(&id)?;
    Ok(Side::Version(flatten(repo.store(), &v.body().root)?))
}

fn is_text(b: &[u8]) -> bool {
    !b[..b.len().min(8192)].contains(&0) && std::str::from_utf8(b).is_ok()
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let (a, b) = match args.versions.as_slice() {
        [] => (version_side(&repo, "HEAD")?, Side::Worktree(worktree_flat(&repo)?)),
        [x] => (version_side(&repo, x)?, Side::Worktree(worktree_flat(&repo)?)),
        [x, y] => (version_side(&repo, x)?, version_side(&repo, y)?),
        _ => return Err(CommandError::Failed("give at most two versions".into())),
    };
    let diffs = compare(a.map(), b.map());
    if args.paths.is_empty() {
        let mut bytes_before = 0u64;
        let mut bytes_after = 0u64;
        for d in &diffs {
            let sizes = match (d.old_size, d.new_size) {
                (Some(o), Some(n)) => format!("{o} -> {n} bytes"),
                (None, Some(n)) => format!("{n} bytes"),
                (Some(o), None) => format!("{o} bytes"),
                (None, None) => String::new(),
            };
            bytes_before += d.old_size.unwrap_or(0);
            bytes_after += d.new_size.unwrap_or(0);
            let tag = match d.change {
                Change::Added => "A",
                Change::Modified => "M",
                Change::Deleted => "D",
                Change::TypeChanged => "T",
            };
            ui.line(format!("{tag} {}  {sizes}", display(&d.path)).trim_end())?;
        }
        if args.stat {
            ui.line(format!(
                "{} path(s) changed, {bytes_before} bytes before, {bytes_after} bytes after",
                diffs.len()
            ))?;
        }
        return Ok(());
    }
    for p in &args.paths {
        let rel = repo_path(&repo, p)?;
        let name = display(&rel);
        let old = a.read(&repo, &rel)?;
        let new = b.read(&repo, &rel)?;
        if old == new {
            continue;
        }
        let empty = Vec::new();
        let (o, n) = (old.as_ref().unwrap_or(&empty), new.as_ref().unwrap_or(&empty));
        if !is_text(o) || !is_text(n) {
            ui.line(format!("Binary or large files differ: {name}"))?;
            continue;
        }
        let (os, ns) = (String::from_utf8_lossy(o), String::from_utf8_lossy(n));
        let diff = similar::TextDiff::from_lines(os.as_ref(), ns.as_ref());
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
        ui.out().write_all(text.as_bytes())?;
    }
    Ok(())
}
