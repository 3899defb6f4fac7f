use std::sync::Arc;

use shoal_core::consensus::{Consensus, LocalConsensus, adversarial_history, decode_entries};
use shoal_core::plan::{ConfigPlan, PlanDecodeError};
use shoal_core::state::ClusterState;
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_core::storage::{LogEntry, LogStore};

use super::*;

fn entries_of(plans: &[ConfigPlan]) -> Vec<LogEntry> {
    plans
        .iter()
        .enumerate()
        .map(|(i, plan)| LogEntry {
            index: i as u64 + 1,
            term: 1,
            payload: plan.encode().expect("encode"),
        })
        .collect()
}

#[test]
fn threaded_decoding_returns_every_plan_in_entry_order() {
    let mut entries = entries_of(&adversarial_history(7, 3_000));
    // Undecodable entries among them keep their place (replay stops at the first).
    entries[700].payload[3] ^= 0x40;
    entries[2_999].payload.truncate(3);
    let expected = decode_entries(&entries);
    assert!(matches!(
        expected[700],
        Err(PlanDecodeError::Checksum { .. })
    ));
    for threads in 1..=4 {
        let decoder = ThreadedDecoder::with_threads(threads);
        for len in [
            0,
            1,
            MIN_PARALLEL_BATCH - 1,
            MIN_PARALLEL_BATCH,
            1_001,
            entries.len(),
        ] {
            assert_eq!(
                decoder.decode_batch(&entries[..len]),
                expected[..len],
                "{threads} threads, {len} entries"
            );
        }
    }
}

#[test]
fn recovery_with_threaded_decoding_reaches_the_state_of_plain_in_order_replay() {
    for seed in 0..4 {
        let plans = adversarial_history(seed, 6_000);
        let log = MemLogStore::new();
        for plan in &plans {
            log.append(1, &plan.encode().expect("encode"))
                .expect("append");
        }
        let mut expected = ClusterState::default();
        for entry in log.read(1, usize::MAX).expect("read") {
            let _ = expected.apply(&ConfigPlan::decode(&entry.payload).expect("decode"));
        }
        for threads in [2, 3] {
            let consensus =
                LocalConsensus::new(Arc::new(log.clone()), Arc::new(MemSnapshotStore::new()))
                    .with_replay_decoder(Arc::new(ThreadedDecoder::with_threads(threads)));
            smol::block_on(consensus.campaign()).expect("campaign");
            assert_eq!(consensus.applied_index(), log.last_index());
            assert!(
                consensus.state().read(|s| *s == expected),
                "seed {seed}, {threads} threads"
            );
        }
    }
}
