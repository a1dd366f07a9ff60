//! Stored objects: kinds, compression, encryption, and their inverse.
//!
//! See the crate docs for the byte layout. [`seal`] turns a plaintext payload
//! into stored bytes and its id; [`open`] checks and reverses it. Both are pure
//! functions of the keys and the bytes: no I/O.

use std::fmt;

use crate::crypto::{Keys, NONCE_LEN, TAG_LEN};
use crate::error::DecodeError;
use crate::id::ObjectId;
use crate::limits::{MAX_CHUNK_SIZE, MAX_OBJECT_SIZE, MAX_TREE_SIZE};

/// Object format version written in byte 0 of every stored object.
pub const OBJECT_FORMAT: u8 = 1;
/// Bytes before the ciphertext of an encrypted object.
pub const SEALED_HEADER_LEN: usize = 2 + NONCE_LEN;
/// Fixed overhead of an encrypted object over its plaintext payload.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + 1 + TAG_LEN;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// zstd level for chunks and trees: level 3 compresses text about 3.5:1 at
/// roughly 0.1 GB/s per thread here, and random data never reaches it (see
/// [`worth_compressing`]).
pub const ZSTD_LEVEL: i32 = 3;
/// Payloads below this size are stored uncompressed.
const MIN_COMPRESS_LEN: usize = 128;
/// Size of the sample that decides whether a chunk is compressed.
const SAMPLE_LEN: usize = 16 * 1024;

/// The kind of a stored object, byte 1 of its stored bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A piece of a file.
    Chunk = 1,
    /// One directory of one version.
    Tree = 2,
    /// A signed version envelope.
    Version = 3,
}

impl ObjectKind {
    /// The kind for a kind byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Chunk),
            2 => Some(Self::Tree),
            3 => Some(Self::Version),
            _ => None,
        }
    }

    /// The kind of some stored bytes, checking the format byte.
    pub fn of_stored(stored: &[u8]) -> Result<Self, DecodeError> {
        if stored.len() < 2 {
            return Err(DecodeError::Truncated { what: "object", needed: 2, available: stored.len() });
        }
        if stored[0] != OBJECT_FORMAT {
            return Err(DecodeError::UnsupportedVersion { what: "object", found: stored[0].into() });
        }
        Self::from_byte(stored[1])
            .ok_or_else(|| DecodeError::Invalid(format!("unknown object kind {}", stored[1])))
    }

    /// The largest payload an object of this kind may have.
    pub fn payload_limit(self) -> usize {
        match self {
            Self::Chunk => MAX_CHUNK_SIZE,
            Self::Tree => MAX_TREE_SIZE,
            Self::Version => crate::limits::MAX_VERSION_SIZE,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Chunk => "chunk",
            Self::Tree => "tree",
            Self::Version => "version",
        })
    }
}

thread_local! {
    /// zstd contexts are costly to make (they allocate their windows), so
    /// each thread keeps one per level instead of one per object.
    static SAMPLER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress_with(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>>>,
    level: i32,
    data: &[u8],
) -> Option<Vec<u8>> {
    slot.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(level).ok();
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// Decides cheaply whether compressing `data` pays: compresses a sample at
/// zstd's fastest level and keeps compression only if the sample shrinks by
/// at least 1/8. Random or already-compressed data (photos, video, archives)
/// then costs one small sample, not a full zstd pass.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() < MIN_COMPRESS_LEN {
        return false;
    }
    let sample = if data.len() > SAMPLE_LEN {
        let mid = data.len() / 2 - SAMPLE_LEN / 2;
        &data[mid..mid + SAMPLE_LEN]
    } else {
        data
    };
    match compress_with(&SAMPLER, 1, sample) {
        Some(c) => c.len() * 8 < sample.len() * 7,
        None => false,
    }
}

