//! In-memory decoders of what nodes read from disk: plans, snapshots, procedure records,
//! task-journal records, and the Raft crate's entries, vote records and snapshots.

use std::collections::{BTreeMap, BTreeSet};

use shoal_consensus_raft::meta::{RaftMeta, StoredLogId, StoredVote};
use shoal_consensus_raft::state_machine::{SnapshotHeader, decode_snapshot, encode_snapshot};
use shoal_consensus_raft::types::{StoredMembership, decode_entry};
use shoal_core::datanode::journal::{ForgetReason, JournalRecord, OutcomeCode, StoredTaskKind};
use shoal_core::model::{Epoch, RegionId, RegionKind, TaskId};
use shoal_core::plan::ConfigPlan;
use shoal_core::procedure::ProcedureRegistry;
use shoal_core::snapshot;
use shoal_tests::fixtures;

use crate::Target;

// Every format below is checksummed, so a mutated input mostly stops at the checksum. Each
// target also decodes the input with its checksum recomputed, so the decoders behind the
// checksum (CBOR bodies, codes, lengths) see the corrupted bytes too.

/// `code u16 | crc32c(code ‖ body) u32 | body` (plans and journal records), checksum fixed.
fn with_code_crc(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 6 {
        return None;
    }
    let mut fixed = bytes.to_vec();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..2]), &bytes[6..]);
    fixed[2..6].copy_from_slice(&crc.to_be_bytes());
    Some(fixed)
}

/// A core snapshot (`magic 8 | version 2 | len 8 | crc 4 | body`), checksum fixed; on odd
/// first body bytes the length is fixed too, so both a lying and a true length are tried.
fn with_snapshot_crc(bytes: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = snapshot::HEADER_LEN;
    if bytes.len() < HEADER {
        return None;
    }
    let mut fixed = bytes.to_vec();
    if bytes.get(HEADER).is_some_and(|b| b & 1 == 1) {
        let len = (bytes.len() - HEADER) as u64;
        fixed[10..18].copy_from_slice(&len.to_be_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed[8..18]), &fixed[HEADER..]);
    fixed[18..22].copy_from_slice(&crc.to_be_bytes());
    Some(fixed)
}

/// A Raft snapshot (`magic 8 | version 2 | meta_len 4 | crc 4 | meta | state`), checksum
/// fixed.
fn with_raft_snapshot_crc(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 18 {
        return None;
    }
    let mut fixed = bytes.to_vec();
    let crc = crc32c::crc32c(&bytes[18..]);
    fixed[14..18].copy_from_slice(&crc.to_be_bytes());
    Some(fixed)
}

