//! Cold migration between two real `fc-agent`s (process backend, one namespace, separate
//! state directories, ports, subnets and forward ports): a paused VM's files move to the
//! target, which holds it paused with a network of its own; one-time tokens are checked
//! (wrong, spent, expired); a corrupted file is refused and nothing is adopted; a send cut
//! off by the sending agent's death leaves the target clean after an abort and the source
//! paused, intact and resumable; a moved VM resumes on the target with its files; a snapshot is copied into another host's store and forks there.

use super::{spawn, spawn_at, tempdir, Agent, Ns, TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MOVE_TOKEN: &str = "one-time-token-0123456789abcdef";

fn vm(name: &str) -> Value {
    json!({"name": name, "cpus": 1, "memory_mb": 128, "storage_gb": 1})
}

/// The target agent: the second one in the namespace.
async fn target(ns: &Ns, dir: &Path) -> Agent {
    spawn_at(
        ns,
        8091,
        dir,
        &[
            ("FC_AGENT_SUBNET", "10.201.0.0/24"),
            ("FC_AGENT_FORWARD_PORTS", "30000-30999"),
        ],
    )
    .await
}

fn registration(vm_id: &str, token: &str, ttl: u64) -> Value {
    json!({"token": token, "vm_id": vm_id, "cpus": 1, "memory_mb": 128, "storage_gb": 1,
           "ttl_seconds": ttl, "agent_port": 8000})
}

fn sha_of(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// Pauses a VM (the process backend archives its root into `root.tar` in the VM's
/// directory, the file a move sends) and returns that archive.
async fn pause(a: &Agent, id: &str) -> PathBuf {
    let (s, v) = a.post(&format!("/v1/vm/{id}/pause"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "paused", "{v}");
    a.dir.join("vms").join(id).join("root.tar")
}

/// Reads `path` from a moved VM's archived root (what its resume unpacks).
fn read_from_archive(archive: &Path, path: &str) -> String {
    let out = std::process::Command::new("tar")
        .args(["--extract", "--to-stdout", "--file"])
        .arg(archive)
        .arg(format!("./{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A PUT of one file as a sending agent does it, with this token and hash.
async fn put_file(
    t: &Agent,
    id: &str,
    name: &str,
    token: Option<&str>,
    sha: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut r = t
        .http
        .put(format!("{}/v1/migrations/{id}/files/{name}", t.base))
        .header("x-fuse-sha256", sha)
        .body(body);
    if let Some(tok) = token {
        r = r.bearer_auth(tok);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn commit(t: &Agent, id: &str, token: &str, files: Value) -> (StatusCode, Value) {
    let resp = t
        .http
        .post(format!("{}/v1/migrations/{id}/commit", t.base))
        .bearer_auth(token)
        .json(
            &json!({"files": files, "meta": {"token": "link-token", "kind": "disk",
            "cpus": 1, "memory_mb": 128, "storage_gb": 1, "backend": "process"}}),
        )
        .send()
        .await
        .unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn staging(a: &Agent, id: &str) -> PathBuf {
    a.dir.join("incoming").join(id)
}

#[tokio::test]
async fn a_paused_vm_moves_to_another_host() {
    let Some(ns) = Ns::new("mig") else { return };
    let root = tempdir("mig");
    let src = spawn(&ns, &root.join("a"), &[]).await;
    let dst = target(&ns, &root.join("b")).await;
    let (_, h) = src.get("/healthz").await;
    assert!(
        h["features"]
            .as_array()
            .unwrap()
            .contains(&json!("migrate")),
        "{h}"
    );
    let (s, _) = src.post("/v1/vm", vm("fuse-mv")).await;
    assert_eq!(s, StatusCode::CREATED);
    src.exec("fuse-mv", &["sh", "-c", "echo carried along > data.txt"])
        .await;
    // A snapshot in the store: listed host-wide, counted in artifact bytes.
    let (s, snap) = src
        .post(
            "/v1/vm/fuse-mv/snapshot",
            json!({"snapshot_id": "snap-m", "mode": "disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    let (_, all) = src.get("/v1/snapshots").await;
    assert_eq!(all["snapshots"][0]["vm_id"], "fuse-mv", "{all}");
    assert_eq!(all["snapshots"][0]["snapshot_id"], "snap-m", "{all}");
    let (_, h) = src.get("/healthz").await;
    let before = h["artifact_bytes"].as_u64().unwrap();
    assert!(before >= snap["size_bytes"].as_u64().unwrap(), "{h}");

    // Not paused: nothing to send.
    let send = json!({"target_url": dst.base, "token": MOVE_TOKEN});
    let (s, e) = src.post("/v1/vm/fuse-mv/send", send.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let archive = pause(&src, "fuse-mv").await;
    let want = sha_of(&archive);
    let (_, h) = src.get("/healthz").await;
    assert!(
        h["artifact_bytes"].as_u64().unwrap() > before,
        "paused artifacts count: {h}"
    );

    // Unregistered: the target refuses the token.
    let (s, e) = src.post("/v1/vm/fuse-mv/send", send.clone()).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("401"),
        "{e}"
    );
    let (s, e) = dst
        .post("/v1/migrations", registration("fuse-mv", MOVE_TOKEN, 300))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (s, sent) = src.post("/v1/vm/fuse-mv/send", send.clone()).await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    assert_eq!(sent["files"][0]["name"], "root.tar", "{sent}");
    assert_eq!(sent["files"][0]["sha256"], want.as_str(), "{sent}");
    assert_eq!(
        sent["bytes"].as_u64(),
        Some(std::fs::metadata(&archive).unwrap().len())
    );

    // The target holds it: its files, its record paused and moved, a network of its own.
    let (s, got) = dst.get("/v1/vm/fuse-mv").await;
    assert_eq!(s, StatusCode::OK, "{got}");
    let moved = dst.dir.join("vms/fuse-mv");
    assert_eq!(sha_of(&moved.join("root.tar")), want);
    assert_eq!(
        read_from_archive(&moved.join("root.tar"), "data.txt"),
        "carried along\n"
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(moved.join("vm.json")).unwrap()).unwrap();
    assert_eq!(meta["paused"]["moved"], true, "{meta}");
    assert_eq!(meta["paused"]["kind"], "disk", "{meta}");
    let src_meta: Value =
        serde_json::from_slice(&std::fs::read(src.dir.join("vms/fuse-mv/vm.json")).unwrap())
            .unwrap();
    assert_eq!(
        meta["token"], src_meta["token"],
        "the guest's link token travels"
    );
    assert!(
        meta["url"].as_str().unwrap().contains(":300"),
        "its forward is from the target's range: {meta}"
    );
    assert!(meta["net"]["index"].is_u64(), "{meta}");
    assert!(!staging(&dst, "fuse-mv").exists(), "the staging is gone");
    // The token is spent.
    let (s, _) = put_file(
        &dst,
        "fuse-mv",
        "root.tar",
        Some(MOVE_TOKEN),
        &want,
        vec![1],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = commit(&dst, "fuse-mv", MOVE_TOKEN, json!([])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Once here, the id cannot be registered again.
    let (s, _) = dst
        .post("/v1/migrations", registration("fuse-mv", MOVE_TOKEN, 300))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(got["state"], "paused", "{got}");
    // The source is untouched: still paused, its archive as it was.
    assert_eq!(sha_of(&archive), want);
    assert_eq!(src_meta["paused"]["kind"], "disk");
    let (_, was) = src.get("/v1/vm/fuse-mv").await;
    assert_eq!(was["state"], "paused", "{was}");
    // It resumes on the target with its file, and its agent port forwards there.
    let (s, up) = dst.post("/v1/vm/fuse-mv/resume", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["state"], "running", "{up}");
    assert_eq!(
        dst.exec("fuse-mv", &["cat", "data.txt"]).await,
        (0, "carried along\n".into())
    );
    // The control plane destroys the source once the target runs it.
    assert_eq!(src.delete("/v1/vm/fuse-mv").await.0, StatusCode::NO_CONTENT);
    assert_eq!(dst.delete("/v1/vm/fuse-mv").await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn transfer_tokens_and_hashes_are_checked() {
    let Some(ns) = Ns::new("migtok") else { return };
    let root = tempdir("migtok");
    let dst = target(&ns, &root.join("b")).await;
    let (s, _) = dst
        .post("/v1/migrations", registration("fuse-tk", MOVE_TOKEN, 300))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The registration route itself needs the host token.
    let r = dst
        .http
        .post(format!("{}/v1/migrations", dst.base))
        .bearer_auth(MOVE_TOKEN)
        .json(&registration("fuse-tk", MOVE_TOKEN, 300))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body = b"file body".to_vec();
    let sha = hex::encode(sha2::Sha256::digest(&body));
    for token in [None, Some("wrong-token-0123456789"), Some(TOKEN)] {
        let (s, e) = put_file(&dst, "fuse-tk", "disk.img", token, &sha, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{token:?}: {e}");
    }
    // Names are one plain component.
    let (s, _) = put_file(
        &dst,
        "fuse-tk",
        ".hidden",
        Some(MOVE_TOKEN),
        &sha,
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A file that does not hash to its header is refused and not kept.
    let (s, e) = put_file(
        &dst,
        "fuse-tk",
        "disk.img",
        Some(MOVE_TOKEN),
        &"0".repeat(64),
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{e}"
    );
    let left: Vec<_> = std::fs::read_dir(staging(&dst, "fuse-tk"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "nothing staged: {left:?}");
    let listed = json!([{"name": "disk.img", "size": body.len(), "sha256": sha}]);
    let (s, e) = commit(&dst, "fuse-tk", MOVE_TOKEN, listed.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(
        dst.get("/v1/vm/fuse-tk").await.0,
        StatusCode::NOT_FOUND,
        "nothing adopted"
    );
    // Its good copy arrives; a commit naming another hash is still refused.
    let (s, f) = put_file(
        &dst,
        "fuse-tk",
        "disk.img",
        Some(MOVE_TOKEN),
        &sha,
        body.clone(),
    )
    .await;
    assert_eq!(
        (s, f["size"].as_u64()),
        (StatusCode::CREATED, Some(body.len() as u64))
    );
    let wrong = json!([{"name": "disk.img", "size": body.len(), "sha256": "1".repeat(64)}]);
    assert_eq!(
        commit(&dst, "fuse-tk", MOVE_TOKEN, wrong).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(dst.get("/v1/vm/fuse-tk").await.0, StatusCode::NOT_FOUND);
    // An abort forgets it all; a second abort is fine.
    assert_eq!(
        dst.delete("/v1/migrations/fuse-tk").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        dst.delete("/v1/migrations/fuse-tk").await.0,
        StatusCode::NO_CONTENT
    );
    assert!(!staging(&dst, "fuse-tk").exists());
    assert_eq!(
        commit(&dst, "fuse-tk", MOVE_TOKEN, listed).await.0,
        StatusCode::UNAUTHORIZED
    );
    // An expired token is refused, and its staging is swept.
    let (s, _) = dst
        .post("/v1/migrations", registration("fuse-ex", MOVE_TOKEN, 1))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(staging(&dst, "fuse-ex").exists());
    let dir = staging(&dst, "fuse-ex");
    fuse_testkit::eventually(
        "the expired staging is swept",
        Duration::from_secs(10),
        || {
            let dir = dir.clone();
            async move { !dir.exists() }
        },
    )
    .await;
    let (s, _) = put_file(&dst, "fuse-ex", "disk.img", Some(MOVE_TOKEN), &sha, body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A VM that is here cannot be registered to arrive.
    assert_eq!(
        dst.post("/v1/vm", vm("fuse-here")).await.0,
        StatusCode::CREATED
    );
    let (s, _) = dst
        .post("/v1/migrations", registration("fuse-here", MOVE_TOKEN, 300))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_send_cut_off_by_the_sender_leaves_both_sides_clean() {
    let Some(ns) = Ns::new("migcut") else { return };
    let root = tempdir("migcut");
    let mut src = spawn(&ns, &root.join("a"), &[]).await;
    let dst = target(&ns, &root.join("b")).await;
    assert_eq!(
        src.post("/v1/vm", vm("fuse-big")).await.0,
        StatusCode::CREATED
    );
    // 512 MiB of noise (no holes, nothing to compress): the stream takes a while.
    let (s, r) = src
        .post(
            "/v1/vm/fuse-big/exec",
            json!({"cmd": ["sh", "-c", "head -c 536870912 /dev/urandom > big.bin && echo ok"],
                   "timeout_ms": 240000}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let archive = pause(&src, "fuse-big").await;
    let want = sha_of(&archive);
    let (s, _) = dst
        .post("/v1/migrations", registration("fuse-big", MOVE_TOKEN, 300))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let send = {
        let (http, url) = (
            src.http.clone(),
            format!("{}/v1/vm/fuse-big/send", src.base),
        );
        let body = json!({"target_url": dst.base, "token": MOVE_TOKEN});
        tokio::spawn(async move { http.post(url).bearer_auth(TOKEN).json(&body).send().await })
    };
    // Killed as soon as the file starts arriving.
    let part = staging(&dst, "fuse-big").join(".part-root.tar");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !part.exists() {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    src.child.kill().unwrap();
    src.child.wait().unwrap();
    assert!(send.await.unwrap().is_err(), "the sender died mid-send");
    assert_eq!(
        dst.get("/v1/vm/fuse-big").await.0,
        StatusCode::NOT_FOUND,
        "the cut-off send committed nothing"
    );
    // The abort leaves the target with nothing of it.
    assert_eq!(
        dst.delete("/v1/migrations/fuse-big").await.0,
        StatusCode::NO_CONTENT
    );
    assert!(!staging(&dst, "fuse-big").exists());
    let incoming: Vec<_> = std::fs::read_dir(dst.dir.join("incoming"))
        .unwrap()
        .collect();
    assert!(incoming.is_empty(), "{incoming:?}");
    assert!(!dst.dir.join("vms/fuse-big").exists());
    // The source is as it was: paused, its archive whole.
    assert_eq!(sha_of(&archive), want);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(src.dir.join("vms/fuse-big/vm.json")).unwrap())
            .unwrap();
    assert_eq!(meta["paused"]["kind"], "disk", "{meta}");
    // And it resumes there (after an agent restart: the sender died) with its data.
    drop(src);
    let src = spawn(&ns, &root.join("a"), &[]).await;
    let (s, up) = src.post("/v1/vm/fuse-big/resume", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(
        src.exec("fuse-big", &["stat", "-c", "%s", "big.bin"]).await,
        (0, "536870912\n".into())
    );
}

#[tokio::test]
async fn a_snapshot_is_copied_into_another_hosts_store() {
    let Some(ns) = Ns::new("migsnap") else { return };
    let root = tempdir("migsnap");
    let src = spawn(&ns, &root.join("a"), &[]).await;
    let dst = target(&ns, &root.join("b")).await;
    assert_eq!(
        src.post("/v1/vm", vm("fuse-tpl")).await.0,
        StatusCode::CREATED
    );
    src.exec(
        "fuse-tpl",
        &["sh", "-c", "echo from the template > tpl.txt"],
    )
    .await;
    let (s, snap) = src
        .post(
            "/v1/vm/fuse-tpl/snapshot",
            json!({"snapshot_id": "snap-tpl", "mode": "disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    // The source VM may be gone: its snapshot is what travels.
    assert_eq!(
        src.delete("/v1/vm/fuse-tpl").await.0,
        StatusCode::NO_CONTENT
    );
    let send = json!({"target_url": dst.base, "token": MOVE_TOKEN});
    let mut reg = registration("fuse-tpl", MOVE_TOKEN, 300);
    reg["snapshot_id"] = json!("snap-tpl");
    let (s, e) = dst.post("/v1/migrations", reg.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (s, sent) = src
        .post("/v1/vm/fuse-tpl/snapshots/snap-tpl/send", send.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    assert_eq!(sent["files"][0]["name"], "root.tar", "{sent}");
    assert_eq!(sent["files"][0]["sha256"], snap["digest"], "{sent}");
    assert_eq!(
        sent["files"][1]["name"], "snapshot.json",
        "its record travels: {sent}"
    );
    // In the target's store with the same record, and a fork there starts from it.
    let record =
        |a: &Agent| std::fs::read(a.dir.join("snapshots/fuse-tpl/snap-tpl/snapshot.json")).unwrap();
    assert_eq!(
        record(&dst),
        record(&src),
        "the record is the source's, field for field"
    );
    let (_, all) = dst.get("/v1/snapshots").await;
    assert_eq!(all["snapshots"][0]["vm_id"], "fuse-tpl", "{all}");
    assert_eq!(all["snapshots"][0]["digest"], snap["digest"], "{all}");
    assert_eq!(
        all["snapshots"][0]["size_bytes"], snap["size_bytes"],
        "{all}"
    );
    let (s, fork) = dst
        .post(
            "/v1/vm",
            json!({"name": "fuse-fork", "cpus": 1, "memory_mb": 128, "storage_gb": 1,
                   "from_snapshot": {"vm_id": "fuse-tpl", "snapshot_id": "snap-tpl"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{fork}");
    assert_eq!(
        dst.exec("fuse-fork", &["cat", "tpl.txt"]).await,
        (0, "from the template\n".into())
    );
    assert!(!staging(&dst, "fuse-tpl").exists());
    // Spent, and the snapshot is there now: neither can be done again.
    let (s, _) = src
        .post("/v1/vm/fuse-tpl/snapshots/snap-tpl/send", send)
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        dst.post("/v1/migrations", reg).await.0,
        StatusCode::CONFLICT
    );
    // The source's copy is untouched.
    let (_, list) = src.get("/v1/vm/fuse-tpl/snapshots").await;
    assert_eq!(list["snapshots"][0]["digest"], snap["digest"], "{list}");
    let (s, _) = src
        .post(
            "/v1/vm/fuse-tpl/snapshots/snap-none/send",
            json!({"target_url": dst.base, "token": MOVE_TOKEN}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
