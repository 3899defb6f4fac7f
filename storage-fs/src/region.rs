//! [`FsRegionStore`]: a DataNode's region replicas, one directory each.
//!
//! ```text
//! <root>/regions/<kind>-<id>/config   peer membership: "SHOALRGN" | len u32 | crc32c u32 | CBOR(RegionConfig)
//! <root>/regions/<kind>-<id>/data     the replica's data (appended)
//! <root>/regions/.tmp-<kind>-<id>/    a create in progress (removed on open)
//! <root>/trash/<kind>-<id>~<n>/       a deleted replica whose bytes are still being removed
//! ```
//!
//! Create builds the directory under a temp name and renames it into place, so a region is
//! either whole or absent. Delete renames the directory into the trash (atomic: the region is
//! gone from `list` at once), then removes its bytes file by file, truncating large files in
//! chunks and sleeping to honour the delete rate limit. `delete` resolves only once no byte
//! remains. A delete that finds the region already in the trash (a crash between rename and
//! removal) finishes that removal; opening the store finishes every pending removal in the
//! background. Operations on one region are serialised by a per-region lock; no lock covering
//! other regions is ever held while sleeping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shoal_core::model::{DataNodeId, RegionId, RegionKind};
use shoal_core::runtime::Clock;
use shoal_core::storage::{CreateOutcome, DeleteOutcome, RegionConfig, RegionStore, StorageError};

use crate::fsutil::{
    DirSyncGroup, atomic_write, create_dir_durable, frame_blob, io_err, unblock, unframe_blob,
};

const CONFIG_FILE: &str = "config";
const DATA_FILE: &str = "data";
const CONFIG_MAGIC: &[u8; 8] = b"SHOALRGN";
const STAGING_PREFIX: &str = ".tmp-";

/// Tuning of an [`FsRegionStore`].
#[derive(Clone)]
pub struct RegionStoreOptions {
    /// Bytes per second a deletion may remove; `None` removes as fast as the disk allows.
    pub delete_rate: Option<u64>,
    /// The clock deletions sleep on to honour the rate.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RegionStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionStoreOptions")
            .field("delete_rate", &self.delete_rate)
            .finish_non_exhaustive()
    }
}

impl Default for RegionStoreOptions {
    fn default() -> Self {
        Self {
            delete_rate: None,
            clock: Arc::new(shoal_runtime_smol::SmolClock::default()),
        }
    }
}

struct Inner {
    regions: PathBuf,
    trash: PathBuf,
    options: RegionStoreOptions,
    locks: Mutex<BTreeMap<RegionId, Arc<async_lock::Mutex<()>>>>,
    /// Next trash suffix: above every suffix found at open, so a rename never meets an
    /// existing entry.
    trash_seq: AtomicU64,
    /// Regions with trash entries found at open that the purge has not removed yet: a delete
    /// of one of them also looks in the trash for its older entries.
    unpurged: Mutex<std::collections::BTreeSet<RegionId>>,
    /// fsync of `regions/` shared by concurrent creates (their renames into place).
    regions_sync: DirSyncGroup,
    /// fsync of `trash/` and `regions/` shared by concurrent deletes (their renames).
    trash_sync: DirSyncGroup,
    /// Bounds the deletes on the blocking pool at once: enough to share each directory
    /// fsync among many, without thousands of queued deletions each holding a pool thread
    /// (which starves every other thread of a small machine).
    delete_slots: async_lock::Semaphore,
}

/// Deletes on the blocking pool at once (see `Inner::delete_slots`).
const DELETE_SLOTS: usize = 16;

/// File-backed [`RegionStore`]. Clones share one store.
#[derive(Clone)]
pub struct FsRegionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FsRegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsRegionStore")
            .field("regions", &self.inner.regions)
            .finish_non_exhaustive()
    }
}

fn dir_name(region: RegionId) -> String {
    region.to_string()
}

fn parse_dir_name(name: &str) -> Option<RegionId> {
    let (kind, id) = name.split_once('-')?;
    let kind = match kind {
        "schema" => RegionKind::Schema,
        "data" => RegionKind::Data,
        _ => return None,
    };
    Some(RegionId::new(kind, id.parse().ok()?))
}

/// The region a trash entry `<kind>-<id>~<n>` belongs to.
fn parse_trash_name(name: &str) -> Option<RegionId> {
    parse_dir_name(name.split_once('~')?.0)
}

