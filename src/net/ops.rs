//! What the commands do over the network: serve, push, pull, sync, clone;
//! and moving a clean working tree forward after new versions arrive.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbox_store::object::Payload;
use serde_bytes::ByteBuf;
use tokio::task::JoinSet;

use super::session::{blocking, Log, Progress, Session, TreeHere};
use super::tls::{self, Identity};
use super::wire::{read_msg, read_msg_limited, write_msg, Hello, Taken, Welcome, MAX_HELLO};
use super::{invite, timed, NetError, CONNECT_TIMEOUT, PROTOCOL};
use crate::error::{RepoError, Result};
use crate::fsutil::{file_stamp, Kept};
use crate::identity::{format_peer_id, Device};
use crate::members::Members;
use crate::peers::{Book, Peer, Target};
use crate::repo::Repo;
use dbox_store::{ObjectId, PeerId, RepoId, RepoKey, VersionId};

/// Which way a sync goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Send ours.
    Push,
    /// Take theirs.
    Pull,
    /// Both.
    Both,
}

/// What happened to the working tree after new versions arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    /// It moved to this version.
    Moved(VersionId),
    /// HEAD is already the newest.
    UpToDate,
    /// It has uncommitted changes, so it was left alone.
    Dirty(VersionId),
    /// Several heads: nothing to move to without a merge.
    Forked(usize),
    /// There is no version at all.
    Empty,
}

impl std::fmt::Display for Advance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Advance::Moved(v) => write!(f, "moved to {}", v.short()),
            Advance::UpToDate => write!(f, "up to date"),
            Advance::Dirty(v) => write!(
                f,
                "left alone: it has uncommitted changes (commit them, then `dbox merge` or `dbox checkout {}`)",
                v.short()
            ),
            Advance::Forked(n) => {
                write!(f, "left alone: there are {n} heads (`dbox log --graph` shows them, `dbox merge` joins them)")
            }
            Advance::Empty => write!(f, "no versions yet"),
        }
    }
}

/// Moves a clean working tree whose HEAD is an ancestor of the single
/// head forward to it. A tree with uncommitted changes is never touched.
/// The decision and the move happen under the writer lock, so no commit
/// slips in between; an edit made meanwhile makes the checkout refuse.
pub fn advance_worktree(repo: &Repo) -> Result<Advance> {
    let writer = crate::repo::store_writer(repo.store())?;
    let graph = repo.graph()?;
    let heads = graph.heads();
    let head = repo.head()?;
    let target = match (head, heads.as_slice()) {
        (_, []) => return Ok(Advance::Empty),
        (Some(h), _) if heads.contains(&h) => {
            return Ok(if heads.len() == 1 { Advance::UpToDate } else { Advance::Forked(heads.len()) })
        }
        (Some(h), [one]) if graph.is_ancestor(&h, one) => *one,
        (None, [one]) => *one,
        (_, _) => return Ok(Advance::Forked(heads.len())),
    };
    let status = crate::snapshot::status(repo)?;
    // With no HEAD, changes that are only files of the target are what a
    // clone stopped before it finished (Ctrl-C) left: the checkout
    // completes it.
    if !status.changes.is_empty() && (head.is_some() || !leftovers_of(repo, &target, &status.changes)?) {
        return Ok(Advance::Dirty(target));
    }
    crate::materialize::checkout_locked(repo, &writer, &target, false)?;
    Ok(Advance::Moved(target))
}

