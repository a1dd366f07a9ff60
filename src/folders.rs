//! Writing a tree's entries through folder handles.
//!
//! A restore or checkout writes tens of thousands of entries under one
//! root. Checking every parent of every path with `lstat` and then using
//! the full path again costs several path walks per entry, and still leaves
//! a moment between the check and the use. [`Folders`] opens each folder
//! once, relative to its own parent and without following a link
//! (`O_NOFOLLOW | O_DIRECTORY`), and every write names one component
//! relative to such a handle (`mkdirat`, `openat`, `linkat`, `renameat`).
//! A symbolic link or a file where a folder belongs is an
//! [`RepoError::UnsafePath`]; nothing is ever written through a link.
//!
//! Handles are kept in a bounded map (entries come in path order, so
//! siblings share them) of [`MAX_OPEN`], or a quarter of the open files
//! the process may have if that is less; when the system says too many
//! files are open all the same, the map is emptied and the open tried
//! again. Each folder opened is remembered with its identity (device and
//! inode), so that [`Folders::moved`] can tell, after a long write, whether
//! some folder was moved or replaced meanwhile (the handles follow the
//! folder, not the path). Removing a folder with what it holds also goes
//! through handles.
//! A path longer than the system takes ([`libc::PATH_MAX`]) is refused:
//! written through handles it could be made, but nothing could read it.
//!
//! A new file that must not replace anything (a fresh checkout) is written
//! as an unnamed file (`O_TMPFILE`) and linked into place only when
//! complete, so a killed process leaves no temporary file behind, and a
//! path taken meanwhile is found by the link (`EEXIST`). Where unnamed files
//! are not available (another file system or system), a named temporary
//! file is linked and removed instead.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{RepoError, Result};
use crate::worktree::{abs_path, display};

/// Handles kept open at most; the map is emptied when it is full.
const MAX_OPEN: usize = 64;

/// [`MAX_OPEN`], or a quarter of the process's limit of open files.
fn max_open() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    limit.map_or(MAX_OPEN, |l| usize::try_from(l / 4).unwrap_or(MAX_OPEN).clamp(1, MAX_OPEN))
}

/// Flags of a folder handle: never through a link, only a folder.
fn dir_flags() -> OFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let kind = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let kind = OFlags::RDONLY;
    kind | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> RepoError + 'a {
    move |e| RepoError::io(op, path)(e.into())
}

/// The last component of a tree path and the path of its folder ("" for
/// the root).
fn split(path: &[u8]) -> (&[u8], &OsStr) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], OsStr::from_bytes(&path[i + 1..])),
        None => (&[], OsStr::from_bytes(path)),
    }
}

/// Open folders of the tree under one root.
pub(crate) struct Folders {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    open: Mutex<HashMap<Vec<u8>, Arc<OwnedFd>>>,
    /// Handles kept at most ([`max_open`]).
    max_open: usize,
    /// Every folder opened, with its device and inode then.
    seen: Mutex<HashMap<Vec<u8>, (u64, u64)>>,
}

/// Where an entry goes: its folder's handle and its name in it.
pub(crate) struct Place {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    /// The full path, for messages.
    pub abs: PathBuf,
}

