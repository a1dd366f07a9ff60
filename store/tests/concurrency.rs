//! Several threads on one writer: objects put at once are stored once,
//! flushes racing pack writes lose nothing acknowledged, faults during
//! packs written by putting threads heal, and reused chunker buffers carry
//! nothing from one file into the next.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};

use common::{bytes, create_with, small_chunks, TestResult};
use dbox_store::object::{self, ObjectKind};
use dbox_store::verify::VerifyOptions;
use dbox_store::vfs::fault::{FaultFs, FaultMode, Op};
use dbox_store::{ObjectId, RepoId, RepoKey, Store, StoreOptions, Writer};

fn tiny(pack_target: usize) -> StoreOptions {
    StoreOptions { chunker: small_chunks(), pack_target, ..StoreOptions::default() }
}

/// Four threads put the same 300 objects in different orders into packs of
/// a few objects each: every object is stored exactly once.
#[test]
fn the_same_objects_from_many_threads_are_stored_once() -> TestResult {
    for round in 0..20u64 {
        let dir = tempfile::tempdir()?;
        let store = create_with(dir.path(), 1, tiny(4 * 1024))?;
        let w = store.writer()?;
        let objs: Vec<Vec<u8>> = (0..300u64).map(|i| bytes(round * 1000 + i, 1500)).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (w, objs) = (&w, &objs);
                s.spawn(move || {
                    for k in 0..objs.len() {
                        w.put_chunk(&objs[(k + t * 7) % objs.len()]).expect("put");
                    }
                });
            }
        });
        w.flush()?;
        drop(w);
        let reopened = Store::open(dir.path(), tiny(4 * 1024))?;
        let report = reopened.verify(&VerifyOptions { read_data: true })?;
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.objects, objs.len() as u64, "round {round}: objects stored more than once");
    }
    Ok(())
}

/// Four threads put, read back and flush in batches at once; a final batch
/// is never flushed. Everything a flush acknowledged survives.
#[test]
fn flushes_racing_pack_writes_keep_what_they_acknowledged() -> TestResult {
    for round in 0..5u64 {
        let dir = tempfile::tempdir()?;
        let store = create_with(dir.path(), 1, tiny(8 * 1024))?;
        let w = store.writer()?;
        let acked: Mutex<Vec<(ObjectId, Vec<u8>)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (w, acked) = (&w, &acked);
                s.spawn(move || {
                    for batch in 0..20u64 {
                        let mut mine = Vec::new();
                        for i in 0..7u64 {
                            let d = bytes(round << 40 | t << 32 | batch << 8 | i, 2500 + i as usize * 300);
                            let id = w.put_chunk(&d).expect("put");
                            assert!(!w.get_raw(&id).expect("get_raw").is_empty());
                            mine.push((id, d));
                        }
                        if batch % 3 == 0 {
                            let f = w.put_file(&bytes(batch * 31 + t, 40_000)[..]).expect("put_file");
                            assert_eq!(f.size, 40_000);
                        }
                        w.flush().expect("flush");
                        acked.lock().expect("not poisoned").extend(mine);
                    }
                });
            }
        });
        for i in 0..5u64 {
            w.put_chunk(&bytes(9_999_000 + i, 3000))?;
        }
        drop(w);
        let reopened = Store::open(dir.path(), tiny(8 * 1024))?;
        let report = reopened.verify(&VerifyOptions { read_data: true })?;
        assert!(report.is_ok(), "{:?}", report.problems);
        for (id, d) in acked.lock().map_err(|_| "poisoned")?.iter() {
            assert_eq!(&reopened.get_chunk(id)?, d);
        }
    }
    Ok(())
}

/// A fault while four threads put objects (and write packs themselves):
/// once it heals, a flush succeeds and every put that returned Ok reads
/// back.
#[test]
fn faults_while_several_threads_write_packs_heal() -> TestResult {
    let cases = [
        (Op::Write, FaultMode::Transient),
        (Op::Write, FaultMode::Torn),
        (Op::Write, FaultMode::Permanent),
        (Op::Sync, FaultMode::Transient),
        (Op::Rename, FaultMode::Transient),
        (Op::Create, FaultMode::Transient),
        (Op::SyncDir, FaultMode::Transient),
    ];
    for (op, mode) in cases {
        for n in [1u64, 2, 3, 5, 8, 13] {
            let what = format!("{op:?} #{n} {mode:?}");
            let dir = tempfile::tempdir()?;
            let fs = FaultFs::new();
            let store =
                create_with(dir.path(), 1, StoreOptions { vfs: Arc::new(fs.clone()), ..tiny(6 * 1024) })?;
            let w = store.writer()?;
            fs.fail(op, n, mode);
            let oks: Mutex<Vec<(ObjectId, Vec<u8>)>> = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let (w, oks) = (&w, &oks);
                    s.spawn(move || {
                        for i in 0..40u64 {
                            let d = bytes(t << 32 | i, 2000);
                            if let Ok(id) = w.put_chunk(&d) {
                                oks.lock().expect("not poisoned").push((id, d));
                            }
                        }
                    });
                }
            });
            fs.heal();
            w.flush().map_err(|e| format!("{what}: flush after healing: {e}"))?;
            drop(w);
            let reopened = Store::open(dir.path(), tiny(6 * 1024))?;
            let report = reopened.verify(&VerifyOptions { read_data: true })?;
            assert!(report.is_ok(), "{what}: {:?}", report.problems);
            for (id, d) in oks.lock().map_err(|_| "poisoned")?.iter() {
                let got = reopened.get_chunk(id).map_err(|e| format!("{what}: {id}: {e}"))?;
                assert_eq!(&got, d, "{what}");
            }
        }
    }
    Ok(())
}

