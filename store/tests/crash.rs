//! A writer killed with SIGKILL at random moments, 200 times: after each kill
//! the store opens, `verify` passes, and every object whose flush returned
//! is readable. The base seed is printed; rerun one with
//! `DBOX_CRASH_SEED=<seed> cargo test --release -p dbox-store --test crash`.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bytes, create_with, TestResult};
use dbox_store::verify::VerifyOptions;
use dbox_store::{object, ObjectKind, Store, StoreOptions};

const CHILD_ENV: &str = "DBOX_CRASH_CHILD";
/// Most objects one child writes before it stops by itself.
const CHILD_MAX_OBJECTS: u64 = 5_000;

fn opts() -> StoreOptions {
    // Small packs so that packs are sealed, and segments merged, mid-run.
    StoreOptions { pack_target: 48 * 1024, chunker: common::small_chunks(), ..StoreOptions::default() }
}

fn object_data(round: u64, i: u64) -> Vec<u8> {
    let size = 1 + (round.wrapping_mul(31).wrapping_add(i.wrapping_mul(7919)) % 24_000) as usize;
    bytes(round << 32 | i, size)
}

/// The child: puts objects forever, flushing every few, and prints
/// `ACK <n>` once objects 0..=n are durable.
#[test]
#[ignore = "the child process of kill9_at_random_moments"]
fn crash_child() -> TestResult {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return Ok(()) };
    let (dir, round) = spec.rsplit_once('|').ok_or("bad child spec")?;
    let round: u64 = round.parse()?;
    let store = Store::open(std::path::Path::new(dir), opts())?;
    let w = store.writer_wait(Duration::from_secs(20))?;
    for i in 0..CHILD_MAX_OBJECTS {
        w.put_chunk(&object_data(round, i))?;
        if (i + round).is_multiple_of(3) {
            w.flush()?;
            println!("ACK {i}");
        }
    }
    Ok(())
}

#[test]
fn kill9_at_random_moments() -> TestResult {
    let base: u64 = match std::env::var("DBOX_CRASH_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 % 1_000_000
        }
    };
    let rounds: u64 = std::env::var("DBOX_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    eprintln!("crash test: base seed {base}, {rounds} rounds");
    let exe = std::env::current_exe()?;
    let mut dir = tempfile::tempdir()?;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    let mut kills_mid_run = 0;
    let mut checked = 0u64;
    for r in 0..rounds {
        let round = base + r;
        if r % 20 == 0 {
            dir = tempfile::tempdir()?;
            create_with(dir.path(), 3, opts())?;
            acked.clear();
        }
        let delay = Duration::from_micros(bytes(round, 8)[0] as u64 * 300 + 2_000);
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{round}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(delay);
        let finished = child.try_wait()?.is_some();
        child.kill()?;
        child.wait()?;
        if !finished {
            kills_mid_run += 1;
        }
        let mut out = String::new();
        child.stdout.take().ok_or("child stdout")?.read_to_string(&mut out)?;
        if let Some(n) =
            out.lines().filter_map(|l| l.strip_prefix("ACK ")).filter_map(|n| n.parse().ok()).max()
        {
            acked.push((round, n));
        }

        let store = Store::open(dir.path(), opts()).map_err(|e| format!("round seed {round}: open: {e}"))?;
        let report = store.verify(&VerifyOptions::default())?;
        assert!(report.is_ok(), "round seed {round}: verify found {:?}", report.problems);
        for &(rd, n) in &acked {
            for i in 0..=n {
                let data = object_data(rd, i);
                let (id, _) = object::seal(store.keys(), ObjectKind::Chunk, &data);
                let back =
                    store.get_chunk(&id).map_err(|e| format!("round seed {round}: object {rd}/{i}: {e}"))?;
                assert_eq!(back, data, "round seed {round}: object {rd}/{i} differs");
                checked += 1;
            }
        }
    }
    eprintln!(
        "crash test: {rounds} rounds, {kills_mid_run} killed mid-run, {checked} acknowledged objects read back, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(checked > rounds * 10, "the children must acknowledge objects before they are killed");
    assert!(kills_mid_run >= rounds / 2, "most kills must land while the child is writing");
    Ok(())
}