impl Folders {
    /// Opens `root` itself (which may be reached through links: it is the
    /// user's choice).
    pub fn open(root: &Path) -> Result<Folders> {
        let fd = rfs::open(root, dir_flags() - OFlags::NOFOLLOW, Mode::empty()).map_err(io("open", root))?;
        Ok(Folders {
            root: root.to_path_buf(),
            root_fd: Arc::new(fd),
            open: Mutex::new(HashMap::new()),
            max_open: max_open(),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The folder `dir` (a tree path, "" for the root), opened through each
    /// of its ancestors in turn. `entry` names the path being written, for
    /// the error when some ancestor is not a folder.
    fn folder(&self, entry: &[u8], dir: &[u8]) -> Result<Arc<OwnedFd>> {
        if dir.is_empty() {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            return Ok(fd.clone());
        }
        let (parent, name) = split(dir);
        let parent_fd = self.folder(entry, parent)?;
        let mut opened = rfs::openat(&*parent_fd, name, dir_flags(), Mode::empty());
        if matches!(opened, Err(Errno::MFILE | Errno::NFILE)) {
            // Ours may be what fills the table: let them go and try again.
            self.open.lock().unwrap_or_else(|p| p.into_inner()).clear();
            opened = rfs::openat(&*parent_fd, name, dir_flags(), Mode::empty());
        }
        let fd = match opened {
            Ok(fd) => Arc::new(fd),
            // FreeBSD says EMLINK for a link opened with O_NOFOLLOW.
            Err(Errno::NOTDIR | Errno::LOOP | Errno::MLINK) => {
                return Err(RepoError::UnsafePath {
                    path: display(entry),
                    reason: format!("{} is not a folder", display(dir)),
                })
            }
            Err(e) => return Err(io("open folder", &abs_path(&self.root, dir))(e)),
        };
        let st = rfs::fstat(&*fd).map_err(io("stat", &abs_path(&self.root, dir)))?;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.to_vec(), identity(&st));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max_open {
            open.clear();
        }
        open.insert(dir.to_vec(), fd.clone());
        Ok(fd)
    }

    /// Where `path` goes, its folders checked.
    pub fn place(&self, path: &[u8]) -> Result<Place> {
        let abs = abs_path(&self.root, path);
        if abs.as_os_str().len() >= libc::PATH_MAX as usize {
            return Err(RepoError::UnsafePath {
                path: display(path),
                reason: format!("longer than the {} bytes a path may have here", libc::PATH_MAX),
            });
        }
        let (dir, name) = split(path);
        Ok(Place { dir: self.folder(path, dir)?, name: name.to_os_string(), abs })
    }

    /// The first folder opened so far that is no longer at its path (moved,
    /// removed, or replaced by a link or another folder), if any.
    pub fn moved(&self) -> Option<Vec<u8>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut paths: Vec<&Vec<u8>> = seen.keys().collect();
        // Parents first: a moved parent is the one to name.
        paths.sort_by_key(|p| (p.iter().filter(|b| **b == b'/').count(), *p));
        let gone = |p: &&Vec<u8>| {
            let now = rfs::statat(&*self.root_fd, OsStr::from_bytes(p), AtFlags::SYMLINK_NOFOLLOW);
            !now.is_ok_and(|st| identity(&st) == seen[*p])
        };
        // A checkout's last step, with every core otherwise idle: the
        // folders (14,533 for `mixed`) are looked at in parts at once, and
        // the first part with a moved folder names it.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        if threads < 2 || paths.len() < 1024 {
            return paths.into_iter().find(gone).cloned();
        }
        let part = paths.len().div_ceil(threads);
        std::thread::scope(|s| {
            let found: Vec<_> = paths
                .chunks(part)
                .map(|c| {
                    std::thread::Builder::new().spawn_scoped(s, move || c.iter().find(|p| gone(p)).copied())
                })
                .collect();
            // A part whose thread could not start or run is looked at here.
            let mut first = None;
            for (h, c) in found.into_iter().zip(paths.chunks(part)) {
                let hit = match h.map(|h| h.join()) {
                    Ok(Ok(hit)) => hit,
                    _ => c.iter().find(|p| gone(p)).copied(),
                };
                if first.is_none() {
                    first = hit;
                }
            }
            first.cloned()
        })
    }

    /// Forgets the handle of `dir` and of everything under it (after it was
    /// removed or replaced).
    pub fn forget(&self, dir: &[u8]) {
        let under = |k: &Vec<u8>| k == dir || (k.starts_with(dir) && k.get(dir.len()) == Some(&b'/'));
        self.open.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| !under(k));
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| !under(k));
    }
}

/// A file's device and inode (their types differ between systems).
#[allow(clippy::unnecessary_cast)]
fn identity(st: &rfs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// What is at a place, without following a link; `None` if nothing.
pub(crate) fn kind_at(p: &Place) -> Result<Option<(FileType, u32)>> {
    match rfs::statat(&*p.dir, &p.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_mode & 0o7777))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io("stat", &p.abs)(e)),
    }
}

/// Makes a folder; `Ok(false)` if something is already there.
pub(crate) fn make_dir(p: &Place) -> Result<bool> {
    match rfs::mkdirat(&*p.dir, &p.name, Mode::from_raw_mode(0o777)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(io("create directory", &p.abs)(e)),
    }
}

/// Removes what is at a place: a file or link, or a folder with all it
/// holds.
pub(crate) fn remove(p: &Place) -> Result<()> {
    match kind_at(p)? {
        None => Ok(()),
        Some((FileType::Directory, _)) => remove_tree(&p.dir, &p.name, &p.abs),
        Some(_) => rfs::unlinkat(&*p.dir, &p.name, AtFlags::empty()).map_err(io("remove", &p.abs)),
    }
}

