//! The runtime routes: files in and out of a running guest, and terminals. Each is one
//! request on the VM's private link ([`crate::link::Conn`]) whose lines are streamed: a
//! file's bytes go to the guest chunk by chunk as the HTTP body arrives, a read comes back
//! as the guest sends it (within the link's window), and a terminal is a WebSocket bridged
//! to a guest pseudo-terminal. Nothing holds a whole file. Checksums: a write's SHA-256 is
//! computed here and checked by the guest before it renames the file into place (and a
//! client's `sha256` is checked here first); a read carries the guest's SHA-256 in
//! `X-Fuse-SHA256` and the stream is cut (an aborted body, never a short success) when the
//! bytes that came do not match it.

use crate::http::AgentState;
use crate::link::{LinkError, WINDOW};
use crate::vms::VmError;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use fuse_guest::proto::{Input, Op, WinSize};
use fuse_types::hostagent::{FileEntry, FileList, FileWritten, SHA256_HEADER};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type S = Arc<AgentState>;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Raw bytes per input line of a write.
const CHUNK: usize = fuse_guest::files::CHUNK;

/// The query of `/v1/vm/{id}/files`.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    path: Option<String>,
    mode: Option<String>,
    sha256: Option<String>,
    #[serde(default)]
    list: Option<String>,
    #[serde(default)]
    recursive: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|v| v == "true" || v == "1")
}

fn path_of(q: &FileQuery) -> Result<String, VmError> {
    match q.path.as_deref() {
        Some(p) if p.starts_with('/') => Ok(p.to_owned()),
        Some(p) => Err(VmError::Invalid(format!("path {p:?} must be absolute"))),
        None => Err(VmError::Invalid("query parameter path is required".into())),
    }
}

