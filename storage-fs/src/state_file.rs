//! [`FsStateFile`]: one small blob, replaced atomically and durably on every save.
//!
//! For state that must be on disk before a node answers (a Raft vote): the bytes are framed
//! (`magic | len | crc32c | payload`), written to a temp file, fsynced, renamed into place and
//! the directory fsynced, so a crash leaves the old or the new contents, whole.

use std::path::{Path, PathBuf};

use shoal_core::storage::StorageError;

use crate::fsutil::{
    atomic_write, create_dir_durable, frame_blob, read_optional, unblock, unframe_blob,
};

/// A small durable file holding one opaque blob, checked by magic and checksum.
#[derive(Debug, Clone)]
pub struct FsStateFile {
    path: PathBuf,
    magic: [u8; 8],
}

impl FsStateFile {
    /// The file `name` in `dir` (created durably if missing), framed with `magic`. A leftover
    /// temp file of an interrupted save is ignored (the rename never happened). Blocking.
    pub fn open(dir: impl AsRef<Path>, name: &str, magic: [u8; 8]) -> Result<Self, StorageError> {
        let dir = dir.as_ref();
        create_dir_durable(dir)?;
        Ok(Self {
            path: dir.join(name),
            magic,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably replaces the contents with `payload`; resolves once it would survive a crash.
    pub async fn save(&self, payload: Vec<u8>) -> Result<(), StorageError> {
        let path = self.path.clone();
        let bytes = frame_blob(&self.magic, &payload);
        unblock(move || atomic_write(&path, &bytes)).await
    }

    /// The saved contents, `None` if nothing was ever saved; damage is
    /// [`StorageError::Corrupt`] (never "nothing saved").
    pub async fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path.clone();
        let magic = self.magic;
        unblock(move || match read_optional(&path)? {
            Some(bytes) => unframe_blob(&magic, &bytes, &path).map(|p| Some(p.to_vec())),
            None => Ok(None),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_contents_survive_reopen_and_damage_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = FsStateFile::open(dir.path(), "vote", *b"SHOALVOT").expect("open");
        smol::block_on(async {
            assert_eq!(file.load().await.expect("load"), None);
            file.save(b"one".to_vec()).await.expect("save");
            file.save(b"two".to_vec()).await.expect("save");
            let reopened = FsStateFile::open(dir.path(), "vote", *b"SHOALVOT").expect("open");
            assert_eq!(reopened.load().await.expect("load"), Some(b"two".to_vec()));
            let mut bytes = std::fs::read(file.path()).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(file.path(), bytes).expect("write");
            let err = reopened.load().await.expect_err("damage");
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        });
    }
}
