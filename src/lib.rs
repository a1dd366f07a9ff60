//! `dbox`: version control for whole folders whose remotes are peers.
//!
//! This crate holds repositories and working trees ([`repo`],
//! [`worktree`], [`cache`]), snapshots and status ([`snapshot`]), writing
//! versions back to disk ([`materialize`]), joining heads ([`merge`]), the
//! version graph ([`graph`]), the device identity ([`identity`]) and
//! integrity checks ([`fsck`]). The object store underneath is the crate
//! [`dbox_store`], re-exported as [`store`]; its docs are the on-disk format
//! specification.
//!
//! Membership ([`members`]) and the address book ([`peers`]) are local
//! repository state; all network I/O is in [`net`].

pub mod cache;
pub mod error;
mod folders;
pub mod fsck;
mod fsutil;
pub mod graph;
pub mod identity;
pub mod materialize;
pub mod members;
pub mod merge;
pub mod net;
pub mod peers;
pub mod repo;
pub mod snapshot;
pub mod worktree;

pub use dbox_store as store;
pub use error::{RepoError, Result};
pub use repo::Repo;
