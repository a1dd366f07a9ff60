//! Devices and `dbox serve` processes for tests of sync between peers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{dbox_command, Run, TestResult};

type R<T> = Result<T, Box<dyn std::error::Error>>;

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
        dbox_command(&self.home, dir, args)
    }

    pub fn run(&self, dir: &Path, args: &[&str]) -> std::io::Result<Run> {
        Ok(Run::of(self.command(dir, args).stdin(Stdio::null()).output()?))
    }

    pub fn ok(&self, dir: &Path, args: &[&str]) -> R<Run> {
        self.run(dir, args)?.succeeded(args)
    }

    pub fn id(&self) -> R<String> {
        Ok(self.ok(&self.home, &["id"])?.stdout.trim().to_string())
    }

    pub fn peer_id(&self) -> R<dbox::store::PeerId> {
        Ok(dbox::identity::parse_peer_id(&self.id()?)?)
    }

    pub fn device(&self) -> R<dbox::identity::Device> {
        Ok(dbox::identity::Device::load_or_create(&self.home)?)
    }

    /// Starts `dbox serve` in `repo` on a free loopback port.
    pub fn serve(&self, repo: &Path) -> R<Server> {
        self.serve_on(repo, "127.0.0.1:0")
    }

    /// Starts `dbox serve --listen LISTEN` in `repo`.
    pub fn serve_on(&self, repo: &Path, listen: &str) -> R<Server> {
        let mut child = self
            .command(repo, &["serve", "--listen", listen])
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
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => server.addr = a,
            Err(_) => return Err(format!("dbox serve did not start: {}", server.log()).into()),
        }
        Ok(server)
    }
}

/// A `dbox serve` process, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn sock(&self) -> R<SocketAddr> {
        Ok(self.addr.parse()?)
    }

    /// Fails if the process has exited.
    pub fn assert_alive(&mut self) -> TestResult {
        if let Some(st) = self.child.try_wait()? {
            return Err(format!("dbox serve exited ({st}); its log:\n{}", self.log()).into());
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The invitation token a `dbox invite` printed (its last line).
pub fn token(r: &Run) -> String {
    r.stdout.lines().last().unwrap_or("").trim().to_string()
}

pub fn json(r: &Run) -> R<serde_json::Value> {
    Ok(serde_json::from_str(&r.stdout)?)
}
