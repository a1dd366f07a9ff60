//! Crash-safe small-file writes for files under `.dbox/` and the home
//! directory: temp file in the same directory, fsync, rename, fsync of the
//! directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{RepoError, Result};

/// Replaces `path` with `bytes`, durably, with permissions `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut r = [0u8; 8];
    dbox_store::crypto::fill_random(&mut r)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(r)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(RepoError::io("create", &tmp))?;
        f.write_all(bytes).map_err(RepoError::io("write", &tmp))?;
        f.sync_all().map_err(RepoError::io("fsync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(RepoError::io("rename", &tmp))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(RepoError::io("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends `bytes` to `path` (created if missing) and fsyncs it.
pub fn append_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(RepoError::io("open", path))?;
    f.write_all(bytes).map_err(RepoError::io("write", path))?;
    f.sync_all().map_err(RepoError::io("fsync", path))?;
    // The file may be new: make its directory entry durable too.
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(RepoError::io("fsync directory", dir))
}
