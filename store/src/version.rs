//! Versions: signed envelopes around a CBOR body.
//!
//! Body (CBOR, fields in this order):
//!
//! ```text
//! { "v": 1, "t": "version", "r": repository id, "p": [parent ids],
//!   "root": root tree id, "a": author public key, "q": author sequence number,
//!   "i": sealed info = nonce || XChaCha20-Poly1305(info key, CBOR
//!        { "v": 1, "m": message, "tm": unix milliseconds, "h": host },
//!        aad = "dbox version info v1" || repository id) }
//! ```
//!
//! The envelope layout is in the crate docs. [`SignedVersion::from_stored`]
//! verifies the signature over the exact received bytes with
//! `verify_strict` before it decodes the body; nothing is ever re-encoded to
//! be verified.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::crypto::Keys;
use crate::error::{DecodeError, StoreError};
use crate::id::{ObjectId, PeerId, RepoId, VersionId};
use crate::limits::{MAX_HOST_LEN, MAX_MESSAGE_LEN, MAX_PARENTS, MAX_VERSION_SIZE};
use crate::object::{ObjectKind, OBJECT_FORMAT};

/// Version body format version.
pub const VERSION_FORMAT: u32 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"dbox version v1\0";
const INFO_AAD: &[u8] = b"dbox version info v1";
const ENVELOPE_HEADER: usize = 2 + 32 + 64;

/// What a version says, with its member-only info still sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionBody {
    /// Repository this version belongs to.
    pub repo: RepoId,
    /// Parent versions, first parent first.
    pub parents: Vec<VersionId>,
    /// Root tree.
    pub root: ObjectId,
    /// Signing device.
    pub author: PeerId,
    /// The author's sequence number (one more than its previous version).
    pub seq: u64,
    /// `nonce || ciphertext` of the [`VersionInfo`].
    pub sealed_info: Vec<u8>,
}

/// Member-only details of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    #[serde(rename = "v")]
    format: u32,
    /// The commit message.
    #[serde(rename = "m")]
    pub message: String,
    /// Unix time in milliseconds.
    #[serde(rename = "tm")]
    pub time_ms: i64,
    /// Host name of the committing machine.
    #[serde(rename = "h")]
    pub host: String,
    /// Padding, so that the sealed size says little about the message.
    #[serde(rename = "p", default, with = "serde_bytes")]
    pad: Vec<u8>,
}

/// The sealed info's plaintext is padded to a multiple of this.
const INFO_PAD_TO: usize = 128;

impl VersionInfo {
    /// Makes an info block.
    pub fn new(message: impl Into<String>, time_ms: i64, host: impl Into<String>) -> Self {
        Self { format: VERSION_FORMAT, message: message.into(), time_ms, host: host.into(), pad: Vec::new() }
    }

    /// Encrypts this info for `repo`.
    pub fn seal(&self, keys: &Keys, repo: &RepoId) -> Result<Vec<u8>, StoreError> {
        if self.message.len() > MAX_MESSAGE_LEN || self.host.len() > MAX_HOST_LEN {
            return Err(StoreError::TooLarge {
                what: "version message or host",
                size: self.message.len().max(self.host.len()) as u64,
                limit: MAX_MESSAGE_LEN as u64,
            });
        }
        let mut padded = self.clone();
        let mut plain = cbor::encode(&padded);
        // The CBOR length of the pad grows in steps; some pad length lands on
        // a multiple within a few hundred tries.
        for n in 0..(4 * INFO_PAD_TO) {
            if plain.len().is_multiple_of(INFO_PAD_TO) {
                break;
            }
            padded.pad = vec![0; n + 1];
            plain = cbor::encode(&padded);
        }
        keys.info.seal_random(&info_aad(repo), &plain)
    }

    /// Decrypts the info of a version of `repo`.
    pub fn open(keys: &Keys, repo: &RepoId, sealed: &[u8]) -> Result<Self, DecodeError> {
        let plain = keys.info.open(&info_aad(repo), sealed)?;
        let info: Self =
            cbor::decode("version info", &plain, MAX_MESSAGE_LEN + MAX_HOST_LEN + 64 + 4 * INFO_PAD_TO)?;
        if info.format != VERSION_FORMAT {
            return Err(DecodeError::UnsupportedVersion { what: "version info", found: info.format });
        }
        if info.message.len() > MAX_MESSAGE_LEN || info.host.len() > MAX_HOST_LEN {
            return Err(DecodeError::Invalid("version message or host too long".into()));
        }
        Ok(Self { pad: Vec::new(), ..info })
    }
}

fn info_aad(repo: &RepoId) -> Vec<u8> {
    [INFO_AAD, repo.as_bytes()].concat()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBody {
    v: u32,
    t: String,
    r: RepoId,
    p: Vec<VersionId>,
    root: ObjectId,
    a: PeerId,
    q: u64,
    i: serde_bytes::ByteBuf,
}

/// A version as stored: verified envelope bytes and the decoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVersion {
    id: VersionId,
    stored: Vec<u8>,
    body: VersionBody,
}