/// Whether the working tree's changes, with no HEAD, are only files,
/// links and folders of `version`, each as it is there: what a clone that
/// was stopped leaves behind. Reads the files that are there.
fn leftovers_of(
    repo: &Repo,
    version: &VersionId,
    changes: &[(Vec<u8>, crate::snapshot::Change)],
) -> Result<bool> {
    use crate::worktree::{abs_path, Kind, Stat};
    let target = crate::snapshot::flatten_version(repo, version)?;
    let no_cache = crate::cache::Cache::default();
    for (p, _) in changes {
        let Some(want) = target.get(p) else { return Ok(false) };
        let Ok(m) = std::fs::symlink_metadata(abs_path(repo.root(), p)) else { return Ok(false) };
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            return Ok(false);
        };
        let stat = Stat::from_metadata(&m);
        if !crate::materialize::matches(repo.store(), repo.root(), p, kind, &stat, &want.content, &no_cache)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A finished push, pull or sync.
#[derive(Clone, Debug)]
pub struct Report {
    /// The peer.
    pub peer: PeerId,
    /// The address used.
    pub addr: String,
    /// What we took.
    pub pulled: Taken,
    /// What the peer took from us.
    pub pushed: Taken,
    /// UDP bytes sent.
    pub sent: u64,
    /// UDP bytes received.
    pub received: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// What happened to our working tree (after a pull).
    pub worktree: Option<Advance>,
}

/// A multi-threaded async runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Local(format!("cannot start the async runtime: {e}")).into())
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// Explains a failed handshake.
fn connect_error(
    addr: &str,
    expected: &PeerId,
    seen: &Mutex<Option<PeerId>>,
    e: quinn::ConnectionError,
) -> NetError {
    let text = e.to_string();
    // TLS alert 120, no_application_protocol: the ALPN ids (protocol versions) differ.
    let alpn_mismatch = matches!(&e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::crypto(120));
    let busy = matches!(&e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED);
    let seen = seen.lock().ok().and_then(|s| *s);
    let reason = match seen {
        Some(s) if &s != expected => format!(
            "the device there is {}, not {} (wrong address, or the peer id is mistyped)",
            format_peer_id(&s),
            format_peer_id(expected)
        ),
        _ if busy => "the server is busy (too many connections being set up); try again shortly".into(),
        _ if alpn_mismatch => {
            "the peer speaks another dbox protocol version (dbox/1 here); update the older side".into()
        }
        _ => text,
    };
    NetError::Connect { addr: addr.to_string(), reason }
}

/// Connects to `expected` at `addr` and says hello.
pub async fn connect(
    identity: &Identity,
    expected: PeerId,
    addr: &str,
    hello: &Hello,
) -> Result<(quinn::Endpoint, quinn::Connection, Vec<ByteBuf>, Option<ByteBuf>)> {
    let addrs: Vec<SocketAddr> = timed("the address lookup", CONNECT_TIMEOUT, async {
        tokio::net::lookup_host(addr)
            .await
            .map(|a| a.collect())
            .map_err(|e| NetError::Connect { addr: addr.into(), reason: format!("cannot resolve: {e}") })
    })
    .await?;
    let mut last = NetError::Connect { addr: addr.into(), reason: "the name resolves to no address".into() };
    for sa in addrs {
        let seen = Arc::new(Mutex::new(None));
        let mut cfg = tls::client_config(identity, expected, seen.clone())?;
        if sa.ip().to_canonical().is_loopback() {
            tls::for_loopback_client(&mut cfg);
        }
        let endpoint = tls::endpoint(unspecified_for(&sa), None)?;
        let connecting = match endpoint.connect_with(cfg, sa, "dbox") {
            Ok(c) => c,
            Err(e) => {
                last = NetError::Connect { addr: addr.into(), reason: e.to_string() };
                continue;
            }
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                last = connect_error(addr, &expected, &seen, e);
                continue;
            }
            Err(_) => {
                last = NetError::Connect {
                    addr: addr.into(),
                    reason: "no answer (is `dbox serve` running there?)".into(),
                };
                continue;
            }
        };
        let (mut send, mut recv) = timed("the session to open", CONNECT_TIMEOUT, async {
            conn.open_bi().await.map_err(NetError::from)
        })
        .await?;
        write_msg(&mut send, hello).await?;
        let _ = send.finish();
        return match read_msg::<Welcome>(&mut recv, "the peer's welcome").await {
            Ok(Welcome::Ok { members, key }) => Ok((endpoint, conn, members, key)),
            Ok(Welcome::Refused { reason }) => Err(NetError::Refused(reason).into()),
            Err(e) => Err(e.into()),
        };
    }
    Err(last.into())
}

fn hello(repo: RepoId, members: &Members, join: Option<[u8; 32]>) -> Hello {
    Hello {
        proto: PROTOCOL,
        repo: ByteBuf::from(repo.0.to_vec()),
        join: join.map(|s| ByteBuf::from(s.to_vec())),
        members: members.records().iter().map(|r| ByteBuf::from(r.as_bytes().to_vec())).collect(),
    }
}

/// Merges the peer's membership records into ours and saves them.
fn merge_members(
    repo: &Repo,
    members: &mut Members,
    raw: &[ByteBuf],
    trust_genesis: bool,
) -> Result<Vec<String>> {
    let raw: Vec<Vec<u8>> = raw.iter().map(|b| b.to_vec()).collect();
    let (added, refused) = members.merge(&repo.store().repo_id(), &raw, trust_genesis);
    if added > 0 {
        members.save(repo)?;
    }
    Ok(refused)
}

