//! The store: opening, reading, and the single writer.
//!
//! A [`Store`] reads; it never takes the lock. [`Store::writer`] takes the
//! writer lock and returns a [`Writer`], whose `put_*` methods take `&self`
//! so several threads can ingest at once: the CPU work (compression, hashing,
//! encryption) runs outside any lock, and only the append to the open pack is
//! serialized. Objects become durable at [`Writer::flush`]; an unflushed
//! writer that is dropped or killed loses only its unflushed objects.

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
use crate::keyfile::{decode_key_file, encode_key_file};
use crate::limits::{MAX_CHUNK_SIZE, MAX_OBJECT_SIZE, MAX_TREE_SIZE, PACK_TARGET_SIZE};
use crate::object::{self, ObjectKind};
use crate::pack::{read_header, PackBuilder, PackEntry};
use crate::tree::Tree;
use crate::version::SignedVersion;
use crate::vfs::{LockGuard, OsFs, ReadAt, Vfs};

/// Most pack files kept open for reading at once.
const OPEN_PACKS: usize = 128;

/// Knobs for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The file layer.
    pub vfs: Arc<dyn Vfs>,
    /// Chunk sizes used by [`Writer::put_file`].
    pub chunker: ChunkerParams,
    /// Seal a pack once its objects reach this many bytes.
    pub pack_target: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { vfs: Arc::new(OsFs), chunker: ChunkerParams::default(), pack_target: PACK_TARGET_SIZE }
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
    /// since the last flush, or found on disk uncovered when opening.
    extra: HashMap<ObjectId, Location>,
    /// Packs behind `extra`.
    uncovered: Vec<PackId>,
    /// Problems met while loading (damaged segments or packs, skipped).
    problems: Vec<StoreError>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) keys: Keys,
    repo: RepoId,
    repo_key: RepoKey,
    opts: StoreOptions,
    state: RwLock<IndexState>,
    packs: Mutex<HashMap<PackId, Arc<dyn ReadAt>>>,
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

