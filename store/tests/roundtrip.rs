//! Round trips, deduplication, reopening, locking and index recovery.

mod common;

use std::collections::HashSet;

use common::{bytes, create, create_with, options, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::{
    Name, Node, ObjectId, PeerId, RepoId, SignedVersion, Store, StoreError, StoreOptions, Tree, TreeEntry,
    VersionBody, VersionInfo,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000), seed in any::<u64>()) {
        let dir = tempfile::tempdir()?;
        let store = create(dir.path(), 1)?;
        let mut all = data.clone();
        all.extend(bytes(seed, (seed % 50_000) as usize));
        let w = store.writer()?;
        let file = w.put_file(&all[..])?;
        w.flush()?;
        drop(w);
        prop_assert_eq!(file.size, all.len() as u64);
        let reopened = Store::open(dir.path(), options())?;
        let mut back = Vec::new();
        reopened.read_file_to(&file.chunks, &mut back)?;
        prop_assert_eq!(back, all);
    }
}

#[test]
fn insertion_in_64_mib_changes_at_most_3_chunks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create_with(dir.path(), 1, StoreOptions::default())?;
    let w = store.writer()?;
    let data = bytes(42, 64 << 20);
    let mut edited = data.clone();
    edited.splice(32 << 20..32 << 20, bytes(7, 100));
    let a = w.put_file(&data[..])?;
    let b = w.put_file(&edited[..])?;
    let old: HashSet<_> = a.chunks.iter().collect();
    let changed = b.chunks.iter().filter(|c| !old.contains(c)).count();
    assert!(changed <= 3, "{changed} of {} chunks changed", b.chunks.len());
    assert!(a.chunks.len() > 20, "64 MiB makes many chunks");
    Ok(())
}

#[test]
fn same_key_same_ids_other_key_other_ids() -> TestResult {
    let (d1, d2, d3) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let data = bytes(5, 300_000);
    let ids = |dir: &std::path::Path, key: u8| -> Result<Vec<ObjectId>, StoreError> {
        let s = create(dir, key)?;
        let w = s.writer()?;
        let f = w.put_file(&data[..])?;
        w.flush()?;
        Ok(f.chunks)
    };
    let a = ids(d1.path(), 1)?;
    let b = ids(d2.path(), 1)?;
    let c = ids(d3.path(), 2)?;
    assert_eq!(a, b);
    assert!(a.iter().all(|id| !c.contains(id)));
    Ok(())
}

#[test]
fn duplicate_puts_store_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let data = bytes(9, 100_000);
    let a = w.put_file(&data[..])?;
    w.flush()?;
    let n = store.list_objects()?.len();
    let b = w.put_file(&data[..])?;
    w.flush()?;
    assert_eq!(a, b);
    assert_eq!(store.list_objects()?.len(), n);
    Ok(())
}

#[test]
fn unflushed_objects_vanish_flushed_survive() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let kept = w.put_chunk(b"flushed")?;
    w.flush()?;
    let lost = w.put_chunk(b"never flushed")?;
    assert!(!w.get_raw(&lost)?.is_empty(), "the writer reads its own open pack");
    drop(w);
    let s = Store::open(dir.path(), options())?;
    assert_eq!(s.get_chunk(&kept)?, b"flushed");
    assert!(matches!(s.get_chunk(&lost), Err(StoreError::NotFound { .. })));
    assert!(s.verify(&VerifyOptions { read_data: true })?.is_ok());
    Ok(())
}

#[test]
fn trees_and_versions_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let file = w.put_file(&bytes(1, 10_000)[..])?;
    let tree = Tree::new(vec![TreeEntry {
        name: Name::new(b"caf\xc3\xa9 \xff.txt".to_vec())?,
        node: Node::File { size: file.size, chunks: file.chunks.clone(), executable: false },
        mtime_ns: Some(1_700_000_000_000_000_000),
    }])?;
    let root = w.put_tree(&tree)?;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let repo = store.repo_id();
    let body = VersionBody {
        repo,
        parents: vec![],
        root,
        author: PeerId(sk.verifying_key().to_bytes()),
        seq: 1,
        sealed_info: VersionInfo::new("first", 1, "host").seal(store.keys(), &repo)?,
    };
    let v = SignedVersion::sign(body, &sk)?;
    let vid = w.put_version(&v)?;
    w.flush()?;
    drop(w);
    let s = Store::open(dir.path(), options())?;
    assert_eq!(s.get_tree(&root)?, tree);
    let back = s.get_version(&vid)?;
    assert_eq!(back.body().root, root);
    assert_eq!(back.info(s.keys())?.message, "first");
    // Kinds are not interchangeable.
    assert!(s.get_chunk(&root).is_err());
    assert!(s.get_tree(&file.chunks[0]).is_err());
    assert!(s.get_raw(&vid.into()).is_ok());
    Ok(())
}

