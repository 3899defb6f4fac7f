//! The network, its links and the generic call path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_lite::future;
use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, RegionChunk,
    RegionDigest, SubmitOutcome, TaskStatus,
};
use shoal_core::model::{Epoch, RegionId, TaskId};
use shoal_core::runtime::{BoxFuture, Runtime, Spawner};

/// Faults on one directed link. The default is a healthy link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Delay before each request is delivered.
    pub latency: Duration,
    /// The next this-many requests are lost: the call never runs, the caller times out.
    pub drop_requests: u32,
    /// The next this-many replies are lost: the call runs, the caller times out.
    pub drop_replies: u32,
    /// Calls fail at once as unreachable (and never run) while set.
    pub partitioned: bool,
    /// Per-call timeout on this link, overriding the network default.
    pub timeout: Option<Duration>,
    /// Like `drop_requests`, for calls of one method only (by name, e.g. `"submit_task"`).
    pub drop_requests_of: BTreeMap<&'static str, u32>,
    /// Like `drop_replies`, for calls of one method only (by name, e.g. `"task_result"`).
    pub drop_replies_of: BTreeMap<&'static str, u32>,
    /// Calls of one method are answered at once with this error and never run (a peer that
    /// refuses, or answers garbage).
    pub answer_of: BTreeMap<&'static str, ApiError>,
}

/// What happens to one message, as a [`MessagePolicy`] decides it (on top of the link's
/// [`LinkFaults`]). The default delivers at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFate {
    /// Time the request spends in flight. It travels on its own, so a request sent just
    /// before its sender stops still arrives (and runs).
    pub latency: Duration,
    /// The request is lost: the call never runs, the caller times out.
    pub lose_request: bool,
    /// The reply is lost: the call runs, the caller times out.
    pub lose_reply: bool,
    /// A second copy of the request arrives this long after the first; its reply is dropped.
    pub duplicate_after: Option<Duration>,
    /// Time the reply spends in flight (a reply later than the caller's timeout is lost).
    pub reply_latency: Duration,
}

/// Decides the fate of every message, e.g. from a seeded random generator (the simulator).
pub trait MessagePolicy: Send + Sync + 'static {
    /// The fate of one call of `method` from `from` to `to`.
    fn fate(&self, from: &str, to: &str, method: &'static str) -> MessageFate;
}

/// Takes one from `counter` if it is positive.
fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// What happened on one directed link so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Calls the caller started.
    pub calls: u64,
    /// Requests delivered to the callee (the call ran).
    pub delivered: u64,
    /// Requests lost on the way.
    pub dropped_requests: u64,
    /// Replies lost on the way back.
    pub dropped_replies: u64,
    /// Calls refused because of a partition or a stopped node.
    pub unreachable: u64,
    /// Calls that ended in a timeout.
    pub timeouts: u64,
}

type Envelope<S> = Box<dyn FnOnce(Arc<S>) -> BoxFuture<()> + Send>;

struct Hosted<S: ?Sized> {
    inbox: async_channel::Sender<Envelope<S>>,
    /// Dropped on stop: every in-flight call of this incarnation is cancelled.
    _alive: async_channel::Sender<()>,
}

struct NetState<S: ?Sized> {
    nodes: BTreeMap<String, Hosted<S>>,
    policy: Option<Arc<dyn MessagePolicy>>,
    links: BTreeMap<(String, String), LinkFaults>,
    stats: BTreeMap<(String, String), LinkStats>,
}

/// A network of in-process nodes serving `S` (e.g. `dyn DataNodeApi`).
pub struct InprocNetwork<S: ?Sized + Send + Sync + 'static> {
    state: Arc<Mutex<NetState<S>>>,
    runtime: Runtime,
    default_timeout: Duration,
}

impl<S: ?Sized + Send + Sync + 'static> Clone for InprocNetwork<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            runtime: self.runtime.clone(),
            default_timeout: self.default_timeout,
        }
    }
}

