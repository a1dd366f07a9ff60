//! Scanning a working tree.
//!
//! [`scan`] walks the tree with a few threads sharing a queue of folders,
//! honours `.dboxignore` files (gitignore syntax, in any folder, applying to
//! the folder and below), never enters `.dbox` (in any case, at any depth),
//! never follows symbolic links, and returns every directory, regular file
//! and symbolic link with the `lstat` data of files and links (taken with
//! `fstatat` relative to the open folder, which is what makes a scan of
//! 200,000 files fast). Sockets, FIFOs and
//! devices are skipped with a warning. Paths are bytes relative to the root,
//! joined with `/`, so non-UTF-8 names are kept exactly.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use ignore::gitignore::Gitignore;

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
    /// Temporary files and links that a killed restore or checkout left
    /// (named as [`crate::folders`] names them), sorted; never content.
    pub leftovers: Vec<Vec<u8>>,
}

/// How the name of a temporary entry of a restore or checkout begins; 16
/// lowercase hex digits and [`TEMP_SUFFIX`] follow.
pub const TEMP_PREFIX: &str = ".dbox-restore-";
/// How the name of a temporary entry ends.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether a name looks like that of a temporary entry (never content).
fn looks_temp(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX.as_bytes()) && name.ends_with(TEMP_SUFFIX.as_bytes())
}

/// Whether `name` is exactly the name [`crate::folders`] gives a
/// temporary entry: [`TEMP_PREFIX`], 16 lowercase hex digits, [`TEMP_SUFFIX`].
pub fn is_temp_name(name: &[u8]) -> bool {
    name.len() == TEMP_PREFIX.len() + 16 + TEMP_SUFFIX.len()
        && looks_temp(name)
        && name[TEMP_PREFIX.len()..TEMP_PREFIX.len() + 16]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The absolute path of a relative tree path.
pub fn abs_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// A tree path as text (lossy for non-UTF-8 names).
pub fn display(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// A folder waiting to be read, with the ignore rules that apply in it
/// (innermost last).
struct Job {
    abs: PathBuf,
    rel: Vec<u8>,
    ignores: Arc<Vec<Arc<Gitignore>>>,
    /// In or under a folder that is a repository of its own (it has a
    /// `.dbox`): its temporary files are that repository's business.
    other_repo: bool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    active: usize,
    failed: Option<RepoError>,
}

fn ignored(stack: &[Arc<Gitignore>], path: &Path, is_dir: bool) -> bool {
    for g in stack.iter().rev() {
        match g.matched(path, is_dir) {
            ignore::Match::Ignore(_) => return true,
            ignore::Match::Whitelist(_) => return false,
            ignore::Match::None => {}
        }
    }
    false
}

/// Reads one folder: its entries go to `out`, its subfolders to `subdirs`,
/// temporary entries left by a killed restore to `leftovers`.
fn read_folder(
    job: &Job,
    out: &mut Vec<WtEntry>,
    warnings: &mut Vec<String>,
    leftovers: &mut Vec<Vec<u8>>,
    subdirs: &mut Vec<Job>,
) -> Result<()> {
    let entries: Vec<std::fs::DirEntry> = match std::fs::read_dir(&job.abs) {
        Ok(rd) => rd.collect::<std::io::Result<_>>().map_err(RepoError::io("read folder", &job.abs))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            warnings.push(format!("skipped {}: permission denied", display(&job.rel)));
            return Ok(());
        }
        Err(e) => return Err(RepoError::io("read folder", &job.abs)(e)),
    };
    let other_repo =
        job.other_repo || (!job.rel.is_empty() && entries.iter().any(|e| e.file_name() == ".dbox"));
    let mut ignores = job.ignores.clone();
    if entries.iter().any(|e| e.file_name() == IGNORE_FILE) {
        let mut b = ignore::gitignore::GitignoreBuilder::new(&job.abs);
        if let Some(err) = b.add(job.abs.join(IGNORE_FILE)) {
            warnings.push(format!("{}/{IGNORE_FILE}: {err}", display(&job.rel)));
        }
        match b.build() {
            Ok(g) => {
                let mut stack = (*ignores).clone();
                stack.push(Arc::new(g));
                ignores = Arc::new(stack);
            }
            Err(err) => warnings.push(format!("{}/{IGNORE_FILE}: {err}", display(&job.rel))),
        }
    }
    for e in entries {
        let name = e.file_name();
        let name = name.as_bytes();
        if name == b".dbox" && job.rel.is_empty() {
            continue;
        }
        let mut rel = job.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        // Temporary files of an interrupted restore are never content.
        if looks_temp(name) {
            if !other_repo && is_temp_name(name) && e.file_type().is_ok_and(|t| !t.is_dir()) {
                leftovers.push(rel);
            }
            continue;
        }
        if let Err(err) = dbox_store::Name::new(name.to_vec()) {
            warnings.push(format!("skipped {}: {err}", display(&rel)));
            continue;
        }
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(RepoError::io("stat", e.path())(err)),
        };
        let abs = e.path();
        if !ignores.is_empty() && ignored(&ignores, &abs, ft.is_dir()) {
            continue;
        }
        if ft.is_dir() {
            // A folder's own times are never compared: no stat needed.
            out.push(WtEntry { path: rel.clone(), kind: Kind::Dir, stat: Stat::default() });
            subdirs.push(Job { abs, rel, ignores: ignores.clone(), other_repo });
            continue;
        }
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            warnings.push(format!("skipped {}: not a file, folder or symbolic link", display(&rel)));
            continue;
        };
        // fstatat relative to the open folder: no walk from the root.
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(RepoError::io("stat", &abs)(err)),
        };
        out.push(WtEntry { path: rel, kind, stat: Stat::from_metadata(&meta) });
    }
    Ok(())
}

