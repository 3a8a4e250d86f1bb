//! The Connect protocol (connectrpc.com/docs/protocol), server side, over HTTP/1.1:
//!
//! - **Unary**: `POST /pkg.Service/Method` with `Content-Type: application/json` or
//!   `application/proto`; the body is the message, the answer `200` with the same type and
//!   the response message. An error is a non-200 status (from its code) with a JSON body
//!   `{"code": "not_found", "message": "…"}`.
//! - **Streaming** (server or client streaming): `application/connect+json` or
//!   `application/connect+proto`; both bodies are envelopes — one flags byte, a 4-byte
//!   big-endian length, the message. The answer is always `200`; its last envelope has
//!   flag `0x02` and carries the end of the stream as JSON, `{}` or `{"error": {…}}`.
//!
//! Compressed envelopes (flag `0x01`) are refused as `unimplemented`: no compression is
//! offered, so a client that follows the protocol never sends one.

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// The body every answer has.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The largest message accepted (a file's bytes go over `/files`, not RPC).
pub const MAX_MESSAGE: usize = 16 << 20;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The Connect error codes (the protocol's, one for one).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// Its code.
    pub code: Code,
    /// What happened, for people.
    pub message: String,
}

impl RpcError {
    /// A failure with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// The error of an I/O failure on `path`.
    pub fn io(what: &str, path: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => Code::NotFound,
            K::AlreadyExists => Code::AlreadyExists,
            K::PermissionDenied => Code::PermissionDenied,
            K::InvalidInput | K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty => {
                Code::InvalidArgument
            }
            K::StorageFull => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        Self::new(code, format!("{what} {path}: {e}"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

/// How a request's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The protobuf JSON mapping.
    Json,
    /// Binary protobuf.
    Proto,
}

/// What the request's `Content-Type` says: its codec and whether it is a streaming call.
pub fn content_type(ct: &str) -> Option<(Codec, bool)> {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "application/json" => Some((Codec::Json, false)),
        "application/proto" | "application/protobuf" => Some((Codec::Proto, false)),
        "application/connect+json" => Some((Codec::Json, true)),
        "application/connect+proto" => Some((Codec::Proto, true)),
        _ => None,
    }
}

/// A message in either encoding.
pub trait Msg: prost::Message + Serialize + DeserializeOwned + Default + Send + 'static {}
impl<T: prost::Message + Serialize + DeserializeOwned + Default + Send + 'static> Msg for T {}

/// Decodes one message.
pub fn decode<M: Msg>(codec: Codec, data: &[u8]) -> Result<M, RpcError> {
    match codec {
        Codec::Json if data.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
        Codec::Json => serde_json::from_slice(data)
            .map_err(|e| RpcError::invalid(format!("the request is not valid JSON for it: {e}"))),
        Codec::Proto => M::decode(data)
            .map_err(|e| RpcError::invalid(format!("the request is not valid protobuf: {e}"))),
    }
}

/// Encodes one message.
pub fn encode<M: Msg>(codec: Codec, m: &M) -> Bytes {
    match codec {
        Codec::Json => serde_json::to_vec(m).unwrap_or_default().into(),
        Codec::Proto => m.encode_to_vec().into(),
    }
}

fn envelope(flags: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.extend_from_slice(&[flags]);
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b.freeze()
}

/// The envelopes of a streaming request body, one message at a time.
pub struct Envelopes {
    body: BodyStream<Incoming>,
    buf: BytesMut,
    done: bool,
}

impl Envelopes {
    /// Reads `body` as envelopes.
    pub fn new(body: Incoming) -> Self {
        Envelopes {
            body: BodyStream::new(body),
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// The next message's bytes; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, RpcError> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(RpcError::new(
                        Code::ResourceExhausted,
                        format!("a message of {len} bytes is over the limit of {MAX_MESSAGE}"),
                    ));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let data = self.buf.split_to(len).freeze();
                    if flags & 0x01 != 0 {
                        return Err(RpcError::new(
                            Code::Unimplemented,
                            "compressed messages are not supported",
                        ));
                    }
                    if flags & 0x02 != 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    return Ok(Some(data));
                }
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RpcError::invalid(
                        "the request stream ended inside a message",
                    ))
                };
            }
            match self.body.next().await {
                None => self.done = true,
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("reading the request: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Reads a whole unary request body (at most [`MAX_MESSAGE`]).
pub async fn read_unary(body: Incoming) -> Result<Bytes, RpcError> {
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| RpcError::invalid(format!("reading the request: {e}")))
}

/// The request message of a call: the body of a unary call, the first envelope of a
/// streaming one.
pub async fn request<M: Msg>(codec: Codec, streaming: bool, body: Incoming) -> Result<M, RpcError> {
    if streaming {
        let mut env = Envelopes::new(body);
        let data = env.next().await?.unwrap_or_default();
        decode(codec, &data)
    } else {
        decode(codec, &read_unary(body).await?)
    }
}

fn media(codec: Codec, streaming: bool) -> &'static str {
    match (codec, streaming) {
        (Codec::Json, false) => "application/json",
        (Codec::Proto, false) => "application/proto",
        (Codec::Json, true) => "application/connect+json",
        (Codec::Proto, true) => "application/connect+proto",
    }
}

