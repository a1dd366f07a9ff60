//! Membership: which devices may sign versions of a repository.
//!
//! Membership is replicated state. It is a set of signed records, each
//! saying "device M is a member of repository R", signed by a device that
//! was already a member. The first record (the genesis) is signed by the
//! device that made the repository, naming itself. A record is accepted
//! only when its signer is already a member, so the set is the closure of
//! the genesis under "signed by a member"; records arrive in any order and
//! every member ends with the same set.
//!
//! A record is the envelope `CBOR [body: bytes, signature: bytes(64)]`; the
//! signature is ed25519 over `"dbox member v1\0" || body`, verified strictly
//! before the body is decoded. The body is `CBOR {v: 1, repo, member, by,
//! tm}` with 32-byte ids and the time in Unix milliseconds.
//!
//! `.dbox/members` holds the accepted records as one CBOR array, replaced
//! atomically. A repository made before membership existed has no such
//! file: the first command that needs one writes a genesis for the device
//! running it.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};
use crate::fsutil::{read_small, write_atomic};
use crate::identity::Device;
use crate::repo::Repo;
use dbox_store::{DecodeError, PeerId, RepoId};

const DOMAIN: &[u8] = b"dbox member v1\0";
const FORMAT: u32 = 1;
/// Largest number of membership records a repository holds.
pub const MAX_MEMBERS: usize = 4096;
/// Largest encoded record.
pub const MAX_RECORD_SIZE: usize = 512;
const MAX_FILE: usize = MAX_MEMBERS * (MAX_RECORD_SIZE + 8) + 16;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    v: u32,
    #[serde(with = "serde_bytes")]
    repo: Vec<u8>,
    #[serde(with = "serde_bytes")]
    member: Vec<u8>,
    #[serde(with = "serde_bytes")]
    by: Vec<u8>,
    tm: i64,
}

#[derive(Serialize, Deserialize)]
struct Envelope(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>);

/// One verified membership record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The repository.
    pub repo: RepoId,
    /// The device made a member.
    pub member: PeerId,
    /// The member who signed.
    pub by: PeerId,
    /// When, in Unix milliseconds (as the signer's clock said).
    pub time_ms: i64,
    bytes: Vec<u8>,
}

fn id32(b: &[u8], what: &str) -> std::result::Result<[u8; 32], DecodeError> {
    b.try_into().map_err(|_| DecodeError::Invalid(format!("membership record: {what} is not 32 bytes")))
}

impl Record {
    /// Makes and signs a record naming `member`.
    pub fn sign(repo: RepoId, member: PeerId, signer: &SigningKey, time_ms: i64) -> Self {
        let by = PeerId(signer.verifying_key().to_bytes());
        let body = dbox_store::cbor::encode(&Body {
            v: FORMAT,
            repo: repo.0.to_vec(),
            member: member.0.to_vec(),
            by: by.0.to_vec(),
            tm: time_ms,
        });
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        let sig = signer.sign(&msg);
        let bytes = dbox_store::cbor::encode(&Envelope(body, sig.to_bytes().to_vec()));
        Self { repo, member, by, time_ms, bytes }
    }

    /// Verifies and decodes a record's bytes.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, DecodeError> {
        let Envelope(body, sig) = dbox_store::cbor::decode("membership record", bytes, MAX_RECORD_SIZE)?;
        let sig: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError::Invalid("membership record: signature is not 64 bytes".into()))?;
        let b: Body = dbox_store::cbor::decode("membership record body", &body, MAX_RECORD_SIZE)?;
        if b.v != FORMAT {
            return Err(DecodeError::Invalid(format!("membership record format {} is unknown", b.v)));
        }
        let by = id32(&b.by, "signer")?;
        let key = VerifyingKey::from_bytes(&by)
            .map_err(|_| DecodeError::Invalid("membership record: signer is not a valid key".into()))?;
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| DecodeError::Invalid("membership record: bad signature".into()))?;
        Ok(Self {
            repo: RepoId(id32(&b.repo, "repository")?),
            member: PeerId(id32(&b.member, "member")?),
            by: PeerId(by),
            time_ms: b.tm,
            bytes: bytes.to_vec(),
        })
    }

    /// The record's bytes, as signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The accepted membership of one repository.
#[derive(Clone, Debug, Default)]
pub struct Members {
    records: Vec<Record>,
    set: BTreeSet<PeerId>,
}

