//! Conformance checks of what fast starts need from the store: moving a reservation
//! (pause, resume, migration), templates and their warm pools, and snapshot artifacts
//! counted against a host's storage.

use super::{host, snap, vm};
use crate::*;
use fuse_types::{now, SnapshotState, Spec};
use std::sync::Arc;

const GIB: u64 = 1 << 30;

fn hid(id: &str) -> HostId {
    HostId::parse(id).unwrap()
}

/// Storage only: what a paused VM of `storage_gb` keeps.
fn paused(storage_gb: u64) -> Resources {
    Resources {
        storage_gb,
        ..Resources::default()
    }
}

async fn allocated<S: StateStore>(s: &S, id: &str) -> Resources {
    s.host_get(&hid(id)).await.unwrap().unwrap().allocated
}

async fn placed<S: StateStore>(s: &S, task: &str, cpus: u32, ram_mb: u64) -> VmRecord {
    match s
        .vm_create_placed(vm(task, cpus, ram_mb), Policy::Binpack, None)
        .await
        .unwrap()
    {
        (VmCreated::Created(r), None) => r,
        other => panic!("{other:?}"),
    }
}

/// Conformance check (see the module docs).
pub async fn move_pause_resume_and_migrate_keep_allocation_exact<S: StateStore>(s: S) {
    s.host_upsert(host("m1", 8, 10)).await.unwrap();
    s.host_upsert(host("m2", 8, 10)).await.unwrap();
    s.host_set_state(&hid("m2"), HostState::Cordoned, None)
        .await
        .unwrap();
    let r = placed(&s, "mv", 2, 1024).await;
    assert_eq!(r.host_id, Some(hid("m1")));
    let full = r.reserved.unwrap();
    // Pause: storage only, same host.
    let p = s
        .vm_move_reservation(&r.id, r.generation, &hid("m1"), paused(1))
        .await
        .unwrap();
    assert_eq!(p.generation, r.generation + 1);
    assert_eq!(
        (p.host_id.clone(), p.reserved),
        (Some(hid("m1")), Some(paused(1)))
    );
    assert_eq!(allocated(&s, "m1").await, paused(1));
    assert_eq!(s.vm_get(&r.id).await.unwrap().unwrap(), p);
    // A stale generation changes nothing.
    assert!(matches!(
        s.vm_move_reservation(&r.id, r.generation, &hid("m1"), full)
            .await,
        Err(StoreError::Stale { .. })
    ));
    // Its own host takes it back even when cordoned; another cordoned host does not.
    s.host_set_state(&hid("m1"), HostState::Cordoned, None)
        .await
        .unwrap();
    match s
        .vm_move_reservation(&r.id, p.generation, &hid("m2"), full)
        .await
    {
        Err(StoreError::NoCapacity(np)) => assert_eq!(np.not_active, 1),
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    let back = s
        .vm_move_reservation(&r.id, p.generation, &hid("m1"), full)
        .await
        .unwrap();
    assert_eq!(allocated(&s, "m1").await, full);
    assert_eq!(s.host_repair_allocation(&hid("m1")).await.unwrap(), None);
    // Pause again and resume on the other host (a migration).
    s.host_set_state(&hid("m2"), HostState::Active, None)
        .await
        .unwrap();
    let p2 = s
        .vm_move_reservation(&r.id, back.generation, &hid("m1"), paused(1))
        .await
        .unwrap();
    let moved = s
        .vm_move_reservation(&r.id, p2.generation, &hid("m2"), full)
        .await
        .unwrap();
    assert_eq!(moved.host_id, Some(hid("m2")));
    assert_eq!(allocated(&s, "m1").await, Resources::default());
    assert_eq!(allocated(&s, "m2").await, full);
    for h in ["m1", "m2"] {
        assert_eq!(
            s.host_repair_allocation(&hid(h)).await.unwrap(),
            None,
            "{h}"
        );
    }
    let moves: Vec<_> = s
        .audit_list(r.id.as_str())
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.event_type == "moved")
        .collect();
    assert_eq!(moves.len(), 4);
    assert_eq!(moves[3].payload["from_host"], "m1");
    assert_eq!(moves[3].payload["to_host"], "m2");
    // Released after the move: exactly what it holds goes back, once.
    assert!(s.vm_release(&r.id).await.unwrap());
    assert_eq!(allocated(&s, "m2").await, Resources::default());
    // A VM without a reservation just reserves on the target.
    let unplaced = vm("mv-none", 1, 256);
    s.vm_create(unplaced.clone()).await.unwrap();
    let one = Resources::for_spec(&unplaced.spec);
    let got = s
        .vm_move_reservation(&unplaced.id, unplaced.generation, &hid("m2"), one)
        .await
        .unwrap();
    assert_eq!(got.reserved, Some(one));
    assert_eq!(allocated(&s, "m2").await, one);
}

