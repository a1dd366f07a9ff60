//! Sealed packs: many stored objects in one file whose header is encrypted
//! and whose length is padded. See the crate docs for the layout.
//!
//! [`PackBuilder`] collects objects in memory (a pack is at most
//! [`PACK_TARGET_SIZE`](crate::limits::PACK_TARGET_SIZE) plus one object) and
//! [`PackBuilder::seal`] produces the final bytes and id. [`read_header`]
//! reads back which objects a pack holds, given the repo key.

use crate::crypto::{fill_random, Keys, NONCE_LEN, TAG_LEN};
use crate::error::{DecodeError, StoreError};
use crate::id::{ObjectId, PackId};
use crate::limits::{MAX_OBJECT_SIZE, MAX_PACK_OBJECTS, MAX_PACK_SIZE};
use crate::vfs::{Fill, ReadAt};

/// First bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"DBOXPACK";
/// Pack format version written: 2, whose body keystream is keyed BLAKE3's
/// output stream.
pub const PACK_FORMAT: u32 = 2;
/// The first pack format, whose body keystream is XChaCha20; still read.
pub const PACK_FORMAT_XCHACHA20: u32 = 1;
/// Length of magic and version.
pub const PACK_PREFIX_LEN: usize = 12;
/// Offset of the first object: after magic, version and body nonce.
pub const BODY_START: usize = PACK_PREFIX_LEN + NONCE_LEN;
/// Length of the encrypted trailer.
pub const TRAILER_LEN: usize = NONCE_LEN + 16 + TAG_LEN;
const ENTRY_LEN: usize = 32 + 8 + 4;
const HEADER_AAD: &[u8] = b"dbox pack header v1";
const TRAILER_AAD: &[u8] = b"dbox pack trailer v1";

/// Where an object lies in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// The object.
    pub id: ObjectId,
    /// Offset of its stored bytes in the pack.
    pub offset: u64,
    /// Length of its stored bytes.
    pub len: u32,
}

/// The Padmé padded length of `len`: at most 12 % more, and leaking only
/// O(log log len) bits of the true length.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros());
    let s = 64 - u64::from(e.leading_zeros());
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

/// A pack being filled. Objects are kept in plaintext in memory; the body
/// keystream is applied as the pack is written ([`PackBuilder::write_to`]),
/// off the thread that fills it.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    keys: Keys,
}

impl std::fmt::Debug for PackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackBuilder")
            .field("len", &self.buf.len())
            .field("objects", &self.entries.len())
            .finish()
    }
}

/// What hides a pack's body: its format (which keystream) and body nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyStream {
    /// [`PACK_FORMAT`] or [`PACK_FORMAT_XCHACHA20`].
    pub format: u32,
    /// The pack's body nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// Hides or reveals (the same XOR) `buf`, the bytes at pack offset `offset`
/// of a pack whose body is hidden by `body`.
pub fn apply_body_stream(keys: &Keys, body: &BodyStream, offset: u64, buf: &mut [u8]) {
    let pos = offset.saturating_sub(BODY_START as u64);
    if body.format == PACK_FORMAT_XCHACHA20 {
        keys.pack_body.apply_xchacha20(&body.nonce, pos, buf);
    } else {
        keys.pack_body.apply_blake3(&body.nonce, pos, buf);
    }
}

impl BodyStream {
    /// The same nonce under the other known format's keystream: what a pack
    /// whose format field was damaged needs.
    pub fn other(&self) -> Self {
        let format = if self.format == PACK_FORMAT_XCHACHA20 { PACK_FORMAT } else { PACK_FORMAT_XCHACHA20 };
        Self { format, ..*self }
    }
}