impl SignedVersion {
    /// Signs `body` with the author's key. The key must match `body.author`.
    pub fn sign(body: VersionBody, key: &SigningKey) -> Result<Self, StoreError> {
        if key.verifying_key().to_bytes() != body.author.0 {
            return Err(StoreError::InvalidObject {
                source: DecodeError::Invalid("signing key does not match the version's author".into()),
            });
        }
        check_body(&body).map_err(|source| StoreError::InvalidObject { source })?;
        let wire = WireBody {
            v: VERSION_FORMAT,
            t: "version".into(),
            r: body.repo,
            p: body.parents.clone(),
            root: body.root,
            a: body.author,
            q: body.seq,
            i: serde_bytes::ByteBuf::from(body.sealed_info.clone()),
        };
        let body_bytes = cbor::encode(&wire);
        if body_bytes.len() > MAX_VERSION_SIZE {
            return Err(StoreError::TooLarge {
                what: "version body",
                size: body_bytes.len() as u64,
                limit: MAX_VERSION_SIZE as u64,
            });
        }
        let sig = key.sign(&[SIGNATURE_DOMAIN, &body_bytes].concat());
        let mut stored = Vec::with_capacity(ENVELOPE_HEADER + body_bytes.len());
        stored.extend_from_slice(&[OBJECT_FORMAT, ObjectKind::Version as u8]);
        stored.extend_from_slice(&body.author.0);
        stored.extend_from_slice(&sig.to_bytes());
        stored.extend_from_slice(&body_bytes);
        let id = VersionId(ObjectId::of(&stored).0);
        Ok(Self { id, stored, body })
    }

    /// Verifies and decodes stored envelope bytes: format, kind, strict
    /// signature over the exact body bytes, then the body.
    pub fn from_stored(stored: &[u8]) -> Result<Self, DecodeError> {
        if stored.len() < ENVELOPE_HEADER {
            return Err(DecodeError::Truncated {
                what: "version envelope",
                needed: ENVELOPE_HEADER,
                available: stored.len(),
            });
        }
        let kind = ObjectKind::of_stored(stored)?;
        if kind != ObjectKind::Version {
            return Err(DecodeError::WrongKind { expected: ObjectKind::Version, found: kind.to_string() });
        }
        let body_bytes = &stored[ENVELOPE_HEADER..];
        if body_bytes.len() > MAX_VERSION_SIZE {
            return Err(DecodeError::TooLarge {
                what: "version body",
                size: body_bytes.len() as u64,
                limit: MAX_VERSION_SIZE as u64,
            });
        }
        let author: [u8; 32] = stored[2..34].try_into().map_err(|_| DecodeError::BadSignature)?;
        let sig: [u8; 64] = stored[34..98].try_into().map_err(|_| DecodeError::BadSignature)?;
        let vk = VerifyingKey::from_bytes(&author).map_err(|_| DecodeError::BadSignature)?;
        vk.verify_strict(&[SIGNATURE_DOMAIN, body_bytes].concat(), &Signature::from_bytes(&sig))
            .map_err(|_| DecodeError::BadSignature)?;
        let wire: WireBody = cbor::decode("version body", body_bytes, MAX_VERSION_SIZE)?;
        if wire.v != VERSION_FORMAT {
            return Err(DecodeError::UnsupportedVersion { what: "version", found: wire.v });
        }
        if wire.t != "version" {
            return Err(DecodeError::Invalid(format!("version body tagged {:?}", wire.t)));
        }
        if wire.a.0 != author {
            return Err(DecodeError::Invalid("envelope and body name different authors".into()));
        }
        let body = VersionBody {
            repo: wire.r,
            parents: wire.p,
            root: wire.root,
            author: wire.a,
            seq: wire.q,
            sealed_info: wire.i.into_vec(),
        };
        check_body(&body)?;
        Ok(Self { id: VersionId(ObjectId::of(stored).0), stored: stored.to_vec(), body })
    }

    /// The version's id.
    pub fn id(&self) -> VersionId {
        self.id
    }

    /// The stored envelope bytes.
    pub fn stored(&self) -> &[u8] {
        &self.stored
    }

    /// The verified body.
    pub fn body(&self) -> &VersionBody {
        &self.body
    }

    /// Decrypts the member-only info.
    pub fn info(&self, keys: &Keys) -> Result<VersionInfo, DecodeError> {
        VersionInfo::open(keys, &self.body.repo, &self.body.sealed_info)
    }
}

fn check_body(body: &VersionBody) -> Result<(), DecodeError> {
    if body.parents.len() > MAX_PARENTS {
        return Err(DecodeError::TooLarge {
            what: "parent count",
            size: body.parents.len() as u64,
            limit: MAX_PARENTS as u64,
        });
    }
    let mut sorted = body.parents.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != body.parents.len() {
        return Err(DecodeError::Invalid("duplicate parent".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RepoKey;

    fn fixture() -> Result<(SigningKey, Keys, SignedVersion), StoreError> {
        let sk = SigningKey::from_bytes(&[9; 32]);
        let keys = Keys::derive(&RepoKey::from_bytes([3; 32]));
        let repo = RepoId([1; 32]);
        let info = VersionInfo::new("first", 1_700_000_000_000, "host");
        let body = VersionBody {
            repo,
            parents: vec![VersionId([4; 32])],
            root: ObjectId([5; 32]),
            author: PeerId(sk.verifying_key().to_bytes()),
            seq: 1,
            sealed_info: info.seal(&keys, &repo)?,
        };
        let v = SignedVersion::sign(body, &sk)?;
        Ok((sk, keys, v))
    }

    #[test]
    fn sign_verify_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let (_, keys, v) = fixture()?;
        let back = SignedVersion::from_stored(v.stored())?;
        assert_eq!(back, v);
        assert_eq!(back.info(&keys)?.message, "first");
        Ok(())
    }

    #[test]
    fn every_flipped_bit_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (_, _, v) = fixture()?;
        for i in 0..v.stored().len() {
            for bit in [0x01u8, 0x80] {
                let mut s = v.stored().to_vec();
                s[i] ^= bit;
                assert!(SignedVersion::from_stored(&s).is_err(), "byte {i} bit {bit}");
            }
        }
        Ok(())
    }

    #[test]
    fn wrong_author_key_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (_, _, v) = fixture()?;
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(SignedVersion::sign(v.body().clone(), &other).is_err());
        Ok(())
    }
}
