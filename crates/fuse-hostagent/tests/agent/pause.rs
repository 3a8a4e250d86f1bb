//! Pause and resume on the real `fc-agent` (process backend): a paused VM is listed
//! `paused`, holds its storage only, refuses guest operations with 409, keeps its files
//! and its network, survives an agent restart, resumes only where there is room, and a
//! delete removes it; a memory restore is refused (the process backend keeps no memory).

use super::{spawn, tempdir, Ns};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;

fn vm(name: &str, cpus: u32, memory_mb: u64) -> serde_json::Value {
    json!({"name": name, "cpus": cpus, "memory_mb": memory_mb, "storage_gb": 1})
}

#[tokio::test]
async fn a_paused_vm_keeps_its_disk_and_network_across_an_agent_restart() {
    let Some(ns) = Ns::new("pause") else { return };
    let dir = tempdir("pause");
    let env = [("FC_AGENT_CPUS", "2"), ("FC_AGENT_RAM_MB", "256")];
    let mut a = spawn(&ns, &dir, &env).await;
    let (_, h) = a.get("/healthz").await;
    let features = h["features"].to_string();
    assert!(features.contains("\"pause\""), "{h}");
    assert!(
        !features.contains("\"template\""),
        "no memory here, no templates: {h}"
    );

    let (s, v) = a.post("/v1/vm", vm("fuse-p", 1, 128)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let content = base64::engine::general_purpose::STANDARD.encode("written before the pause");
    let (s, _) = a
        .post(
            "/v1/vm/fuse-p/upload",
            json!({"path": "/data/before.txt", "content_b64": content}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, p) = a.post("/v1/vm/fuse-p/pause", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["state"], "paused", "{p}");
    assert_eq!(p["paused"]["kind"], "disk", "{p}");
    assert!(p["paused"]["size_bytes"].as_u64().unwrap() > 0, "{p}");
    assert!(p.get("error").is_none(), "a paused VM is no dead VM: {p}");
    let vm_dir = dir.join("vms/fuse-p");
    assert!(vm_dir.join("root.tar").is_file(), "archived for a move");
    let (s, again) = a.post("/v1/vm/fuse-p/pause", json!({})).await;
    assert_eq!(
        (s, &again["paused"]),
        (StatusCode::OK, &p["paused"]),
        "idempotent"
    );
    let (_, one) = a.get("/v1/vm/fuse-p").await;
    assert_eq!(one["state"], "paused", "{one}");
    let (_, list) = a.get("/v1/vm").await;
    assert_eq!(list["vms"][0]["state"], "paused", "{list}");

    // Storage only.
    let (_, h) = a.get("/healthz").await;
    assert_eq!(
        h["allocated"],
        json!({"cpus": 0, "ram_mb": 0, "storage_gb": 1, "vm_count": 0}),
        "{h}"
    );
    assert!(h["artifact_bytes"].as_u64().unwrap() > 0, "{h}");

    // Guest operations are refused while paused.
    let (s, e) = a.post("/v1/vm/fuse-p/exec", json!({"cmd": ["true"]})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("paused"),
        "{e}"
    );
    let (s, _) = a.get("/v1/vm/fuse-p/files?path=/data/before.txt").await;
    assert_eq!(s, StatusCode::CONFLICT);
    let tunnel = a
        .http
        .get(format!("{}/v1/vm/fuse-p/ports/8000/tunnel", a.base))
        .bearer_auth(super::TOKEN)
        .header("connection", "upgrade")
        .header("upgrade", "fuse-tunnel")
        .send()
        .await
        .unwrap();
    assert_eq!(tunnel.status(), StatusCode::CONFLICT);
    let (s, _) = a
        .post(
            "/v1/vm/fuse-p/snapshot",
            json!({"snapshot_id": "s-paused", "mode": "disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // A resume needs room: another VM takes the whole host meanwhile.
    let (s, big) = a.post("/v1/vm", vm("fuse-big", 2, 256)).await;
    assert_eq!(s, StatusCode::CREATED, "the paused VM holds no CPU: {big}");
    let (s, e) = a.post("/v1/vm/fuse-p/resume", json!({})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    let (_, one) = a.get("/v1/vm/fuse-p").await;
    assert_eq!(one["state"], "paused", "still paused: {one}");
    assert_eq!(a.delete("/v1/vm/fuse-big").await.0, StatusCode::NO_CONTENT);

    // An agent restart keeps it paused. (Not dropped: the harness's drop removes the VMs'
    // namespaces, which a restarted agent finds again.)
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::mem::forget(a);
    let a = spawn(&ns, &dir, &env).await;
    let (_, one) = a.get("/v1/vm/fuse-p").await;
    assert_eq!(one["state"], "paused", "{one}");
    assert!(vm_dir.is_dir(), "not reclaimed as a dead VM");

    let (s, r) = a.post("/v1/vm/fuse-p/resume", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    assert!(r.get("paused").is_none(), "{r}");
    assert_eq!(
        a.exec("fuse-p", &["cat", "data/before.txt"]).await,
        (0, "written before the pause".into())
    );
    assert!(
        !vm_dir.join("root.tar").exists(),
        "the pause's archive is gone"
    );
    let (s, again) = a.post("/v1/vm/fuse-p/resume", json!({})).await;
    assert_eq!(
        (s, again["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (_, h) = a.get("/healthz").await;
    assert_eq!(h["allocated"]["cpus"], 1, "{h}");

    // No memory restore here: a clear refusal.
    let (s, snap) = a
        .post(
            "/v1/vm/fuse-p/snapshot",
            json!({"snapshot_id": "s1", "mode": "full"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    let mut tpl = vm("fuse-t", 1, 128);
    tpl["from_snapshot"] = json!({"vm_id": "fuse-p", "snapshot_id": "s1", "memory": true});
    let (s, e) = a.post("/v1/vm", tpl).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{e}");
    assert_eq!(e["error"]["code"], "unimplemented", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("memory"),
        "{e}"
    );
    let (s, _) = a
        .post("/v1/vm/fuse-p/claim", json!({"name": "fuse-c"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a running VM is not warm");

    // Paused, then deleted: nothing is left.
    a.post("/v1/vm/fuse-p/pause", json!({})).await;
    assert_eq!(a.delete("/v1/vm/fuse-p").await.0, StatusCode::NO_CONTENT);
    assert!(!vm_dir.exists());
    let (s, _) = a.get("/v1/vm/fuse-p").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}