impl Members {
    /// Whether `peer` is a member.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.set.contains(peer)
    }

    /// The members' peer ids.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.set.iter()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there is no member yet.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The records, genesis first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Takes the records (raw bytes, from a peer or a file) that are valid,
    /// belong to `repo` and are signed by a member (possibly one added by an
    /// earlier record of the same batch). With `trust_genesis`, a set with
    /// no members yet accepts one self-signed record as its genesis: only
    /// for a list from the inviter a clone has authenticated. Returns how
    /// many records were new and the reasons for those refused.
    pub fn merge(&mut self, repo: &RepoId, raw: &[Vec<u8>], trust_genesis: bool) -> (usize, Vec<String>) {
        let mut refused = Vec::new();
        let mut pending = Vec::new();
        // Records held already are not checked again (a signature check each).
        let known: HashSet<&[u8]> = self.records.iter().map(|r| r.as_bytes()).collect();
        for b in raw.iter().take(MAX_MEMBERS) {
            if known.contains(b.as_slice()) {
                continue;
            }
            match Record::decode(b) {
                Ok(r) if &r.repo != repo => refused.push("a membership record of another repository".into()),
                Ok(r) => pending.push(r),
                Err(e) => refused.push(e.to_string()),
            }
        }
        if self.set.is_empty() && trust_genesis {
            if let Some(i) = pending.iter().position(|r| r.by == r.member) {
                let g = pending.remove(i);
                self.set.insert(g.member);
                self.records.push(g);
            }
        }
        let mut added = 0;
        loop {
            let before = pending.len();
            pending.retain(|r| {
                if self.set.contains(&r.member) {
                    return false;
                }
                if self.set.contains(&r.by) && self.records.len() < MAX_MEMBERS {
                    added += 1;
                    self.set.insert(r.member);
                    self.records.push(r.clone());
                    return false;
                }
                true
            });
            if pending.len() == before {
                break;
            }
        }
        for r in pending {
            refused.push(format!(
                "membership record for {} signed by {}, who is not a member",
                r.member.short(),
                r.by.short()
            ));
        }
        (added, refused)
    }

    fn path(repo: &Repo) -> std::path::PathBuf {
        repo.dot_dir().join("members")
    }

    /// Reads the membership of `repo`; an empty set if it has none yet.
    pub fn load(repo: &Repo) -> Result<Self> {
        let path = Self::path(repo);
        let Some(bytes) = read_small(&path, MAX_FILE as u64)? else { return Ok(Self::default()) };
        let raw: Vec<serde_bytes::ByteBuf> = dbox_store::cbor::decode("members file", &bytes, MAX_FILE)
            .map_err(|e| RepoError::Damaged { path: path.clone(), reason: e.to_string() })?;
        let raw: Vec<Vec<u8>> = raw.into_iter().map(|b| b.into_vec()).collect();
        let mut m = Self::default();
        let (_, refused) = m.merge(&repo.store().repo_id(), &raw, true);
        if let Some(r) = refused.first() {
            return Err(RepoError::Damaged { path, reason: r.clone() });
        }
        Ok(m)
    }

    /// Writes the membership of `repo`.
    pub fn save(&self, repo: &Repo) -> Result<()> {
        let raw: Vec<serde_bytes::ByteBuf> =
            self.records.iter().map(|r| serde_bytes::ByteBuf::from(r.bytes.clone())).collect();
        write_atomic(&Self::path(repo), &dbox_store::cbor::encode(&raw), 0o600)
    }

    /// The membership of `repo`, writing a genesis for `device` first if
    /// the repository has none.
    pub fn load_or_found(repo: &Repo, device: &Device) -> Result<Self> {
        let m = Self::load(repo)?;
        if !m.is_empty() {
            return Ok(m);
        }
        let mut m = Self::default();
        let g = Record::sign(repo.store().repo_id(), device.peer_id(), device.signing_key(), now_ms());
        m.set.insert(g.member);
        m.records.push(g);
        m.save(repo)?;
        Ok(m)
    }

    /// Adds `member`, signed by `device` (which must be a member), and
    /// saves. Returns false if it was a member already.
    pub fn add(&mut self, repo: &Repo, device: &Device, member: PeerId) -> Result<bool> {
        if self.contains(&member) {
            return Ok(false);
        }
        if !self.contains(&device.peer_id()) {
            return Err(RepoError::Usage("this device is not a member of the repository".into()));
        }
        if self.records.len() >= MAX_MEMBERS {
            return Err(RepoError::Usage(format!("a repository has at most {MAX_MEMBERS} members")));
        }
        let r = Record::sign(repo.store().repo_id(), member, device.signing_key(), now_ms());
        self.set.insert(member);
        self.records.push(r);
        self.save(repo)?;
        Ok(true)
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `path` holds a members file (for `fsck` and tests).
pub fn exists(dot: &Path) -> bool {
    dot.join("members").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn closure_under_signed_by_member() {
        let repo = RepoId([7; 32]);
        let (a, b, c) = (key(1), key(2), key(3));
        let pid = |k: &SigningKey| PeerId(k.verifying_key().to_bytes());
        let g = Record::sign(repo, pid(&a), &a, 1);
        let ab = Record::sign(repo, pid(&b), &a, 2);
        let bc = Record::sign(repo, pid(&c), &b, 3);
        // Out of order: c's record before b's.
        let raw = vec![bc.bytes.clone(), ab.bytes.clone(), g.bytes.clone()];
        let mut m = Members::default();
        let (added, refused) = m.merge(&repo, &raw, true);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(added, 2);
        assert!(m.contains(&pid(&c)));
        // Without the genesis nothing is trusted.
        let mut m = Members::default();
        let (_, refused) = m.merge(&repo, &raw[..2], false);
        assert_eq!(refused.len(), 2);
        assert!(m.is_empty());
    }

    #[test]
    fn forged_and_foreign_records_are_refused() {
        let repo = RepoId([7; 32]);
        let a = key(1);
        let mut m = Members::default();
        let g = Record::sign(repo, PeerId(a.verifying_key().to_bytes()), &a, 1);
        m.merge(&repo, std::slice::from_ref(&g.bytes), true);
        let stranger = key(9);
        let self_signed = Record::sign(repo, PeerId(stranger.verifying_key().to_bytes()), &stranger, 1);
        let other_repo = Record::sign(RepoId([8; 32]), PeerId([5; 32]), &a, 1);
        let mut flipped = Record::sign(repo, PeerId([5; 32]), &a, 1).bytes;
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        let (added, refused) =
            m.merge(&repo, &[self_signed.bytes, other_repo.bytes, flipped, vec![0xff; 9]], true);
        assert_eq!(added, 0);
        assert_eq!(refused.len(), 4);
        assert_eq!(m.len(), 1);
    }
}
