//! The Postgres backend. Every trait method is one transaction; rules that must hold under
//! concurrency use row locks (`SELECT … FOR UPDATE`) and conditional updates, so they hold
//! across control-plane replicas too. Secrets are sealed with AES-256-GCM before they reach
//! a row and are not written at all without a key; the key itself is checked against the
//! database at start and on every new connection (`keys`). Until migrations have run, every
//! call answers `Unavailable`, so the server can start (and say it is not ready) while the
//! database is still coming up.

mod keys;
mod rows;
mod schema;
mod store;
mod templates;

pub use keys::{rotate_key, KeyCheck, KeyError, RotateError, Rotated};

use crate::crypto::Cipher;
use crate::StoreError;
use keys::KeyGuard;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Advisory-lock class for replica liveness (`'FUSE'`).
const LOCK_REPLICA: i32 = 0x4655_5345;
/// Advisory-lock class for leadership.
const LOCK_LEADER: i32 = 0x4655_5346;
/// Advisory-lock class for migrations.
const LOCK_MIGRATE: i32 = 0x4655_5347;
/// NOTIFY channel of state events.
const CHANNEL: &str = "fuse_events";

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://…` URL.
    pub url: String,
    /// Seals secrets at rest; without it secrets are not persisted.
    pub cipher: Option<Cipher>,
    /// Pool size.
    pub max_connections: u32,
    /// How long a call waits for a connection before answering `Unavailable`.
    pub acquire_timeout: Duration,
}

impl PgOptions {
    /// Defaults for a URL: 16 connections, 3 s acquire timeout.
    pub fn new(url: &str, cipher: Option<Cipher>) -> Self {
        PgOptions {
            url: url.to_owned(),
            cipher,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The replica's own session: one dedicated connection holding its liveness lock and, when
/// it leads, the leader lock. Losing the connection releases both.
#[derive(Default)]
struct Session {
    conn: Option<PgConnection>,
    replica: Option<String>,
    leader: bool,
}

/// Postgres [`crate::StateStore`].
pub struct PgStore {
    pool: PgPool,
    connect: PgConnectOptions,
    cipher: Option<Cipher>,
    /// The key check state, shared with the pool's connect hook.
    key: Arc<KeyGuard>,
    migrated: AtomicBool,
    session: tokio::sync::Mutex<Session>,
    /// Recent host list for choosing a placement candidate (the reservation itself is
    /// always checked in SQL, so a stale entry costs a retry, never an over-commit).
    hosts_cache: parking_lot::Mutex<Option<(std::time::Instant, Vec<crate::HostRecord>)>>,
}

/// How long the placement candidate list may be reused.
pub(crate) const HOSTS_CACHE_TTL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Maps a driver error: connection trouble is `Unavailable` (retryable), the rest `Internal`.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            // 08: connection exception; 57P0x: shutdown/cannot connect; 53: resources.
            if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Internal(e.to_string())
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// A URL with its password removed, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Creates the store without connecting (the pool connects on demand).
    pub fn new(opts: PgOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(&opts.url)
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL does not parse: {e}")))?;
        let key = Arc::new(KeyGuard::new(opts.cipher.clone()));
        let hook = key.clone();
        // No ping before every acquire (a round trip per statement); a broken connection
        // fails its call as `Unavailable` and the pool drops it.
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let hook = hook.clone();
                Box::pin(async move { hook.on_connect(conn).await })
            })
            .connect_lazy_with(connect.clone());
        Ok(PgStore {
            pool,
            connect,
            cipher: opts.cipher,
            key,
            migrated: AtomicBool::new(false),
            session: tokio::sync::Mutex::new(Session::default()),
            hosts_cache: parking_lot::Mutex::new(None),
        })
    }

    /// Forgets the cached host list (after this process changed a host).
    pub(crate) fn hosts_changed(&self) {
        *self.hosts_cache.lock() = None;
    }

    /// Whether migrations have been applied (the store serves only then).
    pub fn is_ready(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    fn ready(&self) -> Result<&PgPool, StoreError> {
        self.key.usable()?;
        if self.is_ready() {
            Ok(&self.pool)
        } else {
            Err(StoreError::Unavailable(
                "database not reachable yet (migrations pending)".into(),
            ))
        }
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let applied = migrate_in(&mut tx).await?;
        tx.commit().await.map_err(db_err)?;
        self.migrated.store(true, Ordering::Release);
        Ok(applied)
    }

    /// Checks the configured key against the database (see `keys`): the key check must
    /// open, a database without one gets one, and sealed data without a key is refused
    /// with [`StoreError::Key`]. Run after [`PgStore::migrate`]; [`crate::StateStore::prepare`]
    /// runs both.
    pub async fn key_check(&self) -> Result<KeyCheck, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        self.key.check_at_start(&mut conn).await
    }

    /// Closes every connection (and so releases this process's locks) now rather than
    /// when the pool notices it was dropped.
    pub async fn close(&self) {
        self.session.lock().await.conn = None;
        self.pool.close().await;
    }

    /// The migration versions recorded in the database.
    pub async fn migrations_applied(&self) -> Result<Vec<i32>, StoreError> {
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(self.ready()?)
            .await
            .map_err(db_err)
    }

    /// Opens (or re-opens) the session connection and re-takes the replica lock.
    async fn session_ensure(&self, s: &mut Session) -> Result<(), StoreError> {
        if let Some(c) = s.conn.as_mut() {
            if c.ping().await.is_ok() {
                return Ok(());
            }
            s.conn = None;
            s.leader = false;
        }
        let mut conn = PgConnection::connect_with(&self.connect)
            .await
            .map_err(db_err)?;
        // The session outlives pooled connections, so it holds the shared key lock too: a
        // registered replica blocks a rotation even while its pool is empty.
        self.key
            .on_connect(&mut conn)
            .await
            .map_err(|e| self.key.usable().err().unwrap_or_else(|| db_err(e)))?;
        if let Some(id) = &s.replica {
            sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
                .bind(LOCK_REPLICA)
                .bind(id)
                .execute(&mut conn)
                .await
                .map_err(db_err)?;
        }
        s.conn = Some(conn);
        Ok(())
    }
}

/// Applies pending migrations inside the caller's transaction, under the migration lock;
/// returns the versions applied.
pub(crate) async fn migrate_in(conn: &mut PgConnection) -> Result<Vec<i32>, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_MIGRATE)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let done: Vec<i32> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let mut applied = Vec::new();
    for (version, name, sql) in schema::MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let sql: &'static str = sql;
        sqlx::Executor::execute(&mut *conn, sql)
            .await
            .map_err(db_err)?;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        applied.push(*version);
    }
    Ok(applied)
}