/// Removes the temporary files and links that a killed restore or
/// checkout left in the working tree at `root` (`leftovers`, from a scan),
/// through folder handles. Returns how many went, and a sentence for each
/// that could not.
///
/// Only for a caller holding the writer lock: every restore, checkout and
/// merge into the working tree (and a restore `--to` a folder inside it)
/// holds it while it writes. A writer that does not (a clone's first
/// checkout, which names its files only where unnamed files are not
/// available) holds an advisory lock on each temporary file while writing
/// it, and a locked file is left alone.
pub(crate) fn remove_leftovers(root: &Path, leftovers: &[Vec<u8>]) -> (usize, Vec<String>) {
    if leftovers.is_empty() {
        return (0, Vec::new());
    }
    let folders = match Folders::open(root) {
        Ok(f) => f,
        Err(e) => return (0, vec![format!("temporary files of an interrupted restore stay: {e}")]),
    };
    let (mut removed, mut failed) = (0, Vec::new());
    for rel in leftovers {
        let gone = folders.place(rel).and_then(|p| match kind_at(&p)? {
            // Only what the scan saw: a file or link (a folder of that name is not ours).
            None | Some((FileType::Directory, _)) => Ok(false),
            Some((FileType::RegularFile, _)) => {
                // Someone still writing it holds its lock: leave it. The
                // lock is held here until it is unlinked.
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let fd = rfs::openat(&*p.dir, &p.name, flags, Mode::empty()).map_err(io("open", &p.abs))?;
                match rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive) {
                    Err(Errno::WOULDBLOCK) => Ok(false),
                    _ => rfs::unlinkat(&*p.dir, &p.name, AtFlags::empty())
                        .map(|()| true)
                        .map_err(io("remove", &p.abs)),
                }
            }
            Some(_) => {
                rfs::unlinkat(&*p.dir, &p.name, AtFlags::empty()).map(|()| true).map_err(io("remove", &p.abs))
            }
        });
        match gone {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                failed.push(format!("could not remove a temporary file of an interrupted restore: {e}"))
            }
        }
    }
    (removed, failed)
}

/// Removes an empty folder.
pub(crate) fn remove_empty_dir(p: &Place) -> Result<()> {
    rfs::unlinkat(&*p.dir, &p.name, AtFlags::REMOVEDIR).map_err(io("remove", &p.abs))
}

/// Removes the folder `name` of `dir` with all it holds, through handles
/// (a folder in it replaced by a link meanwhile is removed as a link, never
/// followed).
fn remove_tree(dir: &OwnedFd, name: &OsStr, abs: &Path) -> Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(io("open folder", abs))?;
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(&fd).map_err(io("read", abs))? {
        let entry = entry.map_err(io("read", abs))?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsString::from(OsStr::from_bytes(n)), entry.file_type()));
        }
    }
    for (n, t) in names {
        let is_dir = match t {
            FileType::Directory => true,
            FileType::Unknown => rfs::statat(&fd, &n, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            remove_tree(&fd, &n, &abs.join(&n))?;
        } else {
            rfs::unlinkat(&fd, &n, AtFlags::empty()).map_err(io("remove", &abs.join(&n)))?;
        }
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io("remove", abs))
}

/// A name for a temporary entry beside the others in a folder.
fn temp_name() -> Result<OsString> {
    let mut r = [0u8; 8];
    dbox_store::crypto::fill_random(&mut r)?;
    use crate::worktree::{TEMP_PREFIX, TEMP_SUFFIX};
    Ok(OsString::from(format!("{TEMP_PREFIX}{}{TEMP_SUFFIX}", hex::encode(r))))
}

/// A file being written in a folder, not yet at its place.
pub(crate) struct NewFile {
    pub file: File,
    /// `None` for an unnamed file.
    temp: Option<OsString>,
}

/// Whether unnamed files can be linked into place here (through
/// `/proc/self/fd`, which needs no privilege).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn unnamed_files() -> bool {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

