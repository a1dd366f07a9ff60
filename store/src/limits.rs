//! Every size limit of the store's decoders, in one place.
//!
//! Anything read from disk or from a peer is checked against these before a
//! byte is allocated for it.

/// Smallest chunk FastCDC cuts (except a file's last).
pub const CHUNK_MIN: u32 = 256 * 1024;
/// Average chunk size FastCDC aims for.
pub const CHUNK_AVG: u32 = 1024 * 1024;
/// Largest chunk FastCDC cuts.
pub const CHUNK_MAX: u32 = 4 * 1024 * 1024;

/// Largest chunk payload accepted by `put_chunk` or after decompression.
pub const MAX_CHUNK_SIZE: usize = 8 * 1024 * 1024;
/// Largest tree plaintext (CBOR) accepted, before or after decompression.
pub const MAX_TREE_SIZE: usize = 64 * 1024 * 1024;
/// Largest version body (CBOR) accepted.
pub const MAX_VERSION_SIZE: usize = 1024 * 1024;
/// Largest stored object of any kind.
pub const MAX_OBJECT_SIZE: usize = MAX_TREE_SIZE + 1024;

/// Most entries in one tree.
pub const MAX_TREE_ENTRIES: usize = 1_000_000;
/// Longest name of a tree entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest path (and symlink target), in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Most parents of one version.
pub const MAX_PARENTS: usize = 64;
/// Longest version message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Longest host name in a version, in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// Deepest CBOR nesting any decoder accepts.
pub const MAX_CBOR_DEPTH: usize = 16;

/// A pack is sealed once its objects reach this many bytes.
pub const PACK_TARGET_SIZE: usize = 32 * 1024 * 1024;
/// Largest pack file accepted when reading.
pub const MAX_PACK_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Most objects in one pack.
pub const MAX_PACK_OBJECTS: usize = 4_000_000;

/// Most packs one index segment may name.
pub const MAX_SEGMENT_PACKS: usize = 1 << 20;
/// Most entries one index segment may hold.
pub const MAX_SEGMENT_ENTRIES: u64 = 1 << 32;
/// Fewest and most fanout bits of an index segment.
pub const MIN_FANOUT_BITS: u32 = 8;
/// See [`MIN_FANOUT_BITS`].
pub const MAX_FANOUT_BITS: u32 = 20;
/// Segments of one tier merged together.
pub const SEGMENT_MERGE_FANIN: usize = 4;
