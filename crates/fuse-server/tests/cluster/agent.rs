//! The agent for real and its logs, end to end over real HTTP: one `fuse`, one real
//! `fc-agent` (the `process` backend) in a namespace made by the test, and a web server on
//! the test's side of the link that the guest downloads its agent from. A create fetches
//! the agent from `agent.download_url` to `agent.binary_path`, checked against
//! `agent.sha256`, and is `running` only once its `listen` port answers; a bad digest, a
//! missing command and a crash loop fail the create with the reason; a later crash loop
//! sets `error` and is announced; `GET /v1/environments/{id}/logs` serves the agent's, the
//! startup script's and the console's output, redacted, by tail and followed. Needs root
//! (namespaces); skipped with a printed reason otherwise.

use crate::harness::eventually;
use crate::hosts::{Host, AGENT_TOKEN as TOKEN};
use fuse_server::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// python3's web server over a directory, on all addresses; killed on drop.
struct Site(Child, u16);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path) -> Site {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "0.0.0.0"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 (Debian's python3) serves the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the web server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Site(child, port)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Reads a streamed body until `done` or `limit`.
async fn read_until(
    resp: reqwest::Response,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    use futures::StreamExt as _;
    let t = Instant::now();
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while t.elapsed() < limit && !done(&text) {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), body.next()).await {
            Ok(Some(Ok(b))) => text.push_str(&String::from_utf8_lossy(&b)),
            _ => break,
        }
    }
    text
}

const AGENT: &str = "#!/bin/sh
# A custom agent: says who it is, shows what it was given, then serves HTTP on its port.
echo \"custom agent v2 up\"
echo \"my token is $FUSE_AUTH_TOKEN\"
echo \"my secrets: $(cat fuse/secrets.json)\"
trap 'kill $pid; exit 0' TERM
python3 -u -m http.server 8080 --bind 0.0.0.0 &
pid=$!
wait $pid
";

