//! `dbox demo`: the main job on a built-in example, narrated.

use std::path::Path;

use crate::error::CommandError;
use crate::ui::Ui;

/// Run a narrated tour of dbox in a temporary folder
///
/// Makes a repository of notes and photos in a temporary folder, commits,
/// edits, commits again, shows the history as a graph, restores an old
/// version of a file, makes a second line of work, and checks integrity.
/// Nothing outside the temporary folder is touched (it uses its own device
/// key), and the folder is removed at the end unless --keep.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temporary folder and print its path
    #[arg(long)]
    pub keep: bool,
}

fn step(ui: &mut Ui, text: &str, command: &str) -> Result<(), CommandError> {
    ui.line("")?;
    ui.line(format!("# {text}"))?;
    ui.line(format!("$ dbox {command}"))?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CommandError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    use super::{checkout, commit, fsck, log, restore, status};
    let tmp = std::env::temp_dir().join(format!("dbox-demo-{}", std::process::id()));
    let home = tmp.join("home");
    let repo = tmp.join("notes-and-photos");
    std::fs::create_dir_all(&home)?;
    // The demo signs with a device key of its own, not the user's.
    std::env::set_var("DBOX_HOME", &home);
    ui.line(format!("dbox demo: working in {}", tmp.display()))?;

    write(&repo.join("notes/plan.md"), b"# Plan\n\n- buy film\n- call Ana\n")?;
    write(&repo.join("photos/beach.raw"), &pseudo_random(1, 3 << 20))?;
    std::fs::create_dir_all(repo.join("inbox"))?;
    std::os::unix::fs::symlink("notes/plan.md", repo.join("latest"))?;

    step(ui, "Make the folder a repository.", &format!("init {}", repo.display()))?;
    super::init::run(super::init::Args { dir: Some(repo.clone()) }, ui)?;
    std::env::set_current_dir(&repo)?;

    step(ui, "Record the whole folder as the first version.", "commit -m 'first version'")?;
    commit::run(commit::Args { message: Some("first version".into()), json: false }, ui)?;

    write(&repo.join("notes/plan.md"), b"# Plan\n\n- buy film\n- call Ana\n- book the ferry\n")?;
    write(&repo.join("notes/packing.txt"), b"towel\nsunscreen\n")?;
    step(ui, "Edit a note and add another; status shows what changed.", "status")?;
    status::run(status::Args { json: false }, ui)?;

    step(ui, "Commit again: only the changed files are read and stored.", "commit")?;
    commit::run(commit::Args { message: None, json: false }, ui)?;

    step(ui, "Go back to the first version to try another plan.", "checkout HEAD~1")?;
    checkout::run(checkout::Args { reference: "HEAD~1".into(), force: false }, ui)?;
    write(&repo.join("notes/plan.md"), b"# Plan\n\n- stay home\n")?;
    step(ui, "Commit there: the graph now has two heads, both kept.", "commit -m 'another plan'")?;
    commit::run(commit::Args { message: Some("another plan".into()), json: false }, ui)?;

    step(ui, "The history, drawn as a graph.", "log --graph")?;
    log::run(log::Args { graph: true, max_count: None, json: false, path: None }, ui)?;

    step(ui, "The history of one file.", "log notes/plan.md")?;
    log::run(
        log::Args { graph: false, max_count: None, json: false, path: Some("notes/plan.md".into()) },
        ui,
    )?;

    step(
        ui,
        "Restore the first version of the plan beside the tree.",
        "restore --from HEAD~1 --to ../old notes/plan.md",
    )?;
    restore::run(
        restore::Args {
            from: "HEAD~1".into(),
            to: Some(tmp.join("old")),
            force: false,
            paths: vec!["notes/plan.md".into()],
        },
        ui,
    )?;
    let old = std::fs::read_to_string(tmp.join("old/notes/plan.md"))?;
    ui.line(format!("  old/notes/plan.md holds: {:?}", old))?;

    step(ui, "Check every pack, object, signature and reference.", "fsck --read-data")?;
    fsck::run(fsck::Args { read_data: true, repair: false, json: false }, ui)?;

    ui.line("")?;
    if args.keep {
        ui.line(format!("Kept {}; try `dbox -C {} log --graph`.", tmp.display(), repo.display()))?;
        ui.line(format!("(Set DBOX_HOME={} to sign with the demo's device key.)", home.display()))?;
    } else {
        std::env::set_current_dir(std::env::temp_dir())?;
        std::fs::remove_dir_all(&tmp)?;
        ui.line("Done; the temporary folder was removed (use --keep to keep it).")?;
    }
    Ok(())
}
