use super::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, segment_path};
use super::*;

fn small() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        ..LogOptions::default()
    }
}

fn payload(index: u64) -> Vec<u8> {
    format!("entry-{index:06}").into_bytes()
}

/// Offset of the record holding entry `n` (1-based) in a single-segment log of [`payload`]s.
fn record_offset(n: u64) -> u64 {
    SEGMENT_HEADER_LEN as u64 + (n - 1) * (RECORD_HEADER_LEN + payload(1).len()) as u64
}

fn append_synced(log: &FsLogStore, term: u64, count: u64) {
    let mut last = 0;
    for _ in 0..count {
        let index = log.last_index() + 1;
        last = log.append(term, &payload(index)).expect("append");
        assert_eq!(last, index);
    }
    smol::block_on(log.sync(last)).expect("sync");
}

fn assert_entries(log: &FsLogStore, first: u64, last: u64) {
    let entries = log.read(first, usize::MAX).expect("read");
    assert_eq!(entries.len() as u64, last + 1 - first);
    for (entry, index) in entries.iter().zip(first..) {
        assert_eq!(entry.index, index);
        assert_eq!(entry.payload, payload(index));
    }
}

#[test]
fn synced_entries_survive_reopen_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        append_synced(&log, 1, 500);
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    let report = log.recovery_report();
    assert!(
        report.segments > 1,
        "500 entries must span several 4 KiB segments"
    );
    assert_eq!(
        report.torn_tail, None,
        "preallocated zeroes are not a torn tail"
    );
    assert_eq!((log.first_index(), log.last_index()), (1, 500));
    assert_entries(&log, 1, 500);
    assert_eq!(log.read(499, 10).expect("read").len(), 2);
}

#[test]
fn append_below_current_term_is_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FsLogStore::open(dir.path(), small()).expect("open");
    smol::block_on(log.claim_term(3)).expect("claim");
    let err = log.append(2, b"x").expect_err("stale");
    assert_eq!(
        err,
        StorageError::Fenced {
            term: 2,
            current: 3
        }
    );
    let err = smol::block_on(log.claim_term(3)).expect_err("same term again");
    assert!(matches!(err, StorageError::Fenced { .. }));
    assert_eq!(log.append(3, b"x").expect("current term"), 1);
}

#[test]
fn claimed_term_is_durable_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        smol::block_on(log.claim_term(7)).expect("claim");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!(log.current_term(), 7);
    assert!(log.append(6, b"x").is_err());
}

#[test]
fn concurrent_syncs_share_one_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(FsLogStore::open(dir.path(), LogOptions::default()).expect("open"));
    let indexes: Vec<u64> = (0..64)
        .map(|i| log.append(1, &payload(i)).expect("append"))
        .collect();
    smol::block_on(async {
        let tasks: Vec<_> = indexes
            .iter()
            .map(|&i| {
                let log = log.clone();
                smol::spawn(async move { log.sync(i).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("sync");
        }
    });
    assert_eq!(
        log.flush_count(),
        1,
        "64 waiting syncs must share one fdatasync"
    );
}

#[test]
fn compaction_removes_whole_covered_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FsLogStore::open(dir.path(), small()).expect("open");
    append_synced(&log, 1, 500);
    let segments_before = log.shared.lock().segments.clone();
    assert!(segments_before.len() >= 3);
    // Cover the first segment entirely and part of the second.
    let second_first = segments_before[1].first_index;
    smol::block_on(log.compact(second_first + 2)).expect("compact");
    assert_eq!(log.first_index(), second_first);
    assert!(!segments_before[0].path.exists());
    assert!(segments_before[1].path.exists());
    assert_entries(&log, second_first, 500);
    // Compacting everything keeps the active segment and the entries it holds.
    smol::block_on(log.compact(500)).expect("compact all");
    let active_first = segments_before.last().map(|s| s.first_index).unwrap_or(1);
    assert_eq!(log.first_index(), active_first);
    drop(log);
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!(log.first_index(), active_first);
    assert_entries(&log, active_first, 500);
    append_synced(&log, 1, 1);
    assert_eq!(log.last_index(), 501);
}

#[test]
fn failed_flush_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FsLogStore::open(dir.path(), small()).expect("open");
    append_synced(&log, 1, 3);
    log.inject_flush_failure();
    let i = log.append(1, b"lost?").expect("append");
    let err = smol::block_on(log.sync(i)).expect_err("sync must fail");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(
        log.append(1, b"more").is_err(),
        "no appends after poisoning"
    );
    assert!(smol::block_on(log.sync(i)).is_err(), "no pretending later");
    // Entries that were durable before the failure still count as durable.
    assert!(smol::block_on(log.sync(3)).is_ok());
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 5);
    }
    // A record whose header was written but whose payload was cut short.
    let seg = segment_path(dir.path(), 1);
    let torn_at = record_offset(6);
    let mut record = Vec::new();
    format::encode_record(&mut record, 6, 1, &payload(6));
    record.truncate(RECORD_HEADER_LEN + 3);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &record, torn_at))
        .expect("tear");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("reopen");
        let torn = log.recovery_report().torn_tail.clone().expect("reported");
        assert_eq!(torn.offset, torn_at);
        assert_eq!(torn.file, seg.display().to_string());
        assert_eq!(torn.discarded_bytes, record.len() as u64);
        assert_eq!(log.last_index(), 5);
        assert_entries(&log, 1, 5);
        append_synced(&log, 1, 2);
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen again");
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_entries(&log, 1, 7);
}

