//! The deterministic world's machinery: a single-threaded executor whose next task is picked
//! by a seeded RNG, a virtual clock that jumps to the next timer, and the RNG itself.
//!
//! Every task carries a [`Tag`] naming the node it belongs to, so a crash can drop all of a
//! node's tasks at once, wherever each one is suspended.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_task::{Runnable, Task};
use shoal_core::runtime::{BoxFuture, Clock, Millis, Rng, Spawner};

/// Which node a task belongs to (see [`crate::world`] for the numbering).
pub type Tag = u32;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A SplitMix64 generator; every choice in a run comes from one of these, seeded from the
/// run's seed.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`, on its own `stream` (so streams do not shift each other).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self {
            state: seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F),
        };
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `per_million / 1_000_000`.
    pub fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.below(1_000_000) < u64::from(per_million)
    }

    /// A uniformly chosen element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// A [`SimRng`] behind core's [`Rng`] seam (one per node).
#[derive(Debug)]
pub struct SharedRng(Mutex<SimRng>);

impl SharedRng {
    /// Wraps `rng`.
    pub fn new(rng: SimRng) -> Self {
        Self(Mutex::new(rng))
    }

    /// Runs `f` on the generator.
    pub fn with<R>(&self, f: impl FnOnce(&mut SimRng) -> R) -> R {
        f(&mut lock(&self.0))
    }
}

impl Rng for SharedRng {
    fn next_u64(&self) -> u64 {
        lock(&self.0).next_u64()
    }
}

struct TaskEntry {
    tag: Tag,
    task: Task<(), u64>,
}

struct ExecShared {
    /// Runnable tasks, in the order they were woken.
    queue: Mutex<Vec<Runnable<u64>>>,
    tasks: Mutex<BTreeMap<u64, TaskEntry>>,
    next_key: AtomicU64,
}

/// The single-threaded executor. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<ExecShared>,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    /// An executor with nothing to run.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(ExecShared {
                queue: Mutex::new(Vec::new()),
                tasks: Mutex::new(BTreeMap::new()),
                next_key: AtomicU64::new(0),
            }),
        }
    }

    /// A spawner whose tasks carry `tag`.
    pub fn spawner(&self, tag: Tag) -> Arc<dyn Spawner> {
        Arc::new(TaggedSpawner {
            executor: self.clone(),
            tag,
        })
    }

    /// Spawns `future` as a task of `tag`; it runs when the scheduler picks it.
    pub fn spawn(&self, tag: Tag, future: BoxFuture<()>) {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::downgrade(&self.shared);
        let schedule = move |runnable: Runnable<u64>| {
            if let Some(shared) = queue.upgrade() {
                lock(&shared.queue).push(runnable);
            }
        };
        let (runnable, task) = async_task::Builder::new()
            .metadata(key)
            .spawn(move |_| future, schedule);
        lock(&self.shared.tasks).insert(key, TaskEntry { tag, task });
        runnable.schedule();
    }

    /// Runs one runnable task, chosen by `rng`; returns its key, or `None` if nothing was
    /// runnable.
    pub fn step(&self, rng: &mut SimRng) -> Option<u64> {
        let runnable = {
            let mut queue = lock(&self.shared.queue);
            if queue.is_empty() {
                return None;
            }
            let index = rng.below(queue.len() as u64) as usize;
            queue.swap_remove(index)
        };
        let key = *runnable.metadata();
        runnable.run();
        let finished = lock(&self.shared.tasks)
            .get(&key)
            .is_some_and(|entry| entry.task.is_finished());
        if finished {
            let entry = lock(&self.shared.tasks).remove(&key);
            drop(entry);
        }
        Some(key)
    }

    /// Whether some task is runnable.
    pub fn has_runnable(&self) -> bool {
        !lock(&self.shared.queue).is_empty()
    }

    /// Live tasks (runnable or suspended).
    pub fn task_count(&self) -> usize {
        lock(&self.shared.tasks).len()
    }

    /// Drops every task of `tag` where it stands (a crash): none is polled again, and their
    /// futures (and whatever they hold) are dropped now, before anything else runs.
    pub fn cancel(&self, tag: Tag) -> usize {
        let doomed: Vec<(u64, TaskEntry)> = {
            let mut tasks = lock(&self.shared.tasks);
            let keys: Vec<u64> = tasks
                .iter()
                .filter(|(_, e)| e.tag == tag)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| tasks.remove(&k).map(|e| (k, e)))
                .collect()
        };
        let count = doomed.len();
        let keys: std::collections::BTreeSet<u64> = doomed.iter().map(|(k, _)| *k).collect();
        // Dropping a handle cancels its task; an idle one is rescheduled so its future can
        // be dropped by running it once more (a cancelled task is never polled).
        drop(doomed);
        loop {
            let cancelled: Vec<Runnable<u64>> = {
                let mut queue = lock(&self.shared.queue);
                let mut out = Vec::new();
                let mut i = 0;
                while i < queue.len() {
                    if keys.contains(queue[i].metadata()) {
                        out.push(queue.remove(i));
                    } else {
                        i += 1;
                    }
                }
                out
            };
            if cancelled.is_empty() {
                break;
            }
            for runnable in cancelled {
                runnable.run();
            }
        }
        count
    }
}

