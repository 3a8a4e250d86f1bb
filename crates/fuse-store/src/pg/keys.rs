//! The encryption key and the database: the key check, the connection guard, and key
//! rotation.
//!
//! **Key check.** `store_meta` holds one row, `key_check`: a fixed text sealed with the key
//! (AES-256-GCM, like every secret). A key that opens it is the key the data was sealed
//! with; any other key fails the tag check. It is written by the first start with a key on
//! a database without one, after checking that the key opens the secrets already stored (a
//! database that predates the check). Invariant: while a check exists, every value sealed by
//! a `fuse` process was sealed with the key that opens it.
//!
//! **Connection guard.** Every pooled connection of a `fuse` process takes a *shared*
//! advisory lock ([`LOCK_KEY`]) when it opens and keeps it for its life, and, once the
//! process has verified its key, re-checks the key check before it is used. Rotation takes
//! the same lock *exclusively*, so it cannot run while any `fuse` process is connected, and
//! a process that connects after a rotation it did not see refuses to use the database
//! (its calls answer [`KeyError::Revoked`]) instead of sealing with the old key.
//!
//! **Rotation** ([`rotate_key`]): one transaction re-seals every VM secret, every host token
//! and the key check under a new key, after the old key opened the check.

use super::{db_err, LOCK_MIGRATE};
use crate::crypto::Cipher;
use crate::StoreError;
use sqlx::{PgConnection, Row};
use std::sync::atomic::{AtomicBool, Ordering};

/// Advisory-lock class of the encryption key: shared by every connection of a running
/// `fuse`, exclusive during a rotation.
pub(crate) const LOCK_KEY: i32 = 0x4655_5348;

/// The sealed plaintext of the key check. Changing it invalidates every stored check.
const CHECK_TEXT: &[u8] = b"fuse key check v1";

/// The `store_meta` row holding the key check.
const CHECK_NAME: &str = "key_check";

/// How many of the newest sealed values are tried on a database that predates the check.
const PRECHECK_SAMPLE: i64 = 50;

/// Rows re-sealed per statement during a rotation (bounds the command's memory).
const ROTATE_BATCH: i64 = 500;

/// Why the configured encryption key cannot be used with this database. None of these is
/// retryable: a restart with the right `TOKEN_ENCRYPTION_KEY` is the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key does not open the stored key check.
    #[error(
        "TOKEN_ENCRYPTION_KEY does not open the key check stored in the database: it is not \
         the key this database's secrets were sealed with"
    )]
    WrongKey,
    /// The database predates the check and the key opens none of its sealed values.
    #[error(
        "TOKEN_ENCRYPTION_KEY opens none of the {tried} newest secret(s) stored in the \
         database: it is not the key they were sealed with"
    )]
    OpensNothing {
        /// How many sealed values were tried.
        tried: u64,
    },
    /// Sealed data (or a key check) exists but no key is configured.
    #[error(
        "the database holds secrets sealed with an encryption key ({sealed} sealed value(s){}), \
         but TOKEN_ENCRYPTION_KEY is not set",
        if *.check { " and a key check" } else { "" }
    )]
    NoKey {
        /// Sealed VM secrets and host tokens.
        sealed: u64,
        /// Whether a key check exists.
        check: bool,
    },
    /// The key check changed under a running process (a rotation it could not see).
    #[error(
        "TOKEN_ENCRYPTION_KEY no longer opens the database's key check (the key was rotated \
         while this process ran); restart it with the new key"
    )]
    Revoked,
}

/// What the start-up key check found (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No key is configured and nothing is sealed.
    NoKey,
    /// The key opened the stored check.
    Verified,
    /// There was no check; one was written. `opened` of `tried` stored values opened with
    /// the key (a database that predates the check; 0 of 0 on an empty one).
    Written {
        /// Sealed values tried.
        tried: u64,
        /// Of which opened.
        opened: u64,
    },
}

impl std::fmt::Display for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyCheck::NoKey => f.write_str("no encryption key; nothing sealed"),
            KeyCheck::Verified => f.write_str("encryption key verified"),
            KeyCheck::Written { tried: 0, .. } => f.write_str("encryption key check written"),
            KeyCheck::Written { tried, opened } => write!(
                f,
                "encryption key check written (the key opened {opened} of the {tried} newest stored secrets)"
            ),
        }
    }
}

/// The key state of one [`super::PgStore`], shared with its pool's connect hook.
#[derive(Debug)]
pub(crate) struct KeyGuard {
    cipher: Option<Cipher>,
    /// Set once the start-up check passed; from then on every new connection re-checks.
    verified: AtomicBool,
    /// Set when a new connection found the check no longer opens.
    revoked: AtomicBool,
}

impl KeyGuard {
    pub(crate) fn new(cipher: Option<Cipher>) -> Self {
        KeyGuard {
            cipher,
            verified: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        }
    }

    /// `Err(Revoked)` once a connection found the key rotated away.
    pub(crate) fn usable(&self) -> Result<(), StoreError> {
        if self.revoked.load(Ordering::Acquire) {
            Err(StoreError::Key(KeyError::Revoked))
        } else {
            Ok(())
        }
    }

