//! The conformance suite every [`StateStore`] backend must pass: one check per contract,
//! each a public function taking a fresh, empty store, declared as one test per check for a
//! backend by [`crate::conformance_suite!`]. It checks every trait method and the
//! concurrency contracts (placement and moves never over-commit, release exactly once).
//! Reservation moves, templates, warm pools and artifact accounting are in `fast_start`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::*;
use fuse_types::{now, AgentSpec, SnapshotState, Spec, TaskId};
use std::sync::Arc;

mod fast_start;
pub use fast_start::*;

/// A VM record in `provisioning` for task `task`.
pub fn vm(task: &str, cpus: u32, ram_mb: u64) -> VmRecord {
    let task_id = TaskId::parse(task).unwrap();
    let at = now();
    VmRecord {
        id: VmId::for_task("fuse-", &task_id),
        task_id,
        state: VmState::Provisioning,
        generation: 1,
        host_id: None,
        reserved: None,
        url: String::new(),
        spec: Spec {
            cpus,
            ram_mb,
            storage_gb: 1,
            max_runtime_seconds: 7200,
            ..Spec::default()
        },
        request_hash: format!("hash-{task}"),
        agent: AgentSpec::default(),
        error: None,
        restored_from: None,
        created_at: at,
        updated_at: at,
        running_since: None,
        owner: "replica-1".into(),
        secrets: None,
        extras: Default::default(),
    }
}

/// A host registration.
pub fn host(id: &str, cpus: u32, vm_count: u32) -> HostUpsert {
    HostUpsert {
        id: HostId::parse(id).unwrap(),
        url: format!("http://{id}.invalid:8090"),
        token: "t".into(),
        region: "r1".into(),
        backend: "process".into(),
        arch: String::new(),
        labels: Default::default(),
        declared: Resources::default(),
        capacity: Resources {
            cpus,
            ram_mb: u64::from(cpus) * 1024,
            storage_gb: 100,
            vm_count,
        },
        initial_state: HostState::Active,
        initial_reason: None,
        seen: true,
    }
}

/// Declares one `#[tokio::test]` per conformance check, so each check passes or fails on
/// its own. `$factory` is an async expression, evaluated afresh for every check, yielding
/// `Option<(store, guard)>`: `None` skips the check (the backend's prerequisite is missing;
/// `fuse-testkit` makes that a failure under CI), and the guard lives until the check ends
/// (e.g. the check's own test database).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@plain $factory; vm_create_get_and_idempotency, vm_update_generation_and_transitions, writes_that_keep_the_state_are_audited, vm_list_filters_and_pages, place_and_release, hosts_upsert_keeps_allocation_and_delete_refuses_busy, snapshots_children_and_lifecycle, purge_terminal, replicas_and_leadership, create_placed_and_release_with_a_transition, begin_destroy_from_any_state, dead_letters_count_and_clear, repair_allocation_agrees_with_reservations, api_keys_by_hash_revoke_and_touch, placement_follows_pin_arch_and_labels, host_labels_backend_arch_round_trip, snapshot_fields_and_filters, vm_extras_round_trip, move_pause_resume_and_migrate_keep_allocation_exact, move_that_does_not_fit_changes_nothing, templates_insert_pool_and_delete, pool_members_are_hidden_from_listings, snapshot_artifacts_fill_a_host);
        $crate::conformance_suite!(@shared $factory; concurrent_place_never_overcommits, concurrent_release_is_exactly_once, concurrent_moves_never_overcommit);
    };
    (@plain $factory:expr; $($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let Some((store, _guard)) = $factory.await else { return };
            $crate::conformance::$name(store).await;
        }
    )*};
    (@shared $factory:expr; $($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let Some((store, _guard)) = $factory.await else { return };
            $crate::conformance::$name(std::sync::Arc::new(store)).await;
        }
    )*};
}

