//! No loss and no escape: hostile trees, symbolic links that point out of
//! the tree, files that change or vanish during a commit, two commits at
//! once, and commits killed with SIGKILL.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{write, TestEnv, TestResult};
use dbox::identity::Device;
use dbox::store::{object, ObjectId, ObjectKind, SignedVersion, VersionBody, VersionInfo};
use dbox::Repo;

/// Writes a version whose root tree holds one file entry with a raw name,
/// as a damaged or hostile store could, and returns its id.
fn hostile_version(
    env: &TestEnv,
    repo_dir: &Path,
    raw_name: &[u8],
) -> Result<String, Box<dyn std::error::Error>> {
    use ciborium::Value;
    let repo = Repo::open(repo_dir)?;
    let store = repo.store();
    let w = store.writer()?;
    let chunk = w.put_chunk(b"evil")?;
    let entry = Value::Map(vec![
        (Value::Text("n".into()), Value::Bytes(raw_name.to_vec())),
        (Value::Text("k".into()), Value::Integer(0.into())),
        (Value::Text("s".into()), Value::Integer(4.into())),
        (Value::Text("c".into()), Value::Array(vec![Value::Bytes(chunk.as_bytes().to_vec())])),
    ]);
    let tree = Value::Map(vec![
        (Value::Text("v".into()), Value::Integer(1.into())),
        (Value::Text("e".into()), Value::Array(vec![entry])),
    ]);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&tree, &mut payload)?;
    let (tree_id, stored): (ObjectId, Vec<u8>) = object::seal(store.keys(), ObjectKind::Tree, &payload);
    w.put_raw(&tree_id, &stored)?;
    let device = Device::load_or_create(&env.home)?;
    let repo_id = store.repo_id();
    let info = VersionInfo::new("hostile", 1, "h");
    let v = SignedVersion::sign(
        VersionBody {
            repo: repo_id,
            parents: vec![],
            root: tree_id,
            author: device.peer_id(),
            seq: 99,
            sealed_info: info.seal(store.keys(), &repo_id)?,
        },
        device.signing_key(),
    )?;
    w.put_version(&v)?;
    w.flush()?;
    repo.record_versions(&[(v.clone(), info)])?;
    Ok(v.id().to_string())
}

#[test]
fn hostile_tree_names_are_refused_at_restore() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("f"), "x")?;
    env.commit(&repo, "c")?;
    let names: [&[u8]; 6] = [b"..", b"a/../../x", b"/etc/x", b".dbox", b".DBox", b"a\0b"];
    for name in names {
        let id = hostile_version(&env, &repo, name)?;
        let out = env.path("out");
        let r = env.run(&repo, &["restore", "--from", &id, "--to", out.to_str().ok_or("utf8")?])?;
        assert_eq!(r.code, 1, "{name:?}: {r:?}");
        assert!(r.stderr.contains("refused name") || r.stderr.contains("damaged"), "{name:?}: {r:?}");
        let r = env.run(&repo, &["checkout", &id])?;
        assert_eq!(r.code, 1, "{name:?}: {r:?}");
        assert!(!env.path("x").exists() && !Path::new("/etc/x").exists());
        assert_eq!(std::fs::read_to_string(repo.join("f"))?, "x", "the working tree is untouched");
        let _ = std::fs::remove_dir_all(&out);
    }
    // fsck names the damage.
    let r = env.run(&repo, &["fsck"])?;
    assert_eq!(r.code, 1, "{r:?}");
    Ok(())
}

