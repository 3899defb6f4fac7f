//! Small example procedures for the framework's tests and benches, and a worked example of
//! the contract: persistent data in one serde struct, explicit state codes, idempotent steps,
//! side effects in an external "world" (the environment) that survives executor restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use event_listener::Event;
use serde::{Deserialize, Serialize};

use crate::state::{LockKey, LockMode, LockResource, ProcedureStatus};

use super::{
    Procedure, ProcedureContext, ProcedureError, ProcedureRegistry, ProcedureType, RollbackStep,
    StateId, Step, decode_data, encode_data,
};

/// The external world the example procedures act on (stands in for DataNodes). Effects are
/// idempotent `key = value` writes, so a re-run step converges.
#[derive(Debug, Default)]
pub struct ExampleWorld {
    effects: Mutex<BTreeMap<String, u64>>,
    transient_failures: Mutex<BTreeMap<String, u32>>,
    open_gates: Mutex<BTreeSet<String>>,
    events: Mutex<Vec<String>>,
    changed: Event,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ExampleWorld {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every effect, by key.
    pub fn effects(&self) -> BTreeMap<String, u64> {
        lock(&self.effects).clone()
    }

    /// Writes an effect (idempotent).
    pub fn set_effect(&self, key: String, value: u64) {
        lock(&self.effects).insert(key, value);
    }

    /// Removes an effect (idempotent).
    pub fn remove_effect(&self, key: &str) {
        lock(&self.effects).remove(key);
    }

    /// Removes every effect whose key starts with `prefix`.
    pub fn remove_prefix(&self, prefix: &str) {
        lock(&self.effects).retain(|k, _| !k.starts_with(prefix));
    }

    /// Makes the next `times` steps of procedure `name` fail with a retryable error.
    pub fn fail_transiently(&self, name: &str, times: u32) {
        lock(&self.transient_failures).insert(name.to_string(), times);
    }

    fn take_transient_failure(&self, name: &str) -> bool {
        let mut failures = lock(&self.transient_failures);
        match failures.get_mut(name) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Opens gate `name`: every [`GateProcedure`] blocked on it proceeds.
    pub fn open_gate(&self, name: &str) {
        lock(&self.open_gates).insert(name.to_string());
        self.changed.notify(usize::MAX);
    }

    async fn wait_gate(&self, name: &str) {
        loop {
            let listener = self.changed.listen();
            if lock(&self.open_gates).contains(name) {
                return;
            }
            listener.await;
        }
    }

    /// Appends an event (for ordering assertions).
    pub fn record(&self, event: String) {
        lock(&self.events).push(event);
        self.changed.notify(usize::MAX);
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<String> {
        lock(&self.events).clone()
    }
}

fn named(name: &str, mode: LockMode) -> LockKey {
    LockKey {
        resource: LockResource::Named(name.to_string()),
        mode,
    }
}

/// Persistent data of [`CounterProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterData {
    /// Unique name; effects are `name/i`.
    pub name: String,
    /// Steps to run.
    pub steps: u32,
    /// Steps completed.
    pub done: u32,
    /// If non-zero, each step is preceded by a wait of this many ms.
    pub wait_ms: u64,
    /// Whether the wait before step `done` is over.
    pub waited: bool,
    /// A step index that fails with a non-retryable error.
    pub fail_at: Option<u32>,
    /// Whether the procedure supports rollback.
    pub rollback: bool,
    /// Rollback progress: the next effect index to remove.
    pub undo_next: Option<u32>,
    /// Lock keys.
    pub locks: Vec<LockKey>,
}

/// Writes effects `name/0..steps` one per step (optionally waiting before each), outputs
/// `steps`. Rollback removes the effects one per step, newest first.
#[derive(Debug, Clone)]
pub struct CounterProcedure {
    /// Its persistent data.
    pub data: CounterData,
}

impl CounterProcedure {
    /// A counter of `steps` steps, locking `name` exclusively.
    pub fn new(name: &str, steps: u32) -> Self {
        Self {
            data: CounterData {
                name: name.to_string(),
                steps,
                done: 0,
                wait_ms: 0,
                waited: false,
                fail_at: None,
                rollback: false,
                undo_next: None,
                locks: vec![named(name, LockMode::Exclusive)],
            },
        }
    }

    /// Waits `ms` before each step.
    pub fn with_wait(mut self, ms: u64) -> Self {
        self.data.wait_ms = ms;
        self
    }

    /// Fails non-retryably at step `at`.
    pub fn failing_at(mut self, at: u32) -> Self {
        self.data.fail_at = Some(at);
        self
    }

    /// Supports rollback.
    pub fn with_rollback(mut self) -> Self {
        self.data.rollback = true;
        self
    }

    /// Replaces the lock keys.
    pub fn with_locks(mut self, locks: Vec<LockKey>) -> Self {
        self.data.locks = locks;
        self
    }
}

#[async_trait]
impl Procedure for CounterProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }
    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }
    fn state(&self) -> StateId {
        let d = &self.data;
        match (d.undo_next, d.done < d.steps, d.wait_ms > 0 && !d.waited) {
            (Some(_), _, _) => StateId {
                code: 10,
                name: "Undo",
            },
            (None, true, true) => StateId {
                code: 2,
                name: "Sleep",
            },
            (None, true, false) => StateId {
                code: 1,
                name: "Count",
            },
            (None, false, _) => StateId {
                code: 3,
                name: "Finish",
            },
        }
    }
    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }
    fn lock_keys(&self) -> Vec<LockKey> {
        self.data.locks.clone()
    }
    /// Retry: injected transient failures. Abort: the configured `fail_at` step.
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let world = ctx.env::<ExampleWorld>()?;
        let d = &mut self.data;
        if world.take_transient_failure(&d.name) {
            return Err(ProcedureError::Retryable(format!("{} flaked", d.name)));
        }
        if d.done >= d.steps {
            return Ok(Step::Done(encode_data(&d.steps)?));
        }
        if d.wait_ms > 0 && !d.waited {
            d.waited = true;
            return Ok(Step::Wait {
                after: Duration::from_millis(d.wait_ms),
                waiting_for: format!("timer before step {}", d.done),
            });
        }
        // The side effect happens before the failure: rollback must undo it too.
        world.set_effect(format!("{}/{}", d.name, d.done), u64::from(d.done));
        if d.fail_at == Some(d.done) {
            return Err(ProcedureError::Abort(format!(
                "{} failed at {}",
                d.name, d.done
            )));
        }
        d.done += 1;
        d.waited = false;
        Ok(Step::Continue)
    }
    fn supports_rollback(&self) -> bool {
        self.data.rollback
    }
    async fn rollback(&mut self, ctx: &ProcedureContext) -> Result<RollbackStep, ProcedureError> {
        let world = ctx.env::<ExampleWorld>()?;
        let d = &mut self.data;
        // Start at `done`: the failed step may have written its effect before failing.
        let next = d.undo_next.unwrap_or(d.done);
        world.remove_effect(&format!("{}/{}", d.name, next));
        if next == 0 {
            return Ok(RollbackStep::Done);
        }
        d.undo_next = Some(next - 1);
        Ok(RollbackStep::Continue)
    }
}

