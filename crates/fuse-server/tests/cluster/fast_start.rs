//! Pause, resume and cold migration through a real `fuse` and two real `fc-agent` processes
//! (the `process` backend, each agent in its own namespace, routed to each other): the
//! whole path of issue 13 on the backend without memory (a pause keeps the disk, a resume
//! boots the guest helper again and starts the agent again). The memory-keeping backends
//! are exercised with a real guest in `real_guests.rs`.

use crate::faults::{hosts, register, FAST};
use crate::harness::spawn_fuse;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn pause_resume_and_migrate_between_two_agents() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let Some(hs) = hosts(&["h1", "h2"]).await else {
        return;
    };
    hs[0].route_to(&hs[1]);
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let f = spawn_fuse(&db, FAST);
    f.ready().await;
    register(&f, &hs).await;
    let (s, b) = f
        .post(
            "/v1/environments",
            json!({"task_id": "mv", "spec": {"host_id": "h1", "storage_gb": 2}}),
        )
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::CREATED, Some("running")),
        "{b}"
    );
    let exec = |cmd: &'static str| {
        let f = &f;
        async move {
            let (s, r) = f
                .post(
                    "/v1/environments/fuse-mv?action=exec",
                    json!({"shell": cmd}),
                )
                .await;
            (s, r)
        }
    };
    let (s, r) = exec("echo before-pause > note").await;
    assert_eq!(
        (s, r["exit_code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{r}"
    );

    // Pause: the host lists it paused, holding its disk alone.
    let (s, p) = f
        .post("/v1/environments/fuse-mv?action=pause", json!({}))
        .await;
    assert_eq!(
        (s, p["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{p}"
    );
    assert!(hs[0]
        .vm_states()
        .await
        .contains(&("fuse-mv".into(), "paused".into())));
    let (_, h) = f.get("/v1/hosts/h1").await;
    assert_eq!(
        (
            h["allocated"]["cpus"].as_u64(),
            h["allocated"]["storage_gb"].as_u64()
        ),
        (Some(0), Some(2)),
        "{h}"
    );
    let (s, r) = exec("true").await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    // A live snapshot needs memory, which this backend does not keep; so does a template.
    let (s, r) = f
        .post("/v1/environments/fuse-mv?action=resume", json!({}))
        .await;
    assert_eq!(
        (s, r["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{r}"
    );
    let (s, r) = exec("cat note").await;
    assert_eq!(
        (s, r["stdout"].as_str()),
        (StatusCode::OK, Some("before-pause\n")),
        "{r}"
    );
    let (s, r) = f
        .post("/v1/environments/fuse-mv/snapshots", json!({"live": true}))
        .await;
    assert_eq!(
        (s.as_u16(), r["error"]["code"].as_str()),
        (501, Some("unimplemented")),
        "{r}"
    );
    let (s, r) = f
        .post(
            "/v1/templates",
            json!({"name": "t", "from_environment": "fuse-mv"}),
        )
        .await;
    assert_eq!(s.as_u16(), 501, "{r}");

    // Migrate to h2: same id, its file there, nothing left on h1.
    let (s, m) = f
        .post(
            "/v1/environments/fuse-mv?action=migrate",
            json!({"target_host_id": "h2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["state"].as_str(), m["host_id"].as_str()),
        (Some("running"), Some("h2"))
    );
    let (s, r) = exec("cat note").await;
    assert_eq!(
        (s, r["stdout"].as_str()),
        (StatusCode::OK, Some("before-pause\n")),
        "{r}"
    );
    assert!(
        hs[0].vm_states().await.is_empty(),
        "the source copy is gone"
    );
    assert!(hs[1]
        .vm_states()
        .await
        .contains(&("fuse-mv".into(), "running".into())));
    let (_, h1) = f.get("/v1/hosts/h1").await;
    let (_, h2) = f.get("/v1/hosts/h2").await;
    assert_eq!(h1["allocated"]["storage_gb"], 0, "{h1}");
    assert_eq!(h2["allocated"]["cpus"], 1, "{h2}");
    crate::check::settled(&f, &[&hs[0], &hs[1]], &db, crate::faults::HEAL).await;
    let (s, _) = f.delete("/v1/environments/fuse-mv").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    crate::check::settled(&f, &[&hs[0], &hs[1]], &db, crate::faults::HEAL).await;
}
