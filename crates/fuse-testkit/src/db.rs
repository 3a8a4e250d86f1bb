//! Fresh Postgres databases for tests. `FUSE_TEST_DATABASE_URL` names a server and a role
//! allowed to create databases (`scripts/test.sh` starts Postgres and sets it). Each
//! [`TestDb`] is a new, empty database named after the test process, dropped (with its
//! connections) when the value is dropped; databases left by test processes that were
//! killed are swept the first time a process makes one.

use sqlx::{Connection, PgConnection};
use std::sync::OnceLock;

/// The admin URL (see [`crate::prereq::require`] for what happens when it is missing).
pub fn admin_url() -> Option<String> {
    crate::prereq::require(
        "a Postgres server",
        "set FUSE_TEST_DATABASE_URL; scripts/test.sh starts Postgres and sets it",
        crate::prereq::env("FUSE_TEST_DATABASE_URL"),
    )
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

const PREFIX: &str = "fuse_test_";

/// A database that exists while this value lives.
#[derive(Debug)]
pub struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database on the server of `FUSE_TEST_DATABASE_URL`; `None` when it is unset
    /// (outside CI).
    pub async fn create() -> Option<TestDb> {
        let admin = admin_url()?;
        Some(TestDb::create_at(&admin).await)
    }

    /// A fresh database on the server of `admin`. Panics when the server cannot be reached:
    /// with the variable set, a missing Postgres is a failure, not a skip.
    pub async fn create_at(admin: &str) -> TestDb {
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("connect to FUSE_TEST_DATABASE_URL");
        sweep_once(&mut conn).await;
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        TestDb {
            url: with_database(admin, &name),
            admin: admin.to_owned(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin URL it was made from.
    pub fn admin(&self) -> &str {
        &self.admin
    }
}

/// A test database reads as its URL wherever a `&str` is wanted.
impl std::ops::Deref for TestDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs in async tests too: do the async work on a thread of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let drop = async {
                    let mut conn = PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()
                };
                // A server out of connections must not hold a test up: the next run's
                // sweep drops what is left.
                tokio::time::timeout(std::time::Duration::from_secs(10), drop)
                    .await
                    .ok()
                    .flatten()
            })
        })
        .join();
        if !matches!(done, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Drops the test databases of processes that no longer run (a test run that was killed
/// before its databases were dropped), once per process.
async fn sweep_once(conn: &mut PgConnection) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    if SWEPT.set(()).is_err() {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'fuse_test_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            super::with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
