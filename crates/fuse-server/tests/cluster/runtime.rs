//! The runtime surface through the whole chain — a `fuse` server, a real `fc-agent`
//! (`process` backend) in a namespace of its own, a real `fuse-guest`: a binary file up and
//! down through `fuse` with matching checksums, listings, removal, the size limit (413 and
//! nothing written); exec with environment, directory, standard input and exact output;
//! a streamed exec (Server-Sent Events) whose first event arrives while the command runs
//! and whose command dies with its client; a terminal over the attach WebSocket; and API
//! keys refused all of it.

use crate::harness::eventually;
use crate::hosts::{Host, AGENT_TOKEN};
use base64::Engine as _;
use fuse_server::config::Config;
use fuse_testkit::runtime::{noise, running, terminal};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const MASTER: &str = "runtime-master-token-0123456789abcdef";

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap()
}

/// Parses Server-Sent Events text into (event, data) pairs.
pub fn sse_events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut ev = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    ev = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.trim_start().to_owned());
                }
            }
            Some((ev?, data.join("\n")))
        })
        .collect()
}

#[tokio::test]
async fn files_exec_and_terminals_through_fuse() {
    let Some(mut host) = Host::create("rt") else {
        return;
    };
    host.start_agent();
    host.wait_up().await;
    let mut flags = fuse_testkit::server::test_flags();
    flags.auth_token = MASTER.into();
    flags.max_file_bytes = (16 << 20).to_string();
    let cfg = Config::from_flags(flags, |_| None).unwrap();
    let fuse = fuse_server::server::start(cfg).await.unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    let api = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{base}{path}")).bearer_auth(MASTER)
    };
    let r = api(reqwest::Method::POST, "/v1/hosts")
        .json(&json!({"id": "rt", "url": host.url(), "token": AGENT_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = api(reqwest::Method::POST, "/v1/environments")
        .json(&json!({"task_id": "rt", "agent": {"command": "exec sleep 600"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let env: Value = r.json().await.unwrap();
    let id = env["id"].as_str().unwrap().to_owned();
    let files = format!("/v1/environments/{id}/files");

    // 8 MiB of binary up through fuse, streamed, and back byte for byte.
    let data = noise(8 << 20);
    let sum = hex::encode(Sha256::digest(&data));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let r = api(
        reqwest::Method::PUT,
        &format!("{files}?path=/srv/blob&mode=0640&sha256={sum}"),
    )
    .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let w: Value = r.json().await.unwrap();
    assert_eq!(
        w,
        json!({"path": "/srv/blob", "size": data.len(), "sha256": sum})
    );
    let r = api(reqwest::Method::GET, &format!("{files}?path=/srv/blob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-fuse-sha256"], sum.as_str());
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let back = r.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&back)), sum);
    let r = api(
        reqwest::Method::GET,
        &format!("{files}?path=/srv&list=true"),
    )
    .send()
    .await
    .unwrap();
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["entries"][0]["name"], "blob", "{l}");
    assert_eq!(l["entries"][0]["mode"], "0640");
    assert_eq!(l["entries"][0]["size"], data.len());

    // Over FUSE_MAX_FILE_BYTES: 413 whether the length is declared or not; nothing written.
    let big = noise(17 << 20);
    let r = api(reqwest::Method::PUT, &format!("{files}?path=/srv/big"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let r = api(reqwest::Method::PUT, &format!("{files}?path=/srv/big"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The guest drops the abandoned temp file once the host hangs up (a moment later).
    let list_url = format!("{base}{files}?path=/srv&list=true");
    eventually("only blob is left", Duration::from_secs(5), || {
        let req = http.get(&list_url).bearer_auth(MASTER);
        async move {
            let l: Value = req.send().await.unwrap().json().await.unwrap();
            let names: Vec<&str> = l["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["name"].as_str())
                .collect();
            names == ["blob"]
        }
    })
    .await;

    // Removal, then 404.
    let r = api(reqwest::Method::DELETE, &format!("{files}?path=/srv/blob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = api(reqwest::Method::GET, &format!("{files}?path=/srv/blob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Exec: env, cwd, stdin, exact bytes with output=base64.
    let r = api(
        reqwest::Method::POST,
        &format!("/v1/environments/{id}?action=exec"),
    )
    .json(
        &json!({"shell": "printf '%s|' \"$WHO\"; cat; printf '\\377'",
                      "env": {"WHO": "me"}, "cwd": "/srv",
                      "stdin": base64::engine::general_purpose::STANDARD.encode("in"),
                      "output": "base64"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let x: Value = r.json().await.unwrap();
    assert_eq!(unb64(&x["stdout"]), b"me|in\xff", "{x}");

    // Streamed: SSE events as the guest produces them.
    let t0 = Instant::now();
    let mut r = api(
        reqwest::Method::POST,
        &format!("/v1/environments/{id}?action=exec&stream=true"),
    )
    .json(&json!({"shell": "echo one; sleep 2; echo two >&2; exit 7"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let at = t0.elapsed();
    assert!(at < Duration::from_millis(1500), "first event after {at:?}");
    let mut text = first;
    while let Some(c) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&c));
    }
    let evs = sse_events(&text);
    let dec = |d: &str| base64::engine::general_purpose::STANDARD.decode(d).unwrap();
    assert_eq!(evs[0].0, "stdout", "{text}");
    assert_eq!(dec(&evs[0].1), b"one\n");
    assert!(
        evs.iter().any(|(e, d)| e == "stderr" && dec(d) == b"two\n"),
        "{text}"
    );
    let last = evs.last().unwrap();
    assert_eq!(last.0, "exit");
    assert_eq!(
        serde_json::from_str::<Value>(&last.1).unwrap(),
        json!({"exit_code": 7})
    );

    // The client leaving kills the command.
    let mut r = api(
        reqwest::Method::POST,
        &format!("/v1/environments/{id}?action=exec&stream=true"),
    )
    .json(&json!({"shell": "echo up; exec sleep 27.1828"}))
    .send()
    .await
    .unwrap();
    r.chunk().await.unwrap().unwrap();
    assert!(running("sleep 27.1828"));
    drop(r);
    eventually(
        "the command dies with its client",
        Duration::from_secs(5),
        || std::future::ready(!running("sleep 27.1828")),
    )
    .await;

    // A terminal through fuse: resize, `stty size`, `tty`, the exit status.
    let ws = format!("ws://{}/v1/environments/{id}/attach", fuse.addr);
    let s = terminal(
        &ws,
        Some(MASTER),
        (132, 50),
        b"stty size; tty; exit 5\n",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(s.end["exit_code"], 5, "{}", s.screen);
    assert!(s.screen.contains("50 132"), "{}", s.screen);
    assert!(s.screen.contains("/dev/pts/"), "{}", s.screen);

    // Two terminals at once are two sessions.
    let open = || async {
        let mut req = format!("ws://{}/v1/environments/{id}/attach?cmd=cat", fuse.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {MASTER}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let (mut a, mut b) = (open().await, open().await);
    a.send(Message::Binary(b"from-a\n".to_vec().into()))
        .await
        .unwrap();
    b.send(Message::Binary(b"from-b\n".to_vec().into()))
        .await
        .unwrap();
    for (ws, want, other) in [(&mut a, "from-a", "from-b"), (&mut b, "from-b", "from-a")] {
        let mut seen = String::new();
        while !seen.contains(want) {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
                other => panic!("no echo of {want}: {other:?} after {seen:?}"),
            }
        }
        assert!(!seen.contains(other), "{seen}");
    }

    // An API key may do none of it.
    let r = api(reqwest::Method::POST, "/v1/api-keys")
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    let key: Value = r.json().await.unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    for (m, path) in [
        (reqwest::Method::GET, format!("{files}?path=/srv&list=true")),
        (reqwest::Method::PUT, format!("{files}?path=/x")),
        (reqwest::Method::DELETE, format!("{files}?path=/x")),
    ] {
        let r = http
            .request(m, format!("{base}{path}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let r = api(reqwest::Method::DELETE, &format!("/v1/environments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}
