//! A [`Vfs`] that fails on command, for crash and fault tests.
//!
//! It counts operations of each [`Op`] kind and fails the Nth one, once
//! ([`FaultMode::Transient`]) or from then on ([`FaultMode::Permanent`]); a
//! failed write may first write half its buffer ([`FaultMode::Torn`]), as a
//! crash or a full disk can.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{LockGuard, OsFs, ReadAt, Vfs, WriteFile};

/// Operations that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creating a file.
    Create,
    /// Writing to a file.
    Write,
    /// fsync of a file.
    Sync,
    /// Renaming.
    Rename,
    /// fsync of a directory.
    SyncDir,
}

/// How the chosen operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the Nth operation fails.
    Transient,
    /// The Nth and every later operation of the kind fail.
    Permanent,
    /// The Nth write writes half its buffer, then fails (writes only).
    Torn,
}

#[derive(Debug, Default)]
struct State {
    counts: [u64; 5],
    plan: Option<(Op, u64, FaultMode)>,
    failed: u64,
}

/// A fault-injecting wrapper around [`OsFs`].
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

impl FaultFs {
    /// A file system that does not fail until [`FaultFs::fail`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the `n`th (1-based, counted from now) operation of kind `op`.
    pub fn fail(&self, op: Op, n: u64, mode: FaultMode) {
        let mut s = self.lock();
        s.counts = [0; 5];
        s.failed = 0;
        s.plan = Some((op, n, mode));
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.lock().plan = None;
    }

    /// How many operations failed since the last [`FaultFs::fail`].
    pub fn failures(&self) -> u64 {
        self.lock().failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an operation and says whether (and how) it fails.
    fn check(&self, op: Op) -> Option<FaultMode> {
        let mut s = self.lock();
        s.counts[op as usize] += 1;
        let n = s.counts[op as usize];
        match s.plan {
            Some((o, at, mode)) if o == op && (n == at || (mode == FaultMode::Permanent && n > at)) => {
                s.failed += 1;
                Some(mode)
            }
            _ => None,
        }
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

struct FaultFile {
    inner: Box<dyn WriteFile>,
    fs: FaultFs,
}

impl WriteFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.fs.check(Op::Write) {
            None => self.inner.write_all(buf),
            Some(FaultMode::Torn) => {
                self.inner.write_all(&buf[..buf.len() / 2])?;
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }

    fn sync_all(&mut self) -> io::Result<()> {
        match self.fs.check(Op::Sync) {
            None => self.inner.sync_all(),
            Some(_) => Err(injected()),
        }
    }
}

impl Vfs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir_all(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        if self.check(Op::Create).is_some() {
            return Err(injected());
        }
        Ok(Box::new(FaultFile { inner: OsFs.create_new(path)?, fs: self.clone() }))
    }

    fn create_new_direct(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        if self.check(Op::Create).is_some() {
            return Err(injected());
        }
        Ok(Box::new(FaultFile { inner: OsFs.create_new_direct(path)?, fs: self.clone() }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        OsFs.open_read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.check(Op::Rename).is_some() {
            return Err(injected());
        }
        OsFs.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.check(Op::SyncDir).is_some() {
            return Err(injected());
        }
        OsFs.sync_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        OsFs.list_dir(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        OsFs.exists(path)
    }

    fn try_lock(&self, path: &Path, pid: u32) -> io::Result<Option<LockGuard>> {
        OsFs.try_lock(path, pid)
    }
}
