//! The private-link protocol between `fc-agent` and `fuse-guest`: one request per
//! connection, one JSON line in; one JSON line out (or, for a streaming exec, several lines
//! ending with the one that carries `exit_code`). Every request carries the per-VM token.
//! Byte payloads are standard base64.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The per-VM token given at boot.
    pub token: String,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Liveness and agent state.
    Health,
    /// Write a file atomically (parents created).
    Upload {
        /// Absolute guest path.
        path: String,
        /// Content, base64.
        content_b64: String,
        /// Mode (default 0644).
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Run a command.
    Exec {
        /// Argument vector (or use `shell`).
        #[serde(default)]
        cmd: Vec<String>,
        /// Shell command (`sh -c`).
        #[serde(default)]
        shell: Option<String>,
        /// Extra environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory (guest path).
        #[serde(default)]
        cwd: Option<String>,
        /// Limit (default 30 s).
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Stream output lines as they come.
        #[serde(default)]
        stream: bool,
    },
    /// Fetch (once) and launch the agent, restarting it when it crashes.
    StartAgent {
        /// Where to fetch the binary from when `binary_path` is missing or empty.
        #[serde(default)]
        download_url: String,
        /// The launch command (`sh -c`).
        command: String,
        /// The binary's guest path.
        #[serde(default)]
        binary_path: String,
        /// Environment for the agent.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Stop the agent: SIGTERM, then SIGKILL after `grace_ms`.
    StopAgent {
        /// Grace period (default 10 s).
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    /// A healthcheck's HTTP probe: `GET http://127.0.0.1:{port}{path}` from inside the
    /// guest (HTTP/1.0, plain TCP); answers the status code, or an error when there is none.
    HttpGet {
        /// Guest port.
        port: u16,
        /// Request path (`/` when empty).
        #[serde(default)]
        path: String,
        /// Bound on connect, send and the status line together (default 2 s).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// A response line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// Set on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code (exec: final line; stop_agent: the agent's, if it exited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Standard output (exec), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    /// Standard error (exec), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// Health: whether the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_running: Option<bool>,
    /// Health: helper version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Health: agent restarts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restarts: Option<u32>,
    /// HTTP probe: the status code of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl Response {
    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            error: Some(msg.into()),
            ..Response::default()
        }
    }
}
