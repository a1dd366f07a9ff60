//! Snapshots of the working tree: status against HEAD and commit.
//!
//! Both compare the scanned tree with the stat cache (HEAD's entries plus
//! the `lstat` data of their last matching working copies) and read only
//! files whose `lstat` data changed. A file is read consistently: its
//! `fstat` before and after reading must agree, or it is read again (three
//! times at most) and then reported; a file that vanishes during the scan is
//! left out with a warning.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dbox_store::{
    object, Chunker, Name, Node, ObjectId, ObjectKind, SignedVersion, Store, Tree, TreeEntry, VersionBody,
    VersionId, VersionInfo, Writer,
};

use crate::cache::{now_ns, Cache, CacheEntry, Content};
use crate::error::{RepoError, Result};
use crate::identity::Device;
use crate::repo::Repo;
use crate::worktree::{abs_path, display, scan, Kind, Scan, Stat};

/// One path of a flattened version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatEntry {
    /// What is there.
    pub content: Content,
    /// File modification time, if recorded.
    pub mtime_ns: Option<i64>,
}

/// Most paths one version may hold.
pub const MAX_VERSION_PATHS: usize = 2_000_000;
/// Most bytes of paths one version may hold.
pub const MAX_VERSION_PATH_BYTES: usize = 256 << 20;

/// Every path of the tree `root`, `/`-separated, parents before children.
/// A version over [`MAX_VERSION_PATHS`] paths or [`MAX_VERSION_PATH_BYTES`]
/// (as a hostile tree reusing one subtree under many names could be) is
/// refused before it exhausts memory.
pub fn flatten(store: &Store, root: &ObjectId) -> Result<BTreeMap<Vec<u8>, FlatEntry>> {
    flatten_with(root, &mut |id| Ok(Arc::new(store.get_tree(id)?)))
}

/// [`flatten`] with the trees from `get`.
pub fn flatten_with(
    root: &ObjectId,
    get: &mut dyn FnMut(&ObjectId) -> Result<Arc<Tree>>,
) -> Result<BTreeMap<Vec<u8>, FlatEntry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(Vec::new(), *root)];
    let mut path_bytes = 0usize;
    while let Some((prefix, tree_id)) = stack.pop() {
        let tree = get(&tree_id)?;
        if out.len() + tree.entries().len() > MAX_VERSION_PATHS {
            return Err(RepoError::Damaged {
                path: "version".into(),
                reason: format!("the tree {} holds more than {MAX_VERSION_PATHS} paths", root.short()),
            });
        }
        for e in tree.entries() {
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(e.name.as_bytes());
            if path.len() > dbox_store::limits::MAX_PATH_LEN {
                return Err(RepoError::UnsafePath {
                    path: display(&path),
                    reason: "path longer than 4096 bytes".into(),
                });
            }
            path_bytes += path.len();
            if path_bytes > MAX_VERSION_PATH_BYTES {
                return Err(RepoError::Damaged {
                    path: "version".into(),
                    reason: format!(
                        "the tree {} holds more than {MAX_VERSION_PATH_BYTES} bytes of paths",
                        root.short()
                    ),
                });
            }
            if let Node::Dir { tree } = &e.node {
                stack.push((path.clone(), *tree));
            }
            let content = Content::from(&e.node);
            out.insert(path, FlatEntry { content, mtime_ns: e.mtime_ns });
        }
    }
    Ok(out)
}

/// The flattened tree of a version.
pub fn flatten_version(repo: &Repo, id: &VersionId) -> Result<BTreeMap<Vec<u8>, FlatEntry>> {
    let v = repo.store().get_version(id)?;
    flatten(repo.store(), &v.body().root)
}

