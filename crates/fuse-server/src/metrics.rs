//! Prometheus metrics (DESIGN §8), namespace `orchestrator`. Counters and histograms are
//! updated where things happen; gauges that describe the fleet are computed from the store
//! at scrape time, so they cannot drift.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the control plane.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route,method,code}`.
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{route,method}`.
    pub http_duration: HistogramVec,
    /// `http_requests_in_flight`.
    pub http_in_flight: IntGauge,
    /// `fleet_tracked_vms`: environments not yet destroyed.
    pub fleet_tracked_vms: IntGauge,
    /// `fleet_provider_vms`: VMs the hosts reported at the last reconcile.
    pub fleet_provider_vms: IntGauge,
    /// `vms{state}`.
    pub vms_by_state: IntGaugeVec,
    /// `provision_duration_seconds{outcome}`.
    pub provision_duration: HistogramVec,
    /// `provisions_in_flight`: provisions this replica is running now.
    pub provisions_in_flight: IntGauge,
    /// `provision_step_duration_seconds{step}`: each step of a guest setup, as its host
    /// timed it (boot, files, startup_script, start_agent).
    pub provision_step_duration: HistogramVec,
    /// `hosts{state}`.
    pub hosts_by_state: IntGaugeVec,
    /// `host_capacity{host,resource}`.
    pub host_capacity: IntGaugeVec,
    /// `host_allocated{host,resource}`.
    pub host_allocated: IntGaugeVec,
    /// `provision_failures_total{step}`.
    pub provision_failures: IntCounterVec,
    /// `events_dropped_total`: SSE subscribers that lagged.
    pub events_lagged: IntCounter,
    /// `background_runs_total{task,outcome}`.
    pub background_runs: IntCounterVec,
    /// `background_last_duration_seconds{task}`.
    pub background_duration: HistogramVec,
    /// `snapshot_duration_seconds`.
    pub snapshot_duration: Histogram,
    /// `pause_duration_seconds{op}`: pause, resume, migrate (host call and records).
    pub pause_duration: HistogramVec,
    /// `pool_members{template,state}`: warm-pool members, `ready` (paused, drawable) or
    /// `warming`.
    pub pool_members: IntGaugeVec,
    /// `pool_draws_total{template,result}`: creates from a template that drew a warm VM
    /// (`hit`) or restored one (`miss`).
    pub pool_draws: IntCounterVec,
    /// `background_running{task}`: 1 while a pass runs.
    pub background_running: IntGaugeVec,
    /// `background_last_success_timestamp_seconds{task}`.
    pub background_last_ok: IntGaugeVec,
    /// `reconcile_cycles_total`.
    pub reconcile_cycles: IntCounter,
    /// `reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `reconcile_orphans_destroyed_total`: untracked VMs removed from their host.
    pub orphans_destroyed: IntCounter,
    /// `reconcile_orphans_failed_total`: attempts to remove an untracked VM that failed.
    pub orphans_failed: IntCounter,
    /// `reconcile_orphans_dead_lettered_total`: untracked VMs given up on after 5 attempts.
    pub orphans_dead_lettered: IntCounter,
    /// `reconcile_stuck_tasks_suspected_total`: VMs first seen past their maximum runtime.
    pub stuck_suspected: IntCounter,
    /// `reconcile_stuck_tasks_failed_total`: VMs failed and destroyed for their runtime.
    pub stuck_failed: IntCounter,
    /// `reconcile_vms_missing_provider_total`: tracked VMs their host no longer has.
    pub vms_missing_provider: IntCounter,
    /// `reconcile_host_errors_total{host}`: hosts whose list could not be read.
    pub reconcile_host_errors: IntCounterVec,
    /// `reconcile_allocation_repairs_total`: hosts whose allocation was corrected.
    pub allocation_repairs: IntCounter,
    /// `reconcile_dead_letters`: work given up on, awaiting an operator.
    pub dead_letters: IntGauge,
    /// `host_quarantines_total{host}`: automatic cordons after repeated boot failures.
    pub host_quarantines: IntCounterVec,
    /// `host_lost_vms_total`: VMs reported `lost` because their host stopped answering.
    pub lost_vms: IntCounter,
    /// `http_connections_open`: client connections being served.
    pub http_connections_open: IntGauge,
    /// `http_connections_refused_total`: connections closed at once because
    /// `ORCH_MAX_CONNECTIONS` were open.
    pub http_connections_refused: IntCounter,
    /// `http_connection_timeouts_total{kind}`: connections closed by a limit: `header` (a
    /// request head, or the TLS handshake, too slow), `idle` (keep-alive with no request),
    /// `body` (a request body too slow).
    pub http_connection_timeouts: IntCounterVec,
}