/// `ConfigPlan::decode`: every plan of the legacy fixture log, and the fixture state's.
pub fn plan() -> Target {
    let seeds = fixtures::legacy_log()
        .iter()
        .filter_map(|p| p.encode().ok())
        .collect();
    Target {
        name: "plan",
        seeds,
        run: Box::new(|bytes| {
            let _ = ConfigPlan::decode(bytes);
            if let Some(fixed) = with_code_crc(bytes) {
                let _ = ConfigPlan::decode(&fixed);
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// `snapshot::decode`: the committed fixtures of every format version.
pub fn snapshot() -> Target {
    let mut seeds: Vec<Vec<u8>> = [
        fixtures::SNAPSHOT_V1,
        fixtures::SNAPSHOT_V2,
        fixtures::SNAPSHOT_V3,
    ]
    .iter()
    .filter_map(|name| std::fs::read(fixtures::fixture_dir().join(name)).ok())
    .collect();
    if let Ok(bytes) = snapshot::encode(&fixtures::snapshot_v3()) {
        seeds.push(bytes);
    }
    Target {
        name: "snapshot",
        seeds,
        run: Box::new(|bytes| {
            let _ = snapshot::decode(bytes);
            if let Some(fixed) = with_snapshot_crc(bytes) {
                let _ = snapshot::decode(&fixed);
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// Procedure records: `type code (u32 LE) | data`, decoded by the registry of the region
/// procedures (what a leader does with every unfinished record it loads).
pub fn procedure() -> Target {
    let mut registry = ProcedureRegistry::new();
    let registered = shoal_core::procedures::register_region_procedures(&mut registry);
    let seeds = fixtures::base_state()
        .procedures
        .values()
        .map(|record| {
            let mut seed = record.type_code.to_le_bytes().to_vec();
            seed.extend_from_slice(&record.data);
            seed
        })
        .collect();
    Target {
        name: "procedure",
        seeds,
        run: Box::new(move |bytes| {
            registered
                .as_ref()
                .map_err(|e| format!("cannot register: {e}"))?;
            let (code, data) = match bytes.get(..4) {
                Some(code) => (
                    u32::from_le_bytes([code[0], code[1], code[2], code[3]]),
                    &bytes[4..],
                ),
                None => (0, bytes),
            };
            // Mostly the registered codes, so the data decoders are reached.
            let code = match code % 4 {
                0 => code,
                n => 99 + n,
            };
            let _ = registry.decode(code, data);
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// `JournalRecord::decode`: one record of each kind.
pub fn journal_record() -> Target {
    let region = RegionId::new(RegionKind::Data, 7);
    let seeds = [
        JournalRecord::EpochSeen { epoch: Epoch(9) },
        JournalRecord::TaskAccepted {
            task_id: TaskId(1 << 20 | 3),
            kind: StoredTaskKind::from(&shoal_core::api::MaintainTaskKind::DeleteRegionPeer {
                region,
                generation: 4,
            }),
        },
        JournalRecord::TaskFinished {
            task_id: TaskId(5),
            outcome: OutcomeCode::Fail,
            reason: Some("disk on fire".into()),
            duration_ms: 1234,
        },
        JournalRecord::TaskForgotten {
            task_id: TaskId(5),
            reason: ForgetReason::Acked,
        },
        JournalRecord::RegionFenced {
            region,
            generation: 3,
        },
    ]
    .iter()
    .map(JournalRecord::encode)
    .collect();
    Target {
        name: "journal_record",
        seeds,
        run: Box::new(|bytes| {
            let _ = JournalRecord::decode(bytes);
            if let Some(fixed) = with_code_crc(bytes) {
                let _ = JournalRecord::decode(&fixed);
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}

fn raw_entry(kind: u8, term: u64, index: u64, body: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind];
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The Raft log's entries (`decode_entry`), vote records (`RaftMeta::decode`) and
/// snapshots (`decode_snapshot`), one target each.
pub fn raft_entry() -> Target {
    let plan = fixtures::legacy_log()
        .first()
        .and_then(|p| p.encode().ok())
        .unwrap_or_default();
    let mut plan_body = 7u64.to_be_bytes().to_vec();
    plan_body.extend_from_slice(&plan);
    let mut floor = 7u64.to_be_bytes().to_vec();
    floor.extend_from_slice(&1_000_000u64.to_be_bytes());
    // A membership entry's body is the CBOR of its stored form.
    let mut membership_body = Vec::new();
    let _ = ciborium::into_writer(&membership(), &mut membership_body);
    let seeds = vec![
        raw_entry(1, 3, 0, &[]),
        raw_entry(2, 3, 1, &membership_body),
        raw_entry(3, 3, 2, &plan_body),
        raw_entry(4, 3, 3, &floor),
    ];
    Target {
        name: "raft_entry",
        seeds,
        run: Box::new(|bytes| {
            let _ = decode_entry(bytes);
            Ok(())
        }),
        counters: Vec::new(),
    }
}

fn membership() -> StoredMembership {
    StoredMembership {
        configs: vec![BTreeSet::from([1, 2, 3])],
        nodes: BTreeMap::from([
            (1, "127.0.0.1:7070".to_string()),
            (2, "127.0.0.1:7080".to_string()),
            (3, "127.0.0.1:7090".to_string()),
        ]),
    }
}

/// `RaftMeta::decode`: the vote file's record.
pub fn raft_meta() -> Target {
    let meta = RaftMeta {
        vote: Some(StoredVote {
            term: 4,
            node: 2,
            committed: true,
        }),
        purged: Some(StoredLogId { term: 3, index: 99 }),
        committed: Some(StoredLogId {
            term: 4,
            index: 120,
        }),
    };
    Target {
        name: "raft_meta",
        seeds: meta.encode().into_iter().collect(),
        run: Box::new(|bytes| {
            let _ = RaftMeta::decode(bytes);
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// `decode_snapshot`: the Raft snapshot format around the fixture state.
pub fn raft_snapshot() -> Target {
    let header = SnapshotHeader {
        last_log_id: Some(StoredLogId { term: 3, index: 41 }),
        membership_log_id: Some(StoredLogId { term: 1, index: 0 }),
        membership: membership(),
        floor: 2,
    };
    let seeds = encode_snapshot(&header, &fixtures::base_state())
        .into_iter()
        .collect();
    Target {
        name: "raft_snapshot",
        seeds,
        run: Box::new(|bytes| {
            let _ = decode_snapshot(bytes);
            if let Some(fixed) = with_raft_snapshot_crc(bytes) {
                let _ = decode_snapshot(&fixed);
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}
