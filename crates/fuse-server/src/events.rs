//! Live state events (DESIGN §5). Every persisted state change is published here after the
//! store accepted it; SSE streams subscribe and filter by VM. A subscriber that falls behind
//! re-reads the VM from the store instead of losing its final state.

use fuse_store::VmRecord;
use fuse_types::StateEvent;
use rand::RngCore;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The event bus of one control-plane process.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<StateEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh event id: 32 hex characters.
pub fn event_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl EventHub {
    /// A bus that buffers this many events per slow subscriber.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        EventHub { tx }
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
            error: rec.error.clone(),
            updated_at: rec.updated_at,
        }
    }

    /// Publishes the current state of `rec`.
    pub fn publish(&self, rec: &VmRecord) {
        self.publish_event(Self::event_for(rec));
    }

    /// Publishes a prepared event.
    pub fn publish_event(&self, ev: StateEvent) {
        // No subscriber is fine.
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Subscribes to every event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StateEvent>> {
        self.tx.subscribe()
    }
}
