//! The agent for real and its logs on the real `fc-agent` (process backend): a create
//! whose agent does not come up fails at step `start_agent` with the guest's reason and
//! log; `GET /v1/vm/{id}/logs` serves the agent's, the startup script's and the console's
//! output by tail and follows new output; the VM list reports the supervisor's restarts;
//! consoles are truncated past their limit.

use super::{spawn, tempdir, Ns, TOKEN};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn an_agent_that_does_not_come_up_fails_the_create_with_the_reason() {
    let Some(ns) = Ns::new("agfail") else { return };
    let a = spawn(&ns, &tempdir("agfail"), &[]).await;
    let t = Instant::now();
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-loop", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"agent": {"command": "myagent.sh", "binary_path": "",
                                       "start_window_ms": 5000}}}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["details"]["reason"], "setup_failed", "{e}");
    assert_eq!(e["error"]["details"]["step"], "start_agent", "{e}");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("not found") && m.contains("myagent.sh"),
        "the reason and the agent's own words: {m}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A download that fails is the same step, with the downloader's reason.
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-dl", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"agent": {"command": "exec sleep 60", "binary_path": "/usr/local/bin/a",
                                       "download_url": "http://127.0.0.1:9/agent"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["details"]["step"], "start_agent", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fetching http://127.0.0.1:9/agent"),
        "{e}"
    );
}

/// Reads a streamed body until `done` says so or `limit` passes; returns what came and
/// when the first byte did.
async fn read_until(
    resp: reqwest::Response,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, Option<Duration>) {
    use futures_util::StreamExt as _;
    let t = Instant::now();
    let mut first = None;
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while t.elapsed() < limit && !done(&text) {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), body.next()).await {
            Ok(Some(Ok(b))) => {
                first.get_or_insert(t.elapsed());
                text.push_str(&String::from_utf8_lossy(&b));
            }
            _ => break,
        }
    }
    (text, first)
}

#[tokio::test]
async fn logs_by_source_tail_and_follow() {
    let Some(ns) = Ns::new("logs") else { return };
    let dir = tempdir("logs");
    let a = spawn(&ns, &dir, &[("FC_AGENT_CONSOLE_MAX_BYTES", "4096")]).await;
    let (s, vm) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-l", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {
                       "startup": {"script": "echo startup-out; echo startup-err >&2", "timeout_ms": 10000},
                       "agent": {"command": "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
                                 "binary_path": "", "start_window_ms": 300}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let get = |q: &str| {
        a.http
            .get(format!("{}/v1/vm/fuse-l/logs?{q}", a.base))
            .bearer_auth(TOKEN)
            .send()
    };
    let r = get("source=startup").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "startup-out\nstartup-err\n");
    // The agent's last two lines.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let text = get("source=agent&tail=2")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(lines.iter().all(|l| l.starts_with("tick-")), "{text:?}");
    // Following: new lines arrive as the agent writes them, and the stream stays open.
    let r = get("source=agent&tail=0&follow=true").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (text, first) = read_until(r, Duration::from_secs(10), |t| t.lines().count() >= 4).await;
    assert!(text.lines().count() >= 4, "followed: {text:?}");
    assert!(first.is_some());
    let n: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none lost: {n:?}"
    );
    assert!(
        n[0] > lines[1].trim_start_matches("tick-").parse::<u64>().unwrap(),
        "tail=0 starts at the end"
    );
    // The console (for the process backend: the helper's own output).
    let text = get("source=console").await.unwrap().text().await.unwrap();
    assert!(text.contains("fuse-guest"), "{text:?}");
    // Bad input is a clear 400; an unknown VM a 404.
    for q in [
        "source=kernel",
        "source=agent&tail=100001",
        "source=agent&follow=maybe",
    ] {
        let r = get(q).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_argument", "{q}: {e}");
    }
    let (s, _) = a.get("/v1/vm/fuse-none/logs?source=agent").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The VM reports its agent as the guest's supervisor sees it.
    let (_, v) = a.get("/v1/vm/fuse-l").await;
    assert_eq!(v["agent_running"], true, "{v}");
    assert_eq!(v["agent_restarts"], 0, "{v}");
    // A console that grows past its limit is truncated in place, its tail kept.
    let console = dir.join("vms/fuse-l/guest.log");
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .unwrap();
        for i in 0..200 {
            writeln!(f, "console line {i} {}", "x".repeat(40)).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(&console).unwrap().len() > 4096 {
        assert!(Instant::now() < deadline, "the console was not bounded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = std::fs::read_to_string(dir.join("vms/fuse-l/guest.log.1")).unwrap();
    assert!(kept.ends_with(&format!("console line 199 {}\n", "x".repeat(40))));
    assert!(kept.len() <= 2048, "{}", kept.len());
}

#[tokio::test]
async fn an_agent_that_crashes_after_its_start_is_counted() {
    let Some(ns) = Ns::new("crash") else { return };
    let a = spawn(&ns, &tempdir("crash"), &[]).await;
    let (s, vm) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-c", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "setup": {"agent": {"command": "sleep 0.6; exit 1", "binary_path": "",
                                       "start_window_ms": 300}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "up through its window: {vm}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, l) = a.get("/v1/vm?prefix=fuse-c").await;
        let r = l["vms"][0]["agent_restarts"].as_u64().unwrap_or(0);
        if r >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "restarts never rose: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
