//! Hostile and careless use of the store: crafted files under the store
//! directory, crafted bytes handed to the decoders, races between a writer
//! and readers, and careless options. Every test's first comment line says
//! what it guards against.
//!
//! Tests that prove a crash (an abort on a failed allocation) run the
//! dangerous step in a child process of this test binary with its address
//! space limited by `prlimit`, so the crash does not take the other tests
//! with it.

mod common;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{bytes, create, create_with, options, small_chunks, TestResult};
use dbox_store::object::SEALED_OVERHEAD;
use dbox_store::verify::VerifyOptions;
use dbox_store::vfs::{LockGuard, OsFs, ReadAt, Vfs, WriteFile};
use dbox_store::{
    Chunker, ChunkerParams, DecodeError, Name, ObjectId, PackId, PeerId, RepoId, RepoKey, SignedVersion,
    Store, StoreError, StoreOptions, Tree, VersionBody, VersionId, VersionInfo,
};
use ed25519_dalek::{Signer, SigningKey};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "DBOX_HOSTILE_CHILD";

/// Runs the ignored test `name` of this binary in a child process whose
/// address space is limited to `limit` bytes, with `CHILD_ENV` set to `arg`.
fn run_child(name: &str, limit: u64, arg: &str) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let out = match Command::new("prlimit")
        .arg(format!("--as={limit}"))
        .arg("--")
        .arg(exe)
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, arg)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("this test needs util-linux's prlimit: {e}"),
    };
    Ok(out)
}

fn child_report(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

const IDX_FIXED: usize = 28;

/// Header of an index segment (magic .. header check), as the crate docs
/// lay it out, with the given fanout.
fn segment_head(bits: u32, packs: &[PackId], count: u64, fanout: &[u32]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"DBOXIDX\0");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    for p in packs {
        h.extend_from_slice(p.as_bytes());
    }
    for f in fanout {
        h.extend_from_slice(&f.to_le_bytes());
    }
    let check = blake3::hash(&h);
    h.extend_from_slice(check.as_bytes());
    h
}

