//! An in-memory [`TaskJournal`], with staging (group commit) and crash semantics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use event_listener::Event;

use super::{Staged, StorageError, TaskJournal};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An in-memory [`TaskJournal`]. Clones share the records, so a test "restarts" a DataNode
/// by opening a new one over a clone of the same journal. It never fails, so it is never
/// poisoned; wrap it in `storage::faulty::FaultyTaskJournal` to inject failures.
///
/// It stages as the file journal does: a staged record is in the journal's order at once but
/// held apart, and a `sync` (which first yields, so concurrent callers share it) makes every
/// staged record durable. [`MemTaskJournal::crash`] is what a process crash does to it: the
/// staged records that no sync covered yet vanish.
#[derive(Debug, Clone, Default)]
pub struct MemTaskJournal {
    state: Arc<Mutex<JournalState>>,
    /// Notified when syncs are released ([`MemTaskJournal::hold_syncs`]) or a crash happens.
    changed: Arc<Event>,
}

#[derive(Debug, Default)]
struct JournalState {
    /// What a reopen loads.
    durable: Vec<Vec<u8>>,
    /// Staged, not yet covered by a sync, in ticket order: lost in a crash.
    staged: VecDeque<(u64, Vec<u8>)>,
    /// The last ticket handed out (tickets start at 1).
    last_ticket: u64,
    /// Every ticket up to this one is durable, unless a crash lost it.
    durable_through: u64,
    /// Ticket ranges (inclusive) that crashes lost: their syncs fail.
    lost: Vec<(u64, u64)>,
    /// Test hook: syncs wait while set.
    syncs_held: bool,
}

impl JournalState {
    fn stage(&mut self, record: Vec<u8>) -> u64 {
        self.last_ticket += 1;
        self.staged.push_back((self.last_ticket, record));
        self.last_ticket
    }

    fn is_lost(&self, ticket: u64) -> bool {
        self.lost
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&ticket))
    }

    /// Makes every staged record durable (one flush takes them all, as the file journal's
    /// does); returns them in order.
    fn flush(&mut self) -> Vec<Vec<u8>> {
        let flushed: Vec<Vec<u8>> = self.staged.drain(..).map(|(_, record)| record).collect();
        self.durable.extend(flushed.iter().cloned());
        self.durable_through = self.last_ticket;
        flushed
    }
}

impl MemTaskJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many durable records the journal holds now (compaction shrinks it).
    pub fn len(&self) -> usize {
        lock(&self.state).durable.len()
    }

    /// Whether the journal holds no durable record.
    pub fn is_empty(&self) -> bool {
        lock(&self.state).durable.is_empty()
    }

    /// How many records are staged and not yet durable.
    pub fn staged(&self) -> usize {
        lock(&self.state).staged.len()
    }

    /// A crash of the process writing the journal: every staged record no sync covered yet
    /// is lost, and a sync still waiting for one fails. Returns how many were lost.
    pub fn crash(&self) -> usize {
        let lost = {
            let mut st = lock(&self.state);
            let lost = st.staged.len();
            if let (Some((first, _)), Some((last, _))) = (st.staged.front(), st.staged.back()) {
                let range = (*first, *last);
                st.lost.push(range);
            }
            st.staged.clear();
            lost
        };
        self.changed.notify(usize::MAX);
        lost
    }

    /// Test hook: while `held`, every sync waits (its records stay staged), so a test can
    /// act, or crash, between staging and durability.
    pub fn hold_syncs(&self, held: bool) {
        lock(&self.state).syncs_held = held;
        self.changed.notify(usize::MAX);
    }

    /// Makes the record staged with `ticket` durable now, with every record staged so far,
    /// and returns the records this call made durable, in order (a sync that found its
    /// ticket durable already returns none). Fails if a crash lost the record. Ignores
    /// [`MemTaskJournal::hold_syncs`]: for wrappers (the simulator's journal) that decide
    /// themselves when a flush happens and observe what it made durable.
    pub fn sync_now(&self, ticket: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut st = lock(&self.state);
        if st.is_lost(ticket) {
            return Err(lost_in_crash(ticket));
        }
        if ticket <= st.durable_through {
            return Ok(Vec::new());
        }
        Ok(st.flush())
    }

    /// Whether the record staged with `ticket` is durable (a failed flush or a crash may
    /// leave it staged). Fails if a crash lost it.
    pub fn is_durable(&self, ticket: u64) -> Result<bool, StorageError> {
        let st = lock(&self.state);
        if st.is_lost(ticket) {
            return Err(lost_in_crash(ticket));
        }
        Ok(ticket <= st.durable_through)
    }

    /// Makes every staged record durable now; returns them in order.
    pub fn flush_staged(&self) -> Vec<Vec<u8>> {
        lock(&self.state).flush()
    }
}

fn lost_in_crash(ticket: u64) -> StorageError {
    StorageError::Unavailable(format!(
        "task journal (memory): staged record {ticket} was lost in a crash before its sync"
    ))
}

