//! A running environment's I/O: streamed exec, the terminal, files in and out, logs, and
//! the event streams.

use crate::api::{api_failure, enc, fail, usage, Client, Result, SseReader};
use crate::cli::{CpArgs, EventFormat, EventsArgs, ExecArgs, LogsArgs, ShellArgs};
use crate::output;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Read, Write};
use std::time::Instant;
use tokio::io::AsyncWriteExt;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Streamed exec: output as the guest produces it; the command's exit code.
pub async fn exec(c: &Client, a: ExecArgs) -> Result<u8> {
    let mut body = Map::new();
    match (&a.shell, a.argv.is_empty()) {
        (Some(s), true) => {
            body.insert("shell".into(), s.clone().into());
        }
        (None, false) => {
            body.insert("cmd".into(), json!(a.argv));
        }
        (Some(_), false) => return usage("give either --shell SCRIPT or -- CMD ARGS…, not both"),
        (None, true) => {
            return usage("nothing to run: fusectl exec ID -- CMD ARGS… (or --shell SCRIPT)")
        }
    }
    if !a.env.is_empty() {
        let mut env = Map::new();
        for kv in &a.env {
            let Some((k, v)) = kv.split_once('=') else {
                return usage(format!("--env {kv:?} must be KEY=VALUE"));
            };
            env.insert(k.to_owned(), v.into());
        }
        body.insert("env".into(), Value::Object(env));
    }
    if let Some(cwd) = a.cwd {
        body.insert("cwd".into(), cwd.into());
    }
    if let Some(t) = a.timeout {
        body.insert("timeout_ms".into(), (t.saturating_mul(1000)).into());
    }
    // Piped standard input goes to the command (a terminal's is left alone).
    if !std::io::stdin().is_terminal() {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input)?;
        if !input.is_empty() {
            body.insert("stdin".into(), B64.encode(input).into());
        }
    }
    let resp = c
        .send(
            c.request(
                reqwest::Method::POST,
                &format!("/v1/environments/{}?action=exec&stream=true", enc(&a.id)),
            )
            .json(&Value::Object(body)),
        )
        .await?;
    let mut rd = SseReader::new(resp);
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    while let Some(ev) = rd.next().await? {
        match ev.name.as_str() {
            "stdout" | "stderr" => {
                let bytes = B64
                    .decode(ev.data.trim())
                    .or_else(|e| fail(format!("a bad output chunk from the server: {e}")))?;
                if ev.name == "stdout" {
                    out.write_all(&bytes).await?;
                    out.flush().await?;
                } else {
                    err.write_all(&bytes).await?;
                    err.flush().await?;
                }
            }
            "exit" => {
                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                let code = v["exit_code"].as_i64().unwrap_or(1);
                return Ok(code.clamp(0, 255) as u8);
            }
            "error" => {
                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                return fail(format!(
                    "the command's stream broke: {}",
                    v["message"].as_str().unwrap_or(&ev.data)
                ));
            }
            _ => {}
        }
    }
    fail("the command's stream ended without its exit code")
}

/// The terminal's size (columns, rows); 80×24 when it is not a terminal.
#[allow(unsafe_code)]
fn term_size() -> (u16, u16) {
    nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let ok = unsafe { tiocgwinsz(0, &mut ws) }.is_ok();
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (ws.ws_col, ws.ws_row)
    } else {
        (80, 24)
    }
}

/// Puts standard input in raw mode while it lives (when it is a terminal).
struct Raw(Option<nix::sys::termios::Termios>);