/// Scans the working tree at `root` with two threads sharing a queue of
/// folders.
pub fn scan(root: &Path) -> Result<Scan> {
    let queue = Mutex::new(Queue {
        jobs: vec![Job {
            abs: root.to_path_buf(),
            rel: Vec::new(),
            ignores: Arc::new(Vec::new()),
            other_repo: false,
        }],
        ..Queue::default()
    });
    let wake = Condvar::new();
    // Entries, warnings and leftovers, from every thread.
    type Found = (Vec<WtEntry>, Vec<String>, Vec<Vec<u8>>);
    let results: Mutex<Found> = Mutex::new((Vec::new(), Vec::new(), Vec::new()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut out = Vec::new();
                let mut warnings = Vec::new();
                let mut leftovers = Vec::new();
                loop {
                    let job = {
                        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if q.failed.is_some() {
                                break None;
                            }
                            if let Some(j) = q.jobs.pop() {
                                q.active += 1;
                                break Some(j);
                            }
                            if q.active == 0 {
                                break None;
                            }
                            q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let Some(job) = job else { break };
                    let mut subdirs = Vec::new();
                    let r = read_folder(&job, &mut out, &mut warnings, &mut leftovers, &mut subdirs);
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    q.active -= 1;
                    let new_work = !subdirs.is_empty();
                    match r {
                        Ok(()) => q.jobs.extend(subdirs),
                        Err(e) => {
                            q.failed.get_or_insert(e);
                        }
                    }
                    // Wake sleepers only when there is work for them, or
                    // when the scan is over.
                    if new_work || q.failed.is_some() || (q.jobs.is_empty() && q.active == 0) {
                        wake.notify_all();
                    }
                }
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                r.0.append(&mut out);
                r.1.append(&mut warnings);
                r.2.append(&mut leftovers);
            });
        }
    });
    if let Some(e) = queue.into_inner().unwrap_or_else(|e| e.into_inner()).failed {
        return Err(e);
    }
    let (mut entries, mut warnings, mut leftovers) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    warnings.sort();
    leftovers.sort();
    Ok(Scan { entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(), warnings, leftovers })
}
