//! The one RPC thread of a node: a `smol::LocalExecutor` driven by `smol::block_on`, fed
//! with jobs over an async channel.

use std::rc::Rc;

use smol::LocalExecutor;

use crate::error::TransportError;

/// The executor on the RPC thread; jobs spawn their (`!Send`) tasks onto it.
pub(crate) type LocalEx = Rc<LocalExecutor<'static>>;

thread_local! {
    /// The executor of the RPC thread this is (none on any other thread).
    static RPC_THREAD: std::cell::RefCell<Option<LocalEx>> = const { std::cell::RefCell::new(None) };
}

/// The executor of the RPC thread the caller runs on, if it runs on one.
pub(crate) fn this_rpc_thread() -> Option<LocalEx> {
    RPC_THREAD.with(|this| this.borrow().clone())
}

type Job = Box<dyn FnOnce(&LocalEx) + Send>;

/// Bounds on every incoming message, so a malformed or oversized message fails its own
/// connection instead of exhausting the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest message accepted, in bytes (also the traversal limit: a message is refused
    /// before its body is read if its segment table announces more).
    pub max_message_bytes: usize,
    /// Deepest struct/list nesting accepted.
    pub nesting_limit: i32,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            // Large enough for load-generator writes, small enough to bound memory.
            max_message_bytes: 64 << 20,
            nesting_limit: 64,
        }
    }
}

impl WireLimits {
    /// The capnp reader options enforcing these limits.
    pub(crate) fn reader_options(&self) -> capnp::message::ReaderOptions {
        let mut options = capnp::message::ReaderOptions::new();
        options
            .traversal_limit_in_words(Some(self.max_message_bytes / 8))
            .nesting_limit(self.nesting_limit);
        options
    }
}

/// A handle to a node's RPC thread. Cheap to clone; the thread stops once every handle,
/// server and client using it is dropped.
#[derive(Clone)]
pub struct RpcRuntime {
    jobs: async_channel::Sender<Job>,
}

impl std::fmt::Debug for RpcRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcRuntime")
            .field("running", &!self.jobs.is_closed())
            .finish()
    }
}

impl RpcRuntime {
    /// Starts the RPC thread; `name` labels it (`shoal-rpc-NAME`).
    pub fn start(name: &str) -> Result<Self, TransportError> {
        let (jobs, incoming) = async_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name(format!("shoal-rpc-{name}"))
            .spawn(move || {
                let ex: LocalEx = Rc::new(LocalExecutor::new());
                RPC_THREAD.with(|this| this.replace(Some(ex.clone())));
                smol::block_on(ex.run(async {
                    while let Ok(job) = incoming.recv().await {
                        job(&ex);
                    }
                }));
                tracing::debug!("RPC thread stopped");
            })
            .map_err(TransportError::Thread)?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the RPC thread; it typically spawns a local task.
    pub(crate) fn run<F>(&self, job: F) -> Result<(), TransportError>
    where
        F: FnOnce(&LocalEx) + Send + 'static,
    {
        self.jobs
            .try_send(Box::new(job))
            .map_err(|_| TransportError::RuntimeStopped)
    }
}
