//! Live state events (DESIGN §5). Every persisted state change is published here after the
//! store accepted it; SSE streams subscribe and filter by VM. With a shared store (Postgres)
//! each event is also sent to the other replicas (NOTIFY) and theirs are received here, so an
//! SSE client on any replica sees every change. A subscriber that falls behind re-reads the
//! VM from the store instead of losing its final state.

use fuse_store::VmRecord;
use fuse_types::StateEvent;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// The event bus of one control-plane process.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<StateEvent>>,
    origin: String,
    forward: Option<mpsc::Sender<String>>,
}

/// What travels between replicas.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    event: StateEvent,
}

/// A fresh event id: 32 hex characters.
pub fn event_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl EventHub {
    /// A bus for this process only.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        EventHub {
            tx,
            origin: String::new(),
            forward: None,
        }
    }

    /// A bus that also forwards every local event (as JSON) to `forward`, tagged with
    /// `origin` so this replica can ignore its own events when they come back.
    pub fn with_forward(origin: &str, forward: mpsc::Sender<String>) -> Self {
        let mut h = Self::new();
        h.origin = origin.to_owned();
        h.forward = Some(forward);
        h
    }

    /// The event describing `rec` now.
    pub fn event_for(rec: &VmRecord) -> StateEvent {
        Self::event_with_state(rec, rec.state.as_str())
    }

    /// An event for `rec` with an explicit state word (e.g. `lost`).
    pub fn event_with_state(rec: &VmRecord, state: &str) -> StateEvent {
        StateEvent {
            id: event_id(),
            event: "state".into(),
            vm_id: rec.id.to_string(),
            state: state.to_owned(),
            url: rec.url.clone(),
            // NOTIFY payloads are limited to 8000 bytes.
            error: rec.error.as_ref().map(|e| e.chars().take(2000).collect()),
            updated_at: rec.updated_at,
            health: None,
            pool: rec.extras.pool.clone(),
        }
    }

    /// Publishes the current state of `rec`.
    pub fn publish(&self, rec: &VmRecord) {
        self.publish_event(Self::event_for(rec));
    }

    /// Publishes a prepared event locally and to the other replicas.
    pub fn publish_event(&self, ev: StateEvent) {
        if let Some(f) = &self.forward {
            let env = Envelope {
                origin: self.origin.clone(),
                event: ev.clone(),
            };
            if let Ok(s) = serde_json::to_string(&env) {
                // Full means the database is slow or away; local subscribers still get it.
                let _ = f.try_send(s);
            }
        }
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Delivers an event received from another replica (ignores this replica's own).
    pub fn deliver_remote(&self, payload: &str) {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(env) if env.origin != self.origin => {
                tracing::debug!(vm_id = %env.event.vm_id, state = %env.event.state, "event from another replica");
                let _ = self.tx.send(Arc::new(env.event));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed event from another replica"),
        }
    }

    /// Subscribes to every event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StateEvent>> {
        self.tx.subscribe()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}
