//! The control socket: how the operator CLI reaches a running hub.
//!
//! A Unix socket in the data directory (`hub.sock`, mode 0600, inside the 0700 data
//! directory), never a network port. One JSON request per line, one JSON response per line.
//! The CLI changes the registry itself and then tells the hub, which applies the change to
//! live sessions (e.g. a disabled device is disconnected at once). What the hub does with each
//! request lives in `live`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::HubError;
use crate::metrics::MetricsSnapshot;

/// A request to the running hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The registry entry of an identity changed (status, approval, group, attributes,
    /// quarantine): re-read it and apply it to live sessions.
    DeviceChanged { id: String },
    /// Policies or attachments changed.
    PoliciesChanged,
    /// Trusted CAs or the CRL changed: rebuild the TLS configuration.
    TrustChanged,
    /// Certificates were revoked: rebuild TLS and drop sessions that use them.
    CertificatesRevoked { serials: Vec<String> },
    /// Run the identity audit with the live sessions.
    Audit,
    /// Counters and connected clients.
    Status,
    /// A rollout was created or an operator stepped it: evaluate it now.
    RolloutChanged { id: String },
}

impl Request {
    /// Whether the request tells of a change in the shared registry, which every node of a
    /// cluster must apply (the others are questions to this node).
    pub fn is_change(&self) -> bool {
        !matches!(self, Request::Audit | Request::Status)
    }
}

/// A connected client, as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    pub client_id: String,
    pub identity: String,
    pub protocol: String,
    pub connected: bool,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
}

/// The hub's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Live connections closed because of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<ClientReport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<crate::audit::Finding>>,
}

impl Response {
    pub(crate) fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub(crate) fn error(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Binds the control socket (replacing a stale one left by a crashed hub).
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, HubError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(HubError::Control(format!(
                "{} is in use: another hub runs on this data directory",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

pub(crate) async fn serve(listener: UnixListener, handler: Arc<crate::live::Live>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handler.handle_from_operator(req).await,
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                        ..Default::default()
                    },
                };
                let mut out = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request to the hub of a data directory. `Ok(None)` if no hub is running there.
pub async fn request(socket: &Path, req: &Request) -> Result<Option<Response>, HubError> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(HubError::Control(format!("{}: {e}", socket.display()))),
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(req).map_err(|e| HubError::Control(e.to_string()))?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| HubError::Control(e.to_string()))?;
        let mut lines = BufReader::new(read).lines();
        let answer = lines
            .next_line()
            .await
            .map_err(|e| HubError::Control(e.to_string()))?
            .ok_or_else(|| HubError::Control("the hub closed the control connection".into()))?;
        serde_json::from_str::<Response>(&answer).map_err(|e| HubError::Control(e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| HubError::Control("no answer from the hub within 10 s".into()))?
        .map(Some)
}
