//! The ports tunnel and the runtime `expose` on the real `fc-agent` (process backend, per-VM
//! networking): `GET /v1/vm/{id}/ports/{port}/tunnel` answers `101` and carries bytes both
//! ways to the guest's server; a port nothing listens on is a 502 that says so
//! (`guest_refused`); `POST /v1/vm/{id}/expose` adds a host-port forward (TCP and UDP) to
//! a running VM, once per port, that carries traffic, comes back when a restarted agent
//! adopts the VM, and goes with the VM.

use super::expose::{tcp_roundtrip, udp_roundtrip, SERVERS};
use super::{spawn, tempdir, Ns, TOKEN};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Opens the tunnel to `port` of `vm` by hand: the answer's head, and the stream after it.
async fn tunnel(
    agent: &str,
    vm: &str,
    port: u16,
    upgrade: bool,
) -> (String, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(agent).await.unwrap();
    let up = if upgrade {
        "Connection: Upgrade\r\nUpgrade: fuse-tunnel\r\n"
    } else {
        ""
    };
    let head = format!(
        "GET /v1/vm/{vm}/ports/{port}/tunnel HTTP/1.1\r\nHost: {agent}\r\n\
         Authorization: Bearer {TOKEN}\r\n{up}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte: nothing after the head may be read here.
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.push(b[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), s)
}

/// The JSON body after a head with `Content-Length`.
async fn body_after(head: &str, s: &mut tokio::net::TcpStream) -> serde_json::Value {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_tunnel_reaches_guest_ports_and_ports_are_published_at_runtime() {
    let Some(ns) = Ns::new("tunnel") else { return };
    let dir = tempdir("tunnel");
    let mut a = spawn(&ns, &dir, &[("FC_AGENT_FORWARD_PORTS", "22000-22010")]).await;
    let (_, h) = a.get("/healthz").await;
    assert!(
        h["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "tunnel"),
        "{h}"
    );
    let body = json!({
        "name": "fuse-t", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
        "setup": {
            "files": [{"path": "/servers.py", "content_b64":
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SERVERS),
                "mode": 0o644}],
            "agent": {"command": "exec python3 servers.py", "binary_path": ""},
        }
    });
    let (s, vm) = a.post("/v1/vm", body).await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let agent = format!("{}:8090", ns.ip);

    // Through the tunnel to the guest's TCP server (retried while it starts).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (head, mut stream) = loop {
        let (head, s) = tunnel(&agent, "fuse-t", 7000, true).await;
        if head.starts_with("HTTP/1.1 101") || std::time::Instant::now() > deadline {
            break (head, s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: fuse-tunnel"),
        "{head}"
    );
    let payload = format!("{}\n", "y".repeat(100_000));
    stream.write_all(payload.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the guest answers")
        .unwrap();
    assert_eq!(out, format!("tcp:{payload}").as_bytes());

    // Nothing on the port: a 502 naming the reason; bad requests are 4xx.
    let (head, mut s) = tunnel(&agent, "fuse-t", 7999, true).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let e = body_after(&head, &mut s).await;
    assert_eq!(e["error"]["details"]["reason"], "guest_refused", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("7999"),
        "{e}"
    );
    let (head, _) = tunnel(&agent, "fuse-t", 7000, false).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = tunnel(&agent, "fuse-nobody", 7000, true).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Runtime expose: a forward per port and protocol, once.
    let (s, tcp) = a
        .post(
            "/v1/vm/fuse-t/expose",
            json!({"port": 7000, "protocol": "tcp"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tcp}");
    assert_eq!(tcp["host_port"], 22000, "{tcp}");
    assert_eq!(tcp["address"], format!("{}:22000", ns.ip));
    let (s, again) = a
        .post(
            "/v1/vm/fuse-t/expose",
            json!({"port": 7000, "protocol": "tcp"}),
        )
        .await;
    assert_eq!((s, &again), (StatusCode::OK, &tcp));
    let (s, udp) = a
        .post(
            "/v1/vm/fuse-t/expose",
            json!({"port": 7001, "protocol": "udp"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{udp}");
    assert_eq!(udp["host_port"], 22001, "{udp}");
    let out = tcp_roundtrip(tcp["address"].as_str().unwrap(), b"late\n").await;
    assert_eq!(out, b"tcp:late\n");
    assert_eq!(
        udp_roundtrip(udp["address"].as_str().unwrap(), b"ping").await,
        b"udp:ping"
    );
    let (_, got) = a.get("/v1/vm/fuse-t").await;
    assert_eq!(got["endpoints"].as_array().map(Vec::len), Some(2), "{got}");
    let (s, e) = a
        .post(
            "/v1/vm/fuse-t/expose",
            json!({"port": 0, "protocol": "tcp"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, _) = a
        .post(
            "/v1/vm/fuse-nobody/expose",
            json!({"port": 80, "protocol": "tcp"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let table = ns.nft_table(&dir);
    assert!(
        table.contains("tcp dport 22000") && table.contains("udp dport 22001"),
        "{table}"
    );

    // An agent restart adopts the VM with the forwards published at runtime.
    // (The first agent's value lives on: dropping it would kill the VMs it started.)
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = spawn(&ns, &dir, &[("FC_AGENT_FORWARD_PORTS", "22000-22010")]).await;
    let (_, got) = b.get("/v1/vm/fuse-t").await;
    assert_eq!(got["endpoints"].as_array().map(Vec::len), Some(2), "{got}");
    let out = tcp_roundtrip(tcp["address"].as_str().unwrap(), b"adopted\n").await;
    assert_eq!(out, b"tcp:adopted\n");
    let (s, again) = b
        .post(
            "/v1/vm/fuse-t/expose",
            json!({"port": 7000, "protocol": "tcp"}),
        )
        .await;
    assert_eq!((s, &again), (StatusCode::OK, &tcp));

    // The forwards go with the VM.
    assert_eq!(b.delete("/v1/vm/fuse-t").await.0, StatusCode::NO_CONTENT);
    let table = ns.nft_table(&dir);
    assert!(
        !table.contains("22000") && !table.contains("22001"),
        "{table}"
    );
}
