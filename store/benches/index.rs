//! The index at a million objects: opening a store and looking ids up.
//!
//! `cargo bench -p dbox-store --bench index`
//!
//! The store is built once and kept in `target/bench-store-1m` (about a
//! minute to build; rebuilt when missing, incomplete or unreadable): 1,000,000
//! distinct 64-byte chunks put with `put_chunk`, flushed every 10,000 puts as
//! real use would, so the index is the handful of tiered segments that
//! merging leaves. The page cache is warm, as it is for a store in use.
//!
//! * `open` — `Store::open`.
//! * `contains` / `locate` of a random present id and of a random absent id.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use dbox_store::{ObjectId, RepoId, RepoKey, Store, StoreOptions};

const OBJECTS: u64 = 1_000_000;
const FLUSH_EVERY: u64 = 10_000;
const CHUNK_LEN: usize = 64;

/// Written last when building, holding the object count.
const DONE_FILE: &str = "bench-complete";

fn store_dir() -> PathBuf {
    common::target_dir().join("bench-store-1m")
}

fn cached(root: &Path) -> Option<Store> {
    let done = std::fs::read_to_string(root.join(DONE_FILE)).ok()?;
    if done.trim() != OBJECTS.to_string() {
        return None;
    }
    let store = Store::open(&root.join("store"), StoreOptions::default()).ok()?;
    // A store left by an older build may not read back: rebuild it then.
    let any = store.list_objects().ok()?.first().copied()?;
    store.get_chunk(&any).ok()?;
    Some(store)
}

/// Opens the cached store, building it first if needed.
fn one_million() -> Store {
    let root = store_dir();
    if let Some(s) = cached(&root) {
        return s;
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("removing a stale bench store");
    }
    std::fs::create_dir_all(&root).expect("creating the bench store directory");
    eprintln!("building a store of {OBJECTS} objects in {} (once)", root.display());
    let start = Instant::now();
    let store = Store::create(
        &root.join("store"),
        RepoId([1; 32]),
        &RepoKey::from_bytes([2; 32]),
        StoreOptions::default(),
    )
    .expect("creating the bench store");
    let w = store.writer().expect("the writer lock of a new store");
    let mut rng = common::Rng::new(42);
    let mut chunk = [0u8; CHUNK_LEN];
    for i in 0..OBJECTS {
        rng.fill(&mut chunk);
        // The counter makes every chunk distinct whatever the generator does.
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        w.put_chunk(&chunk).expect("put_chunk");
        if (i + 1) % FLUSH_EVERY == 0 {
            w.flush().expect("flush");
        }
    }
    w.flush().expect("flush");
    drop(w);
    std::fs::write(root.join(DONE_FILE), OBJECTS.to_string()).expect("marking the bench store complete");
    eprintln!("built in {:.1} s", start.elapsed().as_secs_f64());
    store
}

fn describe(store: &Store) {
    let dir = store.root().join("index");
    let mut sizes: Vec<u64> = std::fs::read_dir(&dir)
        .expect("listing the index")
        .filter_map(|e| e.ok()?.metadata().ok().map(|m| m.len()))
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let packs = store.list_packs().expect("listing packs").len();
    eprintln!("index: {} segments of {:?} bytes; {packs} packs", sizes.len(), sizes);
}

fn bench_index(c: &mut Criterion) {
    let store = one_million();
    describe(&store);
    let present = store.list_objects().expect("listing objects");
    assert_eq!(present.len() as u64, OBJECTS, "the bench store holds every object");
    drop(store);

    let root = store_dir().join("store");
    let mut g = c.benchmark_group("index_1m");
    g.bench_function("open", |b| {
        b.iter(|| Store::open(&root, StoreOptions::default()).expect("opening the bench store"))
    });

    let store = Store::open(&root, StoreOptions::default()).expect("opening the bench store");
    let mut rng = common::Rng::new(7);
    let mut pick = move |hit: bool| {
        if hit {
            present[(rng.next_u64() % OBJECTS) as usize]
        } else {
            let mut id = [0u8; 32];
            rng.fill(&mut id);
            ObjectId(id)
        }
    };
    for (name, hit) in [("present", true), ("absent", false)] {
        g.bench_function(BenchmarkId::new("contains", name), |b| {
            b.iter_batched(|| pick(hit), |id| store.contains(&id).expect("lookup"), BatchSize::SmallInput)
        });
        g.bench_function(BenchmarkId::new("locate", name), |b| {
            b.iter_batched(
                || pick(hit),
                |id| black_box(store.locate(&id).expect("lookup")),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_index
}
criterion_main!(benches);
