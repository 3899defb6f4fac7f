//! One reusable connection to a node, owned by the RPC thread.
//!
//! Every call is served by its own task on the RPC thread. A call uses the logged-in
//! connection if there is one; otherwise it waits for a dial. Dials are coalesced (at most
//! one in flight per connection) and paced by exponential backoff after failures, so a dead
//! node is not hammered. A call is never answered with a dial error produced before the call
//! began: if the only failed attempt predates it, the call waits for the next one — at the
//! end of the backoff window, or earlier if its own deadline would not allow that — and its
//! outcome comes from that attempt.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use shoal_core::api::ApiError;

use super::{ClientOptions, Remote, connect};
use crate::error::TransportError;
use crate::runtime::{LocalEx, RpcRuntime};

type LocalBoxFuture = Pin<Box<dyn Future<Output = ()>>>;
type CallFn = Box<dyn FnOnce(Result<Remote, ApiError>) -> LocalBoxFuture + Send>;

/// One call handed to the RPC thread.
struct Call {
    /// Runs the call on a connection (or answers the connection error) and sends the reply.
    run: CallFn,
    /// When the caller made the call: only a dial started at or after this may fail it.
    started: Instant,
    /// When the caller stops waiting.
    deadline: Instant,
    /// The caller's timeout (named in errors).
    timeout: Duration,
}

/// A reusable connection to one node. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) struct Connection {
    address: String,
    options: ClientOptions,
    calls: async_channel::Sender<Call>,
    // Keeps the RPC thread alive while the client is.
    _runtime: RpcRuntime,
}

impl Connection {
    /// A connection to `address`; nothing is dialled until the first call.
    pub(crate) fn new(
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, TransportError> {
        let (calls, incoming) = async_channel::unbounded::<Call>();
        let link_address = address.to_string();
        let link_options = options.clone();
        runtime.run(move |ex| {
            let link = Rc::new(Link::new(link_address, link_options, ex.clone()));
            ex.spawn(accept_calls(link, incoming)).detach();
        })?;
        Ok(Self {
            address: address.to_string(),
            options,
            calls,
            _runtime: runtime.clone(),
        })
    }

    /// The address this connection dials.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The options it was made with.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Runs `call` on the RPC thread against the connected capabilities, with `timeout`
    /// covering connecting and the call; only the owned result crosses back.
    pub(crate) async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Remote) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ApiError>> + 'static,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        let run: CallFn = Box::new(move |remote| {
            Box::pin(async move {
                let result = match remote {
                    Err(e) => Err(e),
                    Ok(remote) => {
                        let broken = remote.broken.clone();
                        // Dropping the call at the deadline cancels it on the wire too.
                        let result = call(remote)
                            .or(async move {
                                smol::Timer::at(deadline).await;
                                Err(ApiError::Timeout(timeout))
                            })
                            .await;
                        if matches!(result, Err(ApiError::Unreachable(_))) {
                            broken.set(true);
                        }
                        result
                    }
                };
                let _ = reply_tx.try_send(result);
            })
        });
        let job = Call {
            run,
            started,
            deadline,
            timeout,
        };
        if self.calls.try_send(job).is_err() {
            return Err(ApiError::Unreachable("the RPC thread has stopped".into()));
        }
        async {
            reply_rx.recv().await.unwrap_or_else(|_| {
                Err(ApiError::Unreachable(
                    "the RPC thread stopped before replying".into(),
                ))
            })
        }
        .or(async {
            // Backstop in case the RPC thread itself is stuck; the RPC thread answers at the
            // deadline itself, so this fires only if it did not.
            smol::Timer::at(deadline + BACKSTOP_SLACK).await;
            Err(ApiError::Timeout(timeout))
        })
        .await
    }
}

/// How long after a call's deadline the caller stops waiting for the RPC thread's answer.
const BACKSTOP_SLACK: Duration = Duration::from_millis(500);

