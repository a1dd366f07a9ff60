//! Index segments: sorted tables from object id to pack location.
//!
//! See the crate docs for the file layout. A [`Segment`] keeps only its
//! header, pack table and fanout in memory; [`Segment::lookup`] reads one
//! fanout bucket with one positioned read and checks each entry's check
//! value. [`write_segment`] streams sorted entries to a new file in two
//! passes (fanout, then entries), so merging segments of any size needs
//! constant memory besides the fanout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::atomic::TmpFile;
use crate::error::{DecodeError, StoreError};
use crate::id::{ObjectId, PackId};
use crate::limits::{
    MAX_FANOUT_BITS, MAX_OBJECT_SIZE, MAX_SEGMENT_ENTRIES, MAX_SEGMENT_PACKS, MIN_FANOUT_BITS,
    SEGMENT_MERGE_FANIN,
};
use crate::vfs::{ReadAt, Vfs};

/// First bytes of every segment.
pub const INDEX_MAGIC: &[u8; 8] = b"DBOXIDX\0";
/// Index format version.
pub const INDEX_FORMAT: u32 = 1;
const FIXED_LEN: usize = 28;
/// Bytes per entry.
pub const ENTRY_LEN: usize = 52;
const CHECK_LEN: usize = 32;
/// Entries read per block when scanning a segment.
const SCAN_BLOCK: usize = 8192;
/// Most entries one fanout bucket may hold. Writers aim at about 16 per
/// bucket and at most 4 Gi entries over 2^20 buckets (4096 each); a bucket
/// above this is damage, and refusing it bounds a lookup's allocation.
pub const MAX_BUCKET_ENTRIES: u64 = 1 << 16;

/// Where an object is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// Offset in the pack.
    pub offset: u64,
    /// Length of the stored bytes.
    pub len: u32,
}

/// An open index segment.
pub struct Segment {
    path: PathBuf,
    file: Arc<dyn ReadAt>,
    packs: Vec<PackId>,
    fanout: Vec<u32>,
    bits: u32,
    count: u64,
    entries_off: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("path", &self.path).field("count", &self.count).finish()
    }
}

fn corrupt(path: &Path, source: DecodeError) -> StoreError {
    StoreError::CorruptIndex { path: path.to_path_buf(), source }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn entry_check(rec: &[u8]) -> [u8; 4] {
    let h = blake3::hash(&rec[..48]);
    [h.as_bytes()[0], h.as_bytes()[1], h.as_bytes()[2], h.as_bytes()[3]]
}

fn prefix(id: &ObjectId, bits: u32) -> usize {
    let b = id.as_bytes();
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) >> (32 - bits)) as usize
}

/// Fanout bits for `n` entries: about 8 to 16 entries per bucket.
fn fanout_bits(n: u64) -> u32 {
    let want = 64 - (n / 8).leading_zeros();
    want.clamp(MIN_FANOUT_BITS, MAX_FANOUT_BITS)
}

