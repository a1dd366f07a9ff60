//! The key file: repository id and repo key, with a check value.
//!
//! Layout (108 bytes): magic `DBOXKEY\0`, format version u32 LE (1),
//! repository id (32), repo key (32), BLAKE3 of the 76 bytes before (32).

use crate::crypto::RepoKey;
use crate::error::DecodeError;
use crate::id::RepoId;

const KEY_MAGIC: &[u8; 8] = b"DBOXKEY\0";
const KEY_FORMAT: u32 = 1;
/// Length of a key file.
pub const KEY_FILE_LEN: usize = 8 + 4 + 32 + 32 + 32;

/// Encodes a key file.
pub fn encode_key_file(repo: &RepoId, key: &RepoKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(KEY_FILE_LEN);
    b.extend_from_slice(KEY_MAGIC);
    b.extend_from_slice(&KEY_FORMAT.to_le_bytes());
    b.extend_from_slice(repo.as_bytes());
    b.extend_from_slice(key.expose_secret());
    let check = blake3::hash(&b);
    b.extend_from_slice(check.as_bytes());
    b
}

/// Decodes and checks a key file.
pub fn decode_key_file(b: &[u8]) -> Result<(RepoId, RepoKey), DecodeError> {
    if b.len() < 12 {
        return Err(DecodeError::Truncated { what: "key file", needed: KEY_FILE_LEN, available: b.len() });
    }
    if &b[..8] != KEY_MAGIC {
        return Err(DecodeError::BadMagic { what: "key file" });
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != KEY_FORMAT {
        return Err(DecodeError::UnsupportedVersion { what: "key file", found: version });
    }
    if b.len() != KEY_FILE_LEN {
        return Err(DecodeError::Invalid(format!("key file is {} bytes, not {KEY_FILE_LEN}", b.len())));
    }
    if blake3::hash(&b[..76]).as_bytes() != &b[76..] {
        return Err(DecodeError::HashMismatch { actual: "key file check".into() });
    }
    let repo = RepoId::from_slice(&b[12..44]).ok_or(DecodeError::Invalid("repository id".into()))?;
    let key: [u8; 32] = b[44..76].try_into().map_err(|_| DecodeError::Invalid("repo key".into()))?;
    Ok((repo, RepoKey::from_bytes(key)))
}
