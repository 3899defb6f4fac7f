//! The `shoal` binary's one error type: every command fails with one line of it.

use std::path::PathBuf;

use shoal_core::api::ApiError;
use shoal_core::storage::StorageError;
use shoal_transport_capnp::TransportError;

/// Why a `shoal` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or configuration.
    #[error("{0}")]
    Config(String),
    /// The request is invalid (found before sending it; the ConfigNode refuses the same
    /// requests with the same words).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A call to a node failed.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The transport could not start.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// A store could not open.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A node could not start or run.
    #[error("{0}")]
    Node(String),
    /// The operation ran and did not succeed, or did not finish in time.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// An I/O failure on `path`.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Whether running the same command again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CliError::Api(e) => e.is_retryable(),
            CliError::Transport(e) => e.is_retryable(),
            CliError::Storage(e) => e.is_retryable(),
            CliError::Io { .. } | CliError::Failed(_) => true,
            CliError::Config(_) | CliError::Invalid(_) | CliError::Node(_) => false,
        }
    }
}
