//! Unit tests of the security module, including a real QUIC handshake on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(20);

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn load_or_create_is_stable_and_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let a = ClusterSecrets::load_or_create(&dir).unwrap();
    let b = ClusterSecrets::load_or_create(&dir).unwrap();
    assert_eq!(a.identity.fingerprint, b.identity.fingerprint);
    assert_eq!(a.identity.fingerprint, Fingerprint::of(&b.identity.cert));
    assert_eq!(a.token, b.token);
    assert_eq!(a.token.len(), 64);
    assert!(a.token.chars().all(|c| c.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ClusterSecrets::KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(ClusterSecrets::TOKEN_FILE)), 0o600);
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // Another directory is another cluster.
    let c = ClusterSecrets::load_or_create(&tmp.path().join("other")).unwrap();
    assert_ne!(a.identity.fingerprint, c.identity.fingerprint);
    assert_ne!(a.token, c.token);
}

#[test]
fn load_or_create_refuses_damaged_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterSecrets::load_or_create(tmp.path()).unwrap();
    std::fs::remove_file(tmp.path().join(ClusterSecrets::TOKEN_FILE)).unwrap();
    let err = ClusterSecrets::load_or_create(tmp.path()).unwrap_err();
    assert!(matches!(err, SecurityError::CorruptSecret { .. }), "{err}");

    // A key from another identity is caught.
    let tmp2 = tempfile::tempdir().unwrap();
    ClusterSecrets::load_or_create(tmp2.path()).unwrap();
    std::fs::copy(
        tmp2.path().join(ClusterSecrets::TOKEN_FILE),
        tmp.path().join(ClusterSecrets::TOKEN_FILE),
    )
    .unwrap();
    ClusterSecrets::load_or_create(tmp.path()).unwrap();
    std::fs::copy(
        tmp2.path().join(ClusterSecrets::KEY_FILE),
        tmp.path().join(ClusterSecrets::KEY_FILE),
    )
    .unwrap();
    let err = ClusterSecrets::load_or_create(tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("not the certificate's key"),
        "{err}"
    );
}

#[test]
fn fingerprint_text_and_serde_round_trip() {
    let fp = Fingerprint::of(b"some certificate");
    let text = fp.to_string();
    assert!(text.starts_with("sha256:"));
    assert_eq!(text.len(), 7 + 64);
    assert_eq!(text, text.to_lowercase());
    assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(text[7..].parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(text.to_uppercase().parse::<Fingerprint>().unwrap(), fp);

    let json = serde_json::to_string(&fp).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);

    for bad in [
        "",
        "sha256:",
        "sha256:abc",
        &format!("sha256:{}", "g".repeat(64)),
        &format!("sha256:{}", "a".repeat(65)),
        &format!("md5:{}", "a".repeat(64)),
    ] {
        let err = bad.parse::<Fingerprint>().unwrap_err();
        assert!(matches!(err, SecurityError::BadFingerprint { .. }), "{bad}");
    }
    assert!(serde_json::from_str::<Fingerprint>("\"sha256:00\"").is_err());
    assert!(serde_json::from_str::<Fingerprint>("42").is_err());
}

#[test]
fn fingerprint_travels_through_rkyv() {
    let fp = Fingerprint::of(b"x");
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&fp).unwrap();
    let back = rkyv::from_bytes::<Fingerprint, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, fp);
}

fn sample_cluster_file() -> ClusterFile {
    ClusterFile {
        address: "127.0.0.1:7400".parse().unwrap(),
        token: "ab".repeat(32),
        fingerprint: Fingerprint::of(b"cert"),
    }
}

#[test]
fn cluster_file_write_and_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let cf = sample_cluster_file();
    cf.write(&dir).unwrap();
    let file = dir.join(ClusterFile::FILE_NAME);
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    assert_eq!(ClusterFile::load(&dir).unwrap(), cf);
    assert_eq!(ClusterFile::load(&file).unwrap(), cf);
    assert_eq!(ClusterFile::discover(Some(&dir)).unwrap(), cf);
    assert_eq!(ClusterFile::discover(Some(&file)).unwrap(), cf);

    // Rewriting replaces it.
    let mut cf2 = cf.clone();
    cf2.address = "10.0.0.1:9000".parse().unwrap();
    cf2.write(&dir).unwrap();
    assert_eq!(ClusterFile::load(&dir).unwrap(), cf2);

    std::fs::write(&file, b"{ not json").unwrap();
    let err = ClusterFile::load(&dir).unwrap_err();
    assert!(matches!(err, SecurityError::BadClusterFile { .. }), "{err}");
}

