//! Trees: one directory of one version.
//!
//! A tree's payload (before compression and encryption) is CBOR:
//!
//! ```text
//! { "v": 1, "e": [ entry, ... ] }          entries sorted by name bytes, unique
//! entry = { "n": bstr name, "k": kind (0 file, 1 dir, 2 symlink),
//!           "x": bool executable,           files only, omitted when false
//!           "t": mtime, nanoseconds since the Unix epoch (i64), optional
//!           "s": size in bytes,             files only
//!           "c": [ chunk id bstr, ... ],   files only
//!           "d": subtree id bstr,          dirs only
//!           "l": bstr target }             symlinks only
//! ```
//!
//! Names are bytes, stored faithfully (non-UTF-8 included). [`Name::new`]
//! refuses names that could escape a working tree or touch the repository:
//! empty, `.`, `..`, containing `/` or NUL, longer than
//! [`MAX_NAME_LEN`](crate::limits::MAX_NAME_LEN), or `.dbox` in any case.
//! Decoding applies the same rules, so a hostile tree never yields such a name.

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::error::DecodeError;
use crate::id::ObjectId;
use crate::limits::{MAX_NAME_LEN, MAX_PATH_LEN, MAX_TREE_ENTRIES, MAX_TREE_SIZE};

/// Tree payload format version.
pub const TREE_FORMAT: u32 = 1;

/// A validated entry name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    /// Checks `bytes` against the naming rules.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, DecodeError> {
        let bytes = bytes.into();
        let reason = if bytes.is_empty() {
            Some("empty")
        } else if bytes == b"." || bytes == b".." {
            Some("a relative path component")
        } else if bytes.contains(&b'/') {
            Some("contains '/'")
        } else if bytes.contains(&0) {
            Some("contains NUL")
        } else if bytes.len() > MAX_NAME_LEN {
            Some("longer than 255 bytes")
        } else if folds_to_dot_dbox(&bytes) {
            Some("reserved for the repository")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(DecodeError::BadName {
                name: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
                reason,
            }),
            None => Ok(Self(bytes)),
        }
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Whether a file system could take `name` for `.dbox`: ASCII case is
/// ignored (macOS, Windows), as are the code points HFS+ ignores in names
/// (U+200C–U+200F, U+202A–U+202E, U+206A–U+206F, U+FEFF), and trailing dots
/// and spaces, which Windows drops.
fn folds_to_dot_dbox(name: &[u8]) -> bool {
    let folded: Vec<u8> = match std::str::from_utf8(name) {
        Ok(s) => s
            .chars()
            .filter(|c| !matches!(*c as u32, 0x200C..=0x200F | 0x202A..=0x202E | 0x206A..=0x206F | 0xFEFF))
            .collect::<String>()
            .into_bytes(),
        Err(_) => name.to_vec(),
    };
    let mut end = folded.len();
    while end > 0 && matches!(folded[end - 1], b'.' | b' ') {
        end -= 1;
    }
    folded[..end].eq_ignore_ascii_case(b".dbox")
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// Its chunks in order.
        chunks: Vec<ObjectId>,
        /// Whether the executable bit is set.
        executable: bool,
    },
    /// A directory.
    Dir {
        /// The subtree.
        tree: ObjectId,
    },
    /// A symbolic link, stored as its target bytes, never followed.
    Symlink {
        /// The target.
        target: Vec<u8>,
    },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The entry's name.
    pub name: Name,
    /// What it is.
    pub node: Node,
    /// Modification time in nanoseconds since the Unix epoch, if known.
    pub mtime_ns: Option<i64>,
}

/// One directory: entries sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: Vec<TreeEntry>,
}

