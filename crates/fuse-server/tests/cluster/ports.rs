//! The ports proxy end to end: `fuse` with a real `fc-agent` (the `process` backend, in a
//! network namespace made by this test), an HTTP server and a WebSocket echo server
//! started in the environment (Python's standard library), reached through the proxy's
//! URLs: path, query, headers and a streamed body both ways, a private port with and
//! without tokens, a WebSocket published at runtime (`?action=expose`) and public, a port
//! nothing listens on (502), and the endpoints gone with the environment (404). Needs
//! root (network namespaces); skipped with a printed reason otherwise.

use crate::harness::eventually;
use crate::hosts::{Host, AGENT_TOKEN};
use base64::Engine as _;
use fuse_server::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MASTER: &str = "ports-master-token-0123456789";

/// In the guest: an HTTP server on 8080 that answers JSON with what it got (method, path,
/// headers, the body's size and SHA-256), and a WebSocket echo server on 8081 (text and
/// binary frames come back as they were sent; a close is answered with a close).
pub const GUEST_SERVERS: &str = r#"
import base64, hashlib, http.server, json, socketserver, struct, threading

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        h, left = hashlib.sha256(), n
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()},
                           "len": n, "sha256": h.hexdigest()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", "guest")
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = answer
    def log_message(self, *a):
        pass

class WS(socketserver.StreamRequestHandler):
    def handle(self):
        key = None
        while True:
            line = self.rfile.readline().decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            if k.lower() == "sec-websocket-key":
                key = v.strip()
        acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + "\r\n\r\n").encode())
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if n < 126:
                out = bytes([0x80 | op, n])
            elif n < 65536:
                out = bytes([0x80 | op, 126]) + struct.pack(">H", n)
            else:
                out = bytes([0x80 | op, 127]) + struct.pack(">Q", n)
            self.wfile.write(out + data)
            self.wfile.flush()
            if op == 8:
                return