impl PackBuilder {
    /// An empty pack. Its body nonce is drawn when it is written
    /// ([`PackBuilder::write_to`]); until then the prefix holds zeros.
    pub fn new(keys: &Keys) -> Self {
        let mut buf = Vec::new();
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&PACK_FORMAT.to_le_bytes());
        buf.resize(BODY_START, 0);
        Self { buf, entries: Vec::new(), keys: keys.clone() }
    }

    /// Appends an object's stored bytes.
    pub fn push(&mut self, id: ObjectId, stored: &[u8]) -> PackEntry {
        let entry = PackEntry {
            id,
            offset: self.buf.len() as u64,
            len: u32::try_from(stored.len()).expect("objects are limited far below 4 GiB"),
        };
        self.buf.extend_from_slice(stored);
        self.entries.push(entry);
        entry
    }

    /// Number of objects.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes so far (prefix, nonce and objects).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no object was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored bytes of an object pushed earlier.
    pub fn get(&self, entry: &PackEntry) -> Vec<u8> {
        let start = entry.offset as usize;
        self.buf[start..start + entry.len as usize].to_vec()
    }

    /// Bytes the pack's buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Empties the pack for reuse, keeping its buffer.
    pub fn reset(&mut self) {
        self.buf.truncate(BODY_START);
        self.entries.clear();
    }

    /// Streams the finished pack — prefix with a fresh random body nonce,
    /// body under that nonce's keystream, then [`PackBuilder::seal`]'s tail —
    /// to `sink` in blocks, and returns its id. Every call draws a new
    /// nonce, so a retried write never gives a second file whose body
    /// matches the first one's byte for byte (which would tell a storage
    /// peer holding both that they hold the same objects).
    ///
    /// `sink(len, fill)` takes `len` more bytes that `fill` makes in place,
    /// as [`crate::vfs::WriteFile::write_filled`]: the keystream goes
    /// straight into the file's own buffer, with no copy between.
    pub fn write_to(
        &self,
        tail: &[u8],
        mut sink: impl FnMut(usize, Fill<'_>) -> Result<(), StoreError>,
    ) -> Result<PackId, StoreError> {
        // Small enough that a block is still in the core's cache when it
        // is hashed and written.
        const BLOCK: usize = 256 << 10;
        let mut prefix = [0u8; BODY_START];
        prefix[..PACK_PREFIX_LEN].copy_from_slice(&self.buf[..PACK_PREFIX_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        prefix[PACK_PREFIX_LEN..].copy_from_slice(&nonce);
        let mut h = blake3::Hasher::new();
        copy_to(&prefix, &mut h, &mut sink)?;
        let mut off = BODY_START;
        while off < self.buf.len() {
            let end = (off + BLOCK).min(self.buf.len());
            let pos = (off - BODY_START) as u64;
            sink(end - off, &mut |at, out| {
                let from = off + at;
                self.keys.pack_body.xor_blake3_into(
                    &nonce,
                    pos + at as u64,
                    &self.buf[from..from + out.len()],
                    out,
                );
                h.update(out);
            })?;
            off = end;
        }
        copy_to(tail, &mut h, &mut sink)?;
        Ok(PackId(*h.finalize().as_bytes()))
    }

    /// The entries so far.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Makes the encrypted header, padding and trailer that finish this
    /// pack. The builder is left as it was, so a failed write can be
    /// retried; the pack file is what [`PackBuilder::write_to`] streams.
    pub fn seal(&self) -> Result<Vec<u8>, StoreError> {
        let keys = &self.keys;
        let header_offset = self.buf.len() as u64;
        let mut plain = Vec::with_capacity(8 + self.entries.len() * ENTRY_LEN);
        plain.extend_from_slice(&PACK_FORMAT.to_le_bytes());
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            plain.extend_from_slice(e.id.as_bytes());
            plain.extend_from_slice(&e.offset.to_le_bytes());
            plain.extend_from_slice(&e.len.to_le_bytes());
        }
        let mut tail = keys.pack.seal_random(&aad(HEADER_AAD, PACK_FORMAT), &plain)?;
        let header_len = tail.len() as u64;
        let unpadded = header_offset + header_len + TRAILER_LEN as u64;
        let pad = (padme(unpadded) - unpadded) as usize;
        let start = tail.len();
        tail.resize(start + pad, 0);
        // Padding only has to look random to whoever lacks the key: a
        // stream from a fresh random seed, not megabytes from the kernel.
        let mut seed = [0u8; 32];
        fill_random(&mut seed)?;
        blake3::Hasher::new_keyed(&seed).finalize_xof().fill(&mut tail[start..]);
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&header_offset.to_le_bytes());
        t[8..].copy_from_slice(&header_len.to_le_bytes());
        tail.extend_from_slice(&keys.pack.seal_random(&aad(TRAILER_AAD, PACK_FORMAT), &t)?);
        Ok(tail)
    }
}

