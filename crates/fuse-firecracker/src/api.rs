//! The HTTP client for Firecracker's API socket: hyper's HTTP/1.1 client over a
//! `tokio::net::UnixStream`, one connection per call, JSON bodies in and out.
//!
//! Invariants: every call is bounded by the client's timeout (connect, exchange and body
//! together); a 2xx body that does not parse into the type the call expects is
//! [`ApiError::BadBody`], never a default; an error status is [`ApiError::Refused`] with
//! Firecracker's `fault_message` (or, for a body that is not Firecracker's error JSON, that
//! body as text). Request and response bodies are never logged: the boot source carries the
//! VM's token.

use crate::models::ErrorBody;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixStream;
use tracing::Instrument;

/// How long one call may take, from connecting to the last byte of the response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a response body read: Firecracker's answers are a few hundred bytes, and a
/// peer that sends more is not the Firecracker API.
const MAX_BODY: usize = 1 << 20;

/// The most of a non-JSON error body quoted in [`ApiError::Refused`].
const MAX_QUOTED: usize = 300;

/// Errors from the HTTP exchange itself (hyper's, or the body limit's).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One API call, as it names itself in errors: method and path (`PUT /drives/rootfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The HTTP method.
    pub method: Method,
    /// The request path.
    pub path: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A call to the Firecracker API that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API socket could not be connected to (no such socket, nobody listening).
    #[error("{call}: connecting to the Firecracker API socket {}", socket.display())]
    Connect {
        /// The call.
        call: Call,
        /// The socket's path.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer within the timeout.
    #[error("{call}: no answer from Firecracker within {limit:?}")]
    TimedOut {
        /// The call.
        call: Call,
        /// The timeout.
        limit: Duration,
    },
    /// The HTTP exchange broke off (the connection closed, a malformed response, a body
    /// over the size limit).
    #[error("{call}: the HTTP exchange with Firecracker failed")]
    Transport {
        /// The call.
        call: Call,
        /// hyper's error, or the body limit's.
        #[source]
        source: BoxError,
    },
    /// Firecracker answered with an error status.
    #[error("{call}: Firecracker refused it ({status}): {fault_message}")]
    Refused {
        /// The call.
        call: Call,
        /// The HTTP status.
        status: StatusCode,
        /// Firecracker's `fault_message`; for a body that is not its error JSON, that body as
        /// text (shortened), or a note that it was empty.
        fault_message: String,
    },
    /// A successful answer whose body is not the object the call returns.
    #[error("{call}: the {status} response body is not a valid {expected}")]
    BadBody {
        /// The call.
        call: Call,
        /// The HTTP status (2xx).
        status: StatusCode,
        /// The type the body should have parsed into (the swagger's name).
        expected: &'static str,
        /// Why it did not.
        #[source]
        source: serde_json::Error,
    },
    /// The request body could not be encoded as JSON (a path that is not UTF-8).
    #[error("{call}: the request body cannot be encoded as JSON")]
    Encode {
        /// The call.
        call: Call,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be built (a resource id that cannot appear in a path).
    #[error("{call}: not a valid HTTP request")]
    InvalidRequest {
        /// The call.
        call: Call,
        /// http's error.
        #[source]
        source: http::Error,
    },
}

impl ApiError {
    /// The call that failed.
    pub fn call(&self) -> &Call {
        match self {
            ApiError::Connect { call, .. }
            | ApiError::TimedOut { call, .. }
            | ApiError::Transport { call, .. }
            | ApiError::Refused { call, .. }
            | ApiError::BadBody { call, .. }
            | ApiError::Encode { call, .. }
            | ApiError::InvalidRequest { call, .. } => call,
        }
    }
}

/// Talks to one API socket.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    sock: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for `sock` with the [`DEFAULT_TIMEOUT`].
    pub(crate) fn new(sock: PathBuf) -> Self {
        Client {
            sock,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-call timeout.
    pub(crate) fn with_timeout(self, timeout: Duration) -> Self {
        Client { timeout, ..self }
    }

    /// `GET path`, its 2xx body parsed into `T`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let call = Call {
            method: Method::GET,
            path: path.to_owned(),
        };
        let (status, body) = self.exchange(&call, None).await?;
        parse_response(&call, status, &body)
    }

    /// `PUT path` with `body` as JSON; a 2xx answer (204, no body) is success.
    pub(crate) async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send(Method::PUT, path, body).await
    }

    /// `PATCH path` with `body` as JSON; a 2xx answer (204, no body) is success.
    pub(crate) async fn patch<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send(Method::PATCH, path, body).await
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let call = Call {
            method,
            path: path.to_owned(),
        };
        let json = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            call: call.clone(),
            source,
        })?;
        let (status, body) = self.exchange(&call, Some(Bytes::from(json))).await?;
        check_status(&call, status, &body)
    }

    /// One request on a fresh connection, bounded by the timeout: the status and the whole
    /// body. Firecracker serves one request at a time, so a connection per call costs a
    /// Unix-socket connect and nothing else, and no call inherits another's broken state.
    async fn exchange(
        &self,
        call: &Call,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|source| ApiError::InvalidRequest {
                call: call.clone(),
                source,
            })?;
        let transport = |source: BoxError| ApiError::Transport {
            call: call.clone(),
            source,
        };
        let run = async {
            let stream =
                UnixStream::connect(&self.sock)
                    .await
                    .map_err(|source| ApiError::Connect {
                        call: call.clone(),
                        socket: self.sock.clone(),
                        source,
                    })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| transport(e.into()))?;
            let answer = async {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| transport(e.into()))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(transport)?
                    .to_bytes();
                Ok::<_, ApiError>((status, body))
            };
            // The connection is driven here, beside the exchange, rather than in a spawned
            // task: when the call ends (or times out) both are dropped and the socket closes.
            tokio::pin!(conn, answer);
            tokio::select! {
                done = &mut answer => done,
                ended = &mut conn => match ended {
                    Err(e) => Err(transport(e.into())),
                    // A peer that closes cleanly may still have delivered the whole answer.
                    Ok(()) => answer.await,
                },
            }
        };
        let span =
            tracing::debug_span!("firecracker_api", method = %call.method, path = %call.path);
        let (status, body) = tokio::time::timeout(self.timeout, run)
            .instrument(span)
            .await
            .map_err(|_| ApiError::TimedOut {
                call: call.clone(),
                limit: self.timeout,
            })??;
        tracing::debug!(method = %call.method, path = %call.path, status = status.as_u16(), "firecracker answered");
        Ok((status, body))
    }
}

