use super::*;
use futures_lite::future;
use shoal_core::model::DatabaseName;
use shoal_core::runtime::ManualClock;

fn region(id: u32) -> RegionId {
    RegionId::new(RegionKind::Data, id)
}

fn config(id: u32, peers: &[u32]) -> RegionConfig {
    RegionConfig {
        region: region(id),
        database: DatabaseName::new("root_db").expect("name"),
        peers: peers.iter().map(|p| DataNodeId(*p)).collect(),
    }
}

fn unlimited(root: &Path) -> FsRegionStore {
    FsRegionStore::open(root, RegionStoreOptions::default()).expect("open")
}

fn trash_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("trash"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

#[test]
fn create_is_idempotent_and_a_different_config_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = unlimited(dir.path());
    future::block_on(async {
        assert_eq!(
            store.create(&config(1, &[1, 2])).await.expect("create"),
            CreateOutcome::Created
        );
        assert_eq!(
            store.create(&config(1, &[1, 2])).await.expect("again"),
            CreateOutcome::AlreadyExists
        );
        let err = store
            .create(&config(1, &[1, 3]))
            .await
            .expect_err("conflict");
        assert_eq!(err, StorageError::RegionConflict { region: region(1) });
    });
}

#[test]
fn data_and_peers_survive_reopen_and_list_is_ordered() {
    let dir = tempfile::tempdir().expect("tempdir");
    future::block_on(async {
        let store = unlimited(dir.path());
        store.create(&config(9, &[1])).await.expect("create");
        store.create(&config(2, &[1])).await.expect("create");
        assert_eq!(store.append(region(9), b"hello").await.expect("append"), 5);
        assert_eq!(
            store.append(region(9), b" world").await.expect("append"),
            11
        );
        store
            .set_peers(region(9), &[DataNodeId(4), DataNodeId(5)])
            .await
            .expect("peers");
        drop(store);
        let store = unlimited(dir.path());
        let listed = store.list().await.expect("list");
        assert_eq!(listed, vec![config(2, &[1]), config(9, &[4, 5])]);
        assert_eq!(store.size(region(9)).await.expect("size"), Some(11));
        assert_eq!(store.size(region(3)).await.expect("size"), None);
        let err = store.append(region(3), b"x").await.expect_err("missing");
        assert_eq!(err, StorageError::RegionNotFound(region(3)));
    });
}

#[test]
fn delete_removes_every_byte_and_a_retry_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = unlimited(dir.path());
    future::block_on(async {
        store.create(&config(1, &[1])).await.expect("create");
        store.append(region(1), &[7u8; 1000]).await.expect("append");
        assert_eq!(
            store.delete(region(1)).await.expect("delete"),
            DeleteOutcome::Deleted { bytes: 1000 }
        );
        assert!(trash_is_empty(dir.path()));
        assert_eq!(store.size(region(1)).await.expect("size"), None);
        assert_eq!(
            store.delete(region(1)).await.expect("retry"),
            DeleteOutcome::NotFound
        );
        // The id can be used again afterwards.
        assert_eq!(
            store.create(&config(1, &[2])).await.expect("recreate"),
            CreateOutcome::Created
        );
    });
}

/// Simulates a crash between the rename into the trash and the removal.
fn crash_after_rename(root: &Path, id: u32) {
    let from = root.join("regions").join(dir_name(region(id)));
    let to = root
        .join("trash")
        .join(format!("{}~0", dir_name(region(id))));
    std::fs::rename(from, to).expect("rename");
}

#[test]
fn delete_finishes_a_removal_interrupted_after_the_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    future::block_on(async {
        let store = unlimited(dir.path());
        store.create(&config(1, &[1])).await.expect("create");
        store.append(region(1), &[1u8; 300]).await.expect("append");
        crash_after_rename(dir.path(), 1);
        // Reopen with removal in the background, but delete before it can be trusted done:
        // either way delete must only answer once no byte remains.
        let store = unlimited(dir.path());
        let outcome = store.delete(region(1)).await.expect("delete");
        assert!(
            matches!(
                outcome,
                DeleteOutcome::Deleted { bytes: 300 } | DeleteOutcome::NotFound
            ),
            "{outcome:?}"
        );
        assert!(
            trash_is_empty(dir.path()),
            "bytes remain after delete resolved"
        );
    });
}

#[test]
fn delete_of_a_region_found_only_in_trash_reports_its_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = unlimited(dir.path());
    future::block_on(async {
        store.create(&config(1, &[1])).await.expect("create");
        store.append(region(1), &[1u8; 300]).await.expect("append");
        crash_after_rename(dir.path(), 1);
        assert_eq!(
            store.delete(region(1)).await.expect("delete"),
            DeleteOutcome::Deleted { bytes: 300 }
        );
        assert!(trash_is_empty(dir.path()));
    });
}

#[test]
fn open_finishes_pending_trash_removal() {
    let dir = tempfile::tempdir().expect("tempdir");
    future::block_on(async {
        let store = unlimited(dir.path());
        store.create(&config(1, &[1])).await.expect("create");
        store.append(region(1), &[1u8; 300]).await.expect("append");
        crash_after_rename(dir.path(), 1);
        std::fs::create_dir(dir.path().join("regions/.tmp-data-5")).expect("half create");
        let store = unlimited(dir.path());
        assert!(!dir.path().join("regions/.tmp-data-5").exists());
        store.finish_pending_deletes().await.expect("finish");
        assert!(trash_is_empty(dir.path()));
        assert_eq!(store.list().await.expect("list"), vec![]);
    });
}

#[test]
fn rate_limited_delete_paces_on_the_clock_and_others_stay_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let store = FsRegionStore::open(
        dir.path(),
        RegionStoreOptions {
            delete_rate: Some(16 << 20),
            clock: Arc::new(clock.clone()),
        },
    )
    .expect("open");
    future::block_on(async {
        store.create(&config(1, &[1])).await.expect("create");
        store.create(&config(2, &[1])).await.expect("create");
        // 64 MiB, sparse: costs no real disk writes.
        let data = dir.path().join("regions/data-1/data");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .and_then(|f| f.set_len(64 << 20))
            .expect("grow");
        let deleting = {
            let store = store.clone();
            smol::spawn(async move { store.delete(region(1)).await })
        };
        // Let the delete reach its first sleep; time does not move, so it cannot finish.
        while clock.next_deadline().is_none() {
            smol::future::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(store.list().await.expect("list"), vec![config(2, &[1])]);
        assert_eq!(store.size(region(2)).await.expect("size"), Some(0));
        assert_eq!(
            store.create(&config(3, &[1])).await.expect("create"),
            CreateOutcome::Created
        );
        assert!(
            !deleting.is_finished(),
            "delete finished without its time passing"
        );
        assert!(!trash_is_empty(dir.path()));
        while !deleting.is_finished() {
            if !clock.advance_to_next_deadline() {
                smol::future::yield_now().await;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let outcome = deleting.await.expect("delete");
        assert_eq!(outcome, DeleteOutcome::Deleted { bytes: 64 << 20 });
        assert!(trash_is_empty(dir.path()));
        // 64 MiB at 16 MiB/s: four seconds on the clock, not less.
        assert!(
            (4000..4100).contains(&clock.now_ms()),
            "took {} ms",
            clock.now_ms()
        );
    });
}
