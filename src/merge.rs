//! Merging heads: `dbox merge`.
//!
//! A merge joins HEAD ("ours") with another version ("theirs") through
//! their best common ancestor (the base, [`Graph::merge_base`]). Path by
//! path, over the three flattened trees:
//!
//! - a path changed on one side only (added, modified, deleted) takes that
//!   side's state; a path both sides changed the same way takes it once;
//! - a file both sides changed differently is merged line by line when all
//!   three copies are text (UTF-8 without NUL, at most
//!   [`MAX_LINE_MERGE_SIZE`] bytes) and the two sides' edits are separated by
//!   at least one unchanged line ([`merge_lines`]); otherwise HEAD's content
//!   stays and the other side's is kept beside it as
//!   `NAME.conflict-<short id>.EXT` ([`conflict_name`]);
//! - a path deleted on one side and edited on the other keeps the edit;
//! - where one side has a folder and the other a file or link at the same
//!   path, the folder wins (its contents are merged path by path) and the
//!   file or link becomes the conflict copy, named after the version it
//!   comes from.
//!
//! Nothing is lost: every content either side holds at a path is in the
//! merge result, at that path or in a conflict copy. The result is stored as
//! a version with parents `[HEAD, other]`, signed by the device, and then
//! checked out through [`crate::materialize`], which refuses to overwrite
//! anything unsaved; should it refuse (a file edited while the merge ran),
//! the merge version stays as a head and HEAD does not move, so `dbox
//! checkout` can finish the job. A merge refuses to start when the working
//! tree has uncommitted changes. When HEAD is an ancestor of the other version the
//! merge is a fast-forward (a checkout); when the other is an ancestor of
//! HEAD there is nothing to do.
//!
//! This module does not pick among several heads: without an explicit
//! version the only other head is merged, and several are an error.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dbox_store::{Store, VersionId, Writer};

use crate::cache::Content;
use crate::error::{RepoError, Result};
use crate::graph::Graph;
use crate::identity::Device;
use crate::materialize::{checkout_locked, Outcome};
use crate::repo::Repo;
use crate::snapshot::{build_trees, compare, flatten_version, status, write_version, Change, FlatEntry};
use crate::worktree::display;

/// Largest file (in bytes, on every side) that is merged line by line.
pub const MAX_LINE_MERGE_SIZE: u64 = 8 << 20;
/// How long one line diff may search for the shortest edit before settling
/// for a coarser (still correct) one.
const DIFF_DEADLINE: Duration = Duration::from_secs(5);
/// Most numbered alternatives tried for a free conflict-copy name.
const MAX_COPY_NAME_TRIES: usize = 1000;

type Flat = BTreeMap<Vec<u8>, FlatEntry>;

/// Knobs of [`merge`].
#[derive(Clone, Debug, Default)]
pub struct MergeOptions {
    /// The message; `Merge <other> into <HEAD>` when absent.
    pub message: Option<String>,
}

/// What kind of merge was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeKind {
    /// The other version is already in HEAD's history; nothing changed.
    UpToDate,
    /// HEAD was in the other version's history: it was checked out.
    FastForward,
    /// A merge version was made and checked out.
    Merged,
}

impl MergeKind {
    /// A lowercase word for the kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            MergeKind::UpToDate => "up-to-date",
            MergeKind::FastForward => "fast-forward",
            MergeKind::Merged => "merged",
        }
    }
}

/// One side of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// HEAD.
    Head,
    /// The version merged in.
    Other,
}

impl Side {
    /// A lowercase word for the side.
    pub fn as_str(&self) -> &'static str {
        match self {
            Side::Head => "head",
            Side::Other => "other",
        }
    }
}

/// A path both sides changed differently: one content stays at the path,
/// the other is kept beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictCopy {
    /// The path.
    pub path: Vec<u8>,
    /// Where the other content was put.
    pub copy: Vec<u8>,
    /// The version whose content the copy holds (normally the other one).
    pub from: VersionId,
}

