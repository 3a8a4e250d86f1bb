//! The one typed configuration of `fuse`, built once at start from flags and environment
//! variables (DESIGN §7). Every value is read here as text and validated together, so a bad
//! configuration yields one error that lists every problem. No other module reads the
//! environment. `fuse` with no subcommand serves; `fuse rotate-key` re-seals the stored
//! secrets under a new key (its flags are validated by `rotate_key::RotateKeyConfig`).

pub mod proxy;

use clap::{Parser, Subcommand};
use fuse_scheduler::Policy;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags; each has an environment variable of the same meaning.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "fuse",
    version,
    about = "Fuse control plane: Firecracker microVMs for AI agents"
)]
pub struct Flags {
    /// What to do; none serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Listen address (`:8080` means every interface).
    #[arg(long, env = "ORCH_LISTEN", default_value = ":8080")]
    pub listen: String,
    /// Postgres URL; empty selects the in-memory store.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Base URL of a single default host agent.
    #[arg(
        long = "firecracker-url",
        env = "FIRECRACKER_BASE_URL",
        default_value = ""
    )]
    pub firecracker_url: String,
    /// Bearer token of the default host agent.
    #[arg(
        long,
        env = "FIRECRACKER_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub firecracker_token: String,
    /// 64 hex characters (AES-256-GCM key) for secrets at rest; with `rotate-key`, the key
    /// the data is sealed with now.
    #[arg(
        long,
        env = "TOKEN_ENCRYPTION_KEY",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub token_encryption_key: String,
    /// `firecracker` or `stub`; empty chooses from the other settings.
    #[arg(long, env = "FUSE_PROVIDER", default_value = "")]
    pub provider: String,
    /// Default download URL of the agent binary.
    #[arg(long, env = "AGENT_DOWNLOAD_URL", default_value = "")]
    pub agent_download_url: String,
    /// TLS certificate (PEM).
    #[arg(long, env = "ORCH_TLS_CERT", default_value = "")]
    pub tls_cert: String,
    /// TLS private key (PEM).
    #[arg(long, env = "ORCH_TLS_KEY", default_value = "")]
    pub tls_key: String,
    /// Bearer token required on `/v1`.
    #[arg(
        long,
        env = "ORCH_AUTH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub auth_token: String,
    /// Comma-separated CIDRs allowed to call `/v1` (empty: any).
    #[arg(long, env = "ORCH_ALLOWED_CIDRS", default_value = "")]
    pub allowed_cidrs: String,
    /// Refuse to start unless auth token, encryption key and database are set.
    #[arg(long, env = "ORCH_REQUIRE_AUTH", default_value = "false")]
    pub require_auth: String,
    /// Prefix of VM ids.
    #[arg(long, env = "ORCH_VM_PREFIX", default_value = "fuse-")]
    pub vm_prefix: String,
    /// Agent profile: `fused` or `surfd`.
    #[arg(long, env = "FUSE_AGENT_PROFILE", default_value = "fused")]
    pub agent_profile: String,
    /// Placement policy: `spread` or `binpack`.
    #[arg(long, env = "FUSE_SCHEDULER_POLICY", default_value = "spread")]
    pub scheduler_policy: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "ORCH_MAX_BODY_BYTES", default_value = "16777216")]
    pub max_body_bytes: String,
    /// Largest file accepted by `PUT /v1/environments/{id}/files`, in bytes (streamed to
    /// the guest, never held here).
    #[arg(long, env = "FUSE_MAX_FILE_BYTES", default_value = "1073741824")]
    pub max_file_bytes: String,
    /// Seconds a client has to send a whole request head (and, over TLS, finish the
    /// handshake) once it starts one; a new connection's clock starts at accept.
    #[arg(long, env = "ORCH_HEADER_TIMEOUT_SECS", default_value = "10")]
    pub header_timeout_secs: String,
    /// Seconds a kept-alive connection may wait for its next request; never cuts a
    /// request in progress (SSE streams, long exec calls).
    #[arg(long, env = "ORCH_IDLE_TIMEOUT_SECS", default_value = "60")]
    pub idle_timeout_secs: String,
    /// Seconds a client has to send a whole request body, from the end of its head.
    #[arg(long, env = "ORCH_BODY_TIMEOUT_SECS", default_value = "60")]
    pub body_timeout_secs: String,
    /// Most client connections open at once; one more is closed at once (and counted).
    #[arg(long, env = "ORCH_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: String,
    /// Seconds between SSE keepalive comments.
    #[arg(long, env = "FUSE_SSE_KEEPALIVE_SECS", default_value = "15")]
    pub sse_keepalive_secs: String,
    /// Seconds between host health polls.
    #[arg(long, env = "FUSE_HOST_POLL_SECS", default_value = "10")]
    pub host_poll_secs: String,
    /// Seconds between garbage-collection passes (old terminal records, expired snapshots).
    #[arg(long, env = "FUSE_GC_PERIOD_SECS", default_value = "60")]
    pub gc_period_secs: String,
    /// Seconds between warm-pool passes (a pool is also refilled at once when drawn).
    #[arg(long, env = "FUSE_POOL_PERIOD_SECS", default_value = "10")]
    pub pool_period_secs: String,
    /// How long destroyed environments stay visible before they are purged.
    #[arg(long, env = "FUSE_TERMINAL_RETENTION_SECS", default_value = "86400")]
    pub terminal_retention_secs: String,
    /// Default snapshot retention.
    #[arg(long, env = "FUSE_SNAPSHOT_RETENTION_SECS", default_value = "604800")]
    pub snapshot_retention_secs: String,
    /// Seconds between passes that recover interrupted work (abandoned provisions and destroys).
    #[arg(long, env = "FUSE_RECOVERY_PERIOD_SECS", default_value = "30")]
    pub recovery_period_secs: String,
    /// Seconds between reconcile passes (one also runs at start).
    #[arg(long, env = "FUSE_RECONCILE_PERIOD_SECS", default_value = "30")]
    pub reconcile_period_secs: String,
    /// How old a VM no environment tracks must be before the reconciler destroys it.
    #[arg(long, env = "FUSE_ORPHAN_GRACE_SECS", default_value = "120")]
    pub orphan_grace_secs: String,
    /// Seconds a host may stay silent before it is `unreachable` (0: three poll periods).
    #[arg(long, env = "FUSE_HOST_DOWN_AFTER_SECS", default_value = "0")]
    pub host_down_after_secs: String,
    /// Consecutive boot failures that quarantine (cordon) a host; 0 disables quarantine.
    #[arg(long, env = "FUSE_QUARANTINE_AFTER", default_value = "3")]
    pub quarantine_after: String,
    /// Limit of the drain command.
    #[arg(long, env = "FUSE_DRAIN_TIMEOUT_SECS", default_value = "30")]
    pub drain_timeout_secs: String,
    /// The agent's launch command for environments that do not give one (empty: the
    /// profile's), e.g. for hosts whose images have another agent.
    #[arg(long, env = "FUSE_AGENT_COMMAND", default_value = "")]
    pub agent_command: String,
    /// How long an agent has to come up after its start, in milliseconds (an
    /// environment's `agent.start_window_ms` overrides it): it is up when its listen port
    /// answers, or when it is still running at the end of the window.
    #[arg(long, env = "FUSE_AGENT_START_WINDOW_MS", default_value = "3000")]
    pub agent_start_window_ms: String,
    /// Limit of a whole provision (create, uploads, startup script, agent start).
    #[arg(long, env = "FUSE_PROVISION_TIMEOUT_SECS", default_value = "600")]
    pub provision_timeout_secs: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "FUSE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Accept host URLs that are (or resolve to) link-local addresses (169.254.0.0/16,
    /// fe80::/10), where cloud metadata services answer.
    #[arg(long, env = "FUSE_ALLOW_LINK_LOCAL_HOSTS", default_value = "false")]
    pub allow_link_local_hosts: String,
    /// The URL clients reach this control plane at (e.g. `https://fuse.example.com`): the
    /// base of the ports proxy's path-based endpoint URLs (empty: they are relative).
    #[arg(long, env = "FUSE_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// Domain of the ports proxy's host-based URLs, `{port}-{id}.{domain}` (needs a
    /// wildcard DNS record, and for HTTPS a wildcard certificate: FUSE_PROXY_TLS_CERT/KEY or
    /// a TLS terminator in front). Empty: path-based URLs only.
    #[arg(long, env = "FUSE_PROXY_DOMAIN", default_value = "")]
    pub proxy_domain: String,
    /// PEM certificate chain for `*.{FUSE_PROXY_DOMAIN}`: the listener speaks TLS and
    /// answers names under the domain with it (SNI), other names with ORCH_TLS_CERT.
    #[arg(long, env = "FUSE_PROXY_TLS_CERT", default_value = "")]
    pub proxy_tls_cert: String,
    /// PEM private key of FUSE_PROXY_TLS_CERT.
    #[arg(long, env = "FUSE_PROXY_TLS_KEY", default_value = "")]
    pub proxy_tls_key: String,
    /// How long the ports proxy waits for a guest's response head (seconds).
    #[arg(long, env = "FUSE_PROXY_TIMEOUT_SECS", default_value = "60")]
    pub proxy_timeout_secs: String,
    /// Where the E2B-compatible API is served (`E2B_API_URL` is this server's URL with it,
    /// e.g. `http://fuse:8080/e2b`); `off` serves none. Sandboxes' envd and ports are
    /// routed by the `E2b-Sandbox-Id`/`-Port` headers, and by `{port}-{id}.{FUSE_PROXY_DOMAIN}`.
    #[arg(long, env = "FUSE_E2B_PREFIX", default_value = "/e2b")]
    pub e2b_prefix: String,
}