impl<S: ?Sized + Send + Sync + 'static> std::fmt::Debug for InprocNetwork<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.lock().nodes.keys().cloned().collect();
        f.debug_struct("InprocNetwork")
            .field("nodes", &nodes)
            .finish()
    }
}

impl<S: ?Sized + Send + Sync + 'static> InprocNetwork<S> {
    /// An empty network whose calls time out after `default_timeout` unless a link says
    /// otherwise.
    pub fn new(runtime: Runtime, default_timeout: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                nodes: BTreeMap::new(),
                policy: None,
                links: BTreeMap::new(),
                stats: BTreeMap::new(),
            })),
            runtime,
            default_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState<S>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts serving `service` at `address`, replacing (and stopping) any node there.
    pub fn host(&self, address: &str, service: Arc<S>) {
        self.host_on(address, service, self.runtime.spawner.clone());
    }

    /// Like [`InprocNetwork::host`], running the serving loop and every call on `spawner`
    /// (the hosted node's own), so whoever owns that spawner can stop them all at once.
    pub fn host_on(&self, address: &str, service: Arc<S>, spawner: Arc<dyn Spawner>) {
        let (inbox, requests) = async_channel::unbounded::<Envelope<S>>();
        let (alive, alive_rx) = async_channel::bounded::<()>(1);
        let name = format!("inproc-serve-{address}");
        spawner.clone().spawn(
            &name,
            Box::pin(async move {
                while let Ok(envelope) = requests.recv().await {
                    let call = envelope(service.clone());
                    let alive = alive_rx.clone();
                    // Each call runs concurrently (long polls must not block the node), and
                    // is cancelled when the node stops.
                    spawner.spawn(
                        "inproc-call",
                        Box::pin(async move {
                            future::or(call, async move {
                                let _ = alive.recv().await;
                            })
                            .await;
                        }),
                    );
                }
            }),
        );
        self.lock().nodes.insert(
            address.to_owned(),
            Hosted {
                inbox,
                _alive: alive,
            },
        );
    }

    /// Stops the node at `address`: in-flight calls are cancelled and new calls find it
    /// unreachable until it is hosted again. Returns whether a node was there.
    pub fn stop(&self, address: &str) -> bool {
        self.lock().nodes.remove(address).is_some()
    }

    /// Lets `policy` decide the fate of every message from now on (`None`: links only).
    pub fn set_policy(&self, policy: Option<Arc<dyn MessagePolicy>>) {
        self.lock().policy = policy;
    }

    /// Whether a node is hosted at `address`.
    pub fn is_up(&self, address: &str) -> bool {
        self.lock().nodes.contains_key(address)
    }

    /// A client calling `to` from the node named `from`.
    pub fn client(&self, from: &str, to: &str) -> InprocClient<S> {
        InprocClient {
            network: self.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }

    /// Replaces the faults of the link `from` → `to`.
    pub fn set_link(&self, from: &str, to: &str, faults: LinkFaults) {
        self.lock()
            .links
            .insert((from.to_owned(), to.to_owned()), faults);
    }

    /// Changes the faults of the link `from` → `to` in place.
    pub fn update_link(&self, from: &str, to: &str, change: impl FnOnce(&mut LinkFaults)) {
        change(
            self.lock()
                .links
                .entry((from.to_owned(), to.to_owned()))
                .or_default(),
        );
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: &str, b: &str) {
        self.update_link(a, b, |l| l.partitioned = true);
        self.update_link(b, a, |l| l.partitioned = true);
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.update_link(a, b, |l| l.partitioned = false);
        self.update_link(b, a, |l| l.partitioned = false);
    }

    /// What happened on the link `from` → `to`.
    pub fn stats(&self, from: &str, to: &str) -> LinkStats {
        self.lock()
            .stats
            .get(&(from.to_owned(), to.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    fn record(&self, from: &str, to: &str, change: impl FnOnce(&mut LinkStats)) {
        change(
            self.lock()
                .stats
                .entry((from.to_owned(), to.to_owned()))
                .or_default(),
        );
    }
}

/// Decides, under the lock, what happens to one call on a link.
enum Fate<S: ?Sized> {
    Unreachable,
    Answer(ApiError),
    Deliver {
        inbox: async_channel::Sender<Envelope<S>>,
        drop_reply: bool,
    },
    Lose,
}

/// A client of one node over one link.
pub struct InprocClient<S: ?Sized + Send + Sync + 'static> {
    network: InprocNetwork<S>,
    from: String,
    to: String,
}

impl<S: ?Sized + Send + Sync + 'static> Clone for InprocClient<S> {
    fn clone(&self) -> Self {
        Self {
            network: self.network.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

impl<S: ?Sized + Send + Sync + 'static> std::fmt::Debug for InprocClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InprocClient")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

/// One delivery of a request: runs `call` on the service and sends its reply (unless the
/// reply is lost, or this is a duplicate nobody waits for) after `reply_latency`.
fn envelope<S, R, F>(
    call: Arc<F>,
    reply: Option<async_channel::Sender<Result<R, ApiError>>>,
    reply_latency: Duration,
    runtime: Runtime,
) -> Envelope<S>
where
    S: ?Sized + Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(Arc<S>) -> BoxFuture<Result<R, ApiError>> + Send + Sync + 'static,
{
    Box::new(move |service| {
        let fut = call(service);
        Box::pin(async move {
            let result = fut.await;
            if let Some(reply) = reply {
                if !reply_latency.is_zero() {
                    runtime.clock.sleep(reply_latency).await;
                }
                let _ = reply.send(result).await;
            }
        })
    })
}

impl<S: ?Sized + Send + Sync + 'static> InprocClient<S> {
    /// Runs `call` (the remote method `method`) on the remote service, subject to the
    /// link's faults and the network's [`MessagePolicy`]. `call` may run twice when the
    /// policy duplicates the request.
    pub async fn call<R: Send + 'static>(
        &self,
        method: &'static str,
        call: impl Fn(Arc<S>) -> BoxFuture<Result<R, ApiError>> + Send + Sync + 'static,
    ) -> Result<R, ApiError> {
        let net = &self.network;
        let (faults, policy) = {
            let state = net.lock();
            let faults = state
                .links
                .get(&(self.from.clone(), self.to.clone()))
                .cloned();
            (faults.unwrap_or_default(), state.policy.clone())
        };
        let fate = policy
            .map(|p| p.fate(&self.from, &self.to, method))
            .unwrap_or_default();
        let timeout = faults.timeout.unwrap_or(net.default_timeout);
        net.record(&self.from, &self.to, |s| s.calls += 1);
        if !faults.latency.is_zero() {
            net.runtime.clock.sleep(faults.latency).await;
        }
        let decided = {
            let mut state = net.lock();
            let key = (self.from.clone(), self.to.clone());
            let link = state.links.entry(key).or_default();
            let lose_request = take(&mut link.drop_requests)
                || link.drop_requests_of.get_mut(method).is_some_and(take)
                || fate.lose_request;
            if link.partitioned {
                Fate::Unreachable
            } else if let Some(error) = link.answer_of.get(method) {
                Fate::Answer(error.clone())
            } else if lose_request {
                Fate::Lose
            } else {
                let drop_reply = take(&mut link.drop_replies)
                    || link.drop_replies_of.get_mut(method).is_some_and(take)
                    || fate.lose_reply;
                match state.nodes.get(&self.to) {
                    Some(node) => Fate::Deliver {
                        inbox: node.inbox.clone(),
                        drop_reply,
                    },
                    None => Fate::Unreachable,
                }
            }
        };
        let (inbox, drop_reply) = match decided {
            Fate::Unreachable => {
                net.record(&self.from, &self.to, |s| s.unreachable += 1);
                return Err(ApiError::Unreachable(format!("{} is unreachable", self.to)));
            }
            Fate::Answer(error) => return Err(error),
            Fate::Lose => {
                net.record(&self.from, &self.to, |s| {
                    s.dropped_requests += 1;
                    s.timeouts += 1;
                });
                net.runtime.clock.sleep(timeout).await;
                return Err(ApiError::Timeout(timeout));
            }
            Fate::Deliver { inbox, drop_reply } => (inbox, drop_reply),
        };
        let call = Arc::new(call);
        let (reply_tx, reply_rx) = async_channel::bounded::<Result<R, ApiError>>(1);
        let first = envelope(
            call.clone(),
            (!drop_reply).then_some(reply_tx),
            fate.reply_latency,
            net.runtime.clone(),
        );
        if let Some(after) = fate.duplicate_after {
            let copy = envelope(call, None, Duration::ZERO, net.runtime.clone());
            let inbox = inbox.clone();
            let clock = net.runtime.clock.clone();
            let delay = fate.latency + after;
            net.runtime.spawner.spawn(
                "inproc-duplicate",
                Box::pin(async move {
                    clock.sleep(delay).await;
                    let _ = inbox.send(copy).await;
                }),
            );
        }
        if fate.latency.is_zero() {
            if inbox.send(first).await.is_err() {
                net.record(&self.from, &self.to, |s| s.unreachable += 1);
                return Err(ApiError::Unreachable(format!("{} stopped", self.to)));
            }
        } else {
            // In flight on its own: the request arrives even if the caller is gone by then.
            let clock = net.runtime.clock.clone();
            let latency = fate.latency;
            net.runtime.spawner.spawn(
                "inproc-in-flight",
                Box::pin(async move {
                    clock.sleep(latency).await;
                    let _ = inbox.send(first).await;
                }),
            );
        }
        net.record(&self.from, &self.to, |s| {
            s.delivered += 1;
            if drop_reply {
                s.dropped_replies += 1;
            }
        });
        let clock = net.runtime.clock.clone();
        if drop_reply {
            // The call runs; its reply never comes back.
            clock.sleep(timeout).await;
            net.record(&self.from, &self.to, |s| s.timeouts += 1);
            return Err(ApiError::Timeout(timeout));
        }
        let outcome = future::or(async { Some(reply_rx.recv().await) }, async move {
            clock.sleep(timeout).await;
            None
        })
        .await;
        match outcome {
            Some(Ok(result)) => result,
            // The node stopped while the call ran: the caller cannot know whether it ran.
            Some(Err(_closed)) => Err(ApiError::Unreachable(format!(
                "{} stopped during the call",
                self.to
            ))),
            None => {
                net.record(&self.from, &self.to, |s| s.timeouts += 1);
                Err(ApiError::Timeout(timeout))
            }
        }
    }
}

#[async_trait]
impl DataNodeApi for InprocClient<dyn DataNodeApi> {
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError> {
        self.call("create_region", move |s| {
            let request = request.clone();
            Box::pin(async move { s.create_region(epoch, request).await })
        })
        .await
    }

    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError> {
        self.call("delete_region", move |s| {
            Box::pin(async move { s.delete_region(epoch, region).await })
        })
        .await
    }

    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.call("write_region", move |s| {
            let bytes = bytes.clone();
            Box::pin(async move { s.write_region(region, bytes).await })
        })
        .await
    }

    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError> {
        self.call("submit_task", move |s| {
            let task = task.clone();
            Box::pin(async move { s.submit_task(epoch, task).await })
        })
        .await
    }

    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        self.call("task_result", move |s| {
            Box::pin(async move { s.task_result(task_id, wait).await })
        })
        .await
    }

    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        self.call("ack_task", move |s| {
            Box::pin(async move { s.ack_task(epoch, task_id).await })
        })
        .await
    }

    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.call("heartbeat", move |s| {
            Box::pin(async move { s.heartbeat(epoch).await })
        })
        .await
    }

    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        self.call("read_region", move |s| {
            Box::pin(async move { s.read_region(region, offset, max_len).await })
        })
        .await
    }

    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.call("region_digest", move |s| {
            Box::pin(async move { s.region_digest(region, len).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
