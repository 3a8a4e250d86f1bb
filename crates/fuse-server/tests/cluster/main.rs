//! Tests with real `fuse` processes on a real Postgres: replicas, crash recovery (`kill -9`),
//! database faults (through a TCP proxy the test controls), secrets kept out of logs, the
//! encryption key check and `fuse rotate-key` (`keys`), and
//! real Linux guests under QEMU through a real `fc-agent` (`real_guests`), and the ports
//! proxy to servers in an environment on a real `fc-agent` (`ports`).
//! `hardening` runs `fuse` against slow and idle clients (no database needed).
//! Hosts are stub hosts served over HTTP by the test process, so they outlive a killed
//! `fuse`. Skipped with a printed reason when `FUSE_TEST_DATABASE_URL` is unset.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent;
mod check;
mod cli;
mod crash;
mod db_faults;
mod e2b;
mod fast_start;
mod faults;
mod hardening;
mod harness;
mod hosts;
mod keys;
mod multihost;
mod plain_logs;
mod ports;
mod real_guests;
mod replicas;
mod runtime;
mod sdk;
mod soak;
mod ui;
mod wire;
