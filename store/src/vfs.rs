//! The file layer under the store, behind a small trait so tests can inject
//! faults ([`fault::FaultFs`]) or swap the implementation.
//!
//! The store only ever creates new files (in `tmp/`), writes them
//! sequentially, fsyncs, renames them into place and fsyncs the directory; it
//! reads with positioned reads and never modifies a file after its rename.
//! That is all this trait offers.

use std::any::Any;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

pub mod fault;

/// A file being written.
pub trait WriteFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the contents durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A file open for positioned reads.
#[allow(clippy::len_without_is_empty)] // a file of length 0 is not a special case here
pub trait ReadAt: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
}

/// A held lock; dropping it releases the lock.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// The operations the store needs from a file system.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file, failing if it exists, readable by the owner only.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens a file for positioned reads.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>>;
    /// Renames a file, replacing any file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (fsync of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, in no order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Takes an exclusive lock on `path` (created if missing) without
    /// waiting and writes `pid` into it. `Ok(None)` when another holds it.
    fn try_lock(&self, path: &Path, pid: u32) -> io::Result<Option<LockGuard>>;

    /// Reads a whole small file; a file longer than `max` bytes is an
    /// `InvalidData` error, before anything is allocated.
    fn read_file(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        let f = self.open_read(path)?;
        let len = f.len()?;
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is over {max} bytes", path.display()),
            ));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

struct OsWriteFile(File);

impl WriteFile for OsWriteFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

struct OsReadFile(File);

impl ReadAt for OsReadFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Vfs for OsFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        Ok(Box::new(OsWriteFile(f)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(OsReadFile(File::open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn try_lock(&self, path: &Path, pid: u32) -> io::Result<Option<LockGuard>> {
        let mut f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        f.set_len(0)?;
        f.write_all(format!("{pid}\n").as_bytes())?;
        Ok(Some(Box::new(f)))
    }
}
