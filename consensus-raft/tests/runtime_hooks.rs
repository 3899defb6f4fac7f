//! The runtime adapter's injection point (`rt::hooks`): inside `with_hooks` every runtime
//! call goes to the hooks (what the simulator's Raft mode relies on); outside, nothing does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::Instant as _;
use rand::RngExt;
use shoal_consensus_raft::SmolRuntime;
use shoal_consensus_raft::rt::hooks::HookFuture;
use shoal_consensus_raft::rt::{RtInstant, RuntimeHooks, current_hooks, with_hooks};

/// A frozen world: time stands at `now_ms`, spawned tasks are kept (not run), sleeps are
/// recorded, and the RNG counts up.
#[derive(Default)]
struct Frozen {
    now_ms: AtomicU64,
    spawned: Mutex<Vec<HookFuture>>,
    sleeps: Mutex<Vec<Duration>>,
    draws: AtomicU64,
}

impl RuntimeHooks for Frozen {
    fn spawn(&self, future: HookFuture) {
        self.spawned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(future);
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: Duration) -> HookFuture {
        self.sleeps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(at);
        Box::pin(std::future::ready(()))
    }

    fn random_u64(&self) -> u64 {
        self.draws.fetch_add(1, Ordering::SeqCst)
    }
}

#[test]
fn hooked_runtime_calls_go_to_the_hooks_and_nowhere_else() {
    let world = Arc::new(Frozen::default());
    world.now_ms.store(1_000, Ordering::SeqCst);
    let hooks: Arc<dyn RuntimeHooks> = world.clone();
    let (t0, t1, draw) = futures_lite::future::block_on(with_hooks(hooks, async {
        let t0 = RtInstant::now();
        SmolRuntime::sleep(Duration::from_millis(250)).await;
        drop(SmolRuntime::spawn(async {}));
        let draw: u64 = SmolRuntime::thread_rng().random_range(0..u64::MAX);
        (t0, RtInstant::now(), draw)
    }));
    // Virtual time does not move by itself: the two reads agree exactly.
    assert_eq!(t1 - t0, Duration::ZERO);
    assert_eq!(
        *world.sleeps.lock().unwrap(),
        vec![Duration::from_millis(1_250)],
        "a sleep becomes a deadline on the hooks' clock"
    );
    assert_eq!(
        world.spawned.lock().unwrap().len(),
        1,
        "spawn went to the hooks"
    );
    assert!(
        world.draws.load(Ordering::SeqCst) > 0,
        "randomness came from the hooks"
    );
    // The same hooks' stream gives the same draw (election timeouts replay with a seed).
    let again: Arc<dyn RuntimeHooks> = Arc::new(Frozen::default());
    let redraw = futures_lite::future::block_on(with_hooks(again, async {
        SmolRuntime::thread_rng().random_range(0..u64::MAX)
    }));
    assert_eq!(draw, redraw);
    assert!(current_hooks().is_none(), "hooks are gone after the poll");
}

#[test]
fn unhooked_runtime_uses_the_wall_clock() {
    assert!(current_hooks().is_none());
    let t0 = RtInstant::now();
    futures_lite::future::block_on(SmolRuntime::sleep(Duration::from_millis(20)));
    assert!(RtInstant::now() - t0 >= Duration::from_millis(20));
}