impl ProcedureType for CounterProcedure {
    const TYPE_CODE: u32 = 9001;
    const TYPE_NAME: &'static str = "ExampleCounter";
    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

/// Persistent data of [`ParentProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentData {
    /// Unique name; children are `name-c{j}`, the result effect is `name/sum`.
    pub name: String,
    /// Children to spawn.
    pub children: u32,
    /// Steps of each child.
    pub child_steps: u32,
    /// Whether the children were spawned.
    pub spawned: bool,
    /// A child that fails (non-retryably, no rollback) at its first step.
    pub failing_child: Option<u32>,
}

/// Spawns counter children in one step, then sums their outputs into `name/sum`. A failed
/// child aborts the parent, whose rollback removes everything under `name`.
#[derive(Debug, Clone)]
pub struct ParentProcedure {
    /// Its persistent data.
    pub data: ParentData,
}

impl ParentProcedure {
    /// A parent of `children` counters of `child_steps` steps each.
    pub fn new(name: &str, children: u32, child_steps: u32) -> Self {
        Self {
            data: ParentData {
                name: name.to_string(),
                children,
                child_steps,
                spawned: false,
                failing_child: None,
            },
        }
    }

    /// Makes child `j` fail.
    pub fn with_failing_child(mut self, j: u32) -> Self {
        self.data.failing_child = Some(j);
        self
    }
}

