//! `/v1/hosts`: registration, re-registration, cordon, delete, placement across hosts.

use crate::harness::start;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn register_get_list_reregister_keeps_allocation() {
    let f = start().await;
    let h = f.stub_host("h1", 4, 10).await;
    assert_eq!(h["state"], "active");
    assert_eq!(h["capacity"]["cpus"], 4);
    assert_eq!(h["allocated"]["vm_count"], 0);
    assert!(h.get("token").is_none(), "token is write-only");
    assert!(h["last_seen"].is_string());
    f.create_running("on-h1").await;
    f.post("/v1/hosts/h1?action=cordon", json!({})).await;
    // Re-register with a new capacity and region.
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "h1", "url": "stub://h1", "region": "r2", "token": "new",
               "capacity": {"cpus": 8, "ram_mb": 8192, "storage_gb": 50, "vm_count": 5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["region"], "r2");
    assert_eq!(r.body["capacity"]["cpus"], 8);
    assert_eq!(r.body["allocated"]["vm_count"], 1, "allocated kept");
    assert_eq!(r.body["state"], "cordoned", "state kept");
    assert_eq!(r.body["created_at"], h["created_at"], "created_at kept");
    let list = f.get("/v1/hosts").await;
    assert_eq!(list.body["hosts"].as_array().unwrap().len(), 1);
    assert!(list.text.find("\"token\"").is_none());
    assert_eq!(f.get("/v1/hosts/h1").await.body["id"], "h1");
    assert_eq!(f.get("/v1/hosts/zz").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn registration_errors() {
    let f = start().await;
    for (body, needle) in [
        (json!({"url": "stub://a"}), "id is required"),
        (json!({"id": "a"}), "url is required"),
        (
            json!({"id": "a", "url": "ftp://x"}),
            "must start with http:// or https://",
        ),
        (json!({"id": "a/b", "url": "http://x"}), "host id must be"),
        (json!({"id": "default", "url": "http://x"}), "reserved"),
        (
            json!({"id": "a", "url": "http://x", "capacity": {"arch": "x86 64"}}),
            "capacity.arch must be an architecture name",
        ),
        (
            json!({"id": "a", "url": "http://x", "labels": {"bad key": "v"}}),
            "labels: key \"bad key\" must be",
        ),
        (
            json!({"id": "a", "url": "http://x", "capacity": {"gpus": 2}}),
            "GPU hosts are not supported yet",
        ),
        (
            json!({"id": "a", "url": "http://x", "capacity": {"cpus": "many"}}),
            "capacity.cpus: invalid type",
        ),
    ] {
        let r = f.post("/v1/hosts", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.message().contains(needle), "{body}: {}", r.message());
    }
}

#[tokio::test]
async fn a_silent_host_is_accepted_as_unreachable_and_not_scheduled() {
    let f = start().await;
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "dead", "url": "http://127.0.0.1:9", "token": "t",
               "capacity": {"cpus": 8, "ram_mb": 8192, "storage_gb": 50, "vm_count": 5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["state"], "unreachable");
    assert!(r.body["state_reason"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    assert!(r.body["last_seen"].is_null());
    let c = f.post("/v1/environments", json!({"task_id": "x"})).await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE, "{}", c.text);
    assert!(c.message().contains("not active"), "{}", c.message());
    // Uncordon cannot force it active.
    let u = f.post("/v1/hosts/dead?action=uncordon", json!({})).await;
    assert_eq!(u.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn cordon_uncordon_and_delete() {
    let f = start().await;
    f.stub_host("a", 8, 10).await;
    let r = f.post("/v1/hosts/a?action=cordon", json!({})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(f.get("/v1/hosts/a").await.body["state"], "cordoned");
    let c = f.post("/v1/environments", json!({"task_id": "x"})).await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        f.post("/v1/hosts/a?action=uncordon", json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(f.get("/v1/hosts/a").await.body["state"], "active");
    f.delete("/v1/environments/fuse-x").await;
    f.create_running("y").await;
    let d = f.delete("/v1/hosts/a").await;
    assert_eq!((d.status, d.code()), (StatusCode::CONFLICT, "conflict"));
    assert!(d.message().contains("live environment"));
    f.delete("/v1/environments/fuse-y").await;
    assert_eq!(f.delete("/v1/hosts/a").await.status, StatusCode::NO_CONTENT);
    assert_eq!(f.delete("/v1/hosts/a").await.status, StatusCode::NOT_FOUND);
    for bad in ["/v1/hosts/a?action=reboot", "/v1/hosts/a"] {
        assert_eq!(
            f.post(bad, json!({})).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        f.post("/v1/hosts/zz?action=cordon", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn spread_places_evenly_and_each_vm_uses_its_own_host() {
    let f = start().await;
    for h in ["a", "b", "c"] {
        f.stub_host(h, 16, 100).await;
    }
    for i in 0..9 {
        f.create_running(&format!("s{i}")).await;
    }
    for h in ["a", "b", "c"] {
        assert_eq!(f.stub(h).len(), 3, "host {h}");
        assert_eq!(
            f.get(&format!("/v1/hosts/{h}")).await.body["allocated"]["vm_count"],
            3
        );
    }
    assert!(
        f.default_stub().is_empty(),
        "the default provider is not used once hosts exist"
    );
    // Exec on a VM goes to the VM's own host.
    let env = f.get("/v1/environments/fuse-s4").await.body;
    let host = env["host_id"].as_str().unwrap().to_owned();
    f.post(
        "/v1/environments/fuse-s4?action=exec",
        json!({"cmd": ["true"]}),
    )
    .await;
    assert_eq!(
        f.stub(&host).vm("fuse-s4").unwrap().execs.last().unwrap(),
        &vec!["true".to_string()]
    );
    for other in ["a", "b", "c"].into_iter().filter(|h| *h != host) {
        assert!(f.stub(other).vm("fuse-s4").is_none());
    }
    // Region constraint.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "eu", "spec": {"region": "eu"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.message().contains("another region"), "{}", r.message());
}

#[tokio::test]
async fn binpack_fills_one_host_first() {
    let mut flags = crate::harness::test_flags();
    flags.scheduler_policy = "binpack".into();
    let f = crate::harness::start_with(flags).await;
    f.stub_host("a", 4, 100).await;
    f.stub_host("b", 4, 100).await;
    for i in 0..4 {
        f.create_running(&format!("b{i}")).await;
    }
    assert_eq!(
        f.stub("a").len(),
        4,
        "ties go to the smaller id, then the fuller host"
    );
    f.create_running("b4").await;
    assert_eq!(f.stub("b").len(), 1);
}

#[tokio::test]
async fn a_host_that_comes_back_becomes_active_with_its_own_capacity_and_a_cordon_survives_outages()
{
    use fuse_server::provider::{stub::StubProvider, stub_http};
    use std::sync::Arc;
    let f = start().await;
    // Learn a free port, register the host there while nothing listens.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "late", "url": format!("http://{addr}"), "token": "tk"}),
        )
        .await;
    assert_eq!(r.body["state"], "unreachable");
    assert_eq!(r.body["capacity"]["cpus"], 0);
    // It comes up: the monitor sees it, makes it active and takes its capacity.
    let (_, join) = stub_http::serve(addr, Arc::new(StubProvider::new()), "tk")
        .await
        .unwrap();
    f.running.tasks.activate("host_monitor");
    f.eventually("host active", || async {
        f.get("/v1/hosts/late").await.body["state"] == "active"
    })
    .await;
    let h = f.get("/v1/hosts/late").await.body;
    assert_eq!(h["capacity"]["cpus"], 4096);
    assert!(h["last_seen"].is_string());
    // Placement and the whole lifecycle over HTTP to the host.
    let env = f.create_running("over-http").await;
    assert_eq!(env["host_id"], "late");
    let ex = f
        .post(
            "/v1/environments/fuse-over-http?action=exec",
            json!({"shell": "echo via-http"}),
        )
        .await;
    assert_eq!(ex.body["stdout"], "via-http\n");
    assert_eq!(
        f.delete("/v1/environments/fuse-over-http").await.status,
        StatusCode::NO_CONTENT
    );
    // A cordoned host that goes silent stays cordoned when it returns.
    f.post("/v1/hosts/late?action=cordon", json!({})).await;
    join.abort();
    f.advance(std::time::Duration::from_secs(3600));
    f.run_task("host_monitor").await.unwrap();
    assert_eq!(f.get("/v1/hosts/late").await.body["state"], "cordoned");
}

#[tokio::test]
async fn link_local_host_urls_are_refused_unless_allowed() {
    let f = start().await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:8090",
        "http://[::ffff:169.254.169.254]:80",
    ] {
        let r = f
            .post("/v1/hosts", json!({"id": "meta", "url": url, "token": "t"}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {}", r.text);
        assert_eq!(r.code(), "invalid_argument");
        assert!(r.message().contains("link-local"), "{}", r.message());
        assert!(
            r.message().contains("FUSE_ALLOW_LINK_LOCAL_HOSTS"),
            "{}",
            r.message()
        );
    }
    assert_eq!(f.get("/v1/hosts/meta").await.status, StatusCode::NOT_FOUND);
    // With the flag the same registration is accepted (the address does not answer here,
    // so the host is stored unreachable; fe80:: without a zone fails at once, nothing is
    // sent anywhere).
    let mut flags = crate::harness::test_flags();
    flags.allow_link_local_hosts = "true".into();
    let f = crate::harness::start_with(flags).await;
    let r = f
        .post(
            "/v1/hosts",
            json!({"id": "ll", "url": "http://[fe80::1]:9", "token": "t",
                   "capacity": {"cpus": 1, "ram_mb": 1, "storage_gb": 1, "vm_count": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["state"], "unreachable", "{}", r.text);
}
