//! The E2B-compatible API's domain side: a sandbox is an environment created through it,
//! whose guest runs `fuse-envd` (E2B's envd) on port 49983.
//!
//! - **Create**: `templateID` names a Fuse template (`base`, E2B's default, is a plain
//!   environment unless a template of that name exists); the environment's agent is a
//!   placeholder whose readiness port is envd's, so the environment is `running` once envd
//!   listens. Then envd is configured over the private link (its access token, which is
//!   the environment's traffic token, and the sandbox's `envVars`) and asked for
//!   `/health` through the host, and only then is the create answered.
//! - **Time**: `timeout` is when the sandbox ends, counted from now (`ends_at` in the
//!   record's extras, moved by `timeout`, `refreshes` and `connect` with a
//!   `timeout_changed` transition); reconcile kills it then, or pauses it with
//!   `autoPause`.
//! - **Pause/resume**: Fuse's own; `connect` resumes a paused sandbox.

use super::error::AppError;
use super::App;
use crate::app::lifecycle::{Change, LifecycleError};
use fuse_store::{E2bSandbox, VmRecord};
use fuse_types::lifecycle::Event;
use fuse_types::{Timestamp, VmState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// envd's port in every guest.
pub const ENVD_PORT: u16 = 49983;
/// The envd version sandboxes answer: `fuse-envd --version` (the cluster test checks
/// they agree).
pub const ENVD_VERSION: &str = "0.6.4";
/// Where envd reads its configuration in the guest (`fuse_envd::server::CONFIG_PATH`).
pub const ENVD_CONFIG: &str = "/run/fuse-envd/config.json";
/// The sandbox's time when a create or resume names none (E2B's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a sandbox's time may be set to at once (Fuse's runtime cap, 30 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
/// How long a new or resumed sandbox's envd has to answer `/health`.
const ENVD_UP: Duration = Duration::from_secs(60);
/// The placeholder agent of a sandbox: it waits; the sandbox is envd.
const PLACEHOLDER_AGENT: &str = "exec sleep 2147483647";

/// Why envd did not answer `/health`.
enum Health {
    /// It may yet (it is starting).
    NotYet(String),
    /// It never will: the host cannot reach guest ports.
    Never(String),
}

/// A create, checked.
#[derive(Debug, Clone, Default)]
pub struct SandboxCreate {
    /// The template asked for.
    pub template: String,
    /// Its time from now.
    pub timeout: Duration,
    /// The caller's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Variables every command in it gets.
    pub env_vars: BTreeMap<String, String>,
    /// Pause instead of kill when the time is up.
    pub auto_pause: bool,
    /// Ports other than envd's need the traffic token.
    pub private_traffic: bool,
    /// `allow_internet_access: false`: nothing leaves the guest.
    pub no_internet: bool,
}

fn now() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

fn after(d: Duration) -> Timestamp {
    now() + d
}

/// Checks a sandbox time in seconds.
pub fn check_timeout(secs: u64, what: &str) -> Result<Duration, AppError> {
    let d = Duration::from_secs(secs);
    if secs == 0 || d > MAX_TIMEOUT {
        return Err(AppError::Invalid(vec![format!(
            "{what} must be from 1 to {} seconds (got {secs})",
            MAX_TIMEOUT.as_secs()
        )]));
    }
    Ok(d)
}

impl App {
    /// A sandbox: an environment made by the E2B API that has not ended.
    pub async fn e2b_sandbox(&self, id: &str) -> Result<VmRecord, AppError> {
        let rec = match self.env_record(id).await {
            Ok(r) => Some(r),
            Err(AppError::NotFound { .. } | AppError::Invalid(_)) => None,
            Err(e) => return Err(e),
        };
        rec.filter(|r| r.extras.e2b.is_some() && !r.state.is_terminal())
            .filter(|r| r.state != VmState::Destroying)
            .ok_or_else(|| AppError::not_found("sandbox", id))
    }

    /// Every sandbox that has not ended, by id.
    pub async fn e2b_sandboxes(&self) -> Result<Vec<VmRecord>, AppError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .vm_list(&Default::default(), after.as_deref(), 1000)
                .await?;
            let last = page.last().map(|r| r.id.to_string());
            let n = page.len();
            out.extend(page.into_iter().filter(|r| {
                r.extras.e2b.is_some() && !r.state.is_terminal() && r.state != VmState::Destroying
            }));
            if n < 1000 {
                return Ok(out);
            }
            after = last;
        }
    }

    /// Creates a sandbox and answers once its envd does.
    pub async fn e2b_create(self: &Arc<Self>, c: SandboxCreate) -> Result<VmRecord, AppError> {
        let template = match self.template_get(&c.template).await {
            Ok(_) => Some(c.template.clone()),
            Err(AppError::NotFound { .. }) if c.template == "base" => None,
            Err(AppError::NotFound { .. }) => {
                return Err(AppError::NotFound {
                    kind: "template",
                    id: c.template.clone(),
                })
            }
            Err(e) => return Err(e),
        };
        let req = fuse_types::CreateEnvironment {
            task_id: Some(format!("e2b-{}", &super::random_token()[..20])),
            template,
            agent: Some(fuse_types::AgentOverride {
                command: Some(PLACEHOLDER_AGENT.into()),
                listen: Some(format!("127.0.0.1:{ENVD_PORT}")),
                drain_command: Some(String::new()),
                download_url: Some(String::new()),
                start_window_ms: Some(ENVD_UP.as_millis() as u64),
                ..Default::default()
            }),
            egress: c.no_internet.then(|| fuse_types::EgressSpec {
                deny: Some(vec!["0.0.0.0/0".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e2b = E2bSandbox {
            template_id: c.template.clone(),
            metadata: c.metadata.clone(),
            auto_pause: c.auto_pause,
            private_traffic: c.private_traffic,
        };
        let began = Instant::now();
        let (env, _) = self
            .env_create_with(req, true, Some(after(c.timeout)), Some(e2b))
            .await?;
        let rec = self.env_record(&env.id).await?;
        if rec.state != VmState::Running {
            let why = rec.error.clone().unwrap_or_else(|| rec.state.to_string());
            let _ = self.env_delete(&env.id).await;
            return Err(AppError::Unavailable(format!(
                "the sandbox's environment {} did not start: {why}",
                env.id
            )));
        }
        if let Err(e) = self.e2b_ready(&rec, Some(&c.env_vars)).await {
            let _ = self.env_delete(&env.id).await;
            return Err(e);
        }
        tracing::info!(vm_id = %rec.id, template = %c.template, ms = began.elapsed().as_millis() as u64, "e2b sandbox created");
        Ok(rec)
    }

    /// Configures the sandbox's envd (when `env_vars` is given: a new sandbox) and waits
    /// until it answers `/health` through the host.
    async fn e2b_ready(
        &self,
        rec: &VmRecord,
        env_vars: Option<&BTreeMap<String, String>>,
    ) -> Result<(), AppError> {
        if let Some(vars) = env_vars {
            let token = rec
                .secrets
                .as_ref()
                .map(|s| s.traffic_token.clone())
                .ok_or_else(|| AppError::Internal(format!("{} has no traffic token", rec.id)))?;
            let cfg = serde_json::json!({
                "accessToken": token,
                "envVars": vars,
            });
            let body: crate::provider::runtime::ByteStream =
                Box::pin(futures::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(cfg.to_string()))
                }));
            self.env_file_put(rec.id.as_str(), ENVD_CONFIG, Some(0o600), None, body)
                .await?;
        }
        let deadline = Instant::now() + ENVD_UP;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.envd_health(rec).await {
                Ok(()) => return Ok(()),
                Err(Health::Never(why)) => {
                    return Err(AppError::Unavailable(format!(
                        "sandbox {} cannot be reached on port {ENVD_PORT}: {why}; E2B sandboxes \
                         need a host that runs guests (fc-agent, docs/hosts.md)",
                        rec.id
                    )))
                }
                Err(Health::NotYet(e)) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(AppError::Unavailable(format!(
            "envd in sandbox {} did not answer on port {ENVD_PORT} within {} s ({last}); its \
             image needs fuse-envd beside fuse-guest (tools/build-guest-image.sh installs it)",
            rec.id,
            ENVD_UP.as_secs()
        )))
    }

    /// One `GET /health` of the sandbox's envd, through its host.
    async fn envd_health(&self, rec: &VmRecord) -> Result<(), Health> {
        use http_body_util::Empty;
        let tunnel = match self.proxy_open(rec, ENVD_PORT).await {
            Ok(t) => t,
            // A host that cannot reach guest ports at all (the stub): no point waiting.
            Err(AppError::Host(crate::provider::ProviderError::Unsupported(m))) => {
                return Err(Health::Never(m))
            }
            Err(e) => return Err(Health::NotYet(e.to_string())),
        };
        let not_yet = |e: String| Health::NotYet(e);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tunnel))
                .await
                .map_err(|e| not_yet(e.to_string()))?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/health")
            .header(hyper::header::HOST, "envd")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| not_yet(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .map_err(|_| not_yet("no answer within 5 s".to_owned()))?
            .map_err(|e| not_yet(e.to_string()))?;
        if resp.status() == hyper::StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(not_yet(format!("/health answered {}", resp.status())))
        }
    }

    /// Moves when the sandbox's time is up: to `ends`, or (with `extend_only`) to the
    /// later of `ends` and what it was.
    pub async fn e2b_set_ends(
        &self,
        id: &str,
        ends: Timestamp,
        extend_only: bool,
    ) -> Result<VmRecord, AppError> {
        let mut rec = self.e2b_sandbox(id).await?;
        for _ in 0..5 {
            let cur = rec.extras.ends_at;
            let new = match cur {
                Some(c) if extend_only && c >= ends => return Ok(rec),
                _ => ends,
            };
            let mut extras = rec.extras.clone();
            extras.ends_at = Some(new);
            let change = Change::new(Event::TimeoutChanged)
                .extras(extras)
                .payload(serde_json::json!({
                    "ends_at": new.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                }));
            match self.transition(&rec, change).await {
                Ok(w) => return Ok(w),
                Err(LifecycleError::Stale { .. }) => rec = self.e2b_sandbox(id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Unavailable(format!(
            "sandbox {id} kept changing; retry setting its timeout"
        )))
    }

    /// Sets the sandbox's time to `timeout` from now.
    pub async fn e2b_timeout(&self, id: &str, timeout: Duration) -> Result<VmRecord, AppError> {
        self.e2b_set_ends(id, after(timeout), false).await
    }

    /// Extends the sandbox's time to at least `d` from now.
    pub async fn e2b_refresh(&self, id: &str, d: Duration) -> Result<VmRecord, AppError> {
        self.e2b_set_ends(id, after(d), true).await
    }

    /// Connects to a sandbox: a running one's time is extended to at least `timeout` from
    /// now; a paused one is resumed with that much time. The record, and whether it was
    /// resumed.
    pub async fn e2b_connect(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<(VmRecord, bool), AppError> {
        let mut rec = self.e2b_sandbox(id).await?;
        if rec.state == VmState::Provisioning {
            rec = self.wait_settled(&rec.id).await?;
        }
        match rec.state {
            VmState::Paused => {
                // The new time first, so reconcile cannot end it the moment it runs.
                self.e2b_set_ends(id, after(timeout), false).await?;
                self.env_resume(id).await?;
                let rec = self.e2b_sandbox(id).await?;
                self.e2b_ready(&rec, None).await?;
                Ok((rec, true))
            }
            VmState::Running | VmState::Draining => {
                let rec = self.e2b_set_ends(id, after(timeout), true).await?;
                Ok((rec, false))
            }
            other => Err(AppError::conflict(format!(
                "sandbox {id} is {other}; it cannot be connected to"
            ))),
        }
    }

    /// Resumes a paused sandbox (`409` when it runs).
    pub async fn e2b_resume(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<VmRecord, AppError> {
        let rec = self.e2b_sandbox(id).await?;
        if rec.state != VmState::Paused {
            return Err(AppError::conflict(format!(
                "sandbox {id} is {}; only a paused sandbox can be resumed",
                rec.state
            )));
        }
        self.e2b_connect(id, timeout).await.map(|(r, _)| r)
    }

    /// Pauses a running sandbox (`409` when it is paused already).
    pub async fn e2b_pause(&self, id: &str) -> Result<(), AppError> {
        let rec = self.e2b_sandbox(id).await?;
        if rec.state == VmState::Paused {
            return Err(AppError::conflict(format!(
                "sandbox {id} is already paused"
            )));
        }
        self.env_pause(id).await.map(|_| ())
    }

    /// Kills a sandbox.
    pub async fn e2b_kill(&self, id: &str) -> Result<(), AppError> {
        self.e2b_sandbox(id).await?;
        self.env_delete(id).await
    }
}
