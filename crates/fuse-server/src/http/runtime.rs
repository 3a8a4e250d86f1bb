//! `/v1/environments/{id}/files`, streamed exec and `/attach`: thin wrappers over
//! `app::runtime`. A file upload is the raw request body, counted against
//! `FUSE_MAX_FILE_BYTES` as it streams (413 past it, and nothing is written); a download is
//! the raw bytes with the guest's SHA-256 in `X-Fuse-SHA256`. A streamed exec answers
//! Server-Sent Events. An attach is a WebSocket bridged byte for byte to the host's.

use super::error::ApiError;
use super::extract::Params;
use crate::app::api_keys::Caller;
use crate::app::App;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fuse_types::hostagent::SHA256_HEADER;
use fuse_types::ErrorCode;
use futures::StreamExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn too_large(limit: u64) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidArgument,
        format!("the file is larger than this server accepts ({limit} bytes, FUSE_MAX_FILE_BYTES); nothing was written"),
    );
    e.status = StatusCode::PAYLOAD_TOO_LARGE;
    e
}

fn parse_mode(m: &str) -> Result<u32, ApiError> {
    fuse_types::hostagent::parse_mode(m).map_err(ApiError::invalid)
}

/// `PUT /v1/environments/{id}/files?path=/abs[&mode=0644][&sha256=HEX]`.
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Params,
    req: Request,
) -> Result<Response, ApiError> {
    caller.require_master("writing files in an environment")?;
    let limit = app.config.max_file_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mode = q.str("mode").map(parse_mode).transpose()?;
    let sha256 = q.str("sha256").map(str::to_owned);
    let path = q.str("path").unwrap_or_default().to_owned();
    // Counted as it streams: past the limit the stream fails, so the host abandons the
    // write (the guest removes its temp file) and the answer is 413.
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let mut seen = 0u64;
    let body = req
        .into_body()
        .into_data_stream()
        .map(move |r| {
            let b = r.map_err(std::io::Error::other)?;
            seen += b.len() as u64;
            if seen > limit {
                flag.store(true, Ordering::SeqCst);
                return Err(std::io::Error::other(
                    "the file is over FUSE_MAX_FILE_BYTES",
                ));
            }
            Ok(b)
        })
        .boxed();
    match app.env_file_put(&id, &path, mode, sha256, body).await {
        Ok(w) => Ok(Json(w).into_response()),
        Err(_) if over.load(Ordering::SeqCst) => Err(too_large(limit)),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/environments/{id}/files?path=` (bytes) or `?path=&list=true` (a listing).
pub async fn get(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require_master("reading files in an environment")?;
    let path = q.str("path").unwrap_or_default();
    if q.bool("list", false)? {
        return Ok(Json(app.env_file_list(&id, path).await?).into_response());
    }
    let f = app.env_file_get(&id, path).await?;
    let mut resp = Response::new(Body::from_stream(f.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(f.size));
    if let Ok(v) = HeaderValue::from_str(&f.sha256) {
        h.insert(SHA256_HEADER, v);
    }
    Ok(resp)
}

/// `DELETE /v1/environments/{id}/files?path=[&recursive=true]`.
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    caller.require_master("removing files in an environment")?;
    let path = q.str("path").unwrap_or_default();
    app.env_file_delete(&id, path, q.bool("recursive", false)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A streamed exec: `stdout` / `stderr` events (data: base64 of the bytes, as the guest
/// produced them), then one `exit` event (`{"exit_code":N}`), or an `error` event
/// (`{"message":…}`) if the stream broke. The client leaving kills the command.
pub async fn exec_stream(
    app: Arc<App>,
    id: &str,
    req: fuse_types::ExecRequest,
) -> Result<Response, ApiError> {
    let lines = app.env_exec_stream(id, req).await?;
    let events = lines.flat_map(|line| {
        let mut out = Vec::new();
        match line {
            Ok(l) => {
                // One host line may carry output and the exit code together.
                for (name, d) in [("stdout", l.stdout_b64), ("stderr", l.stderr_b64)] {
                    if let Some(d) = d.filter(|d| !d.is_empty()) {
                        out.push(Event::default().event(name).data(d));
                    }
                }
                if let Some(code) = l.exit_code {
                    out.push(
                        Event::default()
                            .event("exit")
                            .data(serde_json::json!({ "exit_code": code }).to_string()),
                    );
                } else if let Some(m) = l.error {
                    out.push(
                        Event::default()
                            .event("error")
                            .data(serde_json::json!({ "message": m }).to_string()),
                    );
                }
            }
            Err(e) => out.push(
                Event::default()
                    .event("error")
                    .data(serde_json::json!({ "message": e.client_message() }).to_string()),
            ),
        }
        futures::stream::iter(out.into_iter().map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Sse::new(events).into_response())
}

/// `GET /v1/environments/{id}/attach[?cmd=…&cols=…&rows=…]`: a WebSocket handshake,
/// answered with the host's own `101` and then bridged byte for byte.
pub async fn attach(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    caller.require_master("opening a terminal in an environment")?;
    let h = req.headers();
    let is_ws = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_ws || !h.contains_key(header::SEC_WEBSOCKET_KEY) {
        let mut e = ApiError::invalid(
            "attach is a WebSocket: send a GET with Upgrade: websocket (binary frames are \
             terminal bytes; text frames carry {\"type\":\"resize\",\"cols\",\"rows\"})",
        );
        e.status = StatusCode::UPGRADE_REQUIRED;
        return Err(e);
    }
    // The handshake headers the host needs; nothing else of the client's goes on.
    let forward: Vec<(String, String)> = [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
    ]
    .iter()
    .filter_map(|k| Some((k.as_str().to_owned(), h.get(k)?.to_str().ok()?.to_owned())))
    .collect();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let attached = app.env_attach(&id, &query, &forward).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(client) = on_upgrade.await else { return };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut host = attached.io;
        // Either side closing ends the session (the host then hangs the terminal up).
        let _ = tokio::io::copy_bidirectional(&mut client, &mut host).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in &attached.headers {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "upgrade" | "connection" | "sec-websocket-accept" | "sec-websocket-protocol"
        ) {
            if let (Ok(name), Ok(val)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                resp.headers_mut().insert(name, val);
            }
        }
    }
    Ok(resp)
}
