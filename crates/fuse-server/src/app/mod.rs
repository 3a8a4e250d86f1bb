//! Domain operations, one file per resource. Handlers in `http/` stay thin and call these.
//! Invariant: every state change is persisted through the store (generation-checked) before
//! the provider is asked to act on it, and published to the event hub after.

pub mod credentials;
pub mod environments;
pub mod hosts;
pub mod snapshots;
mod validate;

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
}

impl App {
    /// Wires the parts together.
    pub fn new(config: Config, store: Arc<dyn StateStore>, providers: Providers) -> Arc<App> {
        let profile = Profile::by_name(&config.agent_profile)
            .or_else(|| Profile::by_name("fused"))
            .unwrap_or_else(|| unreachable!("the fused profile exists"));
        Arc::new(App {
            config,
            store,
            providers,
            events: EventHub::new(),
            metrics: Metrics::new(),
            profile,
            shutdown: CancellationToken::new(),
            replica_id: format!("replica-{}", &random_token()[..16]),
        })
    }
}

/// 32 random bytes as 64 hex characters.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}
