//! The command line: every command and flag (`fusectl help`, `docs/cli.md`).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fusectl",
    version,
    about = "Command-line client of Fuse: microVM environments, their files, commands and terminals, and the fleet",
    after_help = "Server: --url/--token, FUSE_URL/FUSE_TOKEN, or a context (fusectl context add). Exit codes: 0 ok, 1 the API or the network said no, 2 usage; exec and shell exit with the command's code."
)]
pub struct Cli {
    /// The server's URL (overrides the context; env FUSE_URL).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// The bearer token: the master token or an API key (env FUSE_TOKEN).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// The context to use instead of the current one (env FUSE_CONTEXT).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// More columns.
    Wide,
    /// The API's JSON.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

#[derive(Args, Clone, Copy)]
pub struct Out {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Servers you talk to: add, use, ls, rm.
    #[command(subcommand)]
    Context(ContextCmd),
    /// Environments: create, ls, get.
    #[command(subcommand, alias = "environment")]
    Env(EnvCmd),
    /// Run a command in an environment; its output streams, fusectl exits with its code.
    Exec(ExecArgs),
    /// An interactive terminal in an environment (over the attach WebSocket).
    Shell(ShellArgs),
    /// Copy a file in or out: `cp ./local ID:/path` or `cp ID:/path ./local`.
    Cp(CpArgs),
    /// An environment's logs (agent, startup script, console).
    Logs(LogsArgs),
    /// An environment's published ports; `--expose PORT` publishes one more.
    Ports(PortsArgs),
    /// Live state changes: the whole fleet, or one environment.
    #[command(alias = "watch")]
    Events(EventsArgs),
    /// Run the agent's drain command; the environment stays until destroyed.
    Drain(IdOut),
    /// Destroy an environment.
    #[command(alias = "rm")]
    Destroy(DestroyArgs),
    /// Pause: memory and disk kept on the host, CPU and memory given back.
    Pause(IdOut),
    /// Resume a paused environment (moves it when its host is full).
    Resume(IdOut),
    /// A new environment from a disk snapshot of this one.
    Fork(ForkArgs),
    /// Move an environment to another host (cold: paused while it moves).
    Migrate(MigrateArgs),
    /// Snapshots: create, ls, get, rm, restore.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Templates and their warm pools: create, ls, get, set-pool, rm.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Hosts: ls, get, add, rm, cordon, uncordon.
    #[command(subcommand)]
    Host(HostCmd),
    /// API keys: create, ls, revoke.
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// The fleet at a glance: version, hosts, environments, pools, background loops.
    Status(Out),
    /// Shell completion script.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub enum ContextCmd {
    /// Add (or replace) a context and make it current: `context add NAME --url URL
    /// [--token TOKEN]`.
    Add { name: String },
    /// Make a context current.
    Use { name: String },
    /// List contexts; the current one is marked with *.
    #[command(alias = "list")]
    Ls,
    /// Remove a context.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum EnvCmd {
    /// Create an environment and wait until it runs (a progress line shows its state).
    Create(Box<CreateArgs>),
    /// List environments.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// One environment.
    Get(IdOut),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The task id (the environment's id is the server's prefix + it); random when absent.
    #[arg(long)]
    pub task_id: Option<String>,
    #[arg(long)]
    pub cpus: Option<u32>,
    #[arg(long)]
    pub ram_mb: Option<u64>,
    #[arg(long)]
    pub storage_gb: Option<u64>,
    /// amd64 or arm64.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// Pin to this host.
    #[arg(long = "host")]
    pub host_id: Option<String>,
    /// A label the host must carry (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Destroy (or pause, with --on-idle pause) after this many idle seconds.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// pause or destroy, when idle.
    #[arg(long)]
    pub on_idle: Option<String>,
    /// Limit of the environment's life in seconds.
    #[arg(long)]
    pub max_runtime: Option<u64>,
    /// Start from this template (its memory restored).
    #[arg(long)]
    pub template: Option<String>,
    /// A file to put in the guest (repeatable).
    #[arg(long = "file", value_name = "LOCAL:GUEST")]
    pub files: Vec<String>,
    /// A secret for the agent (repeatable); `K` alone takes the value from your environment.
    #[arg(long = "secret", value_name = "K=V")]
    pub secrets: Vec<String>,
    /// Startup script, or @FILE to read it from a file.
    #[arg(long)]
    pub startup: Option<String>,
    /// Publish a guest port (repeatable): PORT or PORT/udp.
    #[arg(long = "expose", value_name = "PORT")]
    pub expose: Vec<String>,
    /// Egress mode: direct, allow-all, deny-all or allowlist.
    #[arg(long)]
    pub egress: Option<String>,
    /// An egress allow entry (CIDR, name or *.name; repeatable; implies allowlist).
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// An egress deny entry (repeatable).
    #[arg(long = "deny")]
    pub deny: Vec<String>,
    /// Return at once instead of waiting for running.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub out: OutId,
}

#[derive(Args, Clone, Copy)]
pub struct OutId {
    /// Output: id (default), json or yaml.
    #[arg(short, long, value_enum, default_value_t = IdFormat::Id)]
    pub output: IdFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum IdFormat {
    /// The id only.
    Id,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this task id.
    #[arg(long)]
    pub task_id: Option<String>,
    #[command(flatten)]
    pub out: Out,
}

#[derive(Args)]
pub struct IdOut {
    pub id: String,
    #[command(flatten)]
    pub out: Out,
}

#[derive(Args)]
pub struct DestroyArgs {
    /// One or more environments.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    pub id: String,
    /// Run this script with `sh -lc` instead of the argv after `--`.
    #[arg(long)]
    pub shell: Option<String>,
    /// An environment variable (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Limit in seconds (default 30, at most 600).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

#[derive(Args)]
pub struct ShellArgs {
    pub id: String,
    /// Run this (with `sh -lc`) instead of the login shell.
    #[arg(long)]
    pub cmd: Option<String>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
}

#[derive(Args)]
pub struct CpArgs {
    /// LOCAL or ID:/PATH.
    pub from: String,
    /// LOCAL or ID:/PATH.
    pub to: String,
    /// Mode of a file written in the guest (octal).
    #[arg(long)]
    pub mode: Option<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    pub id: String,
    /// Keep following.
    #[arg(short, long)]
    pub follow: bool,
    /// agent, startup or console.
    #[arg(long, default_value = "agent")]
    pub source: String,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
}

#[derive(Args)]
pub struct PortsArgs {
    pub id: String,
    /// Publish this guest port (PORT or PORT/udp).
    #[arg(long)]
    pub expose: Option<String>,
    /// With --expose: reachable without the traffic token.
    #[arg(long)]
    pub public: bool,
    #[command(flatten)]
    pub out: Out,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only this environment (its stream ends when it ends).
    pub id: Option<String>,
    /// Print each event's JSON.
    #[arg(short, long, value_enum, default_value_t = EventFormat::Line)]
    pub output: EventFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum EventFormat {
    Line,
    Json,
}

#[derive(Args)]
pub struct ForkArgs {
    pub id: String,
    /// Fork from this ready snapshot of the environment instead of a new one.
    #[arg(long)]
    pub snapshot: Option<String>,
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub out: OutId,
}

#[derive(Args)]
pub struct MigrateArgs {
    pub id: String,
    /// The target host (the scheduler picks one when absent).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub out: Out,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot an environment.
    Create {
        id: String,
        /// Memory too (on qemu and firecracker hosts).
        #[arg(long)]
        live: bool,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        out: OutId,
    },
    /// List snapshots.
    #[command(alias = "list")]
    Ls {
        /// Only of this environment.
        #[arg(long = "env")]
        vm_id: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// One snapshot.
    Get(IdOut),
    /// Delete a snapshot.
    Rm { id: String },
    /// Restore a snapshot into its (running) environment.
    Restore { id: String },
}

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// A template from an environment (snapshotted now) or a live snapshot.
    Create {
        name: String,
        #[arg(long = "from-env", conflicts_with = "from_snapshot")]
        from_env: Option<String>,
        #[arg(long)]
        from_snapshot: Option<String>,
        /// Warm VMs kept ready per host.
        #[arg(long)]
        pool: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls(Out),
    /// One template.
    Get(IdOut),
    /// Set the warm pool's size per host.
    SetPool {
        name: String,
        per_host: u32,
        #[command(flatten)]
        out: Out,
    },
    /// Delete a template.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// List hosts.
    #[command(alias = "list")]
    Ls(Out),
    /// One host.
    Get(IdOut),
    /// Register a host (its fc-agent's URL and token).
    Add {
        id: String,
        /// The host agent's URL, as fuse reaches it (e.g. http://10.0.0.5:8090).
        #[arg(long)]
        agent_url: String,
        /// The host agent's token (FC_AGENT_TOKEN).
        #[arg(long)]
        agent_token: String,
        #[arg(long)]
        region: Option<String>,
        /// A label (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a host (refused while it has environments).
    Rm { id: String },
    /// Take no new environments.
    Cordon(IdOut),
    /// Take new environments again.
    Uncordon(IdOut),
}

#[derive(Subcommand)]
pub enum ApikeyCmd {
    /// A new key (its secret is shown once).
    Create {
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// List keys.
    #[command(alias = "list")]
    Ls(Out),
    /// Revoke a key.
    Revoke { id: String },
}
