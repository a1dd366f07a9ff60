//! Messages and their framing.
//!
//! A control message is a 4-byte big-endian length and that many bytes of
//! CBOR, at most [`MAX_MESSAGE`]. An object on a `Get` response stream is a
//! frame:
//!
//! ```text
//! [1][id: 32][len: u32 BE][len bytes]             the stored bytes
//! [2][id: 32][len: u32 BE][base: 32][len bytes]   a delta against base
//! [0][id: 32][0: u32]                             the sender lacks it
//! ```
//!
//! A delta ([`dbox_store::delta`]) comes only for an id the asker gave a
//! base for, against that base; the asker rebuilds the payload, seals it
//! again and checks the id as for stored bytes.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{NetError, REQUEST_TIMEOUT};
use dbox_store::limits::MAX_OBJECT_SIZE;
use dbox_store::{ObjectId, VersionId};

/// Largest control message.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest [`Hello`]: it arrives before the client is known, within the
/// small pre-admission window ([`super::tls::PRE_AUTH_WINDOW`]). The
/// records of the most members a repository can have
/// ([`crate::members::MAX_MEMBERS`], about 210 bytes each) fit.
pub const MAX_HELLO: usize = 1 << 20;
/// Most pairs in one `Walk` answer.
pub const MAX_WALK: u32 = 16_384;
/// Most ids in one `Get`.
pub const MAX_GET: usize = 4096;
/// Most heads a peer may announce.
pub const MAX_HEADS: usize = 4096;

/// The first message of a session, client to server.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version ([`super::PROTOCOL`]).
    pub proto: u32,
    /// The repository the client wants.
    pub repo: ByteBuf,
    /// An invitation secret, when joining.
    pub join: Option<ByteBuf>,
    /// The client's membership records.
    pub members: Vec<ByteBuf>,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Welcome {
    /// Go ahead.
    Ok {
        /// The server's membership records.
        members: Vec<ByteBuf>,
        /// The repo key, only for a client joining with an invitation.
        key: Option<ByteBuf>,
    },
    /// No.
    Refused {
        /// Why, for the user.
        reason: String,
    },
}

/// A request; either end may send one on a stream it opens.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Your heads, please.
    Heads,
    /// Walk your graph from these versions.
    Walk {
        /// Where to start.
        from: Vec<ByteBuf>,
        /// At most this many answers.
        limit: u32,
    },
    /// Send these objects.
    Get {
        /// Object ids.
        ids: Vec<ByteBuf>,
        /// Empty, or one entry per id: an object of the same kind the asker
        /// holds, which the answer may be a delta against (an empty entry:
        /// none). A peer without deltas leaves it out and ignores it.
        #[serde(default)]
        bases: Vec<ByteBuf>,
    },
    /// I have these heads: pull them from me.
    Announce {
        /// The announcer's heads.
        heads: Vec<ByteBuf>,
    },
}

/// What a pull took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// Versions added.
    pub versions: u64,
    /// Objects received (trees and chunks, not versions).
    pub objects: u64,
    /// Bytes of those objects, as stored.
    pub bytes: u64,
    /// Of those objects, how many came as deltas.
    #[serde(default)]
    pub deltas: u64,
    /// Bytes those objects took as they came (whole, or as deltas).
    #[serde(default)]
    pub carried: u64,
}

/// An answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// The heads.
    Heads(Vec<ByteBuf>),
    /// `(version, parents)` pairs, breadth first.
    Walk(Vec<(ByteBuf, Vec<ByteBuf>)>),
    /// The pull an announcement caused.
    Announced(Taken),
    /// The request failed.
    Error(String),
}

/// Converts wire ids.
pub fn ids_to_wire(ids: impl IntoIterator<Item = [u8; 32]>) -> Vec<ByteBuf> {
    ids.into_iter().map(|i| ByteBuf::from(i.to_vec())).collect()
}

/// A 32-byte id from the wire.
pub fn id_from_wire(b: &ByteBuf) -> Result<[u8; 32], NetError> {
    b.as_slice().try_into().map_err(|_| NetError::Protocol(format!("an id of {} bytes, not 32", b.len())))
}

