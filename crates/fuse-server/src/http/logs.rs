//! `GET /v1/environments/{id}/logs?source=agent|startup|console&tail=N&follow=true`: the
//! environment's log as `text/plain`, streamed from its host and redacted
//! (`app::logs`). 400 for an unknown source or a tail past the limit, 409 unless the
//! environment runs (or drains), 404 for an unknown one.

use super::error::ApiError;
use super::extract::Params;
use crate::app::App;
use crate::provider::LogQuery;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use std::sync::Arc;

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let q = LogQuery {
        source: q.str("source").unwrap_or("agent").to_owned(),
        tail: q.parse::<u32>("tail")?,
        follow: q.bool("follow", false)?,
    };
    let stream = app.env_logs(&id, q).await?;
    // A host that fails mid-stream ends it; the client sees the body end.
    let body = axum::body::Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
        ],
        body,
    )
        .into_response())
}
