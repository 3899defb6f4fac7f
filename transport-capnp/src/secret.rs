//! The cluster secret every connection must present at login.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::TransportError;

/// Name of the secret file inside a node's data directory.
pub const SECRET_FILE_NAME: &str = "cluster.secret";

/// Returns the secret stored in `dir/cluster.secret`, creating it (32 random bytes from the
/// OS, hex, file mode 0600) if absent. Logs where a new secret was written. Returns the
/// secret and the file's path.
pub fn load_or_create_secret(dir: &Path) -> Result<(String, PathBuf), TransportError> {
    let path = dir.join(SECRET_FILE_NAME);
    let err = |source| TransportError::Secret {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim().to_string();
            if secret.is_empty() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "secret file is empty",
                )));
            }
            return Ok((secret, path));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let secret = random_hex(32).map_err(err)?;
    // Write a temp file and rename it, so a crash never leaves a half-written secret.
    let tmp = dir.join(format!("{SECRET_FILE_NAME}.tmp"));
    // A leftover temp file from a crash may have other permissions: start fresh.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(err)?;
        file.write_all(format!("{secret}\n").as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    tracing::info!(path = %path.display(), "no cluster secret configured: generated one");
    Ok((secret, path))
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn secrets_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_then_reloaded_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, path) = load_or_create_secret(dir.path()).expect("create");
        assert_eq!(first.len(), 64);
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
        std::fs::write(dir.path().join(SECRET_FILE_NAME), "\n").expect("write");
        assert!(load_or_create_secret(dir.path()).is_err());
    }

    #[test]
    fn secret_comparison_needs_exact_match() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "abcd"));
        assert!(!secrets_match("abc", ""));
    }
}
