//! An environment's logs (`GET /v1/environments/{id}/logs`): the agent's, the startup
//! script's or the console's, streamed from the VM's host as it sends them, with every
//! secret value of the environment (its secrets, tokens and TLS key) replaced line by line.
//!
//! Invariants: nothing is held beyond one line (a line longer than [`MAX_LINE`] is passed
//! on in pieces of that size, each redacted); a partial last line is held until its newline
//! comes or the stream ends.

use super::error::AppError;
use super::App;
use crate::provider::{LogQuery, LogStream};
use bytes::Bytes;
use fuse_store::VmSecrets;
use fuse_types::VmState;
use futures::StreamExt as _;

/// The log sources.
pub const SOURCES: [&str; 3] = ["agent", "startup", "console"];

/// The most lines a tail may ask for.
pub const MAX_TAIL: u32 = 10_000;

/// The longest piece held while waiting for a newline.
pub const MAX_LINE: usize = 64 << 10;

/// What replaces a secret.
const MASK: &[u8] = b"[redacted]";

impl App {
    /// Opens one of a running (or draining) environment's logs, redacted.
    pub async fn env_logs(&self, id: &str, q: LogQuery) -> Result<LogStream, AppError> {
        if !SOURCES.contains(&q.source.as_str()) {
            return Err(AppError::Invalid(vec![format!(
                "source {:?} must be one of agent, startup, console",
                q.source
            )]));
        }
        if q.tail.is_some_and(|t| t > MAX_TAIL) {
            return Err(AppError::Invalid(vec![format!(
                "tail must be at most {MAX_TAIL} lines"
            )]));
        }
        let rec = self.env_get(id).await?;
        if !matches!(rec.state, VmState::Running | VmState::Draining) {
            return Err(AppError::conflict(format!(
                "environment {} is {}; logs are read only while it runs (running or draining)",
                rec.id, rec.state
            )));
        }
        let provider = self.provider_of(&rec).await?;
        // A host without the route answers `Unsupported` (501).
        let stream = provider.logs(rec.id.as_str(), &q).await?;
        Ok(redacted(stream, secret_values(rec.secrets.as_ref())))
    }
}

/// Every value to hide: the secrets, the tokens, and each line of the TLS key.
fn secret_values(s: Option<&VmSecrets>) -> Vec<Vec<u8>> {
    let Some(s) = s else { return Vec::new() };
    let mut v: Vec<String> = s.values();
    v.extend(
        s.tls_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    // A multi-line secret is hidden line by line, as the log is.
    let mut out: Vec<Vec<u8>> = v
        .iter()
        .flat_map(|x| x.split('\n'))
        .map(|x| x.trim_end_matches('\r'))
        .filter(|x| x.len() >= 4)
        .map(|x| x.as_bytes().to_vec())
        .collect();
    // Longest first, so a secret that contains another is replaced whole.
    out.sort_by_key(|x| std::cmp::Reverse(x.len()));
    out.dedup();
    out
}

/// Replaces every occurrence of every value in `line`.
pub fn redact_line(line: &[u8], secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut cur = line.to_vec();
    for s in secrets {
        if cur.len() < s.len() {
            continue;
        }
        let mut out = Vec::with_capacity(cur.len());
        let mut i = 0;
        while i < cur.len() {
            if cur[i..].starts_with(s) {
                out.extend_from_slice(MASK);
                i += s.len();
            } else {
                out.push(cur[i]);
                i += 1;
            }
        }
        cur = out;
    }
    cur
}

/// Splits what is pending into whole lines (and over-long pieces) and redacts them.
fn take_lines(pending: &mut Vec<u8>, secrets: &[Vec<u8>], flush: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let cut = match pending.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if pending.len() >= MAX_LINE => MAX_LINE,
            None if flush && !pending.is_empty() => pending.len(),
            None => break,
        };
        let line: Vec<u8> = pending.drain(..cut).collect();
        out.extend(redact_line(&line, secrets));
    }
    out
}

/// The stream, redacted line by line.
fn redacted(inner: LogStream, secrets: Vec<Vec<u8>>) -> LogStream {
    struct St {
        inner: LogStream,
        secrets: Vec<Vec<u8>>,
        pending: Vec<u8>,
        done: bool,
    }
    let st = St {
        inner,
        secrets,
        pending: Vec::new(),
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(b)) => {
                    st.pending.extend_from_slice(&b);
                    let out = take_lines(&mut st.pending, &st.secrets, false);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let out = take_lines(&mut st.pending, &st.secrets, true);
                    if out.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(out)), st));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;

    #[test]
    fn secrets_are_replaced_line_by_line_even_across_chunks() {
        let secrets = secret_values(Some(&VmSecrets {
            auth_token: "tok-0123456789".into(),
            gateway_token: "gw".into(),
            secrets: [("K".to_owned(), "hunter2-long".to_owned())].into(),
            tls_cert_pem: String::new(),
            tls_key_pem: "-----BEGIN KEY-----\nQUJDREVGR0hJSktM\n-----END KEY-----\n".into(),
            ..VmSecrets::default()
        }));
        assert!(
            !secrets.iter().any(|s| s == b"gw"),
            "too short to hide safely"
        );
        let chunks: Vec<Result<Bytes, ProviderError>> = vec![
            Ok(Bytes::from_static(b"a hunter2-")),
            Ok(Bytes::from_static(b"long b\nkey QUJDREVGR0hJSktM tok-01")),
            Ok(Bytes::from_static(b"23456789\nlast")),
        ];
        let s = redacted(futures::stream::iter(chunks).boxed(), secrets);
        let out: Vec<u8> = futures::executor::block_on(s.collect::<Vec<_>>())
            .into_iter()
            .flat_map(|r| r.unwrap().to_vec())
            .collect();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a [redacted] b\nkey [redacted] [redacted]\nlast"
        );
    }

    #[test]
    fn a_long_line_is_passed_on_in_pieces() {
        let mut pending = vec![b'x'; MAX_LINE + 10];
        let out = take_lines(&mut pending, &[], false);
        assert_eq!(out.len(), MAX_LINE);
        assert_eq!(pending.len(), 10);
    }
}
