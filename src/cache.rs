//! The stat cache (`.dbox/cache`): HEAD's files, folders and links with the
//! `lstat` data their working-tree copies had when they last matched HEAD.
//!
//! `status` and `commit` trust an entry whose `lstat` data is unchanged and
//! rehash only the rest, as git's index does. An entry is *racy* — and
//! rehashed anyway — when its mtime or ctime is within a window of the
//! moment the cache was written, since a write in the same clock tick would
//! leave them unchanged. The window is [`RACY_NS`] (2 s, for filesystems
//! that keep whole or even seconds), or [`FINE_RACY_NS`] when the entry's own
//! timestamps have a sub-second part, which shows that its filesystem keeps
//! fine times (the kernel's file clock advances every few milliseconds).
//! So after a checkout only the files written in its last tenth of a second
//! are rehashed by the next `status`, not those of its last two seconds.
//! The moment of writing is the earlier of this machine's clock and the
//! file system's (a file created next to the cache), so a network file
//! system whose server clock is behind does not make entries look older
//! than they are.
//!
//! The cache is only a hint: a missing or damaged cache is rebuilt from
//! HEAD, never an error. Layout (little endian): magic `DBOXCACH`, version
//! u32 (1), HEAD id (32, zeros for none), written-at ns i64, count u32, then
//! per entry: path length u16, path, kind u8 (0 file, 1 dir, 2 symlink),
//! executable u8, size u64, mtime i64, ctime i64, inode u64, mode u32, then
//! for files a chunk count u32 and chunk ids, for symlinks a target length
//! u16 and target; last, BLAKE3 of everything before.

use std::collections::HashMap;
use std::path::Path;

use dbox_store::limits::{MAX_PATH_LEN, MAX_TREE_ENTRIES};
use dbox_store::{ObjectId, VersionId};

use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::worktree::{Kind, Stat};

const MAGIC: &[u8; 8] = b"DBOXCACH";
const FORMAT: u32 = 1;
/// Largest cache file read (about three million entries); a larger one is
/// ignored and rebuilt, so a damaged or planted file cannot make status read
/// gigabytes.
const MAX_CACHE_FILE: u64 = 512 << 20;
/// Entries modified this close to the cache's writing are rehashed.
pub const RACY_NS: i64 = 2_000_000_000;
/// The same, for an entry whose timestamps show sub-second precision.
pub const FINE_RACY_NS: i64 = 100_000_000;

/// The racy window for an entry with this stat (see the module docs).
fn racy_window(s: &Stat) -> i64 {
    const SECOND: i64 = 1_000_000_000;
    if s.ctime_ns.rem_euclid(SECOND) != 0 || s.mtime_ns.rem_euclid(SECOND) != 0 {
        FINE_RACY_NS
    } else {
        RACY_NS
    }
}

/// What HEAD holds at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A file's chunks and executable bit.
    File {
        /// Size.
        size: u64,
        /// Chunk ids.
        chunks: Vec<ObjectId>,
        /// Executable bit.
        executable: bool,
    },
    /// A folder.
    Dir,
    /// A symbolic link's target.
    Symlink(Vec<u8>),
}

impl From<&dbox_store::Node> for Content {
    fn from(node: &dbox_store::Node) -> Self {
        match node {
            dbox_store::Node::File { size, chunks, executable } => {
                Content::File { size: *size, chunks: chunks.clone(), executable: *executable }
            }
            dbox_store::Node::Dir { .. } => Content::Dir,
            dbox_store::Node::Symlink { target } => Content::Symlink(target.clone()),
        }
    }
}

impl Content {
    /// The kind of this content.
    pub fn kind(&self) -> Kind {
        match self {
            Content::File { .. } => Kind::File,
            Content::Dir => Kind::Dir,
            Content::Symlink(_) => Kind::Symlink,
        }
    }
}

/// One cached path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// What HEAD holds there.
    pub content: Content,
    /// The working-tree copy's `lstat` when it last matched, if known.
    pub stat: Option<Stat>,
}

/// The whole cache.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    /// The version the entries describe.
    pub head: Option<VersionId>,
    /// When the cache was written.
    pub written_ns: i64,
    /// Entries by path.
    pub entries: HashMap<Vec<u8>, CacheEntry>,
}

