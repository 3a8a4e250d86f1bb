//! The real Firecracker binary with tiny test guests (tools/tiny-guest): every typed API call
//! (configuration read back through `GET /vm/config`, the instance state through `GET /`
//! before and after start, pause/resume, snapshot create and load), Firecracker's refusals
//! as typed errors with its fault message, a VM that stops by itself, stop, and nothing left
//! behind. Skipped with a printed reason when the binary, the guests (gcc/ld) or /dev/kvm
//! are missing; `scripts/test.sh` installs and builds them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fuse_firecracker::{
    api_socket, console_log, ApiError, CacheType, Control, Drive, FcError, Firecracker,
    InstanceState, IoEngine, MachineConfiguration, MemoryBackend, MemoryBackendType, RateLimiter,
    SnapshotLoadParams, TokenBucket,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn firecracker() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FUSE_FIRECRACKER_BIN")
            .ok()
            .map(PathBuf::from),
        Some(workspace().join(".fuse-test/bin/firecracker")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        fuse_testkit::prereq::missing(
            "the Firecracker binary",
            "run tools/install-firecracker.sh .fuse-test/bin or set FUSE_FIRECRACKER_BIN",
        );
    }
    found
}

fn guests() -> Option<PathBuf> {
    let out = std::env::temp_dir().join(format!("fuse-tiny-{}", std::process::id()));
    let st = Command::new(workspace().join("tools/tiny-guest/build.sh"))
        .arg(&out)
        .output();
    match st {
        Ok(o) if o.status.success() => Some(out),
        _ => {
            fuse_testkit::prereq::missing("the tiny test guests", "gcc and ld build them");
            None
        }
    }
}

fn kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        fuse_testkit::prereq::missing("a usable /dev/kvm", "Firecracker needs KVM");
    }
    ok
}

