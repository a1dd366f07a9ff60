//! Content-defined chunking of byte streams with FastCDC (2020).
//!
//! [`Chunker`] reads from any [`Read`] into one buffer of at most
//! [`BUFFER_CHUNKS`] × `max` bytes (grown as needed, so a small file costs a
//! small buffer) and hands out chunks as slices of it, so a
//! 10 GiB file never sits in memory and no chunk is copied by the chunker.
//! (fastcdc's own `StreamCDC` shifts its whole buffer after every chunk.)
//!
//! # Sizes
//!
//! min 256 KiB, average 1 MiB, max 4 MiB ([`ChunkerParams::default`]).
//! Measured with `cargo run --release -p dbox-store --example chunk_params`
//! on 64 MiB of random data and 64 MiB of text-like lines, with 100 bytes
//! inserted at one of 8 points in the middle (see `bench/RESULTS.md` for the
//! table):
//!
//! * 64 KiB average: ~840 chunks per 64 MiB, an insertion rewrites
//!   ~75–90 KiB; 256 KiB: ~215 chunks, ~320 KiB; 1 MiB average: ~55 chunks,
//!   ~1.2–1.5 MiB rewritten; 4 MiB average (whose 16 MiB maximum the store
//!   would not accept): ~13 chunks, ~6–10 MiB rewritten. An insertion
//!   always made exactly one new chunk, and it is longer than the mean
//!   chunk (~1.15 MiB at the default) because a point falls in a chunk with
//!   odds in proportion to its length.
//! * Each chunk costs ~170 bytes of metadata (object header, nonce and tag
//!   43, pack header entry 44, index entry 52, tree entry 34) and 4–10 µs
//!   of fixed time (`put_chunk` of a tiny chunk); 1 TiB at 1 MiB is ~1 M
//!   objects, which the index serves with constant memory, while 64 KiB
//!   would be 16 M objects.
//!
//! 1 MiB keeps an edit of a large file to about one to one and a half
//! megabytes of new data (below restic's chunker, which also averages 1 MiB
//! but has a 512 KiB minimum and 8 MiB maximum) at a per-chunk overhead
//! below 0.02 %.
//! Files smaller than the minimum are one chunk each.

use std::io::{self, Read};

use fastcdc::v2020::MASKS;

use crate::limits::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// The buffer holds this many maximum-size chunks.
pub const BUFFER_CHUNKS: usize = 2;

/// FastCDC sizes and gear seed. Changing them changes every chunk id, so
/// they are fixed for a repository; the store sets `seed` from the repo key
/// ([`crate::Store::chunker_params`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk (except the last).
    pub min: u32,
    /// Average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
    /// XORed into FastCDC's gear table (0: the published table).
    pub seed: u64,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min: CHUNK_MIN, avg: CHUNK_AVG, max: CHUNK_MAX, seed: 0 }
    }
}

impl ChunkerParams {
    /// Checks the sizes against what FastCDC supports.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
            && self.max as usize <= crate::limits::MAX_CHUNK_SIZE;
        if ok {
            Ok(())
        } else {
            Err(format!("invalid chunker sizes {self:?}"))
        }
    }
}

/// Cuts a byte stream into content-defined chunks.
pub struct Chunker<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    /// Bytes handed out so far.
    offset: u64,
}

impl<R: Read> Chunker<R> {
    /// A chunker with the default sizes.
    pub fn new(reader: R) -> Self {
        Self::with_params(reader, ChunkerParams::default())
    }

    /// A chunker with the given sizes.
    ///
    /// # Panics
    /// If the sizes are out of FastCDC's range; see
    /// [`ChunkerParams::validate`].
    pub fn with_params(reader: R, params: ChunkerParams) -> Self {
        if let Err(e) = params.validate() {
            panic!("{e}");
        }
        let bits = (params.avg as f64).log2().round() as usize;
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(params.seed);
        Self {
            reader,
            // Grown on demand up to BUFFER_CHUNKS × max, so small files cost
            // small buffers.
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            params,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
            gear,
            gear_ls,
            offset: 0,
        }
    }

    /// Like [`Chunker::with_params`], but reads into `buf`'s memory. A
    /// caller that chunks many files reuses one buffer this way, with
    /// [`Chunker::into_buffer`], instead of touching fresh memory for every
    /// file. Its contents are cleared first, so nothing of an earlier file
    /// can reach this one's chunks, whatever the reader does.
    pub fn with_buffer(reader: R, params: ChunkerParams, mut buf: Vec<u8>) -> Self {
        buf.clear();
        let mut c = Self::with_params(reader, params);
        c.buf = buf;
        c
    }

    /// The buffer, for the next [`Chunker::with_buffer`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes handed out as chunks so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = self.params.max as usize * BUFFER_CHUNKS;
        while !self.eof && self.end < cap {
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).max(64 * 1024).min(cap);
                self.buf.resize(grown, 0);
            }
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        let max = self.params.max as usize;
        if !self.eof && self.end - self.start < max {
            self.fill()?;
        }
        let window = &self.buf[self.start..self.end];
        if window.is_empty() {
            return Ok(None);
        }
        let (_, len) = fastcdc::v2020::cut_gear(
            window,
            self.params.min as usize,
            self.params.avg as usize,
            max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        // `cut` never returns 0 for a non-empty window, but a zero-length
        // chunk would loop forever, so take the whole window then.
        let len = if len == 0 { window.len() } else { len };
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams { min: 256, avg: 1024, max: 4096, seed: 7 }
    }

    fn chunks(data: &[u8], p: ChunkerParams) -> io::Result<Vec<Vec<u8>>> {
        let mut c = Chunker::with_params(data, p);
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk()? {
            out.push(ch.to_vec());
        }
        Ok(out)
    }

    /// A reader that returns at most 7 bytes per call, to exercise refills.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn concatenation_and_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let p = small();
            let cs = chunks(&data, p)?;
            prop_assert_eq!(cs.concat(), data.clone());
            for (i, c) in cs.iter().enumerate() {
                prop_assert!(c.len() <= p.max as usize);
                if i + 1 < cs.len() {
                    prop_assert!(c.len() >= p.min as usize);
                }
            }
            // Cut points do not depend on how the reader delivers bytes.
            let mut t = Chunker::with_params(Trickle(&data), p);
            let mut trickled = Vec::new();
            while let Some(ch) = t.next_chunk()? {
                trickled.push(ch.to_vec());
            }
            prop_assert_eq!(trickled, cs);
        }
    }
}