#[test]
fn symlinks_in_the_tree_are_never_written_through() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, repo.join("a"))?;
    let v1 = env.commit(&repo, "a is a link out of the tree")?;
    std::fs::remove_file(repo.join("a"))?;
    write(&repo.join("a/x"), "inside")?;
    let v2 = env.commit(&repo, "a is a folder")?;
    env.ok(&repo, &["checkout", &v1])?;
    assert!(std::fs::symlink_metadata(repo.join("a"))?.file_type().is_symlink());
    env.ok(&repo, &["restore", "--from", &v2])?;
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0, "nothing was written through the link");
    assert_eq!(std::fs::read_to_string(repo.join("a/x"))?, "inside");
    // Restoring just a/x while a is a link: the link is replaced, not followed.
    env.ok(&repo, &["checkout", &v1])?;
    let r = env.run(&repo, &["restore", "--from", &v2, "a/x"])?;
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0, "nothing was written through the link: {r:?}");
    // Into another folder holding a link of its own (in no version).
    let target = env.path("target");
    std::fs::create_dir_all(&target)?;
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere)?;
    std::os::unix::fs::symlink(&elsewhere, target.join("a"))?;
    let r = env.run(&repo, &["restore", "--from", &v2, "--to", target.to_str().ok_or("utf8")?])?;
    assert_eq!(r.code, 1, "a link in no version is not replaced without --force: {r:?}");
    env.ok(&repo, &["restore", "--from", &v2, "--force", "--to", target.to_str().ok_or("utf8")?])?;
    assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0);
    assert_eq!(std::fs::read_to_string(target.join("a/x"))?, "inside");
    Ok(())
}

#[test]
fn a_file_written_during_commit_is_stored_consistently_or_reported() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    let path = repo.join("growing.log");
    write(&path, "")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || -> std::io::Result<u64> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                f.write_all(&[b'a' + (n % 26) as u8; 4096])?;
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let r = env.run(&repo, &["commit", "-m", "racing"])?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().map_err(|_| "writer thread")??;
    if r.code == 0 {
        let out = env.path("out");
        env.ok(&repo, &["restore", "--to", out.to_str().ok_or("utf8")?])?;
        let stored = std::fs::read(out.join("growing.log"))?;
        let now = std::fs::read(&path)?;
        assert!(now.starts_with(&stored), "the stored copy is a state the file really had");
        assert_eq!(stored.len() % 4096, 0, "no half-written block");
    } else {
        assert!(r.stderr.contains("kept changing"), "{r:?}");
    }
    env.ok(&repo, &["fsck"])?;
    Ok(())
}

