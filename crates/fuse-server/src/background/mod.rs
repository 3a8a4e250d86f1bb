//! Background loops. Each runs on its period and when poked, never two passes at once,
//! catches and counts a panic without stopping its schedule, and stops on shutdown.

pub mod gc;
pub mod host_monitor;
pub mod recovery;

use crate::app::App;
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A handle to poke a loop so it runs now.
#[derive(Debug, Clone, Default)]
pub struct Poke(Arc<Notify>);

impl Poke {
    /// Asks for a pass as soon as possible (coalesced with a pending one).
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// Starts a loop named `name` that runs `pass` every `period` and when poked. A
/// `leader_only` loop skips its pass unless this replica holds the leadership.
pub fn spawn_loop<F, Fut>(
    app: Arc<App>,
    name: &'static str,
    period: Duration,
    leader_only: bool,
    pass: F,
) -> Poke
where
    F: Fn(Arc<App>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let poke = Poke::default();
    let notify = poke.0.clone();
    tokio::spawn(async move {
        loop {
            let start = Instant::now();
            let lead = if leader_only {
                app.store.leader_acquire().await.unwrap_or(false)
            } else {
                true
            };
            let outcome = if lead {
                AssertUnwindSafe(pass(app.clone())).catch_unwind().await
            } else {
                Ok(Ok(()))
            };
            let label = match outcome {
                _ if !lead => "skipped",
                Ok(Ok(())) => "ok",
                Ok(Err(e)) => {
                    tracing::warn!(task = name, error = %e, "background pass failed");
                    "error"
                }
                Err(_) => {
                    tracing::error!(task = name, "background pass panicked; continuing");
                    "panic"
                }
            };
            app.metrics
                .background_runs
                .with_label_values(&[name, label])
                .inc();
            app.metrics
                .background_duration
                .with_label_values(&[name])
                .observe(start.elapsed().as_secs_f64());
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = notify.notified() => {}
            }
        }
    });
    poke
}
