//! `fusectl`: the command-line client of Fuse (`docs/cli.md`). It speaks only the REST API
//! (`api/openapi.yaml`) and links no database driver.

mod api;
mod cli;
mod config;
mod env;
mod fleet;
mod output;
mod runtime;

use api::{Client, Failure, Result};
use clap::{CommandFactory, Parser};
use cli::{Cli, Cmd, ContextCmd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(f) => {
            eprintln!("error: {f}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command: the process's exit code.
async fn run(cli: Cli) -> Result<u8> {
    let client = || -> Result<Client> {
        let t = config::resolve(cli.url.clone(), cli.token.clone(), cli.context.clone())?;
        Client::new(&t.url, &t.token)
    };
    match cli.cmd {
        Cmd::Context(c) => context(c, cli.url, cli.token).map(|_| 0),
        Cmd::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fusectl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Cmd::Env(c) => env::env(&client()?, c).await,
        Cmd::Exec(a) => runtime::exec(&client()?, a).await,
        Cmd::Shell(a) => runtime::shell(&client()?, a).await,
        Cmd::Cp(a) => runtime::cp(&client()?, a).await.map(|_| 0),
        Cmd::Logs(a) => runtime::logs(&client()?, a).await.map(|_| 0),
        Cmd::Events(a) => runtime::events(&client()?, a).await.map(|_| 0),
        Cmd::Ports(a) => env::ports(&client()?, a).await.map(|_| 0),
        Cmd::Drain(a) => env::action(&client()?, &a.id, "drain", None, a.out).await,
        Cmd::Pause(a) => env::action(&client()?, &a.id, "pause", None, a.out).await,
        Cmd::Resume(a) => env::action(&client()?, &a.id, "resume", None, a.out).await,
        Cmd::Migrate(a) => {
            let body = a.to.map(|t| serde_json::json!({ "target_host_id": t }));
            env::action(&client()?, &a.id, "migrate", body, a.out).await
        }
        Cmd::Fork(a) => env::fork(&client()?, a).await,
        Cmd::Destroy(a) => env::destroy(&client()?, a).await.map(|_| 0),
        Cmd::Snapshot(c) => fleet::snapshot(&client()?, c).await.map(|_| 0),
        Cmd::Template(c) => fleet::template(&client()?, c).await.map(|_| 0),
        Cmd::Host(c) => fleet::host(&client()?, c).await.map(|_| 0),
        Cmd::Apikey(c) => fleet::apikey(&client()?, c).await.map(|_| 0),
        Cmd::Status(o) => fleet::status(&client()?, o).await.map(|_| 0),
    }
}

fn context(c: ContextCmd, url: Option<String>, token: Option<String>) -> Result<()> {
    let mut cfg = config::Config::load()?;
    match c {
        ContextCmd::Add { name } => {
            let Some(url) = url else {
                return api::usage("context add NAME needs --url URL (and --token TOKEN)");
            };
            let token = token.unwrap_or_default();
            Client::new(&url, &token)?;
            cfg.contexts
                .insert(name.clone(), config::Context { url, token });
            cfg.current = name.clone();
            cfg.save()?;
            eprintln!(
                "context {name:?} added and in use ({})",
                config::path()?.display()
            );
        }
        ContextCmd::Use { name } => {
            if !cfg.contexts.contains_key(&name) {
                return api::fail(format!(
                    "no context named {name:?} (fusectl context ls lists them)"
                ));
            }
            cfg.current = name;
            cfg.save()?;
        }
        ContextCmd::Ls => {
            let rows: Vec<Vec<String>> = cfg
                .contexts
                .iter()
                .map(|(n, c)| {
                    vec![
                        if *n == cfg.current { "*" } else { "" }.to_owned(),
                        n.clone(),
                        c.url.clone(),
                        if c.token.is_empty() { "no" } else { "yes" }.to_owned(),
                    ]
                })
                .collect();
            output::table(&["CURRENT", "NAME", "URL", "TOKEN"], &rows);
        }
        ContextCmd::Rm { name } => {
            if cfg.contexts.remove(&name).is_none() {
                return api::fail(format!("no context named {name:?}"));
            }
            if cfg.current == name {
                cfg.current.clear();
            }
            cfg.save()?;
        }
    }
    Ok(())
}
