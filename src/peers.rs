//! The address book: names for peers, per repository.
//!
//! `.dbox/peers` is a text file, one peer a line: `NAME TAB PEER_ID TAB
//! ADDR`, where ADDR (`host:port`) may be empty. It is local: names are
//! what this user calls the peers, and they do not replicate. Whether a
//! peer may sync is decided by membership ([`crate::members`]), never by
//! this file.

use crate::error::{RepoError, Result};
use crate::fsutil::{read_small, write_atomic};
use crate::identity::{format_peer_id, parse_peer_id};
use crate::repo::Repo;
use dbox_store::PeerId;

const MAX_FILE: u64 = 4 << 20;
/// Longest peer name.
pub const MAX_NAME: usize = 64;
/// Most peers in the address book.
pub const MAX_PEERS: usize = 10_000;

/// One named peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The local name.
    pub name: String,
    /// Its key.
    pub id: PeerId,
    /// Where it was last reached or told to be, `host:port`.
    pub addr: Option<String>,
}

/// Checks a peer name: 1–64 of `A–Z a–z 0–9 . _ -`, not starting with `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(RepoError::Usage(format!(
            "invalid peer name {:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'",
            crate::fsutil::clip(name, 80)
        )));
    }
    if parse_peer_id(name).is_ok() {
        return Err(RepoError::Usage("a peer name cannot itself be a peer id".into()));
    }
    Ok(())
}

/// Checks an address of the form `host:port`.
pub fn check_addr(addr: &str) -> Result<()> {
    let ok = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) && !h.contains(char::is_whitespace)
        });
    if ok {
        Ok(())
    } else {
        Err(RepoError::Usage(format!(
            "invalid address {:?}: use HOST:PORT, for example 192.168.1.20:7447 or [::1]:7447",
            crate::fsutil::clip(addr, 80)
        )))
    }
}

/// The address book of one repository.
#[derive(Clone, Debug, Default)]
pub struct Book {
    peers: Vec<Peer>,
}

impl Book {
    fn path(repo: &Repo) -> std::path::PathBuf {
        repo.dot_dir().join("peers")
    }

    /// Reads the address book (empty if there is none).
    pub fn load(repo: &Repo) -> Result<Self> {
        let path = Self::path(repo);
        let Some(bytes) = read_small(&path, MAX_FILE)? else { return Ok(Self::default()) };
        let damaged = |n: usize, why: &str| RepoError::Damaged {
            path: path.clone(),
            reason: format!("line {n}: {why}"),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| damaged(0, "not UTF-8"))?;
        let mut peers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut f = line.split('\t');
            let (Some(name), Some(id), addr) = (f.next(), f.next(), f.next()) else {
                return Err(damaged(i + 1, "expected NAME, PEER_ID and ADDR separated by tabs"));
            };
            check_name(name).map_err(|e| damaged(i + 1, &e.to_string()))?;
            let id = parse_peer_id(id).map_err(|e| damaged(i + 1, &e.to_string()))?;
            let addr = addr.filter(|a| !a.is_empty()).map(str::to_string);
            if let Some(a) = &addr {
                check_addr(a).map_err(|e| damaged(i + 1, &e.to_string()))?;
            }
            peers.push(Peer { name: name.to_string(), id, addr });
        }
        Ok(Self { peers })
    }

    /// Writes the address book.
    pub fn save(&self, repo: &Repo) -> Result<()> {
        let mut text = String::new();
        for p in &self.peers {
            text.push_str(&format!(
                "{}\t{}\t{}\n",
                p.name,
                format_peer_id(&p.id),
                p.addr.as_deref().unwrap_or("")
            ));
        }
        write_atomic(&Self::path(repo), text.as_bytes(), 0o600)
    }

    /// The peers, in the order they were added.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer called `name`.
    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The first peer with key `id`.
    pub fn by_id(&self, id: &PeerId) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.id == id)
    }

    /// Adds a peer; refuses a name in use.
    pub fn add(&mut self, peer: Peer) -> Result<()> {
        check_name(&peer.name)?;
        if let Some(a) = &peer.addr {
            check_addr(a)?;
        }
        if self.get(&peer.name).is_some() {
            return Err(RepoError::Usage(format!(
                "there is already a peer called {:?}; `dbox peer remove {}` first",
                peer.name, peer.name
            )));
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(RepoError::Usage(format!("the address book holds at most {MAX_PEERS} peers")));
        }
        self.peers.push(peer);
        Ok(())
    }

    /// Sets the address of the peer called `name`.
    pub fn set_addr(&mut self, name: &str, addr: &str) -> Result<()> {
        check_addr(addr)?;
        if let Some(p) = self.peers.iter_mut().find(|p| p.name == name) {
            p.addr = Some(addr.to_string());
        }
        Ok(())
    }

    /// Removes the peer called `name`; returns it.
    pub fn remove(&mut self, name: &str) -> Option<Peer> {
        let i = self.peers.iter().position(|p| p.name == name)?;
        Some(self.peers.remove(i))
    }
}

/// A parsed `PEER@ADDR` or `PEER`.
#[derive(Clone, Debug)]
pub struct Target {
    /// The peer's key.
    pub id: PeerId,
    /// Its address.
    pub addr: String,
    /// The name in the address book, if it has one.
    pub name: Option<String>,
}

/// Resolves `PEER[@ADDR]`: PEER is a name from the address book or a peer
/// id; ADDR defaults to the address book's.
pub fn resolve_target(book: &Book, text: &str) -> Result<Target> {
    let (peer, addr) = match text.split_once('@') {
        Some((p, a)) => (p, Some(a)),
        None => (text, None),
    };
    let (id, name, known_addr) = match book.get(peer) {
        Some(p) => (p.id, Some(p.name.clone()), p.addr.clone()),
        None => match parse_peer_id(peer) {
            Ok(id) => {
                let p = book.by_id(&id);
                (id, p.map(|p| p.name.clone()), p.and_then(|p| p.addr.clone()))
            }
            // Text that looks like a peer id gets the id's own error (a typo is caught there).
            Err(e) if peer.len() > 40 && peer.to_ascii_lowercase().starts_with("dbx") => return Err(e),
            Err(_) if check_name(peer).is_ok() => {
                return Err(RepoError::Usage(format!(
                    "no peer called {peer:?}; `dbox peer list` shows the names, `dbox peer add` makes one"
                )))
            }
            Err(e) => return Err(e),
        },
    };
    let addr = match addr {
        Some(a) => {
            check_addr(a)?;
            a.to_string()
        }
        None => known_addr.ok_or_else(|| {
            RepoError::Usage(format!(
                "no address known for {peer:?}: write PEER@HOST:PORT, or `dbox peer add NAME PEER_ID HOST:PORT`"
            ))
        })?,
    };
    Ok(Target { id, addr, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::format_peer_id;

    #[test]
    fn a_mistyped_peer_id_is_named_as_one() {
        let book = Book::default();
        let id = format_peer_id(&PeerId([7; 32]));
        let ok = resolve_target(&book, &format!("{id}@127.0.0.1:7447"));
        assert_eq!(ok.map(|t| t.id).ok(), Some(PeerId([7; 32])));
        // One character changed: the check digits catch it.
        let mut typo = id.into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8_lossy(&typo).into_owned();
        let e = resolve_target(&book, &format!("{typo}@127.0.0.1:7447")).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("check digits")), "{e:?}");
        let e = resolve_target(&book, "laptop").err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("no peer called")), "{e:?}");
    }
}