/// The answer of a unary call.
pub fn unary<M: Msg>(codec: Codec, r: Result<M, RpcError>) -> Response<Body> {
    match r {
        Ok(m) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, media(codec, false))
            .body(full(encode(codec, &m)))
            .unwrap_or_default(),
        Err(e) => error_response(&e),
    }
}

/// A unary (or pre-stream) error: its status and the JSON error body.
pub fn error_response(e: &RpcError) -> Response<Body> {
    Response::builder()
        .status(e.code.status())
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(e.json().to_string()))
        .unwrap_or_default()
}

/// The sending side of a streaming answer.
pub struct Sender<M> {
    codec: Codec,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    _m: std::marker::PhantomData<fn(M)>,
}

impl<M: Msg> Sender<M> {
    /// Sends one message; `false` once the client has gone.
    pub async fn send(&self, m: &M) -> bool {
        let data = encode(self.codec, m);
        self.tx
            .send(Ok(Frame::data(envelope(0, &data))))
            .await
            .is_ok()
    }

    /// Ends the stream, with `error` if it failed.
    pub async fn end(self, error: Option<RpcError>) {
        let end = match error {
            Some(e) => serde_json::json!({ "error": e.json() }),
            None => serde_json::json!({}),
        };
        let _ = self
            .tx
            .send(Ok(Frame::data(envelope(0x02, end.to_string().as_bytes()))))
            .await;
    }

    /// Whether the client has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A streaming answer and the sender that fills it.
pub fn stream<M: Msg>(codec: Codec) -> (Sender<M>, Response<Body>) {
    let (tx, rx) = mpsc::channel(64);
    let body = StreamBody::new(tokio_stream_from(rx));
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media(codec, true))
        .body(BodyExt::boxed(body))
        .unwrap_or_default();
    (
        Sender {
            codec,
            tx,
            _m: std::marker::PhantomData,
        },
        resp,
    )
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_the_codec_and_the_kind_of_call() {
        assert_eq!(
            content_type("application/json; charset=utf-8"),
            Some((Codec::Json, false))
        );
        assert_eq!(
            content_type("application/connect+proto"),
            Some((Codec::Proto, true))
        );
        assert_eq!(content_type("text/plain"), None);
    }

    #[test]
    fn an_envelope_is_flags_length_and_message() {
        assert_eq!(&envelope(2, b"{}")[..], &[2, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn codes_map_to_the_protocols_statuses() {
        assert_eq!(Code::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::Unauthenticated.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Code::AlreadyExists.status(), StatusCode::CONFLICT);
        assert_eq!(Code::Unimplemented.as_str(), "unimplemented");
    }
}
