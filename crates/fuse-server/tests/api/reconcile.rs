//! The reconciler, host liveness and quarantine against stub hosts whose faults the tests
//! set (`StubFaults`): each pass is run directly so every step is deterministic.

use crate::harness::{start, start_with, test_flags, Fuse};
use fuse_server::provider::stub::StubFaults;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn pass(f: &Fuse) -> Result<serde_json::Value, fuse_server::background::TaskError> {
    f.run_task("reconcile").await
}

async fn monitor(f: &Fuse) {
    f.running.tasks.run_now("host_monitor").await.unwrap();
}

/// The environment as the API shows it; one that ended is a 404 whose details carry its
/// last state and error, returned here in the same shape.
async fn state(f: &Fuse, id: &str) -> Value {
    let r = f.get(&format!("/v1/environments/{id}")).await;
    if r.status == reqwest::StatusCode::NOT_FOUND {
        return r.body["error"]["details"].clone();
    }
    r.body
}

async fn allocated_vms(f: &Fuse, host: &str) -> u64 {
    f.get(&format!("/v1/hosts/{host}")).await.body["allocated"]["vm_count"]
        .as_u64()
        .unwrap()
}

fn metric(f: &Fuse, line_start: &str) -> f64 {
    let text = f.app().metrics.render();
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_vm_gone_from_its_host_is_failed_and_its_capacity_released() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let a = f.create_running("rc-missing-a").await;
    let b = f.create_running("rc-missing-b").await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert_eq!(allocated_vms(&f, "h1").await, 2);
    assert!(f.stub("h1").forget(a));
    pass(&f).await.unwrap();
    let ea = state(&f, a).await;
    assert_eq!(ea["state"], "failed", "{ea}");
    assert!(
        ea["error"].as_str().unwrap().contains("gone from its host"),
        "{ea}"
    );
    assert_eq!(state(&f, b).await["state"], "running");
    assert_eq!(
        allocated_vms(&f, "h1").await,
        1,
        "capacity of the lost VM returned"
    );
    f.get("/metrics").await;
    assert_eq!(
        metric(&f, "orchestrator_reconcile_vms_missing_provider_total"),
        1.0
    );
    assert_eq!(metric(&f, "orchestrator_fleet_provider_vms"), 1.0);
    // Idempotent: a second pass changes nothing more.
    pass(&f).await.unwrap();
    assert_eq!(allocated_vms(&f, "h1").await, 1);
    assert_eq!(
        metric(&f, "orchestrator_reconcile_vms_missing_provider_total"),
        1.0
    );
}

#[tokio::test]
async fn untracked_vms_are_destroyed_after_the_grace_and_dead_lettered_after_five_failures() {
    let mut flags = test_flags();
    flags.orphan_grace_secs = "60".into();
    let f = start_with(flags).await;
    f.stub_host("h1", 8, 10).await;
    let live = f.create_running("rc-orphan-live").await;
    let stub = f.stub("h1");
    stub.inject("fuse-young-leak", Duration::from_secs(5));
    stub.inject("fuse-old-leak", Duration::from_secs(600));
    stub.inject("other-prefix-vm", Duration::from_secs(600));
    pass(&f).await.unwrap();
    let ids = stub.ids();
    assert!(!ids.contains(&"fuse-old-leak".to_owned()), "{ids:?}");
    assert!(
        ids.contains(&"fuse-young-leak".to_owned()),
        "inside the grace period: {ids:?}"
    );
    assert!(
        ids.contains(&"other-prefix-vm".to_owned()),
        "not ours (another prefix): {ids:?}"
    );
    assert!(ids.contains(&live["id"].as_str().unwrap().to_owned()));
    assert_eq!(
        metric(&f, "orchestrator_reconcile_orphans_destroyed_total"),
        1.0
    );

    // A leak the host refuses to destroy: five attempts, then a dead letter.
    stub.inject("fuse-stubborn", Duration::from_secs(600));
    stub.set_faults(StubFaults {
        destroy: Some("device busy".into()),
        ..StubFaults::default()
    });
    for _ in 0..7 {
        pass(&f).await.unwrap();
    }
    assert!(stub.ids().contains(&"fuse-stubborn".to_owned()));
    assert_eq!(
        metric(&f, "orchestrator_reconcile_orphans_failed_total"),
        5.0
    );
    assert_eq!(
        metric(&f, "orchestrator_reconcile_orphans_dead_lettered_total"),
        1.0
    );
    let dbg = f.get("/v1/debug/background").await;
    assert_eq!(dbg.status, StatusCode::OK, "{}", dbg.text);
    let dl = dbg.body["dead_letters"].as_array().unwrap();
    assert_eq!(dl.len(), 1, "{}", dbg.text);
    assert_eq!(dl[0]["entity_id"], "h1/fuse-stubborn");
    assert_eq!(dl[0]["attempts"], 5);
    assert_eq!(dl[0]["last_error"], "device busy");
    let loops = dbg.body["loops"].as_array().unwrap();
    for name in ["reconcile", "host_monitor", "recovery", "gc"] {
        assert!(
            loops.iter().any(|l| l["name"] == name),
            "{name} missing: {}",
            dbg.text
        );
    }
    let audit = f
        .app()
        .store
        .audit_list("fuse-stubborn")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event_type)
        .collect::<Vec<_>>();
    assert_eq!(audit, vec!["orphan_dead_lettered"]);
    assert_eq!(
        state(&f, live["id"].as_str().unwrap()).await["state"],
        "running"
    );
}

