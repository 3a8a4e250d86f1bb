//! Background tasks. Each is a [`BackgroundTask`] that owns its state (what it remembers
//! between passes) and is activated by the [`Driver`]: once at start, then every period,
//! when poked through its [`Activator`], and on request ([`Driver::run_now`], which waits
//! for a fresh pass and returns its outcome). The driver never runs two passes of a task at
//! once, catches, logs and counts a panic without stopping the schedule, skips the pass of
//! a leader-only task on a replica that is not the leader, and stops on shutdown (a pass in
//! progress is abandoned there: every pass is made of idempotent steps whose state is
//! persisted before it is acted upon, so the next start finishes the work). The last
//! status of every task is served at `GET /v1/debug/background` and in `/metrics`.
//!
//! Tasks call into `app` (domain operations, the lifecycle); `app` knows nothing of them.

pub mod gc;
pub mod host_monitor;
pub mod pools;
pub mod reconcile_plan;
pub mod reconciler;
pub mod recovery;

use crate::app::error::AppError;
use crate::app::App;
use async_trait::async_trait;
use fuse_store::StoreError;
use futures::FutureExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The state store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A domain operation failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// Some hosts could not be reconciled (the others were).
    #[error("{failed} of {of} host(s) could not be reconciled: {detail}")]
    Hosts {
        /// Hosts that failed.
        failed: usize,
        /// Hosts in the pass.
        of: usize,
        /// Each host and why.
        detail: String,
    },
    /// The pass panicked (caught; the schedule goes on).
    #[error("the pass panicked: {0}")]
    Panicked(String),
    /// The task is not running (the process is shutting down).
    #[error("the task is not running (shutting down)")]
    Stopped,
    /// No task has that name.
    #[error("no background task named {0:?}")]
    Unknown(String),
}

/// A background task: one pass per activation, with state of its own kept across passes.
#[async_trait]
pub trait BackgroundTask: Send + 'static {
    /// Its name in statuses, metrics and logs.
    fn name(&self) -> &'static str;
    /// One pass; returns a summary of what it did (shown in `/v1/debug/background`).
    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError>;
}

/// Every environment matching `filter`, read page by page.
pub async fn all_matching(
    app: &App,
    filter: &fuse_store::VmFilter,
) -> Result<Vec<fuse_store::VmRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app.store.vm_list(filter, after.as_deref(), 500).await?;
        let done = page.len() < 500;
        after = page.last().map(|r| r.id.to_string());
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Wakes one task so it runs now (coalesced with a pending wake-up).
#[derive(Debug, Clone, Default)]
pub struct Activator(Arc<Notify>);

impl Activator {
    /// Asks for a pass as soon as possible.
    pub fn activate(&self) {
        self.0.notify_one();
    }
}

/// What a task last did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoopStatus {
    /// Task name.
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
    /// What the last successful pass did.
    pub last_summary: Option<serde_json::Value>,
    /// When the last pass started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_started_at: Option<fuse_types::Timestamp>,
    /// How long the last pass took.
    pub last_duration_ms: Option<u64>,
    /// When a pass last succeeded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ok_at: Option<fuse_types::Timestamp>,
}

type Reply = oneshot::Sender<Result<serde_json::Value, TaskError>>;

struct Entry {
    status: LoopStatus,
    activator: Activator,
    requests: mpsc::Sender<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// Runs the background tasks of this process and keeps their statuses.
#[derive(Default)]
pub struct Driver {
    tasks: Mutex<BTreeMap<&'static str, Entry>>,
}

impl Driver {
    /// A driver with no tasks.
    pub fn new() -> Arc<Driver> {
        Arc::new(Driver::default())
    }

    /// Starts `task`: a pass at once, then every `period`, when activated and on request.
    /// A `leader_only` task skips its pass unless this replica holds the leadership.
    pub fn register<T: BackgroundTask>(
        self: &Arc<Self>,
        app: Arc<App>,
        task: T,
        period: Duration,
        leader_only: bool,
    ) -> Activator {
        let name = task.name();
        let activator = Activator::default();
        let (tx, rx) = mpsc::channel(16);
        self.tasks.lock().insert(
            name,
            Entry {
                status: LoopStatus {
                    name,
                    period_seconds: period.as_secs(),
                    leader_only,
                    running: false,
                    passes: 0,
                    panics: 0,
                    last_outcome: None,
                    last_error: None,
                    last_summary: None,
                    last_started_at: None,
                    last_duration_ms: None,
                    last_ok_at: None,
                },
                activator: activator.clone(),
                requests: tx,
                handle: None,
            },
        );
        let me = self.clone();
        let wake = activator.0.clone();
        let handle = tokio::spawn(async move {
            me.run_task(app, Box::new(task), period, leader_only, wake, rx)
                .await
        });
        if let Some(e) = self.tasks.lock().get_mut(name) {
            e.handle = Some(handle);
        }
        activator
    }

