//! `dbox serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use dbox::identity::{home_dir, Device};
use dbox::net::{ops, DEFAULT_PORT};

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Answer members' sync requests until Ctrl-C
///
/// Listens for QUIC connections from members of this repository (and from
/// devices holding an invitation from `dbox invite`) and answers their
/// push, pull and sync requests. Connections from other devices are closed
/// before any repository data moves. Logs who connected to stderr.
///
/// It holds no lock while idle: `dbox commit` works in the same repository
/// while it runs, and the next sync serves the new version. While a member
/// pushes, it takes the repository's writer lock only in slices of a few
/// seconds, so a commit here waits at most that long. When a member
/// pushes, a clean working tree here moves to the new version; one with
/// uncommitted changes is left alone.
///
/// Limits: 256 members connected at once, 4 sessions per member; 64
/// connections still in their handshake (8 from one address), each given
/// 10 seconds to say hello, the oldest dropped first when all are taken. Ctrl-C (or SIGTERM) stops it
/// cleanly: transfers in progress get up to 10 seconds to finish, and
/// nothing half-written is ever visible.
///
///     dbox serve --listen 0.0.0.0:7447
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address and UDP port to listen on
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let device = Arc::new(Device::load_or_create(&home_dir()?)?);
    ui.flush()?;
    let log: dbox::net::session::Log = Arc::new(|line: String| {
        let now = chrono::Local::now().format("%H:%M:%S");
        eprintln!("{now} {}", crate::ui::printable(&line));
    });
    let rt = ops::runtime()?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        ops::serve(repo.root(), device, args.listen, log, None, shutdown).await
    })?;
    Ok(())
}
