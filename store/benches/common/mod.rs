//! Data for the store's benchmarks and measuring examples: pseudo-random
//! bytes, text-like bytes shaped like `shared/bench/gen-data.py` makes them
//! (lines of 3 to 14 words from its word list, one line in ten indented and
//! ending in ` {`), and where cached bench data lives.
//!
//! Everything is deterministic in its seed, so two runs measure the same
//! bytes. Not the same bytes as gen-data.py (Python's generator differs), but
//! the same shape, so compression and chunking behave alike.

#![allow(dead_code)] // each bench or example uses part of this

use std::path::PathBuf;

/// gen-data.py's word list, in its order.
const WORDS: &str = "alpha beta gamma delta version chunk peer sync store commit tree node \
    graph merge head tail index pack object signed encrypted repository \
    folder file block gossip quic stream key value the of and to in for is \
    on that by this with from at as be are was it an or fn let mut impl pub \
    struct enum match return if else while loop use crate self super";

/// SplitMix64: tiny, fast, and good enough to make incompressible bytes.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// `len` bytes of text-like lines, as gen-data.py's `text_bytes` makes them.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let indent = rng.range(0, 9) == 0;
        if indent {
            out.extend_from_slice(b"    ");
        }
        for i in 0..rng.range(3, 14) {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(words[rng.range(0, words.len() as u64 - 1) as usize].as_bytes());
        }
        if indent {
            out.extend_from_slice(b" {");
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// The cargo target directory: `CARGO_TARGET_DIR` if set when built, else
/// the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match option_env!("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"),
    }
}

/// Bytes of each bench data set: `DBOX_BENCH_MIB` MiB if set, else `default_mib`.
pub fn bench_len(default_mib: usize) -> usize {
    let mib = std::env::var("DBOX_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(default_mib);
    mib << 20
}
