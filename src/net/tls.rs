//! TLS for QUIC: certificates made from device keys, and verifiers that
//! pin peer ids instead of trusting certificate authorities.
//!
//! A certificate is self-signed by the device's ed25519 key; what matters
//! is the key in it, which is the peer id. The handshake's signature is
//! checked against that key by rustls, so only the holder of the private
//! key can present a certificate with its peer id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{NetError, ALPN, IDLE_TIMEOUT};
use dbox_store::PeerId;

/// Socket buffer size asked of the kernel (it may grant less).
const SOCKET_BUFFER: usize = 4 << 20;
/// Flow-control window of one stream.
const STREAM_WINDOW: u32 = 8 << 20;
/// Flow-control window of a connection.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest UDP payload sent or accepted, and the datagram size used on
/// loopback. quinn hands the kernel up to 10 datagrams in one segmented
/// (GSO) send, which must fit in one 64 KiB IP datagram; a larger send
/// fails with EMSGSIZE, which quinn-udp drops as if lost. With 8,952 bytes
/// every full batch was lost, quinn's black-hole detection then fell back to
/// 1,200-byte datagrams, and a clone took five times as many packets.
const MAX_UDP_PAYLOAD: u16 = 6_500;
// quinn's batch (its private `MAX_TRANSMIT_SEGMENTS`, 10 in 0.11) with
// IPv6's UDP header and IPv4's IP and UDP headers fits one IP datagram;
// recheck on a quinn upgrade (the loopback test below also catches it).
const _: () = assert!(10 * MAX_UDP_PAYLOAD as usize + 20 + 8 <= 65_535);
/// Smallest connection window on loopback, whatever the socket buffer.
const MIN_LOOPBACK_WINDOW: u32 = 256 << 10;
/// Streams a peer may have open towards us at once.
const MAX_STREAMS: u32 = 64;
/// Connection window of a server towards a client that has not yet been
/// admitted: enough for the hello, small enough that many strangers cost
/// little memory.
pub const PRE_AUTH_WINDOW: u32 = (1 << 20) + (64 << 10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A device's certificate and key, ready for TLS.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Makes a self-signed certificate for `key`.
    pub fn new(key: &SigningKey) -> Result<Self, NetError> {
        let der =
            key.to_pkcs8_der().map_err(|e| NetError::Local(format!("cannot encode the device key: {e}")))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| NetError::Local(format!("cannot use the device key for TLS: {e}")))?;
        let params = rcgen::CertificateParams::new(vec!["dbox".to_string()])
            .map_err(|e| NetError::Local(format!("cannot make a certificate: {e}")))?;
        let cert = params
            .self_signed(&pair)
            .map_err(|e| NetError::Local(format!("cannot make a certificate: {e}")))?;
        Ok(Self { cert: cert.der().clone(), key: pkcs8 })
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The peer id in a certificate: its ed25519 subject public key.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let spki = c.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err("the certificate's key is not ed25519".into());
    }
    let key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "the certificate's ed25519 key is not 32 bytes".to_string())?;
    Ok(PeerId(key))
}

/// The peer id the other end of `conn` proved it holds.
pub fn remote_peer(conn: &quinn::Connection) -> Result<PeerId, NetError> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| NetError::Protocol("the peer presented no certificate".into()))?;
    let first =
        certs.first().ok_or_else(|| NetError::Protocol("the peer presented no certificate".into()))?;
    peer_id_of(first).map_err(NetError::Protocol)
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

/// Client side: accepts exactly one key.
#[derive(Debug)]
struct PinnedServer {
    expected: PeerId,
    seen: Arc<Mutex<Option<PeerId>>>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = peer_id_of(end_entity).map_err(rustls::Error::General)?;
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(id);
        }
        if id == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: any well-formed ed25519 certificate passes the handshake;
/// the session then decides by membership.
#[derive(Debug)]
struct AnyEd25519Client;

impl ClientCertVerifier for AnyEd25519Client {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        peer_id_of(end_entity).map_err(rustls::Error::General)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn transport(loopback: bool, server: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // The idle timeout is far below u64 microseconds; the conversion cannot fail.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(IDLE_TIMEOUT / 4));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    if server {
        // One stream and a small window until the hello is accepted; see [`admit`].
        t.receive_window(quinn::VarInt::from_u32(PRE_AUTH_WINDOW));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    } else {
        t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    }
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    if loopback {
        // The window is what the kernel's socket buffer holds: a larger one
        // lets a burst overflow the buffer whenever the receiving task is
        // not scheduled for a few milliseconds, and every datagram dropped
        // there is resent after a loss that also halves the send rate.
        let window = loopback_window();
        t.stream_receive_window(quinn::VarInt::from_u32(window.min(STREAM_WINDOW)));
        if !server {
            t.receive_window(quinn::VarInt::from_u32(window));
        }
        // Loopback carries jumbo datagrams: far fewer packets, far less
        // CPU per byte. No discovery is needed (or wanted: its probes would
        // cost more than a short sync moves).
        t.initial_mtu(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(None);
    }
    Arc::new(t)
}

/// Tunes a server configuration for a client on the same machine.
pub fn for_loopback_server(c: &mut quinn::ServerConfig) {
    c.transport_config(transport(true, true));
}

/// Tunes a client configuration for a server on the same machine.
pub fn for_loopback_client(c: &mut quinn::ClientConfig) {
    c.transport_config(transport(true, false));
}

/// The connection window for a peer on the same machine: three quarters of
/// the receive buffer the kernel grants a socket (Linux reports twice what
/// was asked, and each datagram's bookkeeping counts against it), within
/// [`MIN_LOOPBACK_WINDOW`] and [`CONNECTION_WINDOW`]. Measured once per
/// process. A clone of `mixed` took the same time with 6 MiB here (4 MiB
/// `net.core.rmem_max`) and with 312 KiB under the kernel's default
/// 208 KiB, dropping no datagram; 32 MiB dropped hundreds and was slower.
fn loopback_window() -> u32 {
    static WINDOW: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| {
        use socket2::{Domain, Protocol, Socket, Type};
        let granted = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .and_then(|s| {
                s.set_recv_buffer_size(SOCKET_BUFFER)?;
                s.recv_buffer_size()
            })
            .unwrap_or(0);
        u32::try_from(granted / 4 * 3).unwrap_or(u32::MAX).clamp(MIN_LOOPBACK_WINDOW, CONNECTION_WINDOW)
    })
}

