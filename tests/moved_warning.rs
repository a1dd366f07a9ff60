//! A restore or checkout in place warns "folder X was moved, removed or
//! replaced" only when someone else moved a folder while it wrote, never
//! for what the command itself deletes or replaces.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::{write, Run, TestEnv, TestResult};

const MOVED: &str = "was moved, removed or replaced";

fn no_warning(r: &Run) {
    assert!(!r.stderr.contains(MOVED), "a false warning: {r:?}");
}

/// Runs dbox, requires success and no moved-folder warning.
fn clean(env: &TestEnv, dir: &Path, args: &[&str]) -> Result<Run, Box<dyn std::error::Error>> {
    let r = env.ok(dir, args)?;
    no_warning(&r);
    Ok(r)
}

#[test]
fn checkout_that_deletes_nested_folders_and_makes_them_again() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("keep"), "k")?;
    let v0 = env.commit(&repo, "bare")?;
    for i in 0..40 {
        write(&repo.join(format!("a/b{i}/c/d/f")), format!("{i}"))?;
        write(&repo.join(format!("a/b{i}/g")), "g")?;
    }
    let v1 = env.commit(&repo, "deep")?;
    clean(&env, &repo, &["checkout", &v0])?;
    assert!(!repo.join("a").exists());
    clean(&env, &repo, &["checkout", &v1])?;
    assert!(repo.join("a/b7/c/d/f").exists());
    clean(&env, &repo, &["checkout", &v0])?;
    Ok(())
}

#[test]
fn checkout_where_folders_become_files_and_links_and_back() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..10 {
        write(&repo.join(format!("x{i}/y/z/f")), "f")?;
        write(&repo.join(format!("x{i}/y/g")), "g")?;
        write(&repo.join(format!("x{i}/h")), "h")?;
    }
    let dirs = env.commit(&repo, "folders")?;
    for i in 0..10 {
        std::fs::remove_dir_all(repo.join(format!("x{i}")))?;
        if i % 2 == 0 {
            write(&repo.join(format!("x{i}")), "now a file")?;
        } else {
            symlink("elsewhere", repo.join(format!("x{i}")))?;
        }
    }
    let files = env.commit(&repo, "files")?;
    // Inner folders become files too: the outer one stays.
    clean(&env, &repo, &["checkout", &dirs])?;
    for i in 0..10 {
        std::fs::remove_dir_all(repo.join(format!("x{i}/y")))?;
        write(&repo.join(format!("x{i}/y")), "y file")?;
    }
    let inner = env.commit(&repo, "inner")?;
    for v in [&files, &dirs, &inner, &files, &inner, &dirs] {
        clean(&env, &repo, &["checkout", v])?;
    }
    assert_eq!(std::fs::read(repo.join("x3/y/z/f"))?, b"f");
    Ok(())
}

#[test]
fn restore_of_one_deep_file_and_of_a_folder_that_a_version_lacks() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("p/q/r/s/t/file"), "one")?;
    write(&repo.join("p/q/other/file"), "o")?;
    let v1 = env.commit(&repo, "one")?;
    write(&repo.join("p/q/r/s/t/file"), "two")?;
    std::fs::remove_dir_all(repo.join("p/q/other"))?;
    env.commit(&repo, "two")?;
    clean(&env, &repo, &["restore", "--from", &v1, "p/q/r/s/t/file"])?;
    assert_eq!(std::fs::read(repo.join("p/q/r/s/t/file"))?, b"one");
    clean(&env, &repo, &["restore", "--from", &v1, "p/q/other"])?;
    assert!(repo.join("p/q/other/file").exists());
    // Back to HEAD (which lacks `other`: a restore keeps it, not being HEAD's).
    clean(&env, &repo, &["restore", "p"])?;
    clean(&env, &repo, &["restore", "--from", &v1])?;
    clean(&env, &repo, &["restore"])?;
    Ok(())
}

