//! `fuse-envd [--listen ADDR] [--root DIR] [--access-token-file FILE]`: E2B's envd for
//! Fuse guests (see the library). `--listen` defaults to `0.0.0.0:49983`, `--root` (where
//! guest paths are) to `$FUSE_ENVD_ROOT`, else `/`. It stops with its parent (`fuse-guest`), and stops every
//! command it started when it does.

use std::path::PathBuf;

fn usage() -> ! {
    eprintln!(
        "usage: fuse-envd [--listen ADDR] [--root DIR] [--access-token-file FILE] [--version]"
    );
    std::process::exit(2);
}

fn main() {
    let mut listen = "0.0.0.0:49983".to_owned();
    let mut root = PathBuf::from(std::env::var("FUSE_ENVD_ROOT").unwrap_or_else(|_| "/".into()));
    let mut token = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--root" => root = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--access-token-file" => {
                let f = args.next().unwrap_or_else(|| usage());
                match std::fs::read_to_string(&f) {
                    Ok(t) if !t.trim().is_empty() => token = Some(t.trim().to_owned()),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("fuse-envd: reading {f}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            "--version" => {
                println!("{}", fuse_envd::ENVD_VERSION);
                return;
            }
            _ => usage(),
        }
    }
    // Ends with the helper that started it, even when that one is killed outright.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fuse-envd: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fuse-envd: listening on {listen}: {e}");
                // Exit code 3: the port is another's (fuse-guest does not retry then).
                let taken = e.kind() == std::io::ErrorKind::AddrInUse;
                std::process::exit(if taken { 3 } else { 1 });
            }
        };
        let envd = fuse_envd::Envd::new(root, token);
        let procs = envd.procs.clone();
        tokio::spawn(fuse_envd::serve(envd, listener));
        eprintln!(
            "fuse-envd {} listening on {listen}",
            fuse_envd::ENVD_VERSION
        );
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fuse-envd: {e}");
                    std::process::exit(1);
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        procs.kill_all();
    });
}