/// A path deleted on one side and edited on the other: the edit was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptEdit {
    /// The path.
    pub path: Vec<u8>,
    /// The side that deleted it.
    pub deleted_in: Side,
}

/// The result of merging three flat trees.
#[derive(Clone, Debug, Default)]
pub struct TreeMerge {
    /// The merged tree.
    pub entries: BTreeMap<Vec<u8>, FlatEntry>,
    /// Files merged line by line.
    pub line_merged: Vec<Vec<u8>>,
    /// Conflict copies made.
    pub conflicts: Vec<ConflictCopy>,
    /// Deletes that were overruled by an edit.
    pub kept_edits: Vec<KeptEdit>,
}

/// What [`merge`] did.
#[derive(Clone, Debug)]
pub struct MergeOutcome {
    /// What kind of merge it was.
    pub kind: MergeKind,
    /// HEAD before.
    pub head: VersionId,
    /// The version merged in.
    pub other: VersionId,
    /// The common ancestor used (for a real merge), if there is one.
    pub base: Option<VersionId>,
    /// HEAD after: the merge version, the other version (fast-forward) or
    /// HEAD (up to date).
    pub version: VersionId,
    /// The merge version's message.
    pub message: Option<String>,
    /// How the new HEAD differs from the old one.
    pub changes: Vec<(Vec<u8>, Change)>,
    /// Files merged line by line.
    pub line_merged: Vec<Vec<u8>>,
    /// Conflict copies made.
    pub conflicts: Vec<ConflictCopy>,
    /// Deletes that were overruled by an edit.
    pub kept_edits: Vec<KeptEdit>,
    /// What the checkout wrote and deleted.
    pub checkout: Outcome,
}

/// The version `merge` joins HEAD with when none is named: the only head
/// other than HEAD.
pub fn default_other(graph: &Graph, head: &VersionId) -> Result<VersionId> {
    let others: Vec<VersionId> = graph.heads().into_iter().filter(|h| h != head).collect();
    match others.as_slice() {
        [] => Err(RepoError::NothingToMerge { head: head.short() }),
        [one] => Ok(*one),
        many => Err(RepoError::SeveralHeads { heads: many.iter().map(|h| h.short()).collect() }),
    }
}

/// Joins HEAD with `other` (by default the only other head), as the module
/// docs describe, and moves HEAD and the working tree to the result.
pub fn merge(
    repo: &Repo,
    device: &Device,
    other: Option<VersionId>,
    opts: &MergeOptions,
) -> Result<MergeOutcome> {
    // One writer for the whole merge: no commit can slip in between the
    // check of the working tree and the checkout of the result.
    let w = repo.lock_writer()?;
    let head = repo.head()?.ok_or(RepoError::NoVersion)?;
    let graph = repo.graph()?;
    let other = match other {
        Some(o) => o,
        None => default_other(&graph, &head)?,
    };
    let mut outcome = MergeOutcome {
        kind: MergeKind::UpToDate,
        head,
        other,
        base: None,
        version: head,
        message: None,
        changes: Vec::new(),
        line_merged: Vec::new(),
        conflicts: Vec::new(),
        kept_edits: Vec::new(),
        checkout: Outcome::default(),
    };
    if graph.is_ancestor(&other, &head) {
        return Ok(outcome);
    }
    let st = status(repo)?;
    if !st.changes.is_empty() {
        return Err(RepoError::UncommittedChanges {
            paths: st.changes.iter().map(|(p, _)| display(p)).collect(),
        });
    }
    let ours = flatten_version(repo, &head)?;
    if graph.is_ancestor(&head, &other) {
        let theirs = flatten_version(repo, &other)?;
        outcome.checkout = checkout_locked(repo, &w, &other, false)?;
        outcome.kind = MergeKind::FastForward;
        outcome.version = other;
        outcome.changes = changes(&ours, &theirs);
        return Ok(outcome);
    }
    let base_id = graph.merge_base(&head, &other);
    let base = match &base_id {
        Some(b) => flatten_version(repo, b)?,
        None => Flat::new(),
    };
    let theirs = flatten_version(repo, &other)?;
    let merged = merge_trees(repo.store(), &w, &base, &ours, &theirs, &head, &other)?;
    let root = build_trees(&w, merged.entries.iter().map(|(p, e)| (p, &e.content, e.mtime_ns)))?;
    let message =
        opts.message.clone().unwrap_or_else(|| format!("Merge {} into {}", other.short(), head.short()));
    let id = write_version(repo, &w, device, vec![head, other], root, &message)?;
    outcome.checkout = checkout_locked(repo, &w, &id, false)?;
    outcome.kind = MergeKind::Merged;
    outcome.base = base_id;
    outcome.version = id;
    outcome.message = Some(message);
    outcome.changes = changes(&ours, &merged.entries);
    outcome.line_merged = merged.line_merged;
    outcome.conflicts = merged.conflicts;
    outcome.kept_edits = merged.kept_edits;
    Ok(outcome)
}

