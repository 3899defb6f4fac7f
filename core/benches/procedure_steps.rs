//! Durable procedure steps per second on the in-memory log, for 1 procedure and for 1,000
//! concurrent procedures. Every step is one committed `UpdateProcedure` (CBOR encode, log
//! append, apply). Run: `cargo bench -p shoal-core --features testing --bench procedure_steps`.

use std::sync::Arc;
use std::time::Instant;

use shoal_core::consensus::LocalConsensus;
use shoal_core::procedure::examples::{CounterProcedure, ExampleWorld, example_registry};
use shoal_core::procedure::{ExecutorConfig, ProcedureExecutor, ProcedureView, RetentionPolicy};
use shoal_core::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};

struct ExSpawner(Arc<smol::Executor<'static>>);

impl Spawner for ExSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

fn measure(procedures: usize, steps: u32) -> f64 {
    let ex = Arc::new(smol::Executor::new());
    let runtime = Runtime {
        clock: Arc::new(ManualClock::new()),
        spawner: Arc::new(ExSpawner(ex.clone())),
        rng: Arc::new(SeededRng::new(1)),
    };
    smol::block_on(ex.run(async move {
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(MemLogStore::new()),
            Arc::new(MemSnapshotStore::new()),
        ));
        consensus.campaign().await.expect("campaign");
        let registry = Arc::new(example_registry().expect("registry"));
        let config = ExecutorConfig {
            workers: 8,
            retention: RetentionPolicy {
                max_finished: procedures + 1,
                check_every: None,
                ..RetentionPolicy::default()
            },
            ..ExecutorConfig::default()
        };
        let executor = ProcedureExecutor::new(
            consensus,
            registry,
            runtime,
            Arc::new(ExampleWorld::new()),
            config,
        );
        executor.start();
        executor.wait_running().await;
        #[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
        let started = Instant::now();
        let mut ids = Vec::with_capacity(procedures);
        for i in 0..procedures {
            let p = CounterProcedure::new(&format!("bench{i}"), steps);
            ids.push(executor.submit(Box::new(p), None).await.expect("submit"));
        }
        for id in ids {
            let info = executor.wait_finished(id).await.expect("finished");
            assert_eq!(info.status, ProcedureView::Succeeded);
        }
        let elapsed = started.elapsed().as_secs_f64();
        executor.shutdown().await;
        // Each procedure commits `steps` counted steps plus its final Done.
        (procedures as f64 * f64::from(steps + 1)) / elapsed
    }))
}

fn main() {
    let one = measure(1, 20_000);
    println!("durable steps/s, 1 procedure (20,000 steps):           {one:>10.0}");
    let many = measure(1_000, 50);
    println!("durable steps/s, 1,000 concurrent procedures (50 each): {many:>10.0}");
}
