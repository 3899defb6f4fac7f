//! Opens the storage backend chosen at build time (feature `storage-fs`, the default, or
//! `storage-mem`) for a node's data directory.
//!
//! Layout under the data directory with `storage-fs`:
//! `confignode/log/` (a single ConfigNode's consensus log), `confignode/snapshots/`,
//! `confignode/raft/` (a replicated ConfigNode's Raft log, vote, snapshots and node id),
//! `datanode/` (regions and trash), `datanode/tasks.journal`.

use std::path::Path;
use std::sync::Arc;

use shoal_consensus_raft::RaftStores;
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

/// A ConfigNode's stores, behind core's traits.
#[derive(Clone)]
pub struct ConfigNodeStores {
    /// The consensus log.
    pub log: Arc<dyn LogStore>,
    /// Snapshots of the applied state.
    pub snapshots: Arc<dyn SnapshotStore>,
}

/// A DataNode's stores, behind core's traits.
#[derive(Clone)]
pub struct DataNodeStores {
    /// Region replicas and their data.
    pub regions: Arc<dyn RegionStore>,
    /// The task journal.
    pub journal: Arc<dyn TaskJournal>,
}

impl std::fmt::Debug for ConfigNodeStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigNodeStores")
            .field("backend", &BACKEND)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DataNodeStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataNodeStores")
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

/// Opens (recovering as needed) a ConfigNode's stores under `data_dir/confignode`.
/// Blocking: call at start-up.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub fn open_confignode_stores(
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<ConfigNodeStores, StorageError> {
    use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};
    let dir = data_dir.join("confignode");
    // A torn tail was logged at WARN by recovery; the report stays readable on the store.
    let log = FsLogStore::open(dir.join("log"), LogOptions::default())?;
    let snapshots = FsSnapshotStore::open(dir.join("snapshots"), options.snapshots_kept)?;
    Ok(ConfigNodeStores {
        log: Arc::new(log),
        snapshots: Arc::new(snapshots),
    })
}

/// Opens (recovering as needed, finishing pending trash removal) a DataNode's stores under
/// `data_dir/datanode`. Blocking: call at start-up.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub fn open_datanode_stores(
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<DataNodeStores, StorageError> {
    use shoal_storage_fs::{FsRegionStore, FsTaskJournal, RegionStoreOptions};
    let dir = data_dir.join("datanode");
    let regions = FsRegionStore::open(
        &dir,
        RegionStoreOptions {
            delete_rate: options.delete_rate,
            clock: options.clock.clone(),
        },
    )?;
    let journal = FsTaskJournal::open(dir.join("tasks.journal"))?;
    Ok(DataNodeStores {
        regions: Arc::new(regions),
        journal: Arc::new(journal),
    })
}

/// Opens (recovering as needed) the Raft stores of a replicated ConfigNode in `dir` (the
/// group's directory, `DATA_DIR/confignode/raft`). Blocking: call at start-up.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub fn open_raft_stores(dir: &Path) -> Result<RaftStores, StorageError> {
    RaftStores::open_fs(dir, shoal_storage_fs::LogOptions::default())
}

/// Whether `data_dir` holds a single-node ConfigNode's log or snapshots (something a new
/// group can import). Never creates anything.
#[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
pub fn has_single_node_state(data_dir: &Path) -> Result<bool, StorageError> {
    let dir = data_dir.join("confignode");
    if !dir.join("log").is_dir() && !dir.join("snapshots").is_dir() {
        return Ok(false);
    }
    let stores = open_confignode_stores(data_dir, &StoreOptions::default())?;
    let snapshot = futures_lite::future::block_on(stores.snapshots.load_latest())?;
    Ok(stores.log.last_index() > 0 || snapshot.is_some())
}

/// In-memory Raft stores (`dir` is not touched: nothing survives a restart).
#[cfg(feature = "storage-mem")]
pub fn open_raft_stores(dir: &Path) -> Result<RaftStores, StorageError> {
    let _ = dir;
    Ok(RaftStores::memory())
}

/// The mem backend keeps nothing across restarts: there is never a single-node state to
/// import.
#[cfg(feature = "storage-mem")]
pub fn has_single_node_state(data_dir: &Path) -> Result<bool, StorageError> {
    let _ = data_dir;
    Ok(false)
}

/// Opens in-memory ConfigNode stores (`data_dir` is not touched: nothing survives a restart).
#[cfg(feature = "storage-mem")]
pub fn open_confignode_stores(
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<ConfigNodeStores, StorageError> {
    use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
    let _ = (data_dir, options);
    Ok(ConfigNodeStores {
        log: Arc::new(MemLogStore::new()),
        snapshots: Arc::new(MemSnapshotStore::new()),
    })
}

/// Opens in-memory DataNode stores (`data_dir` is not touched: nothing survives a restart).
#[cfg(feature = "storage-mem")]
pub fn open_datanode_stores(
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<DataNodeStores, StorageError> {
    use shoal_core::storage::{MemRegionStore, MemTaskJournal};
    let _ = data_dir;
    let regions = MemRegionStore::new(options.clock.clone())
        .with_delete_rate(options.delete_rate.unwrap_or(0));
    Ok(DataNodeStores {
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

    fn open(dir: &Path) -> (ConfigNodeStores, DataNodeStores) {
        let options = StoreOptions::default();
        (
            open_confignode_stores(dir, &options).expect("confignode stores"),
            open_datanode_stores(dir, &options).expect("datanode stores"),
        )
    }

    /// Writes one thing into every store.
    fn fill((cn, dn): &(ConfigNodeStores, DataNodeStores)) {
        futures_lite::future::block_on(async {
            let index = cn.log.append(1, b"plan").expect("append");
            cn.log.sync(index).await.expect("sync");
            dn.regions.create(&config()).await.expect("create");
            dn.journal.append(b"task".to_vec()).await.expect("journal");
        });
    }

    #[cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]
    #[test]
    fn fs_backend_keeps_everything_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(BACKEND, "fs");
        fill(&open(dir.path()));
        let (cn, dn) = open(dir.path());
        assert_eq!(cn.log.last_index(), 1);
        futures_lite::future::block_on(async {
            assert_eq!(dn.regions.list().await.expect("list"), vec![config()]);
            assert_eq!(
                dn.journal.load().await.expect("load"),
                vec![b"task".to_vec()]
            );
        });
        assert!(dir.path().join("confignode/log").is_dir());
        // Each role opens only its own stores.
        let only_dn = tempfile::tempdir().expect("tempdir");
        open_datanode_stores(only_dn.path(), &StoreOptions::default()).expect("open");
        assert!(!only_dn.path().join("confignode").exists());
    }

    #[cfg(feature = "storage-mem")]
    #[test]
    fn mem_backend_writes_nothing_to_disk_and_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(BACKEND, "mem");
        let stores = open(dir.path());
        fill(&stores);
        assert_eq!(stores.0.log.last_index(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the mem backend touched the data dir"
        );
        let (fresh, _) = open(dir.path());
        assert_eq!(fresh.log.last_index(), 0);
    }
}
