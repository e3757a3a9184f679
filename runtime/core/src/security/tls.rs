//! QUIC/TLS configurations: the head's (or a worker's) server side, and a client side that
//! trusts exactly one pinned certificate.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::{Fingerprint, Identity, SecurityError};

/// The TLS server name every Ember certificate is issued for, and every client asks for.
pub const SERVER_NAME: &str = "ember-cluster";

/// The ALPN protocol both sides require.
pub const ALPN: &[u8] = b"ember/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The transport both sides use: many concurrent RPC streams, large windows, fast detection
/// of a dead peer.
pub(crate) fn transport_config() -> Arc<quinn::TransportConfig> {
    const MIB: u32 = 1 << 20;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(10_000))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(1_000))
        .stream_receive_window(quinn::VarInt::from_u32(16 * MIB))
        .receive_window(quinn::VarInt::from_u32(64 * MIB))
        .send_window(64 * u64::from(MIB))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))));
    Arc::new(t)
}

/// A quinn server configuration presenting `identity`, with [`ALPN`] and the tuned transport
/// (10 000 concurrent bidirectional streams, 1 000 unidirectional, 16 MiB stream and 64 MiB
/// connection windows, keep-alive every second, 10 s idle timeout). Clients are not asked for
/// certificates; they prove themselves with the cluster token.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, SecurityError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| SecurityError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// A quinn client configuration that trusts exactly the certificate whose fingerprint is
/// `pinned`, whatever its names, issuer or dates; handshake signatures are still verified.
/// Same [`ALPN`] and transport as [`server_config`]. Connect with server name
/// [`SERVER_NAME`]. A server with another certificate fails the handshake with
/// [`SecurityError::FingerprintMismatch`]'s message.
pub fn client_config(pinned: Fingerprint) -> Result<quinn::ClientConfig, SecurityError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pinned, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| SecurityError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Wraps an error so that its `Debug` is its `Display`: rustls shows
/// `CertificateError::Other` with `Debug`, and the message is meant for people.
struct Readable(SecurityError);

impl std::fmt::Debug for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Readable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Trusts one certificate, by fingerprint.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            let err = SecurityError::FingerprintMismatch {
                expected: self.pinned,
                presented,
            };
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Readable(err))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
