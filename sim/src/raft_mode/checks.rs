//! What must hold once a Raft-mode run settled.

use std::collections::{BTreeMap, BTreeSet};

use shoal_core::consensus::Consensus;
use shoal_core::datanode::journal::JournalRecord;
use shoal_core::model::TaskId;
use shoal_core::procedure::ProcedureView;
use shoal_core::storage::{RegionStore, TaskJournal};

use super::name;
use super::world::{RaftWorld, lock};

/// The leader's state once everything settled: every procedure finished, nothing queued or
/// running, every member applied the same state. Otherwise what is not settled yet.
pub(super) fn settled_state(
    world: &RaftWorld,
) -> Result<shoal_core::state::ClusterState, Vec<String>> {
    let Some((_, node, raft)) = world.leader() else {
        return Err(vec!["no leader".into()]);
    };
    let state = raft.state().snapshot();
    let mut why = Vec::new();
    for p in node.list_procedures() {
        if !matches!(
            p.status,
            ProcedureView::Succeeded | ProcedureView::Failed | ProcedureView::RolledBack
        ) {
            why.push(format!(
                "procedure {} {} is {:?}",
                p.id, p.type_name, p.status
            ));
        }
    }
    if !state.create_queue.is_empty() {
        why.push(format!("{} queued creates", state.create_queue.len()));
    }
    for (j, slot) in world.data_nodes.iter().enumerate() {
        match lock(&slot.node).clone() {
            None => why.push(format!("DataNode {j} is down")),
            Some(n) if n.task_counts().running > 0 => {
                why.push(format!("DataNode {j} runs tasks"));
            }
            Some(_) => {}
        }
        if !slot.mem.regions_being_deleted().is_empty() {
            why.push(format!("DataNode {j} still removes bytes"));
        }
    }
    for (id, slot) in &world.members {
        match lock(slot).as_ref() {
            None => why.push(format!("member {id} is down")),
            Some(m) if m.raft.state().snapshot() != state => {
                why.push(format!("member {id} has not applied the leader's state"));
            }
            Some(_) => {}
        }
    }
    if why.is_empty() { Ok(state) } else { Err(why) }
}

pub(super) fn check_end_state(
    world: &RaftWorld,
    state: &shoal_core::state::ClusterState,
    deletes: &BTreeSet<usize>,
    violations: &mut Vec<String>,
) {
    // A database is created once (its own index); a deletion that succeeded leaves it gone.
    for i in deletes {
        let Some(id) = state.procedure_request_keys.get(&format!("delete-{i}")) else {
            continue;
        };
        let succeeded = state
            .procedures
            .get(id)
            .is_some_and(|r| r.status == shoal_core::state::ProcedureStatus::Succeeded);
        if succeeded && state.databases.contains_key(&name(*i)) {
            violations.push(format!("no ghost: db{i} deleted by {id} but still listed"));
        }
    }
    // Every database fully created at its RF, every replica metadata lists held by its
    // DataNode (DataNode `j` registered as id `j`).
    let held: Vec<BTreeSet<shoal_core::model::RegionId>> = world
        .data_nodes
        .iter()
        .map(|slot| {
            futures_lite::future::block_on(slot.mem.list())
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.region)
                .collect()
        })
        .collect();
    for (name, entry) in &state.databases {
        if entry.deleting {
            violations.push(format!("liveness: {name} is still marked deleting"));
        }
        let groups = state.partition_tables.get(name).map(|t| &t.groups);
        if groups.is_none_or(|g| g.is_empty()) {
            violations.push(format!("liveness: {name} exists without any region group"));
        }
        for group in groups.into_iter().flat_map(|g| g.values()) {
            let rf = match group.region.kind {
                shoal_core::model::RegionKind::Schema => entry.schema.schema_replication_factor,
                shoal_core::model::RegionKind::Data => entry.schema.data_replication_factor,
            };
            if group.replicas.len() != usize::from(rf.get()) {
                violations.push(format!(
                    "liveness: {} of {name} has {} replicas, RF is {}",
                    group.region,
                    group.replicas.len(),
                    rf.get()
                ));
            }
            for node in &group.replicas {
                if !held
                    .get(node.0 as usize)
                    .is_some_and(|h| h.contains(&group.region))
                {
                    violations.push(format!(
                        "metadata matches replicas: {} listed on DataNode {node}, which lacks it",
                        group.region
                    ));
                }
            }
        }
    }
    // No replica outside every footprint (an orphan); no task id accepted twice.
    let footprinted: BTreeSet<(shoal_core::model::RegionId, u32)> = state
        .footprints
        .iter()
        .flat_map(|(region, f)| f.data_nodes.keys().map(move |n| (*region, n.0)))
        .collect();
    for (j, slot) in world.data_nodes.iter().enumerate() {
        let held = futures_lite::future::block_on(slot.mem.list()).unwrap_or_default();
        for config in held {
            if !footprinted.contains(&(config.region, j as u32)) {
                violations.push(format!(
                    "no orphan: DataNode {j} holds {} outside every footprint",
                    config.region
                ));
            }
        }
        let records = futures_lite::future::block_on(slot.journal.load()).unwrap_or_default();
        let mut accepted: BTreeMap<TaskId, u32> = BTreeMap::new();
        for bytes in &records {
            if let Ok(JournalRecord::TaskAccepted { task_id, .. }) = JournalRecord::decode(bytes) {
                *accepted.entry(task_id).or_default() += 1;
            }
        }
        for (task, n) in accepted.iter().filter(|(_, n)| **n > 1) {
            violations.push(format!("once: DataNode {j} accepted {task} {n} times"));
        }
    }
}
