//! Time to drain a DataNode that holds 1,000 small replicas, on an in-process cluster (4
//! DataNodes, in-memory stores, RF 3): `shoal datanode remove` moves each replica (create
//! on the target, copy, verify, publish, delete the old one) to the one DataNode outside
//! its group.
//!
//! `cargo bench -p shoal-tests --bench drain` (`SHOAL_BENCH_REPLICAS`, default 1000;
//! `SHOAL_BENCH_REPLICA_BYTES`, default 4096).

use std::time::Instant;

use shoal_core::model::DataNodeId;
use shoal_core::procedure::ProcedureView;
use shoal_tests::cluster::{ClusterOptions, TestCluster, replicas_of};

fn main() {
    let env_or = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let replicas = env_or("SHOAL_BENCH_REPLICAS", 1000);
    let bytes = env_or("SHOAL_BENCH_REPLICA_BYTES", 4096);
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions {
            data_nodes: 4,
            ..ClusterOptions::default()
        })
        .await;
        // With 4 DataNodes at RF 3, each holds 3/4 of the groups.
        let groups = (replicas * 4).div_ceil(3) as u32;
        let info = cluster.create_database("drain", 3, 0, groups).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        cluster.load("drain", bytes).await;
        let leaving = DataNodeId(0);
        let held = replicas_of(&cluster, "drain")
            .iter()
            .filter(|(_, r)| r.contains(&leaving))
            .count();
        let started = Instant::now();
        let id = cluster
            .leader()
            .remove_data_node(leaving, false, None)
            .await
            .expect("removal submitted");
        let done = cluster.wait(id, std::time::Duration::from_secs(600)).await;
        let elapsed = started.elapsed();
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        assert!(
            replicas_of(&cluster, "drain")
                .iter()
                .all(|(_, r)| r.len() == 3 && !r.contains(&leaving))
        );
        println!(
            "drained {leaving}: {held} replicas of {bytes} B in {:.2} s ({:.0} replicas/s, \
             {} groups on 4 DataNodes, RF 3)",
            elapsed.as_secs_f64(),
            held as f64 / elapsed.as_secs_f64(),
            groups
        );
        cluster.shutdown().await;
    });
}