/// Version ids from the wire.
pub fn versions_from_wire(v: &[ByteBuf]) -> Result<Vec<VersionId>, NetError> {
    v.iter().map(|b| id_from_wire(b).map(VersionId)).collect()
}

/// Object ids from the wire.
pub fn objects_from_wire(v: &[ByteBuf]) -> Result<Vec<ObjectId>, NetError> {
    v.iter().map(|b| id_from_wire(b).map(ObjectId)).collect()
}

/// Writes one control message.
pub async fn write_msg<T: Serialize>(s: &mut quinn::SendStream, m: &T) -> Result<(), NetError> {
    let body = dbox_store::cbor::encode(m);
    if body.len() > MAX_MESSAGE {
        return Err(NetError::Local(format!("a message of {} bytes is over the limit", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    write_full(s, &frame, "the peer to take a message").await
}

/// Writes all of `buf`, failing only when the peer takes nothing for
/// [`REQUEST_TIMEOUT`]: a slow link is fine, a peer that stopped reading
/// is dropped.
async fn write_full(s: &mut quinn::SendStream, buf: &[u8], what: &'static str) -> Result<(), NetError> {
    let mut at = 0;
    while at < buf.len() {
        match tokio::time::timeout(REQUEST_TIMEOUT, s.write(&buf[at..])).await {
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(NetError::Timeout(what)),
        }
    }
    Ok(())
}

/// Fills `buf`, failing only when nothing arrives for [`REQUEST_TIMEOUT`]
/// (so a large object on a slow link is fine).
async fn read_full(r: &mut quinn::RecvStream, buf: &mut [u8], what: &'static str) -> Result<(), NetError> {
    let mut at = 0;
    while at < buf.len() {
        match tokio::time::timeout(REQUEST_TIMEOUT, r.read(&mut buf[at..])).await {
            Ok(Ok(Some(n))) => at += n,
            Ok(Ok(None)) => return Err(NetError::Protocol(format!("{what}: cut short"))),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(NetError::Timeout(what)),
        }
    }
    Ok(())
}

/// Reads `len` bytes into a new buffer, waiting at most [`REQUEST_TIMEOUT`]
/// for each piece: as [`read_full`], without first filling the buffer with
/// zeros (for an object, that is a pass over every byte received).
async fn read_vec(r: &mut quinn::RecvStream, len: usize, what: &'static str) -> Result<Vec<u8>, NetError> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        match tokio::time::timeout(REQUEST_TIMEOUT, r.read_chunk(len - buf.len(), true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(Ok(None)) => return Err(NetError::Protocol(format!("{what}: cut short"))),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(NetError::Timeout(what)),
        }
    }
    Ok(buf)
}

/// Reads one control message, waiting at most [`REQUEST_TIMEOUT`].
pub async fn read_msg<T: DeserializeOwned>(
    r: &mut quinn::RecvStream,
    what: &'static str,
) -> Result<T, NetError> {
    read_msg_limited(r, what, MAX_MESSAGE).await
}

/// Reads one control message of at most `max` bytes, waiting at most
/// [`REQUEST_TIMEOUT`] for each piece of it.
pub async fn read_msg_limited<T: DeserializeOwned>(
    r: &mut quinn::RecvStream,
    what: &'static str,
    max: usize,
) -> Result<T, NetError> {
    let mut len = [0u8; 4];
    read_full(r, &mut len, what).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(NetError::Protocol(format!("{what}: a message of {len} bytes is over the limit")));
    }
    let mut body = vec![0u8; len];
    read_full(r, &mut body, what).await?;
    dbox_store::cbor::decode(what, &body, MAX_MESSAGE).map_err(|e| NetError::Protocol(e.to_string()))
}

/// What an object frame carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The sender lacks the object.
    Missing,
    /// The stored bytes.
    Whole(Vec<u8>),
    /// A delta of the object's payload against the payload of `base`.
    Delta {
        /// The object the delta is against.
        base: ObjectId,
        /// The delta.
        delta: Vec<u8>,
    },
}