#[test]
fn files_vanishing_during_commit_are_left_out() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..400 {
        write(&repo.join(format!("d/f{i:03}")), common::bytes(i, 20_000))?;
    }
    let dir = repo.join("d");
    let deleter = std::thread::spawn(move || {
        for i in 0..400 {
            let _ = std::fs::remove_file(dir.join(format!("f{i:03}")));
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let r = env.run(&repo, &["commit", "-m", "vanishing"])?;
    deleter.join().map_err(|_| "deleter thread")?;
    assert_eq!(r.code, 0, "{r:?}");
    env.ok(&repo, &["fsck", "--read-data"])?;
    Ok(())
}

#[test]
fn two_commits_at_once_wait_for_each_other() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..20 {
        write(&repo.join(format!("f{i}")), common::bytes(i, 200_000))?;
    }
    let a =
        env.command(&repo, &["commit", "-m", "a"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let b =
        env.command(&repo, &["commit", "-m", "b"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    for o in [&a, &b] {
        assert!(
            o.status.success()
                || String::from_utf8_lossy(&o.stderr).contains("another dbox process holds the lock"),
            "{o:?}"
        );
    }
    env.ok(&repo, &["fsck", "--read-data"])?;
    let log = env.ok(&repo, &["log", "--json"])?;
    let list: serde_json::Value = serde_json::from_str(&log.stdout)?;
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "the second found nothing to commit");
    Ok(())
}

/// Runs `args` while this process holds the repository's writer lock (as
/// another dbox process would, its pid in the lock file); lets go once the
/// command says it is waiting, and returns what it wrote to stderr.
fn run_behind_the_lock(
    env: &TestEnv,
    repo: &Path,
    args: &[&str],
) -> Result<String, Box<dyn std::error::Error>> {
    let (said, status, err) = common::behind_the_lock(repo, env.command(repo, args))?;
    assert!(said, "{args:?} did not say it waits: {err}");
    assert!(status.success(), "{args:?} failed once the lock was free: {err}");
    Ok(err)
}

#[test]
fn a_command_waiting_for_the_lock_says_who_holds_it() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "one")?;
    env.ok(&repo, &["commit", "-m", "one"])?;
    write(&repo.join("a.txt"), "two")?;
    let me = format!("another dbox process (pid {}) to release the repository lock", std::process::id());
    let err = run_behind_the_lock(&env, &repo, &["commit", "-m", "two"])?;
    assert!(err.contains(&me), "{err}");
    let err = run_behind_the_lock(&env, &repo, &["checkout", "HEAD~1"])?;
    assert!(err.contains(&me), "{err}");
    assert_eq!(std::fs::read_to_string(repo.join("a.txt"))?, "one");
    std::fs::remove_file(repo.join("a.txt"))?;
    let err = run_behind_the_lock(&env, &repo, &["restore", "a.txt"])?;
    assert!(err.contains(&me), "{err}");
    assert_eq!(std::fs::read_to_string(repo.join("a.txt"))?, "one");
    Ok(())
}

#[test]
fn commit_killed_at_random_moments_loses_nothing() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    let rounds: u64 = std::env::var("DBOX_KILL_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let seed: u64 = std::env::var("DBOX_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 100_000
    });
    eprintln!("commit kill test: seed {seed}, {rounds} rounds");
    let mut versions: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut killed = 0;
    // Time one commit of a round's size, so that kills land anywhere from
    // its start to past its end.
    for i in 0..4u64 {
        write(&repo.join(format!("data/f{i}")), common::bytes(i + 1_000_000, 1_000_000))?;
    }
    let t = Instant::now();
    env.commit(&repo, "calibration")?;
    let mut span_us = (t.elapsed().as_micros() as u64 * 3 / 2).max(1_000);
    for r in 0..rounds {
        let round = seed + r;
        for i in 0..4u64 {
            let size = 200_000 + ((round * 7 + i * 13) % 5) as usize * 400_000;
            write(&repo.join(format!("data/f{}", (round + i) % 9)), common::bytes(round * 10 + i, size))?;
        }
        let expected = common::snapshot(&repo)?;
        let mut child = env
            .command(&repo, &["commit", "-m", &format!("round {round}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        // Every tenth commit runs to its end: some versions must exist to
        // restore, and its duration recalibrates the kills (commits grow
        // slower as the repository grows, and a busy machine slows them).
        let started = Instant::now();
        if r % 10 != 9 {
            std::thread::sleep(Duration::from_micros(common::bytes(round, 2)[1] as u64 * span_us / 255));
            let done = child.try_wait()?;
            if done.is_none() {
                child.kill()?;
                killed += 1;
            }
        }
        let out = child.wait_with_output()?;
        if r % 10 == 9 && out.status.success() {
            span_us = (started.elapsed().as_micros() as u64 * 3 / 2).max(1_000);
        }
        if out.status.success() {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if id.len() == 64 {
                versions.push((id, expected));
            }
        }
        let f = env.run(&repo, &["fsck"])?;
        assert_eq!(f.code, 0, "round seed {round}: {f:?}");
    }
    // Every version whose commit returned success restores byte for byte.
    for (i, (id, expected)) in versions.iter().enumerate() {
        let out = env.path(&format!("restored{i}"));
        env.ok(&repo, &["restore", "--from", id, "--to", out.to_str().ok_or("utf8")?])?;
        assert_eq!(&common::snapshot(&out)?, expected, "version {id}");
        std::fs::remove_dir_all(&out)?;
    }
    eprintln!("commit kill test: {killed} of {rounds} commits killed mid-run, {} succeeded", versions.len());
    assert!(killed >= rounds / 4, "most kills must land while a commit runs ({killed})");
    assert!(!versions.is_empty());
    Ok(())
}

/// Restore and checkout keep folder handles open while they write: with
/// few open files allowed (under the 256 some systems give), a tree of
/// hundreds of folders is still written.
#[test]
fn a_tree_of_many_folders_is_written_with_few_open_files_allowed() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..400 {
        let d = repo.join(format!("d{i:03}/e"));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("f"), format!("{i}\n"))?;
    }
    env.commit(&repo, "many folders")?;
    let out = env.path("out");
    let mut c = env.command(&repo, &[]);
    let dbox = c.get_program().to_owned();
    c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" \"$@\"")
        .arg(&dbox)
        .args(["restore", "--to"])
        .arg(&out)
        .current_dir(&repo)
        .env("DBOX_HOME", &env.home);
    let r = c.output()?;
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for i in [0, 199, 399] {
        assert_eq!(std::fs::read_to_string(out.join(format!("d{i:03}/e/f")))?, format!("{i}\n"));
    }
    Ok(())
}
