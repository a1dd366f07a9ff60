//! `dbox demo`: the main job on a built-in example, narrated.
//!
//! Three devices in one temporary folder, each with its own device key:
//! Ana's laptop starts a repository and serves it over loopback QUIC; her
//! desktop and Ben's laptop join with invitations; Ana and Ben edit the same
//! files at once; sync shows the fork; Ben merges; everything converges.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dbox::identity::{format_peer_id, Device};
use dbox::merge::{merge, MergeOptions};
use dbox::net::ops::{self, Direction};
use dbox::net::session::Progress;
use dbox::peers::{Book, Target};
use dbox::snapshot::{commit, summarize, CommitOptions};
use dbox::Repo;

use super::sync::print_report;
use crate::error::CommandError;
use crate::ui::Ui;

/// Run a narrated tour of dbox in a temporary folder
///
/// Plays three devices on this machine: Ana's laptop makes a repository of
/// notes and photos and serves it over loopback QUIC; Ana's desktop and
/// Ben's laptop join it with invitations; Ana and Ben edit the same files at
/// the same time; syncing shows the fork in `log --graph`; Ben merges (one
/// file line by line, one with a conflict copy); a last sync brings every
/// device to the same head; an old version is restored; integrity is
/// checked. Each step prints the command a person would type. Nothing
/// outside the temporary folder is touched (each device has its own key
/// there), and the folder is removed at the end unless --keep.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temporary folder and print its path
    #[arg(long)]
    pub keep: bool,
}

