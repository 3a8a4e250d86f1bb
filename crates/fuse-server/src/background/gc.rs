//! Garbage collection: purges `destroyed` environments older than the retention (so an
//! in-memory store does not grow without bound) and deletes snapshots past their
//! retention that have no children.

use super::{BackgroundTask, TaskError};
use crate::app::App;
use async_trait::async_trait;
use std::sync::Arc;

/// The garbage collector (no memory between passes).
#[derive(Debug, Default)]
pub struct Gc;

#[async_trait]
impl BackgroundTask for Gc {
    fn name(&self) -> &'static str {
        "gc"
    }

    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError> {
        let before = app.clock.now() - app.config.terminal_retention;
        let purged = app.store.vm_purge_terminal(before).await?;
        let snaps = app.snapshot_gc().await?;
        if purged > 0 || snaps > 0 {
            tracing::info!(purged, snapshots_deleted = snaps, "gc pass");
        }
        Ok(serde_json::json!({"purged": purged, "snapshots_deleted": snaps}))
    }
}
