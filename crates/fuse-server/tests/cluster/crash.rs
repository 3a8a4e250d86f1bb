//! `kill -9` of `fuse` in the middle of provisioning and of destroying: after a restart,
//! every environment is consistent, nothing is leaked on the host or in capacity, running
//! environments are still managed (their credentials were persisted, encrypted), and every
//! step is in the audit log. Also: secret values never reach the logs.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn kill_during_provision_and_destroy_then_restart() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let (stub, addr, _host) = stub_host().await;
    let mut a = spawn_fuse(&db, &[]);
    a.ready().await;
    a.register("h", addr, 10).await;
    // One environment that is running before the crash.
    let (s, _) = a
        .post(
            "/v1/environments",
            json!({"task_id": "keep", "secrets": {"K": "v-keep-secret"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // One that is in the middle of provisioning (its startup script sleeps).
    let (s, _) = a
        .post(
            "/v1/environments?wait=false",
            json!({"task_id": "mid", "startup_script": "sleep 30"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // One in the middle of destroying (the host takes its time).
    let (s, _) = a.post("/v1/environments", json!({"task_id": "gone"})).await;
    assert_eq!(s, StatusCode::CREATED);
    eventually(
        "the provision reached its startup script",
        Duration::from_secs(10),
        || async { stub.vm("fuse-mid").is_some_and(|v| !v.execs.is_empty()) },
    )
    .await;
    stub.set_destroy_delay(Duration::from_secs(3));
    let http = a.http.clone();
    let url = format!("{}/v1/environments/fuse-gone", a.base);
    let pending = tokio::spawn(async move { http.delete(url).send().await });
    eventually("gone is destroying", Duration::from_secs(5), || async {
        a.get("/v1/environments/fuse-gone").await.1["state"] == "destroying"
    })
    .await;
    a.kill9();
    let _ = pending.await;
    stub.set_destroy_delay(Duration::ZERO);
    assert!(
        stub.vm("fuse-mid").is_some() && stub.vm("fuse-gone").is_some(),
        "the crash left both behind"
    );

    let b = spawn_fuse(&db, &[]);
    b.ready().await;
    eventually("recovery settles both", Duration::from_secs(20), || async {
        let mid = b.get("/v1/environments/fuse-mid").await.1;
        let gone = b.get("/v1/environments/fuse-gone").await.1;
        mid["state"] == "failed" && gone["state"] == "destroyed"
    })
    .await;
    let (_, mid) = b.get("/v1/environments/fuse-mid").await;
    assert!(
        mid["error"].as_str().unwrap().contains("interrupted"),
        "{mid}"
    );
    assert!(
        stub.vm("fuse-mid").is_none(),
        "abandoned provision removed from its host"
    );
    assert!(
        stub.vm("fuse-gone").is_none(),
        "interrupted destroy finished"
    );
    let (_, h) = b.get("/v1/hosts/h").await;
    assert_eq!(
        h["allocated"]["vm_count"], 1,
        "only 'keep' holds capacity: {h}"
    );
    // The running environment is re-attached: exec and rotate-token work after the restart.
    let (_, keep) = b.get("/v1/environments/fuse-keep").await;
    assert_eq!(keep["state"], "running");
    let (s, ex) = b
        .post(
            "/v1/environments/fuse-keep?action=exec",
            json!({"cmd": ["cat", "/fuse/secrets.json"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(ex["stdout"].as_str().unwrap().contains("v-keep-secret"));
    let before = stub.vm("fuse-keep").unwrap().files["/fuse/token"].0.clone();
    let (s, _) = b
        .post("/v1/environments/fuse-keep?action=rotate-token", json!({}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = stub.vm("fuse-keep").unwrap();
    assert_ne!(after.files["/fuse/token"].0, before);
    assert_eq!(
        after.agent.unwrap().auth_token.as_bytes(),
        after.files["/fuse/token"].0.as_slice()
    );
    // Every step of both is in the audit log.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let steps = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
                "SELECT event_type, payload FROM events WHERE entity_id = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.into_iter()
                .map(|(t, p)| match t.as_str() {
                    "state" => format!(
                        "{}->{}",
                        p["from"].as_str().unwrap(),
                        p["to"].as_str().unwrap()
                    ),
                    _ => t,
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        steps("fuse-mid").await,
        ["created", "placed", "provisioning->failed", "released"]
    );
    assert_eq!(
        steps("fuse-gone").await,
        [
            "created",
            "placed",
            "provisioning->running",
            "running->destroying",
            "destroying->destroyed",
            "released"
        ]
    );
    // No secret value in either process's log.
    for log in [a.log_text(), b.log_text()] {
        assert!(!log.is_empty());
        assert!(
            !log.contains("v-keep-secret"),
            "a secret value reached the log"
        );
        assert!(
            !log.contains("host-token"),
            "the host token reached the log"
        );
    }
}
