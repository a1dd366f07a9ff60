//! Checking a repository: the store (every pack, index entry and object,
//! optionally decrypted), the versions log, every version's signature and
//! repository, and every tree and chunk each version reaches.
//!
//! `repair` rebuilds what can be rebuilt from the packs: the index and the
//! versions log. It never deletes data.

use std::collections::HashSet;

use dbox_store::error::chain;
use dbox_store::verify::VerifyOptions;
use dbox_store::{Node, ObjectId};

use crate::error::{RepoError, Result};
use crate::repo::Repo;

/// Knobs of [`fsck`].
#[derive(Clone, Debug, Default)]
pub struct FsckOptions {
    /// Read and decrypt every object.
    pub read_data: bool,
    /// Rebuild the index and the versions log from the packs first.
    pub repair: bool,
}

/// What [`fsck`] found.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Versions checked.
    pub versions: usize,
    /// Trees checked.
    pub trees: usize,
    /// Chunks referenced.
    pub chunks: usize,
    /// Packs and objects the store checked.
    pub packs: u64,
    /// Objects in packs.
    pub objects: u64,
    /// Bytes of packs read.
    pub bytes: u64,
    /// Repairs made.
    pub repaired: Vec<String>,
    /// Problems, as sentences.
    pub problems: Vec<String>,
}

/// Checks the repository.
pub fn fsck(repo: &Repo, opts: &FsckOptions) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let store = repo.store();
    if opts.repair {
        let w = repo.lock_writer()?;
        let skipped = w.rebuild_index()?;
        report.repaired.push("rebuilt the index from the packs".into());
        for e in skipped {
            report.problems.push(chain(&e));
        }
        drop(w);
        let (n, bad) = repo.rebuild_records()?;
        report.repaired.push(format!("rebuilt the versions log: {n} versions"));
        for e in bad {
            report.problems.push(chain(&e));
        }
    }
    let v = store.verify(&VerifyOptions { read_data: opts.read_data })?;
    report.packs = v.packs;
    report.objects = v.objects;
    report.bytes = v.bytes;
    report.problems.extend(v.problems.iter().map(|p| p.to_string()));
    for p in store.load_problems() {
        report.problems.push(p);
    }

    let records = match repo.records() {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(chain(&e));
            Vec::new()
        }
    };
    let ids: HashSet<_> = records.iter().map(|r| r.node.id).collect();
    let mut trees_seen: HashSet<ObjectId> = HashSet::new();
    let mut chunks_seen: HashSet<ObjectId> = HashSet::new();
    let repo_id = store.repo_id();
    for r in &records {
        report.versions += 1;
        let id = r.node.id;
        let v = match store.get_version(&id) {
            Ok(v) => v,
            Err(e) => {
                report.problems.push(format!("version {}: {}", id.short(), chain(&e)));
                continue;
            }
        };
        let b = v.body();
        if b.repo != repo_id {
            report.problems.push(format!("version {} belongs to another repository", id.short()));
        }
        if b.parents != r.node.parents || b.author != r.author || b.seq != r.seq {
            report
                .problems
                .push(format!("version {}: the versions log disagrees with the version", id.short()));
        }
        for p in &b.parents {
            if !ids.contains(p) {
                report.problems.push(format!("version {}: parent {} is missing", id.short(), p.short()));
            }
        }
        if let Err(e) = v.info(store.keys()) {
            report.problems.push(format!("version {}: {e}", id.short()));
        }
        let mut stack = vec![b.root];
        while let Some(t) = stack.pop() {
            if !trees_seen.insert(t) {
                continue;
            }
            let tree = match store.get_tree(&t) {
                Ok(tree) => tree,
                Err(e) => {
                    report.problems.push(format!(
                        "version {}: tree {}: {}",
                        id.short(),
                        t.short(),
                        chain(&e)
                    ));
                    continue;
                }
            };
            for e in tree.entries() {
                match &e.node {
                    Node::Dir { tree } => stack.push(*tree),
                    Node::File { chunks, .. } => {
                        for c in chunks {
                            if chunks_seen.insert(*c) {
                                match store.contains(c) {
                                    Ok(true) => {}
                                    Ok(false) => report.problems.push(format!(
                                        "version {}: chunk {} of {} is missing",
                                        id.short(),
                                        c.short(),
                                        e.name
                                    )),
                                    Err(err) => report.problems.push(chain(&err)),
                                }
                            }
                        }
                    }
                    Node::Symlink { .. } => {}
                }
            }
        }
    }
    report.trees = trees_seen.len();
    report.chunks = chunks_seen.len();
    match repo.head() {
        Ok(Some(h)) if !ids.contains(&h) => {
            report.problems.push(format!("HEAD {} is not a known version", h.short()))
        }
        Ok(_) => {}
        Err(e) => report.problems.push(chain(&e as &RepoError)),
    }
    Ok(report)
}