/// The cache describing HEAD, rebuilt from HEAD when missing or stale.
pub fn load_base(repo: &Repo, head: Option<VersionId>) -> Result<Cache> {
    let path = repo.dot_dir().join("cache");
    if let Some(c) = Cache::load(&path) {
        if c.head == head {
            return Ok(c);
        }
    }
    let mut cache = Cache { head, written_ns: 0, entries: HashMap::new() };
    if let Some(h) = head {
        for (path, e) in flatten_version(repo, &h)? {
            cache.entries.insert(path, CacheEntry { content: e.content, stat: None });
        }
    }
    Ok(cache)
}

/// How a path differs from HEAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Not in HEAD.
    Added,
    /// Same kind, other content or executable bit.
    Modified,
    /// In HEAD, not in the working tree.
    Deleted,
    /// A file became a folder or a link, or the reverse.
    TypeChanged,
}

impl Change {
    /// A lowercase word for the change.
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Modified => "modified",
            Change::Deleted => "deleted",
            Change::TypeChanged => "type-changed",
        }
    }
}

/// The result of [`status`].
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// HEAD, if any.
    pub head: Option<VersionId>,
    /// Changed paths, sorted.
    pub changes: Vec<(Vec<u8>, Change)>,
    /// Heads of the graph other than HEAD.
    pub other_heads: Vec<VersionId>,
    /// Things skipped.
    pub warnings: Vec<String>,
}

/// Reads a file consistently and computes its chunk ids without storing
/// anything. `None` when the file vanished.
pub(crate) fn hash_file(store: &Store, path: &Path) -> Result<Option<(Vec<ObjectId>, u64, Stat)>> {
    read_consistently(path, |f| {
        let mut chunker = Chunker::with_params(f, store.chunker_params());
        let mut ids = Vec::new();
        let mut size = 0;
        while let Some(c) = chunker.next_chunk().map_err(RepoError::io("read", path))? {
            ids.push(object::seal(store.keys(), ObjectKind::Chunk, c).0);
            size += c.len() as u64;
        }
        Ok((ids, size))
    })
}

fn read_consistently<T>(
    path: &Path,
    mut read: impl FnMut(&File) -> Result<(T, u64)>,
) -> Result<Option<(T, u64, Stat)>> {
    for _ in 0..3 {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RepoError::io("open", path)(e)),
        };
        let before = Stat::from_metadata(&f.metadata().map_err(RepoError::io("stat", path))?);
        let (value, size) = read(&f)?;
        let after = Stat::from_metadata(&f.metadata().map_err(RepoError::io("stat", path))?);
        if before == after && size == after.size {
            return Ok(Some((value, size, after)));
        }
    }
    Err(RepoError::ChangedDuringRead { path: path.to_path_buf() })
}

fn read_link(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    match std::fs::read_link(path) {
        Ok(t) => Ok(Some(t.as_os_str().as_bytes().to_vec())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RepoError::io("read link", path)(e)),
    }
}

