//! Logs that exercise every way replay can go wrong: procedures updated step by step and
//! finished, then updated again (refused: finished records are immutable); retried updates
//! whose first commit landed (unknown outcome: the retry's version is stale and refused);
//! updates of unknown procedures; children spawned; transitions whose effect is refused
//! (the whole entry is); deletions of unfinished records (refused) and of finished ones
//! (their reservations go too); retired no-ops; and a tail of entries no proposer saw
//! answered.

use crate::model::{DataNodeId, DatabaseName, DatabaseSchema, ProcedureId, RegionId, RegionKind};
use crate::model::{RegionReplicaSet, ReplicationFactor};
use crate::plan::{self, ConfigPlan};
use crate::state::{ClusterState, NewProcedure, ProcedureStatus};

/// A deterministic sequence of `len` plans (after a short setup) built from `seed`. Each
/// plan is chosen against the state the ones before it produce, so the interesting ones
/// (stale versions, finished records) really are refused when replayed.
pub fn adversarial_history(seed: u64, len: usize) -> Vec<ConfigPlan> {
    let mut history = History {
        rng: seed ^ 0x9e37_79b9_7f4a_7c15,
        state: ClusterState::default(),
        plans: Vec::new(),
        last_update: None,
    };
    history.setup();
    for n in 0..len {
        let plan = history.next_plan(n as u64);
        history.push(plan);
    }
    history.plans
}

struct History {
    rng: u64,
    state: ClusterState,
    plans: Vec<ConfigPlan>,
    /// The last accepted update, to retry it as a proposer that never saw its outcome would.
    last_update: Option<plan::UpdateProcedure>,
}

impl History {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*: deterministic and dependency-free.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn push(&mut self, plan: ConfigPlan) {
        let accepted = self.state.apply(&plan).is_ok();
        if let (true, ConfigPlan::UpdateProcedure(update)) = (accepted, &plan) {
            self.last_update = Some(update.clone());
        }
        self.plans.push(plan);
    }

    fn database() -> DatabaseName {
        DatabaseName::new("adversarial").expect("valid name")
    }

    fn setup(&mut self) {
        for i in 0..3 {
            self.push(ConfigPlan::RegisterDataNode(plan::RegisterDataNode {
                known_id: None,
                address: format!("10.0.0.{i}:7070"),
            }));
        }
        let rf = ReplicationFactor::new(3).expect("valid factor");
        self.push(ConfigPlan::CreateDatabase(plan::CreateDatabase {
            schema: DatabaseSchema {
                name: Self::database(),
                schema_replication_factor: rf,
                data_replication_factor: rf,
            },
            created_by: None,
        }));
        let first = self.state.next_region_id;
        self.push(ConfigPlan::ReserveRegionIds(plan::ReserveRegionIds {
            kind: RegionKind::Data,
            count: 8,
            for_procedure: None,
        }));
        let nodes: Vec<DataNodeId> = self.state.data_nodes.keys().copied().collect();
        let groups: Vec<RegionReplicaSet> = (first..first + 8)
            .map(|id| RegionReplicaSet::new(RegionId::new(RegionKind::Data, id), nodes.clone()))
            .collect();
        self.push(ConfigPlan::RecordReplicaFootprints(
            plan::RecordReplicaFootprints {
                database: Self::database(),
                groups: groups.clone(),
            },
        ));
        self.push(ConfigPlan::CreateRegionGroups(plan::CreateRegionGroups {
            database: Self::database(),
            groups,
        }));
    }

    fn new_procedure(&mut self, n: u64) -> NewProcedure {
        let len = self.below(200) as usize;
        NewProcedure {
            type_code: 100 + self.below(3) as u32,
            type_name: format!("Type{}", self.below(3)),
            state_code: 1,
            state_name: "Start".into(),
            data: (0..len).map(|i| (n as usize + i) as u8).collect(),
            lock_keys: Vec::new(),
            submitted_at_ms: n,
            submitted_unix_ms: if self.below(2) == 0 {
                0
            } else {
                1_700_000_000_000 + n
            },
        }
    }

