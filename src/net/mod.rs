//! Sync between peers over QUIC: transport, wire protocol, sessions.
//!
//! Nothing outside this module does network I/O; it uses the repository
//! layer ([`crate::repo`], [`crate::members`]) the way commands do.
//!
//! # Transport
//!
//! QUIC (quinn) with TLS 1.3 (rustls, ring). Each device's certificate is
//! self-signed and made from its ed25519 device key ([`tls`]), so a peer id
//! *is* the key in the certificate. Both ends present one:
//! - the client pins the server's key to the peer id it was given
//!   (`PEER@ADDR`, a name from the address book, or an invitation);
//! - the server accepts any well-formed ed25519 certificate in the
//!   handshake, then refuses the connection before anything else is
//!   answered unless the key is a member of the repository or the client
//!   presents a valid invitation.
//!
//! ALPN is [`ALPN`] (`dbox/1`); a peer speaking another protocol version
//! fails the handshake, and the error says so.
//!
//! # Session
//!
//! The client opens the first bidirectional stream and sends a
//! [`wire::Hello`] (protocol version, repository id, membership records,
//! optionally an invitation secret); the server answers [`wire::Welcome`]
//! (its membership records and, for an invitation, the new member's copy of
//! the repo key) or refuses and closes. Both ends merge the other's
//! membership records ([`crate::members`]).
//!
//! After that the session is symmetric: either end opens a stream per
//! request and the other answers ([`session`]). Requests:
//! - `Heads`: the sender's heads.
//! - `Walk {from, limit}`: breadth-first from `from` through the sender's
//!   graph, at most `limit` `(version, parents)` pairs. The puller asks for
//!   the heads it lacks, keeps the versions it lacks and asks again from
//!   their unknown parents with a doubled limit; it stops where it reaches
//!   versions it has. Negotiation is therefore proportional to the
//!   difference (plus at most one batch), never to the graph's size: two
//!   graphs of 100,000 versions that differ by 10 exchange a few KiB.
//! - `Get {ids, bases}`: objects, as binary frames on the response stream.
//!   The puller runs several at once ([`session::PARALLEL_GETS`]), checks
//!   every object's BLAKE3 against its id and its kind against what
//!   referred to it, and stores it. `bases` offers, per id, an object of
//!   the same kind the puller holds: the tree at the same path in the
//!   nearest version it has, or the chunk a changed file's new chunk
//!   replaces. The sender may answer such an id with a delta against it
//!   ([`dbox_store::delta`]) when that is at most 7/8 of the stored bytes;
//!   the puller rebuilds the payload, seals it again (sealing is
//!   deterministic) and checks the id like any object. A delta that does
//!   not give the object is asked for again whole; a delta for an id
//!   offered no base is a protocol error. An edit of 100 bytes in a 1 MiB
//!   chunk then costs about a kilobyte on the wire, not the chunk.
//! - `Announce {heads}`: "I have these heads"; the receiver pulls from the
//!   announcer over the same connection and answers with what it took. A
//!   push is an announcement; a sync is a pull and then an announcement.
//!   The gossip issue keeps sessions open and sends announcements both
//!   ways; fetching one object set from several peers is several `Get`s to
//!   several sessions.
//!
//! A pull stores trees and chunks first, then the versions, and only then
//! appends the versions to the versions log, which is what makes them
//! visible: a version is never visible before everything it reaches is
//! stored. Objects are flushed to disk every [`session::FLUSH_EVERY`] bytes,
//! and present objects are never asked for, so an interrupted transfer
//! resumes without resending what arrived.
//!
//! Chunks are asked for in batches of at most 128 chunks and about 2 MiB
//! (as the trees suggest), several at once, so they arrive close to the
//! order they were listed in: the order a clone's checkout writes their
//! files (by path), not the order the walk found them.
//! A clone's checkout runs beside its transfer. It plans from every tree
//! first, taking them as the walk decoded them, held in memory until it
//! has planned (64 MiB at most, estimated; beyond that, the storing thread
//! flushes as soon as the last tree reaches it, and the checkout reads
//! those trees back from the store). It then starts a file once its first
//! chunk is there and writes the others as they come, taking them from
//! memory ([`session::Arrived`], 16 MiB) rather than reading them back
//! from the packs after the next flush. A chunk leaves that memory when it
//! is taken; while it is full, the storing thread waits for the checkout
//! to take one (the transfer slows through flow control), also before the
//! checkout has planned (2 s at most in all). While the checkout itself
//! waits for a chunk that is not there, it does not wait: what comes is
//! kept up to twice the bound, and beyond that read back from the packs.
//!
//! The trees are walked before any chunk is asked for. Asking for each
//! level's chunks while the walk went on ended a transfer about 1 s sooner
//! on 1 GB, but one clone in about twenty stalled (both ends stopped
//! accepting the other's packets some 70 ms after nine requests started at
//! once, cause not found; see bench/RESULTS.md, session 7). Tried again
//! once loopback kept its large datagrams (session 8), it made a clone
//! slower (5.2-7.5 s against 4.1-4.6 s): the client is then short of CPU,
//! and chunks that come early only wait longer for the checkout.
//! The walk goes level by level; a level's trees are asked for in up to
//! four requests at once, each tree decoded and walked as it comes, on the
//! thread that read it (the walk's state is shared behind a lock).
//!
//! A serving request reads objects up to 4 MiB (or one larger object) and
//! 256 objects ahead of what the network took, and hands each object's
//! buffer to the stream as it is, not copied. A session closes by sending
//! its close and waiting until that datagram went out, not for the QUIC
//! draining period (three probe timeouts, about 80 ms on loopback): a
//! lost close costs the peer at most its idle timeout.
//!
//! # Limits
//!
//! Control messages are at most [`wire::MAX_MESSAGE`] bytes, objects at
//! most [`dbox_store::limits::MAX_OBJECT_SIZE`]; a `Walk` returns at most
//! [`wire::MAX_WALK`] pairs, a `Get` asks for at most [`wire::MAX_GET`]
//! objects. Every read and write has a timeout ([`REQUEST_TIMEOUT`]) that
//! runs from the last progress, not from the start: a large object on a
//! slow link is fine, a peer that stops reading or sending is dropped. The
//! connection has an idle timeout ([`IDLE_TIMEOUT`]) and keep-alives.
//!
//! Before its hello is accepted, a client is a stranger and costs the
//! server little: one stream, a [`tls::PRE_AUTH_WINDOW`] connection window,
//! a hello of at most [`wire::MAX_HELLO`], and [`ops::ADMIT_TIMEOUT`] from
//! first packet to hello. At most [`ops::MAX_UNADMITTED`] such connections
//! wait at once ([`ops::MAX_UNADMITTED_PER_IP`] per IPv4 address or IPv6
//! /64, more from there are refused in the handshake). Once a quarter of
//! the places are taken, a newcomer must prove its address with a QUIC
//! retry (no spoofed packets); when all are taken, the oldest waiting
//! connection (at least a second old) is dropped for the newcomer. The
//! membership list is re-read only when its file changes, so a stranger
//! costs a `stat`, not thousands of signature checks.
//!
//! Admitted, a member gets full windows and 64 streams; at most
//! [`ops::MAX_CONNECTIONS`] members are connected at once, each with at
//! most [`ops::MAX_SESSIONS_PER_PEER`] sessions. A session answers 16
//! `Get`s at a time (128 over the process) and runs one pull for
//! announcements at a time (4 over the process); a request that waits 20 s
//! for its turn is answered "busy". A pull takes at most one million
//! versions. `Heads` and `Walk` re-read the version graph only when the
//! versions log changed. A client answers requests only from a server that
//! is a member.
//!
//! A pull holds the store's writer lock only while objects are being
//! written: it gives it back after a flush every few seconds, and whenever
//! nothing arrives for a second, so local commits are not locked out by a
//! long or slow transfer. An announcer waits as long as the puller keeps
//! taking objects, however slowly.

