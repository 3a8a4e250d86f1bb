//! The domain error of every `app` operation. It says what went wrong in the terms of the
//! domain (not found, invalid, conflict, no capacity, a dependency unavailable, a bug) and
//! keeps the failed dependency's own error as its source; it knows nothing of HTTP. The
//! HTTP edge (`http::error`) is the one place that turns it into a status and the JSON
//! envelope.

use super::lifecycle::LifecycleError;
use crate::provider::ProviderError;
use fuse_scheduler::NoPlacement;
use fuse_store::StoreError;

/// Structured context a client may see beside the message (ids, states).
pub type Details = serde_json::Map<String, serde_json::Value>;

/// Why a domain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The named resource does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `environment`, `host`, `snapshot`.
        kind: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The environment ended (`destroyed` or `failed`): gone for the API, its record kept.
    #[error("environment {id} not found ({state})")]
    Ended {
        /// Its id.
        id: String,
        /// Its last state.
        state: fuse_types::VmState,
        /// `state`, `error`, `destroyed_at`.
        details: Details,
    },
    /// The caller's credential may not do this; safe to show.
    #[error("{0}")]
    Forbidden(String),
    /// Not offered by this server (or this host); safe to show.
    #[error("{0}")]
    Unimplemented(String),
    /// The request is invalid; every problem is listed, each safe to show.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The request conflicts with the current state of a resource.
    #[error("{message}")]
    Conflict {
        /// Safe to show.
        message: String,
        /// Context for the client.
        details: Details,
    },
    /// No host can take the VM now.
    #[error(transparent)]
    NoCapacity(#[from] NoPlacement),
    /// Something the operation needs is missing for now (retryable); safe to show.
    #[error("{0}")]
    Unavailable(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A host refused or failed a call.
    #[error(transparent)]
    Host(#[from] ProviderError),
    /// The lifecycle refused the event or lost a race.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A bug or an impossible state; the text is for logs only.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// A resource that does not exist.
    pub fn not_found(kind: &'static str, id: impl std::fmt::Display) -> Self {
        AppError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    /// One invalid value.
    pub fn invalid(problem: impl Into<String>) -> Self {
        AppError::Invalid(vec![problem.into()])
    }

    /// A conflict with no extra context.
    pub fn conflict(message: impl Into<String>) -> Self {
        AppError::Conflict {
            message: message.into(),
            details: Details::new(),
        }
    }

    /// Adds context to a conflict (no-op on other variants).
    pub fn with_detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let AppError::Conflict { details, .. } = &mut self {
            details.insert(key.to_owned(), value.into());
        }
        self
    }
}
