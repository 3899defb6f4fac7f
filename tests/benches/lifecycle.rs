//! Region-lifecycle bench on an in-process cluster (3 DataNodes, in-memory stores):
//! time to create and delete N region groups at RF 3, and the delay from a deletion task
//! finishing on a DataNode to the ConfigNode committing the removal's next step.
//!
//! `cargo bench -p shoal-tests --bench lifecycle` (set `SHOAL_BENCH_GROUPS`, default 1000).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_core::model::RegionId;
use shoal_core::plan::ConfigPlan;
use shoal_core::procedure::{ProcedureView, decode_data};
use shoal_core::procedures::{REMOVE_REGION_GROUP, RemoveRegionGroupData};
use shoal_tests::cluster::{ClusterOptions, TestCluster, db};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// Creates and deletes `groups` groups x RF 3 (each replica loaded with `bytes` and deleted
/// at `rate` bytes/s) and prints the timings.
async fn scenario(label: &str, groups: u32, bytes: usize, rate: Option<u64>) {
    let cluster = TestCluster::start(ClusterOptions {
        delete_rate: rate,
        ..ClusterOptions::default()
    })
    .await;
    let entries_before_create = cluster.log.appends().len();
    let started = Instant::now();
    let info = cluster.create_database("bench", 3, 0, groups).await;
    let create = started.elapsed();
    let create_entries = cluster.log.appends().len() - entries_before_create;
    assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
    if bytes > 0 {
        cluster.load("bench", bytes).await;
    }

    let delete_started = Instant::now();
    let started = delete_started;
    let id = cluster
        .leader()
        .delete_database(db("bench"), None)
        .await
        .expect("submitted");
    let info = cluster.wait(id, Duration::from_secs(600)).await;
    let delete = started.elapsed();
    assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
    assert_eq!(cluster.region_bytes(), 0);

    // Commits of removal procedures, by region, in log order; every entry of the delete.
    let mut commits: BTreeMap<RegionId, Vec<Instant>> = BTreeMap::new();
    let mut delete_entries = 0usize;
    for (at, payload) in cluster.log.appends() {
        if at >= delete_started {
            delete_entries += 1;
        }
        // A step's transition is committed alone or with the metadata change it staged.
        let update = match ConfigPlan::decode(&payload) {
            Ok(ConfigPlan::UpdateProcedure(update)) => Some(update),
            Ok(ConfigPlan::TransitionWithEffect(staged)) => Some(staged.update),
            _ => None,
        };
        if let Some(update) = update
            && update.record.type_code == REMOVE_REGION_GROUP
            && let Ok(data) = decode_data::<RemoveRegionGroupData>(&update.record.data)
        {
            commits.entry(data.region).or_default().push(at);
        }
    }
    let mut delays = Vec::new();
    for slot in &cluster.data_nodes {
        for (region, finished) in slot.timed.finished_deletions() {
            let next = commits
                .get(&region)
                .and_then(|at| at.iter().find(|t| **t >= finished).copied());
            if let Some(next) = next {
                delays.push(next - finished);
            }
        }
    }
    delays.sort();
    // Progress: when each group's removal made its last commit, as a share of the delete.
    let mut done: Vec<f64> = commits
        .values()
        .filter_map(|at| at.last())
        .map(|last| (*last - delete_started).as_secs_f64() / delete.as_secs_f64())
        .collect();
    done.sort_by(f64::total_cmp);
    let tenth_done = done
        .get((done.len() / 10).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let replicas = groups as usize * 3;
    println!("{label}: {groups} groups x RF 3, 3 in-process DataNodes");
    println!(
        "  create: {:>8.1} ms  ({:.0} groups/s, {} log entries)",
        create.as_secs_f64() * 1e3,
        f64::from(groups) / create.as_secs_f64(),
        create_entries
    );
    println!(
        "  delete: {:>8.1} ms  ({:.0} groups/s, {:.0} replica deletions/s)",
        delete.as_secs_f64() * 1e3,
        f64::from(groups) / delete.as_secs_f64(),
        replicas as f64 / delete.as_secs_f64()
    );
    println!(
        "  task finished -> next step committed ({} samples): p50 {:?}  p99 {:?}  max {:?}",
        delays.len(),
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or_default()
    );
    println!(
        "  progress: the first tenth of the groups was removed at {:.0}% of the delete's time; \
         {:.1} log entries per group",
        tenth_done * 100.0,
        delete_entries as f64 / f64::from(groups)
    );
    cluster.shutdown().await;
}

fn main() {
    let groups: u32 = std::env::var("SHOAL_BENCH_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    smol::block_on(async {
        // Throughput: every deletion is instant, so all removals are runnable at once and
        // the latency below includes waiting for a worker behind the others.
        scenario("bulk (instant deletes)", groups, 0, None).await;
        // Latency: deletions take ~50 ms each (64 KiB at 1.25 MiB/s), the executor is idle
        // while they run, as in a real cluster.
        scenario(
            "slow deletes (~50 ms per replica)",
            16,
            64 * 1024,
            Some(1_310_720),
        )
        .await;
    });
}
