//! The store: opening, reading, and the single writer.
//!
//! A [`Store`] reads; it never takes the lock. [`Store::writer`] takes the
//! writer lock and returns a [`Writer`], whose `put_*` methods take `&self`
//! so several threads can ingest at once: the CPU work (compression, hashing,
//! encryption) runs outside any lock, and only the append to the open pack is
//! serialized. Objects become durable at [`Writer::flush`]; an unflushed
//! writer that is dropped or killed loses only its unflushed objects.
//!
//! A full pack (its body keystream, its hash, the write, the fsync and the
//! rename) is written by the writer's pack-writing thread when that thread
//! is free, so one thread putting objects keeps a second core busy; when
//! that thread is still writing the previous pack, the thread whose object
//! filled the pack writes it itself rather than wait.
//! [`StoreOptions::pack_thread`] turns the thread off.
//!
//! Where the time goes, measured (`bench/RESULTS.md`): the per-object work
//! (cutting, the nonce hash, XChaCha20-Poly1305, the id hash) is most of
//! it; the pack-level work (keystream, pack hash, write) adds a quarter to a
//! third. One putting thread runs at about 80 % of the
//! single-core ceiling because the pack thread takes that part; two putting
//! threads then run at only about 1.25 to 1.35 times that on two cores,
//! since it is no longer free.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::atomic::{write_file, TmpFile};
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{Keys, RepoKey};
use crate::error::{DecodeError, StoreError};
use crate::id::{ObjectId, PackId, RepoId, VersionId};
use crate::index::{merged, plan_merge, write_segment, Location, Segment};
use crate::keyfile::KEY_FILE_LEN;
use crate::keyfile::{decode_key_file, encode_key_file};
use crate::limits::{MAX_CHUNK_SIZE, MAX_OBJECT_SIZE, MAX_PACK_OBJECTS, MAX_TREE_SIZE, PACK_TARGET_SIZE};
use crate::object::{self, ObjectKind};
use crate::pack::{apply_body_stream, read_body_stream, read_header, BodyStream, PackBuilder, PackEntry};
use crate::tree::Tree;
use crate::version::SignedVersion;
use crate::vfs::{LockGuard, OsFs, ReadAt, Vfs};

/// Most pack files kept open for reading at once.
const OPEN_PACKS: usize = 128;
/// Largest `pack_target` accepted: packs stay far below what readers accept.
pub const MAX_PACK_TARGET: usize = 1 << 30;

/// Knobs for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The file layer.
    pub vfs: Arc<dyn Vfs>,
    /// Chunk sizes used by [`Writer::put_file`]; the seed is replaced by one
    /// derived from the repo key.
    pub chunker: ChunkerParams,
    /// Seal a pack once its objects reach this many bytes (at most
    /// [`MAX_PACK_TARGET`]).
    pub pack_target: usize,
    /// Whether a [`Writer`] has a thread of its own that writes full packs
    /// (the body keystream, the pack's hash, the write and the fsync) while
    /// the thread that filled the pack goes on (default). Without it, the
    /// thread whose object fills a pack writes the pack: the store then uses
    /// exactly the threads that put objects.
    pub pack_thread: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            vfs: Arc::new(OsFs),
            chunker: ChunkerParams::default(),
            pack_target: PACK_TARGET_SIZE,
            pack_thread: true,
        }
    }
}

/// The chunks of one stored file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileChunks {
    /// Total size in bytes.
    pub size: u64,
    /// Chunk ids in order.
    pub chunks: Vec<ObjectId>,
}

/// What the index knows, swapped as a whole under a lock.
#[derive(Default)]
struct IndexState {
    segments: Vec<Arc<Segment>>,
    /// Objects of packs no segment covers yet: packs sealed by this process
    /// since the last flush, or found on disk uncovered when opening, or
    /// covered only by a segment found damaged.
    extra: HashMap<ObjectId, Vec<Location>>,
    /// Packs behind `extra`.
    uncovered: Vec<PackId>,
    /// Damaged segments dropped from use; a writer replaces and removes them.
    dropped: Vec<PathBuf>,
    /// Problems met while loading (damaged segments or packs, skipped).
    problems: Vec<StoreError>,
}

impl IndexState {
    fn add_pack(&mut self, pack: PackId, entries: Vec<PackEntry>) {
        for e in entries {
            self.extra.entry(e.id).or_default().push(Location { pack, offset: e.offset, len: e.len });
        }
        self.uncovered.push(pack);
    }
}

struct PackHandle {
    file: Arc<dyn ReadAt>,
    body: BodyStream,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) keys: Keys,
    repo: RepoId,
    repo_key: RepoKey,
    opts: StoreOptions,
    state: RwLock<IndexState>,
    packs: Mutex<HashMap<PackId, Arc<PackHandle>>>,
}

/// An open store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.inner.root).field("repo", &self.inner.repo).finish()
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn pack_path(root: &Path, id: &PackId) -> PathBuf {
    root.join("packs").join(format!("{id}.pack"))
}

