//! Scanning a working tree.
//!
//! [`scan`] walks the tree in parallel, honours `.dboxignore` files
//! (gitignore syntax, in any folder), never enters `.dbox` (in any case, at
//! any depth), never follows symbolic links, and returns every directory,
//! regular file and symbolic link with its `lstat` data. Sockets, FIFOs and
//! devices are skipped with a warning. Paths are bytes relative to the root,
//! joined with `/`, so non-UTF-8 names are kept exactly.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{RepoError, Result};

/// Name of the ignore files.
pub const IGNORE_FILE: &str = ".dboxignore";

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
}

/// The `lstat` data the stat cache compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// `st_mode`.
    pub mode: u32,
}

impl Stat {
    /// Reads the fields from metadata.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        Self {
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
            ino: m.ino(),
            mode: m.mode(),
        }
    }

    /// Whether the owner's executable bit is set.
    pub fn executable(&self) -> bool {
        self.mode & 0o100 != 0
    }
}

/// One scanned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WtEntry {
    /// Path relative to the root, `/`-separated bytes.
    pub path: Vec<u8>,
    /// Kind.
    pub kind: Kind,
    /// `lstat` data.
    pub stat: Stat,
}

/// A scanned working tree: entries by path, and warnings.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every entry, by path.
    pub entries: BTreeMap<Vec<u8>, WtEntry>,
    /// Things skipped, as sentences.
    pub warnings: Vec<String>,
}

/// The absolute path of a relative tree path.
pub fn abs_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// A tree path as text (lossy for non-UTF-8 names).
pub fn display(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// Scans the working tree at `root`.
pub fn scan(root: &Path) -> Result<Scan> {
    let out = Mutex::new(Scan::default());
    let first_error: Mutex<Option<RepoError>> = Mutex::new(None);
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .ignore(false)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .parents(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| !e.file_name().as_bytes().eq_ignore_ascii_case(b".dbox"))
        .threads(2)
        .build_parallel();
    walker.run(|| {
        Box::new(|res| {
            let push_warning = |w: String| out.lock().unwrap_or_else(|e| e.into_inner()).warnings.push(w);
            let entry = match res {
                Ok(e) => e,
                Err(e) => {
                    push_warning(format!("skipped: {e}"));
                    return ignore::WalkState::Continue;
                }
            };
            if entry.depth() == 0 {
                return ignore::WalkState::Continue;
            }
            let rel = match entry.path().strip_prefix(root) {
                Ok(r) => r.as_os_str().as_bytes().to_vec(),
                Err(_) => return ignore::WalkState::Continue,
            };
            let meta = match entry.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ignore::WalkState::Continue,
                Err(e) => {
                    let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(RepoError::io("stat", entry.path())(e));
                    return ignore::WalkState::Quit;
                }
            };
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                push_warning(format!("skipped {}: not a file, folder or symbolic link", display(&rel)));
                return ignore::WalkState::Continue;
            };
            let e = WtEntry { path: rel.clone(), kind, stat: Stat::from_metadata(&meta) };
            out.lock().unwrap_or_else(|e| e.into_inner()).entries.insert(rel, e);
            ignore::WalkState::Continue
        })
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut scan = out.into_inner().unwrap_or_else(|e| e.into_inner());
    scan.warnings.sort();
    Ok(scan)
}