/// Parses `<64 hex>.<ext>` file names.
pub(crate) fn parse_name(name: &std::ffi::OsStr, ext: &str) -> Option<[u8; 32]> {
    let name = name.to_str()?;
    let hex_part = name.strip_suffix(ext)?.strip_suffix('.')?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

impl Store {
    /// Creates a new store at `root` (created if missing) for repository
    /// `repo` with key `key`.
    pub fn create(root: &Path, repo: RepoId, key: &RepoKey, opts: StoreOptions) -> Result<Self, StoreError> {
        let vfs = opts.vfs.clone();
        for d in ["packs", "index", "tmp"] {
            let p = root.join(d);
            vfs.create_dir_all(&p).map_err(StoreError::io("create directory", &p))?;
        }
        vfs.sync_dir(root).map_err(StoreError::io("fsync directory", root))?;
        // Hold the writer lock so that two concurrent creates cannot both
        // write a key file: the second finds the first's.
        let lock = root.join("lock");
        let _guard = vfs
            .try_lock(&lock, std::process::id())
            .map_err(StoreError::io("lock", &lock))?
            .ok_or_else(|| StoreError::AlreadyExists { path: root.to_path_buf() })?;
        let key_path = root.join("key");
        if vfs.exists(&key_path).map_err(StoreError::io("stat", &key_path))? {
            return Err(StoreError::AlreadyExists { path: root.to_path_buf() });
        }
        write_file(&*vfs, &root.join("tmp"), &key_path, &encode_key_file(&repo, key))?;
        drop(_guard);
        Self::open(root, opts)
    }

    /// Opens the store at `root`.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let vfs = opts.vfs.clone();
        let key_path = root.join("key");
        let bytes = match vfs.read_file(&key_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore { path: root.to_path_buf() })
            }
            Err(e) => return Err(StoreError::io("read", &key_path)(e)),
        };
        let (repo, repo_key) = decode_key_file(&bytes)
            .map_err(|source| StoreError::KeyFile { path: key_path.clone(), source })?;
        if let Err(e) = opts.chunker.validate() {
            return Err(StoreError::InvalidObject { source: DecodeError::Invalid(e) });
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

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the index from disk, to see what another process wrote.
    /// Packs no segment covers are indexed from their own headers.
    pub fn refresh(&self) -> Result<(), StoreError> {
        let state = self.load_state()?;
        *self.write_state() = state;
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
        let (segments, mut problems) = 'load: loop {
            attempts += 1;
            let names = vfs.list_dir(&index_dir).map_err(StoreError::io("list", &index_dir))?;
            let mut segments = Vec::new();
            let mut problems = Vec::new();
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
                    Err(e @ StoreError::CorruptIndex { .. }) => problems.push(e),
                    Err(e) => return Err(e),
                }
            }
            break (segments, problems);
        };
        let covered: HashSet<PackId> = segments.iter().flat_map(|s| s.packs().iter().copied()).collect();
        let mut extra = HashMap::new();
        let mut uncovered = Vec::new();
        for pack in self.list_packs()? {
            if covered.contains(&pack) {
                continue;
            }
            match self.pack_header(&pack) {
                Ok(entries) => {
                    for e in entries {
                        extra.insert(e.id, Location { pack, offset: e.offset, len: e.len });
                    }
                    uncovered.push(pack);
                }
                Err(e) => problems.push(e),
            }
        }
        Ok(IndexState { segments, extra, uncovered, problems })
    }

    /// Ids of all pack files present.
    pub fn list_packs(&self) -> Result<Vec<PackId>, StoreError> {
        let dir = self.inner.root.join("packs");
        let names = self.inner.vfs.list_dir(&dir).map_err(StoreError::io("list", &dir))?;
        Ok(names.iter().filter_map(|n| parse_name(n, "pack")).map(PackId).collect())
    }

    pub(crate) fn open_pack(&self, pack: &PackId) -> Result<Arc<dyn ReadAt>, StoreError> {
        let mut cache = lock_ignoring_poison(&self.inner.packs);
        if let Some(f) = cache.get(pack) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.inner.root, pack);
        let f = self.inner.vfs.open_read(&path).map_err(StoreError::io("open", &path))?;
        if cache.len() >= OPEN_PACKS {
            cache.clear();
        }
        cache.insert(*pack, f.clone());
        Ok(f)
    }

    /// Reads and decrypts a pack's header.
    pub fn pack_header(&self, pack: &PackId) -> Result<Vec<PackEntry>, StoreError> {
        let f = self.open_pack(pack)?;
        let path = pack_path(&self.inner.root, pack);
        let len = f.len().map_err(StoreError::io("stat", &path))?;
        read_header(&*f, len, &self.inner.keys)
            .map_err(|source| StoreError::CorruptPack { pack: *pack, source })
    }

    /// Where an object is stored, if it is.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<Location>, StoreError> {
        let state = self.read_state();
        if let Some(loc) = state.extra.get(id) {
            return Ok(Some(*loc));
        }
        for seg in &state.segments {
            if let Some(loc) = seg.lookup(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// Whether the store holds an object.
    pub fn contains(&self, id: &ObjectId) -> Result<bool, StoreError> {
        Ok(self.locate(id)?.is_some())
    }

    pub(crate) fn read_at(&self, id: &ObjectId, loc: &Location) -> Result<Vec<u8>, StoreError> {
        let f = self.open_pack(&loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset).map_err(|e| {
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
        object::check_id(id, &buf).map_err(|source| StoreError::CorruptObject {
            id: *id,
            pack: Some(loc.pack),
            source,
        })?;
        Ok(buf)
    }

    /// An object's stored bytes, verified against its id; `None` if absent.
    pub fn try_get_raw(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.locate(id)? {
            Some(loc) => self.read_at(id, &loc).map(Some),
            None => Ok(None),
        }
    }

    /// An object's stored bytes, verified against its id.
    pub fn get_raw(&self, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        self.try_get_raw(id)?.ok_or(StoreError::NotFound { id: *id })
    }

    fn get_payload(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>, StoreError> {
        let loc = self.locate(id)?.ok_or(StoreError::NotFound { id: *id })?;
        let stored = self.read_at(id, &loc)?;
        object::open(&self.inner.keys, kind, &stored).map_err(|source| StoreError::CorruptObject {
            id: *id,
            pack: Some(loc.pack),
            source,
        })
    }

    /// A chunk's plaintext.
    pub fn get_chunk(&self, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        self.get_payload(id, ObjectKind::Chunk)
    }

    /// A tree.
    pub fn get_tree(&self, id: &ObjectId) -> Result<Tree, StoreError> {
        let payload = self.get_payload(id, ObjectKind::Tree)?;
        Tree::decode(&payload).map_err(|source| StoreError::CorruptObject { id: *id, pack: None, source })
    }

    /// A version, with its signature verified.
    pub fn get_version(&self, id: &VersionId) -> Result<SignedVersion, StoreError> {
        let oid = ObjectId::from(*id);
        let loc = self.locate(&oid)?.ok_or(StoreError::NotFound { id: oid })?;
        let stored = self.read_at(&oid, &loc)?;
        SignedVersion::from_stored(&stored).map_err(|source| StoreError::CorruptObject {
            id: oid,
            pack: Some(loc.pack),
            source,
        })
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
        let state = self.read_state();
        let mut ids: Vec<ObjectId> = state.extra.keys().copied().collect();
        for seg in &state.segments {
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
        let vfs = &*self.inner.vfs;
        let path = self.inner.root.join("lock");
        let deadline = Instant::now() + timeout;
        let guard = loop {
            if let Some(g) = vfs.try_lock(&path, std::process::id()).map_err(StoreError::io("lock", &path))? {
                break g;
            }
            if Instant::now() >= deadline {
                let pid = vfs
                    .read_file(&path)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.trim().parse().ok());
                return Err(StoreError::Locked { pid, path });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tmp = self.inner.root.join("tmp");
        vfs.create_dir_all(&tmp).map_err(StoreError::io("create directory", &tmp))?;
        // Whatever is in tmp/ belongs to a writer that is gone.
        for name in vfs.list_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
            let p = tmp.join(name);
            vfs.remove_file(&p).map_err(StoreError::io("remove", &p))?;
        }
        self.refresh()?;
        let w = Writer { store: self.clone(), _guard: guard, open: Mutex::new(OpenPack::default()) };
        w.save_index()?;
        Ok(w)
    }
}

pub(crate) fn error_chain(e: &StoreError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[derive(Default)]
struct OpenPack {
    builder: PackBuilder,
    map: HashMap<ObjectId, PackEntry>,
}

/// The store's single writer. Dropping it releases the lock; objects put
/// since the last [`Writer::flush`] are then lost.
pub struct Writer {
    store: Store,
    _guard: LockGuard,
    open: Mutex<OpenPack>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("store", &self.store).finish()
    }
}

impl Writer {
    /// The store this writer writes to.
    pub fn store(&self) -> &Store {
        &self.store
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
        let (id, stored) = object::seal(&self.store.inner.keys, ObjectKind::Chunk, data);
        self.put_stored(id, &stored)
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
        let (id, stored) = object::seal(&self.store.inner.keys, ObjectKind::Tree, &payload);
        self.put_stored(id, &stored)
    }

    /// Stores a signed version.
    pub fn put_version(&self, version: &SignedVersion) -> Result<VersionId, StoreError> {
        self.put_stored(version.id().into(), version.stored()).map(VersionId::from)
    }

    /// Stores an object received as stored bytes (from a peer), checking
    /// that the bytes hash to `id` and start like an object. Versions are
    /// also checked for a valid signature.
    pub fn put_raw(&self, id: &ObjectId, stored: &[u8]) -> Result<(), StoreError> {
        if stored.len() > MAX_OBJECT_SIZE {
            return Err(StoreError::TooLarge {
                what: "object",
                size: stored.len() as u64,
                limit: MAX_OBJECT_SIZE as u64,
            });
        }
        object::check_id(id, stored).map_err(|source| StoreError::InvalidObject { source })?;
        let kind = ObjectKind::of_stored(stored).map_err(|source| StoreError::InvalidObject { source })?;
        if kind == ObjectKind::Version {
            SignedVersion::from_stored(stored).map_err(|source| StoreError::InvalidObject { source })?;
        }
        self.put_stored(*id, stored).map(|_| ())
    }

    /// Chunks and stores everything `reader` yields.
    pub fn put_file(&self, mut reader: impl Read) -> Result<FileChunks, StoreError> {
        let mut chunker = Chunker::with_params(&mut reader, self.store.inner.opts.chunker);
        let mut out = FileChunks::default();
        while let Some(chunk) = chunker.next_chunk().map_err(StoreError::io("read", "<input>"))? {
            out.chunks.push(self.put_chunk(chunk)?);
            out.size += chunk.len() as u64;
        }
        Ok(out)
    }

    fn put_stored(&self, id: ObjectId, stored: &[u8]) -> Result<ObjectId, StoreError> {
        if self.store.contains(&id)? {
            return Ok(id);
        }
        let mut open = lock_ignoring_poison(&self.open);
        if open.map.contains_key(&id) {
            return Ok(id);
        }
        let entry = open.builder.push(id, stored);
        open.map.insert(id, entry);
        if open.builder.len() >= self.store.inner.opts.pack_target {
            self.seal(&mut open)?;
        }
        Ok(id)
    }

    /// Reads an object written by this writer, flushed or not.
    pub fn get_raw(&self, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        {
            let open = lock_ignoring_poison(&self.open);
            if let Some(e) = open.map.get(id) {
                return Ok(open.builder.get(e).to_vec());
            }
        }
        self.store.get_raw(id)
    }

    /// Writes the open pack to disk. On failure the pack stays open, so a
    /// later flush retries it.
    fn seal(&self, open: &mut OpenPack) -> Result<(), StoreError> {
        if open.builder.is_empty() {
            return Ok(());
        }
        let inner = &self.store.inner;
        let (pack, tail) = open.builder.seal(&inner.keys)?;
        let mut tmp = TmpFile::create(&*inner.vfs, &inner.root.join("tmp"))?;
        tmp.write(open.builder.bytes())?;
        tmp.write(&tail)?;
        tmp.commit(&pack_path(&inner.root, &pack))?;
        let done = std::mem::take(open);
        let mut state = self.store.write_state();
        for e in done.builder.entries() {
            state.extra.insert(e.id, Location { pack, offset: e.offset, len: e.len });
        }
        state.uncovered.push(pack);
        Ok(())
    }

    /// Makes every object put so far durable: seals the open pack and writes
    /// an index segment for it. When this returns, the objects survive a
    /// crash or power loss.
    pub fn flush(&self) -> Result<(), StoreError> {
        {
            let mut open = lock_ignoring_poison(&self.open);
            self.seal(&mut open)?;
        }
        self.save_index()
    }

    /// Writes a segment for all uncovered packs, then merges segments.
    fn save_index(&self) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let (packs, mut entries): (Vec<PackId>, Vec<(ObjectId, Location)>) = {
            let state = self.store.read_state();
            (state.uncovered.clone(), state.extra.iter().map(|(k, v)| (*k, *v)).collect())
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
            let mut state = self.store.write_state();
            for (id, _) in &entries {
                state.extra.remove(id);
            }
            state.uncovered.retain(|p| !packs.contains(p));
            state.segments.push(seg);
        }
        self.merge_segments()
    }

    fn merge_segments(&self) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        loop {
            let segments = self.store.read_state().segments.clone();
            let counts: Vec<u64> = segments.iter().map(|s| s.count()).collect();
            let Some(pick) = plan_merge(&counts) else { return Ok(()) };
            let chosen: Vec<Arc<Segment>> = pick.iter().map(|&i| segments[i].clone()).collect();
            self.replace_segments(&chosen)?;
            let _ = inner;
        }
    }

    /// Writes one segment holding all entries of `old` and removes them.
    fn replace_segments(&self, old: &[Arc<Segment>]) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let mut packs: Vec<PackId> = old.iter().flat_map(|s| s.packs().iter().copied()).collect();
        packs.sort();
        packs.dedup();
        let source = || merged(old);
        let path =
            write_segment(&*inner.vfs, &inner.root.join("tmp"), &inner.root.join("index"), &packs, &source)?;
        let seg = Arc::new(Segment::open(&*inner.vfs, &path)?);
        {
            let mut state = self.store.write_state();
            state.segments.retain(|s| !old.iter().any(|o| Arc::ptr_eq(o, s)));
            state.segments.push(seg);
        }
        self.remove_segment_files(old, &path)
    }

    fn remove_segment_files(&self, old: &[Arc<Segment>], keep: &Path) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        for s in old {
            // Merging a segment with itself gives the same file name.
            if s.path() != keep {
                inner.vfs.remove_file(s.path()).map_err(StoreError::io("remove", s.path()))?;
            }
        }
        let dir = inner.root.join("index");
        inner.vfs.sync_dir(&dir).map_err(StoreError::io("fsync directory", &dir))
    }

    /// Rebuilds the whole index from the packs' headers and replaces every
    /// segment with one new segment. Damaged packs are skipped and returned.
    pub fn rebuild_index(&self) -> Result<Vec<StoreError>, StoreError> {
        self.flush()?;
        let inner = &self.store.inner;
        let mut entries = Vec::new();
        let mut packs = Vec::new();
        let mut skipped = Vec::new();
        for pack in self.store.list_packs()? {
            match self.store.pack_header(&pack) {
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
        let old = {
            let dir = inner.root.join("index");
            let names = inner.vfs.list_dir(&dir).map_err(StoreError::io("list", &dir))?;
            names
                .into_iter()
                .filter(|n| parse_name(n, "idx").is_some())
                .map(|n| dir.join(n))
                .collect::<Vec<_>>()
        };
        let source = || Box::new(entries.iter().map(|e| Ok(*e))) as Box<dyn Iterator<Item = _>>;
        let path =
            write_segment(&*inner.vfs, &inner.root.join("tmp"), &inner.root.join("index"), &packs, &source)?;
        for p in old.iter().filter(|p| **p != path) {
            inner.vfs.remove_file(p).map_err(StoreError::io("remove", p))?;
        }
        let dir = inner.root.join("index");
        inner.vfs.sync_dir(&dir).map_err(StoreError::io("fsync directory", &dir))?;
        self.store.refresh()?;
        Ok(skipped)
    }
}