/// Conformance check (see the module docs).
pub async fn move_that_does_not_fit_changes_nothing<S: StateStore>(s: S) {
    s.host_upsert(host("big", 8, 10)).await.unwrap();
    s.host_upsert(host("small", 1, 10)).await.unwrap();
    let r = placed(&s, "nofit", 2, 1024).await;
    assert_eq!(r.host_id, Some(hid("big")));
    let p = s
        .vm_move_reservation(&r.id, r.generation, &hid("big"), paused(1))
        .await
        .unwrap();
    let (big, small) = (allocated(&s, "big").await, allocated(&s, "small").await);
    let full = Resources::for_spec(&r.spec);
    match s
        .vm_move_reservation(&r.id, p.generation, &hid("small"), full)
        .await
    {
        Err(StoreError::NoCapacity(np)) => {
            assert_eq!((np.hosts, np.short_cpus), (1, 1));
            assert!(np.reasons[0].contains("cpus"), "{:?}", np.reasons);
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert!(matches!(
        s.vm_move_reservation(&r.id, p.generation, &hid("nowhere"), full)
            .await,
        Err(StoreError::NotFound { kind: "host", .. })
    ));
    assert_eq!(
        s.vm_get(&r.id).await.unwrap().unwrap(),
        p,
        "the record is unchanged"
    );
    assert_eq!(allocated(&s, "big").await, big);
    assert_eq!(allocated(&s, "small").await, small);
    // Its own host counts its current reservation as free: growing in place fits when
    // only the difference is free.
    let fill = placed(&s, "filler", 6, 1024).await;
    assert_eq!(fill.host_id, Some(hid("big")));
    let grown = s
        .vm_move_reservation(&r.id, p.generation, &hid("big"), full)
        .await
        .unwrap();
    assert_eq!(allocated(&s, "big").await.cpus, 8);
    match s
        .vm_move_reservation(
            &r.id,
            grown.generation,
            &hid("big"),
            Resources { cpus: 3, ..full },
        )
        .await
    {
        Err(StoreError::NoCapacity(np)) => assert_eq!(np.short_cpus, 1),
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    assert_eq!(allocated(&s, "big").await.cpus, 8);
}

/// Conformance check (see the module docs).
pub async fn concurrent_moves_never_overcommit<S: StateStore>(s: Arc<S>) {
    s.host_upsert(host("from", 64, 20)).await.unwrap();
    s.host_upsert(host("to", 4, 20)).await.unwrap();
    let mut vms = Vec::new();
    for i in 0..10 {
        let r = placed(&*s, &format!("cm{i}"), 1, 256).await;
        let p = s
            .vm_move_reservation(&r.id, r.generation, &hid("from"), paused(1))
            .await
            .unwrap();
        vms.push(p);
    }
    let full = Resources {
        cpus: 1,
        ram_mb: 256,
        storage_gb: 1,
        vm_count: 1,
    };
    let mut tasks = Vec::new();
    for p in vms {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            match s
                .vm_move_reservation(&p.id, p.generation, &hid("to"), full)
                .await
            {
                Ok(_) => true,
                Err(StoreError::NoCapacity(_)) => false,
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "four 1-cpu VMs fit on a 4-cpu host");
    assert_eq!(
        allocated(&*s, "to").await,
        Resources {
            cpus: 4,
            ram_mb: 1024,
            storage_gb: 4,
            vm_count: 4
        }
    );
    assert_eq!(allocated(&*s, "from").await, paused(6));
    for h in ["from", "to"] {
        assert_eq!(
            s.host_repair_allocation(&hid(h)).await.unwrap(),
            None,
            "{h}"
        );
    }
}

fn template(name: &str, snapshot: &str) -> TemplateRecord {
    let at = now();
    TemplateRecord {
        name: name.to_owned(),
        snapshot_id: SnapshotId::parse(snapshot).unwrap(),
        source_vm_id: Some(VmId::parse("fuse-src").unwrap()),
        host_id: hid("th"),
        tenant_id: "ak_0123456789abcdef".into(),
        spec: Spec {
            cpus: 2,
            ram_mb: 1024,
            storage_gb: 4,
            ..Spec::default()
        },
        pool_per_host: 2,
        created_at: at,
        updated_at: at,
    }
}

/// Conformance check (see the module docs).
pub async fn templates_insert_pool_and_delete<S: StateStore>(s: S) {
    let src = vm("src", 2, 1024);
    s.vm_create(src.clone()).await.unwrap();
    s.snapshot_insert(snap("snap_t", &src, None)).await.unwrap();
    let t = template("py3.12-base", "snap_t");
    let got = s.template_insert(t.clone()).await.unwrap();
    assert_eq!(got, t);
    assert!(matches!(
        s.template_insert(t.clone()).await,
        Err(StoreError::Exists {
            kind: "template",
            ..
        })
    ));
    assert!(matches!(
        s.template_insert(template("Bad Name", "snap_t")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.template_insert(template("orphan", "snap_none")).await,
        Err(StoreError::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    s.template_insert(template("another", "snap_t"))
        .await
        .unwrap();
    let stored = s.template_get("py3.12-base").await.unwrap().unwrap();
    assert_eq!(
        (
            stored.spec.clone(),
            stored.source_vm_id.clone(),
            stored.tenant_id.clone()
        ),
        (t.spec.clone(), t.source_vm_id.clone(), t.tenant_id.clone())
    );
    assert_eq!(
        stored.created_at.unix_timestamp(),
        t.created_at.unix_timestamp()
    );
    assert!(s.template_get("missing").await.unwrap().is_none());
    let names: Vec<String> = s
        .template_list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["another", "py3.12-base"]);
    let up = s.template_update_pool("py3.12-base", 5).await.unwrap();
    assert_eq!(up.pool_per_host, 5);
    assert_eq!(
        s.template_get("py3.12-base")
            .await
            .unwrap()
            .unwrap()
            .pool_per_host,
        5
    );
    assert!(matches!(
        s.template_update_pool("missing", 1).await,
        Err(StoreError::NotFound {
            kind: "template",
            ..
        })
    ));
    // The snapshot cannot go while a template starts from it.
    let sid = SnapshotId::parse("snap_t").unwrap();
    assert!(matches!(
        s.snapshot_begin_delete(&sid).await,
        Err(StoreError::InUse {
            kind: "snapshot",
            ..
        })
    ));
    assert!(matches!(
        s.snapshot_remove(&sid).await,
        Err(StoreError::InUse {
            kind: "snapshot",
            ..
        })
    ));
    assert_eq!(
        s.snapshot_get(&sid).await.unwrap().unwrap().state,
        SnapshotState::Creating
    );
    // Nor the template while a live environment was started from it.
    let mut user = vm("user", 2, 1024);
    user.extras.template = Some("py3.12-base".into());
    s.vm_create(user.clone()).await.unwrap();
    match s.template_delete("py3.12-base").await {
        Err(StoreError::InUse { kind, what, .. }) => {
            assert_eq!(kind, "template");
            assert!(what.contains('1'), "{what}");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let failed = s
        .vm_update(
            &user.id,
            user.generation,
            VmPatch::state(VmState::Failed, "t"),
        )
        .await
        .unwrap();
    assert_eq!(failed.extras.template.as_deref(), Some("py3.12-base"));
    s.template_delete("py3.12-base").await.unwrap();
    assert!(matches!(
        s.template_delete("py3.12-base").await,
        Err(StoreError::NotFound {
            kind: "template",
            ..
        })
    ));
    s.template_delete("another").await.unwrap();
    s.snapshot_begin_delete(&sid).await.unwrap();
    s.snapshot_remove(&sid).await.unwrap();
    let kinds: Vec<String> = s
        .audit_list("py3.12-base")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.event_type)
        .collect();
    assert_eq!(kinds, ["created", "pool", "deleted"]);
}

/// Conformance check (see the module docs).
pub async fn pool_members_are_hidden_from_listings<S: StateStore>(s: S) {
    let plain = vm("pl-a", 1, 256);
    let mut warm = vm("pl-b", 1, 256);
    warm.extras.pool = Some("base".into());
    warm.extras.template = Some("base".into());
    s.vm_create(plain.clone()).await.unwrap();
    s.vm_create(warm.clone()).await.unwrap();
    let ids = |v: Vec<VmRecord>| v.into_iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
    let list = |f: VmFilter| {
        let s = &s;
        async move { ids(s.vm_list(&f, None, 10).await.unwrap()) }
    };
    assert_eq!(list(VmFilter::default()).await, ["fuse-pl-a"]);
    assert_eq!(
        list(VmFilter {
            include_pool: true,
            ..VmFilter::default()
        })
        .await,
        ["fuse-pl-a", "fuse-pl-b"]
    );
    assert_eq!(
        list(VmFilter {
            pool: Some("base".into()),
            ..VmFilter::default()
        })
        .await,
        ["fuse-pl-b"]
    );
    assert!(list(VmFilter {
        pool: Some("other".into()),
        include_pool: true,
        ..VmFilter::default()
    })
    .await
    .is_empty());
    assert_eq!(
        s.vm_get(&warm.id).await.unwrap().unwrap().extras,
        warm.extras
    );
}

/// Conformance check (see the module docs).
pub async fn snapshot_artifacts_fill_a_host<S: StateStore>(s: S) {
    // 100 GiB of storage (see `host`), 99 GiB and a byte of it snapshots: 0 GiB free.
    s.host_upsert(host("disk", 8, 10)).await.unwrap();
    let src = vm("art-src", 1, 256);
    s.vm_create(src.clone()).await.unwrap();
    let mut a = snap("snap_art_a", &src, None);
    a.host_id = Some(hid("disk"));
    a.size_bytes = 99 * GIB;
    let mut b = snap("snap_art_b", &src, None);
    b.host_id = Some(hid("disk"));
    s.snapshot_insert(a).await.unwrap();
    s.snapshot_insert(b).await.unwrap();
    let sb = SnapshotId::parse("snap_art_b").unwrap();
    s.snapshot_update(
        &sb,
        SnapshotPatch {
            state: Some(SnapshotState::Ready),
            size_bytes: Some(1),
            ..SnapshotPatch::default()
        },
    )
    .await
    .unwrap();
    let h = s.host_get(&hid("disk")).await.unwrap().unwrap();
    assert_eq!(h.artifact_bytes, 99 * GIB + 1);
    assert_eq!(
        h.allocated,
        Resources::default(),
        "artifacts are not reservations"
    );
    assert_eq!(h.to_wire().artifact_bytes, 99 * GIB + 1);
    assert_eq!(s.host_list().await.unwrap()[0].artifact_bytes, 99 * GIB + 1);
    // Neither placement path takes a VM that needs storage.
    let (c, np) = s
        .vm_create_placed(vm("art-1", 1, 256), Policy::Spread, None)
        .await
        .unwrap();
    assert_eq!(np.map(|n| n.short_storage), Some(1));
    assert!(matches!(c, VmCreated::Created(r) if r.state == VmState::Failed));
    let r2 = vm("art-2", 1, 256);
    s.vm_create(r2.clone()).await.unwrap();
    match s
        .vm_place(&r2.id, r2.generation, Policy::Spread, None)
        .await
    {
        Err(StoreError::NoCapacity(np)) => {
            assert_eq!(np.short_storage, 1);
            assert!(np.to_string().contains("0 GiB storage free"), "{np}");
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
    let r3 = vm("art-3", 1, 256);
    s.vm_create(r3.clone()).await.unwrap();
    assert!(matches!(
        s.vm_move_reservation(&r3.id, r3.generation, &hid("disk"), Resources::for_spec(&r3.spec))
            .await,
        Err(StoreError::NoCapacity(np)) if np.short_storage == 1
    ));
    // A VM that needs no storage still fits.
    let mut diskless = vm("art-4", 1, 256);
    diskless.spec.storage_gb = 0;
    let (c, np) = s
        .vm_create_placed(diskless, Policy::Spread, None)
        .await
        .unwrap();
    assert!(np.is_none(), "{np:?}");
    assert!(matches!(c, VmCreated::Created(r) if r.host_id == Some(hid("disk"))));
    // A snapshot being deleted no longer counts: one GiB is free again.
    s.snapshot_begin_delete(&sb).await.unwrap();
    assert_eq!(
        s.host_get(&hid("disk"))
            .await
            .unwrap()
            .unwrap()
            .artifact_bytes,
        99 * GIB
    );
    let placed = s
        .vm_place(&r2.id, r2.generation, Policy::Spread, None)
        .await
        .unwrap();
    assert_eq!(placed.host_id, Some(hid("disk")));
}