/// Encodes `payload` as an encrypted object of `kind` (chunk or tree) and
/// returns its id and stored bytes.
///
/// # Panics
/// If `kind` is [`ObjectKind::Version`]: versions are signed, see
/// [`crate::version`].
pub fn seal(keys: &Keys, kind: ObjectKind, payload: &[u8]) -> (ObjectId, Vec<u8>) {
    let key = match kind {
        ObjectKind::Chunk => &keys.chunk,
        ObjectKind::Tree => &keys.tree,
        ObjectKind::Version => panic!("versions are signed, not sealed"),
    };
    let compressed = if worth_compressing(payload) {
        compress_with(&COMPRESSOR, ZSTD_LEVEL, payload).filter(|c| c.len() < payload.len())
    } else {
        None
    };
    let (flag, body): (u8, &[u8]) = match &compressed {
        Some(c) => (COMPRESSION_ZSTD, c),
        None => (COMPRESSION_NONE, payload),
    };
    let head = [OBJECT_FORMAT, kind as u8];
    let mut h = blake3::Hasher::new_keyed(&keys.nonce.0);
    h.update(&[kind as u8, flag]);
    h.update(body);
    let mut nonce = [0u8; NONCE_LEN];
    h.finalize_xof().fill(&mut nonce);

    let mut out = Vec::with_capacity(SEALED_OVERHEAD + body.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&nonce);
    out.push(flag);
    out.extend_from_slice(body);
    let tag = key.seal_in_place(&nonce, &head, &mut out[SEALED_HEADER_LEN..]);
    out.extend_from_slice(&tag);
    (ObjectId::of(&out), out)
}

/// Stored bytes known to hash to their id. Made only by [`Checked::new`],
/// which hashes them, or [`Checked::seal`], which makes them; so a store
/// takes them ([`crate::Writer::put_checked`]) without hashing them again.
#[derive(Clone, PartialEq, Eq)]
pub struct Checked {
    id: ObjectId,
    stored: Vec<u8>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked").field("id", &self.id).field("len", &self.stored.len()).finish()
    }
}

impl Checked {
    /// Checks that `stored` hashes to `id`.
    pub fn new(id: ObjectId, stored: Vec<u8>) -> Result<Self, DecodeError> {
        check_id(&id, &stored)?;
        Ok(Self { id, stored })
    }

    /// Encodes `payload` as [`seal`] does.
    ///
    /// # Panics
    /// As [`seal`]: if `kind` is [`ObjectKind::Version`].
    pub fn seal(keys: &Keys, kind: ObjectKind, payload: &[u8]) -> Self {
        let (id, stored) = seal(keys, kind, payload);
        Self { id, stored }
    }

    /// The id.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.stored
    }

    /// The stored bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.stored
    }
}

/// Checks that `stored` hashes to `id`.
pub fn check_id(id: &ObjectId, stored: &[u8]) -> Result<(), DecodeError> {
    let actual = ObjectId::of(stored);
    if actual != *id {
        return Err(DecodeError::HashMismatch { actual: actual.to_string() });
    }
    Ok(())
}

/// Checks the kind of `stored` and decrypts and decompresses it, returning
/// the payload. The caller has already checked the id.
pub fn open(keys: &Keys, expected: ObjectKind, stored: &[u8]) -> Result<Vec<u8>, DecodeError> {
    // Checked before the copy, so an oversized input is not copied.
    check_len(stored)?;
    open_owned(keys, expected, stored.to_vec())
}

fn check_len(stored: &[u8]) -> Result<(), DecodeError> {
    if stored.len() > MAX_OBJECT_SIZE {
        return Err(DecodeError::TooLarge {
            what: "object",
            size: stored.len() as u64,
            limit: MAX_OBJECT_SIZE as u64,
        });
    }
    if stored.len() < SEALED_OVERHEAD {
        return Err(DecodeError::Truncated {
            what: "encrypted object",
            needed: SEALED_OVERHEAD,
            available: stored.len(),
        });
    }
    Ok(())
}

/// A payload, decrypted in the buffer that held the stored object: one
/// stored without compression stays where it lies in that buffer, behind
/// the header, rather than be moved to the front of it (a copy of every
/// incompressible chunk a checkout writes).
#[derive(Clone)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

