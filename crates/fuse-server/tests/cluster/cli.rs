//! The real `fusectl` binary against a real `fuse` (memory store) and a real `fc-agent`
//! (`process` backend) in a network namespace of its own: contexts, create with its
//! progress lines, `env ls` as a table and as JSON, `exec` streaming and exiting with the
//! command's code, a binary file copied in and out byte for byte, `shell` driven through a
//! real pseudo-terminal (its size and a resize reach the guest, its exit code comes back),
//! `logs`, `events` seeing a create and a destroy, API errors (exit 1, message and request
//! id) and usage errors (exit 2). Needs root (namespaces).

use crate::harness::spawn_fuse;
use crate::hosts::{target_bin, Host, AGENT_TOKEN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MASTER: &str = "cli-test-master-token-0123456789";

struct Ctl {
    bin: PathBuf,
    cfg: PathBuf,
}

impl Ctl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("XDG_CONFIG_HOME", &self.cfg)
            .env_remove("FUSE_URL")
            .env_remove("FUSE_TOKEN")
            .env_remove("FUSE_CONTEXT")
            .stdin(Stdio::null());
        c
    }

    /// Runs with a time limit: the output.
    fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fusectl {args:?} did not finish in 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs and expects exit 0: stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "fusectl {args:?}: {:?}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A pseudo-terminal pair: (master, slave).
fn pty(cols: u16, rows: u16) -> (std::fs::File, std::os::fd::OwnedFd) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p = nix::pty::openpty(Some(&ws), None).unwrap();
    (std::fs::File::from(p.master), p.slave)
}

#[allow(unsafe_code)]
fn set_size(master: &std::fs::File, cols: u16, rows: u16) {
    use std::os::fd::AsRawFd;
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a struct that lives across the call.
    let r = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ");
}