#[tokio::test]
async fn a_custom_agent_is_fetched_checked_started_and_its_logs_are_served_redacted() {
    let Some(mut h) = Host::create("ag") else {
        return;
    };
    h.start_agent();
    h.wait_up().await;
    let mut flags = fuse_testkit::server::test_flags();
    flags.agent_start_window_ms = "500".into();
    let cfg = Config::from_flags(flags, |_| None).unwrap();
    let fuse = fuse_server::server::start(cfg).await.unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/hosts"))
        .json(&json!({"id": "ag", "url": h.url(), "token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The agent, served from the test's side of the host's link (`.1`; the host is `.2`).
    let site_dir = h.dir.with_extension("site");
    std::fs::create_dir_all(&site_dir).unwrap();
    std::fs::write(site_dir.join("agent.sh"), AGENT).unwrap();
    let site = serve(&site_dir);
    let host_ip = h.addr().split(':').next().unwrap().to_owned();
    let here = format!("{}.1", host_ip.rsplit_once('.').unwrap().0);
    let url = format!("http://{here}:{}/agent.sh", site.1);
    let create = |task: &str, agent: Value| {
        let (http, base) = (http.clone(), base.clone());
        let body = json!({
            "task_id": task,
            "secrets": {"API_KEY": "sk-live-0123456789abcdef"},
            "startup_script": "echo startup says hi; echo key=$(cat fuse/secrets.json) >&2",
            "agent": agent,
        });
        async move {
            let r = http
                .post(format!("{base}/v1/environments"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let agent = json!({"download_url": url, "binary_path": "/opt/agent/run.sh",
                       "sha256": sha256_hex(AGENT.as_bytes()),
                       "command": "exec sh opt/agent/run.sh", "listen": "0.0.0.0:8080",
                       "drain_command": "pkill -TERM -f '[s]h opt/agent/run.sh'",
                       "start_window_ms": 20000});
    let t = Instant::now();
    let (s, env) = create("custom", agent.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{env}");
    assert_eq!(env["state"], "running", "{env}");
    eprintln!("create with a downloaded agent: {:?}", t.elapsed());
    // Running means up: the agent's port answers through the host's forward at once (the
    // host names itself 127.0.0.1 in URLs; from here it is its link address).
    let agent_url = {
        let u = env["url"].as_str().unwrap();
        let port = u.rsplit(':').next().unwrap();
        format!("http://{host_ip}:{port}")
    };
    let page = http.get(&agent_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the agent serves");
    let root = h.dir.join("vms/fuse-custom/root");
    assert_eq!(
        std::fs::read(root.join("opt/agent/run.sh")).unwrap(),
        AGENT.as_bytes()
    );
    let logs = |q: &str| {
        let (http, base, q) = (http.clone(), base.clone(), q.to_owned());
        async move {
            http.get(format!("{base}/v1/environments/fuse-custom/logs?{q}"))
                .send()
                .await
                .unwrap()
        }
    };
    // The agent's log: its own words, every secret value redacted.
    let r = logs("source=agent&tail=100").await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("custom agent v2 up"), "{text}");
    assert!(text.contains("my token is [redacted]"), "{text}");
    assert!(
        text.contains("[redacted]") && !text.contains("sk-live-0123456789abcdef"),
        "{text}"
    );
    let token = std::fs::read_to_string(root.join("fuse/token")).unwrap();
    assert!(
        !text.contains(token.trim()),
        "the agent's token never shows"
    );
    let text = logs("source=agent&tail=1").await.text().await.unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    // The startup script's output, redacted too.
    let text = logs("source=startup").await.text().await.unwrap();
    assert!(text.starts_with("startup says hi\n"), "{text}");
    assert!(
        text.contains("key=") && !text.contains("sk-live-0123456789abcdef"),
        "{text}"
    );
    // The console.
    let r = logs("source=console").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("fuse-guest"));
    // Following: a request to the agent is logged by it, and arrives on the open stream.
    let follow = logs("source=agent&tail=0&follow=true").await;
    assert_eq!(follow.status(), StatusCode::OK);
    let (_, text) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http.get(format!("{agent_url}/followed-path"))
                .send()
                .await
                .unwrap();
        },
        read_until(follow, Duration::from_secs(10), |t| t
            .contains("followed-path"))
    );
    assert!(text.contains("GET /followed-path"), "{text:?}");
    // Bad input: 400 with the JSON envelope; unknown environment: 404.
    for q in ["source=kernel", "source=agent&tail=10001", "follow=perhaps"] {
        let r = logs(q).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_argument", "{q}: {e}");
    }
    let r = http
        .get(format!("{base}/v1/environments/fuse-nope/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Draining with the image's tools (pkill -f): the agent stops, and drain succeeded.
    let r: Value = http
        .post(format!("{base}/v1/environments/fuse-custom?action=drain"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["state"], "draining", "{r}");
    eventually("the drain finished", Duration::from_secs(15), || {
        let (http, base, agent_url) = (http.clone(), base.clone(), agent_url.clone());
        async move {
            let e: Value = http
                .get(format!("{base}/v1/environments/fuse-custom"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            e["error"].as_str().unwrap_or("").is_empty()
                && e["state"] == "draining"
                && http.get(&agent_url).send().await.is_err()
        }
    })
    .await;

    // A download that is not the one expected fails the create with both digests.
    let mut bad = agent.clone();
    bad["sha256"] = json!("0".repeat(64));
    let (s, env) = create("bad-digest", bad).await;
    assert_eq!(
        (s, env["state"].as_str()),
        (StatusCode::CREATED, Some("failed")),
        "{env}"
    );
    let err = env["error"].as_str().unwrap();
    assert!(
        err.contains("SHA-256") && err.contains(&sha256_hex(AGENT.as_bytes())),
        "{err}"
    );
    // A missing command fails at once with the shell's words.
    let (s, env) = create(
        "missing",
        json!({"command": "myagent.sh --serve", "start_window_ms": 5000}),
    )
    .await;
    assert_eq!(
        (s, env["state"].as_str()),
        (StatusCode::CREATED, Some("failed")),
        "{env}"
    );
    let err = env["error"].as_str().unwrap();
    assert!(
        err.contains("not found") && err.contains("myagent.sh"),
        "{err}"
    );
    // Not running: 409.
    let r = http
        .post(format!("{base}/v1/environments?wait=false"))
        .json(&json!({"task_id": "slow", "startup_script": "sleep 3", "agent": {"command": "exec sleep 60"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .get(format!(
            "{base}/v1/environments/fuse-slow/logs?source=startup"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    drop(site);
    fuse.shutdown();
}

#[tokio::test]
async fn an_agent_that_crash_loops_after_its_start_sets_error_and_is_announced() {
    let Some(mut h) = Host::create("cl") else {
        return;
    };
    h.start_agent();
    h.wait_up().await;
    let cfg = Config::from_flags(fuse_testkit::server::test_flags(), |_| None).unwrap();
    let fuse = fuse_server::server::start(cfg).await.unwrap();
    let base = format!("http://{}", fuse.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/hosts"))
        .json(&json!({"id": "cl", "url": h.url(), "token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Up through its window, then it dies every 0.6 s (and is restarted with back-off).
    let r = http
        .post(format!("{base}/v1/environments"))
        .json(
            &json!({"task_id": "flaky", "agent": {"command": "echo flaky run; sleep 0.6; exit 2",
                                                    "listen": "", "start_window_ms": 300}}),
        )
        .send()
        .await
        .unwrap();
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["state"], "running", "{env}");
    assert_eq!(env["error"], "");
    let events = http
        .get(format!("{base}/v1/environments/fuse-flaky/events"))
        .send()
        .await
        .unwrap();
    let watch = tokio::spawn(read_until(events, Duration::from_secs(40), |t| {
        t.contains("keeps crashing")
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    let env = loop {
        fuse.tasks.run_now("reconcile").await.unwrap();
        let e: Value = http
            .get(format!("{base}/v1/environments/fuse-flaky"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !e["error"].as_str().unwrap_or("").is_empty() {
            break e;
        }
        assert!(Instant::now() < deadline, "no crash loop recorded: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(env["state"], "running", "the VM still runs: {env}");
    let err = env["error"].as_str().unwrap();
    assert!(
        err.contains("keeps crashing") && err.contains("logs?source=agent"),
        "{err}"
    );
    let text = watch.await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("data:")
            && l.contains("keeps crashing")
            && l.contains("\"running\"")),
        "announced: {text}"
    );
    // Recorded once: the next pass with no new crashes beyond the threshold says nothing new.
    let text = http
        .get(format!(
            "{base}/v1/environments/fuse-flaky/logs?source=agent"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.matches("flaky run").count() >= 3, "{text}");
    fuse.shutdown();
}