impl NewFile {
    /// Creates a file in `p`'s folder with permissions `mode` (less the
    /// umask), unnamed when `unnamed` and the system allows.
    pub fn create(p: &Place, mode: u32, unnamed: bool) -> Result<NewFile> {
        let mode = Mode::from_raw_mode(mode);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if unnamed && unnamed_files() {
            let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
            match rfs::openat(&*p.dir, ".", flags, mode) {
                Ok(fd) => return Ok(NewFile { file: File::from(fd), temp: None }),
                // Not supported by this file system or kernel: named.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
                Err(e) => return Err(io("create", &p.abs)(e)),
            }
        }
        let _ = unnamed;
        let temp = temp_name()?;
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&*p.dir, &temp, flags, mode).map_err(io("create", &p.dir_path(&temp)))?;
        // Held until the file is in place and closed: a sweep of leftovers
        // ([`remove_leftovers`]) leaves a locked temporary file alone. Only
        // a guard; where the file system has no such locks, nothing.
        let _ = rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive);
        Ok(NewFile { file: File::from(fd), temp: Some(temp) })
    }

    /// Links the finished file at `p` if nothing is there; `Ok(false)` if
    /// something is.
    pub fn link(&self, p: &Place) -> Result<bool> {
        let linked = match &self.temp {
            None => self.link_unnamed(p, &p.name),
            Some(t) => {
                let r = rfs::linkat(&*p.dir, t, &*p.dir, &p.name, AtFlags::empty());
                let _ = rfs::unlinkat(&*p.dir, t, AtFlags::empty());
                r
            }
        };
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(io("link", &p.abs)(e)),
        }
    }

    /// Puts the finished file at `p`, replacing what is there (a folder
    /// with all it holds).
    pub fn replace(&self, p: &Place) -> Result<()> {
        match &self.temp {
            Some(t) => rename_over(p, t),
            None => {
                // Unnamed: give it a temporary name first.
                let t = temp_name()?;
                self.link_unnamed(p, &t).map_err(io("link", &p.dir_path(&t)))?;
                rename_over(p, &t)
            }
        }
    }

    /// Gives the unnamed file the name `name` in `p`'s folder: by its
    /// descriptor (`AT_EMPTY_PATH`, which Linux allows without privilege
    /// since 6.10 to whoever opened the file), else through
    /// `/proc/self/fd`, which needs no privilege but costs a walk of
    /// `/proc` (29 of the 1,414 samples of a clone of `mixed`, about 4 %
    /// of its system time).
    fn link_unnamed(&self, p: &Place, name: &OsStr) -> rustix::io::Result<()> {
        /// Cleared once this kernel refused a link by descriptor.
        static BY_FD: AtomicBool = AtomicBool::new(true);
        self.link_unnamed_via(&BY_FD, p, name)
    }

    /// [`NewFile::link_unnamed`], by descriptor while `by_fd` is set.
    fn link_unnamed_via(&self, by_fd: &AtomicBool, p: &Place, name: &OsStr) -> rustix::io::Result<()> {
        let mut refused = false;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if by_fd.load(Ordering::Relaxed) {
            match rfs::linkat(&self.file, "", &*p.dir, name, AtFlags::EMPTY_PATH) {
                // Older kernels answer ENOENT without the capability; so
                // does a folder removed meanwhile, hence the test below.
                Err(Errno::NOENT | Errno::PERM | Errno::INVAL | Errno::NOSYS) => refused = true,
                done => return done,
            }
        }
        let me = format!("/proc/self/fd/{}", self.file.as_fd().as_raw_fd());
        let r = rfs::linkat(rfs::CWD, me.as_str(), &*p.dir, name, AtFlags::SYMLINK_FOLLOW);
        // Only where `/proc` reached the folder was the refusal the kernel's.
        if refused && matches!(r, Ok(()) | Err(Errno::EXIST)) {
            by_fd.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Removes the temporary name of a file that will not be placed.
    pub fn discard(&self, p: &Place) {
        if let Some(t) = &self.temp {
            let _ = rfs::unlinkat(&*p.dir, t, AtFlags::empty());
        }
    }
}

/// Makes a symbolic link at `p` if nothing is there; `Ok(false)` if
/// something is.
pub(crate) fn link_new(p: &Place, target: &[u8]) -> Result<bool> {
    match rfs::symlinkat(OsStr::from_bytes(target), &*p.dir, &p.name) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(io("create link", &p.abs)(e)),
    }
}

/// Makes a symbolic link at `p`, replacing what is there.
pub(crate) fn link_over(p: &Place, target: &[u8]) -> Result<()> {
    let t = temp_name()?;
    rfs::symlinkat(OsStr::from_bytes(target), &*p.dir, &t).map_err(io("create link", &p.dir_path(&t)))?;
    rename_over(p, &t)
}

