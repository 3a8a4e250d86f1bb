//! Two `fuse` replicas on one database: capacity is never over-committed, events reach an
//! SSE client on the other replica, and leadership moves when the leader dies.

use crate::harness::*;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn two_replicas_never_overcommit_one_host() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let a = spawn_fuse(&db, &[]);
    let b = spawn_fuse(&db, &[]);
    a.ready().await;
    b.ready().await;
    let (stub, addr, _host) = stub_host().await;
    const N: usize = 6;
    a.register("only", addr, N as u32).await;
    let mut tasks = Vec::new();
    for i in 0..4 * N {
        let (http, base) = if i % 2 == 0 {
            (a.http.clone(), a.base.clone())
        } else {
            (b.http.clone(), b.base.clone())
        };
        tasks.push(tokio::spawn(async move {
            http.post(format!("{base}/v1/environments"))
                .json(&json!({"task_id": format!("r{i}")}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => full += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, full), (N, 3 * N));
    let (_, h) = b.get("/v1/hosts/only").await;
    assert_eq!(h["allocated"]["vm_count"], N as u64);
    assert_eq!(stub.len(), N, "exactly N VMs on the host");
    // Destroy them all, half through each replica.
    let (_, list) = a.get("/v1/environments?state=running&limit=200").await;
    let ids: Vec<String> = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), N);
    for (i, id) in ids.iter().enumerate() {
        let r = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            r.delete(&format!("/v1/environments/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
    let (_, h) = a.get("/v1/hosts/only").await;
    assert_eq!(
        ["cpus", "ram_mb", "storage_gb", "vm_count"].map(|k| h["allocated"][k].clone()),
        [json!(0), json!(0), json!(0), json!(0)]
    );
    assert!(stub.is_empty());
}

#[tokio::test]
async fn events_from_one_replica_reach_sse_on_the_other() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let a = spawn_fuse(&db, &[]);
    let b = spawn_fuse(&db, &[]);
    a.ready().await;
    b.ready().await;
    let (_stub, addr, _host) = stub_host().await;
    a.register("h", addr, 10).await;
    let (s, _) = a.post("/v1/environments", json!({"task_id": "x"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let resp = b
        .http
        .get(format!("{}/v1/environments/fuse-x/events", b.base))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let reader = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    text.push_str(std::str::from_utf8(&chunk).unwrap());
                    if text.contains("\"state\":\"destroyed\"") {
                        break;
                    }
                }
                other => {
                    text.push_str(&format!("\n[stream ended: {other:?}]"));
                    break;
                }
            }
        }
        text
    });
    // The stream on b subscribed before it answered: every change from here on is in it.
    a.post("/v1/environments/fuse-x?action=drain", json!({}))
        .await;
    a.delete("/v1/environments/fuse-x").await;
    let text = reader.await.unwrap();
    let states: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .map(|v| match v["state"].as_str().unwrap() {
            "running" => "running",
            "draining" => "draining",
            "destroying" => "destroying",
            "destroyed" => "destroyed",
            _ => "other",
        })
        .collect();
    assert_eq!(
        states,
        ["running", "draining", "destroying", "destroyed"],
        "{text}"
    );
}

/// An API key made on one replica works on the other, and its revoke is refused by both
/// from the next request on (every request looks the key up in the shared store).
#[tokio::test]
async fn an_api_key_is_revoked_at_once_on_every_replica() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    const MASTER: &str = "replica-master-token-0123456789";
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let a = spawn_fuse(&db, &[("ORCH_AUTH_TOKEN", MASTER)]);
    let b = spawn_fuse(&db, &[("ORCH_AUTH_TOKEN", MASTER)]);
    a.ready().await;
    b.ready().await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/v1/api-keys", a.base))
        .bearer_auth(MASTER)
        .json(&json!({"label": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let status = |base: String, token: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/v1/environments"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(b.base.clone(), key.clone()).await, StatusCode::OK);
    assert_eq!(status(a.base.clone(), key.clone()).await, StatusCode::OK);
    let r = http
        .delete(format!("{}/v1/api-keys/{id}", a.base))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status(b.base.clone(), key.clone()).await,
        StatusCode::UNAUTHORIZED,
        "the other replica refuses it on the very next request"
    );
    assert_eq!(status(a.base.clone(), key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(b.base.clone(), MASTER.into()).await, StatusCode::OK);
}
