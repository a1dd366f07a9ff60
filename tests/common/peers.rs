//! Devices and `dbox serve` processes for tests of sync between peers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Run;

/// One simulated device: its own DBOX_HOME.
pub struct Dev {
    pub home: PathBuf,
}

impl Dev {
    pub fn new(root: &Path, name: &str) -> std::io::Result<Self> {
        let home = root.join(format!("home-{name}"));
        std::fs::create_dir_all(&home)?;
        Ok(Self { home })
    }

    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dbox"));
        c.args(args)
            .current_dir(dir)
            .env_clear()
            .env("DBOX_HOME", &self.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TZ", "UTC");
        c
    }

    pub fn run(&self, dir: &Path, args: &[&str]) -> std::io::Result<Run> {
        let out = self.command(dir, args).stdin(Stdio::null()).output()?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn ok(&self, dir: &Path, args: &[&str]) -> Result<Run, Box<dyn std::error::Error>> {
        let r = self.run(dir, args)?;
        if r.code != 0 {
            return Err(format!("dbox {args:?} failed: {r:?}").into());
        }
        Ok(r)
    }

    pub fn id(&self) -> Result<String, Box<dyn std::error::Error>> {
        Ok(self.ok(&self.home, &["id"])?.stdout.trim().to_string())
    }

    /// Starts `dbox serve` in `repo` on a free loopback port.
    pub fn serve(&self, repo: &Path) -> Result<Server, Box<dyn std::error::Error>> {
        let mut child = self
            .command(repo, &["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find(" on 127.0.0.1:") {
                    let _ = tx.send(line[i + 4..].split(',').next().unwrap_or("").trim().to_string());
                }
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut server = Server { child, addr: String::new(), log };
        server.addr = rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "dbox serve did not start")?;
        Ok(server)
    }
}

/// A `dbox serve` process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(r: &Run) -> String {
    r.stdout.lines().last().unwrap_or("").trim().to_string()
}

pub fn json(r: &Run) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&r.stdout)?)
}
