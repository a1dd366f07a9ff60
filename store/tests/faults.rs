//! Fault injection through the store's file layer: the Nth create, write,
//! fsync, rename or directory fsync fails (once, for good, or as a torn
//! write), for N = 1, 2, … until the flush completes without meeting the
//! fault. After each failure the store opens, verifies, and holds everything
//! acknowledged; a retry after the fault heals succeeds.

mod common;

use std::sync::Arc;

use common::{bytes, create_with, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::vfs::fault::{FaultFs, FaultMode, Op};
use dbox_store::{ObjectId, Store, StoreOptions};

fn opts(fs: &FaultFs, pack_thread: bool) -> StoreOptions {
    StoreOptions {
        vfs: Arc::new(fs.clone()),
        pack_target: 40 * 1024,
        chunker: common::small_chunks(),
        pack_thread,
    }
}

fn check(dir: &std::path::Path, acked: &[(ObjectId, Vec<u8>)], what: &str) -> TestResult {
    let store = Store::open(dir, StoreOptions { chunker: common::small_chunks(), ..StoreOptions::default() })
        .map_err(|e| format!("{what}: open: {e}"))?;
    let report = store.verify(&VerifyOptions { read_data: true })?;
    assert!(report.is_ok(), "{what}: {:?}", report.problems);
    for (id, data) in acked {
        let back = store.get_chunk(id).map_err(|e| format!("{what}: {id}: {e}"))?;
        assert_eq!(&back, data, "{what}");
    }
    Ok(())
}

/// Runs one scenario: some acknowledged history (several segments, so the
/// faulty flush also merges), then a flush of new objects with a fault.
fn scenario(op: Op, mode: FaultMode, n: u64, pack_thread: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let what = format!("{op:?} #{n} {mode:?}, pack thread {pack_thread}");
    let dir = tempfile::tempdir()?;
    let fs = FaultFs::new();
    let store = create_with(dir.path(), 1, opts(&fs, pack_thread))?;
    let w = store.writer()?;
    let mut acked = Vec::new();
    for i in 0..3u64 {
        let data = bytes(i, 30_000);
        acked.push((w.put_chunk(&data)?, data));
        w.flush()?;
    }
    let fresh: Vec<Vec<u8>> = (10..16u64).map(|i| bytes(i, 20_000)).collect();
    fs.fail(op, n, mode);
    let mut result = Ok(());
    let mut ids = Vec::new();
    for d in &fresh {
        match w.put_chunk(d) {
            Ok(id) => ids.push(id),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = w.flush();
    }
    let met_fault = fs.failures() > 0;
    fs.heal();
    match result {
        Ok(()) => {
            for (id, d) in ids.iter().zip(&fresh) {
                acked.push((*id, d.clone()));
            }
            check(dir.path(), &acked, &what)?;
        }
        Err(e) => {
            assert!(met_fault, "{what}: failed without a fault: {e}");
            // The error says what failed.
            assert!(e.to_string().starts_with("cannot "), "{what}: {e}");
            check(dir.path(), &acked, &format!("{what}, after the failure"))?;
            // Retrying on the same writer, once healed, completes.
            for d in &fresh {
                acked.push((w.put_chunk(d)?, d.clone()));
            }
            w.flush().map_err(|e| format!("{what}: retry: {e}"))?;
            check(dir.path(), &acked, &format!("{what}, after the retry"))?;
        }
    }
    drop(w);
    // And a new writer on the real file system finds the store sound.
    let s =
        Store::open(dir.path(), StoreOptions { chunker: common::small_chunks(), ..StoreOptions::default() })?;
    drop(s.writer()?);
    check(dir.path(), &acked, &format!("{what}, after reopening"))?;
    Ok(met_fault)
}

#[test]
fn every_failing_operation_loses_nothing_acknowledged() -> TestResult {
    let mut total = 0;
    for op in [Op::Create, Op::Write, Op::Sync, Op::Rename, Op::SyncDir] {
        let modes: &[FaultMode] = if op == Op::Write {
            &[FaultMode::Transient, FaultMode::Permanent, FaultMode::Torn]
        } else {
            &[FaultMode::Transient, FaultMode::Permanent]
        };
        // With the pack-writing thread, and with every pack written by the
        // thread that fills it.
        for (&mode, pack_thread) in modes.iter().flat_map(|m| [(m, true), (m, false)]) {
            let mut n = 1;
            while scenario(op, mode, n, pack_thread)? {
                n += 1;
                assert!(n < 200, "{op:?} {mode:?}: the flush never completes");
            }
            assert!(n > 1, "{op:?} {mode:?}: the flush never used this operation");
            total += n - 1;
        }
    }
    eprintln!("fault injection: {total} failing operations tried");
    Ok(())
}
