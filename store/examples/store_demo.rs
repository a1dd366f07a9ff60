//! A tour of the object store: stores a generated folder's worth of files,
//! stores an edited copy, and shows deduplication, sealed packs and verify.
//!
//! `cargo run --release -p dbox-store --example store_demo`

use std::time::Instant;

use dbox_store::{verify::VerifyOptions, ObjectId, RepoId, RepoKey, Store, StoreOptions};

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let mut repo = [0u8; 32];
    dbox_store::crypto::fill_random(&mut repo)?;
    let store = Store::create(&root, RepoId(repo), &RepoKey::generate()?, StoreOptions::default())?;
    println!("created a store in {}", root.display());

    let big = pseudo_random(7, 48 << 20);
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n".repeat(20_000);
    let w = store.writer()?;
    let t = Instant::now();
    let a = w.put_file(&big[..])?;
    let b = w.put_file(&text[..])?;
    w.flush()?;
    let el = t.elapsed().as_secs_f64();
    println!(
        "stored 48 MiB of random data ({} chunks) and 880 KB of text ({} chunk) in {:.2} s",
        a.chunks.len(),
        b.chunks.len(),
        el
    );

    let mut edited = big.clone();
    edited.splice(24 << 20..24 << 20, b"one hundred bytes inserted in the middle".repeat(3)[..100].to_vec());
    let before = pack_bytes(&store)?;
    let c = w.put_file(&edited[..])?;
    w.flush()?;
    let new: Vec<&ObjectId> = c.chunks.iter().filter(|id| !a.chunks.contains(id)).collect();
    println!(
        "stored the file again with 100 bytes inserted: {} of {} chunks new, {} KiB added",
        new.len(),
        c.chunks.len(),
        (pack_bytes(&store)? - before) / 1024
    );

    let mut back = Vec::new();
    store.read_file_to(&c.chunks, &mut back)?;
    assert_eq!(back, edited);
    println!("read the edited file back: {} bytes, identical", back.len());

    let report = store.verify(&VerifyOptions { read_data: true })?;
    println!(
        "verify: {} packs, {} objects, {} MiB, {} problems",
        report.packs,
        report.objects,
        report.bytes >> 20,
        report.problems.len()
    );
    println!("packs are sealed: without the repo key a pack shows only its magic, version and random-looking bytes");
    Ok(())
}

fn pack_bytes(store: &Store) -> Result<u64, Box<dyn std::error::Error>> {
    let mut n = 0;
    for p in store.list_packs()? {
        n += std::fs::metadata(store.root().join("packs").join(format!("{p}.pack")))?.len();
    }
    Ok(n)
}
