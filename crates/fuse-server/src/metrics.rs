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
        Metrics {
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
                slow,
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