class TS(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

threading.Thread(target=TS(("0.0.0.0", 8081), WS).serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// One WebSocket conversation through the proxy at `addr` (`host:port`) on `path`: the
/// upgrade (its head and `Sec-WebSocket-Accept`), a text and a binary frame echoed back,
/// and a close. `extra` are more request headers (`Name: value\r\n` each).
pub async fn websocket_echo(addr: &str, host: &str, path: &str, extra: &str) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("the upgrade's answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.push(b[0]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    // RFC 6455's own example key and its answer.
    assert!(
        text.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    for (opcode, payload) in [
        (0x1u8, b"hello through the proxy".to_vec()),
        (0x2, (0..70_000u32).map(|i| (i % 256) as u8).collect()),
    ] {
        s.write_all(&frame(opcode, &payload)).await.unwrap();
        let (op, back) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
            .await
            .expect("the echo in time");
        assert_eq!((op, back.len()), (opcode, payload.len()));
        assert_eq!(back, payload);
    }
    s.write_all(&frame(0x8, &[0x03, 0xe8])).await.unwrap();
    let (op, _) = read_frame(&mut s).await;
    assert_eq!(op, 0x8, "close answered with close");
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One unmasked server frame: its opcode and payload.
async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    let n = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; n];
    s.read_exact(&mut p).await.unwrap();
    (h[0] & 0x0f, p)
}

#[tokio::test]
async fn http_and_websocket_servers_in_an_environment_through_the_proxy() {
    let Some(mut host) = Host::create("ports") else {
        return;
    };
    host.start_agent();
    host.wait_up().await;
    let mut flags = fuse_testkit::server::test_flags();
    flags.auth_token = MASTER.into();
    flags.max_body_bytes = "1048576".into();
    let cfg = Config::from_flags(flags, |_| None).unwrap();
    let fuse = fuse_server::server::start(cfg).await.unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/hosts"))
        .bearer_auth(MASTER)
        .json(&json!({"id": "p0", "url": host.url(), "token": AGENT_TOKEN, "region": "lab"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let srv = base64::engine::general_purpose::STANDARD.encode(GUEST_SERVERS);
    let r = http
        .post(format!("{base}/v1/environments"))
        .bearer_auth(MASTER)
        .json(&json!({
            "task_id": "web",
            "files": {"/srv.py": srv},
            "agent": {"command": "exec python3 srv.py"},
            "expose": [{"port": 8080, "as": "http"}],
            "healthcheck": {"http": {"port": 8080, "path": "/"}},
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let env: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{env}\n{}", host.log_text());
    let ep = &env["endpoints"][0];
    assert_eq!(ep["url"], "/v1/environments/fuse-web/ports/8080/", "{env}");
    let traffic = env["traffic_token"].as_str().unwrap().to_owned();
    let url = format!("{base}/v1/environments/fuse-web/ports/8080");

    // Private: nothing gets a 401; the master token, and the traffic token, get through.
    let r = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{url}/some/path?q=1&fuse=2"))
        .bearer_auth(MASTER)
        .header("x-trace", "t1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-served-by"], "guest");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/some/path?q=1&fuse=2", "{seen}");
    let h = &seen["headers"];
    assert_eq!(h["x-trace"], "t1");
    assert!(h.get("authorization").is_none(), "{seen}");
    assert_eq!(
        h["x-forwarded-prefix"],
        "/v1/environments/fuse-web/ports/8080"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // A body four times the API's limit goes up whole; a traffic token opens the port.
    let big: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i.wrapping_mul(31) % 253) as u8)
        .collect();
    let r = http
        .put(format!("{url}/upload"))
        .header("x-fuse-traffic-token", &traffic)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["len"], big.len(), "{seen}");
    assert_eq!(seen["sha256"], hex::encode(Sha256::digest(&big)));
    assert!(
        seen["headers"].get("x-fuse-traffic-token").is_none(),
        "{seen}"
    );

    // The WebSocket server, published at runtime and public: no token needed.
    let r = http
        .post(format!("{base}/v1/environments/fuse-web?action=expose"))
        .bearer_auth(MASTER)
        .json(&json!({"port": 8081, "as": "ws", "public": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let env: Value = r.json().await.unwrap();
    let ws = env["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["port"] == 8081)
        .unwrap_or_else(|| panic!("{env}"))
        .clone();
    assert_eq!(ws["public"], true);
    let forward = ws["forward_url"].as_str().unwrap().to_owned();
    assert!(forward.starts_with("tcp://"), "{ws}");
    let addr = fuse.addr.to_string();
    websocket_echo(
        &addr,
        &addr,
        "/v1/environments/fuse-web/ports/8081/chat",
        "",
    )
    .await;
    // Raw TCP keeps its forward on the host: the WebSocket server answers there too (at
    // the host's address: these agents name 127.0.0.1, their default, in forwards).
    let host_port = forward.rsplit(':').next().unwrap();
    let agent_ip = host.addr().split(':').next().unwrap().to_owned();
    let fwd = format!("{agent_ip}:{host_port}");
    eventually("the forward to answer", Duration::from_secs(10), || {
        let fwd = fwd.clone();
        async move { tokio::net::TcpStream::connect(&fwd).await.is_ok() }
    })
    .await;
    websocket_echo(&fwd, &fwd, "/", "").await;

    // A published port nothing listens on: 502 from the guest's refusal.
    let r = http
        .post(format!("{base}/v1/environments/fuse-web?action=expose"))
        .bearer_auth(MASTER)
        .json(&json!({"port": 8099}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{base}/v1/environments/fuse-web/ports/8099/"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["reason"], "guest_refused", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("8099"),
        "{e}"
    );

    // Gone with the environment.
    let r = http
        .delete(format!("{base}/v1/environments/fuse-web"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(format!("{url}/"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    fuse.shutdown();
}