#[async_trait]
impl Procedure for ParentProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }
    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }
    fn state(&self) -> StateId {
        if self.data.spawned {
            StateId {
                code: 2,
                name: "Collect",
            }
        } else {
            StateId {
                code: 1,
                name: "Spawn",
            }
        }
    }
    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }
    fn lock_keys(&self) -> Vec<LockKey> {
        vec![named(&self.data.name, LockMode::Exclusive)]
    }
    /// Abort: a child did not succeed.
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let d = &mut self.data;
        if !d.spawned {
            d.spawned = true;
            let children = (0..d.children)
                .map(|j| {
                    let child_name = format!("{}-c{j}", d.name);
                    let mut child = CounterProcedure::new(&child_name, d.child_steps)
                        .with_rollback()
                        .with_locks(vec![
                            // Inherited from the parent's exclusive hold.
                            named(&d.name, LockMode::Shared),
                            named(&child_name, LockMode::Exclusive),
                        ]);
                    if d.failing_child == Some(j) {
                        child.data.fail_at = Some(0);
                        child.data.rollback = false;
                    }
                    Box::new(child) as Box<dyn Procedure>
                })
                .collect();
            return Ok(Step::SpawnChildren(children));
        }
        let mut sum = 0u64;
        for child in ctx.children() {
            if child.status != ProcedureStatus::Succeeded {
                return Err(ProcedureError::Abort(format!(
                    "child {} ended {}",
                    child.id, child.status
                )));
            }
            let output = child.output.as_deref().unwrap_or_default();
            sum += u64::from(decode_data::<u32>(output)?);
        }
        ctx.env::<ExampleWorld>()?
            .set_effect(format!("{}/sum", d.name), sum);
        Ok(Step::Done(encode_data(&sum)?))
    }
    fn supports_rollback(&self) -> bool {
        true
    }
    async fn rollback(&mut self, ctx: &ProcedureContext) -> Result<RollbackStep, ProcedureError> {
        ctx.env::<ExampleWorld>()?.remove_prefix(&self.data.name);
        Ok(RollbackStep::Done)
    }
}

impl ProcedureType for ParentProcedure {
    const TYPE_CODE: u32 = 9002;
    const TYPE_NAME: &'static str = "ExampleParent";
    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

/// Persistent data of [`GateProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateData {
    /// Name (events `start:name` / `end:name`, effect `name/done`).
    pub name: String,
    /// The gate it waits for.
    pub gate: String,
    /// Lock keys.
    pub locks: Vec<LockKey>,
    /// [`AwaitGateProcedure`] only: each await first changes the persistent data (which a
    /// step may not keep: nothing is committed, so the live instance is dropped).
    #[serde(default)]
    pub scribbles: bool,
}

/// One step that records `start:name`, blocks until its gate opens (holding its worker),
/// writes `name/done`, records `end:name` and finishes.
#[derive(Debug, Clone)]
pub struct GateProcedure {
    /// Its persistent data.
    pub data: GateData,
}

impl GateProcedure {
    /// A gate procedure `name` waiting for `gate`, with `locks`.
    pub fn new(name: &str, gate: &str, locks: Vec<LockKey>) -> Self {
        Self {
            data: GateData {
                name: name.to_string(),
                gate: gate.to_string(),
                locks,
                scribbles: false,
            },
        }
    }

    /// An exclusive lock on a named resource (test helper).
    pub fn exclusive(resource: &str) -> LockKey {
        named(resource, LockMode::Exclusive)
    }
}

#[async_trait]
impl Procedure for GateProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }
    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }
    fn state(&self) -> StateId {
        StateId {
            code: 1,
            name: "Pass",
        }
    }
    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }
    fn lock_keys(&self) -> Vec<LockKey> {
        self.data.locks.clone()
    }
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let world = ctx.env::<ExampleWorld>()?;
        world.record(format!("start:{}", self.data.name));
        world.wait_gate(&self.data.gate).await;
        world.set_effect(format!("{}/done", self.data.name), 1);
        world.record(format!("end:{}", self.data.name));
        Ok(Step::Done(Vec::new()))
    }
}

