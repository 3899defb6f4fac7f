//! [`InprocRaftNetwork`]: Raft messages between nodes of one process, with fault injection.
//!
//! Each call runs as its own task on the target node's [`RaftServer`] (a caller that gives up
//! does not cancel the handling, as on a real network), and the caller waits for the answer
//! up to a per-call timeout. Faults are per directed link: cut links (partitions) refuse
//! calls before they run; a dropped reply or a link cut while the call ran is a timeout (the
//! call ran); a delay is added before each call. A stopped node is unreachable.
//!
//! A node hosted from inside an injected runtime world ([`crate::rt::hooks`]) handles its
//! calls as tasks of that world (its own node's), so killing the caller does not cancel
//! them and killing the callee does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use crate::network::{RaftServer, RaftTransport, TransportError};
use crate::rt::RuntimeHooks;
use crate::state_machine::RaftSnapshot;
use crate::types::{NodeId, ShoalRaft, Vote};

#[derive(Default)]
struct Faults {
    cut: BTreeSet<(NodeId, NodeId)>,
    delay: Duration,
    /// Replies lost per directed link, counted down per call.
    drop_replies: BTreeMap<(NodeId, NodeId), u64>,
}

/// A hosted node: its server, and the runtime hooks it was hosted under (if any).
type Hosted = (RaftServer, Option<Arc<dyn RuntimeHooks>>);

#[derive(Default)]
struct Inner {
    servers: Mutex<BTreeMap<NodeId, Hosted>>,
    faults: Mutex<Faults>,
}

/// A whole group's in-process network; cheap to clone.
#[derive(Clone, Default)]
pub struct InprocRaftNetwork {
    inner: Arc<Inner>,
    call_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl InprocRaftNetwork {
    /// An empty network whose calls time out after `call_timeout`.
    pub fn new(call_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            call_timeout,
        }
    }

    /// The transport node `from` sends through.
    pub fn transport(&self, from: NodeId) -> Arc<dyn RaftTransport> {
        Arc::new(InprocTransport {
            network: self.clone(),
            from,
        })
    }

    /// Serves node `id` (again, after a restart). Called from inside an injected runtime
    /// world, its calls run as tasks of that world.
    pub fn host(&self, id: NodeId, server: RaftServer) {
        lock(&self.inner.servers).insert(id, (server, crate::rt::current_hooks()));
    }

    /// Stops serving node `id`: calls to it are unreachable.
    pub fn stop(&self, id: NodeId) {
        lock(&self.inner.servers).remove(&id);
    }

    /// Cuts every link between `a` and the rest, both ways (a minority of one).
    pub fn isolate(&self, a: NodeId, others: impl IntoIterator<Item = NodeId>) {
        let mut faults = lock(&self.inner.faults);
        for b in others {
            if b != a {
                faults.cut.insert((a, b));
                faults.cut.insert((b, a));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.inner.faults).cut.clear();
    }

    /// Adds `delay` before every call.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.inner.faults).delay = delay;
    }

    /// Loses the replies of the next `count` calls from `from` to `to` (they run).
    pub fn drop_replies(&self, from: NodeId, to: NodeId, count: u64) {
        lock(&self.inner.faults)
            .drop_replies
            .insert((from, to), count);
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        lock(&self.inner.faults).cut.contains(&(from, to))
    }

    async fn call<T, F, Fut>(&self, from: NodeId, to: NodeId, f: F) -> Result<T, TransportError>
    where
        T: Send + 'static,
        F: FnOnce(RaftServer) -> Fut,
        Fut: std::future::Future<Output = Result<T, TransportError>> + Send + 'static,
    {
        let delay = lock(&self.inner.faults).delay;
        if !delay.is_zero() {
            crate::rt::sleep(delay).await;
        }
        if self.is_cut(from, to) {
            return Err(TransportError::Unreachable(to));
        }
        let server = lock(&self.inner.servers).get(&to).cloned();
        let Some((server, hooks)) = server else {
            return Err(TransportError::Unreachable(to));
        };
        let handling = f(server);
        let task = crate::rt::hooks::enter(hooks, || crate::rt::spawn(handling));
        let answer = futures_lite::future::or(async { Some(task.await) }, async {
            crate::rt::sleep(self.call_timeout).await;
            None
        })
        .await;
        let lost = {
            let mut faults = lock(&self.inner.faults);
            let lost = match faults.drop_replies.get_mut(&(from, to)) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            lost || faults.cut.contains(&(to, from))
        };
        match answer {
            Some(_) if lost => Err(TransportError::Timeout(to)),
            Some(Ok(result)) => result,
            // The handler task died (a panic, or its world dropped it): no answer.
            Some(Err(_)) => Err(TransportError::Timeout(to)),
            None => Err(TransportError::Timeout(to)),
        }
    }
}

/// One node's sending side of an [`InprocRaftNetwork`].
pub struct InprocTransport {
    network: InprocRaftNetwork,
    from: NodeId,
}

#[async_trait]
impl RaftTransport for InprocTransport {
    async fn append_entries(
        &self,
        to: NodeId,
        _addr: &str,
        request: AppendEntriesRequest<ShoalRaft>,
    ) -> Result<AppendEntriesResponse<ShoalRaft>, TransportError> {
        self.network
            .call(self.from, to, move |server| async move {
                server.append_entries(request).await
            })
            .await
    }

    async fn vote(
        &self,
        to: NodeId,
        _addr: &str,
        request: VoteRequest<ShoalRaft>,
    ) -> Result<VoteResponse<ShoalRaft>, TransportError> {
        self.network
            .call(self.from, to, move |server| async move {
                server.vote(request).await
            })
            .await
    }

    async fn install_snapshot(
        &self,
        to: NodeId,
        _addr: &str,
        vote: Vote,
        snapshot: RaftSnapshot,
    ) -> Result<SnapshotResponse<ShoalRaft>, TransportError> {
        self.network
            .call(self.from, to, move |server| async move {
                server.install_snapshot(vote, snapshot).await
            })
            .await
    }
}
