use super::*;

fn rec(i: u8) -> Vec<u8> {
    vec![i; 10 + i as usize]
}

#[test]
fn appended_records_load_in_order_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    smol::block_on(async {
        let j = FsTaskJournal::open(&path).expect("open");
        for i in 0..5 {
            j.append(rec(i)).await.expect("append");
        }
        drop(j);
        let j = FsTaskJournal::open(&path).expect("reopen");
        assert_eq!(j.torn_tail(), None);
        assert_eq!(
            j.load().await.expect("load"),
            (0..5).map(rec).collect::<Vec<_>>()
        );
    });
}

#[test]
fn torn_last_record_is_truncated_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    smol::block_on(async {
        let j = FsTaskJournal::open(&path).expect("open");
        j.append(rec(1)).await.expect("append");
        j.append(rec(2)).await.expect("append");
        drop(j);
        let full = std::fs::read(&path).expect("read");
        let cut = full.len() - 5;
        std::fs::write(&path, &full[..cut]).expect("tear");
        let j = FsTaskJournal::open(&path).expect("reopen");
        let torn = j.torn_tail().expect("reported");
        assert_eq!(
            torn.offset,
            (HEADER_LEN + RECORD_HEADER_LEN + rec(1).len()) as u64
        );
        assert_eq!(j.load().await.expect("load"), vec![rec(1)]);
        j.append(rec(3)).await.expect("append after repair");
        assert_eq!(j.load().await.expect("load"), vec![rec(1), rec(3)]);
    });
}

#[test]
fn damaged_record_before_whole_ones_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    smol::block_on(async {
        let j = FsTaskJournal::open(&path).expect("open");
        for i in 0..3 {
            j.append(rec(i)).await.expect("append");
        }
    });
    let mut bytes = std::fs::read(&path).expect("read");
    let second = HEADER_LEN + RECORD_HEADER_LEN + rec(0).len();
    bytes[second + RECORD_HEADER_LEN + 1] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    let before = std::fs::read(&path).expect("read");
    let err = FsTaskJournal::open(&path).expect_err("must refuse");
    match err {
        StorageError::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!(file, path.display().to_string());
            assert_eq!(offset, second as u64);
            assert!(reason.starts_with("record checksum mismatch"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing truncated"
    );
}

#[test]
fn rewrite_replaces_contents_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    smol::block_on(async {
        let j = FsTaskJournal::open(&path).expect("open");
        for i in 0..4 {
            j.append(rec(i)).await.expect("append");
        }
        j.rewrite(vec![rec(9)]).await.expect("rewrite");
        j.append(rec(10)).await.expect("append");
        assert_eq!(j.load().await.expect("load"), vec![rec(9), rec(10)]);
        drop(j);
        // A crash mid-rewrite leaves a temp file; the journal itself is the old one, whole.
        std::fs::write(temp_path(&path), b"partial").expect("write");
        let j = FsTaskJournal::open(&path).expect("reopen");
        assert!(!temp_path(&path).exists());
        assert_eq!(j.load().await.expect("load"), vec![rec(9), rec(10)]);
    });
}

fn open_with(path: &Path, records: impl IntoIterator<Item = u8>) -> FsTaskJournal {
    let j = FsTaskJournal::open(path).expect("open");
    smol::block_on(async {
        for i in records {
            j.append(rec(i)).await.expect("append");
        }
    });
    j
}

/// Offset of the `n`-th (0-based) record of a journal holding `rec(0)`, `rec(1)`, ...
fn offset_of(n: u8) -> usize {
    HEADER_LEN
        + (0..n)
            .map(|i| RECORD_HEADER_LEN + rec(i).len())
            .sum::<usize>()
}