fn changes(from: &Flat, to: &Flat) -> Vec<(Vec<u8>, Change)> {
    compare(from, to).into_iter().map(|d| (d.path, d.change)).collect()
}

/// Merges the flat trees `ours` (of version `head`) and `theirs` (of
/// `other`) against `base`. Files merged line by line are stored through
/// `w`; everything else refers to content already stored.
pub fn merge_trees(
    store: &Store,
    w: &Writer,
    base: &Flat,
    ours: &Flat,
    theirs: &Flat,
    head: &VersionId,
    other: &VersionId,
) -> Result<TreeMerge> {
    let mut out = TreeMerge::default();
    // Contents to put beside a path: (path, content, version it is from).
    let mut copies: Vec<(Vec<u8>, FlatEntry, VersionId)> = Vec::new();
    let paths: BTreeSet<&Vec<u8>> = base.keys().chain(ours.keys()).chain(theirs.keys()).collect();
    for p in paths {
        let (oe, te) = (ours.get(p), theirs.get(p));
        let b = base.get(p).map(|e| &e.content);
        let (o, t) = (oe.map(|e| &e.content), te.map(|e| &e.content));
        let taken = if o == t {
            oe
        } else if o == b {
            te
        } else if t == b {
            oe
        } else {
            // Changed on both sides, differently.
            match (oe, te) {
                (None, None) => None,
                (None, Some(te)) => {
                    out.kept_edits.push(KeptEdit { path: p.clone(), deleted_in: Side::Head });
                    Some(te)
                }
                (Some(oe), None) => {
                    out.kept_edits.push(KeptEdit { path: p.clone(), deleted_in: Side::Other });
                    Some(oe)
                }
                (Some(oe), Some(te)) => match (&oe.content, &te.content) {
                    (Content::File { .. }, Content::File { .. }) => {
                        match merge_files(store, w, p, b, &oe.content, &te.content)? {
                            Some((content, by_lines)) => {
                                if by_lines {
                                    out.line_merged.push(p.clone());
                                }
                                out.entries.insert(p.clone(), FlatEntry { content, mtime_ns: None });
                                continue;
                            }
                            None => {
                                copies.push((p.clone(), te.clone(), *other));
                                Some(oe)
                            }
                        }
                    }
                    // A folder wins over a file or link: its contents are
                    // merged path by path, the file or link is kept beside.
                    (_, Content::Dir) => {
                        copies.push((p.clone(), oe.clone(), *head));
                        Some(te)
                    }
                    _ => {
                        copies.push((p.clone(), te.clone(), *other));
                        Some(oe)
                    }
                },
            }
        };
        if let Some(e) = taken {
            out.entries.insert(p.clone(), e.clone());
        }
    }

    // Every path needs its folders: a kept edit may lie in a folder the
    // other side deleted or replaced by a file.
    let needed: BTreeSet<Vec<u8>> =
        out.entries.keys().flat_map(|p| folders_of(p)).map(<[u8]>::to_vec).collect();
    for a in needed {
        match out.entries.get(&a) {
            Some(FlatEntry { content: Content::Dir, .. }) => {}
            Some(e) => {
                let from = if ours.get(&a).is_some_and(|o| o.content == e.content) { *head } else { *other };
                copies.push((a.clone(), e.clone(), from));
                out.entries.insert(a, FlatEntry { content: Content::Dir, mtime_ns: None });
            }
            None => {
                out.entries.insert(a, FlatEntry { content: Content::Dir, mtime_ns: None });
            }
        }
    }

    for (path, entry, from) in copies {
        let copy = free_conflict_name(&path, &from, &out.entries)?;
        out.entries.insert(copy.clone(), entry);
        out.conflicts.push(ConflictCopy { path, copy, from });
    }
    out.conflicts.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The folders holding `path`, outermost first.
fn folders_of(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, b)| **b == b'/').map(move |(i, _)| &path[..i])
}

