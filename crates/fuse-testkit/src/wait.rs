//! Waiting for a condition with a deadline: the only way tests wait.

use std::time::{Duration, Instant};

/// Polls `f` until it holds; panics naming `what` when `limit` passes first.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
