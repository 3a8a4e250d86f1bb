//! Fresh Postgres databases for tests. `FUSE_TEST_DATABASE_URL` names a server and a role
//! allowed to create databases (`scripts/test.sh` starts Postgres and sets it); each call
//! creates a new, empty database and returns its URL.

#![allow(clippy::expect_used)]

use sqlx::{Connection, PgConnection};

/// The admin URL, or `None` with a printed reason when the variable is unset.
pub fn admin_url() -> Option<String> {
    match std::env::var("FUSE_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "skipping: FUSE_TEST_DATABASE_URL is not set (scripts/test.sh starts Postgres and sets it)"
            );
            None
        }
    }
}

/// Creates a new database and returns its URL. Panics when the server cannot be reached:
/// with the variable set, a missing Postgres is a failure, not a skip.
pub async fn fresh(admin: &str) -> String {
    let mut conn = PgConnection::connect(admin)
        .await
        .expect("connect to FUSE_TEST_DATABASE_URL");
    let name = format!(
        "fuse_test_{}_{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 6]>())
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    with_database(admin, &name)
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