/// Push, pull or sync with `target`.
pub async fn sync(
    repo: Repo,
    device: Arc<Device>,
    target: &Target,
    direction: Direction,
    progress: Arc<Progress>,
    log: Log,
) -> Result<Report> {
    let start = Instant::now();
    let identity = Identity::new(device.signing_key())?;
    let (repo2, dev2) = (repo.clone(), device.clone());
    let mut members = blocking(move || Members::load_or_found(&repo2, &dev2)).await?;
    let h = hello(repo.store().repo_id(), &members, None);
    let (endpoint, conn, theirs, _) = connect(&identity, target.id, &target.addr, &h).await?;
    let repo2 = repo.clone();
    let members = blocking(move || {
        for r in merge_members(&repo2, &mut members, &theirs, false)? {
            log(format!("ignored a membership record from the peer: {r}"));
        }
        Ok(members)
    })
    .await?;
    if !members.contains(&target.id) {
        // We would answer its requests too: a non-member gets nothing.
        conn.close(1u32.into(), b"not a member");
        return Err(RepoError::Usage(format!(
            "device {} answered, but it is not a member of this repository (invite it with `dbox invite`)",
            format_peer_id(&target.id)
        )));
    }
    let session =
        Session::new(conn, target.id, repo.clone(), members, progress, Arc::new(|_| {}), Some(endpoint));
    let responder = tokio::spawn(session.clone().serve_requests());
    let result = async {
        let mut pulled = Taken::default();
        let mut pushed = Taken::default();
        if direction != Direction::Push {
            pulled = session.pull().await?;
        }
        if direction != Direction::Pull {
            pushed = session.announce().await?;
        }
        Ok::<_, RepoError>((pulled, pushed))
    }
    .await;
    let (sent, received) = session.wire_bytes();
    session.close().await;
    responder.abort();
    let (pulled, pushed) = result?;
    // Remember where the peer was reached.
    if let Some(name) = &target.name {
        let (repo2, name, addr) = (repo.clone(), name.clone(), target.addr.clone());
        let _ = blocking(move || {
            let mut book = Book::load(&repo2)?;
            if book.get(&name).is_some_and(|p| p.addr.as_deref() != Some(&addr)) {
                book.set_addr(&name, &addr)?;
                book.save(&repo2)?;
            }
            Ok(())
        })
        .await;
    }
    let repo2 = repo.clone();
    let versions = pulled.versions;
    let worktree = blocking(move || {
        if versions > 0 {
            return advance_worktree(&repo2).map(Some);
        }
        // With no HEAD, the tree is finished even when nothing new came: a
        // clone stopped after its versions were recorded left it part-way.
        if !matches!(repo2.head(), Ok(None)) {
            return Ok(None);
        }
        match advance_worktree(&repo2)? {
            Advance::Empty => Ok(None),
            a => Ok(Some(a)),
        }
    })
    .await?;
    Ok(Report {
        peer: target.id,
        addr: target.addr.clone(),
        pulled,
        pushed,
        sent,
        received,
        elapsed: start.elapsed(),
        worktree,
    })
}

/// A finished clone.
#[derive(Debug)]
pub struct Cloned {
    /// The new repository.
    pub repo: Repo,
    /// The transfer.
    pub report: Report,
    /// The version checked out, if any.
    pub head: Option<VersionId>,
}

