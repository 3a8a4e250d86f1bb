//! `/files`: downloads streamed from the file, uploads streamed into a temp file beside
//! the target and renamed over it once complete (a reader never sees half a file).
//! Uploads are one `application/octet-stream` body for `?path=`, or `multipart/form-data`
//! whose parts are each a file (at `?path=` when there is one part, else at the part's
//! file name). Parents are made; an upload answers the written files as
//! `[{"name", "type": "file", "path"}]`. An upload with `Content-Encoding: gzip` is
//! decompressed as it arrives.

use crate::connect::Body;
use crate::fs::Place;
use crate::server::{http_error, query, Envd};
use crate::users::User;
use bytes::Bytes;
use fuse_guest::ops::random_u64;
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from a file at once for a download.
const READ_CHUNK: usize = 64 << 10;

/// Gives `path` to `account` (when envd switches users).
pub fn own(path: &Path, account: Option<&User>) {
    if let Some(a) = account {
        let _ = nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(a.uid)),
            Some(nix::unistd::Gid::from_raw(a.gid)),
        );
    }
}

fn io_status(e: &std::io::Error) -> StatusCode {
    match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        std::io::ErrorKind::PermissionDenied => StatusCode::UNAUTHORIZED,
        std::io::ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `GET /files?path=`.
pub async fn download(envd: &Arc<Envd>, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let Some(path) = q.get("path").filter(|p| !p.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "the path parameter is required");
    };
    let who = envd.identity(&req, &q);
    let place = Place::of(&envd.root, &who.home, path);
    let meta = match tokio::fs::metadata(&place.host).await {
        Ok(m) => m,
        Err(e) => {
            return http_error(io_status(&e), format!("{}: {e}", place.guest));
        }
    };
    if meta.is_dir() {
        return http_error(
            StatusCode::BAD_REQUEST,
            format!("{} is a directory", place.guest),
        );
    }
    let file = match tokio::fs::File::open(&place.host).await {
        Ok(f) => f,
        Err(e) => return http_error(io_status(&e), format!("{}: {e}", place.guest)),
    };
    let chunks = futures::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; READ_CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let name = Path::new(&place.guest)
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, meta.len())
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap_or_default()
}

/// Writes a stream of bytes to `place` atomically; its parents are made.
async fn write_stream<S, E>(
    place: &Place,
    account: Option<&User>,
    (gzip, metadata): (bool, &BTreeMap<String, String>),
    mut data: S,
) -> Result<(), (StatusCode, String)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let fail = |e: std::io::Error| (io_status(&e), format!("{}: {e}", place.guest));
    let bad_data = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            (
                StatusCode::BAD_REQUEST,
                format!("the upload of {}: {e}", place.guest),
            )
        } else {
            fail(e)
        }
    };
    let dir = place
        .host
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    if !dir.exists() {
        tokio::fs::create_dir_all(&dir).await.map_err(fail)?;
        own(&dir, account);
    }
    if tokio::fs::metadata(&place.host)
        .await
        .is_ok_and(|m| m.is_dir())
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{} is a directory", place.guest),
        ));
    }
    let name = place
        .host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.envd-{:016x}", random_u64()));
    let f = tokio::fs::File::create(&tmp).await.map_err(fail)?;
    let mut out = Sink {
        file: f,
        gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
    };
    let result: Result<(), (StatusCode, String)> = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("reading the upload of {}: {e}", place.guest),
                )
            })?;
            out.write(&chunk).await.map_err(bad_data)?;
        }
        out.finish().await.map_err(bad_data)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    own(&tmp, account);
    // The upload's metadata replaces the file's: set on the new file before it is renamed
    // into place (one without any clears it).
    for (k, v) in metadata {
        let name = format!("{}{k}", crate::fs::METADATA_XATTR);
        if let Err(e) = xattr::set(&tmp, &name, v.as_bytes()) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "keeping metadata {k} on {}: {e} (the filesystem needs user extended attributes)",
                    place.guest
                ),
            ));
        }
    }
    if let Err(e) = tokio::fs::rename(&tmp, &place.host).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(fail(e));
    }
    Ok(())
}

/// A decoder's failure: the upload is not gzip (`InvalidData`, answered as a 400).
fn not_gzip(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not gzip: {e}"))
}

/// Where an upload's bytes go: the temp file, through a gzip decoder for a compressed
/// upload (each chunk decompressed in memory, then written).
struct Sink {
    file: tokio::fs::File,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
}

impl Sink {
    async fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match &mut self.gunzip {
            None => self.file.write_all(b).await,
            Some(d) => {
                std::io::Write::write_all(d, b).map_err(not_gzip)?;
                let plain = std::mem::take(d.get_mut());
                self.file.write_all(&plain).await
            }
        }
    }

    async fn finish(mut self) -> std::io::Result<()> {
        if let Some(d) = self.gunzip.take() {
            let rest = d.finish().map_err(not_gzip)?;
            self.file.write_all(&rest).await?;
        }
        self.file.flush().await
    }
}

fn written(place: &Place) -> serde_json::Value {
    let name = Path::new(&place.guest)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = crate::fs::metadata_of(&place.host);
    serde_json::json!({"name": name, "type": "file", "path": place.guest, "metadata": metadata})
}

/// `POST /files`.
pub async fn upload(envd: &Arc<Envd>, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let who = envd.identity(&req, &q);
    let account = who.account.clone();
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => false,
        Some(v) if v == "identity" => false,
        Some(v) if v == "gzip" => true,
        Some(v) => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {v} is not supported (gzip is)"),
            )
        }
    };
    let metadata: BTreeMap<String, String> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| {
            let key = n.as_str().strip_prefix("x-metadata-")?;
            Some((key.to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let body = BodyStream::new(req.into_body())
        .try_filter_map(|f| futures::future::ready(Ok(f.into_data().ok())));
    let path = q.get("path").filter(|p| !p.is_empty()).cloned();
    let mut done = Vec::new();
    if let Ok(boundary) = multer::parse_boundary(&ct) {
        let mut mp = multer::Multipart::new(body, boundary);
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    return http_error(StatusCode::BAD_REQUEST, format!("reading the form: {e}"))
                }
            };
            let target = match (&path, field.file_name()) {
                (Some(p), _) if done.is_empty() => p.clone(),
                (_, Some(name)) if !name.is_empty() => name.to_owned(),
                _ => {
                    return http_error(
                        StatusCode::BAD_REQUEST,
                        "a form part has no file name and no path was given",
                    )
                }
            };
            let place = Place::of(&envd.root, &who.home, &target);
            if let Err((s, m)) =
                write_stream(&place, account.as_ref(), (gzip, &metadata), field).await
            {
                return http_error(s, m);
            }
            done.push(written(&place));
        }
    } else {
        let Some(p) = path else {
            return http_error(
                StatusCode::BAD_REQUEST,
                "the path parameter is required for an application/octet-stream upload",
            );
        };
        let place = Place::of(&envd.root, &who.home, &p);
        if let Err((s, m)) =
            write_stream(&place, account.as_ref(), (gzip, &metadata), Box::pin(body)).await
        {
            return http_error(s, m);
        }
        done.push(written(&place));
    }
    if done.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "the upload had no file in it");
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(crate::connect::full(
            serde_json::Value::Array(done).to_string(),
        ))
        .unwrap_or_default()
}
