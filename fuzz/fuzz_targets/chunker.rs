//! `Chunker` with small sizes (min 64, avg 256, max 1024) and the published
//! or a keyed gear table: chunks concatenate to the input, respect the sizes,
//! and do not depend on how the reader delivers its bytes.

#![no_main]

use std::io::{self, Read};

use dbox_store::{Chunker, ChunkerParams};
use libfuzzer_sys::fuzz_target;

const MIN: u32 = 64;
const MAX: u32 = 1024;

/// Delivers at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn chunks(reader: impl Read, seed: u64) -> (Vec<Vec<u8>>, u64) {
    let params = ChunkerParams { min: MIN, avg: 256, max: MAX, seed };
    let mut c = Chunker::with_params(reader, params);
    let mut out = Vec::new();
    while let Some(ch) = c.next_chunk().expect("reading memory cannot fail") {
        out.push(ch.to_vec());
    }
    (out, c.offset())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else { return };
    // Seed 0 is FastCDC's published gear table; the store keys it.
    let seed = if first & 0x80 == 0 { 0 } else { u64::from(first).wrapping_mul(0x9e37_79b9_7f4a_7c15) };
    let (cs, offset) = chunks(data, seed);
    assert_eq!(cs.concat(), data, "chunks do not concatenate to the input");
    assert_eq!(offset, data.len() as u64);
    for (i, c) in cs.iter().enumerate() {
        assert!(!c.is_empty(), "empty chunk");
        assert!(c.len() <= MAX as usize, "chunk {i} of {} bytes", c.len());
        if i + 1 < cs.len() {
            assert!(c.len() >= MIN as usize, "chunk {i} of {} bytes before the last", c.len());
        }
    }
    let step = usize::from(first % 64) * 37 + 1;
    let (trickled, _) = chunks(Trickle { data, step }, seed);
    assert_eq!(trickled, cs, "cut points depend on the reader");
});