fn assert_poisoned(err: &StorageError, path: &Path, cause: &str) {
    match err {
        StorageError::Unavailable(message) => {
            assert!(
                message.contains(&path.display().to_string()) && message.contains(cause),
                "the poisoning error must name the file and the original failure: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[test]
fn appends_after_garbage_left_by_a_failed_write_survive_reopen() {
    // The shape of issue 10: an append fails part-way, leaving the start of a record at the
    // end of the file, and later appends through the same journal are acknowledged.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = open_with(&path, 0..2);
    let mut partial = Vec::new();
    encode_record(&mut partial, &rec(7));
    {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open for the failed write");
        file.write_all(&partial[..RECORD_HEADER_LEN + 3])
            .expect("partial write");
    }
    let mut acknowledged = vec![rec(0), rec(1)];
    smol::block_on(async {
        for i in 2..5 {
            if j.append(rec(i)).await.is_ok() {
                acknowledged.push(rec(i));
            }
        }
    });
    drop(j);
    let reopened = FsTaskJournal::open(&path).expect("reopen");
    let loaded = smol::block_on(reopened.load()).expect("load");
    assert_eq!(loaded, acknowledged, "an acknowledged record was lost");
}

#[test]
fn failed_partial_append_poisons_until_reopen_and_every_acknowledged_record_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = open_with(&path, 0..3);
    j.inject_fault(JournalFault::PartialAppend { written: 5 });
    smol::block_on(async {
        let err = j
            .append(rec(3))
            .await
            .expect_err("the partial append fails");
        assert_poisoned(&err, &path, "append journal failed");
        for i in 4..6 {
            let err = j.append(rec(i)).await.expect_err("poisoned");
            assert_poisoned(&err, &path, "append journal failed");
        }
        let err = j.rewrite(vec![rec(9)]).await.expect_err("poisoned");
        assert_poisoned(&err, &path, "append journal failed");
        // A clone is the same open journal.
        assert!(j.clone().append(rec(6)).await.is_err());
        // Reading still works, and shows exactly the acknowledged records.
        assert_eq!(j.load().await.expect("load"), vec![rec(0), rec(1), rec(2)]);
    });
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len() as usize,
        offset_of(3) + 5,
        "nothing was written after the failure"
    );
    drop(j);

    let reopened = FsTaskJournal::open(&path).expect("reopen");
    let torn = reopened
        .torn_tail()
        .expect("the partial bytes are a torn tail");
    assert_eq!(torn.offset, offset_of(3) as u64);
    assert_eq!(torn.discarded_bytes, 5);
    smol::block_on(async {
        assert_eq!(
            reopened.load().await.expect("load"),
            vec![rec(0), rec(1), rec(2)]
        );
        reopened
            .append(rec(8))
            .await
            .expect("a reopened journal appends");
    });
    drop(reopened);
    let j = FsTaskJournal::open(&path).expect("reopen");
    assert_eq!(j.torn_tail(), None);
    assert_eq!(
        smol::block_on(j.load()).expect("load"),
        vec![rec(0), rec(1), rec(2), rec(8)]
    );
}

#[test]
fn failed_fdatasync_poisons_and_reopen_keeps_the_acknowledged_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = open_with(&path, 0..2);
    j.inject_fault(JournalFault::AppendSync);
    smol::block_on(async {
        let err = j.append(rec(2)).await.expect_err("the fdatasync fails");
        assert_poisoned(&err, &path, "fdatasync journal failed");
        let err = j.append(rec(3)).await.expect_err("poisoned");
        assert_poisoned(&err, &path, "fdatasync journal failed");
        assert_eq!(j.load().await.expect("load"), vec![rec(0), rec(1)]);
    });
    drop(j);
    // The unacknowledged record was written whole: its fate is the disk's. The acknowledged
    // ones are there either way, in order, and nothing after the failure.
    let loaded = smol::block_on(FsTaskJournal::open(&path).expect("reopen").load()).expect("load");
    assert!(
        loaded == vec![rec(0), rec(1)] || loaded == vec![rec(0), rec(1), rec(2)],
        "{loaded:?}"
    );
}

#[test]
fn damaged_length_before_whole_records_is_corrupt_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    drop(open_with(&path, 0..6));
    let mut bytes = std::fs::read(&path).expect("read");
    let damage = offset_of(2);
    // The length field itself is destroyed: nothing says where the next record starts.
    bytes[damage..damage + 4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    std::fs::write(temp_path(&path), b"interrupted rewrite").expect("write temp");

    let err = FsTaskJournal::open(&path).expect_err("must refuse");
    match &err {
        StorageError::Corrupt { file, offset, .. } => {
            assert_eq!(file, &path.display().to_string());
            assert_eq!(*offset, damage as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "the file changed"
    );
    assert!(temp_path(&path).exists(), "a refused open changes nothing");
}

#[test]
fn partial_record_followed_by_whole_records_is_corrupt_and_the_file_is_untouched() {
    // A journal left by a failed partial append followed by acknowledged appends (what the
    // unpoisoned journal used to write): the garbage is not a torn tail.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    drop(open_with(&path, 0..2));
    let mut bytes = std::fs::read(&path).expect("read");
    let damage = bytes.len();
    let mut partial = Vec::new();
    encode_record(&mut partial, &rec(40));
    bytes.extend_from_slice(&partial[..RECORD_HEADER_LEN + 7]);
    for i in 2..4 {
        encode_record(&mut bytes, &rec(i));
    }
    std::fs::write(&path, &bytes).expect("write");

    let err = FsTaskJournal::open(&path).expect_err("must refuse");
    assert!(
        matches!(&err, StorageError::Corrupt { file, offset, .. }
            if *file == path.display().to_string() && *offset == damage as u64),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "the file changed"
    );
}

#[test]
fn torn_tail_longer_than_a_record_with_nothing_whole_after_it_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    drop(open_with(&path, 0..2));
    let mut bytes = std::fs::read(&path).expect("read");
    let mut big = Vec::new();
    encode_record(&mut big, &[0x5a; 300]);
    bytes.extend_from_slice(&big[..200]);
    std::fs::write(&path, &bytes).expect("write");
    let j = FsTaskJournal::open(&path).expect("a torn tail is not corruption");
    let torn = j.torn_tail().expect("reported");
    assert_eq!(torn.offset, offset_of(2) as u64);
    assert_eq!(torn.discarded_bytes, 200);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len() as usize,
        offset_of(2)
    );
    assert_eq!(
        smol::block_on(j.load()).expect("load"),
        vec![rec(0), rec(1)]
    );
}

#[test]
fn failure_after_the_rewrite_rename_poisons_and_reopen_sees_the_rewritten_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = open_with(&path, 0..4);
    j.inject_fault(JournalFault::RewriteAfterRename);
    smol::block_on(async {
        let err = j
            .rewrite(vec![rec(9), rec(10)])
            .await
            .expect_err("the directory fsync fails");
        assert_poisoned(&err, &path, "fsync dir failed");
        let err = j.append(rec(11)).await.expect_err("poisoned");
        assert_poisoned(&err, &path, "fsync dir failed");
        assert!(j.rewrite(vec![rec(12)]).await.is_err(), "poisoned");
        // The file under the journal's name is the rewritten one.
        assert_eq!(j.load().await.expect("load"), vec![rec(9), rec(10)]);
    });
    drop(j);
    let j = FsTaskJournal::open(&path).expect("reopen");
    assert_eq!(j.torn_tail(), None);
    smol::block_on(async {
        assert_eq!(j.load().await.expect("load"), vec![rec(9), rec(10)]);
        j.append(rec(13)).await.expect("append after reopen");
    });
    drop(j);
    let j = FsTaskJournal::open(&path).expect("reopen");
    assert_eq!(
        smol::block_on(j.load()).expect("load"),
        vec![rec(9), rec(10), rec(13)]
    );
}