/// Subcommands of `fuse`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Re-seal every stored secret (VM secrets, host tokens, the key check) under a new key,
    /// in one transaction. Needs DATABASE_URL and the current TOKEN_ENCRYPTION_KEY; refused
    /// while any fuse process is connected to the database (stop every replica first, then
    /// start them with the new key).
    RotateKey(RotateKeyFlags),
}

/// Flags of `fuse rotate-key`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RotateKeyFlags {
    /// The new key: 64 hex characters, different from TOKEN_ENCRYPTION_KEY.
    #[arg(
        long,
        env = "TOKEN_ENCRYPTION_KEY_NEW",
        default_value = "",
        hide_env_values = true
    )]
    pub new_key: String,
}

/// 64 hex characters as a 32-byte key.
pub(crate) fn parse_key(k: &str) -> Option<[u8; 32]> {
    hex::decode(k).ok()?.try_into().ok()
}

/// Whether `u` names a Postgres database.
pub(crate) fn is_postgres_url(u: &str) -> bool {
    u.starts_with("postgres://") || u.starts_with("postgresql://")
}

/// Which provider serves VMs when no host is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultProvider {
    /// The in-memory stub.
    Stub,
    /// One `fc-agent` at this URL.
    HostAgent {
        /// Base URL.
        url: String,
        /// Bearer token.
        token: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Postgres URL, if any.
    pub database_url: Option<String>,
    /// The provider used when no host is registered.
    pub default_provider: DefaultProvider,
    /// AES-256-GCM key for secrets at rest.
    pub encryption_key: Option<[u8; 32]>,
    /// Default agent download URL.
    pub agent_download_url: String,
    /// TLS certificate and key paths.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bearer token on `/v1`.
    pub auth_token: Option<String>,
    /// Allowed client networks (empty: any).
    pub allowed_cidrs: Vec<IpNet>,
    /// VM id prefix.
    pub vm_prefix: String,
    /// Agent profile name.
    pub agent_profile: String,
    /// Placement policy.
    pub policy: Policy,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Runtime file-write limit.
    pub max_file_bytes: u64,
    /// Time to send a request head (and the TLS handshake).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// SSE keepalive period.
    pub sse_keepalive: Duration,
    /// Host poll period.
    pub host_poll: Duration,
    /// GC period.
    pub gc_period: Duration,
    /// Warm-pool loop period.
    pub pool_period: Duration,
    /// Recovery period.
    pub recovery_period: Duration,
    /// Reconcile period.
    pub reconcile_period: Duration,
    /// Age before an untracked VM is destroyed.
    pub orphan_grace: Duration,
    /// Silence before a host is `unreachable`.
    pub host_down_after: Duration,
    /// Consecutive boot failures that quarantine a host (0: never).
    pub quarantine_after: u32,
    /// Destroyed records kept this long.
    pub terminal_retention: Duration,
    /// Default snapshot retention.
    pub snapshot_retention: Duration,
    /// Drain command limit.
    pub drain_timeout: Duration,
    /// Provision limit.
    pub provision_timeout: Duration,
    /// The agent's default start window.
    pub agent_start_window: Duration,
    /// The default launch command (empty: the profile's).
    pub agent_command: String,
    /// Emit JSON logs.
    pub log_json: bool,
    /// Accept link-local host URLs at registration.
    pub allow_link_local_hosts: bool,
    /// The ports proxy.
    pub proxy: proxy::ProxyConfig,
    /// The path the E2B-compatible API is under (`None`: not served).
    pub e2b_prefix: Option<String>,
}

