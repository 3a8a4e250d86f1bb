//! Garbage collection: purges `destroyed` environments older than the retention (so an
//! in-memory store does not grow without bound) and deletes snapshots past their
//! retention that have no children.

use crate::app::App;
use std::sync::Arc;

/// One pass.
pub async fn pass(app: Arc<App>) -> Result<(), String> {
    let before = fuse_types::now() - app.config.terminal_retention;
    let purged = app
        .store
        .vm_purge_terminal(before)
        .await
        .map_err(|e| e.to_string())?;
    let snaps = app.snapshot_gc().await.map_err(|e| e.message)?;
    if purged > 0 || snaps > 0 {
        tracing::info!(purged, snapshots_deleted = snaps, "gc pass");
    }
    Ok(())
}
