//! Calls/s and p50/p99 latency of a cheap DataNode call (`task_result` of an unknown id)
//! over Cap'n Proto on loopback TCP versus the in-process transport
//! (`shoal-transport-inproc`): sequential, and 64 calls in flight, in one run.
//!
//! Run: `cargo bench -p shoal-transport-capnp --bench rpc` (env `SHOAL_BENCH_CALLS` sets the
//! number of calls per scenario, default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, SubmitOutcome,
    TaskStatus,
};
use shoal_core::model::{Epoch, RegionId, TaskId};
use shoal_runtime_smol::smol_runtime;
use shoal_transport_capnp::{
    CapnpDataNodeClient, ClientOptions, RpcRuntime, ServedApis, ServerOptions,
};
use shoal_transport_inproc::InprocNetwork;

/// A DataNode that holds no tasks: `task_result` answers `NotExist` at once, which makes it
/// the cheapest real call; everything else is refused.
struct EmptyDataNode;

fn refused() -> ApiError {
    ApiError::Refused("bench node holds nothing".into())
}

#[async_trait]
impl DataNodeApi for EmptyDataNode {
    async fn create_region(&self, _: Epoch, _: CreateRegionRequest) -> Result<(), ApiError> {
        Err(refused())
    }
    async fn delete_region(&self, _: Epoch, _: RegionId) -> Result<(), ApiError> {
        Err(refused())
    }
    async fn write_region(&self, _: RegionId, _: Vec<u8>) -> Result<u64, ApiError> {
        Err(refused())
    }
    async fn submit_task(&self, _: Epoch, _: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        Err(refused())
    }
    async fn task_result(&self, _: TaskId, _: Option<Duration>) -> Result<TaskStatus, ApiError> {
        Ok(TaskStatus::NotExist)
    }
    async fn ack_task(&self, _: Epoch, _: TaskId) -> Result<(), ApiError> {
        Err(refused())
    }
    async fn heartbeat(&self, _: Epoch) -> Result<HeartbeatReport, ApiError> {
        Err(refused())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn report(name: &str, total: Duration, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{name:<34} {:>9.0} calls/s   p50 {:>8.1} us   p99 {:>8.1} us   ({} calls)",
        latencies.len() as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.len(),
    );
}

async fn timed_calls(client: Arc<dyn DataNodeApi>, calls: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..calls {
        let start = Instant::now();
        let status = client.task_result(TaskId(i as u64), None).await;
        latencies.push(start.elapsed());
        assert_eq!(status, Ok(TaskStatus::NotExist), "bench call failed");
    }
    latencies
}

fn main() {
    let calls: usize = std::env::var("SHOAL_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let server_rt = RpcRuntime::start("bench-server").expect("rpc thread");
    let server = server_rt
        .serve(
            "127.0.0.1:0",
            "bench",
            ServedApis::data_node(Arc::new(EmptyDataNode)),
            ServerOptions::default(),
        )
        .expect("serve");
    let client_rt = RpcRuntime::start("bench-client").expect("rpc thread");
    let client = CapnpDataNodeClient::new(
        &client_rt,
        &server.local_addr().to_string(),
        ClientOptions::new(shoal_transport_capnp::Role::ConfigNode, "bench"),
    )
    .expect("client");

    let capnp: Arc<dyn DataNodeApi> = Arc::new(client);
    let network = InprocNetwork::<dyn DataNodeApi>::new(smol_runtime(), Duration::from_secs(10));
    network.host("dn", Arc::new(EmptyDataNode));
    let inproc: Arc<dyn DataNodeApi> = Arc::new(network.client("bench", "dn"));

    smol::block_on(async {
        for (name, client) in [("capnp loopback", capnp), ("inproc", inproc)] {
            // Warm up: connect, log in, fill caches.
            timed_calls(client.clone(), 1_000).await;

            let start = Instant::now();
            let latencies = timed_calls(client.clone(), calls).await;
            report(&format!("{name}, sequential"), start.elapsed(), latencies);

            let in_flight = 64;
            let start = Instant::now();
            let workers: Vec<_> = (0..in_flight)
                .map(|_| smol::spawn(timed_calls(client.clone(), calls / in_flight)))
                .collect();
            let mut latencies = Vec::with_capacity(calls);
            for worker in workers {
                latencies.extend(worker.await);
            }
            report(&format!("{name}, 64 in flight"), start.elapsed(), latencies);
        }
    });
}
