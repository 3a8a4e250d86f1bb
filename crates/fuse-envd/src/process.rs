//! `process.Process`: commands started with or without a pseudo-terminal, their output
//! streamed as it is produced to every stream watching them (`Start`'s own, any
//! `Connect`), their input written from `SendInput`/`StreamInput`, signals, terminal
//! resizes and stdin closes.
//!
//! Every command is its own process group (a terminal's is its own session), so a signal
//! reaches what it started too. Output is read by one thread per pipe; a command's end is
//! announced once its process has exited and its pipes are drained (or, when something it
//! left in the background keeps them open, shortly after the exit).

use crate::pb;
use crate::users::User;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes read from a pipe or terminal at once (one data event at most).
const CHUNK: usize = 32 << 10;
/// How long after a command's exit its pipes may stay open (held by something it left
/// running) before its end is announced anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// What a stream watching a command receives.
pub type Events = mpsc::UnboundedReceiver<pb::Event>;

/// What a start needs besides the request.
pub struct Launch {
    /// The program (resolved).
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory (a host path).
    pub cwd: PathBuf,
    /// Who it runs as (`None`: as envd).
    pub user: Option<User>,
    /// A terminal of this size, or pipes.
    pub pty: Option<pb::PtySize>,
    /// Whether its stdin stays open for input (else it reads `/dev/null`).
    pub stdin: bool,
    /// The request's configuration, as `List` answers it.
    pub config: pb::ProcessConfig,
    /// Its tag.
    pub tag: Option<String>,
}

struct Watchers {
    subs: Vec<mpsc::UnboundedSender<pb::Event>>,
    end: Option<pb::EndEvent>,
}

/// One running command.
pub struct Proc {
    /// Its process id (and process group id).
    pub pid: u32,
    /// Its tag.
    pub tag: Option<String>,
    config: pb::ProcessConfig,
    input: Mutex<Option<Box<dyn Write + Send>>>,
    pty: Option<std::fs::File>,
    watchers: Mutex<Watchers>,
}

impl Proc {
    fn publish(&self, ev: pb::Event) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.subs.retain(|s| s.send(ev.clone()).is_ok());
    }

    /// Watches the command's output and end from now on (only its end, if it has ended).
    pub fn subscribe(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        match &w.end {
            Some(end) => {
                let _ = tx.send(pb::Event::End(end.clone()));
            }
            None => w.subs.push(tx),
        }
        rx
    }

    /// Whether it runs on a terminal.
    pub fn has_pty(&self) -> bool {
        self.pty.is_some()
    }

    /// Writes `data` to its stdin (or terminal).
    pub fn write_input(&self, data: &[u8]) -> Result<(), String> {
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = input.as_mut() else {
            return Err(format!(
                "process {} has no open stdin (start it with stdin, or it was closed)",
                self.pid
            ));
        };
        w.write_all(data)
            .and_then(|_| w.flush())
            .map_err(|e| format!("writing to process {}: {e}", self.pid))
    }

    /// Closes its stdin: it reads end-of-file.
    pub fn close_stdin(&self) -> Result<(), String> {
        if self.pty.is_some() {
            return Err(format!(
                "process {} runs on a terminal; send it Ctrl-D instead",
                self.pid
            ));
        }
        self.input.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    /// Resizes its terminal.
    pub fn resize(&self, size: &pb::PtySize) -> Result<(), String> {
        let Some(master) = &self.pty else {
            return Err(format!("process {} has no terminal", self.pid));
        };
        set_size(master, size);
        Ok(())
    }

    /// What `List` says of it.
    pub fn info(&self) -> pb::ProcessInfo {
        pb::ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }
}

/// The commands envd started that have not ended.
#[derive(Default)]
pub struct Processes {
    running: Mutex<HashMap<u32, Arc<Proc>>>,
}

