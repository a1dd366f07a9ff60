//! Invitations: one-time tokens that let a new device join.
//!
//! A token is `dbxinv` and the lower-case base32 of `CBOR {v, repo,
//! inviter, addrs, secret, exp} || check(4)`, where the check is a BLAKE3
//! of the CBOR (typos are caught before anything is sent). It carries no
//! key: the repo key travels later over the QUIC channel in which both
//! ends proved their keys (the joiner pins the inviter's peer id from the
//! token).
//!
//! The inviting repository keeps `.dbox/invites`: for each token the
//! BLAKE3 of its secret (never the secret), its expiry and whether it was
//! used. `dbox serve` accepts a token once, before its expiry; it marks the
//! token used on disk before it answers, so a crash cannot make it
//! reusable.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{RepoError, Result};
use crate::fsutil::{read_small, write_atomic};
use crate::members::now_ms;
use crate::repo::Repo;
use dbox_store::{PeerId, RepoId};

const PREFIX: &str = "dbxinv";
const FORMAT: u32 = 1;
const MAX_TOKEN: usize = 2048;
const MAX_ADDRS: usize = 16;
const MAX_FILE: usize = 1 << 20;
/// Most invitations kept (used and expired ones are dropped first).
const MAX_INVITES: usize = 1000;
/// How long a spent or expired invitation is remembered.
const KEEP_SPENT_MS: i64 = 30 * 86_400_000;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    v: u32,
    repo: ByteBuf,
    inviter: ByteBuf,
    addrs: Vec<String>,
    secret: ByteBuf,
    exp: i64,
}

/// A decoded invitation.
#[derive(Clone, Debug)]
pub struct Token {
    /// The repository.
    pub repo: RepoId,
    /// The inviting device.
    pub inviter: PeerId,
    /// Where it serves, `host:port`.
    pub addrs: Vec<String>,
    /// The one-time secret.
    pub secret: [u8; 32],
    /// Expiry, Unix milliseconds.
    pub expires_ms: i64,
}

fn check(cbor: &[u8]) -> [u8; 4] {
    let h = blake3::derive_key("dbox invitation check v1", cbor);
    [h[0], h[1], h[2], h[3]]
}

fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("dbox invitation secret v1", secret)
}

impl Token {
    /// The token's text.
    pub fn encode(&self) -> String {
        let cbor = dbox_store::cbor::encode(&TokenBody {
            v: FORMAT,
            repo: ByteBuf::from(self.repo.0.to_vec()),
            inviter: ByteBuf::from(self.inviter.0.to_vec()),
            addrs: self.addrs.clone(),
            secret: ByteBuf::from(self.secret.to_vec()),
            exp: self.expires_ms,
        });
        let mut b = cbor.clone();
        b.extend_from_slice(&check(&cbor));
        format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase())
    }

    /// Reads a token's text.
    pub fn decode(text: &str) -> Result<Self> {
        let t = text.trim();
        let bad = |why: &str| RepoError::Usage(format!("this is not a dbox invitation: {why}"));
        if t.len() > MAX_TOKEN {
            return Err(bad("too long"));
        }
        let rest = t
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &t[PREFIX.len()..])
            .ok_or_else(|| bad("it does not start with \"dbxinv\""))?;
        let b = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("it holds characters that are not base32, or is cut short"))?;
        if b.len() < 5 {
            return Err(bad("too short"));
        }
        let (cbor, sum) = b.split_at(b.len() - 4);
        if sum != check(cbor) {
            return Err(bad("the check digits do not match (was it copied whole?)"));
        }
        let body: TokenBody =
            dbox_store::cbor::decode("invitation", cbor, MAX_TOKEN).map_err(|e| bad(&e.to_string()))?;
        if body.v != FORMAT {
            return Err(bad(&format!("format {} is unknown (a newer dbox made it?)", body.v)));
        }
        let id = |b: &ByteBuf| -> Result<[u8; 32]> {
            b.as_slice().try_into().map_err(|_| bad("an id is not 32 bytes"))
        };
        if body.addrs.is_empty() || body.addrs.len() > MAX_ADDRS {
            return Err(bad("no addresses, or too many"));
        }
        for a in &body.addrs {
            crate::peers::check_addr(a)?;
        }
        Ok(Self {
            repo: RepoId(id(&body.repo)?),
            inviter: PeerId(id(&body.inviter)?),
            addrs: body.addrs,
            secret: id(&body.secret)?,
            expires_ms: body.exp,
        })
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    hash: ByteBuf,
    exp: i64,
    used: bool,
    /// The device that used it: the same device may use it again, to
    /// finish a join that was cut off after it became a member.
    #[serde(default)]
    by: Option<ByteBuf>,
}

