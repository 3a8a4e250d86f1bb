//! The host toolchain's `tools/install-fc-agent.sh`, run into a temporary root: it installs
//! the binary, a systemd unit and an environment file with a generated token (private), keeps
//! that token on a re-install, and prints the registration command with it.

use std::path::Path;
use std::process::Command;

fn install(root: &Path) -> String {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(ws.join("tools/install-fc-agent.sh"))
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