/// A 2xx answer's body parsed into `T`; any other status is [`ApiError::Refused`].
pub(crate) fn parse_response<T: DeserializeOwned>(
    call: &Call,
    status: StatusCode,
    body: &[u8],
) -> Result<T, ApiError> {
    check_status(call, status, body)?;
    serde_json::from_slice(body).map_err(|source| ApiError::BadBody {
        call: call.clone(),
        status,
        expected: type_name::<T>(),
        source,
    })
}

/// Success for a 2xx status (its body, if any, is not needed); otherwise the refusal with
/// Firecracker's reason.
pub(crate) fn check_status(call: &Call, status: StatusCode, body: &[u8]) -> Result<(), ApiError> {
    if status.is_success() {
        return Ok(());
    }
    Err(ApiError::Refused {
        call: call.clone(),
        status,
        fault_message: fault_message(body),
    })
}

/// Firecracker's `fault_message`, or the body itself when it is not Firecracker's error
/// JSON (a proxy, a future version), so the refusal still says something useful.
fn fault_message(body: &[u8]) -> String {
    if let Ok(ErrorBody {
        fault_message: Some(m),
    }) = serde_json::from_slice::<ErrorBody>(body)
    {
        return m;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no error message: empty body)".into();
    }
    let mut quoted: String = text.chars().take(MAX_QUOTED).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!("(not a Firecracker error body) {quoted}")
}

