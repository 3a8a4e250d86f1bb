//! Pause, resume, migration, templates and warm pools against stub hosts (each host a
//! `StubProvider` that keeps VMs as records and sends them to its peers); the background
//! passes are run directly, so every step is deterministic.

use crate::harness::{start, Fuse};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn env(f: &Fuse, id: &str) -> Value {
    f.get(&format!("/v1/environments/{id}")).await.body
}

async fn allocated(f: &Fuse, host: &str) -> Value {
    f.get(&format!("/v1/hosts/{host}")).await.body["allocated"].clone()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn metric(f: &Fuse, line_start: &str) -> f64 {
    f.app()
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn pause_gives_back_cpu_and_memory_refuses_guest_calls_and_resume_takes_them_again() {
    let f = start().await;
    f.stub_host("h1", 4, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "p", "spec": {"cpus": 2, "ram_mb": 1024, "storage_gb": 3},
                   "files": {"/data/keep": b64("kept")}}),
        )
        .await;
    assert_eq!(r.body["state"], "running", "{}", r.text);
    let a = allocated(&f, "h1").await;
    assert_eq!(
        (a["cpus"].as_u64(), a["storage_gb"].as_u64()),
        (Some(2), Some(3))
    );

    let mut events = f.events("fuse-p").await;
    let p = f
        .post("/v1/environments/fuse-p?action=pause", json!({}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.body["state"], "paused");
    let ev = events.next_matching(|e| e["state"] == "paused").await;
    assert_eq!(ev["vm_id"], "fuse-p");
    let a = allocated(&f, "h1").await;
    assert_eq!(
        (
            a["cpus"].as_u64(),
            a["ram_mb"].as_u64(),
            a["storage_gb"].as_u64(),
            a["vm_count"].as_u64()
        ),
        (Some(0), Some(0), Some(3), Some(0)),
        "paused: its disk alone is held"
    );
    // Pausing again answers the same.
    let again = f
        .post("/v1/environments/fuse-p?action=pause", json!({}))
        .await;
    assert_eq!(
        (again.status, again.body["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );

    // Guest calls are refused with what to do.
    let x = f
        .post(
            "/v1/environments/fuse-p?action=exec",
            json!({"cmd": ["true"]}),
        )
        .await;
    assert_eq!(x.status, StatusCode::CONFLICT, "{}", x.text);
    assert!(
        x.message().contains("paused") && x.message().contains("action=resume"),
        "{}",
        x.text
    );
    let g = f.get("/v1/environments/fuse-p/files?path=/data/keep").await;
    assert_eq!(g.status, StatusCode::CONFLICT, "{}", g.text);
    // Only a running environment pauses; only a paused one resumes.
    let d = f
        .post("/v1/environments/fuse-p?action=drain", json!({}))
        .await;
    assert_eq!(d.status, StatusCode::CONFLICT, "{}", d.text);

    let r = f
        .post("/v1/environments/fuse-p?action=resume", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "running");
    let a = allocated(&f, "h1").await;
    assert_eq!(
        (a["cpus"].as_u64(), a["vm_count"].as_u64()),
        (Some(2), Some(1))
    );
    let g = f.get("/v1/environments/fuse-p/files?path=/data/keep").await;
    assert_eq!((g.status, g.text.as_str()), (StatusCode::OK, "kept"));
    let again = f
        .post("/v1/environments/fuse-p?action=resume", json!({}))
        .await;
    assert_eq!(
        again.body["state"], "running",
        "resuming a running one is a no-op"
    );

    // Audit: both steps are in the environment's history.
    let audit = f.app().store.audit_list("fuse-p").await.unwrap();
    let kinds: Vec<String> = audit
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e.event_type,
                e.payload["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(kinds.contains(&"state:paused".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"state:running".to_owned()), "{kinds:?}");
    assert!(
        metric(
            &f,
            "orchestrator_pause_duration_seconds_count{op=\"pause\"}"
        ) >= 1.0
    );

    // Deleting a paused environment gives everything back.
    f.post("/v1/environments/fuse-p?action=pause", json!({}))
        .await;
    assert_eq!(
        f.delete("/v1/environments/fuse-p").await.status,
        StatusCode::NO_CONTENT
    );
    let a = allocated(&f, "h1").await;
    assert_eq!(
        (a["storage_gb"].as_u64(), a["cpus"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(f.stub("h1").vm("fuse-p").is_none());
}

#[tokio::test]
async fn auto_resume_and_on_idle_pause() {
    let f = start().await;
    f.stub_host("h1", 4, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "auto", "spec": {"auto_resume": true, "idle_timeout_seconds": 30, "on_idle": "pause"}}),
        )
        .await;
    assert_eq!(r.body["state"], "running", "{}", r.text);
    assert_eq!(r.body["spec"]["on_idle"], "pause");
    // Idle past its limit: paused, not destroyed.
    f.advance(std::time::Duration::from_secs(31));
    f.run_task("reconcile").await.unwrap();
    assert_eq!(env(&f, "fuse-auto").await["state"], "paused");
    // A command resumes it first.
    let x = f
        .post(
            "/v1/environments/fuse-auto?action=exec",
            json!({"cmd": ["echo", "hi"]}),
        )
        .await;
    assert_eq!(x.status, StatusCode::OK, "{}", x.text);
    assert_eq!(x.body["stdout"], "hi\n");
    assert_eq!(env(&f, "fuse-auto").await["state"], "running");
    // A bad on_idle is named.
    let bad = f
        .post(
            "/v1/environments",
            json!({"task_id": "bad", "spec": {"on_idle": "sleep"}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("spec.on_idle"), "{}", bad.text);
}

#[tokio::test]
async fn migrate_moves_the_vm_its_files_and_its_reservation_and_resume_moves_when_full() {
    let f = start().await;
    f.stub_host("h1", 2, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "m", "spec": {"cpus": 2, "host_id": "h1"}, "files": {"/data/f": b64("moved")}}),
        )
        .await;
    assert_eq!(r.body["host_id"], "h1", "{}", r.text);
    // No other host yet: nothing to migrate to, and nothing paused.
    let none = f
        .post("/v1/environments/fuse-m?action=migrate", json!({}))
        .await;
    assert_eq!(
        none.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        none.text
    );
    assert_eq!(env(&f, "fuse-m").await["state"], "running");
    f.stub_host("h2", 4, 10).await;
    let live = f
        .post(
            "/v1/environments/fuse-m?action=migrate",
            json!({"live": true}),
        )
        .await;
    assert_eq!(
        (live.status, live.code()),
        (StatusCode::NOT_IMPLEMENTED, "unimplemented")
    );
    let same = f
        .post(
            "/v1/environments/fuse-m?action=migrate",
            json!({"target_host_id": "h1"}),
        )
        .await;
    assert_eq!(same.status, StatusCode::BAD_REQUEST, "{}", same.text);

    let m = f
        .post(
            "/v1/environments/fuse-m?action=migrate",
            json!({"target_host_id": "h2"}),
        )
        .await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    assert_eq!(
        (m.body["state"].as_str(), m.body["host_id"].as_str()),
        (Some("running"), Some("h2"))
    );
    assert!(
        f.stub("h1").vm("fuse-m").is_none(),
        "the source copy is destroyed"
    );
    assert_eq!(
        f.stub("h2").vm("fuse-m").unwrap().files["/data/f"].0,
        b"moved"
    );
    assert_eq!(allocated(&f, "h1").await["cpus"], 0);
    assert_eq!(allocated(&f, "h2").await["cpus"], 2);
    let audit = f.app().store.audit_list("fuse-m").await.unwrap();
    assert!(
        audit.iter().any(|e| e.event_type == "migrate_started"),
        "{audit:?}"
    );

    // Paused on h2, then h2 fills up: the resume lands on h1, where there is room.
    f.post("/v1/environments/fuse-m?action=pause", json!({}))
        .await;
    for t in ["fill1", "fill2"] {
        let r = f
            .post(
                "/v1/environments",
                json!({"task_id": t, "spec": {"cpus": 2, "host_id": "h2"}}),
            )
            .await;
        assert_eq!(r.body["state"], "running", "{}", r.text);
    }
    let r = f
        .post("/v1/environments/fuse-m?action=resume", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["state"].as_str(), r.body["host_id"].as_str()),
        (Some("running"), Some("h1"))
    );
    assert_eq!(
        f.stub("h1").vm("fuse-m").unwrap().files["/data/f"].0,
        b"moved"
    );
    assert!(f.stub("h2").vm("fuse-m").is_none());
}

#[tokio::test]
async fn a_failed_migration_leaves_the_environment_running_at_its_source() {
    let f = start().await;
    f.stub_host("h1", 4, 10).await;
    f.stub_host("h2", 4, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "mf", "spec": {"host_id": "h1"}}),
        )
        .await;
    assert_eq!(r.body["state"], "running", "{}", r.text);
    // The target stops answering between its check and the transfer.
    f.stub("h2")
        .set_faults(fuse_server::provider::stub::StubFaults {
            unreachable: true,
            ..Default::default()
        });
    let m = f
        .post(
            "/v1/environments/fuse-mf?action=migrate",
            json!({"target_host_id": "h2"}),
        )
        .await;
    assert_eq!(m.status, StatusCode::SERVICE_UNAVAILABLE, "{}", m.text);
    let e = env(&f, "fuse-mf").await;
    assert_eq!(
        (e["state"].as_str(), e["host_id"].as_str()),
        (Some("running"), Some("h1")),
        "{e}"
    );
    assert_eq!(allocated(&f, "h1").await["cpus"], 1);
    assert_eq!(allocated(&f, "h2").await["cpus"], 0);
    let audit = f.app().store.audit_list("fuse-mf").await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event_type == "migrate_failed" || e.payload["to"] == "paused"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn an_interrupted_pause_or_resume_is_finished_by_the_reconciler() {
    let f = start().await;
    f.stub_host("h1", 4, 10).await;
    f.create_running("ip").await;
    // The host paused it, but the control plane never recorded it (it crashed in between).
    use fuse_server::provider::Provider;
    f.stub("h1").vm_pause("fuse-ip").await.unwrap();
    f.run_task("reconcile").await.unwrap();
    assert_eq!(env(&f, "fuse-ip").await["state"], "paused");
    assert_eq!(allocated(&f, "h1").await["cpus"], 0);
    // And the other way round.
    f.stub("h1").vm_resume("fuse-ip").await.unwrap();
    f.run_task("reconcile").await.unwrap();
    assert_eq!(env(&f, "fuse-ip").await["state"], "running");
    assert_eq!(allocated(&f, "h1").await["cpus"], 1);
}

#[tokio::test]
async fn snapshot_files_outlive_their_vm_and_missing_ones_are_found() {
    let f = start().await;
    f.stub_host("h1", 4, 10).await;
    f.create_running("art").await;
    let s = f
        .post("/v1/environments/fuse-art/snapshots", json!({"live": true}))
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{}", s.text);
    assert_eq!(s.body["kind"], "live");
    let sid = s.body["id"].as_str().unwrap().to_owned();
    let s2 = f
        .post("/v1/environments/fuse-art/snapshots", json!({}))
        .await;
    let sid2 = s2.body["id"].as_str().unwrap().to_owned();
    // The environment goes; its snapshots stay ready, their files kept by the host.
    assert_eq!(
        f.delete("/v1/environments/fuse-art").await.status,
        StatusCode::NO_CONTENT
    );
    f.run_task("reconcile").await.unwrap();
    assert_eq!(
        f.get(&format!("/v1/snapshots/{sid}")).await.body["state"],
        "ready"
    );
    // One's files are lost behind our back: the reconciler says so.
    let host_sid = f.get(&format!("/v1/snapshots/{sid2}")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    f.stub("h1").lose_snapshot("fuse-art", &host_sid);
    f.run_task("reconcile").await.unwrap();
    let lost = f.get(&format!("/v1/snapshots/{sid2}")).await;
    assert_eq!(lost.body["state"], "error", "{}", lost.text);
    assert!(
        lost.body["last_error"]
            .as_str()
            .unwrap()
            .contains("no longer on host h1"),
        "{}",
        lost.text
    );
    assert_eq!(
        f.get(&format!("/v1/snapshots/{sid}")).await.body["state"],
        "ready"
    );
    // Artifact bytes count on the host.
    let h = f.get("/v1/hosts/h1").await;
    assert!(h.body["artifact_bytes"].is_u64(), "{}", h.text);
}

#[tokio::test]
async fn templates_restore_into_new_environments_and_warm_pools_are_drawn_and_refilled() {
    let f = start().await;
    f.stub_host("h1", 16, 100).await;
    let src = f
        .post(
            "/v1/environments",
            json!({"task_id": "tsrc", "spec": {"cpus": 2, "ram_mb": 1024, "storage_gb": 2},
                   "files": {"/etc/base": b64("from the template")}}),
        )
        .await;
    assert_eq!(src.body["state"], "running", "{}", src.text);
    // Bad requests are named.
    let bad = f.post("/v1/templates", json!({"name": "Bad Name"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.message().contains("template name") && bad.message().contains("exactly one"),
        "{}",
        bad.text
    );
    let t = f
        .post(
            "/v1/templates",
            json!({"name": "base", "from_environment": "fuse-tsrc"}),
        )
        .await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.text);
    assert_eq!(
        (
            t.body["state"].as_str(),
            t.body["host_id"].as_str(),
            t.body["spec"]["cpus"].as_u64()
        ),
        (Some("ready"), Some("h1"), Some(2))
    );
    let dup = f
        .post(
            "/v1/templates",
            json!({"name": "base", "from_environment": "fuse-tsrc"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    // Its snapshot cannot be deleted while the template exists.
    let sid = t.body["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(
        f.delete(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::CONFLICT
    );

    // A create from it: the size is the template's, the memory restored.
    let wrong = f
        .post(
            "/v1/environments",
            json!({"task_id": "t1", "template": "base", "spec": {"cpus": 4}}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(
        wrong.message().contains("spec.cpus must be 2"),
        "{}",
        wrong.text
    );
    let c = f
        .post(
            "/v1/environments",
            json!({"task_id": "t1", "template": "base", "files": {"/etc/own": b64("mine")}}),
        )
        .await;
    assert_eq!(c.body["state"], "running", "{}", c.text);
    assert_eq!(
        (
            c.body["spec"]["cpus"].as_u64(),
            c.body["spec"]["ram_mb"].as_u64()
        ),
        (Some(2), Some(1024))
    );
    let vm = f.stub("h1").vm("fuse-t1").unwrap();
    assert!(
        vm.spec.from_snapshot.as_ref().is_some_and(|s| s.memory),
        "{:?}",
        vm.spec.from_snapshot
    );
    assert_eq!(vm.files["/etc/base"].0, b"from the template");
    assert_eq!(vm.files["/etc/own"].0, b"mine");
    // The original's name for it works too.
    let c2 = f
        .post(
            "/v1/environments",
            json!({"task_id": "t2", "seed_snapshot_id": "base"}),
        )
        .await;
    assert_eq!(c2.body["state"], "running", "{}", c2.text);
    let unknown = f
        .post(
            "/v1/environments",
            json!({"task_id": "t3", "template": "nope"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);

    // A warm pool: filled by the loop, hidden from the environment list, drawn by creates.
    let p = f
        .call(
            reqwest::Method::PATCH,
            "/v1/templates/base",
            Some(json!({"pool": {"per_host": 2}})),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    f.run_task("pools").await.unwrap();
    let t = f.get("/v1/templates/base").await;
    assert_eq!(
        t.body["pool"],
        json!({"per_host": 2, "ready": 2, "warming": 0}),
        "{}",
        t.text
    );
    assert!(
        metric(
            &f,
            "orchestrator_pool_members{state=\"ready\",template=\"base\"}"
        ) == 2.0
    );
    let listed = f.get("/v1/environments").await;
    let ids: Vec<&str> = listed.body["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(ids.iter().all(|i| !i.contains("pool")), "{ids:?}");
    let warm_before: Vec<String> = f
        .stub("h1")
        .ids()
        .into_iter()
        .filter(|i| i.contains("pool-base"))
        .collect();
    assert_eq!(warm_before.len(), 2, "{warm_before:?}");
    let d = f
        .post(
            "/v1/environments",
            json!({"task_id": "drawn", "template": "base", "files": {"/etc/own": b64("drawn")}}),
        )
        .await;
    assert_eq!(d.body["state"], "running", "{}", d.text);
    let vm = f.stub("h1").vm("fuse-drawn").unwrap();
    assert_eq!(
        vm.files["/etc/own"].0, b"drawn",
        "the claim ran the create's setup"
    );
    // The drawn warm VM became the environment (the loop, woken by the draw, may already
    // have restored its replacement).
    let warm_after: Vec<String> = f
        .stub("h1")
        .ids()
        .into_iter()
        .filter(|i| i.contains("pool-base"))
        .collect();
    let kept = warm_before
        .iter()
        .filter(|i| warm_after.contains(i))
        .count();
    assert_eq!(
        kept, 1,
        "one warm VM became the environment: {warm_before:?} → {warm_after:?}"
    );
    assert!(
        metric(
            &f,
            "orchestrator_pool_draws_total{result=\"hit\",template=\"base\"}"
        ) >= 1.0
    );
    f.run_task("pools").await.unwrap();
    assert_eq!(
        f.get("/v1/templates/base").await.body["pool"]["ready"],
        2,
        "refilled"
    );

    // Deleting: refused while the pool is asked for, and while environments use it.
    let del = f.delete("/v1/templates/base").await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.text);
    f.call(
        reqwest::Method::PATCH,
        "/v1/templates/base",
        Some(json!({"pool": {"per_host": 0}})),
    )
    .await;
    f.run_task("pools").await.unwrap();
    assert_eq!(f.get("/v1/templates/base").await.body["pool"]["ready"], 0);
    let del = f.delete("/v1/templates/base").await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.text);
    for id in ["fuse-t1", "fuse-t2", "fuse-drawn"] {
        f.delete(&format!("/v1/environments/{id}")).await;
    }
    assert_eq!(
        f.delete("/v1/templates/base").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(f.get("/v1/templates").await.body["templates"], json!([]));
    // The snapshot is its own again.
    assert_eq!(
        f.delete(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::NO_CONTENT
    );
}
