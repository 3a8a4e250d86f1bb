//! `fuse` as a real process (started, killed with `kill -9`, restarted), stub hosts served
//! over HTTP by the test process (they outlive a killed `fuse`), and a TCP proxy in front
//! of Postgres that a test can cut and restore: the harness of the process-level tests.

use fuse_server::provider::{stub::StubProvider, stub_http};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KEY: &str = "5a1c0e9d8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a70";

/// The key every `fuse` of these tests seals with, for a store the test opens itself (a
/// store without it is refused on a database with sealed secrets).
pub fn cipher() -> fuse_store::crypto::Cipher {
    fuse_store::crypto::Cipher::from_hex(KEY).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct FuseProc {
    pub child: Option<Child>,
    pub base: String,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

/// A `fuse` process (the binary `bin`) on `db` with short periods; `extra` env overrides.
pub fn spawn_fuse(bin: &std::path::Path, db: &str, extra: &[(&str, &str)]) -> FuseProc {
    let port = free_port();
    let dir = std::env::temp_dir().join("fuse-cluster-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("fuse-{}-{port}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("ORCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", db)
        .env("TOKEN_ENCRYPTION_KEY", KEY)
        .env("FUSE_HOST_POLL_SECS", "1")
        .env("FUSE_RECOVERY_PERIOD_SECS", "1")
        .env("FUSE_PROVISION_TIMEOUT_SECS", "60")
        .env(
            "RUST_LOG",
            "debug,sqlx=warn,hyper=info,reqwest=info,h2=info",
        )
        .env("NO_COLOR", "1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap();
    FuseProc {
        child: Some(child),
        base: format!("http://127.0.0.1:{port}"),
        log,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

impl FuseProc {
    /// Waits until `/ready` answers 200.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/ready", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "fuse at {} never became ready; log:\n{}",
                self.base,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of a `fuse` this value does not own (it is not killed on drop).
    pub fn client_for(base: &str) -> FuseProc {
        FuseProc {
            child: None,
            base: base.to_owned(),
            log: PathBuf::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// SIGKILL: no graceful anything.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        // No answer at all (not listening yet, or killed) reads as 502.
        let Ok(resp) = r.send().await else {
            return (StatusCode::BAD_GATEWAY, Value::Null);
        };
        let s = resp.status();
        let text = resp.text().await.unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A GET. An environment that ended answers 404 with its last state, error and end
    /// time in the envelope's details; those details are returned as the body (the status
    /// stays 404), so a test reads `["state"]` and `["error"]` either way.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, b) = self.req(reqwest::Method::GET, path, None).await;
        if s == StatusCode::NOT_FOUND && b["error"]["details"]["state"].is_string() {
            return (s, b["error"]["details"].clone());
        }
        (s, b)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.req(reqwest::Method::DELETE, path, None).await
    }

    /// Registers a stub host over HTTP.
    pub async fn register(&self, id: &str, addr: SocketAddr, vm_count: u32) {
        let (s, b) = self
            .post(
                "/v1/hosts",
                json!({"id": id, "url": format!("http://{addr}"), "token": "host-token",
                       "capacity": {"cpus": 64, "ram_mb": 65536, "storage_gb": 1000, "vm_count": vm_count}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["state"], "active", "{b}");
    }
}

impl Drop for FuseProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A stub host served over HTTP by this test process.
pub async fn stub_host() -> (Arc<StubProvider>, SocketAddr, tokio::task::JoinHandle<()>) {
    let stub = Arc::new(StubProvider::new());
    let (addr, join) = stub_http::serve("127.0.0.1:0".parse().unwrap(), stub.clone(), "host-token")
        .await
        .unwrap();
    (stub, addr, join)
}

/// A TCP proxy in front of Postgres that the test can cut and restore.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr, up: bool) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let flag = Arc::new(AtomicBool::new(up));
        let (gen_tx, gen_rx) = tokio::sync::watch::channel(0u64);
        let f2 = flag.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !f2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up: flag,
            generation: gen_tx,
        }
    }

    /// Refuses new connections and cuts every open one.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The admin URL's host:port and a URL for database `db` through `port` on loopback.
pub fn pg_target(admin: &str) -> SocketAddr {
    let after = admin.split("://").nth(1).unwrap();
    let hostport = after.rsplit('@').next().unwrap().split('/').next().unwrap();
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    hostport.replace("localhost", "127.0.0.1").parse().unwrap()
}

pub fn via_port(url: &str, port: u16) -> String {
    let target = pg_target(url);
    url.replacen(
        &format!("{}:{}", target.ip(), target.port()),
        &format!("127.0.0.1:{port}"),
        1,
    )
}
