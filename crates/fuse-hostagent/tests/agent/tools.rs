//! The host toolchain's `tools/install-fc-agent.sh`, run into a temporary root: it installs
//! the binary, a systemd unit and an environment file with a generated token (private), keeps
//! that token on a re-install, and prints the registration command with it; relative paths
//! are the caller's; without systemd it refuses before writing anything, or installs without
//! a unit when asked.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/install-fc-agent.sh")
}

fn install(root: &Path) -> String {
    let out = Command::new(script())
        .arg("--root")
        .arg(root)
        .args(["--bin", env!("CARGO_BIN_EXE_fc-agent")])
        .args(["--backend", "qemu", "--host-id", "h-test"])
        .args(["--public-host", "192.0.2.7", "--fuse-url", "http://cp:8080"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn install_fc_agent_writes_unit_env_and_registration_command() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("fuse-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let printed = install(&root);
    assert!(root.join("usr/local/bin/fc-agent").is_file());
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/fc-agent.service")).unwrap();
    assert!(unit.contains("EnvironmentFile=/etc/fc-agent/fc-agent.env"));
    assert!(unit.contains("ExecStart=/usr/local/bin/fc-agent"));
    assert!(
        unit.contains("KillMode=process"),
        "VMs survive an agent restart"
    );
    let env_path = root.join("etc/fc-agent/fc-agent.env");
    let env = std::fs::read_to_string(&env_path).unwrap();
    let mode = std::fs::metadata(&env_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("FC_AGENT_TOKEN="))
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64);
    assert!(env.contains("FC_AGENT_BACKEND=qemu"));
    assert!(env.contains("FC_AGENT_KERNEL=/var/lib/fuse/guest/vmlinuz"));
    assert!(env.contains("FC_AGENT_PUBLIC_HOST=192.0.2.7"));
    assert!(printed.contains("http://cp:8080/v1/hosts"), "{printed}");
    assert!(
        printed.contains(r#""url":"http://192.0.2.7:8090""#),
        "{printed}"
    );
    assert!(printed.contains(&token), "{printed}");
    // The written configuration is one fc-agent accepts.
    let cfg: Vec<(String, String)> = env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut args = vec!["fc-agent".to_owned()];
    for (k, v) in &cfg {
        let flag = k
            .trim_start_matches("FC_AGENT_")
            .to_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}={v}"));
    }
    let c = <fuse_hostagent::config::Config as clap::Parser>::try_parse_from(&args).unwrap();
    assert_eq!(c.token, token);
    assert_eq!(c.backend, "qemu");
    // A re-install keeps the host's token.
    let again = install(&root);
    assert!(again.contains(&token));
    let env2 = std::fs::read_to_string(&env_path).unwrap();
    assert_eq!(env2, env);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn install_fc_agent_takes_relative_paths_from_the_caller_and_works_without_systemd() {
    let base = std::env::temp_dir().join(format!("fuse-install-rel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    // A relative --root, --state-dir and --images from the caller's directory, no unit.
    let out = Command::new(script())
        .current_dir(&base)
        .args(["--root", "pkg", "--no-systemd"])
        .args(["--bin", env!("CARGO_BIN_EXE_fc-agent")])
        .args(["--backend", "qemu", "--state-dir", "/srv/fc-state"])
        .args(["--images", "img", "--public-host", "192.0.2.8"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = base.join("pkg");
    assert!(root.join("usr/local/bin/fc-agent").is_file(), "{printed}");
    assert!(root.join("srv/fc-state").is_dir());
    assert!(
        !root.join("etc/systemd").exists(),
        "--no-systemd writes no unit"
    );
    let env = std::fs::read_to_string(root.join("etc/fc-agent/fc-agent.env")).unwrap();
    assert!(env.contains("FC_AGENT_DIR=/srv/fc-state"), "{env}");
    assert!(
        env.contains(&format!(
            "FC_AGENT_ROOTFS={}/img/rootfs.ext4",
            base.display()
        )),
        "{env}"
    );
    assert!(
        printed.contains("without a systemd unit")
            && printed.contains(". /etc/fc-agent/fc-agent.env")
            && printed.contains("exec /usr/local/bin/fc-agent"),
        "{printed}"
    );
    // Without --root, on a machine without systemd: refused before anything is written
    // (the binary given does not exist, so a refusal that came too late would say so).
    let out = Command::new(script())
        .env("FUSE_INSTALL_SYSTEMD_DIR", base.join("no-systemd-here"))
        .args(["--bin", "/nonexistent/fc-agent", "--backend", "qemu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    if nix::unistd::geteuid().is_root() {
        assert!(
            err.contains("does not run systemd")
                && err.contains("nothing was written")
                && err.contains("--no-systemd")
                && err.contains("--foreground"),
            "{err}"
        );
    } else {
        assert!(err.contains("needs root"), "{err}");
    }
    std::fs::remove_dir_all(&base).unwrap();
}

/// The guest image's `pkill`/`pgrep` (`tools/guest/pkill`, plain sh: busybox has neither),
/// run here with the host's `sh` on a real process: `-f` matches the whole command line,
/// a name matches the process name, `-x` the whole of it; exit 1 when nothing matched.
#[test]
fn the_guest_image_pkill_has_f_and_signals() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("fuse-pkill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["pkill", "pgrep"] {
        std::fs::copy(ws.join("tools/guest/pkill"), dir.join(name)).unwrap();
    }
    let marker = format!("{}.{}", 40 + std::process::id() % 50, std::process::id());
    let mut victim = Command::new("sleep").arg(&marker).spawn().unwrap();
    let run = |tool: &str, args: &[&str]| {
        let out = Command::new("sh")
            .arg(dir.join(tool))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // `sh FILE` runs it as FILE: $0 names the tool.
    let pat = format!("^sleep {}$", marker.replace('.', "\\."));
    let (code, out) = run("pgrep", &["-f", &pat]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), victim.id().to_string());
    assert_eq!(
        run("pgrep", &["-x", "slee"]).0,
        1,
        "-x matches the whole name"
    );
    assert_eq!(run("pgrep", &["-f", "no-such-process-anywhere-xyz"]).0, 1);
    assert_eq!(run("pkill", &["-Q"]).0, 2, "bad usage");
    let (code, _) = run("pkill", &["-TERM", "-f", &pat]);
    assert_eq!(code, 0);
    let status = victim.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(15),
        "SIGTERM, the default drain signal"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
