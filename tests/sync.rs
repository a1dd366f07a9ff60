//! Sync between real `dbox` processes over loopback QUIC: identities, the
//! address book, invitations, push, pull, sync, the working-tree rules;
//! and (in process) the size of the negotiation on a large graph.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::{json, token, Dev, Server};
use common::{write, TestResult};

#[test]
fn peer_ids_and_the_address_book() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = Dev::new(tmp.path(), "a")?;
    let id = a.id()?;
    assert_eq!(id.len(), 59, "{id}");
    assert!(id.starts_with("dbx"));
    assert_eq!(a.id()?, id, "the id is stable");
    let repo = tmp.path().join("r");
    a.ok(tmp.path(), &["init", "r"])?;

    // A typo in the id is caught by the check digits.
    let mut typo = id.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo)?;
    let r = a.run(&repo, &["peer", "add", "laptop", &typo, "127.0.0.1:7447"])?;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("check digits"), "{r:?}");

    let other = Dev::new(tmp.path(), "b")?.id()?;
    let r = a.ok(&repo, &["peer", "add", "laptop", &other, "127.0.0.1:7447"])?;
    assert!(r.stderr.contains("not a member"), "{r:?}");
    let r = a.run(&repo, &["peer", "add", "laptop", &other])?;
    assert!(r.code != 0 && r.stderr.contains("already a peer called"), "{r:?}");
    for bad in ["has space", "-x", "a/b", ""] {
        let r = a.run(&repo, &["peer", "add", bad, &other])?;
        assert_ne!(r.code, 0, "{bad:?} accepted");
    }
    for bad in ["nohost", "h:0", "h:99999", ":7447"] {
        let r = a.run(&repo, &["peer", "add", "x", &other, bad])?;
        assert!(r.code != 0 && r.stderr.contains("invalid address"), "{bad:?}: {r:?}");
    }
    a.ok(&repo, &["peer", "add", "self", &id])?;
    let list = json(&a.ok(&repo, &["peer", "list", "--json"])?)?;
    assert_eq!(list[0]["name"], "laptop");
    assert_eq!(list[0]["peer_id"], other.as_str());
    assert_eq!(list[0]["addr"], "127.0.0.1:7447");
    assert_eq!(list[0]["member"], false);
    assert_eq!(list[1]["member"], true, "the founding device is a member");
    assert!(list[1]["addr"].is_null());

    // A peer without an address needs PEER@ADDR.
    let r = a.run(&repo, &["pull", "self"])?;
    assert!(r.code != 0 && r.stderr.contains("no address known"), "{r:?}");
    let r = a.run(&repo, &["pull", "nobody"])?;
    assert!(r.code != 0 && r.stderr.contains("no peer called"), "{r:?}");

    a.ok(&repo, &["peer", "remove", "laptop"])?;
    let r = a.run(&repo, &["peer", "remove", "laptop"])?;
    assert_ne!(r.code, 0);
    let list = json(&a.ok(&repo, &["peer", "list", "--json"])?)?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    Ok(())
}

/// A clone of a repository with no version yet is finished: its first
/// commit is the history's first version, not refused as a half clone.
#[test]
fn a_clone_of_an_empty_repository_can_commit() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    let _server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    assert!(!rb.join(".dbox/cloning").exists());
    write(&rb.join("first.txt"), "hello\n")?;
    let r = b.ok(&rb, &["commit", "-m", "first"])?;
    assert!(r.stderr.contains("Committed") || r.stdout.contains("Committed"), "{r:?}");
    Ok(())
}

