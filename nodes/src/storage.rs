//! Opens the storage backend chosen at build time (feature `storage-fs`, the default, or
//! `storage-mem`) for a node's data directory.
//!
//! Layout under the data directory with `storage-fs`:
//! `confignode/log/` (consensus log), `confignode/snapshots/`, `datanode/` (regions and
//! trash), `datanode/tasks.journal`.

use std::path::Path;
use std::sync::Arc;

use shoal_core::storage::{LogStore, RegionStore, SnapshotStore, StorageError, TaskJournal};

#[cfg(not(any(feature = "storage-fs", feature = "storage-mem")))]
compile_error!("enable one storage backend: feature `storage-fs` or `storage-mem`");

/// How the stores are tuned.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes per second a region deletion may remove (`None`: unlimited).
    pub delete_rate: Option<u64>,
    /// Snapshots kept on disk.
    pub snapshots_kept: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            delete_rate: None,
            snapshots_kept: 3,
        }
    }
}

/// Every store a node needs, behind core's traits.
#[derive(Clone)]
pub struct Stores {
    /// The ConfigNode's consensus log.
    pub log: Arc<dyn LogStore>,
    /// The ConfigNode's snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The DataNode's region replicas.
    pub regions: Arc<dyn RegionStore>,
    /// The DataNode's task journal.
    pub journal: Arc<dyn TaskJournal>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &BACKEND)
            .finish_non_exhaustive()
    }
}

/// The backend this build uses.
#[cfg(feature = "storage-mem")]
pub const BACKEND: &str = "mem";
/// The backend this build uses.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub const BACKEND: &str = "fs";

/// Opens (recovering as needed) the stores under `data_dir`. Blocking: call at start-up.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub fn open_stores(data_dir: &Path, options: &StoreOptions) -> Result<Stores, StorageError> {
    use shoal_storage_fs::{
        FsLogStore, FsRegionStore, FsSnapshotStore, FsTaskJournal, LogOptions, RegionStoreOptions,
    };
    let confignode = data_dir.join("confignode");
    let datanode = data_dir.join("datanode");
    let log = FsLogStore::open(confignode.join("log"), LogOptions::default())?;
    // A torn tail was logged at WARN by recovery; the report stays readable on the store.
    Ok(Stores {
        log: Arc::new(log),
        snapshots: Arc::new(FsSnapshotStore::open(
            confignode.join("snapshots"),
            options.snapshots_kept,
        )?),
        regions: Arc::new(FsRegionStore::open(
            &datanode,
            RegionStoreOptions {
                delete_rate: options.delete_rate,
                ..RegionStoreOptions::default()
            },
        )?),
        journal: Arc::new(FsTaskJournal::open(datanode.join("tasks.journal"))?),
    })
}

/// Opens in-memory stores (`data_dir` is not touched: nothing survives a restart).
#[cfg(feature = "storage-mem")]
pub fn open_stores(data_dir: &Path, options: &StoreOptions) -> Result<Stores, StorageError> {
    use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
    let _ = (data_dir, options);
    Ok(Stores {
        log: Arc::new(MemLogStore::new()),
        snapshots: Arc::new(MemSnapshotStore::new()),
        regions: Arc::new(mem::MemRegionStore::default()),
        journal: Arc::new(mem::MemTaskJournal::default()),
    })
}

/// Minimal in-memory DataNode stores until core ships its own twins (then use those).
#[cfg(feature = "storage-mem")]
mod mem {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use shoal_core::model::{DataNodeId, RegionId};
    use shoal_core::storage::{
        CreateOutcome, DeleteOutcome, RegionConfig, RegionStore, StorageError, TaskJournal,
    };

    #[derive(Debug, Default)]
    pub(super) struct MemRegionStore {
        regions: Mutex<BTreeMap<RegionId, (RegionConfig, u64)>>,
    }

    impl MemRegionStore {
        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RegionId, (RegionConfig, u64)>> {
            self.regions.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    #[async_trait]
    impl RegionStore for MemRegionStore {
        async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
            let mut regions = self.lock();
            match regions.get(&config.region) {
                Some((existing, _)) if existing == config => Ok(CreateOutcome::AlreadyExists),
                Some(_) => Err(StorageError::RegionConflict {
                    region: config.region,
                }),
                None => {
                    regions.insert(config.region, (config.clone(), 0));
                    Ok(CreateOutcome::Created)
                }
            }
        }

        async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
            let mut regions = self.lock();
            let (_, size) = regions
                .get_mut(&region)
                .ok_or(StorageError::RegionNotFound(region))?;
            *size += bytes.len() as u64;
            Ok(*size)
        }

        async fn set_peers(
            &self,
            region: RegionId,
            peers: &[DataNodeId],
        ) -> Result<(), StorageError> {
            let mut regions = self.lock();
            let (config, _) = regions
                .get_mut(&region)
                .ok_or(StorageError::RegionNotFound(region))?;
            config.peers = peers.to_vec();
            Ok(())
        }

        async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
            Ok(match self.lock().remove(&region) {
                Some((_, bytes)) => DeleteOutcome::Deleted { bytes },
                None => DeleteOutcome::NotFound,
            })
        }

        async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
            Ok(self.lock().values().map(|(c, _)| c.clone()).collect())
        }

        async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
            Ok(self.lock().get(&region).map(|(_, size)| *size))
        }
    }

    #[derive(Debug, Default)]
    pub(super) struct MemTaskJournal {
        records: Mutex<Vec<Vec<u8>>>,
    }

    #[async_trait]
    impl TaskJournal for MemTaskJournal {
        async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record);
            Ok(())
        }

        async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
            Ok(self
                .records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())
        }

        async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
            *self.records.lock().unwrap_or_else(|p| p.into_inner()) = records;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::model::{DataNodeId, DatabaseName, RegionId, RegionKind};
    use shoal_core::storage::RegionConfig;

    fn config() -> RegionConfig {
        RegionConfig {
            region: RegionId::new(RegionKind::Data, 1),
            database: DatabaseName::new("db").expect("name"),
            peers: vec![DataNodeId(1)],
        }
    }

    /// Writes one thing into every store.
    fn fill(stores: &Stores) {
        futures_lite::future::block_on(async {
            let index = stores.log.append(1, b"plan").expect("append");
            stores.log.sync(index).await.expect("sync");
            stores.regions.create(&config()).await.expect("create");
            stores
                .journal
                .append(b"task".to_vec())
                .await
                .expect("journal");
        });
    }

    #[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
    #[test]
    fn fs_backend_keeps_everything_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(BACKEND, "fs");
        fill(&open_stores(dir.path(), &StoreOptions::default()).expect("open"));
        let stores = open_stores(dir.path(), &StoreOptions::default()).expect("reopen");
        assert_eq!(stores.log.last_index(), 1);
        futures_lite::future::block_on(async {
            assert_eq!(stores.regions.list().await.expect("list"), vec![config()]);
            assert_eq!(
                stores.journal.load().await.expect("load"),
                vec![b"task".to_vec()]
            );
        });
        assert!(dir.path().join("confignode/log").is_dir());
    }

    #[cfg(feature = "storage-mem")]
    #[test]
    fn mem_backend_writes_nothing_to_disk_and_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(BACKEND, "mem");
        let stores = open_stores(dir.path(), &StoreOptions::default()).expect("open");
        fill(&stores);
        assert_eq!(stores.log.last_index(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the mem backend touched the data dir"
        );
        let fresh = open_stores(dir.path(), &StoreOptions::default()).expect("reopen");
        assert_eq!(fresh.log.last_index(), 0);
    }
}