#[test]
fn rewrite_failing_before_the_rename_keeps_the_old_journal_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = open_with(&path, 0..2);
    // The temp file cannot be created: the rewrite fails before touching the journal.
    std::fs::create_dir(temp_path(&path)).expect("block the temp path");
    smol::block_on(async {
        let err = j
            .rewrite(vec![rec(9)])
            .await
            .expect_err("temp file blocked");
        assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
        assert!(err.is_retryable());
        j.append(rec(2)).await.expect("not poisoned");
        assert_eq!(j.load().await.expect("load"), vec![rec(0), rec(1), rec(2)]);
    });
    std::fs::remove_dir(temp_path(&path)).expect("unblock");
    drop(j);
    let j = FsTaskJournal::open(&path).expect("reopen");
    assert_eq!(
        smol::block_on(j.load()).expect("load"),
        vec![rec(0), rec(1), rec(2)]
    );
}

#[test]
fn concurrent_appends_share_one_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = FsTaskJournal::open(&path).expect("open");
    // The first flush waits at the gate until every append has staged its record.
    let gate = j.gate_flushes();
    let appends: Vec<_> = (0..32u8)
        .map(|i| {
            let j = j.clone();
            smol::spawn(async move { j.append(rec(i)).await })
        })
        .collect();
    while j.staged() < 32 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(j.flushes(), 0, "nothing is durable before the flush");
    drop(gate);
    smol::block_on(async {
        for append in appends {
            append.await.expect("append");
        }
    });
    assert_eq!(j.flushes(), 1, "32 concurrent appends, one fdatasync");
    drop(j);
    let j = FsTaskJournal::open(&path).expect("reopen");
    let mut loaded = smol::block_on(j.load()).expect("load");
    loaded.sort();
    let mut expected: Vec<_> = (0..32).map(rec).collect();
    expected.sort();
    assert_eq!(loaded, expected);
}

#[test]
fn records_staged_during_a_flush_are_durable_before_a_rewrite_replaces_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.journal");
    let j = FsTaskJournal::open(&path).expect("open");
    smol::block_on(async {
        j.append(rec(1)).await.expect("append");
        let Staged::Ticket(ticket) = j.stage(rec(2)).expect("stage") else {
            panic!("the file journal stages");
        };
        // The rewrite keeps what the caller names; the staged record is flushed first, so
        // its ticket is durable afterwards, not lost with the old file.
        j.rewrite(vec![rec(1), rec(2)]).await.expect("rewrite");
        j.sync(ticket).await.expect("durable");
        j.append(rec(3)).await.expect("append after rewrite");
    });
    assert_eq!(j.flushes(), 3);
    drop(j);
    let j = FsTaskJournal::open(&path).expect("reopen");
    assert_eq!(
        smol::block_on(j.load()).expect("load"),
        vec![rec(1), rec(2), rec(3)]
    );
}
