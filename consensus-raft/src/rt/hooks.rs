//! An injected scheduler, clock and randomness for [`super::SmolRuntime`]: what lets a
//! deterministic world (the simulator) run openraft and this crate on its own single thread
//! in virtual time.
//!
//! openraft's runtime is a type with static functions, so the injection is per thread: while
//! a future wrapped by [`with_hooks`] is polled, [`RuntimeHooks`] are installed in a
//! thread-local, and every runtime call made from it — spawning, sleeping, reading the
//! clock, drawing a random number — goes to the hooks instead of smol and the wall clock.
//! Tasks spawned that way run wrapped in the same hooks, so a whole node (openraft's core,
//! its replication and heartbeat tasks, the log flusher, the leadership publisher) lives in
//! the world that started it. Without hooks nothing changes: smol and `std::time::Instant`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// A boxed `Send` future, as hooks take and give them.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a deterministic world supplies in place of smol and the wall clock.
pub trait RuntimeHooks: Send + Sync + 'static {
    /// Runs `future` as a task of this world (it is already wrapped in these hooks).
    fn spawn(&self, future: HookFuture);
    /// Time since the world began.
    fn now(&self) -> Duration;
    /// Resolves once [`RuntimeHooks::now`] reaches `at`.
    fn sleep_until(&self, at: Duration) -> HookFuture;
    /// 64 random bits drawn from the world's seed.
    fn random_u64(&self) -> u64;
}

thread_local! {
    static HOOKS: RefCell<Option<Arc<dyn RuntimeHooks>>> = const { RefCell::new(None) };
}

/// The hooks of the future being polled on this thread, if any.
pub fn current_hooks() -> Option<Arc<dyn RuntimeHooks>> {
    HOOKS.with(|h| h.borrow().clone())
}

/// Calls `f` with `hooks` installed (none: unhooked), e.g. to spawn a task into another
/// node's world.
pub fn enter<R>(hooks: Option<Arc<dyn RuntimeHooks>>, f: impl FnOnce() -> R) -> R {
    let previous = HOOKS.with(|h| h.replace(hooks));
    let _restore = Restore(previous);
    f()
}

/// Puts the hooks that were installed back when dropped (also when a poll panics, so a
/// caught panic leaves no stale hooks behind).
struct Restore(Option<Arc<dyn RuntimeHooks>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        HOOKS.with(|h| *h.borrow_mut() = previous);
    }
}

pin_project_lite::pin_project! {
    /// A future that runs with [`RuntimeHooks`] installed (see the module docs).
    pub struct WithHooks<F> {
        hooks: Arc<dyn RuntimeHooks>,
        #[pin]
        future: F,
    }
}

/// Runs `future` (and every task it spawns through the runtime) in the world of `hooks`.
pub fn with_hooks<F: Future>(hooks: Arc<dyn RuntimeHooks>, future: F) -> WithHooks<F> {
    WithHooks { hooks, future }
}

impl<F: Future> Future for WithHooks<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let previous = HOOKS.with(|h| h.replace(Some(this.hooks.clone())));
        let _restore = Restore(previous);
        this.future.poll(cx)
    }
}

/// The process-wide origin hooked instants count from (any fixed instant will do: instants
/// are only compared and subtracted).
fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// openraft's clock: `std::time::Instant`, or the injected clock's time (from a fixed
/// origin) while hooks are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RtInstant(std::time::Instant);

impl RtInstant {
    /// The time since the hooks' world began, for a hooked instant.
    pub(crate) fn since_origin(self) -> Duration {
        self.0.saturating_duration_since(origin())
    }

    /// The wall-clock instant (unhooked use).
    pub(crate) fn wall(self) -> std::time::Instant {
        self.0
    }
}

impl openraft::Instant for RtInstant {
    fn now() -> Self {
        match current_hooks() {
            Some(hooks) => RtInstant(origin() + hooks.now()),
            None => RtInstant(std::time::Instant::now()),
        }
    }
}

impl Add<Duration> for RtInstant {
    type Output = RtInstant;
    fn add(self, rhs: Duration) -> RtInstant {
        RtInstant(self.0 + rhs)
    }
}

impl AddAssign<Duration> for RtInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl Sub<Duration> for RtInstant {
    type Output = RtInstant;
    fn sub(self, rhs: Duration) -> RtInstant {
        RtInstant(self.0.checked_sub(rhs).unwrap_or(self.0))
    }
}

impl SubAssign<Duration> for RtInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl Sub<RtInstant> for RtInstant {
    type Output = Duration;
    fn sub(self, rhs: RtInstant) -> Duration {
        self.0.saturating_duration_since(rhs.0)
    }
}

/// openraft's random numbers: the thread's RNG, or the world's seed while hooks are
/// installed (election timeouts then replay with the seed).
pub enum RtRng {
    /// The OS-seeded thread RNG.
    Thread(rand::rngs::ThreadRng),
    /// The hooks' seeded stream.
    Hooked(Arc<dyn RuntimeHooks>),
}

impl RtRng {
    /// The RNG for the current thread (hooked or not).
    pub(crate) fn current() -> Self {
        match current_hooks() {
            Some(hooks) => RtRng::Hooked(hooks),
            None => RtRng::Thread(rand::rng()),
        }
    }
}

impl rand::TryRng for RtRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(match self {
            RtRng::Thread(rng) => rand::Rng::next_u64(rng),
            RtRng::Hooked(hooks) => hooks.random_u64(),
        })
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}
