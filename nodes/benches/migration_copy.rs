//! Migration copy throughput, side by side with `cp` of the same bytes on the same disk.
//!
//! Two DataNodes over the file stores (`storage-fs`), served over Cap'n Proto on 127.0.0.1;
//! the target runs a `CopyRegion` task pulling the source's region in checksummed 1 MiB
//! chunks (made durable at the end), then both digests are compared as a migration's
//! Verify step does. The baseline copies the source's data file with `cp` (and then
//! fsyncs the copy, since the copy task's result is durable). Everything runs in one
//! process, one after the other, on the same files (warm page cache for both).
//!
//! `cargo bench -p shoal-nodes --bench migration_copy` (`SHOAL_BENCH_COPY_MIB`, default
//! 256; `SHOAL_BENCH_DIR`, default the target's temp dir).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::api::{
    CreateRegionRequest, DataNodeApi, MaintainTask, MaintainTaskKind, TaskStatus,
};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, Epoch, RegionId, RegionKind, TaskId,
};
use shoal_nodes::clients::CapnpDataNodeClients;
use shoal_nodes::storage::{StoreOptions, open_datanode_stores};
use shoal_runtime_smol::smol_runtime;
use shoal_transport_capnp::{
    ClientOptions, Role, RpcRuntime, ServedApis, ServerOptions, ServerSecrets,
};

const SECRET: &str = "bench-secret";
const E: Epoch = Epoch(1);
/// Measurement rounds; the medians are printed.
const ROUNDS: usize = 3;

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::var("SHOAL_BENCH_COPY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let bytes = mib << 20;
    let base = std::env::var("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base)?;
    let root = tempfile::tempdir_in(&base)?;
    let runtime = smol_runtime();
    // One RPC thread per DataNode, as each DataNode process has its own.
    let rpcs = [RpcRuntime::start("source")?, RpcRuntime::start("target")?];
    let region = RegionId::new(RegionKind::Data, 1);
    let env_or = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let defaults = DataNodeConfig::default();
    let config = DataNodeConfig {
        copy_chunk_bytes: env_or(
            "SHOAL_BENCH_CHUNK_KIB",
            u64::from(defaults.copy_chunk_bytes >> 10),
        ) as u32
            * 1024,
        copy_window: env_or("SHOAL_BENCH_WINDOW", defaults.copy_window as u64) as usize,
        ..defaults
    };
    smol::block_on(async {
        let mut nodes = Vec::new();
        let mut servers = Vec::new();
        for (name, rpc) in ["source", "target"].into_iter().zip(&rpcs) {
            let stores = open_datanode_stores(
                &root.path().join(name),
                &StoreOptions {
                    clock: runtime.clock.clone(),
                    ..StoreOptions::default()
                },
            )?;
            let node = DataNode::open(
                runtime.clone(),
                stores.regions,
                stores.journal,
                config.clone(),
            )
            .await?;
            node.set_peer_clients(Arc::new(CapnpDataNodeClients::new(
                rpc.clone(),
                ClientOptions::new(Role::DataNode, SECRET),
            )));
            let server = rpc.serve(
                "127.0.0.1:0",
                ServerSecrets::new(SECRET, "bench-admin"),
                ServedApis::data_node(Arc::new(node.clone())),
                ServerOptions::default(),
            )?;
            nodes.push((node, server.local_addr().to_string()));
            servers.push(server);
        }
        let (source, source_addr) = &nodes[0];
        let (target, _) = &nodes[1];
        let create = CreateRegionRequest {
            region,
            database: DatabaseName::new("bench")?,
            peers: vec![DataNodeId(0), DataNodeId(1)],
            generation: 1,
        };
        source.create_region(E, create.clone()).await?;
        target.create_region(E, create.clone()).await?;
        let mut written = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while written < bytes {
            let chunk: Vec<u8> = (0..(8 << 20).min(bytes - written))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            written = source.write_region(region, chunk).await?;
        }
        let data = root
            .path()
            .join("source/datanode/regions")
            .join(region.to_string())
            .join("data");

        // Rounds of: cp, cp + fsync, the copy task (durable at its end), digests. Dirty
        // pages are flushed between measurements, so none pays for another's writeback.
        let flush = || std::process::Command::new("sync").status();
        let location = DataNodeLocation::new(DataNodeId(0), source_addr.clone())?;
        let cp_target = root.path().join("cp-copy");
        let (mut cps, mut cp_syncs, mut copies, mut verifies) = (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            flush()?;
            let start = Instant::now();
            let status = std::process::Command::new("cp")
                .arg(&data)
                .arg(&cp_target)
                .status()?;
            cps.push(start.elapsed());
            assert!(status.success(), "cp failed");
            std::fs::File::open(&cp_target)?.sync_all()?;
            cp_syncs.push(start.elapsed());
            std::fs::remove_file(&cp_target)?;
            flush()?;

            if round > 0 {
                // A fresh, empty target replica (the previous round's copy is dropped).
                target.delete_region(E, region).await?;
                target.create_region(E, create.clone()).await?;
                flush()?;
            }
            let task = TaskId(round as u64 + 1);
            let start = Instant::now();
            target
                .submit_task(
                    E,
                    MaintainTask {
                        task_id: task,
                        kind: MaintainTaskKind::CopyRegion {
                            region,
                            source: location.clone(),
                        },
                    },
                )
                .await?;
            let status = loop {
                let status = target
                    .task_result(task, Some(Duration::from_secs(5)))
                    .await?;
                if status.is_terminal() {
                    break status;
                }
            };
            copies.push(start.elapsed());
            assert_eq!(status, TaskStatus::Success, "copy failed");
            let start = Instant::now();
            let (ours, theirs) = futures_lite::future::zip(
                target.region_digest(region, None),
                source.region_digest(region, None),
            )
            .await;
            verifies.push(start.elapsed());
            assert_eq!(ours?, theirs?, "copy differs from its source");
        }
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (cp, cp_sync, copy) = (median(cps), median(cp_syncs), median(copies));
        let total = copy + median(verifies);

        println!(
            "migration copy of {mib} MiB in {} ({} KiB chunks, {} in flight; median of {ROUNDS} \
             rounds, dirty pages flushed between measurements)",
            base.display(),
            config.copy_chunk_bytes >> 10,
            config.copy_window
        );
        println!(
            "  cp                      {:>8.1} ms  {:>8.1} MiB/s",
            cp.as_secs_f64() * 1e3,
            mib_per_s(bytes, cp)
        );
        println!(
            "  cp + fsync              {:>8.1} ms  {:>8.1} MiB/s",
            cp_sync.as_secs_f64() * 1e3,
            mib_per_s(bytes, cp_sync)
        );
        println!(
            "  CopyRegion task         {:>8.1} ms  {:>8.1} MiB/s  ({:.2}x cp, {:.2}x cp + fsync)",
            copy.as_secs_f64() * 1e3,
            mib_per_s(bytes, copy),
            cp.as_secs_f64() / copy.as_secs_f64(),
            cp_sync.as_secs_f64() / copy.as_secs_f64()
        );
        println!(
            "  copy + digest verify    {:>8.1} ms  {:>8.1} MiB/s  ({:.2}x cp, {:.2}x cp + fsync)",
            total.as_secs_f64() * 1e3,
            mib_per_s(bytes, total),
            cp.as_secs_f64() / total.as_secs_f64(),
            cp_sync.as_secs_f64() / total.as_secs_f64()
        );
        for server in servers {
            server.shutdown().await;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
