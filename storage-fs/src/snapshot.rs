//! [`FsSnapshotStore`]: ConfigNode snapshots as whole files, replaced atomically.
//!
//! Each snapshot is `snap-<last_index:020>.bin` holding the bytes of
//! `shoal_core::snapshot::encode` (which carry their own magic, version and checksum). A save
//! writes a temp file, fsyncs it, renames it into place and fsyncs the directory, then
//! removes all but the newest `keep` snapshots.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use shoal_core::storage::{SnapshotStore, StorageError};

use crate::fsutil::{atomic_write, create_dir_durable, fsync_dir, io_err, unblock};

/// Reads the last log index a snapshot's bytes cover, or says why they are not a whole
/// snapshot. Loading checks every file with it before trusting it.
pub type SnapshotIndexFn = fn(&[u8]) -> Result<u64, String>;

/// The format [`FsSnapshotStore::open`] stores: core's snapshot codec.
fn core_snapshot_index(bytes: &[u8]) -> Result<u64, String> {
    shoal_core::snapshot::decode(bytes)
        .map(|snap| snap.last_index)
        .map_err(|e| e.to_string())
}

/// File-backed [`SnapshotStore`].
#[derive(Debug, Clone)]
pub struct FsSnapshotStore {
    dir: PathBuf,
    keep: usize,
    index_of: SnapshotIndexFn,
}

fn snapshot_name(last_index: u64) -> String {
    format!("snap-{last_index:020}.bin")
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".bin")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl FsSnapshotStore {
    /// Opens (or creates) the store in `dir`, keeping the newest `keep` snapshots (at least
    /// one). Removes temp files left by an interrupted save. Blocking.
    pub fn open(dir: impl AsRef<Path>, keep: usize) -> Result<Self, StorageError> {
        Self::open_with_format(dir, keep, core_snapshot_index)
    }

    /// [`FsSnapshotStore::open`] for snapshots in another self-checking format (a Raft
    /// snapshot wraps core's codec with Raft metadata): `index_of` validates a file's bytes
    /// and reads the last index they cover. Same files, same fsync rules. Blocking.
    pub fn open_with_format(
        dir: impl AsRef<Path>,
        keep: usize,
        index_of: SnapshotIndexFn,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durable(&dir)?;
        let listing = std::fs::read_dir(&dir).map_err(|e| io_err("list snapshots", &dir, e))?;
        let mut removed = false;
        for entry in listing {
            let entry = entry.map_err(|e| io_err("list snapshots", &dir, e))?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| io_err("remove temp snapshot", &entry.path(), e))?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(&dir)?;
        }
        Ok(Self {
            dir,
            keep: keep.max(1),
            index_of,
        })
    }

    /// Stored snapshots as `(last_index, path)`, newest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, StorageError> {
        list_snapshots(&self.dir)
    }
}

fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| io_err("list snapshots", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list snapshots", dir, e))?;
        if let Some(index) = parse_snapshot_name(&entry.file_name().to_string_lossy()) {
            found.push((index, entry.path()));
        }
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(found)
}

#[async_trait]
impl SnapshotStore for FsSnapshotStore {
    async fn save(&self, last_index: u64, bytes: Vec<u8>) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let keep = self.keep;
        unblock(move || {
            atomic_write(&dir.join(snapshot_name(last_index)), &bytes)?;
            // Prune only after the new one is durable: there is always a whole snapshot.
            let all = list_snapshots(&dir)?;
            let mut removed = false;
            for (_, path) in all.iter().skip(keep) {
                std::fs::remove_file(path).map_err(|e| io_err("remove old snapshot", path, e))?;
                removed = true;
            }
            if removed {
                fsync_dir(&dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn load_latest(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let dir = self.dir.clone();
        let index_of = self.index_of;
        unblock(move || {
            let all = list_snapshots(&dir)?;
            let mut first_error = None;
            for (index, path) in &all {
                let bytes = std::fs::read(path).map_err(|e| io_err("read snapshot", path, e))?;
                match index_of(&bytes) {
                    Ok(holds) if holds == *index => return Ok(Some(bytes)),
                    Ok(holds) => {
                        tracing::warn!(file = %path.display(), named = index, holds,
                            "snapshot name and contents disagree; trying an older one");
                        first_error.get_or_insert_with(|| StorageError::Corrupt {
                            file: path.display().to_string(),
                            offset: 0,
                            reason: format!("holds index {holds}, named {index}"),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e,
                            "snapshot is damaged; trying an older one");
                        first_error.get_or_insert_with(|| StorageError::Corrupt {
                            file: path.display().to_string(),
                            offset: 0,
                            reason: e,
                        });
                    }
                }
            }
            // Snapshots exist but none is whole: the log before them may be compacted away,
            // so starting empty would lose state. Refuse.
            match first_error {
                Some(err) => Err(err),
                None => Ok(None),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::snapshot::{Snapshot, encode};
    use shoal_core::state::ClusterState;

    fn snap(index: u64) -> Vec<u8> {
        let s = Snapshot {
            last_index: index,
            last_term: 1,
            state: ClusterState::default(),
        };
        encode(&s).expect("encode")
    }

    #[test]
    fn keeps_last_n_and_loads_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsSnapshotStore::open(dir.path(), 2).expect("open");
        smol::block_on(async {
            for i in [5, 10, 15] {
                store.save(i, snap(i)).await.expect("save");
            }
            let listed: Vec<u64> = store.list().expect("list").iter().map(|s| s.0).collect();
            assert_eq!(listed, vec![15, 10]);
            let latest = store.load_latest().await.expect("load").expect("some");
            assert_eq!(latest, snap(15));
        });
    }

    #[test]
    fn damaged_newest_snapshot_falls_back_to_older() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsSnapshotStore::open(dir.path(), 3).expect("open");
        smol::block_on(async {
            store.save(5, snap(5)).await.expect("save");
            store.save(9, snap(9)).await.expect("save");
            let newest = dir.path().join(snapshot_name(9));
            let mut bytes = std::fs::read(&newest).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&newest, bytes).expect("write");
            let latest = store.load_latest().await.expect("load").expect("some");
            assert_eq!(latest, snap(5));
        });
    }

    #[test]
    fn only_damaged_snapshots_is_corrupt_not_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsSnapshotStore::open(dir.path(), 3).expect("open");
        smol::block_on(async {
            store.save(5, snap(5)).await.expect("save");
            std::fs::write(dir.path().join(snapshot_name(5)), b"garbage").expect("write");
            let err = store.load_latest().await.expect_err("must refuse");
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        });
    }

    #[test]
    fn interrupted_save_leaves_previous_snapshot_and_temp_is_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = FsSnapshotStore::open(dir.path(), 3).expect("open");
            smol::block_on(store.save(5, snap(5))).expect("save");
        }
        std::fs::write(
            dir.path().join("snap-00000000000000000009.bin.tmp"),
            b"half",
        )
        .expect("write");
        let store = FsSnapshotStore::open(dir.path(), 3).expect("reopen");
        assert!(
            !dir.path()
                .join("snap-00000000000000000009.bin.tmp")
                .exists()
        );
        let latest = smol::block_on(store.load_latest()).expect("load");
        assert_eq!(latest, Some(snap(5)));
    }
}
