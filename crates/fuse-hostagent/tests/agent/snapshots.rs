//! Snapshots on the real `fc-agent` (process backend): the digest is the sha256 of the
//! snapshot's disk image; snapshots outlive their VM (and an agent restart) until deleted;
//! a fork's guest starts with the source's disk as it was at the snapshot; an unknown
//! snapshot is a 404 with the envelope.

use super::{spawn, tempdir, Ns};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest as _;

fn vm(name: &str) -> serde_json::Value {
    json!({"name": name, "cpus": 1, "memory_mb": 128, "storage_gb": 1})
}

#[tokio::test]
async fn a_fork_starts_from_a_snapshot_that_outlives_its_vm() {
    let Some(ns) = Ns::new("snap") else { return };
    let dir = tempdir("snap");
    let mut a = spawn(&ns, &dir, &[]).await;
    let (_, h) = a.get("/healthz").await;
    let features: Vec<&str> = h["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["provision", "fork", "healthcheck", "expose"] {
        assert!(features.contains(&f), "{f} in {h}");
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(h["arch"], arch, "{h}");

    // The source writes a file, then is snapshotted.
    let (s, _) = a.post("/v1/vm", vm("fuse-src")).await;
    assert_eq!(s, StatusCode::CREATED);
    let content = base64::engine::general_purpose::STANDARD.encode("written before the snapshot");
    let (s, _) = a
        .post(
            "/v1/vm/fuse-src/upload",
            json!({"path": "/data/hello.txt", "content_b64": content, "mode": 0o640}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, snap) = a
        .post(
            "/v1/vm/fuse-src/snapshot",
            json!({"snapshot_id": "snap-1", "mode": "disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    // The digest is the sha256 of the snapshot's disk image (the process backend's disk
    // is its guest root, archived), kept in the host's snapshot store.
    let image = dir.join("snapshots/fuse-src/snap-1/root.tar");
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap()));
    assert_eq!(snap["digest"], want.as_str(), "{snap}");
    assert_eq!(snap["size_bytes"], std::fs::metadata(&image).unwrap().len());
    let (_, list) = a.get("/v1/vm/fuse-src/snapshots").await;
    assert_eq!(list["snapshots"][0]["digest"], want.as_str(), "{list}");
    // Written after the snapshot: not in the fork.
    a.exec("fuse-src", &["sh", "-c", "echo later > data/later.txt"])
        .await;

    // The source goes; its snapshot stays, also across an agent restart.
    assert_eq!(a.delete("/v1/vm/fuse-src").await.0, StatusCode::NO_CONTENT);
    assert!(!dir.join("vms/fuse-src").exists());
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let a = spawn(&ns, &dir, &[]).await;
    let (s, list) = a.get("/v1/vm/fuse-src/snapshots").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["snapshots"][0]["snapshot_id"], "snap-1", "{list}");
    assert_eq!(list["snapshots"][0]["digest"], want.as_str(), "{list}");

    // The fork sees the source's file as it was at the snapshot, with its mode.
    let mut fork = vm("fuse-fork");
    fork["from_snapshot"] = json!({"vm_id": "fuse-src", "snapshot_id": "snap-1"});
    let (s, f) = a.post("/v1/vm", fork).await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    assert_eq!(
        a.exec("fuse-fork", &["cat", "data/hello.txt"]).await,
        (0, "written before the snapshot".into())
    );
    assert_eq!(
        a.exec("fuse-fork", &["stat", "-c", "%a", "data/hello.txt"])
            .await
            .1
            .trim(),
        "640"
    );
    assert_eq!(
        a.exec("fuse-fork", &["test", "-e", "data/later.txt"])
            .await
            .0,
        1,
        "what the source wrote after the snapshot is not in the fork"
    );
    // The fork's own writes do not reach the snapshot.
    a.exec("fuse-fork", &["sh", "-c", "echo mine > data/hello.txt"])
        .await;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap())),
        want
    );

    // An unknown snapshot is a 404 with the envelope, and nothing is created.
    let mut bad = vm("fuse-nofork");
    bad["from_snapshot"] = json!({"vm_id": "fuse-src", "snapshot_id": "nope"});
    let (s, e) = a.post("/v1/vm", bad).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["code"], "not_found", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    assert_eq!(a.get("/v1/vm/fuse-nofork").await.0, StatusCode::NOT_FOUND);

    // Deleting the snapshot of a destroyed VM removes it; a second delete is a 404.
    let (s, _) = a.delete("/v1/vm/fuse-src/snapshots/snap-1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!dir.join("snapshots/fuse-src").exists());
    assert_eq!(
        a.delete("/v1/vm/fuse-src/snapshots/snap-1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/v1/vm/fuse-src/snapshots").await.0,
        StatusCode::NOT_FOUND
    );
    // The fork does not depend on it.
    assert_eq!(
        a.exec("fuse-fork", &["cat", "data/hello.txt"]).await.1,
        "mine\n"
    );
    assert_eq!(a.delete("/v1/vm/fuse-fork").await.0, StatusCode::NO_CONTENT);
}