#[async_trait]
impl TaskJournal for MemTaskJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        // Durable at once, after every record staged before it.
        let mut st = lock(&self.state);
        st.stage(record);
        st.flush();
        Ok(())
    }

    fn stage(&self, record: Vec<u8>) -> Result<Staged, StorageError> {
        Ok(Staged::Ticket(lock(&self.state).stage(record)))
    }

    async fn sync(&self, ticket: u64) -> Result<(), StorageError> {
        // A scheduling point, as a disk wait is: records staged meanwhile share this flush,
        // and a crash may come in between.
        futures_lite::future::yield_now().await;
        loop {
            let listener = {
                let st = lock(&self.state);
                if st.is_lost(ticket) {
                    return Err(lost_in_crash(ticket));
                }
                if ticket <= st.durable_through {
                    return Ok(());
                }
                if !st.syncs_held {
                    drop(st);
                    return self.sync_now(ticket).map(drop);
                }
                // Listening under the lock: a release or crash notifies after changing it.
                self.changed.listen()
            };
            listener.await;
        }
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(lock(&self.state).durable.clone())
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        // Staged records become durable first, so none is lost with the old contents.
        let mut st = lock(&self.state);
        st.flush();
        st.durable = records;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(staged: Staged) -> u64 {
        match staged {
            Staged::Ticket(ticket) => ticket,
            Staged::Unsupported(_) => panic!("the memory journal stages"),
        }
    }

    #[test]
    fn a_crash_loses_exactly_the_staged_records_no_sync_covered() {
        futures_lite::future::block_on(async {
            let journal = MemTaskJournal::new();
            journal.append(b"appended".to_vec()).await.expect("append");
            let first = ticket(journal.stage(b"synced".to_vec()).expect("stage"));
            journal.sync(first).await.expect("sync");
            let lost_a = ticket(journal.stage(b"lost a".to_vec()).expect("stage"));
            let lost_b = ticket(journal.stage(b"lost b".to_vec()).expect("stage"));
            assert_eq!(journal.staged(), 2);
            assert_eq!(
                journal.load().await.expect("load").len(),
                2,
                "staged is not loaded"
            );

            assert_eq!(journal.crash(), 2);

            let after = journal.clone();
            assert_eq!(
                after.load().await.expect("load"),
                vec![b"appended".to_vec(), b"synced".to_vec()]
            );
            assert!(
                after.sync(lost_a).await.is_err(),
                "a lost record is never durable"
            );
            assert!(after.sync(lost_b).await.is_err());
            assert!(after.sync(first).await.is_ok(), "durable stays durable");
            // Records staged after the crash go after the durable ones; lost tickets stay
            // lost even once later tickets are durable.
            let next = ticket(after.stage(b"next".to_vec()).expect("stage"));
            after.sync(next).await.expect("sync");
            assert!(after.sync(lost_a).await.is_err());
            assert_eq!(
                after.load().await.expect("load"),
                vec![b"appended".to_vec(), b"synced".to_vec(), b"next".to_vec()]
            );
        });
    }

    #[test]
    fn one_sync_makes_every_record_staged_before_it_durable() {
        futures_lite::future::block_on(async {
            let journal = MemTaskJournal::new();
            let a = ticket(journal.stage(b"a".to_vec()).expect("stage"));
            let b = ticket(journal.stage(b"b".to_vec()).expect("stage"));
            journal.sync(b).await.expect("sync");
            assert_eq!(journal.staged(), 0);
            journal.sync(a).await.expect("covered by the same flush");
            assert_eq!(journal.crash(), 0);
            assert_eq!(journal.len(), 2);
        });
    }

    #[test]
    fn append_and_rewrite_keep_staged_records_in_order() {
        futures_lite::future::block_on(async {
            let journal = MemTaskJournal::new();
            let staged = ticket(journal.stage(b"staged".to_vec()).expect("stage"));
            journal.append(b"appended".to_vec()).await.expect("append");
            assert_eq!(
                journal.load().await.expect("load"),
                vec![b"staged".to_vec(), b"appended".to_vec()]
            );
            let before_rewrite = ticket(journal.stage(b"x".to_vec()).expect("stage"));
            journal
                .rewrite(vec![b"compacted".to_vec()])
                .await
                .expect("rewrite");
            journal.sync(staged).await.expect("durable");
            journal
                .sync(before_rewrite)
                .await
                .expect("a rewrite flushes what was staged first");
            assert_eq!(journal.crash(), 0);
        });
    }

    #[test]
    fn held_syncs_wait_and_a_crash_fails_them() {
        futures_lite::future::block_on(async {
            let journal = MemTaskJournal::new();
            journal.hold_syncs(true);
            let t = ticket(journal.stage(b"a".to_vec()).expect("stage"));
            let waiting = journal.sync(t);
            let crasher = async {
                futures_lite::future::yield_now().await;
                futures_lite::future::yield_now().await;
                assert_eq!(journal.staged(), 1, "a held sync flushes nothing");
                journal.crash();
            };
            let (result, ()) = futures_lite::future::zip(waiting, crasher).await;
            assert!(result.is_err());
            assert!(journal.is_empty());
        });
    }
}