#[test]
fn invite_clone_push_pull_and_the_working_tree_rules() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("notes/plan.md"), "one\ntwo\n")?;
    write(&ra.join("photo.raw"), common::bytes(7, 3 << 20))?;
    a.ok(&ra, &["commit", "-m", "first"])?;

    // Without a server there is nothing to accept the invitation.
    let r = a.run(&ra, &["invite"])?;
    assert!(r.code != 0 && r.stderr.contains("dbox serve"), "{r:?}");

    let server = a.serve(&ra)?;
    let inv = a.ok(&ra, &["invite", "--expires", "10m"])?;
    assert!(inv.stderr.contains("dbox clone"), "{inv:?}");
    let tok = token(&inv);
    assert!(tok.starts_with("dbxinv"), "{tok}");
    let rb = tmp.path().join("b");
    let r = b.ok(tmp.path(), &["clone", &tok, "b", "--json"])?;
    let j = json(&r)?;
    assert_eq!(j["pulled"]["versions"], 1);
    assert_eq!(std::fs::read(rb.join("photo.raw"))?, common::bytes(7, 3 << 20));
    assert_eq!(std::fs::read_to_string(rb.join("notes/plan.md"))?, "one\ntwo\n");
    assert!(!rb.join(".dbox/cloning").exists(), "a finished clone leaves no mark");
    // The stat cache the clone recorded (without scanning its tree again):
    // clean, and an edit that keeps the size is still seen.
    let st = b.ok(&rb, &["status"])?;
    assert!(st.stdout.contains("Nothing changed"), "{st:?}");
    let mut photo = common::bytes(7, 3 << 20);
    photo[1 << 20] ^= 1;
    std::fs::write(rb.join("photo.raw"), &photo)?;
    let st = b.ok(&rb, &["status"])?;
    assert!(st.stdout.contains("M photo.raw"), "{st:?}");
    std::fs::write(rb.join("photo.raw"), common::bytes(7, 3 << 20))?;
    assert!(server.log().contains("joined with an invitation"), "{}", server.log());
    // Both know the other as a member now.
    let list = json(&b.ok(&rb, &["peer", "list", "--json"])?)?;
    assert_eq!(list[0]["name"], "origin");
    assert_eq!(list[0]["member"], true);

    // The server holds no lock: commits work while it runs and are served.
    write(&ra.join("notes/plan.md"), "one\ntwo\nthree\n")?;
    a.ok(&ra, &["commit", "-m", "second"])?;
    let j = json(&b.ok(&rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1);
    assert!(j["worktree"].as_str().unwrap_or("").starts_with("moved to"), "{j}");
    assert_eq!(std::fs::read_to_string(rb.join("notes/plan.md"))?, "one\ntwo\nthree\n");
    // The photo did not travel again.
    assert!(j["pulled"]["bytes"].as_u64().unwrap_or(u64::MAX) < 100_000, "{j}");

    // Nothing new: quick, and nothing moves.
    let t = Instant::now();
    let j = json(&b.ok(&rb, &["sync", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 0);
    assert_eq!(j["pushed"]["versions"], 0);
    assert!(t.elapsed() < Duration::from_secs(5));

    // A dirty tree is never touched by a pull.
    write(&rb.join("notes/plan.md"), "my unsaved edit\n")?;
    write(&ra.join("other.txt"), "new on a\n")?;
    a.ok(&ra, &["commit", "-m", "third"])?;
    let r = b.ok(&rb, &["pull", "origin"])?;
    assert!(r.stdout.contains("left alone"), "{r:?}");
    assert_eq!(std::fs::read_to_string(rb.join("notes/plan.md"))?, "my unsaved edit\n");
    assert!(!rb.join("other.txt").exists());

    // Push: b's commit reaches a, whose clean tree moves forward.
    b.ok(&rb, &["checkout", "HEAD"]).ok();
    let r = b.ok(&rb, &["commit", "-m", "edit on b"])?;
    let v = r.stdout.trim().to_string();
    let j = json(&b.ok(&rb, &["push", "origin", "--json"])?)?;
    assert_eq!(j["pushed"]["versions"], 1, "{j}");
    let log = a.ok(&ra, &["log"])?.stdout;
    assert!(log.contains(&v[..12]), "{log}");
    b.ok(&rb, &["fsck", "--read-data"])?;
    a.ok(&ra, &["fsck", "--read-data"])?;
    drop(server);
    Ok(())
}

/// Inserts `patch` into the file at `path`, at `at` of its length.
fn insert_into(path: &Path, at: f64, patch: &[u8]) -> std::io::Result<()> {
    let mut data = std::fs::read(path)?;
    let pos = (data.len() as f64 * at) as usize;
    data.splice(pos..pos, patch.iter().copied());
    write(path, data)
}

#[test]
fn small_edits_travel_as_deltas_both_ways() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    // Random bytes do not compress: a changed chunk sent whole costs its size.
    write(&ra.join("big.bin"), common::bytes(11, 5 << 20))?;
    for i in 0..40u64 {
        write(&ra.join(format!("docs/d{i:02}.bin")), common::bytes(100 + i, 150_000))?;
    }
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;

    // a edits the middle of the large file and ten small ones.
    insert_into(&ra.join("big.bin"), 0.5, &common::bytes(5, 100))?;
    for i in 0..10 {
        insert_into(&ra.join(format!("docs/d{i:02}.bin")), 0.3, &common::bytes(200 + i, 300))?;
    }
    a.ok(&ra, &["commit", "-m", "small edits"])?;
    let j = json(&b.ok(&rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    let wire =
        j["wire"]["sent"].as_u64().unwrap_or(u64::MAX) + j["wire"]["received"].as_u64().unwrap_or(u64::MAX);
    let stored = j["pulled"]["bytes"].as_u64().unwrap_or(0);
    eprintln!("pull of small edits: {wire} bytes on the wire for {stored} bytes of new objects");
    // Whole, the changed chunks alone are over 1.7 MB: ten files of 150 kB
    // (one chunk each) and at least one chunk of 256 KiB of the large file
    // (where it is cut depends on the repository's key).
    assert!(stored > 1_700_000, "{j}");
    assert!(wire < 150_000, "{j}");
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;

    // The other way: a push is the server pulling, with the same deltas.
    insert_into(&rb.join("big.bin"), 0.2, &common::bytes(6, 100))?;
    insert_into(&rb.join("docs/d30.bin"), 0.9, &common::bytes(7, 50))?;
    b.ok(&rb, &["commit", "-m", "edit on b"])?;
    let j = json(&b.ok(&rb, &["push", "origin", "--json"])?)?;
    assert_eq!(j["pushed"]["versions"], 1, "{j}");
    let wire =
        j["wire"]["sent"].as_u64().unwrap_or(u64::MAX) + j["wire"]["received"].as_u64().unwrap_or(u64::MAX);
    eprintln!("push of small edits: {wire} bytes on the wire");
    assert!(wire < 100_000, "{j}");
    a.ok(&ra, &["fsck", "--read-data"])?;
    // The server moves its working tree after it answered the push.
    common::wait_for("the server's working tree did not move", Duration::from_secs(20), || {
        Ok(std::fs::read(ra.join("big.bin"))? == std::fs::read(rb.join("big.bin"))?)
    })?;
    drop(server);
    Ok(())
}

/// A level of the tree walk wider than one request: its trees come in
/// several requests at once (and after an edit, each with its base).
#[test]
fn a_wide_tree_is_walked_in_requests_at_once_and_arrives_whole() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    // 600 folders on one level, 300 beneath them, a file in each.
    for i in 0..600u64 {
        write(&ra.join(format!("w/f{i:03}/a.txt")), format!("file {i}\n").repeat(40).as_bytes())?;
        if i % 2 == 0 {
            write(&ra.join(format!("w/f{i:03}/sub/b.bin")), common::bytes(1000 + i, 3000))?;
        }
    }
    a.ok(&ra, &["commit", "-m", "wide"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    let j = json(&b.ok(tmp.path(), &["clone", &tok, "b", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);

    // An edit in 400 of the folders: each changed tree has a base to
    // travel as a delta against.
    for i in (0..600u64).filter(|i| i % 3 != 0) {
        insert_into(&ra.join(format!("w/f{i:03}/a.txt")), 0.5, b"an edit\n")?;
    }
    write(&ra.join("w/f599/sub/new.txt"), b"new")?;
    a.ok(&ra, &["commit", "-m", "edits"])?;
    let j = json(&b.ok(&rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert!(j["pulled"]["deltas"].as_u64().unwrap_or(0) > 0, "{j}");
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;
    drop(server);
    Ok(())
}

/// A pull whose repository's lock another process holds says so, and
/// goes on once it is free.
#[test]
fn a_pull_waiting_for_the_lock_says_who_holds_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("one.txt"), b"one")?;
    a.ok(&ra, &["commit", "-m", "one"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    write(&ra.join("two.txt"), b"two")?;
    a.ok(&ra, &["commit", "-m", "two"])?;

    let (said, status, err) = common::behind_the_lock(&rb, b.command(&rb, &["pull", "origin"]))?;
    assert!(said, "the pull did not say it waits: {err}");
    let me = format!("another dbox process (pid {}) to release the repository lock", std::process::id());
    assert!(err.contains(&me), "{err}");
    assert!(status.success(), "the pull failed once the lock was free: {err}");
    assert_eq!(std::fs::read(rb.join("two.txt"))?, b"two");
    drop(server);
    Ok(())
}

/// A clone under way: repository `a` (twelve files of 16 MB in `dir`, and
/// a small text file), served; device b's `dbox clone` of it into `b`.
struct CloneUnderWay {
    b: Dev,
    ra: PathBuf,
    rb: PathBuf,
    clone: Child,
    _server: Server,
    // Last: removed once the server is gone.
    _tmp: tempfile::TempDir,
}

/// Starts a [`CloneUnderWay`] and waits until the first large file is in
/// b's working tree; `None` if the clone ended before that.
fn clone_under_way(
    dir: &str,
    seed: u64,
    small: (&str, &str),
) -> Result<Option<CloneUnderWay>, Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    for i in 0..12u64 {
        write(&ra.join(dir).join(format!("a{i:02}.bin")), common::bytes(seed + i, 16 << 20))?;
    }
    write(&ra.join(small.0), small.1)?;
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    let mut clone = b
        .command(tmp.path(), &["clone", &tok, "b"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let first = rb.join(dir).join("a00.bin");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) && clone.try_wait()?.is_none() {
        if first.exists() {
            return Ok(Some(CloneUnderWay { b, ra, rb, clone, _server: server, _tmp: tmp }));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(None)
}

/// A clone writes files while the content arrives, into a folder the user
/// may already be using: what the user puts there meanwhile is never
/// replaced (the clone then ends with a checkout that refuses to lose it).
#[test]
fn a_clone_never_replaces_what_the_user_puts_in_its_folder_meanwhile() -> TestResult {
    let Some(c) = clone_under_way("", 300, ("zz.txt", "theirs\n"))? else {
        eprintln!("the clone finished before its first file could be seen; nothing to check");
        return Ok(());
    };
    // As soon as the first file is there, the user makes a folder where a
    // later file goes, with a file of their own in it.
    let mine = std::fs::create_dir(c.rb.join("zz.txt")).is_ok();
    if mine {
        write(&c.rb.join("zz.txt/precious"), "my thesis\n")?;
    }
    let out = c.clone.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !mine {
        eprintln!("the clone wrote zz.txt before the user could make the folder; nothing to check");
        return Ok(());
    }
    assert_eq!(std::fs::read_to_string(c.rb.join("zz.txt/precious"))?, "my thesis\n", "{stderr}");
    assert!(!out.status.success() && stderr.contains("zz.txt"), "the clone must say what it kept: {stderr}");
    // Everything else arrived, and is in place.
    assert_eq!(std::fs::read(c.rb.join("a11.bin"))?, common::bytes(311, 16 << 20));
    Ok(())
}

/// A clone killed while it writes the working tree leaves some files of
/// the version; the next pull finishes the transfer and the tree.
#[test]
fn a_pull_finishes_the_tree_of_a_killed_clone() -> TestResult {
    let Some(mut c) = clone_under_way("d", 400, ("top.txt", "top\n"))? else {
        eprintln!("the clone finished before it could be killed; nothing to check");
        return Ok(());
    };
    c.clone.kill()?;
    let _ = c.clone.wait();
    let j = json(&c.b.ok(&c.rb, &["pull", "origin", "--json"])?)?;
    assert!(j["worktree"].as_str().unwrap_or("").starts_with("moved to"), "{j}");
    // A temporary file the killed clone was writing (where unnamed files
    // are not available) is never content, and the pull's checkout, which
    // holds the writer lock, removes it.
    assert_eq!(common::snapshot(&c.ra)?, common::snapshot(&c.rb)?);
    let status = c.b.ok(&c.rb, &["status"])?;
    assert!(!status.stdout.contains(".dbox-restore-"), "status lists a temporary file: {status:?}");
    c.b.ok(&c.rb, &["fsck", "--read-data"])?;
    Ok(())
}

/// A clone stopped after its versions were recorded but before its tree
/// was finished (no HEAD, some files missing): the next pull brings nothing
/// new, and still finishes the tree.
#[test]
fn a_pull_with_nothing_new_finishes_a_tree_with_no_head() -> TestResult {
    let Some(c) = clone_under_way("d", 500, ("top.txt", "top\n"))? else {
        return Err("the clone did not start".into());
    };
    let out = c.clone.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What such a stop leaves: the versions, no HEAD, part of the tree.
    std::fs::remove_file(c.rb.join(".dbox/HEAD"))?;
    for i in 6..12 {
        std::fs::remove_file(c.rb.join(format!("d/a{i:02}.bin")))?;
    }
    let j = json(&c.b.ok(&c.rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 0, "{j}");
    assert!(j["worktree"].as_str().unwrap_or("").starts_with("moved to"), "{j}");
    assert_eq!(common::snapshot(&c.ra)?, common::snapshot(&c.rb)?);
    // With a HEAD and nothing new, a pull leaves the tree alone.
    std::fs::remove_file(c.rb.join("d/a00.bin"))?;
    let j = json(&c.b.ok(&c.rb, &["pull", "origin", "--json"])?)?;
    assert!(j["worktree"].is_null(), "{j}");
    assert!(!c.rb.join("d/a00.bin").exists());
    Ok(())
}

#[test]
fn a_wrong_peer_id_or_a_dead_address_fails_clearly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    let server = a.serve(&ra)?;
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["init", "b"])?;
    // b pins its own id, but a answers at that address.
    let target = format!("{}@{}", b.id()?, server.addr);
    let r = b.run(&rb, &["pull", &target])?;
    assert!(r.code == 1 && r.stderr.contains("the device there is"), "{r:?}");
    // The right id, but b is not a member (and another repository).
    let target = format!("{}@{}", a.id()?, server.addr);
    let r = b.run(&rb, &["pull", &target])?;
    assert!(r.code == 1 && r.stderr.contains("refused"), "{r:?}");
    drop(server);
    // Nobody listening: a timeout with a hint, not a hang.
    let t = Instant::now();
    let r = b.run(&rb, &["pull", &target])?;
    assert!(r.code == 1 && r.stderr.contains("cannot connect"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
    Ok(())
}

/// Two repositories sharing a graph of 100,000 versions that differ by a
/// few: the sync exchanges a few KiB, not the graph.
#[test]
fn negotiation_stays_small_on_a_large_graph() -> TestResult {
    use dbox::identity::Device;
    use dbox::members::Members;
    use dbox::net::ops::{self, Direction};
    use dbox::net::session::Progress;
    use dbox::peers::Target;
    use dbox::store::{SignedVersion, Tree, VersionBody, VersionId, VersionInfo};
    use dbox::Repo;

    const N: usize = 100_000;
    let tmp = tempfile::tempdir()?;
    let device = Arc::new(Device::load_or_create(&tmp.path().join("home"))?);
    let ra = tmp.path().join("a");
    let repo = Repo::init(&ra)?;
    Members::load_or_found(&repo, &device)?;
    let extend = |repo: &Repo,
                  from: Option<VersionId>,
                  n: usize,
                  seq0: u64|
     -> Result<VersionId, Box<dyn std::error::Error>> {
        let w = repo.store().writer()?;
        let root = w.put_tree(&Tree::new(Vec::new())?)?;
        let mut prev = from;
        let mut batch = Vec::new();
        for i in 0..n {
            let info = VersionInfo::new(format!("v{i}"), 1_700_000_000_000 + i as i64, "bench");
            let body = VersionBody {
                repo: repo.store().repo_id(),
                parents: prev.into_iter().collect(),
                root,
                author: device.peer_id(),
                seq: seq0 + i as u64,
                sealed_info: info.seal(repo.store().keys(), &repo.store().repo_id())?,
            };
            let v = SignedVersion::sign(body, device.signing_key())?;
            w.put_version(&v)?;
            prev = Some(v.id());
            batch.push((v, info));
        }
        w.flush()?;
        repo.record_versions(&batch)?;
        Ok(prev.ok_or("no versions")?)
    };
    let tip = extend(&repo, None, N, 1)?;
    repo.set_head(&tip)?;
    // b is a copy of a; then a moves 10 ahead.
    let rb = tmp.path().join("b");
    copy_dir(&ra, &rb)?;
    let tip_a = extend(&repo, Some(tip), 10, N as u64 + 1)?;
    let repo_b = Repo::open(&rb)?;

    let rt = ops::runtime()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let quiet: dbox::net::session::Log = Arc::new(|_| {});
    let server = {
        let (dev, ra, quiet) = (device.clone(), ra.clone(), quiet.clone());
        rt.spawn(async move {
            ops::serve(&ra, dev, "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?, quiet, Some(tx), async {
                let _ = stop_rx.await;
            })
            .await
            .map_err(|e| e.to_string())
        })
    };
    let addr = rt.block_on(rx)?;
    let target = Target { id: device.peer_id(), addr: addr.to_string(), name: None };
    let pull = rt.block_on(ops::sync(
        repo_b.clone(),
        device.clone(),
        &target,
        Direction::Pull,
        Arc::new(Progress::default()),
        quiet.clone(),
    ))?;
    assert_eq!(pull.pulled.versions, 10);
    assert!(repo_b.graph()?.contains(&tip_a));
    let wire = pull.sent + pull.received;
    assert!(wire <= 100 * 1024, "pull of 10 versions moved {wire} bytes");
    eprintln!("100,000 versions, 10 new: {wire} bytes on the wire (objects {} bytes)", pull.pulled.bytes);

    // Both sides move: 5 on b, 5 more on a; one sync takes both ways.
    extend(&repo_b, Some(tip_a), 5, N as u64 + 11)?;
    extend(&repo, Some(tip_a), 5, N as u64 + 21)?;
    let both = rt.block_on(ops::sync(
        repo_b.clone(),
        device.clone(),
        &target,
        Direction::Both,
        Arc::new(Progress::default()),
        quiet,
    ))?;
    assert_eq!((both.pulled.versions, both.pushed.versions), (5, 5));
    let wire = both.sent + both.received;
    assert!(wire <= 100 * 1024, "sync of 5+5 versions moved {wire} bytes");
    eprintln!("100,000 versions, 5+5 new both ways: {wire} bytes on the wire");
    assert_eq!(repo.graph()?.heads().len(), 2);
    assert_eq!(repo_b.graph()?.heads().len(), 2);
    let _ = stop_tx.send(());
    rt.block_on(server)??;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else if e.file_type()?.is_file() && e.file_name() != "serve.lock" {
            std::fs::copy(e.path(), &t)?;
        }
    }
    Ok(())
}

#[test]
fn concurrent_edits_on_two_peers_merge_and_all_three_converge() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b, c) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?, Dev::new(tmp.path(), "c")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("plan.md"), "title\n\none\ntwo\nthree\nfour\n")?;
    write(&ra.join("budget.txt"), "40\n")?;
    a.ok(&ra, &["commit", "-m", "first"])?;
    let server = a.serve(&ra)?;
    let (rb, rc) = (tmp.path().join("b"), tmp.path().join("c"));
    for (d, dir) in [(&b, "b"), (&c, "c")] {
        let tok = token(&a.ok(&ra, &["invite"])?);
        d.ok(tmp.path(), &["clone", &tok, dir])?;
    }
    // At the same time: b and c edit the plan in different places, the
    // budget in the same place, and each adds a file.
    write(&rb.join("plan.md"), "title by b\n\none\ntwo\nthree\nfour\n")?;
    write(&rb.join("budget.txt"), "45\n")?;
    write(&rb.join("from-b.txt"), "b\n")?;
    b.ok(&rb, &["commit", "-m", "b's edit"])?;
    write(&rc.join("plan.md"), "title\n\none\ntwo\nthree\nfour\nfive by c\n")?;
    write(&rc.join("budget.txt"), "38\n")?;
    write(&rc.join("from-c.txt"), "c\n")?;
    c.ok(&rc, &["commit", "-m", "c's edit"])?;
    b.ok(&rb, &["sync", "origin"])?;
    let j = json(&c.ok(&rc, &["sync", "origin", "--json"])?)?;
    assert_eq!(
        (j["pulled"]["versions"].as_u64(), j["pushed"]["versions"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    let graph = c.ok(&rc, &["log", "--graph"])?.stdout;
    assert!(graph.contains("|/"), "the fork shows:\n{graph}");

    let m = json(&c.ok(&rc, &["merge", "--json"])?)?;
    assert_eq!(m["result"], "merged", "{m}");
    c.ok(&rc, &["sync", "origin"])?;
    b.ok(&rb, &["sync", "origin"])?;
    let mut heads = Vec::new();
    for (d, r) in [(&a, &ra), (&b, &rb), (&c, &rc)] {
        let log = json(&d.ok(r, &["log", "--json"])?)?;
        let list = log.as_array().ok_or("log is a list")?;
        let hs: Vec<String> = list
            .iter()
            .filter(|v| v["head"] == true)
            .filter_map(|v| v["id"].as_str().map(String::from))
            .collect();
        assert_eq!(hs.len(), 1, "one head on {}: {hs:?}", r.display());
        heads.push(hs[0].clone());
        assert_eq!(list.len(), 4, "first, two edits, the merge");
        // Every edit is present in every working tree.
        assert_eq!(
            std::fs::read_to_string(r.join("plan.md"))?,
            "title by b\n\none\ntwo\nthree\nfour\nfive by c\n"
        );
        assert_eq!(std::fs::read_to_string(r.join("from-b.txt"))?, "b\n");
        assert_eq!(std::fs::read_to_string(r.join("from-c.txt"))?, "c\n");
        assert_eq!(std::fs::read_to_string(r.join("budget.txt"))?, "38\n", "c merged: its budget stays");
        let copies: Vec<_> = std::fs::read_dir(r)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("budget.conflict-"))
            .collect();
        assert_eq!(copies.len(), 1, "b's budget kept beside it");
        assert_eq!(std::fs::read_to_string(copies[0].path())?, "45\n");
        let st = json(&d.ok(r, &["status", "--json"])?)?;
        assert_eq!(st["changes"].as_array().map(Vec::len), Some(0), "{st}");
        d.ok(r, &["fsck", "--read-data"])?;
    }
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
    drop(server);
    Ok(())
}

/// Pulls in a row with nothing new. Each must close its session on
/// the server at once: a close that never went out holds one of the
/// member's four sessions until the idle timeout (15 s).
#[test]
fn rapid_pulls_each_close_their_session() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    write(&ra.join("x.txt"), b"x")?;
    a.ok(&ra, &["commit", "-m", "x"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    let n: usize = std::env::var("DBOX_TEST_PULLS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut late = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let args: &[&str] = if i % 2 == 0 { &["pull", "origin"] } else { &["sync", "origin"] };
        b.ok(&rb, args)?;
        times.push(t.elapsed().as_millis());
        let t = Instant::now();
        loop {
            let log = server.log();
            if log.matches(" connected").count() == log.matches(" disconnected").count() {
                break;
            }
            if t.elapsed() > Duration::from_secs(3) {
                late.push(i);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprintln!("pull times (ms): {times:?}\nconnected: {}", server.log().matches(" connected").count());
    eprintln!("{}", server.log().lines().take(8).collect::<Vec<_>>().join("\n"));
    assert!(late.is_empty(), "sessions not closed within 3 s after pulls {late:?}\n{}", server.log());
    Ok(())
}

/// One subtree at many paths on a wide level, and a deep chain:
/// every copy arrives, and after edits to some copies the pull is right.
#[test]
fn a_subtree_at_many_paths_on_a_wide_level_arrives_whole() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    for i in 0..400u64 {
        write(&ra.join(format!("w/d{i:03}/same/a.txt")), "same text\n".repeat(50))?;
        write(&ra.join(format!("w/d{i:03}/same/b.bin")), common::bytes(7, 5000))?;
        write(&ra.join(format!("w/d{i:03}/own.txt")), format!("own {i}\n"))?;
    }
    let mut deep = ra.join("deep");
    for l in 0..60 {
        deep = deep.join(format!("l{l}"));
    }
    write(&deep.join("f.txt"), b"deep")?;
    a.ok(&ra, &["commit", "-m", "wide"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    for i in (0..400u64).filter(|i| i % 2 == 1) {
        write(&ra.join(format!("w/d{i:03}/same/a.txt")), "same text\nedited\n".repeat(50))?;
    }
    write(&deep.join("g.txt"), b"deeper")?;
    a.ok(&ra, &["commit", "-m", "edits"])?;
    let j = json(&b.ok(&rb, &["pull", "origin", "--json"])?)?;
    assert_eq!(j["pulled"]["versions"], 1, "{j}");
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;
    drop(server);
    Ok(())
}

/// Guards against wrong bytes from payloads decrypted in place (behind
/// their header) and against a stall of a clone's checkout beside the
/// transfer: empty and tiny files, files around the compression threshold
/// and the largest chunk, files larger than what a clone holds in memory
/// (16 MiB), a file of one block repeated (the same chunks several times
/// in one file), copies of a file, text and random data, all arrive
/// exactly; so does a pull of edits to them.
#[test]
fn a_clone_writes_every_kind_of_chunk_exactly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (Dev::new(tmp.path(), "a")?, Dev::new(tmp.path(), "b")?);
    let ra = tmp.path().join("a");
    a.ok(tmp.path(), &["init", "a"])?;
    let max = dbox::store::limits::CHUNK_MAX as usize;
    write(&ra.join("empty"), b"")?;
    write(&ra.join("one"), b"x")?;
    for n in [127usize, 128, 129, 4095, 4096, 4097] {
        write(&ra.join(format!("small/r{n}")), common::bytes(n as u64, n))?;
        write(&ra.join(format!("small/t{n}")), &b"text ".repeat(n)[..n])?;
    }
    write(&ra.join("big/max"), common::bytes(1, max))?;
    write(&ra.join("big/max+1"), common::bytes(2, max + 1))?;
    write(&ra.join("big/twenty"), common::bytes(3, 20 << 20))?;
    write(&ra.join("big/text"), b"some text that compresses well\n".repeat(200_000))?;
    let block = common::bytes(4, 5 << 20);
    write(&ra.join("dup/repeated"), block.repeat(6))?;
    write(&ra.join("dup/copy1"), common::bytes(5, 6 << 20))?;
    write(&ra.join("dup/sub/copy2"), common::bytes(5, 6 << 20))?;
    write(&ra.join("dup/block"), &block)?;
    for i in 0..200u64 {
        write(
            &ra.join(format!("many/d{}/f{i}", i % 20)),
            common::bytes(100 + i, 1 + (i as usize * 997) % 9000),
        )?;
    }
    a.ok(&ra, &["commit", "-m", "all kinds"])?;
    let server = a.serve(&ra)?;
    let tok = token(&a.ok(&ra, &["invite"])?);
    let rb = tmp.path().join("b");
    let start = Instant::now();
    b.ok(tmp.path(), &["clone", &tok, "b"])?;
    let took = start.elapsed();
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    // About 120 MiB over loopback: a stall of ROOM_WAIT_MAX at each of
    // many chunks would show.
    assert!(took < Duration::from_secs(60), "the clone took {took:?}");
    let st = b.ok(&rb, &["status"])?;
    assert!(!st.stdout.contains("modified"), "{}", st.stdout);

    // Edits, pulled: written from the store.
    let mut r = common::bytes(3, 20 << 20);
    r[10 << 20] ^= 1;
    write(&ra.join("big/twenty"), &r)?;
    write(&ra.join("dup/repeated"), block.repeat(7))?;
    write(&ra.join("empty2"), b"")?;
    a.ok(&ra, &["commit", "-m", "edits"])?;
    b.ok(&rb, &["pull", "origin"])?;
    assert_eq!(common::snapshot(&ra)?, common::snapshot(&rb)?);
    b.ok(&rb, &["fsck", "--read-data"])?;
    drop(server);
    Ok(())
}
