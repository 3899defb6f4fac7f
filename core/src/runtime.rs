//! Runtime seam: spawning, time and randomness come in through these traits, so the same
//! logic runs on smol in production (`shoal-runtime-smol`) and on a [`ManualClock`] in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use event_listener::Event;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Milliseconds on a [`Clock`]; only differences between two readings mean anything.
pub type Millis = u64;

/// The wall-clock time (2026-01-01T00:00:00Z, in Unix milliseconds) at which clocks without
/// a calendar ([`ManualClock`], simulated clocks) start, so their timestamps read as dates.
pub const TEST_EPOCH_MS: u64 = 1_767_225_600_000;

/// Time as the logic sees it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since an arbitrary, fixed origin (monotonic: measure durations with it).
    fn now_ms(&self) -> Millis;
    /// Wall-clock milliseconds since the Unix epoch, for timestamps people read (never for
    /// durations: wall clocks jump). Clocks without a calendar report `now_ms` after
    /// [`TEST_EPOCH_MS`].
    fn unix_ms(&self) -> u64 {
        TEST_EPOCH_MS + self.now_ms()
    }
    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;
}

/// Starts background work.
pub trait Spawner: Send + Sync + 'static {
    /// Runs `future` in the background until it completes; `name` labels it in logs.
    fn spawn(&self, name: &str, future: BoxFuture<()>);
}

/// Randomness (jitter, ids). Tests use a seeded [`SeededRng`].
pub trait Rng: Send + Sync + 'static {
    /// A uniformly random `u64`.
    fn next_u64(&self) -> u64;
}

/// The three seams bundled, cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Background work.
    pub spawner: Arc<dyn Spawner>,
    /// Randomness.
    pub rng: Arc<dyn Rng>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// A deterministic SplitMix64 generator.
#[derive(Debug)]
pub struct SeededRng {
    state: AtomicU64,
}

impl SeededRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }
}

impl Rng for SeededRng {
    fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A clock that moves only when a test calls [`ManualClock::advance`].
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug, Default)]
struct ManualInner {
    now: AtomicU64,
    /// Deadlines of pending sleeps, so a test can jump to the next one.
    deadlines: Mutex<Vec<Millis>>,
    changed: Event,
}

impl ManualClock {
    /// A clock reading 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` and wakes every sleep that is now due.
    pub fn advance(&self, by: Duration) {
        self.inner
            .now
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        self.inner.changed.notify(usize::MAX);
    }

    /// The earliest deadline of a pending sleep, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        let now = self.now_ms();
        let mut deadlines = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        deadlines.retain(|d| *d > now);
        deadlines.iter().min().copied()
    }

    /// Jumps to the earliest pending deadline; returns whether there was one.
    pub fn advance_to_next_deadline(&self) -> bool {
        match self.next_deadline() {
            Some(deadline) => {
                let now = self.now_ms();
                self.advance(Duration::from_millis(deadline.saturating_sub(now)));
                true
            }
            None => false,
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let inner = self.inner.clone();
        let deadline = inner.now.load(Ordering::SeqCst) + duration.as_millis() as u64;
        inner
            .deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(deadline);
        Box::pin(async move {
            loop {
                if inner.now.load(Ordering::SeqCst) >= deadline {
                    return;
                }
                let listener = inner.changed.listen();
                // Re-check after registering: an advance in between must not be missed.
                if inner.now.load(Ordering::SeqCst) >= deadline {
                    return;
                }
                listener.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_wakes_sleepers_only_when_due() {
        let clock = ManualClock::new();
        let mut sleep = clock.sleep(Duration::from_millis(100));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance(Duration::from_millis(99));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(clock.next_deadline(), Some(100));
        assert!(clock.advance_to_next_deadline());
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        assert_eq!(clock.now_ms(), 100);
    }

    #[test]
    fn seeded_rng_is_deterministic() {
        let a = SeededRng::new(7);
        let b = SeededRng::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }
}
