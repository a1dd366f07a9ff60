//! One module per subcommand: an `Args` struct whose doc comment is the
//! `--help` text, and a `run` function.

pub mod checkout;
pub mod clone;
pub mod commit;
pub mod completions;
pub mod demo;
pub mod diff;
pub mod fsck;
pub mod id;
pub mod init;
pub mod invite;
pub mod log;
pub mod ls;
pub mod manpages;
pub mod merge;
pub mod peer;
pub mod restore;
pub mod serve;
pub mod show;
pub mod status;
pub mod sync;

use std::path::{Component, Path, PathBuf};

use dbox::store::VersionId;
use dbox::{Repo, RepoError};

use crate::error::CommandError;

/// Opens the repository containing the current directory.
pub fn open_repo() -> Result<Repo, CommandError> {
    let cwd =
        std::env::current_dir().map_err(|e| RepoError::Io { op: "read", path: ".".into(), source: e })?;
    Ok(Repo::discover(&cwd)?)
}

/// Resolves a reference against the repository's graph.
pub fn resolve(repo: &Repo, reference: &str) -> Result<VersionId, CommandError> {
    let graph = repo.graph()?;
    Ok(repo.resolve(&graph, reference)?)
}

/// A path typed by the user, as a `/`-separated path relative to the
/// repository root. It may name something that no longer exists.
pub fn repo_path(repo: &Repo, typed: &Path) -> Result<Vec<u8>, CommandError> {
    use std::os::unix::ffi::OsStrExt;
    let cwd =
        std::env::current_dir().map_err(|e| RepoError::Io { op: "read", path: ".".into(), source: e })?;
    let abs = if typed.is_absolute() { typed.to_path_buf() } else { cwd.join(typed) };
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    // Resolve links in the part that exists (a linked ~/docs, /tmp on
    // macOS), so the path compares with the repository's real root.
    let existing = lexical.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    let mut norm = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    if let Ok(rest) = lexical.strip_prefix(existing) {
        norm.push(rest);
    }
    let root = repo.root();
    let rel = norm.strip_prefix(root).map_err(|_| {
        CommandError::Failed(format!("{} is outside the repository at {}", typed.display(), root.display()))
    })?;
    let bytes = rel.as_os_str().as_bytes().to_vec();
    if bytes.first() == Some(&b'.') && rel.starts_with(".dbox") {
        return Err(CommandError::Failed("paths inside .dbox are not part of any version".into()));
    }
    Ok(bytes)
}

/// The JSON fields every command shows for a version (`log`, `show`).
pub fn version_json(
    id: &VersionId,
    v: &dbox::store::SignedVersion,
    info: &dbox::store::VersionInfo,
) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(map) = serde_json::json!({
        "id": id.to_string(),
        "parents": v.body().parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "author": v.body().author.to_string(),
        "seq": v.body().seq,
        "time": rfc3339(info.time_ms),
        "time_ms": info.time_ms,
        "host": info.host,
        "message": info.message,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

/// Formats Unix milliseconds as local time.
pub fn format_time(ms: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) => t.format("%Y-%m-%d %H:%M:%S %z").to_string(),
        _ => format!("@{ms}"),
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC, for JSON.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}