fn setup(name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let (Some(fc), Some(g)) = (firecracker(), guests()) else {
        return None;
    };
    if !kvm() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("fuse-fc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some((fc, g, dir))
}

fn pid_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn tap(name: &str) -> bool {
    Command::new("ip")
        .args(["tuntap", "add", name, "mode", "tap"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn untap(name: &str) {
    let _ = Command::new("ip").args(["link", "del", name]).status();
}

/// Waits until `f` holds, up to `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the instance reports `want` through `GET /`.
async fn wait_state(ctl: &Control, want: InstanceState) {
    wait_for(&format!("state {want}"), Duration::from_secs(5), || async {
        ctl.state().await.ok() == Some(want)
    })
    .await;
}

/// Waits until the console shows the looping guest's marker.
async fn wait_marker(dir: &Path) {
    wait_for("the guest's marker", Duration::from_secs(10), || async {
        std::fs::read_to_string(console_log(dir))
            .unwrap_or_default()
            .contains("FUSE-TINY-LOOP")
    })
    .await;
}

/// The refusal inside `e`: its call, status and fault message.
fn refused(e: FcError) -> (String, u16, String) {
    match e {
        FcError::Api(ApiError::Refused {
            call,
            status,
            fault_message,
        }) => (call.to_string(), status.as_u16(), fault_message),
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test]
async fn configure_every_call_read_it_back_start_and_observe_a_vm_that_stops_by_itself() {
    let Some((fc, g, dir)) = setup("tiny") else {
        return;
    };
    let t0 = Instant::now();
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-tiny").await.unwrap();
    let spawned = t0.elapsed();
    let info = vm.describe_instance().await.unwrap();
    assert_eq!(info.id, "fuse-tiny");
    assert_eq!(info.app_name, "Firecracker");
    assert!(!info.vmm_version.is_empty());
    assert_eq!(info.state, InstanceState::NotStarted);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let kernel = g.join("tiny.elf");
    let t1 = Instant::now();
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&kernel, None, "console=ttyS0")
        .await
        .unwrap();
    vm.drive("rootfs", &disk, true, false).await.unwrap();
    vm.vsock(3, &dir.join("guest.sock")).await.unwrap();
    let tap_name = format!("fctap{}", std::process::id() % 100_000);
    let have_tap = tap(&tap_name);
    if have_tap {
        vm.network_interface("eth0", &tap_name, Some("06:00:0a:c8:00:02"))
            .await
            .unwrap();
    } else {
        eprintln!("note: no tap device (not root?); network-interfaces not exercised");
    }
    let configured = t1.elapsed();
    // Whole typed objects, with options the conveniences leave at their defaults.
    let machine = MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: 64,
        smt: Some(false),
        track_dirty_pages: Some(true),
        cpu_template: None,
        huge_pages: None,
    };
    vm.put_machine_config(&machine).await.unwrap();
    let data_disk = dir.join("data.img");
    std::fs::File::create(&data_disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let data = Drive {
        drive_id: "data".into(),
        is_root_device: false,
        partuuid: None,
        cache_type: Some(CacheType::Writeback),
        is_read_only: Some(true),
        path_on_host: Some(data_disk.clone()),
        rate_limiter: Some(RateLimiter {
            bandwidth: Some(TokenBucket {
                size: 1 << 20,
                refill_time: 100,
                one_time_burst: None,
            }),
            ops: None,
        }),
        io_engine: Some(IoEngine::Sync),
        socket: None,
    };
    vm.put_drive(&data).await.unwrap();
    let got = vm.get_machine_config().await.unwrap();
    assert_eq!(
        (got.vcpu_count, got.mem_size_mib, got.track_dirty_pages),
        (1, 64, Some(true))
    );
    // `GET /vm/config` holds what was put.
    let cfg = vm.config().await.unwrap();
    let mc = cfg.machine_config.expect("machine-config");
    assert_eq!((mc.vcpu_count, mc.mem_size_mib), (1, 64));
    assert_eq!(mc.track_dirty_pages, Some(true));
    let boot = cfg.boot_source.expect("boot-source");
    assert_eq!(boot.kernel_image_path, kernel);
    assert_eq!(boot.boot_args.as_deref(), Some("console=ttyS0"));
    assert_eq!(boot.initrd_path, None);
    assert_eq!(cfg.drives.len(), 2, "{:?}", cfg.drives);
    let root = &cfg.drives[0];
    assert_eq!(root.drive_id, "rootfs");
    assert!(root.is_root_device);
    assert_eq!(root.is_read_only, Some(false));
    assert_eq!(root.path_on_host.as_deref(), Some(disk.as_path()));
    let d = &cfg.drives[1];
    assert_eq!(d.drive_id, "data");
    assert_eq!(d.is_read_only, Some(true));
    assert_eq!(d.cache_type, Some(CacheType::Writeback));
    assert_eq!(d.path_on_host.as_deref(), Some(data_disk.as_path()));
    assert_eq!(d.rate_limiter, data.rate_limiter);
    let vsock = cfg.vsock.expect("vsock");
    assert_eq!(vsock.guest_cid, 3);
    assert_eq!(vsock.uds_path, dir.join("guest.sock"));
    if have_tap {
        assert_eq!(cfg.network_interfaces.len(), 1);
        let n = &cfg.network_interfaces[0];
        assert_eq!(n.iface_id, "eth0");
        assert_eq!(n.host_dev_name, tap_name);
        assert_eq!(n.guest_mac.as_deref(), Some("06:00:0a:c8:00:02"));
    }
    let t2 = Instant::now();
    vm.start().await.unwrap();
    let start_call = t2.elapsed();
    let pid = vm.pid().unwrap();
    let exit = vm
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the tiny guest resets and firecracker exits");
    assert_eq!(exit.code, Some(0), "{}", exit.log_tail);
    let console = std::fs::read_to_string(console_log(&dir)).unwrap();
    assert!(console.contains("FUSE-TINY-OK"), "{console}");
    eprintln!(
        "figures: spawn to API ready {spawned:?}; configure (5 calls) + InstanceStart {:?} \
         (start call alone {start_call:?})",
        configured + start_call
    );
    vm.stop().await;
    vm.stop().await;
    if have_tap {
        untap(&tap_name);
    }
    assert!(pid_gone(pid));
    assert!(!api_socket(&dir).exists(), "API socket removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn state_through_start_pause_resume_snapshot_and_loads_into_new_processes() {
    let Some((fc, g, dir)) = setup("snap") else {
        return;
    };
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-loop").await.unwrap();
    assert_eq!(vm.state().await.unwrap(), InstanceState::NotStarted);
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&g.join("tiny-loop.elf"), None, "console=ttyS0")
        .await
        .unwrap();
    vm.start().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), InstanceState::Running);
    wait_marker(&dir).await;
    vm.check_alive().unwrap();
    vm.pause().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), InstanceState::Paused);
    let (state, mem) = (dir.join("snap.state"), dir.join("snap.mem"));
    let t = Instant::now();
    vm.snapshot_create(&state, &mem).await.unwrap();
    eprintln!("figures: snapshot create (64 MiB guest) {:?}", t.elapsed());
    assert!(std::fs::metadata(&mem).unwrap().len() >= 64 << 20);
    vm.resume().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), InstanceState::Running);
    vm.check_alive().unwrap();
    let old_pid = vm.pid().unwrap();
    vm.stop().await;
    assert!(pid_gone(old_pid));

    // A fresh process loads the VM paused, then is resumed.
    let dir2 = dir.join("restored");
    let mut vm2 = Firecracker::spawn(&fc, &dir2, "fuse-loop").await.unwrap();
    assert_eq!(vm2.state().await.unwrap(), InstanceState::NotStarted);
    let t = Instant::now();
    vm2.snapshot_load(&state, &mem, false).await.unwrap();
    eprintln!("figures: snapshot load {:?}", t.elapsed());
    assert_eq!(vm2.state().await.unwrap(), InstanceState::Paused);
    let cfg = vm2.config().await.unwrap();
    assert_eq!(
        cfg.machine_config.map(|m| (m.vcpu_count, m.mem_size_mib)),
        Some((1, 64)),
        "the loaded VM's machine"
    );
    vm2.resume().await.unwrap();
    wait_state(&vm2, InstanceState::Running).await;
    vm2.check_alive().unwrap();
    let pid2 = vm2.pid().unwrap();
    vm2.stop().await;
    assert!(pid_gone(pid2));

    // Another loads it through the whole typed object, resumed at once.
    let dir3 = dir.join("restored-again");
    let mut vm3 = Firecracker::spawn(&fc, &dir3, "fuse-loop").await.unwrap();
    vm3.put_snapshot_load(&SnapshotLoadParams {
        snapshot_path: state.clone(),
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: mem.clone(),
        }),
        mem_file_path: None,
        enable_diff_snapshots: None,
        resume_vm: Some(true),
        network_overrides: None,
    })
    .await
    .unwrap();
    wait_state(&vm3, InstanceState::Running).await;
    vm3.check_alive().unwrap();
    let pid3 = vm3.pid().unwrap();
    vm3.stop().await;
    assert!(pid_gone(pid3));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists(), "nothing left behind");
}

