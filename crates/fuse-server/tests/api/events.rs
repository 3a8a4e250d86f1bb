//! SSE over a real HTTP stream: current state first, one event per change, keepalives,
//! and the end of the stream after `destroyed`.

use crate::harness::{start, start_with, test_flags};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// Reads SSE frames until the stream ends or `max` frames arrived; returns (comments, events).
async fn read_frames(
    resp: reqwest::Response,
    max: usize,
    limit: Duration,
) -> (Vec<String>, Vec<(String, Value)>) {
    let mut comments = Vec::new();
    let mut events = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + limit;
    while events.len() + comments.len() < max {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Err(_) => panic!("timed out; got {events:?} {comments:?}"),
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    comments.push(c.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                events.push((id, data));
            }
        }
    }
    (comments, events)
}

#[tokio::test]
async fn stream_shows_every_change_and_ends_after_destroyed() {
    let f = start().await;
    f.create_running("ev").await;
    let resp = f
        .http
        .get(format!("{}/v1/environments/fuse-ev/events", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream subscribed before it answered: every change from here on is in it.
    let reader = tokio::spawn(read_frames(resp, 100, Duration::from_secs(10)));
    f.post("/v1/environments/fuse-ev?action=drain", json!({}))
        .await;
    f.delete("/v1/environments/fuse-ev").await;
    let (_, events) = reader.await.unwrap();
    let states: Vec<&str> = events
        .iter()
        .map(|(_, d)| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["running", "draining", "destroying", "destroyed"],
        "{events:?}"
    );
    for (id, d) in &events {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&d["id"], id);
        assert_eq!(d["event"], "state");
        assert_eq!(d["vm_id"], "fuse-ev");
        assert!(d["updated_at"].is_string());
        assert!(d["url"].is_string());
    }
}

#[tokio::test]
async fn stream_of_a_provisioning_environment_reaches_running_and_terminal_streams_end_at_once() {
    let f = start().await;
    let r = f
        .post(
            "/v1/environments?wait=false",
            json!({"task_id": "late", "startup_script": "exit 1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let resp = f
        .http
        .get(format!("{}/v1/environments/fuse-late/events", f.base))
        .send()
        .await
        .unwrap();
    let (_, events) = read_frames(resp, 100, Duration::from_secs(10)).await;
    let last = events.last().unwrap();
    assert_eq!(last.1["state"], "failed", "{events:?}");
    assert!(last.1["error"].as_str().unwrap().contains("exited with 1"));
    // A stream opened on a terminal environment sends its state and ends.
    let resp = f
        .http
        .get(format!("{}/v1/environments/fuse-late/events", f.base))
        .send()
        .await
        .unwrap();
    let (_, events) = read_frames(resp, 100, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 1);
    let r = f.get("/v1/environments/fuse-nope/events").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keepalive_comments_flow_while_idle() {
    let mut flags = test_flags();
    flags.sse_keepalive_secs = "1".into();
    let f = start_with(flags).await;
    f.create_running("ka").await;
    let resp = f
        .http
        .get(format!("{}/v1/environments/fuse-ka/events", f.base))
        .send()
        .await
        .unwrap();
    let (comments, events) = read_frames(resp, 3, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(comments, ["keepalive", "keepalive"]);
}

#[tokio::test]
async fn a_silent_host_sends_lost_then_running_on_the_stream() {
    let mut flags = test_flags();
    flags.host_down_after_secs = "1".into();
    let f = start_with(flags).await;
    f.stub_host("h1", 8, 10).await;
    f.create_running("ev-lost").await;
    let resp = f
        .http
        .get(format!("{}/v1/environments/fuse-ev-lost/events", f.base))
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_frames(resp, 4, Duration::from_secs(10)));
    let stub = f.stub("h1");
    stub.set_faults(fuse_server::provider::stub::StubFaults {
        unreachable: true,
        ..Default::default()
    });
    // Silent past the limit, by the control plane's clock.
    f.advance(Duration::from_millis(1100));
    f.running.tasks.run_now("host_monitor").await.unwrap();
    stub.set_faults(Default::default());
    f.running.tasks.run_now("host_monitor").await.unwrap();
    f.delete("/v1/environments/fuse-ev-lost").await;
    let (_, events) = reader.await.unwrap();
    let states: Vec<&str> = events
        .iter()
        .map(|(_, d)| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states[..3], ["running", "lost", "running"], "{events:?}");
    assert!(
        events[1].1["error"]
            .as_str()
            .unwrap()
            .contains("stopped answering"),
        "{events:?}"
    );
}

/// Reads named and unnamed SSE frames until `done` says so: (event name, data) pairs.
async fn read_named(
    resp: reqwest::Response,
    limit: Duration,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&out) {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Err(_) => panic!("timed out; got {out:?}"),
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = "message".to_owned();
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                }
            }
            if let Some(data) = data {
                out.push((name, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_fleet_stream_carries_every_environment_and_leaves_out_pool_members() {
    let f = start().await;
    f.stub_host("h1", 16, 100).await;
    let resp = f
        .http
        .get(format!("{}/v1/events", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let only = f
        .http
        .get(format!("{}/v1/events?vm_id=fuse-fb", f.base))
        .send()
        .await
        .unwrap();
    let all = tokio::spawn(read_named(resp, Duration::from_secs(20), |ev| {
        ev.iter().filter(|(_, d)| d["state"] == "destroyed").count() == 2
    }));
    let one = tokio::spawn(read_named(only, Duration::from_secs(20), |ev| {
        ev.iter().any(|(_, d)| d["state"] == "destroyed")
    }));
    for id in ["fa", "fb"] {
        let c = f
            .post(
                "/v1/environments",
                json!({"task_id": id, "spec": {"cpus": 1}}),
            )
            .await;
        assert_eq!(c.body["state"], "running", "{}", c.text);
    }
    // A template with a warm pool: its members' changes are not the fleet's.
    let t = f
        .post(
            "/v1/templates",
            json!({"name": "tpl", "from_environment": "fuse-fa", "pool": {"per_host": 1}}),
        )
        .await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.text);
    f.run_task("pools").await.unwrap();
    assert_eq!(f.get("/v1/templates/tpl").await.body["pool"]["ready"], 1);
    for id in ["fuse-fa", "fuse-fb"] {
        f.delete(&format!("/v1/environments/{id}")).await;
    }
    let all = all.await.unwrap();
    assert_eq!(all[0], ("subscribed".to_owned(), json!({})), "{all:?}");
    let states = |ev: &[(String, Value)], vm: &str| -> Vec<String> {
        ev.iter()
            .filter(|(n, d)| n == "message" && d["vm_id"] == vm)
            .map(|(_, d)| d["state"].as_str().unwrap().to_owned())
            .collect()
    };
    for vm in ["fuse-fa", "fuse-fb"] {
        let s = states(&all, vm);
        assert_eq!(
            s.first().map(String::as_str),
            Some("provisioning"),
            "{vm}: {s:?}"
        );
        assert!(s.contains(&"running".to_owned()), "{vm}: {s:?}");
        assert_eq!(
            s.last().map(String::as_str),
            Some("destroyed"),
            "{vm}: {s:?}"
        );
    }
    assert!(
        all.iter()
            .skip(1)
            .all(|(_, d)| d["vm_id"] == "fuse-fa" || d["vm_id"] == "fuse-fb"),
        "pool members leaked into the fleet stream: {all:?}"
    );
    let one = one.await.unwrap();
    assert!(
        one.iter().skip(1).all(|(_, d)| d["vm_id"] == "fuse-fb")
            && states(&one, "fuse-fb").len() >= 3,
        "{one:?}"
    );
}