#[test]
fn put_raw_refuses_bytes_that_do_not_match() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let id = w.put_chunk(b"hello")?;
    let raw = w.get_raw(&id)?;
    let other = tempfile::tempdir()?;
    let s2 = create(other.path(), 1)?;
    let w2 = s2.writer()?;
    w2.put_raw(&id, &raw)?;
    let mut bad = raw.clone();
    bad[10] ^= 1;
    assert!(matches!(w2.put_raw(&id, &bad), Err(StoreError::InvalidObject { .. })));
    assert!(matches!(w2.put_raw(&ObjectId::of(&bad), &bad[..1]), Err(StoreError::InvalidObject { .. })));
    w2.flush()?;
    assert_eq!(s2.get_chunk(&id)?, b"hello");
    Ok(())
}

#[test]
fn second_writer_is_refused_with_pid() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let other = Store::open(dir.path(), options())?;
    match other.writer() {
        Err(e @ StoreError::Locked { pid: Some(pid), .. }) => {
            assert_eq!(pid, std::process::id());
            assert!(e.to_string().contains(&format!("pid {pid}")), "{e}");
        }
        other => panic!("expected a lock error, got {other:?}"),
    }
    // Readers never block.
    assert!(other.list_objects().is_ok());
    drop(w);
    other.writer()?;
    Ok(())
}

#[test]
fn many_flushes_merge_segments_and_keep_everything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let mut ids = Vec::new();
    for i in 0..200u64 {
        ids.push(w.put_chunk(&bytes(i, 100 + i as usize))?);
        w.flush()?;
    }
    drop(w);
    let segments = std::fs::read_dir(dir.path().join("index"))?.count();
    assert!(segments <= 12, "{segments} segments after 200 flushes");
    let s = Store::open(dir.path(), options())?;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(s.get_chunk(id)?, bytes(i as u64, 100 + i));
    }
    assert!(s.verify(&VerifyOptions::default())?.is_ok());
    Ok(())
}

#[test]
fn deleted_index_is_rebuilt_from_packs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let f = w.put_file(&bytes(3, 500_000)[..])?;
    w.flush()?;
    drop(w);
    for e in std::fs::read_dir(dir.path().join("index"))? {
        std::fs::remove_file(e?.path())?;
    }
    // A reader indexes uncovered packs in memory.
    let s = Store::open(dir.path(), options())?;
    let mut back = Vec::new();
    s.read_file_to(&f.chunks, &mut back)?;
    assert_eq!(back, bytes(3, 500_000));
    // The next writer saves that as a segment.
    drop(s.writer()?);
    assert!(std::fs::read_dir(dir.path().join("index"))?.count() >= 1);
    let s = Store::open(dir.path(), options())?;
    let report = s.verify(&VerifyOptions::default())?;
    assert!(report.is_ok() && report.unindexed_packs == 0, "{report:?}");
    // And an explicit rebuild gives one segment.
    let w = s.writer()?;
    assert!(w.rebuild_index()?.is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("index"))?.count(), 1);
    s.read_file_to(&f.chunks, &mut Vec::new())?;
    Ok(())
}

