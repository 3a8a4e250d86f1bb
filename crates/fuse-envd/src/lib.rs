//! `fuse-envd`: an implementation of E2B's in-sandbox daemon, envd, for Fuse guests, so
//! the published `e2b` SDK runs unchanged against Fuse. It serves, on port 49983 of the
//! guest, the `process.Process` and `filesystem.Filesystem` services over the Connect
//! protocol (unary, server and client streaming; JSON and binary protobuf) and envd's
//! plain HTTP routes (`/files`, `/health`, `/envs`, `/init`).
//!
//! `fuse-guest` starts it at boot (from beside its own binary) on every backend; the
//! control plane reaches it through the VM's host like any guest port, and configures it
//! (access token, variables, default user) by writing [`server::CONFIG_PATH`] over the
//! VM's private link before it answers the create.
//!
//! Invariants: an access token, once set, is required on every route but `/health`
//! (constant-time compare); uploads are atomic (temp file + rename); a command's output
//! is sent as produced, never held to its end; every command envd started dies with it.

pub mod connect;
pub mod files;
pub mod fs;
pub mod pb;
pub mod process;
pub mod server;
pub mod users;

pub use server::{Envd, ENVD_VERSION};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Serves `envd` on `listener` until the process ends.
pub async fn serve(envd: Arc<Envd>, listener: tokio::net::TcpListener) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let envd = envd.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let envd = envd.clone();
                async move { Ok::<_, std::convert::Infallible>(envd.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}
