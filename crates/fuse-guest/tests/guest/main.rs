//! The real `fuse-guest` binary over its private link (a Unix socket here, with the
//! Firecracker vsock-muxer handshake), exercising every operation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Helper {
    child: Child,
    sock: PathBuf,
    root: PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.root.parent().unwrap());
    }
}

fn start(name: &str) -> Helper {
    let dir = std::env::temp_dir().join(format!("fuse-guest-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let sock = dir.join("guest.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_fuse-guest"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--root")
        .arg(&root)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "fuse-guest did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Helper { child, sock, root }
}

/// One request; returns every response line.
fn call_with(sock: &Path, token: &str, req: Value) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "CONNECT 1024").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    r.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim(), "OK 1024");
    let mut body = req;
    body["token"] = json!(token);
    writeln!(s, "{body}").unwrap();
    let mut out = Vec::new();
    for line in r.lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let last = v.get("exit_code").is_some()
            || v.get("error").is_some()
            || v.get("stdout_b64").is_none() && v.get("stderr_b64").is_none();
        out.push(v);
        if last {
            break;
        }
    }
    out
}

fn call(h: &Helper, req: Value) -> Value {
    call_with(&h.sock, TOKEN, req).pop().unwrap()
}

fn text(v: &Value, k: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(v[k].as_str().unwrap_or(""))
        .unwrap();
    String::from_utf8(b).unwrap()
}

#[test]
fn wrong_token_is_refused() {
    let h = start("auth");
    let r = call_with(
        &h.sock,
        "wrong-token-wrong-token-wrong-tok",
        json!({"op": "health"}),
    );
    assert_eq!(r[0]["error"], "unauthorized");
    let ok = call(&h, json!({"op": "health"}));
    assert!(ok.get("error").is_none());
    assert_eq!(ok["agent_running"], false);
    let bad = call(&h, json!({"op": "fly"}));
    assert!(bad["error"].as_str().unwrap().starts_with("bad request"));
}

#[test]
fn upload_is_atomic_with_mode_and_parents() {
    let h = start("upload");
    let b64 = base64::engine::general_purpose::STANDARD.encode("hello");
    let r = call(
        &h,
        json!({"op": "upload", "path": "/a/b/c.txt", "content_b64": b64, "mode": 0o600}),
    );
    assert!(r.get("error").is_none(), "{r}");
    let f = h.root.join("a/b/c.txt");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_dir(h.root.join("a/b")).unwrap().count() == 1,
        "no temp file left"
    );
    for (path, want) in [("relative", "absolute"), ("/x/../y", "'..'")] {
        let r = call(&h, json!({"op": "upload", "path": path, "content_b64": ""}));
        assert!(r["error"].as_str().unwrap().contains(want), "{r}");
    }
    let r = call(
        &h,
        json!({"op": "upload", "path": "/z", "content_b64": "!!"}),
    );
    assert!(r["error"].as_str().unwrap().contains("base64"));
}

#[test]
fn exec_argv_shell_env_cwd_timeout_and_missing_commands() {
    let h = start("exec");
    let r = call(&h, json!({"op": "exec", "cmd": ["echo", "hi"]}));
    assert_eq!(
        (r["exit_code"].as_i64(), text(&r, "stdout_b64")),
        (Some(0), "hi\n".into())
    );
    let r = call(
        &h,
        json!({"op": "exec", "shell": "echo $FOO; pwd; echo err >&2; exit 3", "env": {"FOO": "bar"}}),
    );
    assert_eq!(r["exit_code"], 3);
    let out = text(&r, "stdout_b64");
    assert!(out.starts_with("bar\n"), "{out}");
    assert!(
        out.trim_end()
            .ends_with(h.root.file_name().unwrap().to_str().unwrap()),
        "cwd is the root: {out}"
    );
    assert_eq!(text(&r, "stderr_b64"), "err\n");
    std::fs::create_dir_all(h.root.join("work")).unwrap();
    let r = call(&h, json!({"op": "exec", "cmd": ["pwd"], "cwd": "/work"}));
    let want = h.root.join("work");
    assert_eq!(
        text(&r, "stdout_b64").trim_end(),
        want.display().to_string()
    );
    let r = call(
        &h,
        json!({"op": "exec", "cmd": ["definitely-not-a-command"]}),
    );
    assert_eq!(r["exit_code"], 127);
    assert!(text(&r, "stderr_b64").contains("command not found"));
    let t = Instant::now();
    let r = call(
        &h,
        json!({"op": "exec", "shell": "sleep 30 & sleep 30", "timeout_ms": 300}),
    );
    assert_eq!(r["exit_code"], 124);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "timeout kills the whole group"
    );
    let r = call(&h, json!({"op": "exec", "cmd": ["a"], "shell": "b"}));
    assert!(r["error"].is_string());
    // Streaming: output arrives in several lines, then the exit code.
    let lines = call_with(
        &h.sock,
        TOKEN,
        json!({"op": "exec", "shell": "echo one; sleep 0.2; echo two", "stream": true}),
    );
    let streamed: String = lines
        .iter()
        .filter(|l| l.get("stdout_b64").is_some() && l.get("exit_code").is_none())
        .map(|l| text(l, "stdout_b64"))
        .collect();
    assert_eq!(streamed, "one\ntwo\n");
    assert!(lines.len() >= 3, "{lines:?}");
    assert_eq!(lines.last().unwrap()["exit_code"], 0);
}

