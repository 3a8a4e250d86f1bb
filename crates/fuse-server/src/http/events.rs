//! `GET /v1/environments/{id}/events`: Server-Sent Events (DESIGN §5). The stream starts
//! with the current state, then one event per change, `: keepalive` comments in between,
//! and ends after `destroyed` or `failed`. The subscription is taken before the current
//! state is read, so no change can fall between the two.
//!
//! `GET /v1/events`: the same events for the whole fleet (warm-pool members left out), for
//! dashboards and `fusectl events`. It starts with an SSE event named `subscribed` once the
//! subscription is taken (a client lists the environments after it and misses nothing),
//! and sends one named `resync` (data `{"missed":N}`) when it fell behind: the client
//! lists again.

use super::error::ApiError;
use super::extract::Params;
use crate::app::App;
use crate::events::EventHub;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fuse_types::{StateEvent, VmId};
use futures::stream::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

fn is_final(state: &str) -> bool {
    state == "destroyed" || state == "failed"
}

fn to_sse(ev: &StateEvent) -> Event {
    Event::default()
        .id(ev.id.clone())
        .data(serde_json::to_string(ev).unwrap_or_default())
}

pub async fn stream(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut rx = app.events.subscribe();
    let rec = app.env_record(&id).await?;
    let vm_id: VmId = rec.id.clone();
    let first = EventHub::event_for(&rec);
    let keepalive = app.config.sse_keepalive;
    let shutdown = app.shutdown.clone();
    let s = async_stream(move |tx| async move {
        let mut last = (first.state.clone(), first.updated_at);
        let done = is_final(&first.state);
        if tx.send(to_sse(&first)).await.is_err() || done {
            return;
        }
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = rx.recv() => r,
            };
            let ev = match ev {
                Ok(ev) if ev.vm_id == vm_id.as_str() => ev,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {
                    app.metrics.events_lagged.inc();
                    // Fell behind: the store has the truth.
                    match app.store.vm_get(&vm_id).await {
                        Ok(Some(r)) if (r.state.as_str().to_owned(), r.updated_at) != last => {
                            Arc::new(EventHub::event_for(&r))
                        }
                        _ => continue,
                    }
                }
                Err(RecvError::Closed) => return,
            };
            // The same change can arrive twice (read from the store, then relayed from the
            // replica that made it), and a relayed event can be older than what was sent.
            if ev.updated_at < last.1 || (ev.updated_at == last.1 && ev.state == last.0) {
                continue;
            }
            last = (ev.state.clone(), ev.updated_at);
            if tx.send(to_sse(&ev)).await.is_err() || is_final(&ev.state) {
                return;
            }
        }
    });
    Ok(Sse::new(s)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"))
        .into_response())
}

/// `GET /v1/events[?vm_id=ID]`.
pub async fn fleet(State(app): State<Arc<App>>, q: Params) -> Result<Response, ApiError> {
    let only = q.str("vm_id").map(str::to_owned);
    let mut rx = app.events.subscribe();
    let keepalive = app.config.sse_keepalive;
    let shutdown = app.shutdown.clone();
    let lagged = app.metrics.events_lagged.clone();
    let s = async_stream(move |tx| async move {
        let hello = Event::default().event("subscribed").data("{}");
        if tx.send(hello).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = rx.recv() => r,
            };
            let out = match ev {
                Ok(ev) if ev.pool.is_some() => continue,
                Ok(ev) if only.as_deref().is_some_and(|v| v != ev.vm_id) => continue,
                Ok(ev) => to_sse(&ev),
                Err(RecvError::Lagged(n)) => {
                    lagged.inc();
                    Event::default()
                        .event("resync")
                        .data(serde_json::json!({ "missed": n }).to_string())
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(s)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"))
        .into_response())
}

/// A stream fed by a task through a small channel; the task ends when the client leaves.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
