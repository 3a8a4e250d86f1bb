//! `fuse`: the control-plane binary. Reads its configuration once, starts the server and
//! stops gracefully on SIGINT/SIGTERM; `fuse rotate-key` re-seals the stored secrets under
//! a new key and exits. Exit code 2: the configuration (or the key) is wrong.

use clap::Parser as _;
use fuse_server::config::{Command, Config, Flags};
use fuse_server::rotate_key::RotateKeyConfig;
use fuse_server::{rotate_key, server};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: after a burst of connections glibc kept the freed
/// memory (a peak of idle connections stayed resident after they closed), jemalloc returns
/// it to the system once its decay time passes (see `release_freed_memory`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Lets jemalloc's background thread purge freed pages on its decay schedule (10 s by
/// default); without it purging only happens when the process allocates again, so an idle
/// `fuse` would keep a past peak.
fn release_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "could not start jemalloc's background thread; freed memory is returned later");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(Command::RotateKey(r)) = &flags.command {
        return rotate(&flags, r).await;
    }
    let config = match Config::from_env_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fuse: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_json);
    release_freed_memory();
    let running = match server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("fuse could not start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    server::log_startup(&running.app, running.addr);
    let app = running.app.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        app.shutdown.cancel();
    });
    match running.wait().await {
        Ok(()) => {
            tracing::info!("fuse stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            tracing::error!("fuse stopped: {:#}", anyhow::Error::new(e));
            ExitCode::from(code)
        }
    }
}

fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(fuse_server::colour_logs())
            .init();
    }
}

/// `fuse rotate-key`: prints what it did on stdout, a refusal on stderr.
async fn rotate(flags: &Flags, r: &fuse_server::config::RotateKeyFlags) -> ExitCode {
    let cfg = match RotateKeyConfig::from_flags(flags, r) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fuse rotate-key: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(flags.log_format == "json");
    match rotate_key::run(&cfg).await {
        Ok(done) => {
            for line in rotate_key::report(&done) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = rotate_key::exit_code(&e);
            eprintln!(
                "fuse rotate-key: nothing changed: {:#}",
                anyhow::Error::new(e)
            );
            ExitCode::from(code)
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
