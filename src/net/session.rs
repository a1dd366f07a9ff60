//! A session: one authenticated connection between two members, the
//! requests either end answers, and the pull that either end can run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use tokio::task::JoinSet;

use super::wire::{
    self, ids_to_wire, objects_from_wire, read_msg, read_object, versions_from_wire, write_msg, Request,
    Response, Taken, MAX_GET, MAX_HEADS, MAX_WALK,
};
use super::{NetError, REQUEST_TIMEOUT};
use crate::error::{RepoError, Result};
use crate::fsutil::{file_stamp, Kept};
use crate::graph::Graph;
use crate::members::Members;
use crate::repo::{Repo, LOCK_WAIT};
use dbox_store::limits::{MAX_CHUNK_SIZE, MAX_TREE_SIZE, MAX_VERSION_SIZE};
use dbox_store::{
    object, Node, ObjectId, ObjectKind, PeerId, SignedVersion, Tree, VersionId, VersionInfo, Writer,
};

/// `Get` requests in flight at once during a pull.
pub const PARALLEL_GETS: usize = 8;
/// Objects per `Get` of chunks.
const CHUNK_BATCH: usize = 128;
/// Received objects are made durable at least this often (bytes).
pub const FLUSH_EVERY: u64 = 64 << 20;
/// Received objects waiting to be written, at most.
const STORE_QUEUE: usize = 16;
/// First `Walk` limit; it doubles each round.
const FIRST_WALK: u32 = 64;
/// Most versions one pull takes (bounds the memory a peer can make a
/// negotiation use: a set of ids, about 64 MiB).
const MAX_PULL_VERSIONS: usize = 1_000_000;
/// Most bytes of versions one pull holds in memory.
const MAX_PULL_VERSION_BYTES: usize = 512 << 20;
/// Where received objects go to be stored.
type Sink = tokio::sync::mpsc::Sender<(ObjectId, Vec<u8>)>;
/// Trees remembered as complete from the versions a pull builds on.
const MAX_KNOWN_TREES: usize = 1_000_000;

/// `Get` requests one session answers at once; more wait their turn.
const SERVING_GETS_PER_SESSION: usize = 16;
/// `Get` requests this process answers at once, over all sessions (each
/// holds a reading thread).
static SERVING_GETS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(128);
/// Pulls this process runs at once for announcements, over all sessions.
static ANNOUNCED_PULLS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
/// Longest wait for a turn at a limited resource before the request is
/// answered "busy" (well within the asker's own timeout).
const TURN_WAIT: Duration = Duration::from_secs(20);

/// A turn at `sem`, or the reason there is none.
async fn turn(sem: &tokio::sync::Semaphore) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, String> {
    match tokio::time::timeout(TURN_WAIT, sem.acquire()).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err("the server is shutting down".into()),
        Err(_) => Err("the server is busy with other requests; try again later".into()),
    }
}

/// Where log lines of a serving process go.
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

/// Running counts of a pull, for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects received so far.
    pub objects: AtomicU64,
    /// Bytes of objects received so far.
    pub bytes: AtomicU64,
    /// Objects known to be needed (grows as trees arrive).
    pub objects_needed: AtomicU64,
    /// Versions taken.
    pub versions: AtomicU64,
}

/// One end of a session.
pub struct Session {
    conn: quinn::Connection,
    peer: PeerId,
    repo: Repo,
    members: Mutex<Members>,
    graph: Kept<Arc<Graph>>,
    served: AtomicU64,
    gets: tokio::sync::Semaphore,
    pulling: tokio::sync::Mutex<()>,
    /// Counts of the pull running in this session.
    pub progress: Arc<Progress>,
    log: Log,
    // Keeps the endpoint alive as long as the session.
    _endpoint: Option<quinn::Endpoint>,
}

