//! What the chunk size costs: chunks per file and bytes rewritten by an
//! edit, for average sizes from 64 KiB to 4 MiB (min = avg/4, max = avg×4).
//!
//! ```text
//! cargo run --release -p dbox-store --example chunk_params
//! ```
//!
//! For 64 MiB of pseudo-random data, and 64 MiB of text-like lines: cuts the
//! data, inserts 100 random bytes at one of 8 points around the middle, cuts
//! again, and counts the chunks of the edited data that the original did not
//! have (the bytes an edit adds to the store before compression). Prints the
//! mean over the 8 points and the range. Then measures the fixed cost of one
//! chunk: `put_chunk` of 100,000 tiny chunks into a fresh store.
//! The 4 MiB row is hypothetical: its 16 MiB maximum is above the store's
//! largest chunk. The figures are in `bench/RESULTS.md` and the docs of
//! `chunker.rs`.

#[path = "../benches/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::Instant;

use dbox_store::{ChunkerParams, RepoId, RepoKey, Store, StoreOptions};
use fastcdc::v2020::{FastCDC, Normalization};

const DATA_LEN: usize = 64 << 20;
const INSERT_LEN: usize = 100;
const POINTS: usize = 8;

/// Metadata bytes per chunk: the stored object's header, nonce, compression
/// byte and tag (2 + 24 + 1 + 16), its pack header entry (44), its index
/// entry (52), and its id in the file's tree entry (CBOR: 2 + 32).
const META_PER_CHUNK: usize = 43 + 44 + 52 + 34;

/// Cuts with FastCDC directly (the store's `Chunker` makes the same cuts,
/// see `benches/ingest.rs`), because the 4 MiB row's 16 MiB maximum is
/// above what the store accepts.
fn cut(data: &[u8], p: ChunkerParams) -> Vec<(blake3::Hash, usize)> {
    FastCDC::with_level_and_seed(data, p.min, p.avg, p.max, Normalization::Level1, p.seed)
        .map(|c| (blake3::hash(&data[c.offset..c.offset + c.length]), c.length))
        .collect()
}

fn kib(n: f64) -> String {
    if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

fn table(name: &str, data: &[u8]) {
    let mut rng = common::Rng::new(9);
    let mut insert = [0u8; INSERT_LEN];
    rng.fill(&mut insert);
    // 8 points spread over the middle quarter, not aligned to anything.
    let points: Vec<usize> = (0..POINTS)
        .map(|i| data.len() * 3 / 8 + i * data.len() / (4 * POINTS) + rng.range(0, 65_535) as usize)
        .collect();
    println!("\n{name}: 64 MiB, {INSERT_LEN} bytes inserted at {POINTS} points in the middle quarter\n");
    println!(
        "| avg | min | max | chunks | mean chunk | new chunks | new bytes (mean) | new bytes (range) | metadata |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for avg_kib in [64u32, 256, 1024, 4096] {
        let avg = avg_kib * 1024;
        let p = ChunkerParams { min: avg / 4, avg, max: avg * 4, ..ChunkerParams::default() };
        let before = cut(data, p);
        let known: HashSet<blake3::Hash> = before.iter().map(|c| c.0).collect();
        let (mut new_chunks, mut new_bytes) = (0usize, Vec::new());
        for &at in &points {
            let mut edited = Vec::with_capacity(data.len() + INSERT_LEN);
            edited.extend_from_slice(&data[..at]);
            edited.extend_from_slice(&insert);
            edited.extend_from_slice(&data[at..]);
            let new: Vec<usize> =
                cut(&edited, p).into_iter().filter(|c| !known.contains(&c.0)).map(|c| c.1).collect();
            new_chunks += new.len();
            new_bytes.push(new.iter().sum::<usize>());
        }
        let mean = new_bytes.iter().sum::<usize>() as f64 / POINTS as f64;
        let lo = *new_bytes.iter().min().expect("8 points");
        let hi = *new_bytes.iter().max().expect("8 points");
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {} | {} – {} | {:.3} % |",
            kib(avg.into()),
            kib(p.min.into()),
            kib(p.max.into()),
            before.len(),
            kib(data.len() as f64 / before.len() as f64),
            new_chunks as f64 / POINTS as f64,
            kib(mean),
            kib(lo as f64),
            kib(hi as f64),
            100.0 * (before.len() * META_PER_CHUNK) as f64 / data.len() as f64,
        );
    }
}

/// Time per `put_chunk` of a tiny chunk: the fixed cost of one chunk
/// (sealing, the index lookup, the append), with a flush at the end.
fn fixed_cost() -> Result<f64, Box<dyn std::error::Error>> {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir()?;
    let store = Store::create(
        &dir.path().join("store"),
        RepoId([1; 32]),
        &RepoKey::from_bytes([2; 32]),
        StoreOptions::default(),
    )?;
    let w = store.writer()?;
    let mut chunk = [0u8; 64];
    let mut rng = common::Rng::new(3);
    let start = Instant::now();
    for i in 0..N {
        rng.fill(&mut chunk);
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        w.put_chunk(&chunk)?;
    }
    w.flush()?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / N as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    table("random", &common::random_bytes(1, DATA_LEN));
    table("text", &common::text_bytes(2, DATA_LEN));
    println!("\nmetadata per chunk: {META_PER_CHUNK} bytes (object header and tag, pack entry, index entry, tree entry)");
    println!(
        "fixed cost per chunk: {:.2} µs (put_chunk of 100,000 64-byte chunks, one flush)",
        fixed_cost()?
    );
    Ok(())
}
