//! HTTP client for one `fc-agent` (the host-agent wire of DESIGN §6). Timeouts on every
//! call; only idempotent calls (GET, DELETE) are retried, once, and only when the
//! connection failed before the request could have been processed. A provision is one
//! `POST /v1/vm` carrying the whole guest setup when the host advertises it in `/healthz`
//! (remembered from the last health answer, which the host monitor refreshes); a host that
//! does not is driven call by call, with `/start-surfd` as the fallback of `/start-agent`.

use super::runtime::{Attached, ExecStream, FileDownload, FileUpload};
use super::{Provider, ProviderError};
use async_trait::async_trait;
use base64::Engine as _;
use fuse_types::hostagent::{
    AgentClaim, AgentMigrationIn, AgentSend, AgentSent, AgentSnapshotList, AgentSnapshotRef,
};
use fuse_types::hostagent::{
    AgentExec, AgentExecResult, AgentHealth, AgentRestore, AgentSnapshot, AgentSnapshotCreate,
    AgentStart, AgentUpload, AgentVm, AgentVmCreate, AgentVmList, FileList, FileWritten,
    HostEndpoint, PortExpose, SetupStep, FEATURE_EXPOSE, FEATURE_FORK, FEATURE_HEALTHCHECK,
    FEATURE_MIGRATE, FEATURE_PAUSE, FEATURE_PROVISION, FEATURE_RUNTIME, FEATURE_TEMPLATE,
    FEATURE_TUNNEL, SHA256_HEADER,
};
use fuse_types::{ErrorBody, ExecResponse};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Calls that may take a while (boot, snapshot) get this long.
const SLOW: Duration = Duration::from_secs(300);
/// Everything else.
const FAST: Duration = Duration::from_secs(30);

/// How long a host's advertised features are trusted before `/healthz` is asked again.
const FEATURES_TTL: Duration = Duration::from_secs(60);

/// A client for one host.
#[derive(Debug)]
pub struct HostAgentClient {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The features of the last health answer, and when it came.
    features: parking_lot::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

impl HostAgentClient {
    /// A client for the agent at `base` (e.g. `http://10.0.0.5:8090`).
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        HostAgentClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            features: parking_lot::Mutex::new(None),
        }
    }

    /// Whether the host advertises `feature`, from its last health answer (asked again
    /// when older than [`FEATURES_TTL`]).
    async fn supports(&self, feature: &str) -> Result<bool, ProviderError> {
        let fresh = self
            .features
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FEATURES_TTL)
            .map(|(_, f)| f.iter().any(|x| x == feature));
        match fresh {
            Some(b) => Ok(b),
            None => Ok(self.health().await?.has(feature)),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, ProviderError> {
        let idempotent = method == Method::GET || method == Method::DELETE;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path))
                .timeout(timeout)
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if idempotent && attempt < 2 && e.is_connect() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => {
                    return Err(ProviderError::Unavailable(format!(
                        "{method} {path}: {}",
                        error_chain(&e)
                    )))
                }
            };
            let status = resp.status();
            if status.is_success() {
                if status == StatusCode::NO_CONTENT {
                    return Ok(None);
                }
                let bytes = resp.bytes().await.map_err(|e| {
                    ProviderError::Unavailable(format!("{method} {path}: reading body: {e}"))
                })?;
                if bytes.is_empty() {
                    return Ok(None);
                }
                return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    ProviderError::Internal(format!("{method} {path}: bad answer: {e}"))
                });
            }
            let text = resp.text().await.unwrap_or_default();
            return Err(error_from(&method, path, status, &text));
        }
    }

    fn vm_path(vm_id: &str, rest: &str) -> String {
        format!("/v1/vm/{vm_id}{rest}")
    }

    /// Refuses a call to a host whose agent does not advertise `feature` (501).
    async fn need(&self, feature: &str, what: &str) -> Result<(), ProviderError> {
        if self.supports(feature).await? {
            Ok(())
        } else {
            Err(super::fast_start_unsupported("an older fc-agent", what))
        }
    }

    /// Refuses a runtime call to a host whose agent does not offer it.
    async fn need_runtime(&self, what: &str) -> Result<(), ProviderError> {
        if self.supports(FEATURE_RUNTIME).await? {
            Ok(())
        } else {
            Err(super::unsupported("an older fc-agent", what))
        }
    }

    /// Sends a request whose answer is streamed (no overall timeout: the stream is as long
    /// as the file or the command); a non-success answer is the host's error.
    async fn send_streaming(
        &self,
        req: reqwest::RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            ProviderError::Unavailable(format!("{method} {path}: {}", error_chain(&e)))
        })?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(error_from(&method, path, status, &text))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