/// Joins the repository an invitation is for, in `dir`.
pub async fn clone(
    token: &invite::Token,
    dir: &Path,
    device: Arc<Device>,
    progress: Arc<Progress>,
) -> Result<Cloned> {
    let start = Instant::now();
    if token.expires_ms <= crate::members::now_ms() {
        return Err(RepoError::Usage("this invitation has expired; ask for a new one".into()));
    }
    check_clone_dir(dir)?;
    let identity = Identity::new(device.signing_key())?;
    let h = hello(token.repo, &Members::default(), Some(token.secret));
    let mut last = None;
    let mut got = None;
    for addr in &token.addrs {
        match connect(&identity, token.inviter, addr, &h).await {
            Ok(c) => {
                got = Some((addr.clone(), c));
                break;
            }
            // A refusal is final: the token is spent or bad.
            Err(RepoError::Net(NetError::Refused(r))) => return Err(NetError::Refused(r).into()),
            Err(e) => last = Some(e),
        }
    }
    let Some((addr, (endpoint, conn, theirs, key))) = got else {
        return Err(last.unwrap_or_else(|| NetError::Local("the invitation lists no address".into()).into()));
    };
    let key = key
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .ok_or_else(|| NetError::Protocol("the inviter did not send the repository key".into()))?;
    let (dir2, repo_id, me, inviter) = (dir.to_path_buf(), token.repo, device.peer_id(), token.inviter);
    let addr2 = addr.clone();
    let (repo, members) = blocking(move || {
        let repo = Repo::init_with(&dir2, repo_id, &RepoKey::from_bytes(key))?;
        repo.mark_cloning()?;
        let mut members = Members::default();
        merge_members(&repo, &mut members, &theirs, true)?;
        if !members.contains(&me) || !members.contains(&inviter) {
            return Err(
                NetError::Protocol("the inviter's membership list does not name both of us".into()).into()
            );
        }
        members.save(&repo)?;
        let mut book = Book::load(&repo)?;
        book.add(Peer { name: "origin".into(), id: inviter, addr: Some(addr2) })?;
        book.save(&repo)?;
        Ok((repo, members))
    })
    .await?;
    let session =
        Session::new(conn, token.inviter, repo.clone(), members, progress, Arc::new(|_| {}), Some(endpoint));
    let responder = tokio::spawn(session.clone().serve_requests());
    // The working tree fills while the content arrives (see
    // `materialize::checkout_fresh`), from the newest head the pull names.
    let (tell, told) = tokio::sync::oneshot::channel::<(VersionId, ObjectId)>();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let arrived = session.keep_arrivals();
    let early = {
        let (repo, done) = (repo.clone(), done.clone());
        tokio::spawn(async move {
            let Ok((version, root)) = told.await else {
                // Nothing to check out: nobody will take arrivals.
                arrived.close();
                return Ok(None);
            };
            blocking(move || {
                let feed = CloneFeed { store: repo.store().clone(), done, arrived };
                Ok(crate::materialize::checkout_fresh(&repo, &root, &feed)?.map(|(t, o)| (version, t, o)))
            })
            .await
        })
    };
    // Set however this ends, even if this future is dropped mid-pull: the
    // early checkout waits for chunks until it is.
    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let finished = SetOnDrop(done.clone());
    let pulled = session.pull_telling(Some(tell)).await;
    drop(finished);
    let (sent, received) = session.wire_bytes();
    session.close().await;
    responder.abort();
    let early = early.await.map_err(|e| RepoError::Usage(format!("the checkout task failed: {e}")))?;
    let pulled = match pulled {
        Ok(p) => p,
        Err(e) => {
            if let Ok(Some((_, _, outcome))) = &early {
                crate::materialize::undo_fresh(repo.root(), outcome);
            }
            return Err(e);
        }
    };
    let repo2 = repo.clone();
    let head = blocking(move || {
        let g = repo2.graph()?;
        let newest = g.heads().into_iter().max_by_key(|h| (g.get(h).map(|n| n.time_ms), *h));
        match (newest, early) {
            (Some(h), Ok(Some((v, target, outcome)))) if v == h && !outcome.incomplete => {
                crate::materialize::settle_fresh(&repo2, &h, target, outcome)?;
            }
            // Not what the early checkout wrote, or it did not finish: a
            // checkout over it, which loses nothing that is in no version.
            (Some(h), _) => {
                crate::materialize::checkout(&repo2, &h, false)?;
            }
            (None, _) => repo2.done_cloning()?,
        }
        Ok(newest)
    })
    .await?;
    Ok(Cloned {
        repo,
        report: Report {
            peer: token.inviter,
            addr,
            pulled,
            pushed: Taken::default(),
            sent,
            received,
            elapsed: start.elapsed(),
            worktree: None,
        },
        head,
    })
}

/// How often the early checkout of a clone looks whether a file's chunks
/// have arrived.
const READY_POLL: Duration = Duration::from_millis(20);

/// What a clone's early checkout writes from: chunks that arrived lately,
/// from memory; older ones from the store once flushed.
struct CloneFeed {
    store: dbox_store::Store,
    /// Set when the transfer ended: everything that came is stored.
    done: Arc<std::sync::atomic::AtomicBool>,
    arrived: Arc<crate::net::session::Arrived>,
}

impl crate::materialize::Feed for CloneFeed {
    fn expect(&self, chunks: &mut dyn Iterator<Item = &ObjectId>) {
        self.arrived.expect(chunks);
    }

    fn ready(&self, ids: &[ObjectId]) -> Result<bool> {
        loop {
            // Read before looking: once set, everything that came is stored.
            let finished = self.done.load(std::sync::atomic::Ordering::SeqCst);
            let mut missing = None;
            for id in ids {
                if !self.arrived.has(id) && !self.store.contains(id)? {
                    missing = Some(id);
                    break;
                }
            }
            let Some(id) = missing else { return Ok(true) };
            if finished {
                return Ok(false);
            }
            // Awaited: the storing thread does not wait for room meanwhile.
            self.arrived.wait_for(id, READY_POLL);
        }
    }

    fn tree(&self, id: &ObjectId) -> Result<Option<Arc<dbox_store::Tree>>> {
        loop {
            // Read before looking: once set, the walk is over, one way or the other.
            let finished = self.done.load(std::sync::atomic::Ordering::SeqCst);
            match self.arrived.tree(id, READY_POLL) {
                TreeHere::Kept(t) => return Ok(Some(t)),
                TreeHere::NotKept => return Ok(None),
                TreeHere::NotYet if finished => return Ok(None),
                TreeHere::NotYet => {}
            }
        }
    }

