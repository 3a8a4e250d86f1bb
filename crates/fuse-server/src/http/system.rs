//! Unauthenticated endpoints: `/health`, `/ready`, `/metrics`, `/openapi.json`, and the
//! JSON fallbacks for unknown routes and methods.

use super::error::ApiError;
use crate::app::App;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fuse_types::{HealthStatus, ReadyStatus, VmState};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// The API description, kept in the repository as YAML.
pub const OPENAPI_YAML: &str = include_str!("../../../../api/openapi.yaml");

pub async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
    })
}

/// `GET /v1/version`.
pub async fn version() -> Json<fuse_types::Version> {
    Json(fuse_types::Version {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("FUSE_BUILD_COMMIT").into(),
        api: "v1".into(),
    })
}

/// Last status of every background task of this replica, and the reconciler's dead letters.
pub async fn background(
    State(app): State<Arc<App>>,
    State(tasks): State<Arc<crate::background::Driver>>,
) -> Result<Response, ApiError> {
    let dead = app.store.dead_letter_list().await?;
    let dead: Vec<serde_json::Value> = dead
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "kind": d.kind,
                "entity_id": d.entity_id,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "created_at": rfc3339(d.created_at),
                "updated_at": rfc3339(d.updated_at),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "replica_id": app.replica_id,
        "loops": tasks.statuses(),
        "dead_letters": dead,
    }))
    .into_response())
}

fn rfc3339(t: fuse_types::Timestamp) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut checks = BTreeMap::new();
    let mut ok = true;
    match app.store.ping().await {
        Ok(()) => {
            checks.insert("store".into(), format!("ok ({})", app.store.kind()));
        }
        Err(_) => {
            ok = false;
            checks.insert(
                "store".into(),
                format!("unavailable ({})", app.store.kind()),
            );
        }
    }
    if app.relay_ready.load(std::sync::atomic::Ordering::Acquire) {
        checks.insert("events".into(), "ok".into());
    } else {
        ok = false;
        checks.insert(
            "events".into(),
            "not yet receiving other replicas' events".into(),
        );
    }
    if app.shutdown.is_cancelled() {
        ok = false;
        checks.insert("server".into(), "shutting down".into());
    } else {
        checks.insert("server".into(), "ok".into());
    }
    let body = ReadyStatus {
        status: if ok { "ok" } else { "unavailable" }.into(),
        checks,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = &app.metrics;
    let hosts = app.store.host_list().await.ok();
    // Serving environments on unreachable hosts are `lost`, not running.
    let mut lost: std::collections::HashMap<VmState, i64> = std::collections::HashMap::new();
    for h in hosts.iter().flatten() {
        if h.state != fuse_types::HostState::Unreachable {
            continue;
        }
        let filter = fuse_store::VmFilter {
            host_id: Some(h.id.to_string()),
            ..fuse_store::VmFilter::default()
        };
        if let Ok(vms) = app.store.vm_list(&filter, None, 100_000).await {
            for v in vms {
                if matches!(v.state, VmState::Running | VmState::Draining) {
                    *lost.entry(v.state).or_default() += 1;
                }
            }
        }
    }
    if let Ok(counts) = app.store.vm_count_by_state().await {
        let mut tracked = 0;
        for (s, n) in counts {
            let n = n as i64 - lost.get(&s).copied().unwrap_or(0);
            m.vms_by_state.with_label_values(&[s.as_str()]).set(n);
            if s != VmState::Destroyed {
                tracked += n;
            }
        }
        let lost_total: i64 = lost.values().sum();
        m.vms_by_state.with_label_values(&["lost"]).set(lost_total);
        m.fleet_tracked_vms.set(tracked + lost_total);
    }
    if let Some(hosts) = hosts {
        m.host_capacity.reset();
        m.host_allocated.reset();
        let mut by_state: BTreeMap<&str, i64> = ["active", "cordoned", "draining", "unreachable"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
        for h in &hosts {
            *by_state.entry(h.state.as_str()).or_default() += 1;
            for (gauge, r) in [
                (&m.host_capacity, h.capacity),
                (&m.host_allocated, h.allocated),
            ] {
                let id = h.id.as_str();
                gauge
                    .with_label_values(&[id, "cpus"])
                    .set(i64::from(r.cpus));
                gauge
                    .with_label_values(&[id, "ram_mb"])
                    .set(r.ram_mb as i64);
                gauge
                    .with_label_values(&[id, "storage_gb"])
                    .set(r.storage_gb as i64);
                gauge
                    .with_label_values(&[id, "vm_count"])
                    .set(i64::from(r.vm_count));
            }
        }
        for (s, n) in by_state {
            m.hosts_by_state.with_label_values(&[s]).set(n);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// The OpenAPI description as JSON (converted once from the YAML).
pub fn openapi_json() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_yaml::from_str(OPENAPI_YAML).unwrap_or_else(|e| {
            tracing::error!(error = %e, "api/openapi.yaml does not parse");
            serde_json::Value::Null
        })
    })
}

pub async fn openapi() -> Response {
    Json(openapi_json()).into_response()
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut e = ApiError::invalid(format!("method {method} is not allowed on {}", uri.path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}
