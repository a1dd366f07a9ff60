//! `dbox peer`.

use dbox::identity::{format_peer_id, parse_peer_id};
use dbox::members::Members;
use dbox::peers::{Book, Peer};
use serde_json::json;

use super::open_repo;
use crate::error::CommandError;
use crate::ui::Ui;

/// Name the peers this repository syncs with
///
/// The address book is local to this repository: NAME is what you call a
/// peer in `dbox push NAME`, `dbox pull NAME` and `dbox sync NAME`. Whether
/// a peer may sync at all is decided by membership, which `dbox invite` and
/// `dbox clone` manage and which every member replicates.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What to do with the address book.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Add a peer by name
    ///
    ///     dbox peer add laptop dbxq4...x2a 192.168.1.20:7447
    Add {
        /// A name: letters, digits, '.', '_' or '-'
        name: String,
        /// The peer's id, as `dbox id` prints it there
        #[arg(value_name = "PEER_ID")]
        peer_id: String,
        /// Where it serves, HOST:PORT
        addr: Option<String>,
    },
    /// List the peers
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer from the address book (its membership stays)
    Remove {
        /// The name
        name: String,
    },
}

pub fn run(args: Args, ui: &mut Ui) -> Result<(), CommandError> {
    let repo = open_repo()?;
    let mut book = Book::load(&repo)?;
    match args.action {
        Action::Add { name, peer_id, addr } => {
            let id = parse_peer_id(&peer_id)?;
            book.add(Peer { name: name.clone(), id, addr })?;
            book.save(&repo)?;
            ui.line(format!("added {name} ({})", id.short()))?;
            if !Members::load(&repo)?.contains(&id) {
                ui.note(format!(
                    "note: {name} is not a member of this repository yet, so it cannot sync; \
                     members join with `dbox invite` here and `dbox clone` there"
                ))?;
            }
        }
        Action::List { json } => {
            let members = Members::load(&repo)?;
            if json {
                let list: Vec<_> = book
                    .peers()
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "peer_id": format_peer_id(&p.id),
                            "addr": p.addr,
                            "member": members.contains(&p.id),
                        })
                    })
                    .collect();
                ui.json(&json!(list))?;
            } else if book.peers().is_empty() {
                ui.note("no peers yet; `dbox peer add NAME PEER_ID ADDR` adds one")?;
            } else {
                for p in book.peers() {
                    ui.line(format!(
                        "{}\t{}\t{}\t{}",
                        p.name,
                        format_peer_id(&p.id),
                        p.addr.as_deref().unwrap_or("-"),
                        if members.contains(&p.id) { "member" } else { "not a member" }
                    ))?;
                }
            }
        }
        Action::Remove { name } => match book.remove(&name) {
            Some(p) => {
                book.save(&repo)?;
                ui.line(format!("removed {name} ({})", p.id.short()))?;
            }
            None => return Err(CommandError::Failed(format!("no peer called {name:?}"))),
        },
    }
    Ok(())
}
