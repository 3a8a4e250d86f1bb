//! The process-level tests' harness is the workspace's one (`fuse-testkit`): `fuse`
//! processes, stub hosts over HTTP, a TCP proxy to Postgres; this file only names this
//! crate's `fuse` binary.

pub use fuse_testkit::eventually;
pub use fuse_testkit::process::*;

/// A `fuse` process of this build on `db` with short periods; `extra` env overrides.
pub fn spawn_fuse(db: &str, extra: &[(&str, &str)]) -> FuseProc {
    fuse_testkit::process::spawn_fuse(std::path::Path::new(env!("CARGO_BIN_EXE_fuse")), db, extra)
}