    fn pick(&mut self, finished: bool) -> Option<ProcedureId> {
        let ids: Vec<ProcedureId> = self
            .state
            .procedures
            .values()
            .filter(|r| r.status.is_finished() == finished)
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.below(ids.len() as u64) as usize])
    }

    /// A transition of `id` as its executor would write it (`None` if it is not recorded).
    fn update(&mut self, id: ProcedureId, n: u64) -> Option<plan::UpdateProcedure> {
        let mut record = self.state.procedures.get(&id)?.clone();
        let expect = record.version;
        record.state_code += 1;
        record.state_name = format!("Step{}", record.state_code);
        let len = self.below(300) as usize;
        record.data = (0..len).map(|i| (n as usize * 7 + i) as u8).collect();
        record.updated_at_ms = n;
        record.attempts = self.below(3) as u32;
        record.last_error = (self.below(4) == 0).then(|| format!("error {n}"));
        record.status = match self.below(10) {
            0 => ProcedureStatus::Succeeded,
            1 => ProcedureStatus::Failed,
            2 => ProcedureStatus::Waiting,
            3 => ProcedureStatus::Suspended,
            _ => ProcedureStatus::Runnable,
        };
        if record.status == ProcedureStatus::Succeeded {
            record.output = Some(serde_bytes::ByteBuf::from(vec![n as u8; 3]));
        }
        let spawn = if self.below(8) == 0 {
            vec![self.new_procedure(n)]
        } else {
            Vec::new()
        };
        Some(plan::UpdateProcedure {
            record,
            spawn,
            expect_version: (self.below(5) != 0).then_some(expect),
        })
    }

    fn next_plan(&mut self, n: u64) -> ConfigPlan {
        let submit = |h: &mut Self| {
            let procedure = h.new_procedure(n);
            let request_key = match h.below(4) {
                0 => Some(format!("key-{}", h.below(20))),
                _ => None,
            };
            ConfigPlan::SubmitProcedure(plan::SubmitProcedure {
                procedure,
                request_key,
            })
        };
        match self.below(20) {
            // Steps of live procedures: most of a real log.
            0..=8 => match self.pick(false).and_then(|id| self.update(id, n)) {
                Some(update) => ConfigPlan::UpdateProcedure(update),
                None => submit(self),
            },
            9 | 10 => submit(self),
            // A retry of the last accepted update whose outcome its proposer never learned:
            // its expected version is stale now (or the record finished), so it is refused.
            11 => match self.last_update.clone() {
                Some(update) => ConfigPlan::UpdateProcedure(update),
                None => submit(self),
            },
            // A finished record is immutable.
            12 => match self.pick(true).and_then(|id| self.update(id, n)) {
                Some(update) => ConfigPlan::UpdateProcedure(update),
                None => submit(self),
            },
            // An update of a procedure that was never recorded (or was deleted).
            13 => {
                let unknown = ProcedureId(self.state.next_procedure_id + 1_000);
                let mut update = self.pick(false).and_then(|id| self.update(id, n));
                match update.as_mut() {
                    Some(update) => {
                        update.record.id = unknown;
                        ConfigPlan::UpdateProcedure(update.clone())
                    }
                    None => submit(self),
                }
            }
            // A step's effect committed with its transition; sometimes the effect is refused
            // (a database that exists), which refuses the whole entry.
            14 | 15 => {
                let Some(update) = self.pick(false).and_then(|id| self.update(id, n)) else {
                    return submit(self);
                };
                let effect = match self.below(3) {
                    0 => ConfigPlan::CreateDatabase(plan::CreateDatabase {
                        schema: self.state.databases[&Self::database()].schema.clone(),
                        created_by: None,
                    }),
                    1 => ConfigPlan::ReserveRegionIds(plan::ReserveRegionIds {
                        kind: RegionKind::Data,
                        count: 1 + self.below(4) as u32,
                        for_procedure: Some(update.record.id),
                    }),
                    _ => ConfigPlan::DropQueuedCreates(plan::DropQueuedCreates {
                        ids: vec![crate::model::MaintainQueueId(self.below(5))],
                    }),
                };
                ConfigPlan::TransitionWithEffect(plan::TransitionWithEffect {
                    update,
                    effect: Box::new(effect),
                })
            }
            // Retention: finished records go (with their reservations); an unfinished one in
            // the list refuses the whole deletion.
            16 | 17 => {
                let mut ids: Vec<ProcedureId> = self.pick(true).into_iter().collect();
                if self.below(3) == 0 {
                    ids.extend(self.pick(false));
                }
                ConfigPlan::DeleteProcedures(plan::DeleteProcedures { ids })
            }
            // A retired plan replays as a no-op.
            18 => ConfigPlan::RetiredRegionLeaderHint(plan::RetiredRegionLeaderHint {
                region: RegionId::new(RegionKind::Data, self.below(16) as u32),
                leader: DataNodeId(self.below(4) as u32),
            }),
            _ => ConfigPlan::UpdateDataNodeStatus(plan::UpdateDataNodeStatus {
                only_from: None,
                id: DataNodeId(self.below(4) as u32),
                status: crate::state::DataNodeStatus::Running,
            }),
        }
    }
}