impl ProcedureType for GateProcedure {
    const TYPE_CODE: u32 = 9003;
    const TYPE_NAME: &'static str = "ExampleGate";
    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

/// One step that finishes once its gate is open, awaiting it with [`Step::Await`]: while
/// the gate is closed it holds no worker and commits nothing. When done it writes
/// `name/awaits`: how many awaits its live instance remembers (a volatile count, kept only
/// while the instance is).
#[derive(Debug, Clone)]
pub struct AwaitGateProcedure {
    /// Its persistent data (name and gate; no locks).
    pub data: GateData,
    /// Awaits this instance returned (volatile).
    awaits: u64,
}

impl AwaitGateProcedure {
    /// An awaiting procedure `name` for `gate`.
    pub fn new(name: &str, gate: &str) -> Self {
        Self {
            data: GateData {
                name: name.to_string(),
                gate: gate.to_string(),
                locks: Vec::new(),
                scribbles: false,
            },
            awaits: 0,
        }
    }
}

#[async_trait]
impl Procedure for AwaitGateProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }
    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }
    fn state(&self) -> StateId {
        StateId {
            code: 1,
            name: "AwaitGate",
        }
    }
    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }
    fn lock_keys(&self) -> Vec<LockKey> {
        Vec::new()
    }
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let world = ctx.env::<ExampleWorld>()?;
        world.record(format!("check:{}", self.data.name));
        // Listen before checking: an opening in between must wake the await.
        let listener = world.changed.listen();
        if lock(&world.open_gates).contains(&self.data.gate) {
            world.set_effect(format!("{}/done", self.data.name), 1);
            world.set_effect(format!("{}/awaits", self.data.name), self.awaits);
            return Ok(Step::Done(Vec::new()));
        }
        self.awaits += 1;
        if self.data.scribbles {
            self.data.name.push('~');
        }
        Ok(Step::Await {
            until: Box::pin(listener),
            waiting_for: format!("gate {}", self.data.gate),
        })
    }
}

impl ProcedureType for AwaitGateProcedure {
    const TYPE_CODE: u32 = 9004;
    const TYPE_NAME: &'static str = "ExampleAwaitGate";
    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
            awaits: 0,
        })
    }
}

/// How [`StagingProcedure`]'s one step ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StagingMode {
    /// Stage one plan and finish: one entry carries both.
    StageAndFinish,
    /// Stage a plan and then await (a misuse: an await commits nothing).
    StageAndAwait,
    /// Stage a plan that the state machine refuses (a `DropRegionGroup` of a group whose
    /// replicas remain), then finish.
    StageRefused,
}

/// Persistent data of [`StagingProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingData {
    /// What the step does.
    pub mode: StagingMode,
    /// The plan it stages, encoded.
    pub plan: Vec<u8>,
}

/// One step that stages a metadata plan with [`ProcedureContext::stage`].
#[derive(Debug, Clone)]
pub struct StagingProcedure {
    /// Its persistent data.
    pub data: StagingData,
}

impl StagingProcedure {
    /// A procedure whose step stages `plan` and ends as `mode` says.
    pub fn new(mode: StagingMode, plan: &crate::plan::ConfigPlan) -> Self {
        Self {
            data: StagingData {
                mode,
                plan: plan.encode().expect("encodes"),
            },
        }
    }
}

#[async_trait]
impl Procedure for StagingProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }
    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }
    fn state(&self) -> StateId {
        StateId {
            code: 1,
            name: "Stage",
        }
    }
    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }
    fn lock_keys(&self) -> Vec<LockKey> {
        Vec::new()
    }
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let plan = crate::plan::ConfigPlan::decode(&self.data.plan)
            .map_err(|e| ProcedureError::Data(e.to_string()))?;
        ctx.stage(plan)?;
        match self.data.mode {
            StagingMode::StageAndFinish | StagingMode::StageRefused => Ok(Step::Done(Vec::new())),
            StagingMode::StageAndAwait => Ok(Step::Await {
                until: Box::pin(std::future::pending()),
                waiting_for: "nothing".into(),
            }),
        }
    }
}

impl ProcedureType for StagingProcedure {
    const TYPE_CODE: u32 = 9005;
    const TYPE_NAME: &'static str = "ExampleStaging";
    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

/// A registry holding every example procedure type.
pub fn example_registry() -> Result<ProcedureRegistry, ProcedureError> {
    let mut registry = ProcedureRegistry::new();
    registry
        .register::<CounterProcedure>()?
        .register::<ParentProcedure>()?
        .register::<GateProcedure>()?
        .register::<AwaitGateProcedure>()?
        .register::<StagingProcedure>()?;
    Ok(registry)
}
