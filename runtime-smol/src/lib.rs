//! The production implementation of shoal-core's runtime seam on smol: a wall clock whose
//! sleeps are smol timers, a spawner onto smol's global executor, and a fastrand RNG.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::runtime::{BoxFuture, Clock, Millis, Rng, Runtime, Spawner};

/// Monotonic wall-clock time since the clock was made; sleeps are smol timers.
#[derive(Debug, Clone)]
pub struct SmolClock {
    origin: Instant,
}

impl Default for SmolClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for SmolClock {
    fn now_ms(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(async move {
            smol::Timer::after(duration).await;
        })
    }
}

/// Spawns onto smol's global executor (detached).
#[derive(Debug, Clone, Default)]
pub struct SmolSpawner;

impl Spawner for SmolSpawner {
    fn spawn(&self, name: &str, future: BoxFuture<()>) {
        let _ = name; // smol tasks carry no name; callers log with spans.
        smol::spawn(future).detach();
    }
}

/// A thread-safe RNG seeded from the OS (via fastrand's default seeding).
#[derive(Debug)]
pub struct FastRng {
    rng: std::sync::Mutex<fastrand::Rng>,
}

impl Default for FastRng {
    fn default() -> Self {
        Self {
            rng: std::sync::Mutex::new(fastrand::Rng::new()),
        }
    }
}

impl Rng for FastRng {
    fn next_u64(&self) -> u64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).u64(..)
    }
}

/// The production runtime: smol clock, spawner and RNG.
pub fn smol_runtime() -> Runtime {
    Runtime {
        clock: Arc::new(SmolClock::default()),
        spawner: Arc::new(SmolSpawner),
        rng: Arc::new(FastRng::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smol_clock_sleeps_for_real() {
        let clock = SmolClock::default();
        let before = clock.now_ms();
        smol::block_on(clock.sleep(Duration::from_millis(20)));
        assert!(clock.now_ms() >= before + 20);
    }

    #[test]
    fn spawned_future_runs() {
        let (tx, rx) = std::sync::mpsc::channel();
        SmolSpawner.spawn("t", Box::pin(async move { tx.send(7).unwrap() }));
        let got = smol::block_on(async {
            loop {
                if let Ok(v) = rx.try_recv() {
                    break v;
                }
                smol::Timer::after(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(got, 7);
    }
}
