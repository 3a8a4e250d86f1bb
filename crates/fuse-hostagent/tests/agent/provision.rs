//! One-call provisioning on the real `fc-agent` (process backend): a create that carries
//! the whole guest setup writes the files with their modes, runs the startup script,
//! starts the agent and answers once with per-step timings; a failing step is named in the
//! error; the agent's own state files are private whatever the umask; every request is
//! counted in `/metrics`.

use super::{spawn, tempdir, Ns};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `fc_agent_http_requests_total` for one route and method, summed over status codes.
fn requests(metrics: &str, route: &str, method: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fc_agent_http_requests_total{"))
        .filter(|l| {
            l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_create_with_its_setup_is_one_call() {
    let Some(ns) = Ns::new("prov") else { return };
    let dir = tempdir("prov");
    // Capacity of its own: the machine's free disk must not decide whether three VMs fit.
    let caps = [
        ("FC_AGENT_CPUS", "64"),
        ("FC_AGENT_RAM_MB", "65536"),
        ("FC_AGENT_STORAGE_GB", "100"),
    ];
    let a = spawn(&ns, &dir, &caps).await;
    let (_, h) = a.get("/healthz").await;
    assert!(
        h["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "provision")),
        "{h}"
    );
    let body = json!({
        "name": "fuse-p", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
        "setup": {
            "files": [
                {"path": "/fuse/token", "content_b64": b64("s3cret-token"), "mode": 0o600},
                {"path": "/etc/app/conf.json", "content_b64": b64("{}"), "mode": 0o644},
            ],
            "startup": {"script": "cat fuse/token > startup.out; echo ok", "timeout_ms": 10000},
            "agent": {"command": "echo agent-up > agent.out; sleep 300", "binary_path": "",
                      "download_url": "", "listen": "0.0.0.0:8443", "auth_token": "t"},
        }
    });
    let (s, vm) = a.post("/v1/vm", body).await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let steps: Vec<&str> = vm["setup"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("timings in the reply: {vm}"))
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["boot", "files", "startup_script", "start_agent"]);
    assert!(vm["setup"]["steps"][0]["ms"].as_u64().is_some());
    let root = dir.join("vms/fuse-p/root");
    assert_eq!(
        std::fs::read(root.join("fuse/token")).unwrap(),
        b"s3cret-token"
    );
    assert_eq!(mode(&root.join("fuse/token")), 0o600);
    assert_eq!(mode(&root.join("etc/app/conf.json")), 0o644);
    assert_eq!(
        std::fs::read(root.join("startup.out")).unwrap(),
        b"s3cret-token",
        "the startup script ran after the files were written"
    );
    // The agent runs (its command wrote its marker).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !root.join("agent.out").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // One call did all of it.
    let metrics = a
        .http
        .get(format!("{}/metrics", a.base))
        .bearer_auth(super::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(requests(&metrics, "/v1/vm", "POST"), 1, "{metrics}");
    for route in [
        "/v1/vm/{id}/upload",
        "/v1/vm/{id}/exec",
        "/v1/vm/{id}/start-agent",
    ] {
        assert_eq!(requests(&metrics, route, "POST"), 0, "{route}: {metrics}");
    }
    // The VM's network is IPv4 only: its link has its address and no IPv6 one (a
    // link-local address per VM would grow one list of the host's IPv6 routes).
    let dev = fuse_hostagent::net::dev_name(&fuse_hostagent::net::agent_tag(&dir), "fuse-p");
    let v4 = ns.in_ns(&["ip", "-4", "-o", "addr", "show", "dev", &dev]);
    assert!(v4.contains("/30"), "{v4}");
    let v6 = ns.in_ns(&["ip", "-6", "-o", "addr", "show", "dev", &dev]);
    assert!(v6.trim().is_empty(), "no IPv6 address on {dev}: {v6}");
    // The agent's own files that hold the VM's token are private.
    let vm_dir = dir.join("vms/fuse-p");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("vms")), 0o700);
    assert_eq!(mode(&vm_dir), 0o700);
    assert_eq!(mode(&vm_dir.join("vm.json")), 0o600);
    assert_eq!(mode(&vm_dir.join("guest.token")), 0o600);

    // A failing step is named, with the guest's words.
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-bad", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"startup": {"script": "echo oops >&2; exit 3", "timeout_ms": 10000}}}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["details"]["reason"], "setup_failed", "{e}");
    assert_eq!(e["error"]["details"]["step"], "startup_script", "{e}");
    assert_eq!(e["error"]["message"], "exited with 3: oops", "{e}");
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-badfile", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"files": [{"path": "relative", "content_b64": "", "mode": 420}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["details"]["step"], "files", "{e}");
    for id in ["fuse-p", "fuse-bad", "fuse-badfile"] {
        let (s, _) = a.delete(&format!("/v1/vm/{id}")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
}