/// Renames the temporary entry `t` of `p`'s folder to `p`, after removing a
/// folder there (a rename cannot replace one with a file).
fn rename_over(p: &Place, t: &OsStr) -> Result<()> {
    let result = (|| {
        if let Some((FileType::Directory, _)) = kind_at(p)? {
            remove_tree(&p.dir, &p.name, &p.abs)?;
        }
        rfs::renameat(&*p.dir, t, &*p.dir, &p.name).map_err(io("rename", &p.dir_path(t)))
    })();
    if result.is_err() {
        let _ = rfs::unlinkat(&*p.dir, t, AtFlags::empty());
    }
    result
}

impl Place {
    /// The full path of another entry in this place's folder.
    fn dir_path(&self, name: &OsStr) -> PathBuf {
        self.abs.parent().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_where_a_folder_belongs_is_refused_and_nothing_is_written_through_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("a")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/b")).expect("symlink");
        std::fs::write(t.path().join("f"), b"x").expect("write");
        let folders = Folders::open(t.path()).expect("open");
        for path in [&b"a/b/c"[..], b"a/b/c/d", b"f/g"] {
            match folders.place(path) {
                Err(RepoError::UnsafePath { path: p, reason }) => {
                    assert_eq!(p, display(path));
                    assert!(reason.ends_with("is not a folder"), "{reason}");
                }
                Err(e) => panic!("{}: {e}", display(path)),
                Ok(_) => panic!("{}: a place through a link", display(path)),
            }
        }
        assert_eq!(std::fs::read_dir(outside.path()).expect("read_dir").count(), 0);
    }

