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

/// Makes bytes in place for [`WriteFile::write_filled`]: called in order
/// with the offset into the bytes asked for and a part of them to
/// overwrite entirely.
pub type Fill<'a> = &'a mut dyn FnMut(usize, &mut [u8]);

/// A file being written.
pub trait WriteFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Appends `len` bytes that `fill` makes in place: it is called in
    /// order with the offset into those bytes and a part of them to
    /// overwrite entirely. A file that gathers writes in its own buffers
    /// has them made there, without a copy; by default they are made in a
    /// new buffer and written.
    fn write_filled(&mut self, len: usize, fill: Fill<'_>) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        fill(0, &mut buf);
        self.write_all(&buf)
    }
    /// Makes the contents durable (fsync). A file dropped without it may
    /// not hold everything written (it is about to be removed).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A file open for positioned reads.
#[allow(clippy::len_without_is_empty)] // a file of length 0 is not a special case here
pub trait ReadAt: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads exactly `len` bytes at `offset` into a new vector.
    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
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
    /// [`Vfs::create_new`] for a large file that will not be read back
    /// soon (a pack): where the file system allows, its bytes bypass the
    /// page cache (see [`OsFs`]).
    fn create_new_direct(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.create_new(path)
    }
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
///
/// Packs are written with `O_DIRECT` where the file system takes it
/// ([`Vfs::create_new_direct`]): their bytes go from the process's buffer
/// to the device, with no copy into the page cache. A pack is written once,
/// fsynced at once and seldom read soon after, so caching it only pushes
/// out pages someone wants; the copy also costs as much CPU as hashing the
/// bytes, and on virtual machines whose fresh memory is slow to touch much
/// more. Measured here on 1 GB in 256 KiB writes with an fsync: 1.1 s
/// direct against 0.9–3.0 s buffered on the virtual disk, 1.6 s against
/// 5.3–8.0 s on an ext4 loop device. Where `O_DIRECT` is refused (tmpfs
/// before Linux 6.6, some network file systems) the file is written the
/// ordinary way.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// What `O_DIRECT` asks of buffer addresses, lengths and file offsets: a
/// multiple of the device's logical block size, which is 512 or 4096.
#[cfg(target_os = "linux")]
const DIRECT_ALIGN: usize = 4096;
/// Bytes gathered before each direct write.
#[cfg(target_os = "linux")]
const DIRECT_STAGE: usize = 1 << 20;

/// An aligned buffer of `DIRECT_STAGE` bytes.
#[cfg(target_os = "linux")]
struct Stage {
    /// `DIRECT_STAGE + DIRECT_ALIGN` bytes; the stage is the aligned part
    /// from `start`.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

#[cfg(target_os = "linux")]
impl Stage {
    fn new() -> Self {
        let buf = vec![0u8; DIRECT_STAGE + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        Self { buf, start, filled: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.filled]
    }
}

/// A file written through `O_DIRECT`. Writes are gathered in aligned
/// stages; a thread of the file's own writes each full stage while the
/// next one fills, so whatever makes the bytes (a pack's keystream and
/// hash) runs while the device works. The last stage's tail, shorter than
/// a block, is written after direct I/O is turned off on the descriptor.
/// A write the file system refuses as misaligned (`EINVAL`) turns direct
/// I/O off for the rest of the file, which is then written the ordinary
/// way from the first byte not yet written. The first failed write ends
/// the writing; its error comes back from the next call.
#[cfg(target_os = "linux")]
struct DirectWriteFile {
    stage: Stage,
    /// Full stages to the writing thread; `true` marks the last one.
    to_io: Option<std::sync::mpsc::SyncSender<(Stage, bool)>>,
    /// Written stages back, for reuse.
    spare: std::sync::mpsc::Receiver<Stage>,
    io: Option<std::thread::JoinHandle<io::Result<File>>>,
    /// Stages made so far (at most two: one filling, one being written).
    stages: usize,
}

#[cfg(target_os = "linux")]
impl DirectWriteFile {
    fn new(file: File) -> io::Result<Self> {
        let (to_io, from_main) = std::sync::mpsc::sync_channel::<(Stage, bool)>(1);
        let (back, spare) = std::sync::mpsc::channel();
        let io = std::thread::Builder::new().name("dbox-direct-io".into()).spawn(move || {
            let mut w = DirectWriter { file, direct: true };
            for (stage, last) in from_main {
                w.write_stage(stage.bytes(), last)?;
                // The other end may be gone after its last stage.
                let _ = back.send(stage);
            }
            Ok(w.file)
        })?;
        Ok(Self { stage: Stage::new(), to_io: Some(to_io), spare, io: Some(io), stages: 1 })
    }