    fn chunk(&self, store: &dbox_store::Store, id: &ObjectId) -> Result<Payload> {
        let mut wait = Duration::ZERO;
        loop {
            if let Some(stored) = self.arrived.take(id, wait) {
                // Verified against its id when it arrived.
                return dbox_store::object::open_in_place(
                    store.keys(),
                    dbox_store::ObjectKind::Chunk,
                    stored,
                )
                .map_err(|source| {
                    dbox_store::StoreError::CorruptObject { id: *id, pack: None, source }.into()
                });
            }
            // Read before looking: once set, everything that came is stored.
            let finished = self.done.load(std::sync::atomic::Ordering::SeqCst);
            match store.get_chunk(id) {
                // Still to come, or arrived and left memory but not yet
                // flushed: wait for it to arrive, then look again.
                Err(dbox_store::StoreError::NotFound { .. }) if !finished => wait = READY_POLL,
                Ok(payload) => {
                    self.arrived.spent(id);
                    return Ok(payload);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for CloneFeed {
    fn drop(&mut self) {
        // The checkout ended (done, failed or given up): nobody takes.
        self.arrived.close();
    }
}

fn check_clone_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(RepoError::Usage(format!("{} exists and is not empty", dir.display())));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RepoError::io("read", dir)(e)),
    }
}

/// A running server's address file, for `dbox invite`.
pub fn serve_addr_path(repo: &Repo) -> PathBuf {
    repo.dot_dir().join("serve.addr")
}

/// Addresses others can reach a server bound to `bound` at.
pub fn reachable_addrs(bound: SocketAddr) -> Vec<String> {
    if !bound.ip().is_unspecified() {
        return vec![bound.to_string()];
    }
    let mut out = Vec::new();
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        let mut ips: Vec<std::net::IpAddr> = ifs
            .iter()
            .map(|i| i.ip())
            .filter(|ip| !ip.is_loopback() && (bound.is_ipv6() || ip.is_ipv4()))
            .filter(|ip| !matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips.dedup();
        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, bound.port()).to_string()));
    }
    out.push(SocketAddr::new([127, 0, 0, 1].into(), bound.port()).to_string());
    out
}

/// Whether a `dbox serve` is running in `repo`, and where.
pub fn running_server(repo: &Repo) -> Result<Option<Vec<String>>> {
    use dbox_store::vfs::Vfs;
    let lock = repo.dot_dir().join("serve.lock");
    if !lock.exists() {
        return Ok(None);
    }
    match dbox_store::vfs::OsFs.try_lock(&lock, std::process::id()) {
        Ok(Some(_free)) => Ok(None),
        Ok(None) => {
            let text = crate::fsutil::read_small(&serve_addr_path(repo), 64 * 1024)?.unwrap_or_default();
            let addrs = String::from_utf8_lossy(&text)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect();
            Ok(Some(addrs))
        }
        Err(e) => Err(RepoError::io("lock", lock)(e)),
    }
}

/// Admitted members a server talks with at once; more are told the
/// server is busy.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections not yet admitted (handshake and hello) at once; more are
/// refused before any work is done for them.
pub const MAX_UNADMITTED: usize = 64;
/// Connections not yet admitted from one IP address at once.
pub const MAX_UNADMITTED_PER_IP: usize = 8;
/// Time from a connection's first packet to its hello being read.
pub const ADMIT_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// With this many connections waiting to be admitted, a new client must
/// first prove its address (a QUIC retry: one more round trip), so that
/// spoofed packets cannot take places.
const VALIDATE_FROM: usize = MAX_UNADMITTED / 4;
/// When every place is taken, the oldest waiting connection of at least
/// this age is dropped for a newcomer: holding places costs an attacker a
/// steady stream of new handshakes, not one burst every ten seconds.
const EVICT_AFTER: Duration = Duration::from_secs(1);

/// Connections not yet admitted, in all and per address (IPv6 per /64).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    next: u64,
    waiting: VecDeque<Waiting>,
    per_addr: HashMap<IpAddr, usize>,
}

struct Waiting {
    id: u64,
    addr: IpAddr,
    since: Instant,
    evict: Arc<tokio::sync::Notify>,
}

/// One connection's place at the [`Gate`], given back when dropped;
/// `evicted` fires if the place is taken for a newer connection.
struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
}

