//! The control plane in-process on port 0 with a client and small helpers: the harness of
//! the API tests. With `FUSE_API_STORE=postgres` the same tests run against a fresh
//! Postgres database (dropped afterwards) with secrets sealed.

use fuse_server::config::{Config, Flags};
use fuse_server::provider::stub::StubProvider;
use fuse_server::server::{self, Running};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct Fuse {
    pub running: Running,
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    /// The Postgres database, when the store is Postgres (dropped with this value).
    pub db: Option<crate::TestDb>,
}

/// Flags for tests: loopback, port 0, fast loops.
pub fn test_flags() -> Flags {
    Flags {
        listen: "127.0.0.1:0".into(),
        require_auth: "false".into(),
        vm_prefix: "fuse-".into(),
        agent_profile: "fused".into(),
        scheduler_policy: "spread".into(),
        max_body_bytes: "1048576".into(),
        max_file_bytes: "1073741824".into(),
        header_timeout_secs: "10".into(),
        idle_timeout_secs: "60".into(),
        body_timeout_secs: "60".into(),
        max_connections: "4096".into(),
        sse_keepalive_secs: "15".into(),
        host_poll_secs: "3600".into(),
        gc_period_secs: "3600".into(),
        pool_period_secs: "3600".into(),
        recovery_period_secs: "3600".into(),
        reconcile_period_secs: "3600".into(),
        orphan_grace_secs: "0".into(),
        host_down_after_secs: "0".into(),
        quarantine_after: "3".into(),
        terminal_retention_secs: "86400".into(),
        snapshot_retention_secs: "604800".into(),
        drain_timeout_secs: "30".into(),
        provision_timeout_secs: "60".into(),
        // Agents in tests that listen nowhere are up after half a second.
        agent_start_window_ms: "500".into(),
        log_format: "text".into(),
        ..Flags::default()
    }
}

pub async fn start() -> Fuse {
    start_with(test_flags()).await
}

/// Starts a server. With `FUSE_API_STORE=postgres` (and `FUSE_TEST_DATABASE_URL`), the same
/// tests run against a fresh Postgres database with secrets sealed.
pub async fn start_with(mut flags: Flags) -> Fuse {
    let token = (!flags.auth_token.is_empty()).then(|| flags.auth_token.clone());
    let pg = std::env::var("FUSE_API_STORE").is_ok_and(|v| v == "postgres");
    let mut db = None;
    if pg {
        let admin =
            crate::db::admin_url().expect("FUSE_API_STORE=postgres needs FUSE_TEST_DATABASE_URL");
        let d = crate::TestDb::create_at(&admin).await;
        flags.database_url = d.url().to_owned();
        flags.token_encryption_key = "7e".repeat(32);
        db = Some(d);
    }
    let cfg = Config::from_flags(flags, |_| None).expect("test config");
    let running = server::start(cfg).await.expect("server starts");
    if pg {
        let app = running.app.clone();
        crate::eventually("the store to become ready", Duration::from_secs(20), || {
            let app = app.clone();
            async move {
                app.store.ping().await.is_ok()
                    && app.relay_ready.load(std::sync::atomic::Ordering::Acquire)
            }
        })
        .await;
    }
    let base = format!("http://{}", running.addr);
    Fuse {
        running,
        base,
        http: reqwest::Client::new(),
        token,
        db,
    }
}

impl Drop for Fuse {
    /// Stops the server (its background tasks and its database connections) before the
    /// test database is dropped.
    fn drop(&mut self) {
        self.running.shutdown();
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// The error code of an error envelope.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
    /// The resource's `state`; for an environment that ended (a 404 whose details keep
    /// its last state), that state.
    pub fn state(&self) -> Value {
        match self.body.get("state") {
            Some(s) => s.clone(),
            None => self.body["error"]["details"]["state"].clone(),
        }
    }
}

/// A client of a running [`Fuse`] with a token of its own (an API key, say).
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Client {
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        send(
            self.http
                .request(method, format!("{}{}", self.base, path))
                .bearer_auth(&self.token),
            body,
        )
        .await
    }
    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
}

async fn send(mut req: reqwest::RequestBuilder, body: Option<Value>) -> Resp {
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

/// The live events of one environment, as the SSE stream carries them (JSON).
pub struct Events {
    rx: tokio::sync::broadcast::Receiver<Arc<fuse_types::StateEvent>>,
    vm_id: String,
}

impl Events {
    /// The next event of this environment for which `f` holds (ten seconds at most).
    pub async fn next_matching(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("no matching event for {} within 10 s", self.vm_id),
                Ok(Err(e)) => panic!("event stream of {}: {e}", self.vm_id),
                Ok(Ok(ev)) if ev.vm_id == self.vm_id => {
                    let v = serde_json::to_value(&*ev).unwrap();
                    if f(&v) {
                        return v;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

impl Fuse {
    pub fn app(&self) -> &Arc<fuse_server::app::App> {
        &self.running.app
    }

    /// A client that sends `token` as its bearer token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            token: token.to_owned(),
        }
    }

    /// Subscribes to the events of environment `vm_id` from now on.
    pub async fn events(&self, vm_id: &str) -> Events {
        Events {
            rx: self.app().events.subscribe(),
            vm_id: vm_id.to_owned(),
        }
    }

    /// Runs a fresh pass of the background task `name` and returns its outcome.
    pub async fn run_task(
        &self,
        name: &str,
    ) -> Result<serde_json::Value, fuse_server::background::TaskError> {
        self.running.tasks.run_now(name).await
    }

    /// Provisions the control plane runs now.
    pub fn provisions_in_flight(&self) -> i64 {
        self.app().metrics.provisions_in_flight.get()
    }

    /// Moves the control plane's clock forward (instead of sleeping past a limit).
    pub fn advance(&self, d: Duration) {
        self.app().clock.advance(d);
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        send(req, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates an environment and asserts 201 running.
    pub async fn create_running(&self, task: &str) -> Value {
        let r = self
            .post("/v1/environments", json!({"task_id": task}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["state"], "running", "{}", r.text);
        r.body
    }

    /// Registers a stub host with a capacity.
    pub async fn stub_host(&self, id: &str, cpus: u32, vm_count: u32) -> Value {
        let r = self
            .post(
                "/v1/hosts",
                json!({"id": id, "url": format!("stub://{id}"), "region": "r1",
                       "capacity": {"cpus": cpus, "ram_mb": cpus * 2048, "storage_gb": 100, "vm_count": vm_count}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    /// The default (pseudo-host) stub.
    pub fn default_stub(&self) -> Arc<StubProvider> {
        self.stub("default")
    }

    pub fn stub(&self, host: &str) -> Arc<StubProvider> {
        self.app().providers.stub(host).expect("stub host exists")
    }

    /// Polls until `f` holds or ten seconds pass.
    pub async fn eventually<F, Fut>(&self, what: &str, f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        crate::eventually(what, Duration::from_secs(10), f).await
    }
}
