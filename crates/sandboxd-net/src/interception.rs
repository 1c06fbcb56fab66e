//! TLS interception for header rules on HTTPS (`docs/network.md`, "Header rules"): a
//! per-daemon certificate authority whose certificate every sandbox trusts (the runtime adds
//! it to the templates' trust stores), leaf certificates minted from it for the names that
//! have `rules`, and the verified TLS connection to the real server.
//!
//! Only connections to names with rules are terminated; every other TLS connection is spliced
//! untouched by the proxy. The CA's key stays in the daemon's data dir (`0600`, in a `0700`
//! directory) and never enters a sandbox. Crates: `rcgen` makes the CA and the leaves,
//! `rustls`/`tokio-rustls` speak TLS on both sides (the aws-lc-rs provider, the one the rest of
//! the daemon's TLS already uses), `rustls-native-certs` reads the host's trust store for the
//! upstream side.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// File names in the CA directory.
const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
/// How long a minted leaf is used before a fresh one is made (its validity is longer).
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);
/// Leaves kept at once (one per intercepted name); the cache starts over when full.
const MAX_LEAVES: usize = 1024;
/// How long the TLS handshakes of an intercepted connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the CA or the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptionError {
    /// Reading or writing the CA's files.
    #[error("egress CA {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making or parsing a certificate or key.
    #[error("egress CA: {0}")]
    Certificate(String),
    /// An extra upstream trust file with no usable certificate.
    #[error("upstream CA file {0}: no PEM certificate in it")]
    NoRoots(PathBuf),
}

fn cert_err(e: impl std::fmt::Display) -> InterceptionError {
    InterceptionError::Certificate(e.to_string())
}

/// The provider of every TLS config here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The daemon's certificate authority for intercepted names, and the leaves minted from it.
pub struct EgressCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The key of every leaf (one key, many names: minting is then only a signature).
    leaf_key: Arc<dyn rustls::sign::SigningKey>,
    leaf_key_pair: KeyPair,
    leaves: Mutex<HashMap<String, (Arc<rustls::ServerConfig>, Instant)>>,
}

impl std::fmt::Debug for EgressCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressCa").finish_non_exhaustive()
    }
}