/// The unit the per-address limit counts: an IPv4 address, or an IPv6 /64
/// (one host usually has a whole /64).
fn addr_unit(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Takes one from `key`'s count, dropping the key at zero.
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl GateState {
    fn remove(&mut self, i: usize) -> Option<Waiting> {
        let w = self.waiting.remove(i)?;
        count_down(&mut self.per_addr, &w.addr);
        Some(w)
    }
}

impl Gate {
    /// Whether a new client should prove its address first.
    fn validating(&self) -> bool {
        self.state.lock().map_or(true, |g| g.waiting.len() >= VALIDATE_FROM)
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let addr = addr_unit(ip);
        let mut g = self.state.lock().ok()?;
        if g.per_addr.get(&addr).copied().unwrap_or(0) >= MAX_UNADMITTED_PER_IP {
            return None;
        }
        if g.waiting.len() >= MAX_UNADMITTED {
            // The oldest is at the front.
            if g.waiting.front().is_some_and(|w| w.since.elapsed() >= EVICT_AFTER) {
                if let Some(old) = g.remove(0) {
                    old.evict.notify_one();
                }
            } else {
                return None;
            }
        }
        g.next += 1;
        let (id, evict) = (g.next, Arc::new(tokio::sync::Notify::new()));
        g.waiting.push_back(Waiting { id, addr, since: Instant::now(), evict: evict.clone() });
        *g.per_addr.entry(addr).or_insert(0) += 1;
        Some(Ticket { gate: self.clone(), id, evicted: evict })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut g) = self.gate.state.lock() {
            if let Some(i) = g.waiting.iter().position(|w| w.id == self.id) {
                g.remove(i);
            }
        }
    }
}

struct ServeCtx {
    repo: Repo,
    /// The membership as last read.
    members: Kept<Members>,
    /// Sessions open per member.
    sessions: Mutex<HashMap<PeerId, usize>>,
    device: Arc<Device>,
    log: Log,
    invites: tokio::sync::Mutex<()>,
    admitted: Arc<tokio::sync::Semaphore>,
}

/// Answers members until `shutdown` completes; returns the bound address
/// through `bound` as soon as it listens.
pub async fn serve(
    root: &Path,
    device: Arc<Device>,
    listen: SocketAddr,
    log: Log,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use dbox_store::vfs::Vfs;
    let repo = Repo::open(root)?;
    Members::load_or_found(&repo, &device)?;
    let lock_path = repo.dot_dir().join("serve.lock");
    let _lock = dbox_store::vfs::OsFs
        .try_lock(&lock_path, std::process::id())
        .map_err(RepoError::io("lock", &lock_path))?
        .ok_or_else(|| RepoError::Usage("another `dbox serve` is running in this repository".into()))?;
    let identity = Identity::new(device.signing_key())?;
    let endpoint = tls::endpoint(listen, Some(tls::server_config(&identity)?))?;
    let mut loopback_config = tls::server_config(&identity)?;
    tls::for_loopback_server(&mut loopback_config);
    let loopback_config = Arc::new(loopback_config);
    let local =
        endpoint.local_addr().map_err(|e| NetError::Local(format!("cannot read the bound address: {e}")))?;
    let addrs = reachable_addrs(local);
    crate::fsutil::write_atomic(
        &serve_addr_path(&repo),
        format!("{}\n", addrs.join("\n")).as_bytes(),
        0o600,
    )?;
    log(format!(
        "serving {} as {} on {}",
        root.display(),
        format_peer_id(&device.peer_id()),
        addrs.join(", ")
    ));
    if let Some(b) = bound {
        let _ = b.send(local);
    }
    let ctx = Arc::new(ServeCtx {
        repo: repo.clone(),
        members: Kept::new(repo.dot_dir().join("members")),
        sessions: Mutex::new(HashMap::new()),
        device,
        log: log.clone(),
        invites: tokio::sync::Mutex::new(()),
        admitted: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    });
    let gate = Arc::new(Gate::default());
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            inc = endpoint.accept() => {
                let Some(inc) = inc else { break };
                while tasks.try_join_next().is_some() {}
                if !inc.remote_address_validated() && inc.may_retry() && gate.validating() {
                    let _ = inc.retry();
                    continue;
                }
                let Some(ticket) = gate.enter(inc.remote_address().ip()) else {
                    // Busy: the peer retries later; nothing is read from it.
                    inc.refuse();
                    continue;
                };
                let ctx = ctx.clone();
                let loopback = inc.remote_address().ip().to_canonical().is_loopback().then(|| loopback_config.clone());
                tasks.spawn(async move {
                    let from = inc.remote_address();
                    if let Err(e) = handle(inc, loopback, ticket, &ctx).await {
                        (ctx.log)(format!("{from}: {}", dbox_store::error::chain(&e)));
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    log("shutting down: finishing transfers in progress (up to 10 s)".into());
    endpoint.set_server_config(None);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
            .await;
    tasks.shutdown().await;
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(serve_addr_path(&repo));
    log("stopped".into());
    Ok(())
}

/// Sessions one member may have open with a server at once.
pub const MAX_SESSIONS_PER_PEER: usize = 4;

/// One open session of a member, counted until dropped.
struct SessionPlace<'a> {
    ctx: &'a ServeCtx,
    peer: PeerId,
}

impl Drop for SessionPlace<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.ctx.sessions.lock() {
            count_down(&mut s, &self.peer);
        }
    }
}

impl ServeCtx {
    fn open_session(&self, peer: PeerId) -> Option<SessionPlace<'_>> {
        let mut s = self.sessions.lock().ok()?;
        let n = s.entry(peer).or_insert(0);
        if *n >= MAX_SESSIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(SessionPlace { ctx: self, peer })
    }

    /// The membership, re-read (and its signatures checked) only when the
    /// members file changed: strangers cost a `stat`, not thousands of
    /// signature checks.
    async fn current_members(&self) -> Result<Members> {
        if let Some(m) = self.members.current() {
            return Ok(m);
        }
        let (repo, dev, path) = (self.repo.clone(), self.device.clone(), self.members.path().to_path_buf());
        let (stamp, m) = blocking(move || {
            let stamp = file_stamp(&path);
            Ok((stamp, Members::load_or_found(&repo, &dev)?))
        })
        .await?;
        self.members.keep(stamp, m.clone());
        Ok(m)
    }
}

