//! Errors of the repository layer.

use std::io;
use std::path::PathBuf;

use dbox_store::StoreError;

/// Errors of repositories, working trees and the version graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file-system operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No repository here or above.
    #[error("not inside a dbox repository (looked in {path} and its parents)")]
    NotARepo {
        /// Where the search started.
        path: PathBuf,
    },
    /// `init` inside an existing repository.
    #[error("{path} is already inside the dbox repository at {root}")]
    AlreadyInRepo {
        /// The directory given to init.
        path: PathBuf,
        /// The existing repository's root.
        root: PathBuf,
    },
    /// A version reference that names nothing.
    #[error("unknown version {reference:?}")]
    UnknownVersion {
        /// The reference as typed.
        reference: String,
    },
    /// A prefix matching several versions.
    #[error("ambiguous version prefix {prefix:?}: it matches {}", candidates.join(", "))]
    AmbiguousVersion {
        /// The prefix.
        prefix: String,
        /// Short ids of some matches.
        candidates: Vec<String>,
    },
    /// A reference that is not of a known form.
    #[error("invalid version reference {reference:?}: use a hex id or prefix of at least 4 digits, HEAD, or HEAD~N")]
    BadReference {
        /// The reference as typed.
        reference: String,
    },
    /// HEAD is needed but there is no version yet.
    #[error("there is no version yet")]
    NoVersion,
    /// A path that does not exist in a version.
    #[error("{path} is not in version {version}")]
    PathNotInVersion {
        /// The path.
        path: String,
        /// The version's short id.
        version: String,
    },
    /// The operation would overwrite or delete unsaved data.
    #[error("{} file(s) hold content that is in no version: {}", paths.len(), paths.join(", "))]
    WouldLoseData {
        /// The files at risk.
        paths: Vec<String>,
    },
    /// A file kept changing while it was being read.
    #[error("{path} kept changing while it was being read; try again when it is not being written")]
    ChangedDuringRead {
        /// The file.
        path: PathBuf,
    },
    /// A damaged file in `.dbox/` or in the home directory.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored path that must not be written (it could escape the target).
    #[error("refusing to write {path:?}: {reason}")]
    UnsafePath {
        /// The path as stored.
        path: String,
        /// Why.
        reason: String,
    },
    /// A version that fails verification.
    #[error("version {id} is invalid")]
    BadVersion {
        /// The version's id.
        id: String,
        /// Why.
        #[source]
        source: dbox_store::DecodeError,
    },
    /// `merge` without a version when HEAD is the only head.
    #[error("nothing to merge: HEAD {head} is the only head")]
    NothingToMerge {
        /// HEAD's short id.
        head: String,
    },
    /// `merge` without a version when there are several other heads.
    #[error("{} other heads: {}; name the one to merge", heads.len(), heads.join(", "))]
    SeveralHeads {
        /// Short ids of the other heads, newest first.
        heads: Vec<String>,
    },
    /// The operation needs a working tree without uncommitted changes.
    #[error("the working tree has {} uncommitted change(s): {}", paths.len(), list_some(paths))]
    UncommittedChanges {
        /// The changed paths.
        paths: Vec<String>,
    },
    /// Invalid arguments.
    #[error("{0}")]
    Usage(String),
    /// Talking to a peer failed.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// Up to ten items joined by commas, then how many more there are.
fn list_some(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

impl RepoError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| RepoError::Io { op, path, source }
    }
}

/// Result type of this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
