//! The Go-era host-agent wire keeps working beside one-call provisioning: a host that does
//! not advertise `provision` in its `/healthz` (the stub host served over HTTP, which speaks
//! the base wire) is driven call by call, and a host that only knows the original agent's
//! `/start-surfd` route gets its agent started there.

use crate::harness::stub_host;
use fuse_server::config::{Config, Flags};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn flags() -> Flags {
    Flags {
        listen: "127.0.0.1:0".into(),
        require_auth: "false".into(),
        vm_prefix: "fuse-".into(),
        agent_profile: "fused".into(),
        scheduler_policy: "spread".into(),
        max_body_bytes: "1048576".into(),
        header_timeout_secs: "10".into(),
        idle_timeout_secs: "60".into(),
        body_timeout_secs: "60".into(),
        max_connections: "4096".into(),
        sse_keepalive_secs: "15".into(),
        host_poll_secs: "3600".into(),
        gc_period_secs: "3600".into(),
        recovery_period_secs: "3600".into(),
        reconcile_period_secs: "3600".into(),
        orphan_grace_secs: "120".into(),
        host_down_after_secs: "0".into(),
        quarantine_after: "3".into(),
        terminal_retention_secs: "86400".into(),
        snapshot_retention_secs: "3600".into(),
        drain_timeout_secs: "30".into(),
        provision_timeout_secs: "60".into(),
        log_format: "text".into(),
        ..Flags::default()
    }
}

#[tokio::test]
async fn a_go_era_host_is_driven_call_by_call_with_the_start_surfd_fallback() {
    let (stub, addr, _serving) = stub_host().await;
    stub.set_surfd_only(true);
    let fuse = fuse_server::server::start(Config::from_flags(flags(), |_| None).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/hosts"))
        .json(
            &json!({"id": "old", "url": format!("http://{addr}"), "token": "host-token",
                      "capacity": {"cpus": 8, "ram_mb": 16384, "storage_gb": 100, "vm_count": 10}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .post(format!("{base}/v1/environments"))
        .json(&json!({
            "task_id": "old-1",
            "files": {"/data/x.txt": "aGk="},
            "secrets": {"K": "value-of-k"},
            "startup_script": "echo ready",
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let env: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["state"], "running", "{env}");
    let vm = stub.vm("fuse-old-1").expect("the VM is on the old host");
    // Call by call: the files arrived as uploads, with their modes.
    assert_eq!(vm.files["/data/x.txt"].0, b"hi");
    assert_eq!(vm.files["/fuse/token"].1, 0o600);
    assert_eq!(vm.files["/fuse/tls.key"].1, 0o600);
    assert!(vm.files["/fuse/secrets.json"].0.starts_with(b"{\"K\""));
    assert_eq!(
        vm.execs,
        [["sh", "-lc", "echo ready"].map(String::from).to_vec()],
        "the startup script ran as an exec"
    );
    // `/start-agent` answered 404, so the agent was started through `/start-surfd`.
    assert_eq!(vm.agent_starts, 1);
    assert!(vm.agent_running);
    assert_eq!(
        vm.agent.unwrap().command,
        "/usr/local/bin/fused --dir /fuse"
    );
    fuse.shutdown();
}