impl EgressCa {
    /// The CA kept in `dir` (`ca.pem`, `ca.key`), made on first use. A half-written pair (a
    /// crash between the two files) is replaced.
    pub fn load_or_create(dir: &Path) -> Result<Self, InterceptionError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InterceptionError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let existing = match (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            (Ok(c), Ok(k)) => Some((c, k)),
            _ => None,
        };
        let (cert_pem, key_pem) = match existing {
            Some(pair) => pair,
            None => {
                let (c, k) = Self::generate()?;
                // the key first: a certificate without its key is never left behind
                write_new(&key_path, &k, 0o600).map_err(io(&key_path))?;
                write_new(&cert_path, &c, 0o644).map_err(io(&cert_path))?;
                (c, k)
            }
        };
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A fresh CA: its certificate and key, PEM.
    fn generate() -> Result<(String, String), InterceptionError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "sandboxd");
        dn.push(
            DnType::CommonName,
            format!("sandboxd egress CA {}", random_suffix()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, InterceptionError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(cert_err)?;
        let leaf_key_pair = KeyPair::generate().map_err(cert_err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key_pair.serialize_der()));
        let leaf_key = provider().key_provider.load_private_key(der).map_err(cert_err)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
            leaf_key,
            leaf_key_pair,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), as sandboxes trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config presenting a certificate for `name` signed by this CA (minted once
    /// a day per name, at most [`MAX_LEAVES`] kept).
    pub fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, InterceptionError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, made)) = leaves.get(name)
            && made.elapsed() < LEAF_REUSE
        {
            return Ok(c.clone());
        }
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        let config = Arc::new(self.mint(name)?);
        leaves.insert(name.to_string(), (config.clone(), Instant::now()));
        Ok(config)
    }

    fn mint(&self, name: &str) -> Result<rustls::ServerConfig, InterceptionError> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(7);
        let leaf = params
            .signed_by(&self.leaf_key_pair, &self.issuer)
            .map_err(cert_err)?;
        let key = Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.cert_der.clone()],
            self.leaf_key.clone(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(cert_err)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        // the proxy speaks HTTP/1 to the sandbox (the header rules are applied per request)
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Always the same certificate: the proxy already knows the name from the ClientHello.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What the egress proxy needs to apply header rules on HTTPS.
#[derive(Debug, Clone)]
pub struct Interception {
    /// Signs the certificates the sandbox sees.
    pub ca: Arc<EgressCa>,
    /// Verifies the real servers.
    pub upstream: UpstreamTls,
}

/// Creates `path` with `mode` and `text` (never following or replacing an existing file).
fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The TLS client side of intercepted connections: the real server's certificate is verified
/// against the host's trust store and any extra roots (`--egress-upstream-ca`).
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Trusting the host's certificates and those in the PEM files `extra`.
    pub fn new(extra: &[PathBuf]) -> Result<Self, InterceptionError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for path in extra {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| InterceptionError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .filter_map(Result::ok)
                .collect();
            let (n, _) = roots.add_parsable_certificates(certs);
            if n == 0 {
                return Err(InterceptionError::NoRoots(path.clone()));
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                "no trusted certificates on the host ({added} read): header rules on HTTPS will fail"
            );
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(cert_err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// TLS to `name` over `stream`, the server's certificate verified for that name.
    pub async fn connect<S>(
        &self,
        name: &str,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server = ServerName::try_from(name.to_string()).map_err(|e| format!("{name}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS with {name}: {e}")),
            Err(_) => Err(format!("TLS with {name}: timed out")),
        }
    }
}

/// Accepts the sandbox's TLS connection `stream` (its ClientHello not yet consumed) with a
/// certificate for `name` from `ca`.
pub async fn accept<S>(
    ca: &EgressCa,
    name: &str,
    stream: S,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = ca.server_config(name).map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS with the sandbox for {name}: {e}")),
        Err(_) => Err(format!("TLS with the sandbox for {name}: timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_ca_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        let a = EgressCa::load_or_create(&dir).unwrap();
        let b = EgressCa::load_or_create(&dir).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        // a certificate without its key (a crash in between) is replaced
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let c = EgressCa::load_or_create(&dir).unwrap();
        assert_ne!(c.cert_pem(), a.cert_pem());
        // garbage is an error, not a panic
        std::fs::write(dir.join(KEY_FILE), "junk").unwrap();
        assert!(EgressCa::load_or_create(&dir).is_err());
    }

    #[test]
    fn a_bad_extra_root_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("roots.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        assert!(matches!(
            UpstreamTls::new(std::slice::from_ref(&p)),
            Err(InterceptionError::NoRoots(_))
        ));
        assert!(UpstreamTls::new(&[d.path().join("missing.pem")]).is_err());
    }

    /// A client trusting only the CA talks to a server using a minted leaf: the chain and the
    /// name verify, and another name does not.
    #[tokio::test]
    async fn minted_leaves_verify_against_the_ca_only_for_their_name() {
        let d = tempfile::tempdir().unwrap();
        let ca = Arc::new(EgressCa::load_or_create(d.path()).unwrap());
        let ca_file = d.path().join(CERT_FILE);
        let client = UpstreamTls::new(std::slice::from_ref(&ca_file)).unwrap();
        for (asked, minted, ok) in [("api.test", "api.test", true), ("api.test", "other.test", false)] {
            let (c, s) = tokio::io::duplex(64 * 1024);
            let ca2 = ca.clone();
            let server = tokio::spawn(async move {
                let mut tls = accept(&ca2, minted, s).await?;
                let mut b = [0u8; 5];
                tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                tls.write_all(b"world").await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            });
            let r = client.connect(asked, c).await;
            if ok {
                let mut tls = r.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                tls.write_all(b"hello").await.unwrap();
                let mut b = [0u8; 5];
                tls.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"world");
                server.await.unwrap().unwrap();
            } else {
                let e = r.unwrap_err();
                assert!(e.contains("certificate"), "{e}");
                let _ = server.await;
            }
        }
        // the leaf is reused for the same name
        let a = ca.server_config("api.test").unwrap();
        let b = ca.server_config("api.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
