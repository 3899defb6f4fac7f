//! [`ProcedureExecutor`]: follows leadership, runs a session per term, and offers the
//! submission, wait and status API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;
use futures_lite::future;

use crate::consensus::Consensus;
use crate::model::ProcedureId;
use crate::plan::{ConfigPlan, SubmitProcedure};
use crate::runtime::Runtime;
use crate::state::Applied;

use super::config::ExecutorConfig;
use super::context::Environment;
use super::session::{Phase, SessionCore, Shared};
use super::status::{ProcedureInfo, ProcedureView, procedure_info};
use super::transitions::new_procedure;
use super::{Procedure, ProcedureError, ProcedureRegistry};

/// Runs procedures while this node leads. See the module docs for the guarantees.
pub struct ProcedureExecutor {
    shared: Arc<Shared>,
    current: Mutex<Option<Arc<SessionCore>>>,
    shutdown: AtomicBool,
    shutdown_event: Event,
    started: AtomicBool,
}

impl std::fmt::Debug for ProcedureExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcedureExecutor")
            .field("epoch", &self.session().map(|s| s.epoch))
            .finish_non_exhaustive()
    }
}

impl ProcedureExecutor {
    /// An executor over `consensus`, running the types in `registry`, with `env` as the
    /// environment every step can reach. Call [`ProcedureExecutor::start`].
    pub fn new(
        consensus: Arc<dyn Consensus>,
        registry: Arc<ProcedureRegistry>,
        runtime: Runtime,
        env: Environment,
        config: ExecutorConfig,
    ) -> Arc<Self> {
        Self::build(Shared {
            consensus,
            registry,
            runtime,
            env,
            config,
            changed: Event::new(),
            #[cfg(any(test, feature = "testing"))]
            hooks: None,
        })
    }

