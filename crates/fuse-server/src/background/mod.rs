//! Background loops. Each runs on its period and when poked, never two passes at once,
//! catches and counts a panic without stopping its schedule, and stops on shutdown.

pub mod gc;
pub mod host_monitor;

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

/// Starts a loop named `name` that runs `pass` every `period` and when poked.
pub fn spawn_loop<F, Fut>(app: Arc<App>, name: &'static str, period: Duration, pass: F) -> Poke
where
    F: Fn(Arc<App>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let poke = Poke::default();
    let notify = poke.0.clone();
    tokio::spawn(async move {
        loop {
            let start = Instant::now();
            let outcome = AssertUnwindSafe(pass(app.clone())).catch_unwind().await;
            let label = match outcome {
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
