//! Hostile and unlucky networks against a real `dbox serve` process:
//! strangers, spent and expired invitations, hand-built QUIC clients that
//! send garbage, huge length prefixes, another protocol version, forged
//! versions and objects that do not match their ids; a server killed in the
//! middle of a large transfer; three peers in a chain; concurrent commits.
//!
//! Every server is a child process killed when its guard drops; every wait
//! is bounded.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::{json, token, Dev, Server};
use common::{write, TestResult};
use dbox::members::Record;
use dbox::net::tls::{self, Identity};
use dbox::net::wire::{
    id_from_wire, ids_to_wire, read_msg, write_delta, write_msg, write_object, Hello, Request, Response,
    Welcome,
};
use dbox::net::{NetError, PROTOCOL};
use dbox::store::{ObjectId, PeerId, RepoId, SignedVersion, VersionBody, VersionId, VersionInfo};
use dbox::Repo;
use serde_bytes::ByteBuf;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// How long any one network step of a raw client may take.
const STEP: Duration = Duration::from_secs(20);

// ---- Devices and servers ---------------------------------------------------

/// Number of versions `dbox log` lists.
fn version_count(dev: &Dev, repo: &Path) -> R<usize> {
    let log = json(&dev.ok(repo, &["log", "--json"])?)?;
    Ok(log.as_array().map_or(0, Vec::len))
}

/// Copies a repository folder (not a running server's lock or address).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        let name = e.file_name();
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else if e.file_type()?.is_file() && name != "serve.lock" && name != "serve.addr" {
            std::fs::copy(e.path(), &t)?;
        }
    }
    Ok(())
}

/// A repository `a` founded by device `a` with one version, served; and
/// device `b` a member through an invitation, cloned into `b`.
struct Pair {
    tmp: tempfile::TempDir,
    a: Dev,
    b: Dev,
    ra: PathBuf,
    rb: PathBuf,
    server: Server,
}

fn pair() -> R<Pair> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("notes/plan.md"), "one\ntwo\n")?;
    write(&ra.join("data.bin"), common::bytes(3, 300_000))?;
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite", "--expires", "10m"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    Ok(Pair { tmp, a, b, ra, rb, server })
}

fn runtime() -> R<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

// ---- A raw QUIC client -----------------------------------------------------

/// A QUIC connection to `server` at `addr` presenting `key`, speaking `alpn`.
async fn raw_connect(
    key: &ed25519_dalek::SigningKey,
    server: PeerId,
    addr: SocketAddr,
    alpn: &[u8],
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    raw_connect_from(key, server, addr, alpn, [127, 0, 0, 1]).await
}

/// [`raw_connect`] from another loopback address (all of 127/8 is loopback).
async fn raw_connect_from(
    key: &ed25519_dalek::SigningKey,
    server: PeerId,
    addr: SocketAddr,
    alpn: &[u8],
    from: [u8; 4],
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let id = Identity::new(key).map_err(|e| e.to_string())?;
    let cfg =
        tls::client_config_alpn(&id, server, Arc::new(Mutex::new(None)), alpn).map_err(|e| e.to_string())?;
    let ep = tls::endpoint(SocketAddr::from((from, 0)), None).map_err(|e| e.to_string())?;
    let connecting = ep.connect_with(cfg, addr, "dbox").map_err(|e| e.to_string())?;
    match tokio::time::timeout(STEP, connecting).await {
        Ok(Ok(c)) => Ok((ep, c)),
        Ok(Err(e)) => Err(format!("handshake failed: {e} ({e:?})")),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Sends `bytes` as the first stream's content, then waits for the server
/// to close the connection; returns how it closed.
async fn send_raw_first_stream(conn: &quinn::Connection, bytes: &[u8]) -> R<quinn::ConnectionError> {
    let (mut send, mut recv) = tokio::time::timeout(STEP, conn.open_bi()).await??;
    send.write_all(bytes).await?;
    let _ = send.finish();
    // Whatever the server answers (it should answer nothing), it must close.
    let _ = tokio::time::timeout(STEP, recv.read_to_end(1 << 20)).await;
    let closed = tokio::time::timeout(STEP, conn.closed())
        .await
        .map_err(|_| "the server did not close the connection after a bad hello")?;
    Ok(closed)
}

/// Says hello and returns the server's answer.
async fn raw_hello(conn: &quinn::Connection, hello: &Hello) -> R<Welcome> {
    let (mut send, mut recv) = tokio::time::timeout(STEP, conn.open_bi()).await??;
    write_msg(&mut send, hello).await?;
    let _ = send.finish();
    let w = tokio::time::timeout(STEP, read_msg::<Welcome>(&mut recv, "the welcome")).await??;
    Ok(w)
}

fn hello(repo: RepoId, join: Option<[u8; 32]>, members: Vec<ByteBuf>) -> Hello {
    Hello {
        proto: PROTOCOL,
        repo: ByteBuf::from(repo.0.to_vec()),
        join: join.map(|s| ByteBuf::from(s.to_vec())),
        members,
    }
}

/// What a hostile member claims to have: one head with these parents, and
/// the bytes it sends for each object asked for (`None`: "I lack it").
struct Fake {
    head: [u8; 32],
    parents: Vec<[u8; 32]>,
    objects: HashMap<[u8; 32], Option<Vec<u8>>>,
}

/// Answers the server's requests on `conn` from `fake` until it closes.
fn answer_from(conn: quinn::Connection, fake: Arc<Fake>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let f = fake.clone();
            tokio::spawn(async move {
                let Ok(req) = read_msg::<Request>(&mut recv, "a request").await else { return };
                let r: Result<(), NetError> = async {
                    match req {
                        Request::Heads => write_msg(&mut send, &Response::Heads(ids_to_wire([f.head]))).await,
                        Request::Walk { from, .. } => {
                            let pairs = if from.iter().any(|b| b.as_slice() == f.head) {
                                vec![(ByteBuf::from(f.head.to_vec()), ids_to_wire(f.parents.clone()))]
                            } else {
                                Vec::new()
                            };
                            write_msg(&mut send, &Response::Walk(pairs)).await
                        }
                        Request::Get { ids, .. } => {
                            for id in ids {
                                let id = id_from_wire(&id)?;
                                let b = f.objects.get(&id).cloned().flatten();
                                write_object(&mut send, &ObjectId(id), b.as_deref()).await?;
                            }
                            Ok(())
                        }
                        Request::Announce { .. } => {
                            write_msg(&mut send, &Response::Error("not answering announcements".into())).await
                        }
                    }
                }
                .await;
                let _ = r;
                let _ = send.finish();
            });
        }
    })
}

/// Connects as a member, announces `fake`'s head, answers the server's pull
/// from `fake`, and returns the server's answer to the announcement (or how
/// the connection ended).
async fn announce_fake(
    key: &ed25519_dalek::SigningKey,
    server: PeerId,
    addr: SocketAddr,
    repo: RepoId,
    fake: Fake,
) -> R<Result<Response, String>> {
    let (ep, conn) = raw_connect(key, server, addr, dbox::net::ALPN).await?;
    match raw_hello(&conn, &hello(repo, None, Vec::new())).await? {
        Welcome::Ok { .. } => {}
        Welcome::Refused { reason } => return Err(format!("a member was refused: {reason}").into()),
    }
    let head = fake.head;
    let responder = answer_from(conn.clone(), Arc::new(fake));
    let (mut send, mut recv) = tokio::time::timeout(STEP, conn.open_bi()).await??;
    write_msg(&mut send, &Request::Announce { heads: ids_to_wire([head]) }).await?;
    let _ = send.finish();
    let out = match tokio::time::timeout(STEP, read_msg::<Response>(&mut recv, "the announce answer")).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("connection ended: {e}")),
        Err(_) => return Err("no answer to the announcement within the time limit (server hung?)".into()),
    };
    conn.close(0u32.into(), b"done");
    responder.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    Ok(out)
}

/// The server's answer to a hostile announcement must be a clean refusal
/// mentioning `expect`, or a closed connection.
fn expect_refusal(what: &str, got: Result<Response, String>, expect: &str) -> TestResult {
    match got {
        Ok(Response::Error(e)) => {
            assert!(e.contains(expect), "{what}: the error should mention {expect:?}: {e}");
            eprintln!("{what}: refused: {e}");
        }
        Err(closed) => eprintln!("{what}: connection closed: {closed}"),
        Ok(other) => return Err(format!("{what}: the server accepted hostile data: {other:?}").into()),
    }
    Ok(())
}

