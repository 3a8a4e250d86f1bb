//! `fusectl` on its own, without a server: usage errors exit 2, contexts are kept in a
//! private file under `XDG_CONFIG_HOME` and environment variables override them, completion
//! scripts are printed, an unreachable server is exit 1 with the URL, and the binary links
//! no database driver.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cfg_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusectl-usage-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fusectl"));
    c.args(args)
        .env("XDG_CONFIG_HOME", cfg)
        .env_remove("FUSE_URL")
        .env_remove("FUSE_TOKEN")
        .env_remove("FUSE_CONTEXT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const NOWHERE: (&str, &str) = ("FUSE_URL", "http://127.0.0.1:9");

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let cfg = cfg_dir("usage");
    let o = run(&cfg, &["no-such-command"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&cfg, &["exec", "fuse-x"], &[NOWHERE]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing to run"), "{}", stderr(&o));
    let o = run(&cfg, &["env", "create", "--file", "nocolon"], &[NOWHERE]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("LOCAL:GUEST"), "{}", stderr(&o));
    let o = run(&cfg, &["cp", "here", "there"], &[NOWHERE]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ID:/"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn contexts_are_private_and_the_environment_overrides_them() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = cfg_dir("ctx");
    let o = run(&cfg, &["env", "ls"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("fusectl context add"), "{}", stderr(&o));
    for (name, port) in [("a", "9"), ("b", "10")] {
        let url = format!("http://127.0.0.1:{port}");
        let o = run(
            &cfg,
            &["context", "add", name, "--url", &url, "--token", "tok"],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let file = cfg.join("fusectl/config.yaml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ls = String::from_utf8(run(&cfg, &["context", "ls"], &[]).stdout).unwrap();
    let current: Vec<&str> = ls.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{ls}");
    assert!(
        current[0].contains(" b "),
        "the last added is current: {ls}"
    );
    assert!(run(&cfg, &["context", "use", "a"], &[]).status.success());
    // The current context's server is the one tried (nothing listens on port 9).
    let o = run(&cfg, &["env", "ls"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach http://127.0.0.1:9"),
        "{}",
        stderr(&o)
    );
    // FUSE_CONTEXT, then FUSE_URL, then --url override it, each stronger.
    let o = run(&cfg, &["env", "ls"], &[("FUSE_CONTEXT", "b")]);
    assert!(stderr(&o).contains("127.0.0.1:10"), "{}", stderr(&o));
    let o = run(
        &cfg,
        &["env", "ls"],
        &[("FUSE_CONTEXT", "b"), ("FUSE_URL", "http://127.0.0.1:11")],
    );
    assert!(stderr(&o).contains("127.0.0.1:11"), "{}", stderr(&o));
    let o = run(
        &cfg,
        &["env", "ls", "--url", "http://127.0.0.1:12"],
        &[("FUSE_URL", "http://127.0.0.1:11")],
    );
    assert!(stderr(&o).contains("127.0.0.1:12"), "{}", stderr(&o));
    let o = run(&cfg, &["env", "ls"], &[("FUSE_CONTEXT", "zzz")]);
    assert!(
        stderr(&o).contains("no context named \"zzz\""),
        "{}",
        stderr(&o)
    );
    assert!(run(&cfg, &["context", "rm", "a"], &[]).status.success());
    let ls = String::from_utf8(run(&cfg, &["context", "ls"], &[]).stdout).unwrap();
    assert!(!ls.contains("127.0.0.1:9"), "{ls}");
    let _ = std::fs::remove_dir_all(&cfg);
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let cfg = cfg_dir("completion");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef fusectl"),
        ("fish", "complete -c fusectl"),
    ] {
        let o = run(&cfg, &["completion", shell], &[]);
        assert!(o.status.success(), "{shell}");
        let s = String::from_utf8(o.stdout).unwrap();
        assert!(
            s.contains(marker) && s.contains("exec"),
            "{shell}: {}",
            &s[..s.len().min(300)]
        );
    }
}

#[test]
fn fusectl_links_no_database_driver() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "fusectl",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tree.contains("reqwest"), "{tree}");
    for banned in [
        "sqlx",
        "fuse-store",
        "fuse-server",
        "tokio-postgres",
        "postgres",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(banned)),
            "fusectl depends on {banned}:\n{tree}"
        );
    }
}
