//! A run's script: the cluster's shape, the fault rates, and the timed workload and fault
//! events, all drawn from the seed. A scenario can be cut down (shrinking) and replayed: the
//! run's other random choices (scheduling, messages, disks) still come from the same seed.

use shoal_core::plan::PlanCode;

use crate::disk::DiskFaults;
use crate::executor::SimRng;
use crate::net::NetFaults;

/// Knobs of generated scenarios (the same for every seed of a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Workload and fault events per scenario.
    pub events: usize,
    /// Virtual time over which the events are spread (ms).
    pub window_ms: u64,
    /// Virtual time allowed to converge after the faults stop (ms): the liveness bound.
    pub settle_ms: u64,
    /// Inject network faults.
    pub net_faults: bool,
    /// Inject disk faults.
    pub disk_faults: bool,
    /// Crash nodes and change leaders.
    pub process_faults: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            events: 100,
            window_ms: 60_000,
            settle_ms: 240_000,
            net_faults: true,
            disk_faults: true,
            process_faults: true,
        }
    }
}

/// One workload request or fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create database `db<db>` with its groups.
    CreateDatabase {
        /// Which name of the small pool (names collide on purpose).
        db: u8,
        /// Schema region groups.
        schema_groups: u32,
        /// Data region groups.
        data_groups: u32,
        /// Replication factor of both kinds.
        rf: u8,
        /// Send a request key (retries return the same procedure).
        keyed: bool,
    },
    /// Delete database `db<db>`.
    DeleteDatabase {
        /// Which name.
        db: u8,
        /// Send a request key.
        keyed: bool,
    },
    /// Add region groups to a live database.
    CreateRegionGroups {
        /// Which name.
        db: u8,
        /// Schema region groups.
        schema_groups: u32,
        /// Data region groups.
        data_groups: u32,
    },
    /// Write `bytes` to every replica of every data group of `db<db>`.
    Load {
        /// Which name.
        db: u8,
        /// Bytes per replica.
        bytes: u32,
    },
    /// Crash DataNode `dn`; it restarts after `down_ms`.
    CrashDataNode {
        /// Which DataNode (index).
        dn: usize,
        /// How long it stays down.
        down_ms: u64,
    },
    /// Crash ConfigNode `cn` (its unsynced log tail is lost); it restarts and campaigns
    /// after `down_ms`. With `after`, the crash waits for the next durable entry of that
    /// kind and hits its proposer (the leader) right after it, before it acts on it.
    CrashConfigNode {
        /// Which slot (0 or 1); ignored with `after`.
        cn: usize,
        /// How long it stays down.
        down_ms: u64,
        /// Crash right after the next commit of this kind instead of now.
        after: Option<PlanCode>,
    },
    /// The next commit of `kind` fails for its proposer (the log's sync errs); the entry
    /// stays appended, so it may still land: a commit of unknown outcome at a chosen point.
    FailCommit {
        /// The kind of entry whose commit fails.
        kind: PlanCode,
    },
    /// ConfigNode `cn` campaigns over the shared log (started first if down); whoever led
    /// is deposed and learns it on its next append.
    Campaign {
        /// Which slot.
        cn: usize,
    },
    /// Cut ConfigNode `cn` from DataNode `dn` (both ways) for `heal_ms`.
    Partition {
        /// Which ConfigNode slot.
        cn: usize,
        /// Which DataNode.
        dn: usize,
        /// When it heals.
        heal_ms: u64,
    },
    /// The leader snapshots its state and compacts the log.
    Snapshot,
    /// Migrate a replica of a live group, as `shoal region migrate` does. Which group and
    /// replica is resolved when the event plays, against the durable state (so a cut
    /// scenario still migrates something): group `group % groups`, its replica
    /// `replica % RF`.
    MigrateRegion {
        /// Which published group (modulo their number, in region order).
        group: u32,
        /// Which of its replicas moves (modulo their number).
        replica: u32,
        /// The target DataNode (`None`, or one already in the group: placement chooses).
        to: Option<usize>,
    },
    /// Remove DataNode `dn` (planned: its replicas are migrated away, then it is
    /// unregistered), as `shoal datanode remove` does.
    RemoveDataNode {
        /// Which DataNode.
        dn: usize,
    },
    /// DataNode `dn` is lost for good: it crashes, never restarts, and is removed with
    /// `--force`. Played only while at least three other DataNodes remain and the removal
    /// would be admitted (every group can be re-replicated).
    KillDataNode {
        /// Which DataNode.
        dn: usize,
    },
    /// Write a region directory straight into DataNode `dn`'s store, under an id no
    /// footprint has: an orphan the reconciler must find and delete.
    PlantOrphan {
        /// Which DataNode.
        dn: usize,
        /// Bytes in it.
        bytes: u32,
    },
}

