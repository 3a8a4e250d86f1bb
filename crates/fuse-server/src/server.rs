//! Wiring, startup and graceful shutdown. [`start`] binds (port 0 in tests), spawns the
//! background loops and serves until the app's shutdown token is cancelled; in-flight
//! requests then finish before [`Running::wait`] returns. A store that can never work with
//! this configuration (an encryption key that does not fit the data) stops the server by
//! itself: [`Running::wait`] then answers [`ServerError::Store`].

use crate::app::App;
use crate::background::{self, Driver};
use crate::config::{Config, DefaultProvider};
use crate::provider::{hostagent::HostAgentClient, Provider, Providers};
use anyhow::Context as _;
use fuse_store::crypto::Cipher;
use fuse_store::{redact_url, MemoryStore, PgOptions, PgStore, StateStore, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why a server stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state store refused this configuration for good (wrong or missing
    /// `TOKEN_ENCRYPTION_KEY`); retrying cannot help.
    #[error("the state store cannot be used with this configuration")]
    Store(#[source] StoreError),
    /// The serving task panicked or was cancelled.
    #[error("the server task")]
    Task(#[source] tokio::task::JoinError),
}

impl ServerError {
    /// The process exit code: 2 for a configuration problem (as a bad flag), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Store(_) => 2,
            ServerError::Task(_) => 1,
        }
    }
}

/// Where the store bootstrap leaves a permanent failure for [`Running::wait`].
type Fatal = Arc<std::sync::OnceLock<StoreError>>;

/// A started server.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state (tests reach the store and stub providers through it).
    pub app: Arc<App>,
    /// The background tasks (`host_monitor`, `gc`, `recovery`, `reconcile`): activate
    /// them, run a pass now, read their statuses.
    pub tasks: Arc<Driver>,
    join: JoinHandle<()>,
    fatal: Fatal,
}

impl Running {
    /// Asks the server to stop.
    pub fn shutdown(&self) {
        self.app.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.join.await.map_err(ServerError::Task)?;
        if !self.tasks.join(Duration::from_secs(10)).await {
            tracing::warn!("background tasks did not stop within 10 s");
        }
        if let Some(e) = Arc::into_inner(self.fatal).and_then(std::sync::OnceLock::into_inner) {
            return Err(ServerError::Store(e));
        }
        Ok(())
    }
}