    #[test]
    fn a_new_file_is_linked_only_where_nothing_is_and_leaves_no_temporary_name() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("d")).expect("mkdir");
        std::fs::write(t.path().join("d/taken"), b"mine").expect("write");
        let folders = Folders::open(t.path()).expect("open");
        for unnamed in [true, false] {
            let free = folders.place(if unnamed { b"d/free1" } else { b"d/free2" }).expect("place");
            let mut f = NewFile::create(&free, 0o666, unnamed).expect("create");
            std::io::Write::write_all(&mut f.file, b"new").expect("write");
            assert!(f.link(&free).expect("link"));
            let taken = folders.place(b"d/taken").expect("place");
            let f = NewFile::create(&taken, 0o666, unnamed).expect("create");
            assert!(!f.link(&taken).expect("link"));
        }
        assert_eq!(std::fs::read(t.path().join("d/taken")).expect("read"), b"mine");
        assert_eq!(std::fs::read(t.path().join("d/free1")).expect("read"), b"new");
        assert_eq!(std::fs::read(t.path().join("d/free2")).expect("read"), b"new");
        let mut names: Vec<_> = std::fs::read_dir(t.path().join("d"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, ["free1", "free2", "taken"]);
    }

    #[test]
    fn an_unnamed_file_is_linked_by_descriptor_or_through_proc_alike() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("d")).expect("mkdir");
        std::fs::write(t.path().join("d/taken"), b"mine").expect("write");
        let folders = Folders::open(t.path()).expect("open");
        for by_fd in [true, false] {
            let flag = AtomicBool::new(by_fd);
            let name = if by_fd { "fd" } else { "proc" };
            let place = folders.place(format!("d/{name}").as_bytes()).expect("place");
            let mut f = NewFile::create(&place, 0o666, true).expect("create");
            std::io::Write::write_all(&mut f.file, name.as_bytes()).expect("write");
            f.link_unnamed_via(&flag, &place, &place.name).expect("link");
            assert_eq!(std::fs::read(t.path().join("d").join(name)).expect("read"), name.as_bytes());
            let taken = folders.place(b"d/taken").expect("place");
            let f = NewFile::create(&taken, 0o666, true).expect("create");
            assert_eq!(f.link_unnamed_via(&flag, &taken, &taken.name), Err(Errno::EXIST));
        }
        assert_eq!(std::fs::read(t.path().join("d/taken")).expect("read"), b"mine");
        assert_eq!(std::fs::read_dir(t.path().join("d")).expect("read_dir").count(), 3);
    }

    #[test]
    fn a_folder_removed_meanwhile_does_not_turn_linking_by_descriptor_off() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("d")).expect("mkdir");
        let folders = Folders::open(t.path()).expect("open");
        let flag = AtomicBool::new(true);
        let place = folders.place(b"d/one").expect("place");
        let f = NewFile::create(&place, 0o666, true).expect("create");
        f.link_unnamed_via(&flag, &place, &place.name).expect("link");
        eprintln!("after a good link: by_fd = {}", flag.load(Ordering::Relaxed));
        // The folder goes away under an open handle: ENOENT, not the kernel's refusal.
        let place = folders.place(b"d/two").expect("place");
        let f = NewFile::create(&place, 0o666, true).expect("create");
        std::fs::remove_file(t.path().join("d/one")).expect("rm");
        std::fs::remove_dir(t.path().join("d")).expect("rmdir");
        let r = f.link_unnamed_via(&flag, &place, &place.name);
        eprintln!("into a removed folder: {r:?}; by_fd = {}", flag.load(Ordering::Relaxed));
        assert!(flag.load(Ordering::Relaxed), "a removed folder turned linking by descriptor off for good");
    }

    #[test]
    fn among_many_folders_the_first_moved_one_is_named_parents_first() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        for i in 0..1500 {
            std::fs::create_dir_all(t.path().join(format!("p{i:04}/q"))).expect("mkdir");
        }
        let folders = Folders::open(t.path()).expect("open");
        for i in 0..1500 {
            folders.place(format!("p{i:04}/q/f").as_bytes()).expect("place");
        }
        assert_eq!(folders.moved(), None);
        std::fs::rename(t.path().join("p1400/q"), outside.path().join("q")).expect("move");
        assert_eq!(folders.moved(), Some(b"p1400/q".to_vec()));
        std::fs::rename(t.path().join("p0003/q"), outside.path().join("q3")).expect("move");
        assert_eq!(folders.moved(), Some(b"p0003/q".to_vec()));
        // A folder nearer the root comes first, wherever it is in order.
        std::fs::rename(t.path().join("p1499"), outside.path().join("p")).expect("move");
        std::fs::create_dir(t.path().join("p1499")).expect("mkdir");
        assert_eq!(folders.moved(), Some(b"p1499".to_vec()));
    }

    #[test]
    fn a_folder_moved_or_replaced_by_a_link_after_it_was_opened_is_found() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("c")).expect("mkdir");
        let folders = Folders::open(t.path()).expect("open");
        folders.place(b"a/b/f").expect("place");
        folders.place(b"c/f").expect("place");
        assert_eq!(folders.moved(), None);
        std::fs::rename(t.path().join("a/b"), outside.path().join("b")).expect("move");
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/b")).expect("symlink");
        assert_eq!(folders.moved(), Some(b"a/b".to_vec()));
    }

    #[test]
    fn removing_a_folder_removes_what_it_holds_but_never_follows_a_link() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("precious"), b"x").expect("write");
        std::fs::create_dir_all(t.path().join("d/e/f")).expect("mkdir");
        std::fs::write(t.path().join("d/e/f/g"), b"g").expect("write");
        std::os::unix::fs::symlink(outside.path(), t.path().join("d/e/link")).expect("symlink");
        let folders = Folders::open(t.path()).expect("open");
        remove(&folders.place(b"d").expect("place")).expect("remove");
        assert!(!t.path().join("d").exists());
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn a_path_longer_than_the_system_takes_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let folders = Folders::open(t.path()).expect("open");
        let long: Vec<u8> = std::iter::repeat_n(b"n".repeat(200), 25).collect::<Vec<_>>().join(&b'/');
        match folders.place(&long) {
            Err(RepoError::UnsafePath { reason, .. }) => {
                assert!(reason.contains("bytes a path may have"), "{reason}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a place for a path of {} bytes", long.len()),
        }
    }

    #[test]
    fn replacing_puts_a_file_or_link_over_a_file_a_link_or_a_folder() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("dir/inner")).expect("mkdir");
        std::fs::write(t.path().join("file"), b"old").expect("write");
        std::os::unix::fs::symlink("/nonexistent", t.path().join("link")).expect("symlink");
        let folders = Folders::open(t.path()).expect("open");
        for (i, name) in [&b"dir"[..], b"file", b"link"].into_iter().enumerate() {
            let p = folders.place(name).expect("place");
            let mut f = NewFile::create(&p, 0o644, i % 2 == 0).expect("create");
            std::io::Write::write_all(&mut f.file, name).expect("write");
            f.replace(&p).expect("replace");
            assert_eq!(std::fs::read(&p.abs).expect("read"), name);
            link_over(&p, b"target").expect("link over");
            assert_eq!(std::fs::read_link(&p.abs).expect("readlink"), Path::new("target"));
        }
        assert_eq!(std::fs::read_dir(t.path()).expect("read_dir").count(), 3);
    }
}
