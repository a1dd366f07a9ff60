//! Crash-safe small-file writes for files under `.dbox/` and the home
//! directory: temp file in the same directory, fsync, rename, fsync of the
//! directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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

/// Reads a small file that must be a regular file (not a FIFO, device or
/// link) of at most `max` bytes; `Ok(None)` when it does not exist.
pub fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepoError::io("stat", path)(e)),
    };
    if !meta.file_type().is_file() {
        return Err(RepoError::Damaged { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    if meta.len() > max {
        return Err(RepoError::Damaged {
            path: path.to_path_buf(),
            reason: format!("{} bytes, more than the {max} it may hold", meta.len()),
        });
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(RepoError::io("open", path))?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&mut f).take(max + 1).read_to_end(&mut buf).map_err(RepoError::io("read", path))?;
    if buf.len() as u64 > max {
        return Err(RepoError::Damaged {
            path: path.to_path_buf(),
            reason: format!("more than {max} bytes"),
        });
    }
    Ok(Some(buf))
}

/// Appends `bytes` to `path` (created if missing) and fsyncs it. A torn
/// last line (a crash mid-append) is cut off first, so records never glue
/// together. Never follows a symbolic link.
pub fn append_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(RepoError::io("open", path))?;
    let meta = f.metadata().map_err(RepoError::io("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(RepoError::Damaged { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    let len = meta.len();
    if len > 0 {
        use std::io::{Seek, SeekFrom};
        // Find the last newline in the final 64 KiB (records are short).
        let tail = len.min(64 * 1024);
        let mut buf = vec![0u8; tail as usize];
        f.seek(SeekFrom::Start(len - tail)).map_err(RepoError::io("read", path))?;
        f.read_exact(&mut buf).map_err(RepoError::io("read", path))?;
        if buf.last() != Some(&b'\n') {
            let keep = match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => len - tail + i as u64 + 1,
                None if tail == len => 0,
                None => {
                    return Err(RepoError::Damaged {
                        path: path.to_path_buf(),
                        reason: "last line too long".into(),
                    })
                }
            };
            f.set_len(keep).map_err(RepoError::io("truncate", path))?;
        }
    }
    f.write_all(bytes).map_err(RepoError::io("write", path))?;
    f.sync_all().map_err(RepoError::io("fsync", path))?;
    // The file may be new: make its directory entry durable too.
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(RepoError::io("fsync directory", dir))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The state of a file: length, modification time, inode. Files under
/// `.dbox/` are only appended to or replaced whole (a new inode), so an
/// equal stamp means equal content.
pub(crate) type FileStamp = (u64, std::time::SystemTime, u64);

/// The [`FileStamp`] of `path`, if it exists.
pub(crate) fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// A value read from one file, kept until that file changes: repeated
/// requests cost a `stat`, not a re-read.
pub(crate) struct Kept<T> {
    path: std::path::PathBuf,
    slot: std::sync::Mutex<Option<(Option<FileStamp>, T)>>,
}

impl<T: Clone> Kept<T> {
    /// Nothing kept yet for `path`.
    pub(crate) fn new(path: std::path::PathBuf) -> Self {
        Self { path, slot: std::sync::Mutex::new(None) }
    }

    /// The kept value, whether or not the file changed since.
    pub(crate) fn any(&self) -> Option<T> {
        self.slot.lock().ok()?.as_ref().map(|(_, v)| v.clone())
    }

    /// The kept value if the file is unchanged since it was read.
    pub(crate) fn current(&self) -> Option<T> {
        let now = file_stamp(&self.path)?;
        let slot = self.slot.lock().ok()?;
        slot.as_ref().filter(|(seen, _)| *seen == Some(now)).map(|(_, v)| v.clone())
    }

    /// The file. Take its [`file_stamp`] before reading it, and hand that
    /// to [`Kept::keep`] with what was read.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps `value`, read from the file when it had `stamp`.
    pub(crate) fn keep(&self, stamp: Option<FileStamp>, value: T) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some((stamp, value));
        }
    }

    /// Forgets the kept value.
    pub(crate) fn forget(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
    }
}
