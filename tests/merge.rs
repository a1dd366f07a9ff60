//! `dbox merge` on the real binary: one-sided changes, line-by-line merges,
//! conflict copies, kept edits, fast-forward, up to date, and refusals.

mod common;

use std::path::Path;

use common::{write, TestEnv, TestResult};

/// Two heads from `v1`: `ours` is applied and committed after checking out
/// `v1` (so it ends as HEAD), `theirs` before. Returns (v1, theirs, ours).
fn fork(
    env: &TestEnv,
    repo: &Path,
    theirs: impl FnOnce(&Path) -> std::io::Result<()>,
    ours: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(String, String, String), Box<dyn std::error::Error>> {
    let v1 = env.commit(repo, "base")?;
    theirs(repo)?;
    let v2 = env.commit(repo, "theirs")?;
    env.ok(repo, &["checkout", &v1])?;
    ours(repo)?;
    let v3 = env.commit(repo, "ours")?;
    Ok((v1, v2, v3))
}

fn read(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    Ok(std::fs::read_to_string(path)?)
}

fn json(run: &common::Run) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&run.stdout)?)
}

fn short(id: &str) -> &str {
    &id[..12]
}

const TEN: &str = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";

#[test]
fn one_sided_changes_are_taken_and_the_merge_has_two_parents() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "a")?;
    write(&repo.join("b.txt"), "b")?;
    write(&repo.join("gone.txt"), "g")?;
    write(&repo.join("dir/c.bin"), common::bytes(3, 50_000))?;
    let (_, v2, v3) = fork(
        &env,
        &repo,
        |r| {
            write(&r.join("a.txt"), "a from theirs")?;
            write(&r.join("theirs-new.txt"), "t")?;
            std::fs::remove_file(r.join("gone.txt"))
        },
        |r| {
            write(&r.join("b.txt"), "b from ours")?;
            write(&r.join("dir/ours-new.bin"), common::bytes(4, 70_000))
        },
    )?;
    let m = env.ok(&repo, &["merge"])?;
    assert!(m.stdout.contains(&format!("Merged {} into {}", short(&v2), short(&v3))), "{m:?}");
    assert_eq!(read(&repo.join("a.txt"))?, "a from theirs");
    assert_eq!(read(&repo.join("b.txt"))?, "b from ours");
    assert_eq!(read(&repo.join("theirs-new.txt"))?, "t");
    assert!(!repo.join("gone.txt").exists(), "a delete on one side is taken");
    assert_eq!(std::fs::read(repo.join("dir/ours-new.bin"))?, common::bytes(4, 70_000));
    assert_eq!(std::fs::read(repo.join("dir/c.bin"))?, common::bytes(3, 50_000));
    assert!(!m.stdout.contains("conflict"), "{m:?}");

    let show = json(&env.ok(&repo, &["show", "HEAD", "--json"])?)?;
    assert_eq!(show["parents"], serde_json::json!([v3, v2]), "parents are [HEAD, other]: {show}");
    assert_eq!(show["message"], format!("Merge {} into {}", short(&v2), short(&v3)));
    assert!(env.ok(&repo, &["status"])?.stdout.contains("Nothing changed"));
    let st = json(&env.ok(&repo, &["status", "--json"])?)?;
    assert_eq!(st["other_heads"], serde_json::json!([]), "one head after the merge: {st}");
    let fsck = env.ok(&repo, &["fsck"])?;
    assert_eq!(fsck.code, 0, "{fsck:?}");
    Ok(())
}

