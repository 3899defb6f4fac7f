//! [`SmolRuntime`]: openraft's [`AsyncRuntime`] on smol, without tokio.
//!
//! Tasks go to smol's global executor; a dropped [`SmolJoinHandle`] detaches its task (as
//! openraft expects), and a panicking task is reported as a [`SmolJoinError`] instead of
//! unwinding into whoever awaits it. Timers are smol timers on [`std::time::Instant`];
//! channels are async-channel (mpsc), futures-channel (oneshot) and a small watch cell built
//! on event-listener; the mutex is async-lock's. openraft's own runtime suite
//! (`openraft::testing::runtime::Suite`) runs against this adapter in this crate's tests.
//!
//! A deterministic world can inject its own scheduler, clock and randomness per thread
//! ([`hooks`]): spawning, sleeping, the clock ([`RtInstant`]) and the RNG then go there.

pub mod hooks;

pub use hooks::{RtInstant, RtRng, RuntimeHooks, WithHooks, current_hooks, with_hooks};

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use event_listener::Event;
use futures_lite::FutureExt;
use openraft::OptionalSend;
use openraft::OptionalSync;
use openraft::async_runtime::watch::{RecvError, SendError as WatchSendError};
use openraft::async_runtime::{
    Mpsc, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender, SendError,
    TryRecvError, Watch, WatchReceiver, WatchSender,
};

/// openraft's async runtime on smol's global executor.
#[derive(Debug, Default)]
pub struct SmolRuntime {
    _private: (),
}

/// A spawned task panicked; carries the panic message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmolJoinError {
    message: String,
}

impl fmt::Display for SmolJoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spawned task panicked: {}", self.message)
    }
}

impl std::error::Error for SmolJoinError {}

/// A task's handle. Dropping it detaches the task: it runs to completion regardless.
pub struct SmolJoinHandle<T> {
    task: JoinInner<T>,
}

enum JoinInner<T> {
    /// A smol task (`None` once dropped).
    Smol(Option<smol::Task<Result<T, SmolJoinError>>>),
    /// A task of an injected world: its result arrives on a channel.
    Hooked(futures_channel::oneshot::Receiver<Result<T, SmolJoinError>>),
}

impl<T> Drop for SmolJoinHandle<T> {
    fn drop(&mut self) {
        if let JoinInner::Smol(task) = &mut self.task
            && let Some(task) = task.take()
        {
            task.detach();
        }
    }
}

impl<T> Future for SmolJoinHandle<T> {
    type Output = Result<T, SmolJoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.task {
            JoinInner::Smol(Some(task)) => task.poll(cx),
            JoinInner::Smol(None) => Poll::Ready(Err(SmolJoinError {
                message: "join handle polled after completion".into(),
            })),
            JoinInner::Hooked(result) => Pin::new(result).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(SmolJoinError {
                        message: "task dropped before it finished".into(),
                    })
                })
            }),
        }
    }
}

/// A sleep that resolves to `()`: a smol timer, or the injected clock's.
pub struct SmolSleep(SleepInner);

enum SleepInner {
    Timer(smol::Timer),
    Hooked(hooks::HookFuture),
}

impl SmolSleep {
    fn until(deadline: RtInstant) -> Self {
        match current_hooks() {
            Some(hooks) => SmolSleep(SleepInner::Hooked(
                hooks.sleep_until(deadline.since_origin()),
            )),
            None => SmolSleep(SleepInner::Timer(smol::Timer::at(deadline.wall()))),
        }
    }

