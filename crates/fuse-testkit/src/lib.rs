//! The one test harness of the workspace. What a test needs from outside itself comes
//! from here, the same way for every crate:
//!
//! - [`prereq`]: a prerequisite (a database URL, root, the Firecracker binary, QEMU and a
//!   guest image) that is missing makes a test **fail under CI** (`CI` set, as
//!   `scripts/test.sh` does) and skip with a printed reason elsewhere;
//! - [`db`]: a fresh Postgres database per test, dropped when the test ends (and leftovers
//!   of killed test processes swept on first use);
//! - [`server`]: the control plane in-process on port 0 with a client (memory store, or
//!   Postgres with `FUSE_API_STORE=postgres`);
//! - [`process`]: `fuse` as a real process, stub hosts served over HTTP, and a TCP proxy in
//!   front of Postgres that a test can cut;
//! - [`netns`]: test hosts on one machine, each a network namespace linked to the root
//!   namespace by a veth pair the test can cut;
//! - [`wait`]: waits for a condition with a deadline (never a bare sleep).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod db;
pub mod netns;
pub mod prereq;
pub mod process;
pub mod runtime;
pub mod server;
pub mod wait;

pub use db::TestDb;
pub use prereq::require;
pub use wait::eventually;
