//! Helpers shared by the fuzz targets of `dbox-store`.
//!
//! Most decoders of the store sit behind a signature or authenticated
//! encryption, which a mutation fuzzer never gets past. [`Forge`] derives the
//! store's keys from the repo key as the format specification says (BLAKE3
//! `derive_key`, one context string per purpose) so that a target can seal
//! fuzz-chosen plaintexts and reach the code behind the seal. The context
//! strings repeat those of `store/src/crypto.rs`; [`Forge::new`] checks
//! against the store itself that they still agree and panics if not, so a
//! change there cannot silently make the targets shallow.
//!
//! This crate is not part of the main workspace; it is built by
//! `cargo fuzz` (see the README).

use std::io;
use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dbox_store::pack::{PackBuilder, BODY_START, PACK_FORMAT, PACK_MAGIC};
use dbox_store::vfs::ReadAt;
use dbox_store::{object, Keys, ObjectId, ObjectKind, RepoKey};
use ed25519_dalek::{Signer, SigningKey};

/// The repo key every target uses.
pub const REPO_KEY: [u8; 32] = [7; 32];
/// Secret key of the author that signs forged versions.
pub const AUTHOR_KEY: [u8; 32] = [9; 32];

const CTX_CHUNK: &str = "dbox 2026-11-22 chunk encryption key v1";
const CTX_TREE: &str = "dbox 2026-11-22 tree encryption key v1";
const CTX_PACK: &str = "dbox 2026-11-22 pack header key v1";
const NONCE_LEN: usize = 24;
const PACK_HEADER_AAD: &[u8] = b"dbox pack header v1";
const PACK_TRAILER_AAD: &[u8] = b"dbox pack trailer v1";
const VERSION_SIGNATURE_DOMAIN: &[u8] = b"dbox version v1\0";

/// The keys derived from [`REPO_KEY`], derived once per process.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::derive(&RepoKey::from_bytes(REPO_KEY)))
}

/// The forger, built and checked once per process.
pub fn forge() -> &'static Forge {
    static FORGE: OnceLock<Forge> = OnceLock::new();
    FORGE.get_or_init(Forge::new)
}

/// A file held in memory, for decoders that read through [`ReadAt`].
pub struct Mem(pub Vec<u8>);

impl ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::other("offset overflow"))?;
        let src = self.0.get(start..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// Reads fuzz input as little-endian numbers and byte runs; past the end
/// every read gives zeros or an empty slice.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.take(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.take(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.take(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }
}

/// Seals arbitrary plaintexts the way the store does, with keys derived from
/// [`REPO_KEY`].
pub struct Forge {
    chunk: XChaCha20Poly1305,
    tree: XChaCha20Poly1305,
    pack: XChaCha20Poly1305,
}

impl Default for Forge {
    fn default() -> Self {
        Self::new()
    }
}

fn cipher(context: &str) -> XChaCha20Poly1305 {
    let k = blake3::derive_key(context, &REPO_KEY);
    XChaCha20Poly1305::new((&k).into())
}

fn seal(cipher: &XChaCha20Poly1305, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(*nonce), aad, buf.as_mut_slice().into())
        .expect("fuzz inputs are far below the AEAD's limit");
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len() + tag.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn pack_aad(label: &[u8], format: u32) -> Vec<u8> {
    [label, PACK_MAGIC, &format.to_le_bytes()].concat()
}

impl Forge {
    /// Derives the keys and checks them against the store.
    ///
    /// # Panics
    /// If the store no longer opens what this forges: the context strings or
    /// layouts here are out of date.
    pub fn new() -> Self {
        let f = Self { chunk: cipher(CTX_CHUNK), tree: cipher(CTX_TREE), pack: cipher(CTX_PACK) };
        for kind in [ObjectKind::Chunk, ObjectKind::Tree] {
            let stored = f.object(kind, &[3; NONCE_LEN], b"\0forged");
            let opened = object::open(keys(), kind, &stored);
            assert_eq!(opened.ok().as_deref(), Some(&b"forged"[..]), "forged {kind} no longer opens");
        }
        let mut b = PackBuilder::new(keys());
        b.push(ObjectId([1; 32]), b"object");
        let mut header = Vec::new();
        header.extend_from_slice(&PACK_FORMAT.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&[1; 32]);
        header.extend_from_slice(&(BODY_START as u64).to_le_bytes());
        header.extend_from_slice(&6u32.to_le_bytes());
        let file = f.pack_file(&pack_bytes(&b, &[]), &header, 5, None);
        let read = dbox_store::pack::read_header(&Mem(file.clone()), file.len() as u64, keys());
        assert_eq!(read.ok().as_deref(), Some(b.entries()), "forged pack header no longer reads");
        f
    }

    /// Stored bytes of an encrypted object of `kind` (chunk or tree) whose
    /// plaintext (compression flag and payload) is `plain`.
    pub fn object(&self, kind: ObjectKind, nonce: &[u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
        let cipher = if kind == ObjectKind::Tree { &self.tree } else { &self.chunk };
        let head = [1, kind as u8];
        [&head[..], &seal(cipher, nonce, &head, plain)].concat()
    }

    /// A pack file: `objects` (prefix and body nonce included), the header
    /// sealed from `header_plain`, `pad` bytes of padding, and a trailer that
    /// points at the header, or holds `trailer` (offset, length) when given.
    /// Header and trailer are sealed for the format the prefix in `objects`
    /// states (the current one when `objects` is too short to state one).
    pub fn pack_file(
        &self,
        objects: &[u8],
        header_plain: &[u8],
        pad: usize,
        trailer: Option<(u64, u64)>,
    ) -> Vec<u8> {
        let format = objects.get(8..12).map_or(PACK_FORMAT, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let header = seal(&self.pack, &[1; NONCE_LEN], &pack_aad(PACK_HEADER_AAD, format), header_plain);
        let (offset, len) = trailer.unwrap_or((objects.len() as u64, header.len() as u64));
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&offset.to_le_bytes());
        t[8..].copy_from_slice(&len.to_le_bytes());
        let trailer = seal(&self.pack, &[2; NONCE_LEN], &pack_aad(PACK_TRAILER_AAD, format), &t);
        let mut out = objects.to_vec();
        out.extend_from_slice(&header);
        out.resize(out.len() + pad, 0xa5);
        out.extend_from_slice(&trailer);
        out
    }
}

/// The bytes a pack builder writes (the body under its keystream) followed
/// by `tail`.
pub fn pack_bytes(b: &PackBuilder, tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + tail.len());
    b.write_to(tail, |len, fill| {
        let at = out.len();
        out.resize(at + len, 0);
        fill(0, &mut out[at..]);
        Ok(())
    })
    .expect("writing to memory cannot fail");
    out
}

/// The signing key of forged versions.
pub fn author() -> SigningKey {
    SigningKey::from_bytes(&AUTHOR_KEY)
}

/// A version envelope around `body`, correctly signed by [`author`].
pub fn sign_envelope(body: &[u8]) -> Vec<u8> {
    let sk = author();
    let sig = sk.sign(&[VERSION_SIGNATURE_DOMAIN, body].concat());
    let mut out = vec![1, ObjectKind::Version as u8];
    out.extend_from_slice(&sk.verifying_key().to_bytes());
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(body);
    out
}