#[test]
fn damaged_record_mid_log_is_corrupt_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 10);
    }
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = record_offset(4) as usize + RECORD_HEADER_LEN + 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).expect("write");
    let err = FsLogStore::open(dir.path(), small()).expect_err("must refuse");
    match err {
        StorageError::Corrupt { file, offset, .. } => {
            assert_eq!(file, seg.display().to_string());
            assert_eq!(offset, record_offset(4));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn damage_in_an_older_segment_is_corrupt_even_at_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 500);
    }
    // Zero the last record of the first segment: the entries are gone, so the next segment
    // no longer continues the log.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).expect("read");
    let per = RECORD_HEADER_LEN + payload(1).len();
    let records = (4096 - SEGMENT_HEADER_LEN) / per;
    let last_at = SEGMENT_HEADER_LEN + (records - 1) * per;
    bytes[last_at..last_at + per].fill(0);
    std::fs::write(&seg, bytes).expect("write");
    let err = FsLogStore::open(dir.path(), small()).expect_err("must refuse");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
}

#[test]
fn leftover_temp_segment_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 3);
    }
    let tmp = dir.path().join("00000000000000000004.seg.tmp");
    std::fs::write(&tmp, b"half-made").expect("write");
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert!(!tmp.exists());
    assert_eq!(log.recovery_report().removed_temp_files.len(), 1);
    assert_entries(&log, 1, 3);
}

/// Polls `done` until it holds; panics after a generous bound (a hang is the failure).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A flush leader holds the segment: `None` there means a flush is in progress.
fn flush_in_progress(log: &FsLogStore) -> bool {
    log.shared.lock().segment.is_none()
}

#[test]
fn syncs_arriving_during_a_flush_wait_for_and_share_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(FsLogStore::open(dir.path(), LogOptions::default()).expect("open"));
    let gate = log.gate_flushes();
    let first = log.append(1, &payload(1)).expect("append");
    let leader = {
        let log = log.clone();
        smol::spawn(async move { log.sync(first).await })
    };
    wait_until("the first sync leads a flush", || flush_in_progress(&log));
    let followers: Vec<_> = (2..=9u64)
        .map(|i| {
            let index = log.append(1, &payload(i)).expect("append");
            let log = log.clone();
            smol::spawn(async move { log.sync(index).await })
        })
        .collect();
    wait_until("every follower waits", || {
        log.shared.lock().sync_requested == 9
    });
    assert!(!leader.is_finished(), "acknowledged before its fdatasync");
    gate.send(()).expect("release the first flush");
    smol::block_on(leader).expect("leader's sync");
    assert!(
        followers.iter().all(|f| !f.is_finished()),
        "entries appended during a flush are not covered by it"
    );
    gate.send(()).expect("release the second flush");
    for f in followers {
        smol::block_on(f).expect("follower's sync");
    }
    assert_eq!(
        log.flush_count(),
        2,
        "8 syncs that arrived during one flush share the next"
    );
    drop(gate);
    drop(log);
    let log = FsLogStore::open(dir.path(), LogOptions::default()).expect("reopen");
    assert_entries(&log, 1, 9);
}