/// `PUT /v1/vm/{id}/files?path=/abs&mode=0644[&sha256=HEX]`: the raw body is the content.
pub async fn put(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> Result<Response, VmError> {
    let path = path_of(&q)?;
    let mode = q
        .mode
        .as_deref()
        .map(fuse_types::hostagent::parse_mode)
        .transpose()
        .map_err(VmError::Invalid)?;
    let vm = s.vms.get(&id)?;
    let _p = vm.admit()?;
    let mut conn = vm
        .open(
            Op::WriteFile {
                path: path.clone(),
                mode,
            },
            None,
        )
        .await?;
    // The guest says it could create the file before any byte is sent.
    conn.recv().await?;
    let mut hash = Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let bytes = frame.map_err(|e| VmError::Invalid(format!("reading the body: {e}")))?;
        hash.update(&bytes);
        for piece in bytes.chunks(CHUNK) {
            conn.send(&Input {
                data_b64: Some(b64().encode(piece)),
                ..Input::default()
            })
            .await?;
        }
    }
    let sum = hex::encode(hash.finalize());
    if let Some(want) = &q.sha256 {
        if !want.eq_ignore_ascii_case(&sum) {
            // Dropping the request makes the guest discard its temp file.
            return Err(VmError::Invalid(format!(
                "checksum mismatch: the body's sha256 is {sum}, the request said {want}; nothing was written"
            )));
        }
    }
    conn.send(&Input {
        eof: true,
        sha256: Some(sum),
        ..Input::default()
    })
    .await?;
    let done = conn
        .recv()
        .await?
        .ok_or_else(|| LinkError::Protocol("no answer to the write".into()))?;
    Ok((
        StatusCode::OK,
        Json(FileWritten {
            path,
            size: done.size.unwrap_or(0),
            sha256: done.sha256.unwrap_or_default(),
        }),
    )
        .into_response())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `GET /v1/vm/{id}/files?path=` (the bytes) or `?path=&list=true` (a listing).
pub async fn get(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, VmError> {
    let path = path_of(&q)?;
    let vm = s.vms.get(&id)?;
    if flag(&q.list) {
        let _p = vm.admit()?;
        let lines = vm
            .guest(Op::ListDir { path, limit: None }, Duration::from_secs(60))
            .await?;
        let last = lines.into_iter().last().unwrap_or_default();
        let entries = last
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(|e| FileEntry {
                name: e.name,
                path: e.path,
                kind: e.kind,
                size: e.size,
                mode: format!("{:04o}", e.mode),
                modified_at: rfc3339(e.modified_unix),
            })
            .collect();
        return Ok(Json(FileList {
            entries,
            truncated: last.truncated,
        })
        .into_response());
    }
    let permit = vm.admit()?;
    let mut conn = vm
        .open(
            Op::ReadFile {
                path: path.clone(),
                window: Some(WINDOW),
            },
            Some(WINDOW),
        )
        .await?;
    let head = conn
        .recv()
        .await?
        .ok_or_else(|| LinkError::Protocol("no answer to the read".into()))?;
    let (size, want) = (head.size.unwrap_or(0), head.sha256.unwrap_or_default());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let header = want.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let fail = |m: String| Err(std::io::Error::other(m));
        loop {
            match conn.recv().await {
                Ok(Some(r)) if r.data_b64.is_some() => {
                    let Ok(bytes) = b64().decode(r.data_b64.unwrap_or_default()) else {
                        let _ = tx.send(fail("the guest sent bad base64".into())).await;
                        return;
                    };
                    hash.update(&bytes);
                    got += bytes.len() as u64;
                    if tx.send(Ok(bytes.into())).await.is_err() {
                        return; // the client left: dropping the request hangs up
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.send(fail(e.to_string())).await;
                    return;
                }
            }
        }
        let sum = hex::encode(hash.finalize());
        if sum != want || got != size {
            let m = format!("the file changed while it was read ({got} of {size} bytes, sha256 {sum} not {want})");
            tracing::warn!(vm_id = %id, %path, "{m}");
            let _ = tx.send(fail(m)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .header(SHA256_HEADER, header)
        .body(Body::from_stream(stream))
        .map_err(|e| VmError::Invalid(e.to_string()))
}

/// `DELETE /v1/vm/{id}/files?path=[&recursive=true]`.
pub async fn delete(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<StatusCode, VmError> {
    let path = path_of(&q)?;
    let vm = s.vms.get(&id)?;
    let _p = vm.admit()?;
    vm.guest(
        Op::Remove {
            path,
            recursive: flag(&q.recursive),
        },
        Duration::from_secs(120),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `/v1/vm/{id}/attach`.
#[derive(Debug, Deserialize)]
pub struct AttachQuery {
    /// The command, run with `sh -lc` (default: the login shell).
    cmd: Option<String>,
    cols: Option<u16>,
    rows: Option<u16>,
    cwd: Option<String>,
}

/// A control message of the attach protocol (text frames).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Resize { cols: u16, rows: u16 },
}

/// `GET /v1/vm/{id}/attach`: a WebSocket to a terminal in the guest. Binary frames carry
/// terminal bytes both ways; text frames carry JSON control: `{"type":"resize","cols",
/// "rows"}` from the client, `{"type":"exit","exit_code"}` (then close) from here.
pub async fn attach(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, VmError> {
    let vm = s.vms.get(&id)?;
    let permit = vm.admit()?;
    let cmd = match q.cmd.as_deref().filter(|c| !c.trim().is_empty()) {
        Some(c) => vec!["sh".to_owned(), "-lc".to_owned(), c.to_owned()],
        None => Vec::new(),
    };
    let size = WinSize {
        cols: q.cols.unwrap_or(80),
        rows: q.rows.unwrap_or(24),
    };
    let op = Op::Pty {
        cmd,
        env: BTreeMap::new(),
        cwd: q.cwd,
        size: Some(size),
        window: Some(WINDOW),
    };
    // Opened before the upgrade: a guest that cannot be reached is an HTTP error.
    let conn = vm.open(op, Some(WINDOW)).await?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            bridge(socket, conn).await;
        })
        .into_response())
}

async fn bridge(socket: WebSocket, mut conn: crate::link::Conn) {
    let (mut to_client, mut from_client) = socket.split();
    let input = conn.sender();
    let keys = tokio::spawn(async move {
        while let Some(Ok(msg)) = from_client.next().await {
            let line = match msg {
                Message::Binary(b) => Input {
                    data_b64: Some(b64().encode(&b)),
                    ..Input::default()
                },
                Message::Text(t) => match serde_json::from_str::<Control>(&t) {
                    Ok(Control::Resize { cols, rows }) => Input {
                        resize: Some(WinSize { cols, rows }),
                        ..Input::default()
                    },
                    // Unknown control messages are ignored (newer clients).
                    Err(_) => continue,
                },
                Message::Close(_) => return,
                _ => continue,
            };
            if input.send(&line).await.is_err() {
                return;
            }
        }
    });
    let end = loop {
        tokio::select! {
            r = conn.recv() => match r {
                Ok(Some(line)) => {
                    if let Some(d) = line.data_b64.and_then(|d| b64().decode(d).ok()) {
                        if to_client.send(Message::Binary(d.into())).await.is_err() {
                            break None;
                        }
                    }
                    if let Some(code) = line.exit_code {
                        break Some(serde_json::json!({"type": "exit", "exit_code": code}));
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(serde_json::json!({"type": "error", "message": e.to_string()})),
            },
            _ = &mut Box::pin(keys_done(&keys)) => break None,
        }
    };
    if let Some(msg) = end {
        let _ = to_client.send(Message::Text(msg.to_string().into())).await;
    }
    let _ = to_client.send(Message::Close(None)).await;
    keys.abort();
    // Dropping the request hangs up: the guest ends the terminal's processes.
}

/// Resolves once the client's side is over (it closed, or went away).
async fn keys_done(h: &tokio::task::JoinHandle<()>) {
    while !h.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