fn step(ui: &mut Ui, who: &str, text: &str, command: &str) -> Result<(), CommandError> {
    ui.line("")?;
    ui.line(format!("# {text}"))?;
    ui.line(format!("{who}$ dbox {command}"))?;
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

/// One simulated device.
struct Actor {
    name: &'static str,
    device: Arc<Device>,
    dir: PathBuf,
}

impl Actor {
    fn new(tmp: &Path, name: &'static str, folder: &str) -> Result<Self, CommandError> {
        let device = Arc::new(Device::load_or_create(&tmp.join(format!("home-{name}")))?);
        Ok(Self { name, device, dir: tmp.join(folder) })
    }

    fn repo(&self) -> Result<Repo, CommandError> {
        Ok(Repo::open(&self.dir)?)
    }

    fn commit(&self, ui: &mut Ui, message: &str) -> Result<(), CommandError> {
        step(ui, self.name, &format!("{} commits.", self.name), &format!("commit -m {message:?}"))?;
        let out = commit(&self.repo()?, &self.device, &CommitOptions { message: Some(message.to_string()) })?;
        match out.version {
            Some(v) => ui.line(format!("Committed {} ({})", v.short(), summarize(&out.changes)))?,
            None => ui.line("Nothing changed")?,
        }
        Ok(())
    }

    fn log(&self, ui: &mut Ui) -> Result<(), CommandError> {
        std::env::set_current_dir(&self.dir)?;
        super::log::run(super::log::Args { graph: true, max_count: None, json: false, path: None }, ui)
    }
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let tmp = std::env::temp_dir().join(format!("dbox-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = tour(&tmp, ui);
    std::env::set_current_dir(std::env::temp_dir())?;
    ui.line("")?;
    if args.keep {
        ui.line(format!("Kept {}: one folder per device, and each device's key in home-*.", tmp.display()))?;
        ui.line(format!("Try `dbox -C {} log --graph`.", tmp.join("ana-desktop").display()))?;
    } else {
        std::fs::remove_dir_all(&tmp)?;
        if result.is_ok() {
            ui.line("Done; the temporary folder was removed (use --keep to keep it).")?;
        }
    }
    result
}

fn tour(tmp: &Path, ui: &mut Ui) -> Result<(), CommandError> {
    let start = std::time::Instant::now();
    ui.line(format!("dbox demo: three devices in {}", tmp.display()))?;
    let laptop = Actor::new(tmp, "ana-laptop", "ana-laptop")?;
    let desktop = Actor::new(tmp, "ana-desktop", "ana-desktop")?;
    let ben = Actor::new(tmp, "ben", "ben")?;
    for a in [&laptop, &desktop, &ben] {
        ui.line(format!("  {:<12} is device {}", a.name, format_peer_id(&a.device.peer_id())))?;
    }

    // 1. A repository on Ana's laptop.
    write(&laptop.dir.join("notes/plan.md"), b"# Trip plan\n\n- buy film\n- call Ana's mother\n- pack\n")?;
    write(&laptop.dir.join("budget.txt"), b"ferry: 40\nhotel: 300\n")?;
    write(&laptop.dir.join("photos/beach.raw"), &pseudo_random(1, 3 << 20))?;
    step(ui, laptop.name, "Ana makes her trip folder a repository.", "init")?;
    let repo = Repo::init(&laptop.dir)?;
    dbox::members::Members::load_or_found(&repo, &laptop.device)?;
    ui.line(format!("Initialized an empty dbox repository in {}", repo.root().display()))?;
    laptop.commit(ui, "first version")?;

    // 2. The laptop serves it.
    step(
        ui,
        laptop.name,
        "The laptop answers its peers over QUIC (here on loopback).",
        "serve --listen 127.0.0.1:0 &",
    )?;
    let server = Server::start(&laptop)?;
    ui.line(format!("listening on {}", server.addr))?;

    // 3. Two invitations, two clones.
    let clone_with = |who: &Actor, ui: &mut Ui| -> Result<(), CommandError> {
        step(
            ui,
            laptop.name,
            &format!("Ana invites {}: a one-time token, no key inside.", who.name),
            "invite",
        )?;
        let token =
            dbox::net::invite::create(&repo, laptop.device.peer_id(), vec![server.addr.clone()], 600_000)?;
        let text = token.encode();
        ui.line(format!("{}…{}", &text[..24], &text[text.len() - 8..]))?;
        step(
            ui,
            who.name,
            &format!(
                "{} joins: proves the token, receives the key over the pinned channel, fetches.",
                who.name
            ),
            &format!("clone TOKEN {}", who.dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        )?;
        let rt = ops::runtime()?;
        let cloned =
            rt.block_on(ops::clone(&token, &who.dir, who.device.clone(), Arc::new(Progress::default())))?;
        print_report(ui, &cloned.report, false)?;
        server.print_log(ui)?;
        Ok(())
    };
    clone_with(&desktop, ui)?;
    clone_with(&ben, ui)?;

    // 4. Concurrent edits.
    ui.line("")?;
    ui.line("# At the same time, Ana (on her desktop) and Ben edit the plan and the budget.")?;
    write(
        &desktop.dir.join("notes/plan.md"),
        b"# Trip plan\n\n- buy film\n- call Ana's mother\n- pack\n- book the ferry\n",
    )?;
    write(&desktop.dir.join("budget.txt"), b"ferry: 45\nhotel: 300\n")?;
    write(&ben.dir.join("notes/plan.md"), b"# Trip plan (Ben)\n\n- buy film\n- call Ana's mother\n- pack\n")?;
    write(&ben.dir.join("budget.txt"), b"ferry: 38\nhotel: 300\n")?;
    desktop.commit(ui, "ferry booked")?;
    ben.commit(ui, "cheaper ferry")?;

    // 5. Sync: the fork appears.
    sync(ui, &desktop, &server, Direction::Both)?;
    sync(ui, &ben, &server, Direction::Both)?;
    step(ui, ben.name, "Both lines of work are kept: two heads.", "log --graph")?;
    ben.log(ui)?;

    // 6. Merge.
    step(ui, ben.name, "Ben joins the two heads.", "merge")?;
    let out = merge(&ben.repo()?, &ben.device, None, &MergeOptions::default())?;
    ui.line(format!(
        "Merged {} into {}: new version {}",
        out.other.short(),
        out.head.short(),
        out.version.short()
    ))?;
    for p in &out.line_merged {
        ui.line(format!("  merged line by line: {}", String::from_utf8_lossy(p)))?;
    }
    for c in &out.conflicts {
        ui.line(format!(
            "  both changed {}: kept Ben's, Ana's is beside it as {}",
            String::from_utf8_lossy(&c.path),
            String::from_utf8_lossy(&c.copy)
        ))?;
    }
    let plan = std::fs::read_to_string(ben.dir.join("notes/plan.md"))?;
    ui.line(format!("  notes/plan.md now reads: {plan:?}"))?;

    // 7. Converge.
    sync(ui, &ben, &server, Direction::Both)?;
    sync(ui, &desktop, &server, Direction::Both)?;
    step(ui, desktop.name, "Every device has the same graph and the same files.", "log --graph")?;
    desktop.log(ui)?;
    let same = ["notes/plan.md", "budget.txt"].iter().all(|p| {
        let a = std::fs::read(desktop.dir.join(p)).ok();
        a.is_some() && a == std::fs::read(ben.dir.join(p)).ok() && a == std::fs::read(laptop.dir.join(p)).ok()
    });
    ui.line(format!("  files identical on all three devices: {}", if same { "yes" } else { "NO" }))?;
    if !same {
        return Err(CommandError::Failed("the demo's devices did not converge".into()));
    }

    // 8. Restore and check.
    step(
        ui,
        desktop.name,
        "Any old version stays available.",
        "restore --from HEAD~2 --to ../old notes/plan.md",
    )?;
    std::env::set_current_dir(&desktop.dir)?;
    super::restore::run(
        super::restore::Args {
            from: "HEAD~2".into(),
            to: Some(tmp.join("old")),
            force: false,
            paths: vec!["notes/plan.md".into()],
        },
        ui,
    )?;
    let old = std::fs::read_to_string(tmp.join("old/notes/plan.md"))?;
    ui.line(format!("  old/notes/plan.md holds: {old:?}"))?;
    step(ui, desktop.name, "Check every pack, object, signature and reference.", "fsck --read-data")?;
    super::fsck::run(super::fsck::Args { read_data: true, repair: false, json: false }, ui)?;
    server.stop();
    ui.line("")?;
    ui.line(format!("The tour took {:.1} s.", start.elapsed().as_secs_f64()))?;
    Ok(())
}

fn sync(ui: &mut Ui, who: &Actor, server: &Server, direction: Direction) -> Result<(), CommandError> {
    step(ui, who.name, &format!("{} syncs with the laptop.", who.name), "sync origin")?;
    let repo = who.repo()?;
    let book = Book::load(&repo)?;
    let origin = book.get("origin").ok_or_else(|| CommandError::Failed("no origin peer".into()))?;
    let target = Target { id: origin.id, addr: server.addr.clone(), name: Some("origin".into()) };
    let rt = ops::runtime()?;
    let quiet: dbox::net::session::Log = Arc::new(|_| {});
    let report = rt.block_on(ops::sync(
        repo,
        who.device.clone(),
        &target,
        direction,
        Arc::new(Progress::default()),
        quiet,
    ))?;
    print_report(ui, &report, false)?;
    server.print_log(ui)?;
    Ok(())
}

/// The laptop's `dbox serve`, in a thread of this process.
struct Server {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Server {
    fn start(laptop: &Actor) -> Result<Self, CommandError> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (root, device, sink) = (laptop.dir.clone(), laptop.device.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = ops::runtime() else { return };
            let logger: dbox::net::session::Log = Arc::new(move |line| {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            });
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let _ = rt.block_on(ops::serve(&root, device, listen, logger, Some(bound_tx), async {
                let _ = stop_rx.await;
            }));
        });
        let addr = bound_rx
            .blocking_recv()
            .map_err(|_| CommandError::Failed("the demo's server did not start".into()))?;
        let s = Self {
            addr: addr.to_string(),
            log,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        };
        s.take_log();
        Ok(s)
    }

    fn take_log(&self) -> Vec<String> {
        self.log.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    fn print_log(&self, ui: &mut Ui) -> Result<(), CommandError> {
        // The server logs a disconnect just after the client is done.
        std::thread::sleep(std::time::Duration::from_millis(50));
        for line in self.take_log() {
            if !line.ends_with("connected") {
                ui.line(format!("  (laptop's serve: {line})"))?;
            }
        }
        Ok(())
    }

    fn stop(&self) {
        if let Some(s) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