    /// Hands the filled stage to the writing thread and takes a fresh one.
    fn send(&mut self, last: bool) -> io::Result<()> {
        let next = match self.spare.try_recv() {
            Ok(s) => s,
            Err(_) if self.stages < 2 => {
                self.stages += 1;
                Stage::new()
            }
            // Both stages out: wait until the thread is done with one (or
            // has stopped on an error).
            Err(_) => match self.spare.recv() {
                Ok(s) => s,
                Err(_) => return Err(self.failure()),
            },
        };
        let full = std::mem::replace(&mut self.stage, next);
        self.stage.filled = 0;
        let sent = match &self.to_io {
            Some(to_io) => to_io.send((full, last)).is_ok(),
            None => false,
        };
        match sent {
            true => Ok(()),
            false => Err(self.failure()),
        }
    }

    /// Why the writing thread stopped early.
    fn failure(&mut self) -> io::Error {
        match self.finish() {
            Err(e) => e,
            Ok(_) => io::Error::other("the writing thread stopped early"),
        }
    }

    /// Waits for the writing thread: the file, or the first error.
    fn finish(&mut self) -> io::Result<File> {
        self.to_io = None;
        match self.io.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(io::Error::other("the writing thread panicked"))),
            None => Err(io::Error::other("the file is already finished")),
        }
    }
}

#[cfg(target_os = "linux")]
impl WriteFile for DirectWriteFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_filled(buf.len(), &mut |at, out| out.copy_from_slice(&buf[at..at + out.len()]))
    }

    fn write_filled(&mut self, len: usize, fill: Fill<'_>) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let st = &mut self.stage;
            let n = (len - done).min(DIRECT_STAGE - st.filled);
            let at = st.start + st.filled;
            fill(done, &mut st.buf[at..at + n]);
            st.filled += n;
            done += n;
            if st.filled == DIRECT_STAGE {
                self.send(false)?;
            }
        }
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.send(true)?;
        self.finish()?.sync_all()
    }
}

#[cfg(target_os = "linux")]
impl Drop for DirectWriteFile {
    fn drop(&mut self) {
        // No write may land after the caller moved on (say, removed the file).
        if self.io.is_some() {
            let _ = self.finish();
        }
    }
}

/// The writing end of a [`DirectWriteFile`].
#[cfg(target_os = "linux")]
struct DirectWriter {
    file: File,
    direct: bool,
}

#[cfg(target_os = "linux")]
impl DirectWriter {
    fn stop_direct(&mut self) -> io::Result<()> {
        if self.direct {
            let mut flags = rustix::fs::fcntl_getfl(&self.file)?;
            flags.remove(rustix::fs::OFlags::DIRECT);
            rustix::fs::fcntl_setfl(&self.file, flags)?;
            self.direct = false;
        }
        Ok(())
    }

