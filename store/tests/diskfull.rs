//! Disk full, on a real 8 MiB tmpfs: a flush that runs out of space fails
//! with a clear error, loses nothing acknowledged, and succeeds once space is
//! freed. Needs root to mount the tmpfs (CI runs as root); elsewhere it says
//! so and does nothing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bytes, create_with, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::{Store, StoreError, StoreOptions};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_path_buf()))
}

fn has_enospc(e: &StoreError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        src = s.source();
    }
    false
}

#[test]
fn disk_full_fails_clearly_and_recovers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(_mount) = mount_tmpfs(dir.path(), "8m") else {
        eprintln!("SKIPPED disk_full_fails_clearly_and_recovers: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let root = dir.path().join("store");
    let opts = || StoreOptions {
        pack_target: 256 * 1024,
        chunker: common::small_chunks(),
        ..StoreOptions::default()
    };
    let store = create_with(&root, 1, opts())?;
    let w = store.writer()?;
    let acked = bytes(1, 1 << 20);
    let acked_file = w.put_file(&acked[..])?;
    w.flush()?;

    // Fill the file system.
    let filler = dir.path().join("filler");
    let mut f = std::fs::File::create(&filler)?;
    let block = vec![0x5a; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    drop(f);

    let fresh = bytes(2, 2 << 20);
    let mut failed = None;
    let fresh_file = match w.put_file(&fresh[..]) {
        Ok(file) => {
            if let Err(e) = w.flush() {
                failed = Some(e);
            }
            Some(file)
        }
        Err(e) => {
            failed = Some(e);
            None
        }
    };
    let e = failed.ok_or("a 2 MiB flush on a full file system must fail")?;
    assert!(has_enospc(&e), "the error carries ENOSPC: {e:?}");
    assert!(e.to_string().starts_with("cannot "), "{e}");

    // Nothing acknowledged is lost, and the store is sound.
    let reader = Store::open(&root, opts())?;
    assert!(reader.verify(&VerifyOptions::default())?.is_ok());
    let mut back = Vec::new();
    reader.read_file_to(&acked_file.chunks, &mut back)?;
    assert_eq!(back, acked);

    // Free space: the same writer completes.
    std::fs::remove_file(&filler)?;
    let fresh_file = match fresh_file {
        Some(f) => f,
        None => w.put_file(&fresh[..])?,
    };
    w.flush()?;
    drop(w);
    let s = Store::open(&root, opts())?;
    assert!(s.verify(&VerifyOptions { read_data: true })?.is_ok());
    let mut back = Vec::new();
    s.read_file_to(&fresh_file.chunks, &mut back)?;
    assert_eq!(back, fresh);
    Ok(())
}
