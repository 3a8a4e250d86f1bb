//! E2B's published Python SDK (`e2b`, pinned, from PyPI) unchanged against `fuse` and a
//! real `fc-agent` (`process` backend, in a network namespace of its own, each VM in its
//! own): `tests/sdk/e2b_compat.py` creates sandboxes, runs commands (streamed, in the
//! background, with stdin), moves files both ways, reaches an HTTP server in the sandbox
//! by `get_host`, sets timeouts, lists, connects, pauses and resumes, and kills, asserting
//! what comes back; it prints the create, first-command and file round-trip times. The
//! same script runs against a real guest under QEMU in `real_guests`.
//!
//! Around it, what the SDK does not show: a wrong API key and a missing envd access token
//! are refused, envd's version is the one the API announces, and no environment is left.

use crate::harness::spawn_fuse;
use crate::hosts::{target_bin, Host, AGENT_TOKEN};
use crate::sdk::{make_venv_of, output_text, tail};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The SDK release the test speaks for; pinned so a run means the same on every machine.
pub const SDK: &str = "e2b==2.63.0";
const VENV_PREFIX: &str = "fuse-e2b-venv-";
/// The domain of sandbox host names (no DNS: the script sends `Host:` itself).
pub const DOMAIN: &str = "e2b.fuse.test";
const MASTER: &str = "e2b-compat-master-token-0123456789";
/// The longest a whole run of the script may take (it takes seconds here).
pub const SCRIPT_LIMIT: Duration = Duration::from_secs(600);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2b_compat.py")
}

/// The venv's Python with the SDK, made once per test process; `None` (a failure under
/// CI) when it cannot be made.
pub async fn e2b_python() -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made =
        tokio::task::spawn_blocking(|| VENV.get_or_init(|| make_venv_of(VENV_PREFIX, SDK)).clone())
            .await
            .unwrap();
    let found = made.map_err(|e| eprintln!("{e}")).ok();
    fuse_testkit::prereq::require(
        &format!("python3 with venv and {SDK} from PyPI"),
        "Debian packages python3 and python3-venv (scripts/test.sh installs them) and access to pypi.org",
        found,
    )
}

/// Runs the compatibility script against `fuse` at `base` with `env` added; its output.
pub async fn run_script(
    python: &Path,
    base: &str,
    key: &str,
    env: &[(&str, &str)],
) -> (bool, String) {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script())
        .env("E2B_API_URL", format!("{base}/e2b"))
        .env("E2B_SANDBOX_URL", base)
        .env("E2B_API_KEY", key)
        .env("E2B_DOMAIN", DOMAIN)
        .env("FUSE_ADDR", addr)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(SCRIPT_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the e2b SDK script ran longer than {SCRIPT_LIMIT:?}"))
        .expect("running the e2b SDK script");
    (out.status.success(), output_text(&out))
}

