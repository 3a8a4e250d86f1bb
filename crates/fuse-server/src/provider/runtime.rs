//! The runtime calls of a provider (files, streamed exec, terminals) and their types. A
//! file's bytes and a command's output are streams end to end: [`ByteStream`] in, out.

use super::ProviderError;
use bytes::Bytes;
use fuse_types::hostagent::AgentExecChunk;
use futures::stream::BoxStream;
use futures::StreamExt as _;

/// Bytes as they come (a request body going to a guest, a file coming out of one).
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A streamed exec's lines as the host sends them.
pub type ExecStream = BoxStream<'static, Result<AgentExecChunk, ProviderError>>;

/// A file coming out of a guest.
pub struct FileDownload {
    /// Its size (the stream ends after exactly this many bytes, or fails).
    pub size: u64,
    /// Its SHA-256 as the guest computed it (hex).
    pub sha256: String,
    /// The bytes.
    pub body: ByteStream,
}

/// What to write.
pub struct FileUpload {
    /// Absolute guest path.
    pub path: String,
    /// Mode (default 0644).
    pub mode: Option<u32>,
    /// The SHA-256 the client says the bytes have (checked before the file is replaced).
    pub sha256: Option<String>,
    /// The bytes.
    pub body: ByteStream,
}

/// A terminal the host opened: the upgraded connection to its WebSocket and the headers of
/// its `101` answer (the client's handshake is answered with them).
pub struct Attached {
    /// `Sec-WebSocket-Accept` and friends.
    pub headers: Vec<(String, String)>,
    /// The byte stream under the WebSocket.
    pub io: reqwest::Upgraded,
}

/// Splits a stream of NDJSON bytes into parsed lines (a line may span chunks; a chunk may
/// hold several lines). At most `max_line` bytes are buffered for one line.
pub fn ndjson<T: serde::de::DeserializeOwned + Send + 'static>(
    bytes: BoxStream<'static, Result<Bytes, ProviderError>>,
    max_line: usize,
) -> BoxStream<'static, Result<T, ProviderError>> {
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        move |(mut bytes, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if line.len() <= 1 {
                        continue;
                    }
                    let item = serde_json::from_slice::<T>(&line).map_err(|e| {
                        ProviderError::Internal(format!("the host sent a bad stream line: {e}"))
                    });
                    return Some((item, (bytes, buf, false)));
                }
                if buf.len() > max_line {
                    let e = ProviderError::Internal("the host sent an over-long line".into());
                    return Some((Err(e), (bytes, buf, true)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (bytes, buf, true))),
                    None if buf.iter().all(u8::is_ascii_whitespace) => return None,
                    None => {
                        buf.push(b'\n');
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ndjson_lines_span_and_share_chunks() {
        let chunks: Vec<Result<Bytes, ProviderError>> = vec![
            Ok(Bytes::from_static(b"{\"exit_code\"")),
            Ok(Bytes::from_static(
                b":1}\n{\"stdout_b64\":\"eA==\"}\n{\"exit",
            )),
            Ok(Bytes::from_static(b"_code\":0}")),
        ];
        let s = ndjson::<AgentExecChunk>(futures::stream::iter(chunks).boxed(), 1024);
        let got: Vec<AgentExecChunk> = s.map(|r| r.unwrap()).collect().await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].exit_code, Some(1));
        assert_eq!(got[1].stdout_b64.as_deref(), Some("eA=="));
        assert_eq!(got[2].exit_code, Some(0));
    }
}
