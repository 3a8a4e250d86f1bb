//! The store's tests: the conformance suite on both backends, one test per check
//! (`suite`), plus what only Postgres has: migrations, encryption at rest, the key check
//! and key rotation, replica liveness, leadership and NOTIFY. Every Postgres test has a
//! database of its own, dropped when it ends.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fuse_store::crypto::Cipher;
mod suite;

use fuse_store::{
    conformance, rotate_key, KeyCheck, KeyError, PgOptions, PgStore, RotateError, StateStore,
    StoreError, VmPatch, VmSecrets,
};
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
    s.prepare().await.unwrap();
    s
}

#[tokio::test]
async fn migrations_are_recorded_and_idempotent() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let a = PgStore::new(PgOptions::new(&url, None)).unwrap();
    assert!(a.ping().await.is_err(), "unavailable before migrations");
    assert_eq!(a.migrate().await.unwrap(), vec![1, 2, 3, 4]);
    let b = PgStore::new(PgOptions::new(&url, None)).unwrap();
    assert_eq!(
        b.migrate().await.unwrap(),
        Vec::<i32>::new(),
        "nothing left to apply"
    );
    assert_eq!(b.migrations_applied().await.unwrap(), vec![1, 2, 3, 4]);
    b.ping().await.unwrap();
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_need_the_right_key() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let s = store(&url, Some(KEY)).await;
    let r = conformance::vm("enc", 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    let secrets = VmSecrets {
        auth_token: "tok-".repeat(16),
        gateway_token: "gw-secret".into(),
        secrets: [("API".to_string(), "value-in-the-clear".to_string())].into(),
        tls_cert_pem: "cert".into(),
        tls_key_pem: "key".into(),
        ..Default::default()
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
    let mut up = conformance::host("hh", 4, 4);
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
    // Another key, or none, is refused at start (see `the_key_check_*` below).
    s.close().await;
    assert!(matches!(
        PgStore::new(PgOptions::new(
            &url,
            Some(Cipher::from_hex(&"11".repeat(32)).unwrap())
        ))
        .unwrap()
        .prepare()
        .await,
        Err(StoreError::Key(KeyError::WrongKey))
    ));
    // Without a key nothing secret is written.
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let plain = store(&url, None).await;
    let r2 = conformance::vm("noenc", 1, 512);
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
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
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
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
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
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let s = std::sync::Arc::new(store(&url, None).await);
    for h in ["a", "b", "c"] {
        s.host_upsert(conformance::host(h, 16, 100)).await.unwrap();
    }
    // Warm the placement cache, then nine creates at once.
    let warm = conformance::vm("warm", 1, 512);
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
                        conformance::vm(&format!("burst-{i}"), 1, 512),
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
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let s = store(&url, None).await;
    s.host_upsert(conformance::host("dr", 8, 10)).await.unwrap();
    let h = fuse_types::HostId::parse("dr").unwrap();
    s.vm_create_placed(
        conformance::vm("dr-a", 2, 1024),
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

const KEY_B: &str = "0b1e6b0c2d3a4f5e6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";
const KEY_C: &str = "0c1e6b0c2d3a4f5e6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

fn cipher(k: &str) -> Cipher {
    Cipher::from_hex(k).unwrap()
}

/// A store on `url` with `key`, prepared: `Ok(store)` or the error of `prepare`.
async fn open(url: &str, key: Option<&str>) -> Result<PgStore, StoreError> {
    let s = PgStore::new(PgOptions::new(url, key.map(cipher))).unwrap();
    match s.prepare().await {
        Ok(_) => Ok(s),
        Err(e) => {
            s.close().await;
            Err(e)
        }
    }
}

fn sample_secrets() -> VmSecrets {
    VmSecrets {
        auth_token: "a".repeat(64),
        gateway_token: "gw".into(),
        secrets: [("K".to_string(), "v".to_string())].into(),
        tls_cert_pem: "cert".into(),
        tls_key_pem: "key".into(),
        ..Default::default()
    }
}

/// A host with a token and a running VM with secrets, sealed by `s`.
async fn seal_some(s: &PgStore, name: &str) -> fuse_types::VmId {
    let mut up = conformance::host(name, 4, 4);
    up.token = format!("token-of-{name}");
    s.host_upsert(up).await.unwrap();
    let r = conformance::vm(name, 1, 512);
    s.vm_create(r.clone()).await.unwrap();
    s.vm_update(
        &r.id,
        r.generation,
        VmPatch {
            secrets: Some(Some(sample_secrets())),
            ..VmPatch::state(VmState::Running, "t")
        },
    )
    .await
    .unwrap();
    r.id
}

/// Every sealed byte in the database, for "nothing changed" comparisons.
async fn sealed_bytes(pool: &sqlx::PgPool) -> Vec<Option<Vec<u8>>> {
    let mut all: Vec<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT secrets_enc FROM vms ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    all.extend(
        sqlx::query_scalar::<_, Option<Vec<u8>>>("SELECT token_enc FROM hosts ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap(),
    );
    all.extend(
        sqlx::query_scalar::<_, Option<Vec<u8>>>("SELECT value FROM store_meta ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap(),
    );
    all
}

#[tokio::test]
async fn the_key_check_is_written_once_and_then_enforced() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let a = PgStore::new(PgOptions::new(&url, Some(cipher(KEY)))).unwrap();
    let msg = a.prepare().await.unwrap();
    assert!(msg.contains("encryption key check written"), "{msg}");
    let vm = seal_some(&a, "kc").await;
    a.close().await;
    assert!(matches!(
        open(&url, Some(KEY_B)).await,
        Err(StoreError::Key(KeyError::WrongKey))
    ));
    assert!(matches!(
        open(&url, None).await,
        Err(StoreError::Key(KeyError::NoKey {
            sealed: 2,
            check: true
        }))
    ));
    // The messages name the variable (the server prints them and exits 2).
    for e in [
        KeyError::WrongKey,
        KeyError::NoKey {
            sealed: 2,
            check: true,
        },
    ] {
        assert!(e.to_string().contains("TOKEN_ENCRYPTION_KEY"), "{e}");
    }
    let again = open(&url, Some(KEY)).await.unwrap();
    assert_eq!(again.key_check().await.unwrap(), KeyCheck::Verified);
    assert_eq!(
        again.vm_get(&vm).await.unwrap().unwrap().secrets,
        Some(sample_secrets())
    );
}

#[tokio::test]
async fn a_database_that_predates_the_check_is_checked_on_its_secrets() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let a = store(&url, Some(KEY)).await;
    seal_some(&a, "old").await;
    a.close().await;
    // What a database sealed before migration 2 looks like: sealed values, no check.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM store_meta")
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        open(&url, Some(KEY_B)).await,
        Err(StoreError::Key(KeyError::OpensNothing { tried: 2 }))
    ));
    assert!(matches!(
        open(&url, None).await,
        Err(StoreError::Key(KeyError::NoKey {
            sealed: 2,
            check: false
        }))
    ));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM store_meta")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "a refused key writes no check");
    let s = PgStore::new(PgOptions::new(&url, Some(cipher(KEY)))).unwrap();
    assert!(s
        .prepare()
        .await
        .unwrap()
        .contains("the key opened 2 of the 2 newest stored secrets"));
    s.close().await;
    assert!(matches!(
        open(&url, Some(KEY_B)).await,
        Err(StoreError::Key(KeyError::WrongKey))
    ));
    // A database with no key and nothing sealed needs no check.
    let empty_db = TestDb::create_at(&admin).await;
    let empty = empty_db.url().to_owned();
    let e = open(&empty, None).await.unwrap();
    assert_eq!(e.key_check().await.unwrap(), KeyCheck::NoKey);
}

#[tokio::test]
async fn rotate_key_reseals_everything_in_one_transaction() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let a = store(&url, Some(KEY)).await;
    let vm = seal_some(&a, "rot").await;
    let host = fuse_types::HostId::parse("rot").unwrap();
    // Refused while a fuse process is connected: it would go on sealing with the old key.
    match rotate_key(&url, &cipher(KEY), &cipher(KEY_B)).await {
        Err(RotateError::InUse { sessions }) => assert!(sessions >= 1),
        other => panic!("{other:?}"),
    }
    a.close().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let before = sealed_bytes(&pool).await;
    // A wrong old key changes nothing.
    match rotate_key(&url, &cipher(KEY_C), &cipher(KEY_B)).await {
        Err(RotateError::OldKey(KeyError::WrongKey)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sealed_bytes(&pool).await, before);
    let done = rotate_key(&url, &cipher(KEY), &cipher(KEY_B))
        .await
        .unwrap();
    assert_eq!((done.vm_secrets, done.host_tokens), (1, 1));
    assert!(done.had_check && done.unreadable_vms.is_empty() && done.unreadable_hosts.is_empty());
    let after = sealed_bytes(&pool).await;
    assert_eq!(after.len(), before.len());
    assert!(
        before.iter().zip(&after).all(|(b, a)| b != a),
        "every value re-sealed"
    );
    // B reads everything; A is refused at start.
    let b = open(&url, Some(KEY_B)).await.unwrap();
    assert_eq!(
        b.vm_get(&vm).await.unwrap().unwrap().secrets,
        Some(sample_secrets())
    );
    assert_eq!(
        b.host_get(&host).await.unwrap().unwrap().token,
        "token-of-rot"
    );
    let audit = b.audit_list("encryption_key").await.unwrap();
    assert_eq!(audit.last().unwrap().event_type, "key_rotated");
    b.close().await;
    assert!(matches!(
        open(&url, Some(KEY)).await,
        Err(StoreError::Key(KeyError::WrongKey))
    ));
}

#[tokio::test]
async fn a_process_that_missed_a_rotation_stops_using_the_database() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = TestDb::create_at(&admin).await;
    let url = db.url().to_owned();
    let a = store(&url, Some(KEY)).await;
    seal_some(&a, "miss").await;
    // Cut every connection of `a` (as a database restart would), rotate behind its back.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rotate_key(&url, &cipher(KEY), &cipher(KEY_B)).await {
            Ok(_) => break,
            Err(RotateError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    // `a`'s next connections find the check no longer opens: no write with the old key.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match a.host_list().await {
            Err(StoreError::Key(KeyError::Revoked)) => break,
            Ok(_) => panic!("a store with the old key went on reading"),
            Err(_) if std::time::Instant::now() < deadline => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(matches!(
        a.ping().await,
        Err(StoreError::Key(KeyError::Revoked))
    ));
}