#[test]
fn discover_missing_says_where_and_how() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let err = ClusterFile::discover(Some(&missing)).unwrap_err();
    let expected = format!(
        "no Ember cluster at {}: start one with `ember head` or `ember up`, or point --cluster / EMBER_CLUSTER at its state directory",
        missing.join(ClusterFile::FILE_NAME).display()
    );
    assert_eq!(err.to_string(), expected);

    // An existing but empty state directory.
    let err = ClusterFile::discover(Some(tmp.path())).unwrap_err();
    assert!(err.to_string().contains("no Ember cluster at"), "{err}");
    assert!(err.to_string().contains("cluster.json"), "{err}");
}

#[test]
fn join_command_is_exact() {
    let cf = sample_cluster_file();
    assert_eq!(
        cf.join_command(),
        format!(
            "ember worker --head 127.0.0.1:7400 --token {} --fingerprint {}",
            "ab".repeat(32),
            cf.fingerprint
        )
    );
}

#[test]
fn default_state_dir_ends_in_dot_ember() {
    assert!(default_state_dir().ends_with(".ember"));
}

#[test]
fn token_comparison() {
    let t = "ab".repeat(32);
    assert!(token_matches(&t, &t.clone()));
    assert!(!token_matches(&t, &"ac".repeat(32)));
    assert!(!token_matches(&t, &t[..63]));
    assert!(!token_matches(&t, &format!("{t}0")));
    assert!(!token_matches(&t, ""));
    assert!(token_matches("", ""));
}

/// Starts an echo server with `identity` on loopback and returns its endpoint.
fn echo_server(identity: &Identity) -> quinn::Endpoint {
    let config = server_config(identity).unwrap();
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let data = recv.read_to_end(1 << 20).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                    });
                }
            });
        }
    });
    endpoint
}

fn client(pinned: Fingerprint) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    endpoint.set_default_client_config(client_config(pinned).unwrap());
    endpoint
}

#[tokio::test]
async fn pinned_client_talks_to_the_right_server() {
    tokio::time::timeout(TIMEOUT, async {
        let identity = Identity::ephemeral().unwrap();
        let server = echo_server(&identity);
        let addr = server.local_addr().unwrap();
        let client = client(identity.fingerprint);
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        assert_eq!(
            conn.handshake_data()
                .unwrap()
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .unwrap()
                .protocol
                .as_deref(),
            Some(ALPN)
        );
        for round in 0..3u8 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let msg = vec![round; 100_000];
            send.write_all(&msg).await.unwrap();
            send.finish().unwrap();
            let echoed = recv.read_to_end(1 << 20).await.unwrap();
            assert_eq!(echoed, msg);
        }
        conn.close(0u32.into(), b"done");
        client.wait_idle().await;
        server.close(0u32.into(), b"done");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn pinned_client_rejects_another_server() {
    tokio::time::timeout(TIMEOUT, async {
        let identity = Identity::ephemeral().unwrap();
        let server = echo_server(&identity);
        let addr = server.local_addr().unwrap();
        let other = Identity::ephemeral().unwrap();
        assert_ne!(other.fingerprint, identity.fingerprint);
        let client = client(other.fingerprint);
        let err = client
            .connect(addr, SERVER_NAME)
            .unwrap()
            .await
            .expect_err("connected to a server with the wrong certificate");
        let text = err.to_string();
        assert!(text.contains("not the cluster's"), "{text}");
        assert!(text.contains(&identity.fingerprint.to_string()), "{text}");
        assert!(text.contains(&other.fingerprint.to_string()), "{text}");
        server.close(0u32.into(), b"done");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn cluster_identity_serves_after_reload() {
    tokio::time::timeout(TIMEOUT, async {
        let tmp = tempfile::tempdir().unwrap();
        let first = ClusterSecrets::load_or_create(tmp.path()).unwrap();
        let secrets = ClusterSecrets::load_or_create(tmp.path()).unwrap();
        let server = echo_server(&secrets.identity);
        let client = client(first.identity.fingerprint);
        let conn = client
            .connect(server.local_addr().unwrap(), SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"hello");
        server.close(0u32.into(), b"done");
    })
    .await
    .expect("test timed out");
}
