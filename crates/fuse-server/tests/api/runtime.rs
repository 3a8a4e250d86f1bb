//! The runtime routes' contract on the stub host (both stores): files up, down, listed and
//! removed; every bad input answered with the envelope before a host is asked (relative
//! paths, `..`, bad modes, bad checksums, bad exec fields); checksums checked; the size
//! limit; a streamed exec as Server-Sent Events; attach without a WebSocket handshake, and
//! attach to a host that runs no guests; environments that are not running.

use crate::harness::{start, start_with, test_flags};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest as _;

#[tokio::test]
async fn files_round_trip_and_bad_input_is_refused() {
    let f = start().await;
    let env = f.create_running("files").await;
    let id = env["id"].as_str().unwrap();
    let url = |q: &str| format!("{}/v1/environments/{id}/files{q}", f.base);
    let put = |q: &str, body: &'static [u8]| f.http.put(url(q)).body(body).send();

    let r = put("?path=/etc/app.conf&mode=0600", b"k=v\n\xff")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let w: Value = r.json().await.unwrap();
    assert_eq!(w["size"], 5);
    let sum = hex::encode(sha2::Sha256::digest(b"k=v\n\xff"));
    assert_eq!(w["sha256"], sum.as_str());
    let r = f.http.get(url("?path=/etc/app.conf")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["x-fuse-sha256"], sum.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"k=v\n\xff");
    let l = f
        .get(&format!("/v1/environments/{id}/files?path=/etc&list=true"))
        .await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.text);
    assert_eq!(l.body["entries"][0]["name"], "app.conf");
    assert_eq!(l.body["entries"][0]["mode"], "0600");

    // A checksum that does not match writes nothing.
    let bad = format!("?path=/etc/app.conf&sha256={}", "a".repeat(64));
    let r = f.http.put(url(&bad)).body("other").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{body}"
    );
    let r = f.http.get(url("?path=/etc/app.conf")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"k=v\n\xff");

    // Bad input, each with its own message.
    for (q, want) in [
        ("?path=etc/x", "must be absolute"),
        ("?path=/a/../b", "must not contain '..'"),
        ("", "path is required"),
        ("?path=/x&mode=999", "octal"),
        ("?path=/x&sha256=abc", "64 hex digits"),
    ] {
        let r = put(q, b"x").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let body: Value = r.json().await.unwrap();
        let m = body["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{q}: {m}");
    }
    let r = f
        .get(&format!("/v1/environments/{id}/files?path=/nope"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = f
        .delete(&format!("/v1/environments/{id}/files?path=/"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = f
        .delete(&format!("/v1/environments/{id}/files?path=/etc"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "not empty: {}", r.text);
    let r = f
        .delete(&format!(
            "/v1/environments/{id}/files?path=/etc&recursive=true"
        ))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = f
        .get(&format!("/v1/environments/{id}/files?path=/etc/app.conf"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Unknown environment: 404.
    let r = f.get("/v1/environments/fuse-nope/files?path=/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_file_size_limit_is_413_and_writes_nothing() {
    let mut flags = test_flags();
    flags.max_file_bytes = "1000".into();
    let f = start_with(flags).await;
    let env = f.create_running("limit").await;
    let id = env["id"].as_str().unwrap();
    let r = f
        .http
        .put(format!("{}/v1/environments/{id}/files?path=/big", f.base))
        .body(vec![7u8; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("FUSE_MAX_FILE_BYTES"));
    let r = f
        .get(&format!("/v1/environments/{id}/files?path=/big"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Just at the limit is fine.
    let r = f
        .http
        .put(format!("{}/v1/environments/{id}/files?path=/big", f.base))
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn exec_fields_streaming_and_attach_contract() {
    let f = start().await;
    let env = f.create_running("exec").await;
    let id = env["id"].as_str().unwrap();
    let exec = format!("/v1/environments/{id}?action=exec");
    // Every bad field is named at once.
    let r = f
        .post(
            &exec,
            json!({"cmd": ["ls"], "env": {"A=B": "x"}, "cwd": "rel", "stdin": "%%", "output": "hex"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    for want in ["env name", "cwd", "stdin must be base64", "output"] {
        assert!(r.message().contains(want), "{want}: {}", r.message());
    }
    // stdin reaches the command; output=base64 is exact.
    let r = f
        .post(
            &exec,
            json!({"cmd": ["cat"], "stdin": "aGkK", "output": "base64"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["stdout"], "aGkK");
    assert!(r.body.get("truncated").is_none(), "{}", r.text);
    // Streamed: events, the exit last.
    let r = f
        .http
        .post(format!("{}{exec}&stream=true", f.base))
        .json(&json!({"cmd": ["echo", "hi"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    assert!(text.contains("event: stdout\ndata: aGkK\n"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("event: exit\ndata: {\"exit_code\":0}"),
        "{text}"
    );

    // Attach needs a WebSocket handshake; the stub host runs no guests (501, clearly).
    let attach = format!("/v1/environments/{id}/attach");
    let r = f.get(&attach).await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{}", r.text);
    let r = f
        .http
        .get(format!("{}{attach}", f.base))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("terminals"),
        "{body}"
    );

    // Not running yet: 409 for the runtime calls.
    let r = f
        .post(
            "/v1/environments?wait=false",
            json!({"task_id": "slow", "startup_script": "sleep 5"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let slow = r.body["id"].as_str().unwrap().to_owned();
    let r = f
        .get(&format!("/v1/environments/{slow}/files?path=/x"))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.message().contains("provisioning"), "{}", r.text);
    let r = f
        .post(
            &format!("/v1/environments/{slow}?action=exec"),
            json!({"cmd": ["true"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}
