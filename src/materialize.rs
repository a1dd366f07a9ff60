//! Writing versions into a folder: restore and checkout.
//!
//! Both plan first and write only when the plan loses nothing: a path is
//! overwritten or deleted only if its current content is stored in a version
//! at that path (HEAD, or one of the [`SAVED_SEARCH_VERSIONS`] newest), or is
//! already the content to be written. Anything else is listed and the
//! command fails, unless `force`.
//!
//! Safety: every stored path comes from trees whose names were validated on
//! decoding (no `..`, no `/`, no `.dbox`); every write goes through folder
//! handles opened one component at a time without following a link
//! ([`crate::folders`]), so a symbolic link in the working tree is never
//! followed. Files and links are created under a temporary name (or none)
//! in their directory and renamed or linked into place, which replaces a
//! link rather than writing through it. File contents, executable bits,
//! symbolic links, empty folders and file mtimes are restored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbox_store::object::Payload;
use dbox_store::{ObjectId, Store, Tree, VersionId};
use rustix::fs::FileType;

use crate::cache::{Cache, CacheEntry, Content};
use crate::error::{RepoError, Result};
use crate::folders::{self, Folders, NewFile};
use crate::repo::Repo;
use crate::snapshot::{entry_at, flatten_version, hash_file, load_base, FlatEntry};
use crate::worktree::{abs_path, display, scan, Kind, Stat};

/// How many of the newest versions are searched for a working copy's
/// content before it is counted as unsaved.
pub const SAVED_SEARCH_VERSIONS: usize = 1000;

/// Knobs of [`restore`].
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only these paths (files or folders, relative to the root); all when
    /// empty.
    pub paths: Vec<Vec<u8>>,
    /// Write into this folder instead of the working tree.
    pub to: Option<std::path::PathBuf>,
    /// Overwrite and delete even content that is in no version.
    pub force: bool,
}

/// What was done.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Paths written.
    pub written: Vec<Vec<u8>>,
    /// Paths deleted.
    pub deleted: Vec<Vec<u8>>,
    /// Paths already as wanted.
    pub unchanged: usize,
    /// Stats of the files written, taken as they were written.
    pub written_stats: HashMap<Vec<u8>, Stat>,
    /// Things left as they were, as sentences.
    pub warnings: Vec<String>,
    /// For [`checkout_fresh`]: some path was not written (its content never
    /// came, something appeared there meanwhile, or writing failed); a
    /// checkout must finish the job.
    pub incomplete: bool,
}

/// What [`write_entry`] did.
enum Wrote {
    /// Written; for a file, its stat.
    Done(Option<Stat>),
    /// Not written: something is at the path and replacing was not allowed.
    Occupied,
}

fn in_scope(path: &[u8], scope: &[Vec<u8>]) -> bool {
    scope.is_empty()
        || scope
            .iter()
            .any(|q| path == q.as_slice() || (path.starts_with(q) && path.get(q.len()) == Some(&b'/')))
}

fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, b)| **b == b'/').map(move |(i, _)| &path[..i])
}

/// Whether the working copy at `path` (of kind `kind`, with `stat`) holds
/// exactly `want`.
pub(crate) fn matches(
    store: &Store,
    root: &Path,
    path: &[u8],
    kind: Kind,
    stat: &Stat,
    want: &Content,
    base: &Cache,
) -> Result<bool> {
    Ok(match want {
        Content::Dir => kind == Kind::Dir,
        Content::Symlink(t) => {
            kind == Kind::Symlink
                && std::fs::read_link(abs_path(root, path))
                    .is_ok_and(|l| l.as_os_str().as_bytes() == t.as_slice())
        }
        Content::File { chunks, executable, .. } => {
            if kind != Kind::File || stat.executable() != *executable {
                false
            } else if let Some(Content::File { chunks: c, .. }) = base.trusted(path, stat) {
                c == chunks
            } else {
                hash_file(store, &abs_path(root, path))?.is_some_and(|(ids, _, _)| &ids == chunks)
            }
        }
    })
}

/// The first path under the folder `rel` that the scan did not report, if
/// any (found by walking the folder without ignore rules or links).
fn unseen_under(
    root: &Path,
    rel: &[u8],
    seen: &std::collections::BTreeMap<Vec<u8>, crate::worktree::WtEntry>,
) -> Result<Option<Vec<u8>>> {
    let mut stack = vec![rel.to_vec()];
    while let Some(dir) = stack.pop() {
        let abs = abs_path(root, &dir);
        let rd = match std::fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return Ok(Some(dir)),
        };
        for e in rd {
            let e = e.map_err(RepoError::io("read folder", &abs))?;
            let mut q = dir.clone();
            q.push(b'/');
            q.extend_from_slice(e.file_name().as_bytes());
            if !seen.contains_key(&q) {
                return Ok(Some(q));
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(q);
            }
        }
    }
    Ok(None)
}

