//! `dbox invite`.

use std::time::Duration;

use dbox::identity::{home_dir, Device};
use dbox::members::Members;
use dbox::net::{invite, ops};

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Invite a new device to this repository
///
/// Prints a one-time token alone on the last line of stdout. On the new
/// device, `dbox clone TOKEN` connects to the `dbox serve` running here,
/// proves it holds the token, becomes a member (the membership is signed by
/// this device and replicates to every member), receives the repository
/// key over the authenticated connection and fetches everything. The token
/// holds the repository id, this device's peer id and addresses, and a
/// secret; it never holds the key. It works once, until it expires.
///
///     dbox invite --expires 1h
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the token stays valid: 90s, 30m, 24h, 7d
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub expires: Duration,
    /// An address the new device should use, HOST:PORT (repeatable;
    /// default: the addresses `dbox serve` listens on)
    #[arg(long = "addr", value_name = "ADDR")]
    pub addrs: Vec<String>,
}

/// Parses `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    let total = n.checked_mul(secs).filter(|s| (1..=366 * 86400).contains(s));
    total.map(Duration::from_secs).ok_or_else(|| "a duration from 1 second to 366 days".to_string())
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let device = Device::load_or_create(&home_dir()?)?;
    Members::load_or_found(&repo, &device)?;
    for a in &args.addrs {
        dbox::peers::check_addr(a)?;
    }
    let running = ops::running_server(&repo)?;
    let addrs = match (&running, args.addrs.is_empty()) {
        (_, false) => args.addrs.clone(),
        (Some(a), true) if !a.is_empty() => a.clone(),
        _ => {
            return Err(CommandError::Failed(
                "no `dbox serve` is running in this repository, and no --addr was given: \
                 start `dbox serve` first (it is what accepts the invitation)"
                    .into(),
            ))
        }
    };
    let token = invite::create(&repo, device.peer_id(), addrs.clone(), args.expires.as_millis() as i64)?;
    let until = super::format_time(token.expires_ms);
    ui.note(format!("Invitation for this repository, valid once until {until}."))?;
    ui.note(format!("It points at {}.", addrs.join(", ")))?;
    if running.is_none() {
        ui.note("warning: `dbox serve` is not running here; start it before the token is used")?;
    }
    ui.note("On the new device run:  dbox clone TOKEN [DIR]   (the token is the next line)")?;
    ui.line(token.encode())?;
    Ok(())
}
