//! The web dashboard (`/ui`, docs/dashboard.md) against a real `fuse` process and a real
//! `fc-agent` (`process` backend): plain HTTP checks of the server side (content types,
//! CSP, caching, login refusal, the session cookie on `/v1`, cross-origin refusal, logout),
//! and a real headless Chromium from Debian driven over the W3C WebDriver protocol
//! (`chromedriver`, spoken with reqwest): log in, see the host, create an environment and
//! watch it reach `running` without a reload, type in its terminal, destroy it.
//! Screenshots go to `$CARGO_TARGET_DIR/ui-artifacts/` (default `target/ui-artifacts/`).
//! Chromium and chromedriver are prerequisites: missing, they fail the test under CI
//! (`scripts/test.sh` installs them) and skip it elsewhere.

use crate::harness::{free_port, spawn_fuse, FuseProc};
use crate::hosts::{Host, AGENT_TOKEN};
use base64::Engine;
use reqwest::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MASTER: &str = "ui-master-token-0123456789abcdef";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest any one wait in the browser test may take.
const WAIT: Duration = Duration::from_secs(30);

async fn fuse_with_token() -> FuseProc {
    let f = spawn_fuse(
        "",
        &[
            ("ORCH_AUTH_TOKEN", MASTER),
            ("FUSE_AGENT_COMMAND", "exec sleep 3600"),
            ("FUSE_AGENT_START_WINDOW_MS", "300"),
        ],
    );
    f.ready().await;
    f
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Logs in over HTTP: the `fuse_session=...` pair of the answer's cookie.
async fn login(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<String, (StatusCode, Value)> {
    let r = http
        .post(format!("{base}/ui/login"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    let s = r.status();
    let cookie = r
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    if s != StatusCode::OK {
        return Err((s, r.json().await.unwrap_or(Value::Null)));
    }
    let cookie = cookie.expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(
        !cookie.contains(MASTER),
        "the cookie must not hold the token: {cookie}"
    );
    Ok(cookie.split(';').next().unwrap().to_owned())
}

#[tokio::test]
async fn ui_assets_and_session_over_http() {
    let f = fuse_with_token().await;
    let http = client();
    let base = &f.base;

    // /ui redirects to /ui/; every asset has its type, the CSP, and an ETag that answers 304.
    let r = http.get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, ctype) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/term.js", "text/javascript; charset=utf-8"),
        ("/ui/chart.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert_eq!(h[CONTENT_TYPE], ctype, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let etag = h["etag"].to_str().unwrap().to_owned();
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty());
        let r = http
            .get(format!("{base}{path}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    // No inline script in the page (the CSP would block it).
    let page = http
        .get(format!("{base}/ui/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    let r = http.get(format!("{base}/ui/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Without a session: 401 on /ui/session and /v1.
    let r = http.get(format!("{base}/ui/session")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A wrong token is refused with the API's message, and sets no cookie.
    let (s, body) = login(&http, base, "wrong-token").await.unwrap_err();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid"),
        "{body}"
    );

    // The right token: the cookie is accepted on /v1 (GET), and says who it is.
    let cookie = login(&http, base, MASTER).await.unwrap();
    let r = http
        .get(format!("{base}/v1/hosts"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{base}/ui/session"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["caller"], "master", "{who}");
    assert_eq!(who["auth_required"], true, "{who}");
    // A forged session id is nobody.
    let r = http
        .get(format!("{base}/v1/hosts"))
        .header(COOKIE, "fuse_session=00ff")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A state-changing request with the cookie: refused without an Origin, and from
    // another origin; accepted from the page's own.
    let host = base.trim_start_matches("http://").to_owned();
    let post = |origin: Option<&str>| {
        let mut r = http
            .post(format!("{base}/v1/api-keys"))
            .header(COOKIE, &cookie)
            .json(&json!({"name": "from-ui-test"}));
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        r.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "{}",
        r.text().await.unwrap()
    );
    let r = post(Some("http://evil.example")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["error"]["message"].as_str().unwrap().contains("Origin"),
        "{b}"
    );
    let r = post(Some(&format!("http://{host}"))).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let key: Value = r.json().await.unwrap();
    // A cross-site fetch (Sec-Fetch-Site) is refused even for a GET.
    let r = http
        .get(format!("{base}/v1/hosts"))
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A WebSocket upgrade with the cookie from another origin is refused before the handler.
    let r = http
        .get(format!("{base}/v1/environments/none/attach"))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "http://evil.example")
        .header(HOST, &host)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A bearer header is not subject to the cookie's checks.
    let r = http
        .get(format!("{base}/v1/hosts"))
        .bearer_auth(MASTER)
        .header(ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // An API key's session says so, and stops working once the key is revoked.
    let key_cookie = login(&http, base, key["key"].as_str().unwrap())
        .await
        .unwrap();
    let who: Value = http
        .get(format!("{base}/ui/session"))
        .header(COOKIE, &key_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["caller"], "api_key", "{who}");
    let r = http
        .delete(format!(
            "{base}/v1/api-keys/{}",
            key["id"].as_str().unwrap()
        ))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http
        .get(format!("{base}/v1/environments"))
        .header(COOKIE, &key_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Logout clears the cookie and ends the session server-side.
    let r = http
        .post(format!("{base}/ui/logout"))
        .header(COOKIE, &cookie)
        .header(ORIGIN, format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = http
        .get(format!("{base}/v1/hosts"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ui_needs_no_login_on_an_open_server() {
    let f = spawn_fuse("", &[]);
    f.ready().await;
    let r = client()
        .get(format!("{}/ui/session", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["caller"], "master", "{who}");
    assert_eq!(who["auth_required"], false, "{who}");
}

// ---- the browser ----

/// A chromedriver process (killed, with its browsers, on drop) and one session.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    url: String,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; the kill is for when that did not happen.
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &self.driver.id().to_string()])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile =
            std::env::temp_dir().join(format!("fuse-ui-chromium-{}-{port}", std::process::id()));
        let mut b = Browser {
            driver,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: String::new(),
            profile,
        };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while b.http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", b.profile.display())],
            }
        }}});
        let r: Value = b
            .http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sid = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"));
        b.url = format!("{base}/session/{sid}");
        b
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET {
            r = r.json(&body);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        if v["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The element id of the first match of `css` (waiting for it).
    async fn find(&self, css: &str) -> String {
        let q = serde_json::to_string(css).unwrap();
        self.wait(
            &format!("find {css}"),
            &format!("return !!document.querySelector({q})"),
        )
        .await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Waits until `script` (a function body) returns a truthy value.
    async fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.js("return document.body.innerText").await;
                panic!(
                    "timed out waiting for {what}; page text:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    async fn close(&self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("ui-artifacts")
}

fn have_browser() -> Option<()> {
    let found = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    fuse_testkit::prereq::require(
        "Debian's chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver)",
        "apt-get install -y chromium chromium-driver (scripts/test.sh installs them)",
        found.then_some(()),
    )
}

#[tokio::test]
async fn ui_in_a_real_browser() {
    if have_browser().is_none() {
        return;
    }
    let Some(mut host) = Host::create("ui") else {
        return;
    };
    let started = Instant::now();
    host.start_agent();
    host.wait_up().await;
    let f = fuse_with_token().await;
    let r = client()
        .post(format!("{}/v1/hosts", f.base))
        .bearer_auth(MASTER)
        .json(&json!({"id": "ui-host", "url": host.url(), "token": AGENT_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );

    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/ui/", f.base)).await;
    b.wait(
        "the login form",
        "return !document.querySelector('#login').hidden",
    )
    .await;

    // A wrong token is refused with a message.
    b.type_into("#token", "not-the-token").await;
    b.click("#login-button").await;
    let msg = b
        .wait(
            "the refusal",
            "return document.querySelector('#login-error').textContent",
        )
        .await;
    assert!(msg.as_str().unwrap().contains("refused"), "{msg}");
    b.screenshot("01-login-refused.png").await;

    // The right one shows the fleet with the host.
    b.js("document.querySelector('#token').value = ''").await;
    b.type_into("#token", MASTER).await;
    b.click("#login-button").await;
    b.find(".host[data-host='ui-host']").await;
    let text = b
        .js("return document.querySelector('#hosts').innerText")
        .await;
    assert!(text.as_str().unwrap().contains("active"), "{text}");
    b.screenshot("02-fleet.png").await;

    // A marker that a reload would lose; confirm dialogs answered yes.
    b.js("window.__noReload = 'kept'; window.confirm = () => true")
        .await;
    b.click("nav a[href='#/envs']").await;
    b.wait(
        "the live stream",
        "return document.querySelector('#stream-status').dataset.state === 'live'",
    )
    .await;
    b.type_into("#c-task", "ui-one").await;
    b.click("#create-button").await;
    b.wait(
        "the new row to reach running",
        "return document.querySelector(\"tr[data-env='fuse-ui-one'] [data-state='running']\")",
    )
    .await;
    assert_eq!(
        b.js("return window.__noReload").await,
        json!("kept"),
        "the page reloaded"
    );
    b.screenshot("03-environments.png").await;

    // Its page: a terminal that runs a command.
    b.click("tr[data-env='fuse-ui-one'] a").await;
    b.find("#env-state [data-state='running']").await;
    b.click("#term-connect").await;
    b.wait(
        "the terminal to connect",
        "return document.querySelector('#term-status').dataset.state === 'connected'",
    )
    .await;
    b.type_into("#term textarea", "echo ui-$((6*7))\n").await;
    // Typed before the shell's prompt is out, the line is echoed by the terminal first and
    // the output follows the prompt (`# ui-42`): a line ending in the output, which the
    // echoed command line (`ui-$((6*7))`) never does.
    b.wait(
        "the command's output in the terminal",
        "return window.fuseTerm && window.fuseTerm.text().split('\\n').some(l => l.trim().endsWith('ui-42'))",
    )
    .await;
    b.wait(
        "the events timeline",
        "return document.querySelectorAll('#timeline li').length > 0",
    )
    .await;
    // Its files: upload one over PUT from a script (a file input cannot be filled here),
    // then list its directory.
    b.js("window.__up = fetch('/v1/environments/fuse-ui-one/files?path=/tmp/ui-test/hello.txt', {method: 'PUT', credentials: 'same-origin', body: new Blob(['hi'])}).then(r => window.__upStatus = r.status)").await;
    b.wait("the upload", "return window.__upStatus").await;
    assert_eq!(b.js("return window.__upStatus").await, json!(200));
    b.js("document.querySelector('#files-path').value = '/tmp/ui-test'")
        .await;
    b.click("#files-list").await;
    b.wait(
        "the file in the listing",
        "return document.querySelector('#files').innerText.includes('hello.txt')",
    )
    .await;
    b.screenshot("04-environment.png").await;
    assert_eq!(b.js("return window.__noReload").await, json!("kept"));

    // The background page lists the loops.
    b.click("nav a[href='#/background']").await;
    b.wait(
        "the loops",
        "return document.querySelector('#loops') && document.querySelector('#loops').innerText.includes('reconcile')",
    )
    .await;

    // Destroy from the table; the row goes, live.
    b.click("nav a[href='#/envs']").await;
    b.click("button[data-destroy='fuse-ui-one']").await;
    b.wait(
        "the row to go",
        "return document.querySelector('#stream-status').dataset.state === 'live' && !document.querySelector(\"tr[data-env='fuse-ui-one']\")",
    )
    .await;
    // And the server agrees: it is destroyed.
    let r: Value = client()
        .get(format!("{}/v1/environments?state=destroyed", f.base))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        r["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "fuse-ui-one"),
        "{r}"
    );

    // Phone width: the fleet and the environments page still fit.
    b.cmd(
        reqwest::Method::POST,
        "/window/rect",
        json!({"width": 390, "height": 844}),
    )
    .await;
    b.click("nav a[href='#/fleet']").await;
    b.find(".host[data-host='ui-host']").await;
    let overflow = b
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the fleet page scrolls sideways at phone width: {overflow}"
    );
    b.screenshot("05-fleet-phone.png").await;
    b.click("nav a[href='#/charts']").await;
    b.find("#chart-rate path, #chart-rate line").await;
    // The chart arithmetic on two known samples 10 s apart: 4 creates (3 under 1 s, one
    // between 1 and 5 s) taking 6 s in all.
    let figures = b
        .js(r#"
            const m = 'orchestrator_provision_duration_seconds';
            const text = (n, sum, b1, b5) => [
              `${m}_bucket{outcome="running",le="1"} ${b1}`,
              `${m}_bucket{outcome="running",le="5"} ${b5}`,
              `${m}_bucket{outcome="running",le="+Inf"} ${n}`,
              `${m}_sum{outcome="running"} ${sum}`,
              `${m}_count{outcome="running"} ${n}`].join('\n');
            const a = FuseCharts.parseProvision(text(2, 1, 2, 2), 0);
            const c = FuseCharts.parseProvision(text(6, 7, 5, 6), 10000);
            const s = FuseCharts.provisionSeries([a, c]);
            return [s.rate[0][1], s.mean[0][1], s.p50[0][1], s.p95[0][1]];
        "#)
        .await;
    let f64s: Vec<f64> = figures
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(f64s[0], 0.4, "creates/s: {figures}");
    assert_eq!(f64s[1], 1.5, "mean latency: {figures}");
    // p50: rank 2 of 4, inside the first bucket (3 of 4 there): 2/3 of 1 s.
    assert!((f64s[2] - 2.0 / 3.0).abs() < 1e-9, "p50: {figures}");
    // p95: rank 3.8, in the 1-5 s bucket (the 4th): 1 + 4 * 0.8.
    assert!((f64s[3] - 4.2).abs() < 1e-9, "p95: {figures}");
    b.screenshot("06-charts-phone.png").await;

    // Logout shows the login form again.
    b.click("#logout").await;
    b.wait(
        "the login form",
        "return !document.querySelector('#login').hidden",
    )
    .await;
    b.close().await;
    println!("browser test took {:?}", started.elapsed());
}