/// Merges two files both sides changed: the content, and whether it was
/// merged line by line, or `None` when the edits conflict.
fn merge_files(
    store: &Store,
    w: &Writer,
    path: &[u8],
    base: Option<&Content>,
    ours: &Content,
    theirs: &Content,
) -> Result<Option<(Content, bool)>> {
    let (
        Some(Content::File { chunks: bc, executable: bx, .. }),
        Content::File { chunks: oc, executable: ox, size: os },
        Content::File { chunks: tc, executable: tx, size: ts },
    ) = (base, ours, theirs)
    else {
        return Ok(None);
    };
    // The executable bit merges on its own: a side that changed it wins.
    let executable = if ox == bx { *tx } else { *ox };
    let (chunks, size, by_lines) = if oc == bc {
        (tc.clone(), *ts, false)
    } else if tc == bc || oc == tc {
        (oc.clone(), *os, false)
    } else {
        let (Some(b), Some(o), Some(t)) = (
            read_text(store, path, base)?,
            read_text(store, path, Some(ours))?,
            read_text(store, path, Some(theirs))?,
        ) else {
            return Ok(None);
        };
        let Some(merged) = merge_lines(&b, &o, &t) else { return Ok(None) };
        let fc = w.put_file(merged.as_bytes())?;
        (fc.chunks, fc.size, true)
    };
    Ok(Some((Content::File { size, chunks, executable }, by_lines)))
}

/// A file's content as text, or `None` when it is not a file, too large,
/// not UTF-8 or holds a NUL byte.
fn read_text(store: &Store, path: &[u8], content: Option<&Content>) -> Result<Option<String>> {
    let Some(Content::File { size, chunks, .. }) = content else { return Ok(None) };
    if *size > MAX_LINE_MERGE_SIZE {
        return Ok(None);
    }
    let damaged = |reason: String| RepoError::Damaged { path: display(path).into(), reason };
    // The size is at most MAX_LINE_MERGE_SIZE, and no more is read.
    let mut bytes = Vec::with_capacity(*size as usize);
    for id in chunks {
        let data = store.get_chunk(id)?;
        if bytes.len() as u64 + data.len() as u64 > *size {
            return Err(damaged(format!("its chunks hold more than the {size} bytes the version says")));
        }
        bytes.extend_from_slice(&data);
    }
    if bytes.len() as u64 != *size {
        return Err(damaged(format!("the version says {size} bytes but its chunks hold {}", bytes.len())));
    }
    if bytes.contains(&0) {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

/// One side's edit of the base: base lines `start..end` become `lines`.
#[derive(Debug, PartialEq, Eq)]
struct Hunk<'a> {
    start: usize,
    end: usize,
    lines: Vec<&'a str>,
}

/// The edits turning `base` into `side`, in order, each separated from the
/// next by at least one unchanged line.
fn hunks<'a>(base: &[&str], side: &[&'a str]) -> Vec<Hunk<'a>> {
    use similar::algorithms::{diff_deadline, Capture};
    use similar::{Algorithm, DiffTag};
    // Raw ops, not similar's compacted ones (`capture_diff_slices`): the
    // compaction can return ops whose old indices do not follow each other.
    let mut capture = Capture::new();
    let deadline = Some(Instant::now() + DIFF_DEADLINE);
    let Ok(()) =
        diff_deadline(Algorithm::Myers, &mut capture, base, 0..base.len(), side, 0..side.len(), deadline);
    let ops = capture.into_ops();
    let mut out: Vec<Hunk<'a>> = Vec::new();
    let mut open: Option<Hunk<'a>> = None;
    for op in ops {
        let (tag, old, new) = op.as_tag_tuple();
        if tag == DiffTag::Equal {
            out.extend(open.take());
            continue;
        }
        let h = open.get_or_insert(Hunk { start: old.start, end: old.start, lines: Vec::new() });
        h.end = old.end;
        h.lines.extend_from_slice(&side[new]);
    }
    out.extend(open);
    out
}

