//! `dbox fsck`.

use dbox::fsck::{fsck, FsckOptions};

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Check the repository's integrity
///
/// Checks every pack, index entry and object in the store, every version's
/// signature, and that every tree and chunk each version reaches is present.
/// --read-data also decrypts every object. --repair rebuilds the index and
/// the versions log from the packs (nothing is deleted). Exits 1 and lists
/// the problems when there are any.
///
/// JSON: {"ok", "versions", "trees", "chunks", "packs", "objects", "bytes",
/// "repaired": [text], "problems": [text]}.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read and decrypt every object
    #[arg(long)]
    pub read_data: bool,
    /// Rebuild the index and the versions log from the packs first
    #[arg(long)]
    pub repair: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let r = fsck(&repo, &FsckOptions { read_data: args.read_data, repair: args.repair })?;
    if args.json {
        ui.json(&serde_json::json!({
            "ok": r.problems.is_empty(), "versions": r.versions, "trees": r.trees, "chunks": r.chunks,
            "packs": r.packs, "objects": r.objects, "bytes": r.bytes, "repaired": r.repaired, "problems": r.problems,
        }))?;
    } else {
        for x in &r.repaired {
            ui.line(format!("repaired: {x}"))?;
        }
        ui.line(format!(
            "checked {} versions, {} trees, {} chunks; {} packs, {} objects, {} bytes{}",
            r.versions,
            r.trees,
            r.chunks,
            r.packs,
            r.objects,
            r.bytes,
            if args.read_data { " (data read and decrypted)" } else { "" }
        ))?;
        for p in &r.problems {
            ui.line(format!("problem: {p}"))?;
        }
    }
    if r.problems.is_empty() {
        if !args.json {
            ui.line("no problems found")?;
        }
        Ok(())
    } else {
        Err(CommandError::Failed(format!("{} problem(s) found", r.problems.len())))
    }
}
