//! The transport's own errors (setting up threads and listeners); call failures are
//! core's [`ApiError`](shoal_core::api::ApiError).

/// A failure to start or run part of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The RPC thread could not be started.
    #[error("cannot start the RPC thread: {0}")]
    Thread(std::io::Error),
    /// The RPC thread has stopped; nothing more can run on it.
    #[error("the RPC thread has stopped")]
    RuntimeStopped,
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Reading or writing the secret file failed.
    #[error("secret file {path}: {source}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A secret file group or others may read (refused unless explicitly allowed).
    #[error(
        "secret file {path} is readable by group or others (mode {mode:o}): chmod 600 it, or \
         pass --allow-open-secret-files"
    )]
    SecretPermissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// TLS could not be set up from the given files.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl TransportError {
    /// Whether trying again may succeed (a busy port or a transient I/O failure may clear;
    /// a stopped runtime will not restart).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Thread(_) | TransportError::Bind { .. } => true,
            TransportError::Secret { .. }
            | TransportError::SecretPermissions { .. }
            | TransportError::Tls(_)
            | TransportError::RuntimeStopped => false,
        }
    }
}
