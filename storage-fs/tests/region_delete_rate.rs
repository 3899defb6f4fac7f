//! Rate-limited deletion on the real clock: 1 GiB (sparse, so no real disk writes) at
//! 256 MiB/s takes about 4 s, and the store keeps answering status calls meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::model::{DataNodeId, DatabaseName, RegionId, RegionKind};
use shoal_core::storage::{DeleteOutcome, RegionConfig, RegionStore};
use shoal_runtime_smol::SmolClock;
use shoal_storage_fs::{FsRegionStore, RegionStoreOptions};

fn config(id: u32) -> RegionConfig {
    RegionConfig {
        region: RegionId::new(RegionKind::Data, id),
        database: DatabaseName::new("db").expect("name"),
        peers: vec![DataNodeId(1)],
    }
}

#[test]
fn one_gib_at_256_mib_per_second_takes_about_four_seconds_and_status_stays_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsRegionStore::open(
        dir.path(),
        RegionStoreOptions {
            delete_rate: Some(256 << 20),
            clock: Arc::new(SmolClock::default()),
        },
    )
    .expect("open");
    smol::block_on(async {
        store.create(&config(1)).await.expect("create");
        store.create(&config(2)).await.expect("create");
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("regions/data-1/data"))
            .and_then(|f| f.set_len(1 << 30))
            .expect("sparse 1 GiB");
        let started = Instant::now();
        let deleting = {
            let store = store.clone();
            smol::spawn(async move { store.delete(RegionId::new(RegionKind::Data, 1)).await })
        };
        let mut slowest = Duration::ZERO;
        let mut calls = 0;
        while !deleting.is_finished() {
            let t = Instant::now();
            let listed = store.list().await.expect("list");
            let size = store
                .size(RegionId::new(RegionKind::Data, 2))
                .await
                .expect("size");
            slowest = slowest.max(t.elapsed());
            calls += 1;
            assert!(listed.contains(&config(2)), "{listed:?}");
            assert_eq!(size, Some(0));
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        let outcome = deleting.await.expect("delete");
        let took = started.elapsed();
        eprintln!("deleted 1 GiB in {took:?}; {calls} status calls, slowest {slowest:?}");
        assert_eq!(outcome, DeleteOutcome::Deleted { bytes: 1 << 30 });
        // The rate is a ceiling: never faster. The upper bound is generous for a loaded host.
        assert!(took >= Duration::from_millis(3900), "too fast: {took:?}");
        assert!(took < Duration::from_secs(30), "far too slow: {took:?}");
        assert!(calls >= 10, "status calls were starved: {calls}");
        assert!(
            slowest < Duration::from_secs(1),
            "a status call took {slowest:?}"
        );
        assert!(
            std::fs::read_dir(dir.path().join("trash"))
                .expect("trash")
                .next()
                .is_none(),
            "bytes remain after delete resolved"
        );
    });
}
