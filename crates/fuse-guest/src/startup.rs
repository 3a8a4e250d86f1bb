//! The startup script and the guest's log reads. The script runs with `sh -lc` in its own
//! process group, its stdout and stderr on one pipe appended to the startup log (bounded:
//! it rotates like the agent's); only the output's tail is kept in memory, for the answer.
//! Log reads map a source name to its file and answer one chunk (`logs::read_chunk`).

use crate::error::GuestError;
use crate::logs::{self, RotatingLog};
use crate::proto::Response;
use crate::Guest;
use base64::Engine as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes of the script's output its answer carries (the end of it).
const TAIL: usize = 4096;

/// Runs the startup script; answers its exit code and its output's tail.
pub fn run(g: &Guest, script: &str, limit: Duration) -> Response {
    match run_inner(g, script, limit) {
        Ok((code, tail)) => Response {
            exit_code: Some(code),
            stdout_b64: Some(String::new()),
            stderr_b64: Some(base64::engine::general_purpose::STANDARD.encode(tail)),
            ..Response::default()
        },
        Err(e) => Response::err(e.message()),
    }
}

fn run_inner(g: &Guest, script: &str, limit: Duration) -> Result<(i32, Vec<u8>), GuestError> {
    let path = g.resolve(logs::STARTUP_LOG)?;
    let mut log = RotatingLog::open(&path, logs::DEFAULT_MAX_BYTES)
        .map_err(GuestError::io("opening", &path))?;
    let (r, w) =
        nix::unistd::pipe().map_err(|e| GuestError::io("creating a pipe for", &path)(e.into()))?;
    let w2 = w
        .try_clone()
        .map_err(GuestError::io("creating a pipe for", &path))?;
    let child = {
        let mut c = Command::new("sh");
        c.args(["-lc", script])
            .current_dir(&g.root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2))
            .process_group(0);
        c.spawn()
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("sh: {e}\n");
            log.append(msg.as_bytes());
            return Ok((127, msg.into_bytes()));
        }
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut r = std::fs::File::from(r);
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut tail: Vec<u8> = Vec::new();
    let mut keep = |log: &mut RotatingLog, c: &[u8]| {
        log.append(c);
        tail.extend_from_slice(c);
        if tail.len() > TAIL {
            tail.drain(..tail.len() - TAIL);
        }
    };
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(c) => keep(&mut log, &c),
            // The pipe closed: every writer (the script and what it started) is done.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        // The script ended while something it started still holds the pipe: stop reading
        // once what is queued is drained.
        if let Ok(Some(_)) = child.try_wait() {
            while let Ok(c) = rx.recv_timeout(Duration::from_millis(100)) {
                keep(&mut log, &c);
            }
            break;
        }
    }
    if timed_out {
        crate::ops::kill_group(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let msg = format!("timed out after {} ms\n", limit.as_millis());
        keep(&mut log, msg.as_bytes());
        return Ok((124, tail));
    }
    let status = child
        .wait()
        .map_err(GuestError::io("waiting for the startup script of", &path))?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok((code, tail))
}

/// The guest path of a log source.
pub fn log_path(source: &str) -> Result<&'static str, GuestError> {
    match source {
        "agent" => Ok(crate::agent::LOG_PATH),
        "startup" => Ok(logs::STARTUP_LOG),
        other => Err(GuestError::UnknownLog(other.to_owned())),
    }
}

/// One chunk of a guest log.
pub fn read_log(
    g: &Guest,
    source: &str,
    tail: Option<u32>,
    at: Option<(Option<u64>, u64)>,
    max: usize,
) -> Result<Response, GuestError> {
    let path = g.resolve(log_path(source)?)?;
    let (id, offset) = match at {
        Some(a) => a,
        None => {
            let off = match tail {
                Some(n) => logs::tail_offset(&path, n as usize)
                    .map_err(GuestError::io("reading", &path))?,
                None => 0,
            };
            (None, off)
        }
    };
    let c = logs::read_chunk(&path, id, offset, max).map_err(GuestError::io("reading", &path))?;
    Ok(Response {
        log_b64: Some(base64::engine::general_purpose::STANDARD.encode(&c.data)),
        log_id: Some(c.id),
        log_offset: Some(c.next),
        ..Response::default()
    })
}