#[test]
fn truncated_pack_is_reported_not_fatal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let a = w.put_file(&bytes(1, 200_000)[..])?;
    w.flush()?;
    let b = w.put_file(&bytes(2, 30_000)[..])?;
    w.flush()?;
    drop(w);
    let packs = store.list_packs()?;
    let b_pack = store.locate(&b.chunks[0])?.ok_or("b is stored")?.pack;
    for p in packs.iter().filter(|p| **p != b_pack) {
        let path = dir.path().join("packs").join(format!("{p}.pack"));
        let len = std::fs::metadata(&path)?.len();
        std::fs::OpenOptions::new().write(true).open(&path)?.set_len(len / 3)?;
    }
    let s = Store::open(dir.path(), options())?;
    let mut errors = 0;
    for id in &a.chunks {
        if let Err(e) = s.get_chunk(id) {
            assert!(e.to_string().contains(&id.to_string()), "the error names the object: {e}");
            errors += 1;
        }
    }
    assert!(errors > 0);
    s.read_file_to(&b.chunks, &mut Vec::new())?;
    let report = s.verify(&VerifyOptions::default())?;
    assert!(!report.is_ok());
    Ok(())
}

#[test]
fn flipped_bit_in_a_pack_is_caught_by_read_and_verify() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let w = store.writer()?;
    let id = w.put_chunk(&bytes(8, 5000))?;
    w.flush()?;
    drop(w);
    let loc = store.locate(&id)?.ok_or("stored")?;
    let path = dir.path().join("packs").join(format!("{}.pack", loc.pack));
    let mut pack = std::fs::read(&path)?;
    pack[loc.offset as usize + 100] ^= 0x10;
    std::fs::write(&path, &pack)?;
    let s = Store::open(dir.path(), options())?;
    let err = s.get_chunk(&id).expect_err("a damaged object is an error");
    assert!(matches!(err, StoreError::CorruptObject { pack: Some(p), .. } if p == loc.pack), "{err}");
    let report = s.verify(&VerifyOptions::default())?;
    assert!(report.problems.iter().any(|p| p.subject.contains(&id.to_string())), "{report:?}");
    Ok(())
}

#[test]
fn not_a_store_and_already_exists() -> TestResult {
    let dir = tempfile::tempdir()?;
    assert!(matches!(Store::open(dir.path(), options()), Err(StoreError::NotAStore { .. })));
    create(dir.path(), 1)?;
    assert!(matches!(create(dir.path(), 1), Err(StoreError::AlreadyExists { .. })));
    let _ = RepoId([0; 32]);
    Ok(())
}

/// Several threads putting files at once through one writer, with packs so
/// small that the pack-writing thread is often busy and the putting threads
/// write packs themselves (or, without that thread, always do): everything
/// reads back, before and after the flush, deduplicated across threads, and
/// the store verifies.
#[test]
fn threads_putting_at_once_lose_nothing() -> TestResult {
    threads_putting_at_once(true)?;
    threads_putting_at_once(false)
}

fn threads_putting_at_once(pack_thread: bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store =
        create_with(dir.path(), 1, StoreOptions { pack_target: 32 * 1024, pack_thread, ..options() })?;
    let w = store.writer()?;
    let shared = bytes(99, 300_000);
    let files: Vec<Vec<u8>> = (0..6u64).map(|i| [bytes(i, 400_000), shared.clone()].concat()).collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                let w = &w;
                s.spawn(move || -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let fc = w.put_file(&f[..])?;
                    // Unflushed objects read back through the writer.
                    let mut back = Vec::new();
                    for id in &fc.chunks {
                        back.extend(dbox_store::object::open(
                            w.store().keys(),
                            dbox_store::object::ObjectKind::Chunk,
                            &w.get_raw(id)?,
                        )?);
                    }
                    assert_eq!(&back, f);
                    Ok(fc)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut chunks = Vec::new();
    for r in results {
        chunks.push(r.map_err(|_| "a putting thread panicked")?.map_err(|e| e.to_string())?);
    }
    w.flush()?;
    drop(w);
    let reopened = Store::open(dir.path(), options())?;
    let report = reopened.verify(&VerifyOptions { read_data: true })?;
    assert!(report.is_ok(), "{:?}", report.problems);
    let unique: HashSet<ObjectId> = chunks.iter().flat_map(|fc| fc.chunks.iter().copied()).collect();
    assert_eq!(report.objects, unique.len() as u64, "each object is stored once");
    assert!(report.packs > 20, "{} packs", report.packs);
    for (fc, f) in chunks.iter().zip(&files) {
        let mut back = Vec::new();
        reopened.read_file_to(&fc.chunks, &mut back)?;
        assert_eq!(&back, f);
    }
    Ok(())
}
