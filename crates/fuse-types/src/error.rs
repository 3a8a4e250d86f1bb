//! The JSON error envelope shared by the control plane and the host agent:
//! `{"error":{"code":"…","message":"…","details":{…}}}`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The closed set of error codes a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The resource does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The request is malformed or names invalid values (400, 413).
    InvalidArgument,
    /// A dependency or capacity is missing; retry later (503).
    Unavailable,
    /// A bug (500).
    Internal,
    /// Missing or wrong bearer token (401).
    Unauthorized,
    /// The client address is not allowed, or the credential may not do this (403).
    Forbidden,
    /// The server or the host cannot do this (501).
    Unimplemented,
}

impl ErrorCode {
    /// The code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unimplemented => "unimplemented",
        }
    }

    /// The HTTP status this code is normally sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Unimplemented => 501,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// What went wrong, for a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message; never contains SQL, paths or secret values.
    pub message: String,
    /// Structured context (e.g. the list of invalid fields).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}
