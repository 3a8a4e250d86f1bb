//! The store's tests: the conformance suite on both backends, one test per check
//! (`conformance`), plus what only Postgres has: migrations, encryption at rest, replica
//! liveness, leadership and NOTIFY. Every Postgres test has a database of its own, dropped
//! when it ends.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fuse_store::crypto::Cipher;
mod conformance;

use fuse_store::{PgOptions, PgStore, StateStore, VmPatch, VmSecrets};
use fuse_testkit::TestDb;
use fuse_types::VmState;
use sqlx::Row;
use std::time::Duration;

const KEY: &str = "8f1e6b0c2d3a4f5e6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

/// A Postgres store on its own fresh database (the database is dropped with the guard).
pub async fn fresh_store(key: Option<&str>) -> Option<(PgStore, TestDb)> {
    let db = TestDb::create().await?;
    Some((store(db.url(), key).await, db))
}

async fn store(url: &str, key: Option<&str>) -> PgStore {
    let cipher = key.map(|k| Cipher::from_hex(k).unwrap());
    let s = PgStore::new(PgOptions::new(url, cipher)).unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test]
async fn migrations_are_recorded_and_idempotent() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let a = PgStore::new(PgOptions::new(&url, None)).unwrap();
    assert!(a.ping().await.is_err(), "unavailable before migrations");
    assert_eq!(a.migrate().await.unwrap(), vec![1]);
    let b = PgStore::new(PgOptions::new(&url, None)).unwrap();
    assert_eq!(
        b.migrate().await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );
    assert_eq!(b.migrations_applied().await.unwrap(), vec![1]);
    b.ping().await.unwrap();
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_need_the_right_key() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let s = store(&url, Some(KEY)).await;
    let r = fuse_store::conformance::vm("enc", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let secrets = VmSecrets {
        auth_token: "tok-".repeat(16),
        gateway_token: "gw-secret".into(),
        secrets: [("API".to_string(), "value-in-the-clear".to_string())].into(),
        tls_cert_pem: "cert".into(),
        tls_key_pem: "key".into(),
    };
    s.vm_update(
        &r.id,
        r.generation,
        VmPatch {
            secrets: Some(Some(secrets.clone())),
            ..VmPatch::state(VmState::Running, "t")
        },
    )
    .await
    .unwrap();
    let mut up = fuse_store::conformance::host("hh", 4, 4);
    up.token = "host-token-secret".into();
    s.host_upsert(up).await.unwrap();
    // Round trip through the store.
    assert_eq!(
        s.vm_get(&r.id).await.unwrap().unwrap().secrets,
        Some(secrets.clone())
    );
    let h = s
        .host_get(&fuse_types::HostId::parse("hh").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.token, "host-token-secret");
    // Nothing readable in the rows.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let row = sqlx::query("SELECT secrets_enc FROM vms WHERE id = $1")
        .bind(r.id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    let raw: Vec<u8> = row.get(0);
    let raw_text = String::from_utf8_lossy(&raw);
    assert!(!raw_text.contains("value-in-the-clear") && !raw_text.contains("gw-secret"));
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM vms) t")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!dump.contains("value-in-the-clear"));
    let hosts: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM hosts) t")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!hosts.contains("host-token-secret"));
    let events: String =
        sqlx::query_scalar("SELECT coalesce(string_agg(payload::text, ' '), '') FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!events.contains("value-in-the-clear") && !events.contains("host-token-secret"));
    // Another key cannot open them (the record reads without secrets, it does not fail).
    let other = store(&url, Some(&"11".repeat(32))).await;
    assert_eq!(other.vm_get(&r.id).await.unwrap().unwrap().secrets, None);
    // Without a key nothing secret is written.
    let plain = store(&url, None).await;
    let r2 = fuse_store::conformance::vm("noenc", 1, 512);
    plain.vm_create(r2.clone()).await.unwrap();
    plain
        .vm_update(
            &r2.id,
            r2.generation,
            VmPatch {
                secrets: Some(Some(secrets)),
                ..VmPatch::default()
            },
        )
        .await
        .unwrap();
    let n: Option<Vec<u8>> = sqlx::query_scalar("SELECT secrets_enc FROM vms WHERE id = $1")
        .bind(r2.id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(n.is_none());
}

#[tokio::test]
async fn liveness_leadership_and_takeover() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let a = store(&url, None).await;
    let b = store(&url, None).await;
    a.replica_register("replica-a").await.unwrap();
    b.replica_register("replica-b").await.unwrap();
    assert!(b.replica_alive("replica-a").await.unwrap());
    assert!(a.replica_alive("replica-b").await.unwrap());
    assert!(!a.replica_alive("replica-gone").await.unwrap());
    assert!(a.leader_acquire().await.unwrap());
    assert!(!b.leader_acquire().await.unwrap(), "only one leader");
    assert!(a.leader_acquire().await.unwrap());
    drop(a);
    // When a's session dies, b sees it dead and takes over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if b.leader_acquire().await.unwrap() && !b.replica_alive("replica-a").await.unwrap() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn notify_reaches_every_listener() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let a = store(&url, None).await;
    let b = store(&url, None).await;
    let mut rx = b.listen().await.unwrap().unwrap();
    a.notify(&["{\"hello\":1}".to_string(), "second".to_string()])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "{\"hello\":1}");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "second", "in order");
}

