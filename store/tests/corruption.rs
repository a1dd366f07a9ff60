//! Corruption sweep: every byte of every pack, index segment and the key
//! file of a small store is flipped in turn. Each time, opening either fails
//! with an error or every read returns the right bytes or an error (never
//! wrong data, never a panic), and `verify` reports a problem.

mod common;

use common::{bytes, create, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::{
    Name, Node, ObjectId, PeerId, SignedVersion, Store, Tree, TreeEntry, VersionBody, VersionId, VersionInfo,
};

enum Expect {
    Chunk(ObjectId, Vec<u8>),
    Tree(ObjectId, Tree),
    Version(VersionId),
}

fn build(dir: &std::path::Path) -> Result<Vec<Expect>, Box<dyn std::error::Error>> {
    let store = create(dir, 1)?;
    let w = store.writer()?;
    let mut expect = Vec::new();
    let a = bytes(1, 700);
    let b = b"text text text text text text text text text text text text text text".repeat(20);
    let ida = w.put_chunk(&a)?;
    let idb = w.put_chunk(&b)?;
    expect.push(Expect::Chunk(ida, a));
    expect.push(Expect::Chunk(idb, b.clone()));
    w.flush()?;
    let tree = Tree::new(vec![TreeEntry {
        name: Name::new("b.txt")?,
        node: Node::File { size: b.len() as u64, chunks: vec![idb], executable: false },
        mtime_ns: None,
    }])?;
    let root = w.put_tree(&tree)?;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let repo = store.repo_id();
    let v = SignedVersion::sign(
        VersionBody {
            repo,
            parents: vec![],
            root,
            author: PeerId(sk.verifying_key().to_bytes()),
            seq: 1,
            sealed_info: VersionInfo::new("m", 1, "h").seal(store.keys(), &repo)?,
        },
        &sk,
    )?;
    let vid = w.put_version(&v)?;
    w.flush()?;
    expect.push(Expect::Tree(root, tree));
    expect.push(Expect::Version(vid));
    Ok(expect)
}

fn files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, std::io::Error> {
    let mut out = vec![dir.join("key")];
    for sub in ["packs", "index"] {
        for e in std::fs::read_dir(dir.join(sub))? {
            out.push(e?.path());
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn every_flipped_byte_is_reported_and_never_returns_wrong_data() -> TestResult {
    let dir = tempfile::tempdir()?;
    let expect = build(dir.path())?;
    let files = files(dir.path())?;
    assert!(files.len() >= 5, "key, two packs, two segments: {files:?}");
    let mut flips = 0;
    let mut open_refused = 0;
    let mut reads_refused = 0;
    for path in &files {
        let original = std::fs::read(path)?;
        for i in 0..original.len() {
            let mut damaged = original.clone();
            damaged[i] ^= 0xff;
            std::fs::write(path, &damaged)?;
            flips += 1;
            let what = format!("{} byte {i}", path.display());
            match Store::open(dir.path(), common::options()) {
                Err(_) => open_refused += 1,
                Ok(store) => {
                    for e in &expect {
                        let ok = match e {
                            Expect::Chunk(id, data) => {
                                store.get_chunk(id).map(|d| assert_eq!(&d, data, "{what}"))
                            }
                            Expect::Tree(id, t) => store.get_tree(id).map(|d| assert_eq!(&d, t, "{what}")),
                            Expect::Version(id) => {
                                store.get_version(id).map(|v| assert_eq!(v.id(), *id, "{what}"))
                            }
                        };
                        if ok.is_err() {
                            reads_refused += 1;
                        }
                    }
                    if let Ok(report) = store.verify(&VerifyOptions { read_data: true }) {
                        assert!(!report.is_ok(), "{what}: verify found nothing");
                    }
                }
            }
        }
        std::fs::write(path, &original)?;
    }
    eprintln!("{flips} flips: open refused {open_refused}, reads refused {reads_refused}");
    // The untouched store is whole again.
    let store = Store::open(dir.path(), common::options())?;
    assert!(store.verify(&VerifyOptions { read_data: true })?.is_ok());
    Ok(())
}
