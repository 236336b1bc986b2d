//! A small HTTP/1.1 GET client for update metadata and artifacts.
//!
//! hyper does the protocol; this module adds what updates need and nothing else: plain HTTP
//! (for conformance suites on loopback) or HTTPS with the device's own certificate (the
//! hub's device API), a bearer token, a `Range` header for resumed downloads, timeouts, and
//! bodies read with a hard size limit so a hostile server cannot fill memory or disk.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("URL {0:?}: expected http://HOST[:PORT]/PATH or https://...")]
    Url(String),
    #[error("{url}: cannot connect: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: TLS: {message}")]
    Tls { url: String, message: String },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    #[error("{url}: timed out after {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::Url(s.to_owned());
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Url {
            https,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// This URL with `name` appended to its path (one `/` between them).
    pub fn join(&self, name: &str) -> Url {
        let mut u = self.clone();
        if !u.path.ends_with('/') {
            u.path.push('/');
        }
        u.path.push_str(name.trim_start_matches('/'));
        u
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The client: TLS settings for https URLs, an optional bearer token, and a timeout for
/// connecting and for each read.
#[derive(Clone)]
pub struct HttpClient {
    pub tls: Option<Arc<ClientConfig>>,
    pub bearer: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.tls.is_some())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A response whose headers have arrived; the body is read by the caller.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Incoming,
    pub url: String,
}

impl Response {
    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self, timeout: Duration) -> Result<Option<bytes::Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout(timeout, self.body.frame())
                .await
                .map_err(|_| HttpError::Timeout {
                    url: self.url.clone(),
                    secs: timeout.as_secs(),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(HttpError::Protocol {
                        url: self.url.clone(),
                        message: e.to_string(),
                    });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, failing as soon as it exceeds `limit` bytes.
    pub async fn read_limited(
        &mut self,
        limit: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk(timeout).await? {
            out.extend_from_slice(&c);
            if out.len() as u64 > limit {
                return Err(HttpError::TooLarge {
                    url: self.url.clone(),
                    limit,
                });
            }
        }
        Ok(out)
    }
}

impl HttpClient {
    /// A client for plain HTTP and for HTTPS with `tls`.
    pub fn new(tls: Option<Arc<ClientConfig>>, bearer: Option<String>) -> HttpClient {
        HttpClient {
            tls,
            bearer,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends `GET url` (from byte `from` on, if given) and returns once headers arrive.
    pub async fn get(&self, url: &Url, from: Option<u64>) -> Result<Response, HttpError> {
        let shown = url.to_string();
        let connect_err = |message: String| HttpError::Connect {
            url: shown.clone(),
            message,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| HttpError::Timeout {
            url: shown.clone(),
            secs: self.timeout.as_secs(),
        })?
        .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if url.https {
            let tls = self.tls.clone().ok_or_else(|| HttpError::Tls {
                url: shown.clone(),
                message: "no TLS credentials for an https URL".into(),
            })?;
            let name = ServerName::try_from(url.host.clone()).map_err(|e| HttpError::Tls {
                url: shown.clone(),
                message: e.to_string(),
            })?;
            let s = tokio::time::timeout(self.timeout, TlsConnector::from(tls).connect(name, tcp))
                .await
                .map_err(|_| HttpError::Timeout {
                    url: shown.clone(),
                    secs: self.timeout.as_secs(),
                })?
                .map_err(|e| HttpError::Tls {
                    url: shown.clone(),
                    message: e.to_string(),
                })?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut req = hyper::Request::get(url.path.as_str())
            .header("host", host)
            .header(
                "user-agent",
                concat!("rampart-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(n) = from {
            req = req.header("range", format!("bytes={n}-"));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| HttpError::Protocol {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        let resp = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| HttpError::Timeout {
                url: shown.clone(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| HttpError::Protocol {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            url: shown,
        })
    }

    /// `GET url` expecting 200 with a body of at most `limit` bytes; `Ok(None)` on 404
    /// (a file that does not exist, such as the next root version).
    pub async fn get_small(&self, url: &Url, limit: u64) -> Result<Option<Vec<u8>>, HttpError> {
        let mut r = self.get(url, None).await?;
        match r.status {
            200 => Ok(Some(r.read_limited(limit, self.timeout).await?)),
            404 | 403 => Ok(None),
            status => {
                let body = r.read_limited(2048, self.timeout).await.unwrap_or_default();
                Err(HttpError::Status {
                    url: r.url,
                    status,
                    detail: detail(&body),
                })
            }
        }
    }
}

/// The start of an error body, for the log.
pub fn detail(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {}", s.chars().take(300).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = Url::parse("https://hub.example:8443/v1/updates/metadata").unwrap();
        assert!(u.https);
        assert_eq!((u.host.as_str(), u.port), ("hub.example", 8443));
        assert_eq!(
            u.join("1.root.json").path,
            "/v1/updates/metadata/1.root.json"
        );
        let u = Url::parse("http://[::1]:8000/").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "http://[::1]:8000/");
        assert_eq!(Url::parse("http://127.0.0.1").unwrap().port, 80);
        for bad in [
            "ftp://x/",
            "http://",
            "http://h:port/",
            "https//x",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