// ---- 1. Strangers ----------------------------------------------------------

#[test]
fn a_stranger_is_refused_and_the_server_keeps_serving() -> TestResult {
    let mut p = pair()?;
    let target = format!("{}@{}", p.a.id()?, p.server.addr);

    // A stranger holding a copy of the repository (same id, not a member).
    let s = Dev::new(p.tmp.path(), "stranger")?;
    let rs = p.tmp.path().join("s");
    copy_dir(&p.ra, &rs)?;
    let r = s.run(&rs, &["pull", &target])?;
    assert!(r.code != 0, "{r:?}");
    assert!(r.stderr.contains("not a member"), "a clear refusal: {r:?}");
    assert!(r.stderr.contains(&s.id()?), "the refusal names the device: {r:?}");
    // Its versions are not taken either.
    write(&rs.join("intruder.txt"), "let me in")?;
    s.ok(&rs, &["commit", "-m", "intruder"])?;
    let r = s.run(&rs, &["push", &target])?;
    assert!(r.code != 0 && r.stderr.contains("not a member"), "{r:?}");
    let r = s.run(&rs, &["sync", &target])?;
    assert!(r.code != 0 && r.stderr.contains("not a member"), "{r:?}");

    // A stranger with a repository of its own.
    let s2 = Dev::new(p.tmp.path(), "stranger2")?;
    s2.ok(p.tmp.path(), &["init", "s2"])?;
    let r = s2.run(&p.tmp.path().join("s2"), &["pull", &target])?;
    // Not told which repository is served here: just that it is no member.
    assert!(r.code != 0 && r.stderr.contains("not a member"), "{r:?}");

    p.server.assert_alive()?;
    assert_eq!(version_count(&p.a, &p.ra)?, 1, "nothing from the stranger was stored");
    assert!(!p.a.ok(&p.ra, &["log"])?.stdout.contains("intruder"));
    let members = dbox::members::Members::load(&Repo::open(&p.ra)?)?;
    assert_eq!(members.len(), 2, "the stranger did not become a member");
    // The server logs each refusal (soon: it first lets the answer leave).
    let t = Instant::now();
    while p.server.log().matches("is not a member").count() < 4 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.server.log().matches("is not a member").count(), 4, "{}", p.server.log());

    // A real member is still served.
    write(&p.ra.join("notes/plan.md"), "one\ntwo\nthree\n")?;
    p.a.ok(&p.ra, &["commit", "-m", "second"])?;
    let j = json(&p.b.ok(&p.rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert_eq!(std::fs::read_to_string(p.rb.join("notes/plan.md"))?, "one\ntwo\nthree\n");
    p.a.ok(&p.ra, &["fsck"])?;
    p.server.assert_alive()?;
    Ok(())
}

// ---- 2. Invitations --------------------------------------------------------

#[test]
fn invitations_work_once_expire_and_need_an_empty_folder() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = Dev::new(tmp.path(), "a")?;
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("f.txt"), "hello\n")?;
    a.ok(&ra, &["commit", "-m", "first"])?;
    let mut server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite", "--expires", "10m"])?);

    // A non-empty target folder is refused before the token is spent.
    let c = Dev::new(tmp.path(), "c")?;
    let full = tmp.path().join("full");
    write(&full.join("mine.txt"), "keep")?;
    let r = c.run(tmp.path(), &["clone", &tok, "full"])?;
    assert!(r.code != 0 && r.stderr.contains("not empty"), "{r:?}");
    assert_eq!(std::fs::read_to_string(full.join("mine.txt"))?, "keep");
    assert!(!full.join(".dbox").exists(), "nothing was made in the folder");

    // The token still works once...
    c.ok(tmp.path(), &["clone", &tok, "c"])?;
    assert_eq!(std::fs::read_to_string(tmp.path().join("c/f.txt"))?, "hello\n");
    // ...and only once.
    let d = Dev::new(tmp.path(), "d")?;
    let r = d.run(tmp.path(), &["clone", &tok, "d"])?;
    assert!(r.code != 0 && r.stderr.contains("used already"), "{r:?}");
    assert!(!tmp.path().join("d/.dbox").exists(), "a refused clone leaves no repository");

    // An expired token: the client says so...
    let short = token(&a.ok(&ra, &["invite", "--expires", "1s"])?);
    std::thread::sleep(Duration::from_millis(2100));
    let e = Dev::new(tmp.path(), "e")?;
    let r = e.run(tmp.path(), &["clone", &short, "e"])?;
    assert!(r.code != 0 && r.stderr.contains("expired"), "{r:?}");
    assert!(!tmp.path().join("e/.dbox").exists());

    // ...and so does the server, to a client that ignores the expiry, or
    // presents a spent or an unknown secret. (Making an invitation drops
    // the used ones from the list, so a spent token is "unknown" by now.)
    let short = dbox::net::invite::Token::decode(&short)?;
    let spent = dbox::net::invite::Token::decode(&tok)?;
    let key = e.device()?;
    let addr = server.sock()?;
    let rt = runtime()?;
    rt.block_on(async {
        for (secret, expect) in
            [(short.secret, "expired"), (spent.secret, "invitation"), ([7u8; 32], "unknown invitation")]
        {
            let (ep, conn) = raw_connect(key.signing_key(), short.inviter, addr, dbox::net::ALPN).await?;
            match raw_hello(&conn, &hello(short.repo, Some(secret), Vec::new())).await? {
                Welcome::Refused { reason } => assert!(reason.contains(expect), "{expect}: {reason}"),
                Welcome::Ok { key, .. } => {
                    return Err(format!(
                        "joined with a bad invitation ({expect}); key sent: {}",
                        key.is_some()
                    )
                    .into())
                }
            }
            conn.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    server.assert_alive()?;
    let members = dbox::members::Members::load(&Repo::open(&ra)?)?;
    assert_eq!(members.len(), 2, "only the one invited device joined");
    Ok(())
}

// ---- 3. Raw QUIC clients ---------------------------------------------------

#[test]
fn hand_built_clients_get_clean_errors_and_store_nothing() -> TestResult {
    let mut p = pair()?;
    let addr = p.server.sock()?;
    let server_id = p.a.peer_id()?;
    let repo = Repo::open(&p.ra)?;
    let repo_id = repo.store().repo_id();
    let keys = repo.store().keys().clone();
    let head = {
        let heads = repo.graph()?.heads();
        assert_eq!(heads.len(), 1);
        heads[0]
    };
    let (real, _) = repo.version(&head)?;
    let stranger = Dev::new(p.tmp.path(), "stranger")?.device()?;
    let member = p.b.device()?;
    let before = version_count(&p.a, &p.ra)?;

    let rt = runtime()?;
    rt.block_on(async {
        // (a) Garbage instead of a Hello: a short length, then bytes that
        // are not CBOR; an HTTP request; a message cut short.
        let mut junk = 16u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 16]);
        let mut cut = 1000u32.to_be_bytes().to_vec();
        cut.extend_from_slice(b"0123456789");
        for (what, bytes) in [
            ("garbage CBOR", junk),
            ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("a cut message", cut),
            // (b) A 4 GiB length prefix.
            ("a 0xFFFFFFFF length", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ] {
            let (ep, conn) = raw_connect(stranger.signing_key(), server_id, addr, dbox::net::ALPN).await?;
            let t = Instant::now();
            let closed = send_raw_first_stream(&conn, &bytes).await?;
            eprintln!("{what}: closed after {:?}: {closed}", t.elapsed());
            assert!(
                matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.reason.as_ref() == b"bad hello"),
                "{what}: {closed:?}"
            );
            ep.close(0u32.into(), b"");
        }
        // A well-formed Hello of another protocol version gets a reason.
        let (ep, conn) = raw_connect(stranger.signing_key(), server_id, addr, dbox::net::ALPN).await?;
        let mut h = hello(repo_id, None, Vec::new());
        h.proto = 999;
        match raw_hello(&conn, &h).await? {
            Welcome::Refused { reason } => assert!(reason.contains("protocol version 999"), "{reason}"),
            w => return Err(format!("protocol 999 was welcomed: {w:?}").into()),
        }
        ep.close(0u32.into(), b"");

        // (c) Another ALPN: the handshake fails.
        match raw_connect(stranger.signing_key(), server_id, addr, b"dbox/999").await {
            Ok(_) => return Err("a dbox/999 client completed the handshake".into()),
            // What the `dbox` command says about it is checked by
            // `another_protocol_version_is_named_as_such`.
            Err(e) => eprintln!("dbox/999: {e}"),
        }

        // (d) A member that lies. First a forged membership record in its
        // Hello: a stranger naming itself.
        let forged = Record::sign(repo_id, stranger.peer_id(), stranger.signing_key(), dbox::members::now_ms());
        {
            let (ep, conn) = raw_connect(member.signing_key(), server_id, addr, dbox::net::ALPN).await?;
            let w = raw_hello(&conn, &hello(repo_id, None, vec![ByteBuf::from(forged.as_bytes().to_vec())])).await?;
            assert!(matches!(w, Welcome::Ok { .. }), "{w:?}");
            conn.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }

        // A real version with one byte of its signature flipped.
        let mut bad_sig = real.stored().to_vec();
        bad_sig[40] ^= 0x01;
        let bad_id = ObjectId::of(&bad_sig).0;
        let got = announce_fake(
            member.signing_key(),
            server_id,
            addr,
            repo_id,
            Fake {
                head: bad_id,
                parents: real.body().parents.iter().map(|p| p.0).collect(),
                objects: HashMap::from([(bad_id, Some(bad_sig))]),
            },
        )
        .await?;
        expect_refusal("a bad signature", got, "signature")?;

        // A version signed by a non-member.
        let sealed = VersionInfo::new("forged", dbox::members::now_ms(), "evil").seal(&keys, &repo_id)?;
        let body = VersionBody {
            repo: repo_id,
            parents: vec![head],
            root: real.body().root,
            author: stranger.peer_id(),
            seq: 1,
            sealed_info: sealed.clone(),
        };
        let v = SignedVersion::sign(body, stranger.signing_key())?;
        let got = announce_fake(
            member.signing_key(),
            server_id,
            addr,
            repo_id,
            Fake { head: v.id().0, parents: vec![head.0], objects: HashMap::from([(v.id().0, Some(v.stored().to_vec()))]) },
        )
        .await?;
        expect_refusal("a non-member's version", got, "not a member")?;

        // A member's version whose root tree arrives as bytes that do not
        // match its id; then one whose root tree the member lacks.
        let fake_root = ObjectId::of(b"a tree that does not exist");
        let body = VersionBody {
            repo: repo_id,
            parents: vec![head],
            root: fake_root,
            author: member.peer_id(),
            seq: 1,
            sealed_info: sealed.clone(),
        };
        let v = SignedVersion::sign(body, member.signing_key())?;
        // Real tree bytes of the wrong id, to make it tempting.
        let real_root = repo.store().get_raw(&real.body().root)?;
        for (what, root_bytes, expect) in [
            ("a tree that does not match its id", Some(real_root.clone()), "does not match its id"),
            ("a missing tree", None, "lacks"),
        ] {
            let got = announce_fake(
                member.signing_key(),
                server_id,
                addr,
                repo_id,
                Fake {
                    head: v.id().0,
                    parents: vec![head.0],
                    objects: HashMap::from([(v.id().0, Some(v.stored().to_vec())), (fake_root.0, root_bytes)]),
                },
            )
            .await?;
            expect_refusal(what, got, expect)?;
        }
        // A version id answered with another version's bytes.
        let other = ObjectId::of(b"some other version").0;
        let got = announce_fake(
            member.signing_key(),
            server_id,
            addr,
            repo_id,
            Fake { head: other, parents: vec![head.0], objects: HashMap::from([(other, Some(v.stored().to_vec()))]) },
        )
        .await?;
        expect_refusal("a version that does not match its id", got, "does not match its id")?;
        // A version that is not a version at all (a tree under its own id).
        let tree_id = real.body().root.0;
        let got = announce_fake(
            member.signing_key(),
            server_id,
            addr,
            repo_id,
            Fake { head: tree_id, parents: vec![], objects: HashMap::from([(tree_id, Some(real_root))]) },
        )
        .await?;
        expect_refusal("a tree posing as a version", got, "not a version")?;

        // The forged membership record did not make the stranger a member.
        let (ep, conn) = raw_connect(stranger.signing_key(), server_id, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
            Welcome::Refused { reason } => assert!(reason.contains("not a member"), "{reason}"),
            Welcome::Ok { .. } => return Err("a self-signed membership record let a stranger in".into()),
        }
        ep.close(0u32.into(), b"");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(rt);

    // The server survived, stored nothing, and still serves.
    p.server.assert_alive()?;
    assert_eq!(version_count(&p.a, &p.ra)?, before, "no new version on the server");
    let members = dbox::members::Members::load(&Repo::open(&p.ra)?)?;
    assert_eq!(members.len(), 2, "the forged record was not taken");
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    write(&p.ra.join("after.txt"), "still here\n")?;
    p.a.ok(&p.ra, &["commit", "-m", "after the attack"])?;
    let j = json(&p.b.ok(&p.rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert_eq!(std::fs::read_to_string(p.rb.join("after.txt"))?, "still here\n");
    p.b.ok(&p.rb, &["fsck"])?;
    p.server.assert_alive()?;
    Ok(())
}

/// `dbox pull` against a QUIC server that presents the right key but only
/// speaks `dbox/999`: the handshake fails and the error says that the peer
/// speaks another protocol version (the text `ops::connect` promises).
#[test]
fn another_protocol_version_is_named_as_such() -> TestResult {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let tmp = tempfile::tempdir()?;
    let (a, future) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "future")?);
    a.ok(tmp.path(), &["init", "a"])?;
    let key = future.device()?;
    let pkcs8 = PrivatePkcs8KeyDer::from(key.signing_key().to_pkcs8_der()?.as_bytes().to_vec());
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let cert = rcgen::CertificateParams::new(vec!["dbox".to_string()])?.self_signed(&pair)?;
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(pkcs8))?;
    tls.alpn_protocols = vec![b"dbox/999".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let rt = runtime()?;
    let ep = rt.block_on(async {
        tls::endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(quinn::ServerConfig::with_crypto(Arc::new(crypto))),
        )
    })?;
    let addr = ep.local_addr()?;
    let ep2 = ep.clone();
    rt.spawn(async move {
        while let Some(inc) = ep2.accept().await {
            let _ = inc.await;
        }
    });
    let target = format!("{}@{addr}", future.id()?);
    let r = a.run(&tmp.path().join("a"), &["pull", &target])?;
    ep.close(0u32.into(), b"");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("another dbox protocol version"),
        "the error names the protocol version mismatch: {r:?}"
    );
    Ok(())
}

