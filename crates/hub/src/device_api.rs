//! HTTPS endpoints for devices (update downloads and the like).
//!
//! Two locks on every request: the TLS connection must present a device certificate the
//! registry accepts (same trust as the MQTT listener), and the request must carry a session
//! token (`Authorization: Bearer ...`) issued for that device *and* that certificate, not
//! expired. A token copied off a device is useless without its key; a certificate without a
//! fresh token gets nothing either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::RwLock;
use rampart_broker::{ConnectRequest, PeerCertificate};
use rampart_mqtt::Protocol;
use rampart_pki::CertInfo;
use rampart_pki::token::{TokenError, TokenKey};
use rampart_policy::{Identity, IdentityKind};
use rustls::ServerConfig;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::identity::Authenticator;

/// Refusal counters of the device API, by reason.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    pub requests: AtomicU64,
    pub tls_refused: AtomicU64,
    pub certificate_refused: AtomicU64,
    pub token_missing: AtomicU64,
    pub token_expired: AtomicU64,
    pub token_forged: AtomicU64,
    pub token_wrong_device: AtomicU64,
    pub token_malformed: AtomicU64,
    /// Update metadata and target files served (whole or partial).
    pub update_files_served: AtomicU64,
    /// Of those, partial responses to `Range` requests (resumed downloads).
    pub update_ranges_served: AtomicU64,
    /// Update requests for files that do not exist or names that are not allowed.
    pub update_files_refused: AtomicU64,
}

pub(crate) struct ApiState {
    pub auth: Arc<Authenticator>,
    pub token_key: Arc<TokenKey>,
    pub metrics: Arc<ApiMetrics>,
    /// The published TUF repository (`metadata/`, `targets/`).
    pub updates: std::path::PathBuf,
}

/// The device as the TLS layer and the registry established it.
#[derive(Clone)]
struct Peer {
    identity: Identity,
    cert_der: Arc<Vec<u8>>,
}

fn error(status: StatusCode, reason: &str, detail: String) -> Response {
    let body = json!({ "error": reason, "detail": detail }).to_string();
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Bearer realm=\"rampart-device-api\""),
        );
    }
    r
}

fn now_unix() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// Checks the bearer token of a request against the connection's certificate.
fn check_token(
    state: &ApiState,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<rampart_pki::token::TokenClaims, Box<Response>> {
    let m = &state.metrics;
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        m.token_missing.fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(error(StatusCode::UNAUTHORIZED, "token_missing", "send Authorization: Bearer <token>; request one on $rampart/devices/<id>/token/request".into())));
    };
    state
        .token_key
        .verify(token.trim(), &peer.identity.id, &peer.cert_der, now_unix())
        .map_err(|e| {
            let (counter, reason) = match &e {
                TokenError::Expired { .. } | TokenError::NotYetValid { .. } => (&m.token_expired, "token_expired"),
                TokenError::BadSignature => (&m.token_forged, "token_forged"),
                TokenError::WrongSubject { .. } | TokenError::WrongCertificate => (&m.token_wrong_device, "token_wrong_device"),
                _ => (&m.token_malformed, "token_invalid"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(device = %peer.identity.id, reason, detail = %e, "device API request refused");
            Box::new(error(StatusCode::UNAUTHORIZED, reason, e.to_string()))
        })
}

async fn whoami(
    Extension(state): Extension<Arc<ApiState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    match check_token(&state, &peer, &headers) {
        Ok(claims) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({
                "device_id": &*peer.identity.id,
                "certificate_serial": &*peer.identity.cert_serial,
                "token_expires_at": claims.exp,
            })
            .to_string(),
        )
            .into_response(),
        Err(r) => *r,
    }
}

/// `GET /v1/updates/metadata/FILE`: TUF metadata (`N.root.json`, `timestamp.json`, ...).
async fn update_metadata(
    Extension(state): Extension<Arc<ApiState>>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let ok = file.ends_with(".json")
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    serve_update(&state, &peer, &headers, "metadata", &file, ok).await
}

/// `GET /v1/updates/targets/PATH`: an artifact by its consistent-snapshot name, with
/// `Range: bytes=N-` so an interrupted download resumes.
async fn update_target(
    Extension(state): Extension<Arc<ApiState>>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let ok = rampart_update::repository::check_target_name(&path).is_ok();
    serve_update(&state, &peer, &headers, "targets", &path, ok).await
}

