//! `dbox clone`.

use std::path::PathBuf;
use std::sync::Arc;

use dbox::identity::{home_dir, Device};
use dbox::net::invite::Token;
use dbox::net::ops;
use dbox::net::session::Progress;

use super::sync::{print_report, with_progress};
use crate::error::CommandError;
use crate::ui::Ui;

/// Join a repository with an invitation
///
/// TOKEN comes from `dbox invite` on a member's device, whose `dbox serve`
/// must be running. Clone connects to it (checking that it is the device
/// the token names), proves the token, becomes a member, receives the
/// repository key over the authenticated connection, fetches every version
/// and checks out the newest head into DIR (default: `dbox-` and the first
/// digits of the repository id); files are written as their content
/// arrives. The inviter is saved as the peer `origin`, so `dbox sync
/// origin` works afterwards. If the transfer is interrupted after joining,
/// the files already written are taken back, and `dbox -C DIR pull origin`
/// finishes it.
///
///     dbox clone dbxinv... ~/Shared
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The invitation
    pub token: String,
    /// Where to put the repository (must not exist, or be empty)
    pub dir: Option<PathBuf>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let token = Token::decode(&args.token)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(format!("dbox-{}", &token.repo.to_string()[..8])));
    let device = Arc::new(Device::load_or_create(&home_dir()?)?);
    let progress = Arc::new(Progress::default());
    let rt = ops::runtime()?;
    let cloned = with_progress(&progress, || rt.block_on(ops::clone(&token, &dir, device, progress.clone())));
    let cloned = match cloned {
        Ok(c) => c,
        Err(e) => {
            if dir.join(".dbox").join("members").exists() {
                ui.note(format!(
                    "this device joined; `dbox -C {} pull origin` finishes the transfer",
                    dir.display()
                ))?;
            }
            return Err(e.into());
        }
    };
    print_report(ui, &cloned.report, args.json)?;
    if !args.json {
        match cloned.head {
            Some(h) => {
                ui.line(format!("cloned into {}, HEAD is {}", cloned.repo.root().display(), h.short()))?
            }
            None => ui.line(format!("cloned into {} (no versions yet)", cloned.repo.root().display()))?,
        }
    }
    Ok(())
}