/// Compares the working tree with HEAD.
pub fn status(repo: &Repo) -> Result<Status> {
    let head = repo.head()?;
    let mut base = load_base(repo, head)?;
    let scanned = scan(repo.root())?;
    let mut out = Status { head, warnings: scanned.warnings.clone(), ..Status::default() };
    if !scanned.leftovers.is_empty() {
        let n = scanned.leftovers.len();
        let s = if n == 1 { "" } else { "s" };
        out.warnings.push(format!(
            "{n} temporary file{s} left by an interrupted restore or checkout (never content; \
             the next commit, restore or checkout removes them)"
        ));
    }
    let mut refreshed = false;
    let mut matched = 0usize;
    for (path, wt) in &scanned.entries {
        let Some(e) = base.entries.get(path) else {
            out.changes.push((path.clone(), Change::Added));
            continue;
        };
        matched += 1;
        if e.content.kind() != wt.kind {
            out.changes.push((path.clone(), Change::TypeChanged));
            continue;
        }
        let changed = match (&e.content, wt.kind) {
            (Content::Dir, _) => false,
            (Content::Symlink(target), _) => match read_link(&abs_path(repo.root(), path))? {
                Some(t) => &t != target,
                None => continue,
            },
            (Content::File { chunks, executable, .. }, _) => {
                if base.entry_trusted(e, &wt.stat) {
                    false
                } else {
                    match hash_file(repo.store(), &abs_path(repo.root(), path))? {
                        None => continue,
                        Some((ids, _, stat)) => {
                            let same = &ids == chunks && *executable == stat.executable();
                            if same {
                                let entry = base.entries.get_mut(path).expect("looked up above");
                                entry.stat = Some(stat);
                                refreshed = true;
                            }
                            !same
                        }
                    }
                }
            }
        };
        if changed {
            out.changes.push((path.clone(), Change::Modified));
        }
    }
    // Every cached path was seen unless fewer matched: then look for the
    // deleted ones (the common unchanged case skips this pass).
    if matched < base.entries.len() {
        for path in base.entries.keys() {
            if !scanned.entries.contains_key(path) {
                out.changes.push((path.clone(), Change::Deleted));
            }
        }
    }
    out.changes.sort();
    let graph = repo.graph()?;
    out.other_heads = graph.heads().into_iter().filter(|h| Some(*h) != head).collect();
    if refreshed {
        // Only a hint: a failure to save it costs speed, not correctness.
        let _ = base.save(&repo.dot_dir().join("cache"));
    }
    Ok(out)
}

/// Knobs of [`commit`].
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// The message; a summary of the change when absent.
    pub message: Option<String>,
}

/// What [`commit`] did.
#[derive(Clone, Debug, Default)]
pub struct CommitOutcome {
    /// The new version, or `None` when nothing changed.
    pub version: Option<VersionId>,
    /// The parent (HEAD before).
    pub parent: Option<VersionId>,
    /// The message recorded.
    pub message: String,
    /// Changed paths.
    pub changes: Vec<(Vec<u8>, Change)>,
    /// Files read and stored.
    pub files_read: usize,
    /// Bytes read from those files.
    pub bytes_read: u64,
    /// Things skipped.
    pub warnings: Vec<String>,
}