impl Segment {
    /// Opens a segment, reading and checking its header, pack table and
    /// fanout.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<Self, StoreError> {
        let file = vfs.open_read(path).map_err(StoreError::io("open", path))?;
        let len = file.len().map_err(StoreError::io("stat", path))?;
        let bad = |e| corrupt(path, e);
        if len < (FIXED_LEN + CHECK_LEN) as u64 {
            return Err(bad(DecodeError::Truncated {
                what: "index segment",
                needed: FIXED_LEN + CHECK_LEN,
                available: len as usize,
            }));
        }
        let mut fixed = [0u8; FIXED_LEN];
        file.read_exact_at(&mut fixed, 0).map_err(StoreError::io("read", path))?;
        if &fixed[..8] != INDEX_MAGIC {
            return Err(bad(DecodeError::BadMagic { what: "index segment" }));
        }
        let version = le_u32(&fixed[8..]);
        if version != INDEX_FORMAT {
            return Err(bad(DecodeError::UnsupportedVersion { what: "index segment", found: version }));
        }
        let bits = le_u32(&fixed[12..]);
        let npacks = le_u32(&fixed[16..]) as usize;
        let count = le_u64(&fixed[20..]);
        if !(MIN_FANOUT_BITS..=MAX_FANOUT_BITS).contains(&bits)
            || npacks > MAX_SEGMENT_PACKS
            || count > MAX_SEGMENT_ENTRIES
        {
            return Err(bad(DecodeError::Invalid("index segment header out of range".into())));
        }
        let fanout_len = 4usize << bits;
        let head_len = FIXED_LEN + 32 * npacks + fanout_len;
        let entries_off = (head_len + CHECK_LEN) as u64;
        let expected = entries_off + count * ENTRY_LEN as u64 + CHECK_LEN as u64;
        if len != expected {
            return Err(bad(DecodeError::Invalid(format!(
                "index segment is {len} bytes, its header says {expected}"
            ))));
        }
        let mut head = vec![0u8; head_len + CHECK_LEN];
        file.read_exact_at(&mut head, 0).map_err(StoreError::io("read", path))?;
        if blake3::hash(&head[..head_len]).as_bytes() != &head[head_len..] {
            return Err(bad(DecodeError::HashMismatch { actual: "header check".into() }));
        }
        let packs = head[FIXED_LEN..FIXED_LEN + 32 * npacks]
            .chunks_exact(32)
            .map(|c| PackId::from_slice(c).expect("chunks_exact gives 32 bytes"))
            .collect();
        let fanout: Vec<u32> = head[FIXED_LEN + 32 * npacks..head_len].chunks_exact(4).map(le_u32).collect();
        let mut prev = 0u32;
        for &f in &fanout {
            if f < prev {
                return Err(bad(DecodeError::Invalid("index fanout is not monotonic".into())));
            }
            prev = f;
        }
        if u64::from(prev) != count {
            return Err(bad(DecodeError::Invalid("index fanout does not end at the entry count".into())));
        }
        Ok(Self { path: path.to_path_buf(), file, packs, fanout, bits, count, entries_off })
    }

    /// The segment's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The packs this segment covers.
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Number of entries.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn decode_entry(&self, rec: &[u8]) -> Result<(ObjectId, Location), StoreError> {
        if entry_check(rec) != rec[48..52] {
            return Err(corrupt(&self.path, DecodeError::HashMismatch { actual: "entry check".into() }));
        }
        let id = ObjectId::from_slice(&rec[..32]).expect("32 bytes");
        let pack_no = le_u32(&rec[32..]) as usize;
        let offset = le_u64(&rec[36..]);
        let len = le_u32(&rec[44..]);
        let pack = *self
            .packs
            .get(pack_no)
            .ok_or_else(|| corrupt(&self.path, DecodeError::Invalid("index entry names no pack".into())))?;
        if len as usize > MAX_OBJECT_SIZE {
            return Err(corrupt(&self.path, DecodeError::Invalid("index entry too long".into())));
        }
        Ok((id, Location { pack, offset, len }))
    }

    /// Looks up an id. Any damaged entry in the id's bucket is an error, so
    /// damage never turns into a wrong answer.
    pub fn lookup(&self, id: &ObjectId) -> Result<Option<Location>, StoreError> {
        let p = prefix(id, self.bits);
        let lo = if p == 0 { 0 } else { self.fanout[p - 1] } as u64;
        let hi = self.fanout[p] as u64;
        if lo >= hi {
            return Ok(None);
        }
        if hi - lo > MAX_BUCKET_ENTRIES {
            return Err(corrupt(&self.path, DecodeError::Invalid("index bucket too large".into())));
        }
        let mut buf = vec![0u8; ((hi - lo) as usize) * ENTRY_LEN];
        self.file
            .read_exact_at(&mut buf, self.entries_off + lo * ENTRY_LEN as u64)
            .map_err(StoreError::io("read", &self.path))?;
        let mut found = None;
        for rec in buf.chunks_exact(ENTRY_LEN) {
            let (eid, loc) = self.decode_entry(rec)?;
            if eid == *id {
                found = Some(loc);
            }
        }
        Ok(found)
    }

    /// Reads all entries in order, checking each, in blocks.
    pub fn scan(&self) -> Scan<'_> {
        Scan { seg: self, next: 0, block: Vec::new(), pos: 0 }
    }

    /// Checks the whole file: file check, every entry's check, order, and
    /// that every entry sits in its fanout bucket.
    pub fn check_file(&self) -> Result<(), StoreError> {
        let len = self.file.len().map_err(StoreError::io("stat", &self.path))?;
        let mut hasher = blake3::Hasher::new();
        let body_len = len - CHECK_LEN as u64;
        let mut off = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while off < body_len {
            let n = ((body_len - off) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], off).map_err(StoreError::io("read", &self.path))?;
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        let mut check = [0u8; CHECK_LEN];
        self.file.read_exact_at(&mut check, body_len).map_err(StoreError::io("read", &self.path))?;
        if hasher.finalize().as_bytes() != &check {
            return Err(corrupt(&self.path, DecodeError::HashMismatch { actual: "file check".into() }));
        }
        let mut prev: Option<ObjectId> = None;
        for (i, r) in self.scan().enumerate() {
            let (id, _) = r?;
            if prev.is_some_and(|p| p >= id) {
                return Err(corrupt(&self.path, DecodeError::Invalid("index entries not sorted".into())));
            }
            let p = prefix(&id, self.bits);
            let lo = if p == 0 { 0 } else { self.fanout[p - 1] } as usize;
            if i < lo || i >= self.fanout[p] as usize {
                return Err(corrupt(
                    &self.path,
                    DecodeError::Invalid("index entry outside its bucket".into()),
                ));
            }
            prev = Some(id);
        }
        Ok(())
    }
}