#[test]
fn dropping_the_leading_sync_mid_flush_does_not_wedge_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FsLogStore::open(dir.path(), small()).expect("open");
    let gate = log.gate_flushes();
    let first = log.append(1, &payload(1)).expect("append");
    let mut leading = Box::pin(log.sync(first));
    assert!(smol::block_on(futures_lite::future::poll_once(&mut leading)).is_none());
    assert!(
        flush_in_progress(&log),
        "the dropped future had started a flush"
    );
    drop(leading);
    drop(gate);
    let second = log.append(1, &payload(2)).expect("append");
    let bounded = futures_lite::future::or(log.sync(second), async {
        smol::Timer::after(std::time::Duration::from_secs(30)).await;
        Err(StorageError::Unavailable("sync hung".into()))
    });
    smol::block_on(bounded).expect("sync after a dropped leader");
    drop(log);
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_entries(&log, 1, 2);
}

#[test]
fn a_failed_flush_fails_the_syncs_waiting_for_it_but_not_earlier_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(FsLogStore::open(dir.path(), small()).expect("open"));
    let gate = log.gate_flushes();
    let first = log.append(1, &payload(1)).expect("append");
    let leader = {
        let log = log.clone();
        smol::spawn(async move { log.sync(first).await })
    };
    wait_until("the first sync leads a flush", || flush_in_progress(&log));
    let second = log.append(1, &payload(2)).expect("append");
    let follower = {
        let log = log.clone();
        smol::spawn(async move { log.sync(second).await })
    };
    wait_until("the follower waits", || {
        log.shared.lock().sync_requested == 2
    });
    gate.send(()).expect("release the first flush");
    smol::block_on(leader).expect("leader's sync");
    log.inject_flush_failure();
    gate.send(()).expect("release the failing flush");
    let err = smol::block_on(follower).expect_err("covered only by the failed flush");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(
        smol::block_on(log.sync(first)).is_ok(),
        "durable before the failure"
    );
    assert!(log.append(1, b"more").is_err(), "poisoned");
}

#[test]
fn sync_blocking_flushes_inline_and_entries_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        for i in 1..=3 {
            log.append(1, &payload(i)).expect("append");
        }
        log.sync_blocking(3).expect("sync");
        assert_eq!(log.flush_count(), 1, "one flush covers all three");
        assert!(!flush_in_progress(&log), "segment handed back");
        log.sync_blocking(2).expect("already durable");
        assert_eq!(log.flush_count(), 1, "no flush for a durable entry");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_entries(&log, 1, 3);
}

#[test]
fn dropping_the_log_writes_entries_that_were_never_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        for i in 1..=4 {
            log.append(1, &payload(i)).expect("append");
        }
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_entries(&log, 1, 4);
}

#[test]
fn truncation_across_segments_is_durable_and_takes_lower_term_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 2, 100);
        append_synced(&log, 5, 400);
        let segments_before = log.shared.lock().segments.len();
        smol::block_on(log.truncate_after(100)).expect("truncate");
        assert_eq!(log.last_index(), 100);
        assert!(log.shared.lock().segments.len() < segments_before);
        // A leader of a lower term replaces the discarded suffix (Raft's conflicting entries).
        let index = log
            .append(3, b"replacement")
            .expect("lower term after truncation");
        assert_eq!(index, 101);
        smol::block_on(log.sync(index)).expect("sync");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_eq!(log.last_index(), 101);
    let kept = log.read(1, 100).expect("read");
    assert!(
        kept.iter()
            .zip(1..)
            .all(|(e, i)| e.index == i && e.payload == payload(i))
    );
    let last = log.read(101, 1).expect("read");
    assert_eq!(
        (last[0].term, last[0].payload.as_slice()),
        (3, &b"replacement"[..])
    );
}

#[test]
fn truncation_of_buffered_entries_never_reaches_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 10);
        for index in 11..=20 {
            log.append(1, &payload(index)).expect("append");
        }
        smol::block_on(log.truncate_after(15)).expect("truncate");
        assert_eq!(log.last_index(), 15);
        smol::block_on(log.sync(15)).expect("sync");
        // A sync for a discarded index does not wait for it.
        smol::block_on(log.sync(20)).expect("sync past the end");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!(log.last_index(), 15);
    assert_entries(&log, 1, 15);
}