/// Conformance check (see the module docs).
pub async fn begin_destroy_from_any_state<S: StateStore>(s: S) {
    let r = vm("bd", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let (d, changed) = s.vm_begin_destroy(&r.id).await.unwrap();
    assert!(changed);
    assert_eq!(d.state, VmState::Destroying);
    let (again, changed) = s.vm_begin_destroy(&r.id).await.unwrap();
    assert!(!changed, "already destroying");
    assert_eq!(again.generation, d.generation);
    let audit = s.audit_list(r.id.as_str()).await.unwrap();
    assert_eq!(audit.last().unwrap().payload["to"], "destroying");
    assert_eq!(audit.last().unwrap().payload["reason"], "delete requested");
    assert!(matches!(
        s.vm_begin_destroy(&VmId::parse("fuse-none").unwrap()).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Conformance check (see the module docs).
pub async fn create_placed_and_release_with_a_transition<S: StateStore>(s: S) {
    s.host_upsert(host("h", 4, 1)).await.unwrap();
    let (c, np) = s
        .vm_create_placed(vm("one", 2, 512), Policy::Spread, None)
        .await
        .unwrap();
    assert!(np.is_none());
    let one = match c {
        VmCreated::Created(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(one.host_id.as_ref().unwrap().as_str(), "h");
    assert_eq!(one.reserved.unwrap().cpus, 2);
    // The host is full: the record is stored failed with the reasons.
    let (c, np) = s
        .vm_create_placed(vm("two", 1, 512), Policy::Spread, None)
        .await
        .unwrap();
    assert_eq!(np.unwrap().short_vm_slots, 1);
    match c {
        VmCreated::Created(r) => {
            assert_eq!(r.state, VmState::Failed);
            assert!(r.error.unwrap().contains("vm limit"));
            assert!(r.host_id.is_none());
        }
        other => panic!("{other:?}"),
    }
    // Same id again: exists (not replaced while live).
    let (c, _) = s
        .vm_create_placed(vm("one", 2, 512), Policy::Spread, None)
        .await
        .unwrap();
    assert!(matches!(c, VmCreated::Exists(_)));
    // A transition that also releases: once.
    let d = s
        .vm_update(
            &one.id,
            one.generation,
            VmPatch::state(VmState::Destroying, "t"),
        )
        .await
        .unwrap();
    let done = s
        .vm_update(
            &one.id,
            d.generation,
            VmPatch {
                release: true,
                ..VmPatch::state(VmState::Destroyed, "t")
            },
        )
        .await
        .unwrap();
    assert!(done.reserved.is_none());
    assert!(!s.vm_release(&one.id).await.unwrap(), "already released");
    let h = s
        .host_get(&HostId::parse("h").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.allocated, Resources::default());
    let kinds: Vec<String> = s
        .audit_list(one.id.as_str())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event_type)
        .collect();
    assert_eq!(kinds, ["created", "placed", "state", "state", "released"]);
}

/// Conformance check (see the module docs).
pub async fn replicas_and_leadership<S: StateStore>(s: S) {
    s.replica_register("replica-a").await.unwrap();
    assert!(s.replica_alive("replica-a").await.unwrap());
    assert!(!s.replica_alive("replica-never").await.unwrap());
    assert!(s.leader_acquire().await.unwrap());
    assert!(s.leader_acquire().await.unwrap(), "a leader stays leader");
    s.notify(&["{}".to_string()]).await.unwrap();
}

/// Conformance check (see the module docs).
pub async fn vm_create_get_and_idempotency<S: StateStore>(s: S) {
    let r = vm("a", 1, 512);
    assert!(matches!(
        s.vm_create(r.clone()).await.unwrap(),
        VmCreated::Created(_)
    ));
    let got = s.vm_get(&r.id).await.unwrap().unwrap();
    assert_eq!(got.task_id, r.task_id);
    assert_eq!(got.spec, r.spec);
    assert_eq!(got.request_hash, r.request_hash);
    // A second create with the same id returns the existing row untouched.
    let mut other = vm("a", 2, 512);
    other.request_hash = "different".into();
    match s.vm_create(other.clone()).await.unwrap() {
        VmCreated::Exists(e) => assert_eq!(e.request_hash, r.request_hash),
        c => panic!("expected Exists, got {c:?}"),
    }
    assert!(s
        .vm_get(&VmId::parse("fuse-zzz").unwrap())
        .await
        .unwrap()
        .is_none());
    // A destroyed record is replaced by a new incarnation.
    let g = got.generation;
    let d = s
        .vm_update(&r.id, g, VmPatch::state(VmState::Destroying, "test"))
        .await
        .unwrap();
    s.vm_update(
        &r.id,
        d.generation,
        VmPatch::state(VmState::Destroyed, "test"),
    )
    .await
    .unwrap();
    let destroyed_gen = s.vm_get(&r.id).await.unwrap().unwrap().generation;
    match s.vm_create(other).await.unwrap() {
        VmCreated::Created(c) => {
            assert_eq!(c.request_hash, "different");
            assert!(
                c.generation > destroyed_gen,
                "a new incarnation never reuses a generation"
            );
        }
        c => panic!("expected Created, got {c:?}"),
    }
    // A writer holding the old incarnation's generation cannot touch the new one.
    let err = s
        .vm_update(
            &r.id,
            destroyed_gen,
            VmPatch::state(VmState::Running, "stale"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale { .. }), "{err:?}");
    // A failed record that was never placed is replaced too; a placed one is not.
    let u = vm("unplaced", 1, 512);
    s.vm_create(u.clone()).await.unwrap();
    s.vm_update(
        &u.id,
        u.generation,
        VmPatch::state(VmState::Failed, "no capacity"),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.vm_create(u.clone()).await.unwrap(),
        VmCreated::Created(_)
    ));
    let audit = s.audit_list(r.id.as_str()).await.unwrap();
    let kinds: Vec<&str> = audit.iter().map(|a| a.event_type.as_str()).collect();
    assert_eq!(kinds, ["created", "state", "state", "created"]);
}

/// Conformance check (see the module docs).
pub async fn vm_update_generation_and_transitions<S: StateStore>(s: S) {
    let r = vm("b", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let g0 = s.vm_get(&r.id).await.unwrap().unwrap().generation;
    // Illegal transition.
    let err = s
        .vm_update(&r.id, g0, VmPatch::state(VmState::Destroyed, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition { .. }), "{err:?}");
    // Legal transition bumps the generation and sets running_since.
    let up = s
        .vm_update(
            &r.id,
            g0,
            VmPatch {
                url: Some("http://x".into()),
                ..VmPatch::state(VmState::Running, "ok")
            },
        )
        .await
        .unwrap();
    assert_eq!(up.state, VmState::Running);
    assert_eq!(up.url, "http://x");
    assert!(up.generation > g0);
    assert!(up.running_since.is_some());
    // Stale generation.
    let err = s
        .vm_update(&r.id, g0, VmPatch::state(VmState::Draining, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale { .. }), "{err:?}");
    // Non-state patch: no audit event, error set and cleared.
    let e = s
        .vm_update(
            &r.id,
            up.generation,
            VmPatch {
                error: Some(Some("boom".into())),
                ..VmPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.error.as_deref(), Some("boom"));
    let audit = s.audit_list(r.id.as_str()).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].payload["from"], "provisioning");
    assert_eq!(audit[1].payload["to"], "running");
    assert_eq!(audit[1].payload["reason"], "ok");
    // Unknown VM.
    let err = s
        .vm_update(&VmId::parse("nope").unwrap(), 1, VmPatch::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
}

/// Conformance check (see the module docs).
pub async fn writes_that_keep_the_state_are_audited<S: StateStore>(s: S) {
    let r = vm("keep", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let patch = VmPatch {
        error: Some(Some("drain command exited with 7".into())),
        reason: Some("drain failed".into()),
        audit: Some("drain_failed".into()),
        ..VmPatch::default()
    };
    let after = s.vm_update(&r.id, r.generation, patch).await.unwrap();
    assert_eq!(after.state, VmState::Provisioning, "the state is kept");
    assert_eq!(after.generation, r.generation + 1);
    let audit = s.audit_list(r.id.as_str()).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.event_type, "drain_failed");
    assert_eq!(last.payload["reason"], "drain failed");
    // A state change writes its own `state` event, not the write's.
    let patch = VmPatch {
        audit: Some("ignored".into()),
        ..VmPatch::state(VmState::Running, "provisioned")
    };
    s.vm_update(&r.id, after.generation, patch).await.unwrap();
    let audit = s.audit_list(r.id.as_str()).await.unwrap();
    assert_eq!(audit.last().unwrap().event_type, "state");
    assert!(audit.iter().all(|a| a.event_type != "ignored"));
    // A plain write appends nothing.
    let n = audit.len();
    let cur = s.vm_get(&r.id).await.unwrap().unwrap();
    s.vm_update(
        &r.id,
        cur.generation,
        VmPatch {
            url: Some("http://x".into()),
            ..VmPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.audit_list(r.id.as_str()).await.unwrap().len(), n);
}

/// Conformance check (see the module docs).
pub async fn vm_list_filters_and_pages<S: StateStore>(s: S) {
    for i in 0..7 {
        s.vm_create(vm(&format!("t{i}"), 1, 512)).await.unwrap();
    }
    let r = s
        .vm_get(&VmId::parse("fuse-t3").unwrap())
        .await
        .unwrap()
        .unwrap();
    s.vm_update(&r.id, r.generation, VmPatch::state(VmState::Running, "x"))
        .await
        .unwrap();
    let all = s.vm_list(&VmFilter::default(), None, 100).await.unwrap();
    assert_eq!(all.len(), 7);
    let ids: Vec<&str> = all.iter().map(|v| v.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let p1 = s.vm_list(&VmFilter::default(), None, 3).await.unwrap();
    let p2 = s
        .vm_list(&VmFilter::default(), Some(p1[2].id.as_str()), 3)
        .await
        .unwrap();
    let p3 = s
        .vm_list(&VmFilter::default(), Some(p2[2].id.as_str()), 3)
        .await
        .unwrap();
    assert_eq!((p1.len(), p2.len(), p3.len()), (3, 3, 1));
    assert_eq!(p3[0].id.as_str(), "fuse-t6");
    let running = VmFilter {
        state: Some(VmState::Running),
        ..VmFilter::default()
    };
    let got = s.vm_list(&running, None, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id.as_str(), "fuse-t3");
    let by_task = VmFilter {
        task_id: Some("t5".into()),
        ..VmFilter::default()
    };
    assert_eq!(s.vm_list(&by_task, None, 100).await.unwrap().len(), 1);
    let by_host = VmFilter {
        host_id: Some("h".into()),
        ..VmFilter::default()
    };
    assert!(s.vm_list(&by_host, None, 100).await.unwrap().is_empty());
    let counts = s.vm_count_by_state().await.unwrap();
    let get = |st| {
        counts
            .iter()
            .find(|(s, _)| *s == st)
            .map(|c| c.1)
            .unwrap_or(0)
    };
    assert_eq!(get(VmState::Provisioning), 6);
    assert_eq!(get(VmState::Running), 1);
}

/// Conformance check (see the module docs).
pub async fn place_and_release<S: StateStore>(s: S) {
    let r = vm("p", 2, 1024);
    s.vm_create(r.clone()).await.unwrap();
    // No hosts at all.
    match s.vm_place(&r.id, r.generation, Policy::Spread, None).await {
        Err(StoreError::NoCapacity(np)) => assert_eq!(np.hosts, 0),
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    // No hosts, with a fallback pseudo-host: assigned without a reservation.
    let f = vm("fb", 1, 512);
    s.vm_create(f.clone()).await.unwrap();
    let dflt = HostId::parse("default").unwrap();
    let placed = s
        .vm_place(&f.id, f.generation, Policy::Spread, Some(&dflt))
        .await
        .unwrap();
    assert_eq!(placed.host_id.as_ref(), Some(&dflt));
    assert!(placed.reserved.is_none());
    assert!(!s.vm_release(&f.id).await.unwrap());
    s.host_upsert(host("h1", 4, 10)).await.unwrap();
    s.host_upsert(host("h2", 8, 10)).await.unwrap();
    let placed = s
        .vm_place(&r.id, r.generation, Policy::Spread, None)
        .await
        .unwrap();
    assert_eq!(placed.host_id.as_ref().unwrap().as_str(), "h2");
    assert_eq!(placed.reserved.unwrap().cpus, 2);
    let h2 = s
        .host_get(&HostId::parse("h2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h2.allocated,
        Resources {
            cpus: 2,
            ram_mb: 1024,
            storage_gb: 1,
            vm_count: 1
        }
    );
    // Filter by host now matches.
    let by_host = VmFilter {
        host_id: Some("h2".into()),
        ..VmFilter::default()
    };
    assert_eq!(s.vm_list(&by_host, None, 10).await.unwrap().len(), 1);
    // Release exactly once.
    assert!(s.vm_release(&r.id).await.unwrap());
    assert!(!s.vm_release(&r.id).await.unwrap());
    let h2 = s
        .host_get(&HostId::parse("h2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h2.allocated, Resources::default());
    // Cordoned and too-small hosts are skipped; the reason is reported.
    s.host_set_state(&HostId::parse("h2").unwrap(), HostState::Cordoned, None)
        .await
        .unwrap();
    let big = vm("q", 6, 1024);
    s.vm_create(big.clone()).await.unwrap();
    match s
        .vm_place(&big.id, big.generation, Policy::Spread, None)
        .await
    {
        Err(StoreError::NoCapacity(np)) => {
            assert_eq!((np.hosts, np.not_active, np.short_cpus), (2, 1, 1))
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
}

/// Conformance check (see the module docs).
pub async fn concurrent_place_never_overcommits<S: StateStore>(s: Arc<S>) {
    s.host_upsert(host("only", 64, 10)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = vm(&format!("c{i}"), 1, 256);
            s.vm_create(r.clone()).await.unwrap();
            s.vm_place(&r.id, r.generation, Policy::Binpack, None)
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    let h = s
        .host_get(&HostId::parse("only").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.allocated.vm_count, 10);
    assert_eq!(h.allocated.cpus, 10);
}

/// Conformance check (see the module docs).
pub async fn concurrent_release_is_exactly_once<S: StateStore>(s: Arc<S>) {
    s.host_upsert(host("h", 64, 100)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = vm(&format!("r{i}"), 2, 256);
        s.vm_create(r.clone()).await.unwrap();
        s.vm_place(&r.id, r.generation, Policy::Spread, None)
            .await
            .unwrap();
        ids.push(r.id);
    }
    let mut tasks = Vec::new();
    for id in &ids {
        for _ in 0..4 {
            let (s, id) = (s.clone(), id.clone());
            tasks.push(tokio::spawn(
                async move { s.vm_release(&id).await.unwrap() },
            ));
        }
    }
    let mut released = 0;
    for t in tasks {
        if t.await.unwrap() {
            released += 1;
        }
    }
    assert_eq!(released, 5);
    let h = s
        .host_get(&HostId::parse("h").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.allocated, Resources::default());
}

/// Conformance check (see the module docs).
pub async fn hosts_upsert_keeps_allocation_and_delete_refuses_busy<S: StateStore>(s: S) {
    let (h, created) = s.host_upsert(host("h", 8, 10)).await.unwrap();
    assert!(created);
    assert_eq!(h.state, HostState::Active);
    let r = vm("x", 2, 512);
    s.vm_create(r.clone()).await.unwrap();
    let placed = s
        .vm_place(&r.id, r.generation, Policy::Spread, None)
        .await
        .unwrap();
    s.host_set_state(&h.id, HostState::Cordoned, Some("maintenance".into()))
        .await
        .unwrap();
    let mut again = host("h", 16, 20);
    again.url = "http://new:8090".into();
    again.region = "r2".into();
    let (h2, created) = s.host_upsert(again).await.unwrap();
    assert!(!created);
    assert_eq!(h2.url, "http://new:8090");
    assert_eq!(h2.region, "r2");
    assert_eq!(h2.capacity.cpus, 16);
    assert_eq!(h2.allocated.cpus, 2, "allocation kept");
    assert_eq!(h2.state, HostState::Cordoned, "state kept");
    assert_eq!(h2.state_reason.as_deref(), Some("maintenance"));
    assert_eq!(h2.created_at, h.created_at, "created_at kept");
    // Busy host cannot be deleted.
    match s.host_delete(&h.id).await {
        Err(StoreError::HostBusy { vms, .. }) => assert_eq!(vms, 1),
        other => panic!("expected HostBusy, got {other:?}"),
    }
    // After the VM is destroyed it can.
    let d = s
        .vm_update(
            &r.id,
            placed.generation,
            VmPatch::state(VmState::Destroying, "t"),
        )
        .await
        .unwrap();
    s.vm_update(&r.id, d.generation, VmPatch::state(VmState::Destroyed, "t"))
        .await
        .unwrap();
    s.vm_release(&r.id).await.unwrap();
    s.host_delete(&h.id).await.unwrap();
    assert!(s.host_get(&h.id).await.unwrap().is_none());
    assert!(matches!(
        s.host_delete(&h.id).await,
        Err(StoreError::NotFound { .. })
    ));
    // host_seen updates last_seen and capacity.
    let (h3, _) = s.host_upsert(host("h3", 2, 2)).await.unwrap();
    let seen = s
        .host_seen(
            &h3.id,
            Some(Resources {
                cpus: 3,
                ram_mb: 1,
                storage_gb: 1,
                vm_count: 1,
            }),
        )
        .await
        .unwrap();
    assert_eq!(seen.capacity.cpus, 3);
    assert!(seen.last_seen.unwrap() >= h3.last_seen.unwrap());
    assert_eq!(s.host_list().await.unwrap().len(), 1);
}

/// A `creating` snapshot of `vm` on no host.
pub fn snap(id: &str, vm: &VmRecord, parent: Option<&str>) -> SnapshotRecord {
    let at = now();
    SnapshotRecord {
        id: SnapshotId::parse(id).unwrap(),
        vm_id: vm.id.clone(),
        task_id: vm.task_id.clone(),
        tenant_id: String::new(),
        host_id: None,
        parent_id: parent.map(|p| SnapshotId::parse(p).unwrap()),
        mode: "disk".into(),
        kind: "disk".into(),
        layer_key: String::new(),
        arch: "amd64".into(),
        digest: String::new(),
        metadata: Default::default(),
        state: SnapshotState::Creating,
        comment: "c".into(),
        size_bytes: 0,
        host_snapshot_id: String::new(),
        created_at: at,
        updated_at: at,
        retention_until: None,
        last_error: None,
    }
}

/// Conformance check (see the module docs).
pub async fn snapshots_children_and_lifecycle<S: StateStore>(s: S) {
    let r = vm("s", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    s.snapshot_insert(snap("snap_a", &r, None)).await.unwrap();
    s.snapshot_insert(snap("snap_b", &r, Some("snap_a")))
        .await
        .unwrap();
    let a = SnapshotId::parse("snap_a").unwrap();
    let b = SnapshotId::parse("snap_b").unwrap();
    let up = s
        .snapshot_update(
            &a,
            SnapshotPatch {
                state: Some(SnapshotState::Ready),
                size_bytes: Some(42),
                mode: Some("full".into()),
                ..SnapshotPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((up.state, up.size_bytes), (SnapshotState::Ready, 42));
    assert_eq!(up.mode, "full", "the mode the host took is kept");
    assert_eq!(s.snapshot_get(&a).await.unwrap().unwrap().mode, "full");
    match s.snapshot_begin_delete(&a).await {
        Err(StoreError::HasChildren { children, .. }) => assert_eq!(children, 1),
        other => panic!("expected HasChildren, got {other:?}"),
    }
    let ready = SnapshotFilter {
        state: Some(SnapshotState::Ready),
        ..SnapshotFilter::default()
    };
    assert_eq!(s.snapshot_list(&ready).await.unwrap().len(), 1);
    let by_vm = SnapshotFilter {
        vm_id: Some(r.id.to_string()),
        ..SnapshotFilter::default()
    };
    assert_eq!(s.snapshot_list(&by_vm).await.unwrap().len(), 2);
    let before = s.snapshot_begin_delete(&b).await.unwrap();
    assert_eq!(before.state, SnapshotState::Creating);
    assert_eq!(
        s.snapshot_get(&b).await.unwrap().unwrap().state,
        SnapshotState::Deleting
    );
    s.snapshot_remove(&b).await.unwrap();
    s.snapshot_begin_delete(&a).await.unwrap();
    s.snapshot_remove(&a).await.unwrap();
    assert!(s.snapshot_get(&a).await.unwrap().is_none());
    assert!(matches!(
        s.snapshot_remove(&a).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Conformance check (see the module docs).
pub async fn purge_terminal<S: StateStore>(s: S) {
    let r = vm("old", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let keep = vm("live", 1, 512);
    s.vm_create(keep.clone()).await.unwrap();
    let d = s
        .vm_update(
            &r.id,
            r.generation,
            VmPatch::state(VmState::Destroying, "t"),
        )
        .await
        .unwrap();
    s.vm_update(&r.id, d.generation, VmPatch::state(VmState::Destroyed, "t"))
        .await
        .unwrap();
    let later = now() + time::Duration::seconds(1);
    assert_eq!(s.vm_purge_terminal(later).await.unwrap(), 1);
    assert!(s.vm_get(&r.id).await.unwrap().is_none());
    assert!(s.vm_get(&keep.id).await.unwrap().is_some());
}

/// Conformance check (see the module docs).
pub async fn dead_letters_count_and_clear<S: StateStore>(s: S) {
    assert!(s.dead_letter_list().await.unwrap().is_empty());
    assert_eq!(
        s.dead_letter_fail("orphan", "h1/vm-a", "e1").await.unwrap(),
        1
    );
    assert_eq!(
        s.dead_letter_fail("orphan", "h1/vm-a", "e2").await.unwrap(),
        2
    );
    assert_eq!(
        s.dead_letter_fail("orphan", "h1/vm-b", "x").await.unwrap(),
        1
    );
    let all = s.dead_letter_list().await.unwrap();
    assert_eq!(all.len(), 2);
    let a = all.iter().find(|d| d.entity_id == "h1/vm-a").unwrap();
    assert_eq!((a.attempts, a.last_error.as_deref()), (2, Some("e2")));
    assert_eq!(a.kind, "orphan");
    s.dead_letter_clear("orphan", "h1/vm-a").await.unwrap();
    s.dead_letter_clear("orphan", "never").await.unwrap();
    let all = s.dead_letter_list().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].entity_id, "h1/vm-b");
    assert_eq!(
        s.dead_letter_fail("orphan", "h1/vm-a", "again")
            .await
            .unwrap(),
        1,
        "cleared counts restart"
    );
}

/// Conformance check (see the module docs).
pub async fn repair_allocation_agrees_with_reservations<S: StateStore>(s: S) {
    s.host_upsert(host("rp", 8, 10)).await.unwrap();
    let h = HostId::parse("rp").unwrap();
    assert_eq!(s.host_repair_allocation(&h).await.unwrap(), None);
    for t in ["rp-a", "rp-b"] {
        let (c, _) = s
            .vm_create_placed(vm(t, 2, 1024), Policy::Spread, None)
            .await
            .unwrap();
        assert!(matches!(c, VmCreated::Created(_)));
    }
    assert_eq!(
        s.host_repair_allocation(&h).await.unwrap(),
        None,
        "the books agree after reservations"
    );
    let a = VmId::parse("fuse-rp-a").unwrap();
    assert!(s.vm_release(&a).await.unwrap());
    assert_eq!(s.host_repair_allocation(&h).await.unwrap(), None);
    let got = s.host_get(&h).await.unwrap().unwrap().allocated;
    assert_eq!((got.cpus, got.ram_mb, got.vm_count), (2, 1024, 1));
    assert!(matches!(
        s.host_repair_allocation(&HostId::parse("nope").unwrap())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Conformance check (see the module docs).
pub async fn api_keys_by_hash_revoke_and_touch<S: StateStore>(s: S) {
    let k = ApiKeyRecord {
        id: "ak_0123456789abcdef".into(),
        label: "ci".into(),
        hash: [7u8; 32],
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
    };
    s.api_key_create(k.clone()).await.unwrap();
    assert!(
        s.api_key_create(ApiKeyRecord {
            id: "ak_ffffffffffffffff".into(),
            ..k.clone()
        })
        .await
        .is_err(),
        "a second key with the same hash is refused"
    );
    let found = s.api_key_by_hash(&[7u8; 32]).await.unwrap().unwrap();
    assert_eq!(found, k);
    assert!(s.api_key_by_hash(&[8u8; 32]).await.unwrap().is_none());
    let at = now();
    s.api_key_touch(&k.id, at).await.unwrap();
    let listed = s.api_key_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(at));
    let r1 = s.api_key_revoke(&k.id).await.unwrap();
    let first = r1.revoked_at.expect("revoked");
    let r2 = s.api_key_revoke(&k.id).await.unwrap();
    assert_eq!(
        r2.revoked_at,
        Some(first),
        "a second revoke keeps the first time"
    );
    assert!(s
        .api_key_by_hash(&[7u8; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(matches!(
        s.api_key_revoke("ak_nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Conformance check (see the module docs).
pub async fn placement_follows_pin_arch_and_labels<S: StateStore>(s: S) {
    let mut big = host("big", 16, 10);
    big.labels = [("zone".to_owned(), "a".to_owned())].into();
    let mut arm = host("arm", 2, 10);
    arm.arch = "arm64".into();
    s.host_upsert(big).await.unwrap();
    s.host_upsert(arm).await.unwrap();
    let place = |task: &'static str, f: fn(&mut Spec)| {
        let s = &s;
        async move {
            let mut r = vm(task, 1, 512);
            f(&mut r.spec);
            let created = s.vm_create(r.clone()).await.unwrap();
            let VmCreated::Created(c) = created else {
                panic!("exists")
            };
            s.vm_place(&c.id, c.generation, Policy::Spread, None).await
        }
    };
    // Spread picks the big amd64 host unless the spec says otherwise.
    let r = place("p1", |_| {}).await.unwrap();
    assert_eq!(r.host_id.unwrap().as_str(), "big");
    let r = place("p2", |sp| sp.host_id = "arm".into()).await.unwrap();
    assert_eq!(r.host_id.unwrap().as_str(), "arm", "pinned");
    let r = place("p3", |sp| sp.arch = "arm64".into()).await.unwrap();
    assert_eq!(r.host_id.unwrap().as_str(), "arm", "arch");
    let r = place("p4", |sp| sp.arch = "amd64".into()).await.unwrap();
    assert_eq!(
        r.host_id.unwrap().as_str(),
        "big",
        "a host that never said its arch is amd64"
    );
    let r = place("p5", |sp| {
        sp.labels = [("zone".to_owned(), "a".to_owned())].into()
    })
    .await
    .unwrap();
    assert_eq!(r.host_id.unwrap().as_str(), "big", "labels");
    match place("p6", |sp| {
        sp.labels = [("zone".to_owned(), "b".to_owned())].into()
    })
    .await
    {
        Err(StoreError::NoCapacity(np)) => {
            assert_eq!(np.label_mismatch, 2, "{np}");
            assert!(np.to_string().contains("wants zone=b"), "{np}");
        }
        other => panic!("want NoCapacity, got {other:?}"),
    }
    match place("p7", |sp| sp.host_id = "gone".into()).await {
        Err(StoreError::NoCapacity(np)) => {
            assert!(
                np.to_string().contains("gone (pinned) is not registered"),
                "{np}"
            )
        }
        other => panic!("want NoCapacity, got {other:?}"),
    }
    // The same through the one-step create.
    let mut r = vm("p8", 1, 512);
    r.spec.arch = "riscv64".into();
    let (c, np) = s.vm_create_placed(r, Policy::Spread, None).await.unwrap();
    let VmCreated::Created(c) = c else { panic!() };
    assert_eq!(c.state, VmState::Failed);
    assert_eq!(np.unwrap().wrong_arch, 2);
}

/// Conformance check (see the module docs).
pub async fn host_labels_backend_arch_round_trip<S: StateStore>(s: S) {
    let mut h = host("h", 4, 4);
    h.labels = [("gpu".to_owned(), "none".to_owned())].into();
    h.backend = "qemu".into();
    h.arch = "arm64".into();
    h.declared = Resources {
        cpus: 2,
        ..Resources::default()
    };
    let (rec, created) = s.host_upsert(h.clone()).await.unwrap();
    assert!(created);
    let got = s.host_get(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.labels, h.labels);
    assert_eq!(got.backend, "qemu");
    assert_eq!(got.arch, "arm64");
    assert_eq!(got.declared.cpus, 2);
    let w = got.to_wire();
    assert_eq!(w.capacity.arch, "arm64");
    assert_eq!(w.labels, h.labels);
    // Re-registration replaces labels.
    h.labels.clear();
    s.host_upsert(h).await.unwrap();
    assert!(s
        .host_get(&rec.id)
        .await
        .unwrap()
        .unwrap()
        .labels
        .is_empty());
}

/// Conformance check (see the module docs).
pub async fn snapshot_fields_and_filters<S: StateStore>(s: S) {
    let r = vm("sf", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let mut a = snap("snap_fa", &r, None);
    a.layer_key = "L1".into();
    a.tenant_id = "ak_0000000000000001".into();
    a.metadata = [("k".to_owned(), "v".to_owned())].into();
    let mut b = snap("snap_fb", &r, None);
    b.layer_key = "L1".into();
    b.arch = "arm64".into();
    s.snapshot_insert(a.clone()).await.unwrap();
    s.snapshot_insert(b).await.unwrap();
    let got = s.snapshot_get(&a.id).await.unwrap().unwrap();
    assert_eq!(got.metadata, a.metadata);
    assert_eq!(got.tenant_id, a.tenant_id);
    assert_eq!(got.kind, "disk");
    let f = |layer: Option<&str>, arch: Option<&str>, tenant: Option<&str>| SnapshotFilter {
        layer_key: layer.map(str::to_owned),
        arch: arch.map(str::to_owned),
        tenant_id: tenant.map(str::to_owned),
        ..SnapshotFilter::default()
    };
    let ids = |v: Vec<SnapshotRecord>| {
        let mut v: Vec<String> = v.into_iter().map(|x| x.id.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(s.snapshot_list(&f(Some("L1"), None, None)).await.unwrap()),
        ["snap_fa", "snap_fb"]
    );
    assert_eq!(
        ids(s
            .snapshot_list(&f(Some("L1"), Some("arm64"), None))
            .await
            .unwrap()),
        ["snap_fb"]
    );
    assert_eq!(
        ids(s.snapshot_list(&f(None, None, Some(""))).await.unwrap()),
        ["snap_fb"]
    );
    assert!(s
        .snapshot_list(&f(Some("L2"), None, None))
        .await
        .unwrap()
        .is_empty());
    let up = s
        .snapshot_update(
            &a.id,
            SnapshotPatch {
                state: Some(SnapshotState::Ready),
                kind: Some("live".into()),
                digest: Some("ab".repeat(32)),
                ..SnapshotPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((up.kind.as_str(), up.digest.len()), ("live", 64));
    let again = s.snapshot_get(&a.id).await.unwrap().unwrap();
    assert_eq!(again.digest, "ab".repeat(32));
    let w = again.to_wire();
    assert_eq!(w.parent_snapshot_id, "", "absent is empty, never null");
    assert_eq!(w.last_error, "");
}

/// Conformance check (see the module docs).
pub async fn vm_extras_round_trip<S: StateStore>(s: S) {
    let mut r = vm("ex", 1, 512);
    r.extras.expose = vec![fuse_types::ExposeSpec {
        port: 8080,
        as_: Some("web".into()),
        protocol: None,
        public: None,
    }];
    r.spec.labels = [("zone".to_owned(), "a".to_owned())].into();
    s.vm_create(r.clone()).await.unwrap();
    let got = s.vm_get(&r.id).await.unwrap().unwrap();
    assert_eq!(got.extras, r.extras);
    assert_eq!(got.spec.labels, r.spec.labels);
    let mut x = got.extras.clone();
    x.health = Some(fuse_types::Health {
        state: fuse_types::HealthState::Passing,
        since: Some(now()),
        failures: 0,
        message: String::new(),
    });
    x.net_bytes = Some(42);
    let up = s
        .vm_update(
            &r.id,
            got.generation,
            VmPatch {
                extras: Some(x.clone()),
                ..VmPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(up.extras, x);
    assert_eq!(s.vm_get(&r.id).await.unwrap().unwrap().extras, x);
    // Activity is not a state change: no generation bump, never moves time backwards.
    let t1 = now();
    s.vm_note_activity(&r.id, t1, Some(99)).await.unwrap();
    let a = s.vm_get(&r.id).await.unwrap().unwrap();
    assert_eq!(a.generation, up.generation);
    assert_eq!(a.extras.net_bytes, Some(99));
    assert_eq!(
        a.extras.last_active_at.map(|t| t.unix_timestamp()),
        Some(t1.unix_timestamp())
    );
    assert_eq!(a.extras.health, x.health, "the rest of the extras is kept");
    s.vm_note_activity(&r.id, t1 - time::Duration::hours(1), None)
        .await
        .unwrap();
    let b = s.vm_get(&r.id).await.unwrap().unwrap();
    assert_eq!(
        b.extras.last_active_at.map(|t| t.unix_timestamp()),
        Some(t1.unix_timestamp())
    );
    assert_eq!(b.extras.net_bytes, Some(99));
}
