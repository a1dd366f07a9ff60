//! Crash-safe creation of files: write to `tmp/`, fsync, rename into place,
//! fsync the directory. A [`TmpFile`] dropped before [`TmpFile::commit`]
//! removes itself (best effort; the next writer clears `tmp/` anyway).

use std::path::{Path, PathBuf};

use crate::crypto::fill_random;
use crate::error::StoreError;
use crate::vfs::{Fill, Vfs, WriteFile};

/// A file being written in the temp directory.
pub(crate) struct TmpFile<'a> {
    vfs: &'a dyn Vfs,
    path: PathBuf,
    file: Option<Box<dyn WriteFile>>,
}

impl<'a> TmpFile<'a> {
    /// Creates a new, uniquely named file in `tmp_dir`.
    pub(crate) fn create(vfs: &'a dyn Vfs, tmp_dir: &Path) -> Result<Self, StoreError> {
        Self::create_with(vfs, tmp_dir, false)
    }

    /// [`TmpFile::create`] for a pack: see [`Vfs::create_new_direct`].
    pub(crate) fn create_direct(vfs: &'a dyn Vfs, tmp_dir: &Path) -> Result<Self, StoreError> {
        Self::create_with(vfs, tmp_dir, true)
    }

    fn create_with(vfs: &'a dyn Vfs, tmp_dir: &Path, direct: bool) -> Result<Self, StoreError> {
        let mut r = [0u8; 12];
        fill_random(&mut r)?;
        let path = tmp_dir.join(format!("{}.tmp", hex::encode(r)));
        let file = match direct {
            true => vfs.create_new_direct(&path),
            false => vfs.create_new(&path),
        }
        .map_err(StoreError::io("create", &path))?;
        Ok(Self { vfs, path, file: Some(file) })
    }

    /// Appends bytes.
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let f = self.file.as_mut().expect("the file is open until commit");
        f.write_all(buf).map_err(StoreError::io("write", &self.path))
    }

    /// Appends `len` bytes made in place by `fill`: see
    /// [`WriteFile::write_filled`].
    pub(crate) fn write_filled(&mut self, len: usize, fill: Fill<'_>) -> Result<(), StoreError> {
        let f = self.file.as_mut().expect("the file is open until commit");
        f.write_filled(len, fill).map_err(StoreError::io("write", &self.path))
    }

    /// Makes the file durable under `dest`, replacing any file there.
    pub(crate) fn commit(mut self, dest: &Path) -> Result<(), StoreError> {
        let mut f = self.file.take().expect("the file is open until commit");
        f.sync_all().map_err(StoreError::io("fsync", &self.path))?;
        drop(f);
        self.vfs.rename(&self.path, dest).map_err(StoreError::io("rename", &self.path))?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        self.vfs.sync_dir(dir).map_err(StoreError::io("fsync directory", dir))?;
        Ok(())
    }
}

impl Drop for TmpFile<'_> {
    fn drop(&mut self) {
        // The file first: a direct file's writing thread stops before the
        // name goes.
        if self.file.take().is_some() {
            let _ = self.vfs.remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `dest` crash-safely through a temp file in `tmp_dir`.
pub(crate) fn write_file(vfs: &dyn Vfs, tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut t = TmpFile::create(vfs, tmp_dir)?;
    t.write(bytes)?;
    t.commit(dest)
}
