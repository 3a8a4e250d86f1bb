//! Extractors that turn malformed input into the API's 400 envelope with a message naming
//! the field (`spec.cpus: invalid type: string "x", expected u32`), and oversized bodies
//! into 413.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use fuse_types::ErrorCode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A JSON body. An empty body reads as `{}`; a missing or non-JSON content type is accepted
/// (clients of the Go original do not always send one).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The raw body, with the API's 413 when it exceeds the limit.
#[derive(Debug)]
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|r| {
                let too_large = r.status() == StatusCode::PAYLOAD_TOO_LARGE;
                body_error(&r, too_large)
            })
    }
}

/// The API's answer to a request body that could not be read: 408 when it did not arrive
/// in time, 413 when it is over the limit, else 400.
pub fn body_error(e: &(dyn std::error::Error + 'static), too_large: bool) -> ApiError {
    if crate::serve::is_body_timeout(e) {
        let mut a =
            ApiError::invalid("the request body did not arrive in time (ORCH_BODY_TIMEOUT_SECS)");
        a.status = StatusCode::REQUEST_TIMEOUT;
        a
    } else if too_large {
        let mut a = ApiError::new(
            ErrorCode::InvalidArgument,
            "request body is larger than the server accepts (ORCH_MAX_BODY_BYTES)",
        );
        a.status = StatusCode::PAYLOAD_TOO_LARGE;
        a
    } else {
        ApiError::invalid(format!("could not read the request body: {e}"))
    }
}

/// Parses a JSON body (empty reads as `{}`), naming the offending field on error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let secret_field = path.starts_with("secrets") || path.contains("token");
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if secret_field {
            // serde quotes the offending value; never echo a secret.
            format!("{path}: invalid value (expected a string)")
        } else if path == "." {
            format!("request body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::invalid(msg).with_detail("field", path)
    })
}

/// Query parameters as a map, with typed accessors that produce clear 400s.
#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(q)
            .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
        Ok(Params(pairs.into_iter().collect()))
    }
}

/// A query string that is not valid percent-encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum QueryError {
    /// `%` not followed by two characters.
    #[error("truncated %-escape")]
    Truncated,
    /// `%` followed by something that is not two hex digits.
    #[error("bad escape %{0}")]
    BadEscape(String),
    /// Decoded bytes that are not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
}

fn serde_urlencoded_pairs(q: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((pct_decode(k)?, pct_decode(v)?));
    }
    Ok(out)
}

fn pct_decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = b.get(i + 1..i + 3).ok_or(QueryError::Truncated)?;
                let text = String::from_utf8_lossy(pair).into_owned();
                out.push(u8::from_str_radix(&text, 16).map_err(|_| QueryError::BadEscape(text))?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

impl Params {
    /// A non-empty string parameter.
    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// A parsed parameter, or a 400 naming it.
    pub fn parse<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| ApiError::invalid(format!("query parameter {k}: {e}"))),
        }
    }

    /// A boolean parameter (`true/false/1/0`).
    pub fn bool(&self, k: &str, default: bool) -> Result<bool, ApiError> {
        match self.str(k) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ApiError::invalid(format!(
                "query parameter {k}: {v:?} is not true or false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(pct_decode("a%20b+c").unwrap(), "a b c");
        assert_eq!(pct_decode("%7e").unwrap(), "~");
        assert!(pct_decode("%").is_err());
        assert!(pct_decode("%4").is_err());
        assert!(pct_decode("%zz").is_err());
        assert_eq!(
            serde_urlencoded_pairs("a=1&b&c=x%3Dy").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "x=y".into())
            ]
        );
    }
}
