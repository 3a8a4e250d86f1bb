//! The real Firecracker binary with tiny test guests (tools/tiny-guest): every API call the
//! host agent uses, a VM that stops by itself, pause, snapshot create and load, stop, and
//! nothing left behind. Skipped with a printed reason when the binary, the guests (gcc/ld)
//! or /dev/kvm are missing; `scripts/test.sh` installs and builds them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use fuse_firecracker::{api_socket, console_log, FcError, Firecracker};
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
        eprintln!(
            "skipping: no firecracker binary (run tools/install-firecracker.sh .fuse-test/bin)"
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
            eprintln!("skipping: cannot build the tiny guests (gcc and ld needed)");
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
        eprintln!("skipping: /dev/kvm is not usable here");
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

#[tokio::test]
async fn configure_every_call_start_and_observe_a_vm_that_stops_by_itself() {
    let Some((fc, g, dir)) = setup("tiny") else {
        return;
    };
    let t0 = Instant::now();
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-tiny").await.unwrap();
    let spawned = t0.elapsed();
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&g.join("tiny.elf"), None, "console=ttyS0")
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
    let cfg = vm.config().await.unwrap();
    assert_eq!(cfg.machine_config.map(|m| m.vcpu_count), Some(1));
    assert_eq!(cfg.drives[0].drive_id, "rootfs");
    let t1 = Instant::now();
    vm.start().await.unwrap();
    let configured_to_started = t1.elapsed();
    let pid = vm.pid().unwrap();
    let exit = vm
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the tiny guest resets and firecracker exits");
    assert_eq!(exit.code, Some(0), "{}", exit.log_tail);
    let console = std::fs::read_to_string(console_log(&dir)).unwrap();
    assert!(console.contains("FUSE-TINY-OK"), "{console}");
    eprintln!(
        "figures: spawn to API ready {:?}; configure (5 calls) + InstanceStart {:?} (start call alone {:?})",
        spawned,
        t1.duration_since(t0) - spawned + configured_to_started,
        configured_to_started
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
async fn pause_snapshot_and_load_into_a_new_process() {
    let Some((fc, g, dir)) = setup("snap") else {
        return;
    };
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-loop").await.unwrap();
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&g.join("tiny-loop.elf"), None, "console=ttyS0")
        .await
        .unwrap();
    vm.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(console_log(&dir))
        .unwrap_or_default()
        .contains("FUSE-TINY-LOOP")
    {
        assert!(Instant::now() < deadline, "no marker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vm.check_alive().unwrap();
    vm.pause().await.unwrap();
    let (state, mem) = (dir.join("snap.state"), dir.join("snap.mem"));
    let t = Instant::now();
    vm.snapshot_create(&state, &mem).await.unwrap();
    eprintln!("figures: snapshot create (64 MiB guest) {:?}", t.elapsed());
    assert!(std::fs::metadata(&mem).unwrap().len() >= 64 << 20);
    vm.resume().await.unwrap();
    vm.check_alive().unwrap();
    let old_pid = vm.pid().unwrap();
    vm.stop().await;
    assert!(pid_gone(old_pid));
    // A fresh process restores the VM from the files.
    let dir2 = dir.join("restored");
    let mut vm2 = Firecracker::spawn(&fc, &dir2, "fuse-loop").await.unwrap();
    let t = Instant::now();
    vm2.snapshot_load(&state, &mem, true).await.unwrap();
    eprintln!("figures: snapshot load + resume {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    vm2.check_alive().unwrap();
    let pid2 = vm2.pid().unwrap();
    vm2.stop().await;
    assert!(pid_gone(pid2));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists(), "nothing left behind");
}

#[tokio::test]
async fn errors_and_deaths_are_reported_with_their_reasons() {
    let Some((fc, g, dir)) = setup("err") else {
        return;
    };
    let mut vm = Firecracker::spawn(&fc, &dir, "fuse-err").await.unwrap();
    let e = vm
        .boot_source(&dir.join("missing-kernel"), None, "x")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("/boot-source") && text.contains("400"),
        "{text}"
    );
    let e = vm.start().await.unwrap_err();
    assert!(e.to_string().contains("/actions"), "{e}");
    // A VM that is killed from outside is detected, with its log tail.
    vm.machine_config(1, 64).await.unwrap();
    vm.boot_source(&g.join("tiny-loop.elf"), None, "console=ttyS0")
        .await
        .unwrap();
    vm.start().await.unwrap();
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
    vm.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
