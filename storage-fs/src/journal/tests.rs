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
    let err = FsTaskJournal::open(&path).expect_err("must refuse");
    assert_eq!(
        err,
        StorageError::Corrupt {
            file: path.display().to_string(),
            offset: second as u64,
            reason: "record checksum mismatch".into(),
        }
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
