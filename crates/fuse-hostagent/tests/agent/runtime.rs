//! The runtime routes on the real `fc-agent` (process backend, a real `fuse-guest`): files
//! up and down, streamed and checksummed (a binary file comes back byte for byte; a wrong
//! checksum writes nothing; a missing path is a 404), listings and removal; exec with its
//! environment, directory, standard input, binary output and the truncation flag; a
//! streamed exec whose first chunk arrives while the command still runs and whose command
//! dies when the client goes away; a terminal over the attach WebSocket.

use super::{spawn, tempdir, Agent, Ns, TOKEN};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap()
}

use fuse_testkit::runtime::{noise, running, terminal};

async fn vm(a: &Agent, name: &str) {
    let (s, v) = a
        .post(
            "/v1/vm",
            json!({"name": name, "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn url(a: &Agent, id: &str, rest: &str) -> String {
    format!("{}/v1/vm/{id}{rest}", a.base)
}

#[tokio::test]
async fn files_exec_and_attach() {
    let Some(ns) = Ns::new("runtime") else { return };
    let dir = tempdir("runtime");
    let a = spawn(&ns, &dir, &[]).await;
    vm(&a, "fuse-rt").await;
    let (s, h) = a.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h["features"]
            .as_array()
            .unwrap()
            .contains(&json!("runtime-io")),
        "{h}"
    );

    // A 3 MiB binary file up (streamed in pieces), with its mode; parents are created.
    let data = noise(3 << 20);
    let sum = hex::encode(Sha256::digest(&data));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let r = a
        .http
        .put(url(
            &a,
            "fuse-rt",
            "/files?path=/data/deep/blob.bin&mode=0600",
        ))
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let w: Value = r.json().await.unwrap();
    assert_eq!(w["size"], data.len());
    assert_eq!(w["sha256"], sum.as_str());

    // Down again, byte for byte, with the guest's checksum in a header.
    let r = a
        .http
        .get(url(&a, "fuse-rt", "/files?path=/data/deep/blob.bin"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-fuse-sha256"], sum.as_str());
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    // A wrong checksum writes nothing: the old content stays.
    let r = a
        .http
        .put(url(
            &a,
            "fuse-rt",
            &format!("/files?path=/data/deep/blob.bin&sha256={}", "0".repeat(64)),
        ))
        .bearer_auth(TOKEN)
        .body("other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("checksum mismatch"));

    // The listing: name, type, size, mode; no temp files left behind.
    let (s, l) = a
        .get("/v1/vm/fuse-rt/files?path=/data/deep&list=true")
        .await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let entries = l["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{l}");
    assert_eq!(entries[0]["name"], "blob.bin");
    assert_eq!(entries[0]["path"], "/data/deep/blob.bin");
    assert_eq!(entries[0]["type"], "file");
    assert_eq!(entries[0]["size"], data.len());
    assert_eq!(entries[0]["mode"], "0600");
    assert!(entries[0]["modified_at"].as_str().unwrap().ends_with('Z'));

    // Errors: missing file 404, a directory read 400, relative path 400, no path 400.
    for (path, want) in [
        ("/files?path=/nope", StatusCode::NOT_FOUND),
        ("/files?path=/data", StatusCode::BAD_REQUEST),
        ("/files?path=data/x", StatusCode::BAD_REQUEST),
        ("/files", StatusCode::BAD_REQUEST),
        ("/files?path=/nope&list=true", StatusCode::NOT_FOUND),
    ] {
        let (s, v) = a.get(&format!("/v1/vm/fuse-rt{path}")).await;
        assert_eq!(s, want, "{path}: {v}");
    }

    // Removal: a file, then a non-empty directory only recursively.
    let (s, _) = a
        .delete("/v1/vm/fuse-rt/files?path=/data/deep/blob.bin")
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = a.get("/v1/vm/fuse-rt/files?path=/data/deep/blob.bin").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = a
        .delete("/v1/vm/fuse-rt/files?path=/data/deep/blob.bin")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = a.delete("/v1/vm/fuse-rt/files?path=/data").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = a
        .delete("/v1/vm/fuse-rt/files?path=/data&recursive=true")
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Exec with environment, working directory and standard input; binary output intact.
    let (s, r) = a
        .post(
            "/v1/vm/fuse-rt/exec",
            json!({"cmd": ["sh", "-c", "echo \"$GREETING\"; pwd; cat; printf '\\000\\377'"],
                   "env": {"GREETING": "hello there"}, "cwd": "/",
                   "stdin": b64(b"from stdin\n")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let out = unb64(&r["stdout"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("hello there\n"), "{text}");
    assert!(text.contains("from stdin\n"), "{text}");
    assert!(out.ends_with(&[0, 0xff]), "{out:?}");
    assert!(r.get("truncated").is_none(), "{r}");

    // Buffered output is cut at 4 MiB per stream, and says so.
    let (s, r) = a
        .post(
            "/v1/vm/fuse-rt/exec",
            json!({"cmd": ["sh", "-c", "head -c 6000000 /dev/zero"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["truncated"], true, "exit {}", r["exit_code"]);
    assert_eq!(unb64(&r["stdout"]).len(), 4 << 20);

    // Streamed: the first chunk arrives while the command still runs.
    let t0 = Instant::now();
    let mut resp = a
        .http
        .post(url(&a, "fuse-rt", "/exec?stream=true"))
        .bearer_auth(TOKEN)
        .json(&json!({"cmd": ["sh", "-c", "echo first; sleep 2; echo second"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let first = resp.chunk().await.unwrap().unwrap();
    let at = t0.elapsed();
    assert!(at < Duration::from_millis(1500), "first chunk after {at:?}");
    let line: Value = serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(unb64(&line["stdout_b64"]), b"first\n");
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let last: Value = serde_json::from_str(rest.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 0, "{rest}");
    assert!(rest.contains(&b64(b"second\n")), "{rest}");

    // The client going away kills the command.
    let mut resp = a
        .http
        .post(url(&a, "fuse-rt", "/exec?stream=true"))
        .bearer_auth(TOKEN)
        .json(&json!({"cmd": ["sh", "-c", "echo up; exec sleep 31.4159"]}))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    assert!(running("sleep 31.4159"), "the command should be running");
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while running("sleep 31.4159") {
        assert!(Instant::now() < deadline, "the command outlived its client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A terminal: a real PTY, resized, with the exit status at the end.
    let ws = format!(
        "ws://{}/v1/vm/fuse-rt/attach?cols=80&rows=24",
        a.base.trim_start_matches("http://")
    );
    let s = terminal(
        &ws,
        Some(TOKEN),
        (100, 40),
        b"stty size; tty; exit 3\n",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        s.end,
        json!({"type": "exit", "exit_code": 3}),
        "{}",
        s.screen
    );
    assert!(s.screen.contains("40 100"), "{}", s.screen);
    assert!(s.screen.contains("/dev/pts/"), "{}", s.screen);

    // Unauthenticated attach is refused.
    let req = format!(
        "ws://{}/v1/vm/fuse-rt/attach",
        a.base.trim_start_matches("http://")
    )
    .into_client_request()
    .unwrap();
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}
