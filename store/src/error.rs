//! Errors of the store.
//!
//! [`StoreError`] carries the context a user needs (which object, which pack,
//! which file); [`DecodeError`] says what was wrong with bytes that failed to
//! decode and is wrapped with that context.

use std::io;
use std::path::PathBuf;

use crate::id::{ObjectId, PackId};
use crate::object::ObjectKind;

/// Why bytes could not be decoded. Display is lowercase, without a period.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: {what} needs {needed} bytes, {available} available")]
    Truncated {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A length or count above its limit.
    #[error("{what} of {size} exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A format version this build does not know.
    #[error("unsupported {what} format version {found}")]
    UnsupportedVersion {
        /// The structure.
        what: &'static str,
        /// The version found.
        found: u32,
    },
    /// Bad magic bytes.
    #[error("not a {what}: bad magic bytes")]
    BadMagic {
        /// The structure expected.
        what: &'static str,
    },
    /// The object is of another kind than expected.
    #[error("expected a {expected}, found {found}")]
    WrongKind {
        /// Kind expected.
        expected: ObjectKind,
        /// Kind byte found.
        found: String,
    },
    /// Authenticated decryption failed: wrong key, wrong kind, or tampering.
    #[error("decryption failed (wrong key, wrong kind, or damaged bytes)")]
    Decrypt,
    /// The ed25519 signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Bytes hash to another id than expected.
    #[error("hash mismatch: bytes hash to {actual}")]
    HashMismatch {
        /// What the bytes hash to.
        actual: String,
    },
    /// CBOR that does not decode to the expected structure.
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    /// Bytes after the end of the structure.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// Decompression failed.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A value that breaks a rule of the format.
    #[error("{0}")]
    Invalid(String),
    /// A name in a tree that is refused.
    #[error("refused name {name:?}: {reason}")]
    BadName {
        /// The name, lossily as UTF-8.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// The operation ("read", "write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process is the writer.
    #[error("another dbox process holds the lock{}: {}", pid.map(|p| format!(": pid {p}")).unwrap_or_default(), path.display())]
    Locked {
        /// The pid written in the lock file, if readable.
        pid: Option<u32>,
        /// The lock file.
        path: PathBuf,
    },
    /// The directory holds no store.
    #[error("no dbox store at {path}")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// `create` found a store already there.
    #[error("a dbox store already exists at {path}")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// The key file is damaged or of an unknown version.
    #[error("bad key file {path}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// No object with this id is in the store.
    #[error("object {id} not found")]
    NotFound {
        /// The id looked up.
        id: ObjectId,
    },
    /// An object failed to verify or decode.
    #[error("object {id}{} is damaged", pack.map(|p| format!(" in pack {p}")).unwrap_or_default())]
    CorruptObject {
        /// The object.
        id: ObjectId,
        /// The pack it was read from, if any.
        pack: Option<PackId>,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// A pack failed to verify or decode.
    #[error("pack {pack} is damaged")]
    CorruptPack {
        /// The pack.
        pack: PackId,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// An index segment is damaged; the index can be rebuilt from the packs.
    #[error("index segment {path} is damaged")]
    CorruptIndex {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// Bytes handed to the store are not a valid object (for example, a
    /// received object whose bytes do not match its id).
    #[error("invalid object")]
    InvalidObject {
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// Data too large for the format.
    #[error("{what} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes: {0}")]
    Random(String),
}

/// An error and its causes, joined with ": " (error types display only
/// themselves, never their source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}