/// Three-way merge of text by lines: applies both sides' edits of `base`,
/// or returns `None` when an edit of one side overlaps or touches an edit
/// of the other (they must be separated by at least one unchanged line, so
/// that the order of the result is never a guess). Identical edits on both
/// sides are applied once.
pub fn merge_lines(base: &str, ours: &str, theirs: &str) -> Option<String> {
    let b: Vec<&str> = base.split_inclusive('\n').collect();
    let o: Vec<&str> = ours.split_inclusive('\n').collect();
    let t: Vec<&str> = theirs.split_inclusive('\n').collect();
    let (ho, ht) = (hunks(&b, &o), hunks(&b, &t));
    let mut out = String::with_capacity(ours.len().max(theirs.len()));
    let mut pos = 0;
    let (mut i, mut j) = (0, 0);
    loop {
        let next = match (ho.get(i), ht.get(j)) {
            (None, None) => break,
            (Some(x), None) => {
                i += 1;
                x
            }
            (None, Some(y)) => {
                j += 1;
                y
            }
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
                x
            }
            (Some(x), Some(y)) => {
                if x.start <= y.end && y.start <= x.end {
                    return None;
                }
                if x.start < y.start {
                    i += 1;
                    x
                } else {
                    j += 1;
                    y
                }
            }
        };
        // Hunks follow each other; anything else is refused, not sliced.
        let before = b.get(pos..next.start)?;
        if next.end < next.start || next.end > b.len() {
            return None;
        }
        before.iter().for_each(|l| out.push_str(l));
        next.lines.iter().for_each(|l| out.push_str(l));
        pos = next.end;
    }
    b.get(pos..)?.iter().for_each(|l| out.push_str(l));
    Some(out)
}

/// The name of the conflict copy of `path` holding the content of
/// `version`: `NAME.conflict-<short id>.EXT` where EXT is what follows the
/// last dot of the file name (not a leading dot), and
/// `NAME.conflict-<short id>` when there is none. `n > 1` adds `-n` after
/// the id. A name that would exceed the 255-byte limit is shortened at the
/// end of NAME.
pub fn conflict_name(path: &[u8], version: &VersionId, n: usize) -> Vec<u8> {
    let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let (mut stem, mut ext) = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &name[..0]),
    };
    let mut tag = format!(".conflict-{}", version.short());
    if n > 1 {
        tag.push_str(&format!("-{n}"));
    }
    let limit = dbox_store::limits::MAX_NAME_LEN;
    if stem.len() + tag.len() + ext.len() > limit {
        if tag.len() + ext.len() >= limit {
            ext = &ext[..0];
        }
        stem = &stem[..stem.len().min(limit.saturating_sub(tag.len() + ext.len()))];
    }
    let mut out = Vec::with_capacity(dir.len() + stem.len() + tag.len() + ext.len());
    out.extend_from_slice(dir);
    out.extend_from_slice(stem);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(ext);
    out
}