/// Writes one delta frame: `id`'s payload as `delta` against `base`'s.
pub async fn write_delta(
    s: &mut quinn::SendStream,
    id: &ObjectId,
    base: &ObjectId,
    delta: &[u8],
) -> Result<(), NetError> {
    let mut head = [0u8; 69];
    head[0] = 2;
    head[1..33].copy_from_slice(id.as_bytes());
    head[33..37].copy_from_slice(&(delta.len() as u32).to_be_bytes());
    head[37..].copy_from_slice(base.as_bytes());
    write_full(s, &head, "the peer to take an object").await?;
    write_full(s, delta, "the peer to take an object").await
}

/// Writes one object frame (`None`: the sender lacks it).
pub async fn write_object(
    s: &mut quinn::SendStream,
    id: &ObjectId,
    bytes: Option<&[u8]>,
) -> Result<(), NetError> {
    let head = object_head(id, bytes.map(<[u8]>::len));
    // A peer that stops reading is dropped rather than waited on forever.
    write_full(s, &head, "the peer to take an object").await?;
    if let Some(b) = bytes {
        write_full(s, b, "the peer to take an object").await?;
    }
    Ok(())
}

/// [`write_object`] for an object the caller gives up: the stream takes
/// its buffer as it is, with no copy into the stream's own.
pub async fn write_object_owned(
    s: &mut quinn::SendStream,
    id: &ObjectId,
    bytes: Vec<u8>,
) -> Result<(), NetError> {
    let head = object_head(id, Some(bytes.len()));
    let mut parts = [Bytes::copy_from_slice(&head), Bytes::from(bytes)];
    let mut at = 0;
    while at < parts.len() {
        // As `write_full`: the wait is for progress, not for the whole.
        match tokio::time::timeout(REQUEST_TIMEOUT, s.write_chunks(&mut parts[at..])).await {
            Ok(Ok(w)) => at += w.chunks,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(NetError::Timeout("the peer to take an object")),
        }
    }
    Ok(())
}

/// An object frame's head: the kind (whole or missing), the id and the
/// length.
fn object_head(id: &ObjectId, len: Option<usize>) -> [u8; 37] {
    let mut head = [0u8; 37];
    head[0] = u8::from(len.is_some());
    head[1..33].copy_from_slice(id.as_bytes());
    head[33..].copy_from_slice(&(len.unwrap_or(0) as u32).to_be_bytes());
    head
}