#[test]
fn both_sides_changed_keeps_head_and_a_conflict_copy() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("notes.txt"), "base\n")?;
    write(&repo.join("sub/Makefile"), "all:\n")?;
    write(&repo.join("pic.jpg"), common::bytes(1, 1000))?;
    write(&repo.join("same.txt"), "s")?;
    let (_, v2, _) = fork(
        &env,
        &repo,
        |r| {
            write(&r.join("notes.txt"), "theirs\n")?;
            write(&r.join("sub/Makefile"), "all: theirs\n")?;
            write(&r.join("pic.jpg"), common::bytes(2, 1000))?;
            write(&r.join("same.txt"), "both")
        },
        |r| {
            write(&r.join("notes.txt"), "ours\n")?;
            write(&r.join("sub/Makefile"), "all: ours\n")?;
            write(&r.join("pic.jpg"), common::bytes(3, 1000))?;
            write(&r.join("same.txt"), "both")
        },
    )?;
    let m = env.ok(&repo, &["merge"])?;
    let s = short(&v2);
    assert_eq!(read(&repo.join("notes.txt"))?, "ours\n");
    assert_eq!(read(&repo.join(format!("notes.conflict-{s}.txt")))?, "theirs\n");
    assert_eq!(read(&repo.join("sub/Makefile"))?, "all: ours\n");
    assert_eq!(read(&repo.join(format!("sub/Makefile.conflict-{s}")))?, "all: theirs\n");
    assert_eq!(std::fs::read(repo.join("pic.jpg"))?, common::bytes(3, 1000));
    assert_eq!(std::fs::read(repo.join(format!("pic.conflict-{s}.jpg")))?, common::bytes(2, 1000));
    assert_eq!(read(&repo.join("same.txt"))?, "both", "the same change is taken once");
    assert!(!repo.join(format!("same.conflict-{s}.txt")).exists());
    assert!(
        m.stdout.contains(&format!(
            "conflict: notes.txt kept; the other head's version is in notes.conflict-{s}.txt"
        )),
        "{m:?}"
    );
    assert!(env.ok(&repo, &["status"])?.stdout.contains("Nothing changed"));
    Ok(())
}

#[test]
fn a_delete_against_an_edit_keeps_the_edit() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("ours-edits.txt"), "1")?;
    write(&repo.join("theirs-edit.txt"), "1")?;
    write(&repo.join("folder/deep.txt"), "1")?;
    write(&repo.join("folder/other.txt"), "1")?;
    fork(
        &env,
        &repo,
        |r| {
            std::fs::remove_file(r.join("ours-edits.txt"))?;
            write(&r.join("theirs-edit.txt"), "theirs")?;
            std::fs::remove_dir_all(r.join("folder"))
        },
        |r| {
            write(&r.join("ours-edits.txt"), "ours")?;
            std::fs::remove_file(r.join("theirs-edit.txt"))?;
            write(&r.join("folder/deep.txt"), "ours")
        },
    )?;
    let m = env.ok(&repo, &["merge", "--json"])?;
    let j = json(&m)?;
    assert_eq!(read(&repo.join("ours-edits.txt"))?, "ours");
    assert_eq!(read(&repo.join("theirs-edit.txt"))?, "theirs");
    assert_eq!(read(&repo.join("folder/deep.txt"))?, "ours", "an edit in a deleted folder keeps its folder");
    assert!(!repo.join("folder/other.txt").exists(), "the unedited file follows the delete");
    let kept: Vec<(String, String)> = j["kept_edits"]
        .as_array()
        .ok_or("kept_edits")?
        .iter()
        .map(|k| (k["path"].as_str().unwrap_or("").into(), k["deleted_in"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("folder/deep.txt".into(), "other".into()),
            ("ours-edits.txt".into(), "other".into()),
            ("theirs-edit.txt".into(), "head".into()),
        ],
        "{j}"
    );
    let text = env.ok(&repo, &["log", "-n", "1"])?;
    assert!(text.stdout.contains("Merge"), "{text:?}");
    Ok(())
}

#[test]
fn text_edited_in_disjoint_places_is_merged_line_by_line() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("plan.md"), TEN)?;
    let (_, v2, _) = fork(
        &env,
        &repo,
        |r| write(&r.join("plan.md"), TEN.replace("9\n", "nine (theirs)\n")),
        |r| write(&r.join("plan.md"), TEN.replace("2\n", "two (ours)\n")),
    )?;
    let m = env.ok(&repo, &["merge"])?;
    assert_eq!(
        read(&repo.join("plan.md"))?,
        TEN.replace("2\n", "two (ours)\n").replace("9\n", "nine (theirs)\n")
    );
    assert!(m.stdout.contains("merged line by line: plan.md"), "{m:?}");
    assert!(!repo.join(format!("plan.conflict-{}.md", short(&v2))).exists());
    Ok(())
}

