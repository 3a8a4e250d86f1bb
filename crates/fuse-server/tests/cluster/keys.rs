//! The encryption key against a real database with real `fuse` processes: a wrong key stops
//! `fuse` at start with exit code 2 and a message naming `TOKEN_ENCRYPTION_KEY` (no retry
//! loop), and `fuse rotate-key` refuses while a replica runs, refuses a wrong old key, and
//! otherwise re-seals everything so that the next start with the new key uses the stored
//! host token.

use crate::harness::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NEW_KEY: &str = "9d3c0e9d8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a71";
const WRONG_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// Waits for the process to exit by itself; its exit code.
fn exit_code(p: &mut FuseProc, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    let child = p.child.as_mut().unwrap();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        assert!(
            Instant::now() < deadline,
            "fuse did not stop by itself; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rotate(db: &str, old: &str, new: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fuse"))
        .env_clear()
        .env("DATABASE_URL", db)
        .env("TOKEN_ENCRYPTION_KEY", old)
        .env("TOKEN_ENCRYPTION_KEY_NEW", new)
        .arg("rotate-key")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_wrong_key_stops_fuse_and_rotate_key_moves_everything_to_a_new_one() {
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let (_stub, addr, _host) = stub_host().await;
    let mut a = spawn_fuse(&db, &[]);
    a.ready().await;
    a.register("h", addr, 10).await;
    let (s, _) = a
        .post(
            "/v1/environments",
            serde_json::json!({"task_id": "sealed", "secrets": {"K": "v"}}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::CREATED);

    // While a replica runs, a rotation is refused and changes nothing.
    let busy = rotate(&db, KEY, NEW_KEY);
    assert_eq!(busy.status.code(), Some(2), "{}", text(&busy));
    assert!(
        text(&busy).contains("stop every fuse replica"),
        "{}",
        text(&busy)
    );
    a.kill9();

    // A wrong key: a clear error and exit code 2, soon, not a retry loop.
    for (key, needle) in [
        (
            WRONG_KEY,
            "TOKEN_ENCRYPTION_KEY does not open the key check",
        ),
        ("", "TOKEN_ENCRYPTION_KEY is not set"),
    ] {
        let mut wrong = spawn_fuse(&db, &[("TOKEN_ENCRYPTION_KEY", key)]);
        assert_eq!(exit_code(&mut wrong, Duration::from_secs(20)), Some(2));
        let log = wrong.log_text();
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
        assert!(!log.contains("retrying"), "{log}");
    }

    // A rotation with a wrong old key changes nothing; with the right one it says what it did.
    let refused = rotate(&db, WRONG_KEY, NEW_KEY);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("nothing changed"),
        "{}",
        text(&refused)
    );
    let done = rotate(&db, KEY, NEW_KEY);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    assert!(
        text(&done).contains("re-sealed 1 VM secret(s), 1 host token(s) and the key check"),
        "{}",
        text(&done)
    );

    // The old key no longer starts fuse; the new one does, and the host token it reads back
    // is accepted by the host (the host would answer 401 to a token that did not open).
    let mut old = spawn_fuse(&db, &[]);
    assert_eq!(exit_code(&mut old, Duration::from_secs(20)), Some(2));
    let b = spawn_fuse(&db, &[("TOKEN_ENCRYPTION_KEY", NEW_KEY)]);
    b.ready().await;
    let (s, body) = b
        .post(
            "/v1/environments/fuse-sealed?action=exec",
            serde_json::json!({"cmd": ["echo", "hi"]}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["exit_code"], 0, "{body}");
}
