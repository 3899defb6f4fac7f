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
}