#[test]
fn agent_starts_restarts_after_a_crash_and_stops_with_sigterm() {
    let h = start("agent");
    // An agent that records each start and exits on SIGTERM with 0.
    let cmd = "echo start >> starts; trap 'exit 0' TERM; while true; do sleep 0.05; done";
    let r = call(
        &h,
        json!({"op": "start_agent", "command": cmd, "env": {"X": "1"}, "start_window_ms": 300}),
    );
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(call(&h, json!({"op": "health"}))["agent_running"], true);
    // Crash it (SIGKILL from outside): the supervisor restarts it with back-off.
    let starts = || {
        std::fs::read_to_string(h.root.join("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while starts() < 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", "echo start >> starts"])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while starts() < 2 {
        assert!(Instant::now() < deadline, "not restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        call(&h, json!({"op": "health"}))["agent_restarts"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let r = call(&h, json!({"op": "stop_agent", "grace_ms": 5000}));
    assert_eq!(r["exit_code"], 0, "exited on SIGTERM: {r}");
    assert_eq!(call(&h, json!({"op": "health"}))["agent_running"], false);
    // An agent that ignores SIGTERM is killed after the grace period.
    call(
        &h,
        json!({"op": "start_agent", "command": "trap '' TERM; while true; do sleep 0.05; done", "start_window_ms": 300}),
    );
    let t = Instant::now();
    call(&h, json!({"op": "stop_agent", "grace_ms": 300}));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(call(&h, json!({"op": "health"}))["agent_running"], false);
    assert!(
        h.root.join("var/log/fuse-agent.log").exists(),
        "agent output is logged"
    );
}

/// A local HTTP server over `dir` (python3's), on a free port; killed on drop.
struct Site {
    child: Child,
    port: u16,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_dir(dir: &Path) -> Site {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Site { child, port }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn agent_binary_is_fetched_every_start_replacing_the_baked_one_and_checked() {
    let h = start("fetch");
    let site_dir = h.root.parent().unwrap().join("site");
    std::fs::create_dir_all(&site_dir).unwrap();
    let script = b"#!/bin/sh\necho fetched-agent-ran > ran\nexec sleep 60\n";
    std::fs::write(site_dir.join("agent.sh"), script).unwrap();
    let site = serve_dir(&site_dir);
    // The image already has a binary at the path: the download replaces it.
    let bin = h.root.join("usr/local/bin/agent");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho baked > ran\nexec sleep 60\n").unwrap();
    let url = format!("http://127.0.0.1:{}/agent.sh", site.port);
    // The command uses the guest path relative to the root (the process backend's cwd).
    let req = json!({"op": "start_agent", "download_url": url, "binary_path": "/usr/local/bin/agent",
                     "command": "exec sh usr/local/bin/agent", "sha256": sha256_hex(script),
                     "start_window_ms": 300});
    let r = call(&h, req.clone());
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        script,
        "the baked binary was replaced"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o111,
        0o111,
        "executable"
    );
    assert_eq!(
        std::fs::read_to_string(h.root.join("ran")).unwrap().trim(),
        "fetched-agent-ran",
        "the fetched agent is the one running once the start answered"
    );
    // A digest that does not match fails the start and keeps the old binary.
    let mut bad = req.clone();
    bad["sha256"] = json!("0".repeat(64));
    let r = call(&h, bad);
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("SHA-256") && e.contains(&sha256_hex(script)),
        "{e}"
    );
    assert_eq!(std::fs::read(&bin).unwrap(), script);
    // Every start fetches: with the server gone, a start fails with the reason.
    drop(site);
    let r = call(&h, req);
    assert!(r["error"].as_str().unwrap().contains("fetching"), "{r}");
    call(&h, json!({"op": "stop_agent", "grace_ms": 1000}));
}

#[test]
fn an_agent_that_does_not_come_up_fails_its_start_with_the_reason_and_log() {
    let h = start("window");
    // A missing command: the first exit (127) fails the start at once.
    let t = Instant::now();
    let r = call(
        &h,
        json!({"op": "start_agent", "command": "myagent.sh --serve", "start_window_ms": 5000}),
    );
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("not found") && e.contains("myagent.sh"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(call(&h, json!({"op": "health"}))["agent_running"], false);
    // A crash loop: three exits within the window.
    let r = call(
        &h,
        json!({"op": "start_agent", "command": "echo boom-$$; exit 3", "start_window_ms": 10000}),
    );
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("exited 3 times") && e.contains("last exit code 3") && e.contains("boom-"),
        "{e}"
    );
    assert_eq!(call(&h, json!({"op": "health"}))["agent_running"], false);
    // An agent that exits 0 at once is not running.
    let r = call(
        &h,
        json!({"op": "start_agent", "command": "true", "start_window_ms": 2000}),
    );
    assert!(r["error"].as_str().unwrap().contains("code 0"), "{r}");
    // With a listen port, the start answers as soon as the port answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let t = Instant::now();
    let cmd = format!("exec python3 -m http.server {port} --bind 127.0.0.1");
    let r = call(
        &h,
        json!({"op": "start_agent", "command": cmd, "listen": format!("0.0.0.0:{port}"),
               "start_window_ms": 20000}),
    );
    assert!(r.get("error").is_none(), "{r}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "up means listening"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    call(&h, json!({"op": "stop_agent", "grace_ms": 1000}));
}

#[test]
fn startup_output_goes_to_its_log_and_logs_are_read_by_tail_and_offset() {
    let h = start("logs");
    let r = call(
        &h,
        json!({"op": "startup", "script": "echo out-line; echo err-line >&2; exit 4"}),
    );
    assert_eq!(r["exit_code"], 4);
    assert!(text(&r, "stderr_b64").contains("err-line"), "{r}");
    assert_eq!(
        std::fs::read_to_string(h.root.join("var/log/fuse-startup.log")).unwrap(),
        "out-line\nerr-line\n"
    );
    let r = call(
        &h,
        json!({"op": "read_log", "source": "startup", "tail": 1}),
    );
    assert_eq!(text(&r, "log_b64"), "err-line\n");
    let (id, off) = (r["log_id"].clone(), r["log_offset"].as_u64().unwrap());
    assert_eq!(off, 18);
    let r = call(
        &h,
        json!({"op": "startup", "script": "echo second", "timeout_ms": 5000}),
    );
    assert_eq!(r["exit_code"], 0);
    let r = call(
        &h,
        json!({"op": "read_log", "source": "startup", "id": id, "offset": off}),
    );
    assert_eq!(text(&r, "log_b64"), "second\n", "from the offset on");
    let r = call(
        &h,
        json!({"op": "startup", "script": "sleep 5", "timeout_ms": 200}),
    );
    assert_eq!(r["exit_code"], 124);
    let r = call(&h, json!({"op": "read_log", "source": "console"}));
    assert!(
        r["error"].as_str().unwrap().contains("unknown log source"),
        "{r}"
    );
    // The agent's output is in its log.
    call(
        &h,
        json!({"op": "start_agent", "command": "echo agent-says-hi; exec sleep 60", "start_window_ms": 300}),
    );
    let r = call(&h, json!({"op": "read_log", "source": "agent", "tail": 5}));
    assert!(text(&r, "log_b64").contains("agent-says-hi"), "{r}");
    call(&h, json!({"op": "stop_agent", "grace_ms": 1000}));
}

/// `--netns` is joined before anything else: a path that is not a namespace stops the
/// helper at once with the reason, before it listens. (Joining a real one is exercised
/// by fc-agent's tests, whose `process` backend starts every guest with it.)
#[test]
fn netns_that_cannot_be_joined_stops_the_helper() {
    let out = Command::new(env!("CARGO_BIN_EXE_fuse-guest"))
        .args(["--netns", "/nonexistent/netns"])
        .args([
            "--listen",
            "unix:/nonexistent/guest.sock",
            "--token-env",
            "NONE",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("joining network namespace /nonexistent/netns"),
        "{err}"
    );
    assert!(!err.contains("ready on"), "{err}");
}