#[test]
fn overlapping_text_edits_get_a_conflict_copy() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("plan.md"), TEN)?;
    let theirs = TEN.replace("5\n", "five (theirs)\n");
    let ours = TEN.replace("5\n", "five (ours)\n").replace("6\n", "six (ours)\n");
    let (_, v2, _) =
        fork(&env, &repo, |r| write(&r.join("plan.md"), &theirs), |r| write(&r.join("plan.md"), &ours))?;
    let j = json(&env.ok(&repo, &["merge", "--json"])?)?;
    let copy = format!("plan.conflict-{}.md", short(&v2));
    assert_eq!(read(&repo.join("plan.md"))?, ours);
    assert_eq!(read(&repo.join(&copy))?, theirs);
    assert_eq!(j["merged_lines"], serde_json::json!([]));
    assert_eq!(j["conflicts"], serde_json::json!([{"path": "plan.md", "copy": copy, "from": v2}]));
    Ok(())
}

#[test]
fn fast_forward_and_already_up_to_date() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "1")?;
    let v1 = env.commit(&repo, "one")?;
    write(&repo.join("a.txt"), "2")?;
    write(&repo.join("b.txt"), "b")?;
    let v2 = env.commit(&repo, "two")?;

    // HEAD is the only head.
    let r = env.run(&repo, &["merge"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nothing to merge"), "{r:?}");

    // An ancestor of HEAD.
    let r = env.ok(&repo, &["merge", &v1])?;
    assert!(r.stdout.contains("Already up to date"), "{r:?}");
    let j = json(&env.ok(&repo, &["merge", &v1, "--json"])?)?;
    assert_eq!(j["result"], "up-to-date");
    assert_eq!(j["version"], serde_json::Value::String(v2.clone()));

    // HEAD behind the only head: a fast-forward, no new version.
    env.ok(&repo, &["checkout", &v1])?;
    let r = env.ok(&repo, &["merge", "--json"])?;
    let j = json(&r)?;
    assert_eq!(j["result"], "fast-forward", "{j}");
    assert_eq!(j["version"], serde_json::Value::String(v2.clone()));
    assert_eq!(read(&repo.join("a.txt"))?, "2");
    assert_eq!(read(&repo.join("b.txt"))?, "b");
    let log = json(&env.ok(&repo, &["log", "--json"])?)?;
    assert_eq!(log.as_array().map(|a| a.len()), Some(2), "no merge version: {log}");
    let st = json(&env.ok(&repo, &["status", "--json"])?)?;
    assert_eq!(st["head"], serde_json::Value::String(v2));
    env.ok(&repo, &["checkout", &v1])?;
    let r = env.ok(&repo, &["merge"])?;
    assert!(r.stdout.contains("Fast-forward"), "{r:?}");
    Ok(())
}

#[test]
fn a_dirty_working_tree_is_refused_and_left_alone() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "a")?;
    fork(&env, &repo, |r| write(&r.join("a.txt"), "theirs"), |r| write(&r.join("b.txt"), "ours"))?;
    write(&repo.join("b.txt"), "unsaved edit")?;
    write(&repo.join("new.txt"), "never committed")?;
    let before = common::snapshot(&repo)?;
    let r = env.run(&repo, &["merge"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("uncommitted change(s): b.txt, new.txt"), "{r:?}");
    assert!(r.stderr.contains("hint: commit them first"), "{r:?}");
    assert_eq!(common::snapshot(&repo)?, before, "nothing touched");
    let log = json(&env.ok(&repo, &["log", "--json"])?)?;
    assert_eq!(log.as_array().map(|a| a.len()), Some(3), "no merge version made: {log}");
    // Once committed, the merge goes ahead.
    env.commit(&repo, "save")?;
    env.ok(&repo, &["merge"])?;
    assert_eq!(read(&repo.join("a.txt"))?, "theirs");
    assert_eq!(read(&repo.join("b.txt"))?, "unsaved edit");
    Ok(())
}

