//! `/v1/environments`: lifecycle, validation, idempotency, capacity, exec, drain, rotate.

use crate::harness::{self, start};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn create_get_list_delete() {
    let f = start().await;
    let env = f.create_running("task-1").await;
    assert_eq!(env["id"], "fuse-task-1");
    assert_eq!(env["task_id"], "task-1");
    assert_eq!(env["host_id"], "default");
    assert_eq!(env["spec"]["cpus"], 1);
    assert_eq!(env["spec"]["ram_mb"], 512);
    let url = env["url"].as_str().unwrap();
    assert!(url.contains("fuse-task-1"), "{url}");
    assert!(url.starts_with("https://"), "fused serves TLS: {url}");
    assert_eq!(env["error"], "", "no error is an empty string, never null");
    assert_eq!(env["endpoints"], json!([]));
    assert_eq!(env["egress"]["mode"], "direct");
    assert!(env.get("health").is_none(), "no healthcheck: no health");
    for field in ["created_at", "updated_at"] {
        let t = env[field].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(),
            "{t}"
        );
    }
    let got = f.get("/v1/environments/fuse-task-1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.state(), "running");
    let list = f.get("/v1/environments").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["environments"].as_array().unwrap().len(), 1);
    assert!(list.body.get("next_cursor").is_none());
    assert_eq!(f.default_stub().len(), 1);

    let del = f.delete("/v1/environments/fuse-task-1").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(
        f.get("/v1/environments/fuse-task-1").await.state(),
        "destroyed"
    );
    assert!(f.default_stub().is_empty(), "the VM is gone from its host");
    // Deleting again is fine; an unknown id is 404.
    assert_eq!(
        f.delete("/v1/environments/fuse-task-1").await.status,
        StatusCode::NO_CONTENT
    );
    let r = f.delete("/v1/environments/fuse-nope").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = f.get("/v1/environments/fuse-nope").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    // The audit log explains every step.
    let audit = f.app().store.audit_list("fuse-task-1").await.unwrap();
    let steps: Vec<String> = audit
        .iter()
        .map(|a| match a.event_type.as_str() {
            "state" => format!(
                "{}->{}",
                a.payload["from"].as_str().unwrap(),
                a.payload["to"].as_str().unwrap()
            ),
            t => t.to_owned(),
        })
        .collect();
    assert_eq!(
        steps,
        [
            "created",
            "provisioning->running",
            "running->destroying",
            "destroying->destroyed"
        ]
    );
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_on_a_different_request() {
    let f = start().await;
    let body = json!({"task_id": "same", "spec": {"cpus": 2}, "startup_script": "echo hi"});
    let a = f.post("/v1/environments", body.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let b = f.post("/v1/environments", body.clone()).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(a.body["id"], b.body["id"]);
    assert_eq!(a.body["created_at"], b.body["created_at"]);
    assert_eq!(f.default_stub().len(), 1, "no second VM");
    let c = f
        .post(
            "/v1/environments",
            json!({"task_id": "same", "spec": {"cpus": 4}}),
        )
        .await;
    assert_eq!((c.status, c.code()), (StatusCode::CONFLICT, "conflict"));
    assert!(c.message().contains("different request"), "{}", c.message());
    // After delete, the task id can be reused with any request.
    f.delete("/v1/environments/fuse-same").await;
    let d = f
        .post(
            "/v1/environments",
            json!({"task_id": "same", "spec": {"cpus": 4}}),
        )
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{}", d.text);
    assert_eq!(d.body["spec"]["cpus"], 4);
}

#[tokio::test]
async fn invalid_input_is_400_naming_the_field() {
    let f = start().await;
    let cases = [
        (
            json!({"task_id": "Bad_Id"}),
            "lowercase letters, digits and '-'",
        ),
        (json!({"task_id": "-x"}), "not starting or ending with '-'"),
        (json!({}), "task_id is required"),
        (
            json!({"task_id": "x", "spec": {"cpus": "two"}}),
            "spec.cpus: invalid type",
        ),
        (json!({"task_id": 5}), "task_id: invalid type"),
        (
            json!({"task_id": "x", "files": {"/etc/x": "!!!"}}),
            "files[\"/etc/x\"]: content is not valid standard base64",
        ),
        (
            json!({"task_id": "x", "files": {"rel/x": "aGk="}}),
            "must be an absolute path",
        ),
        (
            json!({"task_id": "x", "manifest_inline": "%%"}),
            "manifest_inline is not valid standard base64",
        ),
        (
            json!({"task_id": "x", "manifest_inline": b64("not json")}),
            "base64 of a JSON document",
        ),
        (
            json!({"task_id": "x", "spec": {"ram_mb": 1}}),
            "spec.ram_mb must be from 128",
        ),
        (
            json!({"task_id": "x", "agent": {"download_url": "ftp://x"}}),
            "agent.download_url",
        ),
    ];
    for (body, needle) in cases {
        let r = f.post("/v1/environments", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), "invalid_argument");
        assert!(
            r.message().contains(needle),
            "{body}: {:?} lacks {needle:?}",
            r.message()
        );
    }
    // Several problems at once are all listed.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "UPPER", "spec": {"cpus": 0, "storage_gb": 0}}),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["problems"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{}",
        r.text
    );
    // Malformed JSON.
    let raw = f
        .http
        .post(format!("{}/v1/environments", f.base))
        .header("content-type", "application/json")
        .body("{\"task_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    // Too large: 413 with the envelope.
    let big = "a".repeat(2 << 20);
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "x", "startup_script": big}),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "invalid_argument");
    // Nothing was created by any of these.
    assert!(f.default_stub().is_empty());
    assert_eq!(
        f.get("/v1/environments").await.body["environments"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn provision_uploads_files_runs_script_and_starts_agent() {
    let f = start().await;
    let manifest = r#"{"name":"demo"}"#;
    let r = f
        .post(
            "/v1/environments",
            json!({
                "task_id": "full",
                "manifest_inline": b64(manifest),
                "secrets": {"API_KEY": "sekrit-value"},
                "files": {"/etc/app.conf": b64("x=1")},
                "startup_script": "echo setup",
                "gateway_url": "http://gw.example:9000",
                "gateway_token": "gw-token",
                "unknown_field": "ignored"
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let vm = f.default_stub().vm("fuse-full").unwrap();
    assert_eq!(vm.files["/fuse/manifest.json"].0, manifest.as_bytes());
    let secrets: serde_json::Value =
        serde_json::from_slice(&vm.files["/fuse/secrets.json"].0).unwrap();
    assert_eq!(secrets["API_KEY"], "sekrit-value");
    assert_eq!(vm.files["/fuse/secrets.json"].1, 0o600);
    assert_eq!(vm.files["/etc/app.conf"].0, b"x=1");
    assert_eq!(vm.files["/fuse/token"].0.len(), 64);
    assert_eq!(
        vm.execs,
        vec![vec!["sh".to_string(), "-lc".into(), "echo setup".into()]]
    );
    let agent = vm.agent.unwrap();
    assert!(vm.agent_running);
    assert_eq!(agent.command, "/usr/local/bin/fused --dir /fuse");
    assert_eq!(agent.gateway, "http://gw.example:9000");
    assert_eq!(agent.gateway_token, "gw-token");
    assert_eq!(
        agent.auth_token.as_bytes(),
        vm.files["/fuse/token"].0.as_slice()
    );
}

#[tokio::test]
async fn agent_override_replaces_the_profile_per_environment() {
    let f = start().await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "custom", "agent": {"command": "/opt/a/run", "download_url": "http://dl.example/a",
                   "drain_command": "", "listen": "0.0.0.0:9000"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let agent = f.default_stub().vm("fuse-custom").unwrap().agent.unwrap();
    assert_eq!(agent.command, "/opt/a/run");
    assert_eq!(agent.download_url, "http://dl.example/a");
    assert_eq!(agent.listen, "0.0.0.0:9000");
    assert!(
        r.body["url"].as_str().unwrap().starts_with("http://"),
        "a custom agent's scheme is the host's: {}",
        r.text
    );
    // Empty drain command: drain skips the guest step.
    let d = f
        .post("/v1/environments/fuse-custom?action=drain", json!({}))
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.state(), "draining");
    assert!(f.default_stub().vm("fuse-custom").unwrap().execs.is_empty());
}

#[tokio::test]
async fn failed_provision_is_failed_with_a_redacted_error_and_cleaned_up() {
    let f = start().await;
    f.stub_host("h1", 8, 10).await;
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "broken", "secrets": {"PW": "hunter2-secret"},
                   "startup_script": "exit 3"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.state(), "failed");
    let err = r.body["error"].as_str().unwrap();
    assert!(
        err.contains("startup script") && err.contains("exited with 3"),
        "{err}"
    );
    assert!(f.stub("h1").is_empty(), "the VM was destroyed on its host");
    let host = f.get("/v1/hosts/h1").await;
    assert_eq!(host.body["allocated"]["vm_count"], 0, "capacity released");
    assert_eq!(host.body["allocated"]["cpus"], 0);
    // The same request returns the failed environment; DELETE then allows a retry.
    let again = f
        .post("/v1/environments", json!({"task_id": "broken", "secrets": {"PW": "hunter2-secret"}, "startup_script": "exit 3"}))
        .await;
    assert_eq!(
        (again.status, again.state().as_str()),
        (StatusCode::OK, Some("failed"))
    );
    assert_eq!(
        f.delete("/v1/environments/fuse-broken").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        f.get("/v1/environments/fuse-broken").await.state(),
        "destroyed"
    );
    let host = f.get("/v1/hosts/h1").await;
    assert_eq!(
        host.body["allocated"]["vm_count"], 0,
        "released exactly once"
    );
}

#[tokio::test]
async fn no_capacity_is_503_and_a_retry_works_once_there_is_room() {
    let f = start().await;
    f.stub_host("small", 2, 1).await;
    f.create_running("one").await;
    let r = f.post("/v1/environments", json!({"task_id": "two"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(r.message().contains("no host has room"), "{}", r.message());
    assert!(r.message().contains("at their vm limit"), "{}", r.message());
    assert_eq!(f.get("/v1/environments/fuse-two").await.state(), "failed");
    f.delete("/v1/environments/fuse-one").await;
    // Same request again: the unplaced failure is replaced by a new attempt.
    let r = f.post("/v1/environments", json!({"task_id": "two"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["host_id"], "small");
}

#[tokio::test]
async fn wait_false_returns_202_then_runs() {
    let f = start().await;
    let r = f
        .post("/v1/environments?wait=false", json!({"task_id": "async"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(matches!(
        r.state().as_str(),
        Some("provisioning" | "running")
    ));
    f.eventually("running", || async {
        f.get("/v1/environments/fuse-async").await.state() == "running"
    })
    .await;
    let bad = f
        .post("/v1/environments?wait=maybe", json!({"task_id": "x"}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn list_filters_and_pagination() {
    let f = start().await;
    f.stub_host("ha", 64, 100).await;
    for i in 0..7 {
        f.create_running(&format!("p{i}")).await;
    }
    f.post("/v1/environments/fuse-p3?action=drain", json!({}))
        .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/environments?limit=3&cursor={c}"),
            None => "/v1/environments?limit=3".into(),
        };
        let page = f.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for e in page.body["environments"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page.body.get("next_cursor").and_then(|c| c.as_str()) {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = (0..7).map(|i| format!("fuse-p{i}")).collect();
    assert_eq!(seen, want);
    let draining = f.get("/v1/environments?state=draining").await;
    assert_eq!(draining.body["environments"].as_array().unwrap().len(), 1);
    let by_task = f.get("/v1/environments?task_id=p5").await;
    assert_eq!(by_task.body["environments"][0]["id"], "fuse-p5");
    assert_eq!(
        f.get("/v1/environments?host_id=ha").await.body["environments"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        f.get("/v1/environments?host_id=other").await.body["environments"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "state=sleeping",
        "cursor=%%%",
    ] {
        let r = f.get(&format!("/v1/environments?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn exec_runs_commands_and_reports_exit_codes() {
    let f = start().await;
    f.create_running("ex").await;
    let path = "/v1/environments/fuse-ex?action=exec";
    let r = f.post(path, json!({"shell": "echo hello"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"exit_code": 0, "stdout": "hello\n", "stderr": ""})
    );
    let r = f.post(path, json!({"cmd": ["false"]})).await;
    assert_eq!(
        (r.status, r.body["exit_code"].as_i64()),
        (StatusCode::OK, Some(1))
    );
    let r = f.post(path, json!({"cmd": ["no-such-binary"]})).await;
    assert_eq!(r.body["exit_code"], 127);
    let r = f
        .post(path, json!({"cmd": ["sleep", "5"], "timeout_ms": 100}))
        .await;
    assert_eq!(r.body["exit_code"], 124);
    // As the Go original: 0 is the default limit, and a huge one is clamped, not refused.
    for t in [0u64, 10_000_000] {
        let r = f
            .post(path, json!({"shell": "true", "timeout_ms": t}))
            .await;
        assert_eq!(
            (r.status, r.body["exit_code"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{t}"
        );
    }
    for bad in [
        json!({}),
        json!({"cmd": []}),
        json!({"cmd": ["a"], "shell": "b"}),
        json!({"cmd": "ls"}),
    ] {
        let r = f.post(path, bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    let r = f
        .post("/v1/environments/fuse-ex?action=jump", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f.post("/v1/environments/fuse-ex", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f
        .post(
            "/v1/environments/fuse-none?action=exec",
            json!({"shell": "true"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    f.delete("/v1/environments/fuse-ex").await;
    let r = f.post(path, json!({"shell": "true"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn drain_runs_the_drain_command_and_keeps_draining_on_failure() {
    let f = start().await;
    f.create_running("dr").await;
    let r = f
        .post("/v1/environments/fuse-dr?action=drain", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.state(), "draining");
    let vm = f.default_stub().vm("fuse-dr").unwrap();
    assert_eq!(
        vm.execs.last().unwrap(),
        &vec![
            "sh".to_string(),
            "-c".into(),
            "systemctl stop fused 2>/dev/null || pkill -TERM fused".into()
        ]
    );
    assert!(!vm.agent_running, "the drain command stopped the agent");
    // A drain may be retried from draining: the command runs again.
    let again = f
        .post("/v1/environments/fuse-dr?action=drain", json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.state(), "draining");
    let runs = f.default_stub().vm("fuse-dr").unwrap().execs.len();
    assert_eq!(runs, vm.execs.len() + 1, "the drain command ran again");
    // Not once it is gone: an environment that ended is 404, with its last state.
    f.delete("/v1/environments/fuse-dr").await;
    let gone = f
        .post("/v1/environments/fuse-dr?action=drain", json!({}))
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert_eq!(gone.state(), "destroyed", "{}", gone.text);
    // A failing drain command keeps draining and records the error.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "drfail", "agent": {"drain_command": "exit 7"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let d = f
        .post("/v1/environments/fuse-drfail?action=drain", json!({}))
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.state(), "draining");
    assert!(
        d.body["error"].as_str().unwrap().contains("exited with 7"),
        "{}",
        d.text
    );
    assert_eq!(
        f.get("/v1/environments/fuse-drfail").await.state(),
        "draining",
        "drain never destroys"
    );
    // Retried after the failure: the error is cleared when the new drain starts, and set
    // again when it fails again.
    let audit = f.app().store.audit_list("fuse-drfail").await.unwrap();
    assert!(
        audit.iter().any(|a| a.event_type == "drain_failed"),
        "the failed drain is in the audit log: {audit:?}"
    );
}

#[tokio::test]
async fn rotate_token_replaces_credentials_and_restarts_the_agent() {
    let f = start().await;
    f.create_running("rot").await;
    let before = f.default_stub().vm("fuse-rot").unwrap();
    let r = f
        .post("/v1/environments/fuse-rot?action=rotate-token", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let after = f.default_stub().vm("fuse-rot").unwrap();
    assert_ne!(before.files["/fuse/token"].0, after.files["/fuse/token"].0);
    assert_eq!(after.agent_starts, 2);
    assert_eq!(
        after.agent.unwrap().auth_token.as_bytes(),
        after.files["/fuse/token"].0.as_slice()
    );
    f.post("/v1/environments/fuse-rot?action=drain", json!({}))
        .await;
    let r = f
        .post("/v1/environments/fuse-rot?action=rotate-token", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn concurrent_creates_never_overcommit() {
    let f = harness::start().await;
    f.stub_host("only", 64, 10).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let http = f.http.clone();
        let url = format!("{}/v1/environments", f.base);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"task_id": format!("c{i}")}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut created = 0;
    let mut unavailable = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((created, unavailable), (10, 20));
    let h = f.get("/v1/hosts/only").await;
    assert_eq!(h.body["allocated"]["vm_count"], 10);
    assert_eq!(f.stub("only").len(), 10);
}

#[tokio::test]
async fn delete_during_provisioning_wins_and_leaks_nothing() {
    let f = start().await;
    f.stub_host("h", 8, 10).await;
    let r = f
        .post(
            "/v1/environments?wait=false",
            json!({"task_id": "race", "startup_script": "sleep 1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    f.eventually("the VM exists on its host", || async {
        f.stub("h").vm("fuse-race").is_some()
    })
    .await;
    assert_eq!(
        f.delete("/v1/environments/fuse-race").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        f.get("/v1/environments/fuse-race").await.state(),
        "destroyed"
    );
    // The provision notices, removes its VM, and does not resurrect the record.
    f.eventually("host empty", || async { f.stub("h").is_empty() })
        .await;
    f.eventually("the old provision ended", || async {
        f.provisions_in_flight() == 0
    })
    .await;
    assert_eq!(
        f.get("/v1/environments/fuse-race").await.state(),
        "destroyed"
    );
    assert!(f.stub("h").is_empty());
    assert_eq!(f.get("/v1/hosts/h").await.body["allocated"]["vm_count"], 0);
    // Recreating the same task while nothing is left over works and is not disturbed.
    let again = f.post("/v1/environments", json!({"task_id": "race"})).await;
    assert_eq!(
        (again.status, again.state().as_str()),
        (StatusCode::CREATED, Some("running"))
    );
    assert_eq!(f.get("/v1/hosts/h").await.body["allocated"]["vm_count"], 1);
}

#[tokio::test]
async fn a_recreate_is_not_disturbed_by_the_old_provision() {
    let f = start().await;
    f.stub_host("h", 8, 10).await;
    let r = f
        .post(
            "/v1/environments?wait=false",
            json!({"task_id": "reuse", "startup_script": "sleep 1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    f.eventually("VM on host", || async {
        f.stub("h").vm("fuse-reuse").is_some()
    })
    .await;
    f.delete("/v1/environments/fuse-reuse").await;
    // A new incarnation while the old provision is still sleeping in its startup script.
    let new = f
        .post(
            "/v1/environments",
            json!({"task_id": "reuse", "spec": {"cpus": 2}}),
        )
        .await;
    assert_eq!(new.status, StatusCode::CREATED, "{}", new.text);
    f.eventually("the old provision ended", || async {
        f.provisions_in_flight() == 0
    })
    .await;
    let cur = f.get("/v1/environments/fuse-reuse").await;
    assert_eq!(cur.state(), "running");
    assert_eq!(cur.body["spec"]["cpus"], 2);
    assert!(
        f.stub("h").vm("fuse-reuse").is_some(),
        "the new VM was not destroyed by the old provision"
    );
    let h = f.get("/v1/hosts/h").await;
    assert_eq!(h.body["allocated"]["vm_count"], 1);
    assert_eq!(h.body["allocated"]["cpus"], 2);
}

#[tokio::test]
async fn guest_error_text_has_secret_values_redacted() {
    let f = start().await;
    // The stub's `cat` of a missing file echoes the path on stderr.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "leak", "secrets": {"PW": "hunter2-secret"},
                   "startup_script": "cat /run/hunter2-secret"}),
        )
        .await;
    assert_eq!(r.state(), "failed", "{}", r.text);
    let err = r.body["error"].as_str().unwrap();
    assert!(err.contains("[redacted]"), "{err}");
    assert!(!err.contains("hunter2-secret"), "{err}");
    // Wrong-typed secrets are reported without echoing the value.
    let r = f
        .post(
            "/v1/environments",
            json!({"task_id": "x", "secrets": {"PW": 987654321}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message().contains("secrets.PW") && !r.message().contains("987654321"),
        "{}",
        r.message()
    );
}