    /// Runs on every new pooled (and session) connection: takes the shared key lock and,
    /// after start-up verified the key, checks that it still opens the key check. A failure
    /// marks the store revoked; the error makes the pool drop the connection.
    pub(crate) async fn on_connect(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock_shared($1, 0)")
            .bind(LOCK_KEY)
            .execute(&mut *conn)
            .await?;
        if !self.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let check = read_check(conn).await?;
        if let Err(e) = verify(self.cipher.as_ref(), check.as_deref()) {
            self.revoked.store(true, Ordering::Release);
            tracing::error!(error = %e, "refusing a database connection");
            return Err(sqlx::Error::Configuration(Box::new(KeyError::Revoked)));
        }
        Ok(())
    }

    /// The start-up check (see the module doc), in one transaction serialised with other
    /// starting replicas by the migration lock. Writes the check when there is none.
    pub(crate) async fn check_at_start(
        &self,
        conn: &mut PgConnection,
    ) -> Result<KeyCheck, StoreError> {
        let mut tx = sqlx::Connection::begin(conn).await.map_err(db_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(LOCK_MIGRATE)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let outcome = check_or_write(&mut tx, self.cipher.as_ref()).await?;
        tx.commit().await.map_err(db_err)?;
        self.verified.store(true, Ordering::Release);
        Ok(outcome)
    }
}

/// The stored key check, `None` when there is none (or the table does not exist yet: a
/// connection opened before the migrations ran).
async fn read_check(conn: &mut PgConnection) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('store_meta') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
        .bind(CHECK_NAME)
        .fetch_optional(&mut *conn)
        .await
}

/// Whether `cipher` opens `check`. No check at all is not an error here: start-up decides.
fn verify(cipher: Option<&Cipher>, check: Option<&[u8]>) -> Result<(), KeyError> {
    match (cipher, check) {
        (_, None) => Ok(()),
        (None, Some(_)) => Err(KeyError::NoKey {
            sealed: 0,
            check: true,
        }),
        (Some(c), Some(sealed)) => match c.open(sealed) {
            Ok(plain) if plain == CHECK_TEXT => Ok(()),
            _ => Err(KeyError::WrongKey),
        },
    }
}

async fn sealed_count(conn: &mut PgConnection) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM vms WHERE secrets_enc IS NOT NULL) \
              + (SELECT count(*) FROM hosts WHERE token_enc IS NOT NULL)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(n.max(0) as u64)
}

/// How many of the newest sealed values `cipher` opens: `(tried, opened)`.
async fn sample_opens(conn: &mut PgConnection, cipher: &Cipher) -> Result<(u64, u64), StoreError> {
    let values: Vec<Vec<u8>> = sqlx::query_scalar(
        "(SELECT secrets_enc FROM vms WHERE secrets_enc IS NOT NULL ORDER BY updated_at DESC LIMIT $1) \
         UNION ALL \
         (SELECT token_enc FROM hosts WHERE token_enc IS NOT NULL ORDER BY updated_at DESC LIMIT $1)",
    )
    .bind(PRECHECK_SAMPLE)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let opened = values.iter().filter(|v| cipher.open(v).is_ok()).count();
    Ok((values.len() as u64, opened as u64))
}

async fn write_check(conn: &mut PgConnection, cipher: &Cipher) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO store_meta (name, value, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
    )
    .bind(CHECK_NAME)
    .bind(cipher.seal(CHECK_TEXT))
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The rule of the start-up check: a stored check must open; without one, the key must
/// open at least one of the newest sealed values (values it does not open were sealed with
/// some earlier key and are lost already; they are logged, not fatal); without a key,
/// nothing may be sealed. Key problems are [`StoreError::Key`].
async fn check_or_write(
    conn: &mut PgConnection,
    cipher: Option<&Cipher>,
) -> Result<KeyCheck, StoreError> {
    if let Some(check) = read_check(conn).await.map_err(db_err)? {
        if cipher.is_none() {
            let sealed = sealed_count(conn).await?;
            return Err(KeyError::NoKey {
                sealed,
                check: true,
            }
            .into());
        }
        verify(cipher, Some(&check))?;
        return Ok(KeyCheck::Verified);
    }
    let sealed = sealed_count(conn).await?;
    let Some(cipher) = cipher else {
        if sealed > 0 {
            return Err(KeyError::NoKey {
                sealed,
                check: false,
            }
            .into());
        }
        return Ok(KeyCheck::NoKey);
    };
    let (tried, opened) = if sealed > 0 {
        sample_opens(conn, cipher).await?
    } else {
        (0, 0)
    };
    if tried > 0 && opened == 0 {
        return Err(KeyError::OpensNothing { tried }.into());
    }
    if opened < tried {
        tracing::warn!(
            tried,
            opened,
            "some stored secrets do not open with TOKEN_ENCRYPTION_KEY (sealed with an earlier key; \
             those records read without their secrets)"
        );
    }
    write_check(conn, cipher).await?;
    Ok(KeyCheck::Written { tried, opened })
}