/// The E2B API of a `fuse`, called with an API key.
struct E2bApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl E2bApi {
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/e2b{path}", self.base))
            .header("x-api-key", &self.key)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.call(reqwest::Method::GET, path).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.call(reqwest::Method::DELETE, path)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_e2b_sdk_runs_unchanged_against_fuse_on_the_process_backend() {
    let Some(python) = e2b_python().await else {
        return;
    };
    let Some(mut host) = Host::create("e2b") else {
        return;
    };
    // fuse-guest starts the fuse-envd beside it.
    let envd = target_bin("fuse-envd", "fuse-envd");
    let version = std::process::Command::new(&envd)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        fuse_server::app::e2b::ENVD_VERSION,
        "the API announces the envd version the guests run"
    );
    host.start_agent();
    host.wait_up().await;
    let fuse = spawn_fuse(
        "",
        &[
            ("ORCH_AUTH_TOKEN", MASTER),
            ("FUSE_PROXY_DOMAIN", DOMAIN),
            ("FUSE_RECONCILE_PERIOD_SECS", "1"),
        ],
    );
    fuse.ready().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/hosts", fuse.base))
        .bearer_auth(MASTER)
        .json(&json!({"id": "e2b", "url": host.url(), "token": AGENT_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let api = |key: &str| E2bApi {
        http: http.clone(),
        base: fuse.base.clone(),
        key: key.to_owned(),
    };
    let e2b = api(MASTER);

    // A wrong key is refused in E2B's error shape.
    let r = api("not-the-key")
        .post("/v2/sandboxes", json!({"templateID": "base"}))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], 401, "{b}");
    // An unknown template is E2B's 404; a missing templateID a 400.
    for (body, want) in [
        (json!({"templateID": "no-such-template"}), 404),
        (json!({"timeout": 10}), 400),
        (json!({"templateID": "base", "timeout": 0}), 400),
    ] {
        let r = e2b.post("/sandboxes", body.clone()).await;
        assert_eq!(r.status().as_u16(), want, "{body}");
    }

    // A sandbox's envd takes nothing without its access token; with it, it answers.
    let r = e2b
        .post(
            "/v2/sandboxes",
            json!({"templateID": "base", "timeout": 60}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sbx: Value = r.json().await.unwrap();
    let id = sbx["sandboxID"].as_str().unwrap().to_owned();
    let token = sbx["envdAccessToken"].as_str().unwrap().to_owned();
    assert_eq!(sbx["envdVersion"], fuse_server::app::e2b::ENVD_VERSION);
    assert_eq!(sbx["domain"], DOMAIN);
    let list = |tok: Option<&str>| {
        let mut r = http
            .post(format!("{}/process.Process/List", fuse.base))
            .header("e2b-sandbox-id", &id)
            .header("e2b-sandbox-port", "49983")
            .header("content-type", "application/json")
            .body("{}");
        if let Some(t) = tok {
            r = r.header("x-access-token", t);
        }
        r.send()
    };
    assert_eq!(list(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        list(Some("wrong")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = list(Some(&token)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), r#"{"processes":[]}"#);
    // The same envd by name: `49983-{id}.{domain}` (what the SDK uses without
    // E2B_SANDBOX_URL), and a name under the domain that is no sandbox is not one of ours.
    let by_name = http
        .post(format!("{}/process.Process/List", fuse.base))
        .header("host", format!("49983-{id}.{DOMAIN}"))
        .header("x-access-token", &token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), StatusCode::OK);
    assert_eq!(by_name.text().await.unwrap(), r#"{"processes":[]}"#);
    // `/resume` of a running sandbox is a conflict; paused, it resumes (201).
    let r = e2b
        .post(&format!("/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = e2b.post(&format!("/sandboxes/{id}/pause"), json!({})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = e2b.post(&format!("/sandboxes/{id}/pause"), json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "paused already");
    // A paused sandbox's envd is not reachable (E2B answers 502): connect first.
    assert_eq!(
        list(Some(&token)).await.unwrap().status(),
        StatusCode::BAD_GATEWAY
    );
    let r = e2b
        .post(&format!("/sandboxes/{id}/resume"), json!({"timeout": 60}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(list(Some(&token)).await.unwrap().status(), StatusCode::OK);

    // A Fuse API key is an E2B API key; a revoked one is refused.
    let k: Value = http
        .post(format!("{}/v1/api-keys", fuse.base))
        .bearer_auth(MASTER)
        .json(&json!({"label": "e2b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["key"].as_str().unwrap().to_owned();
    let r = api(&key).get("/v2/sandboxes").await;
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed[0]["sandboxID"], id.as_str(), "{listed}");
    let r = http
        .delete(format!(
            "{}/v1/api-keys/{}",
            fuse.base,
            k["id"].as_str().unwrap()
        ))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        api(&key).get("/v2/sandboxes").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // With autoPause, the end of its time pauses a sandbox instead of killing it.
    let r = e2b
        .post(
            "/v2/sandboxes",
            json!({"templateID": "base", "timeout": 1, "autoPause": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let paused_id = r.json::<Value>().await.unwrap()["sandboxID"]
        .as_str()
        .unwrap()
        .to_owned();
    fuse_testkit::eventually(
        "an autoPause sandbox past its timeout is paused",
        Duration::from_secs(20),
        || async {
            let r = e2b.get(&format!("/sandboxes/{paused_id}")).await;
            r.status() == StatusCode::OK && r.json::<Value>().await.unwrap()["state"] == "paused"
        },
    )
    .await;
    let r = e2b.delete(&format!("/sandboxes/{paused_id}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Its time runs out: reconcile ends it (1 s passes here).
    let r = e2b
        .post(&format!("/sandboxes/{id}/timeout"), json!({"timeout": 1}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    fuse_testkit::eventually(
        "a sandbox past its timeout is ended",
        Duration::from_secs(20),
        || async { e2b.get(&format!("/sandboxes/{id}")).await.status() == StatusCode::NOT_FOUND },
    )
    .await;

    let (ok, text) = run_script(&python, &fuse.base, MASTER, &[]).await;
    println!("{text}");
    assert!(
        ok,
        "the e2b SDK script failed:\n{text}\n--- fuse log (last 200 lines):\n{}\n--- fc-agent log (last 100 lines):\n{}",
        tail(&fuse.log_text(), 200),
        tail(&host.log_text(), 100),
    );
    assert!(text.contains("E2B-TIMINGS {"), "{text}");
    // Nothing is left running: every sandbox the script made was killed.
    let envs: Value = http
        .get(format!("{}/v1/environments", fuse.base))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live: Vec<&Value> = envs["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !matches!(e["state"].as_str(), Some("destroyed" | "failed")))
        .collect();
    assert!(live.is_empty(), "environments left: {live:?}");
}
