//! `dbox push`, `dbox pull` and `dbox sync`: one implementation, three
//! directions. Also the progress bar and summary shared with `dbox clone`.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dbox::identity::{format_peer_id, home_dir, Device};
use dbox::net::ops::{self, Direction, Report};
use dbox::net::session::Progress;
use dbox::net::wire::Taken;
use dbox::peers::{resolve_target, Book};
use serde_json::json;

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Exchange versions with a peer
///
/// PEER is a name from `dbox peer list` or a peer id; ADDR (HOST:PORT)
/// defaults to the address book's. The peer must run `dbox serve`, and both
/// devices must be members of the repository. Only what the other side
/// lacks moves; an interrupted transfer resumes where it stopped. After new
/// versions arrive, a clean working tree whose HEAD is an ancestor of the
/// single new head moves forward; one with uncommitted changes is never
/// touched. A tree with no HEAD yet that holds only files of that head (as
/// a stopped clone leaves it) is completed, even when nothing new arrives.
///
///     dbox sync laptop
///     dbox sync dbxq4...x2a@192.168.1.20:7447
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The peer: NAME, PEER_ID, NAME@HOST:PORT or PEER_ID@HOST:PORT
    #[arg(value_name = "PEER[@ADDR]")]
    pub peer: String,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, direction: Direction, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let device = Arc::new(Device::load_or_create(&home_dir()?)?);
    let target = resolve_target(&Book::load(&repo)?, &args.peer)?;
    let progress = Arc::new(Progress::default());
    let rt = ops::runtime()?;
    let log: dbox::net::session::Log = Arc::new(|line: String| eprintln!("{}", crate::ui::printable(&line)));
    let report = with_progress(&progress, || {
        rt.block_on(ops::sync(repo.clone(), device, &target, direction, progress.clone(), log))
    })?;
    print_report(ui, &report, args.json)
}

/// Runs `f` while drawing a progress bar on a terminal.
pub fn with_progress<T>(progress: &Arc<Progress>, f: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drawer = {
        let (p, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} objects, {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            while !done.load(Ordering::Relaxed) {
                bar.set_length(p.objects_needed.load(Ordering::Relaxed));
                bar.set_position(p.objects.load(Ordering::Relaxed));
                bar.set_message(human_bytes(p.bytes.load(Ordering::Relaxed)));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bar.finish_and_clear();
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = drawer.join();
    out
}

/// `1.5 MiB` and the like.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn taken_json(t: &Taken) -> serde_json::Value {
    json!({
        "versions": t.versions,
        "objects": t.objects,
        "bytes": t.bytes,
        "deltas": t.deltas,
        "carried": t.carried,
    })
}

fn describe(t: &Taken) -> String {
    let mut s = format!("{} version(s), {} object(s), {}", t.versions, t.objects, human_bytes(t.bytes));
    if t.deltas > 0 {
        s.push_str(&format!(" ({} as deltas; {} carried in all)", t.deltas, human_bytes(t.carried)));
    }
    s
}

/// Prints what a transfer did.
pub fn print_report(ui: &mut Ui, r: &Report, as_json: bool) -> Result<(), CommandError> {
    if as_json {
        ui.json(&json!({
            "peer": format_peer_id(&r.peer),
            "addr": r.addr,
            "pulled": taken_json(&r.pulled),
            "pushed": taken_json(&r.pushed),
            "wire": { "sent": r.sent, "received": r.received },
            "seconds": r.elapsed.as_secs_f64(),
            "worktree": r.worktree.as_ref().map(|w| w.to_string()),
        }))?;
        return Ok(());
    }
    ui.line(format!("received {}", describe(&r.pulled)))?;
    ui.line(format!("sent {}", describe(&r.pushed)))?;
    ui.line(format!(
        "{} sent and {} received on the wire in {:.2} s ({} at {})",
        human_bytes(r.sent),
        human_bytes(r.received),
        r.elapsed.as_secs_f64(),
        r.peer.short(),
        r.addr
    ))?;
    if let Some(w) = &r.worktree {
        ui.line(format!("working tree: {w}"))?;
    }
    Ok(())
}
