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

/// Whether text logs get ANSI colours: only when stdout (where they go) is a terminal and
/// `NO_COLOR` is unset or empty, so a log file or journald gets plain text.
pub fn colour_logs() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