fn aad(label: &[u8], version: u32) -> Vec<u8> {
    let mut a = label.to_vec();
    a.extend_from_slice(PACK_MAGIC);
    a.extend_from_slice(&version.to_le_bytes());
    a
}

fn read_at(file: &dyn ReadAt, offset: u64, len: usize) -> Result<Vec<u8>, DecodeError> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| DecodeError::Invalid(format!("read at {offset}: {e}")))?;
    Ok(buf)
}

/// Reads the format and body nonce of the pack in `file`. Neither the magic
/// nor the format is checked here: a format field that does not say 1 is
/// read as the current format, and a reader whose object then fails its id
/// check tries [`BodyStream::other`], so a damaged prefix costs no object
/// that is intact. [`read_header`] lets the header's AEAD decide.
pub fn read_body_stream(file: &dyn ReadAt) -> Result<BodyStream, DecodeError> {
    let b = read_at(file, 0, BODY_START)?;
    let format = match u32::from_le_bytes([b[8], b[9], b[10], b[11]]) {
        PACK_FORMAT_XCHACHA20 => PACK_FORMAT_XCHACHA20,
        _ => PACK_FORMAT,
    };
    let nonce = b[PACK_PREFIX_LEN..].try_into().map_err(|_| DecodeError::Truncated {
        what: "pack",
        needed: BODY_START,
        available: b.len(),
    })?;
    Ok(BodyStream { format, nonce })
}