/// Token check, then the file `name` under the repository's `dir` if the name is allowed
/// (names are checked so no request reaches outside the repository).
async fn serve_update(
    state: &ApiState,
    peer: &Peer,
    headers: &HeaderMap,
    dir: &str,
    name: &str,
    name_ok: bool,
) -> Response {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    if let Err(r) = check_token(state, peer, headers) {
        return *r;
    }
    if !name_ok {
        state
            .metrics
            .update_files_refused
            .fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("{name:?} is not a {dir} file name"),
        );
    }
    serve_file(state, state.updates.join(dir).join(name), headers).await
}

/// The byte range a `Range` header asks for, given the file's length: `None` for the
/// whole file, `Err` when the range cannot be satisfied.
fn requested_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get("range") else {
        return Ok(None);
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .ok_or(())?;
    // One range only: `N-` or `N-M`.
    let (a, b) = spec.split_once('-').ok_or(())?;
    let start: u64 = a.trim().parse().map_err(|_| ())?;
    let end: u64 = if b.trim().is_empty() {
        len.saturating_sub(1)
    } else {
        b.trim()
            .parse::<u64>()
            .map_err(|_| ())?
            .min(len.saturating_sub(1))
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_file(state: &ApiState, path: std::path::PathBuf, headers: &HeaderMap) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let m = &state.metrics;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            m.update_files_refused.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such file in the update repository".into(),
            );
        }
    };
    let len = match file.metadata().await {
        Ok(md) if md.is_file() => md.len(),
        _ => {
            m.update_files_refused.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::NOT_FOUND, "not_found", "not a file".into());
        }
    };
    let range = match requested_range(headers, len) {
        Ok(r) => r,
        Err(()) => {
            m.update_files_refused.fetch_add(1, Ordering::Relaxed);
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                format!("the file is {len} bytes; send Range: bytes=N- with N < {len}"),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert("content-range", v);
            }
            return r;
        }
    };
    let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io",
            "seek failed".into(),
        );
    }
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(count),
        64 * 1024,
    ));
    m.update_files_served.fetch_add(1, Ordering::Relaxed);
    let mut b = Response::builder()
        .header("content-length", count)
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream");
    b = match range {
        Some((s, e)) => {
            m.update_ranges_served.fetch_add(1, Ordering::Relaxed);
            b.status(StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {s}-{e}/{len}"))
        }
        None => b.status(StatusCode::OK),
    };
    b.body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()))
}

/// The routes. Every handler checks the token; TLS and registry checks happen per connection.
fn router() -> axum::Router {
    axum::Router::new()
        .route("/v1/device/whoami", get(whoami))
        .route("/v1/updates/metadata/{file}", get(update_metadata))
        .route("/v1/updates/targets/{*path}", get(update_target))
}

/// Serves the device API on `listener` with the TLS configuration in `tls` (shared with the
/// MQTT listener and replaced on CA or CRL changes).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<RwLock<Arc<ServerConfig>>>,
    state: Arc<ApiState>,
) {
    loop {
        let Ok((tcp, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.read().clone());
        let state = state.clone();
        tokio::spawn(async move { connection(tcp, addr, acceptor, state).await });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<ApiState>,
) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        _ => {
            state.metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some(der) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
    else {
        state.metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(info) = CertInfo::from_der(&der) else {
        state.metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let client_id = info.common_name.clone().unwrap_or_default();
    let cert = PeerCertificate {
        der: der.clone(),
        info,
    };
    let identity = match state
        .auth
        .authenticate(&ConnectRequest {
            client_id: &client_id,
            certificate: &cert,
            address: addr,
            protocol: Protocol::V311,
        })
        .await
    {
        Ok(i) if i.kind == IdentityKind::Device => i,
        Ok(_) | Err(_) => {
            state
                .metrics
                .certificate_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %addr, cn = %client_id, "device API connection refused: not an active registered device");
            return;
        }
    };
    let peer = Peer {
        identity,
        cert_der: Arc::new(der),
    };
    let app = router()
        .layer(Extension(state.clone()))
        .layer(Extension(peer));
    let service = TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(peer = %addr, error = %e, "device API connection ended with an error");
    }
}
