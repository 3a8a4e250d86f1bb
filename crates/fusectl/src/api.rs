//! The REST client: one base URL and token, JSON in and out, the error envelope turned
//! into a message with its request id, and Server-Sent Events read frame by frame.

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Why a command failed: the API said no (exit 1), or it could not be reached (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// The API answered with an error envelope (or an unexpected status).
    Api {
        status: StatusCode,
        message: String,
        request_id: String,
    },
    /// Anything else (connection refused, a local file, a bad answer).
    Other(String),
    /// A bad command line that clap could not see (exit 2).
    Usage(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api {
                status,
                message,
                request_id,
            } => {
                write!(f, "{message} ({}", status.as_u16())?;
                if !request_id.is_empty() {
                    write!(f, ", request id {request_id}")?;
                }
                write!(f, ")")
            }
            Failure::Other(m) | Failure::Usage(m) => f.write_str(m),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Other(format!("{:#}", e.into()))
    }
}

/// A command's result.
pub type Result<T> = std::result::Result<T, Failure>;

/// Builds a [`Failure::Other`].
pub fn fail<T>(m: impl Into<String>) -> Result<T> {
    Err(Failure::Other(m.into()))
}

/// Builds a [`Failure::Usage`].
pub fn usage<T>(m: impl Into<String>) -> Result<T> {
    Err(Failure::Usage(m.into()))
}

/// A client of one `fuse`.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return fail(format!(
                "the server URL {base:?} must start with http:// or https://"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fusectl/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            base,
            token: token.to_owned(),
            http,
        })
    }

    /// A request to `path` (which starts with `/`), with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            r = r.bearer_auth(&self.token);
        }
        r
    }

    /// Sends a request; an error status becomes a [`Failure::Api`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        Err(api_failure(resp).await)
    }

    fn unreachable(&self, e: reqwest::Error) -> Failure {
        let mut m = format!("cannot reach {}: {e}", self.base);
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            m.push_str(&format!(": {s}"));
            src = s.source();
        }
        Failure::Other(m)
    }

    /// A JSON call: the answer's JSON (`null` for an empty body).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Other(format!("the server's answer is not JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(Method::POST, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// Every item of a paged list (`key` holds the page's items).
    pub async fn list_all(&self, path: &str, key: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = if cursor.is_empty() {
                format!("{path}{sep}limit=200")
            } else {
                format!("{path}{sep}limit=200&cursor={}", enc(&cursor))
            };
            let page = self.get(&url).await?;
            if let Some(items) = page[key].as_array() {
                out.extend(items.iter().cloned());
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_owned(),
                _ => return Ok(out),
            }
        }
    }
}

/// The failure an error answer describes.
pub async fn api_failure(resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            } else {
                t.chars().take(500).collect()
            }
        });
    Failure::Api {
        status,
        message,
        request_id,
    }
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    /// The `event:` name (`message` when none).
    pub name: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Reads the events of an SSE answer as they arrive; comments are skipped.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        SseReader {
            stream: resp.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(ev) = self.take_frame() {
                if ev.name.is_empty() && ev.data.is_empty() {
                    continue;
                }
                return Ok(Some(ev));
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return fail(format!("the event stream broke: {e}")),
                None => return Ok(None),
            }
        }
    }

    fn take_frame(&mut self) -> Option<SseEvent> {
        let text = &self.buf;
        let end = text
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|p| (p, 2))
            .or_else(|| {
                text.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| (p, 4))
            })?;
        let frame: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
        let frame = String::from_utf8_lossy(&frame);
        let mut ev = SseEvent::default();
        let mut data: Vec<&str> = Vec::new();
        for line in frame.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let v = v.strip_prefix(' ').unwrap_or(v);
            match k {
                "event" => ev.name = v.to_owned(),
                "data" => data.push(v),
                _ => {}
            }
        }
        ev.data = data.join("\n");
        if !ev.data.is_empty() && ev.name.is_empty() {
            ev.name = "message".into();
        }
        Some(ev)
    }
}
