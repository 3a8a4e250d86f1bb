//! One `fuse` and three real `fc-agent` processes (the `process` backend), each agent in its
//! own network namespace made by this test and reached over a veth link: hosts registered
//! through the API, 30 environments created concurrently and spread by the policy, the whole
//! chain exercised (files, startup script, agent start, exec, drain, destroy), and at the end
//! every host empty and `allocated` zero. Needs root (network namespaces); skipped with a
//! printed reason otherwise.

use crate::harness::eventually;
use crate::hosts::{Host, AGENT_TOKEN as TOKEN};
use fuse_server::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn one_control_plane_three_hosts_thirty_environments() {
    let mut hosts: Vec<Host> = Vec::new();
    for i in 0..3 {
        match Host::create(&format!("h{i}")) {
            Some(h) => hosts.push(h),
            None => return,
        }
    }
    for h in hosts.iter_mut() {
        h.start_agent();
    }
    let mut flags = fuse_testkit::server::test_flags();
    flags.host_poll_secs = "1".into();
    flags.orphan_grace_secs = "120".into();
    flags.snapshot_retention_secs = "3600".into();
    let cfg = Config::from_flags(flags, |_| None).unwrap();
    let fuse = fuse_server::server::start(cfg).await.unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    // Register the three hosts (each answers across its namespace link).
    for (i, h) in hosts.iter().enumerate() {
        let url = format!("http://{}", h.addr());
        eventually("agent up", Duration::from_secs(15), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(format!("{url}/healthz"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await;
        let r = http
            .post(format!("{base}/v1/hosts"))
            .json(&json!({"id": format!("h{i}"), "url": url, "token": TOKEN, "region": "lab"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let h: Value = r.json().await.unwrap();
        assert_eq!(h["state"], "active", "{h}");
        assert_eq!(
            h["capacity"]["vm_count"], 20,
            "capacity read from the host's /healthz"
        );
    }
    // 30 environments at once.
    let file = base64_of("hello from the control plane");
    let mut tasks = Vec::new();
    for n in 0..30 {
        let (http, base, file) = (http.clone(), base.clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/environments"))
                .json(&json!({
                    "task_id": format!("mh-{n}"),
                    "files": {"/data/greeting.txt": file},
                    "secrets": {"API_KEY": format!("k{n}")},
                    "startup_script": "mkdir -p work && echo ready > work/startup.txt",
                    "agent": {"command": "echo $FUSE_AUTH_TOKEN > agent-token; exec sleep 600", "drain_command": "echo drained > work/drained.txt"}
                }))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (s, env) = t.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{env}");
        assert_eq!(env["state"], "running", "{env}");
    }
    // Each create was one control-plane → host call (the whole guest setup in it), counted
    // by the hosts themselves; health polls aside, nothing else was asked of them.
    let mut calls = 0;
    for h in &hosts {
        let text = http
            .get(format!("http://{}/metrics", h.addr()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        calls += host_calls(&text);
    }
    assert_eq!(calls, 30, "host calls for 30 creates");
    // Spread evenly: 10 per host, on the hosts themselves and in the control plane's books.
    for (i, h) in hosts.iter().enumerate() {
        let listed: Value = http
            .get(format!("http://{}/v1/vm?prefix=fuse-", h.addr()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["vms"].as_array().unwrap().len(), 10, "host h{i}");
        let host: Value = http
            .get(format!("{base}/v1/hosts/h{i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(host["allocated"]["vm_count"], 10);
    }
    // The chain works: files, startup script, agent credentials, exec.
    for n in [0, 13, 29] {
        let exec = |shell: &str| {
            let (http, base, shell) = (http.clone(), base.clone(), shell.to_owned());
            async move {
                let r: Value = http
                    .post(format!("{base}/v1/environments/fuse-mh-{n}?action=exec"))
                    .json(&json!({"shell": shell}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r
            }
        };
        assert_eq!(
            exec("cat data/greeting.txt").await["stdout"],
            "hello from the control plane"
        );
        assert_eq!(exec("cat work/startup.txt").await["stdout"], "ready\n");
        let token = exec("cat fuse/token").await["stdout"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(token.len(), 64);
        assert_eq!(
            exec("cat agent-token").await["stdout"]
                .as_str()
                .unwrap()
                .trim(),
            token
        );
        assert!(exec("cat fuse/secrets.json").await["stdout"]
            .as_str()
            .unwrap()
            .contains(&format!("k{n}")));
        assert_eq!(exec("exit 3").await["exit_code"], 3);
    }
    // Drain runs the drain command in the guest.
    let d: Value = http
        .post(format!("{base}/v1/environments/fuse-mh-7?action=drain"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["state"], "draining");
    assert_eq!(d["error"], "", "{d}");
    let r: Value = http
        .post(format!("{base}/v1/environments/fuse-mh-7?action=exec"))
        .json(&json!({"shell": "cat work/drained.txt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["stdout"], "drained\n");
    // Destroy everything; every host ends empty, every allocation zero.
    let mut dels = Vec::new();
    for n in 0..30 {
        let (http, base) = (http.clone(), base.clone());
        dels.push(tokio::spawn(async move {
            http.delete(format!("{base}/v1/environments/fuse-mh-{n}"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for d in dels {
        assert_eq!(d.await.unwrap(), StatusCode::NO_CONTENT);
    }
    for (i, h) in hosts.iter().enumerate() {
        let listed: Value = http
            .get(format!("http://{}/v1/vm", h.addr()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            listed["vms"].as_array().unwrap().is_empty(),
            "host h{i} not empty: {listed}"
        );
        let host: Value = http
            .get(format!("{base}/v1/hosts/h{i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            ["cpus", "ram_mb", "storage_gb", "vm_count"].map(|k| host["allocated"][k].clone()),
            [json!(0), json!(0), json!(0), json!(0)]
        );
        let dir = h.dir.join("vms");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no VM directory left on h{i}"
        );
    }
    fuse.shutdown();
}

/// Requests a host counted, but for its health and metrics endpoints.
pub fn host_calls(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fc_agent_http_requests_total{"))
        .filter(|l| !l.contains("route=\"/healthz\"") && !l.contains("route=\"/metrics\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
