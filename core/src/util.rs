//! Small runtime-agnostic async helpers.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Runs `futures` with at most `limit` in flight at once; returns their outputs in input
/// order.
pub async fn join_all<T, F>(futures: Vec<F>, limit: usize) -> Vec<T>
where
    F: Future<Output = T> + Unpin,
{
    let limit = limit.max(1);
    let total = futures.len();
    let mut pending = futures.into_iter().enumerate();
    let mut running: Vec<(usize, F)> = Vec::with_capacity(limit.min(total));
    let mut outputs: Vec<Option<T>> = (0..total).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit {
                match pending.next() {
                    Some(next) => running.push(next),
                    None => break,
                }
            }
            let mut progressed = false;
            let mut i = 0;
            while i < running.len() {
                if let Poll::Ready(value) = Pin::new(&mut running[i].1).poll(cx) {
                    let (index, _) = running.swap_remove(i);
                    outputs[index] = Some(value);
                    progressed = true;
                } else {
                    i += 1;
                }
            }
            // Done only when nothing runs *and* nothing waits: every running future may
            // finish in one pass while more are still pending.
            if running.is_empty() && pending.len() == 0 {
                return Poll::Ready(());
            }
            // Freed slots may admit more futures; poll them before sleeping.
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// An async mutex with no dependence on wall-clock time: which waiter gets it next depends
/// only on the order tasks are polled. `async_lock::Mutex` switches to a fair mode after
/// 500 µs of *real* contention, so which waiter wins depends on how fast the machine is —
/// and a simulated run would no longer be a function of its seed. Built on
/// `async_lock::Semaphore` (no clock) holding the value out of a `std` mutex while a guard
/// lives.
pub struct FifoMutex<T> {
    permit: async_lock::Semaphore,
    value: std::sync::Mutex<Option<T>>,
}

impl<T> FifoMutex<T> {
    /// A mutex holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            permit: async_lock::Semaphore::new(1),
            value: std::sync::Mutex::new(Some(value)),
        }
    }

    /// Waits until the value is free, then lends it until the guard drops.
    pub async fn lock(&self) -> FifoMutexGuard<'_, T> {
        let permit = self.permit.acquire().await;
        let value = self.value.lock().unwrap_or_else(|p| p.into_inner()).take();
        FifoMutexGuard {
            mutex: self,
            value,
            _permit: permit,
        }
    }
}

/// Exclusive access to a [`FifoMutex`]'s value; puts it back when dropped.
pub struct FifoMutexGuard<'a, T> {
    mutex: &'a FifoMutex<T>,
    // `Some` for the guard's whole life: taken out under the permit, put back on drop.
    value: Option<T>,
    _permit: async_lock::SemaphoreGuard<'a>,
}

impl<T> std::ops::Deref for FifoMutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .unwrap_or_else(|| unreachable!("a live guard holds the value"))
    }
}

impl<T> std::ops::DerefMut for FifoMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .unwrap_or_else(|| unreachable!("a live guard holds the value"))
    }
}

impl<T> Drop for FifoMutexGuard<'_, T> {
    fn drop(&mut self) {
        // Put the value back before the permit (declared last) is released.
        *self.mutex.value.lock().unwrap_or_else(|p| p.into_inner()) = self.value.take();
    }
}

/// A read-write gate with no wall-clock dependence (see [`FifoMutex`]): readers share it, a
/// writer waits for every reader already in and excludes new ones until it is done.
pub struct FifoGate {
    /// One permit per possible reader; a writer takes them all.
    permits: async_lock::Semaphore,
    /// Serialises writers while they gather permits.
    writer: async_lock::Semaphore,
}

/// Readers a [`FifoGate`] admits at once.
const GATE_READERS: usize = 1 << 10;

impl Default for FifoGate {
    fn default() -> Self {
        Self {
            permits: async_lock::Semaphore::new(GATE_READERS),
            writer: async_lock::Semaphore::new(1),
        }
    }
}

impl FifoGate {
    /// Shared access (waits behind an earlier writer).
    pub async fn read(&self) -> async_lock::SemaphoreGuard<'_> {
        self.permits.acquire().await
    }

    /// Exclusive access: waits until every earlier reader is done; later readers wait.
    pub async fn write(&self) -> Vec<async_lock::SemaphoreGuard<'_>> {
        let _one_writer = self.writer.acquire().await;
        let mut held = Vec::with_capacity(GATE_READERS);
        for _ in 0..GATE_READERS {
            held.push(self.permits.acquire().await);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_all_keeps_order_and_respects_the_limit() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let futures: Vec<_> = (0..20u64)
            .map(|i| {
                let (live, peak) = (live.clone(), peak.clone());
                Box::pin(async move {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    smol::Timer::after(std::time::Duration::from_millis(20 - i)).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    i
                })
            })
            .collect();
        let out = smol::block_on(join_all(futures, 4));
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
    }

    #[test]
    fn a_fifo_mutex_lends_its_value_to_one_holder_at_a_time_and_keeps_it() {
        use futures_lite::future::poll_once;
        let mutex = FifoMutex::new(Vec::new());
        smol::block_on(async {
            let mut first = mutex.lock().await;
            first.push(0);
            let mut second = Box::pin(mutex.lock());
            assert!(poll_once(second.as_mut()).await.is_none(), "held: it waits");
            drop(first);
            let mut second = second.await;
            second.push(1);
            assert!(poll_once(Box::pin(mutex.lock())).await.is_none());
            drop(second);
            assert_eq!(*mutex.lock().await, vec![0, 1], "every change kept");
        });
    }

    #[test]
    fn a_fifo_gate_writer_waits_for_readers_and_excludes_new_ones() {
        use futures_lite::future::poll_once;
        let gate = FifoGate::default();
        smol::block_on(async {
            let a = gate.read().await;
            let b = gate.read().await;
            let mut write = Box::pin(gate.write());
            assert!(poll_once(write.as_mut()).await.is_none(), "readers hold it");
            drop((a, b));
            let held = write.await;
            assert!(poll_once(Box::pin(gate.read())).await.is_none());
            drop(held);
            assert!(poll_once(Box::pin(gate.read())).await.is_some());
        });
    }
}
