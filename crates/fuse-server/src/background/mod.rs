//! Background loops. Each runs on its period and when poked, never two passes at once,
//! catches, logs and counts a panic without stopping its schedule, and stops on shutdown
//! (a pass in progress is abandoned there: every pass is made of idempotent steps whose
//! state is persisted before it is acted upon, so the next start finishes the work). The
//! last status of every loop is kept in a [`Registry`] (served at `GET /v1/debug/background`)
//! and in `/metrics`.

pub mod gc;
pub mod host_monitor;
pub mod reconcile;
pub mod recovery;

use crate::app::App;
use futures::FutureExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Every environment matching `filter`, read page by page.
pub async fn all_matching(
    app: &App,
    filter: &fuse_store::VmFilter,
) -> Result<Vec<fuse_store::VmRecord>, String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app
            .store
            .vm_list(filter, after.as_deref(), 500)
            .await
            .map_err(|e| e.to_string())?;
        let done = page.len() < 500;
        after = page.last().map(|r| r.id.to_string());
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// A handle to poke a loop so it runs now.
#[derive(Debug, Clone, Default)]
pub struct Poke(Arc<Notify>);

impl Poke {
    /// Asks for a pass as soon as possible (coalesced with a pending one).
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// What a loop last did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoopStatus {
    /// Loop name.
    pub name: &'static str,
    /// Seconds between passes.
    pub period_seconds: u64,
    /// Whether it runs only on the leader replica.
    pub leader_only: bool,
    /// Whether a pass is running now.
    pub running: bool,
    /// Passes finished (any outcome).
    pub passes: u64,
    /// Passes that panicked.
    pub panics: u64,
    /// `ok`, `error`, `panic` or `skipped` (not the leader); `null` before the first pass.
    pub last_outcome: Option<&'static str>,
    /// The last error or panic message.
    pub last_error: Option<String>,
    /// When the last pass started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_started_at: Option<fuse_types::Timestamp>,
    /// How long the last pass took.
    pub last_duration_ms: Option<u64>,
    /// When a pass last succeeded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ok_at: Option<fuse_types::Timestamp>,
}

#[derive(Default)]
struct Entry {
    status: Option<LoopStatus>,
    poke: Poke,
    handle: Option<JoinHandle<()>>,
}

/// Every loop of this process: its poke handle, its last status and its task.
#[derive(Default)]
pub struct Registry {
    loops: Mutex<BTreeMap<&'static str, Entry>>,
}

impl Registry {
    /// Pokes the loop `name` (no-op if it does not exist).
    pub fn poke(&self, name: &str) {
        if let Some(e) = self.loops.lock().get(name) {
            e.poke.poke();
        }
    }

    /// Status of every started loop, by name.
    pub fn statuses(&self) -> Vec<LoopStatus> {
        self.loops
            .lock()
            .values()
            .filter_map(|e| e.status.clone())
            .collect()
    }

    /// Status of one loop.
    pub fn status(&self, name: &str) -> Option<LoopStatus> {
        self.loops.lock().get(name).and_then(|e| e.status.clone())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LoopStatus)) {
        if let Some(s) = self
            .loops
            .lock()
            .get_mut(name)
            .and_then(|e| e.status.as_mut())
        {
            f(s);
        }
    }

    /// Waits (up to `limit`) until every loop task has stopped; call after shutdown.
    pub async fn join(&self, limit: Duration) -> bool {
        let handles: Vec<JoinHandle<()>> = self
            .loops
            .lock()
            .values_mut()
            .filter_map(|e| e.handle.take())
            .collect();
        tokio::time::timeout(limit, futures::future::join_all(handles))
            .await
            .is_ok()
    }
}