const NS: &str = "orchestrator";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NS))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let hist_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace(NS)
                    .buckets(buckets),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            h
        };
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let slow = vec![
            0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        let snapshot_duration = Histogram::with_opts(
            HistogramOpts::new("snapshot_duration_seconds", "Time to take a snapshot.")
                .namespace(NS)
                .buckets(slow.clone()),
        )
        .unwrap_or_else(|e| panic!("metric snapshot_duration_seconds: {e}"));
        registry
            .register(Box::new(snapshot_duration.clone()))
            .unwrap_or_else(|e| panic!("metric snapshot_duration_seconds: {e}"));
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Time of one reconcile pass.")
                .namespace(NS)
                .buckets(vec![
                    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
                ]),
        )
        .unwrap_or_else(|e| panic!("metric reconcile_duration_seconds: {e}"));
        registry
            .register(Box::new(reconcile_duration.clone()))
            .unwrap_or_else(|e| panic!("metric reconcile_duration_seconds: {e}"));
        Metrics {
            background_running: gauge_vec(
                "background_running",
                "1 while a pass of the background task runs.",
                &["task"],
            ),
            background_last_ok: gauge_vec(
                "background_last_success_timestamp_seconds",
                "Unix time of the background task's last successful pass.",
                &["task"],
            ),
            reconcile_cycles: counter("reconcile_cycles_total", "Reconcile passes."),
            reconcile_duration,
            orphans_destroyed: counter(
                "reconcile_orphans_destroyed_total",
                "VMs found on a host without a live environment, and destroyed.",
            ),
            orphans_failed: counter(
                "reconcile_orphans_failed_total",
                "Failed attempts to destroy an untracked VM.",
            ),
            orphans_dead_lettered: counter(
                "reconcile_orphans_dead_lettered_total",
                "Untracked VMs given up on after 5 failed destroys (dead letters).",
            ),
            stuck_suspected: counter(
                "reconcile_stuck_tasks_suspected_total",
                "Environments seen running past their max_runtime_seconds (first pass).",
            ),
            stuck_failed: counter(
                "reconcile_stuck_tasks_failed_total",
                "Environments failed and destroyed past their max_runtime_seconds.",
            ),
            vms_missing_provider: counter(
                "reconcile_vms_missing_provider_total",
                "Tracked environments their host no longer has (failed).",
            ),
            reconcile_host_errors: counter_vec(
                "reconcile_host_errors_total",
                "Reconcile reads of a host that failed (nothing was changed for it).",
                &["host"],
            ),
            allocation_repairs: counter(
                "reconcile_allocation_repairs_total",
                "Hosts whose allocation differed from their environments' reservations, corrected.",
            ),
            dead_letters: gauge(
                "reconcile_dead_letters",
                "Work the reconciler gave up on, awaiting an operator.",
            ),
            host_quarantines: counter_vec(
                "host_quarantines_total",
                "Hosts cordoned automatically after consecutive boot failures.",
                &["host"],
            ),
            lost_vms: counter(
                "host_lost_vms_total",
                "Environments reported lost because their host stopped answering.",
            ),
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route, method and status code.",
                &["route", "method", "code"],
            ),
            http_duration: hist_vec(
                "http_request_duration_seconds",
                "HTTP request latency.",
                &["route", "method"],
                fast,
            ),
            http_in_flight: gauge("http_requests_in_flight", "HTTP requests being served."),
            http_connections_open: gauge(
                "http_connections_open",
                "Client connections being served.",
            ),
            http_connections_refused: counter(
                "http_connections_refused_total",
                "Connections closed at once because ORCH_MAX_CONNECTIONS were open.",
            ),
            http_connection_timeouts: counter_vec(
                "http_connection_timeouts_total",
                "Connections closed by a time limit (header, idle, body).",
                &["kind"],
            ),
            fleet_tracked_vms: gauge(
                "fleet_tracked_vms",
                "Environments tracked by the control plane (not destroyed).",
            ),
            fleet_provider_vms: gauge(
                "fleet_provider_vms",
                "VMs the hosts reported at the last reconcile pass.",
            ),
            vms_by_state: gauge_vec("vms", "Environments by state.", &["state"]),
            provision_duration: hist_vec(
                "provision_duration_seconds",
                "Time from create to running (or failed).",
                &["outcome"],
                slow.clone(),
            ),
            provisions_in_flight: gauge(
                "provisions_in_flight",
                "Provisions this replica is running now.",
            ),
            provision_step_duration: hist_vec(
                "provision_step_duration_seconds",
                "Time of each guest setup step on its host.",
                &["step"],
                slow.clone(),
            ),
            hosts_by_state: gauge_vec("hosts", "Hosts by state.", &["state"]),
            host_capacity: gauge_vec(
                "host_capacity",
                "Host capacity by resource.",
                &["host", "resource"],
            ),
            host_allocated: gauge_vec(
                "host_allocated",
                "Host allocation by resource.",
                &["host", "resource"],
            ),
            provision_failures: counter_vec(
                "provision_failures_total",
                "Failed provisions by step.",
                &["step"],
            ),
            events_lagged: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "events_lagged_total",
                        "SSE subscribers that fell behind and re-read state.",
                    )
                    .namespace(NS),
                )
                .unwrap_or_else(|e| panic!("metric events_lagged_total: {e}"));
                registry
                    .register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("metric events_lagged_total: {e}"));
                c
            },
            background_runs: counter_vec(
                "background_runs_total",
                "Background task passes by task and outcome (ok, error, panic).",
                &["task", "outcome"],
            ),
            background_duration: hist_vec(
                "background_duration_seconds",
                "Background task pass duration.",
                &["task"],
                vec![0.001, 0.01, 0.1, 1.0, 10.0, 60.0],
            ),
            snapshot_duration,
            pause_duration: hist_vec(
                "pause_duration_seconds",
                "Time of a pause, resume or migration.",
                &["op"],
                slow,
            ),
            pool_members: gauge_vec(
                "pool_members",
                "Warm-pool members per template, ready or warming.",
                &["template", "state"],
            ),
            pool_draws: counter_vec(
                "pool_draws_total",
                "Creates from a template, by whether a warm VM was drawn.",
                &["template", "result"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
