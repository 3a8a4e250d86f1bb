//! Snapshots: create, list, get, restore, delete, children.

use crate::harness::start;
use base64::Engine as _;
use fuse_server::provider::Provider;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn snapshot_lifecycle() {
    let f = start().await;
    let content = base64::engine::general_purpose::STANDARD.encode("v1");
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "snap", "files": {"/data/f": content}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let s = f
        .post(
            "/v1/environments/fuse-snap/snapshots",
            json!({"comment": "before", "retention_seconds": 3600}),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{}", s.text);
    assert_eq!(s.state(), "ready");
    assert_eq!(s.body["vm_id"], "fuse-snap");
    assert_eq!(s.body["task_id"], "snap");
    assert_eq!(s.body["mode"], "disk");
    assert_eq!(s.body["comment"], "before");
    assert_eq!(
        s.body["parent_snapshot_id"], "",
        "absent is empty, never null"
    );
    assert_eq!(s.body["last_error"], "");
    assert_eq!(
        (s.body["kind"].as_str(), s.body["arch"].as_str()),
        (Some("disk"), Some("amd64"))
    );
    assert_eq!(s.body["tenant_id"], "", "taken with the master token");
    assert_eq!(s.body["exports"], json!([]));
    assert!(s.body["size_bytes"].as_u64().unwrap() > 0);
    assert!(s.body["retention_until"].is_string());
    let sid = s.body["id"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("snap_"));
    // The file changes after the snapshot; restore brings it back.
    let stub = f.default_stub();
    stub.upload("fuse-snap", "/data/f", b"v2", 0o644)
        .await
        .unwrap();
    assert_eq!(stub.vm("fuse-snap").unwrap().files["/data/f"].0, b"v2");
    let r = f
        .post(&format!("/v1/snapshots/{sid}?action=restore"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(stub.vm("fuse-snap").unwrap().files["/data/f"].0, b"v1");
    // A snapshot taken after the restore is a child; the parent cannot be deleted first.
    let child = f
        .post(
            "/v1/environments/fuse-snap/snapshots",
            json!({"mode": "full"}),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED);
    assert_eq!(child.body["parent_snapshot_id"], sid.as_str());
    let cid = child.body["id"].as_str().unwrap().to_owned();
    let d = f.delete(&format!("/v1/snapshots/{sid}")).await;
    assert_eq!((d.status, d.code()), (StatusCode::CONFLICT, "conflict"));
    // List with filters.
    let all = f.get("/v1/snapshots?vm_id=fuse-snap").await;
    assert_eq!(all.body["snapshots"].as_array().unwrap().len(), 2);
    assert_eq!(
        f.get("/v1/snapshots?task_id=other").await.body["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        f.get("/v1/snapshots?state=ready").await.body["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        f.get("/v1/snapshots?state=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get(&format!("/v1/snapshots/{cid}")).await.body["mode"],
        "full"
    );
    assert_eq!(
        f.delete(&format!("/v1/snapshots/{cid}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        f.delete(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        f.get(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        stub.vm("fuse-snap").unwrap().snapshots.is_empty(),
        "deleted on the host too"
    );
    // The VM was last restored from the deleted snapshot: a new snapshot has no parent
    // (on Postgres a dangling parent would violate the foreign key).
    let orphan = f
        .post("/v1/environments/fuse-snap/snapshots", json!({}))
        .await;
    assert_eq!(orphan.status, StatusCode::CREATED, "{}", orphan.text);
    assert!(orphan.body["parent_snapshot_id"] == "", "{}", orphan.text);
}

#[tokio::test]
async fn snapshot_errors() {
    let f = start().await;
    let r = f
        .post("/v1/environments/fuse-none/snapshots", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    f.create_running("s").await;
    let r = f
        .post(
            "/v1/environments/fuse-s/snapshots",
            json!({"mode": "weird"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let s = f.post("/v1/environments/fuse-s/snapshots", json!({})).await;
    let sid = s.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        f.post(&format!("/v1/snapshots/{sid}?action=explode"), json!({}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.post("/v1/snapshots/snap_missing?action=restore", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Drain, then snapshot the result: allowed while draining.
    f.post("/v1/environments/fuse-s?action=drain", json!({}))
        .await;
    let r = f.post("/v1/environments/fuse-s/snapshots", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = f
        .post(&format!("/v1/snapshots/{sid}?action=restore"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // Not once the environment is gone.
    f.delete("/v1/environments/fuse-s").await;
    let r = f.post("/v1/environments/fuse-s/snapshots", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = f
        .post(&format!("/v1/snapshots/{sid}?action=restore"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "its environment ended");
}

#[tokio::test]
async fn expired_snapshots_are_collected() {
    let f = start().await;
    f.create_running("gc").await;
    let s = f
        .post(
            "/v1/environments/fuse-gc/snapshots",
            json!({"retention_seconds": 0}),
        )
        .await;
    let keep = f
        .post(
            "/v1/environments/fuse-gc/snapshots",
            json!({"retention_seconds": 3600}),
        )
        .await;
    f.advance(std::time::Duration::from_millis(5));
    assert_eq!(f.app().snapshot_gc().await.unwrap(), 1);
    let sid = s.body["id"].as_str().unwrap();
    assert_eq!(
        f.get(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::NOT_FOUND
    );
    let kid = keep.body["id"].as_str().unwrap();
    assert_eq!(
        f.get(&format!("/v1/snapshots/{kid}")).await.status,
        StatusCode::OK
    );
}
