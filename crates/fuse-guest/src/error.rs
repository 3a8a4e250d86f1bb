//! The helper's errors. They travel to the host as the `error` text of a response line, with
//! their causes ([`GuestError::message`]); every variant says what failed.

use std::path::Path;

/// Why an operation in the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A guest path that is not absolute.
    #[error("path {0:?} must be absolute")]
    NotAbsolute(String),
    /// A guest path with `..` or NUL in it.
    #[error("path {0:?} must not contain '..' or NUL")]
    Traversal(String),
    /// A path that names a directory, not a file.
    #[error("{0} names no file")]
    NoFile(String),
    /// Upload content that is not base64.
    #[error("content_b64 is not valid base64")]
    NotBase64,
    /// An empty agent command.
    #[error("command must not be empty")]
    EmptyCommand,
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done (`writing`, `creating`).
        what: &'static str,
        /// The guest path or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent binary could not be downloaded.
    #[error("fetching {url} failed: {detail}")]
    Fetch {
        /// The download URL.
        url: String,
        /// What the downloader said.
        detail: String,
    },
    /// The downloaded agent binary is not the one expected.
    #[error("the download from {url} has SHA-256 {got}, not the expected {want}")]
    Checksum {
        /// The download URL.
        url: String,
        /// The expected digest.
        want: String,
        /// The downloaded file's digest.
        got: String,
    },
    /// The agent did not come up within its start window.
    #[error("{reason}; its log ends: {log_tail}")]
    AgentFailed {
        /// Why it is not up.
        reason: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A log source that does not exist.
    #[error("unknown log source {0:?} (the guest has agent and startup)")]
    UnknownLog(String),
    /// The supervisor's state was poisoned by a panic.
    #[error("the agent supervisor failed")]
    Poisoned,
}

impl GuestError {
    /// A file operation on `path` that failed.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
        let path = path.display().to_string();
        move |source| GuestError::Io { what, path, source }
    }

    /// The text sent to the host: the error and its causes.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_cause() {
        let e = GuestError::io("writing", Path::new("/etc/x"))(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(e.to_string(), "writing /etc/x");
        assert_eq!(e.message(), "writing /etc/x: permission denied");
    }
}