pub mod invite;
pub mod ops;
pub mod session;
pub mod tls;
pub mod wire;

use std::time::Duration;

/// ALPN protocol id, carrying the protocol version.
pub const ALPN: &[u8] = b"dbox/1";
/// The protocol version inside [`wire::Hello`].
pub const PROTOCOL: u32 = 1;
/// Port `dbox serve` listens on by default.
pub const DEFAULT_PORT: u16 = 7447;
/// How long to wait for a connection to be made.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for any one message.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection with no traffic for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Could not reach or handshake with a peer.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer refused us.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The peer broke the protocol or sent bad data.
    #[error("protocol error from the peer: {0}")]
    Protocol(String),
    /// A wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection ended.
    #[error("the connection was lost: {0}")]
    Lost(String),
    /// A local problem (socket, TLS setup).
    #[error("{0}")]
    Local(String),
}

impl From<quinn::ConnectionError> for NetError {
    fn from(e: quinn::ConnectionError) -> Self {
        match &e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                let reason = String::from_utf8_lossy(&c.reason);
                if reason.is_empty() {
                    NetError::Lost("the peer closed the connection".into())
                } else {
                    NetError::Refused(reason.into_owned())
                }
            }
            quinn::ConnectionError::TimedOut => NetError::Lost("no answer from the peer (timed out)".into()),
            _ => NetError::Lost(e.to_string()),
        }
    }
}

impl From<quinn::WriteError> for NetError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            e => NetError::Lost(e.to_string()),
        }
    }
}

impl From<quinn::ReadError> for NetError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => c.into(),
            e => NetError::Lost(e.to_string()),
        }
    }
}

impl From<quinn::ReadExactError> for NetError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => c.into(),
            quinn::ReadExactError::FinishedEarly(_) => NetError::Protocol("a message was cut short".into()),
            e => NetError::Lost(e.to_string()),
        }
    }
}

/// Runs `f` with a timeout.
pub(crate) async fn timed<T>(
    what: &'static str,
    d: Duration,
    f: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout(what)),
    }
}