/// A timed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When (virtual ms).
    pub at_ms: u64,
    /// What.
    pub op: Op,
}

/// Names of the database pool.
pub const DATABASES: u8 = 4;

/// The kinds of commit an aimed ConfigNode fault ([`Op::CrashConfigNode`] with `after`,
/// [`Op::FailCommit`]) waits for: every step of the region lifecycle that commits.
pub const AIMED: &[PlanCode] = &[
    PlanCode::CreateDatabase,
    PlanCode::SetDatabaseDeleting,
    PlanCode::DeleteDatabase,
    PlanCode::CreateRegionGroups,
    PlanCode::AddRegionLocation,
    PlanCode::ReserveRegionIds,
    PlanCode::RecordReplicaFootprints,
    PlanCode::ReplicaDeleted,
    PlanCode::DropRegionGroup,
    PlanCode::OfferRegionMaintainTasks,
    PlanCode::DropQueuedCreates,
    PlanCode::SubmitProcedure,
    PlanCode::UpdateProcedure,
];

/// The ConfigNode's timings in one run, drawn per seed so that timing regimes vary too
/// (e.g. a step's retry that waits longer than a cleaner pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// First retry delay of a failed procedure step (ms).
    pub step_backoff_ms: u64,
    /// Time between two passes of the region cleaner (ms).
    pub cleaner_interval_ms: u64,
    /// How long a creation retries a replica create that finds its DataNode unreachable
    /// (ms).
    pub create_retry_window_ms: u64,
    /// How long a replica must be seen unaccounted for before the reconciler removes it
    /// (ms; 0 removes at the first sighting, which puts creates in flight to the test).
    pub orphan_grace_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            step_backoff_ms: 50,
            cleaner_interval_ms: 500,
            create_retry_window_ms: 5_000,
            orphan_grace_ms: 2_000,
        }
    }
}

impl Tuning {
    pub(crate) fn draw(rng: &mut SimRng) -> Self {
        Self {
            step_backoff_ms: *rng.pick(&[20, 50, 200, 1_000]).unwrap_or(&50),
            cleaner_interval_ms: *rng.pick(&[100, 500, 2_000]).unwrap_or(&500),
            create_retry_window_ms: *rng.pick(&[1_000, 5_000]).unwrap_or(&5_000),
            orphan_grace_ms: *rng.pick(&[0, 1_000, 2_000, 10_000]).unwrap_or(&2_000),
        }
    }
}

/// One run's script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The seed (scheduling, messages and disks draw from it too).
    pub seed: u64,
    /// DataNodes.
    pub data_nodes: usize,
    /// Delete rate of each DataNode's store (bytes/s; 0 deletes at once).
    pub delete_rates: Vec<u64>,
    /// Start from a v1 snapshot with published groups and legacy deletions pending.
    pub legacy: bool,
    /// Network fault rates while faults last.
    pub net: NetFaults,
    /// Disk fault rates while faults last.
    pub disk: DiskFaults,
    /// The events, by time.
    pub events: Vec<Event>,
    /// When the faults stop (ms).
    pub faults_end_ms: u64,
    /// The liveness bound after that (ms).
    pub settle_ms: u64,
    /// The ConfigNodes' timings.
    pub tuning: Tuning,
}