    fn after(duration: Duration) -> Self {
        use openraft::Instant as _;
        Self::until(RtInstant::now() + duration)
    }
}

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            SleepInner::Timer(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            SleepInner::Hooked(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

/// Sleeps `duration` on this runtime's clock (the injected one, if any).
pub fn sleep(duration: Duration) -> SmolSleep {
    SmolSleep::after(duration)
}

/// Now, on this runtime's clock (the injected one, if any).
pub fn now() -> RtInstant {
    <RtInstant as openraft::Instant>::now()
}

/// Spawns `future` on this runtime (the injected world, if any); it runs to completion.
pub fn spawn_detached(future: impl Future<Output = ()> + Send + 'static) {
    drop(<SmolRuntime as openraft::AsyncRuntime>::spawn(future));
}

/// Spawns `future` on this runtime; the handle resolves with its output.
pub fn spawn<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> SmolJoinHandle<T> {
    <SmolRuntime as openraft::AsyncRuntime>::spawn(future)
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// A future with a deadline: the inner future wins a tie.
    pub struct SmolTimeout<F> {
        #[pin]
        future: F,
        timer: SmolSleep,
    }
}

impl<F: Future> Future for SmolTimeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(value) = this.future.poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl openraft::AsyncRuntime for SmolRuntime {
    type JoinError = SmolJoinError;
    type JoinHandle<T: OptionalSend + 'static> = SmolJoinHandle<T>;
    type Sleep = SmolSleep;
    type Instant = RtInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SmolTimeout<T>;
    type ThreadLocalRng = RtRng;
    type Mpsc = SmolMpsc;
    type Watch = SmolWatch;
    type Oneshot = SmolOneshot;
    type Mutex<T: OptionalSend + 'static> = SmolMutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let guarded = async move {
            AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .map_err(|payload| SmolJoinError {
                    message: panic_message(payload),
                })
        };
        match current_hooks() {
            Some(hooks) => {
                let (done, result) = futures_channel::oneshot::channel();
                let task = with_hooks(hooks.clone(), async move {
                    let _ = done.send(guarded.await);
                });
                hooks.spawn(Box::pin(task));
                SmolJoinHandle {
                    task: JoinInner::Hooked(result),
                }
            }
            None => SmolJoinHandle {
                task: JoinInner::Smol(Some(smol::spawn(guarded))),
            },
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        SmolSleep::after(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        SmolSleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        SmolTimeout {
            future,
            timer: SmolSleep::after(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        SmolTimeout {
            future,
            timer: SmolSleep::until(deadline),
        }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        // Tasks are never cancelled through their handle: the only join error is a panic.
        true
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RtRng::current()
    }

    fn new(_threads: usize) -> Self {
        // smol's global executor sizes itself (SMOL_THREADS); nothing to build.
        Self::default()
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        smol::block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, std::io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // In an injected world there are no other threads: run it in place (deterministic).
        let outcome: Pin<Box<dyn Future<Output = Result<T, std::io::Error>> + Send>> =
            if current_hooks().is_some() {
                let value = f();
                Box::pin(async move { Ok(value) })
            } else {
                let task = blocking::unblock(f);
                Box::pin(async move { Ok(task.await) })
            };
        outcome
    }
}

/// Bounded mpsc channels on async-channel.
pub struct SmolMpsc;

/// Sending half of a [`SmolMpsc`] channel.
pub struct SmolMpscSender<T>(async_channel::Sender<T>);
/// A sender that does not keep the channel open.
pub struct SmolMpscWeakSender<T>(async_channel::WeakSender<T>);
/// Receiving half of a [`SmolMpsc`] channel.
pub struct SmolMpscReceiver<T>(async_channel::Receiver<T>);

impl<T> Clone for SmolMpscSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Clone for SmolMpscWeakSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Mpsc for SmolMpsc {
    type Sender<T: OptionalSend> = SmolMpscSender<T>;
    type Receiver<T: OptionalSend> = SmolMpscReceiver<T>;
    type WeakSender<T: OptionalSend> = SmolMpscWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        // async-channel refuses a zero capacity; one slot is the closest bounded behaviour.
        let (tx, rx) = async_channel::bounded(buffer.max(1));
        (SmolMpscSender(tx), SmolMpscReceiver(rx))
    }
}

impl<T: OptionalSend> MpscSender<SmolMpsc, T> for SmolMpscSender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        let send = self.0.send(msg);
        async move { send.await.map_err(|e| SendError(e.into_inner())) }
    }

    fn downgrade(&self) -> SmolMpscWeakSender<T> {
        SmolMpscWeakSender(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscWeakSender<SmolMpsc, T> for SmolMpscWeakSender<T> {
    fn upgrade(&self) -> Option<SmolMpscSender<T>> {
        self.0.upgrade().map(SmolMpscSender)
    }
}

impl<T: OptionalSend> MpscReceiver<T> for SmolMpscReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        let recv = self.0.recv();
        async move { recv.await.ok() }
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            async_channel::TryRecvError::Empty => TryRecvError::Empty,
            async_channel::TryRecvError::Closed => TryRecvError::Disconnected,
        })
    }
}

/// One-shot channels on futures-channel.
pub struct SmolOneshot;