/// Only the payload's bytes count, not where they lie.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

impl Payload {
    /// The payload as a vector of its own bytes (moved to the front first,
    /// if they are behind a header).
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
        }
        self.buf
    }
}

impl From<Vec<u8>> for Payload {
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Payload {
    fn eq(&self, other: &&[u8; N]) -> bool {
        **self == other[..]
    }
}

impl PartialEq<Vec<u8>> for Payload {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

/// As [`open`], decrypting in `stored` itself, with no copy first.
pub fn open_owned(keys: &Keys, expected: ObjectKind, stored: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    open_in_place(keys, expected, stored).map(Payload::into_vec)
}

/// As [`open_owned`], leaving a payload stored without compression where
/// it lies in `stored` ([`Payload`]).
pub fn open_in_place(keys: &Keys, expected: ObjectKind, mut stored: Vec<u8>) -> Result<Payload, DecodeError> {
    check_len(&stored)?;
    let kind = ObjectKind::of_stored(&stored)?;
    if kind != expected {
        return Err(DecodeError::WrongKind { expected, found: kind.to_string() });
    }
    let key = match kind {
        ObjectKind::Chunk => &keys.chunk,
        ObjectKind::Tree => &keys.tree,
        ObjectKind::Version => return Err(DecodeError::Invalid("versions are not encrypted objects".into())),
    };
    let end = stored.len() - TAG_LEN;
    {
        let (prefix, rest) = stored.split_at_mut(SEALED_HEADER_LEN);
        let (head, nonce) = prefix.split_at(2);
        let (ct, tag) = rest.split_at_mut(end - SEALED_HEADER_LEN);
        keys_open(key, nonce, head, ct, tag)?;
    }
    // The plaintext: a compression flag, then the body.
    let flag = stored[SEALED_HEADER_LEN];
    let body = SEALED_HEADER_LEN + 1..end;
    let limit = kind.payload_limit();
    match flag {
        COMPRESSION_NONE => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge {
                    what: "payload",
                    size: body.len() as u64,
                    limit: limit as u64,
                });
            }
            stored.truncate(body.end);
            Ok(Payload { buf: stored, start: body.start })
        }
        COMPRESSION_ZSTD => decompress_bounded(&stored[body], limit).map(Payload::from),
        other => Err(DecodeError::Invalid(format!("unknown compression {other}"))),
    }
}

fn keys_open(
    key: &crate::crypto::AeadKey,
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), DecodeError> {
    key.open_in_place(nonce, aad, buf, tag)
}