/// Starts a loop named `name` that runs `pass` at once, then every `period` and when poked.
/// A `leader_only` loop skips its pass unless this replica holds the leadership.
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
    let poke = {
        let mut loops = app.loops.loops.lock();
        let e = loops.entry(name).or_default();
        e.status = Some(LoopStatus {
            name,
            period_seconds: period.as_secs(),
            leader_only,
            running: false,
            passes: 0,
            panics: 0,
            last_outcome: None,
            last_error: None,
            last_started_at: None,
            last_duration_ms: None,
            last_ok_at: None,
        });
        e.poke.clone()
    };
    let notify = poke.0.clone();
    let task_app = app.clone();
    let handle = tokio::spawn(async move {
        let app = task_app;
        loop {
            if app.shutdown.is_cancelled() {
                return;
            }
            let lead = if leader_only {
                app.store.leader_acquire().await.unwrap_or(false)
            } else {
                true
            };
            let start = Instant::now();
            app.loops.update(name, |s| {
                s.running = lead;
                s.last_started_at = Some(fuse_types::now());
            });
            app.metrics
                .background_running
                .with_label_values(&[name])
                .set(i64::from(lead));
            let outcome = if lead {
                let run = AssertUnwindSafe(pass(app.clone())).catch_unwind();
                tokio::select! {
                    r = run => Some(r),
                    _ = app.shutdown.cancelled() => None,
                }
            } else {
                Some(Ok(Ok(())))
            };
            let Some(outcome) = outcome else {
                tracing::info!(task = name, "shutdown: background pass abandoned");
                return;
            };
            let (label, error) = match outcome {
                _ if !lead => ("skipped", None),
                Ok(Ok(())) => ("ok", None),
                Ok(Err(e)) => {
                    tracing::warn!(task = name, error = %e, "background pass failed");
                    ("error", Some(e))
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    tracing::error!(task = name, panic = %msg, "background pass panicked; continuing on schedule");
                    ("panic", Some(msg))
                }
            };
            let took = start.elapsed();
            app.loops.update(name, |s| {
                s.running = false;
                s.passes += 1;
                s.last_outcome = Some(label);
                s.last_duration_ms = Some(took.as_millis() as u64);
                if label == "panic" {
                    s.panics += 1;
                }
                if label == "ok" {
                    s.last_ok_at = Some(fuse_types::now());
                }
                if label != "skipped" {
                    s.last_error = error;
                }
            });
            let m = &app.metrics;
            m.background_running.with_label_values(&[name]).set(0);
            m.background_runs.with_label_values(&[name, label]).inc();
            if lead {
                m.background_duration
                    .with_label_values(&[name])
                    .observe(took.as_secs_f64());
            }
            if label == "ok" {
                m.background_last_ok
                    .with_label_values(&[name])
                    .set(fuse_types::now().unix_timestamp());
            }
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = notify.notified() => {}
            }
        }
    });
    if let Some(e) = app.loops.loops.lock().get_mut(name) {
        e.handle = Some(handle);
    }
    poke
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Flags};
    use crate::provider::Providers;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn app() -> Arc<App> {
        use clap::Parser;
        let flags = Flags::try_parse_from(["fuse", "--listen", "127.0.0.1:0"]).expect("flags");
        let cfg = Config::from_flags(flags, |_| None).expect("config");
        App::new(
            cfg,
            Arc::new(fuse_store::MemoryStore::new()),
            Providers::new_stub(),
        )
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn runs_at_start_on_its_period_and_when_poked() {
        let app = app();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let poke = spawn_loop(
            app.clone(),
            "t",
            Duration::from_secs(3600),
            false,
            move |_| {
                let n = n2.clone();
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        );
        until("the first pass", || n.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "no second pass before the period"
        );
        poke.poke();
        until("the poked pass", || n.load(Ordering::SeqCst) == 2).await;
        app.loops.poke("t");
        until("the pass poked by name", || n.load(Ordering::SeqCst) == 3).await;
        let s = app.loops.status("t").unwrap();
        assert_eq!((s.passes, s.last_outcome), (3, Some("ok")));
        assert!(s.last_ok_at.is_some());

        let app2 = self::app();
        let m = Arc::new(AtomicUsize::new(0));
        let m2 = m.clone();
        spawn_loop(
            app2.clone(),
            "p",
            Duration::from_millis(20),
            false,
            move |_| {
                let m = m2.clone();
                async move {
                    m.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        );
        until("periodic passes", || m.load(Ordering::SeqCst) >= 4).await;
        app.shutdown.cancel();
        app2.shutdown.cancel();
    }

    #[tokio::test]
    async fn never_two_passes_at_once() {
        let app = app();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let (i2, m2, p2) = (inside.clone(), most.clone(), passes.clone());
        let poke = spawn_loop(
            app.clone(),
            "slow",
            Duration::from_millis(1),
            false,
            move |_| {
                let (inside, most, passes) = (i2.clone(), m2.clone(), p2.clone());
                async move {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    passes.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        );
        for _ in 0..50 {
            poke.poke();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        until("several passes", || passes.load(Ordering::SeqCst) >= 3).await;
        assert_eq!(most.load(Ordering::SeqCst), 1, "passes overlapped");
        app.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_panic_is_counted_and_the_schedule_goes_on() {
        let app = app();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        spawn_loop(
            app.clone(),
            "boom",
            Duration::from_millis(10),
            false,
            move |_| {
                let n = n2.clone();
                async move {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    match i {
                        0 => panic!("first pass explodes"),
                        1 => Err("second pass fails".to_owned()),
                        _ => Ok(()),
                    }
                }
            },
        );
        until("passes after the panic", || n.load(Ordering::SeqCst) >= 3).await;
        until("the status of the third pass", || {
            app.loops.status("boom").is_some_and(|s| s.passes >= 3)
        })
        .await;
        let s = app.loops.status("boom").unwrap();
        assert_eq!(s.panics, 1);
        let text = app.metrics.render();
        assert!(
            text.contains(r#"orchestrator_background_runs_total{outcome="panic",task="boom"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"orchestrator_background_runs_total{outcome="error",task="boom"} 1"#),
            "{text}"
        );
        app.shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_stops_every_loop_even_mid_pass() {
        let app = app();
        let started = Arc::new(AtomicUsize::new(0));
        let s2 = started.clone();
        spawn_loop(
            app.clone(),
            "long",
            Duration::from_secs(1),
            false,
            move |_| {
                let s = s2.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
            },
        );
        spawn_loop(
            app.clone(),
            "idle",
            Duration::from_secs(3600),
            false,
            |_| async { Ok(()) },
        );
        until("the long pass", || started.load(Ordering::SeqCst) == 1).await;
        app.shutdown.cancel();
        assert!(
            app.loops.join(Duration::from_secs(5)).await,
            "loops did not stop on shutdown"
        );
    }
}
