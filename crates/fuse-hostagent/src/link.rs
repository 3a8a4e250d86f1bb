//! The host side of a VM's private link to `fuse-guest`: a Unix socket that speaks
//! Firecracker's vsock-muxer handshake (`CONNECT <port>` → `OK …`), then one JSON request
//! line and its response line(s).

use fuse_guest::proto::{Op, Request, Response};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The guest port `fuse-guest` listens on.
pub const GUEST_PORT: u32 = 1024;

/// Private-link failures.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The guest did not accept the connection (not booted yet, or gone).
    #[error("guest helper unreachable: {0}")]
    Unreachable(String),
    /// The guest answered with an error.
    #[error("{0}")]
    Guest(String),
    /// The answer was not understood, or did not come in time.
    #[error("guest helper protocol error: {0}")]
    Protocol(String),
}

/// Sends one request and collects every response line (streamed exec output first).
pub async fn call(
    sock: &Path,
    token: &str,
    op: Op,
    limit: Duration,
) -> Result<Vec<Response>, LinkError> {
    let run = async {
        let stream = UnixStream::connect(sock)
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let mut line = String::new();
        r.read_line(&mut line)
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        if !line.starts_with("OK") {
            return Err(LinkError::Unreachable(format!(
                "handshake answered {:?}",
                line.trim()
            )));
        }
        let req = Request {
            token: token.to_owned(),
            op,
        };
        let mut body =
            serde_json::to_string(&req).map_err(|e| LinkError::Protocol(e.to_string()))?;
        body.push('\n');
        w.write_all(body.as_bytes())
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            line.clear();
            let n = r
                .read_line(&mut line)
                .await
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            if n == 0 {
                break;
            }
            let resp: Response = serde_json::from_str(line.trim_end())
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            if let Some(e) = &resp.error {
                return Err(LinkError::Guest(e.clone()));
            }
            let last = resp.exit_code.is_some()
                || (resp.stdout_b64.is_none() && resp.stderr_b64.is_none());
            out.push(resp);
            if last {
                break;
            }
        }
        if out.is_empty() {
            return Err(LinkError::Protocol("no answer".into()));
        }
        Ok(out)
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| LinkError::Protocol(format!("no answer within {} ms", limit.as_millis())))?
}

/// Waits until the guest answers `health`.
pub async fn wait_ready(sock: &Path, token: &str, limit: Duration) -> Result<(), LinkError> {
    let deadline = tokio::time::Instant::now() + limit;
    // Short first waits: a local helper is up within milliseconds; a VM takes longer.
    let mut wait = Duration::from_millis(1);
    loop {
        match call(sock, token, Op::Health, Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        }
    }
}