/// `T`'s name without its module path (`InstanceInfo`), as the swagger names it.
fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{InstanceInfo, InstanceState};
    use std::error::Error as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    fn call(method: Method, path: &str) -> Call {
        Call {
            method,
            path: path.into(),
        }
    }

    #[test]
    fn a_2xx_body_parses_into_its_type() {
        let body =
            br#"{"id":"vm-1","state":"Running","vmm_version":"1.12.1","app_name":"Firecracker"}"#;
        let info: InstanceInfo =
            parse_response(&call(Method::GET, "/"), StatusCode::OK, body).unwrap();
        assert_eq!(info.state, InstanceState::Running);
        assert_eq!(info.id, "vm-1");
    }

    #[test]
    fn a_2xx_body_that_does_not_parse_is_a_typed_error_naming_the_call() {
        for body in [
            &b""[..],
            b"null",
            b"{not json",
            br#"{"id":"x","state":"Sleeping","vmm_version":"1","app_name":"F"}"#,
            br#"{"state":"Running"}"#,
        ] {
            let e = parse_response::<InstanceInfo>(&call(Method::GET, "/"), StatusCode::OK, body)
                .unwrap_err();
            let ApiError::BadBody {
                call: c,
                status,
                expected,
                ..
            } = &e
            else {
                panic!("{e:?}");
            };
            assert_eq!(c.to_string(), "GET /");
            assert_eq!(*status, StatusCode::OK);
            assert_eq!(*expected, "InstanceInfo");
            assert!(e.source().is_some(), "serde's error is the source");
            assert_eq!(
                e.to_string(),
                "GET /: the 200 OK response body is not a valid InstanceInfo"
            );
        }
    }

    #[test]
    fn an_error_status_carries_the_fault_message_or_a_useful_text() {
        let cases: [(&[u8], &str); 5] = [
            (
                br#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#,
                "The requested operation is not supported after starting the microVM.",
            ),
            (b"", "(no error message: empty body)"),
            (b"{}", "(not a Firecracker error body) {}"),
            (
                b"<html>502 Bad Gateway</html>\n",
                "(not a Firecracker error body) <html>502 Bad Gateway</html>",
            ),
            (
                br#"{"fault_message":42}"#,
                r#"(not a Firecracker error body) {"fault_message":42}"#,
            ),
        ];
        for (body, want) in cases {
            let c = call(Method::PUT, "/machine-config");
            let e = check_status(&c, StatusCode::BAD_REQUEST, body).unwrap_err();
            let ApiError::Refused {
                status,
                fault_message,
                ..
            } = &e
            else {
                panic!("{e:?}");
            };
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(fault_message, want);
            assert!(e.to_string().starts_with("PUT /machine-config: "), "{e}");
            assert!(e.to_string().contains("400"), "{e}");
        }
        let long = "x".repeat(2 * MAX_QUOTED);
        let m = fault_message(long.as_bytes());
        assert!(m.ends_with('…') && m.len() < long.len(), "{m}");
        // An error status never parses its body as the success type.
        let e = parse_response::<InstanceInfo>(
            &call(Method::GET, "/"),
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"fault_message":"boom"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::Refused { .. }), "{e:?}");
        assert!(check_status(&call(Method::PUT, "/vsock"), StatusCode::NO_CONTENT, b"").is_ok());
    }

    /// A one-shot HTTP server on a Unix socket that answers the first request with `reply`
    /// (raw bytes). Only for answers the real Firecracker never gives.
    fn serve_once(sock: PathBuf, reply: &'static [u8]) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply).await.unwrap();
            s.flush().await.unwrap();
        })
    }

    fn temp_sock(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("fuse-fc-api-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn a_malformed_2xx_body_over_the_socket_is_bad_body() {
        let sock = temp_sock("malformed");
        let server = serve_once(
            sock.clone(),
            b"HTTP/1.1 200 \r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json",
        );
        let e = Client::new(sock.clone())
            .get::<InstanceInfo>("/")
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                ApiError::BadBody {
                    expected: "InstanceInfo",
                    ..
                }
            ),
            "{e:?}"
        );
        server.await.unwrap();
        std::fs::remove_file(&sock).unwrap();
    }

    #[tokio::test]
    async fn no_socket_is_a_connect_error_with_its_path() {
        let sock = temp_sock("absent");
        let e = Client::new(sock.clone())
            .put("/actions", &serde_json::json!({}))
            .await
            .unwrap_err();
        let ApiError::Connect { socket, source, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(socket, &sock);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(e.call().to_string(), "PUT /actions");
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        // Bound but never accepted: the connect succeeds (the backlog), no answer follows.
        let sock = temp_sock("silent");
        let _listener = UnixListener::bind(&sock).unwrap();
        let limit = Duration::from_millis(100);
        let e = Client::new(sock.clone())
            .with_timeout(limit)
            .get::<InstanceInfo>("/")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ApiError::TimedOut { limit: l, .. } if *l == limit),
            "{e:?}"
        );
        std::fs::remove_file(&sock).unwrap();
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_uri_is_refused_before_sending() {
        let e = Client::new(temp_sock("unused"))
            .put("/drives/bad id", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { .. }), "{e:?}");
    }
}
