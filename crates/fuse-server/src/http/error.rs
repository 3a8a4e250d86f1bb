//! The HTTP edge of errors: the one API error type, the one mapping from the domain's
//! [`AppError`] to a status and the JSON envelope, and the response it becomes. The
//! client-facing message and the internal detail are separate fields: the detail (SQL,
//! paths, host answers) is logged where the error is turned into a response, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fuse_store::StoreError;
use fuse_types::{ErrorBody, ErrorCode, ErrorDetail};

use crate::app::error::AppError;
use crate::app::lifecycle::LifecycleError;
use crate::provider::ProviderError;

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError {
    /// The envelope code.
    pub code: ErrorCode,
    /// HTTP status (normally the code's own; 413 for a too-large body).
    pub status: StatusCode,
    /// Safe for the client.
    pub message: String,
    /// Structured context for the client.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// For logs only.
    pub internal: Option<String>,
}

impl ApiError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            details: serde_json::Map::new(),
            internal: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// 400 listing every problem, in the message and as `details.problems`.
    pub fn invalid_all(problems: Vec<String>) -> Self {
        let mut e = Self::invalid(problems.join("; "));
        e.details
            .insert("problems".into(), serde_json::Value::from(problems.clone()));
        e
    }

    /// 503 (retryable).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 500; `internal` is logged, the client sees a generic message.
    pub fn internal(internal: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::Internal, "internal error");
        e.internal = Some(internal.into());
        e
    }

    /// Adds a detail field.
    pub fn with_detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Adds internal detail for the log.
    pub fn with_internal(mut self, internal: impl Into<String>) -> Self {
        self.internal = Some(internal.into());
        self
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound { .. } => ApiError::not_found(e.to_string()),
            AppError::Ended { id, state, details } => {
                let mut a = ApiError::not_found(format!("environment {id} not found ({state})"));
                a.details = details;
                a
            }
            AppError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            AppError::Unimplemented(m) => ApiError::new(ErrorCode::Unimplemented, m),
            AppError::Invalid(problems) => ApiError::invalid_all(problems),
            AppError::Conflict { message, details } => {
                let mut a = ApiError::conflict(message);
                a.details = details;
                a
            }
            AppError::NoCapacity(np) => ApiError::unavailable(np.to_string()),
            AppError::Unavailable(m) => ApiError::unavailable(m),
            AppError::Store(s) => s.into(),
            AppError::Host(h) => h.into(),
            AppError::Lifecycle(LifecycleError::Store(s)) => s.into(),
            AppError::Lifecycle(l) => ApiError::conflict(l.to_string()),
            AppError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Stale { id, .. } => {
                ApiError::conflict(format!("environment {id} was changed concurrently; retry"))
            }
            StoreError::Transition { .. }
            | StoreError::HostBusy { .. }
            | StoreError::HasChildren { .. }
            | StoreError::Exists { .. }
            | StoreError::InUse { .. } => ApiError::conflict(e.to_string()),
            StoreError::Invalid(m) => ApiError::invalid(m.clone()),
            StoreError::NoCapacity(np) => ApiError::unavailable(np.to_string()),
            StoreError::Unavailable(_) => {
                ApiError::unavailable("state store unavailable; retry").with_internal(e.to_string())
            }
            StoreError::Key(k) => ApiError::unavailable(
                "the state store's encryption key does not fit the stored data; see the server log",
            )
            .with_internal(k.to_string()),
            StoreError::Internal(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match &e {
            ProviderError::NotFound(m) => ApiError::not_found(m.clone()),
            ProviderError::Unavailable(_) => {
                ApiError::unavailable(e.client_message()).with_internal(e.to_string())
            }
            // The host refused our own credentials: a host problem, not the client's.
            ProviderError::Rejected {
                status: 401 | 403, ..
            } => ApiError::unavailable("host refused the control plane's credentials")
                .with_internal(e.to_string()),
            ProviderError::Rejected { .. } => {
                ApiError::invalid(e.client_message()).with_internal(e.to_string())
            }
            ProviderError::Internal(_) => ApiError::internal(e.to_string()),
            ProviderError::Unsupported(m) => ApiError::new(ErrorCode::Unimplemented, m.clone()),
            ProviderError::GuestFailed(_) | ProviderError::SetupFailed { .. } => {
                ApiError::unavailable(e.client_message()).with_internal(e.to_string())
            }
            ProviderError::GuestRefused(m) => {
                let mut a = ApiError::unavailable(m.clone());
                a.status = StatusCode::BAD_GATEWAY;
                a.with_detail("reason", fuse_types::hostagent::GUEST_REFUSED)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match (&self.internal, self.code) {
            (Some(detail), ErrorCode::Internal) => {
                tracing::error!(code = %self.code, detail = %detail, "request failed")
            }
            (Some(detail), _) => {
                tracing::warn!(code = %self.code, message = %self.message, detail = %detail, "request failed")
            }
            (None, _) => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