fn encode_config(config: &RegionConfig) -> Result<Vec<u8>, StorageError> {
    let mut body = Vec::new();
    ciborium::into_writer(config, &mut body).map_err(|e| StorageError::Io {
        op: "encode region config",
        path: dir_name(config.region),
        message: e.to_string(),
    })?;
    Ok(frame_blob(CONFIG_MAGIC, &body))
}

fn read_config(dir: &Path) -> Result<Option<RegionConfig>, StorageError> {
    let path = dir.join(CONFIG_FILE);
    let Some(bytes) = crate::fsutil::read_optional(&path)? else {
        return Ok(None);
    };
    let body = unframe_blob(CONFIG_MAGIC, &bytes, &path)?;
    ciborium::from_reader(body)
        .map(Some)
        .map_err(|e| StorageError::Corrupt {
            file: path.display().to_string(),
            offset: 16,
            reason: format!("region config does not decode: {e}"),
        })
}

/// Logical bytes of every data file in `dir` (the config file is not data).
fn data_bytes(dir: &Path) -> Result<Option<u64>, StorageError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list region", dir, e)),
    };
    let mut total = 0;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list region", dir, e))?;
        if entry.file_name() == CONFIG_FILE {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| io_err("stat", &entry.path(), e))?;
        total += meta.len();
    }
    Ok(Some(total))
}

impl FsRegionStore {
    /// Opens (or creates) the store under `root`. Removes half-made regions left by an
    /// interrupted create, and starts finishing every pending trash removal on a background
    /// thread (await [`FsRegionStore::finish_pending_deletes`] to wait for it). Blocking.
    pub fn open(root: impl AsRef<Path>, options: RegionStoreOptions) -> Result<Self, StorageError> {
        let root = root.as_ref();
        let regions = root.join("regions");
        let trash = root.join("trash");
        create_dir_durable(&regions)?;
        create_dir_durable(&trash)?;
        let listing = std::fs::read_dir(&regions).map_err(|e| io_err("list", &regions, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_err("list", &regions, e))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| io_err("remove half-made region", &entry.path(), e))?;
            }
        }
        let pending = list_trash(&trash)?;
        let next_seq = pending
            .values()
            .flatten()
            .filter_map(|path| {
                let name = path.file_name()?.to_string_lossy().into_owned();
                name.rsplit_once('~')?.1.parse::<u64>().ok()
            })
            .max()
            .map_or(0, |max| max + 1);
        let store = Self {
            inner: Arc::new(Inner {
                regions_sync: DirSyncGroup::new(vec![regions.clone()]),
                trash_sync: DirSyncGroup::new(vec![trash.clone(), regions.clone()]),
                regions,
                trash,
                options,
                locks: Mutex::new(BTreeMap::new()),
                trash_seq: AtomicU64::new(next_seq),
                unpurged: Mutex::new(pending.keys().flatten().copied().collect()),
                delete_slots: async_lock::Semaphore::new(DELETE_SLOTS),
            }),
        };
        if !pending.is_empty() {
            let background = store.clone();
            std::thread::Builder::new()
                .name("shoal-trash-purge".into())
                .spawn(move || {
                    if let Err(e) =
                        futures_lite::future::block_on(background.finish_pending_deletes())
                    {
                        tracing::error!(error = %e, "finishing pending region deletions failed");
                    }
                })
                .map_err(|e| io_err("spawn purge thread", root, e))?;
        }
        Ok(store)
    }

    /// Removes every region still in the trash (under the rate limit); returns the bytes
    /// removed. Safe to run alongside deletes: each removal holds its region's lock.
    pub async fn finish_pending_deletes(&self) -> Result<u64, StorageError> {
        let mut total = 0;
        for (region, entries) in self.pending_trash()? {
            match region {
                Some(region) => {
                    let lock = self.region_lock(region);
                    let _guard = lock.lock().await;
                    // Re-list under the lock: a concurrent delete may have finished it.
                    for path in self.trash_entries_of(region)? {
                        total += self.remove_paced(path).await?;
                    }
                    self.unpurged().remove(&region);
                }
                None => {
                    for path in entries {
                        total += self.remove_paced(path).await?;
                    }
                }
            }
        }
        Ok(total)
    }

    /// Trash entries grouped by region (`None`: a name that is no region's).
    fn pending_trash(&self) -> Result<BTreeMap<Option<RegionId>, Vec<PathBuf>>, StorageError> {
        list_trash(&self.inner.trash)
    }

    fn unpurged(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<RegionId>> {
        self.inner
            .unpurged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn trash_entries_of(&self, region: RegionId) -> Result<Vec<PathBuf>, StorageError> {
        Ok(self
            .pending_trash()?
            .remove(&Some(region))
            .unwrap_or_default())
    }

    fn region_lock(&self, region: RegionId) -> Arc<async_lock::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(region).or_default().clone()
    }

    fn region_dir(&self, region: RegionId) -> PathBuf {
        self.inner.regions.join(dir_name(region))
    }

    /// Whether deletions run unpaced (no rate limit): a trash entry is then removed in one
    /// go on the blocking pool.
    fn unpaced(&self) -> bool {
        self.inner.options.delete_rate.is_none_or(|rate| rate == 0)
    }

    /// Removes one trash entry (file or directory) at the delete rate; returns its data bytes.
    async fn remove_paced(&self, path: PathBuf) -> Result<u64, StorageError> {
        if self.unpaced() {
            return unblock(move || remove_now(&path)).await;
        }
        let files = {
            let path = path.clone();
            unblock(move || list_files(&path)).await?
        };
        let mut pacer = Pacer::new(self.inner.options.clone());
        let mut total = 0;
        for (file, len) in files {
            let mut remaining = len;
            while remaining > pacer.chunk() {
                remaining -= pacer.chunk();
                let (f, to) = (file.clone(), remaining);
                unblock(move || truncate_to(&f, to)).await?;
                pacer.removed(pacer.chunk()).await;
            }
            let f = file.clone();
            unblock(move || remove_file_if_present(&f)).await?;
            pacer.removed(remaining).await;
            // Report data bytes, as `size` does; the config file is bookkeeping.
            if file.file_name().is_none_or(|n| n != CONFIG_FILE) {
                total += len;
            }
        }
        // No fsync of the trash after the removal: the rename out of `regions/` was the
        // deletion's durable commit point; an unlink a crash undoes only leaves bytes in the
        // trash, which opening the store removes again.
        unblock(move || match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove trash entry", &path, e)),
        })
        .await?;
        Ok(total)
    }
}

