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