/// Hands each incoming call to its own task until every handle is dropped.
async fn accept_calls(link: Rc<Link>, incoming: async_channel::Receiver<Call>) {
    while let Ok(call) = incoming.recv().await {
        let link_for_call = link.clone();
        link.ex.spawn(serve_call(link_for_call, call)).detach();
    }
}

/// Gets a connection for `call` (within its deadline) and runs it.
async fn serve_call(link: Rc<Link>, call: Call) {
    let Call {
        run,
        started,
        deadline,
        timeout,
    } = call;
    let remote = link
        .remote_for(started, deadline)
        .or(async {
            smol::Timer::at(deadline).await;
            Err(ApiError::Unreachable(format!(
                "{}: not connected within the call's {timeout:?}",
                link.address
            )))
        })
        .await;
    run(remote).await;
}

/// The connection state shared by the calls of one [`Connection`] (RPC thread only).
struct Link {
    address: String,
    options: ClientOptions,
    ex: LocalEx,
    state: RefCell<LinkState>,
}

struct LinkState {
    /// The logged-in connection, until it breaks.
    remote: Option<Remote>,
    /// The dial in flight, if any (at most one).
    dial: Option<Rc<Dial>>,
    backoff: Backoff,
    /// Closed (and replaced) whenever a dial starts, waking calls waiting to dial.
    dial_started: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

/// One connection attempt; its outcome is shared by every call that waits for it.
struct Dial {
    started: Instant,
    outcome: RefCell<Option<Result<Remote, ApiError>>>,
    /// Closed once `outcome` is set.
    done: async_channel::Receiver<()>,
}

impl Link {
    fn new(address: String, options: ClientOptions, ex: LocalEx) -> Self {
        let backoff = Backoff::new(options.reconnect_min, options.reconnect_max);
        Self {
            address,
            options,
            ex,
            state: RefCell::new(LinkState {
                remote: None,
                dial: None,
                backoff,
                dial_started: async_channel::bounded(1),
            }),
        }
    }

    /// A logged-in connection for a call made at `since` that must be answered by
    /// `deadline`, or the error of a dial started at or after `since`.
    async fn remote_for(
        self: &Rc<Self>,
        since: Instant,
        deadline: Instant,
    ) -> Result<Remote, ApiError> {
        loop {
            let next = {
                let mut state = self.state.borrow_mut();
                if let Some(remote) = &state.remote {
                    if !remote.broken.get() {
                        return Ok(remote.clone());
                    }
                    tracing::debug!(address = %self.address, "connection broken; will reconnect");
                    state.remote = None;
                }
                match &state.dial {
                    Some(dial) => Next::Join(dial.clone()),
                    None => {
                        let now = Instant::now();
                        let at = state.backoff.next_dial(now, since, deadline);
                        if at <= now {
                            Next::Join(self.start_dial(&mut state, now))
                        } else {
                            Next::Sleep(at, state.dial_started.1.clone())
                        }
                    }
                }
            };
            match next {
                Next::Join(dial) => {
                    // Closed once the dial has finished.
                    let _ = dial.done.recv().await;
                    let outcome = dial.outcome.borrow().clone();
                    match outcome {
                        Some(Ok(remote)) => return Ok(remote),
                        Some(Err(error)) if dial.started >= since => return Err(error),
                        // The attempt predates this call (or vanished): it needs its own.
                        _ => {}
                    }
                }
                Next::Sleep(at, dial_started) => {
                    // Wake at the end of the backoff window, or when another call dials.
                    async {
                        smol::Timer::at(at).await;
                    }
                    .or(async {
                        let _ = dial_started.recv().await;
                    })
                    .await;
                }
            }
        }
    }

