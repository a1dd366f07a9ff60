//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;

use dbox_store::{ChunkerParams, RepoId, RepoKey, Store, StoreOptions};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic pseudo-random bytes (xorshift64*), the same on every run.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Small chunks so that small inputs still make many chunks.
pub fn small_chunks() -> ChunkerParams {
    ChunkerParams { min: 1024, avg: 4096, max: 16384, ..ChunkerParams::default() }
}

pub fn options() -> StoreOptions {
    StoreOptions { chunker: small_chunks(), pack_target: 64 * 1024, ..StoreOptions::default() }
}

pub fn create(root: &Path, key_byte: u8) -> Result<Store, dbox_store::StoreError> {
    create_with(root, key_byte, options())
}

pub fn create_with(root: &Path, key_byte: u8, opts: StoreOptions) -> Result<Store, dbox_store::StoreError> {
    Store::create(root, RepoId([key_byte; 32]), &RepoKey::from_bytes([key_byte; 32]), opts)
}
