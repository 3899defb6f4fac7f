//! The single-node data directory fixture (`tests/fixtures/single-node-v1/`): what a
//! ConfigNode of the release before replicated ConfigNodes left on disk, loaded by every later
//! build (directly as a single ConfigNode, and imported into a new Raft group).
//!
//! It was written by [`generate`] (`cargo run -p shoal-tests --bin gen-upgrade-fixture`)
//! with that release's code: a ConfigNode on `LocalConsensus` over storage-fs's segment log
//! and snapshot store, in the `shoal` layout (`confignode/log/`, `confignode/snapshots/`),
//! with three in-process DataNodes. It holds:
//! - DataNodes 0, 1, 2 at `127.0.0.1:17000..=17002` (the addresses of
//!   [`crate::cluster::DataNodeSlot`]s 0..=2);
//! - database [`KEPT`] (1 schema + 2 data groups, RF 3), complete;
//! - database [`DELETING`] (1 schema + 1 data group, RF 3), marked deleting, its
//!   `DeleteDatabase` procedure unfinished with its region removals under way (their
//!   DataNode tasks were submitted and never finished: the deletions were held);
//! - a snapshot taken after both databases were created, and the log after it;
//! - epoch [`EPOCH`]: the node campaigned twice (a restart).
//!
//! Segments are 64 KiB (a `LogOptions` knob) so the fixture stays small; the segment
//! format does not depend on the size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_core::api::DataNodeApi;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::model::{DataNodeId, DatabaseSchema, ReplicationFactor};
use shoal_core::procedure::ProcedureView;
use shoal_runtime_smol::smol_runtime;
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};
use shoal_transport_inproc::InprocNetwork;

use crate::cluster::{DataNodeSlot, NetClients, db, fast_config};

/// The fixture's directory (a data directory: `confignode/` inside).
pub const SINGLE_NODE_V1: &str = "single-node-v1";
/// The database the fixture keeps.
pub const KEPT: &str = "metrics";
/// The database the fixture is deleting.
pub const DELETING: &str = "logs";
/// The epoch the fixture's ConfigNode led at last.
pub const EPOCH: u64 = 2;

/// Where the fixture lives in the source tree.
pub fn fixture_path() -> PathBuf {
    crate::fixtures::fixture_dir().join(SINGLE_NODE_V1)
}

fn schema(name: &str, rf: u8) -> DatabaseSchema {
    let rf = ReplicationFactor::new(rf).expect("rf");
    DatabaseSchema {
        name: db(name),
        schema_replication_factor: rf,
        data_replication_factor: rf,
    }
}

async fn confignode(
    dir: &Path,
    network: &InprocNetwork<dyn DataNodeApi>,
) -> Result<(Arc<LocalConsensus>, Arc<ConfigNode>), String> {
    let log = FsLogStore::open(
        dir.join("confignode/log"),
        LogOptions {
            segment_size: 64 << 10,
            ..LogOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let snapshots =
        FsSnapshotStore::open(dir.join("confignode/snapshots"), 3).map_err(|e| e.to_string())?;
    let consensus = Arc::new(LocalConsensus::new(Arc::new(log), Arc::new(snapshots)));
    let node = ConfigNode::new(
        consensus.clone() as Arc<dyn Consensus>,
        Arc::new(NetClients {
            network: network.clone(),
            from: "cn".into(),
        }),
        smol_runtime(),
        ConfigNodeConfig {
            // No DataNode is marked unknown while deletions are held.
            misses_before_unknown: 1_000,
            ..fast_config()
        },
    )
    .map_err(|e| e.to_string())?;
    consensus.campaign().await.map_err(|e| e.to_string())?;
    node.start();
    node.executor().wait_running().await;
    Ok((consensus, node))
}

/// Writes the fixture into `dir` (which must not exist yet). See the module docs.
pub async fn generate(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        return Err(format!(
            "{} exists; released fixtures never change",
            dir.display()
        ));
    }
    let runtime = smol_runtime();
    let network =
        InprocNetwork::<dyn DataNodeApi>::new(runtime.clone(), Duration::from_millis(300));
    let slots: Vec<Arc<DataNodeSlot>> = (0..3)
        .map(|i| DataNodeSlot::new(i, &runtime, None))
        .collect();
    for (i, slot) in slots.iter().enumerate() {
        slot.start(DataNodeId(i as u32), &runtime, &network).await;
    }
    // First incarnation: register the DataNodes, create both databases, snapshot.
    let (consensus, node) = confignode(dir, &network).await?;
    for slot in &slots {
        node.register_data_node(None, slot.address.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    for (name, data_groups) in [(KEPT, 2), (DELETING, 1)] {
        let id = node
            .create_database(
                schema(name, 3),
                1,
                data_groups,
                Some(format!("create-{name}")),
            )
            .await
            .map_err(|e| e.to_string())?;
        let info = node.wait_procedure(id).await.map_err(|e| e.to_string())?;
        if info.status != ProcedureView::Succeeded {
            return Err(format!("creating {name}: {info:?}"));
        }
    }
    consensus.take_snapshot().await.map_err(|e| e.to_string())?;
    node.shutdown().await;
    drop((node, consensus));

    // Second incarnation (a restart, epoch 2): start deleting, with every deletion held.
    let (consensus, node) = confignode(dir, &network).await?;
    for slot in &slots {
        slot.store.hold_deletes();
    }
    node.delete_database(db(DELETING), Some(format!("delete-{DELETING}")))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Both removals (schema and data group) hold a deletion on their first DataNode.
    while slots.iter().map(|s| s.store.held_deletes()).sum::<usize>() < 2 {
        if std::time::Instant::now() > deadline {
            return Err("the deletion never reached the DataNodes".into());
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
    let epoch = consensus.leadership().get().epoch;
    if epoch.0 != EPOCH {
        return Err(format!(
            "led at {epoch}, the fixture documents epoch {EPOCH}"
        ));
    }
    node.shutdown().await;
    for slot in &slots {
        slot.stop(&network);
        slot.store.release_deletes();
    }
    Ok(())
}
