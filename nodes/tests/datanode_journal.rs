//! A `shoal datanode` process over a damaged task journal: it refuses to start with one
//! `error:` line naming the file and the offset, and changes nothing on disk.
#![cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_core::datanode::journal::JournalRecord;
use shoal_core::model::Epoch;
use shoal_core::storage::TaskJournal;
use shoal_storage_fs::FsTaskJournal;

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn datanode_refuses_a_journal_with_damage_before_whole_records_in_one_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("dn");
    let journal = data_dir.join("datanode").join("tasks.journal");
    let records: Vec<Vec<u8>> = (1..=4)
        .map(|epoch| {
            JournalRecord::EpochSeen {
                epoch: Epoch(epoch),
            }
            .encode()
        })
        .collect();
    {
        let j = FsTaskJournal::open(&journal).expect("create journal");
        smol::block_on(async {
            for record in &records {
                j.append(record.clone()).await.expect("append");
            }
        });
    }
    // Destroy the second record's length field (file header 16 bytes, record header 8):
    // whole records follow it, so this is damage, not a torn tail.
    let mut bytes = std::fs::read(&journal).expect("read");
    let damage = 16 + 8 + records[0].len();
    bytes[damage..damage + 4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    std::fs::write(&journal, &bytes).expect("damage");
    let secret = root.path().join("internal.secret");
    std::fs::write(&secret, "secret\n").expect("secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");

    let mut child = Command::new(EXE)
        .args(["datanode", "--data-dir"])
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1:0", "--confignode", "127.0.0.1:9"])
        .arg("--internal-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the DataNode started on a damaged journal");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "exit status {status}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(&journal.display().to_string())
            && lines[0].contains(&format!("offset {damage}")),
        "the line must name the file and the offset: {stderr}"
    );
    assert_eq!(
        std::fs::read(&journal).expect("read"),
        bytes,
        "nothing may be truncated"
    );
}