impl Raw {
    fn enter() -> Raw {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Raw(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Raw(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Raw(Some(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// An interactive terminal over the attach WebSocket; the remote command's exit code.
pub async fn shell(c: &Client, a: ShellArgs) -> Result<u8> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (cols, rows) = term_size();
    let mut q = format!("cols={cols}&rows={rows}");
    if let Some(cmd) = &a.cmd {
        q.push_str(&format!("&cmd={}", enc(cmd)));
    }
    if let Some(cwd) = &a.cwd {
        q.push_str(&format!("&cwd={}", enc(cwd)));
    }
    let ws_base = c
        .base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let url = format!("{ws_base}/v1/environments/{}/attach?{q}", enc(&a.id));
    let mut req = url.into_client_request()?;
    if !c.token.is_empty() {
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", c.token).parse()?);
    }
    let ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let rid = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = resp.into_body().unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(crate::api::Failure::Api {
                status: reqwest::StatusCode::from_u16(status.as_u16())
                    .unwrap_or(reqwest::StatusCode::BAD_GATEWAY),
                message,
                request_id: rid,
            });
        }
        Err(e) => return fail(format!("cannot open the terminal at {}: {e}", c.base)),
    };
    let (mut tx, mut rx) = ws.split();
    let raw = Raw::enter();
    // Keystrokes: a blocking reader thread feeds a channel.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut out = std::io::stdout();
    let mut size = (cols, rows);
    let mut stdin_open = true;
    let code = loop {
        tokio::select! {
            k = keys.recv(), if stdin_open => match k {
                Some(bytes) => tx.send(Message::Binary(bytes.into())).await?,
                None => stdin_open = false,
            },
            _ = winch.recv() => {
                let now = term_size();
                if now != size {
                    size = now;
                    let msg = json!({"type": "resize", "cols": now.0, "rows": now.1});
                    tx.send(Message::Text(msg.to_string().into())).await?;
                }
            }
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] == "exit" {
                        break v["exit_code"].as_i64().unwrap_or(0);
                    }
                }
                Some(Ok(Message::Close(_))) | None => break 0,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    return fail(format!("the terminal connection broke: {e}"));
                }
            },
        }
    };
    drop(raw);
    let _ = tx.send(Message::Close(None)).await;
    Ok(code.clamp(0, 255) as u8)
}

/// `ID:/path` → (id, path).
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && path.starts_with('/')).then_some((id, path))
}

/// A progress bar on standard error (on a terminal, for files over 1 MiB).
struct Bar {
    total: Option<u64>,
    done: u64,
    shown: Instant,
    started: Instant,
    on: bool,
}