    /// Starts a dial (the caller checked that none is in flight).
    fn start_dial(self: &Rc<Self>, state: &mut LinkState, now: Instant) -> Rc<Dial> {
        let (done_tx, done_rx) = async_channel::bounded::<()>(1);
        let dial = Rc::new(Dial {
            started: now,
            outcome: RefCell::new(None),
            done: done_rx,
        });
        state.dial = Some(dial.clone());
        // Wake calls sleeping out the backoff window: this attempt is theirs too.
        let (tx, rx) = async_channel::bounded(1);
        drop(std::mem::replace(&mut state.dial_started, (tx, rx)));
        let link = self.clone();
        let task_dial = dial.clone();
        // A task of its own: the dial finishes (for everyone waiting) even if the call that
        // started it gives up.
        self.ex
            .spawn(async move {
                let outcome = connect(&link.address, &link.options, &link.ex)
                    .or(async {
                        smol::Timer::after(link.options.connect_timeout).await;
                        Err(ApiError::Unreachable(format!(
                            "{}: no connection within {:?}",
                            link.address, link.options.connect_timeout
                        )))
                    })
                    .await;
                {
                    let mut state = link.state.borrow_mut();
                    match &outcome {
                        Ok(remote) => {
                            tracing::debug!(address = %link.address, "connected");
                            state.backoff.succeeded();
                            state.remote = Some(remote.clone());
                        }
                        Err(error) => {
                            tracing::debug!(address = %link.address, %error, "connection failed");
                            state.backoff.failed(Instant::now());
                        }
                    }
                    state.dial = None;
                }
                *task_dial.outcome.borrow_mut() = Some(outcome);
                drop(done_tx);
            })
            .detach();
        dial
    }
}

/// What a call waiting for a connection does next.
enum Next {
    /// Wait for this dial's outcome.
    Join(Rc<Dial>),
    /// Sleep until this instant (or until a dial starts), then look again.
    Sleep(Instant, async_channel::Receiver<()>),
}

/// Reconnection pacing after failed connection attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next_delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next_delay: min,
            retry_at: None,
        }
    }

    /// When a call made at `since` with `deadline` should dial, given no dial is in flight:
    /// at the end of the backoff window, but no later than halfway to its deadline (the rest
    /// is for dialling and the call itself), and never in the past.
    pub(crate) fn next_dial(&self, now: Instant, since: Instant, deadline: Instant) -> Instant {
        let Some(retry_at) = self.retry_at else {
            return now;
        };
        let halfway = since + deadline.saturating_duration_since(since) / 2;
        retry_at.min(halfway).max(now)
    }

    /// A dial failed at `now`: the next waits longer.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.next_delay);
        self.next_delay = (self.next_delay * 2).min(self.max);
    }

    /// A dial succeeded: the next one (after the connection breaks) may go at once.
    pub(crate) fn succeeded(&mut self) {
        self.next_delay = self.min;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_out_the_window_unless_the_deadline_is_nearer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(400));
        assert_eq!(
            backoff.next_dial(t0, t0, t0 + ms(1000)),
            t0,
            "never failed: dial now"
        );
        backoff.failed(t0);
        // Window ends at t0 + 100 ms; a call with a 10 s deadline waits for it.
        assert_eq!(backoff.next_dial(t0, t0, t0 + ms(10_000)), t0 + ms(100));
        // A call with a 100 ms budget dials at its halfway point instead.
        assert_eq!(backoff.next_dial(t0, t0, t0 + ms(100)), t0 + ms(50));
        // Once the window has passed: now.
        assert_eq!(
            backoff.next_dial(t0 + ms(150), t0 + ms(150), t0 + ms(10_000)),
            t0 + ms(150)
        );
        // Delays double up to the maximum, and reset on success.
        backoff.failed(t0);
        backoff.failed(t0);
        backoff.failed(t0);
        assert_eq!(backoff.next_dial(t0, t0, t0 + ms(10_000)), t0 + ms(400));
        backoff.succeeded();
        assert_eq!(backoff.next_dial(t0, t0, t0 + ms(10_000)), t0);
    }
}