/// Trash entries grouped by region (`None`: a name that is no region's).
fn list_trash(trash: &Path) -> Result<BTreeMap<Option<RegionId>, Vec<PathBuf>>, StorageError> {
    let mut found: BTreeMap<Option<RegionId>, Vec<PathBuf>> = BTreeMap::new();
    let listing = std::fs::read_dir(trash).map_err(|e| io_err("list", trash, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list", trash, e))?;
        let region = parse_trash_name(&entry.file_name().to_string_lossy());
        found.entry(region).or_default().push(entry.path());
    }
    Ok(found)
}

/// Removes a trash entry at once: one listing, a stat and an unlink per file, one rmdir (no
/// re-listing, no fsync: see `remove_paced`). Returns its data bytes (the config file is
/// bookkeeping, as in `size`). An entry already gone counts zero.
fn remove_now(path: &Path) -> Result<u64, StorageError> {
    let listing = match std::fs::read_dir(path) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            let len = std::fs::symlink_metadata(path)
                .map_err(|e| io_err("stat", path, e))?
                .len();
            remove_file_if_present(path)?;
            return Ok(len);
        }
        Err(e) => return Err(io_err("list", path, e)),
    };
    let mut total = 0;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list", path, e))?;
        let file = entry.path();
        let kind = entry.file_type().map_err(|e| io_err("stat", &file, e))?;
        if kind.is_dir() {
            total += remove_now(&file)?;
            continue;
        }
        let len = entry
            .metadata()
            .map_err(|e| io_err("stat", &file, e))?
            .len();
        remove_file_if_present(&file)?;
        if entry.file_name() != CONFIG_FILE {
            total += len;
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(total),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(total),
        Err(e) => Err(io_err("remove trash entry", path, e)),
    }
}

/// Every regular file under `path` with its length (a lone file yields itself).
fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64)>, StorageError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("stat", path, e)),
    };
    if !meta.is_dir() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    let mut out = Vec::new();
    let listing = std::fs::read_dir(path).map_err(|e| io_err("list", path, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list", path, e))?;
        out.extend(list_files(&entry.path())?);
    }
    out.sort();
    Ok(out)
}

fn truncate_to(path: &Path, len: u64) -> Result<(), StorageError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err("open for truncate", path, e))?;
    file.set_len(len).map_err(|e| io_err("truncate", path, e))
}

fn remove_file_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path, e)),
    }
}

/// Sleeps so that bytes removed so far never run ahead of the rate.
struct Pacer {
    options: RegionStoreOptions,
    start_ms: u64,
    done: u64,
}

