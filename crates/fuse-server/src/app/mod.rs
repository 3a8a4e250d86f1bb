//! Domain operations, one file per resource. Handlers in `http/` stay thin and call these;
//! background tasks call them too. Every environment transition goes through
//! [`lifecycle`] (persist with audit and capacity in one step, then publish), and every
//! operation fails with the transport-neutral [`error::AppError`]. `App` holds what the
//! domain needs (configuration, store, providers, events, metrics) and nothing of the
//! background tasks, which own their own state.

pub mod api_keys;
pub mod clock;
pub mod credentials;
pub mod e2b;
pub mod environments;
pub mod error;
pub mod host_addr;
pub mod hosts;
pub mod lifecycle;
pub mod logs;
pub mod paging;
pub mod pause;
pub mod ports;
pub mod runtime;
pub mod snapshots;
pub mod templates;
pub(crate) mod validate;

use crate::config::Config;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::profile::Profile;
use crate::provider::Providers;
use fuse_store::StateStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use validate::redact;

/// The control plane's shared state.
pub struct App {
    /// Configuration.
    pub config: Config,
    /// State.
    pub store: Arc<dyn StateStore>,
    /// Host providers.
    pub providers: Providers,
    /// Live events.
    pub events: EventHub,
    /// Metrics.
    pub metrics: Metrics,
    /// The agent profile.
    pub profile: &'static Profile,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// This process's replica id (owner of the provisions it starts).
    pub replica_id: String,
    /// Whether events from other replicas are being received (always true for a private
    /// store); `/ready` waits for it.
    pub relay_ready: std::sync::atomic::AtomicBool,
    /// Consecutive boot failures per host seen by this replica (quarantine).
    pub boot_failures: parking_lot::Mutex<std::collections::HashMap<String, u32>>,
    /// "Now" for decisions on elapsed time (tests move it instead of sleeping).
    pub clock: clock::Clock,
    /// When this replica last wrote each API key's `last_used_at`.
    pub key_touches: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Serializes egress rule changes within this replica (host first, then the store).
    pub egress_lock: tokio::sync::Mutex<()>,
    /// Wakes the warm-pool loop (set when the background tasks start).
    pub pools: std::sync::OnceLock<crate::background::Activator>,
    /// Templates whose warm VM failed to restore, left alone until then.
    pub pool_backoff: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl App {
    /// Wires the parts together. With a shared store, events are forwarded to the other
    /// replicas through it (the forwarding task starts with [`App::start_event_relay`]).
    pub fn new(config: Config, store: Arc<dyn StateStore>, providers: Providers) -> Arc<App> {
        Self::build(config, store, providers).0
    }

    fn build(
        config: Config,
        store: Arc<dyn StateStore>,
        providers: Providers,
    ) -> (Arc<App>, tokio::sync::mpsc::Receiver<String>) {
        let profile = Profile::by_name(&config.agent_profile)
            .or_else(|| Profile::by_name("fused"))
            .unwrap_or_else(|| unreachable!("the fused profile exists"));
        let replica_id = format!("replica-{}", &random_token()[..16]);
        let store_is_private = store.kind() == "memory";
        let (ftx, frx) = tokio::sync::mpsc::channel(4096);
        let events = if store.kind() == "memory" {
            EventHub::new()
        } else {
            EventHub::with_forward(&replica_id, ftx)
        };
        let app = Arc::new(App {
            config,
            store,
            providers,
            events,
            metrics: Metrics::new(),
            profile,
            shutdown: CancellationToken::new(),
            replica_id,
            relay_ready: std::sync::atomic::AtomicBool::new(store_is_private),
            boot_failures: parking_lot::Mutex::default(),
            clock: clock::Clock::default(),
            key_touches: parking_lot::Mutex::default(),
            egress_lock: tokio::sync::Mutex::new(()),
            pools: std::sync::OnceLock::new(),
            pool_backoff: parking_lot::Mutex::default(),
        });
        (app, frx)
    }

    /// Builds the app and starts relaying events to and from the other replicas.
    pub fn new_with_relay(
        config: Config,
        store: Arc<dyn StateStore>,
        providers: Providers,
    ) -> Arc<App> {
        let (app, forward) = Self::build(config, store, providers);
        app.clone().start_event_relay(forward);
        app
    }

    fn start_event_relay(self: Arc<Self>, mut forward: tokio::sync::mpsc::Receiver<String>) {
        let out = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while forward.recv_many(&mut batch, 256).await > 0 {
                tracing::debug!(n = batch.len(), "sending events to other replicas");
                if let Err(e) = out.store.notify(&batch).await {
                    tracing::debug!(error = %e, n = batch.len(), "could not send events to other replicas");
                }
                batch.clear();
            }
        });
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(100);
            loop {
                if self.shutdown.is_cancelled() {
                    return;
                }
                match self.store.listen().await {
                    Ok(None) => return,
                    Ok(Some(mut rx)) => {
                        delay = std::time::Duration::from_millis(100);
                        self.relay_ready
                            .store(true, std::sync::atomic::Ordering::Release);
                        while let Some(p) = rx.recv().await {
                            self.events.deliver_remote(&p);
                        }
                        self.relay_ready
                            .store(false, std::sync::atomic::Ordering::Release);
                    }
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(1));
                    }
                }
            }
        });
    }
}

/// 32 random bytes as 64 hex characters.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}