#[test]
fn several_other_heads_must_be_named() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("a.txt"), "a")?;
    let v1 = env.commit(&repo, "one")?;
    write(&repo.join("b.txt"), "b")?;
    let v2 = env.commit(&repo, "two")?;
    env.ok(&repo, &["checkout", &v1])?;
    write(&repo.join("c.txt"), "c")?;
    let v3 = env.commit(&repo, "three")?;
    env.ok(&repo, &["checkout", &v1])?;
    write(&repo.join("d.txt"), "d")?;
    env.commit(&repo, "four")?;
    let r = env.run(&repo, &["merge"])?;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("2 other heads") && r.stderr.contains(short(&v2)) && r.stderr.contains(short(&v3)),
        "{r:?}"
    );
    assert!(r.stderr.contains("dbox merge VERSION"), "{r:?}");
    // Named, one at a time.
    env.ok(&repo, &["merge", &v2[..8]])?;
    let j = json(&env.ok(&repo, &["merge", &v3, "-m", "all together", "--json"])?)?;
    assert_eq!(j["result"], "merged");
    assert_eq!(j["message"], "all together");
    assert_eq!(j["other"], serde_json::Value::String(v3.clone()));
    assert_eq!(j["base"], serde_json::Value::String(v1));
    for f in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        assert!(repo.join(f).exists(), "{f}");
    }
    let changes: Vec<&str> =
        j["changes"].as_array().ok_or("changes")?.iter().filter_map(|c| c["path"].as_str()).collect();
    assert_eq!(changes, vec!["c.txt"], "{j}");
    let g = env.ok(&repo, &["log", "--graph"])?;
    assert!(g.stdout.lines().next().is_some_and(|l| l.contains("all together")), "{g:?}");
    Ok(())
}

#[test]
fn merge_json_reports_everything() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("t.txt"), TEN)?;
    write(&repo.join("c.txt"), "c")?;
    write(&repo.join("k.txt"), "k")?;
    let (v1, v2, v3) = fork(
        &env,
        &repo,
        |r| {
            write(&r.join("t.txt"), TEN.replace("1\n", "one\n"))?;
            write(&r.join("c.txt"), "c theirs")?;
            std::fs::remove_file(r.join("k.txt"))?;
            write(&r.join("new.txt"), "n")
        },
        |r| {
            write(&r.join("t.txt"), TEN.replace("10\n", "ten\n"))?;
            write(&r.join("c.txt"), "c ours")?;
            write(&r.join("k.txt"), "k ours")
        },
    )?;
    let j = json(&env.ok(&repo, &["merge", "--json"])?)?;
    assert_eq!(j["result"], "merged");
    assert_eq!(j["head"], serde_json::Value::String(v3.clone()));
    assert_eq!(j["other"], serde_json::Value::String(v2.clone()));
    assert_eq!(j["base"], serde_json::Value::String(v1));
    assert_eq!(j["merged_lines"], serde_json::json!(["t.txt"]));
    let copy = format!("c.conflict-{}.txt", short(&v2));
    assert_eq!(j["conflicts"], serde_json::json!([{"path": "c.txt", "copy": copy, "from": v2}]));
    assert_eq!(j["kept_edits"], serde_json::json!([{"path": "k.txt", "deleted_in": "other"}]));
    assert_eq!(j["warnings"], serde_json::json!([]));
    let changes: Vec<(String, String)> = j["changes"]
        .as_array()
        .ok_or("changes")?
        .iter()
        .map(|c| (c["path"].as_str().unwrap_or("").into(), c["change"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(
        changes,
        vec![
            (copy.clone(), "added".into()),
            ("new.txt".into(), "added".into()),
            ("t.txt".into(), "modified".into()),
        ]
    );
    let version = j["version"].as_str().ok_or("version")?;
    let show = json(&env.ok(&repo, &["show", version, "--json"])?)?;
    assert_eq!(show["parents"], serde_json::json!([v3, v2]));
    let st = json(&env.ok(&repo, &["status", "--json"])?)?;
    assert_eq!(st["head"], serde_json::Value::String(version.to_string()));
    assert_eq!(st["changes"], serde_json::json!([]));
    Ok(())
}

#[test]
fn a_folder_against_a_file_keeps_both() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("x"), "file")?;
    let (_, v2, _) = fork(
        &env,
        &repo,
        |r| {
            std::fs::remove_file(r.join("x"))?;
            write(&r.join("x/inside.txt"), "in a folder")
        },
        |r| write(&r.join("x"), "file edited"),
    )?;
    let j = json(&env.ok(&repo, &["merge", "--json"])?)?;
    assert_eq!(read(&repo.join("x/inside.txt"))?, "in a folder");
    let copy = j["conflicts"][0]["copy"].as_str().ok_or("copy")?;
    assert_eq!(read(&repo.join(copy))?, "file edited", "{j}");
    assert_ne!(j["conflicts"][0]["from"], serde_json::Value::String(v2), "the copy holds HEAD's file: {j}");
    assert!(env.ok(&repo, &["status"])?.stdout.contains("Nothing changed"));
    Ok(())
}