/// Refuses a connection with a reason the client will show.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: String) -> NetError {
    let _ = write_msg(send, &Welcome::Refused { reason: reason.clone() }).await;
    let _ = send.finish();
    // Give the answer a moment to leave before closing.
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    conn.close(1u32.into(), reason.as_bytes());
    NetError::Refused(reason)
}

/// The handshake, the peer's key and its hello, within [`ADMIT_TIMEOUT`].
async fn admission(
    inc: quinn::Incoming,
    loopback: Option<Arc<quinn::ServerConfig>>,
) -> Result<(quinn::Connection, PeerId, quinn::SendStream, Hello)> {
    let connecting = match loopback {
        Some(config) => inc.accept_with(config),
        None => inc.accept(),
    }
    .map_err(NetError::from)?;
    timed("the handshake and hello", ADMIT_TIMEOUT, async {
        let conn = connecting.await?;
        let peer = tls::remote_peer(&conn)?;
        let (send, mut recv) = conn.accept_bi().await?;
        match read_msg_limited(&mut recv, "the hello", MAX_HELLO).await {
            Ok(h) => Ok((conn, peer, send, h)),
            Err(e) => {
                conn.close(2u32.into(), b"bad hello");
                Err(e)
            }
        }
    })
    .await
    .map_err(Into::into)
}