struct TaggedSpawner {
    executor: Executor,
    tag: Tag,
}

impl Spawner for TaggedSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.executor.spawn(self.tag, future);
    }
}

#[derive(Default)]
struct ClockShared {
    now: AtomicU64,
    /// Pending sleeps by (deadline, registration order).
    timers: Mutex<BTreeMap<(Millis, u64), Waker>>,
    next_timer: AtomicU64,
}

/// Virtual time: moves only when the simulator advances it, to the next timer's deadline.
#[derive(Clone, Default)]
pub struct SimClock {
    shared: Arc<ClockShared>,
}

impl SimClock {
    /// A clock reading 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        lock(&self.shared.timers).keys().next().map(|(d, _)| *d)
    }

    /// Moves time to `to` (never backwards) and wakes every sleep due by then, in deadline
    /// order.
    pub fn advance_to(&self, to: Millis) {
        let now = self.shared.now.load(Ordering::Relaxed).max(to);
        self.shared.now.store(now, Ordering::Relaxed);
        // One at a time, in deadline order: waking never touches the timers (a woken task
        // runs only when the scheduler picks it).
        loop {
            let due = {
                let mut timers = lock(&self.shared.timers);
                match timers.first_key_value() {
                    Some(((deadline, _), _)) if *deadline <= now => {
                        timers.pop_first().map(|(_, waker)| waker)
                    }
                    _ => None,
                }
            };
            match due {
                Some(waker) => waker.wake(),
                None => break,
            }
        }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> Millis {
        self.shared.now.load(Ordering::Relaxed)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let deadline = self.now_ms().saturating_add(duration.as_millis() as u64);
        Box::pin(Sleep {
            clock: self.shared.clone(),
            deadline,
            key: None,
        })
    }
}

struct Sleep {
    clock: Arc<ClockShared>,
    deadline: Millis,
    key: Option<(Millis, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now.load(Ordering::Relaxed) >= self.deadline {
            if let Some(key) = self.key.take() {
                lock(&self.clock.timers).remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let seq = self.clock.next_timer.fetch_add(1, Ordering::Relaxed);
                let key = (self.deadline, seq);
                self.key = Some(key);
                key
            }
        };
        lock(&self.clock.timers).insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.clock.timers).remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_is_a_function_of_the_seed_and_time_jumps_to_timers() {
        let order = |seed: u64| {
            let exec = Executor::new();
            let clock = SimClock::new();
            let log = Arc::new(Mutex::new(Vec::new()));
            for i in 0..8u64 {
                let log = log.clone();
                let sleep = clock.sleep(Duration::from_millis(10 * (i % 3)));
                exec.spawn(
                    1,
                    Box::pin(async move {
                        sleep.await;
                        lock(&log).push(i);
                    }),
                );
            }
            let mut rng = SimRng::new(seed, 0);
            loop {
                while exec.step(&mut rng).is_some() {}
                match clock.next_deadline() {
                    Some(d) => clock.advance_to(d),
                    None => break,
                }
            }
            assert_eq!(clock.now_ms(), 20);
            assert_eq!(exec.task_count(), 0);
            let order: Vec<u64> = lock(&log).clone();
            order
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2), "seeds interleave differently");
    }

    #[test]
    fn cancelling_a_tag_drops_its_futures_at_once() {
        struct Flag(Arc<AtomicU64>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let exec = Executor::new();
        let clock = SimClock::new();
        let dropped = Arc::new(AtomicU64::new(0));
        for tag in [1, 2, 1] {
            let flag = Flag(dropped.clone());
            let sleep = clock.sleep(Duration::from_secs(1));
            exec.spawn(
                tag,
                Box::pin(async move {
                    sleep.await;
                    drop(flag);
                }),
            );
        }
        let mut rng = SimRng::new(0, 0);
        while exec.step(&mut rng).is_some() {}
        assert_eq!(exec.cancel(1), 2);
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert_eq!(exec.task_count(), 1);
    }
}
