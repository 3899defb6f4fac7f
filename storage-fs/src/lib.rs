//! File-system implementations of shoal-core's storage traits.
//!
//! - [`FsLogStore`]: the ConfigNode's consensus log in preallocated segment files with group
//!   commit (the first `sync` caller leads a write + `fdatasync` on a blocking thread; callers
//!   arriving meanwhile share the next one).
//! - [`FsSnapshotStore`]: ConfigNode snapshots, replaced atomically, last N kept.
//! - [`FsRegionStore`]: a DataNode's region replicas, one directory each; rate-limited
//!   deletion through a trash area.
//! - [`FsTaskJournal`]: the DataNode's append-only, checksummed task journal; a failed write
//!   poisons it until reopened, and reopening refuses damage followed by a whole record.
//! - [`FsStateFile`]: one small blob replaced atomically (a Raft node's vote).
//!
//! Every file that must survive a crash is written with fsync before it is relied on, and
//! every directory change (create, rename, unlink) is followed by an fsync of the directory.

mod fsutil;
pub mod journal;
pub mod log;
pub mod region;
pub mod snapshot;
pub mod state_file;

pub use journal::FsTaskJournal;
pub use log::{FsLogStore, LogOptions, RecoveryReport, TornTail};
pub use region::{FsRegionStore, RegionStoreOptions};
pub use snapshot::{FsSnapshotStore, SnapshotIndexFn};
pub use state_file::FsStateFile;