/// Decompresses a zstd frame whose declared content size must be present and
/// at most `limit`; allocates exactly that size.
fn decompress_bounded(frame: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(DecodeError::Decompress("frame without content size".into())),
        Err(_) => return Err(DecodeError::Decompress("not a zstd frame".into())),
    };
    if declared > limit as u64 {
        return Err(DecodeError::TooLarge {
            what: "decompressed payload",
            size: declared,
            limit: limit as u64,
        });
    }
    let out = DECOMPRESSOR.with(|cell| {
        let mut d = cell.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| DecodeError::Decompress(e.to_string()))?);
        }
        match d.as_mut() {
            Some(d) => {
                d.decompress(frame, declared as usize).map_err(|e| DecodeError::Decompress(e.to_string()))
            }
            None => Err(DecodeError::Decompress("no decompressor".into())),
        }
    })?;
    if out.len() as u64 != declared {
        return Err(DecodeError::Decompress("content size does not match the frame header".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RepoKey;

    fn keys(b: u8) -> Keys {
        Keys::derive(&RepoKey::from_bytes([b; 32]))
    }

    /// Guards against two payloads of the same bytes comparing unequal
    /// because one lies behind its header (the derived comparison looked at
    /// the whole buffer and the offset).
    #[test]
    fn payloads_compare_by_their_bytes_only() -> Result<(), DecodeError> {
        let k = keys(1);
        let random: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let here = open_in_place(&k, ObjectKind::Chunk, seal(&k, ObjectKind::Chunk, &random).1)?;
        assert_eq!(here, random);
        assert_eq!(here, Payload::from(random.clone()), "the same bytes");
        let empty = open_in_place(&k, ObjectKind::Chunk, seal(&k, ObjectKind::Chunk, b"").1)?;
        assert_eq!(empty, Payload::from(Vec::new()), "empty");
        Ok(())
    }

    #[test]
    fn round_trip_text_and_random() -> Result<(), DecodeError> {
        let k = keys(1);
        let text = b"hello world ".repeat(1000);
        let (id, stored) = seal(&k, ObjectKind::Chunk, &text);
        assert!(stored.len() < text.len() / 4, "text is compressed");
        check_id(&id, &stored)?;
        assert_eq!(open(&k, ObjectKind::Chunk, &stored)?, text);
        let checked = Checked::seal(&k, ObjectKind::Chunk, &text);
        assert_eq!((checked.id(), checked.bytes()), (&id, &stored[..]));
        assert_eq!(Checked::new(id, stored.clone())?, checked);
        let mut bad = stored;
        bad[40] ^= 1;
        assert!(matches!(Checked::new(id, bad), Err(DecodeError::HashMismatch { .. })));
        let random: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (_, stored) = seal(&k, ObjectKind::Chunk, &random);
        assert_eq!(open(&k, ObjectKind::Chunk, &stored)?, random);
        // In its own buffer: the same payloads, compressed or not.
        assert_eq!(open_owned(&k, ObjectKind::Chunk, stored.clone())?, random);
        // In place: the same bytes, behind the header, and the same once moved.
        let here = open_in_place(&k, ObjectKind::Chunk, stored.clone())?;
        assert_eq!(here, random);
        assert_eq!(here.clone().into_vec(), random);
        assert_eq!(open_in_place(&k, ObjectKind::Chunk, seal(&k, ObjectKind::Chunk, &text).1)?, text);
        assert_eq!(open_owned(&k, ObjectKind::Chunk, seal(&k, ObjectKind::Chunk, &text).1)?, text);
        assert_eq!(open_owned(&k, ObjectKind::Chunk, seal(&k, ObjectKind::Chunk, b"").1)?, b"");
        for at in [0, 2, SEALED_HEADER_LEN, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 1;
            assert!(open_owned(&k, ObjectKind::Chunk, bad).is_err(), "a flip at {at}");
        }
        assert!(open_owned(&k, ObjectKind::Tree, stored.clone()).is_err(), "the wrong kind");
        assert!(open_owned(&k, ObjectKind::Chunk, stored[..SEALED_OVERHEAD - 1].to_vec()).is_err());
        Ok(())
    }

    #[test]
    fn deterministic_per_key() {
        let (a, _) = seal(&keys(1), ObjectKind::Chunk, b"same bytes");
        let (b, _) = seal(&keys(1), ObjectKind::Chunk, b"same bytes");
        let (c, _) = seal(&keys(2), ObjectKind::Chunk, b"same bytes");
        let (d, _) = seal(&keys(1), ObjectKind::Tree, b"same bytes");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn kind_cannot_be_swapped() {
        let k = keys(1);
        let (_, mut stored) = seal(&k, ObjectKind::Chunk, b"a chunk");
        assert!(matches!(open(&k, ObjectKind::Tree, &stored), Err(DecodeError::WrongKind { .. })));
        stored[1] = ObjectKind::Tree as u8;
        assert!(matches!(open(&k, ObjectKind::Tree, &stored), Err(DecodeError::Decrypt)));
    }

    #[test]
    fn wrong_key_fails() {
        let (_, stored) = seal(&keys(1), ObjectKind::Chunk, b"secret");
        assert!(matches!(open(&keys(2), ObjectKind::Chunk, &stored), Err(DecodeError::Decrypt)));
    }
}