impl Processes {
    /// The command `sel` names.
    pub fn find(&self, sel: Option<&pb::ProcessSelector>) -> Result<Arc<Proc>, String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match sel.and_then(|s| s.selector.as_ref()) {
            Some(pb::Selector::Pid(pid)) => running
                .get(pid)
                .cloned()
                .ok_or_else(|| format!("process with pid {pid} not found")),
            Some(pb::Selector::Tag(tag)) => running
                .values()
                .find(|p| p.tag.as_deref() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| format!("process with tag {tag} not found")),
            None => Err("the request names no process (pid or tag)".into()),
        }
    }

    /// Every running command.
    pub fn list(&self) -> Vec<pb::ProcessInfo> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = running.values().map(|p| p.info()).collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// Sends `sig` to a command's process group.
    pub fn signal(&self, p: &Proc, sig: nix::sys::signal::Signal) -> Result<(), String> {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p.pid as i32), sig)
            .or_else(|_| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig))
            .map_err(|e| format!("signalling process {}: {e}", p.pid))
    }

    /// Kills every command (envd is stopping).
    pub fn kill_all(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for p in running.values() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Starts a command; the returned stream sees all of its output.
    pub fn start(self: &Arc<Self>, l: Launch) -> Result<(Arc<Proc>, Events), String> {
        let mut cmd = Command::new(&l.cmd);
        cmd.args(&l.args)
            .env_clear()
            .envs(&l.env)
            .current_dir(&l.cwd);
        if let Some(u) = &l.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let spawn_err = |e: std::io::Error| format!("starting {}: {e}", l.cmd);
        let (child, input, pty, readers): (_, Option<Box<dyn Write + Send>>, _, Vec<Reader>) =
            match &l.pty {
                Some(size) => {
                    let ws = winsize(size);
                    let p = nix::pty::openpty(Some(&ws), None)
                        .map_err(|e| format!("opening a pseudo-terminal: {e}"))?;
                    let child = spawn_on_terminal(&mut cmd, &p.slave).map_err(spawn_err)?;
                    drop(p.slave);
                    let master = std::fs::File::from(p.master);
                    let reader = master.try_clone().map_err(|e| e.to_string())?;
                    let writer = master.try_clone().map_err(|e| e.to_string())?;
                    (
                        child,
                        Some(Box::new(writer)),
                        Some(master),
                        vec![Reader::Pty(reader)],
                    )
                }
                None => {
                    cmd.stdin(if l.stdin {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                    let mut child = cmd.spawn().map_err(spawn_err)?;
                    let input = child
                        .stdin
                        .take()
                        .map(|s| Box::new(s) as Box<dyn Write + Send>);
                    let mut readers = Vec::new();
                    if let Some(o) = child.stdout.take() {
                        readers.push(Reader::Stdout(o));
                    }
                    if let Some(e) = child.stderr.take() {
                        readers.push(Reader::Stderr(e));
                    }
                    (child, input, None, readers)
                }
            };
        let pid = child.id();
        let (tx, rx) = mpsc::unbounded_channel();
        let proc = Arc::new(Proc {
            pid,
            tag: l.tag,
            config: l.config,
            input: Mutex::new(input),
            pty,
            watchers: Mutex::new(Watchers {
                subs: vec![tx],
                end: None,
            }),
        });
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, proc.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let n = readers.len();
        for r in readers {
            let p = proc.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                r.pump(&p);
                let _ = done.send(());
            });
        }
        drop(done_tx);
        let me = self.clone();
        let p = proc.clone();
        std::thread::spawn(move || {
            let mut child = child;
            let status = child.wait();
            let deadline = std::time::Instant::now() + DRAIN_AFTER_EXIT;
            for _ in 0..n {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if done_rx.recv_timeout(left).is_err() {
                    break;
                }
            }
            let end = match status {
                Ok(s) => end_event(s),
                Err(e) => pb::EndEvent {
                    exit_code: -1,
                    exited: false,
                    status: "unknown".into(),
                    error: Some(format!("waiting for the process: {e}")),
                },
            };
            me.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.pid);
            p.input.lock().unwrap_or_else(|e| e.into_inner()).take();
            let mut w = p.watchers.lock().unwrap_or_else(|e| e.into_inner());
            for s in w.subs.drain(..) {
                let _ = s.send(pb::Event::End(end.clone()));
            }
            w.end = Some(end);
        });
        Ok((proc, rx))
    }
}

/// How a pipe's bytes become a data event.
type Wrap = fn(Vec<u8>) -> pb::Output;

enum Reader {
    Stdout(std::process::ChildStdout),
    Stderr(std::process::ChildStderr),
    Pty(std::fs::File),
}

impl Reader {
    fn pump(self, p: &Proc) {
        let mut buf = vec![0u8; CHUNK];
        let (mut src, wrap): (Box<dyn Read>, Wrap) = match self {
            Reader::Stdout(o) => (Box::new(o), pb::Output::Stdout),
            Reader::Stderr(e) => (Box::new(e), pb::Output::Stderr),
            Reader::Pty(m) => (Box::new(m), pb::Output::Pty),
        };
        loop {
            match src.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => p.publish(pb::Event::Data(pb::DataEvent {
                    output: Some(wrap(buf[..n].to_vec())),
                })),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A terminal's master reads EIO once the last process on it has gone.
                Err(_) => return,
            }
        }
    }
}