/// The file system's clock next to `path`: the mtime of a file created
/// there and removed at once.
fn fs_now_ns(path: &Path) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    let probe = path.with_extension(format!("clock-{}", std::process::id()));
    let made = std::fs::File::create(&probe).and_then(|f| f.metadata());
    let _ = std::fs::remove_file(&probe);
    let m = made.ok()?;
    m.mtime().checked_mul(1_000_000_000)?.checked_add(m.mtime_nsec())
}

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

impl Cache {
    /// The content of `path` if its working-tree copy is known to match.
    pub fn trusted(&self, path: &[u8], stat: &Stat) -> Option<&Content> {
        let e = self.entries.get(path)?;
        self.entry_trusted(e, stat).then_some(&e.content)
    }

    /// Whether the working-tree copy described by `stat` matches `e`.
    pub fn entry_trusted(&self, e: &CacheEntry, stat: &Stat) -> bool {
        let Some(s) = e.stat.as_ref() else { return false };
        // ctime too: the kernel sets it on every write, so an edit that
        // keeps the mtime (cp -p) is still seen.
        let racy = s.mtime_ns.max(s.ctime_ns) >= self.written_ns.saturating_sub(racy_window(s));
        s == stat && !racy
    }

    /// Loads the cache; `None` when it is missing, damaged or of another
    /// format (it is then rebuilt).
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = crate::fsutil::read_small(path, MAX_CACHE_FILE).ok()??;
        decode(&bytes)
    }

    /// Writes the cache durably.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        // The earlier of this machine's clock and the file system's (a
        // network file system stamps files with its server's clock, which
        // may be behind), so that the window is never measured from a
        // moment later than the one files written now are stamped with.
        let wall = now_ns();
        self.written_ns = fs_now_ns(path).map_or(wall, |fs| fs.min(wall));
        // Entries racy now lose their stat, so no later save can make them
        // trusted without a rehash.
        let now = self.written_ns;
        for e in self.entries.values_mut() {
            if e.stat.is_some_and(|s| s.mtime_ns.max(s.ctime_ns) >= now.saturating_sub(racy_window(&s))) {
                e.stat = None;
            }
        }
        write_atomic(path, &encode(self), 0o600)
    }
}

fn encode(c: &Cache) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + c.entries.len() * 96);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT.to_le_bytes());
    b.extend_from_slice(c.head.as_ref().map_or(&[0u8; 32], |h| h.as_bytes()));
    b.extend_from_slice(&c.written_ns.to_le_bytes());
    b.extend_from_slice(&(c.entries.len() as u32).to_le_bytes());
    for (path, e) in &c.entries {
        b.extend_from_slice(&(path.len() as u16).to_le_bytes());
        b.extend_from_slice(path);
        let (kind, exec) = match &e.content {
            Content::File { executable, .. } => (0u8, *executable),
            Content::Dir => (1, false),
            Content::Symlink(_) => (2, false),
        };
        b.push(kind);
        b.push(exec as u8);
        let s = e.stat.unwrap_or_default();
        let known = e.stat.is_some();
        // An unknown stat is written with size u64::MAX, which no file has.
        b.extend_from_slice(&(if known { s.size } else { u64::MAX }).to_le_bytes());
        b.extend_from_slice(&s.mtime_ns.to_le_bytes());
        b.extend_from_slice(&s.ctime_ns.to_le_bytes());
        b.extend_from_slice(&s.ino.to_le_bytes());
        b.extend_from_slice(&s.mode.to_le_bytes());
        match &e.content {
            Content::File { size, chunks, .. } => {
                b.extend_from_slice(&size.to_le_bytes());
                b.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                for id in chunks {
                    b.extend_from_slice(id.as_bytes());
                }
            }
            Content::Dir => {}
            Content::Symlink(t) => {
                b.extend_from_slice(&(t.len() as u16).to_le_bytes());
                b.extend_from_slice(t);
            }
        }
    }
    let check = blake3::hash(&b);
    b.extend_from_slice(check.as_bytes());
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }
}

