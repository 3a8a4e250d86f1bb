//! `fuse`: the control-plane binary. Reads its configuration once, starts the server and
//! stops gracefully on SIGINT/SIGTERM.

use fuse_server::config::Config;
use fuse_server::server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fuse: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if config.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let running = match server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("fuse could not start: {e:#}");
            return std::process::ExitCode::FAILURE;
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
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("fuse failed: {e:#}");
            std::process::ExitCode::FAILURE
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