#[tokio::test]
async fn past_max_runtime_is_suspected_once_then_failed_and_destroyed() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "rc-runtime", "spec": {"max_runtime_seconds": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let other = f.create_running("rc-runtime-other").await;
    // Past the limit, by the control plane's clock.
    f.advance(Duration::from_millis(1200));
    pass(&f).await.unwrap();
    assert_eq!(state(&f, &id).await["state"], "running", "only suspected");
    assert_eq!(
        metric(&f, "orchestrator_reconcile_stuck_tasks_suspected_total"),
        1.0
    );
    pass(&f).await.unwrap();
    let e = state(&f, &id).await;
    assert_eq!(e["state"], "failed", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("max_runtime_seconds"),
        "{e}"
    );
    assert!(f.stub("h1").vm(&id).is_none(), "destroyed on its host");
    assert_eq!(allocated_vms(&f, "h1").await, 1);
    assert_eq!(
        metric(&f, "orchestrator_reconcile_stuck_tasks_failed_total"),
        1.0
    );
    assert_eq!(
        state(&f, other["id"].as_str().unwrap()).await["state"],
        "running"
    );
    let audit: Vec<String> = f
        .app()
        .store
        .audit_list(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event_type)
        .collect();
    assert!(
        audit.contains(&"runtime_exceeded_suspected".to_owned()),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_destroying_vm_its_host_no_longer_has_is_reaped() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let e = f.create_running("rc-reap").await;
    let id = e["id"].as_str().unwrap();
    let stub = f.stub("h1");
    stub.set_faults(StubFaults {
        destroy: Some("agent restarting".into()),
        ..StubFaults::default()
    });
    let d = f.delete(&format!("/v1/environments/{id}")).await;
    assert!(d.status.is_success(), "{}", d.text);
    assert_eq!(state(&f, id).await["state"], "destroying");
    // The host lost it meanwhile (and destroys work again).
    stub.set_faults(StubFaults::default());
    stub.forget(id);
    pass(&f).await.unwrap();
    assert_eq!(state(&f, id).await["state"], "destroyed");
    assert_eq!(allocated_vms(&f, "h1").await, 0);
}

#[tokio::test]
async fn failed_or_empty_reads_never_fail_or_destroy_anything() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    f.stub_host("h2", 8, 10).await;
    let mut on = std::collections::HashMap::new();
    for i in 0..4 {
        let e = f.create_running(&format!("rc-reads-{i}")).await;
        on.entry(e["host_id"].as_str().unwrap().to_owned())
            .or_insert_with(Vec::new)
            .push(e["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(on["h1"].len(), 2, "spread");
    let (h1, h2) = (f.stub("h1"), f.stub("h2"));
    // h1 cannot list; h2 lost one VM: h2 is reconciled, h1 untouched, the pass reports h1.
    h1.set_faults(StubFaults {
        list: Some("disk full".into()),
        ..StubFaults::default()
    });
    h1.inject("fuse-h1-leak", Duration::from_secs(600));
    h2.forget(&on["h2"][0]);
    let err = pass(&f).await.unwrap_err().to_string();
    assert!(err.contains("h1") && err.contains("disk full"), "{err}");
    assert_eq!(state(&f, &on["h2"][0]).await["state"], "failed");
    assert_eq!(state(&f, &on["h2"][1]).await["state"], "running");
    for id in &on["h1"] {
        assert_eq!(state(&f, id).await["state"], "running");
    }
    assert!(
        h1.ids().contains(&"fuse-h1-leak".to_owned()),
        "no destroy on a failed read"
    );

    // An empty list while VMs run there: nothing on the first pass.
    h1.set_faults(StubFaults {
        list_empty: true,
        ..StubFaults::default()
    });
    pass(&f).await.unwrap();
    for id in &on["h1"] {
        assert_eq!(state(&f, id).await["state"], "running", "one empty read");
    }
    // The host answers normally again: the suspicion is dropped.
    h1.set_faults(StubFaults::default());
    pass(&f).await.unwrap();
    h1.set_faults(StubFaults {
        list_empty: true,
        ..StubFaults::default()
    });
    pass(&f).await.unwrap();
    for id in &on["h1"] {
        assert_eq!(state(&f, id).await["state"], "running", "not two in a row");
    }
    // Empty twice in a row and each VM confirmed missing: the host really lost them.
    pass(&f).await.unwrap();
    for id in &on["h1"] {
        assert_eq!(state(&f, id).await["state"], "failed");
    }
    assert_eq!(allocated_vms(&f, "h1").await, 0);
}

#[tokio::test]
async fn a_silent_host_loses_its_vms_then_gets_them_back_or_fails_them() {
    let mut flags = test_flags();
    flags.host_down_after_secs = "1".into();
    let f = start_with(flags).await;
    f.stub_host("h1", 8, 10).await;
    let a = f.create_running("rc-lost-a").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = f.create_running("rc-lost-b").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = f.app().events.subscribe();
    let stub = f.stub("h1");
    stub.set_faults(StubFaults {
        unreachable: true,
        ..StubFaults::default()
    });
    monitor(&f).await;
    let h = f.get("/v1/hosts/h1").await.body;
    assert_eq!(h["state"], "active", "silent for less than the limit: {h}");
    f.advance(Duration::from_millis(1100));
    monitor(&f).await;
    let h = f.get("/v1/hosts/h1").await.body;
    assert_eq!(h["state"], "unreachable", "{h}");
    assert!(
        h["state_reason"].as_str().unwrap().contains("no answer"),
        "{h}"
    );
    let mut lost = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
        if ev.state == "lost" {
            lost.push(ev.vm_id.clone());
        }
    }
    lost.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(lost, want);
    f.get("/metrics").await;
    assert_eq!(metric(&f, r#"orchestrator_vms{state="lost"}"#), 2.0);
    assert_eq!(metric(&f, r#"orchestrator_vms{state="running"}"#), 0.0);
    // Still tracked as running on the wire (the REST contract has no `lost` state).
    assert_eq!(state(&f, &a).await["state"], "running");
    // While unreachable, the reconciler leaves it alone.
    pass(&f).await.unwrap();
    assert_eq!(state(&f, &a).await["state"], "running");

    // It comes back having lost `b`.
    stub.forget(&b);
    stub.set_faults(StubFaults::default());
    let mut events = f.app().events.subscribe();
    monitor(&f).await;
    assert_eq!(f.get("/v1/hosts/h1").await.state(), "active");
    let mut back = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        if ev.state == "running" {
            back.push(ev.vm_id.clone());
        }
    }
    assert_eq!(
        back,
        vec![a.clone()],
        "only the VM the host still runs is back"
    );
    // The reconcile pass it triggered fails the one it lost.
    f.eventually("the lost VM failed", || async {
        state(&f, &b).await["state"] == "failed"
    })
    .await;
    assert_eq!(state(&f, &a).await["state"], "running");
    assert_eq!(allocated_vms(&f, "h1").await, 1);
    let h = f.get("/v1/hosts/h1").await.body;
    assert!(h["last_seen"].is_string(), "{h}");
}

#[tokio::test]
async fn repeated_boot_failures_quarantine_a_host_until_an_operator_uncordons_it() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let stub = f.stub("h1");
    stub.set_faults(StubFaults {
        create: Some("guest helper never answered (kernel panic)".into()),
        ..StubFaults::default()
    });
    for i in 0..3 {
        let r = f
            .post("/v1/environments", json!({"task_id": format!("rc-q-{i}")}))
            .await;
        assert_eq!(r.state(), "failed", "{}", r.text);
    }
    let h = f.get("/v1/hosts/h1").await.body;
    assert_eq!(h["state"], "cordoned", "{h}");
    let reason = h["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("quarantined") && reason.contains("3 boot failures"),
        "{h}"
    );
    assert_eq!(
        allocated_vms(&f, "h1").await,
        0,
        "failed boots hold nothing"
    );
    let audit: Vec<String> = f
        .app()
        .store
        .audit_list("h1")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event_type)
        .collect();
    assert!(audit.contains(&"quarantined".to_owned()), "{audit:?}");
    assert_eq!(
        metric(&f, r#"orchestrator_host_quarantines_total{host="h1"}"#),
        1.0
    );
    let r = f
        .post("/v1/environments", json!({"task_id": "rc-q-next"}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);

    stub.set_faults(StubFaults::default());
    let u = f.post("/v1/hosts/h1?action=uncordon", json!({})).await;
    assert!(u.status.is_success(), "{}", u.text);
    assert_eq!(f.get("/v1/hosts/h1").await.state(), "active");
    f.create_running("rc-q-after").await;
}

#[tokio::test]
async fn capacity_errors_and_unreachable_hosts_do_not_count_as_boot_failures() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let stub = f.stub("h1");
    stub.set_faults(StubFaults {
        unreachable: true,
        ..StubFaults::default()
    });
    for i in 0..4 {
        f.post("/v1/environments", json!({"task_id": format!("rc-nq-{i}")}))
            .await;
    }
    assert_eq!(f.get("/v1/hosts/h1").await.state(), "active");
    // Two boot failures, a success, two more: never three in a row.
    for (i, fail) in [true, true, false, true, true].into_iter().enumerate() {
        stub.set_faults(StubFaults {
            create: fail.then(|| "boot failed".to_owned()),
            ..StubFaults::default()
        });
        f.post(
            "/v1/environments",
            json!({"task_id": format!("rc-nq-b{i}")}),
        )
        .await;
    }
    assert_eq!(f.get("/v1/hosts/h1").await.state(), "active");
}
