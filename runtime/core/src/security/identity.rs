//! Certificate fingerprints, identities, the head's stored secrets and token comparison.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::fsutil::{create_private_dir, read_optional, write_atomic};
use super::{SecurityError, SERVER_NAME};

/// SHA-256 of a certificate's DER encoding: what a client or worker pins instead of trusting a
/// certificate authority.
///
/// Written (Display, serde) as `sha256:<64 lowercase hex digits>`; parsing also accepts bare
/// hex and upper case.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The prefix of the textual form.
    const PREFIX: &'static str = "sha256:";

    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Self(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| SecurityError::BadFingerprint {
            input: s.to_owned(),
            reason,
        };
        let t = s.trim();
        let digits = match t.get(..Self::PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(Self::PREFIX) => &t[Self::PREFIX.len()..],
            _ => t,
        };
        if digits.len() != 64 {
            return Err(bad("not 64 hexadecimal digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).map_err(|_| bad("not hexadecimal"))?;
        Ok(Self(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A certificate and its private key, with the certificate's fingerprint.
///
/// The head's identity is the cluster's ([`ClusterSecrets`]); a worker's peer listener uses an
/// [`Identity::ephemeral`] one.
pub struct Identity {
    /// The DER-encoded self-signed certificate, valid for [`SERVER_NAME`].
    pub cert: CertificateDer<'static>,
    /// The DER-encoded private key of `cert`.
    pub key: PrivateKeyDer<'static>,
    /// [`Fingerprint::of`] `cert`.
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// A fresh in-memory self-signed certificate for [`SERVER_NAME`] (workers use one for
    /// their peer listener; peers pin it by the fingerprint the head passes along).
    pub fn ephemeral() -> Result<Self, SecurityError> {
        Ok(generate()?.0)
    }

    /// Builds an identity from a certificate and key, checking that the key is usable and
    /// belongs to the certificate.
    fn from_parts(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider)?;
        let fingerprint = Fingerprint::of(&cert);
        Ok(Self {
            cert,
            key,
            fingerprint,
        })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A new self-signed identity, with its certificate and key in PEM.
fn generate() -> Result<(Identity, String, String), SecurityError> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert_der = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let identity = Identity {
        fingerprint: Fingerprint::of(&cert_der),
        cert: cert_der,
        key: key_der,
    };
    Ok((identity, cert.pem(), key_pair.serialize_pem()))
}

/// The head's identity and join token, kept in its state directory.
#[derive(Clone)]
pub struct ClusterSecrets {
    /// The cluster certificate and key; clients and workers pin its fingerprint.
    pub identity: Identity,
    /// The secret every worker and client presents to join or submit: 64 lowercase hex digits.
    pub token: String,
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("identity", &self.identity)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ClusterSecrets {
    /// The certificate's file name in the state directory.
    pub const CERT_FILE: &'static str = "cluster.crt";
    /// The private key's file name in the state directory.
    pub const KEY_FILE: &'static str = "cluster.key";
    /// The token's file name in the state directory.
    pub const TOKEN_FILE: &'static str = "token";

    /// Loads `cluster.crt`, `cluster.key` (PEM) and `token` from `state_dir`, or on first
    /// start creates the directory (0700) and writes them (key and token 0600, each
    /// atomically). The token is 32 random bytes, hex-encoded.
    ///
    /// The certificate is written last, so a first start interrupted part-way is simply
    /// redone; once the certificate exists, a missing or damaged key or token is an error
    /// rather than a silent change of the cluster's identity.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, SecurityError> {
        let cert_path = state_dir.join(Self::CERT_FILE);
        let key_path = state_dir.join(Self::KEY_FILE);
        let token_path = state_dir.join(Self::TOKEN_FILE);

        if let Some(cert_pem) = read_optional(&cert_path)? {
            let corrupt = |path: &Path, reason: String| SecurityError::CorruptSecret {
                path: path.to_owned(),
                reason,
            };
            let cert = CertificateDer::from_pem_slice(&cert_pem)
                .map_err(|e| corrupt(&cert_path, format!("no PEM certificate ({e})")))?;
            let key_pem =
                read_optional(&key_path)?.ok_or_else(|| corrupt(&key_path, "missing".into()))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| corrupt(&key_path, format!("no PEM private key ({e})")))?;
            let identity = Identity::from_parts(cert, key)
                .map_err(|e| corrupt(&key_path, format!("not the certificate's key ({e})")))?;
            let token_bytes = read_optional(&token_path)?
                .ok_or_else(|| corrupt(&token_path, "missing".into()))?;
            let token = String::from_utf8(token_bytes)
                .map_err(|_| corrupt(&token_path, "not text".into()))?
                .trim()
                .to_owned();
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(corrupt(&token_path, "empty or contains spaces".into()));
            }
            return Ok(Self { identity, token });
        }

        create_private_dir(state_dir)?;
        let (identity, cert_pem, key_pem) = generate()?;
        let token = hex::encode(rand::random::<[u8; 32]>());
        write_atomic(&token_path, format!("{token}\n").as_bytes(), 0o600)?;
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
        tracing::info!(
            dir = %state_dir.display(),
            fingerprint = %identity.fingerprint,
            "created a new cluster identity"
        );
        Ok(Self { identity, token })
    }
}

/// Compares a presented token with the cluster's in constant time (neither the position of
/// the first difference nor the length of either token is revealed by timing).
pub fn token_matches(expected: &str, presented: &str) -> bool {
    // Hashing first makes both sides 32 bytes whatever their lengths.
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
