//! Integration tests of the control plane over real HTTP: the server runs in-process on
//! port 0 with the in-memory store and stub hosts; every request goes through a socket.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod e2b;
mod egress;
mod environments;
mod events;
mod fast_start;
mod harness;
mod hosts;
mod parity;
mod ports;
mod reconcile;
mod runtime;
mod security;
mod snapshots;
mod system;
