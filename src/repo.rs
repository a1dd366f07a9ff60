//! Repositories: the `.dbox/` directory at the root of a working tree.
//!
//! ```text
//! .dbox/format    "dbox repository 1\n": marker and format version
//! .dbox/store/    the object store (crate dbox-store; holds the repo key, 0600)
//! .dbox/HEAD      hex id of the version the working tree is based on, "\n"
//!                 (absent before the first commit)
//! .dbox/versions  append-only log, one line per version:
//!                 "<id> <time ms> <author> <seq> <parent>,<parent>|-\n"
//! .dbox/cache     the stat cache (see crate::cache)
//! ```
//!
//! The versions log lets graph operations run without reading or verifying
//! versions; it is appended (and fsynced) only after the version and
//! everything it reaches are flushed to the store. A torn last line (a crash
//! mid-append) is ignored; any other damaged line is an error naming the
//! file, and `dbox fsck` rebuilds the log from the store.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbox_store::{
    ObjectKind, PeerId, RepoId, RepoKey, SignedVersion, Store, StoreOptions, VersionId, VersionInfo,
};

use crate::error::{RepoError, Result};
use crate::fsutil::{append_durable, read_small, write_atomic};
use crate::graph::{Graph, GraphNode};

/// Name of the repository directory.
pub const DOT_DIR: &str = ".dbox";
const FORMAT_LINE: &str = "dbox repository 1\n";
/// In `.dbox/`: a clone is filling the folder ([`Repo::mark_cloning`]).
const CLONING: &str = "cloning";
/// Largest versions log read (about 3 million versions).
const MAX_VERSIONS_LOG: u64 = 1 << 30;
/// How long a command waits for another writer before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a command does when it must wait for another process's writer
/// lock (the CLI prints a line saying so); see [`set_lock_notice`].
static LOCK_NOTICE: std::sync::OnceLock<fn(Option<u32>)> = std::sync::OnceLock::new();

/// Sets, once per process, what happens when a command must wait for the
/// writer lock another process holds: `notice` gets that process's pid
/// where the lock file names one.
pub fn set_lock_notice(notice: fn(Option<u32>)) {
    let _ = LOCK_NOTICE.set(notice);
}

/// `store`'s writer lock, waiting for it up to [`LOCK_WAIT`]; if another
/// process holds it, the lock notice (see [`set_lock_notice`]) is told
/// first.
pub fn store_writer(store: &Store) -> Result<dbox_store::Writer> {
    let notice = LOCK_NOTICE.get().copied();
    Ok(store.writer_wait_notify(LOCK_WAIT, &mut |pid| {
        if let Some(f) = notice {
            f(pid);
        }
    })?)
}

/// An open repository.
#[derive(Clone, Debug)]
pub struct Repo {
    root: PathBuf,
    dot: PathBuf,
    store: Store,
}

/// One line of the versions log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// The graph node (id, parents, time).
    pub node: GraphNode,
    /// The signing device.
    pub author: PeerId,
    /// The author's sequence number.
    pub seq: u64,
}

/// Finds the repository containing `start` (or `start` itself).
pub fn find_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find(|d| d.join(DOT_DIR).join("format").is_file()).map(Path::to_path_buf)
}

impl Repo {
    /// Creates a repository in `dir` (created if missing).
    pub fn init(dir: &Path) -> Result<Self> {
        let mut repo_id = [0u8; 32];
        dbox_store::crypto::fill_random(&mut repo_id)?;
        Self::init_with(dir, RepoId(repo_id), &RepoKey::generate()?)
    }

