//! The operations: upload, exec (buffered or streamed), agent start/stop, health, the
//! healthcheck's HTTP probe.

use crate::error::GuestError;
use crate::proto::{Op, Response};
use crate::{write_line, Guest};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Dispatches one operation and writes its response(s).
pub fn handle<W: Write>(g: &Guest, op: Op, out: &mut W) {
    let resp = match op {
        Op::Health => Response {
            version: Some(env!("CARGO_PKG_VERSION").into()),
            agent_running: Some(g.agent.running()),
            agent_restarts: Some(g.agent.restarts()),
            ..Response::default()
        },
        Op::Upload {
            path,
            content_b64,
            mode,
        } => match upload(g, &path, &content_b64, mode.unwrap_or(0o644)) {
            Ok(()) => Response::default(),
            Err(e) => Response::err(e.message()),
        },
        Op::Exec {
            cmd,
            shell,
            env,
            cwd,
            timeout_ms,
            stream,
        } => {
            let argv = match (cmd.is_empty(), shell) {
                (false, None) => cmd,
                (true, Some(s)) => vec!["sh".into(), "-c".into(), s],
                _ => {
                    let _ = write_line(out, &Response::err("give exactly one of cmd or shell"));
                    return;
                }
            };
            let limit = Duration::from_millis(timeout_ms.unwrap_or(30_000).clamp(1, 3_600_000));
            exec(g, &argv, &env, cwd.as_deref(), limit, stream, out);
            return;
        }
        Op::StartAgent {
            download_url,
            command,
            binary_path,
            env,
        } => match g.agent.start(g, &download_url, &command, &binary_path, env) {
            Ok(()) => Response::default(),
            Err(e) => Response::err(e.message()),
        },
        Op::HttpGet {
            port,
            path,
            timeout_ms,
        } => {
            let limit = Duration::from_millis(timeout_ms.unwrap_or(2_000).clamp(1, 600_000));
            match crate::probe::http_get(port, &path, limit) {
                Ok(code) => Response {
                    http_status: Some(code),
                    ..Response::default()
                },
                Err(e) => Response::err(e),
            }
        }
        Op::StopAgent { grace_ms } => {
            let code = g
                .agent
                .stop(Duration::from_millis(grace_ms.unwrap_or(10_000)));
            Response {
                exit_code: code,
                ..Response::default()
            }
        }
    };
    let _ = write_line(out, &resp);
}

fn upload(g: &Guest, path: &str, content_b64: &str, mode: u32) -> Result<(), GuestError> {
    let target = g.resolve(path)?;
    let bytes = b64()
        .decode(content_b64)
        .map_err(|_| GuestError::NotBase64)?;
    let dir = target
        .parent()
        .ok_or_else(|| GuestError::NoFile(path.to_owned()))?;
    std::fs::create_dir_all(dir).map_err(GuestError::io("creating", dir))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| GuestError::NoFile(path.to_owned()))?;
    // An unpredictable temp name, created exclusively, never through a symlink, with its
    // final mode from the start (a key is never readable by others, not even briefly).
    let tmp = dir.join(format!(
        ".{name}.fuse-tmp-{}-{:016x}",
        std::process::id(),
        random_u64()
    ));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        f.write_all(&bytes)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        GuestError::io("writing", std::path::Path::new(path))(e)
    })
}

/// 64 random bits from the kernel (no RNG crate in the helper).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b) ^ u64::from(std::process::id())
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

fn pump<R: Read + Send + 'static>(mut r: R, tx: mpsc::Sender<Chunk>, is_err: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let c = buf[..n].to_vec();
                    let msg = if is_err { Chunk::Err(c) } else { Chunk::Out(c) };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Output kept for a buffered exec (each stream); the tail is kept beyond it.
const MAX_OUTPUT: usize = 4 << 20;

fn exec<W: Write>(
    g: &Guest,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    limit: Duration,
    stream: bool,
    out: &mut W,
) {
    let dir = match cwd {
        Some(c) => match g.resolve(c) {
            Ok(d) => d,
            Err(e) => {
                let _ = write_line(out, &Response::err(e.message()));
                return;
            }
        },
        None => g.root.clone(),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (code, msg) = if e.kind() == std::io::ErrorKind::NotFound {
                (127, format!("{}: command not found\n", argv[0]))
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                (126, format!("{}: permission denied\n", argv[0]))
            } else {
                (126, format!("{}: {e}\n", argv[0]))
            };
            let _ = write_line(
                out,
                &Response {
                    exit_code: Some(code),
                    stdout_b64: Some(String::new()),
                    stderr_b64: Some(b64().encode(msg)),
                    ..Response::default()
                },
            );
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        pump(o, tx.clone(), false);
    }
    if let Some(e) = child.stderr.take() {
        pump(e, tx, true);
    }
    let deadline = Instant::now() + limit;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut timed_out = false;
    let mut exit: Option<std::process::ExitStatus> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Chunk::Out(c)) => {
                if stream {
                    let _ = write_line(
                        out,
                        &Response {
                            stdout_b64: Some(b64().encode(&c)),
                            ..Response::default()
                        },
                    );
                } else if stdout.len() < MAX_OUTPUT {
                    stdout.extend_from_slice(&c);
                }
            }
            Ok(Chunk::Err(c)) => {
                if stream {
                    let _ = write_line(
                        out,
                        &Response {
                            stderr_b64: Some(b64().encode(&c)),
                            ..Response::default()
                        },
                    );
                } else if stderr.len() < MAX_OUTPUT {
                    stderr.extend_from_slice(&c);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both pipes closed: wait for the exit (bounded by the deadline).
                if exit.is_none() {
                    exit = wait_until(&mut child, deadline);
                    timed_out = exit.is_none();
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    if timed_out {
        // Kill the whole process group so grandchildren holding the pipes die too.
        kill_group(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
    let code = if timed_out {
        124
    } else {
        match exit.or_else(|| child.wait().ok()) {
            Some(s) => s.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(0)
            }),
            None => 1,
        }
    };
    if timed_out {
        stderr.extend_from_slice(format!("timed out after {} ms\n", limit.as_millis()).as_bytes());
    }
    let last = Response {
        exit_code: Some(code),
        stdout_b64: (!stream).then(|| b64().encode(&stdout)),
        stderr_b64: Some(b64().encode(if stream && !timed_out {
            &[][..]
        } else {
            &stderr[..]
        })),
        ..Response::default()
    };
    let _ = write_line(out, &last);
}

fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Sends a signal to a process group (errors mean it is already gone).
pub fn kill_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}