/// Sending half of a [`SmolOneshot`] channel.
pub struct SmolOneshotSender<T>(futures_channel::oneshot::Sender<T>);

impl Oneshot for SmolOneshot {
    type Sender<T: OptionalSend> = SmolOneshotSender<T>;
    type Receiver<T: OptionalSend> = futures_channel::oneshot::Receiver<T>;
    type ReceiverError = futures_channel::oneshot::Canceled;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = futures_channel::oneshot::channel();
        (SmolOneshotSender(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for SmolOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

/// An async mutex with no wall-clock dependence (core's
/// `FifoMutex`: `async_lock::Mutex` turns fair after 500 µs of real contention, which would
/// make a simulated run depend on the machine's speed).
pub struct SmolMutex<T>(shoal_core::util::FifoMutex<T>);

impl<T: OptionalSend + 'static> openraft::async_runtime::Mutex<T> for SmolMutex<T> {
    type Guard<'a>
        = shoal_core::util::FifoMutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self(shoal_core::util::FifoMutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}

/// Watch channels: the last value, a version counter and an event to wake receivers.
pub struct SmolWatch;

struct WatchShared<T> {
    /// The value; `version` only changes under its write lock.
    value: RwLock<T>,
    version: AtomicU64,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    changed: Event,
}

impl<T> WatchShared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sending half of a [`SmolWatch`] channel.
pub struct SmolWatchSender<T> {
    shared: Arc<WatchShared<T>>,
}

/// Receiving half of a [`SmolWatch`] channel; remembers the last version it saw.
pub struct SmolWatchReceiver<T> {
    shared: Arc<WatchShared<T>>,
    seen: u64,
}

/// A read guard on the watched value.
pub struct SmolWatchRef<'a, T>(RwLockReadGuard<'a, T>);

impl<T> std::ops::Deref for SmolWatchRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl Watch for SmolWatch {
    type Sender<T: OptionalSend + OptionalSync> = SmolWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = SmolWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = SmolWatchRef<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(WatchShared {
            value: RwLock::new(init),
            version: AtomicU64::new(0),
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
            changed: Event::new(),
        });
        (
            SmolWatchSender {
                shared: shared.clone(),
            },
            SmolWatchReceiver { shared, seen: 0 },
        )
    }
}

impl<T> Clone for SmolWatchSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for SmolWatchSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender is gone: receivers waiting for a change learn it never comes.
            self.shared.changed.notify(usize::MAX);
        }
    }
}

impl<T> Clone for SmolWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for SmolWatchReceiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<SmolWatch, T> for SmolWatchSender<T> {
    fn send(&self, value: T) -> Result<(), WatchSendError<T>> {
        if self.shared.receivers.load(Ordering::Acquire) == 0 {
            return Err(WatchSendError(value));
        }
        self.send_if_modified(|current| {
            *current = value;
            true
        });
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = {
            let mut value = self.shared.value.write().unwrap_or_else(|p| p.into_inner());
            let modified = modify(&mut value);
            if modified {
                self.shared.version.fetch_add(1, Ordering::AcqRel);
            }
            modified
        };
        if modified {
            self.shared.changed.notify(usize::MAX);
        }
        modified
    }

    fn borrow_watched(&self) -> SmolWatchRef<'_, T> {
        SmolWatchRef(self.shared.read())
    }

    fn subscribe(&self) -> SmolWatchReceiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        let guard = self.shared.read();
        let seen = self.shared.version.load(Ordering::Acquire);
        drop(guard);
        SmolWatchReceiver {
            shared: self.shared.clone(),
            seen,
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<SmolWatch, T> for SmolWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            let version = self.shared.version.load(Ordering::Acquire);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Err(RecvError(()));
            }
            let listener = self.shared.changed.listen();
            // Re-check after registering: a send in between must not be missed.
            let version = self.shared.version.load(Ordering::Acquire);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Err(RecvError(()));
            }
            listener.await;
        }
    }

    fn borrow_watched(&self) -> SmolWatchRef<'_, T> {
        SmolWatchRef(self.shared.read())
    }

    fn borrow_and_update(&mut self) -> SmolWatchRef<'_, T> {
        let guard = self.shared.read();
        // The version changes only under the write lock, so it matches the value read.
        self.seen = self.shared.version.load(Ordering::Acquire);
        SmolWatchRef(guard)
    }
}