fn stream_of(
    resp: reqwest::Response,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, ProviderError>> {
    use futures::StreamExt as _;
    resp.bytes_stream()
        .map(|r| {
            r.map_err(|e| ProviderError::Unavailable(format!("reading the host's stream: {e}")))
        })
        .boxed()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn need<T>(v: Option<T>, what: &str) -> Result<T, ProviderError> {
    v.ok_or_else(|| ProviderError::Internal(format!("{what}: empty answer")))
}

/// The error of a host's non-success answer, from its envelope.
fn error_from(method: &Method, path: &str, status: StatusCode, text: &str) -> ProviderError {
    let body = serde_json::from_str::<ErrorBody>(text).ok();
    let detail = |k: &str| {
        body.as_ref()
            .and_then(|b| b.error.details.get(k))
            .and_then(|r| r.as_str())
            .map(str::to_owned)
    };
    let reason = detail("reason");
    let step = detail("step").and_then(|s| s.parse::<SetupStep>().ok());
    let message = body
        .map(|b| b.error.message)
        .unwrap_or_else(|| text.chars().take(300).collect());
    match (reason.as_deref(), step) {
        (Some(fuse_types::hostagent::GUEST_DID_NOT_BOOT), _) => {
            return ProviderError::GuestFailed(message)
        }
        (Some(fuse_types::hostagent::SETUP_FAILED), Some(step)) => {
            return ProviderError::SetupFailed { step, message }
        }
        (Some(fuse_types::hostagent::GUEST_REFUSED), _) => {
            return ProviderError::GuestRefused(message)
        }
        _ => {}
    }
    match status {
        StatusCode::NOT_FOUND => ProviderError::NotFound(message),
        StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::BAD_GATEWAY
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::TOO_MANY_REQUESTS => {
            ProviderError::Unavailable(format!("{method} {path}: {status}: {message}"))
        }
        s if s.is_client_error() => ProviderError::Rejected {
            status: s.as_u16(),
            message,
        },
        s => ProviderError::Internal(format!("{method} {path}: {s}: {message}")),
    }
}

#[async_trait]
impl Provider for HostAgentClient {
    fn kind(&self) -> &'static str {
        "fc-agent"
    }

    async fn health(&self) -> Result<AgentHealth, ProviderError> {
        let h = self
            .call::<(), AgentHealth>(Method::GET, "/healthz", None, Duration::from_secs(5))
            .await?;
        let h = need(h, "healthz")?;
        *self.features.lock() = Some((std::time::Instant::now(), h.features.clone()));
        Ok(h)
    }

    async fn vm_create(&self, req: &AgentVmCreate) -> Result<AgentVm, ProviderError> {
        let mut bare = req.clone();
        bare.setup = None;
        let v = self.call(Method::POST, "/v1/vm", Some(&bare), SLOW).await?;
        need(v, "create vm")
    }

    async fn vm_provision(&self, req: &AgentVmCreate) -> Result<AgentVm, ProviderError> {
        // What an older agent would silently drop is refused instead.
        for (asked, feature, what) in [
            (
                !req.expose.is_empty(),
                FEATURE_EXPOSE,
                "publish ports (expose)",
            ),
            (
                req.healthcheck.is_some(),
                FEATURE_HEALTHCHECK,
                "run healthchecks",
            ),
            (
                req.from_snapshot.is_some(),
                FEATURE_FORK,
                "fork from a snapshot",
            ),
            (
                req.egress.as_ref().is_some_and(|r| !r.is_default()),
                fuse_types::hostagent::FEATURE_EGRESS,
                "enforce egress rules",
            ),
            (
                req.warm || req.from_snapshot.as_ref().is_some_and(|s| s.memory),
                FEATURE_TEMPLATE,
                "start from a template (restore a live snapshot into a new VM)",
            ),
        ] {
            if asked && !self.supports(feature).await? {
                return Err(ProviderError::Rejected {
                    status: 501,
                    message: format!(
                        "this host's agent cannot {what}; upgrade its fc-agent (it does not \
                         advertise the {feature:?} feature)"
                    ),
                });
            }
        }
        // A warm VM runs no setup (its claim carries it); it is one call.
        if !req.warm && (req.setup.is_none() || !self.supports(FEATURE_PROVISION).await?) {
            return super::provision_call_by_call(self, req).await;
        }
        let v = self.call(Method::POST, "/v1/vm", Some(req), SLOW).await?;
        need(v, "create vm")
    }

    async fn vm_egress(
        &self,
        vm_id: &str,
        rules: &fuse_types::EgressRules,
    ) -> Result<(), ProviderError> {
        if !self.supports(fuse_types::hostagent::FEATURE_EGRESS).await? {
            // Nothing to enforce beyond what every host does.
            if rules.is_default() {
                return Ok(());
            }
            return Err(super::egress_unsupported());
        }
        self.call::<_, fuse_types::hostagent::AgentEgress>(
            Method::PUT,
            &Self::vm_path(vm_id, "/egress"),
            Some(rules),
            FAST,
        )
        .await?;
        Ok(())
    }

    async fn vm_destroy(&self, vm_id: &str) -> Result<(), ProviderError> {
        match self
            .call::<(), serde_json::Value>(Method::DELETE, &Self::vm_path(vm_id, ""), None, SLOW)
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn vm_list(&self, prefix: &str) -> Result<Vec<AgentVm>, ProviderError> {
        let l: Option<AgentVmList> = self
            .call::<(), _>(Method::GET, &format!("/v1/vm?prefix={prefix}"), None, FAST)
            .await?;
        Ok(need(l, "list vms")?.vms)
    }

    async fn vm_get(&self, vm_id: &str) -> Result<Option<AgentVm>, ProviderError> {
        match self
            .call::<(), AgentVm>(Method::GET, &Self::vm_path(vm_id, ""), None, FAST)
            .await
        {
            Ok(v) => Ok(Some(need(v, "get vm")?)),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn upload(
        &self,
        vm_id: &str,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<(), ProviderError> {
        let body = AgentUpload {
            path: path.to_owned(),
            content_b64: base64::engine::general_purpose::STANDARD.encode(content),
            mode: Some(mode),
        };
        self.call::<_, serde_json::Value>(
            Method::POST,
            &Self::vm_path(vm_id, "/upload"),
            Some(&body),
            FAST,
        )
        .await?;
        Ok(())
    }

    async fn exec(
        &self,
        vm_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResponse, ProviderError> {
        let body = AgentExec {
            cmd: cmd.to_vec(),
            timeout_ms: Some(timeout.as_millis() as u64),
            ..AgentExec::default()
        };
        let r: AgentExecResult = need(
            self.call(
                Method::POST,
                &Self::vm_path(vm_id, "/exec"),
                Some(&body),
                timeout + Duration::from_secs(10),
            )
            .await?,
            "exec",
        )?;
        let dec = |s: &str| -> Result<String, ProviderError> {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| ProviderError::Internal(format!("exec output is not base64: {e}")))
        };
        Ok(ExecResponse {
            exit_code: r.exit_code,
            stdout: dec(&r.stdout)?,
            stderr: dec(&r.stderr)?,
            truncated: r.truncated,
        })
    }

    async fn start_agent(&self, vm_id: &str, spec: &AgentStart) -> Result<(), ProviderError> {
        let r = self
            .call::<_, serde_json::Value>(
                Method::POST,
                &Self::vm_path(vm_id, "/start-agent"),
                Some(spec),
                SLOW,
            )
            .await;
        match r {
            // Hosts still running the original agent only know the older route.
            Err(ProviderError::NotFound(_)) => {
                self.call::<_, serde_json::Value>(
                    Method::POST,
                    &Self::vm_path(vm_id, "/start-surfd"),
                    Some(spec),
                    SLOW,
                )
                .await?;
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    async fn stop_agent(&self, vm_id: &str) -> Result<(), ProviderError> {
        self.call::<(), serde_json::Value>(
            Method::POST,
            &Self::vm_path(vm_id, "/stop-agent"),
            None,
            FAST,
        )
        .await?;
        Ok(())
    }

    async fn snapshot_create(
        &self,
        vm_id: &str,
        snapshot_id: &str,
        mode: &str,
    ) -> Result<AgentSnapshot, ProviderError> {
        let body = AgentSnapshotCreate {
            snapshot_id: snapshot_id.to_owned(),
            mode: mode.to_owned(),
        };
        let s = self
            .call(
                Method::POST,
                &Self::vm_path(vm_id, "/snapshot"),
                Some(&body),
                SLOW,
            )
            .await?;
        need(s, "snapshot")
    }

    async fn snapshot_restore(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError> {
        let body = AgentRestore {
            snapshot_id: snapshot_id.to_owned(),
        };
        self.call::<_, serde_json::Value>(
            Method::POST,
            &Self::vm_path(vm_id, "/restore"),
            Some(&body),
            SLOW,
        )
        .await?;
        Ok(())
    }

    async fn tunnel(&self, vm_id: &str, port: u16) -> Result<super::Tunnel, ProviderError> {
        use fuse_types::hostagent::TUNNEL_UPGRADE;
        let path = Self::vm_path(vm_id, &format!("/ports/{port}/tunnel"));
        let send = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, TUNNEL_UPGRADE)
            .send();
        // The limit is on the answer only: the stream after it lives as long as its users.
        let resp = match tokio::time::timeout(FAST, send).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(ProviderError::Unavailable(format!(
                    "GET {path}: {}",
                    error_chain(&e)
                )))
            }
            Err(_) => {
                return Err(ProviderError::Unavailable(format!(
                    "GET {path}: no answer within {} s",
                    FAST.as_secs()
                )))
            }
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let up = resp.upgrade().await.map_err(|e| {
                ProviderError::Unavailable(format!("GET {path}: upgrade: {}", error_chain(&e)))
            })?;
            return Ok(Box::new(up));
        }
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Err(ProviderError::Internal(format!(
                "GET {path}: {status} instead of 101 Switching Protocols"
            )));
        }
        Err(error_from(&Method::GET, &path, status, &text))
    }

    async fn expose(&self, vm_id: &str, port: &PortExpose) -> Result<HostEndpoint, ProviderError> {
        if !self.supports(FEATURE_TUNNEL).await? {
            return Err(ProviderError::Unsupported(
                "publishing a port at runtime: this host's fc-agent does not offer it (no \
                 tunnel feature); upgrade it"
                    .into(),
            ));
        }
        let v = self
            .call(
                Method::POST,
                &Self::vm_path(vm_id, "/expose"),
                Some(port),
                FAST,
            )
            .await?;
        need(v, "expose")
    }

    async fn logs(
        &self,
        vm_id: &str,
        q: &super::LogQuery,
    ) -> Result<super::LogStream, ProviderError> {
        use futures::StreamExt as _;
        let mut path = Self::vm_path(vm_id, &format!("/logs?source={}", q.source));
        if let Some(t) = q.tail {
            path.push_str(&format!("&tail={t}"));
        }
        if q.follow {
            path.push_str("&follow=true");
        }
        let mut req = self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        // A followed log has no end; one that is not is read within the usual bound.
        if !q.follow {
            req = req.timeout(SLOW);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("GET {path}: {}", error_chain(&e))))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| text.chars().take(300).collect());
            return Err(match status {
                // An fc-agent from before the logs route.
                StatusCode::NOT_FOUND if message == "no such route" => {
                    super::unsupported(self.kind(), "logs")
                }
                StatusCode::NOT_FOUND => ProviderError::NotFound(message),
                StatusCode::SERVICE_UNAVAILABLE => {
                    ProviderError::Unavailable(format!("GET {path}: {status}: {message}"))
                }
                s if s.is_client_error() => ProviderError::Rejected {
                    status: s.as_u16(),
                    message,
                },
                s => ProviderError::Internal(format!("GET {path}: {s}: {message}")),
            });
        }
        Ok(resp
            .bytes_stream()
            .map(|r| r.map_err(|e| ProviderError::Unavailable(format!("reading a log: {e}"))))
            .boxed())
    }

    async fn snapshot_delete(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError> {
        match self
            .call::<(), serde_json::Value>(
                Method::DELETE,
                &Self::vm_path(vm_id, &format!("/snapshots/{snapshot_id}")),
                None,
                SLOW,
            )
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn exec_job(
        &self,
        vm_id: &str,
        job: &AgentExec,
    ) -> Result<AgentExecResult, ProviderError> {
        if !job.env.is_empty() || job.cwd.is_some() || job.stdin.is_some() {
            self.need_runtime("exec with env, cwd or stdin").await?;
        }
        let limit = Duration::from_millis(job.timeout_ms.unwrap_or(30_000)) + FAST;
        let r = self
            .call(
                Method::POST,
                &Self::vm_path(vm_id, "/exec"),
                Some(job),
                limit,
            )
            .await?;
        need(r, "exec")
    }

    async fn exec_stream(&self, vm_id: &str, job: &AgentExec) -> Result<ExecStream, ProviderError> {
        self.need_runtime("streamed exec").await?;
        let path = Self::vm_path(vm_id, "/exec?stream=true");
        let req = self.http.post(self.url(&path)).json(job);
        let resp = self.send_streaming(req, Method::POST, &path).await?;
        Ok(super::runtime::ndjson(stream_of(resp), 1 << 20))
    }

    async fn file_put(&self, vm_id: &str, file: FileUpload) -> Result<FileWritten, ProviderError> {
        self.need_runtime("file writes").await?;
        let path = Self::vm_path(vm_id, "/files");
        let mut q = vec![("path", file.path.clone())];
        if let Some(m) = file.mode {
            q.push(("mode", format!("{m:04o}")));
        }
        if let Some(sum) = &file.sha256 {
            q.push(("sha256", sum.clone()));
        }
        let req = self
            .http
            .put(self.url(&path))
            .query(&q)
            .body(reqwest::Body::wrap_stream(file.body));
        let resp = self.send_streaming(req, Method::PUT, &path).await?;
        resp.json()
            .await
            .map_err(|e| ProviderError::Internal(format!("PUT {path}: bad answer: {e}")))
    }

    async fn file_get(&self, vm_id: &str, guest_path: &str) -> Result<FileDownload, ProviderError> {
        use futures::StreamExt as _;
        self.need_runtime("file reads").await?;
        let path = Self::vm_path(vm_id, "/files");
        let req = self
            .http
            .get(self.url(&path))
            .query(&[("path", guest_path)]);
        let resp = self.send_streaming(req, Method::GET, &path).await?;
        let size = resp.content_length().unwrap_or(0);
        let sha256 = resp
            .headers()
            .get(SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed();
        Ok(FileDownload { size, sha256, body })
    }

    async fn file_list(&self, vm_id: &str, guest_path: &str) -> Result<FileList, ProviderError> {
        self.need_runtime("directory listings").await?;
        let path = Self::vm_path(vm_id, "/files");
        let req = self
            .http
            .get(self.url(&path))
            .query(&[("path", guest_path), ("list", "true")])
            .timeout(FAST);
        let resp = self.send_streaming(req, Method::GET, &path).await?;
        resp.json()
            .await
            .map_err(|e| ProviderError::Internal(format!("GET {path}: bad answer: {e}")))
    }

    async fn file_delete(
        &self,
        vm_id: &str,
        guest_path: &str,
        recursive: bool,
    ) -> Result<(), ProviderError> {
        self.need_runtime("file removal").await?;
        let path = Self::vm_path(vm_id, "/files");
        let req = self
            .http
            .delete(self.url(&path))
            .query(&[
                ("path", guest_path),
                ("recursive", if recursive { "true" } else { "false" }),
            ])
            .timeout(SLOW);
        self.send_streaming(req, Method::DELETE, &path).await?;
        Ok(())
    }

    async fn attach(
        &self,
        vm_id: &str,
        query: &str,
        headers: &[(String, String)],
    ) -> Result<Attached, ProviderError> {
        self.need_runtime("terminals").await?;
        let path = Self::vm_path(vm_id, "/attach");
        let mut req = self.http.get(format!("{}?{query}", self.url(&path)));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = self.send_streaming(req, Method::GET, &path).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProviderError::Internal(format!(
                "GET {path}: the host answered {} instead of switching to a WebSocket",
                resp.status()
            )));
        }
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let io = resp
            .upgrade()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("GET {path}: upgrading: {e}")))?;
        Ok(Attached { headers, io })
    }

    async fn vm_pause(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        self.need(FEATURE_PAUSE, "pause").await?;
        let v = self
            .call::<(), _>(Method::POST, &Self::vm_path(vm_id, "/pause"), None, SLOW)
            .await?;
        need(v, "pause")
    }

    async fn vm_resume(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        self.need(FEATURE_PAUSE, "resume").await?;
        let v = self
            .call::<(), _>(Method::POST, &Self::vm_path(vm_id, "/resume"), None, SLOW)
            .await?;
        need(v, "resume")
    }

    async fn vm_claim(&self, warm_id: &str, claim: &AgentClaim) -> Result<AgentVm, ProviderError> {
        self.need(FEATURE_TEMPLATE, "warm pools").await?;
        let v = self
            .call(
                Method::POST,
                &Self::vm_path(warm_id, "/claim"),
                Some(claim),
                SLOW,
            )
            .await?;
        need(v, "claim")
    }

    async fn migration_expect(&self, m: &AgentMigrationIn) -> Result<(), ProviderError> {
        self.need(FEATURE_MIGRATE, "migration").await?;
        self.call::<_, serde_json::Value>(Method::POST, "/v1/migrations", Some(m), FAST)
            .await
            .map(|_| ())
    }

    async fn vm_send(&self, vm_id: &str, send: &AgentSend) -> Result<AgentSent, ProviderError> {
        self.need(FEATURE_MIGRATE, "migration").await?;
        // A transfer of a large memory image takes as long as it takes; SLOW bounds a stall.
        let v = self
            .call(
                Method::POST,
                &Self::vm_path(vm_id, "/send"),
                Some(send),
                SLOW * 4,
            )
            .await?;
        need(v, "send")
    }

    async fn migration_abort(&self, vm_id: &str) -> Result<(), ProviderError> {
        match self
            .call::<(), serde_json::Value>(
                Method::DELETE,
                &format!("/v1/migrations/{vm_id}"),
                None,
                FAST,
            )
            .await
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn snapshots_all(&self) -> Result<Option<Vec<AgentSnapshotRef>>, ProviderError> {
        if !self.supports(FEATURE_MIGRATE).await? {
            return Ok(None);
        }
        let v: Option<AgentSnapshotList> = self
            .call::<(), _>(Method::GET, "/v1/snapshots", None, FAST)
            .await?;
        Ok(Some(need(v, "list snapshots")?.snapshots))
    }
}