#[tokio::test]
async fn fusectl_drives_a_real_fuse_and_fc_agent() {
    let Some(mut host) = Host::create("cli") else {
        return;
    };
    host.start_agent();
    host.wait_up().await;
    let fuse = spawn_fuse(
        "",
        &[
            ("ORCH_AUTH_TOKEN", MASTER),
            ("FUSE_AGENT_COMMAND", "exec sleep 3600"),
            ("FUSE_AGENT_START_WINDOW_MS", "300"),
        ],
    );
    fuse.ready().await;
    let cfg = std::env::temp_dir().join(format!("fusectl-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cfg);
    let ctl = Ctl {
        bin: target_bin("fusectl", "fusectl"),
        cfg: cfg.clone(),
    };

    // No server configured: a clear message, exit 1.
    let o = ctl.run(&["env", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("fusectl context add"),
        "{}",
        text(&o.stderr)
    );
    // Usage errors: exit 2.
    assert_eq!(ctl.run(&["env", "frobnicate"]).status.code(), Some(2));
    assert_eq!(ctl.run(&["context", "add", "x"]).status.code(), Some(2));
    // A context, written privately.
    ctl.ok(&[
        "context", "add", "test", "--url", &fuse.base, "--token", MASTER,
    ]);
    let listed = ctl.ok(&["context", "ls"]);
    assert!(listed.contains("test") && listed.contains('*'), "{listed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cfg.join("fusectl/config.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the contexts file holds tokens");
    // A wrong token from the environment overrides the context: the API's 401.
    let o = ctl
        .cmd(&["env", "ls"])
        .env("FUSE_TOKEN", "wrong-token-wrong-token")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("401"), "{}", text(&o.stderr));

    ctl.ok(&[
        "host",
        "add",
        "h1",
        "--agent-url",
        &host.url(),
        "--agent-token",
        AGENT_TOKEN,
    ]);
    assert!(ctl.ok(&["host", "ls"]).contains("active"));

    // Create: progress on stderr, from provisioning to running; the id on stdout.
    let o = ctl.run(&["env", "create", "--task-id", "one", "--cpus", "1"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(text(&o.stdout).trim(), "fuse-one");
    let p = err
        .find("fuse-one: provisioning")
        .unwrap_or_else(|| panic!("{err}"));
    let r = err
        .find("fuse-one: running")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(p < r, "{err}");

    // Listing.
    let table = ctl.ok(&["env", "ls"]);
    let line = table.lines().find(|l| l.starts_with("fuse-one")).unwrap();
    assert!(line.contains("running") && line.contains("h1"), "{table}");
    assert!(table.starts_with("ID"), "{table}");
    let js: Value = serde_json::from_str(&ctl.ok(&["env", "ls", "-o", "json"])).unwrap();
    assert_eq!(js["environments"][0]["id"], "fuse-one");
    assert_eq!(js["environments"][0]["state"], "running");
    let none = ctl.ok(&["env", "ls", "--state", "paused"]);
    assert!(!none.contains("fuse-one"), "{none}");

    // Exec: streams, separates stdout and stderr, exits with the command's code.
    let o = ctl.run(&[
        "exec",
        "fuse-one",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    assert_eq!(
        ctl.run(&["exec", "fuse-one", "--", "true"]).status.code(),
        Some(0)
    );
    let o = ctl
        .cmd(&["exec", "fuse-one", "--shell", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = o;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "PIPED IN\n");
    // Output arrives as produced: the first line is read before the command ends.
    let mut child = ctl
        .cmd(&[
            "exec",
            "fuse-one",
            "--shell",
            "echo first; sleep 3; echo second",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the first line waited for the end: {:?}",
        started.elapsed()
    );
    assert!(child.wait().unwrap().success());
    // An API error: the envelope's message and the request id, exit 1.
    let o = ctl.run(&["exec", "fuse-nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("not found") && e.contains("request id req_"),
        "{e}"
    );

    // cp: a binary file in and out, byte for byte.
    let dir = cfg.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let data = fuse_testkit::runtime::noise(3 << 20);
    std::fs::write(dir.join("in.bin"), &data).unwrap();
    let local_in = dir.join("in.bin").display().to_string();
    let local_out = dir.join("out.bin").display().to_string();
    ctl.ok(&["cp", &local_in, "fuse-one:/tmp/cli/in.bin"]);
    ctl.ok(&["cp", "fuse-one:/tmp/cli/in.bin", &local_out]);
    assert!(
        std::fs::read(&local_out).unwrap() == data,
        "the copy differs"
    );
    let o = ctl.run(&["cp", "fuse-one:/tmp/cli/absent", &local_out]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        std::fs::read(&local_out).unwrap() == data,
        "a failed copy kept the old file"
    );
    assert_eq!(ctl.run(&["cp", "a", "b"]).status.code(), Some(2));

    // shell: a real terminal; its size and a resize reach the guest; the exit code comes back.
    let (mut master, slave) = pty(100, 30);
    let mut child = ctl
        .cmd(&["shell", "fuse-one", "--cmd", "sh"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let wait_for = |needle: &str, screen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !screen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} on the terminal: {screen:?}");
            if let Ok(b) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
                screen.push_str(&String::from_utf8_lossy(&b));
            }
        }
    };
    master.write_all(b"stty size; echo $((6*7))\r").unwrap();
    wait_for("42", &mut screen);
    assert!(screen.contains("30 100"), "{screen:?}");
    set_size(&master, 120, 40);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"stty size\r").unwrap();
    wait_for("40 120", &mut screen);
    master.write_all(b"exit 3\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the shell did not end: {screen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{screen:?}");

    // logs: the startup script's output.
    ctl.ok(&[
        "env",
        "create",
        "--task-id",
        "two",
        "--startup",
        "echo hello-from-startup",
    ]);
    let logs = ctl.ok(&["logs", "fuse-two", "--source", "startup"]);
    assert!(logs.contains("hello-from-startup"), "{logs}");

    // events: the fleet stream shows another environment's create and destroy.
    let mut watch = ctl
        .cmd(&["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut werr = watch.stderr.take().unwrap();
    let mut hello = [0u8; 8];
    werr.read_exact(&mut hello).unwrap();
    assert_eq!(
        &hello, b"watching",
        "the stream is subscribed before we go on"
    );
    ctl.ok(&["env", "create", "--task-id", "three"]);
    ctl.ok(&["destroy", "fuse-three"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wout = watch.stdout.take().unwrap();
    let (etx, erx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = wout.read(&mut buf) {
            if n == 0
                || etx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut seen = String::new();
    while !(seen.contains("fuse-three  running") && seen.contains("fuse-three  destroyed")) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "events: {seen}");
        if let Ok(s) = erx.recv_timeout(left.min(Duration::from_millis(200))) {
            seen.push_str(&s);
        }
    }
    assert!(seen.contains("fuse-three  provisioning"), "{seen}");
    let _ = watch.kill();
    let _ = watch.wait();

    // The rest of the lifecycle verbs and the summary.
    let st = ctl.ok(&["status"]);
    assert!(st.contains("1 active") && st.contains("2 running"), "{st}");
    let st: Value = serde_json::from_str(&ctl.ok(&["status", "-o", "json"])).unwrap();
    assert_eq!(st["environments"]["by_state"], json!({"running": 2}));
    ctl.ok(&["drain", "fuse-two"]);
    let got: Value =
        serde_json::from_str(&ctl.ok(&["env", "get", "fuse-two", "-o", "json"])).unwrap();
    assert_eq!(got["state"], "draining");
    ctl.ok(&["destroy", "fuse-one", "fuse-two"]);
    let o = ctl.run(&["env", "get", "fuse-one"]);
    assert_eq!(o.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&cfg);
}