// ---- 4. A server killed mid-transfer --------------------------------------

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn a_transfer_killed_midway_resumes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    // 140 MB that does not compress: 100 files of 1 MB and two of 20 MB.
    for i in 0..100u64 {
        write(&ra.join(format!("d{}/f{i}.bin", i % 5)), common::bytes(1000 + i, 1 << 20))?;
    }
    for i in 0..2u64 {
        write(&ra.join(format!("big{i}.bin")), common::bytes(5000 + i, 20 << 20))?;
    }
    a.ok(&ra, &["commit", "-m", "a lot"])?;
    let total = {
        let repo = Repo::open(&ra)?;
        repo.store().list_objects()?.len() - version_count(&a, &ra)?
    };
    let mut server = a.serve(&ra)?;
    let listen = server.addr.clone();
    let tok = token(&a.ok(&ra, &["invite", "--expires", "10m"])?);

    // Clone, and kill the server once the client holds part of the data
    // (its memory grows with what it received).
    let rb = tmp.path().join("b");
    let mut clone = b
        .command(tmp.path(), &["clone", &tok, "b", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = clone.id();
    let t = Instant::now();
    let mut killed = false;
    while t.elapsed() < Duration::from_secs(60) {
        if clone.try_wait()?.is_some() {
            break;
        }
        if rss_kib(pid) >= 60 * 1024 {
            server.kill9();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = t.elapsed();
    // The client must notice, within its idle timeout and some slack.
    let waited = Instant::now();
    while clone.try_wait()?.is_none() {
        if waited.elapsed() > Duration::from_secs(60) {
            let _ = clone.kill();
            return Err("the client hung after the server was killed".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = clone.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(killed, "the clone finished before the kill (after {killed_at:?}): {stderr}");
    eprintln!("killed after {killed_at:?}; the client failed {:?} later: {stderr}", waited.elapsed());
    assert!(!out.status.success(), "the clone cannot succeed without a server: {stderr}");
    assert!(
        stderr.contains("connection was lost") || stderr.contains("timed out"),
        "a clear error: {stderr}"
    );
    assert!(stderr.contains("pull origin"), "the hint to finish the transfer: {stderr}");
    let first = Repo::open(&rb)?.store().list_objects()?.len();
    eprintln!("first transfer kept {first} of {total} objects");
    assert!(first > 0, "what arrived before the kill was kept");
    assert!(first < total, "the kill came before the end");
    // Files written while the content arrived are taken back: the next pull
    // finds the working tree as empty as the clone found it.
    let left: Vec<_> = std::fs::read_dir(&rb)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != ".dbox")
        .collect();
    assert!(left.is_empty(), "the failed clone left files behind: {left:?}");
    b.ok(&rb, &["fsck"])?;
    // A commit would start a second history from the half-cloned folder.
    write(&rb.join("mine.txt"), b"written while the clone was cut off")?;
    let r = b.run(&rb, &["commit", "-m", "too early"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("pull origin"), "the refusal says what finishes the clone: {r:?}");
    assert!(rb.join(".dbox/cloning").exists());
    std::fs::remove_file(rb.join("mine.txt"))?;

    // The server comes back on the same address; the pull finishes the job.
    let mut server = a.serve_on(&ra, &listen)?;
    let j = json(&b.ok(tmp.path(), &["-C", "b", "pull", "origin", "--json"])?)?;
    let second = j["pulled"]["objects"].as_u64().ok_or("pulled.objects")? as usize;
    eprintln!("second transfer: {second} objects");
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert!(second < total, "the second transfer resumed: {second} of {total} objects");
    assert!(first + second <= total, "nothing travelled twice: {first} + {second} > {total}");
    assert_eq!(common::snapshot(&rb)?, common::snapshot(&ra)?, "the working trees match");
    assert!(!rb.join(".dbox/cloning").exists(), "a HEAD ends the clone");
    b.ok(&rb, &["fsck", "--read-data"])?;
    a.ok(&ra, &["fsck"])?;
    server.assert_alive()?;
    Ok(())
}

// ---- 5. Three peers in a chain ---------------------------------------------

#[test]
fn versions_travel_along_a_chain_of_three() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b, c) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?, Dev::new(tmp.path(), "c")?);
    let (ra, rb, rc) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("base.txt"), "base\n")?;
    a.ok(&ra, &["commit", "-m", "base"])?;
    let sa = a.serve(&ra)?;
    b.ok(tmp.path(), &["clone", &token(&a.ok(&ra, &["invite"])?), "b"])?;
    let sb = b.serve(&rb)?;
    // C is invited by B and never talks to A directly.
    c.ok(tmp.path(), &["clone", &token(&b.ok(&rb, &["invite"])?), "c"])?;

    // A -> B -> C.
    write(&ra.join("from-a.txt"), "made on a\n")?;
    let va = a.ok(&ra, &["commit", "-m", "on a"])?.stdout.trim().to_string();
    assert_eq!(json(&b.ok(&rb, &["pull", "origin", "--json"])?)?["pulled"]["versions"], 1);
    assert_eq!(json(&c.ok(&rc, &["pull", "origin", "--json"])?)?["pulled"]["versions"], 1);
    assert!(c.ok(&rc, &["log"])?.stdout.contains(&va[..12]));
    assert_eq!(std::fs::read_to_string(rc.join("from-a.txt"))?, "made on a\n");

    // C -> B -> A: A learns that C is a member from B's records.
    write(&rc.join("from-c.txt"), "made on c\n")?;
    let vc = c.ok(&rc, &["commit", "-m", "on c"])?.stdout.trim().to_string();
    assert_eq!(json(&c.ok(&rc, &["push", "origin", "--json"])?)?["pushed"]["versions"], 1);
    let target_b = format!("{}@{}", b.id()?, sb.addr);
    let j = json(&a.ok(&ra, &["pull", &target_b, "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    let log = a.ok(&ra, &["log", "--json"])?;
    let log = json(&log)?;
    let c_version =
        log.as_array().and_then(|l| l.iter().find(|v| v["id"] == vc.as_str())).ok_or("C's version on A")?;
    assert_eq!(c_version["message"], "on c");
    assert_eq!(std::fs::read_to_string(ra.join("from-c.txt"))?, "made on c\n");
    let members = dbox::members::Members::load(&Repo::open(&ra)?)?;
    assert!(members.contains(&c.peer_id()?), "A knows C as a member");
    for (d, r) in [(&a, &ra), (&b, &rb), (&c, &rc)] {
        d.ok(r, &["fsck"])?;
    }
    drop((sa, sb));
    Ok(())
}

// ---- 6. Concurrent commits -------------------------------------------------

#[test]
fn concurrent_commits_give_two_heads_on_both_sides() -> TestResult {
    let mut p = pair()?;
    write(&p.ra.join("a-side.txt"), "a\n")?;
    let va = p.a.ok(&p.ra, &["commit", "-m", "on a"])?.stdout.trim().to_string();
    write(&p.rb.join("b-side.txt"), "b\n")?;
    let vb = p.b.ok(&p.rb, &["commit", "-m", "on b"])?.stdout.trim().to_string();
    let j = json(&p.b.ok(&p.rb, &["sync", "origin", "--json"])?)?;
    assert_eq!(
        (j["pulled"]["versions"].as_u64(), j["pushed"]["versions"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    assert!(j["worktree"].as_str().unwrap_or("").contains("2 heads"), "{j}");

    for (d, r, mine, theirs, own) in
        [(&p.a, &p.ra, &va, &vb, "a-side.txt"), (&p.b, &p.rb, &vb, &va, "b-side.txt")]
    {
        let g = d.ok(r, &["log", "--graph"])?.stdout;
        let lines: Vec<&str> = g.lines().collect();
        let col = |id: &str| -> Option<usize> {
            lines.iter().find(|l| l.contains(&id[..12])).and_then(|l| l.find('*'))
        };
        let (m, t) = (col(mine).ok_or("my head in the graph")?, col(theirs).ok_or("their head")?);
        assert_ne!(m, t, "two heads in two lanes:\n{g}");
        assert!(g.contains("|/"), "the fork is drawn:\n{g}");
        let st = d.ok(r, &["status"])?.stdout;
        assert!(st.contains("1 other head(s)") && st.contains(&theirs[..12]), "{st}");
        // Each working tree stayed on its own line of work.
        assert!(r.join(own).exists(), "{own}");
        d.ok(r, &["fsck"])?;
    }
    assert!(!p.ra.join("b-side.txt").exists(), "a forked tree is left alone");
    p.server.assert_alive()?;
    Ok(())
}

// ---- Idle strangers, cut-off joins, servers that are not members -----------

#[test]
fn idle_connections_are_capped_per_address_and_dropped_after_ten_seconds() -> TestResult {
    let mut p = pair()?;
    let a_id = p.a.peer_id()?;
    let addr = p.server.sock()?;
    let rt = runtime()?;
    rt.block_on(async {
        // Eight strangers from 127.0.0.2 finish the handshake and say nothing.
        let mut idle = Vec::new();
        for i in 0..8u8 {
            let key = ed25519_dalek::SigningKey::from_bytes(&[40 + i; 32]);
            idle.push(raw_connect_from(&key, a_id, addr, dbox::net::ALPN, [127, 0, 0, 2]).await?);
        }
        // A ninth from the same address is refused at once...
        let key = ed25519_dalek::SigningKey::from_bytes(&[60; 32]);
        match raw_connect_from(&key, a_id, addr, dbox::net::ALPN, [127, 0, 0, 2]).await {
            Err(e) => assert!(e.contains("refused") || e.contains("REFUSED"), "{e}"),
            Ok(_) => return Err("a ninth idle connection from one address was admitted".into()),
        }
        // ...while a member from another address is served.
        let r = p.b.run(&p.rb, &["pull", "origin"])?;
        assert_eq!(r.code, 0, "{r:?}");
        // The silent ones are closed once their 10 s to say hello are up.
        let t = Instant::now();
        for (_, conn) in &idle {
            tokio::time::timeout(Duration::from_secs(20), conn.closed())
                .await
                .map_err(|_| "an idle connection was kept open")?;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "closed after {:?}", t.elapsed());
        // A hello larger than the limit for not-yet-admitted devices ends the connection.
        let key = ed25519_dalek::SigningKey::from_bytes(&[61; 32]);
        let (_ep, conn) = raw_connect(&key, a_id, addr, dbox::net::ALPN).await?;
        let mut big = (700u32 << 10).to_be_bytes().to_vec();
        big.extend(std::iter::repeat_n(0u8, 700 << 10));
        let closed = send_raw_first_stream(&conn, &big).await?;
        assert!(format!("{closed}").contains("bad hello"), "{closed}");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    p.server.assert_alive()?;
    Ok(())
}

#[test]
fn a_join_cut_off_after_admission_is_finished_with_the_same_invitation() -> TestResult {
    let p = pair()?;
    let tok = token(&p.a.ok(&p.ra, &["invite", "--expires", "10m"])?);
    let parsed = dbox::net::invite::Token::decode(&tok)?;
    let c = Dev::new(p.tmp.path(), "c")?;
    let addr = p.server.sock()?;
    let rt = runtime()?;
    rt.block_on(async {
        // Device b, a member already, tries the invitation: it gets the key
        // and leaves the invitation for the device it was made for.
        let key = p.b.device()?;
        let (ep, conn) = raw_connect(key.signing_key(), parsed.inviter, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(parsed.repo, Some(parsed.secret), Vec::new())).await? {
            Welcome::Ok { key, .. } => assert!(key.is_some()),
            Welcome::Refused { reason } => return Err(format!("a member was refused: {reason}").into()),
        }
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        // Device c is admitted and given the key, then vanishes.
        let key = c.device()?;
        let (ep, conn) = raw_connect(key.signing_key(), parsed.inviter, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(parsed.repo, Some(parsed.secret), Vec::new())).await? {
            Welcome::Ok { key, .. } => assert!(key.is_some()),
            Welcome::Refused { reason } => return Err(format!("refused: {reason}").into()),
        }
        conn.close(0u32.into(), b"gone");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // The same device finishes the join with the same invitation...
    c.ok(p.tmp.path(), &["clone", &tok, "c"])?;
    assert_eq!(std::fs::read_to_string(p.tmp.path().join("c/notes/plan.md"))?, "one\ntwo\n");
    p.a.ok(&p.ra, &["fsck"])?;
    // ...which stays spent for everyone else.
    let d = Dev::new(p.tmp.path(), "d")?;
    let r = d.run(p.tmp.path(), &["clone", &tok, "d"])?;
    assert!(r.code != 0 && r.stderr.contains("used already"), "{r:?}");
    let members = dbox::members::Members::load(&Repo::open(&p.ra)?)?;
    assert_eq!(members.len(), 3, "a, b and c");
    Ok(())
}

#[test]
fn a_member_does_not_sync_with_a_server_that_is_not_a_member() -> TestResult {
    let p = pair()?;
    // A stranger serves a copy of the repository (same id, b among its members).
    let s = Dev::new(p.tmp.path(), "stranger")?;
    let rs = p.tmp.path().join("s");
    copy_dir(&p.ra, &rs)?;
    std::fs::remove_file(rs.join(".dbox/serve.lock")).ok();
    let server = s.serve(&rs)?;
    let target = format!("{}@{}", s.id()?, server.addr);
    for cmd in ["pull", "push", "sync"] {
        let r = p.b.run(&p.rb, &[cmd, &target])?;
        assert!(r.code != 0 && r.stderr.contains("not a member of this repository"), "{cmd}: {r:?}");
    }
    // Nothing of b's moved to the stranger.
    assert_eq!(version_count(&s, &rs)?, 1);
    Ok(())
}

// ---- Slow members, long local commits, crowds -------------------------------

/// How [`serve_repo`] answers `Get`s.
#[derive(Clone, Copy)]
enum Serving {
    /// From the third `Get` on, holds each object this long first: a slow
    /// or stalling pusher.
    Slowly(Duration),
    /// Answers every object offered with a base by a delta that does not
    /// give the object: alternately a well-formed delta of the base itself,
    /// and bytes that are no delta at all.
    WrongDeltas,
    /// Answers objects offered without a base by a delta nobody asked for.
    UnaskedDeltas,
    /// Answers every object offered with a base by a tiny delta that
    /// rebuilds the largest payload of its kind (not the object).
    HugeDeltas,
    /// The k-th tree served (counting from 0) comes with one byte
    /// changed; the others as they are.
    BadTreeAt(usize),
    /// Objects offered with a base go whole until the k-th, then
    /// as [`Serving::HugeDeltas`].
    HugeDeltasFrom(usize),
}

/// What [`serve_repo`] saw and did.
#[derive(Default)]
struct Served {
    /// Objects asked for without a base.
    whole: std::sync::atomic::AtomicUsize,
    /// Deltas sent.
    deltas: std::sync::atomic::AtomicUsize,
    /// Trees served.
    trees: std::sync::atomic::AtomicUsize,
}

/// Answers `repo`'s requests like a member would, except for `Get`s
/// ([`Serving`]).
fn serve_repo(
    conn: quinn::Connection,
    repo: Repo,
    serving: Serving,
    served: Arc<Served>,
) -> tokio::task::JoinHandle<()> {
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let repo = repo.clone();
            let gets = gets.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let Ok(req) = read_msg::<Request>(&mut recv, "a request").await else { return };
                let g = match repo.graph() {
                    Ok(g) => g,
                    Err(_) => return,
                };
                let r: Result<(), NetError> = async {
                    match req {
                        Request::Heads => {
                            write_msg(&mut send, &Response::Heads(ids_to_wire(g.heads().iter().map(|v| v.0))))
                                .await
                        }
                        Request::Walk { from, limit } => {
                            let mut out = Vec::new();
                            let mut seen = std::collections::HashSet::new();
                            let mut q: std::collections::VecDeque<VersionId> =
                                from.iter().filter_map(|b| id_from_wire(b).ok()).map(VersionId).collect();
                            while let Some(v) = q.pop_front() {
                                if out.len() >= limit as usize {
                                    break;
                                }
                                if !seen.insert(v) {
                                    continue;
                                }
                                let Some(n) = g.get(&v) else { continue };
                                out.push((
                                    ByteBuf::from(v.0.to_vec()),
                                    ids_to_wire(n.parents.iter().map(|p| p.0)),
                                ));
                                q.extend(n.parents.iter().copied());
                            }
                            write_msg(&mut send, &Response::Walk(out)).await
                        }
                        Request::Get { ids, bases } => {
                            let n = gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            for (i, id) in ids.iter().enumerate() {
                                let id = ObjectId(id_from_wire(id)?);
                                let base = match bases.get(i) {
                                    Some(b) if !b.is_empty() => Some(ObjectId(id_from_wire(b)?)),
                                    _ => None,
                                };
                                if base.is_none() {
                                    served.whole.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                }
                                let mut b = repo.store().try_get_raw(&id).ok().flatten();
                                if let (Serving::BadTreeAt(k), Some(stored)) = (serving, b.as_mut()) {
                                    if dbox::store::ObjectKind::of_stored(stored).ok()
                                        == Some(dbox::store::ObjectKind::Tree)
                                        && served.trees.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == k
                                    {
                                        let n = stored.len();
                                        stored[n - 1] ^= 1;
                                    }
                                }
                                match (serving, base, &b) {
                                    (Serving::Slowly(delay), _, _) if n >= 2 => {
                                        tokio::time::sleep(delay).await
                                    }
                                    (Serving::WrongDeltas, Some(base), Some(stored)) => {
                                        let kind = dbox::store::ObjectKind::of_stored(stored)
                                            .map_err(|e| NetError::Local(e.to_string()))?;
                                        let old = repo
                                            .store()
                                            .get_payload(&base, kind)
                                            .map_err(|e| NetError::Local(e.to_string()))?;
                                        let delta = match i % 2 {
                                            0 => dbox::store::delta::encode(&old, &old.clone())
                                                .ok_or(NetError::Local("no delta".into()))?,
                                            _ => vec![1, 2, 3, 4],
                                        };
                                        served.deltas.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                        write_delta(&mut send, &id, &base, &delta).await?;
                                        continue;
                                    }
                                    (Serving::HugeDeltasFrom(k), Some(_), Some(_))
                                        if served.trees.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                            < k => {}
                                    (
                                        Serving::HugeDeltas | Serving::HugeDeltasFrom(_),
                                        Some(base),
                                        Some(stored),
                                    ) => {
                                        let size = match dbox::store::ObjectKind::of_stored(stored) {
                                            Ok(dbox::store::ObjectKind::Tree) => {
                                                dbox::store::limits::MAX_TREE_SIZE
                                            }
                                            _ => dbox::store::limits::MAX_CHUNK_SIZE,
                                        };
                                        served.deltas.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                        write_delta(&mut send, &id, &base, &rle_delta(size as u64)).await?;
                                        continue;
                                    }
                                    (Serving::UnaskedDeltas, None, Some(_)) => {
                                        write_delta(&mut send, &id, &id, &[1, 0, 0, 0]).await?;
                                        continue;
                                    }
                                    _ => {}
                                }
                                write_object(&mut send, &id, b.as_deref()).await?;
                            }
                            Ok(())
                        }
                        Request::Announce { .. } => write_msg(&mut send, &Response::Error("no".into())).await,
                    }
                }
                .await;
                let _ = r;
                let _ = send.finish();
            });
        }
    })
}

/// Connects as `b`, announces `b`'s head to the server `a` and answers the
/// server's pull from `b`'s repository as `serving` says; returns the
/// server's answer and what was served.
fn push_served(p: &Pair, serving: Serving) -> R<(Response, Arc<Served>)> {
    let addr = p.server.sock()?;
    let a_id = p.a.peer_id()?;
    let rb = Repo::open(&p.rb)?;
    let repo_id = rb.store().repo_id();
    let head = rb.graph()?.heads()[0];
    let key = p.b.device()?;
    let served = Arc::new(Served::default());
    let rt = runtime()?;
    let answer = rt.block_on(async {
        let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
            Welcome::Ok { .. } => {}
            Welcome::Refused { reason } => return Err(format!("refused: {reason}").into()),
        }
        let responder = serve_repo(conn.clone(), rb.clone(), serving, served.clone());
        let (mut send, mut recv) = conn.open_bi().await?;
        write_msg(&mut send, &Request::Announce { heads: ids_to_wire([head.0]) }).await?;
        let _ = send.finish();
        let r =
            tokio::time::timeout(Duration::from_secs(60), read_msg::<Response>(&mut recv, "answer")).await;
        responder.abort();
        conn.close(0u32.into(), b"");
        drop(ep);
        Ok::<_, Box<dyn std::error::Error>>(r??)
    })?;
    Ok((answer, served))
}

/// A member whose deltas do not rebuild the objects asked for (well-formed
/// deltas of the wrong content, and garbage) gets each such object asked
/// for again whole; nothing wrong is stored, and the push completes.
#[test]
fn deltas_that_do_not_give_the_object_are_fetched_whole() -> TestResult {
    let p = pair()?;
    let data = insert_into_data(&p.rb, 150_000, 4)?;
    write(&p.rb.join("notes/plan.md"), "one\ntwo\nthree\n")?;
    p.b.ok(&p.rb, &["commit", "-m", "edits on b"])?;
    let (answer, served) = push_served(&p, Serving::WrongDeltas)?;
    let whole = served.whole.load(std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(answer, Response::Announced(ref t) if t.versions == 1), "{answer:?}");
    // The version and the two trees and one chunk offered with bases, all
    // asked for again whole (the small text file's chunk has no base).
    assert!(whole >= 4, "{whole} objects asked for whole");
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    common::wait_for("the server's working tree did not move", Duration::from_secs(10), || {
        Ok(std::fs::read(p.ra.join("data.bin"))? == data)
    })?;
    Ok(())
}

/// Inserts 100 bytes (from `seed`) at `at` in the repository's `data.bin`;
/// returns its new content.
fn insert_into_data(repo: &Path, at: usize, seed: u64) -> R<Vec<u8>> {
    let mut data = std::fs::read(repo.join("data.bin"))?;
    data.splice(at..at, common::bytes(seed, 100));
    write(&repo.join("data.bin"), &data)?;
    Ok(data)
}

/// A delta for an object that was offered no base is a protocol error:
/// the pull fails and nothing becomes visible.
#[test]
fn a_delta_nobody_asked_for_is_refused() -> TestResult {
    let p = pair()?;
    write(&p.rb.join("fresh.bin"), common::bytes(8, 50_000))?;
    p.b.ok(&p.rb, &["commit", "-m", "a new file on b"])?;
    let before = version_count(&p.a, &p.ra)?;
    let (answer, _) = push_served(&p, Serving::UnaskedDeltas)?;
    expect_refusal("an unasked delta", Ok(answer), "was not offered")?;
    assert_eq!(version_count(&p.a, &p.ra)?, before);
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    Ok(())
}

/// A zstd frame by hand, as a delta: a 1 MiB window and `size` bytes of
/// RLE blocks, 4 bytes per 128 KiB.
fn rle_delta(size: u64) -> Vec<u8> {
    let mut f = vec![1u8];
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    f.push(0xC0);
    f.push(10 << 3);
    f.extend_from_slice(&size.to_le_bytes());
    let mut left = size;
    while left > 0 {
        let n = left.min(128 * 1024);
        left -= n;
        let h = u32::from(left == 0) | (1 << 1) | ((n as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0x5a);
    }
    f
}

/// A member that answers with tiny deltas which rebuild huge wrong
/// payloads gets one of them decoded: the server then stops offering it
/// bases and takes everything whole; the push completes with the right
/// data.
#[test]
fn after_one_wrong_delta_a_session_takes_objects_whole() -> TestResult {
    let p = pair()?;
    let data = insert_into_data(&p.rb, 100_000, 41)?;
    write(&p.rb.join("notes/plan.md"), "one\ntwo\nthree\n")?;
    p.b.ok(&p.rb, &["commit", "-m", "edits on b"])?;
    let (answer, served) = push_served(&p, Serving::HugeDeltas)?;
    assert!(matches!(answer, Response::Announced(ref t) if t.versions == 1), "{answer:?}");
    // The root tree came as a delta in the first request with bases; once
    // it failed, no more bases were offered (the tree below it and the
    // chunks were asked for without).
    let deltas = served.deltas.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(deltas, 1, "{deltas} wrong deltas were sent");
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    common::wait_for("the server's working tree did not move", Duration::from_secs(10), || {
        Ok(std::fs::read(p.ra.join("data.bin"))? == data)
    })?;
    Ok(())
}

/// An old chunk damaged on disk is not a base: the new chunk that replaces
/// it is taken whole and the pull completes.
#[test]
fn a_damaged_base_does_not_stop_a_pull() -> TestResult {
    let p = pair()?;
    let packs = p.rb.join(".dbox/store/packs");
    let mut biggest: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(&packs)? {
        let e = e?;
        let len = e.metadata()?.len();
        if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
            biggest = Some((len, e.path()));
        }
    }
    let (_, pack) = biggest.ok_or("no pack")?;
    let mut bytes = std::fs::read(&pack)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&pack, &bytes)?;
    let fsck = p.b.run(&p.rb, &["fsck", "--read-data"])?;
    assert_ne!(fsck.code, 0, "the damage went unnoticed: {fsck:?}");
    let data = insert_into_data(&p.ra, 150_000, 4)?;
    p.a.ok(&p.ra, &["commit", "-m", "edit on a"])?;
    let r = p.b.run(&p.rb, &["pull", "origin"])?;
    assert_eq!(r.code, 0, "the pull failed on the damaged old chunk: {r:?}");
    assert_eq!(std::fs::read(p.rb.join("data.bin"))?, data);
    Ok(())
}

/// Bases a requester names that do not make a delta get the object whole:
/// the object itself, a version, a missing object; bases that do not fit
/// the ids end the request; the server keeps serving.
#[test]
fn odd_bases_get_objects_whole() -> TestResult {
    let mut p = pair()?;
    let repo = Repo::open(&p.ra)?;
    let head = repo.graph()?.heads()[0];
    let (v, _) = repo.version(&head)?;
    let root = repo.store().get_tree(&v.body().root)?;
    let data = match root.get(b"data.bin").map(|e| &e.node) {
        Some(dbox::store::Node::File { chunks, .. }) => chunks[0],
        _ => return Err("no data.bin".into()),
    };
    let addr = p.server.sock()?;
    let a_id = p.a.peer_id()?;
    let key = p.b.device()?;
    let repo_id = repo.store().repo_id();
    let rt = runtime()?;
    rt.block_on(async {
        let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
            Welcome::Ok { .. } => {}
            Welcome::Refused { reason } => return Err(format!("refused: {reason}").into()),
        }
        let id = |o: ObjectId| ByteBuf::from(o.0.to_vec());
        for (what, base) in [
            ("itself", id(data)),
            ("a version", ByteBuf::from(head.0.to_vec())),
            ("a missing object", ByteBuf::from(vec![7; 32])),
        ] {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_msg(&mut send, &Request::Get { ids: vec![id(data); 3], bases: vec![base; 3] }).await?;
            let _ = send.finish();
            for _ in 0..3 {
                let (_, f) =
                    tokio::time::timeout(STEP, dbox::net::wire::read_object(&mut recv, 1 << 24)).await??;
                assert!(matches!(f, dbox::net::wire::Frame::Whole(_)), "against {what}: {f:?}");
            }
        }
        for (what, ids, bases) in [
            ("one base too many", vec![id(data)], vec![id(data), id(data)]),
            ("a base of 31 bytes", vec![id(data)], vec![ByteBuf::from(vec![1; 31])]),
        ] {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_msg(&mut send, &Request::Get { ids, bases }).await?;
            let _ = send.finish();
            let r = tokio::time::timeout(STEP, dbox::net::wire::read_object(&mut recv, 1 << 24)).await?;
            assert!(r.is_err(), "{what}: {r:?}");
        }
        conn.close(0u32.into(), b"");
        drop(ep);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    p.server.assert_alive()?;
    Ok(())
}

/// A member's push that stalls between objects does not keep the server's
/// writer lock: a local `dbox commit` gets in within a few seconds.
#[test]
fn a_stalling_push_does_not_lock_out_local_commits() -> TestResult {
    let p = pair()?;
    let addr = p.server.sock()?;
    let a_id = p.a.peer_id()?;
    write(&p.rb.join("new.bin"), common::bytes(9, 200_000))?;
    p.b.ok(&p.rb, &["commit", "-m", "from b"])?;
    let rb = Repo::open(&p.rb)?;
    let repo_id = rb.store().repo_id();
    let head = rb.graph()?.heads()[0];
    let key = p.b.device()?;
    let rt = runtime()?;
    let (ra, a) = (p.ra.clone(), Dev { home: p.a.home.clone() });
    let committer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        write(&ra.join("local.txt"), "edit on the server\n").ok();
        let t = Instant::now();
        let r = a.run(&ra, &["commit", "-m", "local"]);
        (t.elapsed(), r)
    });
    let answer = rt.block_on(async {
        let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
            Welcome::Ok { .. } => {}
            Welcome::Refused { reason } => return Err(format!("refused: {reason}").into()),
        }
        let responder = serve_repo(
            conn.clone(),
            rb.clone(),
            Serving::Slowly(Duration::from_secs(12)),
            Default::default(),
        );
        let (mut send, mut recv) = conn.open_bi().await?;
        write_msg(&mut send, &Request::Announce { heads: ids_to_wire([head.0]) }).await?;
        let _ = send.finish();
        let r =
            tokio::time::timeout(Duration::from_secs(90), read_msg::<Response>(&mut recv, "answer")).await;
        responder.abort();
        conn.close(0u32.into(), b"");
        drop(ep);
        Ok::<_, Box<dyn std::error::Error>>(r)
    })?;
    let (took, commit) = committer.join().map_err(|_| "committer panicked")?;
    let commit = commit?;
    assert_eq!(commit.code, 0, "a local commit failed during a stalled push: {commit:?}");
    assert!(took < Duration::from_secs(5), "a local commit waited {took:?} for a stalled push");
    // The slow push itself completes.
    assert!(matches!(answer, Ok(Ok(Response::Announced(ref t))) if t.versions == 1), "{answer:?}");
    p.a.ok(&p.ra, &["fsck"])?;
    Ok(())
}

/// Two pushes that reach their end while a long local commit holds the
/// writer lock wait for it off the async threads: the server keeps
/// answering others meanwhile, and both pushes complete.
#[test]
fn a_long_local_commit_does_not_stall_the_server() -> TestResult {
    let p = pair()?;
    let addr = p.server.sock()?;
    let a_id = p.a.peer_id()?;
    let rb2 = p.tmp.path().join("b2");
    copy_dir(&p.rb, &rb2)?;
    write(&p.rb.join("x.txt"), "x\n")?;
    p.b.ok(&p.rb, &["commit", "-m", "x"])?;
    write(&rb2.join("y.txt"), "y\n")?;
    p.b.ok(&rb2, &["commit", "-m", "y"])?;
    // Stands for a long `dbox commit` on the server's machine.
    let ra = Repo::open(&p.ra)?;
    let lock = ra.store().writer()?;
    let mut pushes = Vec::new();
    for dir in [p.rb.clone(), rb2.clone()] {
        let b = Dev { home: p.b.home.clone() };
        pushes.push(std::thread::spawn(move || b.run(&dir, &["push", "origin"])));
    }
    std::thread::sleep(Duration::from_secs(4));
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        drop(lock);
    });
    let key = p.b.device()?;
    let rt = runtime()?;
    let t = Instant::now();
    let welcomed = rt.block_on(async {
        let (_ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
        let w = raw_hello(&conn, &hello(ra.store().repo_id(), None, Vec::new())).await?;
        Ok::<_, Box<dyn std::error::Error>>(matches!(w, Welcome::Ok { .. }))
    })?;
    let waited = t.elapsed();
    releaser.join().map_err(|_| "releaser panicked")?;
    for h in pushes {
        let r = h.join().map_err(|_| "push panicked")??;
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert!(welcomed && waited < Duration::from_secs(5), "the server took {waited:?} to answer a hello");
    assert_eq!(version_count(&p.a, &p.ra)?, 3);
    Ok(())
}

/// Strangers from eight addresses fill every place for connections not yet
/// admitted; a member still gets in (the oldest waiting one makes room).
#[test]
fn a_crowd_of_idle_strangers_does_not_lock_members_out() -> TestResult {
    let p = pair()?;
    let a_id = p.a.peer_id()?;
    let addr = p.server.sock()?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut idle = Vec::new();
        for ip in 2..10u8 {
            for i in 0..8u8 {
                let key = ed25519_dalek::SigningKey::from_bytes(&[ip.wrapping_mul(16).wrapping_add(i); 32]);
                idle.push(raw_connect_from(&key, a_id, addr, dbox::net::ALPN, [127, 0, 0, ip]).await?);
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = p.b.run(&p.rb, &["pull", "origin"])?;
        assert_eq!(r.code, 0, "a member was locked out by 64 idle strangers: {r:?}");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// One member cannot take every place: its fifth session is refused, and
/// another member is served.
#[test]
fn one_member_is_held_to_four_sessions() -> TestResult {
    let p = pair()?;
    let tok = token(&p.a.ok(&p.ra, &["invite", "--expires", "10m"])?);
    let c = Dev::new(p.tmp.path(), "c")?;
    c.ok(p.tmp.path(), &["clone", &tok, "c"])?;
    let rc = p.tmp.path().join("c");
    let a_id = p.a.peer_id()?;
    let addr = p.server.sock()?;
    let repo_id = Repo::open(&p.ra)?.store().repo_id();
    let key = p.b.device()?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..5 {
            let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
            match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
                Welcome::Ok { .. } if i < 4 => held.push((ep, conn)),
                Welcome::Ok { .. } => return Err("a fifth session of one member was admitted".into()),
                Welcome::Refused { reason } if i == 4 => {
                    assert!(reason.contains("sessions open"), "{reason}")
                }
                Welcome::Refused { reason } => return Err(format!("refused early: {reason}").into()),
            }
        }
        let r = c.run(&rc, &["pull", "origin"])?;
        assert_eq!(r.code, 0, "{r:?}");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Thousands of membership records (a member may sign records for any
/// device) still fit every hello: the repository keeps syncing.
#[test]
fn thousands_of_members_still_fit_the_hello() -> TestResult {
    let p = pair()?;
    let a_id = p.a.peer_id()?;
    let addr = p.server.sock()?;
    let repo_id = Repo::open(&p.ra)?.store().repo_id();
    let key = p.b.device()?;
    let now = dbox::members::now_ms();
    let recs: Vec<ByteBuf> = (0..4000u32)
        .map(|i| {
            let mut k = [0xabu8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            ByteBuf::from(Record::sign(repo_id, PeerId(k), key.signing_key(), now).as_bytes().to_vec())
        })
        .collect();
    let rt = runtime()?;
    rt.block_on(async {
        for part in recs.chunks(2000) {
            let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
            let w = raw_hello(&conn, &hello(repo_id, None, part.to_vec())).await?;
            assert!(matches!(w, Welcome::Ok { .. }));
            conn.close(0u32.into(), b"");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    for _ in 0..2 {
        let r = p.b.run(&p.rb, &["pull", "origin"])?;
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert_eq!(dbox::members::Members::load(&Repo::open(&p.rb)?)?.len(), 4002);
    Ok(())
}

/// A pusher whose wide level of trees has one bad tree in one of
/// the requests running at once: the pull stops with a clean error,
/// nothing becomes visible, and the server keeps serving.
#[test]
fn a_bad_tree_in_a_wide_level_stops_the_pull() -> TestResult {
    let mut p = pair()?;
    for i in 0..400u64 {
        write(&p.rb.join(format!("w/d{i:03}/f.txt")), format!("file {i}\n"))?;
        write(&p.rb.join(format!("w/d{i:03}/s/g.txt")), format!("sub {i}\n"))?;
    }
    p.b.ok(&p.rb, &["commit", "-m", "wide on b"])?;
    let before = version_count(&p.a, &p.ra)?;
    for k in [2usize, 150] {
        let t = Instant::now();
        let (answer, served) = push_served(&p, Serving::BadTreeAt(k))?;
        let trees = served.trees.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!("bad tree {k}: {:?} after {:?}, {trees} trees served", answer, t.elapsed());
        expect_refusal("a bad tree", Ok(answer), "does not match its id")?;
        assert_eq!(version_count(&p.a, &p.ra)?, before);
        p.server.assert_alive()?;
    }
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    let (answer, _) = push_served(&p, Serving::BadTreeAt(usize::MAX))?;
    assert!(matches!(answer, Response::Announced(ref t) if t.versions == 1), "{answer:?}");
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    Ok(())
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// A member asks for large objects in 16 requests at once, over
/// and over, reads a little of each, then (a) stops reading, (b) vanishes
/// without a close. The server's memory stays bounded, its reading threads
/// end, and it keeps serving.
#[test]
fn a_reader_that_stops_and_vanishes_leaves_nothing_behind() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    for i in 0..4u64 {
        write(&ra.join(format!("big{i}.bin")), common::bytes(100 + i, 12 << 20))?;
    }
    a.ok(&ra, &["commit", "-m", "big"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite", "--expires", "10m"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    let pid = server.child.id();
    let repo = Repo::open(&ra)?;
    let mut big: Vec<(usize, ObjectId)> = Vec::new();
    for id in repo.store().list_objects()? {
        let raw = repo.store().get_raw(&id)?;
        if dbox::store::ObjectKind::of_stored(&raw).ok() == Some(dbox::store::ObjectKind::Chunk) {
            big.push((raw.len(), id));
        }
    }
    big.sort();
    big.reverse();
    eprintln!("{} chunks, largest {} bytes", big.len(), big[0].0);
    let ids: Vec<[u8; 32]> = (0..4096).map(|i| big[i % big.len()].1 .0).collect();
    let base_threads = threads_of(pid);
    let t0 = Instant::now();
    let base_rss = rss_kib(pid);
    let a_id = a.peer_id()?;
    let addr: SocketAddr = server.addr.parse()?;
    let repo_id = repo.store().repo_id();
    let key = b.device()?;
    let rt = runtime()?;
    let (peak_rss, peak_threads) = rt.block_on(async {
        let (ep, conn) = raw_connect(key.signing_key(), a_id, addr, dbox::net::ALPN).await?;
        match raw_hello(&conn, &hello(repo_id, None, Vec::new())).await? {
            Welcome::Ok { .. } => {}
            Welcome::Refused { reason } => return Err(format!("refused: {reason}").into()),
        }
        let mut streams = Vec::new();
        for _ in 0..16 {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_msg(&mut send, &Request::Get { ids: ids_to_wire(ids.iter().copied()), bases: Vec::new() })
                .await?;
            let _ = send.finish();
            // One object of each, then nothing more is read. Once the
            // connection's window is full of what is not read, later
            // requests get nothing: a second is enough to see that.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                dbox::net::wire::read_object(&mut recv, 64 << 20),
            )
            .await;
            streams.push((send, recv));
        }
        eprintln!("16 requests under way after {:?}", t0.elapsed());
        let (mut peak_rss, mut peak_threads) = (0, 0);
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak_rss = peak_rss.max(rss_kib(pid));
            peak_threads = peak_threads.max(threads_of(pid));
        }
        // Vanish: no close goes out (the runtime below is dropped with it).
        std::mem::forget(streams);
        std::mem::forget(conn);
        std::mem::forget(ep);
        Ok::<_, Box<dyn std::error::Error>>((peak_rss, peak_threads))
    })?;
    rt.shutdown_background();
    eprintln!("server rss {base_rss} KiB before, {peak_rss} KiB at most while stalled; threads {base_threads} -> {peak_threads}");
    // The idle timeout (15 s) ends the connection; then every reader stops.
    let t = Instant::now();
    common::wait_for("the server's reading threads did not end", Duration::from_secs(90), || {
        Ok(server.log().matches(" disconnected").count() >= 2)
    })?;
    eprintln!("threads back to {} after {:?}; log:\n{}", threads_of(pid), t.elapsed(), server.log());
    let r = b.run(&rb, &["pull", "origin"])?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(peak_rss < base_rss + 16 * 40 * 1024, "{peak_rss} KiB");
    Ok(())
}

/// Huge wrong deltas for a wide level of changed trees: how many
/// are sent (each decoded to 64 MiB unless the session already stopped
/// taking deltas), and the server's peak memory.
#[test]
fn huge_wrong_deltas_on_a_wide_level_are_taken_whole_in_bounded_memory() -> TestResult {
    let mut p = pair()?;
    for i in 0..400u64 {
        write(&p.rb.join(format!("w/d{i:03}/f.txt")), format!("file {i}\n"))?;
    }
    p.b.ok(&p.rb, &["commit", "-m", "wide on b"])?;
    p.b.ok(&p.rb, &["push", "origin"])?;
    for i in 0..400u64 {
        write(&p.rb.join(format!("w/d{i:03}/f.txt")), format!("file {i}, edited\n"))?;
    }
    p.b.ok(&p.rb, &["commit", "-m", "edits on b"])?;
    let pid = p.server.child.id();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, peak) = (stop.clone(), Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let peak2 = peak.clone();
    let before = rss_kib(pid);
    let watcher = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            peak2.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let (answer, served) = push_served(&p, Serving::HugeDeltasFrom(2))?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watcher.join();
    let deltas = served.deltas.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "{deltas} huge deltas sent; server rss {before} KiB before, {} KiB at most; {answer:?}",
        peak.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(matches!(answer, Response::Announced(ref t) if t.versions == 1), "{answer:?}");
    // At most one 64 MiB rebuild per request at once (four), and the
    // session stops taking deltas after the first that fails.
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak < before + 320 * 1024, "server rss {before} KiB before, {peak} KiB at most");
    p.server.assert_alive()?;
    p.a.ok(&p.ra, &["fsck", "--read-data"])?;
    Ok(())
}