/// Reads and decrypts the header of the pack in `file` (of length `len`),
/// checking every entry against the pack's bounds.
pub fn read_header(file: &dyn ReadAt, len: u64, keys: &Keys) -> Result<Vec<PackEntry>, DecodeError> {
    let min = (BODY_START + TRAILER_LEN) as u64;
    if len < min {
        return Err(DecodeError::Truncated { what: "pack", needed: min as usize, available: len as usize });
    }
    if len > MAX_PACK_SIZE {
        return Err(DecodeError::TooLarge { what: "pack", size: len, limit: MAX_PACK_SIZE });
    }
    let prefix = read_at(file, 0, PACK_PREFIX_LEN)?;
    let stated = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    let trailer = read_at(file, len - TRAILER_LEN as u64, TRAILER_LEN)?;
    // The trailer's associated data binds the format, so it decides: a
    // damaged magic or format field does not cost an intact pack, and no
    // other format can pass for the right one. The stated format is tried
    // first.
    let order = if stated == PACK_FORMAT_XCHACHA20 {
        [PACK_FORMAT_XCHACHA20, PACK_FORMAT]
    } else {
        [PACK_FORMAT, PACK_FORMAT_XCHACHA20]
    };
    let Some((format, t)) =
        order.into_iter().find_map(|f| keys.pack.open(&aad(TRAILER_AAD, f), &trailer).ok().map(|t| (f, t)))
    else {
        return Err(if &prefix[..8] != PACK_MAGIC {
            DecodeError::BadMagic { what: "pack" }
        } else if stated != PACK_FORMAT && stated != PACK_FORMAT_XCHACHA20 {
            DecodeError::UnsupportedVersion { what: "pack", found: stated }
        } else {
            DecodeError::Decrypt
        });
    };
    let header_offset = u64::from_le_bytes(t[..8].try_into().map_err(|_| DecodeError::Decrypt)?);
    let header_len = u64::from_le_bytes(t[8..16].try_into().map_err(|_| DecodeError::Decrypt)?);
    let max_header = (NONCE_LEN + TAG_LEN + 8 + MAX_PACK_OBJECTS * ENTRY_LEN) as u64;
    let body_end = len - TRAILER_LEN as u64;
    if header_offset < BODY_START as u64
        || header_len > max_header
        || header_offset.checked_add(header_len).is_none_or(|end| end > body_end)
    {
        return Err(DecodeError::Invalid("pack trailer points outside the pack".into()));
    }
    let sealed = read_at(file, header_offset, header_len as usize)?;
    let plain = keys.pack.open(&aad(HEADER_AAD, format), &sealed)?;
    if plain.len() < 8 {
        return Err(DecodeError::Truncated { what: "pack header", needed: 8, available: plain.len() });
    }
    let version = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]);
    if version != format {
        return Err(DecodeError::UnsupportedVersion { what: "pack header", found: version });
    }
    let count = u32::from_le_bytes([plain[4], plain[5], plain[6], plain[7]]) as usize;
    if count > MAX_PACK_OBJECTS || plain.len() != 8 + count * ENTRY_LEN {
        return Err(DecodeError::Invalid("pack header length does not match its count".into()));
    }
    let mut entries = Vec::with_capacity(count);
    let mut expected_offset = BODY_START as u64;
    for rec in plain[8..].chunks_exact(ENTRY_LEN) {
        let id = ObjectId::from_slice(&rec[..32]).ok_or(DecodeError::Decrypt)?;
        let offset = u64::from_le_bytes(rec[32..40].try_into().map_err(|_| DecodeError::Decrypt)?);
        let len = u32::from_le_bytes(rec[40..44].try_into().map_err(|_| DecodeError::Decrypt)?);
        if offset != expected_offset || len as usize > MAX_OBJECT_SIZE {
            return Err(DecodeError::Invalid("pack header entries are not contiguous".into()));
        }
        expected_offset += u64::from(len);
        entries.push(PackEntry { id, offset, len });
    }
    if expected_offset != header_offset {
        return Err(DecodeError::Invalid("pack header entries do not end at the header".into()));
    }
    Ok(entries)
}

