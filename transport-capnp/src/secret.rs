//! Secret files: the internal (node-to-node) and admin secrets every login presents.
//!
//! A secret file holds one line (a trailing newline is tolerated). A node refuses a secret
//! file that group or others may read, unless told otherwise (then it WARNs). Nothing here
//! ever puts a secret's contents into a log line or an error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::auth::Secret;
use crate::error::TransportError;

/// The single cluster secret of older releases (every role shares it).
pub const SECRET_FILE_NAME: &str = "cluster.secret";
/// The node-to-node secret (ConfigNode and DataNode logins).
pub const INTERNAL_SECRET_FILE_NAME: &str = "internal.secret";
/// The administrators' secret (admin logins: the CLI).
pub const ADMIN_SECRET_FILE_NAME: &str = "admin.secret";

/// Whether a secret file that group or others may read is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretFileMode {
    /// Refuse it (the default).
    #[default]
    OwnerOnly,
    /// Accept it with a WARN (an explicit override).
    AllowOpen,
}

/// Reads the secret in `path`: refused when empty, or (with [`SecretFileMode::OwnerOnly`])
/// when group or others may read it.
pub fn read_secret_file(path: &Path, mode: SecretFileMode) -> Result<Secret, TransportError> {
    let err = |source| TransportError::Secret {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    check_permissions(path, &file, mode)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| {
        // Not UTF-8 (or unreadable): say so without echoing anything read.
        err(std::io::Error::new(e.kind(), "cannot read it as text"))
    })?;
    let secret = Secret::new(&text);
    if secret.is_empty() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "secret file is empty",
        )));
    }
    Ok(secret)
}

#[cfg(unix)]
fn check_permissions(
    path: &Path,
    file: &std::fs::File,
    mode: SecretFileMode,
) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let bits = file
        .metadata()
        .map_err(|source| TransportError::Secret {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if bits & 0o077 == 0 {
        return Ok(());
    }
    match mode {
        SecretFileMode::OwnerOnly => Err(TransportError::SecretPermissions {
            path: path.to_path_buf(),
            mode: bits,
        }),
        SecretFileMode::AllowOpen => {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{bits:o}"),
                "secret file is readable by group or others (allowed by flag); chmod 600 it"
            );
            Ok(())
        }
    }
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &std::fs::File, _: SecretFileMode) -> Result<(), TransportError> {
    Ok(())
}

/// Returns the secret in `path`, creating the file first (32 random bytes from the OS, hex,
/// mode 0600) if it is absent. The bool says whether it was created.
pub fn load_or_create_secret_file(
    path: &Path,
    mode: SecretFileMode,
) -> Result<(Secret, bool), TransportError> {
    match read_secret_file(path, mode) {
        Ok(secret) => return Ok((secret, false)),
        Err(TransportError::Secret { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let err = |source| TransportError::Secret {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let secret = random_hex(32).map_err(err)?;
    // Write a temp file and rename it, so a crash never leaves a half-written secret.
    let tmp = path.with_extension("secret.tmp");
    // A leftover temp file from a crash may have other permissions: start fresh.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(err)?;
        file.write_all(format!("{secret}\n").as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    tracing::info!(path = %path.display(), "generated a secret file");
    Ok((Secret::new(secret), true))
}

/// Returns the secret stored in `dir/cluster.secret`, creating it if absent (the single
/// secret of older releases, kept for nodes started with one `--secret-file`). Returns the
/// secret and the file's path.
pub fn load_or_create_secret(dir: &Path) -> Result<(Secret, PathBuf), TransportError> {
    let path = dir.join(SECRET_FILE_NAME);
    let (secret, _) = load_or_create_secret_file(&path, SecretFileMode::OwnerOnly)?;
    Ok((secret, path))
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_then_reloaded_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, path) = load_or_create_secret(dir.path()).expect("create");
        assert_eq!(first.expose().len(), 64);
        let (second, _) = load_or_create_secret(dir.path()).expect("reload");
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn empty_secret_file_is_an_error_not_an_empty_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SECRET_FILE_NAME);
        std::fs::write(&path, "\n").expect("write");
        set_mode(&path, 0o600);
        assert!(load_or_create_secret(dir.path()).is_err());
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_refused_unless_allowed_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ADMIN_SECRET_FILE_NAME);
        std::fs::write(&path, "s3cr3t-value\n").expect("write");
        set_mode(&path, 0o644);
        let error = read_secret_file(&path, SecretFileMode::OwnerOnly).expect_err("open file");
        let text = error.to_string();
        assert!(text.contains("readable by group or others"), "{text}");
        assert!(text.contains("644"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        let secret = read_secret_file(&path, SecretFileMode::AllowOpen).expect("allowed");
        assert_eq!(
            secret.expose(),
            "s3cr3t-value",
            "trailing newline tolerated"
        );
        set_mode(&path, 0o640);
        assert!(
            read_secret_file(&path, SecretFileMode::OwnerOnly).is_err(),
            "group"
        );
        set_mode(&path, 0o600);
        assert!(read_secret_file(&path, SecretFileMode::OwnerOnly).is_ok());
    }

    #[test]
    fn a_secret_file_that_is_not_text_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INTERNAL_SECRET_FILE_NAME);
        std::fs::write(&path, [b's', b'3', 0xff, 0xfe]).expect("write");
        set_mode(&path, 0o600);
        let text = read_secret_file(&path, SecretFileMode::OwnerOnly)
            .expect_err("not text")
            .to_string();
        assert!(!text.contains("s3"), "{text}");
    }
}