/// Reads one object frame: the id and what came for it. Nothing is yet
/// checked against the id; `max_len` bounds the bytes.
pub async fn read_object(r: &mut quinn::RecvStream, max_len: usize) -> Result<(ObjectId, Frame), NetError> {
    let max_len = max_len.min(MAX_OBJECT_SIZE);
    let mut head = [0u8; 37];
    read_full(r, &mut head, "an object").await?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&head[1..33]);
    let len = u32::from_be_bytes([head[33], head[34], head[35], head[36]]) as usize;
    match head[0] {
        0 if len == 0 => Ok((ObjectId(id), Frame::Missing)),
        1 if len <= max_len => {
            let b = read_vec(r, len, "an object").await?;
            Ok((ObjectId(id), Frame::Whole(b)))
        }
        2 if len <= max_len => {
            let mut base = [0u8; 32];
            read_full(r, &mut base, "an object").await?;
            let delta = read_vec(r, len, "an object").await?;
            Ok((ObjectId(id), Frame::Delta { base: ObjectId(base), delta }))
        }
        1 | 2 => Err(NetError::Protocol(format!("an object of {len} bytes is over the limit"))),
        _ => Err(NetError::Protocol("a malformed object frame".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::{Record, MAX_MEMBERS};

    #[test]
    fn a_hello_with_the_most_members_fits_the_limit() {
        let repo = dbox_store::RepoId([1; 32]);
        let key = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let members = (0..MAX_MEMBERS)
            .map(|i| {
                let mut m = [0u8; 32];
                m[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let r = Record::sign(repo, dbox_store::PeerId(m), &key, i64::MAX);
                ByteBuf::from(r.as_bytes().to_vec())
            })
            .collect();
        let hello = Hello {
            proto: 1,
            repo: ByteBuf::from(vec![1; 32]),
            join: Some(ByteBuf::from(vec![3; 32])),
            members,
        };
        let len = dbox_store::cbor::encode(&hello).len();
        assert!(len + 4 <= MAX_HELLO, "{len}");
        assert!(len + 4 <= super::super::tls::PRE_AUTH_WINDOW as usize, "{len}");
    }

    /// Object frames sent in small pieces, back to back: each body is read
    /// exactly (never into the next frame), in a buffer of its own length;
    /// one over the limit and one cut short are refused.
    #[test]
    fn object_frames_in_pieces_are_read_exactly() {
        use super::super::tls;
        use std::net::SocketAddr;
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        rt.block_on(async {
            let skey = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            let ckey = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
            let sid = tls::Identity::new(&skey).expect("id");
            let cid = tls::Identity::new(&ckey).expect("id");
            let server = tls::endpoint(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Some(tls::server_config(&sid).expect("cfg")),
            )
            .expect("server");
            let addr = server.local_addr().expect("addr");
            let client = tls::endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("client");
            let cfg = tls::client_config(
                &cid,
                dbox_store::PeerId(skey.verifying_key().to_bytes()),
                std::sync::Arc::new(std::sync::Mutex::new(None)),
            )
            .expect("cfg");
            let bodies: Vec<Vec<u8>> = [0usize, 1, 5_000, 150_000]
                .iter()
                .map(|n| (0..*n).map(|i| (i * 31 + n) as u8).collect())
                .collect();
            let sent = bodies.clone();
            let sender = tokio::spawn(async move {
                let conn = client.connect_with(cfg, addr, "dbox").expect("connect").await.expect("handshake");
                let (mut s, _r) = conn.open_bi().await.expect("open");
                // Frames into one buffer, sent 997 bytes at a time.
                let mut all = Vec::new();
                for (i, b) in sent.iter().enumerate() {
                    let mut head = vec![1u8];
                    head.extend_from_slice(&[i as u8; 32]);
                    head.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    all.extend_from_slice(&head);
                    all.extend_from_slice(b);
                }
                // A delta frame.
                all.push(2);
                all.extend_from_slice(&[9; 32]);
                all.extend_from_slice(&3u32.to_be_bytes());
                all.extend_from_slice(&[10; 32]);
                all.extend_from_slice(&[1, 2, 3]);
                // Over the limit: 200_001 bytes stated.
                all.push(1);
                all.extend_from_slice(&[11; 32]);
                all.extend_from_slice(&200_001u32.to_be_bytes());
                for piece in all.chunks(997) {
                    s.write_all(piece).await.expect("write");
                    tokio::task::yield_now().await;
                }
                s.finish().expect("finish");
                // Cut short: 1000 stated, 10 sent.
                let (mut s, _r2) = conn.open_bi().await.expect("open");
                s.write_all(&[1]).await.expect("write");
                s.write_all(&[12; 32]).await.expect("write");
                s.write_all(&1000u32.to_be_bytes()).await.expect("write");
                s.write_all(&[0; 10]).await.expect("write");
                s.finish().expect("finish");
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
                conn
            });
            let conn = server.accept().await.expect("incoming").await.expect("handshake");
            tls::admit(&conn);
            let (_s, mut r) = conn.accept_bi().await.expect("accept");
            for (i, b) in bodies.iter().enumerate() {
                let (id, frame) = read_object(&mut r, 200_000).await.expect("frame");
                assert_eq!(id, ObjectId([i as u8; 32]));
                match frame {
                    Frame::Whole(got) => {
                        assert_eq!(&got, b);
                        assert_eq!(got.capacity(), b.len(), "a buffer of the stated length only");
                    }
                    _ => panic!("not whole"),
                }
            }
            match read_object(&mut r, 200_000).await.expect("delta") {
                (id, Frame::Delta { base, delta }) => {
                    assert_eq!((id, base, delta), (ObjectId([9; 32]), ObjectId([10; 32]), vec![1, 2, 3]));
                }
                _ => panic!("not a delta"),
            }
            let Err(e) = read_object(&mut r, 200_000).await else { panic!("over the limit was read") };
            assert!(e.to_string().contains("over the limit"), "{e}");
            let (_s2, mut r2) = conn.accept_bi().await.expect("accept");
            let Err(e) = read_object(&mut r2, 200_000).await else { panic!("cut short was read") };
            assert!(e.to_string().contains("cut short"), "{e}");
            drop(sender);
        });
    }
}
