//! Egress rules on the real `fc-agent` (process backend), against a "world": a namespace
//! linked to the agent's, with a TCP server on each of several addresses (one of them
//! 169.254.169.254, as a cloud's metadata service) and a DNS server serving several names,
//! both made by this test. From inside a guest: allowlist by name, wildcard and CIDR, deny
//! precedence (a name and a CIDR), the resolver refusing what the rules refuse whatever
//! server the guest asks, a live update, rules kept across an agent restart, the default
//! isolation (the host's own services, the metadata address, another guest), and nothing
//! left in the egress table after destroy.

use super::{spawn, tempdir, Agent, Ns};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// Runs `f` on a thread inside network namespace `ns` (`/run/netns/<ns>`): the sockets it
/// makes stay in that namespace wherever they are used from.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The world: a namespace linked to the agent's namespace by a veth pair on a /24 (the
/// agent's side `.1`), with addresses `.2`-`.7`, `.53` (DNS) and 169.254.169.254.
struct World {
    name: String,
    veth: String,
    net: String,
}

impl World {
    fn addr(&self, last: u8) -> String {
        format!("{}{last}", self.net)
    }

    fn new(host: &Ns) -> World {
        let n = std::process::id() % 100_000;
        let w = World {
            name: format!("faw-{n}"),
            veth: format!("faw{n}"),
            net: format!("10.253.{}.", 10 + n % 200),
        };
        let peer = format!("{}p", w.veth);
        ip(&["netns", "add", &w.name]);
        ip(&[
            "link", "add", &w.veth, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &w.veth, "netns", &host.name]);
        ip(&["link", "set", &peer, "netns", &w.name]);
        ip(&[
            "-n",
            &host.name,
            "addr",
            "add",
            &format!("{}1/24", w.net),
            "dev",
            &w.veth,
        ]);
        ip(&["-n", &host.name, "link", "set", &w.veth, "up"]);
        for last in [2, 3, 4, 5, 6, 7, 53] {
            ip(&[
                "-n",
                &w.name,
                "addr",
                "add",
                &format!("{}{last}/24", w.net),
                "dev",
                &peer,
            ]);
        }
        ip(&[
            "-n",
            &w.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            &peer,
        ]);
        ip(&["-n", &w.name, "link", "set", &peer, "up"]);
        ip(&["-n", &w.name, "link", "set", "lo", "up"]);
        // The host reaches the metadata address through the world, as a cloud host would.
        ip(&[
            "-n",
            &host.name,
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            &w.addr(2),
        ]);
        w
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A TCP server on `addr:port` (made in namespace `ns`) that says `hello <addr>` to
/// every connection.
async fn hello_server(ns: &str, addr: &str, port: u16) {
    let a = addr.to_owned();
    let l = in_netns(ns, move || {
        let l = std::net::TcpListener::bind((a.as_str(), port)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    let hello = format!("hello {addr}\n");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let _ = c.write_all(hello.as_bytes()).await;
        }
    });
}

/// A DNS server on `addr:53` in the world answering A records of `names` (TTL 60),
/// NXDOMAIN for anything else.
async fn dns_server(ns: &str, addr: &str, names: HashMap<String, Ipv4Addr>) {
    let a = addr.to_owned();
    let s = in_netns(ns, move || {
        let s = std::net::UdpSocket::bind((a.as_str(), 53)).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    });
    let s = tokio::net::UdpSocket::from_std(s).unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            for query in q.queries() {
                r.add_query(query.clone());
                let name = query.name().to_ascii().trim_end_matches('.').to_owned();
                match names.get(&name) {
                    Some(ip) => {
                        r.add_answer(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A(*ip)),
                        ));
                    }
                    None => {
                        r.set_response_code(ResponseCode::NXDomain);
                    }
                }
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
}

/// The guest's probe: `dns NAME` prints the answer's rcode and addresses (asking
/// 192.0.2.1, an address no resolver lives at: the agent's resolver answers whatever the
/// guest asks); `tcp ADDR PORT` prints the server's greeting or `ERR <why>`.
const PROBE: &str = r#"
import socket, struct, sys
def dns(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, ("192.0.2.1", 53))
    r = s.recv(4096)
    rcode, an = r[3] & 15, struct.unpack(">H", r[6:8])[0]
    i = 12
    while r[i] != 0:
        i += r[i] + 1
    i += 5
    ips = []
    for _ in range(an):
        i += 2 if r[i] & 0xC0 else 0
        t, _, _, ln = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if t == 1:
            ips.append(socket.inet_ntoa(r[i:i + 4]))
        i += ln
    print(rcode, ",".join(ips))
def tcp(addr, port):
    try:
        c = socket.create_connection((addr, int(port)), timeout=2)
        print(c.recv(100).decode().strip())
    except Exception as e:
        print("ERR", type(e).__name__)
{"dns": dns, "tcp": tcp}[sys.argv[1]](*sys.argv[2:])
"#;

/// Guest b's server: `hello guest b` to every connection on 8080.
const GUEST_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"hello guest b\n")
    c.close()
"#;