/// The end event of an exit status, worded as envd words it.
pub fn end_event(s: std::process::ExitStatus) -> pb::EndEvent {
    if let Some(code) = s.code() {
        return pb::EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        };
    }
    let sig = s.signal().unwrap_or(0);
    let name = match nix::sys::signal::Signal::try_from(sig) {
        Ok(nix::sys::signal::Signal::SIGKILL) => "killed".to_owned(),
        Ok(nix::sys::signal::Signal::SIGTERM) => "terminated".to_owned(),
        Ok(nix::sys::signal::Signal::SIGINT) => "interrupt".to_owned(),
        Ok(nix::sys::signal::Signal::SIGHUP) => "hangup".to_owned(),
        Ok(other) => other.as_str().to_ascii_lowercase(),
        Err(_) => format!("signal {sig}"),
    };
    pb::EndEvent {
        exit_code: -1,
        exited: false,
        status: format!("signal: {name}"),
        error: None,
    }
}

fn winsize(s: &pb::PtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: s.rows.clamp(1, u16::MAX as u32) as u16,
        ws_col: s.cols.clamp(1, u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_size(master: &impl AsRawFd, s: &pb::PtySize) {
    let ws = winsize(s);
    fuse_guest::pty::set_size(
        master,
        fuse_guest::proto::WinSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        },
    );
}

fn spawn_on_terminal(cmd: &mut Command, slave: &OwnedFd) -> std::io::Result<std::process::Child> {
    cmd.env("TERM", "xterm-256color");
    fuse_guest::pty::spawn_on(cmd, slave)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(cmd: &str, args: &[&str], stdin: bool, pty: bool) -> Launch {
        Launch {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            cwd: std::env::temp_dir(),
            user: None,
            pty: pty.then_some(pb::PtySize { cols: 80, rows: 24 }),
            stdin,
            config: pb::ProcessConfig::default(),
            tag: Some("t".into()),
        }
    }

    async fn collect(mut rx: Events) -> (Vec<u8>, Vec<u8>, pb::EndEvent) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(ev) = rx.recv().await {
            match ev {
                pb::Event::Data(pb::DataEvent {
                    output: Some(pb::Output::Stdout(b) | pb::Output::Pty(b)),
                }) => out.extend(b),
                pb::Event::Data(pb::DataEvent {
                    output: Some(pb::Output::Stderr(b)),
                }) => err.extend(b),
                pb::Event::End(e) => return (out, err, e),
                _ => {}
            }
        }
        panic!("the stream ended without an end event");
    }

    #[tokio::test]
    async fn output_is_split_by_stream_and_the_exit_code_kept() {
        let ps = Arc::new(Processes::default());
        let (_, rx) = ps
            .start(launch(
                "/bin/sh",
                &["-c", "echo out; echo err >&2; exit 3"],
                false,
                false,
            ))
            .unwrap();
        let (out, err, end) = collect(rx).await;
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
        assert_eq!((end.exit_code, end.exited), (3, true));
        assert_eq!(end.status, "exit status 3");
        assert!(ps.list().is_empty(), "an ended command is not listed");
    }

    #[tokio::test]
    async fn stdin_is_written_and_closed_and_signals_end_a_command() {
        let ps = Arc::new(Processes::default());
        let (p, rx) = ps.start(launch("/bin/cat", &[], true, false)).unwrap();
        assert_eq!(ps.list().len(), 1);
        assert_eq!(
            ps.find(Some(&pb::ProcessSelector {
                selector: Some(pb::Selector::Tag("t".into()))
            }))
            .unwrap()
            .pid,
            p.pid
        );
        p.write_input(b"piped\n").unwrap();
        p.close_stdin().unwrap();
        let (out, _, end) = collect(rx).await;
        assert_eq!(out, b"piped\n");
        assert_eq!(end.exit_code, 0);

        let (p, rx) = ps
            .start(launch("/bin/sleep", &["30"], false, false))
            .unwrap();
        assert!(p.write_input(b"x").is_err(), "no stdin was asked for");
        ps.signal(&p, nix::sys::signal::Signal::SIGKILL).unwrap();
        let (_, _, end) = collect(rx).await;
        assert_eq!((end.exit_code, end.exited), (-1, false));
        assert_eq!(end.status, "signal: killed");
        // A late watcher still learns how it ended.
        let (_, _, again) = collect(p.subscribe()).await;
        assert_eq!(again, end);
    }

    #[tokio::test]
    async fn a_terminal_command_sees_a_tty_of_its_size() {
        let ps = Arc::new(Processes::default());
        let (p, rx) = ps
            .start(launch(
                "/bin/sh",
                &["-c", "stty size; test -t 0 && echo tty"],
                false,
                true,
            ))
            .unwrap();
        assert!(p.has_pty());
        let (out, _, end) = collect(rx).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("24 80"), "{text:?}");
        assert!(text.contains("tty"), "{text:?}");
        assert_eq!(end.exit_code, 0);
    }
}
