//! A minimal HTTP/1.1 client over Firecracker's API Unix socket: one request per
//! connection, JSON bodies, Firecracker's `fault_message` surfaced on errors.

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// An API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket did not answer.
    #[error("firecracker API unreachable: {0}")]
    Io(String),
    /// Firecracker refused the call.
    #[error("firecracker {method} {path} answered {status}: {message}")]
    Refused {
        /// Method.
        method: &'static str,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// `fault_message`.
        message: String,
    },
}

/// Talks to one API socket.
#[derive(Debug, Clone)]
pub struct Client {
    sock: PathBuf,
}

impl Client {
    /// A client for `sock`.
    pub fn new(sock: PathBuf) -> Self {
        Client { sock }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let run = async {
            let mut s = UnixStream::connect(&self.sock)
                .await
                .map_err(|e| ApiError::Io(e.to_string()))?;
            let payload = body.map(|b| b.to_string()).unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| ApiError::Io(e.to_string()))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then exactly Content-Length bytes (Firecracker may keep the
            // connection open).
            let (status, body_start, len) = loop {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| ApiError::Io(e.to_string()))?;
                if n == 0 {
                    return Err(ApiError::Io("connection closed before a response".into()));
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let status: u16 = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| ApiError::Io(format!("bad status line: {head:.60}")))?;
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    break (status, end + 4, len);
                }
            };
            while buf.len() < body_start + len {
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| ApiError::Io(e.to_string()))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = &buf[body_start..(body_start + len).min(buf.len())];
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                Ok(v)
            } else {
                Err(ApiError::Refused {
                    method,
                    path: path.to_owned(),
                    status,
                    message: v["fault_message"].as_str().unwrap_or("").to_owned(),
                })
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .map_err(|_| ApiError::Io(format!("{method} {path}: no answer in 30 s")))?
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call("GET", path, None).await
    }

    /// `PUT`.
    pub async fn put(&self, path: &str, body: &Value) -> Result<(), ApiError> {
        self.call("PUT", path, Some(body)).await.map(|_| ())
    }

    /// `PATCH`.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<(), ApiError> {
        self.call("PATCH", path, Some(body)).await.map(|_| ())
    }
}