/// Opens a server connection up to full windows and stream counts, once
/// the client's hello has been accepted.
pub fn admit(conn: &quinn::Connection) {
    let window = match conn.remote_address().ip().to_canonical().is_loopback() {
        true => loopback_window(),
        false => CONNECTION_WINDOW,
    };
    conn.set_receive_window(quinn::VarInt::from_u32(window));
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
}

fn tls_error(e: impl std::fmt::Display) -> NetError {
    NetError::Local(format!("TLS setup failed: {e}"))
}

/// Server configuration for a device.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(AnyEd25519Client))
        .with_single_cert(id.chain(), id.key())
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(transport(false, true));
    Ok(c)
}

/// Client configuration for connecting to `expected`; `seen` receives the
/// key the server presented (for a clear error on a mismatch).
pub fn client_config(
    id: &Identity,
    expected: PeerId,
    seen: Arc<Mutex<Option<PeerId>>>,
) -> Result<quinn::ClientConfig, NetError> {
    client_config_alpn(id, expected, seen, ALPN)
}

/// [`client_config`] with another ALPN id (tests of version mismatch).
pub fn client_config_alpn(
    id: &Identity,
    expected: PeerId,
    seen: Arc<Mutex<Option<PeerId>>>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { expected, seen }))
        .with_client_auth_cert(id.chain(), id.key())
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_error)?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport(false, false));
    Ok(c)
}

/// A UDP endpoint bound to `addr` with large socket buffers; a server if
/// `server` is given.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint, NetError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |e: std::io::Error| NetError::Local(format!("cannot listen on {addr}: {e}"));
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer only
    // costs speed.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into()).map_err(bind_err)?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Local("no async runtime".into()))?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| NetError::Local(format!("endpoint setup: {e}")))?;
    quinn::Endpoint::new(config, server, sock.into(), runtime).map_err(bind_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// 48 MiB from a loopback server to its client: every datagram keeps
    /// the loopback size. With a payload whose ten-datagram batch exceeds
    /// 64 KiB, full batches were dropped, quinn took that for an MTU black
    /// hole and fell back to 1,200 bytes.
    #[test]
    fn a_bulk_transfer_on_loopback_keeps_its_large_datagrams() -> R<()> {
        const BYTES: usize = 48 << 20;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(async {
            let (server_key, client_key) =
                (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
            let expected = PeerId(server_key.verifying_key().to_bytes());
            let mut sc = server_config(&Identity::new(&server_key)?)?;
            for_loopback_server(&mut sc);
            let server = endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), Some(sc))?;
            let addr = server.local_addr()?;
            let sending = tokio::spawn(async move {
                let conn = server.accept().await.ok_or("no connection")?.await?;
                admit(&conn);
                let (mut send, mut recv) = conn.accept_bi().await?;
                let mut ask = [0u8; 1];
                recv.read_exact(&mut ask).await?;
                let block = vec![7u8; 1 << 20];
                for _ in 0..BYTES / block.len() {
                    send.write_all(&block).await?;
                }
                send.finish()?;
                let _ = send.stopped().await;
                let stats = conn.stats().path;
                server.close(0u32.into(), b"");
                R::Ok(stats)
            });
            let mut cc = client_config(&Identity::new(&client_key)?, expected, Arc::new(Mutex::new(None)))?;
            for_loopback_client(&mut cc);
            let client = endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
            let conn = client.connect_with(cc, addr, "dbox")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[1]).await?;
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 20];
            while let Some(n) = recv.read(&mut buf).await? {
                got += n;
            }
            assert_eq!(got, BYTES);
            let stats = sending.await??;
            assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
            assert_eq!(stats.current_mtu, MAX_UDP_PAYLOAD, "{stats:?}");
            // At 1,200 bytes a datagram this would take over 40,000.
            assert!(stats.sent_packets < (BYTES / 4000) as u64, "{stats:?}");
            client.close(0u32.into(), b"");
            Ok(())
        })
    }
}
