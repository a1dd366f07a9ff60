//! Ingests files into a fresh store and prints one JSON line of figures.
//!
//! ```text
//! cargo run --release -p dbox-store --example ingest -- [--store DIR] [--threads N] [--no-pack-thread] FILE...
//! ```
//!
//! The store is created in a temp dir (removed at exit) unless `--store`
//! names a directory that holds no store yet. With `--threads N`, N threads
//! share one `Writer` and take whole files from a common queue, so a single
//! file is always ingested by one thread. The time runs from the first put
//! to the end of the final `flush`. `--no-pack-thread` turns off the store's
//! pack-writing thread (`StoreOptions::pack_thread`), so that the ingest
//! uses exactly N threads. `bench/store.sh` runs this under
//! `/usr/bin/time -v` for peak memory; `peak_rss_kib` here is the kernel's
//! high-water mark (`VmHWM`) of this process, the same figure.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dbox_store::{RepoId, RepoKey, Store, StoreOptions};

struct Args {
    store: Option<PathBuf>,
    threads: usize,
    pack_thread: bool,
    files: Vec<PathBuf>,
}

const USAGE: &str = "usage: ingest [--store DIR] [--threads N] [--no-pack-thread] FILE...";

fn parse_args() -> Result<Args, String> {
    let mut args = Args { store: None, threads: 1, pack_thread: true, files: Vec::new() };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--store") => args.store = Some(it.next().ok_or(USAGE)?.into()),
            Some("--threads") => {
                let n = it.next().ok_or(USAGE)?;
                args.threads = n
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--threads wants a positive number\n{USAGE}"))?;
            }
            Some("--no-pack-thread") => args.pack_thread = false,
            Some("-h" | "--help") => return Err(USAGE.into()),
            Some(s) if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => args.files.push(a.into()),
        }
    }
    if args.files.is_empty() {
        return Err(USAGE.into());
    }
    Ok(args)
}

/// The process's peak resident set, from `/proc/self/status`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let temp = tempfile::tempdir()?;
    let root = args.store.clone().unwrap_or_else(|| temp.path().join("store"));
    let mut repo = [0u8; 32];
    dbox_store::crypto::fill_random(&mut repo)?;
    let opts = StoreOptions { pack_thread: args.pack_thread, ..StoreOptions::default() };
    let store = Store::create(&root, RepoId(repo), &RepoKey::generate()?, opts)?;
    let w = store.writer()?;

    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.threads)
            .map(|_| {
                s.spawn(|| {
                    let mut bytes = 0;
                    loop {
                        let Some(path) = args.files.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(bytes);
                        };
                        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                        bytes += w.put_file(f).map_err(|e| format!("{}: {e}", path.display()))?.size;
                    }
                })
            })
            .collect();
        workers.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into()))).collect()
    });
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    w.flush()?;
    let seconds = start.elapsed().as_secs_f64();
    drop(w);

    let objects = store.list_objects()?.len();
    let packs = store.list_packs()?;
    let mut pack_bytes = 0;
    for p in &packs {
        pack_bytes += std::fs::metadata(root.join("packs").join(format!("{p}.pack")))?.len();
    }
    println!(
        "{{\"bytes\":{bytes},\"seconds\":{seconds:.3},\"mb_per_s\":{:.1},\"objects\":{objects},\
         \"packs\":{},\"pack_bytes\":{pack_bytes},\"threads\":{},\"pack_thread\":{},\"files\":{},\"peak_rss_kib\":{}}}",
        bytes as f64 / 1e6 / seconds,
        packs.len(),
        args.threads,
        args.pack_thread,
        args.files.len(),
        peak_rss_kib().map_or("null".to_string(), |k| k.to_string()),
    );
    Ok(())
}
