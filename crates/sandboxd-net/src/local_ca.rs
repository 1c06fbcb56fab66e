//! A certificate authority of the daemon's own, kept in its data dir: the egress CA (whose
//! certificate sandboxes trust, for HTTPS header rules: [`crate::interception`]) and the
//! ingress CA (for `https://<port>-<id>.<domain>` without a certificate of the user's:
//! `docs/network.md`, "HTTPS ingress"). Two separate CAs, so trusting the ingress CA on a
//! client never lets the egress proxy's certificates be trusted there, and the other way round.
//!
//! `rcgen` makes the certificates (ECDSA P-256); `rustls` serves them (the aws-lc-rs provider,
//! the one the daemon's other TLS already uses).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// File names in a CA directory.
pub const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
/// How long a minted leaf is used before a fresh one is made (its validity is longer).
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);
/// Leaves kept at once (one per name); the cache starts over when full.
const MAX_LEAVES: usize = 1024;

/// Why a CA or a TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Making or parsing a certificate or key.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A PEM file with no usable certificate (or key).
    #[error("{0}: no usable PEM {1} in it")]
    Empty(PathBuf, &'static str),
}

pub(crate) fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Certificate(e.to_string())
}

/// The provider of every TLS config of the daemon.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A CA in a directory of the data dir, and the leaves minted from it.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The key of every leaf (one key, many names: minting is then only a signature).
    leaf_key: Arc<dyn rustls::sign::SigningKey>,
    leaf_key_pair: KeyPair,
    leaves: Mutex<HashMap<String, (Arc<rustls::ServerConfig>, Instant)>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The CA kept in `dir` (`ca.pem`, and `ca.key` mode 0600 in a 0700 directory), made on
    /// first use with the common name `sandboxd <purpose> CA <random>`. A half-written pair (a
    /// crash between the two files) is replaced.
    pub fn load_or_create(dir: &Path, purpose: &str) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
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
                let (c, k) = generate(purpose)?;
                // the key first: a certificate without its key is never left behind
                write_new(&key_path, &k, 0o600).map_err(io(&key_path))?;
                write_new(&cert_path, &c, 0o644).map_err(io(&cert_path))?;
                (c, k)
            }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(cert_err)?;
        let leaf_key_pair = KeyPair::generate().map_err(cert_err)?;
        let leaf_key = load_key(&leaf_key_pair)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            issuer,
            leaf_key,
            leaf_key_pair,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// A TLS server config presenting a certificate for `name` (HTTP/1.1 only), minted once a
    /// day per name, at most [`MAX_LEAVES`] kept.
    pub fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, made)) = leaves.get(name)
            && made.elapsed() < LEAF_REUSE
        {
            return Ok(c.clone());
        }
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        let key = self.mint(&[name.to_string()], 7)?;
        let config = Arc::new(server_config(key, vec![b"http/1.1".to_vec()])?);
        leaves.insert(name.to_string(), (config.clone(), Instant::now()));
        Ok(config)
    }

    /// A certificate for `names` (DNS names, `*.` wildcards, IP addresses), valid `days`, with
    /// the CA certificate in its chain.
    pub fn mint(&self, names: &[String], days: i64) -> Result<Arc<CertifiedKey>, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(cert_err)?),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let leaf = params
            .signed_by(&self.leaf_key_pair, &self.issuer)
            .map_err(cert_err)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.cert_der.clone()],
            self.leaf_key.clone(),
        )))
    }
}

/// A TLS server config that always presents `key`, offering `alpn`.
pub fn server_config(key: Arc<CertifiedKey>, alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig, CaError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The certificate chain and key of PEM files (`--tls-cert`, `--tls-key`).
pub fn certified_key_from_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls_pki_types::pem::Error| CaError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(io(cert))?
        .collect::<Result<_, _>>()
        .map_err(io(cert))?;
    if chain.is_empty() {
        return Err(CaError::Empty(cert.to_path_buf(), "certificate"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CaError::Empty(key.to_path_buf(), "private key"),
        e => io(key)(e),
    })?;
    let signing = provider().key_provider.load_private_key(der).map_err(cert_err)?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        CaError::Certificate(format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

fn load_key(k: &KeyPair) -> Result<Arc<dyn rustls::sign::SigningKey>, CaError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
    provider().key_provider.load_private_key(der).map_err(cert_err)
}

/// A fresh CA: its certificate and key, PEM.
fn generate(purpose: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sandboxd");
    dn.push(
        DnType::CommonName,
        format!("sandboxd {purpose} CA {}", random_suffix()),
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

/// Always the same certificate (the name is known before the handshake, or there is one).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Creates `path` with `mode` and `text`, replacing what was there.
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
    use std::io::Read;
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        let a = LocalCa::load_or_create(&dir, "egress").unwrap();
        let b = LocalCa::load_or_create(&dir, "egress").unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(a.cert_path(), dir.join(CERT_FILE));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        // a certificate without its key (a crash in between) is replaced
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let c = LocalCa::load_or_create(&dir, "egress").unwrap();
        assert_ne!(c.cert_pem(), a.cert_pem());
        // garbage is an error, not a panic
        std::fs::write(dir.join(KEY_FILE), "junk").unwrap();
        assert!(LocalCa::load_or_create(&dir, "egress").is_err());
    }

    #[test]
    fn certificate_files_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&d.path().join("ca"), "test").unwrap();
        let ca_key = d.path().join("ca/ca.key");
        let other = LocalCa::load_or_create(&d.path().join("other"), "test").unwrap();
        // the CA's own certificate and key belong together
        certified_key_from_files(&ca.cert_path(), &ca_key).unwrap();
        // a key of another certificate, files without PEM, missing files
        let e = certified_key_from_files(&other.cert_path(), &ca_key).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "nothing here").unwrap();
        assert!(matches!(
            certified_key_from_files(&junk, &ca_key),
            Err(CaError::Empty(_, "certificate"))
        ));
        assert!(matches!(
            certified_key_from_files(&ca.cert_path(), &junk),
            Err(CaError::Empty(_, "private key"))
        ));
        assert!(certified_key_from_files(&d.path().join("missing"), &ca_key).is_err());
    }
}
