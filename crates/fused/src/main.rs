//! `fused`, the reference in-guest agent (DESIGN §1). It reads what the control plane
//! uploaded under its directory (`/fuse/`: `manifest.json`, `secrets.json`, `token`,
//! `tls.crt` + `tls.key`, `config.json`), serves `GET /health` without authentication and
//! `GET /v1/info` behind the per-VM bearer token, over TLS when a certificate and key are
//! present, and exits 0 on SIGTERM or SIGINT (the profile's drain command).
//!
//! ```text
//! fused --dir /fuse [--listen 0.0.0.0:8443]
//! ```
//! The token comes from `FUSE_AUTH_TOKEN` (set by `fuse-guest`), else from `DIR/token`; the
//! listen address from `--listen`, `FUSE_LISTEN`, `DIR/config.json`, in that order.
//! Secret values are never served: `/v1/info` lists their names only.

mod http;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Everything the agent serves, read once at start.
#[derive(Debug)]
pub struct Agent {
    /// Bearer token of `/v1/info`.
    pub token: String,
    /// The parsed manifest (`null` when none was uploaded).
    pub manifest: serde_json::Value,
    /// Names of the uploaded secrets.
    pub secret_names: Vec<String>,
    /// `config.json` as uploaded (vm id, task id, gateway).
    pub config: serde_json::Value,
    /// Whether it serves TLS.
    pub tls: bool,
    /// Start time.
    pub started: Instant,
}

fn usage() -> ! {
    eprintln!("usage: fused [--dir DIR] [--listen ADDR]");
    std::process::exit(2);
}

fn read_json(p: &Path) -> serde_json::Value {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn tls_config(dir: &Path) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    if !cert.is_file() || !key.is_file() {
        return Ok(None);
    }
    let cert_pem = std::fs::read(&cert).map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(&key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("parsing {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("parsing {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    Ok(Some(Arc::new(cfg)))
}

fn main() {
    let mut dir = PathBuf::from("/fuse");
    let mut listen: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--listen" => listen = Some(args.next().unwrap_or_else(|| usage())),
            "--version" => {
                println!("fused {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            _ => usage(),
        }
    }
    // SIGTERM/SIGINT are taken synchronously by one thread; block them before any other
    // thread exists so every thread inherits the mask.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.add(nix::sys::signal::Signal::SIGINT);
    if let Err(e) = sigs.thread_block() {
        eprintln!("fused: blocking signals: {e}");
        std::process::exit(1);
    }
    let config = read_json(&dir.join("config.json"));
    let listen = listen
        .or_else(|| std::env::var("FUSE_LISTEN").ok().filter(|s| !s.is_empty()))
        .or_else(|| config["listen"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "0.0.0.0:8443".to_owned());
    let token = std::env::var("FUSE_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::fs::read_to_string(dir.join("token"))
                .ok()
                .map(|t| t.trim().to_owned())
        })
        .unwrap_or_default();
    std::env::remove_var("FUSE_AUTH_TOKEN");
    if token.len() < 16 {
        eprintln!(
            "fused: no token (FUSE_AUTH_TOKEN or {}/token, at least 16 characters)",
            dir.display()
        );
        std::process::exit(2);
    }
    let tls = match tls_config(&dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fused: {e}");
            std::process::exit(1);
        }
    };
    let secret_names = match read_json(&dir.join("secrets.json")) {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let agent = Arc::new(Agent {
        token,
        manifest: read_json(&dir.join("manifest.json")),
        secret_names,
        config,
        tls: tls.is_some(),
        started: Instant::now(),
    });
    let listener = match std::net::TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fused: binding {listen}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "fused {} listening on {listen} ({})",
        env!("CARGO_PKG_VERSION"),
        if agent.tls { "https" } else { "http" }
    );
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (a, t) = (agent.clone(), tls.clone());
            std::thread::spawn(move || http::serve(&a, conn, t));
        }
    });
    match sigs.wait() {
        Ok(sig) => {
            eprintln!("fused: {sig} received; exiting 0");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("fused: waiting for signals: {e}");
            std::process::exit(1);
        }
    }
}