/// Parses `<64 lowercase hex>.<ext>` file names.
pub(crate) fn parse_name(name: &std::ffi::OsStr, ext: &str) -> Option<[u8; 32]> {
    let name = name.to_str()?;
    let hex_part = name.strip_suffix(ext)?.strip_suffix('.')?;
    if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Lists a directory, treating a missing one as empty.
fn list_or_empty(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<std::ffi::OsString>, StoreError> {
    match vfs.list_dir(dir) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io("list", dir)(e)),
    }
}

impl Store {
    /// Creates a new store at `root` (created if missing) for repository
    /// `repo` with key `key`.
    pub fn create(root: &Path, repo: RepoId, key: &RepoKey, opts: StoreOptions) -> Result<Self, StoreError> {
        let vfs = opts.vfs.clone();
        // Make every directory this creates durable in its parent.
        let mut missing = Vec::new();
        for a in root.ancestors() {
            if vfs.exists(a).map_err(StoreError::io("stat", a))? {
                break;
            }
            missing.push(a.to_path_buf());
        }
        for d in ["packs", "index", "tmp"] {
            let p = root.join(d);
            vfs.create_dir_all(&p).map_err(StoreError::io("create directory", &p))?;
        }
        vfs.sync_dir(root).map_err(StoreError::io("fsync directory", root))?;
        for d in &missing {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                vfs.sync_dir(parent).map_err(StoreError::io("fsync directory", parent))?;
            }
        }
        // Hold the writer lock so that two concurrent creates cannot both
        // write a key file: the second finds the first's.
        let lock = root.join("lock");
        let guard = vfs
            .try_lock(&lock, std::process::id())
            .map_err(StoreError::io("lock", &lock))?
            .ok_or_else(|| StoreError::AlreadyExists { path: root.to_path_buf() })?;
        let key_path = root.join("key");
        if vfs.exists(&key_path).map_err(StoreError::io("stat", &key_path))? {
            return Err(StoreError::AlreadyExists { path: root.to_path_buf() });
        }
        write_file(&*vfs, &root.join("tmp"), &key_path, &encode_key_file(&repo, key))?;
        drop(guard);
        Self::open(root, opts)
    }

    /// Opens the store at `root`.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let vfs = opts.vfs.clone();
        let key_path = root.join("key");
        let bytes = match vfs.read_file(&key_path, KEY_FILE_LEN as u64) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore { path: root.to_path_buf() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StoreError::KeyFile {
                    path: key_path,
                    source: DecodeError::Invalid(format!("key file is not {KEY_FILE_LEN} bytes")),
                })
            }
            Err(e) => return Err(StoreError::io("read", &key_path)(e)),
        };
        let (repo, repo_key) = decode_key_file(&bytes)
            .map_err(|source| StoreError::KeyFile { path: key_path.clone(), source })?;
        if let Err(e) = opts.chunker.validate() {
            return Err(StoreError::InvalidObject { source: DecodeError::Invalid(e) });
        }
        if opts.pack_target == 0 || opts.pack_target > MAX_PACK_TARGET {
            return Err(StoreError::InvalidObject {
                source: DecodeError::Invalid(format!("pack target must be 1 to {MAX_PACK_TARGET} bytes")),
            });
        }
        let store = Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                vfs,
                keys: Keys::derive(&repo_key),
                repo,
                repo_key,
                opts,
                state: RwLock::new(IndexState::default()),
                packs: Mutex::new(HashMap::new()),
            }),
        };
        store.refresh()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The repository id.
    pub fn repo_id(&self) -> RepoId {
        self.inner.repo
    }

    /// The repo key.
    pub fn repo_key(&self) -> &RepoKey {
        &self.inner.repo_key
    }

    /// The keys derived from the repo key.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The chunker settings of this store, seeded from the repo key. Any
    /// code that computes chunk ids for this store must chunk with these.
    pub fn chunker_params(&self) -> ChunkerParams {
        ChunkerParams { seed: self.inner.keys.chunker_seed, ..self.inner.opts.chunker }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the index from disk, to see what another process wrote.
    /// Packs no segment covers are indexed from their own headers.
    pub fn refresh(&self) -> Result<(), StoreError> {
        let mut fresh = self.load_state()?;
        let mut state = self.write_state();
        // Packs this process sealed while the new state was being loaded
        // are not lost from view.
        let covered: HashSet<PackId> = fresh
            .segments
            .iter()
            .flat_map(|s| s.packs().iter().copied())
            .chain(fresh.uncovered.iter().copied())
            .collect();
        for pack in state.uncovered.clone() {
            if !covered.contains(&pack) {
                let entries: Vec<(ObjectId, Location)> = state
                    .extra
                    .iter()
                    .flat_map(|(id, locs)| locs.iter().filter(|l| l.pack == pack).map(move |l| (*id, *l)))
                    .collect();
                for (id, loc) in entries {
                    fresh.extra.entry(id).or_default().push(loc);
                }
                fresh.uncovered.push(pack);
            }
        }
        *state = fresh;
        Ok(())
    }

    /// Problems met by the last [`Store::refresh`] that were worked around
    /// (a damaged segment ignored, a damaged pack skipped).
    pub fn load_problems(&self) -> Vec<String> {
        self.read_state().problems.iter().map(error_chain).collect()
    }

    fn load_state(&self) -> Result<IndexState, StoreError> {
        let vfs = &*self.inner.vfs;
        let index_dir = self.inner.root.join("index");
        // A concurrent writer may delete merged segments between our listing
        // and our opening them: list again then.
        let mut attempts = 0;
        let (segments, mut problems, dropped) = 'load: loop {
            attempts += 1;
            let names = list_or_empty(vfs, &index_dir)?;
            let mut segments = Vec::new();
            let mut problems = Vec::new();
            let mut dropped = Vec::new();
            for name in names {
                if parse_name(&name, "idx").is_none() {
                    continue;
                }
                let path = index_dir.join(&name);
                match Segment::open(vfs, &path) {
                    Ok(s) => segments.push(Arc::new(s)),
                    Err(StoreError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound && attempts < 5 =>
                    {
                        continue 'load;
                    }
                    Err(e @ StoreError::CorruptIndex { .. }) => {
                        problems.push(e);
                        dropped.push(path);
                    }
                    Err(e) => return Err(e),
                }
            }
            break (segments, problems, dropped);
        };
        let covered: HashSet<PackId> = segments.iter().flat_map(|s| s.packs().iter().copied()).collect();
        let mut state = IndexState { segments, dropped, ..IndexState::default() };
        for pack in self.list_packs()? {
            if covered.contains(&pack) {
                continue;
            }
            match self.pack_header(&pack) {
                Ok(entries) => state.add_pack(pack, entries),
                Err(e) => problems.push(e),
            }
        }
        state.problems = problems;
        Ok(state)
    }

    /// Stops using a segment found damaged: its packs are indexed from their
    /// headers instead, and the next writer saves that and removes the file.
    fn drop_segment(&self, bad: &Arc<Segment>, err: StoreError) {
        let mut state = self.write_state();
        if !state.segments.iter().any(|s| Arc::ptr_eq(s, bad)) {
            return;
        }
        state.segments.retain(|s| !Arc::ptr_eq(s, bad));
        state.dropped.push(bad.path().to_path_buf());
        state.problems.push(err);
        let covered: HashSet<PackId> = state
            .segments
            .iter()
            .flat_map(|s| s.packs().iter().copied())
            .chain(state.uncovered.iter().copied())
            .collect();
        for pack in bad.packs() {
            if covered.contains(pack) {
                continue;
            }
            match self.pack_header(pack) {
                Ok(entries) => state.add_pack(*pack, entries),
                Err(e) => state.problems.push(e),
            }
        }
    }

    /// Ids of all pack files present.
    pub fn list_packs(&self) -> Result<Vec<PackId>, StoreError> {
        let dir = self.inner.root.join("packs");
        let names = list_or_empty(&*self.inner.vfs, &dir)?;
        Ok(names.iter().filter_map(|n| parse_name(n, "pack")).map(PackId).collect())
    }

    fn open_pack(&self, pack: &PackId) -> Result<Arc<PackHandle>, StoreError> {
        if let Some(h) = lock_ignoring_poison(&self.inner.packs).get(pack) {
            return Ok(h.clone());
        }
        let path = pack_path(&self.inner.root, pack);
        let file = self.inner.vfs.open_read(&path).map_err(StoreError::io("open", &path))?;
        let body =
            read_body_stream(&*file).map_err(|source| StoreError::CorruptPack { pack: *pack, source })?;
        let handle = Arc::new(PackHandle { file, body });
        let mut cache = lock_ignoring_poison(&self.inner.packs);
        if cache.len() >= OPEN_PACKS {
            cache.clear();
        }
        cache.insert(*pack, handle.clone());
        Ok(handle)
    }

    pub(crate) fn pack_file(&self, pack: &PackId) -> Result<Arc<dyn ReadAt>, StoreError> {
        let path = pack_path(&self.inner.root, pack);
        self.inner.vfs.open_read(&path).map_err(StoreError::io("open", &path))
    }

    /// Reads and decrypts a pack's header.
    pub fn pack_header(&self, pack: &PackId) -> Result<Vec<PackEntry>, StoreError> {
        let f = self.pack_file(pack)?;
        let path = pack_path(&self.inner.root, pack);
        let len = f.len().map_err(StoreError::io("stat", &path))?;
        read_header(&*f, len, &self.inner.keys)
            .map_err(|source| StoreError::CorruptPack { pack: *pack, source })
    }

    /// Every place an object is stored (usually one).
    pub fn locate_all(&self, id: &ObjectId) -> Result<Vec<Location>, StoreError> {
        self.find(id, false)
    }

    fn find(&self, id: &ObjectId, first_only: bool) -> Result<Vec<Location>, StoreError> {
        loop {
            let segments = {
                let state = self.read_state();
                let mut out: Vec<Location> = state.extra.get(id).cloned().unwrap_or_default();
                if first_only && !out.is_empty() {
                    return Ok(out);
                }
                let segments = state.segments.clone();
                drop(state);
                let mut failed = None;
                for seg in &segments {
                    match seg.lookup(id) {
                        Ok(Some(loc)) => {
                            out.push(loc);
                            if first_only {
                                return Ok(out);
                            }
                        }
                        Ok(None) => {}
                        Err(e @ StoreError::CorruptIndex { .. }) => {
                            failed = Some((seg.clone(), e));
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                match failed {
                    None => return Ok(out),
                    Some(f) => f,
                }
            };
            self.drop_segment(&segments.0, segments.1);
        }
    }

    /// Where an object is stored, if it is.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<Location>, StoreError> {
        Ok(self.find(id, true)?.into_iter().next())
    }

    /// Whether the store holds an object.
    pub fn contains(&self, id: &ObjectId) -> Result<bool, StoreError> {
        Ok(!self.find(id, true)?.is_empty())
    }

    pub(crate) fn read_at(&self, id: &ObjectId, loc: &Location) -> Result<Vec<u8>, StoreError> {
        let h = self.open_pack(&loc.pack)?;
        let mut buf = h.file.read_vec_at(loc.len as usize, loc.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::CorruptObject {
                    id: *id,
                    pack: Some(loc.pack),
                    source: DecodeError::Invalid("the pack ends before the object".into()),
                }
            } else {
                StoreError::io("read", pack_path(&self.inner.root, &loc.pack))(e)
            }
        })?;
        let keys = &self.inner.keys;
        apply_body_stream(keys, &h.body, loc.offset, &mut buf);
        if let Err(source) = object::check_id(id, &buf) {
            // A damaged format field in the pack's prefix picks the wrong
            // keystream; the id check makes trying the other one safe.
            apply_body_stream(keys, &h.body, loc.offset, &mut buf);
            apply_body_stream(keys, &h.body.other(), loc.offset, &mut buf);
            if object::check_id(id, &buf).is_err() {
                return Err(StoreError::CorruptObject { id: *id, pack: Some(loc.pack), source });
            }
        }
        Ok(buf)
    }

    /// Reads the first copy of `id` that verifies; the first error if none.
    fn read_verified(&self, id: &ObjectId) -> Result<Option<(Vec<u8>, PackId)>, StoreError> {
        let mut first_err = None;
        for loc in self.locate_all(id)? {
            match self.read_at(id, &loc) {
                Ok(b) => return Ok(Some((b, loc.pack))),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// An object's stored bytes, verified against its id; `None` if absent.
    pub fn try_get_raw(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_verified(id)?.map(|(b, _)| b))
    }

    /// An object's stored bytes, verified against its id.
    pub fn get_raw(&self, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        self.try_get_raw(id)?.ok_or(StoreError::NotFound { id: *id })
    }

    /// An object's payload (decrypted and decompressed), checked to be of `kind`.
    pub fn get_payload(&self, id: &ObjectId, kind: ObjectKind) -> Result<object::Payload, StoreError> {
        let (stored, pack) = self.read_verified(id)?.ok_or(StoreError::NotFound { id: *id })?;
        object::open_in_place(&self.inner.keys, kind, stored).map_err(|source| StoreError::CorruptObject {
            id: *id,
            pack: Some(pack),
            source,
        })
    }

    /// A chunk's plaintext.
    pub fn get_chunk(&self, id: &ObjectId) -> Result<object::Payload, StoreError> {
        self.get_payload(id, ObjectKind::Chunk)
    }

    /// A tree.
    pub fn get_tree(&self, id: &ObjectId) -> Result<Tree, StoreError> {
        let payload = self.get_payload(id, ObjectKind::Tree)?;
        Tree::decode(&payload).map_err(|source| StoreError::CorruptObject { id: *id, pack: None, source })
    }

    /// A version, with its signature verified and its repository checked.
    pub fn get_version(&self, id: &VersionId) -> Result<SignedVersion, StoreError> {
        let oid = ObjectId::from(*id);
        let (stored, pack) = self.read_verified(&oid)?.ok_or(StoreError::NotFound { id: oid })?;
        let v = SignedVersion::from_stored(&stored).map_err(|source| StoreError::CorruptObject {
            id: oid,
            pack: Some(pack),
            source,
        })?;
        if v.body().repo != self.inner.repo {
            return Err(StoreError::CorruptObject {
                id: oid,
                pack: Some(pack),
                source: DecodeError::Invalid("the version belongs to another repository".into()),
            });
        }
        Ok(v)
    }

    /// Writes the whole contents of a file, chunk by chunk, to `out`.
    pub fn read_file_to(&self, chunks: &[ObjectId], out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for id in chunks {
            let data = self.get_chunk(id)?;
            out.write_all(&data).map_err(StoreError::io("write", "<output>"))?;
            n += data.len() as u64;
        }
        Ok(n)
    }

    /// Ids of every indexed object, in no particular order.
    pub fn list_objects(&self) -> Result<Vec<ObjectId>, StoreError> {
        let (mut ids, segments): (Vec<ObjectId>, Vec<Arc<Segment>>) = {
            let state = self.read_state();
            (state.extra.keys().copied().collect(), state.segments.clone())
        };
        for seg in &segments {
            for r in seg.scan() {
                ids.push(r?.0);
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Takes the writer lock, or fails at once if another process holds it.
    pub fn writer(&self) -> Result<Writer, StoreError> {
        self.writer_wait(Duration::ZERO)
    }

    /// Takes the writer lock, waiting up to `timeout` for another process to
    /// release it.
    pub fn writer_wait(&self, timeout: Duration) -> Result<Writer, StoreError> {
        self.writer_wait_notify(timeout, &mut |_| {})
    }

    /// [`Store::writer_wait`], calling `waiting` once, with the holder's pid
    /// where the lock file names one, if the lock is held when it starts:
    /// a command can then say why it pauses.
    pub fn writer_wait_notify(
        &self,
        timeout: Duration,
        waiting: &mut dyn FnMut(Option<u32>),
    ) -> Result<Writer, StoreError> {
        let vfs = &*self.inner.vfs;
        let path = self.inner.root.join("lock");
        let deadline = Instant::now().checked_add(timeout);
        let holder = || {
            vfs.read_file(&path, 64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.trim().parse().ok())
        };
        let mut told = false;
        let guard = loop {
            if let Some(g) = vfs.try_lock(&path, std::process::id()).map_err(StoreError::io("lock", &path))? {
                break g;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(StoreError::Locked { pid: holder(), path });
            }
            if !std::mem::replace(&mut told, true) {
                waiting(holder());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for d in ["tmp", "index", "packs"] {
            let p = self.inner.root.join(d);
            vfs.create_dir_all(&p).map_err(StoreError::io("create directory", &p))?;
        }
        // Whatever is in tmp/ belongs to a writer that is gone.
        let tmp = self.inner.root.join("tmp");
        for name in list_or_empty(vfs, &tmp)? {
            let p = tmp.join(name);
            if let Err(e) = vfs.remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound && std::fs::remove_dir_all(&p).is_err() {
                    return Err(StoreError::io("remove", &p)(e));
                }
            }
        }
        self.refresh()?;
        let core = Arc::new(Core {
            store: self.clone(),
            pending: Mutex::new(Vec::new()),
            free: Mutex::new(Vec::new()),
        });
        // A full pack is handed over only when the thread is free (a
        // rendezvous channel); see `put_stored`.
        let (to_thread, thread) = if self.inner.opts.pack_thread {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Pending>(0);
            let thread_core = core.clone();
            let thread = std::thread::Builder::new()
                .name("dbox-pack-writer".into())
                .spawn(move || {
                    for p in rx {
                        // A failed write leaves the pack pending; flush
                        // retries it and reports the error.
                        if thread_core.write_pending(&p).is_ok() {
                            thread_core.recycle(p);
                        }
                    }
                })
                .map_err(StoreError::io("start a thread for", "pack writing"))?;
            (Some(tx), Some(thread))
        } else {
            (None, None)
        };
        let w = Writer {
            core,
            open: Mutex::new(OpenPack::new(&self.inner.keys)),
            flushing: Mutex::new(()),
            chunker_buffers: Mutex::new(Vec::new()),
            to_thread,
            thread,
            _guard: guard,
        };
        w.save_index()?;
        Ok(w)
    }
}

pub(crate) fn error_chain(e: &StoreError) -> String {
    crate::error::chain(e)
}

struct OpenPack {
    builder: PackBuilder,
    map: HashMap<ObjectId, PackEntry>,
}

/// A full pack being written, or whose writing failed and awaits a retry.
struct PendingPack {
    pack: OpenPack,
    /// Held while writing; true once written, so a flush racing the thread
    /// that filled the pack does not write it twice.
    written: Mutex<bool>,
}

type Pending = Arc<PendingPack>;

fn pending(pack: OpenPack) -> Pending {
    Arc::new(PendingPack { pack, written: Mutex::new(false) })
}

impl OpenPack {
    fn new(keys: &Keys) -> Self {
        Self { builder: PackBuilder::new(keys), map: HashMap::new() }
    }
}

/// Written packs' buffers kept for reuse: as many as may be filled or
/// written at once with two threads putting objects (one open, one on the
/// writing thread, one written by each putting thread).
const FREE_PACK_BUFFERS: usize = 3;

/// Chunker buffers a writer keeps for reuse: one per thread putting files
/// at once, up to this many.
const CHUNKER_BUFFERS: usize = 4;

/// What the writer shares with its pack-writing thread.
struct Core {
    store: Store,
    /// Full packs not yet on disk: still readable and deduplicated while
    /// they are written.
    pending: Mutex<Vec<Pending>>,
    /// Written packs' buffers, kept for reuse so that a new pack does not
    /// page-fault its way through fresh memory.
    free: Mutex<Vec<PackBuilder>>,
}

impl Core {
    fn pending_has(&self, id: &ObjectId) -> bool {
        lock_ignoring_poison(&self.pending).iter().any(|p| p.pack.map.contains_key(id))
    }

    fn pending_get(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let pending = lock_ignoring_poison(&self.pending);
        pending.iter().find_map(|p| p.pack.map.get(id).map(|e| p.pack.builder.get(e)))
    }

    /// Writes a full pack to disk and makes its objects visible through the
    /// store. On failure it stays pending, so a later flush retries it.
    fn write_pending(&self, p: &Pending) -> Result<(), StoreError> {
        let mut written = lock_ignoring_poison(&p.written);
        if *written {
            return Ok(());
        }
        let inner = &self.store.inner;
        let b = &p.pack.builder;
        let tail = b.seal()?;
        let mut tmp = TmpFile::create_direct(&*inner.vfs, &inner.root.join("tmp"))?;
        let pack = b.write_to(&tail, |len, fill| tmp.write_filled(len, fill))?;
        tmp.commit(&pack_path(&inner.root, &pack))?;
        self.store.write_state().add_pack(pack, b.entries().to_vec());
        *written = true;
        lock_ignoring_poison(&self.pending).retain(|q| !Arc::ptr_eq(q, p));
        Ok(())
    }

    /// Keeps a written pack's buffer for the next pack: the last of the
    /// threads holding the pack gets it, and only a buffer grown to at least
    /// half the pack target is kept (a small one, from a flush, would take
    /// the place of a large one and grow again a page at a time).
    fn recycle(&self, p: Pending) {
        if let Some(pp) = Arc::into_inner(p) {
            let mut builder = pp.pack.builder;
            if builder.capacity() < self.store.inner.opts.pack_target / 2 {
                return;
            }
            let mut free = lock_ignoring_poison(&self.free);
            if free.len() < FREE_PACK_BUFFERS {
                builder.reset();
                free.push(builder);
            }
        }
    }

    fn new_open_pack(&self) -> OpenPack {
        match lock_ignoring_poison(&self.free).pop() {
            Some(builder) => OpenPack { builder, map: HashMap::new() },
            None => OpenPack::new(&self.store.inner.keys),
        }
    }
}

/// The store's single writer. Dropping it stops its pack-writing thread and
/// releases the lock; objects put since the last [`Writer::flush`] are then
/// lost.
pub struct Writer {
    core: Arc<Core>,
    open: Mutex<OpenPack>,
    /// Serializes flushes, which write and merge index segments.
    flushing: Mutex<()>,
    /// Chunker buffers (up to 8 MiB each) of finished `put_file` calls, for
    /// the next ones: fresh memory costs a page fault per 4 KiB.
    chunker_buffers: Mutex<Vec<Vec<u8>>>,
    to_thread: Option<std::sync::mpsc::SyncSender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Dropped last, after the thread has stopped.
    _guard: LockGuard,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.to_thread.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("store", &self.core.store).finish()
    }
}

/// Stored bytes of at most [`MAX_OBJECT_SIZE`].
fn within_object_limit(stored: &[u8]) -> Result<(), StoreError> {
    if stored.len() > MAX_OBJECT_SIZE {
        return Err(StoreError::TooLarge {
            what: "object",
            size: stored.len() as u64,
            limit: MAX_OBJECT_SIZE as u64,
        });
    }
    Ok(())
}

impl Writer {
    /// The store this writer writes to.
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// Stores a chunk of file data.
    pub fn put_chunk(&self, data: &[u8]) -> Result<ObjectId, StoreError> {
        if data.len() > MAX_CHUNK_SIZE {
            return Err(StoreError::TooLarge {
                what: "chunk",
                size: data.len() as u64,
                limit: MAX_CHUNK_SIZE as u64,
            });
        }
        let (id, stored) = object::seal(&self.core.store.inner.keys, ObjectKind::Chunk, data);
        self.put_stored(id, &stored, false)
    }

    /// Stores a tree.
    pub fn put_tree(&self, tree: &Tree) -> Result<ObjectId, StoreError> {
        let payload = tree.encode();
        if payload.len() > MAX_TREE_SIZE {
            return Err(StoreError::TooLarge {
                what: "tree",
                size: payload.len() as u64,
                limit: MAX_TREE_SIZE as u64,
            });
        }
        let (id, stored) = object::seal(&self.core.store.inner.keys, ObjectKind::Tree, &payload);
        self.put_stored(id, &stored, false)
    }

    /// Stores a signed version of this store's repository.
    pub fn put_version(&self, version: &SignedVersion) -> Result<VersionId, StoreError> {
        if version.body().repo != self.core.store.inner.repo {
            return Err(StoreError::InvalidObject {
                source: DecodeError::Invalid("the version belongs to another repository".into()),
            });
        }
        self.put_stored(version.id().into(), version.stored(), false).map(VersionId::from)
    }

    /// Stores an object received as stored bytes (from a peer), checking
    /// that the bytes hash to `id` and start like an object; versions must
    /// verify and belong to this repository. If the store holds the object
    /// already but every copy is damaged, these bytes are stored anew.
    pub fn put_raw(&self, id: &ObjectId, stored: &[u8]) -> Result<(), StoreError> {
        // Before hashing, so an oversized input is not hashed.
        within_object_limit(stored)?;
        object::check_id(id, stored).map_err(|source| StoreError::InvalidObject { source })?;
        self.put_known(id, stored)
    }

    /// As [`Writer::put_raw`], for bytes already checked against their id.
    pub fn put_checked(&self, object: &object::Checked) -> Result<(), StoreError> {
        within_object_limit(object.bytes())?;
        self.put_known(object.id(), object.bytes())
    }

    /// [`Writer::put_raw`] once the size is checked and the id known to match.
    fn put_known(&self, id: &ObjectId, stored: &[u8]) -> Result<(), StoreError> {
        let kind = ObjectKind::of_stored(stored).map_err(|source| StoreError::InvalidObject { source })?;
        if kind == ObjectKind::Version {
            let v =
                SignedVersion::from_stored(stored).map_err(|source| StoreError::InvalidObject { source })?;
            if v.body().repo != self.core.store.inner.repo {
                return Err(StoreError::InvalidObject {
                    source: DecodeError::Invalid("the version belongs to another repository".into()),
                });
            }
        }
        self.put_stored(*id, stored, true).map(|_| ())
    }

    /// Chunks and stores everything `reader` yields.
    pub fn put_file(&self, mut reader: impl Read) -> Result<FileChunks, StoreError> {
        let buf = lock_ignoring_poison(&self.chunker_buffers).pop().unwrap_or_default();
        let mut chunker = Chunker::with_buffer(&mut reader, self.core.store.chunker_params(), buf);
        let mut out = FileChunks::default();
        while let Some(chunk) = chunker.next_chunk().map_err(StoreError::io("read", "<input>"))? {
            out.chunks.push(self.put_chunk(chunk)?);
            out.size += chunk.len() as u64;
        }
        let mut spare = lock_ignoring_poison(&self.chunker_buffers);
        if spare.len() < CHUNKER_BUFFERS {
            spare.push(chunker.into_buffer());
        }
        Ok(out)
    }

    /// Appends an object unless the store has it. With `check_existing`, a
    /// stored copy only counts if it reads back intact.
    fn put_stored(&self, id: ObjectId, stored: &[u8], check_existing: bool) -> Result<ObjectId, StoreError> {
        let present = if check_existing {
            matches!(self.core.store.read_verified(&id), Ok(Some(_)))
        } else {
            self.core.store.contains(&id)?
        };
        if present {
            return Ok(id);
        }
        let full = {
            let mut open = lock_ignoring_poison(&self.open);
            // Pending packs before the store: a written pack joins the store
            // before it leaves the pending list, so an object whose pack was
            // written since the check above is found one way or the other
            // and not stored twice.
            if open.map.contains_key(&id)
                || self.core.pending_has(&id)
                || (!check_existing && self.core.store.contains(&id)?)
            {
                return Ok(id);
            }
            let target = self.core.store.inner.opts.pack_target;
            // A pack is sealed before an object would take it past the
            // target, so a pack's buffer never holds more than the target
            // (three of them may be alive: open, being written by the pack
            // thread, being written by a putting thread).
            let full = if !open.builder.is_empty() && open.builder.len() + stored.len() > target {
                Some(std::mem::replace(&mut *open, self.core.new_open_pack()))
            } else {
                None
            };
            let entry = open.builder.push(id, stored);
            open.map.insert(id, entry);
            let full = match full {
                None if open.builder.len() >= target || open.builder.count() >= MAX_PACK_OBJECTS / 2 => {
                    Some(std::mem::replace(&mut *open, self.core.new_open_pack()))
                }
                full => full,
            };
            full.map(|f| {
                let full = pending(f);
                lock_ignoring_poison(&self.core.pending).push(full.clone());
                full
            })
        };
        // Written outside the `open` lock, by the pack-writing thread if it
        // is free. If it is still busy with the previous pack, this thread
        // writes the pack itself: waiting would leave a core idle whenever
        // the writing thread waits for the disk.
        if let Some(full) = full {
            let handed = match &self.to_thread {
                Some(tx) => tx.try_send(full.clone()).is_ok(),
                None => false,
            };
            if !handed {
                self.core.write_pending(&full)?;
                self.core.recycle(full);
            }
        }
        Ok(id)
    }

    /// Reads an object written by this writer, flushed or not.
    pub fn get_raw(&self, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        {
            let open = lock_ignoring_poison(&self.open);
            if let Some(e) = open.map.get(id) {
                return Ok(open.builder.get(e));
            }
        }
        if let Some(b) = self.core.pending_get(id) {
            return Ok(b);
        }
        self.core.store.get_raw(id)
    }

    /// Makes every object put so far durable: seals the open pack and writes
    /// an index segment for it. When this returns, the objects survive a
    /// crash or power loss.
    pub fn flush(&self) -> Result<(), StoreError> {
        {
            let mut open = lock_ignoring_poison(&self.open);
            if !open.builder.is_empty() {
                let full = pending(std::mem::replace(&mut *open, self.core.new_open_pack()));
                lock_ignoring_poison(&self.core.pending).push(full);
            }
        }
        // Every pending pack, including any whose earlier write failed; one
        // the thread is writing is waited for.
        let pending: Vec<Pending> = lock_ignoring_poison(&self.core.pending).clone();
        for p in &pending {
            self.core.write_pending(p)?;
        }
        // Their buffers serve the next packs: a sync flushes every 64 MiB,
        // and a new buffer would fault in its 32 MiB a page at a time.
        for p in pending {
            self.core.recycle(p);
        }
        self.save_index()
    }

    /// Writes a segment for all uncovered packs, removes segments dropped as
    /// damaged, then merges segments.
    fn save_index(&self) -> Result<(), StoreError> {
        let _flushing = lock_ignoring_poison(&self.flushing);
        let inner = &self.core.store.inner;
        let (packs, mut entries, dropped): (Vec<PackId>, Vec<(ObjectId, Location)>, Vec<PathBuf>) = {
            let state = self.core.store.read_state();
            let mut entries = Vec::new();
            for (id, locs) in &state.extra {
                if let Some(l) = locs.first() {
                    entries.push((*id, *l));
                }
            }
            (state.uncovered.clone(), entries, state.dropped.clone())
        };
        if !packs.is_empty() {
            entries.sort_by_key(|e| e.0);
            let source = || Box::new(entries.iter().map(|e| Ok(*e))) as Box<dyn Iterator<Item = _>>;
            let path = write_segment(
                &*inner.vfs,
                &inner.root.join("tmp"),
                &inner.root.join("index"),
                &packs,
                &source,
            )?;
            let seg = Arc::new(Segment::open(&*inner.vfs, &path)?);
            let mut state = self.core.store.write_state();
            for (id, _) in &entries {
                if let Some(locs) = state.extra.get_mut(id) {
                    locs.retain(|l| !packs.contains(&l.pack));
                    if locs.is_empty() {
                        state.extra.remove(id);
                    }
                }
            }
            state.uncovered.retain(|p| !packs.contains(p));
            state.segments.push(seg);
        }
        if !dropped.is_empty() {
            // Their packs are covered by the segment just written.
            for p in &dropped {
                match inner.vfs.remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", p)(e)),
                }
            }
            let dir = inner.root.join("index");
            inner.vfs.sync_dir(&dir).map_err(StoreError::io("fsync directory", &dir))?;
            self.core.store.write_state().dropped.retain(|p| !dropped.contains(p));
        }
        self.merge_segments()
    }

    fn merge_segments(&self) -> Result<(), StoreError> {
        loop {
            let segments = self.core.store.read_state().segments.clone();
            let counts: Vec<u64> = segments.iter().map(|s| s.count()).collect();
            let Some(pick) = plan_merge(&counts) else { return Ok(()) };
            let chosen: Vec<Arc<Segment>> = pick.iter().map(|&i| segments[i].clone()).collect();
            match self.replace_segments(&chosen) {
                Ok(()) => {}
                Err(StoreError::CorruptIndex { path, source }) => {
                    // A damaged segment leaves the merge; its packs are
                    // indexed from their headers and saved next flush.
                    let Some(bad) = chosen.iter().find(|s| s.path() == path) else {
                        return Err(StoreError::CorruptIndex { path, source });
                    };
                    self.core
                        .store
                        .drop_segment(bad, StoreError::CorruptIndex { path: path.clone(), source });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one segment holding all entries of `old` and removes them.
    fn replace_segments(&self, old: &[Arc<Segment>]) -> Result<(), StoreError> {
        let inner = &self.core.store.inner;
        let mut packs: Vec<PackId> = old.iter().flat_map(|s| s.packs().iter().copied()).collect();
        packs.sort();
        packs.dedup();
        let source = || merged(old);
        let path =
            write_segment(&*inner.vfs, &inner.root.join("tmp"), &inner.root.join("index"), &packs, &source)?;
        let seg = Arc::new(Segment::open(&*inner.vfs, &path)?);
        {
            let mut state = self.core.store.write_state();
            state.segments.retain(|s| !old.iter().any(|o| Arc::ptr_eq(o, s)));
            state.segments.push(seg);
        }
        for s in old {
            // Merging a segment with itself gives the same file name.
            if s.path() != path {
                match inner.vfs.remove_file(s.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", s.path())(e)),
                }
            }
        }
        let dir = inner.root.join("index");
        inner.vfs.sync_dir(&dir).map_err(StoreError::io("fsync directory", &dir))
    }

    /// Rebuilds the whole index from the packs' headers and replaces every
    /// segment with one new segment. Damaged packs are skipped and returned.
    pub fn rebuild_index(&self) -> Result<Vec<StoreError>, StoreError> {
        self.flush()?;
        let _flushing = lock_ignoring_poison(&self.flushing);
        let inner = &self.core.store.inner;
        let mut entries = Vec::new();
        let mut packs = Vec::new();
        let mut skipped = Vec::new();
        for pack in self.core.store.list_packs()? {
            match self.core.store.pack_header(&pack) {
                Ok(es) => {
                    packs.push(pack);
                    entries.extend(
                        es.into_iter().map(|e| (e.id, Location { pack, offset: e.offset, len: e.len })),
                    );
                }
                Err(e) => skipped.push(e),
            }
        }
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        let dir = inner.root.join("index");
        let old: Vec<PathBuf> = list_or_empty(&*inner.vfs, &dir)?
            .into_iter()
            .filter(|n| parse_name(n, "idx").is_some())
            .map(|n| dir.join(n))
            .collect();
        let source = || Box::new(entries.iter().map(|e| Ok(*e))) as Box<dyn Iterator<Item = _>>;
        let path = write_segment(&*inner.vfs, &inner.root.join("tmp"), &dir, &packs, &source)?;
        for p in old.iter().filter(|p| **p != path) {
            match inner.vfs.remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", p)(e)),
            }
        }
        inner.vfs.sync_dir(&dir).map_err(StoreError::io("fsync directory", &dir))?;
        self.core.store.refresh()?;
        Ok(skipped)
    }
}