#[test]
fn truncation_within_the_active_segment_leaves_no_stale_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 2, 30);
        smol::block_on(log.truncate_after(10)).expect("truncate");
        // A shorter replacement: stale records after it must not read back after a restart.
        let index = log.append(2, b"x").expect("append");
        smol::block_on(log.sync(index)).expect("sync");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_eq!(log.last_index(), 11);
    let kept = log.read(1, 10).expect("read");
    assert!(
        kept.iter()
            .zip(1..)
            .all(|(e, i)| e.index == i && e.payload == payload(i))
    );
    assert_eq!(log.read(11, 1).expect("read")[0].payload, b"x".to_vec());
}

#[test]
fn compaction_past_the_end_restarts_the_log_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FsLogStore::open(dir.path(), small()).expect("open");
        append_synced(&log, 1, 300);
        smol::block_on(log.compact(1000)).expect("compact past the end");
        assert_eq!((log.first_index(), log.last_index()), (1001, 1000));
        let index = log.append(2, b"after").expect("append");
        assert_eq!(index, 1001);
        smol::block_on(log.sync(index)).expect("sync");
    }
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_eq!((log.first_index(), log.last_index()), (1001, 1001));
    assert_eq!(
        log.read(1001, 1).expect("read")[0].payload,
        b"after".to_vec()
    );
}

#[test]
fn a_lingering_flush_leader_blocks_and_is_woken_by_the_next_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        flush_linger: std::time::Duration::from_secs(10),
        ..LogOptions::default()
    };
    let log = FsLogStore::open(dir.path(), options).expect("open");
    append_synced(&log, 1, 1);
    wait_until("the leader blocks, waiting for the next sync", || {
        log.shared.lock().leader_waits_for.is_some()
    });
    assert!(
        flush_in_progress(&log),
        "a lingering leader keeps the segment"
    );
    let started = std::time::Instant::now();
    append_synced(&log, 1, 1);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "the sync must wake the leader, not wait out its 10 s window: {took:?}"
    );
    assert_eq!(log.flush_count(), 2);
    drop(log);
    let log = FsLogStore::open(dir.path(), small()).expect("reopen");
    assert_entries(&log, 1, 2);
}

#[test]
fn proposers_woken_by_one_flush_share_the_next_without_waiting_out_the_commit_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        flush_linger: std::time::Duration::from_secs(10),
        commit_delay: std::time::Duration::from_secs(10),
        ..LogOptions::default()
    };
    let log = Arc::new(FsLogStore::open(dir.path(), options).expect("open"));
    let gate = log.gate_flushes();
    let started = std::time::Instant::now();
    let proposers: Vec<_> = (0..2)
        .map(|_| {
            let index = log.append(1, b"first").expect("append");
            let log = log.clone();
            smol::spawn(async move {
                log.sync(index).await?;
                let next = log.append(1, b"second")?;
                log.sync(next).await
            })
        })
        .collect();
    wait_until("both proposers wait for the first flush", || {
        log.shared.lock().sync_requested == 2
    });
    drop(gate);
    for p in proposers {
        smol::block_on(p).expect("sync");
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "the second proposer's sync must end the commit delay: {took:?}"
    );
    assert_eq!(
        log.flush_count(),
        2,
        "both proposers woken by the first flush share the second"
    );
}

