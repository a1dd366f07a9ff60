//! Identifiers: one newtype per kind of id.
//!
//! Display is lowercase hex of the 32 bytes; `short()` gives the first 12
//! hex digits for logs. Ids serialize as CBOR byte strings of exactly 32
//! bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = 32;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 12 hex digits, for logs and compact output.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }

            /// Reads an id from exactly 32 bytes.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(IdVisitor).map(Self)
            }
        }
    };
}

struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string of 32 bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        <[u8; 32]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
    }
}

id_type!(
    /// The id of a stored object: BLAKE3 of its stored bytes.
    ObjectId
);
id_type!(
    /// The id of a version: the [`ObjectId`] of its signed envelope.
    VersionId
);
id_type!(
    /// The id of a sealed pack: BLAKE3 of the whole pack file.
    PackId
);
id_type!(
    /// A repository's public, random id.
    RepoId
);
id_type!(
    /// A device's ed25519 public key.
    PeerId
);

impl ObjectId {
    /// The id of the given stored bytes.
    pub fn of(stored: &[u8]) -> Self {
        Self(*blake3::hash(stored).as_bytes())
    }
}

impl From<VersionId> for ObjectId {
    fn from(v: VersionId) -> Self {
        Self(v.0)
    }
}

impl From<ObjectId> for VersionId {
    fn from(o: ObjectId) -> Self {
        Self(o.0)
    }
}
