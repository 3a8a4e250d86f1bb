//! Published guest ports on the real `fc-agent` (process backend): each `expose` entry is a
//! host port forwarded to the guest port (TCP and UDP), reported in `endpoints` on create,
//! GET and the list; a client outside the VM's namespace reaches a server in the guest
//! through it; the VM's link counts the bytes (`net_bytes`); the forwards come back with
//! the VM after an agent restart and go with it on destroy.

use super::{spawn, tempdir, Agent, Ns};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TCP server on 7000 that answers `tcp:<what it read>` and a UDP one on 7001 that
/// answers `udp:<datagram>`, both on every guest address.
pub(super) const SERVERS: &str = r#"
import socket, threading
def tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7000))
    s.listen()
    while True:
        c, _ = s.accept()
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        c.sendall(b"tcp:" + data)
        c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 7001))
while True:
    d, a = u.recvfrom(2048)
    u.sendto(b"udp:" + d, a)
"#;

/// One TCP exchange through `addr`, retried until the guest's server answers.
pub(super) async fn tcp_roundtrip(addr: &str, payload: &[u8]) -> Vec<u8> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut c = tokio::net::TcpStream::connect(addr).await?;
            c.write_all(payload).await?;
            let mut out = Vec::new();
            c.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(out)) if !out.is_empty() => return out,
            other => assert!(
                std::time::Instant::now() < deadline,
                "no TCP answer through {addr}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One UDP exchange through `addr`, retried until the guest's server answers.
pub(super) async fn udp_roundtrip(addr: &str, payload: &[u8]) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    sock.connect(addr).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        let _ = sock.send(payload).await;
        match tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return buf[..n].to_vec(),
            other => assert!(
                std::time::Instant::now() < deadline,
                "no UDP answer through {addr}: {other:?}"
            ),
        }
    }
}

fn endpoints(vm: &Value) -> Vec<(u64, String, u64, String)> {
    vm["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("endpoints in {vm}"))
        .iter()
        .map(|e| {
            (
                e["port"].as_u64().unwrap(),
                e["protocol"].as_str().unwrap().to_owned(),
                e["host_port"].as_u64().unwrap(),
                e["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn net_bytes(a: &Agent, id: &str) -> u64 {
    let (_, v) = a.get(&format!("/v1/vm/{id}")).await;
    v["net_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("net_bytes in {v}"))
}

#[tokio::test]
async fn exposed_ports_carry_tcp_and_udp_from_outside_and_survive_a_restart() {
    let Some(ns) = Ns::new("expose") else { return };
    let dir = tempdir("expose");
    let mut a = spawn(&ns, &dir, &[("FC_AGENT_FORWARD_PORTS", "21000-21010")]).await;
    let body = json!({
        "name": "fuse-x", "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8000,
        "expose": [{"port": 7000, "protocol": "tcp"}, {"port": 7001, "protocol": "udp"}],
        "setup": {
            "files": [{"path": "/servers.py", "content_b64":
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SERVERS),
                "mode": 0o644}],
            "agent": {"command": "exec python3 servers.py", "binary_path": ""},
        }
    });
    let (s, vm) = a.post("/v1/vm", body).await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    // The agent port took the first host port; each exposed port one more.
    assert_eq!(vm["url"], format!("http://{}:21000", ns.ip), "{vm}");
    let want = vec![
        (7000, "tcp".to_owned(), 21001, format!("{}:21001", ns.ip)),
        (7001, "udp".to_owned(), 21002, format!("{}:21002", ns.ip)),
    ];
    assert_eq!(endpoints(&vm), want, "{vm}");
    let (_, got) = a.get("/v1/vm/fuse-x").await;
    assert_eq!(endpoints(&got), want, "GET: {got}");
    let (_, list) = a.get("/v1/vm").await;
    assert_eq!(endpoints(&list["vms"][0]), want, "list: {list}");

    // From the test's namespace (outside the VM and the agent's namespace) to the host
    // port, through to the guest's servers; the link counts the bytes.
    let before = net_bytes(&a, "fuse-x").await;
    let payload = format!("{}\n", "x".repeat(20_000));
    let out = tcp_roundtrip(&want[0].3, payload.as_bytes()).await;
    assert_eq!(out, format!("tcp:{payload}").as_bytes());
    assert_eq!(udp_roundtrip(&want[1].3, b"ping").await, b"udp:ping");
    let after = net_bytes(&a, "fuse-x").await;
    assert!(
        after >= before + 2 * 20_000,
        "net_bytes grew with the traffic: {before} -> {after}"
    );
    let table = ns.nft_table(&dir);
    assert!(table.contains("udp dport 21002"), "{table}");
    assert!(table.contains("tcp dport 21001"), "{table}");
    assert!(table.contains("udp_forwards"), "{table}");

    // Another VM does not get the ports in use.
    let (s, y) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-y", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "expose": [{"port": 9000, "protocol": "tcp"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{y}");
    assert_eq!(endpoints(&y)[0].2, 21003, "{y}");

    // The agent restarts: the VM is adopted with its forwards, which still carry bytes.
    // (The first agent's value lives on: dropping it would kill the VMs it started.)
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = spawn(&ns, &dir, &[("FC_AGENT_FORWARD_PORTS", "21000-21010")]).await;
    let (_, got) = b.get("/v1/vm/fuse-x").await;
    assert_eq!(endpoints(&got), want, "after the restart: {got}");
    let out = tcp_roundtrip(&want[0].3, b"again\n").await;
    assert_eq!(out, b"tcp:again\n");
    assert_eq!(udp_roundtrip(&want[1].3, b"pong").await, b"udp:pong");

    // Destroy removes its forwards.
    assert_eq!(b.delete("/v1/vm/fuse-x").await.0, StatusCode::NO_CONTENT);
    let table = ns.nft_table(&dir);
    assert!(
        !table.contains("21001") && !table.contains("21002") && !table.contains("fuse-x"),
        "{table}"
    );
    assert_eq!(b.delete("/v1/vm/fuse-y").await.0, StatusCode::NO_CONTENT);
}

/// Without networking a host cannot publish ports: it says so, and does not advertise it.
#[tokio::test]
async fn expose_without_networking_is_refused() {
    let Some(ns) = Ns::new("noexpose") else {
        return;
    };
    let dir = tempdir("noexpose");
    let a = spawn(&ns, &dir, &[("FC_AGENT_NETWORK", "off")]).await;
    let (_, h) = a.get("/healthz").await;
    assert!(
        !h["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "expose"),
        "{h}"
    );
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-n", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "expose": [{"port": 80, "protocol": "tcp"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("networking"),
        "{e}"
    );
    // And a VM without a link has no byte count.
    let (s, v) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-n", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v.get("net_bytes").is_none(), "{v}");
    assert!(v.get("endpoints").is_none(), "{v}");
    assert_eq!(a.delete("/v1/vm/fuse-n").await.0, StatusCode::NO_CONTENT);
}
