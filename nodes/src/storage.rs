//! Opens the storage backend chosen at build time (feature `storage-fs`, the default, or
//! `storage-mem`) for a node's data directory.
//!
//! Layout under the data directory with `storage-fs`:
//! `confignode/log/` (consensus log), `confignode/snapshots/`, `datanode/` (regions and
//! trash), `datanode/tasks.journal`.

use std::path::Path;
use std::sync::Arc;

use shoal_core::runtime::Clock;
use shoal_core::storage::{LogStore, RegionStore, SnapshotStore, StorageError, TaskJournal};

#[cfg(not(any(feature = "storage-fs", feature = "storage-mem")))]
compile_error!("enable one storage backend: feature `storage-fs` or `storage-mem`");

/// How the stores are tuned.
#[derive(Clone)]
pub struct StoreOptions {
    /// Bytes per second a region deletion may remove (`None`: unlimited).
    pub delete_rate: Option<u64>,
    /// Snapshots kept on disk.
    pub snapshots_kept: usize,
    /// The clock rate-limited deletions sleep on.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("delete_rate", &self.delete_rate)
            .field("snapshots_kept", &self.snapshots_kept)
            .finish_non_exhaustive()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            delete_rate: None,
            snapshots_kept: 3,
            clock: Arc::new(shoal_runtime_smol::SmolClock::default()),
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
                clock: options.clock.clone(),
            },
        )?),
        journal: Arc::new(FsTaskJournal::open(datanode.join("tasks.journal"))?),
    })
}

/// Opens in-memory stores (`data_dir` is not touched: nothing survives a restart).
#[cfg(feature = "storage-mem")]
pub fn open_stores(data_dir: &Path, options: &StoreOptions) -> Result<Stores, StorageError> {
    use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
    use shoal_core::storage::{MemRegionStore, MemTaskJournal};
    let _ = data_dir;
    let regions = MemRegionStore::new(options.clock.clone())
        .with_delete_rate(options.delete_rate.unwrap_or(0));
    Ok(Stores {
        log: Arc::new(MemLogStore::new()),
        snapshots: Arc::new(MemSnapshotStore::new()),
        regions: Arc::new(regions),
        journal: Arc::new(MemTaskJournal::new()),
    })
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