async fn probe(a: &Agent, vm: &str, args: &[&str]) -> String {
    let mut cmd = vec!["python3", "probe.py"];
    cmd.extend_from_slice(args);
    let (code, out) = a.exec(vm, &cmd).await;
    assert_eq!(code, 0, "probe {args:?} in {vm}: {out}");
    out.trim().to_owned()
}

async fn tcp(a: &Agent, vm: &str, addr: &str) -> String {
    probe(a, vm, &["tcp", addr, "8080"]).await
}

fn create_body(name: &str, egress: Option<Value>, extra_files: &[(&str, &str)]) -> Value {
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let mut files = vec![json!({"path": "/probe.py", "content_b64": b64(PROBE), "mode": 0o644})];
    for (p, c) in extra_files {
        files.push(json!({"path": p, "content_b64": b64(c), "mode": 0o644}));
    }
    let mut b = json!({"name": name, "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                       "setup": {"files": files}});
    if let Some(e) = egress {
        b["egress"] = e;
    }
    b
}

/// The agent's egress table as `nft` lists it inside the agent's namespace.
fn egress_table(ns: &Ns, dir: &std::path::Path) -> String {
    let table = format!("fuse_{}_egress", fuse_hostagent::net::agent_tag(dir));
    ns.in_ns(&["nft", "list", "table", "inet", &table])
}

// Several threads: the world's servers answer while the test blocks on a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rules_allow_deny_and_isolate_against_a_world_of_servers_and_names() {
    // "walls": its own first letter and octet among the tests' namespaces (`Ns::new`).
    let Some(ns) = Ns::new("walls") else { return };
    let world = World::new(&ns);
    let w = |last: u8| world.addr(last);
    for last in [2, 3, 4, 5, 6, 7] {
        hello_server(&world.name, &w(last), 8080).await;
    }
    hello_server(&world.name, "169.254.169.254", 8080).await;
    let names: HashMap<String, Ipv4Addr> = [
        ("allowed.test", 2),
        ("other.test", 3),
        ("a.wild.test", 4),
        ("bad.wild.test", 5),
        ("denied-cidr.test", 7),
    ]
    .into_iter()
    .map(|(n, last)| (n.to_owned(), w(last).parse().unwrap()))
    .collect();
    dns_server(&world.name, &w(53), names).await;
    // A service of the host itself, on the host's own address.
    hello_server(&ns.name, &ns.ip, 8080).await;

    let dir = tempdir("walls");
    let env = [
        ("FC_AGENT_DNS_UPSTREAM", w(53)),
        ("FC_AGENT_SUBNET", "10.201.0.0/24".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = spawn(&ns, &dir, &env).await;
    let (_, h) = a.get("/healthz").await;
    assert!(
        h["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "egress"),
        "{h}"
    );

    // Bad rules are refused with what is wrong.
    let (s, e) = a
        .post(
            "/v1/vm",
            create_body(
                "fuse-bad",
                Some(json!({"mode": "allowlist", "allow": ["10.0.0.1/8"]})),
                &[],
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host bits set"),
        "{e}"
    );

    let rules = json!({"mode": "allowlist",
        "allow": ["allowed.test", "*.wild.test", "denied-cidr.test", format!("{}/31", w(6))],
        "deny": ["bad.wild.test", w(7)]});
    let (s, vm) = a
        .post("/v1/vm", create_body("fuse-a", Some(rules), &[]))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    // Another guest with the default rules, serving on 8080 (reached from the host).
    let mut b = create_body("fuse-b", None, &[("/server.py", GUEST_SERVER)]);
    b["setup"]["agent"] = json!({"command": "exec python3 server.py", "binary_path": ""});
    let (s, vm) = a.post("/v1/vm", b).await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    let guest_b = "10.201.0.6";

    // Allowlist: nothing resolved yet, so the allowed name's address is closed ...
    assert!(tcp(&a, "fuse-a", &w(2)).await.starts_with("ERR"));
    // ... until the guest resolves it (through whatever server it asks).
    assert_eq!(
        probe(&a, "fuse-a", &["dns", "allowed.test"]).await,
        format!("0 {}", w(2))
    );
    assert_eq!(tcp(&a, "fuse-a", &w(2)).await, format!("hello {}", w(2)));
    // A name the rules do not allow is refused, and its address stays closed.
    assert_eq!(probe(&a, "fuse-a", &["dns", "other.test"]).await, "5");
    assert!(tcp(&a, "fuse-a", &w(3)).await.starts_with("ERR"));
    // A wildcard lets a name below it through; a denied name below it is refused.
    assert_eq!(
        probe(&a, "fuse-a", &["dns", "a.wild.test"]).await,
        format!("0 {}", w(4))
    );
    assert_eq!(tcp(&a, "fuse-a", &w(4)).await, format!("hello {}", w(4)));
    assert_eq!(probe(&a, "fuse-a", &["dns", "bad.wild.test"]).await, "5");
    assert!(tcp(&a, "fuse-a", &w(5)).await.starts_with("ERR"));
    // A CIDR opens its addresses without DNS; a denied address inside it stays closed,
    // also when an allowed name resolves to it.
    assert_eq!(tcp(&a, "fuse-a", &w(6)).await, format!("hello {}", w(6)));
    assert!(tcp(&a, "fuse-a", &w(7)).await.starts_with("ERR"));
    assert_eq!(
        probe(&a, "fuse-a", &["dns", "denied-cidr.test"]).await,
        format!("0 {}", w(7))
    );
    assert!(tcp(&a, "fuse-a", &w(7)).await.starts_with("ERR"));

    // The default rules let a guest reach the world (so what is closed above is closed by
    // the rules), but never the host's own services, the metadata address or another
    // guest, all of which the host itself reaches.
    assert_eq!(tcp(&a, "fuse-b", &w(3)).await, format!("hello {}", w(3)));
    assert_eq!(
        probe(&a, "fuse-b", &["dns", "other.test"]).await,
        format!("0 {}", w(3))
    );
    let from_host = |addr: &str| {
        ns.in_ns(&["python3", "-c", &format!(
            "import socket; print(socket.create_connection(('{addr}', 8080), timeout=2).recv(100).decode().strip())"
        )])
    };
    assert_eq!(from_host(&ns.ip).trim(), format!("hello {}", ns.ip));
    assert_eq!(from_host("169.254.169.254").trim(), "hello 169.254.169.254");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while from_host(guest_b).trim() != "hello guest b" {
        assert!(
            std::time::Instant::now() < deadline,
            "guest b's server never answered the host"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tcp(&a, "fuse-b", &ns.ip).await.starts_with("ERR"),
        "the host's service"
    );
    assert!(
        tcp(&a, "fuse-b", "10.201.0.5").await.starts_with("ERR"),
        "the host's side of the link"
    );
    assert!(
        tcp(&a, "fuse-b", "169.254.169.254")
            .await
            .starts_with("ERR"),
        "metadata"
    );

    // A live update: allow-all less one address. The denied address closes, the others
    // open; the isolation stays.
    let (s, r) = a
        .call(
            reqwest::Method::PUT,
            "/v1/vm/fuse-a/egress",
            Some(json!({"mode": "allow-all", "deny": [w(3)]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["egress"],
        json!({"mode": "allow-all", "deny": [format!("{}/32", w(3))]})
    );
    assert!(tcp(&a, "fuse-a", &w(3)).await.starts_with("ERR"));
    assert_eq!(tcp(&a, "fuse-a", &w(5)).await, format!("hello {}", w(5)));
    assert_eq!(
        probe(&a, "fuse-a", &["dns", "other.test"]).await,
        format!("0 {}", w(3))
    );
    assert!(
        tcp(&a, "fuse-a", guest_b).await.starts_with("ERR"),
        "another guest"
    );
    assert!(
        tcp(&a, "fuse-a", "169.254.169.254")
            .await
            .starts_with("ERR"),
        "metadata"
    );
    assert!(
        tcp(&a, "fuse-a", &ns.ip).await.starts_with("ERR"),
        "the host"
    );

    // The rules outlive an agent restart (the VM is adopted, the table made anew).
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let a2 = spawn(&ns, &dir, &env).await;
    let (_, got) = a2.get("/v1/vm/fuse-a/egress").await;
    assert_eq!(got["egress"]["mode"], "allow-all", "{got}");
    assert!(tcp(&a2, "fuse-a", &w(3)).await.starts_with("ERR"));
    assert_eq!(tcp(&a2, "fuse-a", &w(5)).await, format!("hello {}", w(5)));
    assert_eq!(
        probe(&a2, "fuse-a", &["dns", "other.test"]).await,
        format!("0 {}", w(3))
    );

    // deny-all: nothing, and no name.
    let (s, r) = a2
        .call(
            reqwest::Method::PUT,
            "/v1/vm/fuse-a/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(tcp(&a2, "fuse-a", &w(5)).await.starts_with("ERR"));
    assert_eq!(probe(&a2, "fuse-a", &["dns", "allowed.test"]).await, "5");
    let (s, r) = a2
        .call(
            reqwest::Method::PUT,
            "/v1/vm/fuse-a/egress",
            Some(json!({"mode": "sideways"})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {r}");
    let (s, _) = a2
        .call(
            reqwest::Method::PUT,
            "/v1/vm/fuse-zz/egress",
            Some(json!({"mode": "deny-all"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Destroy leaves nothing of the VMs in the egress table.
    let key_a = fuse_hostagent::net::dev_name(&fuse_hostagent::net::agent_tag(&dir), "fuse-a");
    assert!(egress_table(&ns, &dir).contains(&key_a));
    assert_eq!(a2.delete("/v1/vm/fuse-a").await.0, StatusCode::NO_CONTENT);
    assert_eq!(a2.delete("/v1/vm/fuse-b").await.0, StatusCode::NO_CONTENT);
    let table = egress_table(&ns, &dir);
    assert!(table.contains("chain forward"), "{table}");
    assert!(
        !table.contains(&key_a) && !table.contains("fuse-a") && !table.contains("fuse-b"),
        "{table}"
    );
    drop(world);
}