async fn handle(
    inc: quinn::Incoming,
    loopback: Option<Arc<quinn::ServerConfig>>,
    ticket: Ticket,
    ctx: &ServeCtx,
) -> Result<()> {
    let (conn, peer, mut send, hello) = tokio::select! {
        a = admission(inc, loopback) => a?,
        _ = ticket.evicted.notified() => {
            return Err(NetError::Local("dropped before its hello: too many connections waiting".into()).into())
        }
    };
    let who = format!("{} at {}", format_peer_id(&peer), conn.remote_address());
    let repo = ctx.repo.clone();
    let mut members = ctx.current_members().await?;
    if hello.proto != PROTOCOL {
        return Err(refuse(
            &conn,
            &mut send,
            format!("protocol version {} is not spoken here (1 is)", hello.proto),
        )
        .await
        .into());
    }
    // A stranger learns nothing about which repository is served here.
    let right_repo = hello.repo.as_slice() == repo.store().repo_id().as_bytes();
    if !right_repo && (hello.join.is_some() || members.contains(&peer)) {
        return Err(refuse(&conn, &mut send, "this peer does not serve that repository".into()).await.into());
    }
    let Ok(_place) = ctx.admitted.clone().try_acquire_owned() else {
        return Err(refuse(
            &conn,
            &mut send,
            format!("the server is busy ({MAX_CONNECTIONS} members connected); try again later"),
        )
        .await
        .into());
    };
    let Some(_session) = ctx.open_session(peer) else {
        return Err(refuse(
            &conn,
            &mut send,
            format!("this device has {MAX_SESSIONS_PER_PEER} sessions open here already; try again later"),
        )
        .await
        .into());
    };
    let mut key = None;
    if let Some(secret) = &hello.join {
        let _one_at_a_time = ctx.invites.lock().await;
        let (repo2, dev2, secret) = (repo.clone(), ctx.device.clone(), secret.to_vec());
        let verdict = blocking(move || {
            let mut m = Members::load_or_found(&repo2, &dev2)?;
            let member = m.contains(&peer);
            if !member && m.len() >= crate::members::MAX_MEMBERS {
                return Ok((Err("the repository has as many members as it can have"), m));
            }
            // A member already (a join cut off after it was recorded, or a
            // second folder on the same device) gets the key and leaves the
            // invitation for the device it was made for.
            match invite::consume(&repo2, &secret, &peer, !member)? {
                Ok(()) if member => Ok((Ok(false), m)),
                Ok(()) => {
                    m.add(&repo2, &dev2, peer)?;
                    Ok((Ok(true), m))
                }
                Err(why) => Ok((Err(why), m)),
            }
        })
        .await?;
        match verdict {
            (Ok(added), m) => {
                members = m;
                key = Some(ByteBuf::from(repo.store().repo_key().expose_secret().to_vec()));
                (ctx.log)(match added {
                    true => format!("{who} joined with an invitation"),
                    false => format!("{who}, a member already, used an invitation to fetch the key"),
                });
            }
            (Err(why), _) => return Err(refuse(&conn, &mut send, why.into()).await.into()),
        }
    } else if !members.contains(&peer) {
        return Err(refuse(
            &conn,
            &mut send,
            format!("device {} is not a member of this repository", format_peer_id(&peer)),
        )
        .await
        .into());
    }
    let (repo2, theirs) = (repo.clone(), hello.members.clone());
    let members = blocking(move || {
        merge_members(&repo2, &mut members, &theirs, false)?;
        Ok(members)
    })
    .await?;
    let ours: Vec<ByteBuf> = members.records().iter().map(|r| ByteBuf::from(r.as_bytes().to_vec())).collect();
    drop(ticket);
    tls::admit(&conn);
    write_msg(&mut send, &Welcome::Ok { members: ours, key }).await?;
    let _ = send.finish();
    (ctx.log)(format!("{who} connected"));
    let session =
        Session::new(conn, peer, repo, members, Arc::new(Progress::default()), ctx.log.clone(), None);
    session.clone().serve_requests().await;
    (ctx.log)(format!("{who} disconnected"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_address_unit_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap_or(IpAddr::from([0u8; 4]));
        let b: IpAddr = "2001:db8:1:2::7".parse().unwrap_or(IpAddr::from([0u8; 4]));
        let c: IpAddr = "2001:db8:1:3::7".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(addr_unit(a), addr_unit(b));
        assert_ne!(addr_unit(a), addr_unit(c));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(addr_unit(mapped), IpAddr::from([192, 0, 2, 9]));
        assert_ne!(addr_unit(IpAddr::from([192, 0, 2, 9])), addr_unit(IpAddr::from([192, 0, 2, 10])));
    }

    #[test]
    fn the_gate_limits_per_address_and_in_all_and_evicts_the_oldest() {
        let gate = Arc::new(Gate::default());
        let one = IpAddr::from([10, 0, 0, 1]);
        let mut held: Vec<Ticket> = (0..MAX_UNADMITTED_PER_IP).filter_map(|_| gate.enter(one)).collect();
        assert_eq!(held.len(), MAX_UNADMITTED_PER_IP);
        assert!(gate.enter(one).is_none(), "one address is held to its share");
        // A place given back can be taken again.
        held.pop();
        assert!(gate.enter(one).is_some_and(|t| {
            held.push(t);
            true
        }));
        // Fill every place from other addresses.
        for i in 0.. {
            if held.len() == MAX_UNADMITTED {
                break;
            }
            let ip = IpAddr::from([10, 0, 1 + (i / 8) as u8, (i % 8) as u8]);
            held.push(gate.enter(ip).expect("a free place"));
        }
        assert!(gate.validating(), "a full gate asks newcomers to prove their address");
        let newcomer = IpAddr::from([10, 9, 9, 9]);
        assert!(gate.enter(newcomer).is_none(), "nothing is evicted that is younger than a second");
        std::thread::sleep(EVICT_AFTER + Duration::from_millis(100));
        let oldest = held[0].evicted.clone();
        let t = gate.enter(newcomer).expect("the oldest makes room");
        // The evicted connection is told (the notification is kept until it listens).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let told =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), oldest.notified()).await });
        assert!(told.is_ok(), "the evicted connection was not told");
        // Dropping the evicted ticket later gives back no place: it has none.
        assert_eq!(gate_len(&gate), MAX_UNADMITTED);
        drop(held.remove(0));
        assert_eq!(gate_len(&gate), MAX_UNADMITTED);
        drop(t);
        assert_eq!(gate_len(&gate), MAX_UNADMITTED - 1);
    }

    fn gate_len(g: &Gate) -> usize {
        g.state.lock().map(|s| s.waiting.len()).unwrap_or(0)
    }
}
