//! Bounded CBOR decoding shared by every decoder of the crate.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::DecodeError;
use crate::limits::MAX_CBOR_DEPTH;

/// Decodes exactly one CBOR item filling all of `bytes`, refusing input over
/// `limit` bytes and nesting deeper than [`MAX_CBOR_DEPTH`].
///
/// Byte strings are decoded into the scratch-backed visitor of ciborium, so a
/// length prefix larger than the input fails on the short read rather than
/// allocating what it claims.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { what, size: bytes.len() as u64, limit: limit as u64 });
    }
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_CBOR_DEPTH)
        .map_err(|e| DecodeError::Cbor(format!("{what}: {e}")))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a value as CBOR. Field order is the declaration order, so equal
/// values always give equal bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}
