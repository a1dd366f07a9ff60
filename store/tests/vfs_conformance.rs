//! Conformance tests that every `Vfs` implementation passes, and a whole
//! store run on each.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{bytes, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::vfs::fault::FaultFs;
use dbox_store::vfs::{OsFs, Vfs};
use dbox_store::{RepoId, RepoKey, Store, StoreOptions};

fn implementations() -> Vec<(&'static str, Arc<dyn Vfs>)> {
    vec![("OsFs", Arc::new(OsFs)), ("FaultFs without faults", Arc::new(FaultFs::new()))]
}

fn conformance(name: &str, fs: &dyn Vfs, dir: &Path) -> TestResult {
    let sub = dir.join("a/b");
    fs.create_dir_all(&sub)?;
    fs.create_dir_all(&sub)?;
    let p = sub.join("f");
    assert!(!fs.exists(&p)?, "{name}");
    let mut f = fs.create_new(&p)?;
    f.write_all(b"hello ")?;
    f.write_all(b"world")?;
    f.sync_all()?;
    drop(f);
    assert!(fs.exists(&p)?, "{name}");
    assert!(fs.create_new(&p).is_err(), "{name}: create_new must not replace a file");
    let r = fs.open_read(&p)?;
    assert_eq!(r.len()?, 11, "{name}");
    let mut buf = [0u8; 5];
    r.read_exact_at(&mut buf, 6)?;
    assert_eq!(&buf, b"world", "{name}");
    assert!(r.read_exact_at(&mut buf, 8).is_err(), "{name}: reading past the end fails");
    assert_eq!(fs.read_file(&p, 100)?, b"hello world", "{name}");
    let too_long = fs.read_file(&p, 5).expect_err("a file over the maximum is refused");
    assert_eq!(too_long.kind(), std::io::ErrorKind::InvalidData, "{name}");

    let q = sub.join("g");
    fs.create_new(&q)?.write_all(b"other")?;
    fs.rename(&q, &p)?;
    assert_eq!(fs.read_file(&p, 100)?, b"other", "{name}: rename replaces");
    assert!(!fs.exists(&q)?, "{name}");
    fs.sync_dir(&sub)?;
    let mut names = fs.list_dir(&sub)?;
    names.sort();
    assert_eq!(names, vec![std::ffi::OsString::from("f")], "{name}");
    fs.remove_file(&p)?;
    assert!(!fs.exists(&p)?, "{name}");
    assert!(fs.remove_file(&p).is_err(), "{name}");

    let lock = dir.join("lock");
    let g = fs.try_lock(&lock, 42)?.ok_or("first lock")?;
    assert!(fs.try_lock(&lock, 43)?.is_none(), "{name}: the lock is exclusive");
    assert_eq!(fs.read_file(&lock, 100)?, b"42\n", "{name}: the lock names its holder");
    drop(g);
    assert!(fs.try_lock(&lock, 44)?.is_some(), "{name}: dropping releases");
    Ok(())
}

#[test]
fn every_vfs_conforms() -> TestResult {
    for (name, fs) in implementations() {
        let dir = tempfile::tempdir()?;
        conformance(name, &*fs, dir.path())?;
    }
    Ok(())
}

#[test]
fn a_store_works_on_every_vfs() -> TestResult {
    for (name, fs) in implementations() {
        let dir = tempfile::tempdir()?;
        let opts = || StoreOptions { vfs: fs.clone(), ..common::options() };
        let store = Store::create(dir.path(), RepoId([1; 32]), &RepoKey::from_bytes([1; 32]), opts())?;
        let w = store.writer()?;
        let data = bytes(1, 300_000);
        let f = w.put_file(&data[..])?;
        w.flush()?;
        drop(w);
        let s = Store::open(dir.path(), opts())?;
        let mut back = Vec::new();
        s.read_file_to(&f.chunks, &mut back)?;
        assert_eq!(back, data, "{name}");
        assert!(s.verify(&VerifyOptions { read_data: true })?.is_ok(), "{name}");
    }
    Ok(())
}