    async fn run_task(
        &self,
        app: Arc<App>,
        mut task: Box<dyn BackgroundTask>,
        period: Duration,
        leader_only: bool,
        wake: Arc<Notify>,
        mut requests: mpsc::Receiver<Reply>,
    ) {
        let name = task.name();
        let mut reply: Option<Reply> = None;
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
            self.update(name, |s| {
                s.running = lead;
                s.last_started_at = Some(fuse_types::now());
            });
            app.metrics
                .background_running
                .with_label_values(&[name])
                .set(i64::from(lead));
            let outcome = if lead {
                let run = AssertUnwindSafe(task.activate(&app)).catch_unwind();
                tokio::select! {
                    r = run => r.map_err(|panic| {
                        panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into())
                    }),
                    _ = app.shutdown.cancelled() => {
                        tracing::info!(task = name, "shutdown: background pass abandoned");
                        return;
                    }
                }
            } else {
                Ok(Ok(serde_json::json!({"skipped": "not the leader"})))
            };
            let took = start.elapsed();
            let (label, result) = match outcome {
                _ if !lead => (
                    "skipped",
                    Ok(serde_json::json!({"skipped": "not the leader"})),
                ),
                Ok(Ok(v)) => ("ok", Ok(v)),
                Ok(Err(e)) => {
                    tracing::warn!(task = name, error = %e, "background pass failed");
                    ("error", Err(e))
                }
                Err(msg) => {
                    tracing::error!(task = name, panic = %msg, "background pass panicked; continuing on schedule");
                    ("panic", Err(TaskError::Panicked(msg)))
                }
            };
            self.update(name, |s| {
                s.running = false;
                s.passes += 1;
                s.last_outcome = Some(label);
                s.last_duration_ms = Some(took.as_millis() as u64);
                match (&result, label) {
                    (_, "panic") => s.panics += 1,
                    (Ok(v), "ok") => {
                        s.last_ok_at = Some(fuse_types::now());
                        s.last_summary = Some(v.clone());
                    }
                    _ => {}
                }
                if label != "skipped" {
                    s.last_error = result.as_ref().err().map(|e| e.to_string());
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
            if let Some(r) = reply.take() {
                let _ = r.send(result);
            }
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = wake.notified() => {}
                r = requests.recv() => reply = r,
            }
        }
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LoopStatus)) {
        if let Some(e) = self.tasks.lock().get_mut(name) {
            f(&mut e.status);
        }
    }

    /// The activator of task `name`.
    pub fn activator(&self, name: &str) -> Option<Activator> {
        self.tasks.lock().get(name).map(|e| e.activator.clone())
    }

    /// Asks task `name` for a pass now (no-op if there is no such task).
    pub fn activate(&self, name: &str) {
        if let Some(a) = self.activator(name) {
            a.activate();
        }
    }