/// A reader that hands out a few bytes at a time.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 13 + 1;
        let n = buf.len().min(self.step * 97).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A reader that fails after `left` bytes.
struct FailAfter<'a> {
    data: &'a [u8],
    left: usize,
}

impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("boom"));
        }
        let n = buf.len().min(self.left).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.left -= n;
        Ok(n)
    }
}

fn read_back(w: &Writer, store: &Store, chunks: &[ObjectId]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut back = Vec::new();
    for id in chunks {
        back.extend(object::open(store.keys(), ObjectKind::Chunk, &w.get_raw(id)?)?);
    }
    Ok(back)
}

/// Files of every size after one another, by odd readers and a failing one,
/// through two writers with different chunk sizes: each reads back as it was.
#[test]
fn reused_chunker_buffers_carry_nothing_over() -> TestResult {
    let dir = tempfile::tempdir()?;
    let big = Store::create(
        &dir.path().join("big"),
        RepoId([3; 32]),
        &RepoKey::from_bytes([3; 32]),
        StoreOptions::default(),
    )?;
    let small = create_with(&dir.path().join("small"), 1, tiny(64 * 1024))?;
    let (wb, ws) = (big.writer()?, small.writer()?);
    let long = bytes(1, 20 << 20);
    let check = |w: &Writer, s: &Store, data: &[u8], trickle: bool| -> TestResult {
        let f = if trickle { w.put_file(Trickle { data, step: 0 })? } else { w.put_file(data)? };
        assert_eq!(f.size, data.len() as u64);
        assert!(read_back(w, s, &f.chunks)? == data, "a file of {} bytes read back differently", data.len());
        Ok(())
    };
    check(&wb, &big, &long, false)?;
    check(&wb, &big, &bytes(2, 10), false)?;
    check(&wb, &big, &[], false)?;
    check(&ws, &small, &bytes(3, 100_000), true)?;
    check(&wb, &big, &long, true)?;
    assert!(wb.put_file(FailAfter { data: &long, left: 5 << 20 }).is_err());
    check(&wb, &big, &bytes(4, 300_000), true)?;
    check(&ws, &small, &long[..3 << 20], false)?;
    check(&wb, &big, &bytes(5, 1), false)?;
    Ok(())
}

/// A reader that says it read bytes without writing any (safe code may do
/// that) gets zeros, never the previous file's bytes.
#[test]
fn a_lying_reader_never_sees_an_earlier_file() -> TestResult {
    struct Liar(usize);
    impl Read for Liar {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }
    let dir = tempfile::tempdir()?;
    let store = create_with(dir.path(), 1, tiny(1 << 20))?;
    let w = store.writer()?;
    w.put_file(&vec![0xAAu8; 50_000][..])?;
    let f = w.put_file(Liar(50_000))?;
    let back = read_back(&w, &store, &f.chunks)?;
    assert_eq!(back.len(), 50_000);
    let leaked = back.iter().filter(|b| **b == 0xAA).count();
    assert_eq!(leaked, 0, "{leaked} bytes of the previous file ended up in the next one");
    Ok(())
}

/// The same bytes cut with a fresh buffer and with one reused after a
/// larger file give the same chunks.
#[test]
fn a_reused_buffer_cuts_the_same_chunks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create_with(dir.path(), 1, tiny(1 << 20))?;
    let w = store.writer()?;
    let data = bytes(77, 3 << 20);
    let fresh = w.put_file(Trickle { data: &data, step: 3 })?.chunks;
    w.put_file(&bytes(78, 18 << 20)[..])?;
    assert_eq!(w.put_file(&data[..])?.chunks, fresh);
    assert_eq!(w.put_file(Trickle { data: &data, step: 5 })?.chunks, fresh);
    Ok(())
}
