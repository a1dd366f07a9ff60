//! Ingest throughput: how fast `Writer::put_file` turns bytes into sealed
//! packs, against the raw ceiling of the same cryptography with no I/O.
//!
//! `cargo bench -p dbox-store --bench ingest` (6 to 8 minutes on 2 cores;
//! `DBOX_BENCH_MIB=256` for a quicker run on smaller data sets).
//!
//! Two data sets of 1 GiB each, made in memory once per run: random bytes
//! (never compressed) and text-like lines (compressed with zstd). For each:
//!
//! * `ceiling` — FastCDC cut points with the store's sizes and keyed gear
//!   table (the store's cuts), keyed BLAKE3 of each chunk (the nonce),
//!   XChaCha20-Poly1305 of each chunk, BLAKE3 of the ciphertext (the id).
//!   One thread, no compression, no copies beyond the one encryption in
//!   place needs, no I/O.
//! * `seal` (random data only) — the store's chunker and `object::seal` per
//!   chunk, no I/O: the per-object CPU work, with the compression decision.
//!   Not in it: the store's pack-level work (the keystream over the pack
//!   body, the pack's BLAKE3 id, the write and fsync).
//! * `store_1_thread` — `put_file` into a fresh store in a temp dir, then
//!   `flush`: the real thing, packs written and fsynced.
//! * `store_2_threads` — two threads sharing one `Writer`, each putting one
//!   half of the data as a file of its own, then `flush`.
//! * `alone_1_thread`, `alone_2_threads` — the same without the store's
//!   pack-writing thread (`StoreOptions::pack_thread` off): the thread whose
//!   object fills a pack writes it, so the ingest runs on exactly one or two
//!   threads. `store_1_thread` runs on two (the putting thread and the pack
//!   thread, which takes the pack-level work: the body keystream, the pack's
//!   hash, the write and the fsync).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use dbox_store::crypto::RepoKey;
use dbox_store::object::{self, ObjectKind};
use dbox_store::{Chunker, ChunkerParams, Keys, RepoId, Store, StoreOptions};
use fastcdc::v2020::{FastCDC, Normalization};

/// The raw cryptographic work per chunk, with keys of its own.
struct Ceiling {
    params: ChunkerParams,
    /// The AEAD the store uses, under a key of its own.
    cipher: dbox_store::crypto::AeadKey,
    nonce_key: [u8; 32],
    buf: Vec<u8>,
}

impl Ceiling {
    fn new(params: ChunkerParams) -> Self {
        Self {
            params,
            cipher: Keys::derive(&RepoKey::from_bytes([5u8; 32])).info,
            nonce_key: [6u8; 32],
            buf: Vec::with_capacity(params.max as usize),
        }
    }

    /// Cuts `data` and seals every chunk; returns the number of chunks.
    fn run(&mut self, data: &[u8]) -> usize {
        let p = self.params;
        let mut n = 0;
        for c in FastCDC::with_level_and_seed(data, p.min, p.avg, p.max, Normalization::Level1, p.seed) {
            let chunk = &data[c.offset..c.offset + c.length];
            let mut nonce = [0u8; 24];
            blake3::Hasher::new_keyed(&self.nonce_key).update(chunk).finalize_xof().fill(&mut nonce);
            self.buf.clear();
            self.buf.extend_from_slice(chunk);
            let tag = self.cipher.seal_in_place(&nonce, &[1, 1], self.buf.as_mut_slice());
            let mut id = blake3::Hasher::new();
            id.update(&nonce).update(&self.buf).update(&tag);
            black_box(id.finalize());
            n += 1;
        }
        n
    }
}

/// Chunk lengths as the store's chunker cuts `data`.
fn store_cuts(data: &[u8], params: ChunkerParams) -> Vec<usize> {
    let mut chunker = Chunker::with_params(data, params);
    let mut out = Vec::new();
    while let Some(c) = chunker.next_chunk().expect("reading a slice cannot fail") {
        out.push(c.len());
    }
    out
}

fn keys() -> (RepoId, RepoKey) {
    (RepoId([3; 32]), RepoKey::from_bytes([4; 32]))
}

/// The store's CPU work: its chunker and `object::seal` of every chunk.
fn seal_all(k: &Keys, params: ChunkerParams, data: &[u8]) -> usize {
    let mut chunker = Chunker::with_params(data, params);
    let mut n = 0;
    while let Some(c) = chunker.next_chunk().expect("reading a slice cannot fail") {
        black_box(object::seal(k, ObjectKind::Chunk, c));
        n += 1;
    }
    n
}

/// Ingests `files` into a fresh store, one thread per file, and returns the
/// time from the first put to the end of the flush.
fn ingest(files: &[&[u8]], pack_thread: bool) -> Duration {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (repo, key) = keys();
    let opts = StoreOptions { pack_thread, ..StoreOptions::default() };
    let store = Store::create(&dir.path().join("store"), repo, &key, opts).expect("creating a store");
    let w = store.writer().expect("the writer lock of a new store");
    let start = Instant::now();
    if let [one] = files {
        w.put_file(*one).expect("put_file");
    } else {
        std::thread::scope(|s| {
            let w = &w;
            for f in files {
                s.spawn(move || w.put_file(*f).expect("put_file"));
            }
        });
    }
    w.flush().expect("flush");
    start.elapsed()
}

fn bench_ingest(c: &mut Criterion) {
    let len = common::bench_len(1024);
    let sets = [("random", common::random_bytes(1, len)), ("text", common::text_bytes(2, len))];
    let k = Keys::derive(&keys().1);
    // The store keys FastCDC's gear table from the repo key; cut the same.
    let params = ChunkerParams { seed: k.chunker_seed, ..ChunkerParams::default() };
    let mut g = c.benchmark_group("ingest");
    // Each iteration takes seconds: one iteration per sample, ten samples.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(len as u64));
    for (name, data) in &sets {
        let data = &data[..];
        let cuts = store_cuts(data, params);
        let mut ceiling = Ceiling::new(params);
        assert_eq!(ceiling.run(data), cuts.len(), "the ceiling cuts where the store cuts");
        eprintln!("{name}: {} bytes, {} chunks", data.len(), cuts.len());
        g.bench_with_input(BenchmarkId::new("ceiling", name), data, |b, d| b.iter(|| ceiling.run(d)));
        if *name == "random" {
            // For text this is zstd's speed, which store_1_thread/text shows.
            g.bench_with_input(BenchmarkId::new("seal", name), data, |b, d| {
                b.iter(|| seal_all(&k, params, d))
            });
        }
        let (a, z) = data.split_at(data.len() / 2);
        for (group, pack_thread) in [("store", true), ("alone", false)] {
            g.bench_with_input(BenchmarkId::new(format!("{group}_1_thread"), name), data, |b, d| {
                b.iter_custom(|iters| (0..iters).map(|_| ingest(&[d], pack_thread)).sum())
            });
            g.bench_with_input(BenchmarkId::new(format!("{group}_2_threads"), name), data, |b, _| {
                b.iter_custom(|iters| (0..iters).map(|_| ingest(&[a, z], pack_thread)).sum())
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_ingest
}
criterion_main!(benches);
