//! Raft mode: whole clusters with a replicated ConfigNode group — three `RaftConsensus`
//! members (openraft) with core's `ConfigNode` over each, and DataNodes — on the simulator's
//! one thread, in virtual time, every choice drawn from the seed.
//!
//! openraft's runtime is a type with static functions; shoal-consensus-raft lets a world
//! inject its scheduler, clock and randomness per thread (`rt::hooks`). Here every task of
//! the world runs wrapped in [`SimHooks`] for its node's tag, so openraft's core, replication,
//! heartbeats and timeouts, the Raft log flusher, the leadership publisher, the in-process
//! Raft network and every ConfigNode and DataNode task are scheduled by the seeded executor
//! and sleep on the virtual clock; election timeouts come from the seed too. A run is a pure
//! function of its seed (checked by its trace hash).
//!
//! The workload creates and deletes databases while the faults kill and restart members (the
//! leader most of all), partition one member from the others, and crash and restart
//! DataNodes. After the faults stop (links healed, everyone up), the run must settle within
//! the bound, and then: every procedure finished, every member holds the same state, every
//! database whose deletion succeeded is gone with no replica left on any DataNode, no replica
//! on a DataNode lies outside every footprint, and no DataNode accepted a task id twice.
//!
//! What this mode does not do (yet) that the single-log mode does: disk faults under the
//! Raft stores, lost and duplicated DataNode messages, and the per-instant safety checks
//! against a shadow state replayed from the durable log (a Raft log is per member and its
//! uncommitted tail may be cut, so its shadow is the committed state every member applies).
mod checks;
mod world;

use std::collections::{BTreeMap, BTreeSet};

use shoal_consensus_raft::NodeId;
use shoal_core::consensus::Consensus;
use shoal_core::model::{DatabaseName, DatabaseSchema, ReplicationFactor};
use shoal_core::runtime::{Clock, Millis};

use crate::executor::SimRng;
use checks::{check_end_state, settled_state};
use world::{CLIENT, RaftWorld, WORLD, dn_tag, lock, member_tag};

/// Members of the group.
pub const MEMBERS: u64 = 3;
/// DataNodes.
pub const DATA_NODES: usize = 4;
/// Faults and workload events per run.
pub const EVENTS: usize = 14;
/// How long (virtual) the cluster has to settle once the faults stopped.
pub const SETTLE_MS: Millis = 180_000;

/// Polls after which a run that has not settled counts as livelocked (clean runs of seeds
/// 0..2000 took at most 45,000).
pub const LIVELOCK_POLLS: u64 = 1_000_000;

/// What a Raft-mode run found.
#[derive(Debug, Clone, Default)]
pub struct RaftOutcome {
    /// The seed.
    pub seed: u64,
    /// Invariants that did not hold, in words.
    pub violations: Vec<String>,
    /// Hash of the trace and the end state (equal runs, equal hashes).
    pub trace_hash: u64,
    /// What happened, one line per event (virtual ms first).
    pub trace: Vec<String>,
    /// Task polls.
    pub polls: u64,
    /// Virtual time at the end (ms).
    pub end_ms: Millis,
    /// Leader kills, member kills, partitions, DataNode crashes.
    pub faults: BTreeMap<&'static str, u64>,
}

fn name(i: usize) -> DatabaseName {
    DatabaseName::new(format!("db{i}")).unwrap_or_else(|_| unreachable_name())
}

fn unreachable_name() -> DatabaseName {
    // `db` followed by digits is always a valid name; this is never reached.
    DatabaseName::new("db").unwrap_or_else(|e| panic!("invalid built-in name: {e}"))
}

