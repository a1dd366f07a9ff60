//! Every error a command can end with, mapped in one place to an exit code
//! and an optional hint.
//!
//! Exit codes: 0 success, 1 the command could not do what was asked (a
//! user-facing error: no repository, unknown version, data that would be
//! lost, damage found), 2 usage (bad arguments), 255 internal error.

use dbox::store::StoreError;
use dbox::RepoError;

/// How a command failed.
#[derive(Debug)]
pub enum CommandError {
    /// A library error.
    Repo(RepoError),
    /// Output could not be written (a closed pipe ends quietly).
    Output(std::io::Error),
    /// A problem reported by the command itself, with exit code 1.
    Failed(String),
}

impl From<RepoError> for CommandError {
    fn from(e: RepoError) -> Self {
        Self::Repo(e)
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        Self::Repo(RepoError::Store(e))
    }
}

impl From<std::io::Error> for CommandError {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}

pub use dbox::store::error::chain;

impl CommandError {
    /// Exit code, message and hint.
    pub fn describe(&self) -> (u8, Option<String>, Option<String>) {
        match self {
            CommandError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => (0, None, None),
            CommandError::Output(e) => (1, Some(format!("cannot write output: {e}")), None),
            CommandError::Failed(m) => (1, Some(m.clone()), None),
            CommandError::Repo(e) => {
                let hint = match e {
                    RepoError::NotARepo { .. } => {
                        Some("run `dbox init` to make this folder a repository".into())
                    }
                    RepoError::WouldLoseData { .. } => Some(
                        "commit those changes first (`dbox commit`), or pass --force to overwrite them"
                            .into(),
                    ),
                    RepoError::AmbiguousVersion { .. } => Some("type more digits of the id".into()),
                    RepoError::UnknownVersion { .. } | RepoError::BadReference { .. } => {
                        Some("`dbox log` lists the versions".into())
                    }
                    RepoError::NoVersion => Some("make one with `dbox commit`".into()),
                    RepoError::UncommittedChanges { .. } => {
                        Some("commit them first (`dbox commit`), then merge".into())
                    }
                    RepoError::SeveralHeads { .. } => {
                        Some("`dbox log --graph` shows them; run `dbox merge VERSION`".into())
                    }
                    RepoError::Store(StoreError::Locked { .. }) => {
                        Some("wait for the other dbox command to finish, then try again".into())
                    }
                    RepoError::Store(
                        StoreError::CorruptObject { .. }
                        | StoreError::CorruptPack { .. }
                        | StoreError::CorruptIndex { .. },
                    )
                    | RepoError::Damaged { .. } => Some("`dbox fsck` checks the whole repository".into()),
                    _ => None,
                };
                let code = match e {
                    RepoError::Store(StoreError::Random(_)) => 255,
                    _ => 1,
                };
                (code, Some(chain(e)), hint)
            }
        }
    }
}