/// The shortest accepted `ORCH_AUTH_TOKEN` (the host agent's `FC_AGENT_TOKEN` has the same
/// floor).
pub const MIN_AUTH_TOKEN_CHARS: usize = 16;

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Parses flags and environment; `env` resolves the legacy alias variables
    /// (`SURF_PROVIDER`, `SURFD_DOWNLOAD_URL`).
    pub fn load() -> Result<Config, ConfigError> {
        Config::from_env_flags(Flags::parse())
    }

    /// [`Config::from_flags`] with the process environment for the legacy aliases (for
    /// a caller that parsed the flags itself, to look at the subcommand first).
    pub fn from_env_flags(f: Flags) -> Result<Config, ConfigError> {
        Config::from_flags(f, |k| std::env::var(k).ok())
    }

    /// Validates `f`, listing every problem.
    pub fn from_flags(
        f: Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        let listen = parse_listen(&f.listen).unwrap_or_else(|e| {
            errs.push(format!("ORCH_LISTEN: {e}"));
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });
        let provider = if f.provider.is_empty() {
            env("SURF_PROVIDER").unwrap_or_default()
        } else {
            f.provider.clone()
        };
        let download = if f.agent_download_url.is_empty() {
            env("SURFD_DOWNLOAD_URL").unwrap_or_default()
        } else {
            f.agent_download_url.clone()
        };
        let default_provider = match provider.as_str() {
            "" | "firecracker" if !f.firecracker_url.is_empty() => {
                if let Err(e) = check_http_url(&f.firecracker_url) {
                    errs.push(format!("FIRECRACKER_BASE_URL: {e}"));
                }
                DefaultProvider::HostAgent {
                    url: f.firecracker_url.trim_end_matches('/').to_owned(),
                    token: f.firecracker_token.clone(),
                }
            }
            "" | "firecracker" | "stub" => DefaultProvider::Stub,
            other => {
                errs.push(format!(
                    "FUSE_PROVIDER: unknown provider {other:?}; expected firecracker or stub"
                ));
                DefaultProvider::Stub
            }
        };
        let encryption_key = match f.token_encryption_key.as_str() {
            "" => None,
            k => match parse_key(k) {
                Some(key) => Some(key),
                None => {
                    errs.push(format!(
                        "TOKEN_ENCRYPTION_KEY: must be exactly 64 hex characters (got {} characters)",
                        k.len()
                    ));
                    None
                }
            },
        };
        let tls = match (f.tls_cert.as_str(), f.tls_key.as_str()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                errs.push("ORCH_TLS_CERT and ORCH_TLS_KEY must be set together".into());
                None
            }
            (c, k) => {
                for (name, p) in [("ORCH_TLS_CERT", c), ("ORCH_TLS_KEY", k)] {
                    if !std::path::Path::new(p).is_file() {
                        errs.push(format!("{name}: {p} is not a readable file"));
                    }
                }
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
        };
        let mut allowed_cidrs = Vec::new();
        for part in f
            .allowed_cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match part.parse::<IpNet>() {
                Ok(n) => allowed_cidrs.push(n),
                Err(_) => match part.parse::<std::net::IpAddr>() {
                    Ok(ip) => allowed_cidrs.push(IpNet::from(ip)),
                    Err(_) => errs.push(format!(
                        "ORCH_ALLOWED_CIDRS: {part:?} is not a CIDR (e.g. 10.0.0.0/8) or address"
                    )),
                },
            }
        }
        // The same floor as fc-agent's token: a short bearer token is guessable, and it is
        // the only thing guarding `/v1` when set.
        if !f.auth_token.is_empty() && f.auth_token.chars().count() < MIN_AUTH_TOKEN_CHARS {
            errs.push(format!(
                "ORCH_AUTH_TOKEN: must be at least {MIN_AUTH_TOKEN_CHARS} characters (got {})",
                f.auth_token.chars().count()
            ));
        }
        let require_auth = parse_bool(&f.require_auth).unwrap_or_else(|e| {
            errs.push(format!("ORCH_REQUIRE_AUTH: {e}"));
            false
        });
        if require_auth {
            let mut missing = Vec::new();
            if f.auth_token.is_empty() {
                missing.push("ORCH_AUTH_TOKEN");
            }
            if f.token_encryption_key.is_empty() {
                missing.push("TOKEN_ENCRYPTION_KEY");
            }
            if f.database_url.is_empty() {
                missing.push("DATABASE_URL");
            }
            if !missing.is_empty() {
                errs.push(format!(
                    "ORCH_REQUIRE_AUTH is set but these are missing: {}",
                    missing.join(", ")
                ));
            }
        }
        let prefix_ok = f.vm_prefix.len() <= 20
            && f.vm_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !prefix_ok {
            errs.push(format!(
                "ORCH_VM_PREFIX: {:?} must be at most 20 characters of [a-z0-9-]",
                f.vm_prefix
            ));
        }
        if crate::profile::Profile::by_name(&f.agent_profile).is_none() {
            errs.push(format!(
                "FUSE_AGENT_PROFILE: unknown profile {:?}; expected one of {}",
                f.agent_profile,
                crate::profile::Profile::NAMES.join(", ")
            ));
        }
        let policy = f.scheduler_policy.parse::<Policy>().unwrap_or_else(|e| {
            errs.push(format!("FUSE_SCHEDULER_POLICY: {e}"));
            Policy::Spread
        });
        let mut num = |name: &str, v: &str, min: u64, max: u64| -> u64 {
            match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    errs.push(format!(
                        "{name}: {v:?} must be a whole number from {min} to {max}"
                    ));
                    min
                }
            }
        };
        let max_body_bytes = num("ORCH_MAX_BODY_BYTES", &f.max_body_bytes, 1024, 1 << 30) as usize;
        let max_file_bytes = num("FUSE_MAX_FILE_BYTES", &f.max_file_bytes, 1, 1 << 40);
        let header_timeout = secs(num(
            "ORCH_HEADER_TIMEOUT_SECS",
            &f.header_timeout_secs,
            1,
            3600,
        ));
        let idle_timeout = secs(num(
            "ORCH_IDLE_TIMEOUT_SECS",
            &f.idle_timeout_secs,
            1,
            86400,
        ));
        let body_timeout = secs(num(
            "ORCH_BODY_TIMEOUT_SECS",
            &f.body_timeout_secs,
            1,
            86400,
        ));
        let max_connections =
            num("ORCH_MAX_CONNECTIONS", &f.max_connections, 1, 1_000_000) as usize;
        let sse_keepalive = secs(num(
            "FUSE_SSE_KEEPALIVE_SECS",
            &f.sse_keepalive_secs,
            1,
            3600,
        ));
        let host_poll = secs(num("FUSE_HOST_POLL_SECS", &f.host_poll_secs, 1, 3600));
        let gc_period = secs(num("FUSE_GC_PERIOD_SECS", &f.gc_period_secs, 1, 86400));
        let pool_period = secs(num("FUSE_POOL_PERIOD_SECS", &f.pool_period_secs, 1, 3600));
        let recovery_period = secs(num(
            "FUSE_RECOVERY_PERIOD_SECS",
            &f.recovery_period_secs,
            1,
            86400,
        ));
        let reconcile_period = secs(num(
            "FUSE_RECONCILE_PERIOD_SECS",
            &f.reconcile_period_secs,
            1,
            86400,
        ));
        let orphan_grace = secs(num(
            "FUSE_ORPHAN_GRACE_SECS",
            &f.orphan_grace_secs,
            0,
            86400,
        ));
        let host_down_after = match num(
            "FUSE_HOST_DOWN_AFTER_SECS",
            &f.host_down_after_secs,
            0,
            86400,
        ) {
            0 => host_poll * 3,
            n => secs(n),
        };
        let quarantine_after = num("FUSE_QUARANTINE_AFTER", &f.quarantine_after, 0, 1000) as u32;
        let terminal_retention = secs(num(
            "FUSE_TERMINAL_RETENTION_SECS",
            &f.terminal_retention_secs,
            0,
            u64::from(u32::MAX),
        ));
        let snapshot_retention = secs(num(
            "FUSE_SNAPSHOT_RETENTION_SECS",
            &f.snapshot_retention_secs,
            0,
            u64::from(u32::MAX),
        ));
        let drain_timeout = secs(num(
            "FUSE_DRAIN_TIMEOUT_SECS",
            &f.drain_timeout_secs,
            1,
            3600,
        ));
        let provision_timeout = secs(num(
            "FUSE_PROVISION_TIMEOUT_SECS",
            &f.provision_timeout_secs,
            1,
            86400,
        ));
        // Empty (flags built in code) is the default.
        let agent_start_window =
            Duration::from_millis(if f.agent_start_window_ms.trim().is_empty() {
                3000
            } else {
                num(
                    "FUSE_AGENT_START_WINDOW_MS",
                    &f.agent_start_window_ms,
                    1,
                    600_000,
                )
            });
        let log_json = match f.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errs.push(format!("FUSE_LOG_FORMAT: {other:?}; expected text or json"));
                false
            }
        };
        let allow_link_local_hosts = parse_bool(&f.allow_link_local_hosts).unwrap_or_else(|e| {
            errs.push(format!("FUSE_ALLOW_LINK_LOCAL_HOSTS: {e}"));
            false
        });
        let proxy = proxy::ProxyConfig::from_flags(&f, tls.is_some(), listen, &mut errs);
        let e2b_prefix = match f.e2b_prefix.trim().trim_end_matches('/') {
            "off" => None,
            // Flags built in code (not parsed) leave it empty: the default.
            "" => Some("/e2b".to_owned()),
            p if p.starts_with('/')
                && !p.starts_with("/v1")
                && !p.starts_with("/ui")
                && p[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b)) =>
            {
                Some(p.to_owned())
            }
            p => {
                errs.push(format!(
                    "FUSE_E2B_PREFIX: {p:?} must be a path like /e2b (not under /v1 or /ui), or off"
                ));
                None
            }
        };
        let db_ok = f.database_url.is_empty() || is_postgres_url(&f.database_url);
        if !db_ok {
            errs.push("DATABASE_URL: must start with postgres:// or postgresql://".into());
        }
        if !errs.is_empty() {
            return Err(ConfigError(errs));
        }
        Ok(Config {
            listen,
            database_url: (!f.database_url.is_empty()).then_some(f.database_url),
            default_provider,
            encryption_key,
            agent_download_url: download,
            tls,
            auth_token: (!f.auth_token.is_empty()).then_some(f.auth_token),
            allowed_cidrs,
            vm_prefix: f.vm_prefix,
            agent_profile: f.agent_profile,
            policy,
            max_body_bytes,
            max_file_bytes,
            header_timeout,
            idle_timeout,
            body_timeout,
            max_connections,
            sse_keepalive,
            host_poll,
            gc_period,
            pool_period,
            recovery_period,
            reconcile_period,
            orphan_grace,
            host_down_after,
            quarantine_after,
            terminal_retention,
            snapshot_retention,
            drain_timeout,
            agent_start_window,
            agent_command: f.agent_command.clone(),
            provision_timeout,
            log_json,
            allow_link_local_hosts,
            proxy,
            e2b_prefix,
        })
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A configuration value that does not parse (the message names the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a listen address.
    #[error("{0:?} is not an address like :8080 or 127.0.0.1:8080")]
    Listen(String),
    /// Not a boolean.
    #[error("{0:?} is not a boolean (true/false)")]
    Bool(String),
    /// Not an http(s) URL.
    #[error("{0:?} must start with http:// or https://")]
    UrlScheme(String),
    /// A URL without a host.
    #[error("{0:?} has no host")]
    UrlHost(String),
    /// A URL with `user:password@`.
    #[error("must not carry credentials (user:password@); pass tokens separately")]
    UrlCredentials,
}

