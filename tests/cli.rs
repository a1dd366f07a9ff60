//! Everyday use of the real binary: init, commit, status, log, show, ls,
//! diff, restore, checkout, fsck, completions, man pages.

mod common;

use common::{write, TestEnv, TestResult};

#[test]
fn init_commit_status_log() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "one\n")?;
    write(&repo.join("dir/b.bin"), common::bytes(1, 100_000))?;
    let st = env.ok(&repo, &["status"])?;
    assert!(st.stdout.contains("No version yet") && st.stdout.contains("A a.txt"), "{st:?}");
    let v1 = env.commit(&repo, "first")?;
    assert_eq!(v1.len(), 64, "commit prints the full id: {v1}");
    assert!(env.ok(&repo, &["status"])?.stdout.contains("Nothing changed"));

    let again = env.ok(&repo, &["commit"])?;
    assert!(again.stdout.contains("Nothing changed"), "{again:?}");

    write(&repo.join("a.txt"), "two\n")?;
    std::fs::remove_file(repo.join("dir/b.bin"))?;
    write(&repo.join("c.txt"), "new\n")?;
    let st = env.ok(&repo, &["status", "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&st.stdout)?;
    let changes: Vec<(String, String)> = json["changes"]
        .as_array()
        .ok_or("changes")?
        .iter()
        .map(|c| {
            (c["path"].as_str().unwrap_or("").to_string(), c["change"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert!(changes.contains(&("a.txt".into(), "modified".into())), "{changes:?}");
    assert!(changes.contains(&("dir/b.bin".into(), "deleted".into())), "{changes:?}");
    assert!(changes.contains(&("c.txt".into(), "added".into())), "{changes:?}");

    let c = env.ok(&repo, &["commit"])?;
    assert!(c.stderr.contains("1 modified, 1 added, 1 deleted"), "default message: {c:?}");
    let log = env.ok(&repo, &["log", "--json"])?;
    let log: serde_json::Value = serde_json::from_str(&log.stdout)?;
    let list = log.as_array().ok_or("array")?;
    assert_eq!(list.len(), 2);
    for field in ["id", "parents", "author", "time", "message"] {
        assert!(list[0].get(field).is_some(), "log --json has {field}");
    }
    assert_eq!(list[0]["parents"][0], serde_json::Value::String(v1.clone()));
    assert_eq!(list[1]["message"], "first");
    assert_eq!(list[0]["message"], "1 modified, 1 added, 1 deleted");

    // -C and references.
    let short = &v1[..8];
    let show = env.ok(env.tmp.path(), &["-C", "r", "show", short, "--json"])?;
    let show: serde_json::Value = serde_json::from_str(&show.stdout)?;
    assert_eq!(show["id"], serde_json::Value::String(v1.clone()));
    assert_eq!(
        env.ok(&repo, &["show", "HEAD~1", "--json"])?.stdout,
        env.ok(&repo, &["show", &v1, "--json"])?.stdout
    );
    let bad = env.run(&repo, &["show", "HEAD~5"])?;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("unknown version"), "{bad:?}");
    let bad = env.run(&repo, &["show", "zz"])?;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("invalid version reference"), "{bad:?}");
    Ok(())
}

#[test]
fn init_refuses_inside_a_repository_and_commands_outside_one() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    std::fs::create_dir_all(repo.join("sub"))?;
    let r = env.run(&repo.join("sub"), &["init"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already inside the dbox repository"), "{r:?}");
    let outside = env.path("plain");
    std::fs::create_dir_all(&outside)?;
    let r = env.run(&outside, &["status"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not inside a dbox repository") && r.stderr.contains("dbox init"), "{r:?}");
    let r = env.run(&outside, &["frobnicate"])?;
    assert_eq!(r.code, 2, "usage errors exit 2: {r:?}");
    Ok(())
}

#[test]
fn log_graph_path_history_ls_and_diff() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("notes/plan.md"), "a\nb\nc\n")?;
    write(&repo.join("other.txt"), "x")?;
    let v1 = env.commit(&repo, "one")?;
    write(&repo.join("other.txt"), "y")?;
    let v2 = env.commit(&repo, "two")?;
    write(&repo.join("notes/plan.md"), "a\nB\nc\n")?;
    let v3 = env.commit(&repo, "three")?;
    let hist = env.ok(&repo, &["log", "notes/plan.md"])?;
    assert!(hist.stdout.contains(&v3[..12]) && hist.stdout.contains(&v1[..12]), "{hist:?}");
    assert!(!hist.stdout.contains(&v2[..12]), "v2 did not touch the plan: {hist:?}");
    let hist = env.ok(&repo.join("notes"), &["log", "plan.md", "-n", "1"])?;
    assert_eq!(hist.stdout.lines().count(), 1);

    // A fork.
    env.ok(&repo, &["checkout", &v1])?;
    write(&repo.join("fork.txt"), "f")?;
    let v4 = env.commit(&repo, "fork")?;
    let g = env.ok(&repo, &["log", "--graph"])?;
    let lines: Vec<&str> = g.stdout.lines().collect();
    assert!(lines[0].starts_with("* ") && lines[0].contains(&v4[..12]), "{g:?}");
    assert!(g.stdout.contains("|/"), "the fork is drawn: {g:?}");
    let st = env.ok(&repo, &["status"])?;
    assert!(st.stdout.contains("1 other head(s)"), "{st:?}");

    let ls = env.ok(&repo, &["ls", &v3, "notes", "--json"])?;
    let ls: serde_json::Value = serde_json::from_str(&ls.stdout)?;
    assert_eq!(ls.as_array().map(|a| a.len()), Some(2), "notes and notes/plan.md: {ls}");
    let diff = env.ok(&repo, &["diff", &v1, &v3, "--", "notes/plan.md"])?;
    assert!(diff.stdout.contains("-b\n+B\n"), "{diff:?}");
    let diff = env.ok(&repo, &["diff", &v1, &v3, "--stat"])?;
    assert!(diff.stdout.contains("M notes/plan.md") && diff.stdout.contains("M other.txt"), "{diff:?}");
    write(&repo.join("fork.txt"), "changed")?;
    let diff = env.ok(&repo, &["diff"])?;
    assert_eq!(diff.stdout.trim(), "M fork.txt  1 -> 7 bytes");
    Ok(())
}

#[test]
fn restore_refuses_to_lose_unsaved_changes() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("f.txt"), "v1")?;
    env.commit(&repo, "1")?;
    write(&repo.join("f.txt"), "v2")?;
    env.commit(&repo, "2")?;
    write(&repo.join("f.txt"), "unsaved work")?;
    write(&repo.join("untracked.txt"), "keep me")?;
    let r = env.run(&repo, &["restore", "--from", "HEAD~1"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("f.txt") && r.stderr.contains("--force"), "{r:?}");
    assert_eq!(std::fs::read_to_string(repo.join("f.txt"))?, "unsaved work", "nothing was written");
    let r = env.run(&repo, &["checkout", "HEAD~1"])?;
    assert_eq!(r.code, 1, "{r:?}");
    env.ok(&repo, &["restore", "--from", "HEAD~1", "--force", "f.txt"])?;
    assert_eq!(std::fs::read_to_string(repo.join("f.txt"))?, "v1");
    assert_eq!(std::fs::read_to_string(repo.join("untracked.txt"))?, "keep me");
    // HEAD did not move: the restored file shows as modified.
    assert!(env.ok(&repo, &["status"])?.stdout.contains("M f.txt"));
    // Clean now relative to a version: restoring HEAD is allowed.
    env.ok(&repo, &["restore"])?;
    assert_eq!(std::fs::read_to_string(repo.join("f.txt"))?, "v2");
    Ok(())
}

#[test]
fn restore_brings_back_bits_links_empty_folders_times_and_odd_names() -> TestResult {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("run.sh"), "#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("run.sh", repo.join("link"))?;
    std::os::unix::fs::symlink("/nonexistent/outside", repo.join("dangling"))?;
    std::fs::create_dir_all(repo.join("empty/inner"))?;
    let odd = repo.join(std::ffi::OsStr::from_bytes(b"caf\xe9 \xff.txt"));
    write(&odd, "latin-1 name")?;
    write(&repo.join("big.bin"), common::bytes(3, 3 << 20))?;
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(repo.join("big.bin"))?.set_modified(old)?;
    env.commit(&repo, "all kinds")?;
    let out = env.path("out");
    env.ok(&repo, &["restore", "--to", out.to_str().ok_or("utf8")?])?;
    assert_eq!(common::snapshot(&repo)?, common::snapshot(&out)?);
    assert_eq!(std::fs::metadata(out.join("big.bin"))?.modified()?, old);
    // The working tree too, after deleting everything.
    for e in std::fs::read_dir(&repo)? {
        let p = e?.path();
        if p.file_name() != Some(std::ffi::OsStr::new(".dbox")) {
            if std::fs::symlink_metadata(&p)?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    env.ok(&repo, &["restore"])?;
    assert_eq!(common::snapshot(&repo)?, common::snapshot(&out)?);
    assert!(env.ok(&repo, &["status"])?.stdout.contains("Nothing changed"));
    Ok(())
}

#[test]
fn dboxignore_is_honoured() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join(".dboxignore"), "*.tmp\nbuild/\n")?;
    write(&repo.join("keep.txt"), "k")?;
    write(&repo.join("x.tmp"), "t")?;
    write(&repo.join("build/out.o"), "o")?;
    write(&repo.join("sub/.dboxignore"), "secret\n")?;
    write(&repo.join("sub/secret"), "s")?;
    write(&repo.join("sub/open"), "o")?;
    env.commit(&repo, "c")?;
    let ls = env.ok(&repo, &["ls"])?.stdout;
    assert!(ls.contains("keep.txt") && ls.contains("sub/open") && ls.contains(".dboxignore"), "{ls}");
    assert!(!ls.contains("x.tmp") && !ls.contains("build") && !ls.contains("secret"), "{ls}");
    Ok(())
}

#[test]
fn fsck_passes_then_finds_damage() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("f"), common::bytes(9, 50_000))?;
    env.commit(&repo, "c")?;
    let r = env.ok(&repo, &["fsck", "--read-data", "--json"])?;
    let j: serde_json::Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(j["ok"], true);
    let packs = repo.join(".dbox/store/packs");
    for e in std::fs::read_dir(&packs)? {
        let p = e?.path();
        let mut b = std::fs::read(&p)?;
        b[100] ^= 1;
        std::fs::write(&p, b)?;
    }
    let r = env.run(&repo, &["fsck"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("problem:"), "{r:?}");
    Ok(())
}

#[test]
fn completions_and_man_pages_are_current() -> TestResult {
    let env = TestEnv::new()?;
    let r = env.ok(env.tmp.path(), &["completions", "bash"])?;
    assert!(r.stdout.contains("dbox") && r.stdout.contains("restore"));
    let dir = env.path("man");
    env.ok(env.tmp.path(), &["generate-manpages", dir.to_str().ok_or("utf8")?])?;
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut stale = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let want = std::fs::read(e.path())?;
        if std::fs::read(committed.join(e.file_name())).ok().as_ref() != Some(&want) {
            stale.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(
        stale.is_empty(),
        "man/ is stale for {stale:?}: run `cargo run -- generate-manpages man` and commit the result"
    );
    Ok(())
}
