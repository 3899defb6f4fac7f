//! Secrets, roles, TLS and connection limits of the `shoal` processes: the flags, how
//! they resolve to a node's or the CLI's credentials, and the local CA of `shoal up --tls`.
//!
//! Decisions (README "Security"):
//! - Two secrets: *internal* (ConfigNode and DataNode logins) and *admin* (the CLI). A
//!   ConfigNode generates both in its data directory unless given files.
//! - `--secret-file` (one secret for every role, as older releases had) still works on every
//!   command, with a WARN on nodes; so does a data directory holding only `cluster.secret`.
//!   A login that names no role (an older client) is refused with a clear error.
//! - A secret file group or others may read is refused unless `--allow-open-secret-files`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use shoal_transport_capnp::{
    ADMIN_SECRET_FILE_NAME, ClientTls, ConnectionLimits, INTERNAL_SECRET_FILE_NAME,
    SECRET_FILE_NAME, Secret, SecretFileMode, ServerSecrets, ServerTls, TlsError,
    load_or_create_secret_file, read_secret_file,
};

use crate::error::CliError;

mod local_ca;

pub use local_ca::{LOCAL_TLS_DIR, LocalTls, generate_local_tls};

/// A node's security flags (each may also come from the `--config` file).
#[derive(Debug, Clone, Default, Args)]
pub struct NodeSecurityArgs {
    /// Secret file of node-to-node logins (ConfigNode: default DATA_DIR/internal.secret,
    /// generated if absent).
    #[arg(long)]
    pub internal_secret_file: Option<PathBuf>,
    /// Secret file of admin logins (ConfigNode: default DATA_DIR/admin.secret, generated if
    /// absent; DataNode: optional, lets `shoal load` write).
    #[arg(long)]
    pub admin_secret_file: Option<PathBuf>,
    /// One secret for every role, as older releases had (migration; prefer the two above).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Accept secret files that group or others may read (logs a WARN).
    #[arg(long)]
    pub allow_open_secret_files: bool,
    /// This node's TLS certificate chain (PEM). With --tls-key and --tls-ca: TLS only.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed the cluster's certificates: peers are verified against it.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: require every client to present a certificate signed by --tls-ca.
    #[arg(long)]
    pub tls_require_client_cert: bool,
    /// Connections open at once, at most; more are closed at once [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections waiting for login, at most; more are closed at once [default: 64].
    #[arg(long)]
    pub max_unauthenticated_connections: Option<usize>,
}

impl NodeSecurityArgs {
    /// Flags win over `file`'s values.
    pub fn or(self, file: &NodeSecurityArgs) -> Self {
        let file = file.clone();
        Self {
            internal_secret_file: self.internal_secret_file.or(file.internal_secret_file),
            admin_secret_file: self.admin_secret_file.or(file.admin_secret_file),
            secret_file: self.secret_file.or(file.secret_file),
            allow_open_secret_files: self.allow_open_secret_files || file.allow_open_secret_files,
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_require_client_cert: self.tls_require_client_cert || file.tls_require_client_cert,
            max_connections: self.max_connections.or(file.max_connections),
            max_unauthenticated_connections: self
                .max_unauthenticated_connections
                .or(file.max_unauthenticated_connections),
        }
    }

    fn mode(&self) -> SecretFileMode {
        if self.allow_open_secret_files {
            SecretFileMode::AllowOpen
        } else {
            SecretFileMode::OwnerOnly
        }
    }

    /// The connection caps these flags set.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let defaults = ConnectionLimits::default();
        ConnectionLimits {
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_unauthenticated: self
                .max_unauthenticated_connections
                .unwrap_or(defaults.max_unauthenticated),
            ..defaults
        }
    }

    /// The TLS a node serves and dials with, if any: all of --tls-cert, --tls-key and
    /// --tls-ca, or none.
    pub fn node_tls(&self) -> Result<Option<NodeTls>, CliError> {
        let (cert, key, ca) = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) if !self.tls_require_client_cert => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => {
                return Err(CliError::Config(
                    "TLS on a node needs --tls-cert, --tls-key and --tls-ca together".into(),
                ));
            }
        };
        let client_ca = self.tls_require_client_cert.then_some(ca.as_path());
        let server = ServerTls::from_pem_files(cert, key, client_ca).map_err(tls_error)?;
        let client = ClientTls::from_pem_files(ca, Some((cert, key))).map_err(tls_error)?;
        Ok(Some(NodeTls {
            server: Arc::new(server),
            client,
        }))
    }

    /// The legacy single secret, if `--secret-file` was given (with a WARN: every role
    /// shares it). Refused together with the separate files.
    fn legacy_secret(&self) -> Result<Option<Secret>, CliError> {
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        if self.internal_secret_file.is_some() || self.admin_secret_file.is_some() {
            return Err(CliError::Config(
                "--secret-file (one secret for every role) cannot be combined with \
                 --internal-secret-file or --admin-secret-file"
                    .into(),
            ));
        }
        let secret = read_secret_file(path, self.mode())?;
        warn_shared(path);
        Ok(Some(secret))
    }

    /// A ConfigNode's secrets: the internal one (also what it logs in to DataNodes with)
    /// and the admin one.
    pub fn confignode_secrets(&self, data_dir: &Path) -> Result<NodeSecrets, CliError> {
        if let Some(secret) = self.legacy_secret()? {
            return Ok(NodeSecrets::shared(secret));
        }
        let legacy = data_dir.join(SECRET_FILE_NAME);
        let internal_default = data_dir.join(INTERNAL_SECRET_FILE_NAME);
        let admin_default = data_dir.join(ADMIN_SECRET_FILE_NAME);
        let flags_given = self.internal_secret_file.is_some() || self.admin_secret_file.is_some();
        // A data directory from an older release: keep its one secret, so its DataNodes
        // and scripts go on working.
        if !flags_given && legacy.exists() && !internal_default.exists() && !admin_default.exists()
        {
            let secret = read_secret_file(&legacy, self.mode())?;
            warn_shared(&legacy);
            return Ok(NodeSecrets::shared(secret));
        }
        let internal = self.load_or_create(self.internal_secret_file.as_ref(), internal_default)?;
        let admin = self.load_or_create(self.admin_secret_file.as_ref(), admin_default)?;
        Ok(NodeSecrets {
            server: ServerSecrets::new(internal.clone(), admin),
            internal,
        })
    }

    /// A given file must exist; the default one is generated if absent.
    fn load_or_create(
        &self,
        given: Option<&PathBuf>,
        default: PathBuf,
    ) -> Result<Secret, CliError> {
        match given {
            Some(path) => Ok(read_secret_file(path, self.mode())?),
            // Logs where a new one was written (never its contents).
            None => Ok(load_or_create_secret_file(&default, self.mode())?.0),
        }
    }

    /// A DataNode's secrets: the internal one (required) and, optionally, the admin one
    /// (accepted only for `writeRegion`, the load generator's writes).
    pub fn datanode_secrets(&self) -> Result<NodeSecrets, CliError> {
        if let Some(secret) = self.legacy_secret()? {
            return Ok(NodeSecrets::shared(secret));
        }
        let path = self.internal_secret_file.as_ref().ok_or_else(|| {
            CliError::Config(
                "--internal-secret-file is required (flag or config file; the ConfigNode's \
                 DATA_DIR/internal.secret)"
                    .into(),
            )
        })?;
        let internal = read_secret_file(path, self.mode())?;
        let admin = self
            .admin_secret_file
            .as_ref()
            .map(|path| read_secret_file(path, self.mode()))
            .transpose()?;
        Ok(NodeSecrets {
            server: ServerSecrets {
                internal: Some(internal.clone()),
                admin,
            },
            internal,
        })
    }
}