/// Iterator over a segment's entries; see [`Segment::scan`].
pub struct Scan<'a> {
    seg: &'a Segment,
    next: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Iterator for Scan<'_> {
    type Item = Result<(ObjectId, Location), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.block.len() {
            if self.next >= self.seg.count {
                return None;
            }
            let n = (self.seg.count - self.next).min(SCAN_BLOCK as u64) as usize;
            self.block.resize(n * ENTRY_LEN, 0);
            if let Err(e) = self
                .seg
                .file
                .read_exact_at(&mut self.block, self.seg.entries_off + self.next * ENTRY_LEN as u64)
            {
                self.next = self.seg.count;
                self.block.clear();
                return Some(Err(StoreError::io("read", &self.seg.path)(e)));
            }
            self.next += n as u64;
            self.pos = 0;
        }
        let rec = &self.block[self.pos..self.pos + ENTRY_LEN];
        self.pos += ENTRY_LEN;
        Some(self.seg.decode_entry(rec))
    }
}

/// A source of sorted, unique entries that can be read twice.
pub(crate) type EntrySource<'a> =
    dyn Fn() -> Box<dyn Iterator<Item = Result<(ObjectId, Location), StoreError>> + 'a> + 'a;

/// Writes a new segment covering `packs` from sorted unique entries, and
/// returns its path in `index_dir`.
pub(crate) fn write_segment(
    vfs: &dyn Vfs,
    tmp_dir: &Path,
    index_dir: &Path,
    packs: &[PackId],
    entries: &EntrySource<'_>,
) -> Result<PathBuf, StoreError> {
    let pack_no: HashMap<PackId, u32> = packs.iter().enumerate().map(|(i, p)| (*p, i as u32)).collect();
    // Pass 1: count entries per finest bucket and check the order.
    let mut hist = vec![0u32; 1 << MAX_FANOUT_BITS];
    let mut count = 0u64;
    let mut prev: Option<ObjectId> = None;
    for r in entries() {
        let (id, loc) = r?;
        if prev.is_some_and(|p| p >= id) {
            return Err(StoreError::InvalidObject {
                source: DecodeError::Invalid("index entries to write are not sorted and unique".into()),
            });
        }
        if !pack_no.contains_key(&loc.pack) {
            return Err(StoreError::InvalidObject {
                source: DecodeError::Invalid("index entry names a pack outside the segment".into()),
            });
        }
        hist[prefix(&id, MAX_FANOUT_BITS)] += 1;
        count += 1;
        prev = Some(id);
    }
    let bits = fanout_bits(count);
    let group = 1usize << (MAX_FANOUT_BITS - bits);
    let mut head = Vec::with_capacity(FIXED_LEN + 32 * packs.len() + (4 << bits) + CHECK_LEN);
    head.extend_from_slice(INDEX_MAGIC);
    head.extend_from_slice(&INDEX_FORMAT.to_le_bytes());
    head.extend_from_slice(&bits.to_le_bytes());
    head.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    head.extend_from_slice(&count.to_le_bytes());
    for p in packs {
        head.extend_from_slice(p.as_bytes());
    }
    let mut cumulative = 0u32;
    for g in hist.chunks_exact(group) {
        cumulative += g.iter().sum::<u32>();
        head.extend_from_slice(&cumulative.to_le_bytes());
    }
    drop(hist);
    let check = blake3::hash(&head);
    head.extend_from_slice(check.as_bytes());

    // Pass 2: write.
    let mut tmp = TmpFile::create(vfs, tmp_dir)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    tmp.write(&head)?;
    let mut buf = Vec::with_capacity(SCAN_BLOCK * ENTRY_LEN);
    let mut written = 0u64;
    for r in entries() {
        let (id, loc) = r?;
        let mut rec = [0u8; ENTRY_LEN];
        rec[..32].copy_from_slice(id.as_bytes());
        rec[32..36].copy_from_slice(&pack_no[&loc.pack].to_le_bytes());
        rec[36..44].copy_from_slice(&loc.offset.to_le_bytes());
        rec[44..48].copy_from_slice(&loc.len.to_le_bytes());
        let c = entry_check(&rec);
        rec[48..].copy_from_slice(&c);
        buf.extend_from_slice(&rec);
        written += 1;
        if buf.len() >= SCAN_BLOCK * ENTRY_LEN {
            hasher.update(&buf);
            tmp.write(&buf)?;
            buf.clear();
        }
    }
    if written != count {
        return Err(StoreError::InvalidObject {
            source: DecodeError::Invalid("index entries changed between passes".into()),
        });
    }
    hasher.update(&buf);
    tmp.write(&buf)?;
    let file_check = hasher.finalize();
    tmp.write(file_check.as_bytes())?;
    let dest = index_dir.join(format!("{}.idx", file_check.to_hex()));
    tmp.commit(&dest)?;
    Ok(dest)
}