/// A sync future polled again before its flush (woken by anything) still counts as one
/// proposer: the flush that wakes it must not wait the commit delay for a second one that
/// does not exist (one cause of a rare 10 s stall of the test above; the stall itself is
/// not asserted here, as the test above still shows it rarely, from a cause not found).
#[test]
fn a_sync_polled_twice_before_its_flush_counts_as_one_proposer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        flush_linger: std::time::Duration::from_secs(10),
        commit_delay: std::time::Duration::from_secs(10),
        ..LogOptions::default()
    };
    let log = Arc::new(FsLogStore::open(dir.path(), options).expect("open"));
    let gate = log.gate_flushes();
    let proposers: Vec<_> = (0..2)
        .map(|_| {
            let index = log.append(1, b"first").expect("append");
            let log = log.clone();
            smol::spawn(async move {
                let mut first = std::pin::pin!(log.sync(index));
                // A spurious extra poll before the flush.
                if futures_lite::future::poll_once(first.as_mut())
                    .await
                    .is_none()
                {
                    futures_lite::future::poll_once(first.as_mut()).await;
                }
                first.await?;
                let next = log.append(1, b"second")?;
                log.sync(next).await
            })
        })
        .collect();
    wait_until("both proposers polled twice", || {
        log.shared.lock().requests >= 4
    });
    assert_eq!(log.shared.lock().waiters.len(), 2, "one entry per proposer");
    drop(gate);
    for p in proposers {
        smol::block_on(p).expect("sync");
    }
}

/// A payload of `len` bytes that names its index.
fn big_payload(index: u64, len: usize) -> Vec<u8> {
    let mut p = format!("entry-{index:06}-").into_bytes();
    p.resize(len, (index % 251) as u8);
    p
}

/// A one-segment log of `count` entries of `len` bytes each; returns the segment's path.
fn big_log(dir: &Path, count: u64, len: usize) -> PathBuf {
    let options = LogOptions {
        segment_size: 16 << 20,
        ..LogOptions::default()
    };
    let log = FsLogStore::open(dir, options).expect("open");
    for index in 1..=count {
        log.append(1, &big_payload(index, len)).expect("append");
    }
    log.sync_blocking(count).expect("sync");
    segment_path(dir, 1)
}

#[test]
fn recovery_streams_a_segment_through_a_bounded_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 12 MiB of records in a 16 MiB segment; 5,000-byte records straddle window edges.
    let seg = big_log(dir.path(), 2_500, 5_000);
    let file = std::fs::File::open(&seg).expect("open segment");
    let len = file.metadata().expect("stat").len();
    let mut window = format::SegmentWindow::new(&file, &seg, len);
    let mut seen = 0u64;
    let scan = format::scan_segment(&mut window, 0, |index, term, payload| {
        seen += 1;
        assert_eq!((index, term), (seen, 1));
        assert_eq!(payload, big_payload(index, 5_000).as_slice());
    })
    .expect("scan");
    assert_eq!(
        (seen, scan.entries, scan.damage.is_none()),
        (2_500, 2_500, true)
    );
    assert!(
        window.held_capacity() <= 2 * format::SCAN_WINDOW,
        "the scan held {} bytes of a {len}-byte segment at once",
        window.held_capacity()
    );
    drop(file);
    let log = FsLogStore::open(dir.path(), LogOptions::default()).expect("reopen");
    assert_eq!(log.last_index(), 2_500);
    assert_eq!(
        log.read(2_500, 1).expect("read")[0].payload,
        big_payload(2_500, 5_000)
    );
}

#[test]
fn damage_and_torn_tails_past_the_first_window_are_found_at_their_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = big_log(dir.path(), 1_000, 5_000);
    let per = (RECORD_HEADER_LEN + 5_000) as u64;
    let at = |n: u64| SEGMENT_HEADER_LEN as u64 + (n - 1) * per;
    let patch = |offset: u64, bytes: &[u8]| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset))
            .expect("patch segment");
    };
    // A torn write after the last record, well past the first window.
    let torn_at = at(1_001);
    patch(torn_at, &[7u8; 100]);
    {
        let log = FsLogStore::open(dir.path(), LogOptions::default()).expect("reopen");
        let torn = log.recovery_report().torn_tail.clone().expect("reported");
        assert_eq!((torn.offset, torn.discarded_bytes), (torn_at, 100));
        assert_eq!(log.last_index(), 1_000);
    }
    // A flipped byte inside record 700 (about 3.4 MiB in), followed by whole records.
    let mut byte = [0u8; 1];
    let flip = at(700) + RECORD_HEADER_LEN as u64 + 10;
    std::fs::File::open(&seg)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, flip))
        .expect("read byte");
    patch(flip, &[byte[0] ^ 0x40]);
    match FsLogStore::open(dir.path(), LogOptions::default()).expect_err("must refuse") {
        StorageError::Corrupt { file, offset, .. } => {
            assert_eq!((file, offset), (seg.display().to_string(), at(700)));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
