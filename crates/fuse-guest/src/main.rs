//! `fuse-guest`: serves the private link. In a VM it listens on vsock (`--listen vsock:1024`)
//! or, under QEMU without vsock, on a virtio-serial port (`--listen vport:NAME`, multiplexed:
//! see `vport`); for the `process` backend on a Unix socket (`--listen unix:PATH`), where it
//! also answers the `CONNECT <port>` handshake of Firecracker's vsock muxer so the host side
//! is the same.
//!
//! ```text
//! fuse-guest --listen unix:/var/lib/fc-agent/vms/x/guest.sock --token-file T [--root DIR]
//!            [--netns /run/netns/NAME] [--envd PATH|off]
//! ```
//!
//! It also starts `fuse-envd` (the E2B-compatible envd) from beside its own binary, or
//! `--envd PATH`; `--envd off` does not.
//!
//! `--netns` (the `process` backend) joins that network namespace first thing, while the
//! process has one thread: `setns` changes only the calling thread, and every thread
//! started after it inherits it.

use fuse_guest::{agent::Supervisor, Guest};
use std::path::PathBuf;
use std::sync::Arc;

fn usage() -> ! {
    eprintln!("usage: fuse-guest --listen unix:PATH|vsock:PORT|vport:NAME|vport-dev:PATH (--token-file FILE | --token-env VAR) [--root DIR] [--netns PATH] [--envd PATH|off]");
    std::process::exit(2);
}

/// Joins the network namespace named by `--netns PATH`, if given, before anything else.
fn join_netns() {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a != "--netns" {
            continue;
        }
        let path = args.next().unwrap_or_else(|| usage());
        let joined = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = joined {
            eprintln!("fuse-guest: joining network namespace {path}: {e}");
            std::process::exit(1);
        }
        return;
    }
}

fn main() {
    join_netns();
    let mut listen = None;
    let mut token = None;
    let mut root = PathBuf::from("/");
    let mut envd = Some(String::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--token-file" => {
                let f = args.next().unwrap_or_else(|| usage());
                match std::fs::read_to_string(&f) {
                    Ok(t) => token = Some(t.trim().to_owned()),
                    Err(e) => {
                        eprintln!("fuse-guest: reading {f}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            "--token-env" => {
                let v = args.next().unwrap_or_else(|| usage());
                token = std::env::var(&v).ok();
                // Commands and the agent must not inherit it.
                std::env::remove_var(&v);
            }
            "--root" => root = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--envd" => {
                let v = args.next().unwrap_or_else(|| usage());
                envd = (v != "off").then_some(v);
            }
            // Joined already, by `join_netns`.
            "--netns" => {
                args.next();
            }
            "--version" => {
                println!("fuse-guest {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            _ => usage(),
        }
    }
    let (Some(listen), Some(token)) = (listen, token) else {
        usage()
    };
    if token.len() < 16 {
        eprintln!("fuse-guest: the token must be at least 16 characters");
        std::process::exit(2);
    }
    // A `process` VM without a network namespace shares the host's network.
    let shared_net = root != std::path::Path::new("/") && !std::env::args().any(|a| a == "--netns");
    match envd.map(|p| {
        if p.is_empty() {
            fuse_guest::envd::beside_me()
        } else {
            Some(PathBuf::from(p))
        }
    }) {
        Some(Some(bin)) => fuse_guest::envd::start(bin, &root, shared_net),
        Some(None) => eprintln!(
            "fuse-guest: no fuse-envd beside this binary; the E2B API cannot reach this VM"
        ),
        None => {}
    }
    let guest = Arc::new(Guest::new(token, root, Arc::new(Supervisor::default())));
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = match std::os::unix::net::UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fuse-guest: binding {path}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!(
            "fuse-guest {} ready on unix:{path}",
            env!("CARGO_PKG_VERSION")
        );
        for conn in l.incoming().flatten() {
            let g = guest.clone();
            let Ok(out) = conn.try_clone() else { continue };
            std::thread::spawn(move || g.serve(conn, out));
        }
    } else if let Some(port) = listen.strip_prefix("vsock:") {
        let port: u32 = port.parse().unwrap_or_else(|_| usage());
        serve_vsock(guest, port);
    } else if let Some(name) = listen.strip_prefix("vport:") {
        // The port appears once the virtio_console driver has probed it.
        loop {
            match fuse_guest::vport::find_port(name) {
                Some(dev) => {
                    let e = fuse_guest::vport::serve(guest.clone(), &dev);
                    eprintln!("fuse-guest: serving {}: {e}", dev.display());
                }
                None => eprintln!("fuse-guest: no virtio-serial port named {name} yet"),
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    } else if let Some(path) = listen.strip_prefix("vport-dev:") {
        let e = fuse_guest::vport::serve(guest, std::path::Path::new(path));
        eprintln!("fuse-guest: serving {path}: {e}");
        std::process::exit(1);
    } else {
        usage();
    }
}

fn serve_vsock(guest: Arc<Guest>, port: u32) {
    use nix::sys::socket::{
        accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    use std::os::fd::AsRawFd;
    /// `VMADDR_CID_ANY`.
    const CID_ANY: u32 = u32::MAX;
    let fd = match socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("fuse-guest: vsock socket: {e}");
            std::process::exit(1);
        }
    };
    let addr = VsockAddr::new(CID_ANY, port);
    let backlog = Backlog::new(64).unwrap_or(Backlog::MAXCONN);
    if let Err(e) = bind(fd.as_raw_fd(), &addr).and_then(|_| listen(&fd, backlog)) {
        eprintln!("fuse-guest: vsock bind/listen on port {port}: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "fuse-guest {} ready on vsock:{port}",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let Ok(raw) = accept(fd.as_raw_fd()) else {
            continue;
        };
        let stream = owned_stream(raw);
        let g = guest.clone();
        let Ok(out) = stream.try_clone() else {
            continue;
        };
        std::thread::spawn(move || g.serve(stream, out));
    }
}

/// Wraps a freshly accepted socket in a `File` (read/write work on socket descriptors).
#[allow(unsafe_code)]
fn owned_stream(raw: std::os::fd::RawFd) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: `raw` was just returned by accept(2), is open, and nothing else owns it.
    unsafe { std::fs::File::from_raw_fd(raw) }
}
