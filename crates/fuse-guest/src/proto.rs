//! The private-link protocol between `fc-agent` and `fuse-guest`: one request per
//! connection, one JSON line in; one JSON line out, or several ending with the last one (a
//! line is the last unless it carries data — `stdout_b64`, `stderr_b64`, `data_b64` — or
//! says `more`). Every request carries the per-VM token. Byte payloads are standard base64.
//!
//! After the request line the host may send [`Input`] lines on the same connection: the
//! bytes of a file being written, a command's standard input, a terminal's keystrokes and
//! size, and acknowledgements. The host closing the connection (or, on a multiplexed port,
//! ending its channel) is a hang-up: a command or terminal still running is killed.
//!
//! Flow control: a request that names a `window` gets at most that many data lines ahead
//! of the host's acknowledgements (`{"ack": N}`: N data lines consumed so far), so a slow
//! reader on the host slows the guest down on every transport (a multiplexed serial port
//! has no per-request back-pressure of its own). Without `window` the guest sends freely,
//! as older hosts expect.

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
        /// Skip the `fsync` before the rename (still atomic: readers see the old file or
        /// the new one). For a create's setup files, which live or die with their new VM: a
        /// guest that crashes before the kernel writes them back fails its create anyway,
        /// and a snapshot keeps them (memory, or a disk taken after `sync`). An older guest
        /// ignores the field and syncs.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_sync: bool,
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
        /// Standard input, base64 (closed after it; none when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin_b64: Option<String>,
        /// Flow-control window (data lines ahead of the host's acks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
    },
    /// Fetch (when `download_url` is given) and launch the agent, restarting it when it
    /// crashes; answers once it is up or has failed (`agent::Supervisor::start`).
    StartAgent {
        /// Where to fetch the binary from (every start; it replaces what is at
        /// `binary_path`). Empty: the binary is in the image.
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
        /// Expected SHA-256 (hex) of the download; empty: not checked.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sha256: String,
        /// The agent's listen address; its port answering means the agent is up.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        listen: String,
        /// The start window (default 3 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_window_ms: Option<u64>,
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
    /// Write a file from [`Input`] lines (`data_b64`… then `eof` with the `sha256`):
    /// atomically (a temp file renamed at the end; nothing changes if the host hangs up or
    /// the checksum differs), parents created. Answers `size` and `sha256`.
    WriteFile {
        /// Absolute guest path.
        path: String,
        /// Mode (default 0644).
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Read a file: a header (`more`, `size`, `sha256`, `mode`), `data_b64` lines, then a
    /// last line with `size` and `sha256` of what was sent.
    ReadFile {
        /// Absolute guest path.
        path: String,
        /// Flow-control window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
    },
    /// List a directory (`entries`, sorted by name, at most `limit`).
    ListDir {
        /// Absolute guest path.
        path: String,
        /// Most entries answered (default and ceiling 10 000).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Remove a file, or a directory with everything in it when `recursive`.
    Remove {
        /// Absolute guest path.
        path: String,
        /// Remove a directory tree.
        #[serde(default)]
        recursive: bool,
    },
    /// Run a command on a new pseudo-terminal: [`Input`] lines carry keystrokes
    /// (`data_b64`) and sizes (`resize`); the answer is `data_b64` lines of terminal output,
    /// then `exit_code`. The default command is the login shell.
    Pty {
        /// Argument vector (the login shell when empty).
        #[serde(default)]
        cmd: Vec<String>,
        /// Extra environment (`TERM` defaults to `xterm-256color`).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory (guest path; default `/`).
        #[serde(default)]
        cwd: Option<String>,
        /// Initial size.
        #[serde(default)]
        size: Option<WinSize>,
        /// Flow-control window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
    },
    /// Run the startup script (`sh -lc`), its output (stdout and stderr together) appended
    /// to the startup log; answers `exit_code` and, in `stderr_b64`, the output's tail.
    Startup {
        /// The script.
        script: String,
        /// Limit (default 30 s); past it the script's process group is killed (124).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Take a new identity (a VM restored from another VM's memory, a warm VM claimed, a
    /// cold boot that names its hostname): each given part is applied, in this order, and
    /// named in the answer's `applied`; an absent part is left as it is. Idempotent. Under
    /// the `process` backend (a helper whose root is not `/`) only the token is applied:
    /// the rest would be the host's. See `identity`.
    Identity(Identity),
    /// Read a chunk of a guest log (`agent` or `startup`): from `offset` of the file `id`
    /// (a reader's last answer), or, without them, from the start of its last `tail` lines.
    /// Answers `log_b64` (possibly empty), `log_id` and `log_offset` for the next read.
    ReadLog {
        /// `agent` or `startup`.
        source: String,
        /// Lines from the end to start at (when `offset` is absent; default all).
        #[serde(default)]
        tail: Option<u32>,
        /// The file id of a previous answer.
        #[serde(default)]
        id: Option<u64>,
        /// The offset of a previous answer.
        #[serde(default)]
        offset: Option<u64>,
        /// Bytes at most (default and ceiling 64 KiB).
        #[serde(default)]
        max_bytes: Option<u32>,
    },
}

/// What an [`Op::Identity`] sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The token the helper accepts from now on (this request was made with the old one;
    /// not `token`, which is the request's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_token: Option<String>,
    /// The hostname (`sethostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The network of `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<IdentityNet>,
    /// The host's clock (Unix milliseconds), set as the guest's `CLOCK_REALTIME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<u64>,
    /// Fresh bytes from the host's random source (base64), added to the kernel's pool,
    /// credited, and the kernel's generator reseeded from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_b64: Option<String>,
}

/// The network part of an [`Identity`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityNet {
    /// The interface (`eth0` when empty).
    #[serde(default)]
    pub dev: String,
    /// Its new MAC address (`02:…`, locally administered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its only IPv4 address.
    pub address: String,
    /// The address's prefix length.
    pub prefix: u8,
    /// The default route's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A line the host sends after its request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Input {
    /// Bytes (a file's content, standard input, keystrokes), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// The end of the input (a file's last byte was sent; standard input closes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
    /// With `eof` of a file write: the SHA-256 (hex) of every byte sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A terminal's new size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<WinSize>,
    /// Data lines the host has consumed so far (flow control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WinSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirEntry {
    /// The name.
    pub name: String,
    /// The guest path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, seconds since the epoch.
    pub modified_unix: i64,
}

/// What kind of failure an `error` is, when the host should tell them apart.
pub mod code {
    /// The path does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// The path names a directory where a file was expected, or the reverse.
    pub const WRONG_TYPE: &str = "wrong_type";
    /// The request is invalid (a relative path, a bad checksum, bad base64).
    pub const INVALID: &str = "invalid";
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
    /// With `error`: its kind (see [`code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Bytes of a file being read, or a terminal's output, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// More lines follow this one (a file read's header).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// A file's size (read: before the data; write: what was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A file's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A file's permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// A directory listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<DirEntry>>,
    /// A buffered exec's output, or a listing, was cut at its limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Log read: the bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_b64: Option<String>,
    /// Log read: the file the next read continues in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_id: Option<u64>,
    /// Log read: the offset the next read starts at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_offset: Option<u64>,
    /// Identity: the parts applied (`token`, `hostname`, `mac`, `address`, `clock`,
    /// `random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Vec<String>>,
}

impl Response {
    /// A failure.
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            error: Some(msg.into()),
            ..Response::default()
        }
    }

    /// A failure of a kind the host tells apart ([`code`]).
    pub fn err_code(code: &str, msg: impl Into<String>) -> Self {
        Response {
            error: Some(msg.into()),
            code: Some(code.to_owned()),
            ..Response::default()
        }
    }

    /// Whether the line carries data (more lines follow it).
    pub fn is_data(&self) -> bool {
        self.stdout_b64.is_some() || self.stderr_b64.is_some() || self.data_b64.is_some()
    }

    /// Whether it is the last line of its request.
    pub fn is_last(&self) -> bool {
        self.error.is_some() || self.exit_code.is_some() || !(self.is_data() || self.more)
    }
}