fn path(repo: &Repo) -> std::path::PathBuf {
    repo.dot_dir().join("invites")
}

fn load(repo: &Repo) -> Result<Vec<Pending>> {
    let p = path(repo);
    match read_small(&p, MAX_FILE as u64)? {
        None => Ok(Vec::new()),
        Some(b) => dbox_store::cbor::decode("invites file", &b, MAX_FILE)
            .map_err(|e| RepoError::Damaged { path: p, reason: e.to_string() }),
    }
}

fn save(repo: &Repo, list: &[Pending]) -> Result<()> {
    write_atomic(&path(repo), &dbox_store::cbor::encode(&list), 0o600)
}

/// Makes an invitation valid for `valid_ms` and records it.
pub fn create(repo: &Repo, inviter: PeerId, addrs: Vec<String>, valid_ms: i64) -> Result<Token> {
    let mut secret = [0u8; 32];
    dbox_store::crypto::fill_random(&mut secret)?;
    let now = now_ms();
    let mut list = load(repo)?;
    // Spent and expired invitations stay a while, so that a second use is
    // told what happened rather than "unknown".
    list.retain(|p| p.exp > now - KEEP_SPENT_MS);
    while list.len() > 4 * MAX_INVITES {
        match list.iter().position(|p| p.used || p.exp <= now) {
            Some(i) => drop(list.remove(i)),
            None => break,
        }
    }
    if list.iter().filter(|p| !p.used && p.exp > now).count() >= MAX_INVITES {
        return Err(RepoError::Usage(format!("{MAX_INVITES} invitations are open; wait for some to expire")));
    }
    let token = Token {
        repo: repo.store().repo_id(),
        inviter,
        addrs,
        secret,
        expires_ms: now.saturating_add(valid_ms),
    };
    list.push(Pending {
        hash: ByteBuf::from(secret_hash(&secret).to_vec()),
        exp: token.expires_ms,
        used: false,
        by: None,
    });
    save(repo, &list)?;
    Ok(token)
}

/// Checks the invitation with `secret` for device `by` and, if `spend`,
/// uses it up: Ok if it was open and unexpired, or if `by` itself used it
/// before (a join cut off after the membership was recorded is finished
/// that way). The caller serializes calls (one serving process per
/// repository).
pub fn consume(
    repo: &Repo,
    secret: &[u8],
    by: &dbox_store::PeerId,
    spend: bool,
) -> Result<std::result::Result<(), &'static str>> {
    let Ok(secret) = <[u8; 32]>::try_from(secret) else { return Ok(Err("malformed invitation")) };
    let hash = secret_hash(&secret);
    let mut list = load(repo)?;
    let now = now_ms();
    let Some(p) = list.iter_mut().find(|p| p.hash.as_slice() == hash) else {
        return Ok(Err("unknown invitation (made for another repository, or revoked)"));
    };
    if p.used {
        if p.by.as_ref().is_some_and(|b| b.as_slice() == by.as_bytes()) {
            return Ok(Ok(()));
        }
        return Ok(Err("this invitation was used already; ask for a new one"));
    }
    if p.exp <= now {
        return Ok(Err("this invitation has expired; ask for a new one"));
    }
    if !spend {
        return Ok(Ok(()));
    }
    p.used = true;
    p.by = Some(ByteBuf::from(by.as_bytes().to_vec()));
    save(repo, &list)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_catches_typos() {
        let t = Token {
            repo: RepoId([1; 32]),
            inviter: PeerId([2; 32]),
            addrs: vec!["127.0.0.1:7447".into(), "[::1]:7447".into()],
            secret: [3; 32],
            expires_ms: 1_700_000_000_000,
        };
        let text = t.encode();
        let back = Token::decode(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.addrs, t.addrs);
        assert_eq!(back.secret, t.secret);
        assert_eq!(back.inviter, t.inviter);
        let mut b = text.into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        assert!(Token::decode(&String::from_utf8_lossy(&b)).is_err());
        assert!(Token::decode("dbxinv").is_err());
        assert!(Token::decode("hello").is_err());
    }
}
