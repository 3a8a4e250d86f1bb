//! Postgres down at start, and Postgres going away while serving, through a proxy the test
//! controls (the shared Postgres itself is never stopped).

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn postgres_down_at_start_then_up() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let proxy = Proxy::start(pg_target(&admin), false).await;
    let f = spawn_fuse(&via_port(&db, proxy.port), &[]);
    // It serves, but is not ready, and says why in its log.
    eventually("health answers", Duration::from_secs(10), || async {
        f.get("/health").await.0 == StatusCode::OK
    })
    .await;
    let (s, ready) = f.get("/ready").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(ready["checks"]["store"]
        .as_str()
        .unwrap()
        .starts_with("unavailable"));
    let (s, e) = f
        .post("/v1/environments", json!({"task_id": "early"}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    eventually(
        "a retry line in the log",
        Duration::from_secs(5),
        || async { f.log_text().contains("state store not reachable; retrying") },
    )
    .await;
    proxy.restore();
    f.ready().await;
    let (s, _) = f
        .post("/v1/environments", json!({"task_id": "later"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn postgres_going_away_while_serving() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let proxy = Proxy::start(pg_target(&admin), true).await;
    let f = spawn_fuse(&via_port(&db, proxy.port), &[]);
    f.ready().await;
    let (stub, addr, _host) = stub_host().await;
    f.register("h", addr, 10).await;
    let (s, _) = f
        .post("/v1/environments", json!({"task_id": "before"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    proxy.cut();
    for i in 0..3 {
        let (s, e) = f
            .post("/v1/environments", json!({"task_id": format!("during{i}")}))
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
        assert_eq!(e["error"]["code"], "unavailable");
        assert!(
            !e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "no internals: {e}"
        );
    }
    let (s, _) = f.get("/ready").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    proxy.restore();
    f.ready().await;
    let (s, _) = f
        .post("/v1/environments", json!({"task_id": "after"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Nothing half-written: the creates refused during the outage left no records, no VMs,
    // no reservations.
    let (_, list) = f.get("/v1/environments?limit=200").await;
    let ids: Vec<&str> = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fuse-after", "fuse-before"]);
    assert_eq!(stub.len(), 2);
    let (_, h) = f.get("/v1/hosts/h").await;
    assert_eq!(h["allocated"]["vm_count"], 2);
}