impl Session {
    /// A session over `conn` with `peer`, for `repo`.
    pub fn new(
        conn: quinn::Connection,
        peer: PeerId,
        repo: Repo,
        members: Members,
        progress: Arc<Progress>,
        log: Log,
        endpoint: Option<quinn::Endpoint>,
    ) -> Arc<Self> {
        let versions_log = repo.dot_dir().join("versions");
        Arc::new(Self {
            conn,
            peer,
            repo,
            members: Mutex::new(members),
            graph: Kept::new(versions_log),
            served: AtomicU64::new(0),
            gets: tokio::sync::Semaphore::new(SERVING_GETS_PER_SESSION),
            pulling: tokio::sync::Mutex::new(()),
            progress,
            log,
            _endpoint: endpoint,
        })
    }

    /// The other end's peer id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Bytes sent and received on the wire so far (UDP payloads).
    pub fn wire_bytes(&self) -> (u64, u64) {
        let s = self.conn.stats();
        (s.udp_tx.bytes, s.udp_rx.bytes)
    }

    /// Ends the session politely and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"done");
        if let Some(e) = &self._endpoint {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), e.wait_idle()).await;
        }
    }

    fn members_snapshot(&self) -> Members {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The version graph; `fresh` re-reads it if the versions log changed
    /// since it was last read (so repeated requests cost a `stat`).
    async fn graph(&self, fresh: bool) -> Result<Arc<Graph>> {
        let kept = if fresh { self.graph.current() } else { self.graph.any() };
        if let Some(g) = kept {
            return Ok(g);
        }
        let (repo, log) = (self.repo.clone(), self.graph.path().to_path_buf());
        let (stamp, g) = blocking(move || {
            let stamp = file_stamp(&log);
            repo.store().refresh()?;
            Ok((stamp, Arc::new(repo.graph()?)))
        })
        .await?;
        self.graph.keep(stamp, g.clone());
        Ok(g)
    }

    // ---- Requests this end makes --------------------------------------

    async fn request(&self, req: &Request) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        write_msg(&mut send, req).await?;
        send.finish().map_err(|e| NetError::Lost(e.to_string()))?;
        Ok((send, recv))
    }

    async fn ask(&self, req: &Request, what: &'static str) -> Result<Response, NetError> {
        let (_send, mut recv) = self.request(req).await?;
        match read_msg::<Response>(&mut recv, what).await? {
            Response::Error(e) => Err(NetError::Refused(e)),
            r => Ok(r),
        }
    }

    /// The other end's heads.
    pub async fn heads(&self) -> Result<Vec<VersionId>, NetError> {
        match self.ask(&Request::Heads, "the peer's heads").await? {
            Response::Heads(h) if h.len() <= MAX_HEADS => versions_from_wire(&h),
            Response::Heads(h) => Err(NetError::Protocol(format!("{} heads is over the limit", h.len()))),
            _ => Err(NetError::Protocol("an answer that does not match the request (heads)".into())),
        }
    }

    async fn walk(
        &self,
        from: &[VersionId],
        limit: u32,
    ) -> Result<Vec<(VersionId, Vec<VersionId>)>, NetError> {
        let req = Request::Walk { from: ids_to_wire(from.iter().map(|v| v.0)), limit };
        match self.ask(&req, "the peer's graph").await? {
            Response::Walk(pairs) if pairs.len() <= limit as usize => pairs
                .iter()
                .map(|(v, ps)| {
                    if ps.len() > dbox_store::limits::MAX_PARENTS {
                        return Err(NetError::Protocol("a version with too many parents".into()));
                    }
                    Ok((VersionId(wire::id_from_wire(v)?), versions_from_wire(ps)?))
                })
                .collect(),
            Response::Walk(_) => Err(NetError::Protocol("more versions than asked for".into())),
            _ => Err(NetError::Protocol("an answer that does not match the request (walk)".into())),
        }
    }

    /// Fetches objects of at most `max_len` bytes each. `check` sees each
    /// one (already checked against its id) and may refuse it; then it goes
    /// to `sink` (the storing thread) if there is one. Nothing is held
    /// beyond one object per request: memory stays bounded whatever the
    /// peer sends. Objects the peer lacks are an error.
    async fn get(
        &self,
        ids: &[ObjectId],
        max_len: usize,
        mut check: impl FnMut(&ObjectId, &[u8]) -> Result<()>,
        sink: Option<&Sink>,
    ) -> Result<()> {
        let req = Request::Get { ids: ids_to_wire(ids.iter().map(|i| i.0)) };
        let (_send, mut recv) = self.request(&req).await?;
        for want in ids {
            let (id, bytes) = read_object(&mut recv, max_len).await?;
            if &id != want {
                return Err(NetError::Protocol(format!(
                    "object {} sent where {} was asked",
                    id.short(),
                    want.short()
                ))
                .into());
            }
            let Some(bytes) = bytes else {
                return Err(NetError::Protocol(format!(
                    "the peer lacks object {}, which its versions need",
                    id.short()
                ))
                .into());
            };
            object::check_id(&id, &bytes)
                .map_err(|_| NetError::Protocol(format!("object {} does not match its id", id.short())))?;
            check(&id, &bytes)?;
            if let Some(tx) = sink {
                tx.send((id, bytes))
                    .await
                    .map_err(|_| RepoError::Usage("the storing thread stopped".into()))?;
            }
        }
        Ok(())
    }

    /// Tells the other end about our heads and waits while it pulls them.
    pub async fn announce(self: &Arc<Self>) -> Result<Taken> {
        let heads = self.graph(true).await?.heads();
        let req = Request::Announce { heads: ids_to_wire(heads.iter().map(|v| v.0)) };
        let (_send, mut recv) = self.request(&req).await?;
        // The peer pulls from us meanwhile: keep waiting as long as it keeps asking.
        let mut read = Box::pin(async move { read_msg_unbounded(&mut recv).await });
        let mut last = self.served.load(Ordering::Relaxed);
        loop {
            match tokio::time::timeout(REQUEST_TIMEOUT, &mut read).await {
                Ok(Ok(Response::Announced(t))) => return Ok(t),
                Ok(Ok(Response::Error(e))) => return Err(NetError::Refused(e).into()),
                Ok(Ok(_)) => {
                    return Err(NetError::Protocol("an answer that does not match (announce)".into()).into())
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    let now = self.served.load(Ordering::Relaxed);
                    if now == last {
                        return Err(NetError::Timeout("the peer to finish pulling").into());
                    }
                    last = now;
                }
            }
        }
    }

    // ---- Answering ------------------------------------------------------

    /// Answers the other end's requests until the connection ends.
    pub async fn serve_requests(self: Arc<Self>) {
        let mut tasks = JoinSet::new();
        while let Ok((send, recv)) = self.conn.accept_bi().await {
            let s = self.clone();
            tasks.spawn(async move {
                if let Err(e) = s.answer(send, recv).await {
                    (s.log)(format!("{}: request failed: {}", crate::identity::format_peer_id(&s.peer), e));
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        tasks.shutdown().await;
    }

    async fn answer(
        self: &Arc<Self>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<()> {
        let req: Request = read_msg(&mut recv, "a request").await?;
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut advance = false;
        let reply = match req {
            Request::Heads => {
                let g = self.graph(true).await?;
                Response::Heads(ids_to_wire(g.heads().iter().map(|v| v.0)))
            }
            Request::Walk { from, limit } => {
                if from.len() > MAX_HEADS * 4 || limit > MAX_WALK {
                    Response::Error("walk request over the limits".into())
                } else {
                    let from = versions_from_wire(&from)?;
                    let mut g = self.graph(false).await?;
                    if from.iter().any(|v| !g.contains(v)) {
                        g = self.graph(true).await?;
                    }
                    Response::Walk(walk(&g, &from, limit as usize))
                }
            }
            Request::Get { ids } => {
                if ids.len() > MAX_GET {
                    return Err(NetError::Protocol(format!(
                        "a get of {} objects is over the limit",
                        ids.len()
                    ))
                    .into());
                }
                let ids = objects_from_wire(&ids)?;
                let _mine = turn(&self.gets).await.map_err(NetError::Local)?;
                let _ours = turn(&SERVING_GETS).await.map_err(NetError::Local)?;
                return self.send_objects(send, ids).await;
            }
            Request::Announce { heads } => {
                let one_per_session = self.pulling.try_lock();
                if heads.len() > MAX_HEADS {
                    Response::Error("too many heads".into())
                } else if one_per_session.is_err() {
                    Response::Error("a pull from you is already running in this session".into())
                } else {
                    match turn(&ANNOUNCED_PULLS).await {
                        Err(busy) => Response::Error(busy),
                        Ok(_turn) => match self.pull().await {
                            Ok(t) => {
                                if t.versions > 0 {
                                    (self.log)(format!(
                                        "{}: took {} version(s), {} object(s), {} bytes",
                                        crate::identity::format_peer_id(&self.peer),
                                        t.versions,
                                        t.objects,
                                        t.bytes
                                    ));
                                    advance = true;
                                }
                                Response::Announced(t)
                            }
                            Err(e) => Response::Error(dbox_store::error::chain(&e)),
                        },
                    }
                }
            }
        };
        write_msg(&mut send, &reply).await?;
        let _ = send.finish();
        // The announcer has its answer; the working tree here moves after.
        if advance {
            self.after_pull().await;
        }
        Ok(())
    }

    /// After a pull this end did for the other: move a clean working tree.
    async fn after_pull(&self) {
        let repo = self.repo.clone();
        match blocking(move || crate::net::ops::advance_worktree(&repo)).await {
            Ok(a) => (self.log)(format!("working tree: {a}")),
            Err(e) => (self.log)(format!("working tree not updated: {}", dbox_store::error::chain(&e))),
        }
    }

    /// Streams objects: a blocking reader stays at most two objects ahead
    /// of the network, so memory per request is a few objects.
    async fn send_objects(&self, mut send: quinn::SendStream, ids: Vec<ObjectId>) -> Result<()> {
        let store = self.repo.store().clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ObjectId, Option<Vec<u8>>)>(2);
        let reader = tokio::task::spawn_blocking(move || {
            let mut refreshed = false;
            for id in ids {
                let b = match store.try_get_raw(&id) {
                    Ok(Some(b)) => Some(b),
                    // A commit may have landed since the store was opened.
                    Ok(None) if !refreshed => {
                        refreshed = true;
                        store.refresh().ok().and_then(|()| store.try_get_raw(&id).ok().flatten())
                    }
                    Ok(None) | Err(_) => None,
                };
                if tx.blocking_send((id, b)).is_err() {
                    return;
                }
            }
        });
        while let Some((id, b)) = rx.recv().await {
            wire::write_object(&mut send, &id, b.as_deref()).await?;
            // Progress for an announcer waiting on our pull of its objects.
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        let _ = reader.await;
        let _ = send.finish();
        Ok(())
    }

    // ---- Pulling --------------------------------------------------------

    /// Takes every version the other end has and this end lacks, with
    /// everything they reach.
    pub async fn pull(self: &Arc<Self>) -> Result<Taken> {
        let remote_heads = self.heads().await?;
        let local = self.graph(true).await?;
        let missing_heads: Vec<VersionId> = remote_heads.into_iter().filter(|h| !local.contains(h)).collect();
        if missing_heads.is_empty() {
            return Ok(Taken::default());
        }
        // Negotiation: walk the peer's graph down to what we have. The
        // frontier (parents named but neither held nor yet walked) is kept
        // up to date as answers arrive, so each answer costs its own size.
        let mut lacking: HashSet<VersionId> = HashSet::new();
        let mut frontier: HashSet<VersionId> = missing_heads.into_iter().collect();
        let mut limit = FIRST_WALK;
        while !frontier.is_empty() {
            let ask: Vec<VersionId> = frontier.iter().take(MAX_HEADS).copied().collect();
            let answer = self.walk(&ask, limit).await?;
            if !answer.iter().any(|(v, _)| frontier.contains(v)) {
                return Err(
                    NetError::Protocol("the peer's graph walk did not answer what was asked".into()).into()
                );
            }
            for (v, parents) in answer {
                if local.contains(&v) || !lacking.insert(v) {
                    continue;
                }
                frontier.remove(&v);
                for p in &parents {
                    if !local.contains(p) && !lacking.contains(p) {
                        frontier.insert(*p);
                    }
                }
            }
            if lacking.len() + frontier.len() > MAX_PULL_VERSIONS {
                return Err(NetError::Protocol(format!(
                    "the peer has more than {MAX_PULL_VERSIONS} versions this side lacks; one pull takes at most that"
                ))
                .into());
            }
            limit = (limit * 2).min(MAX_WALK);
        }

        // The versions themselves, checked.
        let members = self.members_snapshot();
        let keys = self.repo.store().keys().clone();
        let repo_id = self.repo.store().repo_id();
        let ids: Vec<ObjectId> = lacking.iter().map(|v| ObjectId::from(*v)).collect();
        drop(lacking);
        let mut versions: HashMap<VersionId, (SignedVersion, VersionInfo)> = HashMap::new();
        let mut held = 0usize;
        for batch in ids.chunks(MAX_GET) {
            self.get(
                batch,
                MAX_VERSION_SIZE,
                |id, bytes| {
                    let bad = |why: String| {
                        RepoError::from(NetError::Protocol(format!("version {}: {why}", id.short())))
                    };
                    if ObjectKind::of_stored(bytes).ok() != Some(ObjectKind::Version) {
                        return Err(bad("not a version".into()));
                    }
                    held += bytes.len();
                    if held > MAX_PULL_VERSION_BYTES {
                        return Err(bad("the versions of one pull are over the size limit".into()));
                    }
                    let v = SignedVersion::from_stored(bytes).map_err(|e| bad(e.to_string()))?;
                    if v.body().repo != repo_id {
                        return Err(bad("it belongs to another repository".into()));
                    }
                    if !members.contains(&v.body().author) {
                        return Err(bad(format!(
                            "signed by {}, who is not a member",
                            crate::identity::format_peer_id(&v.body().author)
                        )));
                    }
                    let info = v.info(&keys).map_err(|e| bad(e.to_string()))?;
                    versions.insert(VersionId::from(*id), (v, info));
                    Ok(())
                },
                None,
            )
            .await?;
        }
        for (id, (v, _)) in &versions {
            for p in &v.body().parents {
                if !local.contains(p) && !versions.contains_key(p) {
                    return Err(NetError::Protocol(format!(
                        "version {} names parent {}, which the peer did not send",
                        id.short(),
                        p.short()
                    ))
                    .into());
                }
            }
        }
        let order = topological(&versions, &local)?;

        // Everything they reach, stored before any of them is recorded.
        let (tx, rx) = tokio::sync::mpsc::channel::<(ObjectId, Vec<u8>)>(STORE_QUEUE);
        let storer = {
            let store = self.repo.store().clone();
            let progress = self.progress.clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || store_loop(&store, rx, &progress, &handle))
        };
        let fetched = self.fetch_content(&versions, &local, &tx).await;
        drop(tx);
        let stored = storer.await.map_err(|_| RepoError::Usage("the storing thread panicked".into()))?;
        let taken_objects = stored?;
        fetched?;

        let repo = self.repo.clone();
        let progress = self.progress.clone();
        let n = blocking(move || {
            let writer = repo.store().writer_wait(LOCK_WAIT)?;
            for id in &order {
                if let Some((v, _)) = versions.get(id) {
                    writer.put_raw(&ObjectId::from(*id), v.stored())?;
                }
            }
            writer.flush()?;
            // Another pull may have recorded some meanwhile (we hold the lock now).
            let have = repo.graph()?;
            let fresh: Vec<(SignedVersion, VersionInfo)> =
                order.iter().filter(|id| !have.contains(id)).filter_map(|id| versions.remove(id)).collect();
            repo.record_versions(&fresh)?;
            progress.versions.fetch_add(fresh.len() as u64, Ordering::Relaxed);
            drop(writer);
            Ok(fresh.len() as u64)
        })
        .await?;
        self.graph.forget();
        Ok(Taken { versions: n, objects: taken_objects.0, bytes: taken_objects.1 })
    }

    async fn fetch_content(
        self: &Arc<Self>,
        versions: &HashMap<VersionId, (SignedVersion, VersionInfo)>,
        local: &Graph,
        tx: &Sink,
    ) -> Result<()> {
        // Trees of the local versions this pull builds on are complete.
        let boundary: Vec<VersionId> = versions
            .values()
            .flat_map(|(v, _)| v.body().parents.iter().copied())
            .filter(|p| local.contains(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let repo = self.repo.clone();
        let complete = blocking(move || known_trees(&repo, &boundary)).await?;

        let keys = self.repo.store().keys().clone();
        let mut seen_trees: HashSet<ObjectId> = HashSet::new();
        let mut chunks: Vec<ObjectId> = Vec::new();
        let mut seen_chunks: HashSet<ObjectId> = HashSet::new();
        let mut level: Vec<ObjectId> = versions
            .values()
            .map(|(v, _)| v.body().root)
            .filter(|r| !complete.contains(r) && seen_trees.insert(*r))
            .collect();
        while !level.is_empty() {
            // Trees we hold are read locally; the others are fetched.
            let store = self.repo.store().clone();
            let ids = level.clone();
            let (trees, remote) = blocking(move || {
                let mut have = Vec::new();
                let mut remote = Vec::new();
                for id in ids {
                    match store.contains(&id)? {
                        true => have.push((id, store.get_raw(&id)?)),
                        false => remote.push(id),
                    }
                }
                Ok((have, remote))
            })
            .await?;
            let mut next = Vec::new();
            let mut visit = |id: &ObjectId, tree: &Tree| {
                for e in tree.entries() {
                    match &e.node {
                        Node::Dir { tree } => {
                            if !complete.contains(tree) && seen_trees.insert(*tree) {
                                next.push(*tree);
                            }
                        }
                        Node::File { chunks: cs, .. } => {
                            for c in cs {
                                if seen_chunks.insert(*c) {
                                    chunks.push(*c);
                                }
                            }
                        }
                        Node::Symlink { .. } => {}
                    }
                }
                let _ = id;
            };
            for batch in remote.chunks(MAX_GET) {
                let progress = self.progress.clone();
                self.get(
                    batch,
                    MAX_TREE_SIZE + 1024,
                    |id, bytes| {
                        if ObjectKind::of_stored(bytes).ok() != Some(ObjectKind::Tree) {
                            return Err(
                                NetError::Protocol(format!("object {} is not a tree", id.short())).into()
                            );
                        }
                        let tree = decode_tree(&keys, id, bytes)?;
                        progress.objects_needed.fetch_add(1, Ordering::Relaxed);
                        visit(id, &tree);
                        Ok(())
                    },
                    Some(tx),
                )
                .await?;
            }
            for (id, bytes) in trees {
                let tree = decode_tree(&keys, &id, &bytes)?;
                visit(&id, &tree);
            }
            level = next;
        }
        drop(seen_chunks);

        // Chunks we lack, several streams at once.
        let store = self.repo.store().clone();
        let wanted = blocking(move || {
            let mut out = Vec::new();
            for c in chunks {
                if !store.contains(&c)? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await?;
        self.progress.objects_needed.fetch_add(wanted.len() as u64, Ordering::Relaxed);
        let queue: Arc<Mutex<VecDeque<Vec<ObjectId>>>> =
            Arc::new(Mutex::new(wanted.chunks(CHUNK_BATCH).map(<[ObjectId]>::to_vec).collect()));
        let mut tasks = JoinSet::new();
        for _ in 0..PARALLEL_GETS {
            let s = self.clone();
            let q = queue.clone();
            let tx = tx.clone();
            tasks.spawn(async move {
                loop {
                    let Some(batch) = q.lock().ok().and_then(|mut q| q.pop_front()) else { return Ok(()) };
                    s.get(
                        &batch,
                        MAX_CHUNK_SIZE + 1024,
                        |id, bytes| {
                            if ObjectKind::of_stored(bytes).ok() != Some(ObjectKind::Chunk) {
                                return Err(NetError::Protocol(format!(
                                    "object {} is not a chunk",
                                    id.short()
                                ))
                                .into());
                            }
                            Ok(())
                        },
                        Some(&tx),
                    )
                    .await?;
                }
            });
        }
        let mut first_err = None;
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(|e| RepoError::Usage(format!("a transfer task failed: {e}"))).and_then(|r| r);
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
                // Stop the others: nothing more is needed if one failed.
                if let Ok(mut q) = queue.lock() {
                    q.clear();
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn decode_tree(keys: &dbox_store::Keys, id: &ObjectId, bytes: &[u8]) -> Result<Tree> {
    object::open(keys, ObjectKind::Tree, bytes)
        .and_then(|p| Tree::decode(&p))
        .map_err(|e| NetError::Protocol(format!("tree {} is invalid: {e}", id.short())).into())
}

/// Reads a response with no time limit of its own (the caller watches).
async fn read_msg_unbounded(recv: &mut quinn::RecvStream) -> Result<Response, NetError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > wire::MAX_MESSAGE {
        return Err(NetError::Protocol(format!("a message of {len} bytes is over the limit")));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    dbox_store::cbor::decode("an answer", &body, wire::MAX_MESSAGE)
        .map_err(|e| NetError::Protocol(e.to_string()))
}

/// The writer lock as the storing thread holds it: since when, and how
/// many bytes are not yet flushed.
struct Held {
    writer: Writer,
    since: Instant,
    unflushed: u64,
}

/// Writes received objects; flushes every [`FLUSH_EVERY`] bytes and at
/// the end, also when the transfer failed, so that what arrived is kept.
///
/// The writer lock is taken only while objects arrive: it is given back
/// after a flush once it has been held [`LOCK_SLICE`] (at the latest after
/// [`LOCK_SLICE_MAX`]), and whenever nothing arrives for [`LOCK_IDLE`], so
/// that a `dbox commit` waiting for it gets in even while a long or slow
/// transfer runs. The first error ends the loop (the senders then stop).
fn store_loop(
    store: &dbox_store::Store,
    mut rx: tokio::sync::mpsc::Receiver<(ObjectId, Vec<u8>)>,
    progress: &Progress,
    rt: &tokio::runtime::Handle,
) -> Result<(u64, u64)> {
    let (mut objects, mut bytes) = (0u64, 0u64);
    let mut held: Option<Held> = None;
    let mut result: Result<()> = Ok(());
    loop {
        let next = match &held {
            None => rx.blocking_recv(),
            Some(_) => match rt.block_on(async { tokio::time::timeout(LOCK_IDLE, rx.recv()).await }) {
                Ok(next) => next,
                Err(_) => {
                    // Nothing for a while: make what arrived durable and let others in.
                    if let Some(h) = held.take() {
                        if let Err(e) = h.writer.flush() {
                            result = Err(e.into());
                            break;
                        }
                    }
                    continue;
                }
            },
        };
        let Some((id, b)) = next else { break };
        if let Err(e) = store_one(store, &mut held, &id, &b) {
            result = Err(e);
            break;
        }
        objects += 1;
        bytes += b.len() as u64;
        progress.objects.fetch_add(1, Ordering::Relaxed);
        progress.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    drop(rx);
    let flushed = held.map_or(Ok(()), |h| h.writer.flush());
    result?;
    flushed?;
    Ok((objects, bytes))
}

/// Nothing arrived for this long: the storing thread flushes and lets others have the lock.
const LOCK_IDLE: Duration = Duration::from_secs(1);

/// Held this long, the storing thread lets others have the lock at its next flush.
const LOCK_SLICE: Duration = Duration::from_secs(5);
/// Held this long, the storing thread flushes early to let others have the lock.
const LOCK_SLICE_MAX: Duration = Duration::from_secs(15);
/// How long the lock stays free between slices (the waiting side polls every 20 ms).
const LOCK_PAUSE: Duration = Duration::from_millis(50);

fn store_one(store: &dbox_store::Store, held: &mut Option<Held>, id: &ObjectId, b: &[u8]) -> Result<()> {
    let h = match held {
        Some(h) => h,
        None => {
            held.insert(Held { writer: store.writer_wait(LOCK_WAIT)?, since: Instant::now(), unflushed: 0 })
        }
    };
    h.writer.put_raw(id, b)?;
    h.unflushed += b.len() as u64;
    let age = h.since.elapsed();
    if h.unflushed >= FLUSH_EVERY || age >= LOCK_SLICE_MAX {
        h.writer.flush()?;
        h.unflushed = 0;
        if age >= LOCK_SLICE {
            *held = None;
            std::thread::sleep(LOCK_PAUSE);
        }
    }
    Ok(())
}

/// Tree ids reachable from `versions` (all stored: they are visible).
fn known_trees(repo: &Repo, versions: &[VersionId]) -> Result<HashSet<ObjectId>> {
    let mut out = HashSet::new();
    let mut stack: Vec<ObjectId> = Vec::new();
    for v in versions {
        stack.push(repo.store().get_version(v)?.body().root);
    }
    while let Some(t) = stack.pop() {
        if out.len() >= MAX_KNOWN_TREES {
            break;
        }
        if !out.insert(t) {
            continue;
        }
        for e in repo.store().get_tree(&t)?.entries() {
            if let Node::Dir { tree } = &e.node {
                stack.push(*tree);
            }
        }
    }
    Ok(out)
}

/// Breadth-first from `from`, at most `limit` `(version, parents)` pairs.
fn walk(g: &Graph, from: &[VersionId], limit: usize) -> Vec<(ByteBuf, Vec<ByteBuf>)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue: VecDeque<VersionId> = from.iter().copied().collect();
    while let Some(v) = queue.pop_front() {
        if out.len() >= limit {
            break;
        }
        if !seen.insert(v) {
            continue;
        }
        let Some(node) = g.get(&v) else { continue };
        out.push((ByteBuf::from(v.0.to_vec()), ids_to_wire(node.parents.iter().map(|p| p.0))));
        queue.extend(node.parents.iter().copied());
    }
    out
}

/// Parents before children.
fn topological(
    versions: &HashMap<VersionId, (SignedVersion, VersionInfo)>,
    local: &Graph,
) -> Result<Vec<VersionId>> {
    let mut pending: HashMap<VersionId, usize> = HashMap::new();
    let mut children: HashMap<VersionId, Vec<VersionId>> = HashMap::new();
    for (id, (v, _)) in versions {
        let n = v.body().parents.iter().filter(|p| !local.contains(p)).count();
        pending.insert(*id, n);
        for p in &v.body().parents {
            if !local.contains(p) {
                children.entry(*p).or_default().push(*id);
            }
        }
    }
    let mut ready: Vec<VersionId> = pending.iter().filter(|(_, n)| **n == 0).map(|(id, _)| *id).collect();
    ready.sort();
    let mut out = Vec::with_capacity(versions.len());
    while let Some(id) = ready.pop() {
        out.push(id);
        for c in children.get(&id).into_iter().flatten() {
            if let Some(n) = pending.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    ready.push(*c);
                }
            }
        }
    }
    if out.len() != versions.len() {
        return Err(NetError::Protocol("the versions sent form a cycle".into()).into());
    }
    Ok(out)
}

/// Runs blocking repository work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::Usage(format!("a worker thread failed: {e}")))?
}