fn decode(bytes: &[u8]) -> Option<Cache> {
    if bytes.len() < 32 {
        return None;
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != check {
        return None;
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC || r.u32()? != FORMAT {
        return None;
    }
    let head_bytes: [u8; 32] = r.take(32)?.try_into().ok()?;
    let head = (head_bytes != [0u8; 32]).then_some(VersionId(head_bytes));
    let written_ns = r.i64()?;
    let count = r.u32()? as usize;
    if count > MAX_TREE_ENTRIES * 16 {
        return None;
    }
    let mut entries = HashMap::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let plen = r.u16()? as usize;
        if plen == 0 || plen > MAX_PATH_LEN {
            return None;
        }
        let path = r.take(plen)?.to_vec();
        let kind = r.u8()?;
        let exec = r.u8()? != 0;
        let size = r.u64()?;
        let stat = Stat { size, mtime_ns: r.i64()?, ctime_ns: r.i64()?, ino: r.u64()?, mode: r.u32()? };
        let stat = (size != u64::MAX).then_some(stat);
        let content = match kind {
            0 => {
                let fsize = r.u64()?;
                let n = r.u32()? as usize;
                let ids = r.take(n.checked_mul(32)?)?;
                let chunks = ids.chunks_exact(32).filter_map(ObjectId::from_slice).collect();
                Content::File { size: fsize, chunks, executable: exec }
            }
            1 => Content::Dir,
            2 => {
                let n = r.u16()? as usize;
                Content::Symlink(r.take(n)?.to_vec())
            }
            _ => return None,
        };
        entries.insert(path, CacheEntry { content, stat });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Cache { head, written_ns, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_racy_window_follows_the_timestamps_precision() {
        let c = Cache { head: None, written_ns: 100 * 1_000_000_000 + 500_000_000, entries: HashMap::new() };
        let entry = |mtime_ns, ctime_ns| {
            let stat = Stat { size: 1, mtime_ns, ctime_ns, ino: 1, mode: 0o100644 };
            (CacheEntry { content: Content::Dir, stat: Some(stat) }, stat)
        };
        // Fine times: written 0.3 s before the cache, trusted; 0.05 s, not.
        let (e, s) = entry(100_200_000_000, 100_200_000_001);
        assert!(c.entry_trusted(&e, &s));
        let (e, s) = entry(100_450_000_000, 100_450_000_007);
        assert!(!c.entry_trusted(&e, &s));
        // Whole seconds: anything within 2 s is racy.
        let (e, s) = entry(99_000_000_000, 99_000_000_000);
        assert!(!c.entry_trusted(&e, &s));
        let (e, s) = entry(98_000_000_000, 98_000_000_000);
        assert!(c.entry_trusted(&e, &s));
        // Saving drops the stats of entries racy at that moment.
        let mut c = Cache::default();
        let (fresh, _) = entry(now_ns(), now_ns() + 1);
        let (old, _) = entry(1_000_000_001, 1_000_000_001);
        c.entries.insert(b"fresh".to_vec(), fresh);
        c.entries.insert(b"old".to_vec(), old);
        let dir = std::env::temp_dir().join(format!("dbox-cache-test-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        assert!(c.save(&dir.join("cache")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c.entries[&b"fresh".to_vec()].stat.is_none());
        assert!(c.entries[&b"old".to_vec()].stat.is_some());
    }

    #[test]
    fn round_trip_and_damage() {
        let mut c = Cache { head: Some(VersionId([3; 32])), written_ns: 5, entries: HashMap::new() };
        c.entries.insert(
            b"a/b".to_vec(),
            CacheEntry {
                content: Content::File { size: 3, chunks: vec![ObjectId([1; 32])], executable: true },
                stat: Some(Stat { size: 3, mtime_ns: 1, ctime_ns: 2, ino: 3, mode: 0o100755 }),
            },
        );
        c.entries.insert(b"a".to_vec(), CacheEntry { content: Content::Dir, stat: None });
        c.entries
            .insert(b"l".to_vec(), CacheEntry { content: Content::Symlink(b"../x".to_vec()), stat: None });
        let bytes = encode(&c);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.entries, c.entries);
        assert_eq!(back.head, c.head);
        for i in 0..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 0x40;
            assert!(decode(&d).is_none(), "byte {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
    }
}