fn warn_shared(path: &Path) {
    tracing::warn!(
        path = %path.display(),
        "one secret for every role (as older releases had): an admin credential can act as a \
         node; use --internal-secret-file and --admin-secret-file"
    );
}

fn tls_error(e: TlsError) -> CliError {
    CliError::Transport(e.into())
}

/// What a node checks logins against and logs in with.
#[derive(Debug, Clone)]
pub struct NodeSecrets {
    /// The secrets its server checks.
    pub server: ServerSecrets,
    /// The internal secret it presents to other nodes.
    pub internal: Secret,
}

impl NodeSecrets {
    fn shared(secret: Secret) -> Self {
        Self {
            server: ServerSecrets::shared(secret.clone()),
            internal: secret,
        }
    }
}

/// A node's TLS: what it serves and how it dials.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// Its server side.
    pub server: Arc<ServerTls>,
    /// Its client side (verifies peers against the CA; presents its own certificate).
    pub client: ClientTls,
}

/// The admin CLI's security flags.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminSecurityArgs {
    /// Admin secret file [default: ./shoal-data/confignode/admin.secret]. `--secret-file`
    /// is the same flag (older releases' one secret).
    #[arg(long = "admin-secret-file", alias = "secret-file")]
    pub secret_file: Option<PathBuf>,
    /// Accept a secret file that group or others may read.
    #[arg(long)]
    pub allow_open_secret_files: bool,
    /// Connect with TLS, trusting this CA (PEM) [default with ./shoal-data/tls/ca.pem: that].
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require one.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl AdminSecurityArgs {
    /// The admin secret: the given file, else `shoal up`'s admin secret, else (a data
    /// directory of an older release) its single cluster secret.
    pub fn secret(&self, file_secret: Option<PathBuf>) -> Result<Secret, CliError> {
        let mode = if self.allow_open_secret_files {
            SecretFileMode::AllowOpen
        } else {
            SecretFileMode::OwnerOnly
        };
        let path = match self.secret_file.clone().or(file_secret) {
            Some(path) => path,
            None => {
                let dir = Path::new(crate::defaults::DEFAULT_DATA_DIR).join("confignode");
                let admin = dir.join(ADMIN_SECRET_FILE_NAME);
                let legacy = dir.join(SECRET_FILE_NAME);
                if !admin.exists() && legacy.exists() {
                    legacy
                } else {
                    admin
                }
            }
        };
        Ok(read_secret_file(&path, mode)?)
    }

    /// The CLI's TLS: `--tls-ca` (with an optional client certificate), else `shoal up`'s
    /// local CA and admin certificate when ./shoal-data/tls exists, else plaintext.
    pub fn tls(&self) -> Result<Option<ClientTls>, CliError> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(CliError::Config(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        if let Some(ca) = &self.tls_ca {
            return Ok(Some(
                ClientTls::from_pem_files(ca, identity).map_err(tls_error)?,
            ));
        }
        if identity.is_some() {
            return Err(CliError::Config(
                "--tls-cert needs --tls-ca (the CA that signed the nodes' certificates)".into(),
            ));
        }
        let local = LocalTls::at(&Path::new(crate::defaults::DEFAULT_DATA_DIR).join(LOCAL_TLS_DIR));
        if !local.ca_cert.exists() {
            return Ok(None);
        }
        let (cert, key) = local.identity("admin");
        Ok(Some(
            ClientTls::from_pem_files(&local.ca_cert, Some((&cert, &key))).map_err(tls_error)?,
        ))
    }
}
