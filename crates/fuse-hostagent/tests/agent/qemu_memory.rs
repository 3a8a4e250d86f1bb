//! Pause, resume, templates and warm VMs with real Linux guests: the real `fc-agent` with
//! the `qemu` backend (TCG) and the guest image of `tools/build-guest-image.sh` (cached in
//! `.fuse-test/guest`, or `FUSE_TEST_GUEST_DIR`). One test, so the emulated boots are few:
//! a VM is paused and resumed with a running process and a tmpfs value intact; a full
//! snapshot of it becomes two new VMs whose hostname, address, MAC, link token, `boot_id`
//! and random output all differ; a warm VM is claimed under a new id, set up, survives an
//! agent restart under that id. Timings are printed (`figures:`).
//!
//! Skipped with a printed reason without root, QEMU or the guest image.

use super::{spawn, tempdir, Agent, Ns};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The guest image (rebuilt when the guest helper changed), or `None` with the reason.
fn guest_image() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let qemu_ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu_ok || !nix::unistd::geteuid().is_root() {
        fuse_testkit::prereq::missing(
            "QEMU (qemu-system-x86_64) and root",
            "tools/install-qemu.sh, run as root",
        );
        return None;
    }
    let out = std::env::var("FUSE_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| ws.join(".fuse-test/guest"));
    let built = std::process::Command::new(ws.join("tools/build-guest-image.sh"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "building the guest image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    Some(out)
}

async fn sh(a: &Agent, id: &str, script: &str) -> String {
    let (code, out) = a.exec(id, &["sh", "-c", script]).await;
    assert_eq!(code, 0, "{id}: {script}: {out}");
    out.trim().to_owned()
}

fn created(s: StatusCode, v: &Value) {
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// What tells two guests apart.
async fn identity(a: &Agent, id: &str) -> [String; 6] {
    [
        sh(a, id, "hostname").await,
        sh(a, id, "ip -o -4 addr show dev eth0 | awk '{print $4}'").await,
        sh(a, id, "cat /sys/class/net/eth0/address").await,
        sh(a, id, "cat /proc/sys/kernel/random/boot_id").await,
        sh(a, id, "head -c 32 /dev/urandom | od -x | head -2").await,
        token(a, id),
    ]
}

fn token(a: &Agent, id: &str) -> String {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(a.dir.join("vms").join(id).join("vm.json")).unwrap())
            .unwrap();
    meta["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn qemu_pause_resume_templates_and_warm_claims_with_real_guests() {
    let Some(image) = guest_image() else { return };
    let Some(ns) = Ns::new("qmem") else { return };
    let dir = tempdir("qmem");
    let p = |f: &str| image.join(f).display().to_string();
    let (kernel, initrd, rootfs) = (p("vmlinuz"), p("initramfs.cpio.gz"), p("rootfs.ext4"));
    let env = [
        ("FC_AGENT_BACKEND", "qemu"),
        ("FC_AGENT_QEMU_ACCEL", "tcg"),
        ("FC_AGENT_KERNEL", kernel.as_str()),
        ("FC_AGENT_INITRD", initrd.as_str()),
        ("FC_AGENT_ROOTFS", rootfs.as_str()),
        ("FC_AGENT_CPUS", "4"),
        ("FC_AGENT_RAM_MB", "1024"),
        ("FC_AGENT_MAX_VMS", "4"),
        ("FC_AGENT_BOOT_TIMEOUT_SECS", "60"),
    ];
    let mut a = spawn(&ns, &dir, &env).await;
    let (_, h) = a.get("/healthz").await;
    for f in ["\"pause\"", "\"template\""] {
        assert!(h["features"].to_string().contains(f), "{f}: {h}");
    }
    let vm = |name: &str| json!({"name": name, "cpus": 1, "memory_mb": 256, "storage_gb": 1});

    // A cold boot: its hostname is its id.
    let t = Instant::now();
    let (s, v) = a.post("/v1/vm", vm("fuse-q1")).await;
    created(s, &v);
    let boot = t.elapsed();
    assert_eq!(sh(&a, "fuse-q1", "hostname").await, "fuse-q1");

    // Pause and resume: a running process and a tmpfs value survive.
    let pid = sh(
        &a,
        "fuse-q1",
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!; echo remembered > /dev/shm/value",
    )
    .await;
    let mac_before = sh(&a, "fuse-q1", "cat /sys/class/net/eth0/address").await;
    let addr_before = sh(
        &a,
        "fuse-q1",
        "ip -o -4 addr show dev eth0 | awk '{print $4}'",
    )
    .await;
    let t = Instant::now();
    let (s, p) = a.post("/v1/vm/fuse-q1/pause", json!({})).await;
    let pause = t.elapsed();
    assert_eq!(
        (s, p["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{p}"
    );
    assert_eq!(p["paused"]["kind"], "live", "{p}");
    let (s, _) = a
        .post("/v1/vm/fuse-q1/exec", json!({"cmd": ["true"]}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, h) = a.get("/healthz").await;
    assert_eq!(h["allocated"]["ram_mb"], 0, "{h}");
    // Across an agent restart, marked as a migration receiver marks a moved VM: its resume
    // gives the guest its network again (a new MAC).
    let mac = std::fs::read(dir.join("vms/fuse-q1/vm.json")).unwrap();
    let mut meta: Value = serde_json::from_slice(&mac).unwrap();
    meta["paused"]["moved"] = json!(true);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::mem::forget(a);
    std::fs::write(
        dir.join("vms/fuse-q1/vm.json"),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    let mut a = spawn(&ns, &dir, &env).await;
    let (_, p2) = a.get("/v1/vm/fuse-q1").await;
    assert_eq!(p2["state"], "paused", "{p2}");
    let t = Instant::now();
    let (s, r) = a.post("/v1/vm/fuse-q1/resume", json!({})).await;
    let resume = t.elapsed();
    assert_eq!(
        (s, r["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{r}"
    );
    assert_eq!(
        sh(
            &a,
            "fuse-q1",
            &format!("kill -0 {pid} && cat /dev/shm/value")
        )
        .await,
        "remembered",
        "the process and the memory are back"
    );
    assert!(
        !dir.join("vms/fuse-q1/memory").exists(),
        "the resume's memory file is gone"
    );
    assert_ne!(
        sh(&a, "fuse-q1", "cat /sys/class/net/eth0/address").await,
        mac_before,
        "a moved VM's guest took its network again"
    );
    assert_eq!(
        sh(
            &a,
            "fuse-q1",
            "ip -o -4 addr show dev eth0 | awk '{print $4}'"
        )
        .await,
        addr_before
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("vms/fuse-q1/vm.json")).unwrap()).unwrap();
    assert!(meta.get("paused").is_none(), "{meta}");

    // A template: two new VMs from one full snapshot, each its own.
    let (s, snap) = a
        .post(
            "/v1/vm/fuse-q1/snapshot",
            json!({"snapshot_id": "tpl", "mode": "full"}),
        )
        .await;
    created(s, &snap);
    let from = json!({"vm_id": "fuse-q1", "snapshot_id": "tpl", "memory": true});
    let mut restores = Vec::new();
    for id in ["fuse-t1", "fuse-t2"] {
        let mut body = vm(id);
        body["from_snapshot"] = from.clone();
        let t = Instant::now();
        let (s, v) = a.post("/v1/vm", body).await;
        restores.push(t.elapsed());
        created(s, &v);
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(
            sh(&a, id, &format!("kill -0 {pid} && cat /dev/shm/value")).await,
            "remembered",
            "restored from the source's memory"
        );
    }
    let t1 = identity(&a, "fuse-t1").await;
    let t2 = identity(&a, "fuse-t2").await;
    let q1 = identity(&a, "fuse-q1").await;
    assert_eq!((t1[0].as_str(), t2[0].as_str()), ("fuse-t1", "fuse-t2"));
    for (i, what) in [
        "hostname",
        "address",
        "MAC",
        "boot_id",
        "urandom",
        "link token",
    ]
    .iter()
    .enumerate()
    {
        assert_ne!(t1[i], t2[i], "{what} of the two restored VMs");
        assert_ne!(t1[i], q1[i], "{what} of a restored VM and its source");
    }
    // A snapshot of the disk alone cannot be a template.
    let mut bad = vm("fuse-t3");
    bad["from_snapshot"] = json!({"vm_id": "fuse-q1", "snapshot_id": "nope", "memory": true});
    assert_eq!(a.post("/v1/vm", bad).await.0, StatusCode::NOT_FOUND);
    for id in ["fuse-t2", "fuse-q1"] {
        assert_eq!(
            a.delete(&format!("/v1/vm/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
    }

    // Warm, then claimed under a new id with a setup.
    let mut w = vm("fuse-w1");
    w["from_snapshot"] = from.clone();
    w["warm"] = json!(true);
    let t = Instant::now();
    let (s, v) = a.post("/v1/vm", w).await;
    let warm = t.elapsed();
    created(s, &v);
    assert_eq!(v["state"], "paused", "{v}");
    assert_eq!(v["paused"]["kind"], "warm", "{v}");
    let (_, h) = a.get("/healthz").await;
    assert_eq!(
        h["allocated"]["ram_mb"], 512,
        "a warm VM holds its memory: {h}"
    );
    let (s, _) = a
        .post("/v1/vm/fuse-w1/exec", json!({"cmd": ["true"]}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let file = base64::engine::general_purpose::STANDARD.encode("set up at the claim");
    let t = Instant::now();
    let (s, c) = a
        .post(
            "/v1/vm/fuse-w1/claim",
            json!({"name": "fuse-c1", "expose": [{"port": 7000, "protocol": "tcp"}],
                   "setup": {"files": [{"path": "/srv/claimed", "content_b64": file, "mode": 420}]}}),
        )
        .await;
    let claim = t.elapsed();
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(
        (c["vm_id"].as_str(), c["state"].as_str()),
        (Some("fuse-c1"), Some("running")),
        "{c}"
    );
    assert_eq!(c["endpoints"][0]["port"], 7000, "the claim's expose: {c}");
    assert_eq!(a.get("/v1/vm/fuse-w1").await.0, StatusCode::NOT_FOUND);
    // A claim alone (no setup): what a warm pool buys.
    let mut w = vm("fuse-w2");
    w["from_snapshot"] = from.clone();
    w["warm"] = json!(true);
    let (s, v) = a.post("/v1/vm", w).await;
    created(s, &v);
    let t = Instant::now();
    let (s, c2) = a
        .post(
            "/v1/vm/fuse-w2/claim",
            json!({"name": "fuse-c2", "hostname": "named"}),
        )
        .await;
    let claim_alone = t.elapsed();
    assert_eq!(
        (s, c2["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{c2}"
    );
    assert_eq!(sh(&a, "fuse-c2", "hostname").await, "named");
    assert_eq!(a.delete("/v1/vm/fuse-c2").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        sh(&a, "fuse-c1", "hostname; cat /srv/claimed").await,
        "fuse-c1\nset up at the claim"
    );
    let (s, _) = a
        .post("/v1/vm/fuse-t1/claim", json!({"name": "fuse-x"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a running VM is not warm");

    // An agent restart finds the claimed VM under its new id. (Not dropped: the harness's
    // drop kills the VMs.)
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::mem::forget(a);
    let a = spawn(&ns, &dir, &env).await;
    let (_, c) = a.get("/v1/vm/fuse-c1").await;
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(
        sh(&a, "fuse-c1", "cat /srv/claimed").await,
        "set up at the claim"
    );

    eprintln!(
        "figures: qemu TCG 256 MiB: cold boot {boot:?}, pause {pause:?}, resume {resume:?}, \
         restore into a new VM {:?} and {:?}, warm create {warm:?}, claim (with a one-file setup) {claim:?}, claim alone {claim_alone:?}",
        restores[0], restores[1]
    );
    for id in ["fuse-t1", "fuse-c1"] {
        assert_eq!(
            a.delete(&format!("/v1/vm/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}
