//! Compatibility with the original Go Fuse's published Python SDK (`folsom-fuse` 0.37.1 from
//! PyPI): `tests/sdk/folsom_fuse_compat.py` calls every public method of its client and
//! asserts the answers, against a real `fuse` process once on the memory store and once on
//! a fresh Postgres database, each with a real `fc-agent` (`process` backend) in a network
//! namespace of its own that the script registers as a host itself.
//!
//! The SDK is installed once per test process into a throwaway venv (`python3 -m venv` in
//! the temp directory, removed by the next run once this process is gone). Python with
//! `venv`, the install from PyPI, root and Postgres are prerequisites: missing, they fail
//! the test under CI and skip it with the reason elsewhere.

use crate::harness::spawn_fuse;
use crate::hosts::{Host, AGENT_TOKEN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The SDK release the original's users have; pinned so the test means the same thing on
/// every run.
const SDK: &str = "folsom-fuse==0.37.1";

/// The master token (`ORCH_AUTH_TOKEN`) of the `fuse` under test.
const MASTER_TOKEN: &str = "sdk-compat-master-token-0123456789";

/// The longest a whole run of the script may take (it takes seconds).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// The venvs' directory names start so (then the test process's id); one kind per SDK.
const VENV_PREFIX: &str = "fuse-sdk-venv-";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/folsom_fuse_compat.py")
}

pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes the venvs of test processes that are gone.
fn sweep_venvs(tmp: &Path, prefix: &str) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Makes the venv and installs the SDK into it: its Python, or why that failed.
fn make_venv() -> Result<PathBuf, String> {
    make_venv_of(VENV_PREFIX, SDK)
}

/// Makes a venv named `prefix` + this process's id with the pinned package `sdk` in it.
pub fn make_venv_of(prefix: &str, sdk: &str) -> Result<PathBuf, String> {
    let tmp = std::env::temp_dir();
    sweep_venvs(&tmp, prefix);
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("running python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 -m venv failed: {}", output_text(&out)));
    }
    let python = dir.join("bin/python");
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            sdk,
        ])
        .output()
        .map_err(|e| format!("running pip: {e}"))?;
    if !out.status.success() {
        return Err(format!("pip install {sdk} failed: {}", output_text(&out)));
    }
    Ok(python)
}

/// The venv's Python with the SDK, made on first use; `None` (a failure under CI) when it
/// cannot be made.
async fn sdk_python() -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    // Both tests ask at once; the second waits for the first one's install.
    let made = tokio::task::spawn_blocking(|| VENV.get_or_init(make_venv).clone())
        .await
        .unwrap();
    let found = made.map_err(|e| eprintln!("{e}")).ok();
    fuse_testkit::prereq::require(
        &format!("python3 with venv and {SDK} from PyPI"),
        "Debian packages python3 and python3-venv (scripts/test.sh installs them) and access to pypi.org",
        found,
    )
}

/// Runs the script against one `fuse` (store `db`, empty for memory) and one host.
async fn compat(db: &str) {
    let Some(python) = sdk_python().await else {
        return;
    };
    let Some(mut host) = Host::create("sdk") else {
        return;
    };
    host.start_agent();
    host.wait_up().await;
    // The SDK's creates use the default profile, whose `/usr/local/bin/fused` the
    // `process` backend's guests (host processes) do not have: an agent that runs instead.
    let fuse = spawn_fuse(
        db,
        &[
            ("ORCH_AUTH_TOKEN", MASTER_TOKEN),
            ("FUSE_AGENT_COMMAND", "exec sleep 3600"),
            ("FUSE_AGENT_START_WINDOW_MS", "300"),
        ],
    );
    fuse.ready().await;
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(script())
        .env("FUSE_BASE_URL", &fuse.base)
        .env("FUSE_TOKEN", MASTER_TOKEN)
        .env("FUSE_HOST_URL", host.url())
        .env("FUSE_HOST_TOKEN", AGENT_TOKEN)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the SDK script ran longer than {SCRIPT_LIMIT:?}; fuse log:\n{}",
                fuse.log_text()
            )
        })
        .expect("running the SDK script");
    let text = output_text(&out);
    println!("{text}");
    assert!(
        out.status.success(),
        "the folsom-fuse SDK script failed ({}):\n{text}\n--- fuse log (last 200 lines):\n{}\n--- fc-agent log (last 100 lines):\n{}",
        out.status,
        tail(&fuse.log_text(), 200),
        tail(&host.log_text(), 100),
    );
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test]
async fn folsom_fuse_sdk_on_the_memory_store() {
    compat("").await;
}

#[tokio::test]
async fn folsom_fuse_sdk_on_postgres() {
    let Some(db) = fuse_testkit::TestDb::create().await else {
        return;
    };
    compat(db.url()).await;
}
