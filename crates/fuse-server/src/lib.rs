//! The Fuse control plane: REST API (`http`), domain operations (`app`), providers that act
//! on hosts (`provider`), live events, metrics and background loops. The `fuse` binary is a
//! thin `main` over [`server::start`] and [`rotate_key`]; [`serve`] is the HTTP server
//! under the router (connection limits and timeouts).

pub mod app;
pub mod background;
pub mod config;
pub mod events;
pub mod http;
pub mod metrics;
pub mod profile;
pub mod provider;
pub mod rotate_key;
pub mod serve;
pub mod server;