    /// Creates a repository in `dir` for an existing repository id and key
    /// (a device joining a repository).
    pub fn init_with(dir: &Path, repo_id: RepoId, key: &RepoKey) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(RepoError::io("create directory", dir))?;
        let dir = dir.canonicalize().map_err(RepoError::io("resolve", dir))?;
        if let Some(root) = find_root(&dir) {
            return Err(RepoError::AlreadyInRepo { path: dir, root });
        }
        let dot = dir.join(DOT_DIR);
        if dot.exists() && !dot.join("format").exists() {
            // An init that crashed: `format` is written last, so nothing
            // can have been committed here. Start again.
            std::fs::remove_dir_all(&dot).map_err(RepoError::io("remove", &dot))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dot)
            .map_err(RepoError::io("create directory", &dot))?;
        Store::create(&dot.join("store"), repo_id, key, StoreOptions::default())?;
        // The marker goes last: a crash before it leaves no half repository
        // that commands would open.
        write_atomic(&dot.join("format"), FORMAT_LINE.as_bytes(), 0o600)?;
        Self::open(&dir)
    }

    /// Opens the repository containing `start`.
    pub fn discover(start: &Path) -> Result<Self> {
        let abs = start.canonicalize().map_err(RepoError::io("resolve", start))?;
        match find_root(&abs) {
            Some(root) => Self::open(&root),
            None => Err(RepoError::NotARepo { path: abs }),
        }
    }

    /// Opens the repository whose root is `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let dot = root.join(DOT_DIR);
        let format_path = dot.join("format");
        let format = read_small(&format_path, 64)?
            .ok_or_else(|| RepoError::Damaged { path: format_path.clone(), reason: "missing".into() })?;
        if format != FORMAT_LINE.as_bytes() {
            return Err(RepoError::Damaged {
                path: format_path,
                reason: format!(
                    "unknown repository format {:?}",
                    String::from_utf8_lossy(&format[..format.len().min(40)])
                ),
            });
        }
        let store = Store::open(&dot.join("store"), StoreOptions::default())?;
        Ok(Self { root: root.to_path_buf(), dot, store })
    }

    /// The working tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `.dbox` directory.
    pub fn dot_dir(&self) -> &Path {
        &self.dot
    }

    /// The object store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store's writer lock, waiting for it up to [`LOCK_WAIT`]; if
    /// another process holds it, the lock notice (see [`set_lock_notice`])
    /// is told first.
    pub fn lock_writer(&self) -> Result<dbox_store::Writer> {
        store_writer(&self.store)
    }

    /// The version the working tree is based on.
    pub fn head(&self) -> Result<Option<VersionId>> {
        let path = self.dot.join("HEAD");
        match read_small(&path, 256)? {
            Some(b) => {
                let text = String::from_utf8_lossy(&b);
                text.trim().parse::<VersionId>().map(Some).map_err(|_| RepoError::Damaged {
                    path,
                    reason: "HEAD does not hold a version id".into(),
                })
            }
            None => Ok(None),
        }
    }

    /// Moves HEAD. A folder with a HEAD is no longer being cloned.
    pub fn set_head(&self, id: &VersionId) -> Result<()> {
        write_atomic(&self.dot.join("HEAD"), format!("{id}\n").as_bytes(), 0o600)?;
        // The mark only counts while there is no HEAD: one left is harmless.
        let _ = self.done_cloning();
        Ok(())
    }

    /// Marks a repository a clone is filling: until it has a HEAD, commit
    /// refuses to record the half-written folder ([`Repo::cloning`]).
    pub fn mark_cloning(&self) -> Result<()> {
        let text = "a clone is filling this folder, or was cut off; `dbox pull origin` finishes it\n";
        write_atomic(&self.dot.join(CLONING), text.as_bytes(), 0o600)
    }

    /// Ends [`Repo::mark_cloning`]: the clone has a HEAD, or brought no
    /// version.
    pub fn done_cloning(&self) -> Result<()> {
        let path = self.dot.join(CLONING);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RepoError::io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Whether a clone marked this repository's folder and has not ended
    /// ([`Repo::done_cloning`]); it is filling the folder, or was cut off.
    pub fn cloning(&self) -> bool {
        self.dot.join(CLONING).exists()
    }

    /// Reads the versions log.
    pub fn records(&self) -> Result<Vec<VersionRecord>> {
        let path = self.dot.join("versions");
        let Some(bytes) = read_small(&path, MAX_VERSIONS_LOG)? else { return Ok(Vec::new()) };
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => &bytes[..=i],
            None => &[][..],
        };
        let mut out = Vec::new();
        for (n, line) in complete.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let rec = parse_record(line).ok_or_else(|| RepoError::Damaged {
                path: path.clone(),
                reason: format!("line {} is not a version record; `dbox fsck --repair` rebuilds it", n + 1),
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// The version graph.
    pub fn graph(&self) -> Result<Graph> {
        let mut g = Graph::default();
        for r in self.records()? {
            g.insert(r.node);
        }
        Ok(g)
    }

    /// Appends versions (already flushed to the store) to the versions log.
    pub fn record_versions(&self, versions: &[(SignedVersion, VersionInfo)]) -> Result<()> {
        let mut text = String::new();
        for (v, info) in versions {
            text.push_str(&format_record(v, info));
        }
        append_durable(&self.dot.join("versions"), text.as_bytes())
    }

    /// Rewrites the versions log from the versions in the store, returning
    /// how many it holds. Versions that fail to verify are skipped and
    /// returned as errors.
    pub fn rebuild_records(&self) -> Result<(usize, Vec<RepoError>)> {
        let mut text = String::new();
        let mut n = 0;
        let mut bad = Vec::new();
        for id in self.store.list_objects()? {
            let raw = self.store.get_raw(&id)?;
            if ObjectKind::of_stored(&raw).ok() != Some(ObjectKind::Version) {
                continue;
            }
            let checked = SignedVersion::from_stored(&raw)
                .map_err(|source| RepoError::BadVersion { id: id.to_string(), source })
                .and_then(|v| {
                    let info = v
                        .info(self.store.keys())
                        .map_err(|source| RepoError::BadVersion { id: id.to_string(), source })?;
                    Ok((v, info))
                });
            match checked {
                Ok((v, info)) => {
                    text.push_str(&format_record(&v, &info));
                    n += 1;
                }
                Err(e) => bad.push(e),
            }
        }
        write_atomic(&self.dot.join("versions"), text.as_bytes(), 0o600)?;
        Ok((n, bad))
    }

    /// Reads and verifies a version and decrypts its info.
    pub fn version(&self, id: &VersionId) -> Result<(SignedVersion, VersionInfo)> {
        let v = self.store.get_version(id)?;
        let info = v
            .info(self.store.keys())
            .map_err(|source| RepoError::BadVersion { id: id.to_string(), source })?;
        Ok((v, info))
    }

    /// Resolves `HEAD`, `HEAD~N`, a full id or a unique prefix of at least
    /// four hex digits.
    pub fn resolve(&self, graph: &Graph, reference: &str) -> Result<VersionId> {
        let r = reference.trim();
        let (base, steps) = match r.split_once('~') {
            Some((b, n)) => {
                let n: usize = if n.is_empty() {
                    1
                } else {
                    n.parse().map_err(|_| RepoError::BadReference { reference: reference.into() })?
                };
                (b, n)
            }
            None => (r, 0),
        };
        let start = if base.eq_ignore_ascii_case("HEAD") || base == "@" {
            self.head()?.ok_or(RepoError::NoVersion)?
        } else {
            graph.resolve_prefix(base)?
        };
        graph
            .nth_first_parent(start, steps)
            .ok_or_else(|| RepoError::UnknownVersion { reference: reference.into() })
    }
}

fn format_record(v: &SignedVersion, info: &VersionInfo) -> String {
    let b = v.body();
    let parents = if b.parents.is_empty() {
        "-".to_string()
    } else {
        b.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
    };
    format!("{} {} {} {} {}\n", v.id(), info.time_ms, b.author, b.seq, parents)
}

fn parse_record(line: &[u8]) -> Option<VersionRecord> {
    let text = std::str::from_utf8(line).ok()?;
    let mut it = text.split(' ');
    let id: VersionId = it.next()?.parse().ok()?;
    let time_ms: i64 = it.next()?.parse().ok()?;
    let author: PeerId = it.next()?.parse().ok()?;
    let seq: u64 = it.next()?.parse().ok()?;
    let parents_text = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let parents = if parents_text == "-" {
        Vec::new()
    } else {
        parents_text.split(',').map(|p| p.parse().ok()).collect::<Option<Vec<VersionId>>>()?
    };
    if parents.len() > dbox_store::limits::MAX_PARENTS {
        return None;
    }
    Some(VersionRecord { node: GraphNode { id, parents, time_ms }, author, seq })
}
