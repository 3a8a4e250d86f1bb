//! The warm-pool loop: keeps every template's pool at its size (see `app::templates`).
//! Leader-only, so two replicas never fill the same pool twice; woken at once when a pool
//! changes or a member is drawn.

use super::{BackgroundTask, TaskError};
use crate::app::App;
use async_trait::async_trait;
use std::sync::Arc;

/// The pool loop (no memory between passes; back-offs live on the app).
#[derive(Debug, Default)]
pub struct Pools;

#[async_trait]
impl BackgroundTask for Pools {
    fn name(&self) -> &'static str {
        "pools"
    }

    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError> {
        let (created, destroyed, failed) = app.pool_pass().await?;
        Ok(serde_json::json!({"created": created, "destroyed": destroyed, "failed": failed}))
    }
}
