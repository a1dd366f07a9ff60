//! Writes a few well-formed seed inputs for every fuzz target into
//! `corpus/<target>/seed-*`, so the fuzzers start from valid structures.
//!
//! `cargo run --example seeds` from `fuzz/`; the files it writes are
//! committed, so this needs to run again only when a format changes.

use std::fs;
use std::path::Path;

use dbox_store::keyfile::encode_key_file;
use dbox_store::pack::PackBuilder;
use dbox_store::{
    object, Name, Node, ObjectId, ObjectKind, RepoId, RepoKey, SignedVersion, Store, StoreOptions, Tree,
    TreeEntry, VersionBody, VersionId, VersionInfo,
};
use dbox_store_fuzz::{author, keys, REPO_KEY};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn text(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog\n".iter().copied().cycle().take(n).collect()
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_tree() -> Result<Tree> {
    Ok(Tree::new(vec![
        TreeEntry {
            name: Name::new("a.txt")?,
            node: Node::File { size: 10, chunks: vec![ObjectId([1; 32])], executable: false },
            mtime_ns: Some(1_700_000_000_000_000_000),
        },
        TreeEntry {
            name: Name::new("run")?,
            node: Node::File { size: 0, chunks: vec![], executable: true },
            mtime_ns: Some(-1),
        },
        TreeEntry { name: Name::new("sub")?, node: Node::Dir { tree: ObjectId([2; 32]) }, mtime_ns: None },
        TreeEntry {
            name: Name::new(b"\xfflink".to_vec())?,
            node: Node::Symlink { target: b"../a.txt".to_vec() },
            mtime_ns: None,
        },
    ])?)
}

fn main() -> Result<()> {
    let keys = keys();
    let tree = sample_tree()?;

    write("tree_decode", "empty", &Tree::default().encode())?;
    write("tree_decode", "four", &tree.encode())?;

    let (repo, key) = (RepoId([1; 32]), RepoKey::from_bytes([2; 32]));
    write("key_file", "valid", &encode_key_file(&repo, &key))?;

    write("chunker", "noise", &[&[0][..], &noise(5000)].concat())?;
    write("chunker", "zeros", &[&[9][..], &[0; 3000][..]].concat())?;
    write("chunker", "text", &[&[40][..], &text(2500)].concat())?;

    // delta: [mode][at][base | delta or target], split at (mode >> 1) * 256 + at.
    let base = text(600);
    let mut target = base.clone();
    target.splice(300..300, noise(40));
    let d = dbox_store::delta::encode(&base, &target).ok_or("no delta")?;
    write("delta", "decode", &[&[4, 88][..], &base, &d].concat())?;
    write("delta", "round-trip", &[&[5, 88][..], &base, &target].concat())?;

    let info = VersionInfo::new("first version", 1_700_000_000_000, "host");
    let sealed_info = info.seal(keys, &repo)?;
    let body = VersionBody {
        repo,
        parents: vec![VersionId([4; 32]), VersionId([5; 32])],
        root: ObjectId([6; 32]),
        author: dbox_store::PeerId(author().verifying_key().to_bytes()),
        seq: 3,
        sealed_info: sealed_info.clone(),
    };
    let version = SignedVersion::sign(body, &author())?;
    write("version_decode", "stored", version.stored())?;
    write("version_decode", "body", &[&[0x10][..], &version.stored()[98..]].concat())?;
    let aad = [&b"dbox version info v1"[..], repo.as_bytes()].concat();
    let info_plain = keys.info.open(&aad, &sealed_info)?;
    write("version_decode", "info", &[&[0x11][..], &info_plain].concat())?;

    let (_, chunk) = object::seal(keys, ObjectKind::Chunk, &text(3000));
    let (_, tree_obj) = object::seal(keys, ObjectKind::Tree, &tree.encode());
    write("object_open", "chunk", &chunk)?;
    write("object_open", "tree", &tree_obj)?;
    write("object_open", "plain", &[&[0x10, 0][..], b"hello"].concat())?;
    let frame = zstd::bulk::compress(&tree.encode(), 3)?;
    write("object_open", "zstd", &[&[0x11, 1][..], &frame].concat())?;
    write("object_open", "damaged-zstd", &[&[0x12, 0, 0, 0][..], &text(400)].concat())?;
    write("object_open", "seal", &[&[0x15][..], &tree.encode()].concat())?;

    let mut b = PackBuilder::new(keys);
    b.push(ObjectId::of(&chunk), &chunk);
    b.push(ObjectId::of(&tree_obj), &tree_obj);
    let tail = b.seal()?;
    write("pack_header", "sealed", &dbox_store_fuzz::pack_bytes(&b, &tail))?;
    write("pack_header", "built", &[&[0x10, 5][..], b"hello", &[6], b"world!", &[0]].concat())?;
    let mut header = vec![0x11, 11, 0, 3, 2];
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&[8; 32]);
    header.extend_from_slice(&(dbox_store::pack::BODY_START as u64).to_le_bytes());
    header.extend_from_slice(&11u32.to_le_bytes());
    write("pack_header", "forged", &header)?;

    // A real store's pack and index segment.
    let dir = std::env::temp_dir().join(format!("dbox-fuzz-seeds-{}", std::process::id()));
    let store = Store::create(&dir, repo, &RepoKey::from_bytes(REPO_KEY), StoreOptions::default())?;
    let w = store.writer()?;
    for i in 0..40 {
        w.put_chunk(&noise(100 + i))?;
    }
    w.put_tree(&tree)?;
    w.flush()?;
    drop(w);
    for (sub, target) in [("packs", "pack_header"), ("index", "index_segment")] {
        for e in fs::read_dir(dir.join(sub))? {
            write(target, "store", &fs::read(e?.path())?)?;
        }
    }
    drop(store);
    fs::remove_dir_all(&dir)?;

    let mut seg = vec![0x10, 0, 2, 1, 0, 0, 0, 0, 0, 0];
    for i in 0..24u8 {
        seg.extend_from_slice(&[i.wrapping_mul(37), i, 7, i % 2, i, 0, 100, 0]);
    }
    write("index_segment", "built", &seg)?;
    Ok(())
}