/// A complete, valid-looking segment: entries (id, pack number, offset,
/// length) must be sorted by id. Checks are computed as the format says, so
/// only the pack contents can refute it.
fn craft_segment(packs: &[PackId], entries: &[(ObjectId, u32, u64, u32)]) -> Vec<u8> {
    let bits = 8u32;
    let mut fanout = vec![0u32; 1 << bits];
    for (id, ..) in entries {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut acc = 0;
    for f in fanout.iter_mut() {
        acc += *f;
        *f = acc;
    }
    let mut out = segment_head(bits, packs, entries.len() as u64, &fanout);
    for (id, pack, offset, len) in entries {
        let mut rec = Vec::with_capacity(52);
        rec.extend_from_slice(id.as_bytes());
        rec.extend_from_slice(&pack.to_le_bytes());
        rec.extend_from_slice(&offset.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        let c = blake3::hash(&rec);
        rec.extend_from_slice(&c.as_bytes()[..4]);
        out.extend_from_slice(&rec);
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(check.as_bytes());
    out
}

fn remove_all_segments(root: &Path) -> io::Result<()> {
    for p in files_in(&root.join("index"))? {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

fn signed_version(
    sk: &SigningKey,
    store: &Store,
    repo: RepoId,
    message: &str,
) -> Result<SignedVersion, StoreError> {
    let info = VersionInfo::new(message, 1_700_000_000_000, "host");
    let body = VersionBody {
        repo,
        parents: vec![],
        root: ObjectId([5; 32]),
        author: PeerId(sk.verifying_key().to_bytes()),
        seq: 1,
        sealed_info: info.seal(store.keys(), &repo)?,
    };
    SignedVersion::sign(body, sk)
}

/// A file layer that can pause or rendezvous chosen operations, to force an
/// interleaving of a writer and a reader (or two flushing threads).
#[derive(Debug, Default, Clone)]
struct HookFs {
    state: Arc<(Mutex<Hooks>, Condvar)>,
}

#[derive(Debug, Default)]
struct Hooks {
    /// Pause the next `list_dir` of a directory with this name, after
    /// listing, until released.
    pause_list: Option<String>,
    paused: bool,
    released: bool,
    /// Make this many renames into `index/` wait for each other.
    rendezvous_left: usize,
    rendezvous_waiting: usize,
    /// Directories fsynced.
    synced_dirs: Vec<PathBuf>,
}

impl HookFs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hooks> {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_while(&self, mut cond: impl FnMut(&Hooks) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while cond(&g) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.state.1.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn notify(&self) {
        self.state.1.notify_all();
    }
}

impl Vfs for HookFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir_all(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        OsFs.create_new(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        OsFs.open_read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let into_index = to.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "index");
        let wait = {
            let mut g = self.lock();
            if into_index && g.rendezvous_left > 0 {
                g.rendezvous_left -= 1;
                g.rendezvous_waiting += 1;
                true
            } else {
                false
            }
        };
        if wait {
            self.notify();
            // Wait until every party of the rendezvous has arrived (or give
            // up after a while, so that a changed code path cannot hang).
            self.wait_while(|h| h.rendezvous_left > 0, Duration::from_secs(10));
        }
        OsFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.lock().synced_dirs.push(path.to_path_buf());
        OsFs.sync_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let names = OsFs.list_dir(path)?;
        let pause = {
            let mut g = self.lock();
            let hit = g.pause_list.as_deref().is_some_and(|want| path.file_name().is_some_and(|n| n == want));
            if hit {
                g.pause_list = None;
                g.paused = true;
            }
            hit
        };
        if pause {
            self.notify();
            self.wait_while(|h| !h.released, Duration::from_secs(10));
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        OsFs.exists(path)
    }
    fn try_lock(&self, path: &Path, pid: u32) -> io::Result<Option<LockGuard>> {
        OsFs.try_lock(path, pid)
    }
}

fn hook_options(fs: &HookFs) -> StoreOptions {
    StoreOptions { vfs: Arc::new(fs.clone()), ..options() }
}

// ---------------------------------------------------------------------------
// Privacy: what a storage peer learns from sealed packs
// ---------------------------------------------------------------------------

#[test]
fn storage_peer_cannot_confirm_a_known_file_in_a_sealed_pack() -> TestResult {
    // Guards against a keyless storage peer locating object boundaries in a
    // sealed pack (each object starts with the plaintext bytes 01 01) and
    // matching them against the public FastCDC cut points of a known file.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    // A "known" incompressible file (think of a published photo or video).
    let known = bytes(42, 400_000);
    w.put_file(&known[..])?;
    // Some unrelated data around it.
    w.put_file(&bytes(7, 100_000)[..])?;
    w.flush()?;
    drop(w);

    // The peer holds the pack files and nothing else. It knows the public
    // chunker parameters and the public object layout.
    let mut sizes = Vec::new();
    let mut chunker = Chunker::with_params(&known[..], small_chunks());
    while let Some(c) = chunker.next_chunk()? {
        sizes.push(c.len() + SEALED_OVERHEAD);
    }
    let mut located = 0usize;
    for pack in files_in(&dir.path().join("packs"))? {
        let bytes = std::fs::read(&pack)?;
        let marks: std::collections::HashSet<usize> =
            bytes.windows(2).enumerate().filter(|(_, w)| *w == [1u8, 1]).map(|(i, _)| i).collect();
        // Three consecutive chunk sizes of the known file, found as distances
        // between object starts: a false match has probability 2^-48.
        for win in sizes.windows(3) {
            let hit = marks.iter().any(|&p| {
                let a = p + win[0];
                let b = a + win[1];
                let c = b + win[2];
                marks.contains(&a) && marks.contains(&b) && marks.contains(&c)
            });
            if hit {
                located += 1;
            }
        }
    }
    assert_eq!(
        located,
        0,
        "a storage peer without the repo key matched {located} runs of 3 chunk sizes of a known \
         {}-chunk file in the sealed packs: object boundaries and sizes leak",
        sizes.len()
    );
    Ok(())
}

#[test]
fn version_size_does_not_reveal_message_length() -> TestResult {
    // Guards against the sealed info of a version (message, host) leaking its
    // exact length to storage peers, which see version envelopes.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let sk = SigningKey::from_bytes(&[7; 32]);
    let short = signed_version(&sk, &store, store.repo_id(), "x")?;
    let long = signed_version(&sk, &store, store.repo_id(), "fix typo in the quarterly report draft")?;
    assert_eq!(
        short.stored().len(),
        long.stored().len(),
        "envelope sizes differ by exactly the message length difference"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Repair and damage
// ---------------------------------------------------------------------------

#[test]
fn re_putting_a_damaged_object_repairs_it() -> TestResult {
    // Guards against put_* deduplicating against an index entry whose stored
    // bytes are damaged, so that a good copy (from a peer) can never repair it.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let data = bytes(1, 5000);
    let id = w.put_chunk(&data)?;
    let raw = w.get_raw(&id)?;
    w.put_chunk(&bytes(2, 5000))?;
    w.flush()?;
    drop(w);
    // Bit rot inside the object.
    let loc = store.locate(&id)?.ok_or("stored")?;
    let path = dir.path().join("packs").join(format!("{}.pack", loc.pack));
    let mut pack = std::fs::read(&path)?;
    pack[loc.offset as usize + 60] ^= 0x40;
    std::fs::write(&path, &pack)?;

    let store = Store::open(dir.path(), options())?;
    assert!(store.get_chunk(&id).is_err(), "the damage is detected");
    // The good bytes arrive again, from a peer or from the user's file.
    let w = store.writer()?;
    w.put_raw(&id, &raw)?;
    w.put_chunk(&data)?;
    w.flush()?;
    drop(w);
    let store = Store::open(dir.path(), options())?;
    let back = store.get_chunk(&id);
    assert!(
        matches!(&back, Ok(b) if *b == data),
        "after put_raw of the good bytes and flush, the object is still unreadable: {back:?}"
    );
    Ok(())
}

#[test]
fn damaged_segment_entry_does_not_make_the_store_unwritable() -> TestResult {
    // Guards against one damaged index entry (header intact) making every
    // merge fail, so flush fails, writer() fails, and rebuild_index (which
    // needs a writer) can never run.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let mut objects = Vec::new();
    for i in 0..3u64 {
        let d = bytes(100 + i, 3000);
        objects.push((w.put_chunk(&d)?, d));
        w.flush()?;
    }
    // Three one-entry segments; damage the entry of one of them.
    let segs = files_in(&dir.path().join("index"))?;
    assert_eq!(segs.len(), 3);
    let mut seg = std::fs::read(&segs[1])?;
    let entries_off = IDX_FIXED + 32 + 4 * 256 + 32;
    seg[entries_off + 40] ^= 0x01; // the entry's offset field
    std::fs::write(&segs[1], &seg)?;
    // The fourth flush merges the four segments of tier 0.
    let d = bytes(200, 3000);
    objects.push((w.put_chunk(&d)?, d));
    let flush4 = w.flush();
    drop(w);
    let writer = store.writer();
    assert!(
        writer.is_ok(),
        "writer() fails after one damaged index entry, so rebuild_index cannot run: {:?} \
         (the 4th flush, whose pack and segment are durable, returned {flush4:?})",
        writer.err().map(|e| dbox_store_error_chain(&e))
    );
    let w = writer?;
    w.rebuild_index()?;
    drop(w);
    let s = Store::open(dir.path(), options())?;
    for (id, d) in &objects {
        assert_eq!(&s.get_chunk(id)?, d);
    }
    assert!(flush4.is_ok(), "a flush whose data is durable reported failure: {flush4:?}");
    Ok(())
}

fn dbox_store_error_chain(e: &dyn std::error::Error) -> String {
    dbox_store::error::chain(e)
}

#[test]
fn crafted_index_entry_pointing_at_another_object_is_an_error() -> TestResult {
    // Guards against an index entry (with valid checks) that points at
    // another object's bytes returning those bytes as the wrong object.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let a = w.put_chunk(&bytes(1, 4000))?;
    let b = w.put_chunk(&bytes(2, 4000))?;
    w.flush()?;
    drop(w);
    let la = store.locate(&a)?.ok_or("a")?;
    let lb = store.locate(&b)?.ok_or("b")?;
    remove_all_segments(dir.path())?;
    // Swap the two locations.
    let mut entries = vec![(a, 0u32, lb.offset, lb.len), (b, 0u32, la.offset, la.len)];
    entries.sort_by_key(|e| e.0);
    let seg = craft_segment(&[la.pack], &entries);
    std::fs::write(dir.path().join("index").join(format!("{}.idx", hex::encode([9u8; 32]))), seg)?;
    let s = Store::open(dir.path(), options())?;
    assert!(s.get_chunk(&a).is_err());
    assert!(s.get_chunk(&b).is_err());
    let report = s.verify(&VerifyOptions::default())?;
    assert!(!report.is_ok());
    Ok(())
}

#[test]
fn swapped_pack_files_never_give_wrong_data() -> TestResult {
    // Guards against two pack files swapped under each other's names giving
    // wrong bytes instead of errors, or going unreported by verify.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let mut objs = Vec::new();
    for i in 0..2u64 {
        for j in 0..3u64 {
            let d = bytes(i * 10 + j, 30_000);
            objs.push((w.put_chunk(&d)?, d));
        }
        w.flush()?;
    }
    drop(w);
    let packs = files_in(&dir.path().join("packs"))?;
    assert!(packs.len() >= 2);
    let tmp = dir.path().join("swap");
    std::fs::rename(&packs[0], &tmp)?;
    std::fs::rename(&packs[1], &packs[0])?;
    std::fs::rename(&tmp, &packs[1])?;
    for index_lost in [false, true] {
        if index_lost {
            remove_all_segments(dir.path())?;
        }
        let s = Store::open(dir.path(), options())?;
        for (id, d) in &objs {
            if let Ok(back) = s.get_chunk(id) {
                assert_eq!(&back, d, "wrong data for {id}");
            }
        }
        assert!(!s.verify(&VerifyOptions::default())?.is_ok());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Unbounded allocations from files under the store directory
// ---------------------------------------------------------------------------

#[test]
#[ignore = "child process of huge_key_file_is_refused_without_crashing"]
fn child_open_store_with_huge_key_file() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return Ok(()) };
    let r = Store::open(Path::new(&dir), options());
    assert!(r.is_err(), "a 1 TiB key file was accepted");
    Ok(())
}

#[test]
fn huge_key_file_is_refused_without_crashing() -> TestResult {
    // Guards against Store::open (and verify, and writer_wait's lock-file
    // read) allocating the whole length of a file that should be tiny.
    let dir = tempfile::tempdir()?;
    drop(create(dir.path(), 1)?);
    // A sparse 1 TiB key file: takes no disk space.
    std::fs::OpenOptions::new().write(true).open(dir.path().join("key"))?.set_len(1 << 40)?;
    let dir_s = dir.path().to_str().ok_or("utf-8 path")?;
    let out = run_child("child_open_store_with_huge_key_file", 1 << 30, dir_s)?;
    assert!(out.status.success(), "Store::open on a huge key file crashed:\n{}", child_report(&out));
    Ok(())
}

#[test]
#[ignore = "child process of crafted_segment_bucket_does_not_crash_lookup"]
fn child_lookup_in_sparse_segment() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return Ok(()) };
    // Either open or the lookup may refuse the segment; neither may crash.
    if let Ok(s) = Store::open(Path::new(&dir), options()) {
        let _ = s.contains(&ObjectId([0; 32]));
    }
    Ok(())
}

#[test]
fn crafted_segment_bucket_does_not_crash_lookup() -> TestResult {
    // Guards against Segment::lookup allocating bucket-size × 52 bytes, where
    // the bucket size comes from an untrusted fanout (bounded only by the
    // file length, and a sparse file is free).
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let id = w.put_chunk(b"x")?;
    w.flush()?;
    drop(w);
    let pack = store.locate(&id)?.ok_or("stored")?.pack;
    let count = u64::from(u32::MAX);
    // Every entry in bucket 0.
    let fanout = vec![u32::MAX; 256];
    let head = segment_head(8, &[pack], count, &fanout);
    let len = head.len() as u64 + count * 52 + 32;
    let path = dir.path().join("index").join(format!("{}.idx", hex::encode([0xabu8; 32])));
    std::fs::write(&path, &head)?;
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(len)?;
    let dir_s = dir.path().to_str().ok_or("utf-8 path")?;
    let out = run_child("child_lookup_in_sparse_segment", 1 << 30, dir_s)?;
    assert!(
        out.status.success(),
        "a lookup in a crafted {len}-byte sparse segment crashed:\n{}",
        child_report(&out)
    );
    Ok(())
}

/// A tree payload of `n` file entries, all named "a", hand-encoded CBOR.
fn tree_of_minimal_entries(n: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + n as usize * 14);
    b.extend_from_slice(&[0xa2, 0x61, b'v', 0x01, 0x61, b'e', 0x9a]);
    b.extend_from_slice(&n.to_be_bytes());
    for _ in 0..n {
        // {"n": h'61', "k": 0, "s": 0, "c": []}
        b.extend_from_slice(&[
            0xa4, 0x61, b'n', 0x41, b'a', 0x61, b'k', 0x00, 0x61, b's', 0x00, 0x61, b'c', 0x80,
        ]);
    }
    b
}

#[test]
#[ignore = "child process of tree_entry_limit_bounds_decoding_memory"]
fn child_decode_huge_tree() -> TestResult {
    let Ok(n) = std::env::var(CHILD_ENV) else { return Ok(()) };
    let payload = tree_of_minimal_entries(n.parse()?);
    assert!(payload.len() <= dbox_store::limits::MAX_TREE_SIZE);
    assert!(Tree::decode(&payload).is_err(), "a tree over the entry limit was accepted");
    Ok(())
}

#[test]
fn tree_entry_limit_bounds_decoding_memory() -> TestResult {
    // Guards against Tree::decode materializing every entry of a tree before
    // checking MAX_TREE_ENTRIES, so a 64 MiB payload costs gigabytes.
    let n = 4_700_000u32; // 14 bytes each: just under MAX_TREE_SIZE
    let out = run_child("child_decode_huge_tree", 1 << 30, &n.to_string())?;
    assert!(
        out.status.success(),
        "decoding a {} MiB tree of {n} entries (limit {}) needed more than 1 GiB:\n{}",
        (n as usize * 14) >> 20,
        dbox_store::limits::MAX_TREE_ENTRIES,
        child_report(&out)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Races between a writer and readers, or two flushing threads
// ---------------------------------------------------------------------------

#[test]
fn refresh_racing_a_seal_does_not_hide_flushed_objects() -> TestResult {
    // Guards against Store::refresh (computed before a pack was sealed,
    // stored after) overwriting the writer's in-memory record of that pack,
    // so that flush writes no segment and the object is invisible.
    let dir = tempfile::tempdir()?;
    let fs = HookFs::default();
    let opts = StoreOptions { pack_target: 1, ..hook_options(&fs) };
    let store = create_with(dir.path(), 1, opts)?;
    let w = store.writer()?;
    fs.lock().pause_list = Some("packs".into());
    let reader = store.clone();
    let t = std::thread::spawn(move || reader.refresh());
    assert!(fs.wait_while(|h| !h.paused, Duration::from_secs(10)), "refresh never listed packs");
    // The refresh has listed packs/; now a pack is sealed (pack_target 1).
    let data = bytes(5, 2000);
    let id = w.put_chunk(&data)?;
    fs.lock().released = true;
    fs.notify();
    t.join().map_err(|_| "refresh panicked")??;
    w.flush()?;
    let seen = store.contains(&id)?;
    let back = store.get_chunk(&id).map_err(|e| e.to_string());
    assert!(
        seen && back.as_ref().is_ok_and(|b| *b == data),
        "after put and a successful flush the object is invisible: contains = {seen}, get = {back:?}"
    );
    Ok(())
}

#[test]
fn concurrent_flushes_do_not_fail() -> TestResult {
    // Guards against two threads flushing one Writer at once (put_* and
    // flush take &self) both pushing the same segment, so that a later merge
    // removes its file twice and flush fails although the data is durable.
    let dir = tempfile::tempdir()?;
    let fs = HookFs::default();
    let store = create_with(dir.path(), 1, hook_options(&fs))?;
    let w = store.writer()?;
    let mut objs = Vec::new();
    for i in 0..3u64 {
        let d = bytes(300 + i, 2000);
        objs.push((w.put_chunk(&d)?, d));
        w.flush()?;
    }
    let d = bytes(400, 2000);
    objs.push((w.put_chunk(&d)?, d));
    fs.lock().rendezvous_left = 2;
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| w.flush());
        let b = s.spawn(|| w.flush());
        (a.join(), b.join())
    });
    let mut errors: Vec<String> = Vec::new();
    for r in [r1, r2] {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(dbox_store_error_chain(&e)),
            Err(_) => errors.push("flush panicked".into()),
        }
    }
    for i in 0..6u64 {
        let d = bytes(500 + i, 2000);
        objs.push((w.put_chunk(&d)?, d));
        if let Err(e) = w.flush() {
            errors.push(dbox_store_error_chain(&e));
        }
    }
    drop(w);
    let s = Store::open(dir.path(), options())?;
    for (id, d) in &objs {
        assert_eq!(&s.get_chunk(id)?, d, "nothing is lost");
    }
    assert!(errors.is_empty(), "flushes failed: {errors:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Careless users
// ---------------------------------------------------------------------------

#[test]
fn writer_wait_forever_does_not_panic() -> TestResult {
    // Guards against writer_wait(Duration::MAX) ("wait as long as it takes")
    // panicking on Instant overflow.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let r =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.writer_wait(Duration::MAX).map(drop)));
    match r {
        Ok(res) => res?,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            panic!("writer_wait(Duration::MAX) panicked: {msg}");
        }
    }
    Ok(())
}

#[test]
fn chunker_params_accepted_at_open_can_store_any_file() -> TestResult {
    // Guards against ChunkerParams that Store::open accepts (max up to
    // FastCDC's 16 MiB) cutting chunks that put_chunk refuses (over 8 MiB), so
    // put_file fails on large incompressible files.
    let params = ChunkerParams { min: 1 << 20, avg: 4 << 20, max: 16 << 20, ..ChunkerParams::default() };
    let dir = tempfile::tempdir()?;
    // Refusing such parameters up front is a fix too.
    let Ok(store) = create_with(dir.path(), 1, StoreOptions { chunker: params, ..StoreOptions::default() })
    else {
        return Ok(());
    };
    // Find a data set that gives a chunk over MAX_CHUNK_SIZE (most do).
    let mut data = None;
    for seed in 1..20u64 {
        let d = bytes(seed, 64 << 20);
        let mut c = Chunker::with_params(&d[..], params);
        let mut big = false;
        while let Some(ch) = c.next_chunk()? {
            big |= ch.len() > dbox_store::limits::MAX_CHUNK_SIZE;
        }
        if big {
            data = Some(d);
            break;
        }
    }
    let data = data.ok_or("no data set gives a large chunk")?;
    let w = store.writer()?;
    let r = w.put_file(&data[..]);
    assert!(r.is_ok(), "Store::open accepted {params:?} but put_file fails: {:?}", r.err());
    Ok(())
}

#[test]
#[ignore = "heavy (4 million objects, about 2 GiB of memory); run with --ignored"]
fn pack_target_cannot_make_packs_that_readers_refuse() -> TestResult {
    // Guards against StoreOptions::pack_target letting a writer seal a pack
    // with more than MAX_PACK_OBJECTS objects, which read_header refuses: the
    // objects vanish as soon as the index is lost or rebuilt.
    let dir = tempfile::tempdir()?;
    let opts = StoreOptions { pack_target: usize::MAX, ..options() };
    // Refusing such a target up front is a fix too.
    let Ok(store) = create_with(dir.path(), 1, opts.clone()) else { return Ok(()) };
    let w = store.writer()?;
    let n = dbox_store::limits::MAX_PACK_OBJECTS as u32 + 1;
    let mut first = None;
    for i in 0..n {
        // Tiny objects as a storage peer receives them (put_raw cannot
        // decrypt, so any bytes that start like an object will do).
        let mut b = vec![1u8, 1];
        b.extend_from_slice(&i.to_le_bytes());
        let id = ObjectId::of(&b);
        w.put_raw(&id, &b)?;
        first.get_or_insert(id);
    }
    w.flush()?;
    drop(w);
    let first = first.ok_or("no object")?;
    // The index is lost (or rebuilt, which reads the same headers).
    remove_all_segments(dir.path())?;
    let s = Store::open(dir.path(), opts)?;
    assert!(
        s.contains(&first)?,
        "an object whose flush returned is gone once the index is rebuilt: {:?}",
        s.load_problems()
    );
    Ok(())
}

#[test]
fn stray_directory_in_tmp_does_not_block_the_writer() -> TestResult {
    // Guards against writer()'s tmp/ cleanup failing for ever on anything it
    // cannot remove_file (a directory a user or tool left there).
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    std::fs::create_dir(dir.path().join("tmp").join("leftover"))?;
    std::fs::write(dir.path().join("tmp").join("junk.tmp"), b"x")?;
    let w = store.writer();
    assert!(w.is_ok(), "writer() fails: {:?}", w.err().map(|e| dbox_store_error_chain(&e)));
    Ok(())
}

#[test]
fn missing_index_directory_is_not_fatal() -> TestResult {
    // Guards against a lost index/ directory (not just lost segments) making
    // Store::open fail, although the packs hold everything.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let d = bytes(9, 10_000);
    let id = w.put_chunk(&d)?;
    w.flush()?;
    drop(w);
    std::fs::remove_dir_all(dir.path().join("index"))?;
    let s = Store::open(dir.path(), options());
    assert!(s.is_ok(), "open fails: {:?}", s.as_ref().err().map(|e| dbox_store_error_chain(e)));
    assert_eq!(s?.get_chunk(&id)?, d);
    Ok(())
}

#[test]
fn create_makes_the_new_store_directory_durable() -> TestResult {
    // Guards against Store::create creating the store directory without
    // fsyncing its parent, so power loss can drop the whole new store.
    let base = tempfile::tempdir()?;
    let root = base.path().join("repo").join("store");
    let fs = HookFs::default();
    create_with(&root, 1, hook_options(&fs))?;
    let synced = fs.lock().synced_dirs.clone();
    let parent = root.parent().ok_or("parent")?;
    assert!(
        synced.iter().any(|p| p == parent),
        "directories fsynced: {synced:?}, never {}",
        parent.display()
    );
    Ok(())
}

#[test]
fn newer_key_file_format_is_a_clear_error() -> TestResult {
    // Guards against a store of a newer format being opened, or failing with
    // an error that does not say so.
    let dir = tempfile::tempdir()?;
    drop(create(dir.path(), 1)?);
    let key = dir.path().join("key");
    let mut b = std::fs::read(&key)?;
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    let check = blake3::hash(&b[..76]);
    b[76..].copy_from_slice(check.as_bytes());
    std::fs::write(&key, &b)?;
    match Store::open(dir.path(), options()) {
        Ok(_) => panic!("a key file of format 2 was accepted"),
        Err(e) => {
            let chain = dbox_store_error_chain(&e);
            assert!(chain.contains("unsupported") && chain.contains('2'), "{chain}");
        }
    }
    Ok(())
}

#[test]
fn empty_and_foreign_files_do_not_break_open_or_writer() -> TestResult {
    // Guards against empty or foreign files in packs/ and index/ (a crash on
    // a careless copy, a tool's droppings) making open or writer() fail.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let d = bytes(3, 10_000);
    let id = w.put_chunk(&d)?;
    w.flush()?;
    drop(w);
    std::fs::write(dir.path().join("packs").join(format!("{}.pack", hex::encode([1u8; 32]))), b"")?;
    std::fs::write(dir.path().join("index").join(format!("{}.idx", hex::encode([2u8; 32]))), b"")?;
    std::fs::write(dir.path().join("packs").join("notes.txt"), b"hello")?;
    std::fs::write(
        dir.path().join("index").join(format!("{}.idx", hex::encode([3u8; 32]))),
        b"DBOXIDX\0junk",
    )?;
    let s = Store::open(dir.path(), options())?;
    assert_eq!(s.get_chunk(&id)?, d);
    assert!(!s.load_problems().is_empty());
    let w = s.writer()?;
    w.put_chunk(b"more")?;
    w.flush()?;
    drop(w);
    assert!(!s.verify(&VerifyOptions::default())?.is_ok(), "verify reports the foreign files");
    Ok(())
}

// ---------------------------------------------------------------------------
// Decoders and kinds
// ---------------------------------------------------------------------------

#[test]
fn names_that_hfs_plus_folds_to_dot_dbox_are_refused() {
    // Guards against tree entry names that a case-insensitive HFS+ volume
    // resolves to ".dbox" (it ignores these code points, as git's
    // CVE-2014-9390 showed for ".git"), letting a tree write into the repository.
    let ignorable = ['\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{206a}', '\u{feff}'];
    let mut accepted = Vec::new();
    for c in ignorable {
        for name in [format!(".db{c}ox"), format!("{c}.DBOX"), format!(".dbox{c}")] {
            if Name::new(name.as_bytes().to_vec()).is_ok() {
                accepted.push(name.escape_unicode().to_string());
            }
        }
    }
    assert!(accepted.is_empty(), "accepted {} names equal to .dbox on HFS+: {accepted:?}", accepted.len());
}

#[test]
fn put_raw_refuses_a_version_of_another_repository() -> TestResult {
    // Guards against a validly signed version of another repository being
    // accepted into this store (the body binds the repository id; nobody
    // checks it here).
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let sk = SigningKey::from_bytes(&[7; 32]);
    let foreign = signed_version(&sk, &store, RepoId([0xee; 32]), "elsewhere")?;
    let w = store.writer()?;
    let r = w.put_raw(&ObjectId::from(foreign.id()), foreign.stored());
    assert!(r.is_err(), "a version of repository {} was stored in {}", RepoId([0xee; 32]), store.repo_id());
    Ok(())
}

#[test]
fn envelope_author_must_match_body_author() -> TestResult {
    // Guards against a version whose envelope is validly signed by key A
    // while its body names author B being accepted.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let b = SigningKey::from_bytes(&[7; 32]);
    let a = SigningKey::from_bytes(&[8; 32]);
    let v = signed_version(&b, &store, store.repo_id(), "m")?;
    let body = &v.stored()[98..];
    let sig = a.sign(&[&b"dbox version v1\0"[..], body].concat());
    let mut forged = vec![1u8, 3];
    forged.extend_from_slice(&a.verifying_key().to_bytes());
    forged.extend_from_slice(&sig.to_bytes());
    forged.extend_from_slice(body);
    assert!(SignedVersion::from_stored(&forged).is_err());
    let w = store.writer()?;
    assert!(w.put_raw(&ObjectId::of(&forged), &forged).is_err());
    Ok(())
}

#[test]
fn kinds_cannot_be_confused() -> TestResult {
    // Guards against a chunk being read as a tree (or version), a tree as a
    // chunk, a version as a chunk, even with the kind byte rewritten.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    // A chunk whose plaintext is a valid tree payload.
    let tree = Tree::new(vec![])?;
    let chunk = w.put_chunk(&tree.encode())?;
    let tid = w.put_tree(&tree)?;
    let sk = SigningKey::from_bytes(&[7; 32]);
    let v = signed_version(&sk, &store, store.repo_id(), "m")?;
    let vid = w.put_version(&v)?;
    // The chunk's bytes with the kind byte set to "tree", under a new id.
    let mut relabeled = w.get_raw(&chunk)?;
    relabeled[1] = 2;
    let rid = ObjectId::of(&relabeled);
    w.put_raw(&rid, &relabeled)?;
    w.flush()?;
    assert!(store.get_tree(&chunk).is_err());
    assert!(store.get_tree(&rid).is_err());
    assert!(store.get_chunk(&tid).is_err());
    assert!(store.get_chunk(&ObjectId::from(vid)).is_err());
    assert!(store.get_version(&VersionId::from(tid)).is_err());
    assert!(store.get_tree(&ObjectId::from(vid)).is_err());
    Ok(())
}

#[test]
fn decoders_refuse_every_truncation_without_panicking() -> TestResult {
    // Guards against a panic or unchecked slice in the decoders on short or
    // truncated input.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let sk = SigningKey::from_bytes(&[7; 32]);
    let v = signed_version(&sk, &store, store.repo_id(), "message")?;
    for n in 0..v.stored().len() {
        assert!(SignedVersion::from_stored(&v.stored()[..n]).is_err());
    }
    let tree = Tree::new(vec![dbox_store::TreeEntry {
        name: Name::new("f")?,
        node: dbox_store::Node::File { size: 1, chunks: vec![ObjectId([1; 32])], executable: false },
        mtime_ns: Some(1),
    }])?;
    let payload = tree.encode();
    for n in 0..payload.len() {
        assert!(Tree::decode(&payload[..n]).is_err());
    }
    let cid = w.put_chunk(&bytes(1, 3000))?;
    let raw = w.get_raw(&cid)?;
    for n in 0..raw.len() {
        let r = dbox_store::object::open(store.keys(), dbox_store::ObjectKind::Chunk, &raw[..n]);
        assert!(r.is_err());
    }
    let r: Result<_, DecodeError> =
        dbox_store::object::open(store.keys(), dbox_store::ObjectKind::Chunk, &raw);
    assert_eq!(r?, bytes(1, 3000));
    Ok(())
}

#[test]
fn truncated_and_keyless_packs_are_refused() -> TestResult {
    // Guards against read_header panicking on, or accepting, a truncated
    // pack or a pack read with another repository's key.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    w.put_chunk(&bytes(1, 3000))?;
    w.flush()?;
    drop(w);
    let path = files_in(&dir.path().join("packs"))?.pop().ok_or("a pack")?;
    let pack = std::fs::read(&path)?;
    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::other("overflow"))?;
            let src = self.0.get(start..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }
    let keys = store.keys();
    let full = Mem(pack.clone());
    assert!(dbox_store::pack::read_header(&full, pack.len() as u64, keys).is_ok());
    let other = dbox_store::Keys::derive(&RepoKey::from_bytes([2; 32]));
    assert!(dbox_store::pack::read_header(&full, pack.len() as u64, &other).is_err());
    for n in (0..pack.len()).step_by(7) {
        let m = Mem(pack[..n].to_vec());
        assert!(dbox_store::pack::read_header(&m, n as u64, keys).is_err());
        // A lying length must not panic either.
        let _ = dbox_store::pack::read_header(&m, pack.len() as u64, keys);
    }
    Ok(())
}

#[test]
fn a_pack_cut_short_inside_an_object_is_a_corrupt_object_not_garbage() -> TestResult {
    // Objects are read into memory not zeroed first: a read must still end
    // at the pack's end with an error, and never hand back what it did not read.
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let first = w.put_chunk(&bytes(1, 3000))?;
    let last = w.put_chunk(&bytes(2, 200_000))?;
    w.flush()?;
    drop(w);
    let loc = store.locate(&last)?.ok_or("stored")?;
    // The pack holding it: the largest.
    let mut packs = files_in(&dir.path().join("packs"))?;
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let path = packs.pop().ok_or("a pack")?;
    for cut in [loc.offset + 1, loc.offset + u64::from(loc.len) / 2, loc.offset + u64::from(loc.len) - 1] {
        std::fs::OpenOptions::new().write(true).open(&path)?.set_len(cut)?;
        let store = dbox_store::Store::open(dir.path(), options())?;
        match store.get_chunk(&last) {
            Err(e) => {
                assert!(format!("{e:?}").contains("the pack ends before the object"), "cut at {cut}: {e:?}")
            }
            Ok(_) => panic!("cut at {cut}: an object read past the pack's end"),
        }
        assert_eq!(store.get_chunk(&first)?, bytes(1, 3000));
    }
    Ok(())
}