/// Merges segments into one stream of sorted unique entries (the first
/// segment wins on duplicates, which point at equal bytes anyway).
pub(crate) fn merged<'a>(
    segments: &'a [Arc<Segment>],
) -> Box<dyn Iterator<Item = Result<(ObjectId, Location), StoreError>> + 'a> {
    let mut scans: Vec<Scan<'a>> = segments.iter().map(|s| s.scan()).collect();
    let mut heap = BinaryHeap::new();
    let mut pending: Vec<Option<Location>> = vec![None; scans.len()];
    let mut error: Option<StoreError> = None;
    for (i, s) in scans.iter_mut().enumerate() {
        match s.next() {
            Some(Ok((id, loc))) => {
                pending[i] = Some(loc);
                heap.push(Reverse((id, i)));
            }
            Some(Err(e)) => error = error.or(Some(e)),
            None => {}
        }
    }
    let mut last: Option<ObjectId> = None;
    Box::new(std::iter::from_fn(move || loop {
        if let Some(e) = error.take() {
            heap.clear();
            return Some(Err(e));
        }
        let Reverse((id, i)) = heap.pop()?;
        let loc = pending[i].take().expect("every heap item has a pending location");
        match scans[i].next() {
            Some(Ok((nid, nloc))) => {
                pending[i] = Some(nloc);
                heap.push(Reverse((nid, i)));
            }
            Some(Err(e)) => error = Some(e),
            None => {}
        }
        if last == Some(id) {
            continue;
        }
        last = Some(id);
        return Some(Ok((id, loc)));
    }))
}

/// Tier of a segment with `count` entries: ⌊log₄ count⌋.
fn tier(count: u64) -> u32 {
    if count <= 1 {
        0
    } else {
        (63 - count.leading_zeros()) / 2
    }
}

/// Chooses segments to merge: all segments of the lowest tier holding at
/// least [`SEGMENT_MERGE_FANIN`] of them, or `None`. Repeated merging keeps
/// O(log n) segments and rewrites each entry O(log n) times.
pub(crate) fn plan_merge(counts: &[u64]) -> Option<Vec<usize>> {
    let mut by_tier: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, &c) in counts.iter().enumerate() {
        by_tier.entry(tier(c)).or_default().push(i);
    }
    let mut tiers: Vec<_> = by_tier.into_iter().filter(|(_, v)| v.len() >= SEGMENT_MERGE_FANIN).collect();
    tiers.sort_by_key(|(t, _)| *t);
    tiers.into_iter().next().map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_plan_is_logarithmic() {
        // Simulate 1,000 flushes of 10 entries each.
        let mut segs: Vec<u64> = Vec::new();
        let mut max_segs = 0;
        for _ in 0..1000 {
            segs.push(10);
            while let Some(m) = plan_merge(&segs) {
                let total: u64 = m.iter().map(|&i| segs[i]).sum();
                let mut keep: Vec<u64> =
                    segs.iter().enumerate().filter(|(i, _)| !m.contains(i)).map(|(_, &c)| c).collect();
                keep.push(total);
                segs = keep;
            }
            max_segs = max_segs.max(segs.len());
        }
        assert!(max_segs <= 3 * 8, "{max_segs} segments");
        assert_eq!(segs.iter().sum::<u64>(), 10_000);
    }

    #[test]
    fn bits_grow_with_count() {
        assert_eq!(fanout_bits(0), MIN_FANOUT_BITS);
        assert_eq!(fanout_bits(1_000_000), 17);
        assert_eq!(fanout_bits(u64::from(u32::MAX)), MAX_FANOUT_BITS);
    }
}
