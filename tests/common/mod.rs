//! A test environment: a temp folder with its own DBOX_HOME, and a runner
//! for the real `dbox` binary.
#![allow(dead_code)]

pub mod peers;

use std::path::{Path, PathBuf};
use std::process::Output;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// The `dbox` binary with `args`, run in `dir` with `home` as DBOX_HOME and
/// nothing else from the environment but PATH (and TZ=UTC).
pub fn dbox_command(home: &Path, dir: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dbox"));
    c.args(args)
        .current_dir(dir)
        .env_clear()
        .env("DBOX_HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TZ", "UTC");
    c
}

impl Run {
    /// A finished process's exit code and output.
    pub fn of(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// This run, or an error naming `args` if it failed.
    pub fn succeeded(self, args: &[&str]) -> Result<Run, Box<dyn std::error::Error>> {
        if self.code != 0 {
            return Err(format!("dbox {args:?} failed: {self:?}").into());
        }
        Ok(self)
    }
}

impl TestEnv {
    pub fn new() -> Result<Self, std::io::Error> {
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home)?;
        Ok(Self { tmp, home })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn command(&self, dir: &Path, args: &[&str]) -> std::process::Command {
        dbox_command(&self.home, dir, args)
    }

    /// Runs dbox in `dir` and returns its exit code and output.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Result<Run, std::io::Error> {
        Ok(Run::of(self.command(dir, args).output()?))
    }

    /// Runs dbox and requires success.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> Result<Run, Box<dyn std::error::Error>> {
        self.run(dir, args)?.succeeded(args)
    }

    /// Makes a repository at `rel` and returns its path.
    pub fn repo(&self, rel: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
        let p = self.path(rel);
        self.ok(self.tmp.path(), &["init", rel])?;
        Ok(p)
    }

    /// Commits and returns the new version id.
    pub fn commit(&self, repo: &Path, msg: &str) -> Result<String, Box<dyn std::error::Error>> {
        let r = self.ok(repo, &["commit", "-m", msg])?;
        Ok(r.stdout.trim().to_string())
    }
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, bytes)
}

/// Waits up to `limit` for `done` to hold, checking every 100 ms; fails
/// the test with `what` if it never does.
pub fn wait_for(
    what: &str,
    limit: std::time::Duration,
    mut done: impl FnMut() -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while !done()? {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every file, link and folder under `root` (skipping `.dbox`), with
/// contents, link targets and executable bits, for comparing trees.
pub fn snapshot(root: &Path) -> std::io::Result<Vec<(String, String)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root).map_err(std::io::Error::other)?.to_string_lossy().into_owned();
            if rel == ".dbox" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p)?;
            if m.file_type().is_symlink() {
                out.push((rel, format!("link {}", std::fs::read_link(&p)?.display())));
            } else if m.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else {
                let exec = m.permissions().mode() & 0o100 != 0;
                out.push((rel, format!("file exec={exec} {}", blake3::hash(&std::fs::read(&p)?).to_hex())));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `command` while this process holds the writer lock of the
/// repository at `repo` (as another dbox process would, its pid in the lock
/// file), and lets go once the command says it is waiting (or after 20 s).
/// Returns whether it said so, how it ended, and what it wrote to stderr.
#[allow(dead_code)]
pub fn behind_the_lock(
    repo: &Path,
    mut command: std::process::Command,
) -> Result<(bool, std::process::ExitStatus, String), Box<dyn std::error::Error>> {
    use std::io::{BufRead, Write};
    let mut lock = std::fs::OpenOptions::new().read(true).write(true).open(repo.join(".dbox/store/lock"))?;
    lock.lock()?;
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    let mut child =
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("waiting for") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let said = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
    lock.unlock()?;
    let status = child.wait()?;
    let err = reader.join().map_err(|_| "stderr reader")?;
    Ok((said, status, err))
}