impl Bar {
    fn new(total: Option<u64>) -> Bar {
        Bar {
            total,
            done: 0,
            shown: Instant::now(),
            started: Instant::now(),
            on: output::stderr_tty() && total.is_none_or(|t| t > 1 << 20),
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n as u64;
        if self.on && self.shown.elapsed().as_millis() >= 100 {
            self.shown = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = match self.total {
            Some(t) if t > 0 => {
                let frac = (self.done as f64 / t as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "[{}{}] {:>3.0}% {} / {} {}/s",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    frac * 100.0,
                    output::bytes(self.done),
                    output::bytes(t),
                    output::bytes(rate as u64)
                )
            }
            _ => format!(
                "{} {}/s",
                output::bytes(self.done),
                output::bytes(rate as u64)
            ),
        };
        eprint!("\r\x1b[2K{line}");
    }

    fn finish(&self) {
        if self.on {
            self.draw();
            eprintln!();
        }
    }
}

/// Copies a file in or out, streamed.
pub async fn cp(c: &Client, a: CpArgs) -> Result<()> {
    match (remote(&a.from), remote(&a.to)) {
        (None, Some((id, path))) => {
            let file = tokio::fs::File::open(&a.from)
                .await
                .or_else(|e| fail(format!("{}: {e}", a.from)))?;
            let len = file.metadata().await?.len();
            let bar = std::sync::Arc::new(std::sync::Mutex::new(Bar::new(Some(len))));
            let b2 = bar.clone();
            let stream = tokio_util_stream(file).map(move |chunk| {
                if let Ok(c) = &chunk {
                    if let Ok(mut b) = b2.lock() {
                        b.add(c.len());
                    }
                }
                chunk
            });
            let mut q = format!("path={}", enc(path));
            if let Some(m) = &a.mode {
                q.push_str(&format!("&mode={}", enc(m)));
            }
            let v = c
                .send(
                    c.request(
                        reqwest::Method::PUT,
                        &format!("/v1/environments/{}/files?{q}", enc(id)),
                    )
                    .header("content-length", len)
                    .body(reqwest::Body::wrap_stream(stream)),
                )
                .await?;
            if let Ok(b) = bar.lock() {
                b.finish();
            }
            let v: Value = v.json().await.unwrap_or(Value::Null);
            eprintln!(
                "{} → {id}:{path} ({}, sha256 {})",
                a.from,
                output::bytes(v["size"].as_u64().unwrap_or(len)),
                v["sha256"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        (Some((id, path)), None) => {
            let resp = c
                .send(c.request(
                    reqwest::Method::GET,
                    &format!("/v1/environments/{}/files?path={}", enc(id), enc(path)),
                ))
                .await?;
            let total = resp.content_length();
            let dest = if std::path::Path::new(&a.to).is_dir() {
                let name = path.rsplit('/').next().unwrap_or("file");
                std::path::Path::new(&a.to).join(name)
            } else {
                std::path::PathBuf::from(&a.to)
            };
            // Written next to the destination and renamed once complete.
            let tmp = dest.with_file_name(format!(
                ".{}.fusectl-part",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .or_else(|e| fail(format!("{}: {e}", tmp.display())))?;
            let mut bar = Bar::new(total);
            let mut body = resp.bytes_stream();
            let res: Result<()> = async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.or_else(|e| fail(format!("the download broke: {e}")))?;
                    f.write_all(&chunk).await?;
                    bar.add(chunk.len());
                }
                f.flush().await?;
                f.sync_all().await?;
                if let Some(t) = total {
                    if bar.done != t {
                        return fail(format!(
                            "the download ended early ({} of {} bytes)",
                            bar.done, t
                        ));
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = res {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &dest).await?;
            bar.finish();
            eprintln!(
                "{id}:{path} → {} ({})",
                dest.display(),
                output::bytes(bar.done)
            );
            Ok(())
        }
        (Some(_), Some(_)) => {
            usage("copy between two environments is not supported: copy out, then in")
        }
        (None, None) => {
            usage("one side must be ID:/ABSOLUTE/PATH (e.g. fusectl cp ./f fuse-x:/tmp/f)")
        }
    }
}

/// A file as a stream of chunks.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// Logs, streamed as they come.
pub async fn logs(c: &Client, a: LogsArgs) -> Result<()> {
    let mut q = format!("source={}", enc(&a.source));
    if let Some(t) = a.tail {
        q.push_str(&format!("&tail={t}"));
    }
    if a.follow {
        q.push_str("&follow=true");
    }
    let resp = c
        .request(
            reqwest::Method::GET,
            &format!("/v1/environments/{}/logs?{q}", enc(&a.id)),
        )
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(api_failure(resp).await);
    }
    let mut body = resp.bytes_stream();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.or_else(|e| fail(format!("the log stream broke: {e}")))?;
        out.write_all(&chunk).await?;
        out.flush().await?;
    }
    Ok(())
}

/// The fleet's (or one environment's) events, one line each, until the stream ends.
pub async fn events(c: &Client, a: EventsArgs) -> Result<()> {
    let path = match &a.id {
        Some(id) => format!("/v1/environments/{}/events", enc(id)),
        None => "/v1/events".to_owned(),
    };
    let resp = c.send(c.request(reqwest::Method::GET, &path)).await?;
    let mut rd = SseReader::new(resp);
    let mut out = std::io::stdout();
    while let Some(ev) = rd.next().await? {
        match ev.name.as_str() {
            "subscribed" if a.output == EventFormat::Line => eprintln!(
                "watching {} (Ctrl-C stops)",
                a.id.as_deref().unwrap_or("every environment")
            ),
            "resync" => eprintln!("fell behind the server's events: some changes were missed"),
            "message" => {
                if a.output == EventFormat::Json {
                    writeln!(out, "{}", ev.data)?;
                } else {
                    let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    let mut line = format!(
                        "{}  {}  {}",
                        output::cell(&v["updated_at"]),
                        output::cell(&v["vm_id"]),
                        output::cell(&v["state"])
                    );
                    if v["event"] == "health" {
                        line.push_str(&format!("  health={}", output::cell(&v["health"]["state"])));
                    }
                    if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
                        line.push_str(&format!("  error: {e}"));
                    }
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
            }
            _ => {}
        }
    }
    Ok(())
}
