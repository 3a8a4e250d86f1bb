//! Helpers for tests of the runtime surface: deterministic binary noise, a terminal
//! session over an attach WebSocket, and whether a process with a marker on its command
//! line runs.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// `len` pseudo-random bytes (xorshift; every byte value, no runs), the same every time.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What a terminal session showed, and how it ended.
#[derive(Debug)]
pub struct Session {
    /// Everything the terminal printed (lossy UTF-8).
    pub screen: String,
    /// The last text frame (`{"type":"exit","exit_code":N}`), `Null` if none came.
    pub end: Value,
}

/// Opens the attach WebSocket at `url` (`ws://…/attach?…`) with `token` (if any), resizes
/// the terminal to `cols`×`rows`, types `input`, and reads until the session ends (at most
/// `limit`).
pub async fn terminal(
    url: &str,
    token: Option<&str>,
    (cols, rows): (u16, u16),
    input: &[u8],
    limit: Duration,
) -> Session {
    let mut req = url.into_client_request().expect("a ws:// URL");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("a header value"),
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket handshake");
    let resize = json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
    ws.send(Message::Text(resize.into()))
        .await
        .expect("resize sent");
    ws.send(Message::Binary(input.to_vec().into()))
        .await
        .expect("input sent");
    let mut screen = Vec::new();
    let end = tokio::time::timeout(limit, async {
        while let Some(m) = ws.next().await {
            match m.expect("a frame") {
                Message::Binary(b) => screen.extend_from_slice(&b),
                Message::Text(t) => return serde_json::from_str::<Value>(&t).unwrap_or_default(),
                _ => {}
            }
        }
        Value::Null
    })
    .await
    .unwrap_or(Value::Null);
    Session {
        screen: String::from_utf8_lossy(&screen).into_owned(),
        end,
    }
}

/// Whether a process whose command line contains `marker` runs (`pgrep -f`).
pub fn running(marker: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
