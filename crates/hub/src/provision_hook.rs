//! The pre-provisioning hook: asks the manufacturer's own system whether a serial number may
//! become a device, and with which id, group and attributes.
//!
//! Two forms, both fed the request as JSON and answering the same JSON:
//! - a command (`provisioning.hook_command`), run with the request on stdin, answer on stdout;
//! - an HTTP(S) endpoint (`provisioning.hook_url`), POSTed the request.
//!
//! Request: `{"serial_number": "...", "claim": "...", "client_id": "...", "attributes": {...}}`.
//! Answer: `{"allow": true, "device_id": "...", "group": "...", "attributes": {...}}` or
//! `{"allow": false, "reason": "..."}`. A hook that fails, times out or answers nonsense
//! denies (fail closed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the hook is asked.
#[derive(Debug, Clone, Serialize)]
pub struct HookRequest {
    pub serial_number: String,
    pub claim: String,
    pub client_id: String,
    pub attributes: BTreeMap<String, String>,
}

/// What the hook answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HookDecision {
    pub allow: bool,
    pub device_id: Option<String>,
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub reason: Option<String>,
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub enum Hook {
    Command(String),
    Url { url: String, ca: Option<PathBuf> },
}

/// Asks the hook, within `timeout`.
pub async fn ask(
    hook: &Hook,
    req: &HookRequest,
    timeout: Duration,
) -> Result<HookDecision, String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(timeout, async {
        match hook {
            Hook::Command(cmd) => run_command(cmd, &body).await,
            Hook::Url { url, ca } => post(url, ca.as_deref(), body).await,
        }
    })
    .await
    .map_err(|_| format!("the provisioning hook did not answer within {timeout:?}"))??;
    serde_json::from_slice(&answer).map_err(|e| {
        format!("the provisioning hook answered something that is not the expected JSON: {e}")
    })
}

async fn run_command(cmd: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the provisioning hook {cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may decide without reading its input; its exit status is what counts.
        let _ = stdin.write_all(body).await;
        drop(stdin);
    }
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the provisioning hook exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

async fn post(url: &str, ca: Option<&std::path::Path>, body: Vec<u8>) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("hook_url {url:?}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("hook_url has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot reach the provisioning hook at {host}:{port}: {e}"))?;
    let request = hyper::Request::post(uri.clone())
        .header("host", host.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = if https {
        let tls = tls_connector(ca.ok_or("provisioning.hook_ca is required for https")?)?;
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to the hook: {e}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if !response.status().is_success() {
        return Err(format!(
            "the provisioning hook answered HTTP {}",
            response.status()
        ));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(body.to_vec())
}

async fn send<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP to the hook: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP to the hook: {e}"))
}

fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
    {
        roots
            .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(serial: &str) -> HookRequest {
        HookRequest {
            serial_number: serial.into(),
            claim: "factory".into(),
            client_id: serial.into(),
            attributes: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn command_hook_decides_and_fails_closed() {
        let allow_ok = Hook::Command(
            r#"read -r line; case "$line" in *'"OK-'*) echo '{"allow":true,"group":"line-3"}';; *) echo '{"allow":false,"reason":"unknown serial"}';; esac"#.into(),
        );
        let d = ask(&allow_ok, &req("OK-1"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(d.allow);
        assert_eq!(d.group.as_deref(), Some("line-3"));
        let d = ask(&allow_ok, &req("BAD-1"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.reason.as_deref(), Some("unknown serial"));
        let e = ask(
            &Hook::Command("exit 3".into()),
            &req("x"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.contains("exited"), "{e}");
        let e = ask(
            &Hook::Command("echo not json".into()),
            &req("x"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.contains("not the expected JSON"), "{e}");
        let e = ask(
            &Hook::Command("sleep 5".into()),
            &req("x"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
    }
}