/// Summarises changes as "3 modified, 1 added".
pub fn summarize(changes: &[(Vec<u8>, Change)]) -> String {
    let mut counts: BTreeMap<Change, usize> = BTreeMap::new();
    for (_, c) in changes {
        *counts.entry(*c).or_default() += 1;
    }
    let order = [Change::Modified, Change::Added, Change::Deleted, Change::TypeChanged];
    let parts: Vec<String> =
        order.iter().filter_map(|c| counts.get(c).map(|n| format!("{n} {}", c.as_str()))).collect();
    if parts.is_empty() {
        "no changes".into()
    } else {
        parts.join(", ")
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .chars()
        .take(dbox_store::limits::MAX_HOST_LEN)
        .collect()
}

/// Stores files in parallel; returns content and stat per path. Vanished
/// files are left out with a warning.
fn store_files(
    w: &Writer,
    root: &Path,
    paths: &[Vec<u8>],
    warnings: &Mutex<Vec<String>>,
) -> Result<HashMap<Vec<u8>, (Content, Stat)>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<HashMap<Vec<u8>, (Content, Stat)>> = Mutex::new(HashMap::new());
    let failure: Mutex<Option<RepoError>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(rel) = paths.get(i) else { return };
                if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                let path = abs_path(root, rel);
                let r = read_consistently(&path, |f| {
                    let fc = w.put_file(f)?;
                    let size = fc.size;
                    Ok((fc, size))
                });
                match r {
                    Ok(Some((fc, size, stat))) => {
                        let content =
                            Content::File { size, chunks: fc.chunks, executable: stat.executable() };
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(rel.clone(), (content, stat));
                    }
                    Ok(None) => warnings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{} vanished while being committed; left out", display(rel))),
                    Err(e) => {
                        failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Builds and stores the trees for `entries` (path, content, file mtime);
/// returns the root tree id. Every folder holding an entry must be an entry
/// itself, as in a flattened version.
pub(crate) fn build_trees<'a>(
    w: &Writer,
    entries: impl IntoIterator<Item = (&'a Vec<u8>, &'a Content, Option<i64>)>,
) -> Result<ObjectId> {
    let mut dirs: HashMap<Vec<u8>, Vec<TreeEntry>> = HashMap::new();
    let mut dir_paths: Vec<&Vec<u8>> = Vec::new();
    for (path, content, mtime) in entries {
        let (parent, name) = parent_and_name(path);
        let node = match content {
            Content::Dir => {
                dir_paths.push(path);
                continue;
            }
            Content::File { size, chunks, executable } => {
                Node::File { size: *size, chunks: chunks.clone(), executable: *executable }
            }
            Content::Symlink(t) => Node::Symlink { target: t.clone() },
        };
        let mtime_ns = match content {
            Content::File { .. } => mtime,
            _ => None,
        };
        let name = Name::new(name.to_vec())
            .map_err(|e| RepoError::UnsafePath { path: display(path), reason: e.to_string() })?;
        dirs.entry(parent.to_vec()).or_default().push(TreeEntry { name, node, mtime_ns });
    }
    dir_paths.sort_by_key(|p| std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count()));
    for path in dir_paths {
        let tree = Tree::new(dirs.remove(path.as_slice()).unwrap_or_default())
            .map_err(|e| RepoError::UnsafePath { path: display(path), reason: e.to_string() })?;
        let id = w.put_tree(&tree)?;
        let (parent, name) = parent_and_name(path);
        let name = Name::new(name.to_vec())
            .map_err(|e| RepoError::UnsafePath { path: display(path), reason: e.to_string() })?;
        dirs.entry(parent.to_vec()).or_default().push(TreeEntry {
            name,
            node: Node::Dir { tree: id },
            mtime_ns: None,
        });
    }
    let root = Tree::new(dirs.remove(&Vec::new()).unwrap_or_default())
        .map_err(|e| RepoError::UnsafePath { path: "/".into(), reason: e.to_string() })?;
    Ok(w.put_tree(&root)?)
}

/// Commits the whole working tree as a new version signed by `device`.
pub fn commit(repo: &Repo, device: &Device, opts: &CommitOptions) -> Result<CommitOutcome> {
    let w = repo.lock_writer()?;
    let head = repo.head()?;
    if head.is_none() && repo.cloning() {
        return Err(RepoError::Usage(
            "this folder is being cloned, or its clone was cut off: `dbox pull origin` finishes it. \
             A commit now would start a second history from a half-written folder \
             (remove .dbox/cloning to do that all the same)"
                .into(),
        ));
    }
    let base = load_base(repo, head)?;
    let scanned: Scan = scan(repo.root())?;
    // The writer lock is held: what a killed restore left can go.
    let mut said = scanned.warnings.clone();
    said.extend(crate::materialize::leftovers_removed(repo.root(), &scanned.leftovers));
    let warnings = Mutex::new(said);

    let mut entries: BTreeMap<Vec<u8>, (Content, Option<Stat>)> = BTreeMap::new();
    let mut to_read = Vec::new();
    for (path, wt) in &scanned.entries {
        match wt.kind {
            Kind::Dir => {
                entries.insert(path.clone(), (Content::Dir, Some(wt.stat)));
            }
            Kind::Symlink => match read_link(&abs_path(repo.root(), path))? {
                Some(t) if !t.is_empty() && t.len() <= dbox_store::limits::MAX_PATH_LEN => {
                    entries.insert(path.clone(), (Content::Symlink(t), Some(wt.stat)));
                }
                Some(_) => warnings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{}: link target too long; left out", display(path))),
                None => {}
            },
            Kind::File => {
                let reusable = match base.trusted(path, &wt.stat) {
                    Some(Content::File { chunks, executable, .. }) if *executable == wt.stat.executable() => {
                        let mut all = true;
                        for c in chunks {
                            if !repo.store().contains(c)? {
                                all = false;
                                break;
                            }
                        }
                        all
                    }
                    _ => false,
                };
                if reusable {
                    let content = base.entries[path].content.clone();
                    entries.insert(path.clone(), (content, Some(wt.stat)));
                } else {
                    to_read.push(path.clone());
                }
            }
        }
    }
    let stored = store_files(&w, repo.root(), &to_read, &warnings)?;
    let files_read = stored.len();
    let mut bytes_read = 0;
    for (path, (content, stat)) in stored {
        if let Content::File { size, .. } = &content {
            bytes_read += size;
        }
        entries.insert(path, (content, Some(stat)));
    }

    let mut changes = Vec::new();
    for (path, (content, _)) in &entries {
        match base.entries.get(path) {
            None => changes.push((path.clone(), Change::Added)),
            Some(e) if e.content.kind() != content.kind() => {
                changes.push((path.clone(), Change::TypeChanged))
            }
            Some(e) if e.content != *content => changes.push((path.clone(), Change::Modified)),
            Some(_) => {}
        }
    }
    for path in base.entries.keys() {
        if !entries.contains_key(path) {
            changes.push((path.clone(), Change::Deleted));
        }
    }
    changes.sort();
    let mut warnings = warnings.into_inner().unwrap_or_else(|e| e.into_inner());
    warnings.sort();

    let mut new_cache = Cache { head, written_ns: 0, entries: HashMap::new() };
    for (path, (content, stat)) in &entries {
        new_cache.entries.insert(path.clone(), CacheEntry { content: content.clone(), stat: *stat });
    }
    let cache_path = repo.dot_dir().join("cache");
    if changes.is_empty() && head.is_some() {
        w.flush()?;
        if let Err(e) = new_cache.save(&cache_path) {
            warnings.push(format!("could not save the stat cache (only a speed-up): {e}"));
        }
        return Ok(CommitOutcome { parent: head, files_read, bytes_read, warnings, ..Default::default() });
    }

    let root = build_trees(&w, entries.iter().map(|(p, (c, s))| (p, c, s.map(|s| s.mtime_ns))))?;
    let message = opts.message.clone().unwrap_or_else(|| summarize(&changes));
    let id = write_version(repo, &w, device, head.into_iter().collect(), root, &message)?;
    repo.set_head(&id)?;
    new_cache.head = Some(id);
    // The version is committed: a cache that cannot be saved costs speed.
    if let Err(e) = new_cache.save(&cache_path) {
        warnings.push(format!("could not save the stat cache (only a speed-up): {e}"));
    }
    Ok(CommitOutcome { version: Some(id), parent: head, message, changes, files_read, bytes_read, warnings })
}

/// Signs a version of the tree `root` with `parents`, stores it, flushes the
/// store and appends it to the versions log. HEAD does not move. The caller
/// holds the writer `w`, which has stored everything `root` reaches.
pub(crate) fn write_version(
    repo: &Repo,
    w: &Writer,
    device: &Device,
    parents: Vec<VersionId>,
    root: ObjectId,
    message: &str,
) -> Result<VersionId> {
    let records = repo.records()?;
    let me = device.peer_id();
    let seq = records.iter().filter(|r| r.author == me).map(|r| r.seq).max().unwrap_or(0) + 1;
    let time_ms = now_ns() / 1_000_000;
    let info = VersionInfo::new(message.to_string(), time_ms, host_name());
    let repo_id = repo.store().repo_id();
    let body = VersionBody {
        repo: repo_id,
        parents,
        root,
        author: me,
        seq,
        sealed_info: info.seal(repo.store().keys(), &repo_id)?,
    };
    let version = SignedVersion::sign(body, device.signing_key())?;
    let id = w.put_version(&version)?;
    w.flush()?;
    repo.record_versions(&[(version, info)])?;
    Ok(id)
}

/// The node at `path` below the tree `root` (the empty path is the root
/// folder), loading trees through `tree` so that a caller can memoize them.
pub fn entry_at(
    root: &ObjectId,
    path: &[u8],
    mut tree: impl FnMut(&ObjectId) -> Result<Rc<Tree>>,
) -> Result<Option<Node>> {
    if path.is_empty() {
        return Ok(Some(Node::Dir { tree: *root }));
    }
    let mut t = tree(root)?;
    let mut parts = path.split(|b| *b == b'/').peekable();
    while let Some(part) = parts.next() {
        let Some(e) = t.get(part) else { return Ok(None) };
        match (&e.node, parts.peek().is_some()) {
            (Node::Dir { tree: sub }, true) => {
                let sub = *sub;
                t = tree(&sub)?;
            }
            (_, true) => return Ok(None),
            (node, false) => return Ok(Some(node.clone())),
        }
    }
    Ok(None)
}

/// Whether `path` differs between two trees (folders compare by tree id).
pub fn path_changed(store: &Store, a: Option<&ObjectId>, b: &ObjectId, path: &[u8]) -> Result<bool> {
    let load = |id: &ObjectId| Ok(Rc::new(store.get_tree(id)?));
    let new = entry_at(b, path, load)?;
    let old = match a {
        Some(a) => entry_at(a, path, load)?,
        None => None,
    };
    Ok(old != new)
}

/// The working tree as a flat map, with file contents identified by chunk
/// ids (from the stat cache where it can be trusted, else by reading).
pub fn worktree_flat(repo: &Repo) -> Result<BTreeMap<Vec<u8>, FlatEntry>> {
    let head = repo.head()?;
    let base = load_base(repo, head)?;
    let scanned = scan(repo.root())?;
    let mut out = BTreeMap::new();
    for (path, wt) in &scanned.entries {
        let content = match wt.kind {
            Kind::Dir => Content::Dir,
            Kind::Symlink => match read_link(&abs_path(repo.root(), path))? {
                Some(t) => Content::Symlink(t),
                None => continue,
            },
            Kind::File => match base.trusted(path, &wt.stat) {
                Some(c @ Content::File { executable, .. }) if *executable == wt.stat.executable() => {
                    c.clone()
                }
                _ => match hash_file(repo.store(), &abs_path(repo.root(), path))? {
                    Some((chunks, size, stat)) => {
                        Content::File { size, chunks, executable: stat.executable() }
                    }
                    None => continue,
                },
            },
        };
        out.insert(path.clone(), FlatEntry { content, mtime_ns: Some(wt.stat.mtime_ns) });
    }
    Ok(out)
}

/// One difference between two flat trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The path.
    pub path: Vec<u8>,
    /// How it changed.
    pub change: Change,
    /// Size before (files).
    pub old_size: Option<u64>,
    /// Size after (files).
    pub new_size: Option<u64>,
}

fn size_of(c: &Content) -> Option<u64> {
    match c {
        Content::File { size, .. } => Some(*size),
        _ => None,
    }
}

/// The differences from `a` to `b`, by path. Folders are reported only when
/// added or deleted.
pub fn compare(a: &BTreeMap<Vec<u8>, FlatEntry>, b: &BTreeMap<Vec<u8>, FlatEntry>) -> Vec<Difference> {
    let mut out = Vec::new();
    for (p, eb) in b {
        let change = match a.get(p) {
            None => Some(Change::Added),
            Some(ea) if ea.content.kind() != eb.content.kind() => Some(Change::TypeChanged),
            Some(ea) if ea.content != eb.content => Some(Change::Modified),
            Some(_) => None,
        };
        if let Some(change) = change {
            out.push(Difference {
                path: p.clone(),
                change,
                old_size: a.get(p).and_then(|e| size_of(&e.content)),
                new_size: size_of(&eb.content),
            });
        }
    }
    for (p, ea) in a {
        if !b.contains_key(p) {
            out.push(Difference {
                path: p.clone(),
                change: Change::Deleted,
                old_size: size_of(&ea.content),
                new_size: None,
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}
