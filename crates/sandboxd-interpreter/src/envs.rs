//! Sandbox-global environment variables, from envd's `GET /envs` inside the sandbox.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, warn};

/// Where global env vars come from.
pub struct EnvSource {
    url: Option<String>,
    token: Option<String>,
    client: reqwest::Client,
    cache: Mutex<Option<BTreeMap<String, String>>>,
}

impl EnvSource {
    /// `envd_url` is envd's base URL (`http://localhost:49983`), or `None` to use no global
    /// variables (development on the host). `token` is used when a request brings none.
    pub fn new(envd_url: Option<String>, token: Option<String>) -> EnvSource {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        EnvSource {
            url: envd_url,
            token,
            client,
            cache: Mutex::new(None),
        }
    }

    /// The global variables. Fetched once; a failed fetch is retried on the next call.
    pub async fn globals(&self, request_token: Option<&str>) -> BTreeMap<String, String> {
        let Some(url) = &self.url else {
            return BTreeMap::new();
        };
        let mut cache = self.cache.lock().await;
        if let Some(c) = &*cache {
            return c.clone();
        }
        let mut req = self.client.get(format!("{}/envs", url.trim_end_matches('/')));
        if let Some(t) = request_token.or(self.token.as_deref()) {
            req = req.header("X-Access-Token", t);
        }
        let res = async {
            let resp = req.send().await?.error_for_status()?;
            resp.json::<BTreeMap<String, serde_json::Value>>().await
        }
        .await;
        match res {
            Ok(map) => {
                let map: BTreeMap<String, String> = map
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect();
                debug!(count = map.len(), "fetched sandbox env vars");
                *cache = Some(map.clone());
                map
            }
            Err(e) => {
                warn!("GET {url}/envs failed: {e}");
                BTreeMap::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_source_is_empty() {
        assert!(EnvSource::new(None, None).globals(Some("t")).await.is_empty());
    }

    #[tokio::test]
    async fn fetches_once_with_the_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let body = r#"{"A":"1","B":"two"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            req
        });
        let src = EnvSource::new(Some(format!("http://{addr}")), None);
        let g = src.globals(Some("tok")).await;
        assert_eq!(g.get("B").map(String::as_str), Some("two"));
        let req = server.await.unwrap();
        assert!(req.starts_with("get /envs "), "{req}");
        assert!(req.contains("x-access-token: tok"), "{req}");
        // Cached: no second request (the listener is gone, so a fetch would fail and be empty).
        assert_eq!(src.globals(None).await.len(), 2);
    }
}