impl Pacer {
    fn new(options: RegionStoreOptions) -> Self {
        let start_ms = options.clock.now_ms();
        Self {
            options,
            start_ms,
            done: 0,
        }
    }

    /// Bytes removed per step: about 1/20 s worth at the rate (everything when unlimited).
    fn chunk(&self) -> u64 {
        match self.options.delete_rate {
            Some(rate) if rate > 0 => (rate / 20).max(64 << 10),
            _ => u64::MAX,
        }
    }

    async fn removed(&mut self, bytes: u64) {
        let Some(rate) = self.options.delete_rate.filter(|r| *r > 0) else {
            return;
        };
        self.done += bytes;
        let due = self.start_ms + (self.done as u128 * 1000 / rate as u128) as u64;
        let now = self.options.clock.now_ms();
        if due > now {
            self.options
                .clock
                .sleep(Duration::from_millis(due - now))
                .await;
        }
    }
}

#[async_trait]
impl RegionStore for FsRegionStore {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        let lock = self.region_lock(config.region);
        let _guard = lock.lock().await;
        let dir = self.region_dir(config.region);
        let config = config.clone();
        let inner = self.inner.clone();
        unblock(move || {
            if let Some(existing) = read_config(&dir)? {
                return if existing == config {
                    Ok(CreateOutcome::AlreadyExists)
                } else {
                    Err(StorageError::RegionConflict {
                        region: config.region,
                    })
                };
            }
            let regions = &inner.regions;
            let staging = regions.join(format!("{STAGING_PREFIX}{}", dir_name(config.region)));
            match std::fs::create_dir(&staging) {
                Ok(()) => {}
                // Left by an interrupted create of this region: start it afresh.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::remove_dir_all(&staging)
                        .and_then(|()| std::fs::create_dir(&staging))
                        .map_err(|e| io_err("create dir", &staging, e))?;
                }
                Err(e) => return Err(io_err("create dir", &staging, e)),
            }
            let data = staging.join(DATA_FILE);
            // Empty: nothing of its own to fsync; its entry is covered by the staging
            // directory's fsync below.
            std::fs::File::create(&data).map_err(|e| io_err("create data file", &data, e))?;
            // Written in place, not through a temp file: the staging directory is not a
            // region yet, so a torn config there is removed on open. fsync 1: the config's
            // bytes must be on disk before the rename can publish them.
            let config_path = staging.join(CONFIG_FILE);
            let mut file = std::fs::File::create(&config_path)
                .map_err(|e| io_err("create", &config_path, e))?;
            std::io::Write::write_all(&mut file, &encode_config(&config)?)
                .map_err(|e| io_err("write", &config_path, e))?;
            file.sync_all()
                .map_err(|e| io_err("fsync", &config_path, e))?;
            drop(file);
            // fsync 2: the entries of the config and data files, before the directory is
            // published under the region's name.
            crate::fsutil::fsync_dir(&staging)?;
            // The region appears whole or not at all.
            std::fs::rename(&staging, &dir).map_err(|e| io_err("rename region", &dir, e))?;
            // fsync 3, shared by concurrent creates: the rename into `regions/` is durable
            // before the create is answered.
            inner.regions_sync.sync()?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        let lock = self.region_lock(region);
        let _guard = lock.lock().await;
        let dir = self.region_dir(region);
        let bytes = bytes.to_vec();
        unblock(move || {
            if !dir.join(CONFIG_FILE).exists() {
                return Err(StorageError::RegionNotFound(region));
            }
            let path = dir.join(DATA_FILE);
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| io_err("open data", &path, e))?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(|e| io_err("append data", &path, e))?;
            file.sync_data()
                .map_err(|e| io_err("fdatasync data", &path, e))?;
            data_bytes(&dir)?.ok_or(StorageError::RegionNotFound(region))
        })
        .await
    }

    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        let lock = self.region_lock(region);
        let _guard = lock.lock().await;
        let dir = self.region_dir(region);
        let peers = peers.to_vec();
        unblock(move || {
            let mut config = read_config(&dir)?.ok_or(StorageError::RegionNotFound(region))?;
            config.peers = peers;
            atomic_write(&dir.join(CONFIG_FILE), &encode_config(&config)?)
        })
        .await
    }

    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        let lock = self.region_lock(region);
        // Held until every byte is gone: a second delete of the same region waits for this
        // one instead of answering NotFound while bytes remain.
        let _guard = lock.lock().await;
        let dir = self.region_dir(region);
        let seq = self.inner.trash_seq.fetch_add(1, Ordering::Relaxed);
        let target = self.inner.trash.join(format!("{}~{seq}", dir_name(region)));
        let older = self.unpurged().contains(&region);
        let unpaced = self.unpaced();
        let store = self.clone();
        // One trip to the blocking pool for the rename, its fsyncs and (unpaced) the removal.
        let slot = self.inner.delete_slots.acquire().await;
        let (renamed, removed) = unblock(move || {
            let renamed = match std::fs::rename(&dir, &target) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err("move region to trash", &dir, e)),
            };
            if renamed {
                // The deletion's commit point, durable before anything is removed or
                // answered: out of `regions/` (else the region comes back after a crash) and
                // into `trash/` (else its bytes are lost to the purge). Two directory fsyncs,
                // shared by concurrent deletes.
                store.inner.trash_sync.sync()?;
            }
            if renamed && unpaced && !older {
                return Ok((true, Some(remove_now(&target)?)));
            }
            Ok::<_, StorageError>((renamed, None))
        })
        .await?;
        drop(slot);
        let bytes = match removed {
            Some(bytes) => bytes,
            None => {
                // A retry after a crash between the rename and the removal, older entries
                // of this region found at open, or a paced deletion: every entry of the
                // region in the trash, at the delete rate.
                let entries = {
                    let store = self.clone();
                    unblock(move || store.trash_entries_of(region)).await?
                };
                if !renamed && entries.is_empty() {
                    return Ok(DeleteOutcome::NotFound);
                }
                let mut bytes = 0;
                for path in entries {
                    bytes += self.remove_paced(path).await?;
                }
                self.unpurged().remove(&region);
                bytes
            }
        };
        tracing::info!(%region, bytes, "region deleted");
        Ok(DeleteOutcome::Deleted { bytes })
    }

    fn delete_detaches_membership(&self) -> bool {
        // The rename into the trash takes the config (the membership) and the data out of
        // the namespace together.
        true
    }

    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        let regions = self.inner.regions.clone();
        unblock(move || {
            let mut out = Vec::new();
            let listing = std::fs::read_dir(&regions).map_err(|e| io_err("list", &regions, e))?;
            for entry in listing {
                let entry = entry.map_err(|e| io_err("list", &regions, e))?;
                if parse_dir_name(&entry.file_name().to_string_lossy()).is_none() {
                    continue;
                }
                // A region moved to the trash between listing and reading is simply gone.
                if let Some(config) = read_config(&entry.path())? {
                    out.push(config);
                }
            }
            out.sort_by_key(|c| c.region);
            Ok(out)
        })
        .await
    }

    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        let dir = self.region_dir(region);
        unblock(move || data_bytes(&dir)).await
    }

    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let dir = self.region_dir(region);
        unblock(move || {
            let path = dir.join(DATA_FILE);
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::RegionNotFound(region));
                }
                Err(e) => return Err(io_err("open data", &path, e)),
            };
            let len = file
                .metadata()
                .map_err(|e| io_err("stat data", &path, e))?
                .len();
            let want = usize::try_from(len.saturating_sub(offset))
                .unwrap_or(usize::MAX)
                .min(max_len);
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match std::os::unix::fs::FileExt::read_at(
                    &file,
                    &mut buf[filled..],
                    offset + filled as u64,
                ) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("read data", &path, e)),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
    }

    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        let lock = self.region_lock(region);
        let _guard = lock.lock().await;
        let dir = self.region_dir(region);
        unblock(move || {
            use std::os::unix::fs::FileExt;
            if !dir.join(CONFIG_FILE).exists() {
                return Err(StorageError::RegionNotFound(region));
            }
            let path = dir.join(DATA_FILE);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_err("open data", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| io_err("stat data", &path, e))?
                .len();
            if offset > len {
                return Err(StorageError::Unavailable(format!(
                    "write of {region} at {offset} is past its end ({len})"
                )));
            }
            if offset < len {
                file.set_len(offset)
                    .map_err(|e| io_err("truncate data", &path, e))?;
            }
            file.write_all_at(&bytes, offset)
                .map_err(|e| io_err("write data", &path, e))?;
            Ok(offset + bytes.len() as u64)
        })
        .await
    }

    async fn sync(&self, region: RegionId) -> Result<(), StorageError> {
        let lock = self.region_lock(region);
        let _guard = lock.lock().await;
        let dir = self.region_dir(region);
        unblock(move || {
            let path = dir.join(DATA_FILE);
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => file
                    .sync_data()
                    .map_err(|e| io_err("fdatasync data", &path, e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StorageError::RegionNotFound(region))
                }
                Err(e) => Err(io_err("open data", &path, e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests;