impl Scenario {
    /// The scenario of `seed` under `config`.
    pub fn generate(seed: u64, config: &Config) -> Scenario {
        let mut rng = SimRng::new(seed, 1);
        // Where a ConfigNode fault is aimed; its own stream, so the rest of the script is
        // drawn as before.
        let mut aim = SimRng::new(seed, 6);
        // Whether an event is one of the issue-14 operations instead (migration, DataNode
        // removal, planted orphans); its own stream too.
        let mut moves = SimRng::new(seed, 8);
        let data_nodes = rng.range(3, 5) as usize;
        let delete_rates = (0..data_nodes)
            .map(|_| match rng.below(3) {
                0 => 0,
                1 => 256 * 1024,
                _ => 32 * 1024,
            })
            .collect();
        let legacy = rng.below(4) == 0;
        let net = if config.net_faults {
            NetFaults {
                lose_request: rng.range(0, 30_000) as u32,
                lose_reply: rng.range(0, 30_000) as u32,
                duplicate: rng.range(0, 20_000) as u32,
                max_latency_ms: rng.range(0, 20),
                spike: rng.range(0, 10_000) as u32,
                spike_ms: 3_000,
            }
        } else {
            NetFaults::default()
        };
        let disk = if config.disk_faults {
            DiskFaults {
                log: rng.range(0, 10_000) as u32,
                journal: rng.range(0, 20_000) as u32,
                store: rng.range(0, 20_000) as u32,
                max_latency_ms: rng.range(0, 5),
            }
        } else {
            DiskFaults::default()
        };
        let mut events = Vec::with_capacity(config.events);
        while events.len() < config.events {
            let at_ms = rng.range(500, config.window_ms);
            let db = rng.below(u64::from(DATABASES)) as u8;
            let roll = rng.below(100);
            let process = config.process_faults;
            let op = match roll {
                0..=21 => Op::CreateDatabase {
                    db,
                    schema_groups: rng.range(0, 2) as u32,
                    data_groups: rng.range(1, 3) as u32,
                    rf: rng.range(1, 3) as u8,
                    keyed: rng.below(2) == 0,
                },
                22..=35 => Op::DeleteDatabase {
                    db,
                    keyed: rng.below(2) == 0,
                },
                36..=45 => Op::CreateRegionGroups {
                    db,
                    schema_groups: rng.range(0, 1) as u32,
                    data_groups: rng.range(1, 2) as u32,
                },
                46..=60 => Op::Load {
                    db,
                    bytes: rng.range(1, 128 * 1024) as u32,
                },
                61..=65 => {
                    // Create and delete of one name at the same instant.
                    events.push(Event {
                        at_ms,
                        op: Op::CreateDatabase {
                            db,
                            schema_groups: 1,
                            data_groups: rng.range(1, 3) as u32,
                            rf: rng.range(1, 3) as u8,
                            keyed: true,
                        },
                    });
                    Op::DeleteDatabase { db, keyed: true }
                }
                66..=75 if process => Op::CrashDataNode {
                    dn: rng.below(data_nodes as u64) as usize,
                    down_ms: if rng.below(4) == 0 {
                        rng.range(10_000, 40_000)
                    } else {
                        rng.range(10, 3_000)
                    },
                },
                76..=80 if process => {
                    let cn = rng.below(2) as usize;
                    let down_ms = rng.range(10, 5_000);
                    let kind = *aim.pick(AIMED).unwrap_or(&PlanCode::UpdateProcedure);
                    match aim.below(3) {
                        0 => Op::CrashConfigNode {
                            cn,
                            down_ms,
                            after: None,
                        },
                        1 => Op::CrashConfigNode {
                            cn,
                            down_ms,
                            after: Some(kind),
                        },
                        _ => Op::FailCommit { kind },
                    }
                }
                81..=85 if process => Op::Campaign {
                    cn: rng.below(2) as usize,
                },
                86..=96 if config.net_faults => Op::Partition {
                    cn: rng.below(2) as usize,
                    dn: rng.below(data_nodes as u64) as usize,
                    heal_ms: rng.range(100, 15_000),
                },
                97..=99 => Op::Snapshot,
                _ => Op::Load {
                    db,
                    bytes: rng.range(1, 64 * 1024) as u32,
                },
            };
            // Small weights: about one removal and one loss of a DataNode in every three
            // scenarios, a few migrations and orphans in each.
            let op = match moves.below(1_000) {
                0..=29 => Op::MigrateRegion {
                    group: moves.below(1 << 16) as u32,
                    replica: moves.below(8) as u32,
                    to: (moves.below(2) == 0).then(|| moves.below(data_nodes as u64) as usize),
                },
                30..=32 => Op::RemoveDataNode {
                    dn: moves.below(data_nodes as u64) as usize,
                },
                33..=35 if process => Op::KillDataNode {
                    dn: moves.below(data_nodes as u64) as usize,
                },
                36..=50 => Op::PlantOrphan {
                    dn: moves.below(data_nodes as u64) as usize,
                    bytes: moves.range(1, 64 * 1024) as u32,
                },
                _ => op,
            };
            events.push(Event { at_ms, op });
        }
        events.truncate(config.events);
        events.sort_by_key(|e| e.at_ms);
        Scenario {
            seed,
            data_nodes,
            delete_rates,
            legacy,
            net,
            disk,
            events,
            faults_end_ms: config.window_ms + 1_000,
            settle_ms: config.settle_ms,
            tuning: Tuning::draw(&mut SimRng::new(seed, 7)),
        }
    }

    /// Whether `op` is a fault (the rest is workload).
    pub fn is_fault(op: &Op) -> bool {
        matches!(
            op,
            Op::CrashDataNode { .. }
                | Op::CrashConfigNode { .. }
                | Op::FailCommit { .. }
                | Op::Campaign { .. }
                | Op::Partition { .. }
                | Op::KillDataNode { .. }
        )
    }
}