    /// Runs a fresh pass of task `name` (after the one in progress, if any) and returns
    /// its outcome.
    pub async fn run_now(&self, name: &str) -> Result<serde_json::Value, TaskError> {
        let tx = self
            .tasks
            .lock()
            .get(name)
            .map(|e| e.requests.clone())
            .ok_or_else(|| TaskError::Unknown(name.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(reply).await.map_err(|_| TaskError::Stopped)?;
        rx.await.map_err(|_| TaskError::Stopped)?
    }

    /// Status of every task, by name.
    pub fn statuses(&self) -> Vec<LoopStatus> {
        self.tasks
            .lock()
            .values()
            .map(|e| e.status.clone())
            .collect()
    }

    /// Status of one task.
    pub fn status(&self, name: &str) -> Option<LoopStatus> {
        self.tasks.lock().get(name).map(|e| e.status.clone())
    }

    /// Waits (up to `limit`) until every task has stopped; call after shutdown.
    pub async fn join(&self, limit: Duration) -> bool {
        let handles: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .values_mut()
            .filter_map(|e| e.handle.take())
            .collect();
        tokio::time::timeout(limit, futures::future::join_all(handles))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Flags};
    use crate::provider::Providers;
    use futures::future::BoxFuture;
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

    type PassFn =
        Box<dyn FnMut(usize) -> BoxFuture<'static, Result<serde_json::Value, TaskError>> + Send>;

    /// A task whose pass is a closure, given the pass number (0-based).
    struct FnTask {
        name: &'static str,
        n: usize,
        pass: PassFn,
    }

    #[async_trait]
    impl BackgroundTask for FnTask {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn activate(&mut self, _: &Arc<App>) -> Result<serde_json::Value, TaskError> {
            let i = self.n;
            self.n += 1;
            (self.pass)(i).await
        }
    }

    fn counting(name: &'static str, n: Arc<AtomicUsize>) -> FnTask {
        FnTask {
            name,
            n: 0,
            pass: Box::new(move |i| {
                n.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { Ok(serde_json::json!({"pass": i})) })
            }),
        }
    }

    /// Lets the runtime run everything that is ready (time is paused in these tests, so
    /// nothing advances the clock but the test itself).
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_start_on_its_period_when_activated_and_on_request() {
        let app = app();
        let driver = Driver::new();
        let n = Arc::new(AtomicUsize::new(0));
        let activator = driver.register(
            app.clone(),
            counting("t", n.clone()),
            Duration::from_secs(3600),
            false,
        );
        settle().await;
        assert_eq!(n.load(Ordering::SeqCst), 1, "a pass at start");
        tokio::time::advance(Duration::from_secs(3599)).await;
        settle().await;
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "no second pass before the period"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(n.load(Ordering::SeqCst), 2, "a pass on the period");
        activator.activate();
        settle().await;
        assert_eq!(n.load(Ordering::SeqCst), 3, "a pass when activated");
        driver.activate("t");
        settle().await;
        assert_eq!(n.load(Ordering::SeqCst), 4, "activated by name");
        let summary = driver.run_now("t").await.unwrap();
        assert_eq!(
            summary,
            serde_json::json!({"pass": 4}),
            "run_now returns its own pass"
        );
        let s = driver.status("t").unwrap();
        assert_eq!((s.passes, s.last_outcome), (5, Some("ok")));
        assert_eq!(s.last_summary, Some(serde_json::json!({"pass": 4})));
        assert!(s.last_ok_at.is_some());
        assert!(matches!(
            driver.run_now("nope").await,
            Err(TaskError::Unknown(_))
        ));
        app.shutdown.cancel();
        assert!(driver.join(Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn never_two_passes_at_once() {
        let app = app();
        let driver = Driver::new();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let (i2, m2, p2) = (inside.clone(), most.clone(), passes.clone());
        let task = FnTask {
            name: "slow",
            n: 0,
            pass: Box::new(move |_| {
                let (inside, most, passes) = (i2.clone(), m2.clone(), p2.clone());
                Box::pin(async move {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    passes.fetch_add(1, Ordering::SeqCst);
                    Ok(serde_json::Value::Null)
                })
            }),
        };
        let a = driver.register(app.clone(), task, Duration::from_millis(1), false);
        for _ in 0..50 {
            a.activate();
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
        }
        // Requests queue behind the pass in progress; each gets its own pass.
        let (r1, r2) = tokio::join!(driver.run_now("slow"), driver.run_now("slow"));
        assert!(r1.is_ok() && r2.is_ok());
        assert!(passes.load(Ordering::SeqCst) >= 3);
        assert_eq!(most.load(Ordering::SeqCst), 1, "passes overlapped");
        app.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_counted_and_the_schedule_goes_on() {
        let app = app();
        let driver = Driver::new();
        let task = FnTask {
            name: "boom",
            n: 0,
            pass: Box::new(|i| {
                Box::pin(async move {
                    match i {
                        0 => panic!("first pass explodes"),
                        1 => Err(TaskError::Hosts {
                            failed: 1,
                            of: 2,
                            detail: "h: down".into(),
                        }),
                        _ => Ok(serde_json::Value::Null),
                    }
                })
            }),
        };
        driver.register(app.clone(), task, Duration::from_secs(10), false);
        settle().await;
        let s = driver.status("boom").unwrap();
        assert_eq!((s.passes, s.panics, s.last_outcome), (1, 1, Some("panic")));
        assert!(s.last_error.unwrap().contains("first pass explodes"));
        let second = driver.run_now("boom").await.unwrap_err();
        assert_eq!(
            second.to_string(),
            "1 of 2 host(s) could not be reconciled: h: down"
        );
        assert!(driver.run_now("boom").await.is_ok(), "the schedule went on");
        let text = app.metrics.render();
        for outcome in ["panic", "error", "ok"] {
            let line = format!(
                r#"orchestrator_background_runs_total{{outcome="{outcome}",task="boom"}} 1"#
            );
            assert!(text.contains(&line), "{line} not in {text}");
        }
        app.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_task_even_mid_pass() {
        let app = app();
        let driver = Driver::new();
        let started = Arc::new(AtomicUsize::new(0));
        let s2 = started.clone();
        let long = FnTask {
            name: "long",
            n: 0,
            pass: Box::new(move |_| {
                s2.fetch_add(1, Ordering::SeqCst);
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(serde_json::Value::Null)
                })
            }),
        };
        driver.register(app.clone(), long, Duration::from_secs(1), false);
        driver.register(
            app.clone(),
            counting("idle", Arc::new(AtomicUsize::new(0))),
            Duration::from_secs(3600),
            false,
        );
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        app.shutdown.cancel();
        assert!(
            driver.join(Duration::from_secs(5)).await,
            "tasks did not stop on shutdown"
        );
        assert!(matches!(
            driver.run_now("idle").await,
            Err(TaskError::Stopped)
        ));
    }
}