/// Gives `bytes` to a [`PackBuilder::write_to`] sink, hashing them.
fn copy_to(
    bytes: &[u8],
    h: &mut blake3::Hasher,
    sink: &mut impl FnMut(usize, Fill<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    sink(bytes.len(), &mut |at, out| {
        out.copy_from_slice(&bytes[at..at + out.len()]);
        h.update(out);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RepoKey;
    use std::io;

    /// A [`PackBuilder::write_to`] sink into `file` that has each write
    /// made in two parts, as a file's buffer boundary would split it.
    fn to_vec(file: &mut Vec<u8>) -> impl FnMut(usize, Fill<'_>) -> Result<(), StoreError> + '_ {
        move |len, fill| {
            let at = file.len();
            file.resize(at + len, 0);
            let cut = len / 3;
            fill(0, &mut file[at..at + cut]);
            fill(cut, &mut file[at + cut..]);
            Ok(())
        }
    }

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let src = self
                .0
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    /// A pack as format 1 wrote it: XChaCha20 body keystream, version 1 in
    /// the prefix, the header and both associated data; no padding.
    pub(crate) fn format1_pack(keys: &Keys, objects: &[&[u8]]) -> (Vec<u8>, Vec<PackEntry>) {
        pack_of_format(keys, objects, 1)
    }

    /// [`format1_pack`] with `version` in place of 1 everywhere.
    fn pack_of_format(keys: &Keys, objects: &[&[u8]], version: u32) -> (Vec<u8>, Vec<PackEntry>) {
        let nonce = [9u8; NONCE_LEN];
        let mut out = PACK_MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&nonce);
        let mut entries = Vec::new();
        for stored in objects {
            let offset = out.len();
            let mut b = stored.to_vec();
            keys.pack_body.apply_xchacha20(&nonce, (offset - BODY_START) as u64, &mut b);
            out.extend_from_slice(&b);
            entries.push(PackEntry {
                id: ObjectId::of(stored),
                offset: offset as u64,
                len: stored.len() as u32,
            });
        }
        let mut plain = version.to_le_bytes().to_vec();
        plain.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in &entries {
            plain.extend_from_slice(e.id.as_bytes());
            plain.extend_from_slice(&e.offset.to_le_bytes());
            plain.extend_from_slice(&e.len.to_le_bytes());
        }
        let header_offset = out.len() as u64;
        let header = keys.pack.seal_random(&aad(HEADER_AAD, version), &plain).expect("sealing memory");
        let mut t = header_offset.to_le_bytes().to_vec();
        t.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(
            &keys.pack.seal_random(&aad(TRAILER_AAD, version), &t).expect("sealing memory"),
        );
        (out, entries)
    }

    #[test]
    fn format1_packs_still_read() -> Result<(), Box<dyn std::error::Error>> {
        let keys = Keys::derive(&RepoKey::from_bytes([1; 32]));
        // The format-1 keystream as the format-1 code made it (golden bytes
        // from that code: XChaCha20 of this key and nonce at position 100).
        let mut ks = [0u8; 16];
        keys.pack_body.apply_xchacha20(&[9; NONCE_LEN], 100, &mut ks);
        assert_eq!(hex::encode(ks), "769a6196e4491de364d073ccc390e5cc");
        let objects: [&[u8]; 3] = [b"first object", &[7u8; 5000], b"third"];
        let (bytes, entries) = format1_pack(&keys, &objects);
        let mem = Mem(bytes.clone());
        assert_eq!(read_header(&mem, bytes.len() as u64, &keys)?, entries);
        let body = read_body_stream(&mem)?;
        assert_eq!(body.format, PACK_FORMAT_XCHACHA20);
        for (e, stored) in entries.iter().zip(objects) {
            let mut got = bytes[e.offset as usize..][..e.len as usize].to_vec();
            apply_body_stream(&keys, &body, e.offset, &mut got);
            assert_eq!(got, stored);
        }
        // The same bytes under format 2's keystream do not read back.
        let mut wrong = bytes[entries[0].offset as usize..][..entries[0].len as usize].to_vec();
        apply_body_stream(&keys, &BodyStream { format: PACK_FORMAT, ..body }, entries[0].offset, &mut wrong);
        assert_ne!(wrong, objects[0]);
        // A damaged magic or format field costs nothing: the header's AEAD
        // decides the format, and a failed object read tries the other
        // keystream (see `a_store_reads_its_format1_packs`).
        for (at, value) in [(8, 2), (8, 3), (8, 0xff), (11, 1), (0, b'X')] {
            let mut damaged = bytes.clone();
            damaged[at] = value;
            assert_eq!(
                read_header(&Mem(damaged), bytes.len() as u64, &keys)?,
                entries,
                "byte {at} = {value}"
            );
        }
        // A format this build does not know is refused by the header read.
        let (future, _) = pack_of_format(&keys, &objects, 3);
        assert!(matches!(
            read_header(&Mem(future.clone()), future.len() as u64, &keys),
            Err(DecodeError::UnsupportedVersion { found: 3, .. })
        ));
        Ok(())
    }

    #[test]
    fn a_store_reads_its_format1_packs() -> Result<(), Box<dyn std::error::Error>> {
        use crate::{RepoId, Store, StoreOptions};
        let dir = tempfile::tempdir()?;
        let key = RepoKey::from_bytes([1; 32]);
        let store = Store::create(&dir.path().join("s"), RepoId([2; 32]), &key, StoreOptions::default())?;
        let (id, stored) =
            crate::object::seal(store.keys(), crate::object::ObjectKind::Chunk, b"old content");
        let (bytes, _) = format1_pack(store.keys(), &[&stored]);
        let name = format!("{}.pack", hex::encode(blake3::hash(&bytes).as_bytes()));
        std::fs::write(dir.path().join("s/packs").join(name), &bytes)?;
        let w = store.writer()?;
        assert!(w.rebuild_index()?.is_empty());
        assert_eq!(store.get_chunk(&id)?, b"old content");
        // New objects go to format-2 packs beside it.
        let new = w.put_chunk(b"new content")?;
        w.flush()?;
        drop(w);
        let reopened = Store::open(&dir.path().join("s"), StoreOptions::default())?;
        assert_eq!(reopened.get_chunk(&id)?, b"old content");
        assert_eq!(reopened.get_chunk(&new)?, b"new content");
        let report = reopened.verify(&crate::verify::VerifyOptions { read_data: true })?;
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.packs, report.objects), (2, 2));
        Ok(())
    }

    /// One damaged format byte in a pack of either format: every object
    /// still reads, the index is rebuilt with it, and `verify` reports the
    /// pack (its bytes no longer hash to its name) but no object.
    #[test]
    fn a_damaged_format_field_costs_no_object() -> Result<(), Box<dyn std::error::Error>> {
        use crate::{RepoId, Store, StoreOptions};
        for format in [PACK_FORMAT_XCHACHA20, PACK_FORMAT] {
            for value in [0u8, 1, 2, 3, 0xff] {
                let what = format!("format {format}, byte 8 = {value}");
                let dir = tempfile::tempdir()?;
                let root = dir.path().join("s");
                let store = Store::create(
                    &root,
                    RepoId([2; 32]),
                    &RepoKey::from_bytes([1; 32]),
                    StoreOptions::default(),
                )?;
                let w = store.writer()?;
                let id = if format == PACK_FORMAT_XCHACHA20 {
                    let (id, stored) =
                        crate::object::seal(store.keys(), crate::object::ObjectKind::Chunk, b"some content");
                    let (bytes, _) = format1_pack(store.keys(), &[&stored]);
                    let name = format!("{}.pack", hex::encode(blake3::hash(&bytes).as_bytes()));
                    std::fs::write(root.join("packs").join(name), &bytes)?;
                    id
                } else {
                    let id = w.put_chunk(b"some content")?;
                    w.flush()?;
                    id
                };
                assert!(w.rebuild_index()?.is_empty());
                drop(w);
                let pack = std::fs::read_dir(root.join("packs"))?.next().ok_or("no pack")??.path();
                let mut bytes = std::fs::read(&pack)?;
                bytes[8] = value;
                std::fs::write(&pack, &bytes)?;
                let s = Store::open(&root, StoreOptions::default())?;
                assert_eq!(s.get_chunk(&id).map_err(|e| format!("{what}: {e}"))?, b"some content", "{what}");
                assert!(s.writer()?.rebuild_index()?.is_empty(), "{what}");
                assert_eq!(s.get_chunk(&id)?, b"some content", "{what}");
                let report = s.verify(&crate::verify::VerifyOptions { read_data: true })?;
                if value as u32 == format {
                    assert!(report.is_ok(), "{what}: {:?}", report.problems);
                } else {
                    assert_eq!(report.problems.len(), 1, "{what}: {:?}", report.problems);
                }
            }
        }
        Ok(())
    }

    /// The format-2 keystream as the `blake3` crate makes it directly,
    /// pinned: a change to the construction breaks every stored pack.
    #[test]
    fn format2_keystream_golden() {
        let keys = Keys::derive(&RepoKey::from_bytes([1; 32]));
        let key = blake3::derive_key("dbox 2026-12-03 pack body blake3 stream key v2", &[1; 32]);
        let mut expect = [0u8; 16];
        let mut r = blake3::Hasher::new_keyed(&key).update(&[9; NONCE_LEN]).finalize_xof();
        r.set_position(100);
        r.fill(&mut expect);
        let mut ks = [0u8; 16];
        apply_body_stream(&keys, &BodyStream { format: PACK_FORMAT, nonce: [9; NONCE_LEN] }, 136, &mut ks);
        assert_eq!(ks, expect);
        assert_eq!(hex::encode(ks), "806b23c709cddaa663c3d1e2751b68b3");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        /// Any span of a written pack's body, at any offset and length,
        /// reads back through the body keystream.
        #[test]
        fn any_span_reads_back(
            sizes in proptest::collection::vec(0usize..30_000, 1..40),
            spans in proptest::collection::vec((0.0f64..1.0, 0usize..20_000), 1..30),
        ) {
            let keys = Keys::derive(&RepoKey::from_bytes([5; 32]));
            let mut b = PackBuilder::new(&keys);
            for (i, n) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*n).map(|j| (j * 31 + i * 7) as u8).collect();
                b.push(ObjectId([i as u8; 32]), &data);
            }
            let tail = b.seal()?;
            let mut file = Vec::new();
            b.write_to(&tail, to_vec(&mut file))?;
            let body = read_body_stream(&Mem(file.clone()))?;
            let body_len = b.buf.len() - BODY_START;
            if body_len == 0 {
                return Ok(());
            }
            for (f, len) in spans {
                let start = BODY_START + ((f * body_len as f64) as usize).min(body_len - 1);
                let end = (start + len).min(b.buf.len());
                let mut got = file[start..end].to_vec();
                apply_body_stream(&keys, &body, start as u64, &mut got);
                proptest::prop_assert_eq!(&got[..], &b.buf[start..end]);
                let mut via = vec![0u8; end - start];
                keys.pack_body.xor_blake3_into(&body.nonce, (start - BODY_START) as u64, &file[start..end], &mut via);
                proptest::prop_assert_eq!(&via[..], &b.buf[start..end]);
            }
        }
    }

    #[test]
    fn padme_bounds() {
        for len in [0u64, 1, 2, 3, 100, 1000, 65_537, 1 << 25, (1 << 25) + 1, 40_000_000] {
            let p = padme(len);
            assert!(p >= len);
            assert!(p as f64 <= len as f64 * 1.12 + 1.0, "{len} -> {p}");
        }
        assert_eq!(padme((1 << 25) + 1), (1 << 25) + (1 << 20));
    }

    #[test]
    fn seal_and_read_back() -> Result<(), Box<dyn std::error::Error>> {
        let keys = Keys::derive(&RepoKey::from_bytes([1; 32]));
        let mut b = PackBuilder::new(&keys);
        let e1 = b.push(ObjectId([1; 32]), b"hello");
        let e2 = b.push(ObjectId([2; 32]), b"world!");
        assert_eq!(b.get(&e2), b"world!");
        let tail = b.seal()?;
        let mut bytes = Vec::new();
        let id = b.write_to(&tail, to_vec(&mut bytes))?;
        assert!(!bytes.windows(5).any(|w| w == b"hello"), "objects are hidden in the pack");
        let body = read_body_stream(&Mem(bytes.clone()))?;
        assert_eq!(body.format, PACK_FORMAT);
        let mut hello = bytes[e1.offset as usize..][..5].to_vec();
        apply_body_stream(&keys, &body, e1.offset, &mut hello);
        assert_eq!(hello, b"hello");
        // Writing the same pack again draws a new body nonce: no two files
        // share their body bytes.
        let mut again = Vec::new();
        b.write_to(&tail, to_vec(&mut again))?;
        assert_eq!(again.len(), bytes.len());
        assert_ne!(read_body_stream(&Mem(again.clone()))?.nonce, body.nonce);
        assert_ne!(again[BODY_START..BODY_START + 64], bytes[BODY_START..BODY_START + 64]);
        assert_eq!(read_header(&Mem(again), bytes.len() as u64, &keys)?, b.entries());
        assert_eq!(id.0, *blake3::hash(&bytes).as_bytes());
        assert_eq!(bytes.len() as u64, padme(bytes.len() as u64));
        let entries = b.entries().to_vec();
        assert_eq!(entries, vec![e1, e2]);
        let mem = Mem(bytes.clone());
        assert_eq!(read_header(&mem, bytes.len() as u64, &keys)?, entries);
        let other = Keys::derive(&RepoKey::from_bytes([2; 32]));
        assert!(read_header(&mem, bytes.len() as u64, &other).is_err());
        Ok(())
    }
}
