//! Healthchecks on the real `fc-agent` (process backend): the host probes the guest for the
//! VM's whole life and reports the verdict in `health`; a create with a wait answers once
//! the check passes (its time is the `healthcheck` step) or fails with step `healthcheck`
//! and the last probe's message; an `http` probe reaches a server bound to the guest's
//! loopback; the probing resumes after an agent restart.

use super::{spawn, tempdir, Agent, Ns};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn health(a: &Agent, id: &str) -> Value {
    let (s, v) = a.get(&format!("/v1/vm/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["health"].clone()
}

async fn wait_state(a: &Agent, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(a, id).await;
        if h["state"] == state {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never became {state}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn healthchecks_pass_fail_and_hold_a_create_until_passing() {
    let Some(ns) = Ns::new("health") else { return };
    let dir = tempdir("health");
    let caps = [
        ("FC_AGENT_CPUS", "64"),
        ("FC_AGENT_RAM_MB", "65536"),
        ("FC_AGENT_STORAGE_GB", "100"),
    ];
    let mut a = spawn(&ns, &dir, &caps).await;

    // An http probe of a server on the guest's loopback that the setup starts: the create
    // answers once it passes, with the wait as its last step and the verdict in the answer.
    let (s, vm) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-web", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"agent": {"command": "exec python3 -m http.server 8080 --bind 127.0.0.1",
                                       "binary_path": ""}},
                   "healthcheck": {"http": {"port": 8080, "path": "/"}, "interval_seconds": 1,
                                   "timeout_seconds": 1, "retries": 2},
                   "healthcheck_wait_ms": 15000}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let steps: Vec<&str> = vm["setup"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["boot", "files", "start_agent", "healthcheck"],
        "{vm}"
    );
    assert_eq!(vm["health"]["state"], "passing", "{vm}");
    assert_eq!(vm["health"]["failures"], 0, "{vm}");
    assert!(vm["health"]["since"].as_str().is_some(), "{vm}");
    // The server stops: the probe fails `retries` times and the verdict says why.
    let (s, _) = a.post("/v1/vm/fuse-web/stop-agent", json!({})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let h = wait_state(&a, "fuse-web", "failing").await;
    assert!(h["failures"].as_u64().unwrap() >= 2, "{h}");
    assert!(
        h["message"].as_str().unwrap().contains("127.0.0.1:8080"),
        "the probe's words: {h}"
    );

    // An exec probe, no wait: `starting`, then passing once the file it tests exists,
    // failing once it is gone again.
    let (s, vm) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-file", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "healthcheck": {"exec": ["test", "-e", "ready"], "interval_seconds": 1,
                                   "retries": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    assert_ne!(vm["health"]["state"], "passing", "{vm}");
    assert!(vm.get("setup").is_none(), "no setup, no wait: {vm}");
    wait_state(&a, "fuse-file", "failing").await;
    a.exec("fuse-file", &["touch", "ready"]).await;
    wait_state(&a, "fuse-file", "passing").await;
    let (_, list) = a.get("/v1/vm?prefix=fuse-file").await;
    assert_eq!(list["vms"][0]["health"]["state"], "passing", "{list}");
    // The agent restarts: the adopted VM is probed again.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = spawn(&ns, &dir, &caps).await;
    wait_state(&b, "fuse-file", "passing").await;
    b.exec("fuse-file", &["rm", "ready"]).await;
    let h = wait_state(&b, "fuse-file", "failing").await;
    assert_eq!(h["message"], "exited with 1", "{h}");

    // A probe that never passes fails the create with step `healthcheck` and its message.
    let t = std::time::Instant::now();
    let (s, e) = b
        .post(
            "/v1/vm",
            json!({"name": "fuse-never", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "healthcheck": {"exec": ["sh", "-c", "echo not ready yet >&2; exit 3"],
                                   "interval_seconds": 1, "retries": 1},
                   "healthcheck_wait_ms": 2500}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["details"]["reason"], "setup_failed", "{e}");
    assert_eq!(e["error"]["details"]["step"], "healthcheck", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited with 3: not ready yet"), "{msg}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bounded by the wait: {:?}",
        t.elapsed()
    );
    // Both probes at once are refused.
    let (s, e) = b
        .post(
            "/v1/vm",
            json!({"name": "fuse-both", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "healthcheck": {"exec": ["true"], "http": {"port": 80}}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    for id in ["fuse-web", "fuse-file", "fuse-never"] {
        assert_eq!(
            b.delete(&format!("/v1/vm/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
}