fn free_conflict_name(path: &[u8], version: &VersionId, taken: &Flat) -> Result<Vec<u8>> {
    for n in 1..=MAX_COPY_NAME_TRIES {
        let name = conflict_name(path, version, n);
        if !taken.contains_key(&name) {
            return Ok(name);
        }
    }
    Err(RepoError::UnsafePath {
        path: display(path),
        reason: format!("no free name for its conflict copy after {MAX_COPY_NAME_TRIES} tries"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn disjoint_edits_merge() {
        let base = "a\nb\nc\nd\ne\n";
        assert_eq!(
            merge_lines(base, "A\nb\nc\nd\ne\n", "a\nb\nc\nd\nE\n").as_deref(),
            Some("A\nb\nc\nd\nE\n")
        );
        assert_eq!(
            merge_lines(base, "a\nb\nc\nd\ne\nf\n", "x\na\nb\nc\nd\ne\n").as_deref(),
            Some("x\na\nb\nc\nd\ne\nf\n")
        );
        assert_eq!(merge_lines(base, "a\nc\nd\ne\n", "a\nb\nc\nd\n").as_deref(), Some("a\nc\nd\n"));
        // Both made the same edit: taken once.
        assert_eq!(
            merge_lines(base, "a\nB\nc\nd\ne\n", "a\nB\nc\nd\ne\n").as_deref(),
            Some("a\nB\nc\nd\ne\n")
        );
        // Without a final newline.
        assert_eq!(merge_lines("a\nb\nc", "A\nb\nc", "a\nb\nC").as_deref(), Some("A\nb\nC"));
    }

    #[test]
    fn overlapping_or_touching_edits_conflict() {
        let base = "a\nb\nc\nd\ne\n";
        assert_eq!(merge_lines(base, "a\nX\nc\nd\ne\n", "a\nY\nc\nd\ne\n"), None, "same line");
        assert_eq!(merge_lines(base, "a\nX\nc\nd\ne\n", "a\nb\nY\nd\ne\n"), None, "adjacent lines");
        assert_eq!(
            merge_lines(base, "a\nb\nx\nc\nd\ne\n", "a\nb\ny\nc\nd\ne\n"),
            None,
            "same insertion point"
        );
        assert_eq!(merge_lines("", "x\n", "y\n"), None);
    }

    #[test]
    fn conflict_names() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let v = VersionId([0x1a; 32]);
        let s = v.short();
        assert_eq!(conflict_name(b"notes.txt", &v, 1), format!("notes.conflict-{s}.txt").into_bytes());
        assert_eq!(conflict_name(b"d/Makefile", &v, 1), format!("d/Makefile.conflict-{s}").into_bytes());
        assert_eq!(conflict_name(b"a.tar.gz", &v, 2), format!("a.tar.conflict-{s}-2.gz").into_bytes());
        assert_eq!(conflict_name(b"x/.bashrc", &v, 1), format!("x/.bashrc.conflict-{s}").into_bytes());
        let long = vec![b'n'; 255];
        let c = conflict_name(&long, &v, 1);
        assert_eq!(c.len(), 255);
        dbox_store::Name::new(c)?;
        let mut long_ext = b"a.".to_vec();
        long_ext.extend(vec![b'e'; 250]);
        dbox_store::Name::new(conflict_name(&long_ext, &v, 7))?;
        Ok(())
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec("[abc]{0,2}\n?", 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn an_unchanged_side_gives_the_other(base in text(), side in text()) {
            prop_assert_eq!(merge_lines(&base, &base, &side), Some(side.clone()));
            prop_assert_eq!(merge_lines(&base, &side, &base), Some(side.clone()));
            prop_assert_eq!(merge_lines(&base, &side, &side), Some(side));
        }

        #[test]
        fn merging_is_symmetric(base in text(), ours in text(), theirs in text()) {
            prop_assert_eq!(merge_lines(&base, &ours, &theirs), merge_lines(&base, &theirs, &ours));
        }
    }
}
