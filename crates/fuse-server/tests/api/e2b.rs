//! The E2B-compatible API on the stub provider, which runs no guests: what it refuses, in
//! E2B's error shape, and that a create on a host that cannot reach guest ports fails at
//! once and leaves nothing. E2B's SDK itself runs against real guests in the cluster suite
//! (`tests/cluster/e2b.rs`, `real_guests.rs`).

use crate::harness::start;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Instant;

#[tokio::test]
async fn the_e2b_api_refuses_clearly_where_no_guest_runs() {
    let f = start().await;
    let t = Instant::now();
    let r = f
        .post("/e2b/v2/sandboxes", json!({"templateID": "base"}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body["code"], 503, "{}", r.text);
    let m = r.body["message"].as_str().unwrap();
    assert!(m.contains("cannot be reached on port 49983"), "{m}");
    assert!(
        t.elapsed().as_secs() < 10,
        "refused at once, not after envd's wait"
    );
    let envs = f.get("/v1/environments").await;
    let live: Vec<_> = envs.body["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !matches!(e["state"].as_str(), Some("destroyed" | "failed")))
        .collect();
    assert!(live.is_empty(), "{live:?}");

    for (method, path, body, status) in [
        (
            Method::POST,
            "/e2b/sandboxes",
            Some(json!({"templateID": "nope"})),
            404,
        ),
        (Method::POST, "/e2b/sandboxes", Some(json!({})), 400),
        (
            Method::POST,
            "/e2b/v2/sandboxes",
            Some(json!({"templateID": "base", "timeout": 0})),
            400,
        ),
        (Method::GET, "/e2b/sandboxes/fuse-none", None, 404),
        (Method::DELETE, "/e2b/sandboxes/fuse-none", None, 404),
        (
            Method::POST,
            "/e2b/sandboxes/fuse-none/timeout",
            Some(json!({"timeout": 5})),
            404,
        ),
        (
            Method::POST,
            "/e2b/sandboxes/fuse-none/connect",
            Some(json!({})),
            404,
        ),
        (Method::GET, "/e2b/v2/sandboxes?limit=0", None, 400),
        (Method::GET, "/e2b/v2/sandboxes?state=gone", None, 400),
        (Method::GET, "/e2b/templates", None, 501),
    ] {
        let r = f.call(method.clone(), path, body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.text);
        assert_eq!(r.body["code"], status, "{method} {path}: {}", r.text);
        assert!(
            !r.body["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path}"
        );
    }
    let r = f.get("/e2b/v2/sandboxes").await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!([])));
    // Without the sandbox headers a request is not one for a sandbox; with them, for one
    // that does not exist, it is E2B's 502.
    let r = f.post("/process.Process/List", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "not a sandbox request");
    let r = f
        .http
        .post(format!("{}/process.Process/List", f.base))
        .header("e2b-sandbox-id", "fuse-none")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let r = f
        .http
        .post(format!("{}/process.Process/List", f.base))
        .header("e2b-sandbox-id", "fuse-none")
        .header("e2b-sandbox-port", "99999")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a port that is no port"
    );
    f.running.shutdown();
}