/// Accepts Go-style `:8080`, `host:port` and `[v6]:port`.
fn parse_listen(s: &str) -> Result<SocketAddr, ValueError> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse::<SocketAddr>()
        .map_err(|_| ValueError::Listen(s.to_owned()))
}

fn parse_bool(s: &str) -> Result<bool, ValueError> {
    match s.to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(ValueError::Bool(s.to_owned())),
    }
}

/// Checks that `s` is an absolute http(s) URL.
pub fn check_http_url(s: &str) -> Result<(), ValueError> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| ValueError::UrlScheme(s.to_owned()))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ValueError::UrlHost(s.to_owned()));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(ValueError::UrlCredentials);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["fuse"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_are_the_quick_start() {
        // Parse without the process environment leaking in: every flag explicit.
        let c = Config::from_flags(flags(&["--listen", ":8080"]), |_| None).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(c.default_provider, DefaultProvider::Stub);
        assert_eq!(c.vm_prefix, "fuse-");
        assert_eq!(c.agent_profile, "fused");
        assert!(c.database_url.is_none());
        assert_eq!(
            (c.header_timeout, c.idle_timeout, c.body_timeout),
            (secs(10), secs(60), secs(60))
        );
        assert_eq!(c.max_connections, 4096);
    }

    #[test]
    fn the_e2b_api_is_under_a_prefix_or_off() {
        let at = |v: &str| {
            Config::from_flags(flags(&["--listen", ":8080", "--e2b-prefix", v]), |_| None)
                .map(|c| c.e2b_prefix)
                .map_err(|e| e.0.join("; "))
        };
        let default = Config::from_flags(flags(&["--listen", ":8080"]), |_| None).unwrap();
        assert_eq!(default.e2b_prefix.as_deref(), Some("/e2b"));
        assert_eq!(
            at("/sandbox-api/").unwrap().as_deref(),
            Some("/sandbox-api")
        );
        assert_eq!(at("off").unwrap(), None);
        for bad in ["e2b", "/v1/e2b", "/ui", "/a b"] {
            let e = at(bad).unwrap_err();
            assert!(e.starts_with("FUSE_E2B_PREFIX"), "{bad}: {e}");
        }
    }

    #[test]
    fn connection_limits_are_validated_with_the_rest() {
        let f = flags(&[
            "--header-timeout-secs",
            "0",
            "--idle-timeout-secs",
            "x",
            "--body-timeout-secs",
            "5",
            "--max-connections",
            "0",
            "--vm-prefix",
            "Bad_",
        ]);
        let err = Config::from_flags(f, |_| None).unwrap_err();
        let text = err.to_string();
        for needle in [
            "ORCH_HEADER_TIMEOUT_SECS",
            "ORCH_IDLE_TIMEOUT_SECS",
            "ORCH_MAX_CONNECTIONS",
            "ORCH_VM_PREFIX",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert_eq!(err.0.len(), 4, "{text}");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let f = flags(&[
            "--listen",
            "nope",
            "--token-encryption-key",
            "abc",
            "--allowed-cidrs",
            "10.0.0.0/8,bogus",
            "--vm-prefix",
            "Bad_",
            "--agent-profile",
            "x",
            "--scheduler-policy",
            "random",
            "--max-body-bytes=-1",
            "--require-auth",
            "true",
            "--tls-cert",
            "/nonexistent.pem",
            "--auth-token",
            "short",
        ]);
        let err = Config::from_flags(f, |_| None).unwrap_err();
        let text = err.to_string();
        for needle in [
            "ORCH_LISTEN",
            "TOKEN_ENCRYPTION_KEY: must be exactly 64 hex",
            "\"bogus\"",
            "ORCH_VM_PREFIX",
            "FUSE_AGENT_PROFILE",
            "FUSE_SCHEDULER_POLICY",
            "ORCH_MAX_BODY_BYTES",
            "missing: DATABASE_URL",
            "set together",
            "ORCH_AUTH_TOKEN: must be at least 16 characters (got 5)",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert_eq!(err.0.len(), 10, "{text}");
    }

    #[test]
    fn a_set_auth_token_needs_16_characters() {
        for (token, ok) in [
            ("", true),
            ("a", false),
            ("fifteen-chars-x", false),
            ("sixteen-chars-xx", true),
        ] {
            let got = Config::from_flags(flags(&["--auth-token", token]), |_| None);
            assert_eq!(got.is_ok(), ok, "{token:?}: {got:?}");
        }
        // Also with ORCH_REQUIRE_AUTH, which used to accept a single character.
        let f = flags(&[
            "--require-auth",
            "true",
            "--auth-token",
            "x",
            "--database-url",
            "postgres://h/db",
            "--token-encryption-key",
            &"ab".repeat(32),
        ]);
        let err = Config::from_flags(f, |_| None).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].starts_with("ORCH_AUTH_TOKEN"), "{err}");
    }

    #[test]
    fn legacy_aliases_and_default_host() {
        let f = flags(&[
            "--firecracker-url",
            "http://h:8090/",
            "--firecracker-token",
            "t",
        ]);
        let c = Config::from_flags(f, |k| {
            (k == "SURFD_DOWNLOAD_URL").then(|| "http://dl/x".to_string())
        })
        .unwrap();
        assert_eq!(
            c.default_provider,
            DefaultProvider::HostAgent {
                url: "http://h:8090".into(),
                token: "t".into()
            }
        );
        assert_eq!(c.agent_download_url, "http://dl/x");
        let err = Config::from_flags(flags(&[]), |k| {
            (k == "SURF_PROVIDER").then(|| "docker".to_string())
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown provider \"docker\""));
    }
}