    /// Like [`ProcedureExecutor::new`], with crash-test hooks.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_hooks(
        consensus: Arc<dyn Consensus>,
        registry: Arc<ProcedureRegistry>,
        runtime: Runtime,
        env: Environment,
        config: ExecutorConfig,
        hooks: Arc<dyn super::testing::ExecutorHooks>,
    ) -> Arc<Self> {
        Self::build(Shared {
            consensus,
            registry,
            runtime,
            env,
            config,
            changed: Event::new(),
            hooks: Some(hooks),
        })
    }

    fn build(shared: Shared) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(shared),
            current: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            shutdown_event: Event::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Starts following leadership (idempotent): a session runs for every term this node
    /// leads, until [`ProcedureExecutor::shutdown`].
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let executor = self.clone();
        self.shared.runtime.spawner.spawn(
            "procedure-executor",
            Box::pin(async move { executor.supervise().await }),
        );
    }

    fn session(&self) -> Option<Arc<SessionCore>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    async fn wait_shutdown(&self) {
        loop {
            if self.is_shut_down() {
                return;
            }
            let listener = self.shutdown_event.listen();
            if self.is_shut_down() {
                return;
            }
            listener.await;
        }
    }

    async fn supervise(self: Arc<Self>) {
        let watch = self.shared.consensus.leadership();
        loop {
            let epoch = future::or(async { Some(watch.wait_leader().await) }, async {
                self.wait_shutdown().await;
                None
            })
            .await;
            let Some(epoch) = epoch else { break };
            if self.is_shut_down() {
                break;
            }
            let session = SessionCore::new(epoch, self.shared.clone());
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
            session.start();
            self.shared.changed.notify(usize::MAX);
            future::or(
                future::or(watch.wait_lost(epoch), session.wait_stopped()),
                self.wait_shutdown(),
            )
            .await;
            session.stop().await;
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.shared.changed.notify(usize::MAX);
            if self.is_shut_down() {
                break;
            }
            // A session may stop on a leadership-loss error before the watch says so: never
            // start a second session in the same term.
            future::or(watch.wait_lost(epoch), self.wait_shutdown()).await;
        }
    }

    /// Stops for good: the running session (if any) stops, and once this returns nothing more
    /// is committed by this executor.
    pub async fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.shutdown_event.notify(usize::MAX);
        if let Some(session) = self.session() {
            session.stop().await;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.changed.notify(usize::MAX);
    }

    /// Whether a session is running (this node leads and the executor is started).
    pub fn is_running(&self) -> bool {
        self.session().is_some_and(|s| !s.is_stopped())
    }

    /// Resolves once a session is running.
    pub async fn wait_running(&self) {
        loop {
            let listener = self.shared.changed.listen();
            if self.is_running() {
                return;
            }
            listener.await;
        }
    }

    /// Durably records `procedure` and returns its id (only after the commit). With a
    /// `request_key`, a retried submit returns the id of the first one.
    pub async fn submit(
        &self,
        procedure: Box<dyn Procedure>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ProcedureError> {
        let session = self.session().ok_or(ProcedureError::NotLeader)?;
        if !self.shared.registry.contains(procedure.type_code()) {
            return Err(ProcedureError::UnknownType(procedure.type_code()));
        }
        let new = new_procedure(procedure.as_ref(), self.shared.runtime.clock.now_ms())?;
        let plan = ConfigPlan::SubmitProcedure(SubmitProcedure {
            procedure: new,
            request_key,
        });
        match session.commit(plan, None).await? {
            Ok(Applied::ProcedureSubmitted { id, existing }) => {
                tracing::info!(procedure = %id, existing, type_name = procedure.type_name(), "submitted");
                session.sync_from_state();
                Ok(id)
            }
            Ok(other) => Err(ProcedureError::Data(format!(
                "submit applied unexpectedly: {other:?}"
            ))),
            Err(rejection) => Err(rejection.into()),
        }
    }

    /// Waits until procedure `id` has finished and returns its status. Fails with
    /// [`ProcedureError::NotLeader`] if this node stops leading first (ask the new leader),
    /// and [`ProcedureError::UnknownProcedure`] if no such procedure is recorded.
    pub async fn wait_finished(&self, id: ProcedureId) -> Result<ProcedureInfo, ProcedureError> {
        loop {
            let listener = self.shared.changed.listen();
            match self.get(id) {
                None => return Err(ProcedureError::UnknownProcedure(id)),
                Some(info)
                    if matches!(
                        info.status,
                        ProcedureView::Succeeded
                            | ProcedureView::Failed
                            | ProcedureView::RolledBack
                    ) =>
                {
                    return Ok(info);
                }
                Some(_) => {}
            }
            if !self.is_running() {
                return Err(ProcedureError::NotLeader);
            }
            listener.await;
        }
    }

    /// The status of procedure `id`, if recorded.
    pub fn get(&self, id: ProcedureId) -> Option<ProcedureInfo> {
        let record = self
            .shared
            .consensus
            .state()
            .read(|s| s.procedures.get(&id).cloned())?;
        Some(self.enrich(procedure_info(&record, &self.shared.registry)))
    }

    /// The status of every recorded procedure, in id order.
    pub fn list(&self) -> Vec<ProcedureInfo> {
        let infos: Vec<ProcedureInfo> = self.shared.consensus.state().read(|s| {
            s.procedures
                .values()
                .map(|r| procedure_info(r, &self.shared.registry))
                .collect()
        });
        infos.into_iter().map(|i| self.enrich(i)).collect()
    }

    /// Adds what only the running session knows (lock waits, undecodable data).
    fn enrich(&self, mut info: ProcedureInfo) -> ProcedureInfo {
        if let Some(session) = self.session()
            && let Some((phase, note)) = session.describe(info.id)
        {
            match phase {
                Phase::Locking => {
                    info.status = ProcedureView::Waiting;
                    info.waiting_for = note.or(Some("locks".into()));
                }
                Phase::Unreadable(why) => {
                    info.status = ProcedureView::Unreadable;
                    info.waiting_for = Some(why);
                }
                Phase::Awaiting(what) => {
                    info.status = ProcedureView::Waiting;
                    info.waiting_for = Some(what);
                }
                _ => {}
            }
        }
        info
    }

    /// Prunes finished procedures beyond the retention bounds now (normally automatic).
    pub async fn prune_now(&self) -> Result<(), ProcedureError> {
        let session = self.session().ok_or(ProcedureError::NotLeader)?;
        session.prune().await;
        Ok(())
    }
}