/// What [`rotate_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// VM secrets re-sealed.
    pub vm_secrets: u64,
    /// Host tokens re-sealed.
    pub host_tokens: u64,
    /// Whether a key check existed before (otherwise the old key was verified on the stored
    /// secrets and the check is new).
    pub had_check: bool,
    /// VMs whose sealed secrets the old key does not open (sealed with some earlier key;
    /// left as they were: no key here can re-seal them).
    pub unreadable_vms: Vec<String>,
    /// Hosts whose sealed token the old key does not open (left as they were).
    pub unreadable_hosts: Vec<String>,
    /// Migrations applied first (a database at an older schema).
    pub migrations: Vec<i32>,
}

/// Why a rotation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The old key is not the key the data was sealed with.
    #[error("the old key (TOKEN_ENCRYPTION_KEY) does not open the stored data")]
    OldKey(#[source] KeyError),
    /// `fuse` processes are connected: they would go on sealing with the old key.
    #[error(
        "{sessions} database session(s) of running fuse processes hold the encryption key; \
         stop every fuse replica on this database, then rotate"
    )]
    InUse {
        /// Sessions holding the shared key lock.
        sessions: u64,
    },
    /// The database failed.
    #[error("rotating the encryption key")]
    Store(#[from] StoreError),
}

/// Re-seals every VM secret, every host token and the key check under `new`, in one
/// transaction, after checking that `old` opens the key check (or, on a database that
/// predates it, at least one of the newest sealed values). Refused while any `fuse`
/// process is connected to the database (see the module doc). Applies pending migrations
/// first, in the same transaction.
pub async fn rotate_key(url: &str, old: &Cipher, new: &Cipher) -> Result<Rotated, RotateError> {
    let mut conn = <PgConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(db_err)?;
    let mut tx = sqlx::Connection::begin(&mut conn).await.map_err(db_err)?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, 0)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if !free {
        let sessions: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = ($1::int4)::oid AND objid = 0 AND objsubid = 2 AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        return Err(RotateError::InUse {
            sessions: sessions.max(0) as u64,
        });
    }
    let migrations = super::migrate_in(&mut tx).await?;
    let had_check = match read_check(&mut tx).await.map_err(db_err)? {
        Some(check) => {
            verify(Some(old), Some(&check)).map_err(RotateError::OldKey)?;
            true
        }
        None => {
            if sealed_count(&mut tx).await? > 0 {
                let (tried, opened) = sample_opens(&mut tx, old).await?;
                if opened == 0 {
                    return Err(RotateError::OldKey(KeyError::OpensNothing { tried }));
                }
            }
            false
        }
    };
    let (vm_secrets, unreadable_vms) = reseal(&mut tx, "vms", "secrets_enc", old, new).await?;
    let (host_tokens, unreadable_hosts) = reseal(&mut tx, "hosts", "token_enc", old, new).await?;
    write_check(&mut tx, new).await?;
    sqlx::query(
        "INSERT INTO events (entity_kind, entity_id, event_type, payload) \
         VALUES ('store', 'encryption_key', 'key_rotated', $1)",
    )
    .bind(serde_json::json!({
        "vm_secrets": vm_secrets,
        "host_tokens": host_tokens,
        "unreadable_vms": unreadable_vms.len(),
        "unreadable_hosts": unreadable_hosts.len(),
    }))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(Rotated {
        vm_secrets,
        host_tokens,
        had_check,
        unreadable_vms,
        unreadable_hosts,
        migrations,
    })
}

/// Re-seals `table.column` page by page (ids in order, rows locked); returns how many were
/// re-sealed and the ids whose value `old` does not open (left unchanged).
async fn reseal(
    conn: &mut PgConnection,
    table: &'static str,
    column: &'static str,
    old: &Cipher,
    new: &Cipher,
) -> Result<(u64, Vec<String>), StoreError> {
    let select = format!(
        "SELECT id, {column} AS v FROM {table} WHERE {column} IS NOT NULL AND id > $1 \
         ORDER BY id LIMIT $2 FOR UPDATE"
    );
    let update = format!(
        "UPDATE {table} AS t SET {column} = u.v FROM unnest($1::text[], $2::bytea[]) AS u(id, v) \
         WHERE t.id = u.id"
    );
    let (mut done, mut unreadable, mut after) = (0u64, Vec::new(), String::new());
    loop {
        let rows = sqlx::query(&select)
            .bind(&after)
            .bind(ROTATE_BATCH)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        let Some(last) = rows.last() else {
            return Ok((done, unreadable));
        };
        after = last.try_get("id").map_err(db_err)?;
        let (mut ids, mut values) = (Vec::new(), Vec::new());
        for row in &rows {
            let id: String = row.try_get("id").map_err(db_err)?;
            let sealed: Vec<u8> = row.try_get("v").map_err(db_err)?;
            match old.open(&sealed) {
                Ok(plain) => {
                    values.push(new.seal(&plain));
                    ids.push(id);
                }
                Err(_) => unreadable.push(id),
            }
        }
        sqlx::query(&update)
            .bind(&ids)
            .bind(&values)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        done += ids.len() as u64;
    }
}
