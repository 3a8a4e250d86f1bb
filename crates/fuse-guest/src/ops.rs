//! The operations: upload, exec (buffered or streamed), agent start/stop, health, the
//! healthcheck's HTTP probe; files (`files`) and terminals (`pty`) have their own modules.

use crate::error::GuestError;
use crate::inbox::{Inbox, Outbox};
use crate::proto::{Op, Response};
use crate::{write_line, Guest};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The base64 of the protocol.
pub fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Dispatches one operation and writes its response(s).
pub fn handle<W: Write>(g: &Guest, op: Op, inbox: &Inbox, out: &mut W) {
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
            no_sync,
        } => match upload(g, &path, &content_b64, mode.unwrap_or(0o644), !no_sync) {
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
            stdin_b64,
            window,
        } => {
            let argv = match (cmd.is_empty(), shell) {
                (false, None) => cmd,
                (true, Some(s)) => vec!["sh".into(), "-c".into(), s],
                _ => {
                    let _ = write_line(out, &Response::err("give exactly one of cmd or shell"));
                    return;
                }
            };
            let stdin = match stdin_b64.map(|s| b64().decode(s)).transpose() {
                Ok(s) => s,
                Err(_) => {
                    let _ = write_line(out, &Response::err("stdin_b64 is not valid base64"));
                    return;
                }
            };
            let limit = Duration::from_millis(timeout_ms.unwrap_or(30_000).clamp(1, 3_600_000));
            let job = Job {
                argv: &argv,
                env: &env,
                cwd: cwd.as_deref(),
                stdin,
                limit,
                stream,
            };
            exec(g, job, &mut Outbox::new(out, inbox, window));
            return;
        }
        Op::WriteFile { path, mode } => {
            let mode = mode.unwrap_or(0o644);
            crate::files::write(g, &path, mode, &mut Outbox::new(out, inbox, None));
            return;
        }
        Op::ReadFile { path, window } => {
            crate::files::read(g, &path, &mut Outbox::new(out, inbox, window));
            return;
        }
        Op::ListDir { path, limit } => crate::files::list(g, &path, limit),
        Op::Remove { path, recursive } => crate::files::remove(g, &path, recursive),
        Op::Pty {
            cmd,
            env,
            cwd,
            size,
            window,
        } => {
            crate::pty::run(g, cmd, env, cwd, size, &mut Outbox::new(out, inbox, window));
            return;
        }
        Op::StartAgent {
            download_url,
            command,
            binary_path,
            env,
            sha256,
            listen,
            start_window_ms,
        } => {
            let spec = crate::agent::StartSpec {
                download_url,
                sha256,
                binary_path,
                command,
                listen,
                window: start_window_ms.map(|ms| Duration::from_millis(ms.clamp(1, 600_000))),
                env,
            };
            match g.agent.start(g, spec) {
                Ok(()) => Response::default(),
                Err(e) => Response::err(e.message()),
            }
        }
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
        Op::Startup { script, timeout_ms } => {
            let limit = Duration::from_millis(timeout_ms.unwrap_or(30_000).clamp(1, 3_600_000));
            crate::startup::run(g, &script, limit)
        }
        Op::Identity(id) => crate::identity::apply(g, &id),
        Op::ReadLog {
            source,
            tail,
            id,
            offset,
            max_bytes,
        } => {
            let at = offset.map(|o| (id, o));
            let max = max_bytes.map_or(crate::logs::MAX_CHUNK, |m| m as usize);
            crate::startup::read_log(g, &source, tail, at, max)
                .unwrap_or_else(|e| Response::err(e.message()))
        }
    };
    let _ = write_line(out, &resp);
}

fn upload(
    g: &Guest,
    path: &str,
    content_b64: &str,
    mode: u32,
    sync: bool,
) -> Result<(), GuestError> {
    let target = g.resolve(path)?;
    let bytes = b64()
        .decode(content_b64)
        .map_err(|_| GuestError::NotBase64)?;
    if target.file_name().is_none() {
        return Err(GuestError::NoFile(path.to_owned()));
    }
    let io = GuestError::io("writing", std::path::Path::new(path));
    let (mut f, tmp) = crate::files::create_temp(&target, mode).map_err(io)?;
    f.write_all(&bytes)
        .and_then(|_| {
            if sync {
                crate::files::commit(f, &tmp, &target, mode)
            } else {
                crate::files::commit_unsynced(f, &tmp, &target, mode)
            }
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            GuestError::io("writing", std::path::Path::new(path))(e)
        })
}