/// Whether `root` holds nothing but the `.dbox` folder.
fn holds_only_dot_dir(root: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(root).map_err(RepoError::io("read", root))? {
        let entry = entry.map_err(RepoError::io("read", root))?;
        if entry.file_name() != crate::repo::DOT_DIR {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bytes a file is written in at once, at least: whole blocks of
/// [`BLOCK`], so that no write ends inside a new block (the file system
/// zeroes the rest of such a block first, only for the next write to fill
/// it: 0.2 CPU-s of a clone of `mixed`), in few system calls.
const WRITE_BATCH: usize = 1 << 20;
/// The block size [`WRITE_BATCH`] keeps writes aligned to (the page size;
/// a multiple of most file systems' blocks).
const BLOCK: usize = 4096;

/// Chunks of a file not yet written, in order.
#[derive(Default)]
struct Batch {
    parts: std::collections::VecDeque<Payload>,
    /// Bytes of the first part already written.
    skip: usize,
    /// Bytes not yet written.
    len: usize,
}

impl Batch {
    fn push(&mut self, part: Payload) {
        self.len += part.len();
        self.parts.push_back(part);
    }

    /// Writes the first `n` bytes (at most [`Batch::len`]) with as few
    /// calls as the system allows.
    fn write(&mut self, mut f: &std::fs::File, mut n: usize) -> std::io::Result<()> {
        /// Slices per call, below every system's IOV_MAX.
        const SLICES: usize = 512;
        n = n.min(self.len);
        while n > 0 {
            let mut slices = Vec::with_capacity(self.parts.len().min(SLICES));
            let mut left = n;
            for (i, p) in self.parts.iter().enumerate().take(SLICES) {
                let s = if i == 0 { &p[self.skip..] } else { &p[..] };
                let s = &s[..s.len().min(left)];
                left -= s.len();
                slices.push(std::io::IoSlice::new(s));
                if left == 0 {
                    break;
                }
            }
            let mut w = match f.write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n -= w;
            self.len -= w;
            while w > 0 {
                let Some(first) = self.parts.front() else { break };
                let rest = first.len() - self.skip;
                if w >= rest {
                    self.parts.pop_front();
                    self.skip = 0;
                    w -= rest;
                } else {
                    self.skip += w;
                    w = 0;
                }
            }
        }
        Ok(())
    }
}

fn to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Writes one entry. For a file, returns its stat taken through the written
/// file's own handle once in place: an edit by anyone else afterwards
/// changes at least its ctime, so the stat cache never trusts it.
///
/// With `keep` (a fresh checkout), nothing already at the path is replaced
/// or removed (a folder there is fine for a folder): the entry is then
/// [`Wrote::Occupied`]. Each step that puts something at the path fails
/// atomically if something is there (`mkdirat`, `symlinkat`, `linkat`).
fn write_entry(
    store: &Store,
    feed: Option<&dyn Feed>,
    folders: &Folders,
    path: &[u8],
    e: &FlatEntry,
    keep: bool,
) -> Result<Wrote> {
    let place = folders.place(path)?;
    let dest = &place.abs;
    match &e.content {
        Content::Dir => {
            if folders::make_dir(&place)? {
                return Ok(Wrote::Done(None));
            }
            match folders::kind_at(&place)? {
                Some((FileType::Directory, _)) => Ok(Wrote::Done(None)),
                _ if keep => Ok(Wrote::Occupied),
                _ => {
                    folders::remove(&place)?;
                    if folders::make_dir(&place)? {
                        Ok(Wrote::Done(None))
                    } else {
                        Err(RepoError::io("create directory", dest)(std::io::ErrorKind::AlreadyExists.into()))
                    }
                }
            }
        }
        Content::Symlink(target) if keep => {
            Ok(if folders::link_new(&place, target)? { Wrote::Done(None) } else { Wrote::Occupied })
        }
        Content::Symlink(target) => {
            folders::link_over(&place, target)?;
            folders.forget(path);
            Ok(Wrote::Done(None))
        }
        Content::File { size, chunks, executable } => {
            // Keep the permissions of a file being replaced (a private file
            // stays private); the version decides only the executable bits.
            let old_mode = match keep {
                true => None,
                false => folders::kind_at(&place)?
                    .filter(|(t, _)| *t == FileType::RegularFile)
                    .map(|(_, m)| m & 0o777),
            };
            let new = NewFile::create(&place, if *executable { 0o777 } else { 0o666 }, keep)?;
            let result = (|| -> Result<()> {
                let f = &new.file;
                if let Some(old) = old_mode {
                    let exec = if *executable { (old & 0o444) >> 2 } else { 0 };
                    let mode = (old & 0o666) | exec;
                    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                        .map_err(RepoError::io("set permissions of", dest))?;
                }
                let mut written = 0u64;
                let mut batch = Batch::default();
                for id in chunks {
                    let data = match feed {
                        Some(feed) => feed.chunk(store, id)?,
                        None => store.get_chunk(id)?,
                    };
                    written += data.len() as u64;
                    // A lying size must not fill the disk before it is caught.
                    if written > *size {
                        return Err(RepoError::Damaged {
                            path: dest.clone(),
                            reason: format!("its chunks hold more than the {size} bytes the version says"),
                        });
                    }
                    batch.push(data);
                    if batch.len >= WRITE_BATCH {
                        batch
                            .write(f, batch.len - batch.len % BLOCK)
                            .map_err(RepoError::io("write", dest))?;
                    }
                }
                batch.write(f, batch.len).map_err(RepoError::io("write", dest))?;
                if written != *size {
                    return Err(RepoError::Damaged {
                        path: dest.clone(),
                        reason: format!("the version says {size} bytes but its chunks hold {written}"),
                    });
                }
                if let Some(ns) = e.mtime_ns {
                    new.file
                        .set_modified(to_system_time(ns))
                        .map_err(RepoError::io("set the time of", dest))?;
                }
                Ok(())
            })();
            if let Err(err) = result {
                new.discard(&place);
                return Err(err);
            }
            if keep {
                if !new.link(&place)? {
                    return Ok(Wrote::Occupied);
                }
            } else {
                new.replace(&place)?;
                folders.forget(path);
            }
            // Taken through the file once it is in place.
            let meta = new.file.metadata().map_err(RepoError::io("stat", dest))?;
            Ok(Wrote::Done(Some(Stat::from_metadata(&meta))))
        }
    }
}

/// Writes `version` (or some of its paths) into the working tree, or into
/// `opts.to`. HEAD does not move. Into the working tree, it waits for the
/// writer lock (up to [`crate::repo::LOCK_WAIT`]) and holds it.
pub fn restore(repo: &Repo, version: &VersionId, opts: &RestoreOptions) -> Result<Outcome> {
    // Into the working tree, the writer lock is held as by a checkout: no
    // commit, checkout or pull moves the tree or HEAD meanwhile.
    let w = match opts.to {
        None => Some(repo.lock_writer()?),
        Some(_) => None,
    };
    let head = repo.head()?;
    let base = load_base(repo, head)?;
    let full = flatten_version(repo, version)?;
    for q in &opts.paths {
        if !full.contains_key(q) {
            return Err(RepoError::PathNotInVersion { path: display(q), version: version.short() });
        }
    }
    let mut target: BTreeMap<Vec<u8>, FlatEntry> = BTreeMap::new();
    for (p, e) in &full {
        if in_scope(p, &opts.paths) {
            target.insert(p.clone(), e.clone());
        }
    }
    for q in &opts.paths {
        for a in ancestors(q) {
            if let Some(e) = full.get(a) {
                target.insert(a.to_vec(), e.clone());
            }
        }
    }
    match &opts.to {
        None => apply(repo, &base, &target, &opts.paths, repo.root(), true, opts.force, None, w.as_ref()),
        Some(dir) => {
            // Check the nearest existing ancestor before creating anything.
            let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
            let resolved = existing.canonicalize().map_err(RepoError::io("resolve", existing))?;
            if resolved.starts_with(repo.dot_dir()) {
                return Err(RepoError::Usage("cannot restore into the .dbox folder".into()));
            }
            std::fs::create_dir_all(dir).map_err(RepoError::io("create directory", dir))?;
            let dir = dir.canonicalize().map_err(RepoError::io("resolve", dir))?;
            if dir.starts_with(repo.dot_dir()) {
                return Err(RepoError::Usage("cannot restore into the .dbox folder".into()));
            }
            // Inside the working tree, the lock is held as for a restore in
            // place: a commit or checkout does not run meanwhile.
            let root = repo.root().canonicalize().map_err(RepoError::io("resolve", repo.root()))?;
            let _inside = if dir.starts_with(&root) { Some(repo.lock_writer()?) } else { None };
            let empty = Cache::default();
            apply(repo, &empty, &target, &opts.paths, &dir, false, opts.force, None, None)
        }
    }
}

/// Moves HEAD and the working tree to `version`.
pub fn checkout(repo: &Repo, version: &VersionId, force: bool) -> Result<Outcome> {
    // Hold the writer lock so no commit runs while the tree changes.
    let w = repo.lock_writer()?;
    checkout_locked(repo, &w, version, force)
}

/// [`checkout`] for a caller that already holds the store's writer lock
/// (`w` is the proof, and lets the checkout remove what a killed restore
/// left), such as a merge that has just stored `version`.
pub(crate) fn checkout_locked(
    repo: &Repo,
    w: &dbox_store::Writer,
    version: &VersionId,
    force: bool,
) -> Result<Outcome> {
    // With --force a damaged HEAD is no obstacle: checkout rewrites it.
    let head = match repo.head() {
        Ok(h) => h,
        Err(_) if force => None,
        Err(e) => return Err(e),
    };
    let base = load_base(repo, head)?;
    let target = flatten_version(repo, version)?;
    let outcome = apply(repo, &base, &target, &[], repo.root(), true, force, None, Some(w))?;
    settle(repo, version, &base, target, outcome)
}

/// A version's entries by path.
pub(crate) type Flat = BTreeMap<Vec<u8>, FlatEntry>;

/// Where a fresh checkout ([`checkout_fresh`]) takes content from while
/// the transfer that brings it still runs.
pub(crate) trait Feed: Sync {
    /// Waits until every object of `ids` can be read; `false` once the
    /// transfer ended without some of them.
    fn ready(&self, ids: &[ObjectId]) -> Result<bool>;
    /// A chunk's plaintext (the feed may hold it in memory, not yet
    /// stored), waiting for it while the transfer runs.
    fn chunk(&self, store: &Store, id: &ObjectId) -> Result<Payload>;
    /// Told, before any [`Feed::chunk`], every chunk the checkout will
    /// ask for (once per use), so that the feed holds on to those only.
    fn expect(&self, chunks: &mut dyn Iterator<Item = &ObjectId>);
    /// A tree the feed holds, decoded as it arrived, waiting for it while
    /// the trees arrive; `None` to read it from the store.
    fn tree(&self, _id: &ObjectId) -> Result<Option<Arc<Tree>>> {
        Ok(None)
    }
}

/// Fills the empty working tree of a repository being cloned with the
/// version whose root tree is `root_tree`, while its trees and chunks are
/// still arriving: each file is started once `ready` has its first chunk
/// and written as the others come, in the order a pull fetches them
/// (path order). Nothing is recorded: once the version is,
/// [`settle_fresh`] moves HEAD to it, and if the transfer fails,
/// [`undo_fresh`] removes what was written.
///
/// It replaces nothing: a path where something appeared meanwhile (the
/// user may already be using the folder) is left alone. Such a path, a
/// file whose chunks never came, or a failed write (the disk full) makes
/// the outcome incomplete, and the clone then finishes with a checkout,
/// which plans again and refuses to lose anything. The outcome lists
/// exactly what was written, even then, so that it can be taken back.
/// `None` if the trees never arrived.
pub(crate) fn checkout_fresh(
    repo: &Repo,
    root_tree: &ObjectId,
    ready: &dyn Feed,
) -> Result<Option<(Flat, Outcome)>> {
    // The trees come from the feed, as the transfer decoded them, where it
    // holds them: read back from the store, they would cost a flush, a read
    // from the device and a second decoding before the first file.
    let mut get = |id: &ObjectId| match ready.tree(id)? {
        Some(t) => Ok(t),
        None => Ok(Arc::new(repo.store().get_tree(id)?)),
    };
    let target = loop {
        match crate::snapshot::flatten_with(root_tree, &mut get) {
            Ok(t) => break t,
            Err(RepoError::Store(dbox_store::StoreError::NotFound { id })) => {
                if !ready.ready(&[id])? {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    };
    ready.expect(&mut target.values().flat_map(|e| match &e.content {
        Content::File { chunks, .. } => chunks.as_slice(),
        _ => &[],
    }));
    let outcome = apply(repo, &Cache::default(), &target, &[], repo.root(), false, false, Some(ready), None)?;
    Ok(Some((target, outcome)))
}

/// Moves HEAD to `version` after [`checkout_fresh`] wrote it, and records
/// the stat cache, as a checkout does.
pub(crate) fn settle_fresh(
    repo: &Repo,
    version: &VersionId,
    target: BTreeMap<Vec<u8>, FlatEntry>,
    outcome: Outcome,
) -> Result<Outcome> {
    let _w = repo.lock_writer()?;
    repo.set_head(version)?;
    // Every path was written here, each file with the stat taken through it
    // once in place, so the tree is not scanned again: a change since then
    // changed the file's ctime, and the entry is not trusted.
    let mut cache = Cache { head: Some(*version), written_ns: 0, entries: HashMap::new() };
    for (p, e) in target {
        let stat = outcome.written_stats.get(&p).cloned();
        cache.entries.insert(p, CacheEntry { content: e.content, stat });
    }
    Ok(save_cache(repo, cache, outcome))
}

/// Saves the stat cache; failing is only a warning (it is a speed-up).
fn save_cache(repo: &Repo, mut cache: Cache, mut outcome: Outcome) -> Outcome {
    if let Err(e) = cache.save(&repo.dot_dir().join("cache")) {
        outcome.warnings.push(format!("could not save the stat cache (only a speed-up): {e}"));
    }
    outcome
}

/// Removes the temporary entries a killed restore or checkout left (the
/// caller holds the writer lock), and says what it did.
pub(crate) fn leftovers_removed(root: &Path, leftovers: &[Vec<u8>]) -> Vec<String> {
    let (removed, mut said) = crate::folders::remove_leftovers(root, leftovers);
    if removed > 0 {
        let s = if removed == 1 { "" } else { "s" };
        said.insert(
            0,
            format!("removed {removed} temporary file{s} left by an interrupted restore or checkout"),
        );
    }
    said
}

/// Removes what [`checkout_fresh`] wrote, after the transfer failed: files
/// still as written (by their stat), then the folders it made if empty, so
/// that the next pull finds the tree as the clone found it.
pub(crate) fn undo_fresh(root: &Path, outcome: &Outcome) {
    for (p, stat) in &outcome.written_stats {
        let abs = abs_path(root, p);
        let now = std::fs::symlink_metadata(&abs).ok().map(|m| Stat::from_metadata(&m));
        if now.as_ref() == Some(stat) {
            let _ = std::fs::remove_file(&abs);
        }
    }
    // Folders and links (deepest first, so folders are empty by then).
    let mut dirs: Vec<&Vec<u8>> =
        outcome.written.iter().filter(|p| !outcome.written_stats.contains_key(*p)).collect();
    dirs.sort_by_key(|p| std::cmp::Reverse((p.iter().filter(|b| **b == b'/').count(), (*p).clone())));
    for p in dirs {
        let abs = abs_path(root, p);
        match std::fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_dir() => {
                let _ = std::fs::remove_dir(&abs);
            }
            Ok(m) if m.file_type().is_symlink() => {
                let _ = std::fs::remove_file(&abs);
            }
            _ => {}
        }
    }
}

/// After `outcome` wrote `target` (from `base`): moves HEAD to `version`
/// and records the stat cache.
fn settle(
    repo: &Repo,
    version: &VersionId,
    base: &Cache,
    target: BTreeMap<Vec<u8>, FlatEntry>,
    outcome: Outcome,
) -> Result<Outcome> {
    repo.set_head(version)?;
    let scanned = scan(repo.root())?;
    let mut cache = Cache { head: Some(*version), written_ns: 0, entries: HashMap::new() };
    let written: BTreeSet<&Vec<u8>> = outcome.written.iter().collect();
    for (p, e) in target {
        let scanned_stat = scanned.entries.get(&p).filter(|wt| wt.kind == e.content.kind()).map(|wt| wt.stat);
        let stat = if let Some(s) = outcome.written_stats.get(&p) {
            // What we wrote; if someone changed it since, the scan differs
            // and the entry is not trusted.
            scanned_stat.filter(|now| now == s)
        } else if written.contains(&p) || matches!(e.content, Content::Dir | Content::Symlink(_)) {
            scanned_stat
        } else {
            // Unwritten files kept their stat from before, which matched.
            scanned_stat.filter(|s| base.trusted(&p, s).is_some_and(|c| *c == e.content))
        };
        cache.entries.insert(p, CacheEntry { content: e.content, stat });
    }
    Ok(save_cache(repo, cache, outcome))
}

/// Plans and, if nothing would be lost (or `force`), applies the change of
/// `root` towards `target`. `delete` removes HEAD's paths (in scope) that
/// the target lacks. `locked` is the writer lock, for a caller that holds
/// it while writing the working tree: only then are the temporary files
/// of killed restores removed.
#[allow(clippy::too_many_arguments)]
fn apply(
    repo: &Repo,
    base: &Cache,
    target: &BTreeMap<Vec<u8>, FlatEntry>,
    scope: &[Vec<u8>],
    root: &Path,
    delete: bool,
    force: bool,
    ready: Option<&dyn Feed>,
    locked: Option<&dbox_store::Writer>,
) -> Result<Outcome> {
    let store = repo.store();
    let scanned = scan(root)?;
    let mut out = Outcome { warnings: scanned.warnings.clone(), ..Outcome::default() };
    if locked.is_some() {
        out.warnings.extend(leftovers_removed(root, &scanned.leftovers));
    }
    // A working copy is saved when some version holds that content at that
    // path: HEAD (cheap, through the cache) or an earlier one.
    let graph = repo.graph()?;
    let recent: Vec<_> = graph.log_order(&graph.heads()).into_iter().take(SAVED_SEARCH_VERSIONS).collect();
    // Each version is verified and each tree decoded once per command.
    let roots: std::cell::OnceCell<Vec<dbox_store::ObjectId>> = std::cell::OnceCell::new();
    let trees: std::cell::RefCell<HashMap<dbox_store::ObjectId, std::rc::Rc<dbox_store::Tree>>> =
        std::cell::RefCell::new(HashMap::new());
    let tree = |id: &dbox_store::ObjectId| -> Result<std::rc::Rc<dbox_store::Tree>> {
        if let Some(t) = trees.borrow().get(id) {
            return Ok(t.clone());
        }
        let t = std::rc::Rc::new(store.get_tree(id)?);
        trees.borrow_mut().insert(*id, t.clone());
        Ok(t)
    };
    let lookup = |root_tree: &dbox_store::ObjectId, p: &[u8]| -> Result<Option<Content>> {
        Ok(entry_at(root_tree, p, &tree)?.as_ref().map(Content::from))
    };
    let saved = |p: &[u8]| -> Result<bool> {
        let Some(wt) = scanned.entries.get(p) else { return Ok(true) };
        if let Some(e) = base.entries.get(p) {
            if matches(store, root, p, wt.kind, &wt.stat, &e.content, base)? {
                return Ok(true);
            }
        }
        let current = match wt.kind {
            Kind::Dir => return Ok(true),
            Kind::Symlink => match std::fs::read_link(abs_path(root, p)) {
                Ok(t) => Content::Symlink(t.as_os_str().as_bytes().to_vec()),
                Err(_) => return Ok(false),
            },
            Kind::File => match hash_file(store, &abs_path(root, p))? {
                Some((chunks, size, stat)) => Content::File { size, chunks, executable: stat.executable() },
                None => return Ok(true),
            },
        };
        if roots.get().is_none() {
            let mut r = Vec::with_capacity(recent.len());
            for v in &recent {
                r.push(store.get_version(v)?.body().root);
            }
            let _ = roots.set(r);
        }
        for root_tree in roots.get().map(|r| r.as_slice()).unwrap_or(&[]) {
            if lookup(root_tree, p)?.as_ref() == Some(&current) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut conflicts = Vec::new();
    let mut writes = Vec::new();
    // A fresh checkout into a folder that holds only `.dbox` finds nothing
    // at any path: no need to look at each.
    let empty = ready.is_some() && holds_only_dot_dir(root)?;
    for (p, e) in target {
        match scanned.entries.get(p) {
            Some(wt) if matches(store, root, p, wt.kind, &wt.stat, &e.content, base)? => out.unchanged += 1,
            Some(wt) => {
                let mut ok = saved(p)?;
                if wt.kind == Kind::Dir && !force {
                    // Anything in it the scan did not see (ignored files, a
                    // nested repository, sockets) would be lost.
                    if let Some(q) = unseen_under(root, p, &scanned.entries)? {
                        conflicts.push(display(&q));
                    }
                }
                if wt.kind == Kind::Dir {
                    // Replacing a folder replaces everything in it.
                    let mut prefix = p.clone();
                    prefix.push(b'/');
                    for (q, _) in scanned.entries.range(prefix.clone()..) {
                        if !q.starts_with(&prefix) {
                            break;
                        }
                        if !saved(q)? && !target.contains_key(q) {
                            ok = false;
                            conflicts.push(display(q));
                        }
                    }
                }
                if !ok && !force {
                    conflicts.push(display(p));
                }
                writes.push(p);
            }
            None if empty => writes.push(p),
            None => {
                // Not scanned, but something may be there all the same: an
                // ignored file, a FIFO, a nested repository.
                let abs = abs_path(root, p);
                if std::fs::symlink_metadata(&abs).is_ok() && !force {
                    let is_dir_match = matches!(e.content, Content::Dir)
                        && std::fs::symlink_metadata(&abs).is_ok_and(|m| m.file_type().is_dir());
                    if !is_dir_match {
                        conflicts.push(display(p));
                    }
                }
                writes.push(p)
            }
        }
    }
    let mut deletes = Vec::new();
    if delete {
        for p in base.entries.keys() {
            if in_scope(p, scope) && !target.contains_key(p) && scanned.entries.contains_key(p) {
                if !saved(p)? && !force {
                    conflicts.push(display(p));
                }
                deletes.push(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(RepoError::WouldLoseData { paths: conflicts });
    }
    // Deepest first, files before the folders that hold them.
    deletes.sort_by_key(|p| std::cmp::Reverse((p.iter().filter(|b| **b == b'/').count(), p.clone())));
    let folders = Folders::open(root)?;
    for p in &deletes {
        let place = match folders.place(p) {
            Ok(place) => place,
            // Its folder is gone already (removed with its parent).
            Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match folders::kind_at(&place)? {
            Some((FileType::Directory, _)) => {
                if folders::remove_empty_dir(&place).is_err() {
                    out.warnings.push(format!("kept folder {}: it holds files no version has", display(p)));
                    continue;
                }
                folders.forget(p);
            }
            Some(_) => folders::remove(&place)?,
            None => continue,
        }
        out.deleted.push(p.clone());
    }
    // A fresh checkout (`ready`) writes while the user may already use the
    // folder: it never replaces anything, and is incomplete where it could
    // not write; its caller then runs a checkout, which plans again.
    let fresh = ready.is_some();
    // Folders first, in order (parents before children); then files and
    // links, by several threads: decrypting and writing is most of the
    // work. A fresh checkout makes its folders in a thread of their own,
    // beside the writing threads, which take the files in path order (the
    // order a pull fetches chunks in) and write each once its folder is
    // made (`made`). Made all before the first file, the 14,533 folders of
    // `mixed` held a clone's transfer up for about 0.75 s.
    let (dirs, others): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        writes.into_iter().partition(|p| matches!(target[*p].content, Content::Dir));
    let made = Made::new(dirs.iter().filter(|_| fresh).map(|p| p.as_slice()));
    let incomplete = std::sync::atomic::AtomicBool::new(false);
    if !fresh {
        for p in &dirs {
            match write_entry(store, ready, &folders, p, &target[*p], fresh) {
                Ok(Wrote::Done(_)) => out.written.push((*p).clone()),
                Ok(Wrote::Occupied) => out.incomplete = true,
                Err(e) => return Err(e),
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let make_dirs = || -> Result<Written> {
        let _stop = StopOnPanic(&failed);
        let mut done = Vec::new();
        for p in &dirs {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let wrote = write_entry(store, ready, &folders, p, &target[*p], fresh);
            made.finished(p);
            match wrote {
                Ok(Wrote::Done(_)) => done.push(((*p).clone(), None)),
                Ok(Wrote::Occupied) => incomplete.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(_) => {
                    incomplete.store(true, std::sync::atomic::Ordering::Relaxed);
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
        }
        Ok(done)
    };
    let work = || -> Result<Written> {
        let _stop = StopOnPanic(&failed);
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(p) = others.get(i) else { return Ok(done) };
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(done);
            }
            if !made.wait_for_folder(p, &failed) {
                return Ok(done);
            }
            if let (Some(ready), Content::File { chunks, .. }) = (ready, &target[*p].content) {
                // Started once its first chunk is there; the feed gives the
                // others as they come, so a large file is written while it
                // arrives.
                match ready.ready(&chunks[..chunks.len().min(1)]) {
                    Ok(true) => {}
                    Ok(false) => {
                        incomplete.store(true, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Err(_) => {
                        // Stop, but keep what was written so it can be taken back.
                        incomplete.store(true, std::sync::atomic::Ordering::Relaxed);
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Ok(done);
                    }
                }
            }
            match write_entry(store, ready, &folders, p, &target[*p], fresh) {
                Ok(Wrote::Done(stat)) => done.push(((*p).clone(), stat)),
                Ok(Wrote::Occupied) => incomplete.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(_) if fresh => {
                    incomplete.store(true, std::sync::atomic::Ordering::Relaxed);
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(done);
                }
                Err(e) => {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let results: Vec<Result<Written>> = std::thread::scope(|s| {
        let folders_thread = fresh.then(|| s.spawn(make_dirs));
        let helpers: Vec<_> = (1..WRITE_THREADS).map(|_| s.spawn(work)).collect();
        let mut all = vec![work()];
        for h in helpers.into_iter().chain(folders_thread) {
            all.push(h.join().unwrap_or_else(|_| Err(RepoError::Usage("a writing thread panicked".into()))));
        }
        all
    });
    let mut first_err = None;
    for r in results {
        match r {
            Ok(done) => {
                for (p, stat) in done {
                    if let Some(stat) = stat {
                        out.written_stats.insert(p.clone(), stat);
                    }
                    out.written.push(p);
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    out.written.sort();
    out.incomplete |= incomplete.load(std::sync::atomic::Ordering::Relaxed);
    // The handles follow a folder moved away meanwhile (by the user, in a
    // folder they may already use): what went there is not in the tree. A
    // fresh checkout is then incomplete (its caller checks out again); a
    // restore or checkout in place says so.
    if !out.incomplete {
        if let Some(p) = folders.moved() {
            if fresh {
                out.incomplete = true;
            } else {
                out.warnings.push(format!(
                    "folder {} was moved, removed or replaced while this wrote into it: what was written \
                     there went with it; run the command again to write it at its path",
                    display(&p)
                ));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Sets the flag if the thread panics meanwhile: the others then stop
/// (none waits forever for a folder the panicking thread was making).
struct StopOnPanic<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The folders a fresh checkout makes, and which of them are done
/// (made, or failed): an entry is written once its folder is done. One
/// thread makes them, in path order (parents first), and waits for nothing
/// else.
struct Made<'a> {
    index: HashMap<&'a [u8], usize>,
    done: std::sync::Mutex<Done>,
    changed: std::sync::Condvar,
}

/// Which folders are done, and how many threads wait for one: only then is
/// a folder made told of (a clone of `mixed` makes 14,500).
struct Done {
    folders: Vec<bool>,
    waiters: u32,
}

impl<'a> Made<'a> {
    fn new(folders: impl Iterator<Item = &'a [u8]>) -> Self {
        let index: HashMap<&[u8], usize> = folders.enumerate().map(|(i, p)| (p, i)).collect();
        let done = std::sync::Mutex::new(Done { folders: vec![false; index.len()], waiters: 0 });
        Made { index, done, changed: std::sync::Condvar::new() }
    }

    /// Waits until the folder holding `path` is done, if it is one of
    /// these. False if `failed` was set meanwhile (the thread that took the
    /// folder may have stopped before making it).
    fn wait_for_folder(&self, path: &[u8], failed: &std::sync::atomic::AtomicBool) -> bool {
        let Some(slash) = path.iter().rposition(|b| *b == b'/') else { return true };
        let Some(i) = self.index.get(&path[..slash]).copied() else { return true };
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !done.folders[i] {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            done.waiters += 1;
            // Bounded, so a failure elsewhere is seen without a wake-up.
            done = match self.changed.wait_timeout(done, std::time::Duration::from_millis(50)) {
                Ok((d, _)) => d,
                Err(p) => p.into_inner().0,
            };
            done.waiters -= 1;
        }
        true
    }

    /// Marks `path` done, if it is one of these folders.
    fn finished(&self, path: &[u8]) {
        if let Some(i) = self.index.get(path).copied() {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            done.folders[i] = true;
            if done.waiters > 0 {
                drop(done);
                self.changed.notify_all();
            }
        }
    }
}

/// Paths a writing thread wrote, with the stats of files.
type Written = Vec<(Vec<u8>, Option<Stat>)>;

/// Threads that write files during a restore or checkout.
const WRITE_THREADS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_entry_waits_for_its_folder_and_not_past_a_failure() {
        use std::sync::atomic::AtomicBool;
        let folders: [&[u8]; 2] = [b"a", b"a/b"];
        let made = Made::new(folders.into_iter());
        let failed = AtomicBool::new(false);
        // At the top, or in a folder this checkout does not make: no wait.
        assert!(made.wait_for_folder(b"top", &failed));
        assert!(made.wait_for_folder(b"c/x", &failed));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| made.wait_for_folder(b"a/b/f", &failed));
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!waiter.is_finished(), "it waits while a/b is not made");
            made.finished(b"a/b/f");
            made.finished(b"a");
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!waiter.is_finished(), "a file and another folder do not count");
            made.finished(b"a/b");
            assert!(matches!(waiter.join(), Ok(true)));
        });
        assert!(made.wait_for_folder(b"a/f", &failed));
        // The folder's thread stopped without making it: the wait ends.
        let made = Made::new(folders.into_iter());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| made.wait_for_folder(b"a/f", &failed));
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(matches!(waiter.join(), Ok(false)));
        });
    }

    /// Guards against a lost wake-up of a thread waiting for a folder (each
    /// would cost it the 50 ms of its timed wait): folders made one by one,
    /// four threads waiting for each in turn, and no count left over.
    #[test]
    fn waiters_for_folders_made_one_by_one_are_each_woken() {
        use std::sync::atomic::AtomicBool;
        const N: usize = 300;
        let names: Vec<Vec<u8>> = (0..N).map(|i| format!("d{i}").into_bytes()).collect();
        let files: Vec<Vec<u8>> = (0..N).map(|i| format!("d{i}/f").into_bytes()).collect();
        let made = Made::new(names.iter().map(|n| n.as_slice()));
        let failed = AtomicBool::new(false);
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            let waiters: Vec<_> =
                (0..4).map(|_| s.spawn(|| files.iter().all(|f| made.wait_for_folder(f, &failed)))).collect();
            for n in &names {
                std::thread::sleep(std::time::Duration::from_micros(500));
                made.finished(n);
            }
            for w in waiters {
                assert!(matches!(w.join(), Ok(true)));
            }
        });
        let took = start.elapsed();
        // 300 folders 0.5 ms apart: about 0.2 s; a lost wake-up at each, 15 s.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        let left = made.done.lock().map(|d| (d.waiters, d.folders.iter().all(|f| *f)));
        assert_eq!(left.ok(), Some((0, true)));
    }

    /// Payloads decrypted in place (behind their header, stored without
    /// compression) and decompressed ones, mixed, of sizes around the
    /// compression threshold and the write blocks, the same one several
    /// times: a batch writes exactly their bytes, however it is cut.
    #[test]
    fn a_batch_writes_payloads_that_lie_behind_their_header() -> Result<()> {
        use dbox_store::object::{open_in_place, seal};
        use dbox_store::ObjectKind;
        let keys = dbox_store::Keys::derive(&dbox_store::RepoKey::from_bytes([7; 32]));
        let random = |seed: usize, n: usize| -> Vec<u8> {
            (0..n).map(|i| ((i + seed * 7919).wrapping_mul(2654435761) >> 13) as u8).collect()
        };
        let sizes =
            [0, 1, 127, 128, 129, 4095, 4096, 4097, 65_536, WRITE_BATCH - 1, WRITE_BATCH, WRITE_BATCH + 1];
        let mut plain: Vec<Vec<u8>> = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            plain.push(random(i, *n));
            plain.push(b"text ".repeat(n / 5 + 1)[..*n].to_vec());
        }
        // The same chunk three times over, as a file of duplicates holds it.
        plain.push(random(99, 5000));
        plain.push(random(99, 5000));
        plain.push(random(99, 5000));
        for cuts in [vec![], vec![BLOCK, 3 * BLOCK], vec![WRITE_BATCH, 17 * BLOCK, 2 * WRITE_BATCH]] {
            let dir = tempfile::tempdir().map_err(RepoError::io("tempdir", "."))?;
            let path = dir.path().join("f");
            let f = std::fs::File::create(&path).map_err(RepoError::io("create", &path))?;
            let mut batch = Batch::default();
            let mut expected = Vec::new();
            for p in &plain {
                let (_, stored) = seal(&keys, ObjectKind::Chunk, p);
                let payload = open_in_place(&keys, ObjectKind::Chunk, stored)
                    .map_err(|e| RepoError::Usage(e.to_string()))?;
                assert_eq!(&*payload, &p[..]);
                expected.extend_from_slice(p);
                batch.push(payload);
            }
            for c in cuts {
                let n = (c - c % BLOCK).min(batch.len);
                batch.write(&f, n).map_err(RepoError::io("write", &path))?;
            }
            batch.write(&f, batch.len).map_err(RepoError::io("write", &path))?;
            assert_eq!(batch.len, 0);
            let got = std::fs::read(&path).map_err(RepoError::io("read", &path))?;
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "the bytes written differ");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the chunk sizes and however the writes are cut, the
        /// file holds the chunks in order, and a cut at a block boundary
        /// leaves the rest unwritten.
        #[test]
        fn a_batch_writes_its_chunks_in_order(
            sizes in proptest::collection::vec(0usize..20_000, 0..40),
            cuts in proptest::collection::vec(0usize..50_000, 0..6),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("f");
            let f = std::fs::File::create(&path).expect("create");
            let mut expected = Vec::new();
            let mut batch = Batch::default();
            for (i, n) in sizes.iter().enumerate() {
                let part: Vec<u8> = (0..*n).map(|j| (i * 7 + j) as u8).collect();
                expected.extend_from_slice(&part);
                batch.push(Payload::from(part));
            }
            let mut done = 0;
            for c in cuts {
                let n = (c - c % BLOCK).min(batch.len);
                batch.write(&f, n).expect("write");
                done += n;
                prop_assert_eq!(batch.len, expected.len() - done);
                prop_assert_eq!(std::fs::read(&path).expect("read"), &expected[..done]);
            }
            batch.write(&f, batch.len).expect("write");
            prop_assert_eq!(batch.len, 0);
            prop_assert_eq!(std::fs::read(&path).expect("read"), expected);
        }
    }

    /// Takes everything from the store; `on_ready` runs at each file's wait.
    struct StoreFeed<F: Fn(&[ObjectId]) -> Result<bool> + Sync>(F);

    impl<F: Fn(&[ObjectId]) -> Result<bool> + Sync> Feed for StoreFeed<F> {
        fn ready(&self, ids: &[ObjectId]) -> Result<bool> {
            (self.0)(ids)
        }
        fn chunk(&self, store: &Store, id: &ObjectId) -> Result<Payload> {
            Ok(store.get_chunk(id)?)
        }
        fn expect(&self, _: &mut dyn Iterator<Item = &ObjectId>) {}
    }

    /// A repository whose store holds a tree of awkward paths; its root.
    fn awkward_tree(dir: &Path) -> (Repo, ObjectId, BTreeMap<Vec<u8>, Content>) {
        let repo = Repo::init(&dir.join("r")).expect("init");
        let w = repo.store().writer().expect("writer");
        let mut entries: BTreeMap<Vec<u8>, Content> = BTreeMap::new();
        let file = |p: String, entries: &mut BTreeMap<Vec<u8>, Content>| {
            let body = format!("content of {p}\n").repeat(3);
            let fc = w.put_file(body.as_bytes()).expect("put");
            entries.insert(
                p.into_bytes(),
                Content::File { size: fc.size, chunks: fc.chunks, executable: false },
            );
        };
        // Names that sort around '/': "a b", "a-", "a.b" come between "a" and "a/...".
        for d in ["a", "a b", "a-", "a/b", "a/b/c", "a0", "zdir", "m"] {
            entries.insert(d.as_bytes().to_vec(), Content::Dir);
        }
        for f in ["0first", "a.b", "a b/x", "a-/y", "a/b/c/f", "a/b.c", "a0/z", "zdir/f", "zz"] {
            file(f.to_string(), &mut entries);
        }
        // A deep chain and many sibling folders.
        let mut p = String::from("m");
        for i in 0..40 {
            p = format!("{p}/d{i}");
            entries.insert(p.clone().into_bytes(), Content::Dir);
            file(format!("{p}/f"), &mut entries);
        }
        for i in 0..300 {
            entries.insert(format!("w{i:03}").into_bytes(), Content::Dir);
            file(format!("w{i:03}/f"), &mut entries);
            entries.insert(format!("w{i:03}/l").into_bytes(), Content::Symlink(b"f".to_vec()));
        }
        let root =
            crate::snapshot::build_trees(&w, entries.iter().map(|(p, c)| (p, c, None))).expect("trees");
        w.flush().expect("flush");
        drop(w);
        (repo, root, entries)
    }

    #[test]
    fn a_fresh_checkout_writes_every_awkward_path() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (repo, root, entries) = awkward_tree(dir.path());
            let feed = StoreFeed(|_: &[ObjectId]| Ok(true));
            let (_, out) = checkout_fresh(&repo, &root, &feed).expect("checkout").expect("trees");
            assert!(!out.incomplete, "{out:?}");
            assert_eq!(out.written.len(), entries.len());
            for (p, c) in &entries {
                let abs = abs_path(repo.root(), p);
                let m = std::fs::symlink_metadata(&abs).expect("there");
                match c {
                    Content::Dir => assert!(m.is_dir()),
                    Content::Symlink(_) => assert!(m.file_type().is_symlink()),
                    Content::File { .. } => assert_eq!(
                        std::fs::read(&abs).expect("read"),
                        format!("content of {}\n", String::from_utf8_lossy(p)).repeat(3).into_bytes()
                    ),
                }
            }
        }
    }

    /// The user makes a file where a later folder goes, once writing began:
    /// the checkout ends (incomplete), leaves it, and does not hang.
    #[test]
    fn a_fresh_checkout_with_a_folder_taken_meanwhile_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, root, _) = awkward_tree(dir.path());
        let mine = repo.root().join("zdir");
        let feed = StoreFeed(|_: &[ObjectId]| {
            let _ = std::fs::write(&mine, "mine\n");
            Ok(true)
        });
        let t = std::time::Instant::now();
        let (_, out) = checkout_fresh(&repo, &root, &feed).expect("checkout").expect("trees");
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(out.incomplete);
        assert_eq!(std::fs::read(&mine).expect("read"), b"mine\n");
        assert!(!out.written.contains(&b"zdir".to_vec()));
    }

    /// A feed that fails part-way: the other thread, waiting for a folder
    /// nobody makes any more, stops too.
    #[test]
    fn a_fresh_checkout_whose_feed_fails_does_not_hang() {
        for n in [1usize, 2, 3, 10, 50, 200] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (repo, root, _) = awkward_tree(dir.path());
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let feed = StoreFeed(|_: &[ObjectId]| {
                if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= n {
                    return Err(RepoError::Usage("the feed failed".into()));
                }
                Ok(true)
            });
            let t = std::time::Instant::now();
            let (_, out) = checkout_fresh(&repo, &root, &feed).expect("checkout").expect("trees");
            assert!(t.elapsed() < Duration::from_secs(30));
            assert!(out.incomplete);
        }
    }
}
