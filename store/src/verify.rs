//! Checking a whole store: every pack's id, every pack header, every
//! object's id (and, with [`VerifyOptions::read_data`], its decryption), the
//! key file, and every index segment and entry against the packs.
//!
//! Verification reports problems; it never repairs. Damage to the index is
//! repaired by [`Writer::rebuild_index`](crate::Writer::rebuild_index), since
//! the packs hold everything.

use std::collections::HashMap;
use std::fmt;

use crate::error::StoreError;
use crate::id::{ObjectId, PackId};
use crate::index::{Location, Segment};
use crate::keyfile::decode_key_file;
use crate::object::{self, ObjectKind};
use crate::store::{error_chain, pack_path, parse_name, Store};
use crate::tree::Tree;
use crate::version::SignedVersion;

/// What to check.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Also decrypt and decode every object (slower: reads all data).
    pub read_data: bool,
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is damaged: a file, a pack or an object.
    pub subject: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// The result of [`Store::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Packs checked.
    pub packs: u64,
    /// Objects checked.
    pub objects: u64,
    /// Bytes of packs read.
    pub bytes: u64,
    /// Index segments checked.
    pub segments: u64,
    /// Packs that no index segment covers yet (indexed from their headers in
    /// memory; the next writer saves them). Not a problem by itself.
    pub unindexed_packs: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { subject: subject.into(), message: message.into() });
    }
}

impl Store {
    /// Checks the whole store and reports every problem found.
    pub fn verify(&self, opts: &VerifyOptions) -> Result<VerifyReport, StoreError> {
        let inner = &self.inner;
        let vfs = &*inner.vfs;
        let mut report = VerifyReport::default();

        let key_path = inner.root.join("key");
        match vfs.read_file(&key_path, crate::keyfile::KEY_FILE_LEN as u64) {
            Ok(bytes) => match decode_key_file(&bytes) {
                Ok((repo, key)) if repo == self.repo_id() && &key == self.repo_key() => {}
                Ok(_) => report
                    .problem(key_path.display().to_string(), "key file changed since the store was opened"),
                Err(e) => report.problem(key_path.display().to_string(), e.to_string()),
            },
            Err(e) => report.problem(key_path.display().to_string(), format!("cannot read: {e}")),
        }

        // Packs and their objects.
        let packs_dir = inner.root.join("packs");
        let mut in_packs: HashMap<ObjectId, Vec<Location>> = HashMap::new();
        let names = vfs.list_dir(&packs_dir).map_err(StoreError::io("list", &packs_dir))?;
        let mut packs = Vec::new();
        for name in names {
            match parse_name(&name, "pack") {
                Some(id) => packs.push(PackId(id)),
                None => report.problem(packs_dir.join(&name).display().to_string(), "unexpected file"),
            }
        }
        packs.sort();
        for pack in &packs {
            report.packs += 1;
            let subject = format!("pack {pack}");
            let f = match self.pack_file(pack) {
                Ok(f) => f,
                Err(e) => {
                    report.problem(subject, error_chain(&e));
                    continue;
                }
            };
            let path = pack_path(&inner.root, pack);
            let len = f.len().map_err(StoreError::io("stat", &path))?;
            report.bytes += len;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 8 << 20];
            let mut off = 0u64;
            let mut read_ok = true;
            while off < len {
                let n = ((len - off) as usize).min(buf.len());
                if let Err(e) = f.read_exact_at(&mut buf[..n], off) {
                    report.problem(subject.clone(), format!("cannot read: {e}"));
                    read_ok = false;
                    break;
                }
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            if read_ok && hasher.finalize().as_bytes() != pack.as_bytes() {
                report.problem(subject.clone(), "contents do not hash to the pack id");
            }
            let entries = match self.pack_header(pack) {
                Ok(e) => e,
                Err(e) => {
                    report.problem(subject, error_chain(&e));
                    continue;
                }
            };
            for e in entries {
                report.objects += 1;
                let loc = Location { pack: *pack, offset: e.offset, len: e.len };
                in_packs.entry(e.id).or_default().push(loc);
                let stored = match self.read_at(&e.id, &loc) {
                    Ok(s) => s,
                    Err(err) => {
                        report.problem(format!("object {}", e.id), error_chain(&err));
                        continue;
                    }
                };
                if opts.read_data {
                    if let Err(msg) = check_contents(self, &stored) {
                        report.problem(format!("object {} in pack {pack}", e.id), msg);
                    }
                }
            }
        }

        // Index segments against the packs.
        let mut covered = std::collections::HashSet::new();
        let index_dir = inner.root.join("index");
        for name in vfs.list_dir(&index_dir).map_err(StoreError::io("list", &index_dir))? {
            let path = index_dir.join(&name);
            if parse_name(&name, "idx").is_none() {
                report.problem(path.display().to_string(), "unexpected file");
                continue;
            }
            report.segments += 1;
            let seg = match Segment::open(vfs, &path) {
                Ok(s) => s,
                Err(e) => {
                    report.problem(path.display().to_string(), error_chain(&e));
                    continue;
                }
            };
            covered.extend(seg.packs().iter().copied());
            if let Err(e) = seg.check_file() {
                report.problem(path.display().to_string(), error_chain(&e));
                continue;
            }
            for r in seg.scan() {
                let (id, loc) = r?;
                let ok = in_packs.get(&id).is_some_and(|locs| locs.contains(&loc));
                if !ok {
                    report.problem(
                        path.display().to_string(),
                        format!("entry for object {id} does not match pack {}", loc.pack),
                    );
                }
            }
        }
        report.unindexed_packs = packs.iter().filter(|p| !covered.contains(*p)).count() as u64;
        Ok(report)
    }
}

fn check_contents(store: &Store, stored: &[u8]) -> Result<(), String> {
    let kind = ObjectKind::of_stored(stored).map_err(|e| e.to_string())?;
    match kind {
        ObjectKind::Chunk => object::open(store.keys(), kind, stored).map(|_| ()).map_err(|e| e.to_string()),
        ObjectKind::Tree => {
            let p = object::open(store.keys(), kind, stored).map_err(|e| e.to_string())?;
            Tree::decode(&p).map(|_| ()).map_err(|e| e.to_string())
        }
        ObjectKind::Version => SignedVersion::from_stored(stored).map(|_| ()).map_err(|e| e.to_string()),
    }
}