    /// Writes a stage: whole blocks directly; with `last`, the tail after
    /// them the ordinary way.
    fn write_stage(&mut self, bytes: &[u8], last: bool) -> io::Result<()> {
        let whole = bytes.len() - bytes.len() % DIRECT_ALIGN;
        self.write(&bytes[..whole])?;
        if whole < bytes.len() {
            debug_assert!(last, "only the last stage is short");
            self.stop_direct()?;
            self.write(&bytes[whole..])?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match self.file.write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => self.stop_direct()?,
                Err(e) => return Err(e),
            }
            // A short direct write leaves the file offset unaligned.
            if done % DIRECT_ALIGN != 0 {
                self.stop_direct()?;
            }
        }
        Ok(())
    }
}

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

    /// Into memory not zeroed first (a server reads every object it sends
    /// this way; zeroing them cost about 3 % of its time).
    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(&self.0, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The capacity may exceed what was asked for, and so may the read.
        buf.truncate(len);
        Ok(buf)
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

    // Elsewhere, the trait's default: an ordinary file.
    #[cfg(target_os = "linux")]
    fn create_new_direct(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(f) => match DirectWriteFile::new(f) {
                Ok(w) => Ok(Box::new(w)),
                Err(e) => {
                    let _ = fs::remove_file(path);
                    Err(e)
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // No direct I/O here. The open may have created the file
                // before refusing the flag; the name is new, so it is ours.
                let _ = fs::remove_file(path);
                self.create_new(path)
            }
            Err(e) => Err(e),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_vec_at_reads_exactly_or_says_the_file_ends() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 + i / 255) as u8).collect();
        fs::write(&path, &data)?;
        let f = OsFs.open_read(&path)?;
        for (len, at) in [(0, 0), (1, 0), (100_000, 0), (4096, 12_345), (1, 99_999), (0, 100_000)] {
            assert_eq!(f.read_vec_at(len, at as u64)?, &data[at..at + len], "{len} at {at}");
        }
        for (len, at) in [(2, 99_999), (1, 100_000), (100_001, 0)] {
            let e = f.read_vec_at(len, at).err().map(|e| e.kind());
            assert_eq!(e, Some(io::ErrorKind::UnexpectedEof), "{len} at {at}");
        }
        Ok(())
    }

    /// Writes `len` bytes in pieces of the sizes `pieces` cycles through
    /// (made in place with `filled`), then reads the file back.
    #[cfg(target_os = "linux")]
    fn direct_roundtrip(dir: &Path, len: usize, pieces: &[usize], filled: bool) -> io::Result<()> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let path = dir.join(format!("f{len}"));
        let mut f = OsFs.create_new_direct(&path)?;
        let mut at = 0;
        for n in pieces.iter().cycle() {
            if at >= len {
                break;
            }
            let end = (at + n).min(len);
            if filled {
                let mut next = at;
                f.write_filled(end - at, &mut |off, dst| {
                    assert_eq!(at + off, next, "parts come in order");
                    dst.copy_from_slice(&data[at + off..at + off + dst.len()]);
                    next += dst.len();
                })?;
                assert_eq!(next, end, "every byte asked for is made");
            } else {
                f.write_all(&data[at..end])?;
            }
            at = end;
        }
        f.sync_all()?;
        drop(f);
        assert_eq!(fs::read(&path)?, data, "{len} bytes in pieces of {pieces:?}");
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn lengths() -> Vec<usize> {
        vec![
            0,
            1,
            36,
            4095,
            4096,
            4097,
            DIRECT_STAGE - 1,
            DIRECT_STAGE,
            DIRECT_STAGE + 36,
            3 * DIRECT_STAGE + 5000,
        ]
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn direct_writes_read_back_whatever_the_lengths() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for len in lengths() {
            for pieces in [&[36, 256 << 10][..], &[1 << 30], &[1, 4095, 7000]] {
                for filled in [false, true] {
                    direct_roundtrip(dir.path(), len, pieces, filled)?;
                    fs::remove_file(dir.path().join(format!("f{len}")))?;
                }
            }
        }
        Ok(())
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn direct_writes_work_where_the_file_system_refuses_direct_io() -> io::Result<()> {
        // tmpfs refused O_DIRECT before Linux 6.6; either way the bytes land.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else { return Ok(()) };
        for len in lengths() {
            direct_roundtrip(dir.path(), len, &[36, 256 << 10], len % 2 == 1)?;
        }
        // Only the files written are there: a refused open leaves nothing.
        assert_eq!(fs::read_dir(dir.path())?.count(), lengths().len());
        Ok(())
    }

    #[test]
    fn a_direct_file_is_new_and_private() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("p");
        drop(OsFs.create_new_direct(&path)?);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path)?.permissions()) & 0o777,
            0o600
        );
        assert!(OsFs.create_new_direct(&path).is_err(), "an existing file is not overwritten");
        Ok(())
    }
}
