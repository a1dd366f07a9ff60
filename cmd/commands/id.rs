//! `dbox id`.

use dbox::identity::{format_peer_id, home_dir, Device};

use crate::error::CommandError;
use crate::ui::Ui;

/// Print this device's peer id
///
/// The peer id is the device's ed25519 public key in a text form with a
/// check value, so that a mistyped id is refused rather than trusted. Give
/// it to the people whose repositories this device should sync with
/// (`dbox peer add NAME PEER_ID ADDR` on their side). It is printed alone
/// on stdout; the key itself is made in $DBOX_HOME on first use.
///
///     dbox id
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let device = Device::load_or_create(&home_dir()?)?;
    ui.line(format_peer_id(&device.peer_id()))?;
    Ok(())
}
