//! `dbox`: version control for whole folders whose remotes are peers.
//!
//! This crate will hold repositories and working trees, the version graph,
//! identities, and sync. Today it re-exports the object store, which is the
//! layer everything else stands on; see [`dbox_store`] for the on-disk
//! format.

pub use dbox_store as store;
