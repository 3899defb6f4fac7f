//! The local CA of `shoal up --tls`: a CA and one certificate per node (and one for the
//! admin CLI), made with rcgen under `DATA_DIR/tls/`. Node certificates name 127.0.0.1,
//! ::1 and localhost and serve for both sides of a connection (mutual TLS).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::CliError;

/// The directory under `shoal up`'s data directory holding the local CA and certificates.
pub const LOCAL_TLS_DIR: &str = "tls";

/// Where the local CA's files are.
#[derive(Debug, Clone)]
pub struct LocalTls {
    /// The directory.
    pub dir: PathBuf,
    /// The CA certificate every node and the CLI trust.
    pub ca_cert: PathBuf,
}

impl LocalTls {
    /// The layout under `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
        }
    }

    /// The certificate and key files of `name` (a node, or `admin`).
    pub fn identity(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    fn complete(&self, names: &[String]) -> bool {
        self.ca_cert.exists()
            && names.iter().all(|name| {
                let (cert, key) = self.identity(name);
                cert.exists() && key.exists()
            })
    }
}

fn rcgen_error(e: rcgen::Error) -> CliError {
    CliError::Node(format!("cannot make the local TLS certificates: {e}"))
}

/// Makes (or, if all are there, keeps) a CA and a certificate for each of `names` under
/// `dir`. Keys are written owner-only.
pub fn generate_local_tls(dir: &Path, names: &[String]) -> Result<LocalTls, CliError> {
    let local = LocalTls::at(dir);
    if local.complete(names) {
        return Ok(local);
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::io("cannot create", dir, e))?;
    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "shoal local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rcgen_error)?;
    write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    for name in names {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("shoal {name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error)?;
        let (cert_path, key_path) = local.identity(name);
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
    }
    // The CA certificate last: its presence says the set is complete.
    write_file(&local.ca_cert, &ca_cert.pem(), false)?;
    Ok(local)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CliError> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| CliError::io("cannot write", path, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::io("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_signs_node_certificates_that_rustls_accepts_and_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["confignode".to_string(), "admin".to_string()];
        let local = generate_local_tls(dir.path(), &names).expect("generate");
        let (cert, key) = local.identity("confignode");
        shoal_transport_capnp::ServerTls::from_pem_files(&cert, &key, Some(&local.ca_cert))
            .expect("server config");
        let (admin_cert, admin_key) = local.identity("admin");
        shoal_transport_capnp::ClientTls::from_pem_files(
            &local.ca_cert,
            Some((&admin_cert, &admin_key)),
        )
        .expect("client config");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "keys are owner-only");
        }
        let before = std::fs::read(&local.ca_cert).expect("ca");
        generate_local_tls(dir.path(), &names).expect("again");
        assert_eq!(std::fs::read(&local.ca_cert).expect("ca"), before, "kept");
    }
}
