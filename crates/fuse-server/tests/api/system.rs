//! `/health`, `/ready`, `/metrics`, `/openapi.json`, request ids, fallbacks, and the
//! `fuse` binary's configuration errors and quick start.

use crate::harness::start;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn health_and_ready() {
    let f = start().await;
    let h = f.get("/health").await;
    assert_eq!(
        (h.status, h.body.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = f.get("/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    let kind = f.app().store.kind();
    assert_eq!(r.body["checks"]["store"], format!("ok ({kind})"));
    f.running.shutdown();
}

#[tokio::test]
async fn metrics_have_the_documented_names() {
    let f = start().await;
    f.create_running("m1").await;
    f.post(
        "/v1/environments",
        json!({"task_id": "m2", "startup_script": "exit 1"}),
    )
    .await;
    f.stub_host("hm", 8, 10).await;
    let m = f.get("/metrics").await.text;
    for name in [
        "orchestrator_http_requests_total{code=\"201\",method=\"POST\",route=\"/v1/environments\"}",
        "orchestrator_http_request_duration_seconds_bucket",
        "orchestrator_http_requests_in_flight",
        "orchestrator_fleet_tracked_vms 2",
        "orchestrator_fleet_provider_vms",
        "orchestrator_vms{state=\"running\"} 1",
        "orchestrator_vms{state=\"failed\"} 1",
        "orchestrator_provision_duration_seconds_count{outcome=\"running\"} 1",
        "orchestrator_provision_duration_seconds_count{outcome=\"failed\"} 1",
        "orchestrator_provision_failures_total{step=\"startup_script\"} 1",
        "orchestrator_hosts{state=\"active\"} 1",
        "orchestrator_host_capacity{host=\"hm\",resource=\"cpus\"} 8",
        "orchestrator_host_allocated{host=\"hm\",resource=\"vm_count\"} 0",
    ] {
        assert!(m.contains(name), "{name} missing from metrics:\n{m}");
    }
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let f = start().await;
    let r = f
        .http
        .get(format!("{}/v1/environments", f.base))
        .header("x-request-id", "client-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-abc_123");
    for bad in ["has space", "semi;colon", &"x".repeat(129)] {
        let r = f
            .http
            .get(format!("{}/nowhere", f.base))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.starts_with("req_") && id.len() == 36, "{id}");
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let none = f.get("/health").await;
    assert!(none.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let err = f.get("/v1/environments/fuse-x").await;
    assert!(
        err.headers.contains_key("x-request-id"),
        "errors carry it too"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let f = start().await;
    let r = f.get("/v2/things").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = f
        .call(Method::PUT, "/v1/environments", Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "invalid_argument");
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let f = start().await;
    let doc = f.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(
        doc.body["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (method, path, _) in fuse_server::http::routes() {
        let m = method.as_str().to_ascii_lowercase();
        if paths.get(path).and_then(|p| p.get(&m)).is_none() {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from api/openapi.yaml: {missing:?}"
    );
    // And the description names no route that does not exist.
    let routes: Vec<(String, String)> = fuse_server::http::routes()
        .into_iter()
        .map(|(m, p, _)| (m.as_str().to_ascii_lowercase(), p.to_owned()))
        .collect();
    for (path, ops) in paths {
        for m in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                assert!(
                    routes.contains(&(m.clone(), path.clone())),
                    "{m} {path} is described but not served"
                );
            }
        }
    }
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .env_clear()
        .env("ORCH_LISTEN", "nonsense")
        .env("TOKEN_ENCRYPTION_KEY", "abcd")
        .env("FUSE_AGENT_PROFILE", "nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["ORCH_LISTEN", "TOKEN_ENCRYPTION_KEY", "FUSE_AGENT_PROFILE"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[test]
fn quick_start_binary_serves_with_memory_store_and_stub() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .env_clear()
        .env("ORCH_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let mut found = false;
    for _ in 0..20 {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("fuse started") {
            found = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no startup line; last: {line}");
    assert!(line.contains("store=memory"), "{line}");
    assert!(
        line.contains("until one is registered, the in-memory stub"),
        "{line}"
    );
}

/// An answer that needs no body (here a 404 for an unknown environment) still reads the
/// body that arrives after the head, so the kept-alive connection serves the next request.
#[tokio::test]
async fn a_late_body_does_not_break_a_kept_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = start().await;
    let addr = f.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"action":"screenshot"}"#;
    let head = format!(
        "POST /v1/environments/fuse-nope/computer HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    c.write_all(body.as_bytes()).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(r#"{"status":"ok"}"#) {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.contains(r#"{"status":"ok"}"#),
        "the second request on the connection is answered: {text}"
    );
}