/// One Raft-mode run of `seed`; see the module docs.
pub fn run_raft(seed: u64) -> RaftOutcome {
    let world = RaftWorld::new(seed);
    let mut sched = SimRng::new(seed, 1);
    let mut plan = SimRng::new(seed, 2);
    let mut polls = 0;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for j in 0..DATA_NODES {
        world.start_data_node(j);
    }
    for id in 1..=MEMBERS {
        world.start_member(id, id == 1);
    }
    // One after the other, so DataNode `j` gets id `j` (a retried registration of an address
    // returns the id it got).
    let addresses: Vec<String> = world.data_nodes.iter().map(|s| s.address.clone()).collect();
    world.client("register DataNodes".into(), move |node| {
        let addresses = addresses.clone();
        Box::pin(async move {
            for address in addresses {
                if node.register_data_node(None, address).await.is_err() {
                    return false;
                }
            }
            true
        })
    });
    world.run_until(5_000, &mut sched, &mut polls);

    // The workload and the faults.
    let mut created = 0usize;
    let mut down: BTreeSet<NodeId> = BTreeSet::new();
    let mut dn_down: BTreeSet<usize> = BTreeSet::new();
    let mut deletes: BTreeSet<usize> = BTreeSet::new();
    let mut last_leader = None;
    for _ in 0..EVENTS {
        let now = world.clock.now_ms();
        match plan.below(9) {
            0..=2 => {
                let i = created;
                created += 1;
                let groups = 1 + plan.below(3) as u32;
                let rf = 1 + plan.below(3) as u8;
                world.note(format!("create db{i} ({groups} data groups, RF {rf})"));
                world.client(format!("create db{i}"), move |node| {
                    Box::pin(async move {
                        let Ok(rf) = ReplicationFactor::new(rf) else {
                            return true;
                        };
                        let schema = DatabaseSchema {
                            name: name(i),
                            schema_replication_factor: rf,
                            data_replication_factor: rf,
                        };
                        node.create_database(schema, 1, groups, Some(format!("create-{i}")))
                            .await
                            .is_ok()
                    })
                });
            }
            3 | 4 if created > 0 => {
                let i = plan.below(created as u64) as usize;
                deletes.insert(i);
                world.note(format!("delete db{i}"));
                world.client(format!("delete db{i}"), move |node| {
                    Box::pin(async move {
                        use shoal_core::confignode::ConfigNodeError;
                        match node
                            .delete_database(name(i), Some(format!("delete-{i}")))
                            .await
                        {
                            Ok(_) => true,
                            // Not created (yet, or its creation failed): nothing to do.
                            Err(ConfigNodeError::Rejected(_)) => true,
                            Err(_) => false,
                        }
                    })
                });
            }
            5 | 6 => {
                // Kill the leader (or a member, if none leads), and bring it back later.
                let (victim, kind) = match world.leader() {
                    Some((id, _, _)) => (id, "leader kills"),
                    None => (1 + plan.below(MEMBERS), "member kills"),
                };
                if down.insert(victim) {
                    *faults.entry(kind).or_default() += 1;
                    world.kill_member(victim);
                }
            }
            7 => {
                // Mostly the leader: a leader cut off into a minority.
                let id = match world.leader() {
                    Some((leader, _, _)) if plan.below(3) > 0 => leader,
                    _ => 1 + plan.below(MEMBERS),
                };
                *faults.entry("partitions").or_default() += 1;
                world.raft_net.isolate(id, 1..=MEMBERS);
                world.note(format!("isolate member {id}"));
            }
            _ => {
                let j = plan.below(DATA_NODES as u64) as usize;
                if dn_down.insert(j) {
                    *faults.entry("DataNode crashes").or_default() += 1;
                    world.crash_data_node(j);
                }
            }
        }
        // Half the gaps are short, so the next fault lands while the work just asked for
        // (a procedure's first steps, a replication round) is under way.
        let gap = if plan.below(2) == 0 {
            plan.below(60)
        } else {
            200 + plan.below(3_000)
        };
        world.run_until(now + gap, &mut sched, &mut polls);
        let leading = world
            .leader()
            .map(|(id, _, raft)| (id, raft.leadership().get().epoch));
        if leading != last_leader {
            world.note(format!("leader {leading:?}"));
            last_leader = leading;
        }
        // Members and DataNodes come back after a while; partitions heal.
        if plan.below(2) == 0 {
            world.raft_net.heal();
            for id in std::mem::take(&mut down) {
                world.start_member(id, false);
            }
        }
        if plan.below(2) == 0 {
            for j in std::mem::take(&mut dn_down) {
                world.start_data_node(j);
            }
        }
    }

    // The faults stop: heal, bring everyone back, settle.
    world.raft_net.heal();
    for id in down {
        world.start_member(id, false);
    }
    for j in dn_down {
        world.start_data_node(j);
    }
    world.note("faults stop".into());
    let deadline = world.clock.now_ms() + SETTLE_MS;
    let mut violations = Vec::new();
    let settled = loop {
        let step_to = world.clock.now_ms() + 1_000;
        world.run_until(step_to, &mut sched, &mut polls);
        match settled_state(&world) {
            Ok(state) => break Ok(state),
            Err(why) if world.clock.now_ms() >= deadline => break Err(why),
            // A livelock stops the run (as a liveness violation) instead of spinning for the
            // whole settle window.
            Err(mut why) if polls > LIVELOCK_POLLS => {
                why.push(format!("livelock: over {LIVELOCK_POLLS} polls"));
                break Err(why);
            }
            Err(_) => {}
        }
    };
    let state = match settled {
        Ok(state) => state,
        Err(why) => {
            violations.push(format!(
                "liveness: not settled after the faults stopped (at most {SETTLE_MS} ms): {}",
                why.join("; ")
            ));
            return finish(world, seed, violations, polls, faults);
        }
    };
    check_end_state(&world, &state, &deletes, &mut violations);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for record in state.procedures.values() {
        *statuses
            .entry(format!("{} {}", record.type_name, record.status.name()))
            .or_default() += 1;
    }
    let epoch = world
        .leader()
        .map(|(id, _, raft)| (id, raft.leadership().get().epoch));
    let snapshotted = world
        .stores
        .values()
        .filter(|s| {
            futures_lite::future::block_on(s.snapshots.load_latest()).is_ok_and(|s| s.is_some())
        })
        .count();
    world.note(format!(
        "settled: leader {epoch:?}, databases {:?}, procedures {statuses:?}, \
         {snapshotted} members snapshotted",
        state
            .databases
            .keys()
            .map(DatabaseName::as_str)
            .collect::<Vec<_>>()
    ));
    finish(world, seed, violations, polls, faults)
}

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn finish(
    world: RaftWorld,
    seed: u64,
    violations: Vec<String>,
    polls: u64,
    faults: BTreeMap<&'static str, u64>,
) -> RaftOutcome {
    let trace = lock(&world.trace).clone();
    let mut hash = fnv(0xcbf2_9ce4_8422_2325, &polls.to_le_bytes());
    for line in &trace {
        hash = fnv(hash, line.as_bytes());
    }
    if let Some((id, _, raft)) = world.leader() {
        hash = fnv(hash, &id.to_le_bytes());
        hash = fnv(hash, format!("{:?}", raft.state().snapshot()).as_bytes());
    }
    let end_ms = world.clock.now_ms();
    // Drop every task before the world goes: nothing outlives the run.
    for id in 1..=MEMBERS {
        world.exec.cancel(member_tag(id));
    }
    for j in 0..DATA_NODES {
        world.exec.cancel(dn_tag(j));
    }
    world.exec.cancel(CLIENT);
    world.exec.cancel(WORLD);
    RaftOutcome {
        seed,
        violations,
        trace_hash: hash,
        trace,
        polls,
        end_ms,
        faults,
    }
}
