//! Terminals: a command (the login shell by default) on a new pseudo-terminal, its output
//! sent as data lines within the host's window, keystrokes and size changes read from the
//! host's input lines. A hang-up sends SIGHUP to the terminal's process group, then SIGKILL.

use crate::inbox::Outbox;
use crate::ops::{b64, kill_group};
use crate::proto::{Response, WinSize};
use crate::Guest;
use base64::Engine as _;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The login shell of root in the guest's `/etc/passwd`, else `/bin/sh`.
pub fn login_shell(g: &Guest) -> String {
    let shell = g
        .resolve("/etc/passwd")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("root:"))
                .and_then(|l| l.split(':').nth(6))
                .map(str::to_owned)
        })
        .filter(|s| !s.is_empty() && g.resolve(s).is_ok_and(|p| p.exists()));
    shell.unwrap_or_else(|| "/bin/sh".into())
}

fn winsize(s: WinSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: s.rows.max(1),
        ws_col: s.cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the size of the terminal whose master is `master` (`fuse-envd` uses it too).
#[allow(unsafe_code)]
pub fn set_size(master: &impl AsRawFd, s: WinSize) {
    let ws = winsize(s);
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call;
    // the descriptor is an open pseudo-terminal master.
    unsafe {
        nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

fn spawn(
    argv: &[String],
    env: &BTreeMap<String, String>,
    dir: &std::path::Path,
    slave: &OwnedFd,
) -> std::io::Result<std::process::Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("TERM", "xterm-256color")
        .env("HOME", "/root")
        .envs(env)
        .current_dir(dir);
    spawn_on(&mut cmd, slave)
}

/// Starts `cmd` on the terminal whose slave is `slave`: its stdio, in a new session whose
/// controlling terminal it is (`fuse-envd` uses it too).
#[allow(unsafe_code)]
pub fn spawn_on(cmd: &mut Command, slave: &OwnedFd) -> std::io::Result<std::process::Child> {
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: between fork and exec only async-signal-safe calls: setsid(2) and ioctl(2)
    // making the terminal (now fd 0) the session's controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Runs the terminal session until the command exits (answering its code) or the host
/// hangs up.
pub fn run<W: Write>(
    g: &Guest,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    size: Option<WinSize>,
    out: &mut Outbox<'_, W>,
) {
    let argv = if cmd.is_empty() {
        vec![login_shell(g), "-l".into()]
    } else {
        cmd
    };
    let dir = match cwd.as_deref().map(|c| g.resolve(c)).transpose() {
        Ok(d) => d.unwrap_or_else(|| g.root.clone()),
        Err(e) => {
            out.send(&Response::err(e.message()));
            return;
        }
    };
    let size = size.unwrap_or(WinSize { cols: 80, rows: 24 });
    let pty = match nix::pty::openpty(Some(&winsize(size)), None) {
        Ok(p) => p,
        Err(e) => {
            out.send(&Response::err(format!("opening a pseudo-terminal: {e}")));
            return;
        }
    };
    let mut child = match spawn(&argv, &env, &dir, &pty.slave) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            out.send(&Response {
                data_b64: Some(b64().encode(format!("{}: {e}\r\n", argv[0]))),
                ..Response::default()
            });
            out.send(&Response {
                exit_code: Some(code),
                ..Response::default()
            });
            return;
        }
    };
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let (Ok(mut reader), Ok(mut writer)) = (master.try_clone(), master.try_clone()) else {
        kill_group(child.id() as i32, Signal::SIGKILL);
        let _ = child.wait();
        out.send(&Response::err("duplicating the terminal failed"));
        return;
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        // EIO once every holder of the terminal is gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let pgid = child.id() as i32;
    std::thread::scope(|s| {
        let inbox = out.inbox();
        s.spawn(|| {
            // Keystrokes and sizes until the host hangs up (or the session ends and the
            // host closes the connection).
            while let Some(input) = inbox.recv() {
                if let Some(sz) = input.resize {
                    set_size(&master, sz);
                }
                if let Some(d) = input.data_b64.as_deref().and_then(|d| b64().decode(d).ok()) {
                    if writer.write_all(&d).is_err() {
                        return;
                    }
                }
            }
        });
        let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(chunk) => {
                    if !out.send(&Response {
                        data_b64: Some(b64().encode(&chunk)),
                        ..Response::default()
                    }) {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if out.inbox().hung_up() {
                        break;
                    }
                    // A background process may keep the terminal open after the command
                    // exited: what it wrote within a moment is sent, then the session ends.
                    match exited {
                        Some((_, at)) if at.elapsed() > Duration::from_millis(100) => {}
                        Some(_) => continue,
                        None => {
                            if let Ok(Some(st)) = child.try_wait() {
                                exited = Some((st, Instant::now()));
                            }
                            continue;
                        }
                    }
                }
            }
            // Output is over (or the command exited a while ago).
            let status = match exited {
                Some((st, _)) => Some(st),
                None => child.wait().ok(),
            };
            kill_group(pgid, Signal::SIGHUP);
            let code = status.map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            });
            out.send(&Response {
                exit_code: Some(code.unwrap_or(1)),
                ..Response::default()
            });
            return;
        }
        // The host hung up: end the session.
        kill_group(pgid, Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(50));
        kill_group(pgid, Signal::SIGKILL);
        let _ = child.wait();
    });
}
