//! The device identity: an ed25519 key pair in `$DBOX_HOME/device.key`.
//!
//! `$DBOX_HOME` defaults to `$XDG_CONFIG_HOME/dbox`, then `~/.config/dbox`.
//! The key file is 0600: magic `DBOXDEV\0`, format version u32 LE (1), the
//! 32-byte secret, BLAKE3 of the 44 bytes before.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::error::{RepoError, Result};
use crate::fsutil::write_atomic;
use dbox_store::PeerId;

const MAGIC: &[u8; 8] = b"DBOXDEV\0";
const FORMAT: u32 = 1;
const FILE_LEN: usize = 8 + 4 + 32 + 32;

/// Where dbox keeps the device key and user configuration.
/// A relative `DBOX_HOME` is taken relative to the directory the command
/// started in (see [`absolute_home_from`]); a relative `XDG_CONFIG_HOME` is
/// ignored, as the XDG specification says.
pub fn home_dir() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("DBOX_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) =
        std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty() && Path::new(h).is_absolute())
    {
        return Ok(PathBuf::from(x).join("dbox"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("dbox")),
        None => {
            Err(RepoError::Usage("set DBOX_HOME or HOME so dbox knows where to keep the device key".into()))
        }
    }
}

/// The `DBOX_HOME` value made absolute against `cwd`, if it is set and
/// relative: call before changing directory, so that `-C` cannot move the
/// device key into a working tree.
pub fn absolute_home_from(cwd: &Path) -> Option<PathBuf> {
    let h = std::env::var_os("DBOX_HOME").filter(|h| !h.is_empty())?;
    let p = PathBuf::from(h);
    (!p.is_absolute()).then(|| cwd.join(p))
}

/// This device: its signing key and peer id.
pub struct Device {
    key: SigningKey,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.peer_id().short())
    }
}

impl Device {
    /// Loads the device key from `home`, creating it if there is none.
    pub fn load_or_create(home: &Path) -> Result<Self> {
        let path = home.join("device.key");
        match crate::fsutil::read_small(&path, FILE_LEN as u64)? {
            Some(bytes) => Self::decode(&bytes).map_err(|reason| RepoError::Damaged { path, reason }),
            None => {
                std::fs::create_dir_all(home).map_err(RepoError::io("create directory", home))?;
                let mut secret = Zeroizing::new([0u8; 32]);
                dbox_store::crypto::fill_random(&mut secret[..])?;
                let key = SigningKey::from_bytes(&secret);
                let mut bytes = Zeroizing::new(Vec::with_capacity(FILE_LEN));
                bytes.extend_from_slice(MAGIC);
                bytes.extend_from_slice(&FORMAT.to_le_bytes());
                bytes.extend_from_slice(&secret[..]);
                let check = blake3::hash(&bytes);
                bytes.extend_from_slice(check.as_bytes());
                write_atomic(&path, &bytes, 0o600)?;
                Ok(Self { key })
            }
        }
    }

    fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() != FILE_LEN || &b[..8] != MAGIC {
            return Err("not a dbox device key".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != FORMAT {
            return Err(format!("unsupported device key format {version}"));
        }
        if blake3::hash(&b[..44]).as_bytes() != &b[44..] {
            return Err("check value does not match".into());
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&b[12..44]);
        Ok(Self { key: SigningKey::from_bytes(&secret) })
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// This device's peer id (its public key).
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.key.verifying_key().to_bytes())
    }
}

/// Prefix of a peer id's text form.
const PEER_ID_PREFIX: &str = "dbx";
/// Length of the check value in a peer id's text form.
const PEER_ID_CHECK: usize = 3;

fn peer_id_check(key: &[u8; 32]) -> [u8; PEER_ID_CHECK] {
    let h = blake3::derive_key("dbox peer id check v1", key);
    [h[0], h[1], h[2]]
}

/// A peer id's text form: `dbx` and the base32 (RFC 4648, lower case) of
/// the 32-byte key followed by a 3-byte check value, 59 characters in all.
/// A mistyped character is caught by the check (all but one in 16 million
/// typos).
pub fn format_peer_id(id: &PeerId) -> String {
    let mut bytes = Vec::with_capacity(32 + PEER_ID_CHECK);
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&peer_id_check(id.as_bytes()));
    let mut s = String::from(PEER_ID_PREFIX);
    s.push_str(&data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase());
    s
}

/// Parses a peer id's text form (any case, surrounding space ignored).
pub fn parse_peer_id(text: &str) -> Result<PeerId> {
    let t = text.trim();
    let bad =
        |why: &str| RepoError::Usage(format!("{:?} is not a peer id: {why}", crate::fsutil::clip(t, 80)));
    let rest = t
        .get(..PEER_ID_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PEER_ID_PREFIX))
        .map(|_| &t[PEER_ID_PREFIX.len()..])
        .ok_or_else(|| bad("it does not start with \"dbx\" (`dbox id` prints this device's)"))?;
    let bytes = data_encoding::BASE32_NOPAD
        .decode(rest.to_ascii_uppercase().as_bytes())
        .map_err(|_| bad("it holds characters that are not base32, or is cut short"))?;
    if bytes.len() != 32 + PEER_ID_CHECK {
        return Err(bad("wrong length"));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[..32]);
    if bytes[32..] != peer_id_check(&key) {
        return Err(bad("the check digits do not match (a typo?)"));
    }
    Ok(PeerId(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn peer_id_text_round_trips(key in any::<[u8; 32]>()) {
            let id = PeerId(key);
            let text = format_peer_id(&id);
            prop_assert_eq!(text.len(), 59);
            prop_assert_eq!(parse_peer_id(&text).ok(), Some(id));
            prop_assert_eq!(parse_peer_id(&text.to_ascii_uppercase()).ok(), Some(id));
        }

        #[test]
        fn one_changed_character_is_caught(key in any::<[u8; 32]>(), pos in 3usize..59, sub in 0usize..32) {
            let text = format_peer_id(&PeerId(key));
            let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
            let mut b = text.into_bytes();
            prop_assume!(b[pos] != alphabet[sub]);
            b[pos] = alphabet[sub];
            let typo = String::from_utf8(b).unwrap_or_default();
            prop_assert!(parse_peer_id(&typo).is_err());
        }
    }
}