#[test]
fn restore_to_a_folder_and_through_a_linked_folder() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..30 {
        write(&repo.join(format!("d{i}/e/f")), "f")?;
    }
    let v = env.commit(&repo, "v")?;
    let out = env.path("out");
    clean(&env, &repo, &["restore", "--from", &v, "--to", out.to_str().ok_or("utf-8")?])?;
    // Again into the same folder, now full.
    clean(&env, &repo, &["restore", "--from", &v, "--to", out.to_str().ok_or("utf-8")?])?;
    // Through a link to a folder.
    std::fs::create_dir(env.path("real"))?;
    symlink(env.path("real"), env.path("link"))?;
    let via = env.path("link/copy");
    clean(&env, &repo, &["restore", "--from", &v, "--to", via.to_str().ok_or("utf-8")?])?;
    assert!(env.path("real/copy/d5/e/f").exists());
    // Into a folder inside the working tree.
    clean(&env, &repo, &["restore", "--from", &v, "--to", "inside"])?;
    // The repository reached through a link.
    symlink(&repo, env.path("rlink"))?;
    write(&repo.join("d1/e/f"), "changed")?;
    env.commit(&repo, "changed")?;
    clean(&env, &env.path("rlink"), &["checkout", &v])?;
    clean(&env, &env.path("rlink/d3"), &["restore", "e/f"])?;
    Ok(())
}

#[test]
fn ignored_folders_and_a_nested_repository_around_a_checkout() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join(".dboxignore"), "build/\n*.o\n")?;
    write(&repo.join("src/a/main.c"), "c")?;
    write(&repo.join("src/b/lib.c"), "c")?;
    let v1 = env.commit(&repo, "one")?;
    std::fs::remove_dir_all(repo.join("src/a"))?;
    let v2 = env.commit(&repo, "two")?;
    clean(&env, &repo, &["checkout", &v1])?;
    // Ignored files in a folder the next version lacks: it is kept.
    write(&repo.join("src/a/main.o"), "obj")?;
    write(&repo.join("src/a/build/x"), "x")?;
    let r = clean(&env, &repo, &["checkout", &v2])?;
    assert!(repo.join("src/a/main.o").exists(), "{r:?}");
    clean(&env, &repo, &["checkout", &v1])?;
    // A nested repository beside the files.
    let nested = env.repo("nested")?;
    std::fs::rename(&nested, repo.join("src/nested"))?;
    write(&repo.join("src/nested/n"), "n")?;
    clean(&env, &repo, &["checkout", &v2])?;
    clean(&env, &repo, &["checkout", &v1])?;
    // A folder holding ignored files replaced by a file, with --force.
    std::fs::remove_dir_all(repo.join("src/a"))?;
    write(&repo.join("src/a"), "a file")?;
    let v3 = env.commit(&repo, "file")?;
    clean(&env, &repo, &["checkout", &v1])?;
    write(&repo.join("src/a/build/deep/x.o"), "x")?;
    let r = env.run(&repo, &["checkout", &v3])?;
    no_warning(&r);
    clean(&env, &repo, &["checkout", "--force", &v3])?;
    assert_eq!(std::fs::read(repo.join("src/a"))?, b"a file");
    Ok(())
}

#[test]
fn many_folders_deleted_and_replaced_at_once() -> TestResult {
    // More folders than handles kept (64) and than `moved` looks at in one
    // thread (1,024).
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    for i in 0..1200 {
        write(&repo.join(format!("m{:02}/n{i}/f", i % 50)), "f")?;
    }
    let many = env.commit(&repo, "many")?;
    for i in 0..1200 {
        if i % 3 == 0 {
            std::fs::remove_dir_all(repo.join(format!("m{:02}/n{i}", i % 50)))?;
            write(&repo.join(format!("m{:02}/n{i}", i % 50)), "file")?;
        } else if i % 3 == 1 {
            std::fs::remove_dir_all(repo.join(format!("m{:02}/n{i}", i % 50)))?;
        }
    }
    let fewer = env.commit(&repo, "fewer")?;
    for v in [&many, &fewer, &many] {
        clean(&env, &repo, &["checkout", v])?;
    }
    clean(&env, &repo, &["restore", "--from", &fewer])?;
    clean(&env, &repo, &["restore", "--from", &many, "m07"])?;
    Ok(())
}

#[test]
fn restore_force_over_a_folder_of_unsaved_files() -> TestResult {
    let env = TestEnv::new()?;
    let repo = env.repo("r")?;
    write(&repo.join("x"), "file")?;
    let v = env.commit(&repo, "x")?;
    std::fs::remove_file(repo.join("x"))?;
    write(&repo.join("x/new/unsaved"), "mine")?;
    write(&repo.join("y/z"), "mine too")?;
    let r = env.run(&repo, &["restore", "--from", &v])?;
    no_warning(&r);
    clean(&env, &repo, &["restore", "--force", "--from", &v])?;
    assert_eq!(std::fs::read(repo.join("x"))?, b"file");
    Ok(())
}
