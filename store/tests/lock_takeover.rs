//! Taking over the lock of a killed process. Alone in its test binary:
//! it starts a child process, and a child started while another test's
//! thread holds a store lock keeps a copy of that lock's descriptor until
//! it runs its program, so that test could find the lock briefly held by
//! its own process (seen once in `any_bytes_round_trip`).

mod common;

use common::{create, TestResult};

#[test]
fn lock_of_a_killed_process_is_taken_over() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = create(dir.path(), 1)?;
    let lock = dir.path().join("lock");
    let mut child =
        match std::process::Command::new("flock").arg("-o").arg(&lock).arg("sleep").arg("30").spawn() {
            Ok(c) => c,
            Err(e) => panic!("this test needs util-linux's flock: {e}"),
        };
    // Wait until the child holds the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.writer().is_ok() {
        assert!(std::time::Instant::now() < deadline, "the child never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SIGKILL: the process dies without releasing anything itself.
    child.kill()?;
    child.wait()?;
    std::fs::write(&lock, "999999999\n")?;
    store.writer_wait(std::time::Duration::from_secs(10))?;
    Ok(())
}