#[tokio::test]
async fn refusals_and_deaths_are_typed_errors_with_their_reasons() {
    let Some((fc, g, dir)) = setup("err") else {
        return;
    };
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-err").await.unwrap();
    let (call, status, msg) = refused(
        vm.boot_source(&dir.join("missing-kernel"), None, "x")
            .await
            .unwrap_err(),
    );
    assert_eq!((call.as_str(), status), ("PUT /boot-source", 400));
    assert!(!msg.is_empty());
    let (call, status, msg) = refused(vm.start().await.unwrap_err());
    assert_eq!((call.as_str(), status), ("PUT /actions", 400));
    assert!(!msg.is_empty());
    // An id Firecracker does not accept; the path is built from the object's own id.
    let bad = Drive {
        drive_id: "bad-id".into(),
        is_root_device: false,
        partuuid: None,
        cache_type: None,
        is_read_only: Some(true),
        path_on_host: Some(dir.join("none")),
        rate_limiter: None,
        io_engine: None,
        socket: None,
    };
    let (call, status, msg) = refused(vm.put_drive(&bad).await.unwrap_err());
    assert_eq!((call.as_str(), status), ("PUT /drives/bad-id", 400));
    assert!(msg.contains("alphanumeric"), "{msg}");
    // Pre-boot configuration after InstanceStart is refused, with Firecracker's reason in
    // the error and in its message.
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&g.join("tiny-loop.elf"), None, "console=ttyS0")
        .await
        .unwrap();
    vm.start().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), InstanceState::Running);
    let e = vm.machine_config(2, 128).await.unwrap_err();
    let text = e.to_string();
    let (call, status, msg) = refused(e);
    assert_eq!((call.as_str(), status), ("PUT /machine-config", 400));
    assert!(msg.contains("after starting"), "{msg}");
    assert!(
        text.contains(&msg) && text.contains("PUT /machine-config"),
        "{text}"
    );
    // A VM that is killed from outside is detected, with its log tail.
    let pid = vm.pid().unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match vm.check_alive() {
            Err(FcError::Died { status, log_tail }) => {
                assert!(status.contains("signal"), "{status}");
                assert!(log_tail.contains("FUSE-TINY-LOOP") || !log_tail.is_empty());
                break;
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("death not detected: {other:?}"),
        }
    }
    // Its socket is left behind with nobody serving it: a connect error naming the socket.
    match vm.state().await.unwrap_err() {
        FcError::Api(ApiError::Connect { call, socket, .. }) => {
            assert_eq!(call.to_string(), "GET /");
            assert_eq!(socket, api_socket(&dir));
        }
        other => panic!("not a connect error: {other:?}"),
    }
    vm.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
