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
}

pub(crate) struct ApiState {
    pub auth: Arc<Authenticator>,
    pub token_key: Arc<TokenKey>,
    pub metrics: Arc<ApiMetrics>,
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

/// The routes. Every handler checks the token; TLS and registry checks happen per connection.
fn router() -> axum::Router {
    axum::Router::new().route("/v1/device/whoami", get(whoami))
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
