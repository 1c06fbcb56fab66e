//! TLS interception for header rules on HTTPS (`docs/network.md`, "Header rules"): the egress
//! CA ([`LocalCa`]) whose certificate every sandbox trusts (the runtime adds it to the templates'
//! trust stores), leaf certificates minted from it for the names that have `rules`, and the
//! verified TLS connection to the real server.
//!
//! Only connections to names with rules are terminated; every other TLS connection is spliced
//! untouched by the proxy. The CA's key stays in the daemon's data dir and never enters a
//! sandbox. `rustls`/`tokio-rustls` speak TLS on both sides, `rustls-native-certs` reads the
//! host's trust store for the upstream side.

use crate::local_ca::{CaError, LocalCa, cert_err, provider};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long the TLS handshakes of an intercepted connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the egress proxy needs to apply header rules on HTTPS.
#[derive(Debug, Clone)]
pub struct Interception {
    /// Signs the certificates the sandbox sees (the egress CA).
    pub ca: Arc<LocalCa>,
    /// Verifies the real servers.
    pub upstream: UpstreamTls,
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
    pub fn new(extra: &[PathBuf]) -> Result<Self, CaError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for path in extra {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| CaError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .filter_map(Result::ok)
                .collect();
            let (n, _) = roots.add_parsable_certificates(certs);
            if n == 0 {
                return Err(CaError::Empty(path.clone(), "certificate"));
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

/// TLS to an `egressProxy` with `tls.enabled`, its certificate verified for `name` against
/// `tls.caCert` when given (only those certificates), else the host's trust store.
pub async fn proxy_tls<S>(
    tls: &crate::policy::ProxyTls,
    name: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_cert {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
            roots.add_parsable_certificates(certs);
        }
        None => {
            // read once: the host's store is a few hundred files
            static HOST: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
            roots = HOST
                .get_or_init(|| {
                    let mut r = rustls::RootCertStore::empty();
                    r.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                    r
                })
                .clone();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_string()).map_err(|e| format!("TLS name {name:?}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(server, stream)
        .await
        .map_err(|e| format!("TLS with the proxy as {name}: {e}"))
}

/// Accepts the sandbox's TLS connection `stream` (its ClientHello not yet consumed) with a
/// certificate for `name` from `ca`.
pub async fn accept<S>(
    ca: &LocalCa,
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
    fn a_bad_extra_root_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("roots.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        assert!(matches!(
            UpstreamTls::new(std::slice::from_ref(&p)),
            Err(CaError::Empty(_, "certificate"))
        ));
        assert!(UpstreamTls::new(&[d.path().join("missing.pem")]).is_err());
    }

    /// A client trusting only the CA talks to a server using a minted leaf: the chain and the
    /// name verify, and another name does not.
    #[tokio::test]
    async fn minted_leaves_verify_against_the_ca_only_for_their_name() {
        let d = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_create(d.path(), "egress").unwrap());
        let ca_file = ca.cert_path();
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