#[tokio::test]
async fn a_burst_of_creates_spreads_over_equal_hosts() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let s = std::sync::Arc::new(store(&url, None).await);
    for h in ["a", "b", "c"] {
        s.host_upsert(fuse_store::conformance::host(h, 16, 100))
            .await
            .unwrap();
    }
    // Warm the placement cache, then nine creates at once.
    let warm = fuse_store::conformance::vm("warm", 1, 512);
    let (w, _) = s
        .vm_create_placed(warm, fuse_scheduler::Policy::Spread, None)
        .await
        .unwrap();
    let jobs: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let (c, np) = s
                    .vm_create_placed(
                        fuse_store::conformance::vm(&format!("burst-{i}"), 1, 512),
                        fuse_scheduler::Policy::Spread,
                        None,
                    )
                    .await
                    .unwrap();
                assert!(np.is_none());
                match c {
                    fuse_store::VmCreated::Created(r) => r.host_id.unwrap().to_string(),
                    other => panic!("{other:?}"),
                }
            })
        })
        .collect();
    let mut per = std::collections::BTreeMap::<String, u32>::new();
    if let fuse_store::VmCreated::Created(r) = w {
        *per.entry(r.host_id.unwrap().to_string()).or_default() += 1;
    }
    for j in jobs {
        *per.entry(j.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{per:?}"
    );
    for h in s.host_list().await.unwrap() {
        assert_eq!(h.allocated.vm_count, 3, "the books agree: {h:?}");
    }
}

#[tokio::test]
async fn drifted_allocation_is_repaired_from_the_reservations() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let s = store(&url, None).await;
    s.host_upsert(fuse_store::conformance::host("dr", 8, 10))
        .await
        .unwrap();
    let h = fuse_types::HostId::parse("dr").unwrap();
    s.vm_create_placed(
        fuse_store::conformance::vm("dr-a", 2, 1024),
        fuse_scheduler::Policy::Spread,
        None,
    )
    .await
    .unwrap();
    // A reservation leaked by a crash between two statements (issue 3's noted gap).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE hosts SET alloc_cpus = alloc_cpus + 1, alloc_vm_count = alloc_vm_count + 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (was, now) = s.host_repair_allocation(&h).await.unwrap().unwrap();
    assert_eq!((was.cpus, was.vm_count), (3, 2));
    assert_eq!((now.cpus, now.ram_mb, now.vm_count), (2, 1024, 1));
    assert_eq!(s.host_get(&h).await.unwrap().unwrap().allocated, now);
    assert_eq!(s.host_repair_allocation(&h).await.unwrap(), None);
    let audit = s.audit_list("dr").await.unwrap();
    assert_eq!(audit.last().unwrap().event_type, "allocation_repaired");
}
