//! What the Go original's clients rely on beyond the basic lifecycle: API keys, placement
//! by pin, architecture and labels, host labels and capacity, the 404 of an ended
//! environment, snapshot fields, resolve and paging, fork, healthchecks, published ports,
//! the idle timeout, and the routes that answer "not here yet" clearly.

use crate::harness::{start, start_with, test_flags, Client, Fuse};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const MASTER: &str = "master-token-0123456789abcdef";

/// The ids of every item of a paged list, following `next_cursor` to the end.
async fn walk(f: &Fuse, first: &str, key: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut path = first.to_owned();
    loop {
        let p = f.get(&path).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.text);
        for item in p.body[key].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match p.body["next_cursor"].as_str() {
            Some(c) => path = format!("{first}&cursor={c}"),
            None => return seen,
        }
    }
}

fn as_client(f: &Fuse, token: &str) -> Client {
    f.with_token(token)
}

#[tokio::test]
async fn api_keys_are_bearer_tokens_without_master_rights_and_revoke_at_once() {
    let mut flags = test_flags();
    flags.auth_token = MASTER.into();
    let f = start_with(flags).await;
    let r = f.post("/v1/api-keys", json!({"label": "ci"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 19 && id.starts_with("ak_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let raw = r.body["key"].as_str().unwrap().to_owned();
    assert!(raw.len() > 32, "{raw}");
    assert_eq!(r.body["label"], "ci");
    assert!(r.body["last_used_at"].is_null());
    // The raw key is never shown again, and never stored.
    let list = f.get("/v1/api-keys").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.text.contains(&raw));
    assert_eq!(list.body["api_keys"][0]["id"], id.as_str());
    assert!(list.body["api_keys"][0].get("key").is_none());

    let k = as_client(&f, &raw);
    assert_eq!(k.get("/v1/environments").await.status, StatusCode::OK);
    f.create_running("keyed").await;
    for (m, path, body) in [
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", Some(json!({}))),
        (
            "POST",
            "/v1/environments/fuse-keyed?action=exec",
            Some(json!({"cmd": ["true"]})),
        ),
    ] {
        let r = k.call(m.parse().unwrap(), path, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{m} {path}: {}",
            r.text
        );
        assert!(r.message().contains("master token"), "{}", r.message());
    }
    // A snapshot taken with the key is filed under it.
    let s = k
        .post(
            "/v1/environments/fuse-keyed/snapshots",
            json!({"layer_key": "L"}),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{}", s.text);
    assert_eq!(s.body["tenant_id"], id.as_str());
    let mine = k.get("/v1/snapshots/resolve?layer_key=L&arch=amd64").await;
    assert_eq!(mine.body["found"], true, "{}", mine.text);
    let other = f.get("/v1/snapshots/resolve?layer_key=L&arch=amd64").await;
    assert_eq!(
        other.body["found"], false,
        "the master token's scope is its own"
    );
    let used = f.get("/v1/api-keys").await.body["api_keys"][0].clone();
    assert!(used["last_used_at"].is_string(), "{used}");

    assert_eq!(
        f.delete(&format!("/v1/api-keys/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    let r = k.get("/v1/environments").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let revoked = f.get("/v1/api-keys").await.body["api_keys"][0].clone();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(
        f.delete("/v1/api-keys/ak_0000000000000000").await.status,
        StatusCode::NOT_FOUND
    );
    // A made-up key is refused like any wrong token.
    let r = as_client(&f, "fuse_ak_0000").get("/v1/environments").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn placement_follows_pin_arch_and_labels_and_says_why_not() {
    let f = start().await;
    for (id, body) in [
        (
            "big",
            json!({"labels": {"zone": "a"}, "capacity": {"cpus": 16}}),
        ),
        ("arm", json!({"capacity": {"cpus": 2, "arch": "arm64"}})),
    ] {
        let mut b = body;
        b["id"] = id.into();
        b["url"] = format!("stub://{id}").into();
        let r = f.post("/v1/hosts", b).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let create = |task: &str, spec: Value| {
        let f = &f;
        let task = task.to_owned();
        async move {
            f.post("/v1/environments", json!({"task_id": task, "spec": spec}))
                .await
        }
    };
    let r = create("p-any", json!({})).await;
    assert_eq!(r.body["host_id"], "big", "spread: the larger host");
    let r = create("p-pin", json!({"host_id": "arm"})).await;
    assert_eq!(
        (r.status, r.body["host_id"].as_str()),
        (StatusCode::CREATED, Some("arm"))
    );
    assert_eq!(r.body["spec"]["host_id"], "arm", "echoed");
    let r = create("p-arch", json!({"arch": "arm64", "idle_timeout_seconds": 600, "image": "ubuntu-24.04", "huge_pages": true})).await;
    assert_eq!(r.body["host_id"], "arm", "{}", r.text);
    let spec = &r.body["spec"];
    assert_eq!(
        (
            spec["arch"].as_str(),
            spec["idle_timeout_seconds"].as_u64(),
            spec["image"].as_str(),
            spec["huge_pages"].as_bool()
        ),
        (Some("arm64"), Some(600), Some("ubuntu-24.04"), Some(true)),
        "every spec field is kept and echoed: {spec}"
    );
    let r = create("p-label", json!({"labels": {"zone": "a"}})).await;
    assert_eq!(r.body["host_id"], "big");
    let r = create("p-nolabel", json!({"labels": {"zone": "b"}})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(
        r.message().contains("big: has zone=a, wants zone=b"),
        "{}",
        r.message()
    );
    assert!(
        r.message().contains("arm: has no label zone, wants zone=b"),
        "{}",
        r.message()
    );
    let r = create("p-riscv", json!({"arch": "riscv64"})).await;
    assert!(
        r.message().contains("arm: arch arm64, not riscv64"),
        "{}",
        r.message()
    );
    assert!(
        r.message().contains("big: arch amd64, not riscv64"),
        "{}",
        r.message()
    );
    let r = create("p-gone", json!({"host_id": "nope"})).await;
    assert!(
        r.message().contains("nope (pinned) is not registered"),
        "{}",
        r.message()
    );
    let r = create(
        "p-bad",
        json!({"arch": "ARM 64", "labels": {"": "x"}, "gpus": 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for needle in ["spec.arch", "spec.labels", "spec.gpus"] {
        assert!(r.message().contains(needle), "{needle}: {}", r.message());
    }
}

#[tokio::test]
async fn hosts_keep_labels_and_backend_warn_and_refresh_capacity() {
    let f = start().await;
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "h1", "url": "stub://h1", "labels": {"gpu": "none"}, "backend": "qemu",
                   "capacity": {"cpus": 8, "ram_mb": 0, "storage_gb": 0, "vm_count": 0}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["labels"], json!({"gpu": "none"}));
    assert_eq!(
        r.body["backend"], "stub",
        "the host's own answer wins over the declared one"
    );
    assert_eq!(
        r.body["capacity"]["cpus"], 8,
        "declared values cap the host's report"
    );
    assert_eq!(
        r.body["capacity"]["arch"], "amd64",
        "a host that never said is amd64"
    );
    assert_eq!(r.body["warnings"], json!([]));
    for field in ["mig_instances", "mig_instance_uuids", "gpu_devices"] {
        assert_eq!(
            r.body["capacity"][field],
            json!([]),
            "{field} is a list, never null"
        );
    }
    assert_eq!(r.body["capacity"]["mig_profiles"], json!({}));
    // The host reports less than declared: a warning, and the host's value.
    f.stub("h1").set_capacity(fuse_types::Resources {
        cpus: 4,
        ram_mb: 8192,
        storage_gb: 50,
        vm_count: 10,
    });
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "h1", "url": "stub://h1", "capacity": {"cpus": 8}}),
        )
        .await;
    assert_eq!(r.body["capacity"]["cpus"], 4, "{}", r.text);
    let w = r.body["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("capacity.cpus 8 is above the 4"),
        "{w:?}"
    );
    assert_eq!(
        f.get("/v1/hosts/h1").await.body["warnings"],
        json!([]),
        "only on register"
    );
    // Every poll refreshes the capacity from the host, still capped by the declaration.
    f.stub("h1").set_capacity(fuse_types::Resources {
        cpus: 32,
        ram_mb: 4096,
        storage_gb: 50,
        vm_count: 10,
    });
    f.run_task("host_monitor").await.unwrap();
    let h = f.get("/v1/hosts/h1").await.body;
    assert_eq!(
        (
            h["capacity"]["cpus"].as_u64(),
            h["capacity"]["ram_mb"].as_u64()
        ),
        (Some(8), Some(4096)),
        "{h}"
    );
    // Paging.
    for id in ["h2", "h3"] {
        f.stub_host(id, 2, 2).await;
    }
    assert_eq!(
        walk(&f, "/v1/hosts?limit=2", "hosts").await,
        ["h1", "h2", "h3"]
    );
    assert_eq!(
        f.get("/v1/hosts?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn an_ended_environment_is_404_with_its_last_state_and_still_listed() {
    let f = start().await;
    f.create_running("gone").await;
    assert_eq!(
        f.delete("/v1/environments/fuse-gone").await.status,
        StatusCode::NO_CONTENT
    );
    let r = f.get("/v1/environments/fuse-gone").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let d = &r.body["error"]["details"];
    assert_eq!(d["state"], "destroyed");
    assert_eq!(d["error"], "");
    let at = d["destroyed_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{at}"
    );
    let l = f.get("/v1/environments?state=destroyed").await;
    assert_eq!(l.body["environments"][0]["id"], "fuse-gone", "{}", l.text);
    // A failed one too, with its error.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "broken", "startup_script": "exit 3"}),
        )
        .await;
    assert_eq!(r.body["state"], "failed", "{}", r.text);
    let r = f.get("/v1/environments/fuse-broken").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"]["details"]["state"], "failed");
    assert!(
        r.body["error"]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("exit"),
        "{}",
        r.text
    );
    let l = f.get("/v1/environments?state=failed").await;
    assert_eq!(l.body["environments"][0]["id"], "fuse-broken");
}

#[tokio::test]
async fn snapshots_carry_every_field_filter_page_and_resolve() {
    let f = start().await;
    f.create_running("snaps").await;
    let mut ids = Vec::new();
    for (i, layer) in ["L1", "L1", "L2"].iter().enumerate() {
        let r = f
            .post(
                "/v1/environments/fuse-snaps/snapshots",
                json!({"layer_key": layer, "metadata": {"step": i.to_string()}, "comment": format!("s{i}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(
            (r.body["kind"].as_str(), r.body["layer_key"].as_str()),
            (Some("disk"), Some(*layer))
        );
        assert_eq!(r.body["metadata"]["step"], i.to_string());
        ids.push(r.body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = f
        .post(
            "/v1/environments/fuse-snaps/snapshots",
            json!({"live": true}),
        )
        .await;
    assert_eq!(
        (live.body["mode"].as_str(), live.body["kind"].as_str()),
        (Some("full"), Some("live")),
        "{}",
        live.text
    );
    let l1 = f.get("/v1/snapshots?layer_key=L1&arch=amd64").await;
    let got: Vec<&str> = l1.body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[1].as_str(), ids[0].as_str()], "newest first");
    // Paging walks all four once, newest first.
    let seen = walk(&f, "/v1/snapshots?vm_id=fuse-snaps&limit=3", "snapshots").await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[1..], [ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let hit = f.get("/v1/snapshots/resolve?layer_key=L1&arch=amd64").await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(
        (
            hit.body["found"].as_bool(),
            hit.body["snapshot"]["id"].as_str()
        ),
        (Some(true), Some(ids[1].as_str()))
    );
    let miss = f.get("/v1/snapshots/resolve?layer_key=L1&arch=arm64").await;
    assert_eq!(
        (miss.status, miss.body["found"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert!(miss.body.get("snapshot").is_none());
    let bad = f.get("/v1/snapshots/resolve?layer_key=L1").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let r = f
        .post(
            "/v1/environments/fuse-snaps/snapshots",
            json!({"export_ref": "s3://x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message().contains("exports are not offered"),
        "{}",
        r.message()
    );
}

#[tokio::test]
async fn fork_starts_from_the_source_disk_with_its_own_identity() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let content = base64::engine::general_purpose::STANDARD.encode(b"from the source");
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "src", "files": {"/data/x": content}, "expose": [{"port": 8080, "as": "web"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let fork = f
        .post(
            "/v1/environments/fuse-src?action=fork",
            json!({"comment": "try it"}),
        )
        .await;
    assert_eq!(fork.status, StatusCode::CREATED, "{}", fork.text);
    let id = fork.body["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "fuse-src");
    assert!(id.starts_with("fuse-src-fork-"), "{id}");
    assert_eq!(
        (fork.body["state"].as_str(), fork.body["host_id"].as_str()),
        (Some("running"), Some("h1"))
    );
    assert_ne!(fork.body["url"], r.body["url"]);
    assert_eq!(
        fork.body["endpoints"][0]["as"], "web",
        "published ports carry over"
    );
    let vm = f.stub("h1").vm(&id).unwrap();
    assert_eq!(
        vm.files["/data/x"].0, b"from the source",
        "the fork starts from the source's disk"
    );
    let src_vm = f.stub("h1").vm("fuse-src").unwrap();
    let token =
        |v: &fuse_server::provider::stub::StubVm| v.agent.as_ref().unwrap().auth_token.clone();
    assert_ne!(token(&vm), token(&src_vm), "its own credentials");
    let snaps = f.get("/v1/snapshots?vm_id=fuse-src").await;
    assert_eq!(snaps.body["snapshots"][0]["comment"], "try it");
    // Reusing a snapshot: it must be the source's, ready, and a disk one.
    let sid = snaps.body["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = f
        .post(
            "/v1/environments/fuse-src?action=fork",
            json!({"reuse_snapshot_id": sid}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(
        f.get("/v1/snapshots?vm_id=fuse-src").await.body["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "no new snapshot"
    );
    f.create_running("other").await;
    let r = f
        .post(
            "/v1/environments/fuse-other?action=fork",
            json!({"reuse_snapshot_id": sid}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    f.delete("/v1/environments/fuse-other").await;
    let r = f
        .post("/v1/environments/fuse-other?action=fork", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn healthchecks_are_validated_waited_for_and_reported() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "hc", "healthcheck": {"exec": ["true"], "interval_seconds": 5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["health"]["state"], "passing", "{}", r.text);
    assert_eq!(r.body["health"]["failures"], 0);
    // A probe that never passes fails the create with the probe's message.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "hc-bad", "healthcheck": {"exec": ["false"]}}),
        )
        .await;
    assert_eq!(r.body["state"], "failed", "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("healthcheck"),
        "{}",
        r.text
    );
    for (hc, needle) in [
        (
            json!({"exec": ["true"], "http": {"port": 80}}),
            "exactly one of http and exec",
        ),
        (json!({}), "one of http or exec"),
        (
            json!({"http": {"port": 80, "path": "health"}}),
            "must start with '/'",
        ),
        (
            json!({"exec": ["true"], "interval_seconds": 2, "timeout_seconds": 5}),
            "must not be above interval_seconds",
        ),
    ] {
        let r = f
            .post(
                "/v1/environments",
                json!({"task_id": "hc-x", "healthcheck": hc}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{hc}");
        assert!(r.message().contains(needle), "{hc}: {}", r.message());
    }
    // A new verdict from the host is recorded on the next pass and sent as an event.
    let mut events = f.events("fuse-hc").await;
    f.stub("h1").set_observed(
        "fuse-hc",
        Some(fuse_types::Health {
            state: fuse_types::HealthState::Failing,
            since: Some(fuse_types::now()),
            failures: 3,
            message: "exit status 1".into(),
        }),
        None,
    );
    f.run_task("reconcile").await.unwrap();
    let h = f.get("/v1/environments/fuse-hc").await.body["health"].clone();
    assert_eq!(
        (
            h["state"].as_str(),
            h["failures"].as_u64(),
            h["message"].as_str()
        ),
        (Some("failing"), Some(3), Some("exit status 1")),
        "{h}"
    );
    let ev = events.next_matching(|e| e["event"] == "health").await;
    assert_eq!(
        (ev["state"].as_str(), ev["health"]["state"].as_str()),
        (Some("running"), Some("failing")),
        "{ev}"
    );
    assert_eq!(
        f.get("/v1/environments/fuse-hc").await.body["state"],
        "running",
        "a failing probe only reports"
    );
}

#[tokio::test]
async fn exposed_ports_get_endpoints_and_bad_ones_are_refused() {
    let f = start().await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "ports", "expose": [{"port": 8080, "as": "web"}, {"port": 53, "protocol": "udp"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body["endpoints"],
        json!([
            {"as": "web", "url": "/v1/environments/fuse-ports/ports/8080/", "protocol": "tcp",
             "port": 8080, "public": false, "proxy_url": "/v1/environments/fuse-ports/ports/8080/",
             "forward_url": "tcp://stub.invalid:30000"},
            {"as": "", "url": "udp://stub.invalid:30001", "protocol": "udp", "port": 53,
             "public": false, "forward_url": "udp://stub.invalid:30001"},
        ])
    );
    assert_eq!(
        f.get("/v1/environments/fuse-ports").await.body["endpoints"],
        r.body["endpoints"]
    );
    for (expose, needle) in [
        (
            json!([{"port": 0}]),
            "expose[0].port must be from 1 to 65535",
        ),
        (
            json!([{"port": 80, "protocol": "sctp"}]),
            "unknown protocol",
        ),
        (
            json!([{"port": 80}, {"port": 80, "protocol": "tcp"}]),
            "listed twice",
        ),
    ] {
        let r = f
            .post(
                "/v1/environments",
                json!({"task_id": "ports-x", "expose": expose}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{expose}");
        assert!(r.message().contains(needle), "{expose}: {}", r.message());
    }
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eg", "egress": {"mode": "proxy", "provider": "mock"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message().contains("egress.mode proxy is not available"),
        "{}",
        r.message()
    );
}

#[tokio::test]
async fn an_idle_environment_is_announced_then_destroyed() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "idle", "spec": {"idle_timeout_seconds": 60}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut events = f.events("fuse-idle").await;
    f.advance(Duration::from_secs(50));
    f.run_task("reconcile").await.unwrap();
    // An API call at +50 s restarts the count.
    assert_eq!(
        f.get("/v1/environments/fuse-idle").await.status,
        StatusCode::OK
    );
    f.advance(Duration::from_secs(30));
    f.run_task("reconcile").await.unwrap();
    assert_eq!(
        f.get("/v1/environments/fuse-idle").await.status,
        StatusCode::OK,
        "80 s after start, 30 s after the last call"
    );
    // Traffic restarts it too.
    f.stub("h1").set_observed("fuse-idle", None, Some(1000));
    f.advance(Duration::from_secs(59));
    f.run_task("reconcile").await.unwrap();
    assert_eq!(
        f.app()
            .store
            .vm_get(&fuse_types::VmId::parse("fuse-idle").unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        fuse_types::VmState::Running
    );
    f.advance(Duration::from_secs(61));
    f.run_task("reconcile").await.unwrap();
    let ev = events.next_matching(|e| e["state"] == "idle").await;
    assert_eq!(ev["vm_id"], "fuse-idle");
    events.next_matching(|e| e["state"] == "destroyed").await;
    let r = f.get("/v1/environments/fuse-idle").await;
    assert_eq!(
        (r.status, r.state()),
        (StatusCode::NOT_FOUND, json!("destroyed"))
    );
    let audit = f.app().store.audit_list("fuse-idle").await.unwrap();
    assert!(audit.iter().any(|a| a.event_type == "idle"), "{audit:?}");
    assert!(f.stub("h1").vm("fuse-idle").is_none(), "gone from its host");
}

#[tokio::test]
async fn version_computer_and_migrate_answer_clearly() {
    let f = start().await;
    let v = f.get("/v1/version").await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["api"], "v1");
    assert_eq!(v.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v.body["commit"].as_str().unwrap().is_empty());
    f.create_running("desk").await;
    for m in ["GET", "POST"] {
        let r = f
            .call(
                m.parse().unwrap(),
                "/v1/environments/fuse-desk/computer",
                Some(json!({"action": "screenshot"})),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{m}"
        );
        assert!(r.message().contains("desktop image"), "{}", r.message());
    }
    let r = f.get("/v1/environments/fuse-nope/computer").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Migration is cold only: live and lazy answer 501 as the original does; with no other
    // host to go to, a cold one says so (and the environment keeps running).
    let r = f
        .post(
            "/v1/environments/fuse-desk?action=migrate",
            json!({"live": true}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (501, "unimplemented"),
        "{}",
        r.text
    );
    let r = f
        .post("/v1/environments/fuse-desk?action=migrate", json!({}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "unavailable"),
        "{}",
        r.text
    );
    assert!(r.message().contains("no hosts"), "{}", r.text);
    assert_eq!(
        f.get("/v1/environments/fuse-desk").await.body["state"],
        "running"
    );
}

#[tokio::test]
async fn without_a_master_token_a_revoked_key_is_still_refused() {
    let f = start().await;
    let r = f.post("/v1/api-keys", json!({"label": "open"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (id, raw) = (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    );
    let k = as_client(&f, &raw);
    assert_eq!(k.get("/v1/environments").await.status, StatusCode::OK);
    let r = k.get("/v1/api-keys").await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a key is a key even on an open API"
    );
    f.delete(&format!("/v1/api-keys/{id}")).await;
    let r = k.get("/v1/environments").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let other = as_client(&f, "anything-at-all");
    assert_eq!(
        other.get("/v1/environments").await.status,
        StatusCode::OK,
        "the API is open"
    );
}