impl Tree {
    /// Builds a tree, sorting entries by name and refusing duplicates.
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Self, DecodeError> {
        if entries.len() > MAX_TREE_ENTRIES {
            return Err(DecodeError::TooLarge {
                what: "tree entry count",
                size: entries.len() as u64,
                limit: MAX_TREE_ENTRIES as u64,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for w in entries.windows(2) {
            if w[0].name == w[1].name {
                return Err(DecodeError::Invalid(format!("duplicate name {}", w[0].name)));
            }
        }
        for e in &entries {
            check_node(&e.node)?;
        }
        Ok(Self { entries })
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// The entry with this name.
    pub fn get(&self, name: &[u8]) -> Option<&TreeEntry> {
        self.entries.binary_search_by(|e| e.name.as_bytes().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// Encodes the payload (CBOR).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireTree {
            v: TREE_FORMAT,
            e: self
                .entries
                .iter()
                .map(|e| {
                    let mut w = WireEntry {
                        n: serde_bytes::ByteBuf::from(e.name.as_bytes().to_vec()),
                        k: 0,
                        x: false,
                        t: e.mtime_ns,
                        s: None,
                        c: None,
                        d: None,
                        l: None,
                    };
                    match &e.node {
                        Node::File { size, chunks, executable } => {
                            w.x = *executable;
                            w.s = Some(*size);
                            w.c = Some(chunks.clone());
                        }
                        Node::Dir { tree } => {
                            w.k = 1;
                            w.d = Some(*tree);
                        }
                        Node::Symlink { target } => {
                            w.k = 2;
                            w.l = Some(serde_bytes::ByteBuf::from(target.clone()));
                        }
                    }
                    w
                })
                .collect(),
        };
        cbor::encode(&wire)
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: WireTree = cbor::decode("tree", bytes, MAX_TREE_SIZE)?;
        if wire.v != TREE_FORMAT {
            return Err(DecodeError::UnsupportedVersion { what: "tree", found: wire.v });
        }
        if wire.e.len() > MAX_TREE_ENTRIES {
            return Err(DecodeError::TooLarge {
                what: "tree entry count",
                size: wire.e.len() as u64,
                limit: MAX_TREE_ENTRIES as u64,
            });
        }
        let mut entries = Vec::with_capacity(wire.e.len());
        for w in wire.e {
            let name = Name::new(w.n.into_vec())?;
            let node = match (w.k, w.s, w.c, w.d, w.l) {
                (0, Some(size), Some(chunks), None, None) => Node::File { size, chunks, executable: w.x },
                (1, None, None, Some(tree), None) if !w.x => Node::Dir { tree },
                (2, None, None, None, Some(target)) if !w.x => Node::Symlink { target: target.into_vec() },
                _ => return Err(DecodeError::Invalid(format!("malformed tree entry {name}"))),
            };
            check_node(&node)?;
            entries.push(TreeEntry { name, node, mtime_ns: w.t });
        }
        for w in entries.windows(2) {
            if w[0].name >= w[1].name {
                return Err(DecodeError::Invalid("tree entries not sorted or not unique".into()));
            }
        }
        Ok(Self { entries })
    }
}

fn check_node(node: &Node) -> Result<(), DecodeError> {
    match node {
        Node::Symlink { target } => {
            if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_LEN {
                return Err(DecodeError::Invalid("symlink target empty, too long, or containing NUL".into()));
            }
        }
        Node::File { size, chunks, .. } => {
            if chunks.is_empty() != (*size == 0) {
                return Err(DecodeError::Invalid("file size does not match its chunk list".into()));
            }
        }
        Node::Dir { .. } => {}
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTree {
    v: u32,
    #[serde(deserialize_with = "bounded_entries")]
    e: Vec<WireEntry>,
}

/// Decodes the entry list, refusing more than [`MAX_TREE_ENTRIES`] before
/// building them, so a payload of many tiny entries cannot take gigabytes.
fn bounded_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WireEntry>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<WireEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_TREE_ENTRIES} tree entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(e) = seq.next_element()? {
                if out.len() == MAX_TREE_ENTRIES {
                    return Err(serde::de::Error::custom("too many tree entries"));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    n: serde_bytes::ByteBuf,
    k: u8,
    #[serde(default, skip_serializing_if = "is_false")]
    x: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Vec<ObjectId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<ObjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<serde_bytes::ByteBuf>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/etc",
            b"a\0b",
            b".dbox",
            b".DBox",
            b".dbox.",
            b".dbox ",
            ".db\u{200c}ox".as_bytes(),
            "\u{feff}.DBOX".as_bytes(),
            &[b'x'; 256],
        ] {
            assert!(Name::new(bad.to_vec()).is_err(), "{bad:?}");
        }
        for good in [&b"a"[..], b"...", b".dboxx", b"\xff\xfe", &[b'x'; 255]] {
            assert!(Name::new(good.to_vec()).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn round_trip() -> Result<(), DecodeError> {
        let t = Tree::new(vec![
            TreeEntry {
                name: Name::new("b")?,
                node: Node::File { size: 3, chunks: vec![ObjectId([7; 32])], executable: true },
                mtime_ns: Some(-5),
            },
            TreeEntry { name: Name::new("a")?, node: Node::Dir { tree: ObjectId([1; 32]) }, mtime_ns: None },
            TreeEntry {
                name: Name::new(b"\xff".to_vec())?,
                node: Node::Symlink { target: b"../x".to_vec() },
                mtime_ns: None,
            },
        ])?;
        let bytes = t.encode();
        assert_eq!(Tree::decode(&bytes)?, t);
        assert_eq!(t.entries()[0].name.as_bytes(), b"a");
        Ok(())
    }

    #[test]
    fn refuses_hostile_wire_names_and_order() {
        let mk = |names: &[&[u8]]| {
            let wire = WireTree {
                v: 1,
                e: names
                    .iter()
                    .map(|n| WireEntry {
                        n: serde_bytes::ByteBuf::from(n.to_vec()),
                        k: 1,
                        x: false,
                        t: None,
                        s: None,
                        c: None,
                        d: Some(ObjectId([0; 32])),
                        l: None,
                    })
                    .collect(),
            };
            cbor::encode(&wire)
        };
        assert!(Tree::decode(&mk(&[b"a", b"b"])).is_ok());
        assert!(Tree::decode(&mk(&[b"b", b"a"])).is_err());
        assert!(Tree::decode(&mk(&[b"a", b"a"])).is_err());
        assert!(Tree::decode(&mk(&[b".."])).is_err());
        assert!(Tree::decode(&mk(&[b".DBOX"])).is_err());
        assert!(Tree::decode(&mk(&[b"a/../../x"])).is_err());
    }
}
