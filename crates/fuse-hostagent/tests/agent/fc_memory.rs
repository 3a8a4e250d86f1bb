//! The firecracker backend's pause, resume and memory restores with the real binary and the
//! tiny looping guest (no Linux guest boots under this machine's KVM; see VMS-HERE.md, and
//! the qemu test for what happens inside a real guest): the API calls, the processes, the
//! files, and that a VM's state loads in another directory — a paused VM moved with its
//! `paused_files`, a new VM made from a full snapshot — and uses that directory's disk
//! and vsock socket (Firecracker runs there and records relative paths).

use super::{firecracker_and_tiny_guests, Path};
use fuse_hostagent::backend::{firecracker::FirecrackerBackend, BootSpec, VmmBackend};
use std::time::{Duration, Instant};

fn spec(dir: &Path, id: &str) -> BootSpec {
    std::fs::create_dir_all(dir).unwrap();
    BootSpec {
        vm_id: id.into(),
        dir: dir.to_owned(),
        cpus: 1,
        memory_mb: 64,
        storage_gb: 0,
        token: "t".repeat(32),
        net: None,
        base: None,
    }
}

async fn running(dir: &Path) -> bool {
    fuse_firecracker::Control::attach(dir)
        .state()
        .await
        .is_ok_and(|s| s == "Running")
}

fn cwd(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
}

fn gone(pid: i32) -> bool {
    !fuse_hostagent::backend::pid_running(pid)
}

#[tokio::test]
async fn firecracker_pause_resume_move_and_restore_into_a_new_vm() {
    let Some((fc, dir, g)) = firecracker_and_tiny_guests("fcmem") else {
        return;
    };
    let base = dir.join("base.img");
    std::fs::write(&base, b"the base disk").unwrap();
    let backend = FirecrackerBackend {
        bin: fc,
        kernel: g.join("tiny-loop.elf"),
        initrd: None,
        rootfs: base,
        boot_args: "console=ttyS0".into(),
    };
    assert!(backend.restores_memory());
    let a = dir.join("vms/fuse-a");
    let booted = backend.boot(&spec(&a, "fuse-a")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(fuse_firecracker::console_log(&a))
        .unwrap_or_default()
        .contains("FUSE-TINY-LOOP")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never printed its marker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cwd(booted.pid), a, "Firecracker runs in the VM's directory");
    assert!(
        a.join("guest.sock").exists(),
        "the vsock socket, relative to it"
    );

    // Pause: state and memory in the VM's own directory, the VMM gone.
    let t = Instant::now();
    let paused = backend.pause(&a, booted.pid).await.unwrap();
    let pause_took = t.elapsed();
    assert_eq!(paused.kind, "live");
    assert!(paused.size_bytes >= 64 << 20, "memory is in it: {paused:?}");
    let files = backend.paused_files(&a);
    assert_eq!(files, ["vm.state", "vm.mem", "rootfs.ext4"]);
    for f in &files {
        assert!(a.join(f).is_file(), "{f}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(booted.pid) {
        assert!(Instant::now() < deadline, "the paused VM's VMM still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Moved: only its paused files, in another directory; it resumes there, on that
    // directory's disk and socket.
    let b = dir.join("elsewhere/fuse-a");
    std::fs::create_dir_all(&b).unwrap();
    for f in &files {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    std::fs::write(b.join("rootfs.ext4"), b"the moved disk").unwrap();
    let t = Instant::now();
    let moved = backend.resume(&spec(&b, "fuse-a")).await.unwrap();
    let resume_took = t.elapsed();
    assert!(running(&b).await, "loaded and resumed");
    assert_eq!(cwd(moved.pid), b);
    assert!(
        b.join("guest.sock").exists(),
        "its vsock socket is in its new directory"
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", moved.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        fds.contains(&b.join("rootfs.ext4")),
        "the moved VM's disk is its new directory's: {fds:?}"
    );
    assert!(!fds.contains(&a.join("rootfs.ext4")), "{fds:?}");
    backend.paused_cleanup(&b);
    assert!(!b.join("vm.mem").exists() && b.join("rootfs.ext4").exists());

    // A failed resume changes nothing: the original directory still resumes afterwards.
    let broken = dir.join("broken/fuse-a");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("vm.state"), b"not a state").unwrap();
    std::fs::copy(a.join("vm.mem"), broken.join("vm.mem")).unwrap();
    std::fs::copy(a.join("rootfs.ext4"), broken.join("rootfs.ext4")).unwrap();
    assert!(backend.resume(&spec(&broken, "fuse-a")).await.is_err());
    assert!(broken.join("vm.state").exists() && broken.join("vm.mem").exists());

    // Resumed in place.
    let again = backend.resume(&spec(&a, "fuse-a")).await.unwrap();
    assert!(running(&a).await);

    // A full snapshot restored into a NEW VM in a new directory: a new process there, a
    // copy of the snapshot's disk, the snapshot's memory untouched.
    let snap = dir.join("snapshots/fuse-a/s1");
    backend.snapshot(&a, again.pid, &snap).await.unwrap();
    let mem_before = std::fs::read(snap.join("vm.mem")).unwrap();
    let n = dir.join("vms/fuse-new");
    let t = Instant::now();
    let fresh = backend
        .restore_into(&spec(&n, "fuse-new"), &snap)
        .await
        .unwrap();
    let restore_took = t.elapsed();
    assert_ne!(fresh.pid, again.pid);
    assert!(running(&n).await && running(&a).await, "both run");
    assert_eq!(cwd(fresh.pid), n);
    assert!(n.join("guest.sock").exists());
    assert_eq!(
        std::fs::read(n.join("rootfs.ext4")).unwrap(),
        std::fs::read(snap.join("rootfs.ext4")).unwrap()
    );
    // Warm: vCPUs stopped in the running VMM, then running again.
    backend.vcpus(&n, false).await.unwrap();
    assert_eq!(
        fuse_firecracker::Control::attach(&n).state().await.unwrap(),
        "Paused"
    );
    backend.vcpus(&n, true).await.unwrap();
    assert!(running(&n).await);
    assert!(
        std::fs::read(snap.join("vm.mem")).unwrap() == mem_before,
        "the template's memory is only read"
    );
    eprintln!(
        "figures: firecracker (tiny guest, 64 MiB) pause {pause_took:?}, resume in another directory {resume_took:?}, restore into a new VM {restore_took:?}"
    );
    for (d, pid) in [(&a, again.pid), (&b, moved.pid), (&n, fresh.pid)] {
        backend.stop(d, pid).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