/// Builds the state store named by the configuration (not yet connected).
pub async fn build_store(config: &Config) -> anyhow::Result<Arc<dyn StateStore>> {
    match &config.database_url {
        None => Ok(Arc::new(MemoryStore::new())),
        Some(url) => {
            let cipher = config.encryption_key.as_ref().map(Cipher::new);
            let store =
                PgStore::new(PgOptions::new(url, cipher)).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// Prepares the store (migrations, key check) with back-off until it answers, then
/// registers this replica. The server serves meanwhile; `/ready` says 503 until this is
/// done. A permanent refusal (the encryption key does not fit the data) is not retried: it
/// is left in `fatal` and the server shuts down.
async fn store_bootstrap(app: Arc<App>, tasks: Arc<Driver>, fatal: Fatal) {
    let url = app
        .config
        .database_url
        .as_deref()
        .map(redact_url)
        .unwrap_or_else(|| "memory".into());
    let mut delay = Duration::from_millis(250);
    loop {
        match app.store.prepare().await {
            Ok(msg) => {
                tracing::info!(store = %url, "{msg}");
                break;
            }
            Err(StoreError::Key(e)) => {
                tracing::error!(store = %url, "fuse cannot start: {e}");
                let _ = fatal.set(StoreError::Key(e));
                app.shutdown.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(store = %url, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "state store not reachable; retrying");
            }
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    loop {
        match app.store.replica_register(&app.replica_id).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "registering this replica; retrying"),
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tasks.activate("recovery");
    tasks.activate("reconcile");
}

/// Builds the providers: the default one and the per-host registry.
pub fn build_providers(config: &Config) -> Providers {
    match &config.default_provider {
        DefaultProvider::Stub => Providers::new_stub(),
        DefaultProvider::HostAgent { url, token } => {
            let p: Arc<dyn Provider> = Arc::new(HostAgentClient::new(url, token));
            Providers::new(p, false)
        }
    }
}

/// Builds everything and starts serving on `config.listen`.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let store = build_store(&config).await?;
    let providers = build_providers(&config);
    let app = App::new_with_relay(config, store, providers);
    start_with(app).await
}

/// Starts serving an already-built app.
pub async fn start_with(app: Arc<App>) -> anyhow::Result<Running> {
    let cfg = &app.config;
    let listener = crate::serve::bind(cfg.listen, cfg.max_connections)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Host-based endpoint URLs name the port bound (a listen port of 0 picks one).
    let _ = cfg.proxy.bound_port.set(addr.port());
    let tasks = Driver::new();
    let reconcile = tasks.register(
        app.clone(),
        background::reconciler::Reconciler::default(),
        cfg.reconcile_period,
        true,
    );
    tasks.register(
        app.clone(),
        background::host_monitor::HostMonitor::new(reconcile),
        cfg.host_poll,
        true,
    );
    tasks.register(app.clone(), background::gc::Gc, cfg.gc_period, true);
    let pools = tasks.register(app.clone(), background::pools::Pools, cfg.pool_period, true);
    let _ = app.pools.set(pools);
    tasks.register(
        app.clone(),
        background::recovery::Recovery::default(),
        cfg.recovery_period,
        true,
    );
    let fatal = Fatal::default();
    tokio::spawn(store_bootstrap(app.clone(), tasks.clone(), fatal.clone()));
    let router = crate::http::router(app.clone(), tasks.clone());
    let proxy_tls = match (&cfg.proxy.domain, &cfg.proxy.tls) {
        (Some(d), Some((c, k))) => Some((d.as_str(), c.as_path(), k.as_path())),
        _ => None,
    };
    let api_tls = cfg.tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = match (api_tls, proxy_tls) {
        (None, None) => None,
        (api, proxy) => Some(crate::serve::tls_acceptor_for(api, proxy).with_context(|| {
            let mut files: Vec<String> = Vec::new();
            for (c, k) in api.into_iter().chain(proxy.map(|(_, c, k)| (c, k))) {
                files.push(format!(
                    "certificate {} and key {}",
                    c.display(),
                    k.display()
                ));
            }
            format!("loading TLS {}", files.join(", "))
        })?),
    };
    let limits = crate::serve::Limits::of(cfg);
    crate::serve::ensure_fd_limit(limits.max_connections);
    let join = tokio::spawn(crate::serve::serve(
        listener,
        router,
        tls,
        limits,
        app.metrics.clone(),
        app.shutdown.clone(),
    ));
    Ok(Running {
        addr,
        app,
        tasks,
        join,
        fatal,
    })
}

/// Logs a one-line summary of what this process runs with.
pub fn log_startup(app: &App, addr: SocketAddr) {
    let c = &app.config;
    let provider = match &c.default_provider {
        DefaultProvider::Stub => {
            "registered hosts; until one is registered, the in-memory stub (runs nothing)"
                .to_owned()
        }
        DefaultProvider::HostAgent { url, .. } => format!("default host agent at {url}"),
    };
    tracing::info!(
        listen = %addr,
        store = app.store.kind(),
        provider = %provider,
        tls = c.tls.is_some(),
        profile = %c.agent_profile,
        policy = %c.policy,
        "fuse started: store={}, provider={}",
        app.store.kind(),
        provider
    );
    if c.auth_token.is_none() {
        tracing::warn!("ORCH_AUTH_TOKEN is not set: /v1 accepts requests without a token");
    }
    if c.encryption_key.is_none() {
        tracing::warn!(
            "TOKEN_ENCRYPTION_KEY is not set: secrets are kept in memory only and not persisted"
        );
    }
}