/// 64 random bits from the kernel (no RNG crate in the helper).
pub fn random_u64() -> u64 {
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

/// Output kept for a buffered exec (each stream); what comes after it is read and dropped,
/// and the answer says `truncated`.
pub const MAX_OUTPUT: usize = 4 << 20;

/// One command to run.
struct Job<'a> {
    argv: &'a [String],
    env: &'a BTreeMap<String, String>,
    cwd: Option<&'a str>,
    stdin: Option<Vec<u8>>,
    limit: Duration,
    stream: bool,
}

fn exec<W: Write>(g: &Guest, job: Job<'_>, out: &mut Outbox<'_, W>) {
    let argv = job.argv;
    let dir = match job.cwd {
        Some(c) => match g.resolve(c) {
            Ok(d) => d,
            Err(e) => {
                out.send(&Response::err(e.message()));
                return;
            }
        },
        None => g.root.clone(),
    };
    if !dir.is_dir() {
        // Else the spawn fails as if the program were missing.
        let c = job.cwd.unwrap_or("/");
        out.send(&Response::err(format!(
            "cwd {c} is not a directory in the guest"
        )));
        return;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(job.env)
        .current_dir(&dir)
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
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
            out.send(&Response {
                exit_code: Some(code),
                stdout_b64: Some(String::new()),
                stderr_b64: Some(b64().encode(msg)),
                ..Response::default()
            });
            return;
        }
    };
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), job.stdin) {
        // Its own thread: a command that does not read its input must not block us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        pump(o, tx.clone(), false);
    }
    if let Some(e) = child.stderr.take() {
        pump(e, tx, true);
    }
    let limit = job.limit;
    let deadline = Instant::now() + limit;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut truncated = false;
    let mut timed_out = false;
    let mut hung_up = false;
    let mut exit: Option<std::process::ExitStatus> = None;
    let keep = |buf: &mut Vec<u8>, c: &[u8], truncated: &mut bool| {
        let room = MAX_OUTPUT.saturating_sub(buf.len());
        if c.len() > room {
            *truncated = true;
        }
        buf.extend_from_slice(&c[..c.len().min(room)]);
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Chunk::Out(c)) if job.stream => {
                hung_up = !out.send(&Response {
                    stdout_b64: Some(b64().encode(&c)),
                    ..Response::default()
                });
            }
            Ok(Chunk::Err(c)) if job.stream => {
                hung_up = !out.send(&Response {
                    stderr_b64: Some(b64().encode(&c)),
                    ..Response::default()
                });
            }
            Ok(Chunk::Out(c)) => keep(&mut stdout, &c, &mut truncated),
            Ok(Chunk::Err(c)) => keep(&mut stderr, &c, &mut truncated),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both pipes closed: wait for the exit (bounded by the deadline).
                if exit.is_none() {
                    exit = wait_until(&mut child, deadline, out.inbox());
                    timed_out = exit.is_none() && !out.inbox().hung_up();
                    hung_up = exit.is_none() && !timed_out;
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        hung_up = hung_up || out.inbox().hung_up();
        if hung_up {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    if timed_out || hung_up {
        // Kill the whole process group so grandchildren holding the pipes die too.
        kill_group(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
    if hung_up {
        // Nobody is listening for the answer.
        return;
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
        stdout_b64: (!job.stream).then(|| b64().encode(&stdout)),
        stderr_b64: Some(b64().encode(if job.stream && !timed_out {
            &[][..]
        } else {
            &stderr[..]
        })),
        truncated,
        ..Response::default()
    };
    out.send(&last);
}

/// Waits for the exit until `deadline` or a hang-up (`None` then).
pub fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
    inbox: &Inbox,
) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline && !inbox.hung_up() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return None,
        }
    }
}

/// Sends a signal to a process group (errors mean it is already gone).
pub fn kill_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}
